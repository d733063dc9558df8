//! A sender and a receiver in one process, delivering a few hundred
//! commands through an unreliable network: nothing lost, nothing applied
//! twice.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Both sides keep their state in SQLite files in a temporary directory.
//! The receiver does not listen for the first 3 seconds. Then it responds
//! to some requests with a `500` before the handler runs, to some with a
//! `500` after it ran (the work is done, the reply is lost), and to some
//! slowly, past the sender's timeout. The sender retries from its outbox; the
//! receiver's idempotency layer and inbox absorb the duplicates.
//!
//! The demo exits with 0 only when no command was lost and none was
//! applied twice. Dead letters, if any, are counted in the summary.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use http::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::BoxError;
use tower_courier::auth::{Key, KeyRing, VerifyLayer};
use tower_courier::idempotency::{IDEMPOTENT_REPLAYED, IdempotencyLayer};
use tower_courier::outbox::{Dispatcher, OutboxLayer};
use tower_courier::retry::Backoff;
use tower_courier::store::{MessageQueue, MessageState, Store};
use tower_courier::testing::{Fault, FaultLayer, Faults};
use tower_courier::worker::WorkerHandle;

use common::ledger::{Ledger, Stats};
use common::receiver::{CommandHandler, IDEMPOTENCY_LEASE, infallible, open_store, public_routes};
use common::sender::{command_request, signed_client};

/// How many commands the demo sends.
const COMMANDS: u64 = 300;

/// How long the receiver is down at the start.
const DOWN_FOR: Duration = Duration::from_secs(3);

/// The sender's per-attempt timeout; the slow replies take longer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a slow reply takes.
const SLOW_REPLY: Duration = Duration::from_millis(1_500);

/// Demo settings, not production ones: retries start at 100 ms and wait
/// at most 1 s, so the demo ends within seconds of the receiver's
/// recovery. The crate's default backoff starts at 1 s and caps at 10
/// minutes.
fn demo_backoff() -> Backoff {
    Backoff::new()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(1))
        .min_delay(Duration::from_millis(50))
        .max_attempts(60)
}

/// Counts of the requests that the receiver's idempotency layer responded
/// to without running the handler: replays of a stored response, and
/// `409` while the first request still runs.
#[derive(Debug, Default)]
struct Absorbed {
    replayed: AtomicU64,
    conflicts: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    let started = Instant::now();
    let directory = tempfile::tempdir()?;
    let mut secret = [0_u8; 32];
    rand::fill(&mut secret);
    let keys = KeyRing::single(Key::from_bytes("demo", &secret)?);
    println!("state in {}", directory.path().display());

    let (receiver_store, ledger) = open_store(&format!(
        "sqlite:{}",
        directory.path().join("receiver.db").display()
    ))
    .await?;
    let absorbed = Arc::new(Absorbed::default());
    let address = start_receiver_later(
        keys.clone(),
        receiver_store,
        ledger.clone(),
        absorbed.clone(),
    )
    .await?;

    let sender_url = format!("sqlite:{}", directory.path().join("sender.db").display());
    let sender_store = Store::connect(&sender_url).await?.queue();
    let dispatcher = send_commands(keys, sender_store.clone(), address).await?;
    watch_progress(sender_store.as_ref(), &dispatcher).await?;
    dispatcher.shutdown().await;

    let stats = ledger.stats().await?;
    let outbox = sender_store.counts("outbox").await?;
    Ok(summarize(
        stats,
        outbox.succeeded,
        outbox.dead,
        &absorbed,
        started.elapsed(),
    ))
}

/// Reserves a loopback port and starts the receiver on it after
/// [`DOWN_FOR`]; until then connections are refused.
async fn start_receiver_later(
    keys: KeyRing,
    store: Store,
    ledger: Ledger,
    absorbed: Arc<Absorbed>,
) -> Result<SocketAddr, BoxError> {
    let address = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let router = receiver_router(keys, &store, ledger, absorbed);

    tokio::spawn(async move {
        tokio::time::sleep(DOWN_FOR).await;
        // NOTE: another process could take the port in these 3 seconds.
        // The demo then fails to bind and prints the error.
        match TcpListener::bind(address).await {
            Ok(listener) => axum::serve(listener, router)
                .await
                .expect("the receiver serves"),
            Err(error) => eprintln!("receiver cannot listen on {address}: {error}"),
        }
    });
    Ok(address)
}

/// Builds the receiver, in sync mode, with the demo's faults:
///
/// ```text
/// FaultLayer: 10% 500 after the handler ran (reply lost)
/// └─ counts replays and 409s for the summary
///    └─ VerifyLayer
///       └─ IdempotencyLayer::required
///          └─ FaultLayer: 10% 500 before the handler, 5% slow replies
///             └─ CommandHandler
/// ```
fn receiver_router(
    keys: KeyRing,
    store: &Store,
    ledger: Ledger,
    absorbed: Arc<Absorbed>,
) -> axum::Router {
    let error = StatusCode::INTERNAL_SERVER_ERROR;
    let seed = rand::random();
    let before = Faults::random(seed)
        .with(Fault::fail_before(error), 0.10)
        .with(Fault::Delay(SLOW_REPLY), 0.05)
        .only_path(Method::POST, "/commands/");
    let after = Faults::random(seed ^ 1)
        .with(Fault::fail_after(error), 0.10)
        .only_path(Method::POST, "/commands/");

    let commands = ServiceBuilder::new()
        .layer(FaultLayer::new(after))
        .map_response(move |response: http::Response<_>| {
            count_absorbed(&absorbed, &response);
            response
        })
        .layer(VerifyLayer::new(keys).replay_store(store.replay()))
        .layer(IdempotencyLayer::required(store.idempotency()).lease(IDEMPOTENCY_LEASE))
        .layer(FaultLayer::new(before))
        .service(CommandHandler::new(ledger.clone(), Duration::ZERO));

    axum::Router::new()
        .route_service("/commands/{name}", infallible(commands))
        .merge(public_routes(ledger))
}

fn count_absorbed<B>(absorbed: &Absorbed, response: &http::Response<B>) {
    if response.headers().contains_key(IDEMPOTENT_REPLAYED) {
        absorbed.replayed.fetch_add(1, Ordering::Relaxed);
    } else if response.status() == StatusCode::CONFLICT {
        absorbed.conflicts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Stores the demo's commands in the outbox and starts the dispatcher:
///
/// ```text
/// OutboxLayer::background(store) -> SignLayer -> hyper-util client
/// Dispatcher(store)              -> SignLayer -> hyper-util client
/// ```
async fn send_commands(
    keys: KeyRing,
    store: Arc<dyn MessageQueue>,
    address: SocketAddr,
) -> Result<WorkerHandle, BoxError> {
    let client = signed_client(keys);
    let outbox = ServiceBuilder::new()
        .layer(OutboxLayer::background(store.clone()).backoff(demo_backoff()))
        .service(client.clone());
    let dispatcher = Dispatcher::new(store, client)
        .backoff(demo_backoff())
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .lease(common::EXAMPLE_LEASE)
        .poll_interval(Duration::from_millis(100))
        .spawn();

    let target = format!("http://{address}");
    let results: Vec<_> = stream::iter(0..COMMANDS)
        .map(|index| outbox.clone().oneshot(command_request(&target, index)))
        .buffer_unordered(32)
        .collect()
        .await;
    for result in results {
        let _queued = result?;
    }
    println!("stored {COMMANDS} commands in the outbox; the receiver is down for {DOWN_FOR:?}");
    Ok(dispatcher)
}

/// Shows delivered, queued, retrying and dead until the outbox is empty.
async fn watch_progress(
    store: &dyn MessageQueue,
    dispatcher: &WorkerHandle,
) -> Result<(), BoxError> {
    let bar = ProgressBar::new(COMMANDS);
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>3} [{bar:30}] {pos}/{len} delivered, {msg}")?
            .progress_chars("=> "),
    );
    loop {
        let counts = store.counts("outbox").await?;
        let pending = store
            .list("outbox", MessageState::Pending, COMMANDS as usize, None)
            .await?;
        let retrying = pending
            .iter()
            .filter(|message| message.attempts > 0)
            .count();
        bar.set_position(counts.succeeded);
        bar.set_message(format!(
            "{} queued, {retrying} retrying, {} dead",
            counts.pending + counts.in_flight,
            counts.dead
        ));
        if counts.pending + counts.in_flight + dispatcher.metrics().in_flight == 0 {
            bar.finish();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the summary and returns the exit code: success only when no
/// command was lost and none was applied twice.
fn summarize(
    stats: Stats,
    delivered: u64,
    dead: u64,
    absorbed: &Absorbed,
    elapsed: Duration,
) -> ExitCode {
    let replayed = absorbed.replayed.load(Ordering::Relaxed);
    let conflicts = absorbed.conflicts.load(Ordering::Relaxed);
    // Handler runs beyond the handled commands are duplicates that the
    // inbox absorbed. The idempotency layer responded to the other two
    // kinds itself.
    let inbox = stats.runs.saturating_sub(stats.handled);
    let lost = COMMANDS.saturating_sub(stats.distinct + dead);
    let applied_twice = stats.handled.saturating_sub(stats.distinct);

    println!();
    println!("sent                 {COMMANDS}");
    println!("delivered            {delivered}");
    println!("handled              {}", stats.handled);
    println!(
        "duplicates absorbed  {} ({replayed} replayed, {conflicts} answered 409 while running, {inbox} by the inbox)",
        replayed + conflicts + inbox
    );
    println!("lost                 {lost}");
    println!("applied twice        {applied_twice}");
    println!("dead                 {dead}");
    println!("elapsed              {:.1} s", elapsed.as_secs_f64());

    if lost == 0 && applied_twice == 0 {
        println!("\nevery command was applied exactly once");
        ExitCode::SUCCESS
    } else {
        println!("\nthe guarantee was broken: see lost and applied twice above");
        ExitCode::FAILURE
    }
}
