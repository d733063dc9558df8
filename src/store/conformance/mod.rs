//! The conformance suite that every store backend runs.
//!
//! The suite is one list of named async test cases per trait
//! ([`queue_cases`], [`idempotency_cases`], [`replay_cases`]). Each case
//! gets a fresh store from a factory, works in its own queue, keys and key
//! ids, and uses real short durations (leases of 300 ms), so backends that
//! read the server's clock run it unchanged. [`Suite`] turns the cases into
//! [`libtest_mimic::Trial`]s for a test target with `harness = false`.
//!
//! # Running the suite on your own store
//!
//! Add a test target with `harness = false` to your `Cargo.toml`:
//!
//! ```toml
//! [[test]]
//! name = "conformance"
//! harness = false
//!
//! [dev-dependencies]
//! tower-courier = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! and in `tests/conformance.rs` hand the suite a factory that opens a
//! fresh store:
//!
//! ```no_run
//! use tower_courier::store::Store;
//! use tower_courier::store::conformance::Suite;
//! use tower_courier::store::memory::MemoryStore;
//!
//! fn main() {
//!     // Replace `MemoryStore` with your backend; anything implementing the
//!     // three traits fits in a `Store`.
//!     let suite = Suite::new("mystore").store(|| async { Ok(Store::new(MemoryStore::new())) });
//!
//!     // A backend that needs a server can skip every case with a reason:
//!     // let suite = suite.ignore_all("MYSTORE_URL is not set");
//!     suite.run().exit();
//! }
//! ```
//!
//! A store that implements only some of the traits registers only those,
//! with [`Suite::queue`], [`Suite::idempotency`] or [`Suite::replay`].
//! Cases panic on failure, so a failing case shows the assertion that
//! failed; each case is limited to [`Suite::CASE_TIMEOUT`].

mod idempotency;
mod lease;
mod queue;
mod replay;
mod support;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use libtest_mimic::{Arguments, Completion, Conclusion, Failed, Trial};

/// The test harness the suite builds on, re-exported so that a test
/// target needs no dependency of its own.
pub use libtest_mimic;

use super::{IdempotencyStore, MessageQueue, ReplayStore, Store};
use crate::BoxError;

/// One named test case of the suite, for stores of type `S`.
pub struct Case<S: ?Sized> {
    name: &'static str,
    run: fn(Arc<S>) -> BoxFuture<'static, ()>,
}

impl<S: ?Sized> Case<S> {
    pub(crate) const fn new(name: &'static str, run: fn(Arc<S>) -> BoxFuture<'static, ()>) -> Self {
        Self { name, run }
    }

    /// Returns the case's name, such as `claim_is_exclusive`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the case on `store`, panicking on the first failed check.
    pub async fn run(&self, store: Arc<S>) {
        (self.run)(store).await
    }
}

impl<S: ?Sized> Clone for Case<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ?Sized> Copy for Case<S> {}

impl<S: ?Sized> fmt::Debug for Case<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Case").field(&self.name).finish()
    }
}

/// Returns the cases for [`MessageQueue`] stores.
pub fn queue_cases() -> Vec<Case<dyn MessageQueue>> {
    let mut cases = queue::cases();
    cases.extend(lease::cases());
    cases
}

/// Returns the cases for [`IdempotencyStore`] stores.
pub fn idempotency_cases() -> Vec<Case<dyn IdempotencyStore>> {
    idempotency::cases()
}

/// Returns the cases for [`ReplayStore`] stores.
pub fn replay_cases() -> Vec<Case<dyn ReplayStore>> {
    replay::cases()
}

type Factory<S> = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<S>, BoxError>> + Send + Sync>;

/// The suite for one backend, as a list of [`Trial`]s.
///
/// Each trial builds a Tokio runtime with two worker threads, opens a
/// fresh store from the factory inside it, and runs one case.
pub struct Suite {
    backend: String,
    trials: Vec<Trial>,
    ignored: Option<String>,
}

impl Suite {
    /// The time after which a case fails as hung: 60 seconds.
    pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

    /// Creates an empty suite whose trials are labelled `backend`.
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            trials: Vec::new(),
            ignored: None,
        }
    }

    /// Adds every case of the three traits, each on a fresh [`Store`] from
    /// `factory`.
    pub fn store<F, Fut>(self, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Store, BoxError>> + Send + 'static,
    {
        let factory = Arc::new(factory);
        let queue = factory.clone();
        let idempotency = factory.clone();
        self.queue(move || {
            let store = queue();
            async move { Ok(store.await?.queue()) }
        })
        .idempotency(move || {
            let store = idempotency();
            async move { Ok(store.await?.idempotency()) }
        })
        .replay(move || {
            let store = factory();
            async move { Ok(store.await?.replay()) }
        })
    }

    /// Adds the [`MessageQueue`] cases, each on a fresh queue from `factory`.
    pub fn queue<F, Fut>(self, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn MessageQueue>, BoxError>> + Send + 'static,
    {
        self.add("queue", queue_cases(), boxed(factory))
    }

    /// Adds the [`IdempotencyStore`] cases, each on a fresh store from
    /// `factory`.
    pub fn idempotency<F, Fut>(self, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn IdempotencyStore>, BoxError>> + Send + 'static,
    {
        self.add("idempotency", idempotency_cases(), boxed(factory))
    }

    /// Adds the [`ReplayStore`] cases, each on a fresh store from `factory`.
    pub fn replay<F, Fut>(self, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn ReplayStore>, BoxError>> + Send + 'static,
    {
        self.add("replay", replay_cases(), boxed(factory))
    }

    /// Reports every trial as ignored with `reason` instead of running it,
    /// for a backend whose server is not configured.
    pub fn ignore_all(mut self, reason: impl Into<String>) -> Self {
        self.ignored = Some(reason.into());
        self
    }

    /// Returns the trials, for a target that runs them with other trials.
    pub fn into_trials(self) -> Vec<Trial> {
        match self.ignored {
            None => self.trials,
            Some(reason) => self
                .trials
                .into_iter()
                .map(|trial| ignored(&trial, &reason))
                .collect(),
        }
    }

    /// Runs the trials with the command-line arguments of the process.
    pub fn run(self) -> Conclusion {
        libtest_mimic::run(&Arguments::from_args(), self.into_trials())
    }

    fn add<S>(mut self, group: &str, cases: Vec<Case<S>>, factory: Factory<S>) -> Self
    where
        S: ?Sized + Send + Sync + 'static,
    {
        for case in cases {
            let factory = factory.clone();
            let name = format!("{group}::{}", case.name());
            let trial = Trial::test(name, move || run_case(case, factory));
            self.trials.push(trial.with_kind(self.backend.clone()));
        }
        self
    }
}

impl fmt::Debug for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suite")
            .field("backend", &self.backend)
            .field("trials", &self.trials.len())
            .field("ignored", &self.ignored)
            .finish()
    }
}

fn boxed<S, F, Fut>(factory: F) -> Factory<S>
where
    S: ?Sized,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<S>, BoxError>> + Send + 'static,
{
    Arc::new(move || Box::pin(factory()))
}

fn ignored(trial: &Trial, reason: &str) -> Trial {
    let reason = reason.to_owned();
    Trial::ignorable_test(trial.name(), move || Ok(Completion::ignored_with(reason)))
        .with_kind(trial.kind())
}

fn run_case<S>(case: Case<S>, factory: Factory<S>) -> Result<(), Failed>
where
    S: ?Sized + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| format!("cannot build a tokio runtime: {error}"))?;

    runtime.block_on(async move {
        let store = factory()
            .await
            .map_err(|error| format!("the store factory failed: {error}"))?;
        tokio::time::timeout(Suite::CASE_TIMEOUT, case.run(store))
            .await
            .map_err(|_| format!("case timed out after {:?}", Suite::CASE_TIMEOUT))?;
        Ok(())
    })
}
