use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// A limit on retries relative to first attempts, shared by every clone of
/// a [`RetryLayer`](super::RetryLayer), so that a struggling service is not
/// flooded with retries.
///
/// Each call deposits into the budget and each retry withdraws from it.
/// Over a sliding window, retries may make up at most a given share of
/// calls, plus a minimum number per second so that a quiet client can
/// still retry.
///
/// Default: a 10 s window, 10 retries per second always allowed, and
/// retries up to 20 % of calls above that.
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<TpsBudget>,
    settings: (Duration, u32, f32),
}

impl RetryBudget {
    /// Creates a budget over a sliding `window`, allowing `min_per_second`
    /// retries per second at any time plus `retry_ratio` retries per call.
    ///
    /// Values outside the accepted ranges are clamped into them: `window`
    /// to 1 s ..= 60 s, `min_per_second` below `i32::MAX`, `retry_ratio`
    /// to 0.0 ..= 1000.0.
    pub fn new(window: Duration, min_per_second: u32, retry_ratio: f32) -> Self {
        // TpsBudget panics outside these ranges, so they are clamped here.
        let min_per_second = min_per_second.min(i32::MAX as u32 - 1);
        let window = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let retry_ratio = if retry_ratio.is_nan() {
            0.0
        } else {
            retry_ratio.clamp(0.0, 1000.0)
        };

        Self {
            inner: Arc::new(TpsBudget::new(window, min_per_second, retry_ratio)),
            settings: (window, min_per_second, retry_ratio),
        }
    }

    pub(crate) fn deposit(&self) {
        self.inner.deposit();
    }

    pub(crate) fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (window, min_per_second, retry_ratio) = self.settings;
        f.debug_struct("RetryBudget")
            .field("window", &window)
            .field("min_per_second", &min_per_second)
            .field("retry_ratio", &retry_ratio)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_runs_out_without_deposits() {
        let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.0);

        assert!(!budget.withdraw());
    }

    #[test]
    fn deposits_allow_retries() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0);
        for _ in 0..10 {
            budget.deposit();
        }

        assert!(budget.withdraw());
    }
}
