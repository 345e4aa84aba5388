//! Per-biz batching of upstream messages on one core: a batch leaves when it is full or when
//! its first message has waited the batch delay, whichever comes first. An idle system sends
//! single messages after the delay; a busy one fills batches and never waits.

use std::time::{Duration, Instant};

use crate::FastMap;

/// What adding a message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added<T> {
    /// The batch is full: send it now.
    Full(Vec<T>),
    /// The message started a batch: call [`Batcher::take_due`] with `id` at `due`.
    Opened { biz_id: u64, id: u64, due: Instant },
    /// The message joined an open batch.
    Joined,
}

struct Open<T> {
    id: u64,
    items: Vec<T>,
}

pub struct Batcher<T> {
    max: usize,
    delay: Duration,
    open: FastMap<u64, Open<T>>,
    next_id: u64,
}

impl<T> Batcher<T> {
    pub fn new(max: usize, delay: Duration) -> Self {
        Batcher {
            max: max.max(1),
            delay,
            open: FastMap::default(),
            next_id: 0,
        }
    }

    pub fn add(&mut self, biz_id: u64, item: T, now: Instant) -> Added<T> {
        if self.max == 1 {
            return Added::Full(vec![item]);
        }
        if let Some(open) = self.open.get_mut(&biz_id) {
            open.items.push(item);
            if open.items.len() >= self.max {
                return Added::Full(self.open.remove(&biz_id).expect("present").items);
            }
            return Added::Joined;
        }
        self.next_id += 1;
        let id = self.next_id;
        let mut items = Vec::with_capacity(self.max);
        items.push(item);
        self.open.insert(biz_id, Open { id, items });
        Added::Opened {
            biz_id,
            id,
            due: now + self.delay,
        }
    }

    /// The delay of batch `id` ran out: its messages, unless it already left full.
    pub fn take_due(&mut self, biz_id: u64, id: u64) -> Option<Vec<T>> {
        match self.open.get(&biz_id) {
            Some(open) if open.id == id => self.open.remove(&biz_id).map(|o| o.items),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_per_biz_and_flushes_at_size() {
        let t0 = Instant::now();
        let mut b = Batcher::new(3, Duration::from_millis(5));
        assert_eq!(
            b.add(1, "a", t0),
            Added::Opened {
                biz_id: 1,
                id: 1,
                due: t0 + Duration::from_millis(5)
            }
        );
        assert!(matches!(b.add(2, "x", t0), Added::Opened { biz_id: 2, .. }));
        assert_eq!(b.add(1, "b", t0), Added::Joined);
        assert_eq!(b.add(1, "c", t0), Added::Full(vec!["a", "b", "c"]));
        // The timer of the batch that left full finds nothing; biz 2 is still waiting.
        assert_eq!(b.take_due(1, 1), None);
        assert_eq!(b.take_due(2, 2), Some(vec!["x"]));
    }

    #[test]
    fn a_late_timer_does_not_take_the_next_batch() {
        let t0 = Instant::now();
        let mut b = Batcher::new(2, Duration::from_millis(5));
        b.add(1, 1, t0);
        assert_eq!(b.add(1, 2, t0), Added::Full(vec![1, 2]));
        assert!(matches!(b.add(1, 3, t0), Added::Opened { id: 2, .. }));
        assert_eq!(b.take_due(1, 1), None, "timer of the first batch");
        assert_eq!(b.take_due(1, 2), Some(vec![3]));
    }

    #[test]
    fn size_one_means_no_batching() {
        let mut b = Batcher::new(1, Duration::from_millis(5));
        assert_eq!(b.add(1, 'a', Instant::now()), Added::Full(vec!['a']));
    }
}
