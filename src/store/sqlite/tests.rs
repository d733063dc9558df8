use std::time::SystemTime;

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
