//! Upstream idempotency: at-least-once in from clients, effectively once to the backend.
//!
//! A message key is claimed before the backend sees it. The claim is `Pending` while the backend
//! works and `Done(reply)` after, so a client that lost its ack and resends gets the same
//! UPSTREAM_ACK again instead of a second delivery. The shard never calls a store: it emits
//! claims and [`IdemUpdate`]s as events and takes [`Claim`]s back, so a store that answers later
//! (Redis, pipelined per core) fits the same rules as one that answers at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::key::MessageKey;
use crate::FastMap;
use crate::auth::Identity;

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
    /// Most bytes (keys, replies and bookkeeping) one store holds, with the same eviction
    /// order: large backend replies must not exhaust memory either.
    pub max_bytes: usize,
}

/// What the shard asks of the store once the backend has answered. Keys are scoped to the
/// sender ([`MessageKey::scoped`]): two users' equal keys never meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemUpdate {
    /// Accepted: keep the reply for re-acks.
    Complete {
        who: Arc<Identity>,
        key: MessageKey,
        reply: Bytes,
    },
    /// Failed for good: forget the claim so the client's retry is forwarded.
    Release { who: Arc<Identity>, key: MessageKey },
}

/// A claim store that answers at once.
pub trait IdemStore {
    /// `key` is scoped to `who` ([`MessageKey::scoped`]).
    fn claim(&mut self, who: &Identity, key: &MessageKey, now: Instant) -> Claim;
    fn update(&mut self, update: IdemUpdate, now: Instant);
    /// Keys forgotten before their TTL because the store was full.
    fn evicted(&self) -> u64 {
        0
    }
}

/// A deadline in milliseconds since the store's first call: half the size of an `Instant`,
/// in every entry and expiry row.
type Ms = u64;

type Entry = (Option<Bytes>, Ms);

/// Rows per chunk of an expiry queue.
const CHUNK: usize = 1024;

/// A first-in first-out queue in fixed chunks. A `VecDeque` grows by doubling, and at a high
/// message rate each doubling copied the whole queue into fresh pages (its part of the echo
/// core was mostly page clearing); chunks never move, and an emptied one is reused.
#[derive(Debug, Default)]
struct Fifo<T> {
    chunks: VecDeque<VecDeque<T>>,
    spare: Option<VecDeque<T>>,
}

impl<T> Fifo<T> {
    fn push_back(&mut self, row: T) {
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
            let chunk = self
                .spare
                .take()
                .unwrap_or_else(|| VecDeque::with_capacity(CHUNK));
            self.chunks.push_back(chunk);
        }
        self.chunks.back_mut().expect("just ensured").push_back(row);
    }

    fn front(&self) -> Option<&T> {
        self.chunks.front()?.front()
    }

    fn pop_front(&mut self) -> Option<T> {
        let chunk = self.chunks.front_mut()?;
        let row = chunk.pop_front();
        if chunk.is_empty() {
            self.spare = self.chunks.pop_front();
        }
        row
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// What one stored key costs beyond its text and reply: the map slot, the expiry row, the
/// shared string's header and the allocator's rounding (measured: ~230 B per short key).
const ENTRY_OVERHEAD: usize = 200;

/// The embedded mode's store. It lives on the owner core, which every retry of a user's message
/// reaches, so it needs no locks. Keys are nested by biz; within a biz a key is the message
/// key's scoped text, `user \0 key`, the one string the message's request already holds: the
/// map and the expiry queue share it.
#[derive(Debug)]
pub struct MemoryIdemStore {
    ttl: IdemTtl,
    entries: FastMap<u64, FastMap<Arc<str>, Entry>>,
    len: usize,
    bytes: usize,
    evicted: u64,
    /// What deadlines count from: the first instant the store was given.
    origin: Option<Instant>,
    /// Expiry order, one queue per TTL so each stays sorted while time moves forward. Stale
    /// rows (a key re-set later) are skipped when popped.
    pending_expiry: Fifo<(Ms, u64, Arc<str>)>,
    done_expiry: Fifo<(Ms, u64, Arc<str>)>,
}

fn cost(key: &str, reply: Option<&Bytes>) -> usize {
    ENTRY_OVERHEAD + key.len() + reply.map_or(0, Bytes::len)
}

impl MemoryIdemStore {
    pub fn new(ttl: IdemTtl) -> Self {
        MemoryIdemStore {
            ttl,
            entries: FastMap::default(),
            len: 0,
            bytes: 0,
            evicted: 0,
            origin: None,
            pending_expiry: Fifo::default(),
            done_expiry: Fifo::default(),
        }
    }

    /// `now` plus `ttl`, in the store's milliseconds.
    fn deadline(&mut self, now: Instant, ttl: Duration) -> Ms {
        let origin = *self.origin.get_or_insert(now);
        (now.saturating_duration_since(origin) + ttl).as_millis() as Ms
    }

    fn get(&self, biz: u64, key: &str) -> Option<&Entry> {
        self.entries.get(&biz)?.get(key)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held, as counted against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn evict_over_cap(&mut self) {
        while self.len > self.ttl.max_entries.max(1)
            || (self.bytes > self.ttl.max_bytes && self.len > 0)
        {
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

    fn set(&mut self, biz: u64, key: Arc<str>, reply: Option<Bytes>, expires: Ms) {
        let queue = if reply.is_some() {
            &mut self.done_expiry
        } else {
            &mut self.pending_expiry
        };
        queue.push_back((expires, biz, key.clone()));
        self.bytes += cost(&key, reply.as_ref());
        match self
            .entries
            .entry(biz)
            .or_default()
            .insert(key.clone(), (reply, expires))
        {
            Some((old, _)) => self.bytes -= cost(&key, old.as_ref()),
            None => self.len += 1,
        }
        self.evict_over_cap();
    }

    fn remove(&mut self, biz: u64, key: &str) {
        if let Some(keys) = self.entries.get_mut(&biz) {
            if let Some((reply, _)) = keys.remove(key) {
                self.len -= 1;
                self.bytes -= cost(key, reply.as_ref());
            }
            if keys.is_empty() {
                self.entries.remove(&biz);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let now = self.deadline(now, Duration::ZERO);
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
    fn claim(&mut self, who: &Identity, key: &MessageKey, now: Instant) -> Claim {
        debug_assert_eq!(key.user(), Some(&*who.user_id));
        self.expire(now);
        let biz = who.biz_id;
        match self.get(biz, key.scoped_text()) {
            Some((Some(reply), _)) => Claim::Done(reply.clone()),
            Some((None, _)) => Claim::Pending,
            None => {
                let expires = self.deadline(now, self.ttl.pending);
                self.set(biz, key.scoped_text().clone(), None, expires);
                Claim::Fresh
            }
        }
    }

    fn evicted(&self) -> u64 {
        self.evicted
    }

    fn update(&mut self, update: IdemUpdate, now: Instant) {
        match update {
            IdemUpdate::Complete { who, key, reply } => {
                let expires = self.deadline(now, self.ttl.done);
                self.set(who.biz_id, key.scoped_text().clone(), Some(reply), expires)
            }
            IdemUpdate::Release { who, key } => self.remove(who.biz_id, key.scoped_text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(max_entries: usize, max_bytes: usize) -> IdemTtl {
        IdemTtl {
            pending: Duration::from_secs(10),
            done: Duration::from_secs(100),
            max_entries,
            max_bytes,
        }
    }

    fn store() -> MemoryIdemStore {
        MemoryIdemStore::new(ttl(1000, usize::MAX))
    }

    fn user(biz_id: u64, user_id: &str) -> Arc<Identity> {
        Arc::new(Identity {
            biz_id,
            user_id: user_id.into(),
            device_id: "default".into(),
        })
    }

    fn claim(s: &mut MemoryIdemStore, who: &Identity, key: &str, now: Instant) -> Claim {
        s.claim(who, &MessageKey::scoped(&who.user_id, key), now)
    }

    fn complete(who: &Arc<Identity>, key: &str, reply: &'static [u8]) -> IdemUpdate {
        IdemUpdate::Complete {
            who: who.clone(),
            key: MessageKey::scoped(&who.user_id, key),
            reply: Bytes::from_static(reply),
        }
    }

    #[test]
    fn the_expiry_queue_keeps_its_order_across_chunks_and_reuses_an_emptied_one() {
        let mut q = Fifo::default();
        for i in 0..CHUNK * 2 + 5 {
            q.push_back(i);
        }
        assert_eq!(q.chunks.len(), 3);
        for i in 0..CHUNK + 1 {
            assert_eq!(q.pop_front(), Some(i));
        }
        assert!(q.spare.is_some(), "the emptied chunk waits to be reused");
        for i in 0..CHUNK {
            q.push_back(CHUNK * 2 + 5 + i);
        }
        assert!(q.spare.is_none());
        let rest: Vec<_> = std::iter::from_fn(|| q.pop_front()).collect();
        assert_eq!(rest, (CHUNK + 1..CHUNK * 3 + 5).collect::<Vec<_>>());
        assert!(q.is_empty() && q.front().is_none());
    }

    #[test]
    fn fresh_pending_done_reack() {
        let t0 = Instant::now();
        let mut s = store();
        let a = user(1, "a");
        assert_eq!(claim(&mut s, &a, "k", t0), Claim::Fresh);
        assert_eq!(claim(&mut s, &a, "k", t0), Claim::Pending);
        assert_eq!(
            claim(&mut s, &user(2, "a"), "k", t0),
            Claim::Fresh,
            "keys are per biz"
        );
        s.update(complete(&a, "k", b"r"), t0);
        assert_eq!(
            claim(&mut s, &a, "k", t0),
            Claim::Done(Bytes::from_static(b"r"))
        );
    }

    #[test]
    fn two_users_equal_keys_never_meet() {
        let t0 = Instant::now();
        let mut s = store();
        let (a, b) = (user(1, "a"), user(1, "b"));
        assert_eq!(claim(&mut s, &a, "k", t0), Claim::Fresh);
        s.update(complete(&a, "k", b"a's reply"), t0);
        assert_eq!(
            claim(&mut s, &b, "k", t0),
            Claim::Fresh,
            "b's message reaches the backend"
        );
        // A user id and key that concatenate alike stay apart too.
        assert_eq!(claim(&mut s, &user(1, "ab"), "c", t0), Claim::Fresh);
        assert_eq!(claim(&mut s, &user(1, "a"), "bc", t0), Claim::Fresh);
    }

    #[test]
    fn release_lets_a_retry_through() {
        let t0 = Instant::now();
        let mut s = store();
        let a = user(1, "a");
        assert_eq!(claim(&mut s, &a, "k", t0), Claim::Fresh);
        let release = IdemUpdate::Release {
            who: a.clone(),
            key: MessageKey::scoped("a", "k"),
        };
        s.update(release, t0);
        assert_eq!(claim(&mut s, &a, "k", t0), Claim::Fresh);
        assert_eq!((s.len(), s.bytes()), (1, ENTRY_OVERHEAD + 3));
    }

    #[test]
    fn expiry_follows_the_latest_state() {
        let t0 = Instant::now();
        let mut s = store();
        let a = user(1, "a");
        claim(&mut s, &a, "k", t0);
        // Completed at t0+5: the pending row expiring at t0+10 must not remove it.
        s.update(complete(&a, "k", b""), t0 + Duration::from_secs(5));
        assert_eq!(
            claim(&mut s, &a, "k", t0 + Duration::from_secs(11)),
            Claim::Done(Bytes::new())
        );
        // A stuck pending claim, made after the reply, expires first so the client can retry.
        claim(&mut s, &a, "stuck", t0 + Duration::from_secs(20));
        assert_eq!(
            claim(&mut s, &a, "stuck", t0 + Duration::from_secs(30)),
            Claim::Fresh
        );
        assert_eq!(
            claim(&mut s, &a, "k", t0 + Duration::from_secs(104)),
            Claim::Done(Bytes::new())
        );
        assert_eq!(
            claim(&mut s, &a, "k", t0 + Duration::from_secs(106)),
            Claim::Fresh
        );
    }

    #[test]
    fn a_full_store_forgets_the_oldest_replies_first() {
        let t0 = Instant::now();
        let mut s = MemoryIdemStore::new(ttl(3, usize::MAX));
        let a = user(1, "a");
        for k in ["a", "b"] {
            claim(&mut s, &a, k, t0);
            s.update(complete(&a, k, b""), t0);
        }
        claim(&mut s, &a, "c", t0); // pending
        claim(&mut s, &a, "d", t0); // over the cap: "a", the oldest reply, goes
        assert_eq!((s.len(), s.evicted()), (3, 1));
        assert_eq!(claim(&mut s, &a, "a", t0), Claim::Fresh, "forgotten early");
        assert_eq!(
            claim(&mut s, &a, "c", t0),
            Claim::Pending,
            "pending claims outlive replies"
        );
        assert!(s.len() <= 3);
    }

    #[test]
    fn large_replies_are_bounded_in_bytes() {
        let t0 = Instant::now();
        let cap = 3 * (ENTRY_OVERHEAD + 1_000);
        let mut s = MemoryIdemStore::new(ttl(1_000_000, cap));
        let a = user(1, "a");
        static REPLY: [u8; 990] = [7; 990];
        for i in 0..100 {
            let k = format!("k{i:04}");
            claim(&mut s, &a, &k, t0);
            s.update(complete(&a, &k, &REPLY), t0);
            assert!(s.bytes() <= cap, "{} bytes held after {i}", s.bytes());
        }
        assert!(s.len() >= 2, "the newest replies stay");
        assert!(s.evicted() >= 97);
        assert_eq!(
            claim(&mut s, &a, "k0099", t0),
            Claim::Done(Bytes::from_static(&REPLY))
        );
    }
}
