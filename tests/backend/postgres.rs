//! Trials of behaviour only the PostgreSQL store has: migrations,
//! `LISTEN/NOTIFY`, group commit and `SKIP LOCKED` claims.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use libtest_mimic::Trial;
use sqlx::Row;
use tower_courier::store::postgres::{PostgresOptions, PostgresStore};
use tower_courier::store::{
    ClaimOutcome, Fingerprint, IdempotencyKey, IdempotencyStore, MessageQueue, MessageState,
    NewMessage, Outcome, ReplayStore, Store, StoreErrorKind,
};

use crate::support::{long_ago, server_url, trial, unique_name};

const VARIABLE: &str = "TOWER_COURIER_POSTGRES_URL";

/// Returns the PostgreSQL-specific trials.
pub(crate) fn trials() -> Vec<Trial> {
    let url = server_url(VARIABLE);
    let url = url.as_deref();
    vec![
        trial("pg_message_round_trips", url, VARIABLE, message_round_trips),
        trial("pg_duplicate_ids_skipped", url, VARIABLE, duplicate_ids_skipped),
        trial("pg_concurrent_claims_disjoint", url, VARIABLE, concurrent_claims_disjoint),
        trial("pg_expired_lease_fenced", url, VARIABLE, expired_lease_fenced),
        trial("pg_group_commit_answers_all", url, VARIABLE, group_commit_answers_all),
        trial("pg_concurrent_migrations", url, VARIABLE, concurrent_migrations),
        trial("pg_newer_schema_rejected", url, VARIABLE, newer_schema_rejected),
        trial("pg_notify_wakes_other_store", url, VARIABLE, notify_wakes_other_store),
        trial("pg_listener_survives_kill", url, VARIABLE, listener_survives_kill),
        trial("pg_idempotency_claim_race", url, VARIABLE, idempotency_claim_race),
        trial("pg_replay_insert_race", url, VARIABLE, replay_insert_race),
        trial("pg_store_connect_url", url, VARIABLE, store_connect_url),
    ]
}

/// Opens a store in a fresh schema.
async fn open(url: &str) -> PostgresStore {
    open_with(url, PostgresOptions::new()).await
}

async fn open_with(url: &str, options: PostgresOptions) -> PostgresStore {
    let options = options.schema(unique_name("t_"));
    PostgresStore::connect_with(url, options)
        .await
        .expect("the test database must accept connections")
}

fn message(queue: &str) -> NewMessage {
    NewMessage::new(queue, "http://127.0.0.1:9", Method::POST, "/orders", long_ago())
}

async fn message_round_trips(url: String) {
    let store = open(&url).await;
    let store: &dyn MessageQueue = &store;
    let mut new = message("outbox");
    new.headers.append("link", HeaderValue::from_static("<a>"));
    new.headers.append("link", HeaderValue::from_static("<b>"));
    new.headers
        .insert("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    new.body = Bytes::from_static(b"\x00binary\xff");
    new.metadata.insert("principal".into(), "billing".into());

    assert_eq!(store.enqueue(vec![new.clone()]).await.unwrap(), [true]);
    let claimed = store.claim("outbox", 10, Duration::from_secs(30)).await.unwrap();

    assert_eq!(claimed.len(), 1);
    let got = &claimed[0].message;
    assert_eq!(got.id, new.id);
    assert_eq!(got.headers, new.headers);
    assert_eq!(got.body, new.body);
    assert_eq!(got.metadata, new.metadata);
    assert_eq!(got.available_at, new.available_at);
    assert_eq!(got.state, MessageState::InFlight);
    assert_eq!(got.attempts, 1);

    let outcome = Outcome {
        status: StatusCode::CREATED,
        body: Bytes::from_static(b"ok"),
    };
    store
        .complete(&claimed[0].lease, Some(outcome.clone()))
        .await
        .unwrap();
    let done = store.get(new.id).await.unwrap().unwrap();
    assert_eq!(done.state, MessageState::Succeeded);
    assert_eq!(done.outcome, Some(outcome));
}

async fn duplicate_ids_skipped(url: String) {
    let store = open(&url).await;
    let store: &dyn MessageQueue = &store;
    let first = message("outbox");
    let mut changed = first.clone();
    changed.destination = "http://127.0.0.1:10".into();

    let stored = store
        .enqueue(vec![first.clone(), changed.clone()])
        .await
        .unwrap();
    assert_eq!(stored, [true, false]);

    let again = store.enqueue(vec![changed, message("outbox")]).await.unwrap();
    assert_eq!(again, [false, true]);
    let kept = store.get(first.id).await.unwrap().unwrap();
    assert_eq!(kept.destination, first.destination);
}

async fn concurrent_claims_disjoint(url: String) {
    let store: Arc<dyn MessageQueue> = Arc::new(open(&url).await);
    let messages: Vec<_> = (0..300).map(|_| message("work")).collect();
    store.enqueue(messages).await.unwrap();

    let mut workers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let batch = store.claim("work", 7, Duration::from_secs(60)).await.unwrap();
                if batch.is_empty() {
                    return ids;
                }
                ids.extend(batch.into_iter().map(|claim| claim.message.id));
            }
        }));
    }

    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 300);
    assert_eq!(distinct.len(), 300);
}

async fn expired_lease_fenced(url: String) {
    let store = open(&url).await;
    let store: &dyn MessageQueue = &store;
    let new = message("outbox");
    store.enqueue(vec![new.clone()]).await.unwrap();
    let first = store
        .claim("outbox", 1, Duration::from_millis(200))
        .await
        .unwrap()
        .remove(0);

    assert!(store.claim("outbox", 1, Duration::from_secs(30)).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = store
        .claim("outbox", 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);

    assert!(second.lease.token > first.lease.token);
    assert_eq!(second.message.attempts, 2);
    let stale = store.complete(&first.lease, None).await.unwrap_err();
    assert_eq!(stale.kind(), StoreErrorKind::LeaseLost);
    let stale_renew = store
        .renew(&first.lease, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(stale_renew.kind(), StoreErrorKind::LeaseLost);
    store.release(&second.lease).await.unwrap();
    let released = store.get(new.id).await.unwrap().unwrap();
    assert_eq!(released.state, MessageState::Pending);
    assert_eq!(released.attempts, 1);
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

async fn concurrent_migrations(url: String) {
    let schema = unique_name("t_");
    let connect = |schema: String| {
        let url = url.clone();
        tokio::spawn(async move {
            PostgresStore::connect_with(&url, PostgresOptions::new().schema(schema)).await
        })
    };
    let tasks: Vec<_> = (0..4).map(|_| connect(schema.clone())).collect();
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(task.await.unwrap().expect("every concurrent migration must succeed"));
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
    let sql = format!("INSERT INTO {}.schema_version (version) VALUES (999)", store.schema());
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .unwrap();

    let options = PostgresOptions::new().schema(store.schema());
    let error = PostgresStore::connect_with(&url, options).await.unwrap_err();
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
    let name = format!("tower-courier listener {}", store.schema());
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

async fn idempotency_claim_race(url: String) {
    let store: Arc<dyn IdempotencyStore> = Arc::new(open(&url).await);
    let key = IdempotencyKey {
        principal: Some("billing".into()),
        method: "POST".into(),
        path: "/orders".into(),
        key: unique_name("k"),
    };
    let mut claims = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let key = key.clone();
        claims.push(tokio::spawn(async move {
            store
                .claim(&key, Fingerprint([7; 32]), Duration::from_secs(30))
                .await
                .unwrap()
        }));
    }

    let mut won = 0;
    for claim in claims {
        match claim.await.unwrap() {
            ClaimOutcome::Claimed(_) => won += 1,
            ClaimOutcome::InProgress { fingerprint } => assert_eq!(fingerprint, Fingerprint([7; 32])),
            ClaimOutcome::Completed(record) => panic!("nothing completed, got {record:?}"),
        }
    }
    assert_eq!(won, 1);
}

async fn replay_insert_race(url: String) {
    let store = Arc::new(open(&url).await);
    let mut inserts = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        inserts.push(tokio::spawn(async move {
            store
                .insert("kid", "bm9uY2Utbm9uY2Utbm9uY2U", Duration::from_secs(60))
                .await
                .unwrap()
        }));
    }
    let mut accepted = 0;
    for insert in inserts {
        accepted += usize::from(insert.await.unwrap());
    }
    assert_eq!(accepted, 1);

    let short = store.insert("kid", "short-lived-nonce", Duration::from_millis(100));
    assert!(short.await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = store.insert("kid", "short-lived-nonce", Duration::from_secs(60));
    assert!(again.await.unwrap());
}

async fn store_connect_url(url: String) {
    let store = Store::connect(&url).await.unwrap();
    assert!(format!("{store:?}").contains("PostgresStore"));
    let counts = store.queue().counts(&unique_name("q")).await.unwrap();
    assert_eq!(counts.pending, 0);
}
