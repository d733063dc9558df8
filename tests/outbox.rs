//! The outbox layer and its dispatcher against real loopback receivers.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Receiver, always, client, post, sequence, silent_receiver};
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::MessageId;
use tower_courier::auth::{Key, KeyRing, SignLayer, SignatureHeader, SignedParts, body_digest};
use tower_courier::outbox::{Delivery, Dispatcher, OutboxErrorKind, OutboxLayer, QueuedReason};
use tower_courier::retry::Backoff;
use tower_courier::store::memory::MemoryStore;
use tower_courier::store::{MessageQueue, MessageState};
use tower_courier::worker::WorkerHandle;

fn memory_store() -> Arc<dyn MessageQueue> {
    Arc::new(MemoryStore::new())
}

/// Returns a backoff that retries within a second.
fn quick_backoff() -> Backoff {
    Backoff::default()
        .initial_delay(Duration::from_millis(200))
        .min_delay(Duration::from_millis(50))
        .max_delay(Duration::from_secs(1))
}

fn dispatcher(store: Arc<dyn MessageQueue>) -> Dispatcher {
    Dispatcher::new(store, client())
        .backoff(quick_backoff())
        .poll_interval(Duration::from_millis(50))
        .attempt_timeout(Duration::from_secs(2))
}

async fn wait_for_state(store: &Arc<dyn MessageQueue>, id: MessageId, state: MessageState) {
    for _ in 0..200 {
        let message = store.get(id).await.unwrap().expect("message is stored");
        if message.state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = store.get(id).await.unwrap();
    panic!("message never reached {state}: {message:?}");
}

async fn queued_id<B: std::fmt::Debug>(delivery: Delivery<B>) -> MessageId {
    match delivery {
        Delivery::Queued(queued) => queued.id,
        other => panic!("expected queued, got {other:?}"),
    }
}

fn signing_key() -> Key {
    Key::from_bytes("outbox-test", &[7; 32]).unwrap()
}

/// Checks the `X-Authentication` header of `received` against the test key
/// and returns its nonce.
fn verified_nonce(received: &common::Received) -> String {
    let value = received
        .header("x-authentication")
        .expect("every attempt is signed");
    let header = SignatureHeader::parse(value.as_bytes()).unwrap();
    let digest = body_digest(&received.body);
    let target = received.uri.to_string();
    let parts = SignedParts {
        kid: header.kid(),
        ts: header.ts(),
        nonce: header.nonce(),
        method: received.method.as_str(),
        path_and_query: &target,
        body_digest: &digest,
    };

    let expected = signing_key().sign(parts.string_to_sign().as_bytes());
    assert_eq!(header.signature(), &expected, "signature of {value}");
    header.nonce().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_recovers_after_outage() {
    let store = memory_store();
    let addr = common::free_addr().await;
    // The signing layer sits below the outbox, so every attempt, inline or
    // from the dispatcher, is signed when it is sent.
    let signed_client = ServiceBuilder::new()
        .layer(SignLayer::new(KeyRing::single(signing_key())))
        .service(client());
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::optimistic(store.clone()).backoff(quick_backoff()))
        .service(signed_client.clone());

    let delivery = outbox
        .oneshot(post(
            &format!("http://{addr}/orders?x=1"),
            r#"{"order":42}"#,
        ))
        .await
        .unwrap();
    let id = queued_id(delivery).await;
    let stored = store.get(id).await.unwrap().unwrap();
    assert!(!stored.headers.contains_key("x-authentication"));
    let handle = Dispatcher::new(store.clone(), signed_client)
        .backoff(quick_backoff())
        .poll_interval(Duration::from_millis(50))
        .spawn();

    // The receiver refuses connections for 2 s, then responds 500 twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let receiver = Receiver::start_on(addr, sequence(&[500, 500, 201]), Arc::default()).await;
    wait_for_state(&store, id, MessageState::Succeeded).await;
    handle.shutdown().await;

    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let mut nonces = HashSet::new();
    for attempt in &received {
        assert_eq!(attempt.body, r#"{"order":42}"#);
        assert_eq!(attempt.uri.to_string(), "/orders?x=1");
        assert_eq!(attempt.header("idempotency-key"), Some(id.to_string()));
        assert_eq!(
            attempt.header("content-type").as_deref(),
            Some("application/json")
        );
        nonces.insert(verified_nonce(attempt));
    }
    assert_eq!(nonces.len(), 3, "each attempt has a fresh nonce");

    let message = store.get(id).await.unwrap().unwrap();
    assert_eq!(message.outcome.unwrap().status, 201);
    assert!(handle.metrics().retried >= 2, "{:?}", handle.metrics());
    assert_eq!(handle.metrics().delivered, 1);
}

#[tokio::test]
async fn transient_failures_are_queued() {
    let (silent, _task) = silent_receiver().await;
    let refused = common::free_addr().await;
    let unavailable = Receiver::start(always(503)).await;
    let throttled = Receiver::start(always(429)).await;
    let cases = [
        ("timeout", format!("http://{silent}/x")),
        ("connection refused", format!("http://{refused}/x")),
        ("503", unavailable.url("/x")),
        ("429", throttled.url("/x")),
    ];

    for (case, url) in cases {
        let store = memory_store();
        let outbox = ServiceBuilder::new()
            .layer(
                OutboxLayer::optimistic(store.clone()).attempt_timeout(Duration::from_millis(300)),
            )
            .service(client());

        let delivery = outbox.oneshot(post(&url, "{}")).await.unwrap();

        let Delivery::Queued(queued) = delivery else {
            panic!("{case}: expected queued, got {delivery:?}");
        };
        assert!(
            matches!(queued.reason, QueuedReason::Transient { .. }),
            "{case}"
        );
        let stored = store.get(queued.id).await.unwrap();
        assert_eq!(
            stored.map(|message| message.state),
            Some(MessageState::Pending),
            "{case}"
        );
    }
}

#[tokio::test]
async fn permanent_failures_come_back() {
    for code in [400, 404, 422] {
        let receiver = Receiver::start(always(code)).await;
        let store = memory_store();
        let outbox = ServiceBuilder::new()
            .layer(OutboxLayer::optimistic(store.clone()))
            .service(client());

        let delivery = outbox
            .oneshot(post(&receiver.url("/x"), "{}"))
            .await
            .unwrap();

        let Delivery::Rejected(response) = delivery else {
            panic!("{code}: expected rejected, got {delivery:?}");
        };
        assert_eq!(response.status(), code);
        assert_eq!(store.counts("outbox").await.unwrap().pending, 0, "{code}");
    }
}

#[tokio::test]
async fn unsupported_scheme_comes_back() {
    let store = memory_store();
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::optimistic(store.clone()))
        .service(client());

    let error = outbox
        .oneshot(post("ftp://127.0.0.1/file", "{}"))
        .await
        .unwrap_err();

    assert_eq!(error.kind(), OutboxErrorKind::InvalidRequest);
    assert_eq!(store.counts("outbox").await.unwrap(), Default::default());
}

#[tokio::test]
async fn https_without_tls_comes_back() {
    let store = memory_store();
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::optimistic(store.clone()))
        .service(client());

    let error = outbox
        .oneshot(post("https://127.0.0.1:9/x", "{}"))
        .await
        .unwrap_err();

    assert_eq!(error.kind(), OutboxErrorKind::Client);
    assert_eq!(store.counts("outbox").await.unwrap(), Default::default());
}

#[tokio::test]
async fn success_stores_nothing() {
    let receiver = Receiver::start(always(200)).await;
    let store = memory_store();
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::optimistic(store.clone()))
        .service(client());

    let delivery = outbox
        .oneshot(post(&receiver.url("/x"), "{}"))
        .await
        .unwrap();

    assert!(delivery.is_delivered(), "{delivery:?}");
    assert_eq!(store.counts("outbox").await.unwrap(), Default::default());
    let key = receiver.received()[0].header("idempotency-key").unwrap();
    assert!(key.parse::<MessageId>().is_ok(), "{key}");
}

#[tokio::test]
async fn caller_key_kept_in_outbox() {
    let receiver = Receiver::start(sequence(&[503, 200])).await;
    let store = memory_store();
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::optimistic(store.clone()).backoff(quick_backoff()))
        .service(client());
    let mut request = post(&receiver.url("/x"), "{}");
    request
        .headers_mut()
        .insert("idempotency-key", "caller-key-1".parse().unwrap());

    let id = queued_id(outbox.oneshot(request).await.unwrap()).await;
    let handle = dispatcher(store.clone()).spawn();
    wait_for_state(&store, id, MessageState::Succeeded).await;
    handle.shutdown().await;

    let keys: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(
        keys,
        [
            Some("caller-key-1".to_owned()),
            Some("caller-key-1".to_owned())
        ]
    );
}

#[tokio::test]
async fn background_mode_queues_at_once() {
    let receiver = Receiver::start(always(204)).await;
    let store = memory_store();
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::background(store.clone()))
        .service(client());

    let delivery = outbox
        .oneshot(post(&receiver.url("/x"), "{}"))
        .await
        .unwrap();

    let Delivery::Queued(queued) = delivery else {
        panic!("expected queued, got {delivery:?}");
    };
    assert_eq!(queued.reason, QueuedReason::Background);
    assert_eq!(receiver.count(), 0);

    let handle = dispatcher(store.clone()).spawn();
    wait_for_state(&store, queued.id, MessageState::Succeeded).await;
    handle.shutdown().await;
    assert_eq!(receiver.count(), 1);
}

#[tokio::test]
async fn background_permanent_failure_dead_lettered() {
    let receiver = Receiver::start(Arc::new(|_| {
        let mut response = common::status(422);
        *response.body_mut() = axum::body::Body::from("missing field: sku");
        response
    }))
    .await;
    let store = memory_store();
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::background(store.clone()))
        .service(client());

    let id = queued_id(
        outbox
            .oneshot(post(&receiver.url("/x"), "{}"))
            .await
            .unwrap(),
    )
    .await;
    let handle = dispatcher(store.clone()).spawn();
    wait_for_state(&store, id, MessageState::Dead).await;
    handle.shutdown().await;

    let message = store.get(id).await.unwrap().unwrap();
    let outcome = message.outcome.unwrap();
    assert_eq!(outcome.status, 422);
    assert_eq!(outcome.body, "missing field: sku");
    assert!(message.last_error.unwrap().contains("422"));
    assert_eq!(receiver.count(), 1);
    assert_eq!(handle.metrics().dead_lettered, 1);
}

#[tokio::test]
async fn body_over_limit_stores_nothing() {
    let store = memory_store();
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::background(store.clone()).body_limit(4))
        .service(client());

    let error = outbox
        .oneshot(post("http://127.0.0.1:9/x", "too long"))
        .await
        .unwrap_err();

    assert_eq!(error.kind(), OutboxErrorKind::BodyTooLarge);
    assert_eq!(store.counts("outbox").await.unwrap(), Default::default());
}

#[tokio::test]
async fn dead_letter_can_be_retried() {
    let receiver = Receiver::start(sequence(&[400, 200])).await;
    let store = memory_store();
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::background(store.clone()))
        .service(client());

    let id = queued_id(
        outbox
            .oneshot(post(&receiver.url("/x"), "{}"))
            .await
            .unwrap(),
    )
    .await;
    let handle: WorkerHandle = dispatcher(store.clone()).spawn();
    wait_for_state(&store, id, MessageState::Dead).await;
    assert!(store.retry(id).await.unwrap());
    wait_for_state(&store, id, MessageState::Succeeded).await;
    handle.shutdown().await;

    assert_eq!(receiver.count(), 2);
}
