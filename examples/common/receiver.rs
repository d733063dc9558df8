//! The receiver's server stacks and its command handler.
//!
//! ```text
//! POST /commands/{name}
//!   FaultLayer (--fail-after)         the work is stored, the reply is lost
//!   └─ VerifyLayer                    X-Authentication
//!      └─ IdempotencyLayer::required  Idempotency-Key
//!         ├─ sync:   FaultLayer (--fail-before) └─ CommandHandler
//!         └─ accept: AcceptLayer      stores the command, responds 202
//!                    workers: FaultLayer (--fail-before) └─ CommandHandler
//! GET /commands/status/{id}           accept mode: VerifyLayer └─ status resource
//! GET /stats, GET /health             no authentication, never faulted
//! ```

use std::convert::Infallible;
use std::path::Path;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleError;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::future::{BoxFuture, Ready, ready};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service, ServiceBuilder};
use tower_courier::BoxError;
use tower_courier::accept::AcceptLayer;
use tower_courier::auth::{KeyId, KeyRing, VerifyLayer};
use tower_courier::idempotency::IdempotencyLayer;
use tower_courier::store::Store;
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::testing::{Fault, FaultLayer, Faults};
use tower_courier::worker::WorkerHandle;

use super::ledger::{Command, Ledger};
use super::{EXAMPLE_LEASE, example_backoff};

/// The idempotency claim lease of the examples: a request cut short by a
/// crash holds its key for at most 10 seconds (the crate's default is 60).
pub const IDEMPOTENCY_LEASE: Duration = Duration::from_secs(10);

/// The place where the command handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReceiveMode {
    /// Inline, within the request.
    Sync,
    /// In workers, after a `202 Accepted`.
    Accept,
}

/// The receiver's settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The keys that requests must be signed with.
    pub keys: KeyRing,
    /// The accepted clock skew of signed requests.
    pub tolerance: Duration,
    /// The place where the command handler runs.
    pub mode: ReceiveMode,
    /// Faults injected inside the stack, before the handler runs.
    pub fail_before: Faults,
    /// Faults injected outside the stack, after everything ran.
    pub fail_after: Faults,
    /// How long the handler takes before it applies a command.
    pub handler_delay: Duration,
}

/// A receiver ready to serve: its router and, in accept mode, its
/// command workers.
#[derive(Debug)]
pub struct Receiver {
    /// The routes, ready for `axum::serve`.
    pub router: Router,
    /// The command workers, in accept mode.
    pub workers: Option<WorkerHandle>,
    /// The receiver's own table.
    pub ledger: Ledger,
}

/// Opens the store that `url` names and the receiver's table beside it:
/// in the same database for `sqlite:PATH` and `postgres://...`, in
/// memory for `memory` and `redis://...`.
///
/// # Errors
///
/// Fails when the store cannot be opened, or for a backend whose
/// database cannot hold the receiver's table yet.
pub async fn open_store(url: &str) -> Result<(Store, Ledger), BoxError> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        let sqlite = SqliteStore::open(Path::new(path)).await?;
        let ledger = Ledger::sqlite(sqlite.pool().clone()).await?;
        return Ok((Store::new(sqlite), ledger));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let postgres = tower_courier::store::postgres::PostgresStore::connect(url).await?;
        let ledger = Ledger::postgres(postgres.pool().clone()).await?;
        return Ok((Store::new(postgres), ledger));
    }
    if url == "memory" || url.starts_with("redis://") {
        // Redis keeps the crate's records but not the receiver's table,
        // which is then kept in memory and lost on restart.
        return Ok((Store::connect(url).await?, Ledger::memory()));
    }
    Err(format!(
        "unsupported store {url:?} for the receiver: expected memory, sqlite:PATH, \
         postgres://... (feature postgres) or redis://... (feature redis)"
    )
    .into())
}

/// Builds the fault plan of one `--fail-*` probability, acting only on
/// `POST /commands/...`.
pub fn fail_with_probability(fault: Fault, probability: f64, seed: u64) -> Faults {
    Faults::random(seed)
        .with(fault, probability)
        .only_path(Method::POST, "/commands/")
}

/// Builds the receiver's routes and starts its workers in accept mode.
pub fn build(config: ReceiverConfig, store: &Store, ledger: Ledger) -> Receiver {
    let handler = CommandHandler::new(ledger.clone(), config.handler_delay);
    let verify = VerifyLayer::new(config.keys.clone())
        .replay_store(store.replay())
        .tolerance(config.tolerance);
    let idempotency = IdempotencyLayer::required(store.idempotency()).lease(IDEMPOTENCY_LEASE);

    let (commands, workers) = match config.mode {
        ReceiveMode::Sync => {
            let commands = ServiceBuilder::new()
                .layer(FaultLayer::new(config.fail_after))
                .layer(verify)
                .layer(idempotency)
                .layer(FaultLayer::new(config.fail_before))
                .service(handler);
            (
                Router::new().route_service("/commands/{name}", infallible(commands)),
                None,
            )
        }
        ReceiveMode::Accept => {
            let accept = AcceptLayer::new(store.queue()).command(Method::POST, "/commands/{name}");
            let commands = ServiceBuilder::new()
                .layer(FaultLayer::new(config.fail_after))
                .layer(verify.clone())
                .layer(idempotency)
                .layer(accept.clone())
                .service(handler.clone());
            let status = verify.layer(accept.status_service());
            let workers = accept
                .worker(FaultLayer::new(config.fail_before).layer(handler))
                .lease(EXAMPLE_LEASE)
                .backoff(example_backoff())
                .poll_interval(Duration::from_millis(200))
                .spawn();
            let routes = Router::new()
                .route_service("/commands/{name}", infallible(commands))
                .route_service("/commands/status/{id}", status);
            (routes, Some(workers))
        }
    };

    let router = commands.merge(public_routes(ledger.clone()));
    Receiver {
        router,
        workers,
        ledger,
    }
}

/// `GET /stats` and `GET /health`: no authentication, no faults.
pub fn public_routes(ledger: Ledger) -> Router {
    let stats = move || {
        let ledger = ledger.clone();
        async move {
            match ledger.stats().await {
                Ok(stats) => axum::Json(stats).into_response(),
                Err(error) => problem(StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
            }
        }
    };
    Router::new().route("/stats", get(stats)).route(
        "/health",
        get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
    )
}

/// Turns a stack's errors into `500` responses, as axum routes require.
/// The injected faults respond with statuses, so an error here is a
/// fault of the stack itself.
pub fn infallible<S, B>(service: S) -> HandleError<S, ErrorToResponse<S::Error>, ()>
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    HandleError::new(service, |error| {
        eprintln!("command stack failed: {error}");
        ready(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the command stack failed",
        ))
    })
}

/// The function that turns a stack error into a response.
pub type ErrorToResponse<E> = fn(E) -> Ready<Response>;

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or_default(),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(http::header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// The domain handler: records each command in the receiver's table,
/// through the inbox, and responds `201 Created` with JSON.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    ledger: Ledger,
    delay: Duration,
}

impl CommandHandler {
    /// Creates a handler that writes to `ledger` after waiting `delay`.
    pub fn new(ledger: Ledger, delay: Duration) -> Self {
        Self { ledger, delay }
    }
}

impl Service<Request<Full<Bytes>>> for CommandHandler {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let ledger = self.ledger.clone();
        let delay = self.delay;
        Box::pin(async move { Ok(handle_command(ledger, delay, request).await) })
    }
}

async fn handle_command(
    ledger: Ledger,
    delay: Duration,
    request: Request<Full<Bytes>>,
) -> http::Response<Full<Bytes>> {
    let command = match read_command(request).await {
        Ok(command) => command,
        Err((status, detail)) => {
            return json_response(status, serde_json::json!({ "error": detail }));
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    match ledger.apply(&command).await {
        Ok(applied) => json_response(
            StatusCode::CREATED,
            serde_json::json!({ "command": command.name, "applied": applied }),
        ),
        Err(error) => {
            // A 503 releases the idempotency claim (sync mode) or makes the
            // worker retry (accept mode): the command runs again later.
            eprintln!("failed to apply {}: {error}", command.name);
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": "failed to record the command" }),
            )
        }
    }
}

/// Reads the command from a request that passed the signature check.
async fn read_command(
    request: Request<Full<Bytes>>,
) -> Result<Command, (StatusCode, &'static str)> {
    if request.method() != Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "commands are POST requests"));
    }
    let name = request
        .uri()
        .path()
        .strip_prefix("/commands/")
        .unwrap_or_default()
        .to_owned();
    let principal = request
        .extensions()
        .get::<KeyId>()
        .map(|kid| kid.as_str().to_owned())
        .ok_or((StatusCode::UNAUTHORIZED, "unauthenticated request"))?;
    let idempotency_key = request
        .headers()
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(|key| key.trim_matches('"').to_owned())
        .ok_or((StatusCode::BAD_REQUEST, "missing Idempotency-Key"))?;

    // The inbox records the sender's key rather than the command id. A
    // worker may run one command twice after a crash, which either key
    // absorbs. NOTE: a receiver killed after the accept layer stored a
    // command, but before the idempotency layer stored its 202, queues the
    // command again under a new id when the sender retries. Only the
    // sender's key catches that second copy.
    let inbox_key = format!("{principal} {idempotency_key}");
    let body = http_body_util::BodyExt::collect(request.into_body())
        .await
        .map(|collected| collected.to_bytes().to_vec())
        .unwrap_or_default();

    Ok(Command {
        principal,
        idempotency_key,
        name,
        body,
        inbox_key,
    })
}

fn json_response(status: StatusCode, body: serde_json::Value) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
