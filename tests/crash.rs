//! Crash tests of the reference examples: the sender and the receiver are
//! killed with SIGKILL at random moments, and at the end no command is
//! lost and none is applied twice.
//!
//! The tests run the `receiver` and `sender` example binaries as
//! processes, built by `cargo build --examples` on first use with the
//! features this test was built with. Each test prints its random seed.

mod process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tower_courier::store::MessageQueue;
use tower_courier::store::sqlite::SqliteStore;

use process::{DEADLINE, Process, stats, summary};

/// A key file with one key, `crash`, whose secret is 32 bytes of `0x2a`.
const KEY_FILE: &str = "# crash test key\ncrash KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=\n";

/// Commands per test run: 2000, the count of the documented crash scenario.
const COMMANDS: u64 = 2000;

/// The files of one test: the key file and the two databases.
struct Setup {
    directory: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let directory = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(directory.path().join("keys.txt"), KEY_FILE)
            .expect("the key file is written");
        Self { directory }
    }

    fn path(&self, name: &str) -> String {
        self.directory.path().join(name).display().to_string()
    }

    fn receiver(&self, listen: &str, extra: &[&str]) -> (Process, SocketAddr) {
        let mut args = vec![
            "--listen".to_owned(),
            listen.to_owned(),
            "--keys".to_owned(),
            self.path("keys.txt"),
            "--store".to_owned(),
            format!("sqlite:{}", self.path("receiver.db")),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));

        let mut process = Process::start("receiver", &args);
        let line = process.wait_for_line("listening on ");
        let address = line["listening on ".len()..]
            .parse()
            .expect("the receiver prints its address");
        (process, address)
    }

    fn sender(&self, address: SocketAddr, count: u64) -> Process {
        let args = [
            "--target".to_owned(),
            format!("http://{address}"),
            "--keys".to_owned(),
            self.path("keys.txt"),
            "--kid".to_owned(),
            "crash".to_owned(),
            "--store".to_owned(),
            format!("sqlite:{}", self.path("sender.db")),
            "--count".to_owned(),
            count.to_string(),
            "--drain".to_owned(),
            "--timeout-ms".to_owned(),
            "2000".to_owned(),
        ];
        Process::start("sender", &args)
    }
}

fn seeded_rng() -> StdRng {
    let seed: u64 = rand::random();
    eprintln!("crash test seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// Kills the sender at random moments after it stored its commands, then
/// lets a restarted sender finish: the idempotency layer alone keeps every
/// retry from reaching the handler twice.
#[test]
fn sender_killed_repeatedly_loses_nothing() {
    let mut rng = seeded_rng();
    let setup = Setup::new();
    let (receiver, address) = setup.receiver("127.0.0.1:0", &["--fail-after", "0.1"]);

    let mut sender = setup.sender(address, COMMANDS);
    sender.wait_for_line("enqueued ");
    for _kill in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..1_500)));
        sender.kill();
        sender = setup.sender(address, 0);
        sender.wait_for_line("enqueued ");
    }
    let last = summary(&sender.finish());

    assert_eq!(last["delivered"], COMMANDS, "{last}");
    assert_eq!(last["dead"], 0, "{last}");
    assert_eq!(last["pending"], 0, "{last}");
    let (runs, handled, distinct) = stats(address);
    assert_eq!(handled, COMMANDS, "every command is applied");
    assert_eq!(distinct, COMMANDS, "every command is applied once");
    assert_eq!(runs, COMMANDS, "no retry reached the handler twice");
    receiver.kill();
}

/// Runs the sender to completion while the receiver, in accept mode, is
/// killed three times and restarted on the same store. Returns the files
/// and the final stats once every command was applied.
fn receiver_crash_scenario() -> (Setup, (u64, u64, u64)) {
    let mut rng = seeded_rng();
    let setup = Setup::new();
    let flags = [
        "--mode",
        "accept",
        "--fail-after",
        "0.1",
        "--fail-before",
        "0.1",
    ];
    let (mut receiver, address) = setup.receiver("127.0.0.1:0", &flags);

    let mut sender = setup.sender(address, COMMANDS);
    sender.wait_for_line("enqueued ");
    for _kill in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1_500)));
        receiver.kill();
        receiver = setup.receiver(&address.to_string(), &flags).0;
    }
    let last = summary(&sender.finish());
    assert_eq!(last["delivered"], COMMANDS, "{last}");
    assert_eq!(last["dead"], 0, "{last}");

    // Every command was accepted; the workers may still be running some.
    let started = Instant::now();
    let stats = loop {
        let stats = stats(address);
        if stats.1 >= COMMANDS || started.elapsed() > DEADLINE {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    receiver.kill();
    (setup, stats)
}

/// Kills the receiver, in accept mode, while the sender drains: workers
/// may run a command again after a crash, and the inbox keeps its effect
/// single.
#[test]
fn receiver_killed_in_accept_mode_applies_once() {
    let (_setup, (runs, handled, distinct)) = receiver_crash_scenario();

    assert_eq!(handled, COMMANDS, "every command is applied once");
    assert_eq!(distinct, COMMANDS, "every command is applied");
    assert!(
        runs >= handled,
        "runs {runs} count every handler invocation"
    );
}

/// Checks that a receiver crash queues no command twice: a retried
/// request must replay its `202` rather than store a second command.
#[test]
fn receiver_killed_in_accept_mode_queues_once() {
    let (setup, _stats) = receiver_crash_scenario();

    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let counts = runtime.block_on(async {
        let store = SqliteStore::open(setup.path("receiver.db"))
            .await
            .expect("the receiver's store opens");
        store
            .counts("commands")
            .await
            .expect("the command queue is readable")
    });
    let queued = counts.pending + counts.in_flight + counts.succeeded + counts.failed + counts.dead;
    assert_eq!(
        queued, COMMANDS,
        "one command per Idempotency-Key: {counts:?}"
    );
}

/// Runs the demo, which exits with 0 only when no command was lost and
/// none was applied twice.
#[test]
fn demo_applies_every_command_once() {
    let process = Process::start("demo", &[]);
    let output = process.finish_with_output();

    assert!(output.contains("lost                 0"), "{output}");
    assert!(output.contains("applied twice        0"), "{output}");
}
