//! Parts shared by the criterion benchmarks: the `QUICK=1` switch, the
//! criterion settings of a quick run, and the `name: value unit` summary
//! printed after criterion's report.
//!
//! Each bench target compiles its own copy of this module with
//! `mod common;` (or a `#[path]` to this file).

use std::sync::Mutex;
use std::time::Duration;

use criterion::Criterion;

/// Returns whether the environment variable `QUICK` is `1`, which requests
/// a run of well under a minute.
pub fn quick() -> bool {
    std::env::var("QUICK").is_ok_and(|value| value == "1")
}

/// Sets the timing of a quick run: 200 ms of warm-up and 500 ms of
/// measurement per benchmark. Command-line options such as
/// `--measurement-time` still win when applied after this.
///
/// A quick run also draws no plots and resamples 1,000 times instead of
/// 100,000: those took about a second per benchmark, longer than the
/// measurement itself.
pub fn configure_quick(criterion: Criterion) -> Criterion {
    criterion
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500))
        .nresamples(1_000)
        .without_plots()
}

/// Sets the timing of a store benchmark: 10 samples, and with `QUICK=1`
/// the quick timing, otherwise 1 s of warm-up and `measurement`.
#[allow(dead_code, reason = "only the store benches call it")]
pub fn configure_samples(criterion: Criterion, measurement: Duration) -> Criterion {
    let criterion = criterion.sample_size(10);
    if quick() {
        return configure_quick(criterion);
    }
    criterion
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement)
}

/// The `name: value unit` summary: operations and time of every timed
/// call, per benchmark, in the order they first ran.
///
/// Every call counts, warm-up included, so a line is the total operations
/// over the total time, not criterion's median.
#[derive(Default)]
pub struct Recorder {
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    name: String,
    /// `ns` or `us` for a time per operation, anything else (such as
    /// `msg/s`) for operations per second.
    unit: &'static str,
    operations: u64,
    elapsed: Duration,
}

impl Entry {
    fn value(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        let operations = self.operations as f64;
        match self.unit {
            "ns" => seconds * 1e9 / operations,
            "us" => seconds * 1e6 / operations,
            _ => operations / seconds,
        }
    }
}

impl Recorder {
    /// Adds `operations` done in `elapsed` to the line `name`. The first
    /// call for a name fixes its unit.
    pub fn add(&self, name: &str, unit: &'static str, operations: u64, elapsed: Duration) {
        let mut entries = self.entries.lock().unwrap();
        match entries.iter_mut().find(|entry| entry.name == name) {
            Some(entry) => {
                entry.operations += operations;
                entry.elapsed += elapsed;
            }
            None => entries.push(Entry {
                name: name.to_owned(),
                unit,
                operations,
                elapsed,
            }),
        }
    }

    /// Returns the value that [`Recorder::print`] prints for `name`, or
    /// `None` when that benchmark did not run (a filter on the command line
    /// can skip it).
    #[allow(dead_code, reason = "only the benches that compare two lines call it")]
    pub fn value(&self, name: &str) -> Option<f64> {
        let entries = self.entries.lock().unwrap();
        entries
            .iter()
            .find(|entry| entry.name == name)
            .map(Entry::value)
    }

    /// Prints one line per benchmark: a time per operation for `ns` and
    /// `us`, a rate for the other units.
    pub fn print(&self) {
        for entry in self.entries.lock().unwrap().iter() {
            let (name, unit, value) = (&entry.name, entry.unit, entry.value());
            match unit {
                "ns" => println!("{name}: {value:.1} ns"),
                "us" => println!("{name}: {value:.3} us"),
                _ => println!("{name}: {value:.0} {unit}"),
            }
        }
    }
}
