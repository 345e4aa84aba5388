//! Log lines for events that repeat (a store down, a broker away) without a line per event.

use std::time::{Duration, Instant};

/// Lets one of a run of repeated events through per period: the first at once, then one per
/// period with how many were held back since the last.
pub struct Throttle {
    every: Duration,
    next: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            next: None,
            held: 0,
        }
    }

    /// `Some(n)` when this event should be logged, `n` being those held back before it.
    pub fn pass(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.held += 1;
            return None;
        }
        self.next = Some(now + self.every);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_passes_the_first_then_one_per_period_with_the_count_held() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Throttle::new(10 * s);
        assert_eq!(t.pass(t0), Some(0));
        for i in 1..100 {
            assert_eq!(t.pass(t0 + Duration::from_millis(i * 100 - 1)), None);
        }
        assert_eq!(t.pass(t0 + 10 * s), Some(99));
        assert_eq!(t.pass(t0 + 11 * s), None);
        // After a quiet spell the next error is logged at once, with the one held before it.
        assert_eq!(t.pass(t0 + 60 * s), Some(1));
        assert_eq!(t.pass(t0 + 75 * s), Some(0));
    }
}
