//! The PostgreSQL store against a real server: the store conformance
//! suite, then trials of what only this backend has.
//!
//! Runs when `TOWER_COURIER_POSTGRES_URL` names a database, such as
//! `postgres://postgres@127.0.0.1:5432/test`; every trial uses a fresh
//! schema. Without the variable every trial is reported as ignored, and
//! without the `postgres` feature one ignored trial names the feature to enable.

#[cfg(feature = "postgres")]
#[path = "backend/postgres.rs"]
mod backend;
#[cfg(feature = "postgres")]
#[path = "backend/scenarios.rs"]
mod scenarios;
mod support;

fn main() {
    let arguments = libtest_mimic::Arguments::from_args();
    #[cfg(feature = "postgres")]
    let trials = backend::trials();
    #[cfg(not(feature = "postgres"))]
    let trials = vec![support::feature_missing("postgres")];
    let conclusion = libtest_mimic::run(&arguments, trials);
    #[cfg(feature = "postgres")]
    backend::clean_up();
    conclusion.exit();
}
