//! Delivers one order event through the outbox to a receiver that fails
//! at first.
//!
//! Starts an axum receiver on a random loopback port that responds `503`
//! twice and then `201`, opens an SQLite outbox in a temporary directory,
//! sends one signed `POST` through an optimistic outbox (queued, because
//! the receiver is failing) and lets a dispatcher deliver it. Prints each
//! attempt the receiver saw and the message's final state.
//!
//! ```text
//! cargo run --example outbox
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::BoxError;
use tower_courier::auth::{Key, KeyRing, SignLayer};
use tower_courier::outbox::{Delivery, Dispatcher, OutboxLayer};
use tower_courier::retry::Backoff;
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::store::{MessageQueue, MessageState};

/// Starts a receiver that responds `503` to the first two requests.
async fn start_receiver() -> Result<String, BoxError> {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = move |headers: HeaderMap, body: Bytes| {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let key = headers.get("idempotency-key").cloned();
        let signed = headers.contains_key("x-authentication");
        println!(
            "receiver: attempt {call}, idempotency-key {key:?}, signed {signed}, body {body:?}"
        );
        async move {
            if call <= 2 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::CREATED
            }
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(handler)).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let receiver = start_receiver().await?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn MessageQueue> =
        Arc::new(SqliteStore::open(dir.path().join("outbox.db")).await?);
    let keys = KeyRing::single(Key::from_bytes("orders", &[42; 32])?);
    let backoff = Backoff::default().initial_delay(Duration::from_millis(300));

    // The signing layer sits below the outbox, next to the client, so that
    // every attempt is signed when it is sent.
    let http_client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let client = ServiceBuilder::new()
        .layer(SignLayer::new(keys))
        .service(http_client);
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::optimistic(store.clone()).backoff(backoff))
        .service(client.clone());
    let dispatcher = Dispatcher::new(store.clone(), client)
        .backoff(backoff)
        .poll_interval(Duration::from_millis(100))
        .spawn();

    let request = Request::post(format!("{receiver}/orders/42/events"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"event":"order.paid"}"#)))?;
    let id = match outbox.oneshot(request).await? {
        Delivery::Delivered(response) => {
            println!("delivered inline: {}", response.status());
            return Ok(());
        }
        Delivery::Rejected(response) => {
            return Err(format!("rejected: {}", response.status()).into());
        }
        Delivery::Queued(queued) => {
            println!("{queued}");
            queued.id
        }
    };

    loop {
        let message = store.get(id).await?.ok_or("queued message not found")?;
        if message.state.is_final() {
            println!(
                "message {id}: {} after {} attempt(s) from the outbox",
                message.state, message.attempts
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dispatcher.shutdown().await;
    println!("dispatcher metrics: {:?}", dispatcher.metrics());
    assert_eq!(
        store.get(id).await?.map(|message| message.state),
        Some(MessageState::Succeeded)
    );
    Ok(())
}
