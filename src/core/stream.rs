//! Per-user streams in the owner core's memory: what covers the gap between two links (a
//! disconnect, a drain, a phone asleep), where acks and retransmits cover only a live link.
//!
//! Every push that names a user is appended once to its `(biz, user)` stream and gets the next
//! offset of the stream's epoch (1, 2, 3, ...), so a client that sees a jump knows it missed
//! something. A push appended again under the same key (a Kafka re-read, a retried POST) keeps
//! its first offset. Retention is bounded three ways: `max_len` entries and `ttl` per stream,
//! and `max_bytes` for the whole core, evicting the core's oldest entries first. A stream whose
//! last entry is gone is forgotten, so its next push opens a new epoch: a client holding the
//! old epoch learns that history was lost rather than resuming over a hole.
//!
//! The store is plain data driven by the caller's clock; the shard owns one per core, so it
//! needs no lock.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;

use crate::FastMap;
use crate::link::Followed;
use crate::link::key::MessageKey;
use crate::protocol::handshake::Since;

/// Retention and resume limits (`--stream-max-len`, `--stream-ttl-ms`, `--resume-max`,
/// `--stream-max-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_len: usize,
    pub ttl: Duration,
    pub resume_max: u64,
    /// For the whole core: entries, their keys and bodies, and the store's own bookkeeping.
    pub max_bytes: usize,
}

/// What an entry costs beyond its key and body: the entry itself, its place in the core's age
/// queue and in its stream's key index, their collections' spare capacity, its stream's share
/// and the allocator's rounding. Measured: 468 bytes of RSS per stored push with 64-byte
/// bodies shared by 500 users each (`bench/streams.sh`), so ~400 beyond key and body.
pub const ENTRY_OVERHEAD: usize = 400;

/// One stored push, as a replay sends it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub key: MessageKey,
    /// As the backend sent it, for reports.
    pub body: Bytes,
    /// As frames carry it (sealed when the biz encrypts bodies).
    pub wire_body: Bytes,
    stored_at: Instant,
}

/// A push for a shared store (Redis) to append; answered with a [`Stored`] under `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    pub id: u64,
    pub biz_id: u64,
    pub user_id: String,
    pub key: String,
    pub body: Bytes,
}

/// Where a shared store put a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub epoch: String,
    pub offset: u64,
    /// False when the key was already there: `offset` is the first copy's.
    pub fresh: bool,
}

/// A link's question to a shared store: the stream's state, and after `since` its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRead {
    pub conn: u64,
    pub biz_id: u64,
    pub user_id: String,
    pub since: Option<Since>,
}

/// A shared store's answer to a [`StreamRead`]: as [`Resume`], in owned values that can
/// cross threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    pub epoch: String,
    pub top: u64,
    pub replay: Option<Result<Vec<StoredEntry>, ResumeMiss>>,
    /// The user's stored room memberships: the store reads them in the same round trip.
    pub rooms: Vec<String>,
}

/// An entry as a shared store returns it: the body as the backend sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub offset: u64,
    pub key: String,
    pub body: Bytes,
}

impl Entry {
    pub fn new(
        offset: u64,
        key: MessageKey,
        body: Bytes,
        wire_body: Bytes,
        stored_at: Instant,
    ) -> Entry {
        Entry {
            offset,
            key,
            body,
            wire_body,
            stored_at,
        }
    }

    fn bytes(&self) -> usize {
        let sealed = if self.wire_body.as_ptr() == self.body.as_ptr() {
            0
        } else {
            self.wire_body.len()
        };
        ENTRY_OVERHEAD + self.key.len() + self.body.len() + sealed
    }
}

struct UserStream {
    epoch: Rc<str>,
    /// The offset of the newest entry ever appended in this epoch.
    top: u64,
    /// Retained entries, oldest first, with dense offsets ending at `top`.
    entries: VecDeque<Entry>,
    keys: FastMap<MessageKey, u64>,
}

impl UserStream {
    /// The offset of the oldest retained entry.
    fn first(&self) -> u64 {
        self.top + 1 - self.entries.len() as u64
    }
}

/// Where a push landed in its user's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub epoch: Rc<str>,
    pub offset: u64,
    /// False when the key was already in the stream: `offset` is the first copy's.
    pub fresh: bool,
}

/// Why a resume could not be served; counted per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeMiss {
    /// No stream, or another epoch: its history is gone.
    Epoch,
    /// Entries after the offset were trimmed or evicted (or the offset is past the top).
    TooOld,
    /// More entries than `resume_max` to replay.
    TooMany,
    /// The shared store did not answer.
    StoreDown,
}

/// A stream's state as a new link sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Empty when the user has no stream.
    pub epoch: Rc<str>,
    pub top: u64,
    /// `Some(Ok(entries))`: replay these, in order; `Some(Err(_))`: resume refused; `None`:
    /// the link did not ask.
    pub replay: Option<Result<Vec<Entry>, ResumeMiss>>,
}

impl Resume {
    pub fn recovered(&self) -> bool {
        matches!(self.replay, Some(Ok(_)))
    }

    /// A stream as a link has followed it, with nothing to replay.
    pub fn as_followed(seen: Option<&Followed>) -> Resume {
        Resume {
            epoch: seen.map_or_else(|| Rc::from(""), |s| s.epoch.clone()),
            top: seen.map_or(0, |s| s.upto),
            replay: None,
        }
    }

    /// Where a new link begins in the stream (`None`: no stream): after `since` when the
    /// replay follows, else at the top (the replay raises `upto` as it goes out).
    pub fn followed(&self) -> Option<Followed> {
        let from = match &self.replay {
            Some(Ok(entries)) => entries.first().map_or(self.top, |e| e.offset - 1),
            _ => self.top,
        };
        (!self.epoch.is_empty()).then(|| Followed {
            epoch: self.epoch.clone(),
            from,
            upto: from,
            older: Vec::new(),
        })
    }
}

/// One place in the core's age queue: entries leave in the order they came, for `ttl` and for
/// the byte budget.
struct Aged {
    biz_id: u64,
    user: Rc<str>,
    offset: u64,
    stored_at: Instant,
}

pub struct Streams {
    limits: StreamLimits,
    users: FastMap<u64, FastMap<Rc<str>, UserStream>>,
    /// Every entry ever appended and not yet dropped from here, oldest first. An entry trimmed
    /// by its stream's length stays here until it reaches the front (and is counted in
    /// `bytes` as bookkeeping until then).
    aged: VecDeque<Aged>,
    bytes: usize,
    rng: SmallRng,
    evicted: u64,
}

/// What an age-queue slot costs while its entry is gone (trimmed by length).
const AGED_BYTES: usize = 40;

impl Streams {
    pub fn new(limits: StreamLimits, rng: SmallRng) -> Streams {
        Streams {
            limits,
            users: FastMap::default(),
            aged: VecDeque::new(),
            bytes: 0,
            rng,
            evicted: 0,
        }
    }

    pub fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    /// Entries dropped for the byte budget before their time, since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Bytes held now, by the accounting of [`ENTRY_OVERHEAD`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a push to its user's stream, or finds the offset its key already has.
    pub fn append(
        &mut self,
        biz_id: u64,
        user: &str,
        key: &MessageKey,
        body: &Bytes,
        wire_body: &Bytes,
        now: Instant,
    ) -> Appended {
        self.expire(now);
        let users = self.users.entry(biz_id).or_default();
        let user: Rc<str> = match users.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => user.into(),
        };
        let rng = &mut self.rng;
        let stream = users.entry(user.clone()).or_insert_with(|| UserStream {
            epoch: new_epoch(rng),
            top: 0,
            entries: VecDeque::new(),
            keys: FastMap::default(),
        });
        if let Some(&offset) = stream.keys.get(key) {
            return Appended {
                epoch: stream.epoch.clone(),
                offset,
                fresh: false,
            };
        }
        stream.top += 1;
        let entry = Entry {
            offset: stream.top,
            key: key.clone(),
            body: body.clone(),
            wire_body: wire_body.clone(),
            stored_at: now,
        };
        self.bytes += entry.bytes();
        stream.keys.insert(key.clone(), entry.offset);
        stream.entries.push_back(entry);
        let appended = Appended {
            epoch: stream.epoch.clone(),
            offset: stream.top,
            fresh: true,
        };
        while stream.entries.len() > self.limits.max_len.max(1) {
            let old = stream.entries.pop_front().expect("over the limit");
            stream.keys.remove(&old.key);
            self.bytes -= old.bytes() - AGED_BYTES;
        }
        self.aged.push_back(Aged {
            biz_id,
            user,
            offset: appended.offset,
            stored_at: now,
        });
        while self.bytes > self.limits.max_bytes && self.aged.len() > 1 {
            if self.pop_oldest() {
                self.evicted += 1;
            }
        }
        appended
    }

    /// What a link opening for this user sees; with `since`, the entries to replay after it.
    pub fn resume(
        &mut self,
        biz_id: u64,
        user: &str,
        since: Option<&Since>,
        now: Instant,
    ) -> Resume {
        self.expire(now);
        let stream = self.users.get(&biz_id).and_then(|u| u.get(user));
        let (epoch, top) = stream.map_or((Rc::from(""), 0), |s| (s.epoch.clone(), s.top));
        let replay = since.map(|since| {
            let stream = stream
                .filter(|s| *s.epoch == *since.epoch)
                .ok_or(ResumeMiss::Epoch)?;
            if since.offset > stream.top || since.offset + 1 < stream.first() {
                return Err(ResumeMiss::TooOld);
            }
            if stream.top - since.offset > self.limits.resume_max {
                return Err(ResumeMiss::TooMany);
            }
            let skip = (since.offset + 1 - stream.first()) as usize;
            Ok(stream.entries.iter().skip(skip).cloned().collect())
        });
        Resume { epoch, top, replay }
    }

    /// Drops entries older than the ttl, the core's oldest first.
    fn expire(&mut self, now: Instant) {
        while self
            .aged
            .front()
            .is_some_and(|a| now.saturating_duration_since(a.stored_at) >= self.limits.ttl)
        {
            self.pop_oldest();
        }
    }

    /// Drops the core's oldest age-queue slot and its entry, if its stream still holds it.
    /// Returns whether an entry went (rather than only a slot left by a length trim).
    fn pop_oldest(&mut self) -> bool {
        let Some(a) = self.aged.pop_front() else {
            return false;
        };
        let Some(users) = self.users.get_mut(&a.biz_id) else {
            self.bytes -= AGED_BYTES;
            return false;
        };
        let Some(stream) = users.get_mut(&a.user) else {
            self.bytes -= AGED_BYTES;
            return false;
        };
        if stream.entries.front().is_none_or(|e| e.offset != a.offset) {
            self.bytes -= AGED_BYTES;
            return false;
        }
        let old = stream.entries.pop_front().expect("checked");
        stream.keys.remove(&old.key);
        self.bytes -= old.bytes();
        if stream.entries.is_empty() {
            users.remove(&a.user);
            if users.is_empty() {
                self.users.remove(&a.biz_id);
            }
        }
        true
    }
}

/// A fresh epoch: random, so a client can tell a stream rebuilt after a loss from the one it
/// knew. Hex, so it never holds the `:` of `EPOCH:OFFSET`.
fn new_epoch(rng: &mut SmallRng) -> Rc<str> {
    format!("{:016x}", rng.random::<u64>()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    fn limits() -> StreamLimits {
        StreamLimits {
            max_len: 4,
            ttl: 1000 * MS,
            resume_max: 3,
            max_bytes: 1 << 20,
        }
    }

    fn store(limits: StreamLimits) -> Streams {
        Streams::new(limits, SmallRng::seed_from_u64(7))
    }

    fn add(s: &mut Streams, user: &str, key: &str, now: Instant) -> Appended {
        let body = Bytes::from_static(b"body");
        s.append(1, user, &key.into(), &body, &body, now)
    }

    fn since(epoch: &str, offset: u64) -> Since {
        Since {
            epoch: epoch.into(),
            offset,
        }
    }

    fn offsets(r: &Resume) -> Vec<u64> {
        match &r.replay {
            Some(Ok(es)) => es.iter().map(|e| e.offset).collect(),
            other => panic!("not recovered: {other:?}"),
        }
    }

    #[test]
    fn offsets_are_dense_per_user_and_keys_keep_their_first_offset() {
        let t = Instant::now();
        let mut s = store(limits());
        let a = add(&mut s, "u", "k1", t);
        assert_eq!((a.offset, a.fresh), (1, true));
        assert_eq!(add(&mut s, "u", "k2", t).offset, 2);
        assert_eq!(
            add(&mut s, "v", "k1", t).offset,
            1,
            "another user, another stream"
        );
        let again = add(&mut s, "u", "k1", t);
        assert_eq!((again.offset, again.fresh), (1, false));
        assert_eq!(again.epoch, a.epoch);
        assert_eq!(add(&mut s, "u", "k3", t).offset, 3, "no offset is skipped");
        assert_ne!(s.resume(1, "v", None, t).epoch, a.epoch);
    }

    #[test]
    fn resume_replays_what_follows_the_offset_in_order() {
        let t = Instant::now();
        let mut s = store(limits());
        for k in ["a", "b", "c"] {
            add(&mut s, "u", k, t);
        }
        let epoch = s.resume(1, "u", None, t).epoch.to_string();
        let r = s.resume(1, "u", Some(&since(&epoch, 1)), t);
        assert_eq!((r.top, offsets(&r)), (3, vec![2, 3]));
        let keys: Vec<String> = match &r.replay {
            Some(Ok(es)) => es.iter().map(|e| e.key.to_string()).collect(),
            _ => unreachable!(),
        };
        assert_eq!(keys, ["b", "c"]);
        let at_top = s.resume(1, "u", Some(&since(&epoch, 3)), t);
        assert!(at_top.recovered() && offsets(&at_top).is_empty());
        let plain = s.resume(1, "u", None, t);
        assert_eq!((plain.top, plain.replay.is_none()), (3, true));
    }

    #[test]
    fn resume_refuses_another_epoch_a_trimmed_offset_and_too_many() {
        let t = Instant::now();
        let mut s = store(limits());
        for i in 0..6 {
            add(&mut s, "u", &format!("k{i}"), t);
        }
        let epoch = s.resume(1, "u", None, t).epoch.to_string();
        let miss = |s: &mut Streams, since: Since| s.resume(1, "u", Some(&since), t).replay;
        assert_eq!(
            miss(&mut s, since("other", 5)),
            Some(Err(ResumeMiss::Epoch))
        );
        // max_len 4 keeps 3..=6: after 1, offset 2 is gone.
        assert_eq!(
            miss(&mut s, since(&epoch, 1)),
            Some(Err(ResumeMiss::TooOld))
        );
        assert_eq!(
            miss(&mut s, since(&epoch, 7)),
            Some(Err(ResumeMiss::TooOld))
        );
        // 3..=6 is retained, but resume_max is 3.
        assert_eq!(
            miss(&mut s, since(&epoch, 2)),
            Some(Err(ResumeMiss::TooMany))
        );
        assert_eq!(
            offsets(&s.resume(1, "u", Some(&since(&epoch, 3)), t)),
            [4, 5, 6]
        );
        assert_eq!(
            miss(&mut s, since("", 0)),
            Some(Err(ResumeMiss::Epoch)),
            "a client that never saw a stream"
        );
        let none = s.resume(1, "nobody", Some(&since(&epoch, 0)), t);
        assert_eq!((&*none.epoch, none.top), ("", 0));
        assert!(!none.recovered());
    }

    #[test]
    fn a_key_trimmed_away_is_appended_again() {
        let t = Instant::now();
        let mut s = store(limits());
        for i in 0..5 {
            add(&mut s, "u", &format!("k{i}"), t);
        }
        let again = add(&mut s, "u", "k0", t);
        assert_eq!((again.offset, again.fresh), (6, true));
    }

    #[test]
    fn entries_age_out_and_the_emptied_stream_starts_a_new_epoch() {
        let t = Instant::now();
        let mut s = store(limits());
        let first = add(&mut s, "u", "a", t);
        add(&mut s, "u", "b", t + 500 * MS);
        let epoch = first.epoch.to_string();
        // At 1000 ms "a" is gone; "b" is not.
        let r = s.resume(1, "u", Some(&since(&epoch, 0)), t + 1000 * MS);
        assert_eq!(r.replay, Some(Err(ResumeMiss::TooOld)));
        assert_eq!(
            offsets(&s.resume(1, "u", Some(&since(&epoch, 1)), t + 1000 * MS)),
            [2]
        );
        // At 1500 ms the stream is empty and forgotten.
        let r = s.resume(1, "u", Some(&since(&epoch, 2)), t + 1500 * MS);
        assert_eq!(r.replay, Some(Err(ResumeMiss::Epoch)));
        assert_eq!(s.bytes(), 0);
        let next = add(&mut s, "u", "c", t + 1500 * MS);
        assert_eq!(next.offset, 1);
        assert_ne!(next.epoch, first.epoch);
    }

    #[test]
    fn the_byte_budget_evicts_the_cores_oldest_entries_and_counts_them() {
        let t = Instant::now();
        let per_entry = ENTRY_OVERHEAD + 2 + 4;
        let mut s = store(StreamLimits {
            max_bytes: 3 * per_entry,
            ..limits()
        });
        add(&mut s, "u", "k1", t);
        add(&mut s, "v", "k1", t + MS);
        add(&mut s, "u", "k2", t + 2 * MS);
        assert_eq!(s.evicted(), 0);
        add(&mut s, "w", "k1", t + 3 * MS);
        assert_eq!(s.evicted(), 1);
        assert!(s.bytes() <= 3 * per_entry);
        let u = s.resume(1, "u", None, t + 3 * MS);
        let r = s.resume(1, "u", Some(&since(&u.epoch, 0)), t + 3 * MS);
        assert_eq!(
            r.replay,
            Some(Err(ResumeMiss::TooOld)),
            "u's oldest went first"
        );
        assert_eq!(
            offsets(&s.resume(1, "u", Some(&since(&u.epoch, 1)), t)),
            [2]
        );
    }

    #[test]
    fn slots_left_by_length_trims_are_counted_until_they_leave() {
        let t = Instant::now();
        let mut s = store(StreamLimits {
            max_len: 1,
            ..limits()
        });
        add(&mut s, "u", "a", t);
        add(&mut s, "u", "b", t);
        let one = ENTRY_OVERHEAD + 1 + 4;
        assert_eq!(s.bytes(), one + AGED_BYTES);
        s.resume(1, "u", None, t + 1000 * MS);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn since_parses_epoch_and_offset() {
        assert_eq!(Since::parse("00ab:17"), Some(since("00ab", 17)));
        assert_eq!(Since::parse(":0"), Some(since("", 0)));
        assert_eq!(Since::parse("17"), None);
        assert_eq!(Since::parse("e:x"), None);
    }
}
