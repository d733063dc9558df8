//! Clocks that the layers and stores read the time from.
//!
//! Everything time-dependent in the crate (signature windows, leases,
//! backoff schedules, retention) reads [`Clock::now`] instead of
//! [`SystemTime::now`], so that tests can move time with a [`ManualClock`].
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use tower_courier::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
//! clock.advance(Duration::from_secs(301));
//! assert_eq!(clock.unix_seconds(), 1_700_000_301);
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Returns the current time.
    fn now(&self) -> SystemTime;

    /// Returns the current time in whole seconds since the Unix epoch.
    ///
    /// A time before the epoch reads as 0.
    fn unix_seconds(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    }
}

/// A shared, type-erased clock.
pub type SharedClock = Arc<dyn Clock>;

/// Reads the operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Returns the system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that only moves when told to, for tests.
///
/// Clones share one time, so a test can keep a handle and move the time
/// that a layer or store sees.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// Creates a clock that reads `start` until it is moved.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now += by;
    }

    /// Sets the clock to `to`, which may be earlier than the current time.
    pub fn set(&self, to: SystemTime) {
        *self.lock() = to;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SystemTime> {
        // A panic while holding this lock cannot leave the time half-written,
        // so a poisoned lock is still safe to read.
        self.now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.lock()
    }
}

/// The direction in which [`unix_millis`] rounds a time between two
/// whole milliseconds.
pub(crate) enum Rounding {
    Up,
    Down,
}

/// Returns whole milliseconds since the Unix epoch, negative for an
/// earlier time, so that a clock set before 1970 still orders times.
pub(crate) fn unix_millis(time: SystemTime, rounding: Rounding) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => whole_millis(after, rounding),
        Err(before) => {
            // Rounding a negative time up means rounding its magnitude down.
            let magnitude = match rounding {
                Rounding::Up => Rounding::Down,
                Rounding::Down => Rounding::Up,
            };
            -whole_millis(before.duration(), magnitude)
        }
    }
}

/// Returns `duration` in whole milliseconds, saturating at `i64::MAX`.
fn whole_millis(duration: Duration, rounding: Rounding) -> i64 {
    let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    match rounding {
        Rounding::Up if !duration.subsec_nanos().is_multiple_of(1_000_000) => {
            millis.saturating_add(1)
        }
        _ => millis,
    }
}
