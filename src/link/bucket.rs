//! Per-link token bucket. Over-limit messages are rejected with a retry hint, never queued:
//! the read loop keeps moving and one noisy link cannot slow another.

use std::time::{Duration, Instant};

use super::stamp::Stamp;

/// How fast a link may send. The same for every link of a core, so a link keeps only its
/// tokens (and an idle link 16 bytes less).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages a second; 0 disables limiting.
    pub per_s: u32,
    /// How many may come at once.
    pub burst: u32,
}

impl Rate {
    fn burst(self) -> f64 {
        f64::from(self.burst.max(1))
    }
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Stamp,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            tokens: rate.burst(),
            last: now.into(),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        if rate.per_s == 0 {
            return Ok(());
        }
        let per_s = f64::from(rate.per_s);
        let last = self.last.instant();
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        self.last = now.max(last).into();
        self.tokens = (self.tokens + elapsed * per_s).min(rate.burst());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let rate = Rate {
            per_s: 10,
            burst: 3,
        };
        let mut b = TokenBucket::new(rate, t0);
        for _ in 0..3 {
            assert!(b.try_take(rate, t0).is_ok());
        }
        let wait = b.try_take(rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.try_take(rate, t0 + Duration::from_millis(99)).is_err());
        assert!(b.try_take(rate, t0 + Duration::from_millis(100)).is_ok());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.try_take(rate, later).is_ok());
        }
        assert!(b.try_take(rate, later).is_err());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let rate = Rate { per_s: 0, burst: 1 };
        let mut b = TokenBucket::new(rate, t0);
        for _ in 0..1000 {
            assert!(b.try_take(rate, t0).is_ok());
        }
    }
}
