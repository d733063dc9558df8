//! The X-Authentication layers over real TCP on loopback: an axum server
//! with the verifying layer, and a hyper-util client with the signing
//! layer or hand-written HTTP/1.1.

use std::net::SocketAddr;

use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::auth::{Key, KeyId, KeyRing, SignLayer, VerifyLayer};

const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn keys() -> KeyRing {
    KeyRing::single(Key::from_base64("orders", SECRET).unwrap())
}

async fn echo(Extension(kid): Extension<KeyId>, body: Bytes) -> String {
    format!("{kid}:{}", String::from_utf8_lossy(&body))
}

/// Starts an axum server with the verifying layer on a random loopback
/// port.
async fn start_server() -> SocketAddr {
    let app = Router::new()
        .route("/orders", post(echo))
        .layer(VerifyLayer::new(keys()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test]
async fn hyper_client_with_sign_layer_is_accepted() {
    let address = start_server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let signed = ServiceBuilder::new()
        .layer(SignLayer::new(keys()))
        .service(client.clone());

    let request = Request::post(format!("http://{address}/orders?source=test"))
        .body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
        .unwrap();
    let response = signed.clone().oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "orders:{\"qty\":1}");

    let unsigned = Request::post(format!("http://{address}/orders"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = client.request(unsigned).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "X-Authentication");
}

/// Signs a POST to `/orders` and returns its header value, by sending it
/// through the signing layer to a capturing service.
async fn signed_header(body: &'static [u8]) -> String {
    let capture = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let value = request.headers()["x-authentication"]
            .to_str()
            .unwrap()
            .to_owned();
        Ok::<_, std::convert::Infallible>(value)
    });
    let request = Request::post("/orders")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    ServiceBuilder::new()
        .layer(SignLayer::new(keys()))
        .service(capture)
        .oneshot(request)
        .await
        .unwrap()
}

/// Sends raw HTTP/1.1 header lines and a body, and returns the status code.
async fn send_raw(address: SocketAddr, header_lines: &[String], body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut head = format!(
        "POST /orders HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for line in header_lines {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();

    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let status_line = String::from_utf8_lossy(&response[..12]).into_owned();
    status_line[9..12].parse().unwrap()
}

#[tokio::test]
async fn header_name_in_any_case_over_the_wire() {
    let address = start_server().await;

    for name in [
        "X-Authentication",
        "x-authentication",
        "X-AUTHENTICATION",
        "x-AuThEnTiCaTiOn",
    ] {
        let value = signed_header(b"{}").await;
        let status = send_raw(address, &[format!("{name}: {value}")], b"{}").await;
        assert_eq!(status, 200, "{name}");
    }
}

#[tokio::test]
async fn two_fields_in_different_case_over_the_wire() {
    let address = start_server().await;
    let value = signed_header(b"{}").await;

    let lines = [
        format!("X-Authentication: {value}"),
        format!("x-authentication: {value}"),
    ];
    let status = send_raw(address, &lines, b"{}").await;

    assert_eq!(status, 401);
}

#[tokio::test]
async fn missing_header_over_the_wire_is_401() {
    let address = start_server().await;

    let status = send_raw(address, &[], b"{}").await;

    assert_eq!(status, 401);
}

#[tokio::test]
async fn replayed_request_over_the_wire_is_401() {
    let address = start_server().await;
    let line = format!("X-Authentication: {}", signed_header(b"{}").await);

    let first = send_raw(address, std::slice::from_ref(&line), b"{}").await;
    let second = send_raw(address, std::slice::from_ref(&line), b"{}").await;

    assert_eq!(first, 200);
    assert_eq!(second, 401);
}

#[tokio::test]
async fn oversized_content_length_over_the_wire_is_413() {
    let address = start_server().await;
    let line = format!("X-Authentication: {}", signed_header(b"").await);
    let mut stream = TcpStream::connect(address).await.unwrap();

    // Announce 3 MiB, above the 2 MiB default, and send none of it: the
    // response must come from the headers alone.
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: {address}\r\nContent-Length: 3145728\r\n{line}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut status_line = [0_u8; 12];
    stream.read_exact(&mut status_line).await.unwrap();

    assert_eq!(&status_line[9..12], b"413");
}

/// Starts a hyper HTTP/1.1 server, without axum, whose service is the
/// verifying layer over a handler that echoes the key id and body. Each
/// connection runs in `tokio::spawn`, which requires the layer's response
/// future to be `Send`.
async fn start_hyper_server() -> SocketAddr {
    use std::convert::Infallible;

    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use tower_courier::auth::KeyId;

    let handler = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let kid = request.extensions().get::<KeyId>().unwrap().to_string();
        let body = request.into_body().collect().await?.to_bytes();
        let echo = format!("{kid}:{}", String::from_utf8_lossy(&body));
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(echo))))
    });
    let service = ServiceBuilder::new()
        .layer(VerifyLayer::new(keys()))
        .service(handler);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service.clone();
            let hyper_service = hyper::service::service_fn(move |request: Request<Incoming>| {
                service.clone().oneshot(request)
            });
            tokio::spawn(
                http1::Builder::new().serve_connection(TokioIo::new(stream), hyper_service),
            );
        }
    });
    address
}

#[tokio::test]
async fn hyper_server_without_axum_verifies() {
    let address = start_hyper_server().await;
    let line = format!("X-Authentication: {}", signed_header(b"{}").await);

    let accepted = send_raw(address, std::slice::from_ref(&line), b"{}").await;
    let replayed = send_raw(address, std::slice::from_ref(&line), b"{}").await;
    let unsigned = send_raw(address, &[], b"{}").await;

    assert_eq!(accepted, 200);
    assert_eq!(replayed, 401);
    assert_eq!(unsigned, 401);
}
