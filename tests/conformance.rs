//! Runs the store conformance suite on every backend compiled in.

use tower_courier::store::Store;
use tower_courier::store::conformance::Suite;
use tower_courier::store::conformance::libtest_mimic::{self, Arguments};
use tower_courier::store::memory::MemoryStore;

fn main() {
    let trials = Suite::new("memory")
        .store(|| async { Ok(Store::new(MemoryStore::new())) })
        .into_trials();

    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}
