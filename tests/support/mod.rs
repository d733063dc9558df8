//! Trial helpers shared by the PostgreSQL and Redis test targets.

#![allow(dead_code)]

use std::future::Future;
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

/// Returns the one trial a target prints when built without its feature.
pub fn feature_missing(feature: &str) -> Trial {
    let reason = format!(
        "built without the {feature} feature: run cargo test --features {feature} --test {feature}"
    );
    Trial::ignorable_test(format!("{feature}_backend"), move || {
        Ok(Completion::ignored_with(reason))
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
