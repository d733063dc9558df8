//! Measures signing and verifying against the raw cryptographic cost.
//!
//! For 0 B, 1 KiB and 64 KiB bodies it times three things in one run:
//!
//! - `baseline`: SHA-256 of the body plus HMAC-SHA256 (keyed afresh) of
//!   the request's string to sign, the least work any verifier must do;
//! - `sign`: one request through `SignLayer` to a service that drops it;
//! - `verify`: one freshly signed request through `VerifyLayer`, with a
//!   new in-memory replay store, to a handler that answers at once.
//!
//! Run with `cargo bench --bench auth -- --measurement-time 3`. A full run
//! (with `--bench`) rewrites the "Signing and verifying" section of
//! `docs/BENCHMARKS.md` with the means and the verify/baseline ratios.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response};
use http_body_util::Full;
use sha2::Sha256;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_courier::auth::{
    Key, KeyRing, SignLayer, SignatureHeader, SignedParts, VerifyLayer, body_digest,
};
use tower_courier::clock::{Clock, SystemClock};

const SECRET: [u8; 32] = [42; 32];
const SIZES: [(usize, &str); 3] = [(0, "0B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
const GROUP: &str = "auth";
const TARGET: &str = "/orders/42?expand=lines";

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

/// The raw cost: the body digest in hex and one keyed HMAC over a string
/// to sign of the same shape as the layers build.
fn baseline(body: &[u8]) -> [u8; 32] {
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

fn bench_auth(c: &mut Criterion) {
    let keys = keys();
    let key = keys.signing_key().clone();
    let mut group = c.benchmark_group(GROUP);

    for (size, label) in SIZES {
        let body = Bytes::from(vec![0x5a; size]);
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_with_input(BenchmarkId::new("baseline", label), &body, |b, body| {
            b.iter(|| baseline(black_box(body)));
        });

        let signer = SignLayer::new(keys.clone()).layer(service_fn(
            |request: Request<Full<Bytes>>| async move {
                Ok::<_, Infallible>(black_box(request).into_body())
            },
        ));
        group.bench_with_input(BenchmarkId::new("sign", label), &body, |b, body| {
            b.iter(|| {
                let request = Request::post(TARGET).body(Full::new(body.clone())).unwrap();
                run_now(signer.clone().oneshot(request)).unwrap()
            });
        });

        let mut nonce = 0_u64;
        group.bench_with_input(BenchmarkId::new("verify", label), &body, |b, body| {
            b.iter_batched(
                || {
                    nonce += 1;
                    let verifier = VerifyLayer::new(keys.clone()).layer(service_fn(
                        |_: Request<Full<Bytes>>| async { Ok::<_, Infallible>(Response::new(())) },
                    ));
                    (verifier, signed_request(&key, body, nonce))
                },
                |(mut verifier, request)| {
                    run_now(ServiceExt::<Request<Full<Bytes>>>::ready(&mut verifier)).unwrap();
                    let response = run_now(verifier.call(request)).unwrap();
                    assert_eq!(response.status(), 200);
                    // Returned, so that criterion drops the layer and its
                    // replay store outside the timed part.
                    (verifier, response)
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// Polls a future that completes without waiting, as every future here
/// does: the bodies are in memory and the replay store is in process.
fn run_now<F: std::future::Future>(future: F) -> F::Output {
    future
        .now_or_never()
        .expect("the future completes without waiting")
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_auth(&mut criterion);
    criterion.final_summary();

    // Only a real run (`cargo bench`) measures; `cargo test` runs each
    // benchmark once in test mode, which records nothing.
    if std::env::args().any(|arg| arg == "--bench") {
        match write_report() {
            Ok(path) => println!("wrote {}", path.display()),
            Err(error) => eprintln!("did not update docs/BENCHMARKS.md: {error}"),
        }
    }
}

/// The directory criterion writes to, by its own order of preference.
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

/// Returns the mean time in nanoseconds of one benchmark of this run.
fn mean_ns(function: &str, label: &str) -> Result<f64, String> {
    let path = criterion_dir()
        .join(GROUP)
        .join(function)
        .join(label)
        .join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let estimates: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| error.to_string())?;
    estimates["mean"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{}: no mean", path.display()))
}

fn format_time(ns: f64) -> String {
    if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn write_report() -> Result<PathBuf, String> {
    let mut section = String::from(
        "## Signing and verifying\n\n\
         `cargo bench --bench auth -- --measurement-time 3` (`benches/auth.rs`). Mean time\n\
         per request. The baseline is SHA-256 of the body plus HMAC-SHA256, keyed\n\
         afresh, of a string to sign of the same shape: the least work a verifier\n\
         must do. The goal is a verify within 1.5x of the baseline for a 1 KiB body.\n\n\
         | body | baseline | sign | verify | verify / baseline |\n\
         |---|---|---|---|---|\n",
    );
    for (_, label) in SIZES {
        let baseline = mean_ns("baseline", label)?;
        let sign = mean_ns("sign", label)?;
        let verify = mean_ns("verify", label)?;
        let _ = writeln!(
            section,
            "| {label} | {} | {} | {} | {:.2}x |",
            format_time(baseline),
            format_time(sign),
            format_time(verify),
            verify / baseline
        );
    }
    let ratio = mean_ns("verify", "1KiB")? / mean_ns("baseline", "1KiB")?;
    let verdict = if ratio <= 1.5 { "meets" } else { "misses" };
    let _ = writeln!(
        section,
        "\nVerify of 1 KiB: {ratio:.2}x the baseline, which {verdict} the 1.5x goal."
    );

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_else(|_| benchmarks_header());
    std::fs::write(&path, replace_section(&current, &section))
        .map_err(|error| error.to_string())?;
    Ok(path)
}

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
        _ => format!("{}\n{block}", document.trim_end()),
    }
}
