//! Signs a request with `SignLayer` and verifies it with `VerifyLayer`.
//!
//! Starts an axum server with the verifying layer on a random loopback
//! port, sends it one signed and one unsigned request with a hyper-util
//! client, prints both statuses and exits.
//!
//! ```text
//! cargo run --example sign
//! ```

use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::BoxError;
use tower_courier::auth::{Key, KeyId, KeyRing, SignLayer, VerifyLayer};

async fn create_order(Extension(kid): Extension<KeyId>, body: Bytes) -> String {
    format!(
        "order accepted from {kid}: {}",
        String::from_utf8_lossy(&body)
    )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Both ends share one secret; real services read it from a key file.
    let mut secret = [0_u8; 32];
    rand::fill(&mut secret);
    let keys = KeyRing::single(Key::from_bytes("example", &secret)?);

    let app = Router::new()
        .route("/orders", post(create_order))
        .layer(VerifyLayer::new(keys.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("verifying server listening on http://{address}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let signing_client = ServiceBuilder::new()
        .layer(SignLayer::new(keys))
        .service(client.clone());
    let order = || {
        Request::post(format!("http://{address}/orders"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"sku":"A-1","qty":2}"#)))
    };

    let signed = signing_client.oneshot(order()?).await?;
    let status = signed.status();
    let body = signed.into_body().collect().await?.to_bytes();
    println!(
        "signed request:   {status} {}",
        String::from_utf8_lossy(&body)
    );

    let unsigned = client.request(order()?).await?;
    let status = unsigned.status();
    let body = unsigned.into_body().collect().await?.to_bytes();
    println!(
        "unsigned request: {status} {}",
        String::from_utf8_lossy(&body)
    );

    Ok(())
}
