//! Upstream idempotency: at-least-once in from clients, effectively once to the backend.
//!
//! A message key is claimed before the backend sees it. The claim is `Pending` while the backend
//! works and `Done(reply)` after, so a client that lost its ack and resends gets the same
//! UPSTREAM_ACK again instead of a second delivery. The shard never calls a store: it emits
//! claims and [`IdemUpdate`]s as events and takes [`Claim`]s back, so a store that answers later
//! (Redis, pipelined per core) fits the same rules as one that answers at once.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::FastMap;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First sight: forward to the backend.
    Fresh,
    /// The first copy is still with the backend: drop this one, the ack will come once.
    Pending,
    /// Already accepted: re-ack with the stored reply.
    Done(Bytes),
}

#[derive(Debug, Clone, Copy)]
pub struct IdemTtl {
    /// How long a claim stays pending if the backend never answers (a crashed call).
    pub pending: Duration,
    /// How long a reply is kept for re-acks.
    pub done: Duration,
    /// Most keys one store holds; past it the oldest replies (then the oldest pending claims)
    /// are forgotten early, so a traffic peak shortens the dedup window instead of exhausting
    /// memory.
    pub max_entries: usize,
}

/// What the shard asks of the store once the backend has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemUpdate {
    /// Accepted: keep the reply for re-acks.
    Complete {
        biz_id: u64,
        key: String,
        reply: Bytes,
    },
    /// Failed for good: forget the claim so the client's retry is forwarded.
    Release { biz_id: u64, key: String },
}

/// A claim store that answers at once.
pub trait IdemStore {
    fn claim(&mut self, biz_id: u64, key: &str, now: Instant) -> Claim;
    fn update(&mut self, update: IdemUpdate, now: Instant);
    /// Keys forgotten before their TTL because the store was full.
    fn evicted(&self) -> u64 {
        0
    }
}

type Entry = (Option<Bytes>, Instant);

/// The embedded mode's store. It lives on the owner core, which every retry of a user's message
/// reaches, so it needs no locks. Keys are nested by biz so a lookup borrows the message key, and
/// each stored key is one shared string for both the map and its expiry queue.
#[derive(Debug)]
pub struct MemoryIdemStore {
    ttl: IdemTtl,
    entries: FastMap<u64, FastMap<Rc<str>, Entry>>,
    len: usize,
    evicted: u64,
    /// Expiry order, one queue per TTL so each stays sorted while time moves forward. Stale
    /// rows (a key re-set later) are skipped when popped.
    pending_expiry: VecDeque<(Instant, u64, Rc<str>)>,
    done_expiry: VecDeque<(Instant, u64, Rc<str>)>,
}

impl MemoryIdemStore {
    pub fn new(ttl: IdemTtl) -> Self {
        MemoryIdemStore {
            ttl,
            entries: FastMap::default(),
            len: 0,
            evicted: 0,
            pending_expiry: VecDeque::new(),
            done_expiry: VecDeque::new(),
        }
    }

    fn get(&self, biz: u64, key: &str) -> Option<&Entry> {
        self.entries.get(&biz)?.get(key)
    }

    fn claim_key(&mut self, biz: u64, key: &str, now: Instant) -> Claim {
        self.expire(now);
        match self.get(biz, key) {
            Some((Some(reply), _)) => Claim::Done(reply.clone()),
            Some((None, _)) => Claim::Pending,
            None => {
                self.set(biz, Rc::from(key), None, now + self.ttl.pending);
                Claim::Fresh
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn evict_over_cap(&mut self) {
        while self.len > self.ttl.max_entries.max(1) {
            let queue = if self.done_expiry.is_empty() {
                &mut self.pending_expiry
            } else {
                &mut self.done_expiry
            };
            let Some((at, biz, key)) = queue.pop_front() else {
                return;
            };
            if self.get(biz, &key).is_some_and(|(_, exp)| *exp == at) {
                self.remove(biz, &key);
                self.evicted += 1;
            }
        }
    }

    fn set(&mut self, biz: u64, key: Rc<str>, reply: Option<Bytes>, expires: Instant) {
        let queue = if reply.is_some() {
            &mut self.done_expiry
        } else {
            &mut self.pending_expiry
        };
        queue.push_back((expires, biz, key.clone()));
        if self
            .entries
            .entry(biz)
            .or_default()
            .insert(key, (reply, expires))
            .is_none()
        {
            self.len += 1;
            self.evict_over_cap();
        }
    }

    fn remove(&mut self, biz: u64, key: &str) {
        if let Some(keys) = self.entries.get_mut(&biz) {
            if keys.remove(key).is_some() {
                self.len -= 1;
            }
            if keys.is_empty() {
                self.entries.remove(&biz);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        for pending in [true, false] {
            loop {
                let queue = if pending {
                    &mut self.pending_expiry
                } else {
                    &mut self.done_expiry
                };
                if queue.front().is_none_or(|(at, ..)| *at > now) {
                    break;
                }
                let (at, biz, key) = queue.pop_front().expect("front exists");
                if self.get(biz, &key).is_some_and(|(_, exp)| *exp == at) {
                    self.remove(biz, &key);
                }
            }
        }
    }
}

impl IdemStore for MemoryIdemStore {
    fn claim(&mut self, biz_id: u64, key: &str, now: Instant) -> Claim {
        self.claim_key(biz_id, key, now)
    }

    fn evicted(&self) -> u64 {
        self.evicted
    }

    fn update(&mut self, update: IdemUpdate, now: Instant) {
        match update {
            IdemUpdate::Complete { biz_id, key, reply } => {
                self.set(biz_id, Rc::from(key), Some(reply), now + self.ttl.done)
            }
            IdemUpdate::Release { biz_id, key } => self.remove(biz_id, &key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> MemoryIdemStore {
        MemoryIdemStore::new(IdemTtl {
            pending: Duration::from_secs(10),
            done: Duration::from_secs(100),
            max_entries: 1000,
        })
    }

    #[test]
    fn fresh_pending_done_reack() {
        let t0 = Instant::now();
        let mut s = store();
        assert_eq!(s.claim(1, "k", t0), Claim::Fresh);
        assert_eq!(s.claim(1, "k", t0), Claim::Pending);
        assert_eq!(s.claim(2, "k", t0), Claim::Fresh, "keys are per biz");
        s.update(
            IdemUpdate::Complete {
                biz_id: 1,
                key: "k".into(),
                reply: Bytes::from_static(b"r"),
            },
            t0,
        );
        assert_eq!(s.claim(1, "k", t0), Claim::Done(Bytes::from_static(b"r")));
    }

    #[test]
    fn release_lets_a_retry_through() {
        let t0 = Instant::now();
        let mut s = store();
        assert_eq!(s.claim(1, "k", t0), Claim::Fresh);
        s.update(
            IdemUpdate::Release {
                biz_id: 1,
                key: "k".into(),
            },
            t0,
        );
        assert_eq!(s.claim(1, "k", t0), Claim::Fresh);
    }

    #[test]
    fn expiry_follows_the_latest_state() {
        let t0 = Instant::now();
        let mut s = store();
        s.claim(1, "k", t0);
        // Completed at t0+5: the pending row expiring at t0+10 must not remove it.
        s.update(
            IdemUpdate::Complete {
                biz_id: 1,
                key: "k".into(),
                reply: Bytes::new(),
            },
            t0 + Duration::from_secs(5),
        );
        assert_eq!(
            s.claim(1, "k", t0 + Duration::from_secs(11)),
            Claim::Done(Bytes::new())
        );
        // A stuck pending claim, made after the reply, expires first so the client can retry.
        s.claim(1, "stuck", t0 + Duration::from_secs(20));
        assert_eq!(
            s.claim(1, "stuck", t0 + Duration::from_secs(30)),
            Claim::Fresh
        );
        assert_eq!(
            s.claim(1, "k", t0 + Duration::from_secs(104)),
            Claim::Done(Bytes::new())
        );
        assert_eq!(s.claim(1, "k", t0 + Duration::from_secs(106)), Claim::Fresh);
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn a_full_store_forgets_the_oldest_replies_first() {
        let t0 = Instant::now();
        let ttl = IdemTtl {
            pending: Duration::from_secs(10),
            done: Duration::from_secs(100),
            max_entries: 3,
        };
        let mut s = MemoryIdemStore::new(ttl);
        for k in ["a", "b"] {
            s.claim(1, k, t0);
            s.update(
                IdemUpdate::Complete {
                    biz_id: 1,
                    key: k.into(),
                    reply: Bytes::new(),
                },
                t0,
            );
        }
        s.claim(1, "c", t0); // pending
        s.claim(1, "d", t0); // over the cap: "a", the oldest reply, goes
        assert_eq!((s.len(), s.evicted()), (3, 1));
        assert_eq!(s.claim(1, "a", t0), Claim::Fresh, "forgotten early");
        assert_eq!(
            s.claim(1, "c", t0),
            Claim::Pending,
            "pending claims outlive replies"
        );
        assert!(s.len() <= 3);
    }
}
