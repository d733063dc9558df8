//! The idempotency layer's response future under drops, timeouts and
//! executors other than Tokio.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_courier::idempotency::IdempotencyLayer;
use tower_courier::store::memory::MemoryStore;
use tower_courier::store::{IdempotencyKey, IdempotencyRecord, IdempotencyStore};

fn request(key: &str) -> Request<Full<Bytes>> {
    Request::post("/orders")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

fn record_key(key: &str) -> IdempotencyKey {
    IdempotencyKey {
        principal: None,
        method: "POST".to_owned(),
        path: "/orders".to_owned(),
        key: key.to_owned(),
    }
}

/// A future that is pending once and wakes itself, like a handler that
/// waits for a quick I/O.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Wakes the thread that runs [`block_on`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread, with no Tokio runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn waiting_handler_outside_tokio() {
    let store = Arc::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let handler_runs = runs.clone();
    let handler = service_fn(move |_request: Request<Full<Bytes>>| {
        handler_runs.fetch_add(1, Ordering::SeqCst);
        async {
            YieldOnce(false).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
        }
    });
    let service = ServiceBuilder::new()
        .layer(IdempotencyLayer::required(store.clone()))
        .service(handler);

    let outcome = std::thread::spawn(move || block_on(service.oneshot(request("k1"))))
        .join()
        .map(|result| result.map(|response| response.status()));

    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        matches!(outcome, Ok(Ok(StatusCode::OK))),
        "a handler that waits once failed outside a Tokio runtime"
    );
}

#[tokio::test]
async fn outer_timeout_still_stores_response() {
    let store = Arc::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let handler_runs = runs.clone();
    let handler = service_fn(move |_request: Request<Full<Bytes>>| {
        let run = handler_runs.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let body = Full::new(Bytes::from(format!("run {run}")));
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let service = ServiceBuilder::new()
        .timeout(Duration::from_millis(50))
        .layer(IdempotencyLayer::required(store.clone()))
        .service(handler);

    let first = service.clone().oneshot(request("k2")).await;
    assert!(first.is_err(), "the outer timeout did not fire");

    let retry = service.clone().oneshot(request("k2")).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CONFLICT);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let replay = service.oneshot(request("k2")).await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let body = replay.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "run 1");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A response body whose first read panics.
struct PanickingBody;

impl http_body::Body for PanickingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        panic!("response body panicked");
    }
}

#[tokio::test]
async fn panicking_response_body_releases_claim() {
    let store = Arc::new(MemoryStore::new());
    let handler = service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(PanickingBody))
    });
    let service = ServiceBuilder::new()
        .layer(IdempotencyLayer::required(store.clone()))
        .service(handler);

    let first = tokio::spawn(service.clone().oneshot(request("k3"))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let record = IdempotencyStore::get(&*store, &record_key("k3"))
        .await
        .unwrap();
    assert!(
        !matches!(record, Some(IdempotencyRecord::InProgress { .. })),
        "the claim is still held after the panic"
    );
    match first {
        Ok(Ok(response)) => assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR),
        Ok(Err(error)) => match error {},
        Err(error) => assert!(error.is_panic(), "{error}"),
    }
}
