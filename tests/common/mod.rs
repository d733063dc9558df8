//! Loopback receivers and an HTTP client for the delivery tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    }
}

/// Decides the response to the `n`th request (counting from 0).
pub type Script = Arc<dyn Fn(usize) -> Response<Body> + Send + Sync>;

/// A receiver on 127.0.0.1 that records every request.
pub struct Receiver {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a fresh port.
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, script, Arc::default())
    }

    /// Starts a receiver on `addr`, sharing `log` with an earlier one.
    pub async fn start_on(
        addr: SocketAddr,
        script: Script,
        log: Arc<Mutex<Vec<Received>>>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, script, log)
    }

    fn serve(listener: TcpListener, script: Script, log: Arc<Mutex<Vec<Received>>>) -> Self {
        let addr = listener.local_addr().unwrap();
        let shared = log.clone();
        let handler = move |request: Request| {
            let log = shared.clone();
            let script = script.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Received {
                        at: Instant::now(),
                        method: parts.method,
                        uri: parts.uri,
                        headers: parts.headers,
                        body,
                    });
                    log.len() - 1
                };
                script(index)
            }
        };
        let router = axum::Router::new().fallback(handler);
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, log, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Stops accepting connections; open connections are dropped too.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns a response with `status` and an empty body.
pub fn status(code: u16) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
}

/// A script that answers every request with `code`.
pub fn always(code: u16) -> Script {
    Arc::new(move |_| status(code))
}

/// A script that answers with `codes` in order, then with the last one.
pub fn sequence(codes: &[u16]) -> Script {
    let codes = codes.to_vec();
    Arc::new(move |index| status(codes[index.min(codes.len() - 1)]))
}

/// Returns a loopback address nothing listens on right now.
pub async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A listener that accepts connections and never answers.
pub async fn silent_receiver() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    (addr, task)
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A plain hyper client with a short connect timeout.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new()).build(connector)
}

pub fn post(url: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}
