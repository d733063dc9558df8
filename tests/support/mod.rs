//! Trial helpers shared by the PostgreSQL and Redis test targets.

#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Completion, Trial};

/// Returns the server URL in `variable`, or `None` when it is unset or
/// empty.
pub fn server_url(variable: &str) -> Option<String> {
    std::env::var(variable)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// Returns a trial that runs `test` on a fresh Tokio runtime with `url`,
/// or one reported as ignored when there is no URL.
pub fn trial<F, Fut>(name: &str, url: Option<&str>, variable: &str, test: F) -> Trial
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let Some(url) = url.map(str::to_owned) else {
        let reason = format!("set {variable} to run");
        return Trial::ignorable_test(name, move || Ok(Completion::ignored_with(reason)));
    };
    Trial::test(name, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime must start");
        runtime.block_on(test(url));
        Ok(())
    })
}

/// Runs `task` on a fresh Tokio runtime on this thread with a subscriber
/// that keeps warnings, and returns its output and the warnings' messages,
/// or the panic message if `task` panicked.
///
/// Call it before any trial starts. Tracing caches per call site whether
/// any subscriber wants its events. A trial that hits a call site while
/// another thread installs a scoped subscriber can leave it cached as
/// disabled, so a capture next to running trials misses events.
pub fn capture_warnings<T>(task: impl Future<Output = T>) -> Result<(T, Vec<String>), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime must start");
    capture_on(runtime, task)
}

/// Runs `task` as [`capture_warnings`] does, but on a single-threaded
/// runtime, so that the warnings of every task it spawns are kept too.
pub fn capture_all_warnings<T>(task: impl Future<Output = T>) -> Result<(T, Vec<String>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime must start");
    capture_on(runtime, task)
}

fn capture_on<T>(
    runtime: tokio::runtime::Runtime,
    task: impl Future<Output = T>,
) -> Result<(T, Vec<String>), String> {
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _guard = tracing::subscriber::set_default(WarnCapture(warnings.clone()));
        runtime.block_on(task)
    }))
    .map_err(|panic| {
        let text = panic.downcast_ref::<String>().cloned();
        let text = text.or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        text.unwrap_or_else(|| "the capture panicked".to_owned())
    })?;
    let warnings = warnings.lock().unwrap().clone();
    Ok((output, warnings))
}

/// Returns the one trial a target prints when built without its feature.
pub fn feature_missing(feature: &str) -> Trial {
    let reason = format!(
        "built without the {feature} feature: run cargo test --features {feature} --test {feature}"
    );
    Trial::ignorable_test(format!("{feature}_backend"), move || {
        Ok(Completion::ignored_with(reason))
    })
}

/// Returns 8 hex digits that differ between runs of a test target, for
/// naming and then deleting everything one run created.
pub fn run_id() -> &'static str {
    static RUN_ID: OnceLock<String> = OnceLock::new();
    RUN_ID.get_or_init(|| {
        let id = tower_courier::MessageId::new().to_string().replace('-', "");
        id[id.len() - 8..].to_owned()
    })
}

/// Returns a name no other trial uses: `prefix` and 32 hex digits.
pub fn unique_name(prefix: &str) -> String {
    let id = tower_courier::MessageId::new().to_string().replace('-', "");
    format!("{prefix}{id}")
}

/// Returns a time far in the past, so messages enqueued with it are due
/// at once by any server's clock.
pub fn long_ago() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_600_000_000)
}

/// A tracing subscriber that keeps the message of every warning.
struct WarnCapture(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for WarnCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut message = MessageText(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
