//! The timed loops: each runs a given number of operations against a store
//! and returns the elapsed time, for criterion's `iter_custom`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tower_courier::store::{
    ClaimOutcome, Fingerprint, IdempotencyKey, IdempotencyStore, MessageQueue, NewMessage,
    StoredResponse,
};

/// The queue every message goes to.
pub(crate) const QUEUE: &str = "bench";

/// How many messages one claim of [`claim_complete`] takes.
pub(crate) const CLAIM_SIZE: usize = 64;

/// Body size of every enqueued message.
const BODY_BYTES: usize = 512;

/// How long a claim's lease lasts; no benchmark comes close to it.
const LEASE: Duration = Duration::from_secs(60);

/// How long completed idempotency records are kept.
const RETENTION: Duration = Duration::from_secs(600);

fn message() -> NewMessage {
    let mut message = NewMessage::new(
        QUEUE,
        "http://127.0.0.1:9",
        Method::POST,
        "/orders",
        SystemTime::now(),
    );
    message.body = Bytes::from(vec![b'x'; BODY_BYTES]);
    message
        .headers
        .insert("content-type", HeaderValue::from_static("application/json"));
    message
}

/// Enqueues `each` messages from each of `producers` tasks, one message
/// per call, each call waiting for the store's reply.
pub(crate) async fn enqueue(queue: &Arc<dyn MessageQueue>, producers: u64, each: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for _ in 0..each {
                    queue.enqueue(vec![message()]).await.expect("enqueue");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("producer panicked");
    }
    start.elapsed()
}

/// Fills the queue with `total` messages in batches of 500; not timed.
pub(crate) async fn fill(queue: &Arc<dyn MessageQueue>, total: u64) {
    let mut left = total;
    while left > 0 {
        let size = left.min(500);
        let batch = (0..size).map(|_| message()).collect();
        queue.enqueue(batch).await.expect("enqueue");
        left -= size;
    }
}

/// Claims and completes messages with `workers` tasks, [`CLAIM_SIZE`] per
/// claim with the completes of one claim in flight together, until the
/// queue is empty.
pub(crate) async fn claim_complete(queue: &Arc<dyn MessageQueue>, workers: usize) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                loop {
                    let claimed = queue.claim(QUEUE, CLAIM_SIZE, LEASE).await.expect("claim");
                    if claimed.is_empty() {
                        return;
                    }
                    let completes = claimed
                        .iter()
                        .map(|claim| queue.complete(&claim.lease, None));
                    for result in futures_util::future::join_all(completes).await {
                        result.expect("complete");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("worker panicked");
    }
    start.elapsed()
}

/// Claims `each` fresh idempotency keys from each of `clients` tasks and
/// completes each with a small stored response: the store work of one
/// request through the idempotency layer.
pub(crate) async fn idempotency(
    records: &Arc<dyn IdempotencyStore>,
    clients: u64,
    each: u64,
    next_key: &Arc<AtomicU64>,
) -> Duration {
    let response = Arc::new(stored_response());
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (records, response, next_key) =
                (records.clone(), response.clone(), next_key.clone());
            tokio::spawn(async move {
                for _ in 0..each {
                    let number = next_key.fetch_add(1, Ordering::Relaxed);
                    claim_and_complete(&*records, number, &response).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client panicked");
    }
    start.elapsed()
}

async fn claim_and_complete(
    records: &dyn IdempotencyStore,
    number: u64,
    response: &StoredResponse,
) {
    let key = IdempotencyKey {
        principal: Some("bench".to_owned()),
        method: "POST".to_owned(),
        path: "/orders".to_owned(),
        key: format!("key-{number}"),
    };
    let mut fingerprint = [0; 32];
    fingerprint[..8].copy_from_slice(&number.to_be_bytes());

    let outcome = records
        .claim(&key, Fingerprint(fingerprint), LEASE)
        .await
        .expect("claim an idempotency key");
    let ClaimOutcome::Claimed(token) = outcome else {
        panic!("a fresh key must be claimed, got {outcome:?}");
    };
    records
        .complete(&key, token, response, RETENTION)
        .await
        .expect("complete an idempotency key");
}

/// A small JSON `201 Created`, as an API typically stores for replay.
fn stored_response() -> StoredResponse {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    StoredResponse {
        status: StatusCode::CREATED,
        headers,
        body: Bytes::from_static(br#"{"order":42,"status":"created"}"#),
    }
}
