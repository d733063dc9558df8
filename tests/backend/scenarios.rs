//! Scenarios that the PostgreSQL and Redis targets both run on their
//! store, for behaviour that rests on each backend's own statements or
//! scripts: concurrency, server-side lease expiry and fencing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tower_courier::store::{
    ClaimOutcome, Fingerprint, IdempotencyKey, IdempotencyRecord, IdempotencyStore, MessageQueue,
    MessageState, NewMessage, Outcome, ReplayStore, StoreErrorKind, StoredResponse,
};

use crate::support::{long_ago, unique_name};

pub(crate) fn message(queue: &str) -> NewMessage {
    NewMessage::new(
        queue,
        "http://127.0.0.1:9",
        Method::POST,
        "/orders",
        long_ago(),
    )
}

pub(crate) async fn message_round_trips(store: Arc<dyn MessageQueue>) {
    let mut new = message("outbox");
    new.headers.append("link", HeaderValue::from_static("<a>"));
    new.headers.append("link", HeaderValue::from_static("<b>"));
    new.headers
        .insert("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    new.body = Bytes::from_static(b"\x00binary\xff");
    new.metadata.insert("principal".into(), "billing".into());

    assert_eq!(store.enqueue(vec![new.clone()]).await.unwrap(), [true]);
    let claimed = store
        .claim("outbox", 10, Duration::from_secs(30))
        .await
        .unwrap();

    assert_eq!(claimed.len(), 1);
    let got = &claimed[0].message;
    assert_eq!(got.id, new.id);
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.path_and_query, "/orders");
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

pub(crate) async fn duplicate_ids_skipped(store: Arc<dyn MessageQueue>) {
    let first = message("outbox");
    let mut changed = first.clone();
    changed.destination = "http://127.0.0.1:10".into();

    let stored = store
        .enqueue(vec![first.clone(), changed.clone()])
        .await
        .unwrap();
    assert_eq!(stored, [true, false]);

    let again = store
        .enqueue(vec![changed, message("outbox")])
        .await
        .unwrap();
    assert_eq!(again, [false, true]);
    let kept = store.get(first.id).await.unwrap().unwrap();
    assert_eq!(kept.destination, first.destination);
}

pub(crate) async fn concurrent_duplicates_stored_once(store: Arc<dyn MessageQueue>) {
    for _ in 0..20 {
        let shared = message("outbox");
        let (first, second) = tokio::join!(
            store.enqueue(vec![shared.clone(), message("outbox")]),
            store.enqueue(vec![message("outbox"), shared.clone()]),
        );
        let (first, second) = (first.unwrap(), second.unwrap());

        assert_eq!((first[1], second[0]), (true, true));
        assert!(
            first[0] != second[1],
            "exactly one caller stores {:?}",
            shared.id
        );
    }
}

pub(crate) async fn concurrent_claims_disjoint(store: Arc<dyn MessageQueue>) {
    let messages: Vec<_> = (0..300).map(|_| message("work")).collect();
    store.enqueue(messages).await.unwrap();

    let mut workers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let batch = store
                    .claim("work", 7, Duration::from_secs(60))
                    .await
                    .unwrap();
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

pub(crate) async fn expired_lease_fenced(store: Arc<dyn MessageQueue>) {
    let new = message("outbox");
    store.enqueue(vec![new.clone()]).await.unwrap();
    let first = store
        .claim("outbox", 1, Duration::from_millis(200))
        .await
        .unwrap()
        .remove(0);

    let early = store
        .claim("outbox", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(early.is_empty());
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

    let renewed = store
        .renew(&second.lease, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(renewed.expires_at > second.lease.expires_at);
    store.release(&renewed).await.unwrap();
    let released = store.get(new.id).await.unwrap().unwrap();
    assert_eq!(released.state, MessageState::Pending);
    assert_eq!(released.attempts, 1);
}

pub(crate) async fn list_count_purge_retry(store: Arc<dyn MessageQueue>) {
    let messages: Vec<_> = (0..5).map(|_| message("admin")).collect();
    store.enqueue(messages.clone()).await.unwrap();
    let claimed = store
        .claim("admin", 3, Duration::from_secs(30))
        .await
        .unwrap();
    store.complete(&claimed[0].lease, None).await.unwrap();
    store
        .dead_letter(&claimed[1].lease, "too many attempts", None)
        .await
        .unwrap();
    let later = long_ago() + Duration::from_secs(3_600 * 24 * 365 * 100);
    store
        .reschedule(&claimed[2].lease, later, "503 from receiver")
        .await
        .unwrap();

    let counts = store.counts("admin").await.unwrap();
    assert_eq!((counts.pending, counts.succeeded, counts.dead), (3, 1, 1));
    let first_page = store
        .list("admin", MessageState::Pending, 2, None)
        .await
        .unwrap();
    let second_page = store
        .list("admin", MessageState::Pending, 2, Some(first_page[1].id))
        .await
        .unwrap();
    let paged: Vec<_> = first_page
        .iter()
        .chain(&second_page)
        .map(|m| m.id)
        .collect();
    assert_eq!(paged.len(), 3);
    assert!(paged.windows(2).all(|pair| pair[0] < pair[1]));
    let rescheduled = store.get(claimed[2].message.id).await.unwrap().unwrap();
    assert_eq!(rescheduled.last_error.as_deref(), Some("503 from receiver"));
    assert_eq!(rescheduled.available_at, later);

    let dead_id = claimed[1].message.id;
    assert!(store.retry(dead_id).await.unwrap());
    assert!(!store.retry(dead_id).await.unwrap());
    let retried = store.get(dead_id).await.unwrap().unwrap();
    assert_eq!(
        (retried.state, retried.attempts),
        (MessageState::Pending, 0)
    );

    let future = std::time::SystemTime::now() + Duration::from_secs(3_600);
    assert_eq!(
        store
            .purge("admin", MessageState::InFlight, future)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge("admin", MessageState::Succeeded, long_ago())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge("admin", MessageState::Succeeded, future)
            .await
            .unwrap(),
        1
    );
    assert!(store.get(claimed[0].message.id).await.unwrap().is_none());
}

fn idempotency_key() -> IdempotencyKey {
    IdempotencyKey {
        principal: Some("billing".into()),
        method: "POST".into(),
        path: "/orders".into(),
        key: unique_name("k"),
    }
}

pub(crate) async fn idempotency_claim_race(store: Arc<dyn IdempotencyStore>) {
    let key = idempotency_key();
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
            ClaimOutcome::InProgress { fingerprint } => {
                assert_eq!(fingerprint, Fingerprint([7; 32]));
            }
            ClaimOutcome::Completed(record) => panic!("nothing completed, got {record:?}"),
        }
    }
    assert_eq!(won, 1);
}

pub(crate) async fn idempotency_lifecycle(store: Arc<dyn IdempotencyStore>) {
    let key = idempotency_key();
    let short = Duration::from_millis(200);
    let ClaimOutcome::Claimed(stale) = store
        .claim(&key, Fingerprint([1; 32]), short)
        .await
        .unwrap()
    else {
        panic!("a fresh key must be claimed");
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.get(&key).await.unwrap().is_none());

    let lease = Duration::from_secs(30);
    let ClaimOutcome::Claimed(token) = store
        .claim(&key, Fingerprint([2; 32]), lease)
        .await
        .unwrap()
    else {
        panic!("an expired claim must be taken over");
    };
    assert!(token > stale);
    let mut headers = HeaderMap::new();
    headers.append("set-id", HeaderValue::from_static("1"));
    headers.append("set-id", HeaderValue::from_static("2"));
    let response = StoredResponse {
        status: StatusCode::CREATED,
        headers,
        body: Bytes::from_static(b"{\"id\":42}"),
    };
    let retention = Duration::from_secs(3_600);
    let refused = store.complete(&key, stale, &response, retention).await;
    assert_eq!(refused.unwrap_err().kind(), StoreErrorKind::LeaseLost);
    store.renew(&key, token, lease).await.unwrap();
    store
        .complete(&key, token, &response, retention)
        .await
        .unwrap();

    match store
        .claim(&key, Fingerprint([3; 32]), lease)
        .await
        .unwrap()
    {
        ClaimOutcome::Completed(record) => {
            assert_eq!(record.fingerprint, Fingerprint([2; 32]));
            assert_eq!(record.response, response);
        }
        other => panic!("a completed record must be replayed, got {other:?}"),
    }
    let released = store.release(&key, token).await;
    assert_eq!(released.unwrap_err().kind(), StoreErrorKind::LeaseLost);
    assert!(matches!(
        store.get(&key).await.unwrap(),
        Some(IdempotencyRecord::Completed(_))
    ));
}

pub(crate) async fn idempotency_release_reopens(store: Arc<dyn IdempotencyStore>) {
    let key = idempotency_key();
    let lease = Duration::from_secs(30);
    let ClaimOutcome::Claimed(token) = store
        .claim(&key, Fingerprint([1; 32]), lease)
        .await
        .unwrap()
    else {
        panic!("a fresh key must be claimed");
    };
    store.release(&key, token).await.unwrap();
    let again = store
        .claim(&key, Fingerprint([1; 32]), lease)
        .await
        .unwrap();
    assert!(matches!(again, ClaimOutcome::Claimed(next) if next > token));
}

pub(crate) async fn replay_insert_race(store: Arc<dyn ReplayStore>) {
    let nonce = unique_name("n");
    let mut inserts = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let nonce = nonce.clone();
        inserts.push(tokio::spawn(async move {
            store
                .insert("kid", &nonce, Duration::from_secs(60))
                .await
                .unwrap()
        }));
    }
    let mut accepted = 0;
    for insert in inserts {
        accepted += usize::from(insert.await.unwrap());
    }
    assert_eq!(accepted, 1);
    assert!(
        store
            .insert("other-kid", &nonce, Duration::from_secs(60))
            .await
            .unwrap()
    );

    let short = store.insert("kid", "short-lived-nonce", Duration::from_millis(100));
    assert!(short.await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = store.insert("kid", "short-lived-nonce", Duration::from_secs(60));
    assert!(again.await.unwrap());
}
