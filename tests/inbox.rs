//! The inbox helper on a real SQLite file and the local PostgreSQL.

use tower_courier::MessageId;
use tower_courier::inbox;

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

    async fn pool(dir: &tempfile::TempDir) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("app.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        inbox::ensure_schema(&mut *pool.acquire().await.unwrap())
            .await
            .unwrap();
        pool
    }

    #[tokio::test]
    async fn second_record_returns_false() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        let key = MessageId::new().to_string();

        let mut tx = pool.begin().await.unwrap();
        assert!(inbox::record(&mut *tx, "orders", &key).await.unwrap());
        tx.commit().await.unwrap();

        let mut tx = pool.begin().await.unwrap();
        assert!(!inbox::record(&mut *tx, "orders", &key).await.unwrap());
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn rolled_back_record_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        let key = MessageId::new().to_string();

        let mut tx = pool.begin().await.unwrap();
        assert!(inbox::record(&mut *tx, "orders", &key).await.unwrap());
        tx.rollback().await.unwrap();

        let mut tx = pool.begin().await.unwrap();
        assert!(inbox::record(&mut *tx, "orders", &key).await.unwrap());
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn consumers_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        let key = MessageId::new().to_string();
        let mut conn = pool.acquire().await.unwrap();

        assert!(inbox::record(&mut *conn, "orders", &key).await.unwrap());
        assert!(inbox::record(&mut *conn, "billing", &key).await.unwrap());
        assert!(!inbox::record(&mut *conn, "billing", &key).await.unwrap());
    }

    #[tokio::test]
    async fn purge_deletes_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        let key = MessageId::new().to_string();
        let mut conn = pool.acquire().await.unwrap();
        inbox::record(&mut *conn, "orders", &key).await.unwrap();

        let future = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        let purged = inbox::purge_before(&mut *conn, future).await.unwrap();

        assert_eq!(purged, 1);
        assert!(inbox::record(&mut *conn, "orders", &key).await.unwrap());
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    /// Returns the database URL that CI sets, or the local server's.
    fn url() -> String {
        std::env::var("TOWER_COURIER_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    #[tokio::test]
    async fn record_once_per_key_and_transaction() {
        let pool = PgPoolOptions::new().connect(&url()).await.unwrap();
        inbox::ensure_schema(&mut *pool.acquire().await.unwrap())
            .await
            .unwrap();
        let key = MessageId::new().to_string();

        let mut tx = pool.begin().await.unwrap();
        assert!(inbox::record(&mut *tx, "orders", &key).await.unwrap());
        tx.rollback().await.unwrap();

        let mut tx = pool.begin().await.unwrap();
        assert!(inbox::record(&mut *tx, "orders", &key).await.unwrap());
        tx.commit().await.unwrap();

        let mut tx = pool.begin().await.unwrap();
        assert!(!inbox::record(&mut *tx, "orders", &key).await.unwrap());
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_records_apply_once() {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url())
            .await
            .unwrap();
        inbox::ensure_schema(&mut *pool.acquire().await.unwrap())
            .await
            .unwrap();
        let key = MessageId::new().to_string();

        let attempts = (0..8).map(|_| {
            let (pool, key) = (pool.clone(), key.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                let first = inbox::record(&mut *tx, "orders", &key).await.unwrap();
                tx.commit().await.unwrap();
                first
            })
        });
        let mut applied = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            applied += usize::from(attempt.await.unwrap());
        }

        assert_eq!(applied, 1);
    }
}
