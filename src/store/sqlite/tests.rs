use std::time::{Duration, SystemTime};

use http::Method;

use super::*;
use crate::store::{MessageQueue, NewMessage, StoreErrorKind};

fn message() -> NewMessage {
    NewMessage::new(
        "outbox",
        "http://127.0.0.1:9",
        Method::POST,
        "/",
        SystemTime::now(),
    )
}

#[tokio::test]
async fn reopened_file_keeps_messages() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("courier.db");
    let sent = message();

    let store = SqliteStore::open(&path).await.unwrap();
    store.enqueue(vec![sent.clone()]).await.unwrap();
    drop(store);
    let reopened = SqliteStore::open(&path).await.unwrap();

    let found = reopened.get(sent.id).await.unwrap().expect("message kept");
    assert_eq!(found.path_and_query, sent.path_and_query);
}

#[tokio::test]
async fn newer_schema_is_rejected() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("courier.db");
    let store = SqliteStore::open(&path).await.unwrap();
    sqlx::query("UPDATE courier_schema_version SET version = 99")
        .execute(store.pool())
        .await
        .unwrap();
    drop(store);

    let error = SqliteStore::open(&path).await.unwrap_err();

    assert_eq!(error.kind(), StoreErrorKind::Invalid);
    assert!(error.to_string().contains("99"), "{error}");
}

#[tokio::test]
async fn enqueue_in_commits_with_the_caller() {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(directory.path().join("courier.db"))
        .await
        .unwrap();
    let (kept, dropped) = (message(), message());

    let mut transaction = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    let stored = store
        .enqueue_in(&mut transaction, std::slice::from_ref(&kept))
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    let mut transaction = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    store
        .enqueue_in(&mut transaction, std::slice::from_ref(&dropped))
        .await
        .unwrap();
    transaction.rollback().await.unwrap();

    assert_eq!(stored, [true]);
    assert!(store.get(kept.id).await.unwrap().is_some());
    assert!(store.get(dropped.id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_request_spares_its_batch() {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(directory.path().join("courier.db"))
        .await
        .unwrap();
    // A trigger makes every insert into the queue "poison" fail with an
    // SQL error, as a full disk or a corrupt page would.
    sqlx::query(
        "CREATE TRIGGER reject_poison BEFORE INSERT ON courier_messages \
         WHEN NEW.queue = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END",
    )
    .execute(store.pool())
    .await
    .unwrap();

    let calls: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            let mut message = message();
            message.queue = if i % 4 == 0 { "poison" } else { "outbox" }.to_owned();
            tokio::spawn(async move { (i, store.enqueue(vec![message]).await) })
        })
        .collect();

    for call in calls {
        let (i, result) = call.await.unwrap();
        match result {
            Ok(stored) if i % 4 != 0 => assert_eq!(stored, [true]),
            Err(error) if i % 4 == 0 => assert_eq!(error.kind(), StoreErrorKind::Unavailable),
            other => panic!("call {i} returned {other:?}"),
        }
    }
    assert_eq!(store.counts("outbox").await.unwrap().pending, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_and_claims_never_fail() {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(directory.path().join("courier.db"))
        .await
        .unwrap();
    let producers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    store.enqueue(vec![message()]).await.unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { drain(&store, 800 / 4).await })
        })
        .collect();

    for producer in producers {
        producer.await.unwrap();
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }

    let counts = store.counts("outbox").await.unwrap();
    assert_eq!(counts.succeeded, 800);
}

/// Claims and completes until `count` messages are done, reading counts
/// between claims so that reads run beside the writer.
async fn drain(store: &SqliteStore, count: usize) {
    let mut done = 0;
    while done < count {
        let limit = (count - done).min(8);
        let claimed = MessageQueue::claim(store, "outbox", limit, Duration::from_secs(60))
            .await
            .unwrap();
        for claim in &claimed {
            MessageQueue::complete(store, &claim.lease, None)
                .await
                .unwrap();
        }
        done += claimed.len();
        store.counts("outbox").await.unwrap();
        if claimed.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test]
async fn empty_path_is_invalid() {
    let error = SqliteStore::open("").await.unwrap_err();

    assert_eq!(error.kind(), crate::store::StoreErrorKind::Invalid);
}
