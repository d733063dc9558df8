//! Crash tests of the reference examples: the sender and the receiver are
//! killed with SIGKILL at random moments, and at the end no command is
//! lost and none is applied twice.
//!
//! The tests run the `receiver` and `sender` example binaries as
//! processes, built by `cargo build --examples` on first use with the
//! features this test was built with. Each test prints its random seed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use tower_courier::store::MessageQueue;
use tower_courier::store::sqlite::SqliteStore;

/// A key file with one key, `crash`, whose secret is 32 bytes of `0x2a`.
const KEY_FILE: &str = "# crash test key\ncrash KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=\n";

/// Commands per test run: 2000, the count of the documented crash scenario.
const COMMANDS: u64 = 2000;

/// How long a test waits for an example to finish before it fails.
const DEADLINE: Duration = Duration::from_secs(180);

/// Builds the example binaries once per test process and returns the
/// directory that contains them.
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command.args([
            "build",
            "--quiet",
            "--example",
            "receiver",
            "--example",
            "sender",
        ]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let features = enabled_features();
        if !features.is_empty() {
            command.args(["--features", &features.join(",")]);
        }
        let status = command.status().expect("cargo runs");
        assert!(
            status.success(),
            "cargo build of the examples failed: {status}"
        );

        // The test binary is target/<profile>/deps/crash-<hash>.
        let exe = std::env::current_exe().expect("the test knows its own path");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("deps has a profile dir");
        profile.join("examples")
    })
}

/// Returns the non-default features this test was compiled with, so the
/// examples are built with the same ones and reuse the compiled crate.
fn enabled_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "postgres") {
        features.push("postgres");
    }
    if cfg!(feature = "redis") {
        features.push("redis");
    }
    features
}

/// A running example process whose stdout is read line by line.
struct Process {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    fn start(name: &str, args: &[String]) -> Self {
        let mut child = Command::new(examples_dir().join(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start example {name}: {error}"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        Self { child, stdout }
    }

    /// Reads stdout until a line starts with `prefix`, and returns it.
    fn wait_for_line(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let read = self
                .stdout
                .read_line(&mut line)
                .expect("stdout is readable");
            assert!(read > 0, "the process exited before printing {prefix:?}");
            if line.starts_with(prefix) {
                return line.trim_end().to_owned();
            }
        }
    }

    /// Sends SIGKILL (what `Child::kill` sends on Unix) and reaps it.
    fn kill(mut self) {
        self.child.kill().expect("the process can be killed");
        self.child.wait().expect("the killed process is reaped");
    }

    /// Waits for a successful exit and returns the last line of stdout.
    fn finish(mut self) -> String {
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .expect("stdout is readable");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self
                .child
                .try_wait()
                .expect("the process can be waited for")
            {
                break status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the process did not exit in time"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "the process failed: {status}");
        rest.lines().last().unwrap_or_default().to_owned()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A test that fails must not leave its processes behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// Fetches the receiver's `GET /stats` as (runs, handled, distinct).
fn stats(address: SocketAddr) -> (u64, u64, u64) {
    let mut stream = TcpStream::connect(address).expect("the receiver accepts connections");
    stream
        .write_all(b"GET /stats HTTP/1.1\r\nHost: receiver\r\nConnection: close\r\n\r\n")
        .expect("the request is sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("the response is read");

    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a response has a head and a body");
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET /stats failed: {head}"
    );
    let stats: Value = serde_json::from_str(body).expect("the stats are JSON");
    let field = |name: &str| {
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("stats lack {name}: {body}"))
    };
    (field("runs"), field("handled"), field("distinct"))
}

fn summary(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|error| panic!("invalid summary {line:?}: {error}"))
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
#[ignore = "known gap: a receiver killed after the accept layer stored a command \
            but before the idempotency layer stored the 202 queues it again on retry"]
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
