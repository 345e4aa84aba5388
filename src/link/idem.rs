//! Upstream idempotency: at-least-once in from clients, effectively once to the backend.
//!
//! A message key is claimed before the backend sees it. The claim is `Pending` while the backend
//! works and `Done(reply)` after, so a client that lost its ack and resends gets the same
//! UPSTREAM_ACK again instead of a second delivery. The shard never calls a store: it emits
//! claims and [`IdemUpdate`]s as events and takes [`Claim`]s back, so a store that answers later
//! (Redis, pipelined per core) fits the same rules as one that answers at once.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::key::MessageKey;
use crate::auth::Identity;
use table::Table;

mod table;

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

/// What the shard asks of the store once the backend has answered. A key belongs to its
/// sender, `who`: two users' equal keys never meet.
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
    /// `key` as sent by `who`.
    fn claim(&mut self, who: &Identity, key: &str, now: Instant) -> Claim;
    fn update(&mut self, update: IdemUpdate, now: Instant);
    /// Keys forgotten before their TTL because the store was full.
    fn evicted(&self) -> u64 {
        0
    }
}

/// A deadline in milliseconds since the store's first call: half the size of an `Instant`,
/// in every entry and expiry row.
type Ms = u64;

/// A key as the store holds it: a 128-bit keyed hash of `(biz, user, key)` (see
/// [`MemoryIdemStore`]). Two words rather than a `u128`, whose 16-byte alignment would pad
/// every slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fingerprint([u64; 2]);

/// A key hashed by [`MemoryIdemStore::probe`], to prefetch its slot and then claim it.
#[derive(Debug, Clone, Copy)]
pub struct Probe(Fingerprint);

/// A key's state and deadline in 16 bytes, so that with its fingerprint a table slot is 32
/// and never straddles two cache lines. Most backends answer with an empty reply, which costs
/// nothing here; a non-empty one is boxed.
#[derive(Debug, Default)]
struct Row {
    /// The deadline in the store's milliseconds, shifted left once; the low bit is set while
    /// the key is pending.
    stamp: u64,
    reply: Option<Box<Bytes>>,
}

impl Row {
    fn pending(expires: Ms) -> Row {
        Row {
            stamp: expires << 1 | 1,
            reply: None,
        }
    }

    fn done(reply: Bytes, expires: Ms) -> Row {
        Row {
            stamp: expires << 1,
            reply: (!reply.is_empty()).then(|| Box::new(reply)),
        }
    }

    fn is_pending(&self) -> bool {
        self.stamp & 1 == 1
    }

    fn expires(&self) -> Ms {
        self.stamp >> 1
    }

    /// What the row counts against `max_bytes`.
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD + self.reply.as_ref().map_or(0, |reply| reply.len())
    }
}

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

/// What one stored key costs at most beyond its reply once the store is full: its table slot
/// (32 bytes, in a table sized between a quarter and half full, so 64 to 128) and its two
/// expiry rows of 24. Held at this by the test `a_stored_key_costs_the_store_under_192_bytes`,
/// which fills a store sized just past a power of two, where the table is emptiest.
const ENTRY_OVERHEAD: usize = 192;

/// The most keys a store's table is sized for at start; a larger window grows it by doubling
/// from there. 2^21 slots of headroom cover the default `--idem-max-entries`.
const PRESIZED_KEYS: usize = 1 << 21;

/// The embedded mode's store. It lives on the owner core, which every retry of a user's message
/// reaches, so it needs no locks.
///
/// It keeps no key text: a key is held as a SipHash-1-3 fingerprint of `(biz, user, key)` under
/// a random secret of the store's. At the store's cap of millions of keys, two equal
/// fingerprints of different keys come about less than once in 2^80 stores, and without the
/// secret a client cannot aim a key of its own at another's. Fixed 16-byte keys keep a key's
/// whole cost at 112–176 bytes once the store is full (add its text's length and a slot's
/// worth more if it were kept), need no allocation, and a lookup reads no string behind a
/// pointer.
#[derive(Debug)]
pub struct MemoryIdemStore {
    ttl: IdemTtl,
    secret: (u64, u64),
    entries: Table,
    bytes: usize,
    evicted: u64,
    /// What deadlines count from: the first instant the store was given.
    origin: Option<Instant>,
    /// Expiry order, one queue per TTL so each stays sorted while time moves forward. Stale
    /// rows (a key re-set later) are skipped when popped.
    pending_expiry: Fifo<(Ms, Fingerprint)>,
    done_expiry: Fifo<(Ms, Fingerprint)>,
}

impl MemoryIdemStore {
    /// The table starts at the size the caps allow (up to [`PRESIZED_KEYS`]): doubling a
    /// table of millions of keys held the core for a long pass and rewrote every slot, a
    /// random write each. The table is zeroed memory the kernel maps in as keys land on its
    /// pages, so an unused store costs address space, not memory.
    pub fn new(ttl: IdemTtl) -> Self {
        MemoryIdemStore {
            ttl,
            secret: rand::random(),
            entries: Table::with_capacity(
                ttl.max_entries
                    .min(ttl.max_bytes / ENTRY_OVERHEAD)
                    .min(PRESIZED_KEYS),
            ),
            bytes: 0,
            evicted: 0,
            origin: None,
            pending_expiry: Fifo::default(),
            done_expiry: Fifo::default(),
        }
    }

    /// Lengths go in before the texts, so no two `(user, key)` pairs read alike.
    fn fingerprint(&self, who: &Identity, key: &str) -> Fingerprint {
        let mut h = SipHasher13::new_with_keys(self.secret.0, self.secret.1);
        h.write_u64(who.biz_id);
        h.write_usize(who.user_id.len());
        h.write(who.user_id.as_bytes());
        h.write_usize(key.len());
        h.write(key.as_bytes());
        match h.finish128() {
            h if [h.h1, h.h2] == [0, 0] => Table::REMAPPED,
            h => Fingerprint([h.h1, h.h2]),
        }
    }

    /// `now` plus `ttl`, in the store's milliseconds.
    fn deadline(&mut self, now: Instant, ttl: Duration) -> Ms {
        let origin = *self.origin.get_or_insert(now);
        (now.saturating_duration_since(origin) + ttl).as_millis() as Ms
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// Bytes held, as counted against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn evict_over_cap(&mut self) {
        while self.len() > self.ttl.max_entries.max(1)
            || (self.bytes > self.ttl.max_bytes && !self.is_empty())
        {
            let queue = if self.done_expiry.is_empty() {
                &mut self.pending_expiry
            } else {
                &mut self.done_expiry
            };
            let Some((at, fp)) = queue.pop_front() else {
                return;
            };
            if self.remove_if_due(fp, at) {
                self.evicted += 1;
            }
        }
    }

    /// Stores `row` under `fp`.
    fn set(&mut self, fp: Fingerprint, row: Row) {
        let queue = if row.is_pending() {
            &mut self.pending_expiry
        } else {
            &mut self.done_expiry
        };
        queue.push_back((row.expires(), fp));
        self.bytes += row.cost();
        if let Some(old) = self.entries.insert(fp, row) {
            self.bytes -= old.cost();
        }
        self.evict_over_cap();
    }

    /// Removes `fp`'s entry if `due` says so of its row. Returns whether it did.
    fn remove_if(&mut self, fp: Fingerprint, due: impl Fn(&Row) -> bool) -> bool {
        let Some(row) = self.entries.remove_if(fp, due) else {
            return false;
        };
        self.bytes -= row.cost();
        true
    }

    /// Removes the entry an expiry row names, unless the key was set again since (the row is
    /// stale). Returns whether it did.
    fn remove_if_due(&mut self, fp: Fingerprint, at: Ms) -> bool {
        self.remove_if(fp, |row| row.expires() == at)
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
                if queue.front().is_none_or(|(at, _)| *at > now) {
                    break;
                }
                let (at, fp) = queue.pop_front().expect("front exists");
                self.remove_if_due(fp, at);
            }
        }
    }

    /// Hashes `who`'s key, for a [`prefetch`] and a [`claim_probed`] later.
    ///
    /// [`prefetch`]: MemoryIdemStore::prefetch
    /// [`claim_probed`]: MemoryIdemStore::claim_probed
    pub fn probe(&self, who: &Identity, key: &str) -> Probe {
        Probe(self.fingerprint(who, key))
    }

    /// Starts loading a probed key's table slot. At millions of keys a slot is a cache miss
    /// and a TLB miss, which was most of a claim's cost; the shard prefetches every claim of
    /// a pass back to back before it makes the first, so their misses overlap.
    pub fn prefetch(&self, probe: Probe) {
        self.entries.prefetch(probe.0);
    }

    /// Ends the claim of a key probed before: keeps the backend's reply for re-acks, or
    /// (`None`, the call failed for good) forgets the key so a retry is forwarded.
    pub fn finish_probed(&mut self, probe: Probe, reply: Option<Bytes>, now: Instant) {
        match reply {
            Some(reply) => {
                let expires = self.deadline(now, self.ttl.done);
                self.set(probe.0, Row::done(reply, expires))
            }
            None => {
                self.remove_if(probe.0, |_| true);
            }
        }
    }

    /// [`IdemStore::claim`] of a key probed before.
    pub fn claim_probed(&mut self, probe: Probe, now: Instant) -> Claim {
        self.expire(now);
        let fp = probe.0;
        match self.entries.get(fp) {
            Some(row) if row.is_pending() => Claim::Pending,
            Some(row) => Claim::Done(row.reply.as_deref().cloned().unwrap_or_default()),
            None => {
                let expires = self.deadline(now, self.ttl.pending);
                self.set(fp, Row::pending(expires));
                Claim::Fresh
            }
        }
    }
}

impl IdemStore for MemoryIdemStore {
    fn claim(&mut self, who: &Identity, key: &str, now: Instant) -> Claim {
        let probe = self.probe(who, key);
        self.claim_probed(probe, now)
    }

    fn evicted(&self) -> u64 {
        self.evicted
    }

    fn update(&mut self, update: IdemUpdate, now: Instant) {
        match update {
            IdemUpdate::Complete { who, key, reply } => {
                self.finish_probed(self.probe(&who, &key), Some(reply), now)
            }
            IdemUpdate::Release { who, key } => {
                self.finish_probed(self.probe(&who, &key), None, now)
            }
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
        s.claim(who, key, now)
    }

    fn complete(who: &Arc<Identity>, key: &str, reply: &'static [u8]) -> IdemUpdate {
        IdemUpdate::Complete {
            who: who.clone(),
            key: key.into(),
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
            key: "k".into(),
        };
        s.update(release, t0);
        assert_eq!(claim(&mut s, &a, "k", t0), Claim::Fresh);
        assert_eq!((s.len(), s.bytes()), (1, ENTRY_OVERHEAD));
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
