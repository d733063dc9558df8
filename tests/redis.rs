//! The Redis store against a real server: the store conformance suite,
//! then trials of what only this backend has.
//!
//! Runs when `TOWER_COURIER_REDIS_URL` names a server, such as
//! `redis://127.0.0.1:6379`; every trial uses a fresh key prefix. Without
//! the variable every trial is reported as ignored, and without the
//! `redis` feature one ignored trial names the feature to enable.

#[cfg(feature = "redis")]
#[path = "backend/redis.rs"]
mod backend;
#[cfg(feature = "redis")]
#[path = "backend/scenarios.rs"]
mod scenarios;
mod support;

fn main() {
    let arguments = libtest_mimic::Arguments::from_args();
    #[cfg(feature = "redis")]
    let trials = backend::trials();
    #[cfg(not(feature = "redis"))]
    let trials = vec![support::feature_missing("redis")];
    let conclusion = libtest_mimic::run(&arguments, trials);
    #[cfg(feature = "redis")]
    backend::clean_up();
    conclusion.exit();
}
