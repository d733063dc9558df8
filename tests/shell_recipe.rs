//! Runs the `openssl` + `curl` recipe of the README against a real
//! verifying server on loopback, so the documented recipe cannot drift
//! from what the crate accepts. `docs/auth.md` repeats the recipe, and a
//! test keeps the two copies identical.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;
use tower_courier::auth::{Key, KeyId, KeyRing, VerifyLayer};

const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const MARKER: &str = "<!-- shell-recipe:";

/// Returns the recipe as the README shows it.
fn recipe() -> String {
    recipe_in(include_str!("../README.md"))
}

/// Returns the first bash block after the marker in `doc`.
fn recipe_in(doc: &str) -> String {
    let after_marker = &doc[doc
        .find(MARKER)
        .expect("the document has the recipe marker")..];
    let start = after_marker
        .find("```bash\n")
        .expect("a bash block follows the marker")
        + 8;
    let length = after_marker[start..]
        .find("```")
        .expect("the bash block is closed");
    after_marker[start..start + length].to_owned()
}

/// Starts a verifying server whose `POST /orders` returns 201 and counts
/// its calls.
async fn start_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let keys = KeyRing::single(Key::from_base64("orders", SECRET).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let handler = move |Extension(kid): Extension<KeyId>, headers: HeaderMap, body: Bytes| async move {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut text = format!("accepted for {kid}: {}", String::from_utf8_lossy(&body));
        if let Some(key) = headers.get("idempotency-key") {
            text.push_str(&format!(" with key {}", key.to_str().unwrap()));
        }
        (StatusCode::CREATED, text)
    };
    let app = Router::new()
        .route("/orders", post(handler))
        .layer(VerifyLayer::new(keys));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, calls)
}

/// Runs `prelude` then the recipe in bash, with the server's URL and a
/// secret in the environment. The blocking call runs off the runtime so
/// the server keeps serving requests.
async fn run_recipe(address: SocketAddr, secret: &str, prelude: &str) -> Output {
    let script = format!("{prelude}\n{}", recipe());
    let url = format!("http://{address}");
    let secret = secret.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("URL", url)
            .env("KID", "orders")
            .env("SECRET", secret)
            .env_remove("METHOD")
            .env_remove("TARGET")
            .env_remove("BODY")
            .env_remove("IDEMPOTENCY_KEY")
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap()
}

fn status_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "recipe failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().next().unwrap_or_default().trim().to_owned()
}

fn require_tools() {
    for tool in ["bash", "openssl", "curl", "od"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|output| output.status.success());
        assert!(found, "the shell recipe test needs {tool} on PATH");
    }
}

#[tokio::test]
async fn recipe_is_accepted_by_the_handler() {
    require_tools();
    let (address, calls) = start_server().await;

    let output = run_recipe(address, SECRET, "").await;

    assert_eq!(status_line(&output), "HTTP/1.1 201 Created");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(r#"accepted for orders: {"sku":"A-1","qty":2}"#),
        "{stdout}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn recipe_sends_target_and_idempotency_key() {
    require_tools();
    let (address, calls) = start_server().await;

    let settings = "TARGET='/orders?source=env'; IDEMPOTENCY_KEY=retry-1";
    let output = run_recipe(address, SECRET, settings).await;

    assert_eq!(status_line(&output), "HTTP/1.1 201 Created");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("with key retry-1"), "{stdout}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn recipe_with_tampered_body_is_401() {
    require_tools();
    let (address, calls) = start_server().await;

    // A second --data-binary makes curl append "&tampered" to the signed
    // body, as a proxy changing the body in transit would.
    let tamper = r#"curl() { command curl "$@" --data-binary tampered; }"#;
    let output = run_recipe(address, SECRET, tamper).await;

    assert_eq!(status_line(&output), "HTTP/1.1 401 Unauthorized");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn recipe_sent_twice_is_401_the_second_time() {
    require_tools();
    let (address, calls) = start_server().await;

    let replay = r#"curl() { command curl "$@"; echo; command curl "$@"; }"#;
    let output = run_recipe(address, SECRET, replay).await;

    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(status_line(&output), "HTTP/1.1 201 Created");
    assert!(stdout.contains("HTTP/1.1 401 Unauthorized"), "{stdout}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn recipe_with_other_secret_is_401() {
    require_tools();
    let (address, calls) = start_server().await;
    let other = "b3RoZXIgc2VjcmV0IG9mIGF0IGxlYXN0IDMyIGJ5dGVzIQ==";

    let output = run_recipe(address, other, "").await;

    assert_eq!(status_line(&output), "HTTP/1.1 401 Unauthorized");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn auth_doc_repeats_the_readme_recipe() {
    assert_eq!(recipe_in(include_str!("../docs/auth.md")), recipe());
}
