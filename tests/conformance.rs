//! Runs the store conformance suite on every backend compiled in.

use tower_courier::store::Store;
use tower_courier::store::conformance::Suite;
use tower_courier::store::conformance::libtest_mimic::{self, Arguments, Trial};
use tower_courier::store::memory::MemoryStore;

fn main() {
    let directory = tempfile::tempdir().expect("a temporary directory for the sqlite files");

    let mut trials = Suite::new("memory")
        .store(|| async { Ok(Store::new(MemoryStore::new())) })
        .into_trials();
    trials.extend(sqlite_trials(directory.path()));

    let conclusion = libtest_mimic::run(&Arguments::from_args(), trials);
    drop(directory);
    conclusion.exit();
}

/// Gives every case a fresh database file in `directory`.
#[cfg(feature = "sqlite")]
fn sqlite_trials(directory: &std::path::Path) -> Vec<Trial> {
    use tower_courier::store::sqlite::SqliteStore;

    let directory = directory.to_owned();
    Suite::new("sqlite")
        .store(move || {
            let path = directory.join(format!("{}.db", tower_courier::MessageId::new()));
            async move { Ok(Store::new(SqliteStore::open(path).await?)) }
        })
        .into_trials()
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_trials(_directory: &std::path::Path) -> Vec<Trial> {
    Vec::new()
}
