//! The token bucket behind every rate limit of the core: anti-entropy's repairs (keys a second)
//! and a layout transfer's sends (bytes a second). Integer arithmetic, time passed in.

use std::time::{Duration, Instant};

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// `rate` tokens a second, at most `capacity` saved up. Taking more than there are leaves a
/// debt that later takers wait out too, so concurrent takers are served in turn, and one take
/// larger than the capacity still goes (it waits for its debt afterwards).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: i128,
    capacity: i128,
    tokens: i128,
    /// The time the tokens were last counted up to; a fraction of a token earned since stays
    /// in the time between `last` and now.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: `rate` tokens a second and `capacity` saved up (each at least 1).
    pub fn new(now: Instant, rate: u64, capacity: u64) -> TokenBucket {
        let capacity = i128::from(capacity.max(1));
        TokenBucket {
            rate: i128::from(rate.max(1)),
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Counts the tokens earned up to `now`. A clock that stepped back earns nothing.
    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.last) else {
            return;
        };
        let credit = elapsed.as_nanos() as i128 * self.rate / NANOS_PER_SEC;
        if credit == 0 {
            return;
        }
        if self.tokens + credit >= self.capacity {
            self.tokens = self.capacity;
            self.last = now;
        } else {
            self.tokens += credit;
            // Only the time those whole tokens took: the rest counts towards the next.
            let took = credit * NANOS_PER_SEC / self.rate;
            self.last += Duration::from_nanos(took as u64);
        }
    }

    /// Takes `n` tokens at `now` whatever the debt; returns how long the taker waits before
    /// using them (zero if there were enough).
    pub fn take(&mut self, now: Instant, n: u64) -> Duration {
        self.refill(now);
        self.tokens -= i128::from(n);
        self.ready_at()
            .saturating_duration_since(now.max(self.last))
    }

    /// Takes `n` tokens at `now` unless the bucket is in debt (then takes nothing): a take
    /// may run it into debt, and the next waits until [`TokenBucket::ready_at`].
    pub fn try_take(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        if self.tokens < 0 {
            return false;
        }
        self.tokens -= i128::from(n);
        true
    }

    /// Whether the bucket is in debt: a [`TokenBucket::try_take`] now would take nothing.
    pub fn in_debt(&self) -> bool {
        self.tokens < 0
    }

    /// When the debt is paid (the last count if there is none).
    pub fn ready_at(&self) -> Instant {
        if self.tokens >= 0 {
            return self.last;
        }
        // Rounded up, so that at this instant the tokens counted cover the debt.
        let debt = -self.tokens;
        let nanos = (debt * NANOS_PER_SEC + self.rate - 1) / self.rate;
        self.last + Duration::from_nanos(nanos as u64)
    }
}

#[cfg(test)]
// A test's clock starts at the real now; the core itself only takes `now` as an argument.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_capacity_then_paces_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 100, 50);
        assert_eq!(
            b.take(t0, 50),
            Duration::ZERO,
            "a full bucket gives its capacity"
        );
        assert_eq!(b.take(t0, 10), Duration::from_millis(100), "10 at 100/s");
        // The debt is shared: the next taker waits for it too.
        assert_eq!(b.take(t0, 10), Duration::from_millis(200));
        // Time pays the debt back, and no more than the capacity is ever saved.
        assert_eq!(b.take(t0 + Duration::from_millis(200), 0), Duration::ZERO);
        assert_eq!(b.take(t0 + Duration::from_secs(100), 50), Duration::ZERO);
        assert_eq!(
            b.take(t0 + Duration::from_secs(100), 1),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn a_clock_step_back_does_not_refill_the_bucket() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(t0, 10, 10);
        assert_eq!(b.take(t0, 10), Duration::ZERO);
        assert_eq!(
            b.take(t0 - Duration::from_secs(5), 10),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn fractions_of_a_token_are_not_lost_between_counts() {
        // 3 tokens a second, counted every 500 ms: 1.5 tokens each time, 3 a second in all.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 3, 100);
        assert!(b.try_take(t0, 100));
        for i in 1..=4 {
            b.refill(t0 + Duration::from_millis(500 * i));
        }
        assert_eq!(b.tokens, 6, "two seconds at 3/s");
    }

    #[test]
    fn a_bucket_in_debt_takes_nothing_until_the_debt_is_paid() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 1000, 1000);
        // One take larger than the capacity still goes, and leaves a debt.
        assert!(b.try_take(t0, 3000));
        assert!(b.in_debt());
        let ready = b.ready_at();
        assert_eq!(ready, t0 + Duration::from_secs(2));
        assert!(!b.try_take(ready - Duration::from_nanos(1), 1));
        assert!(b.try_take(ready, 1));
    }
}
