//! The reference receiver: verifies signed commands, deduplicates them by
//! `Idempotency-Key`, and records each in its own table through the inbox.
//!
//! ```text
//! cargo run --release --example receiver -- --listen 127.0.0.1:8080 \
//!     --keys keys.txt --store sqlite:receiver.db --mode sync
//! ```
//!
//! The stacks are in `examples/common/receiver.rs`:
//!
//! ```text
//! FaultLayer(--fail-after) -> VerifyLayer -> IdempotencyLayer::required
//!     -> [accept mode: AcceptLayer, then workers] -> FaultLayer(--fail-before) -> handler
//! ```
//!
//! Routes: `POST /commands/{name}` (signed, with an `Idempotency-Key`),
//! `GET /stats` returning `{"runs": R, "handled": H, "distinct": D}`,
//! `GET /health`, and in accept mode `GET /commands/status/{id}` (signed).
//! It prints `listening on ADDR` once it accepts connections.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::StatusCode;
use tokio::net::TcpListener;
use tower_courier::BoxError;
use tower_courier::testing::Fault;

use common::receiver::{ReceiveMode, ReceiverConfig, build, fail_with_probability, open_store};

#[derive(Debug, Parser)]
#[command(about = "Receives signed, idempotent commands and records each once")]
struct Options {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Key file: one `KID BASE64-SECRET` line per key, `#` starts a comment.
    #[arg(long)]
    keys: PathBuf,
    /// The store: memory or sqlite:PATH. The receiver's own table goes
    /// into the same database (in memory for `memory`).
    #[arg(long, default_value = "memory")]
    store: String,
    /// Run the handler inline (sync), or respond 202 and run it in
    /// workers (accept).
    #[arg(long, value_enum, default_value_t = ReceiveMode::Sync)]
    mode: ReceiveMode,
    /// Accepted clock skew of signed requests, in seconds.
    #[arg(long, default_value_t = 300)]
    tolerance: u64,
    /// Probability (0 to 1) of a 500 from inside the stack, before the
    /// handler runs.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    fail_before: f64,
    /// Probability (0 to 1) of a 500 after the whole stack handled the
    /// request: the work is done, the reply is lost.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    fail_after: f64,
    /// How long the command handler takes, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Seed of the fault injection; default: random.
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_logging();
    let options = Options::parse();
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", common::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), BoxError> {
    let keys = common::read_keys(&options.keys, None)?;
    let (store, ledger) = open_store(&options.store).await?;
    let seed = options.seed.unwrap_or_else(rand::random);
    let error = StatusCode::INTERNAL_SERVER_ERROR;

    let config = ReceiverConfig {
        keys,
        tolerance: Duration::from_secs(options.tolerance),
        mode: options.mode,
        fail_before: fail_with_probability(Fault::fail_before(error), options.fail_before, seed),
        fail_after: fail_with_probability(Fault::fail_after(error), options.fail_after, seed ^ 1),
        handler_delay: Duration::from_millis(options.delay_ms),
    };
    let receiver = build(config, &store, ledger);

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", options.listen))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mode = options
        .mode
        .to_possible_value()
        .expect("every mode has a name");
    eprintln!(
        "mode {}, store {}, fault seed {seed}",
        mode.get_name(),
        common::redacted(&options.store)
    );

    axum::serve(listener, receiver.router)
        .with_graceful_shutdown(common::shutdown_signal())
        .await?;
    // Running commands finish within the worker's grace period; the rest
    // are released for the next start.
    if let Some(workers) = receiver.workers {
        workers.shutdown().await;
    }
    eprintln!("stopped");
    Ok(())
}

/// Accepts a probability from 0 to 1.
fn parse_probability(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("invalid probability {text:?}: expected a number from 0 to 1"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!(
            "invalid probability {value}: expected a number from 0 to 1"
        ));
    }
    Ok(value)
}
