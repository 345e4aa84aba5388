//! When to resend an unacknowledged push.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Wait after the first send.
    pub initial: Duration,
    /// Sends in all, the first included. After the last one's wait the push is undelivered.
    pub max_attempts: u32,
    /// No single wait grows beyond this.
    pub max_delay: Duration,
    /// Each wait is spread by ±this fraction so links that got a broadcast together do not
    /// retransmit together.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The wait after send number `attempt` (1-based): initial·2^(attempt-1), capped, then
    /// scaled by a factor in [1-jitter, 1+jitter) picked by `unit` in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        base.mul_f64(1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1000),
            max_attempts: 5,
            max_delay: Duration::from_secs(5),
            jitter: 0.2,
        }
    }

    #[test]
    fn doubles_and_caps() {
        let p = policy();
        let mid: Vec<_> = (1..=5).map(|a| p.delay(a, 0.5).as_millis()).collect();
        assert_eq!(mid, [1000, 2000, 4000, 5000, 5000]);
        assert_eq!(p.delay(40, 0.5), Duration::from_secs(5));
    }

    #[test]
    fn jitter_bounds() {
        let p = policy();
        assert_eq!(p.delay(1, 0.0).as_millis(), 800);
        assert_eq!(p.delay(2, 1.0).as_millis(), 2400);
    }
}
