//! Trials of behaviour only the PostgreSQL store has: migrations,
//! `LISTEN/NOTIFY`, group commit and `SKIP LOCKED` claims.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Trial;
use sqlx::Row;
use tower_courier::store::conformance::Suite;
use tower_courier::store::postgres::{PostgresOptions, PostgresStore};
use tower_courier::store::{MessageQueue, MessageState, Store, StoreErrorKind};

use crate::scenarios::*;
use crate::support::{capture_warnings, run_id, server_url, trial, unique_name};

const VARIABLE: &str = "TOWER_COURIER_POSTGRES_URL";

/// Returns the conformance suite and the PostgreSQL-specific trials.
pub(crate) fn trials() -> Vec<Trial> {
    let url = server_url(VARIABLE);
    let mut trials = conformance(url.clone());
    let url = url.as_deref();
    trials.extend(vec![
        scenario("pg_message_round_trips", url, |s| message_round_trips(s)),
        scenario("pg_duplicate_ids_skipped", url, |s| {
            duplicate_ids_skipped(s)
        }),
        scenario("pg_concurrent_duplicates_stored_once", url, |s| {
            concurrent_duplicates_stored_once(s)
        }),
        scenario("pg_concurrent_claims_disjoint", url, |s| {
            concurrent_claims_disjoint(s)
        }),
        scenario("pg_expired_lease_fenced", url, |s| expired_lease_fenced(s)),
        scenario("pg_list_count_purge_retry", url, |s| {
            list_count_purge_retry(s)
        }),
        scenario("pg_idempotency_claim_race", url, |s| {
            idempotency_claim_race(s)
        }),
        scenario("pg_idempotency_lifecycle", url, |s| {
            idempotency_lifecycle(s)
        }),
        scenario("pg_idempotency_release_reopens", url, |s| {
            idempotency_release_reopens(s)
        }),
        scenario("pg_replay_insert_race", url, |s| replay_insert_race(s)),
        trial(
            "pg_group_commit_answers_all",
            url,
            VARIABLE,
            group_commit_answers_all,
        ),
        trial(
            "pg_group_finish_fences_each_row",
            url,
            VARIABLE,
            group_finish_fences_each_row,
        ),
        trial(
            "pg_bad_enqueue_fails_alone",
            url,
            VARIABLE,
            bad_enqueue_fails_alone,
        ),
        autovacuum_warning_logged(url),
        trial("pg_purge_spans_batches", url, VARIABLE, purge_spans_batches),
        trial(
            "pg_concurrent_migrations",
            url,
            VARIABLE,
            concurrent_migrations,
        ),
        trial(
            "pg_newer_schema_rejected",
            url,
            VARIABLE,
            newer_schema_rejected,
        ),
        trial(
            "pg_notify_wakes_other_store",
            url,
            VARIABLE,
            notify_wakes_other_store,
        ),
        trial(
            "pg_listener_survives_kill",
            url,
            VARIABLE,
            listener_survives_kill,
        ),
        trial("pg_store_connect_url", url, VARIABLE, store_connect_url),
    ]);
    trials
}

/// Returns the store conformance suite, each case on a fresh schema.
fn conformance(url: Option<String>) -> Vec<Trial> {
    let suite = Suite::new("postgres");
    let Some(url) = url else {
        return suite
            .store(|| async { Err("unreachable: every trial is ignored".into()) })
            .ignore_all(format!("set {VARIABLE} to run"))
            .into_trials();
    };
    suite
        .store(move || {
            let url = url.clone();
            async move {
                let options = PostgresOptions::new().schema(schema_name());
                Ok(Store::new(
                    PostgresStore::connect_with(&url, options).await?,
                ))
            }
        })
        .into_trials()
}

/// Returns a trial that runs a shared scenario on a store in a fresh
/// schema.
fn scenario<F, Fut>(name: &str, url: Option<&str>, test: F) -> Trial
where
    F: FnOnce(Arc<PostgresStore>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    trial(name, url, VARIABLE, move |url| async move {
        let store = Arc::new(open(&url).await);
        let pool = store.pool().clone();
        let schema = store.schema().to_owned();
        test(store).await;
        drop_schema(&pool, &schema).await;
    })
}

/// Drops a trial's schema, so passing trials leave nothing.
async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
    let sql = format!("DROP SCHEMA {schema} CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

/// Returns a fresh schema name that starts with this run's prefix.
fn schema_name() -> String {
    unique_name(&format!("t_{}_", run_id()))
}

/// Drops every schema this run created, including those of the
/// conformance suite, which has no teardown of its own.
pub(crate) fn clean_up() {
    let Some(url) = server_url(VARIABLE) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime must start");
    runtime.block_on(async {
        let Ok(pool) = sqlx::PgPool::connect(&url).await else {
            return;
        };
        let pattern = format!("t\\_{}\\_%", run_id());
        let schemas: Vec<String> =
            sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
                .bind(pattern)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        for schema in schemas {
            drop_schema(&pool, &schema).await;
        }
    });
}

/// Opens a store in a fresh schema.
async fn open(url: &str) -> PostgresStore {
    open_with(url, PostgresOptions::new()).await
}

async fn open_with(url: &str, options: PostgresOptions) -> PostgresStore {
    let options = options.schema(schema_name());
    PostgresStore::connect_with(url, options)
        .await
        .expect("the test database must accept connections")
}

async fn group_commit_answers_all(url: String) {
    let store = Arc::new(open_with(&url, PostgresOptions::new().batch_size(16)).await);
    let mut producers = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        producers.push(tokio::spawn(async move {
            let batch = vec![message("bulk"), message("bulk")];
            store.enqueue(batch).await
        }));
    }
    for producer in producers {
        assert_eq!(producer.await.unwrap().unwrap(), [true, true]);
    }
    assert_eq!(store.counts("bulk").await.unwrap().pending, 128);

    let oversized: Vec<_> = (0..40).map(|_| message("bulk")).collect();
    let stored = store.enqueue(oversized).await.unwrap();
    assert!(stored.iter().all(|stored| *stored));
}

/// Concurrent final states share statements, and each row is still
/// checked against its own lease: stale tokens and second completions
/// fail alone, and every outcome lands on its own message.
async fn group_finish_fences_each_row(url: String) {
    use bytes::Bytes;
    use http::StatusCode;
    use tower_courier::store::{FencingToken, Outcome};

    let store = Arc::new(open_with(&url, PostgresOptions::new().batch_size(16)).await);
    let messages: Vec<_> = (0..60).map(|_| message("finish")).collect();
    store.enqueue(messages).await.unwrap();
    let claimed = store
        .claim("finish", 60, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 60);

    let mut writes = tokio::task::JoinSet::new();
    for (index, claim) in claimed.iter().enumerate() {
        let store = store.clone();
        let mut lease = claim.lease;
        writes.spawn(async move {
            let outcome = Outcome {
                status: StatusCode::CREATED,
                body: Bytes::from(format!("body {}", lease.id)),
            };
            let result = match index % 4 {
                // A stale token must not touch the row.
                0 => {
                    lease.token = FencingToken(lease.token.0 + 1);
                    store.complete(&lease, Some(outcome)).await
                }
                // Two completions of one lease: exactly one may succeed.
                1 => {
                    let again = store.clone();
                    let (first, second) = tokio::join!(
                        store.complete(&lease, Some(outcome.clone())),
                        again.complete(&lease, Some(outcome)),
                    );
                    assert!(first.is_ok() != second.is_ok(), "{first:?} / {second:?}");
                    first.or(second)
                }
                2 => store.fail(&lease, "bad\0request", None).await,
                _ => store.complete(&lease, Some(outcome)).await,
            };
            (index, lease.id, result)
        });
    }

    while let Some(write) = writes.join_next().await {
        let (index, id, result) = write.unwrap();
        let stored = MessageQueue::get(&*store, id).await.unwrap().unwrap();
        match index % 4 {
            0 => {
                assert!(result.unwrap_err().is_lease_lost());
                assert_eq!(stored.state, MessageState::InFlight);
            }
            2 => {
                result.unwrap();
                assert_eq!(stored.state, MessageState::Failed);
                assert_eq!(stored.last_error.as_deref(), Some("badrequest"));
            }
            _ => {
                result.unwrap();
                assert_eq!(stored.state, MessageState::Succeeded);
                let outcome = stored.outcome.expect("a stored outcome");
                assert_eq!(outcome.status, StatusCode::CREATED);
                assert_eq!(outcome.body, format!("body {id}"));
            }
        }
    }
    let counts = store.counts("finish").await.unwrap();
    assert_eq!(
        (counts.succeeded, counts.failed, counts.in_flight),
        (30, 15, 15)
    );
}

async fn bad_enqueue_fails_alone(url: String) {
    let store = open(&url).await;
    for _ in 0..10 {
        // About 280,000 years before PostgreSQL's first timestamp (4713 BC),
        // so the insert fails on the server, not in the store's checks.
        let mut bad = message("bulk");
        bad.available_at = std::time::UNIX_EPOCH - Duration::from_secs(1 << 43);
        let good = message("bulk");

        let (bad_result, good_result) =
            tokio::join!(store.enqueue(vec![bad]), store.enqueue(vec![good.clone()]),);

        assert_eq!(bad_result.unwrap_err().kind(), StoreErrorKind::Invalid);
        assert_eq!(good_result.unwrap(), [true]);
        assert!(MessageQueue::get(&store, good.id).await.unwrap().is_some());
    }
}

async fn purge_spans_batches(url: String) {
    let store = open(&url).await;
    // More than one purge statement deletes (10,000), so the loop must run.
    let messages: Vec<_> = (0..10_050).map(|_| message("bulk")).collect();
    store.enqueue(messages).await.unwrap();

    let later = std::time::SystemTime::now() + Duration::from_secs(3_600);
    let purged = store.purge("bulk", MessageState::Pending, later).await;

    assert_eq!(purged.unwrap(), 10_050);
    assert_eq!(store.counts("bulk").await.unwrap().pending, 0);
}

async fn concurrent_migrations(url: String) {
    let schema = schema_name();
    let connect = |schema: String| {
        let url = url.clone();
        tokio::spawn(async move {
            PostgresStore::connect_with(&url, PostgresOptions::new().schema(schema)).await
        })
    };
    let tasks: Vec<_> = (0..4).map(|_| connect(schema.clone())).collect();
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(
            task.await
                .unwrap()
                .expect("every concurrent migration must succeed"),
        );
    }

    let sql = format!("SELECT count(*) FROM {schema}.schema_version");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(stores[0].pool())
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 1);
}

async fn newer_schema_rejected(url: String) {
    let store = open(&url).await;
    let sql = format!(
        "INSERT INTO {}.schema_version (version) VALUES (999)",
        store.schema()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .unwrap();

    let options = PostgresOptions::new().schema(store.schema());
    let error = PostgresStore::connect_with(&url, options)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Invalid);
}

async fn notify_wakes_other_store(url: String) {
    let listening = open(&url).await;
    let options = PostgresOptions::new().schema(listening.schema());
    let writing = PostgresStore::connect_with(&url, options).await.unwrap();
    let mut subscription = listening.subscribe("outbox");
    wait_for_listener(&listening).await;

    writing.enqueue(vec![message("other")]).await.unwrap();
    assert!(!subscription.wait(Duration::from_millis(300)).await);
    writing.enqueue(vec![message("outbox")]).await.unwrap();
    assert!(subscription.wait(Duration::from_secs(5)).await);
}

async fn listener_survives_kill(url: String) {
    let listening = open(&url).await;
    let options = PostgresOptions::new().schema(listening.schema());
    let writing = PostgresStore::connect_with(&url, options).await.unwrap();
    let mut subscription = listening.subscribe("outbox");
    let first_pid = wait_for_listener(&listening).await;

    let killed: bool = sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first_pid)
        .fetch_one(writing.pool())
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let second_pid = wait_for_new_listener(&listening, first_pid).await;
    assert_ne!(second_pid, first_pid);

    // The reconnect itself wakes subscribers; drain that wake-up so the
    // next one can only come from the notification.
    while subscription.wait(Duration::from_millis(300)).await {}
    writing.enqueue(vec![message("outbox")]).await.unwrap();
    assert!(subscription.wait(Duration::from_secs(5)).await);
}

/// Waits until the listener of `store` is listening, and returns its
/// backend's process id.
async fn wait_for_listener(store: &PostgresStore) -> i32 {
    wait_for_new_listener(store, 0).await
}

async fn wait_for_new_listener(store: &PostgresStore, old_pid: i32) -> i32 {
    let name = format!("courier-listen {}", store.schema());
    for _ in 0..100 {
        let row = sqlx::query(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> $2 AND query LIKE 'LISTEN%'",
        )
        .bind(&name)
        .bind(old_pid)
        .fetch_optional(store.pool())
        .await
        .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no listener backend named {name:?} appeared within 10 s");
}

async fn store_connect_url(url: String) {
    let store = Store::connect(&url).await.unwrap();
    assert!(format!("{store:?}").contains("PostgresStore"));
    let counts = store.queue().counts(&unique_name("q")).await.unwrap();
    assert_eq!(counts.pending, 0);
}

/// Returns a trial on warnings captured now, before other trials run (see
/// `capture_warnings` for why).
fn autovacuum_warning_logged(url: Option<&str>) -> Trial {
    let name = "pg_autovacuum_warning_logged";
    let Some(url) = url.map(str::to_owned) else {
        return trial(name, None, VARIABLE, |_| async {});
    };
    let captured = capture_warnings(async move {
        let store = open(&url).await;
        let setting: String = sqlx::query("SELECT current_setting('autovacuum')")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get(0);
        drop_schema(store.pool(), store.schema()).await;
        setting
    });

    Trial::test(name, move || {
        let (setting, warnings) = captured?;
        let warned = warnings
            .iter()
            .any(|warning| warning.contains("autovacuum is off"));
        assert_eq!(
            warned,
            setting == "off",
            "autovacuum {setting}: {warnings:?}"
        );
        Ok(())
    })
}
