use std::fmt;
use std::sync::Arc;

use super::{IdempotencyStore, MessageQueue, ReplayStore, StoreError, StoreErrorKind};

/// The three stores of one backend, shared by the layers of a service.
///
/// Cloning is cheap: clones share the backend.
#[derive(Clone)]
pub struct Store {
    queue: Arc<dyn MessageQueue>,
    idempotency: Arc<dyn IdempotencyStore>,
    replay: Arc<dyn ReplayStore>,
    description: Arc<str>,
}

impl Store {
    /// Creates a bundle from one backend that implements all three traits.
    pub fn new<B>(backend: B) -> Self
    where
        B: MessageQueue + IdempotencyStore + ReplayStore,
    {
        let backend = Arc::new(backend);
        Self {
            description: format!("{backend:?}").into(),
            queue: backend.clone(),
            idempotency: backend.clone(),
            replay: backend,
        }
    }

    /// Creates a bundle from three separate stores.
    pub fn from_parts(
        queue: Arc<dyn MessageQueue>,
        idempotency: Arc<dyn IdempotencyStore>,
        replay: Arc<dyn ReplayStore>,
    ) -> Self {
        Self {
            description: format!("{queue:?}").into(),
            queue,
            idempotency,
            replay,
        }
    }

    /// Opens the backend that `url` names.
    ///
    /// | URL | backend |
    /// |---|---|
    /// | `memory` | [`memory::MemoryStore`](super::memory::MemoryStore), not durable |
    /// | `sqlite:PATH` or `sqlite://PATH` | [`sqlite::SqliteStore`](super::sqlite::SqliteStore) (feature `sqlite`); `sqlite:///var/lib/courier.db` is the absolute path `/var/lib/courier.db` |
    /// | `postgres://...`, `postgresql://...` | [`postgres::PostgresStore`](super::postgres::PostgresStore) (feature `postgres`), schema `courier` |
    /// | `redis://...` | [`redis::RedisStore`](super::redis::RedisStore) (feature `redis`), key prefix `courier:` |
    ///
    /// # Errors
    ///
    /// Fails with [`StoreErrorKind::Invalid`] for an unknown scheme or a
    /// backend not compiled in, and with the backend's own error when it
    /// cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        #[allow(clippy::match_single_binding)]
        match scheme {
            "memory" if url == "memory" || url == "memory:" => {
                Ok(Self::new(super::memory::MemoryStore::new()))
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let path = sqlite_path(url)?;
                Ok(Self::new(super::sqlite::SqliteStore::open(path).await?))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(Self::new(
                super::postgres::PostgresStore::connect(url).await?,
            )),
            #[cfg(feature = "redis")]
            "redis" => Ok(Self::new(super::redis::RedisStore::connect(url).await?)),
            _ => Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "unsupported store url {url:?}: expected memory, sqlite:PATH, \
                     postgres://... or redis://... with the matching cargo feature"
                ),
            )),
        }
    }

    /// Returns the message queue.
    pub fn queue(&self) -> Arc<dyn MessageQueue> {
        self.queue.clone()
    }

    /// Returns the idempotency record store.
    pub fn idempotency(&self) -> Arc<dyn IdempotencyStore> {
        self.idempotency.clone()
    }

    /// Returns the replay-guard store.
    pub fn replay(&self) -> Arc<dyn ReplayStore> {
        self.replay.clone()
    }
}

/// Returns the file path of `sqlite:PATH` or `sqlite://PATH`.
#[cfg(feature = "sqlite")]
fn sqlite_path(url: &str) -> Result<&str, StoreError> {
    let rest = url.strip_prefix("sqlite:").unwrap_or_default();
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(StoreError::new(
            StoreErrorKind::Invalid,
            format!("store url {url:?} names no file: expected sqlite:PATH"),
        ));
    }
    Ok(path)
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Store").field(&self.description).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use http::Method;

    use super::*;
    use crate::store::NewMessage;

    #[tokio::test]
    async fn connect_opens_memory() {
        let store = Store::connect("memory").await.unwrap();
        assert!(format!("{store:?}").contains("MemoryStore"));
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn connect_opens_both_sqlite_spellings() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("courier.db");
        let message = NewMessage::new(
            "q",
            "http://127.0.0.1:9",
            Method::GET,
            "/",
            SystemTime::now(),
        );

        let first = Store::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        first.queue().enqueue(vec![message.clone()]).await.unwrap();
        let second = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();

        let found = second.queue().get(message.id).await.unwrap();
        assert!(found.is_some(), "both urls must name the same file");
    }

    #[tokio::test]
    async fn connect_rejects_unknown_schemes() {
        for url in ["mysql://127.0.0.1/db", "memory:extra", "sqlite:", ""] {
            let error = Store::connect(url).await.unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Invalid, "{url}");
        }
    }
}
