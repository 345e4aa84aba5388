//! A moment in 8 bytes. An `Instant` takes 16, and an idle link keeps six of them: stored as
//! these, the link fits the allocator's 320-byte size class instead of the 384-byte one.
//!
//! A stamp counts nanoseconds from a process-wide anchor, taken at the first conversion, with a
//! bias so moments before the anchor (a test's injected clock may start anywhere) convert too.
//! The bias leaves 146 years either side, and keeps zero free for `Option<Stamp>`'s `None`.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIAS: u64 = 1 << 62;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(NonZeroU64);

fn anchor() -> Instant {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    *ANCHOR.get_or_init(Instant::now)
}

impl From<Instant> for Stamp {
    fn from(t: Instant) -> Stamp {
        let a = anchor();
        let n = match t.checked_duration_since(a) {
            Some(after) => BIAS.saturating_add(nanos(after)),
            None => BIAS.saturating_sub(nanos(a - t)),
        };
        Stamp(NonZeroU64::new(n.max(1)).expect("at least 1"))
    }
}

impl Stamp {
    pub fn instant(self) -> Instant {
        let n = self.0.get();
        if n >= BIAS {
            anchor() + Duration::from_nanos(n - BIAS)
        } else {
            anchor() - Duration::from_nanos(BIAS - n)
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_comes_back_to_the_nanosecond_either_side_of_the_anchor() {
        let now = Instant::now();
        for t in [
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(86_400 * 365),
            now - Duration::from_millis(1),
        ] {
            assert_eq!(Stamp::from(t).instant(), t);
        }
        assert!(Stamp::from(now) < Stamp::from(now + Duration::from_nanos(1)));
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }
}
