//! Circuit breaker for a backend: after `threshold` failures in a row it opens and calls fail
//! at once (clients get ERROR(CODE_BACKEND_UNAVAILABLE) instead of waiting on timeouts); after
//! `cooldown` one probe is let through, and its outcome closes or re-opens the circuit.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everything else fails fast until it answers.
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: State,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: State::Closed { failures: 0 },
        }
    }

    /// May a call go out now?
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    pub fn on_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: now + self.cooldown,
            },
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, S);
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.on_failure(t0);
        }
        assert!(!b.is_open());
        b.on_success(); // a success resets the count
        for _ in 0..3 {
            assert!(b.allow(t0));
            b.on_failure(t0);
        }
        assert!(b.is_open());
        assert!(!b.allow(t0 + S / 2), "fails fast while open");
        assert!(b.allow(t0 + S), "one probe after the cooldown");
        assert!(!b.allow(t0 + S), "only one");
        b.on_failure(t0 + S);
        assert!(!b.allow(t0 + S + S / 2), "failed probe re-opens");
        assert!(b.allow(t0 + 2 * S));
        b.on_success();
        assert!(b.allow(t0 + 2 * S) && !b.is_open());
    }
}
