//! The inline retry layer against real loopback receivers.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Receiver, always, client, post, sequence, silent_receiver};
use http::Request;
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::retry::{Backoff, RetryErrorKind, RetryLayer};

fn fast_layer() -> RetryLayer {
    RetryLayer::new().backoff(
        Backoff::inline()
            .initial_delay(Duration::from_millis(10))
            .min_delay(Duration::from_millis(1)),
    )
}

#[tokio::test]
async fn get_retried_until_success() {
    let receiver = Receiver::start(sequence(&[503, 500, 200])).await;
    let service = ServiceBuilder::new().layer(fast_layer()).service(client());
    let request = Request::get(receiver.url("/health"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(receiver.count(), 3);
}

#[tokio::test]
async fn post_without_key_sent_once() {
    let receiver = Receiver::start(always(503)).await;
    let service = ServiceBuilder::new().layer(fast_layer()).service(client());

    let response = service
        .oneshot(post(&receiver.url("/orders"), "{}"))
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert_eq!(receiver.count(), 1);
}

#[tokio::test]
async fn post_with_key_retried_with_same_bytes() {
    let receiver = Receiver::start(sequence(&[429, 502, 201])).await;
    let service = ServiceBuilder::new().layer(fast_layer()).service(client());
    let mut request = post(&receiver.url("/orders?x=1"), r#"{"id":42}"#);
    request
        .headers_mut()
        .insert("idempotency-key", "order-42".parse().unwrap());

    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 201);
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    for attempt in &received {
        assert_eq!(attempt.body, r#"{"id":42}"#);
        assert_eq!(
            attempt.header("idempotency-key").as_deref(),
            Some("order-42")
        );
        assert_eq!(attempt.uri.to_string(), "/orders?x=1");
    }
}

#[tokio::test]
async fn permanent_status_not_retried() {
    let receiver = Receiver::start(always(422)).await;
    let service = ServiceBuilder::new().layer(fast_layer()).service(client());
    let request = Request::get(receiver.url("/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 422);
    assert_eq!(receiver.count(), 1);
}

#[tokio::test]
async fn attempts_stop_at_maximum() {
    let receiver = Receiver::start(always(500)).await;
    let layer = fast_layer().backoff(
        Backoff::inline()
            .initial_delay(Duration::from_millis(5))
            .max_attempts(4),
    );
    let service = ServiceBuilder::new().layer(layer).service(client());
    let request = Request::get(receiver.url("/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 500);
    assert_eq!(receiver.count(), 4);
}

#[tokio::test]
async fn body_over_limit_not_sent() {
    let receiver = Receiver::start(always(200)).await;
    let service = ServiceBuilder::new()
        .layer(fast_layer().body_limit(8))
        .service(client());

    let error = service
        .oneshot(post(&receiver.url("/orders"), "0123456789"))
        .await
        .unwrap_err();

    assert_eq!(error.kind(), RetryErrorKind::BodyTooLarge);
    assert_eq!(error.attempts(), 0);
    assert_eq!(receiver.count(), 0);
}

#[tokio::test]
async fn unsupported_scheme_not_sent() {
    let service = ServiceBuilder::new().layer(fast_layer()).service(client());
    let request = Request::get("ftp://127.0.0.1/file")
        .body(Full::new(Bytes::new()))
        .unwrap();

    let error = service.oneshot(request).await.unwrap_err();

    assert_eq!(error.kind(), RetryErrorKind::InvalidRequest);
    assert!(
        error.source_text().contains("ftp"),
        "{}",
        error.source_text()
    );
}

#[tokio::test]
async fn refused_connection_retried_then_reported() {
    let addr = common::free_addr().await;
    let service = ServiceBuilder::new().layer(fast_layer()).service(client());
    let request = Request::get(format!("http://{addr}/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let error = service.oneshot(request).await.unwrap_err();

    assert_eq!(error.kind(), RetryErrorKind::Client);
    assert_eq!(error.attempts(), 3);
}

#[tokio::test]
async fn attempt_timeout_retried() {
    let (addr, _task) = silent_receiver().await;
    let layer = fast_layer().attempt_timeout(Duration::from_millis(100));
    let service = ServiceBuilder::new().layer(layer).service(client());
    let request = Request::get(format!("http://{addr}/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let error = service.oneshot(request).await.unwrap_err();

    assert_eq!(error.kind(), RetryErrorKind::TimedOut);
    assert_eq!(error.attempts(), 3);
}

#[tokio::test]
async fn deadline_ends_the_call() {
    let (addr, _task) = silent_receiver().await;
    let layer = fast_layer()
        .attempt_timeout(Duration::from_secs(5))
        .deadline(Duration::from_millis(300));
    let service = ServiceBuilder::new().layer(layer).service(client());
    let request = Request::get(format!("http://{addr}/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();

    let error = service.oneshot(request).await.unwrap_err();

    assert_eq!(error.kind(), RetryErrorKind::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retry_after_delays_inline_retry() {
    let receiver = Receiver::start(std::sync::Arc::new(|index| {
        let mut response = common::status(if index == 0 { 503 } else { 200 });
        response
            .headers_mut()
            .insert("retry-after", "1".parse().unwrap());
        response
    }))
    .await;
    let service = ServiceBuilder::new().layer(fast_layer()).service(client());
    let request = Request::get(receiver.url("/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 200);
    let received = receiver.received();
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

trait SourceText {
    fn source_text(&self) -> String;
}

impl SourceText for tower_courier::retry::RetryError {
    fn source_text(&self) -> String {
        std::error::Error::source(self)
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn empty_budget_stops_retries() {
    let receiver = Receiver::start(always(503)).await;
    let budget = tower_courier::retry::RetryBudget::new(Duration::from_secs(1), 0, 0.0);
    let service = ServiceBuilder::new()
        .layer(fast_layer().budget(budget))
        .service(client());
    let request = Request::get(receiver.url("/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 503);
    assert_eq!(receiver.count(), 1);
}
