//! Code shared by the `receiver`, `sender` and `demo` examples.
//!
//! Each example includes this module with `mod common;`, so a function
//! that one example does not call is dead code in that example.
#![allow(dead_code)]

pub mod ledger;
pub mod receiver;
pub mod sender;

use std::path::Path;
use std::time::Duration;

use tower_courier::BoxError;
use tower_courier::auth::KeyRing;
use tower_courier::retry::Backoff;

/// Sends the crate's log to stderr, filtered by `RUST_LOG`: by default
/// warnings and errors only, so progress lines stay readable.
/// `RUST_LOG=tower_courier=debug` adds, among others, the reason of each
/// rejected signature and each replayed response.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Formats an error and its sources on one line, outermost first.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source's text in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Resolves on Ctrl-C or SIGTERM, so that the examples stop serving
/// gracefully.
pub async fn shutdown_signal() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate_signal() => {}
    }
    eprintln!("stopping: finishing open requests");
}

#[cfg(unix)]
async fn terminate_signal() {
    use tokio::signal::unix::{SignalKind, signal};

    match signal(SignalKind::terminate()) {
        Ok(mut stream) => {
            stream.recv().await;
        }
        Err(error) => {
            eprintln!("cannot listen for SIGTERM: {error}");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
async fn terminate_signal() {
    std::future::pending::<()>().await;
}

/// Returns the retry schedule of the examples' dispatcher and command
/// workers: delays drawn from 100 ms up to a ceiling that starts at 250 ms and
/// doubles to 4 s, for at most 40 attempts. A message is retried through
/// about a minute of outage (the average delay is half its ceiling)
/// before it is dead-lettered. The crate's default retries for a day,
/// which suits production but not a test run.
pub fn example_backoff() -> Backoff {
    Backoff::new()
        .initial_delay(Duration::from_millis(250))
        .max_delay(Duration::from_secs(4))
        .max_attempts(40)
        .max_age(Duration::from_secs(30 * 60))
}

/// The lease of the examples' dispatcher and command workers: a killed
/// process's messages are claimable again after 5 seconds. The crate's
/// default is 30 seconds.
pub const EXAMPLE_LEASE: Duration = Duration::from_secs(5);

/// Reads the key file at `path`. With `kid`, that key signs; without it,
/// the first key of the file signs, as [`KeyRing::read_key_file`] does.
///
/// # Errors
///
/// Fails when the file cannot be read or parsed, or names no key `kid`.
pub fn read_keys(path: &Path, kid: Option<&str>) -> Result<KeyRing, BoxError> {
    let ring = KeyRing::read_key_file(path).map_err(|error| {
        format!(
            "invalid key file {}: {}",
            path.display(),
            error_chain(&error)
        )
    })?;
    let Some(kid) = kid else {
        return Ok(ring);
    };

    let text = std::fs::read_to_string(path)?;
    let mut builder = KeyRing::builder();
    for other in key_ids(&text) {
        let key = ring
            .get(other)
            .cloned()
            .ok_or("key file changed while read")?;
        builder = if other == kid {
            builder.signing_key(key)
        } else {
            builder.key(key)
        };
    }
    if ring.get(kid).is_none() {
        return Err(format!("key file {} has no key {kid:?}", path.display()).into());
    }
    Ok(builder.build()?)
}

/// Returns the key ids of a key file's lines, in file order.
fn key_ids(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_whitespace().next())
}

/// Returns `url` with any password replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}
