use std::time::Duration;

/// Exponential backoff with full jitter, a cap, a maximum number of
/// attempts and a maximum age.
///
/// The delay after failed attempt `n` (counting from 1) is drawn uniformly
/// from `[min_delay, ceiling(n)]`, where
/// `ceiling(n) = min(initial_delay x factor^(n-1), max_delay)`. All
/// arithmetic saturates, so every attempt number up to `u32::MAX` gives a
/// delay between `min_delay` and `max_delay`, never zero.
///
/// # Defaults
///
/// | setting | default |
/// |---|---|
/// | [`initial_delay`](Self::initial_delay) | 1 s |
/// | [`factor`](Self::factor) | 2 |
/// | [`max_delay`](Self::max_delay) | 10 min |
/// | [`min_delay`](Self::min_delay) | 100 ms |
/// | [`max_attempts`](Self::max_attempts) | 300 |
/// | [`max_age`](Self::max_age) | 24 h |
///
/// The ceilings run 1 s, 2 s, 4 s, ... 512 s over the first ten retries
/// (about 17 minutes in total) and stay at 10 minutes after that. With full
/// jitter a delay averages half its ceiling, so 300 attempts take about 24
/// hours on average: a message keeps being retried through an outage of
/// hours, and the 24-hour age limit usually ends it first.
///
/// ```
/// use std::time::Duration;
/// use tower_courier::retry::Backoff;
///
/// let backoff = Backoff::default();
/// assert_eq!(backoff.ceiling(1), Duration::from_secs(1));
/// assert_eq!(backoff.ceiling(4), Duration::from_secs(8));
/// assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(600));
///
/// let delay = backoff.delay(3);
/// assert!(delay >= Duration::from_millis(100) && delay <= Duration::from_secs(4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial_delay: Duration,
    factor: u32,
    max_delay: Duration,
    min_delay: Duration,
    max_attempts: u32,
    max_age: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            factor: 2,
            max_delay: Duration::from_secs(600),
            min_delay: Duration::from_millis(100),
            max_attempts: 300,
            max_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl Backoff {
    /// Creates a backoff with the defaults listed on [`Backoff`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates the backoff the inline [`Retry`](super::Retry) layer uses by
    /// default, for callers that wait for the response: first delay 100 ms,
    /// factor 2, at most 2 s between attempts, a 10 ms floor, 3 attempts
    /// and no age limit beyond the layer's own deadline.
    pub fn inline() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            factor: 2,
            max_delay: Duration::from_secs(2),
            min_delay: Duration::from_millis(10),
            max_attempts: 3,
            max_age: Duration::MAX,
        }
    }

    /// Sets the ceiling of the first delay. Default: 1 s.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the growth factor of the ceiling per attempt; `0` is read as
    /// `1` (a constant ceiling). Default: 2.
    pub fn factor(mut self, factor: u32) -> Self {
        self.factor = factor.max(1);
        self
    }

    /// Sets the largest delay, which also caps `Retry-After`. Default:
    /// 10 min.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the smallest delay, so that no retry follows a failure at once.
    /// Default: 100 ms. A floor above `max_delay` is lowered to it.
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// Sets how many attempts a message gets in total, the first included;
    /// `0` is read as `1`. Default: 300.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets how long after its creation a message may still be retried.
    /// Default: 24 h.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Returns the configured maximum number of attempts.
    pub fn attempts_limit(&self) -> u32 {
        self.max_attempts
    }

    /// Returns the configured maximum delay.
    pub fn delay_limit(&self) -> Duration {
        self.max_delay
    }

    /// Returns the configured maximum age.
    pub fn age_limit(&self) -> Duration {
        self.max_age
    }

    /// Returns the upper end of the delay after failed attempt `attempt`
    /// (counting from 1; `0` is read as `1`), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        let grown = self
            .factor
            .checked_pow(exponent)
            .and_then(|multiplier| self.initial_delay.checked_mul(multiplier))
            .unwrap_or(Duration::MAX);

        grown.min(self.max_delay).max(self.floor())
    }

    /// Draws the delay after failed attempt `attempt`: uniform in
    /// `[min_delay, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let floor = self.floor();
        let ceiling = self.ceiling(attempt);
        jitter(floor, ceiling)
    }

    /// Draws the delay after failed attempt `attempt` when the receiver sent
    /// `Retry-After`: the larger of the drawn delay and `retry_after`,
    /// capped at `max_delay`.
    pub fn delay_after(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let drawn = self.delay(attempt);
        match retry_after {
            Some(requested) => drawn.max(requested).min(self.max_delay.max(self.floor())),
            None => drawn,
        }
    }

    /// Returns `true` if a message that failed `attempts` times and was
    /// created `age` ago must not be tried again.
    pub fn is_exhausted(&self, attempts: u32, age: Duration) -> bool {
        attempts >= self.max_attempts || age >= self.max_age
    }

    fn floor(&self) -> Duration {
        // A zero floor would allow a zero delay, which the type promises
        // never to return, so one millisecond is the least floor.
        self.min_delay
            .min(self.max_delay)
            .max(Duration::from_millis(1))
    }
}

fn jitter(floor: Duration, ceiling: Duration) -> Duration {
    if ceiling <= floor {
        return floor;
    }

    // Nanoseconds of any delay up to `Duration::MAX` fit in a u128; the
    // drawn value is at most `ceiling`, so it converts back without loss.
    let low = floor.as_nanos();
    let high = ceiling.as_nanos();
    let drawn = rand::random_range(low..=high);
    let seconds = u64::try_from(drawn / 1_000_000_000).unwrap_or(u64::MAX);
    let nanos = (drawn % 1_000_000_000) as u32;
    Duration::new(seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_until_cap() {
        let backoff = Backoff::default();

        assert_eq!(backoff.ceiling(0), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(2), Duration::from_secs(2));
        assert_eq!(backoff.ceiling(10), Duration::from_secs(512));
        assert_eq!(backoff.ceiling(11), Duration::from_secs(600));
        assert_eq!(backoff.ceiling(64), Duration::from_secs(600));
    }

    #[test]
    fn retry_after_is_capped() {
        let backoff = Backoff::default().max_delay(Duration::from_secs(30));
        let delay = backoff.delay_after(1, Some(Duration::from_secs(3600)));

        assert_eq!(delay, Duration::from_secs(30));
    }

    #[test]
    fn retry_after_raises_delay() {
        let backoff = Backoff::default();
        let delay = backoff.delay_after(1, Some(Duration::from_secs(3)));

        assert_eq!(delay, Duration::from_secs(3));
    }

    #[test]
    fn exhausted_by_attempts_or_age() {
        let backoff = Backoff::default()
            .max_attempts(3)
            .max_age(Duration::from_secs(60));

        assert!(!backoff.is_exhausted(2, Duration::from_secs(59)));
        assert!(backoff.is_exhausted(3, Duration::ZERO));
        assert!(backoff.is_exhausted(1, Duration::from_secs(60)));
    }

    #[test]
    fn zero_settings_still_give_positive_delay() {
        let backoff = Backoff::default()
            .initial_delay(Duration::ZERO)
            .min_delay(Duration::ZERO)
            .max_delay(Duration::ZERO);

        assert!(backoff.delay(1) > Duration::ZERO);
    }

    proptest::proptest! {
        #[test]
        fn delay_bounded_at_any_attempt(
            attempt in proptest::prelude::any::<u32>(),
            initial_ms in 0u64..10_000_000,
            factor in proptest::prelude::any::<u32>(),
            max_ms in 0u64..100_000_000,
            min_ms in 0u64..1_000,
        ) {
            let backoff = Backoff::default()
                .initial_delay(Duration::from_millis(initial_ms))
                .factor(factor)
                .max_delay(Duration::from_millis(max_ms))
                .min_delay(Duration::from_millis(min_ms));
            let delay = backoff.delay(attempt);
            let upper = Duration::from_millis(max_ms).max(Duration::from_millis(1));

            proptest::prop_assert!(delay > Duration::ZERO);
            proptest::prop_assert!(delay <= upper);
            proptest::prop_assert!(delay <= backoff.ceiling(attempt));
        }

        #[test]
        fn default_delay_bounded_at_any_attempt(attempt in proptest::prelude::any::<u32>()) {
            let delay = Backoff::default().delay(attempt);

            proptest::prop_assert!(delay >= Duration::from_millis(100));
            proptest::prop_assert!(delay <= Duration::from_secs(600));
        }
    }
}
