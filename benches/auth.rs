//! Measures signing and verifying against the raw cryptographic cost.
//!
//! For 0 B, 1 KiB and 64 KiB bodies it times, in one run:
//!
//! - `raw_baseline`: HMAC-SHA256 (keyed afresh) and SHA-256 over the body;
//! - `minimal_baseline`: SHA-256 of the body plus HMAC-SHA256 of the
//!   request's string to sign, the minimum work of any verifier;
//! - `sign`: one request through `SignLayer` to a service that drops it;
//! - `verify`: freshly signed requests through one `VerifyLayer` and its
//!   in-memory replay store, to a handler that responds at once;
//! - `verify_without_store`: the same with a store that keeps nothing.
//!
//! Run with `cargo bench --bench auth -- --measurement-time 3`. After
//! criterion's report the run prints one `name: value unit` line per
//! benchmark, the time per request over every timed call, warm-up
//! included (`verify_1KiB: 3.480 us`). It then times every kind in paired
//! rounds and prints the median ratios of verify to the baselines
//! (`ratio_verify_to_raw_baseline_1KiB: 1.39 x`).
//!
//! A full run (with `--bench`) also rewrites the "Signing and verifying"
//! section of `docs/BENCHMARKS.md` with criterion's medians and the paired
//! ratios. `QUICK=1` runs short warm-ups and measurements and 11 paired
//! rounds instead of 41, in well under a minute, and leaves
//! `docs/BENCHMARKS.md` as it is, because figures that short are not worth
//! recording.

mod common;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_courier::auth::{
    Key, KeyRing, SignLayer, SignatureHeader, SignedParts, VerifyLayer, body_digest,
};
use tower_courier::body::ResponseBody;
use tower_courier::clock::{Clock, SystemClock};
use tower_courier::store::{ReplayStore, StoreError};

use self::common::Recorder;

const SECRET: [u8; 32] = [42; 32];
const SIZES: [(usize, &str); 3] = [(0, "0B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
const GROUP: &str = "auth";
const TARGET: &str = "/orders/42?expand=lines";

/// Rounds of the paired ratios in a full run, and with `QUICK=1`.
const PAIRED_ROUNDS: usize = 41;
const QUICK_PAIRED_ROUNDS: usize = 11;

fn keys() -> KeyRing {
    KeyRing::single(Key::from_bytes("bench", &SECRET).expect("the bench secret is valid"))
}

/// Signs a POST with the public building blocks, outside the timed part.
fn signed_request(key: &Key, body: &Bytes, nonce: u64) -> Request<Full<Bytes>> {
    let timestamp = SystemClock.unix_seconds();
    let ts = timestamp.to_string();
    let nonce = format!("bench-nonce-{nonce:016}");
    let digest = body_digest(body);
    let parts = SignedParts {
        kid: key.kid(),
        ts: &ts,
        nonce: &nonce,
        method: "POST",
        path_and_query: TARGET,
        body_digest: &digest,
    };
    let signature = key.sign(parts.string_to_sign().as_bytes());
    let header = SignatureHeader::new(key.kid(), timestamp, &nonce, signature).unwrap();

    Request::post(TARGET)
        .header("x-authentication", header.to_string())
        .body(Full::new(body.clone()))
        .unwrap()
}

/// Computes the goal's baseline: HMAC-SHA256 (keyed afresh) and SHA-256,
/// each over the body bytes.
fn raw_baseline(body: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut mac = Hmac::<Sha256>::new_from_slice(&SECRET).unwrap();
    mac.update(body);
    (
        mac.finalize().into_bytes().into(),
        Sha256::digest(body).into(),
    )
}

/// Computes the minimum work of any verifier: the body digest in hex and
/// one keyed HMAC over a string to sign of the same shape as the layers build.
fn minimal_baseline(body: &[u8]) -> [u8; 32] {
    let digest = body_digest(body);
    let mut mac = Hmac::<Sha256>::new_from_slice(&SECRET).unwrap();
    for line in [
        "X-Authentication/v1",
        "bench",
        "1700000000",
        "bench-nonce-0000000000000000",
        "POST",
        TARGET,
    ] {
        mac.update(line.as_bytes());
        mac.update(b"\n");
    }
    mac.update(digest.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The replay store of a measured verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// The default `MemoryReplayStore`, new and empty for each sample.
    Memory,
    /// A store that records nothing, to show the layer's own cost apart
    /// from the store's. It offers no replay protection.
    Skipped,
}

/// A replay store that accepts every pair and keeps nothing.
#[derive(Debug)]
struct AcceptAll;

#[async_trait::async_trait]
impl ReplayStore for AcceptAll {
    async fn insert(&self, _kid: &str, _nonce: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// Builds a verifying service over a handler that responds at once.
fn new_verifier(
    keys: &KeyRing,
    replay: Replay,
) -> impl Service<Request<Full<Bytes>>, Response = Response<ResponseBody<()>>, Error = Infallible> {
    let mut layer = VerifyLayer::new(keys.clone());
    if replay == Replay::Skipped {
        layer = layer.replay_store(Arc::new(AcceptAll));
    }
    layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(()))
    }))
}

/// Signs `count` requests with consecutive nonces, outside the timed part.
fn signed_requests(
    key: &Key,
    body: &Bytes,
    nonce: &mut u64,
    count: u64,
) -> Vec<Request<Full<Bytes>>> {
    (0..count)
        .map(|_| {
            *nonce += 1;
            signed_request(key, body, *nonce)
        })
        .collect()
}

/// Verifies `requests` in turn through one long-lived service, as a server
/// does, and returns the time taken. Responses and the service are dropped
/// after the clock stops.
fn time_verify(keys: &KeyRing, replay: Replay, requests: Vec<Request<Full<Bytes>>>) -> Duration {
    let mut verifier = new_verifier(keys, replay);
    let mut responses = Vec::with_capacity(requests.len());

    let start = Instant::now();
    for request in requests {
        run_now(ServiceExt::<Request<Full<Bytes>>>::ready(&mut verifier)).unwrap();
        responses.push(run_now(verifier.call(request)).unwrap());
    }
    let elapsed = start.elapsed();

    assert!(responses.iter().all(|response| response.status() == 200));
    elapsed
}

/// Ratios of verify to the baselines, each the median over rounds.
#[derive(Debug, Clone, Copy)]
struct PairedRatios {
    verify_to_raw: f64,
    verify_to_minimal: f64,
    without_store_to_minimal: f64,
}

/// Times 400 operations of each kind in turn, in `rounds` rounds, so that
/// load from other processes on the machine hits all of them alike, and
/// returns the median of each per-round ratio.
fn paired_ratios(size: usize, rounds: usize) -> PairedRatios {
    const OPS: u64 = 400;
    let keys = keys();
    let key = keys.signing_key().clone();
    let body = Bytes::from(vec![0x5a; size]);
    let mut nonce = 1_u64 << 40;
    let mut ratios = [Vec::new(), Vec::new(), Vec::new()];

    for _ in 0..rounds {
        let raw = time_ops(OPS, || raw_baseline(black_box(&body))).as_secs_f64();
        let minimal = time_ops(OPS, || minimal_baseline(black_box(&body))).as_secs_f64();
        let requests = signed_requests(&key, &body, &mut nonce, OPS);
        let verify = time_verify(&keys, Replay::Memory, requests).as_secs_f64();
        let requests = signed_requests(&key, &body, &mut nonce, OPS);
        let without_store = time_verify(&keys, Replay::Skipped, requests).as_secs_f64();

        ratios[0].push(verify / raw);
        ratios[1].push(verify / minimal);
        ratios[2].push(without_store / minimal);
    }

    let [to_raw, to_minimal, without_store] = ratios.map(median);
    PairedRatios {
        verify_to_raw: to_raw,
        verify_to_minimal: to_minimal,
        without_store_to_minimal: without_store,
    }
}

/// Runs `operation` `count` times and returns the time taken. Each result
/// goes through `black_box`, so the work is not optimised away.
fn time_ops<T>(count: u64, mut operation: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..count {
        black_box(operation());
    }
    start.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Benchmarks every kind of operation on every body size.
fn bench_auth(c: &mut Criterion, recorder: &Recorder) {
    let keys = keys();
    let key = keys.signing_key().clone();
    let mut group = c.benchmark_group(GROUP);

    for (size, label) in SIZES {
        let body = Bytes::from(vec![0x5a; size]);
        group.throughput(Throughput::Bytes(size as u64));
        let mut bench = Bench {
            group: &mut group,
            recorder,
            label,
        };

        bench.run("raw_baseline", |iterations| {
            time_ops(iterations, || raw_baseline(black_box(&body)))
        });
        bench.run("minimal_baseline", |iterations| {
            time_ops(iterations, || minimal_baseline(black_box(&body)))
        });

        let signer = SignLayer::new(keys.clone()).layer(service_fn(
            |request: Request<Full<Bytes>>| async move {
                Ok::<_, Infallible>(black_box(request).into_body())
            },
        ));
        bench.run("sign", |iterations| {
            time_ops(iterations, || {
                let request = Request::post(TARGET).body(Full::new(body.clone())).unwrap();
                run_now(signer.clone().oneshot(request)).unwrap()
            })
        });

        let mut nonce = 0_u64;
        bench.run("verify", |iterations| {
            let requests = signed_requests(&key, &body, &mut nonce, iterations);
            time_verify(&keys, Replay::Memory, requests)
        });
        bench.run("verify_without_store", |iterations| {
            let requests = signed_requests(&key, &body, &mut nonce, iterations);
            time_verify(&keys, Replay::Skipped, requests)
        });
    }
    group.finish();
}

/// The benchmarks of one body size.
struct Bench<'g, 'c> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    recorder: &'g Recorder,
    label: &'static str,
}

impl Bench<'_, '_> {
    /// Benchmarks `function` as `auth/<function>/<label>` and records it
    /// as the line `<function>_<label>`. `time` runs the given number of
    /// operations and returns the time they took.
    fn run(&mut self, function: &str, mut time: impl FnMut(u64) -> Duration) {
        let name = format!("{function}_{}", self.label);
        let id = BenchmarkId::new(function, self.label);
        self.group.bench_function(id, |b| {
            b.iter_custom(|iterations| {
                let elapsed = time(iterations);
                self.recorder.add(&name, "us", iterations, elapsed);
                elapsed
            });
        });
    }
}

/// Polls a future that completes without waiting, as every future here
/// does: the bodies are in memory and the replay store is in process.
fn run_now<F: std::future::Future>(future: F) -> F::Output {
    future
        .now_or_never()
        .expect("the future completes without waiting")
}

fn main() {
    let quick = common::quick();
    let mut criterion = Criterion::default();
    if quick {
        criterion = common::configure_quick(criterion);
    }
    let mut criterion = criterion.configure_from_args();
    let recorder = Recorder::default();
    bench_auth(&mut criterion, &recorder);
    criterion.final_summary();
    println!();
    recorder.print();

    // Only a real run (`cargo bench`) measures; `cargo test` runs each
    // benchmark once in test mode, which is too short for ratios.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let rounds = if quick {
        QUICK_PAIRED_ROUNDS
    } else {
        PAIRED_ROUNDS
    };
    let paired = SIZES.map(|(size, label)| (label, paired_ratios(size, rounds)));
    print_ratios(&paired);

    if quick {
        println!("docs/BENCHMARKS.md not updated, because a QUICK=1 run is too short to record");
        return;
    }
    match write_report(&paired) {
        Ok(path) => println!("wrote {}", path.display()),
        Err(error) => eprintln!("did not update docs/BENCHMARKS.md: {error}"),
    }
}

/// Prints the paired ratios as `name: value x` lines.
fn print_ratios(paired: &[(&str, PairedRatios)]) {
    for (label, ratios) in paired {
        let lines = [
            ("verify_to_raw_baseline", ratios.verify_to_raw),
            ("verify_to_minimal_baseline", ratios.verify_to_minimal),
            (
                "verify_without_store_to_minimal_baseline",
                ratios.without_store_to_minimal,
            ),
        ];
        for (name, ratio) in lines {
            println!("ratio_{name}_{label}: {ratio:.2} x");
        }
    }
}

/// Returns the directory criterion writes to, by its own order of preference.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target.join("criterion")
}

/// Returns the median time in nanoseconds of one benchmark of this run.
fn median_ns(function: &str, label: &str) -> Result<f64, String> {
    let path = criterion_dir()
        .join(GROUP)
        .join(function)
        .join(label)
        .join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let estimates: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| error.to_string())?;
    estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{}: no median", path.display()))
}

fn format_time(ns: f64) -> String {
    if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Rewrites this bench's section of `docs/BENCHMARKS.md` with criterion's
/// medians of this run and the paired ratios.
fn write_report(paired: &[(&str, PairedRatios)]) -> Result<PathBuf, String> {
    let mut section = String::from(SECTION_INTRO);
    for (_, label) in SIZES {
        let _ = writeln!(
            section,
            "| {label} | {} | {} | {} | {} | {} |",
            format_time(median_ns("raw_baseline", label)?),
            format_time(median_ns("minimal_baseline", label)?),
            format_time(median_ns("sign", label)?),
            format_time(median_ns("verify", label)?),
            format_time(median_ns("verify_without_store", label)?),
        );
    }

    section.push_str(PAIRED_INTRO);
    for (label, ratios) in paired {
        let _ = writeln!(
            section,
            "| {label} | {:.2}x | {:.2}x | {:.2}x |",
            ratios.verify_to_raw, ratios.verify_to_minimal, ratios.without_store_to_minimal
        );
    }

    let goal = paired[1].1.verify_to_raw;
    let minimal = paired[1].1.verify_to_minimal;
    let verdict = |ratio: f64| if ratio <= 1.5 { "within" } else { "above" };
    let _ = writeln!(
        section,
        "\nVerify of 1 KiB: {goal:.2}x the raw baseline (HMAC-SHA256 plus SHA-256\n\
         over the body), {} the 1.5x goal, and {minimal:.2}x the minimal\n\
         baseline, {} 1.5x.",
        verdict(goal),
        verdict(minimal)
    );

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_else(|_| benchmarks_header());
    std::fs::write(&path, replace_section(&current, &section))
        .map_err(|error| error.to_string())?;
    Ok(path)
}

const SECTION_INTRO: &str = "## Signing and verifying

`cargo bench --bench auth -- --measurement-time 3` (`benches/auth.rs`).
The goal is a verify of a 1 KiB body within 1.5x of the raw baseline.

- raw baseline: HMAC-SHA256 (keyed afresh) and SHA-256, each over the body
  bytes;
- minimal baseline: SHA-256 of the body in hex plus HMAC-SHA256 of a string
  to sign of the usual shape, the minimum work of any verifier;
- sign: one request through `SignLayer` to a service that drops it;
- verify: freshly signed requests through one `VerifyLayer` and its
  in-memory replay store per sample, as in a server, to a handler that
  responds at once;
- verify without store: the same with a replay store that keeps nothing,
  which shows the layer's own cost apart from the store's.

Time per request, criterion's median:

| body | raw baseline | minimal baseline | sign | verify | verify without store |
|---|---|---|---|---|---|
";

const PAIRED_INTRO: &str = "
Criterion runs one benchmark after another, so load from other processes
moves the ratio of two of its figures. The ratios below come from one paired
run instead: 41 rounds, each timing 400 operations of every kind in turn,
and the median of the per-round ratios.

| body | verify / raw baseline | verify / minimal baseline | verify without store / minimal baseline |
|---|---|---|---|
";

fn benchmarks_header() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |cores| cores.get());
    format!(
        "# Benchmarks\n\n\
         Measured on a shared {cores}-core machine ({cpu}), Linux, release profile.\n\
         Other jobs ran on the same cores, so compare figures of one run with each\n\
         other, not across runs. Each section names its command.\n\n"
    )
}

/// Puts `section` between this bench's markers, replacing an earlier one.
fn replace_section(document: &str, section: &str) -> String {
    const START: &str = "<!-- auth-bench:start -->";
    const END: &str = "<!-- auth-bench:end -->";
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let block = format!("{START}\n{section}\nRecorded {date}.\n{END}\n");

    match (document.find(START), document.find(END)) {
        (Some(start), Some(end)) if start < end => {
            let after = &document[end + END.len()..];
            format!(
                "{}{block}{}",
                &document[..start],
                after.trim_start_matches('\n')
            )
        }
        _ => format!("{}\n\n{block}", document.trim_end()),
    }
}
