//! The shared queue worker over in-process services: panics, shutdown,
//! per-destination limits, lease renewal and permanent failures.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::service_fn;
use tower_courier::BoxError;
use tower_courier::MessageId;
use tower_courier::retry::Backoff;
use tower_courier::store::memory::MemoryStore;
use tower_courier::store::{Message, MessageQueue, MessageState, NewMessage};
use tower_courier::worker::{PermanentFailure, Worker};

fn origin_request(message: &Message) -> Result<Request<Full<Bytes>>, BoxError> {
    let request = Request::builder()
        .method(message.method.clone())
        .uri(message.path_and_query.as_str())
        .body(Full::new(message.body.clone()))?;
    Ok(request)
}

fn response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

async fn enqueue(store: &Arc<dyn MessageQueue>, destination: &str, count: usize) -> Vec<MessageId> {
    let messages: Vec<_> = (0..count)
        .map(|_| NewMessage::new("jobs", destination, Method::POST, "/run", SystemTime::now()))
        .collect();
    let ids = messages.iter().map(|message| message.id).collect();
    store.enqueue(messages).await.unwrap();
    ids
}

async fn wait_for_state(store: &Arc<dyn MessageQueue>, id: MessageId, state: MessageState) {
    for _ in 0..200 {
        if store.get(id).await.unwrap().unwrap().state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "message never reached {state}: {:?}",
        store.get(id).await.unwrap()
    );
}

fn quick_backoff() -> Backoff {
    Backoff::default()
        .initial_delay(Duration::from_millis(20))
        .min_delay(Duration::from_millis(10))
}

#[tokio::test]
async fn panic_counts_as_transient() {
    let store: Arc<dyn MessageQueue> = Arc::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let handler = service_fn(move |_request: Request<Full<Bytes>>| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            assert!(call > 0, "handler panics on its first call");
            Ok::<_, Infallible>(response(StatusCode::OK))
        }
    });
    let id = enqueue(&store, "local", 1).await[0];

    let worker = Worker::new("jobs", store.clone(), handler, origin_request)
        .backoff(quick_backoff())
        .poll_interval(Duration::from_millis(10))
        .spawn();
    wait_for_state(&store, id, MessageState::Succeeded).await;
    worker.shutdown().await;

    let message = store.get(id).await.unwrap().unwrap();
    assert_eq!(message.attempts, 2);
    assert_eq!(worker.metrics().retried, 1);
    assert_eq!(worker.metrics().delivered, 1);
}

#[tokio::test]
async fn shutdown_releases_after_grace() {
    let store: Arc<dyn MessageQueue> = Arc::new(MemoryStore::new());
    let handler = service_fn(|_request: Request<Full<Bytes>>| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(response(StatusCode::OK))
    });
    let id = enqueue(&store, "local", 1).await[0];

    let worker = Worker::new("jobs", store.clone(), handler, origin_request)
        .shutdown_grace(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(10))
        .spawn();
    wait_for_state(&store, id, MessageState::InFlight).await;
    worker.shutdown().await;

    let message = store.get(id).await.unwrap().unwrap();
    assert_eq!(message.state, MessageState::Pending);
    assert_eq!(message.attempts, 0);
    assert_eq!(worker.metrics().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_destination_limit_holds() {
    let store: Arc<dyn MessageQueue> = Arc::new(MemoryStore::new());
    let current = Arc::new(AtomicUsize::new(0));
    let highest = Arc::new(AtomicUsize::new(0));
    let (now, max) = (current.clone(), highest.clone());
    let handler = service_fn(move |_request: Request<Full<Bytes>>| {
        let (now, max) = (now.clone(), max.clone());
        async move {
            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(response(StatusCode::OK))
        }
    });
    let ids = enqueue(&store, "http://one.example", 20).await;

    let worker = Worker::new("jobs", store.clone(), handler, origin_request)
        .concurrency(16)
        .per_destination(2)
        .poll_interval(Duration::from_millis(10))
        .spawn();
    for id in ids {
        wait_for_state(&store, id, MessageState::Succeeded).await;
    }
    worker.shutdown().await;

    assert_eq!(highest.load(Ordering::SeqCst), 2);
    assert_eq!(worker.metrics().delivered, 20);
}

#[tokio::test]
async fn lease_renewed_while_sending() {
    let store: Arc<dyn MessageQueue> = Arc::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let slow = service_fn(move |_request: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok::<_, Infallible>(response(StatusCode::OK))
        }
    });
    let id = enqueue(&store, "local", 1).await[0];

    let first = Worker::new("jobs", store.clone(), slow.clone(), origin_request)
        .lease(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(10))
        .spawn();
    wait_for_state(&store, id, MessageState::InFlight).await;
    let second = Worker::new("jobs", store.clone(), slow, origin_request)
        .lease(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(10))
        .spawn();
    wait_for_state(&store, id, MessageState::Succeeded).await;
    first.shutdown().await;
    second.shutdown().await;

    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(store.get(id).await.unwrap().unwrap().attempts, 1);
    assert_eq!(first.metrics().lease_lost, 0);
}

#[tokio::test]
async fn permanent_failure_can_fail() {
    let store: Arc<dyn MessageQueue> = Arc::new(MemoryStore::new());
    let handler = service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(response(StatusCode::NOT_FOUND))
    });
    let id = enqueue(&store, "local", 1).await[0];

    let worker = Worker::new("jobs", store.clone(), handler, origin_request)
        .on_permanent(PermanentFailure::Fail)
        .poll_interval(Duration::from_millis(10))
        .spawn();
    wait_for_state(&store, id, MessageState::Failed).await;
    worker.shutdown().await;

    let message = store.get(id).await.unwrap().unwrap();
    assert_eq!(message.outcome.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(worker.metrics().failed, 1);
    assert_eq!(worker.metrics().dead_lettered, 0);
}

#[tokio::test]
async fn invalid_stored_request_dead_lettered() {
    let store: Arc<dyn MessageQueue> = Arc::new(MemoryStore::new());
    let handler = service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(response(StatusCode::OK))
    });
    let id = enqueue(&store, "local", 1).await[0];
    let broken = |_message: &Message| -> Result<Request<Full<Bytes>>, BoxError> {
        Err("no route for this message".into())
    };

    let worker = Worker::new("jobs", store.clone(), handler, broken)
        .poll_interval(Duration::from_millis(10))
        .spawn();
    wait_for_state(&store, id, MessageState::Dead).await;
    worker.shutdown().await;

    let last_error = store.get(id).await.unwrap().unwrap().last_error.unwrap();
    assert!(
        last_error.contains("no route for this message"),
        "{last_error}"
    );
}
