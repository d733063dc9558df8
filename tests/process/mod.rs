//! Runs the `receiver` and `sender` example binaries as processes, for
//! the tests that kill them or run several of them.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for an example to finish before it fails.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// Builds the example binaries once per test process and returns the
/// directory that contains them.
pub fn examples_dir() -> &'static Path {
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
pub struct Process {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    pub fn start(name: &str, args: &[String]) -> Self {
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
    pub fn wait_for_line(&mut self, prefix: &str) -> String {
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
    pub fn kill(mut self) {
        self.child.kill().expect("the process can be killed");
        self.child.wait().expect("the killed process is reaped");
    }

    /// Waits for a successful exit and returns the last line of stdout.
    pub fn finish(self) -> String {
        let output = self.finish_with_output();
        output.lines().last().unwrap_or_default().to_owned()
    }

    /// Waits for a successful exit and returns the rest of stdout.
    pub fn finish_with_output(mut self) -> String {
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
        assert!(status.success(), "the process failed: {status}\n{rest}");
        rest
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A test that fails must not leave its processes behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fetches the receiver's `GET /stats` as (runs, handled, distinct).
pub fn stats(address: SocketAddr) -> (u64, u64, u64) {
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

pub fn summary(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|error| panic!("invalid summary {line:?}: {error}"))
}
