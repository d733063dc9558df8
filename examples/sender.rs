//! The reference sender: stores commands in an outbox and delivers them,
//! signed, to a receiver.
//!
//! ```text
//! cargo run --release --example sender -- --target http://127.0.0.1:8080 \
//!     --keys keys.txt --kid orders --store sqlite:sender.db --count 100 --drain
//! ```
//!
//! The stacks are in `examples/common/sender.rs`:
//!
//! ```text
//! OutboxLayer::background|optimistic(store) -> SignLayer -> hyper-util client
//! Dispatcher(store)                         -> SignLayer -> hyper-util client
//! ```
//!
//! `--count N` creates `POST {target}/commands/cmd-{i}` for `i` in `0..N`
//! and prints `enqueued N` on stdout once all of them are stored (or, in
//! optimistic mode, delivered). `--drain` then runs the dispatcher until
//! nothing is pending or in flight. Progress goes to stderr, and the last
//! line on stdout is a JSON summary:
//!
//! ```text
//! {"enqueued":E,"delivered":D,"dead":X,"pending":P}
//! ```
//!
//! `enqueued` counts the commands this run created. `delivered`, `dead`
//! and `pending` count the whole outbox, earlier runs included, plus the
//! commands this run delivered inline in optimistic mode (which the outbox
//! never stores). A run killed at any point leaves its stored commands to
//! the next run on the same store: `--count 0 --drain` finishes them.
//!
//! The exit status is 0 when `dead` is 0, and 2 when the outbox contains
//! commands that were dead-lettered, failed or rejected, so that a script
//! notices them. Errors (an unreadable key file, a store that cannot be
//! opened) exit with 1.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{StreamExt, stream};
use tower::ServiceExt;
use tower_courier::BoxError;
use tower_courier::outbox::Delivery;
use tower_courier::store::{MessageQueue, QueueCounts, Store};
use tower_courier::worker::WorkerHandle;

use common::sender::{
    SendMode, SignedClient, command_request, outbox, signed_client, spawn_dispatcher,
};

/// The outbox queue, the crate's default.
const QUEUE: &str = "outbox";

/// How many commands are stored at once while enqueuing.
const ENQUEUE_CONCURRENCY: usize = 64;

#[derive(Debug, Parser)]
#[command(about = "Sends signed commands to a receiver through a durable outbox")]
struct Options {
    /// Base URL of the receiver, such as http://127.0.0.1:8080.
    #[arg(long, value_parser = parse_target)]
    target: String,
    /// Key file: one `KID BASE64-SECRET` line per key, `#` starts a comment.
    #[arg(long)]
    keys: PathBuf,
    /// Key id that signs the requests; default: the first key of the file.
    /// Every sender of one outbox store must use the same key id.
    #[arg(long)]
    kid: Option<String>,
    /// The outbox store: memory, sqlite:PATH, postgres://... or redis://...
    #[arg(long, default_value = "memory")]
    store: String,
    /// Number of commands to create.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Whether the outbox sends inline first (optimistic) or only stores.
    #[arg(long, value_enum, default_value_t = SendMode::Background)]
    mode: SendMode,
    /// Keep dispatching until nothing is pending or in flight, then exit.
    #[arg(long)]
    drain: bool,
    /// Timeout of one delivery attempt, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
}

/// The counts of this run's enqueue step.
#[derive(Debug, Default)]
struct Enqueued {
    stored: AtomicU64,
    delivered_inline: AtomicU64,
    rejected_inline: AtomicU64,
}

/// The last line on stdout, with its members in this order.
#[derive(Debug, serde::Serialize)]
struct Summary {
    enqueued: u64,
    delivered: u64,
    dead: u64,
    pending: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_logging();
    let options = Options::parse();
    match run(options).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", common::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<ExitCode, BoxError> {
    let keys = common::read_keys(&options.keys, options.kid.as_deref())?;
    let store = Store::connect(&options.store).await.map_err(|error| {
        let store = common::redacted(&options.store);
        format!("cannot open store {store}: {error}")
    })?;
    let queue = store.queue();
    let client = signed_client(keys);
    let timeout = Duration::from_millis(options.timeout_ms);

    // The dispatcher runs while commands are enqueued, so that delivery
    // starts at once.
    let dispatcher = options
        .drain
        .then(|| spawn_dispatcher(queue.clone(), client.clone(), timeout));

    let enqueued = enqueue(&options, queue.clone(), client, timeout).await?;
    println!("enqueued {}", options.count);
    std::io::stdout().flush()?;

    if let Some(dispatcher) = &dispatcher {
        drain(queue.as_ref(), dispatcher).await?;
        dispatcher.shutdown().await;
    }
    let counts = queue.counts(QUEUE).await?;
    let summary = print_summary(&options, &enqueued, &counts);
    if summary.dead > 0 {
        eprintln!(
            "{} commands were not delivered and will not be retried; \
             inspect the dead-lettered messages in the store",
            summary.dead
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates the `--count` commands and hands each to the outbox.
async fn enqueue(
    options: &Options,
    queue: Arc<dyn MessageQueue>,
    client: SignedClient,
    timeout: Duration,
) -> Result<Enqueued, BoxError> {
    let outbox = outbox(options.mode, queue, client, timeout);
    let enqueued = Enqueued::default();

    let results: Vec<Result<(), BoxError>> = stream::iter(0..options.count)
        .map(|index| {
            let request = command_request(&options.target, index);
            let outbox = outbox.clone();
            let enqueued = &enqueued;
            async move {
                let delivery = outbox.oneshot(request).await?;
                let counter = match delivery {
                    Delivery::Delivered(_) => &enqueued.delivered_inline,
                    Delivery::Queued(_) => &enqueued.stored,
                    Delivery::Rejected(response) => {
                        eprintln!("cmd-{index} rejected with {}", response.status());
                        &enqueued.rejected_inline
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(ENQUEUE_CONCURRENCY)
        .collect()
        .await;

    // A command that was neither stored nor delivered cannot be retried
    // by the dispatcher, so the run fails before it prints `enqueued N`.
    if let Some(error) = results.into_iter().find_map(Result::err) {
        return Err(format!("failed to enqueue a command: {error}").into());
    }
    Ok(enqueued)
}

/// Waits until the outbox has nothing pending or in flight, printing
/// progress to stderr every second.
async fn drain(queue: &dyn MessageQueue, dispatcher: &WorkerHandle) -> Result<(), BoxError> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let counts = queue.counts(QUEUE).await?;
        let metrics = dispatcher.metrics();
        let open = counts.pending + counts.in_flight + metrics.in_flight;
        if open == 0 {
            return Ok(());
        }

        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:>5.1}s] delivered {}, pending {}, in flight {}, dead {}, retried attempts {}",
                started.elapsed().as_secs_f64(),
                counts.succeeded,
                counts.pending,
                counts.in_flight,
                counts.dead + counts.failed,
                metrics.retried,
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the JSON summary as the last line on stdout, and returns it.
fn print_summary(options: &Options, enqueued: &Enqueued, counts: &QueueCounts) -> Summary {
    let inline = enqueued.delivered_inline.load(Ordering::Relaxed);
    let rejected = enqueued.rejected_inline.load(Ordering::Relaxed);
    let summary = Summary {
        enqueued: options.count,
        delivered: counts.succeeded + inline,
        dead: counts.dead + counts.failed + rejected,
        pending: counts.pending + counts.in_flight,
    };
    eprintln!(
        "stored {} of {} commands in the outbox this run",
        enqueued.stored.load(Ordering::Relaxed),
        options.count
    );
    let line = serde_json::to_string(&summary).expect("a struct of numbers serializes");
    println!("{line}");
    summary
}

/// Accepts an `http://` base URL with a host.
fn parse_target(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|error| format!("invalid target URL {text:?}: {error}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "invalid target URL {text:?}: expected http://HOST:PORT"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}
