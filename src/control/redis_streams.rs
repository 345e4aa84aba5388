//! The users' streams in Redis, so a client resumes on any node of the fleet (DESIGN §2a).
//!
//! Two keys per user, hash-tagged by user so Redis Cluster keeps them on one slot:
//! `stream:{BIZ:USER}` is a hash (`epoch`, `top`, and `k:KEY` → offset for every retained key)
//! and `stream:{BIZ:USER}:log` a list of entries, oldest first, each `MS KEYLEN\nKEYBODY`. One
//! script appends a push in one round trip (the offset, the entry, the trims by length and
//! age, the expiry); another reads a stream's state and what follows an offset. A core's
//! appends and reads of one executor pass go out as one pipeline (`redis_script`).
//!
//! Both keys expire `--stream-ttl-ms` after the last append, so an idle stream leaves nothing
//! behind; a stream whose hash is gone is rebuilt under a new epoch (the caller's random
//! candidate), and a client holding the old one learns that its history was lost.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::prelude::*;

use super::breaker::Breaker;
use super::redis_bound::Redis;
use super::redis_script::{Call, Script};
use crate::core::stream::{
    ResumeMiss, Stored, StoredEntry, StreamAppend, StreamLimits, StreamRead, StreamState,
};

/// KEYS: hash, log. ARGV: now ms, ttl ms, max len, epoch candidate, key, body.
/// Returns {epoch, offset, fresh}.
const APPEND: &str = r#"
local h, log = KEYS[1], KEYS[2]
local now, ttl, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local epoch = redis.call('HGET', h, 'epoch')
if not epoch then
  redis.call('DEL', h, log)
  epoch = ARGV[4]
  redis.call('HSET', h, 'epoch', epoch, 'top', 0)
end
local known = redis.call('HGET', h, 'k:' .. ARGV[5])
if known then return {epoch, tonumber(known), 0} end
local top = redis.call('HINCRBY', h, 'top', 1)
redis.call('RPUSH', log, now .. ' ' .. #ARGV[5] .. '\n' .. ARGV[5] .. ARGV[6])
redis.call('HSET', h, 'k:' .. ARGV[5], top)
local len = redis.call('LLEN', log)
for _ = 1, 64 do
  local head = redis.call('LINDEX', log, 0)
  if not head then break end
  local ts, klen = string.match(head, '^(%d+) (%d+)\n')
  if len <= maxlen and tonumber(ts) > now - ttl then break end
  redis.call('LPOP', log)
  local at = #ts + #klen + 3
  redis.call('HDEL', h, 'k:' .. string.sub(head, at, at + tonumber(klen) - 1))
  len = len - 1
end
redis.call('PEXPIRE', h, ttl)
redis.call('PEXPIRE', log, ttl)
return {epoch, top, 1}
"#;

/// KEYS: hash, log, the user's room set. ARGV: now ms, ttl ms, resume max, '1' to resume,
/// epoch, offset, the room set's ttl ms. Returns {rooms} (no stream), {rooms, epoch, top},
/// {rooms, epoch, top, miss} or {rooms, epoch, top, 'ok', entries...}: the rooms come in the
/// same round trip, which a connect makes anyway.
const READ: &str = r#"
local h, log = KEYS[1], KEYS[2]
local rooms = redis.call('SMEMBERS', KEYS[3])
if #rooms > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[7]) end
local epoch = redis.call('HGET', h, 'epoch')
if not epoch then return {rooms} end
local top = tonumber(redis.call('HGET', h, 'top') or '0')
if ARGV[4] ~= '1' then return {rooms, epoch, top} end
if ARGV[5] ~= epoch then return {rooms, epoch, top, 'epoch'} end
local since = tonumber(ARGV[6])
if since > top then return {rooms, epoch, top, 'too_old'} end
if since == top then return {rooms, epoch, top, 'ok'} end
local first = top - redis.call('LLEN', log) + 1
if since + 1 < first then return {rooms, epoch, top, 'too_old'} end
if top - since > tonumber(ARGV[3]) then return {rooms, epoch, top, 'too_many'} end
local items = redis.call('LRANGE', log, since + 1 - first, -1)
local ts = tonumber(string.match(items[1], '^(%d+) '))
if ts <= tonumber(ARGV[1]) - tonumber(ARGV[2]) then return {rooms, epoch, top, 'too_old'} end
local out = {rooms, epoch, top, 'ok'}
for i, v in ipairs(items) do out[i + 4] = v end
return out
"#;

/// `stream:{BIZ:USER}` and its log.
pub fn keys(biz_id: u64, user_id: &str) -> (String, String) {
    let hash = format!("stream:{{{biz_id}:{user_id}}}");
    let log = format!("{hash}:log");
    (hash, log)
}

pub struct RedisStreams {
    redis: Redis,
    limits: StreamLimits,
    append: Script,
    read: Script,
    /// How long a user's room set lives after its last read.
    rooms_ttl: Duration,
    /// While Redis is down, appends and reads fail at once (pushes go out unstored, links open
    /// with no stream) instead of each waiting out the round trip's deadline; one probe a
    /// second finds it back.
    breaker: Mutex<Breaker>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn int(v: u64) -> Value {
    Value::Integer(v.min(i64::MAX as u64) as i64)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

impl RedisStreams {
    /// Shares the idempotency store's connection.
    pub fn new(redis: Redis, limits: StreamLimits, rooms_ttl: Duration) -> RedisStreams {
        RedisStreams {
            redis,
            limits,
            rooms_ttl,
            append: Script::new(APPEND),
            read: Script::new(READ),
            breaker: Mutex::new(Breaker::new(1, Duration::from_secs(1))),
        }
    }

    pub fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    /// Runs a pipeline unless the breaker is open; a pipeline that failed whole, or whose
    /// every call failed, opens it.
    async fn guarded(
        &self,
        run: impl Future<Output = Result<Vec<Result<Value, Error>>, Error>>,
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        if !self.breaker.lock().expect("breaker").allow(Instant::now()) {
            return Err(Error::new(
                ErrorKind::IO,
                "redis unreachable; retrying once a second",
            ));
        }
        let result = run.await;
        let failed = match &result {
            Ok(values) => !values.is_empty() && values.iter().all(Result::is_err),
            Err(_) => true,
        };
        let mut breaker = self.breaker.lock().expect("breaker");
        if failed {
            breaker.on_failure(Instant::now());
        } else {
            breaker.on_success();
        }
        result
    }

    /// Appends a batch in one pipeline, in order; each answer is the push's place, or the
    /// error that left it unstored.
    pub async fn append(
        &self,
        batch: &[StreamAppend],
    ) -> Result<Vec<Result<Stored, Error>>, Error> {
        let now = now_ms();
        let ttl = millis(self.limits.ttl);
        let max_len = self.limits.max_len as u64;
        let calls: Vec<Call> = batch
            .iter()
            .map(|a| {
                let (h, log) = keys(a.biz_id, &a.user_id);
                let epoch = format!("{:016x}", rand::random::<u64>());
                let args = vec![
                    int(now),
                    int(ttl),
                    int(max_len),
                    Value::from(epoch),
                    Value::from(a.key.as_str()),
                    Value::Bytes(a.body.clone()),
                ];
                (vec![h, log], args)
            })
            .collect();
        let values = self.guarded(self.append.run(&self.redis, &calls)).await?;
        Ok(values
            .into_iter()
            .map(|v| v.and_then(decode_stored))
            .collect())
    }

    /// Reads a batch of streams in one pipeline, in order.
    pub async fn read(
        &self,
        batch: &[StreamRead],
    ) -> Result<Vec<Result<StreamState, Error>>, Error> {
        let now = now_ms();
        let ttl = millis(self.limits.ttl);
        let calls: Vec<Call> = batch
            .iter()
            .map(|r| {
                let (h, log) = keys(r.biz_id, &r.user_id);
                let (resume, epoch, offset) = match &r.since {
                    Some(s) => ("1", s.epoch.clone(), s.offset),
                    None => ("0", String::new(), 0),
                };
                let args = vec![
                    int(now),
                    int(ttl),
                    int(self.limits.resume_max),
                    Value::from(resume),
                    Value::from(epoch),
                    int(offset),
                    int(millis(self.rooms_ttl)),
                ];
                let rooms = crate::control::redis_rooms::key(r.biz_id, &r.user_id);
                (vec![h, log, rooms], args)
            })
            .collect();
        let values = self.guarded(self.read.run(&self.redis, &calls)).await?;
        Ok(batch
            .iter()
            .zip(values)
            .map(|(r, v)| v.and_then(|v| decode_state(v, r.since.as_ref().map(|s| s.offset))))
            .collect())
    }
}

fn bad(what: &str) -> Error {
    Error::new(ErrorKind::Parse, format!("stream script answered {what}"))
}

fn decode_stored(v: Value) -> Result<Stored, Error> {
    let Value::Array(items) = v else {
        return Err(bad("a non-array"));
    };
    let [epoch, offset, fresh] =
        <[Value; 3]>::try_from(items).map_err(|_| bad("a wrong length"))?;
    Ok(Stored {
        epoch: epoch.convert()?,
        offset: offset.convert()?,
        fresh: fresh.convert::<i64>()? == 1,
    })
}

/// The read script's answer; `since` says which offset the first entry follows.
fn decode_state(v: Value, since: Option<u64>) -> Result<StreamState, Error> {
    let Value::Array(items) = v else {
        return Err(bad("a non-array"));
    };
    let mut items = items.into_iter();
    let rooms: Vec<String> = match items.next() {
        Some(Value::Array(rooms)) => rooms
            .into_iter()
            .map(|r| r.convert())
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("no room set")),
    };
    let (Some(epoch), Some(top)) = (items.next(), items.next()) else {
        return Ok(StreamState {
            epoch: String::new(),
            top: 0,
            replay: since.map(|_| Err(ResumeMiss::Epoch)),
            rooms,
        });
    };
    let epoch: String = epoch.convert()?;
    let top: u64 = top.convert()?;
    let replay = match items.next() {
        None => None,
        Some(status) => Some(match status.as_str().as_deref() {
            Some("ok") => {
                let first = since.ok_or_else(|| bad("entries to no resume"))? + 1;
                let mut entries = Vec::new();
                for (offset, raw) in (first..).zip(items) {
                    let raw: Bytes = raw.convert()?;
                    let (key, body) = decode_entry(&raw).ok_or_else(|| bad("a bad entry"))?;
                    entries.push(StoredEntry { offset, key, body });
                }
                Ok(entries)
            }
            Some("epoch") => Err(ResumeMiss::Epoch),
            Some("too_many") => Err(ResumeMiss::TooMany),
            _ => Err(ResumeMiss::TooOld),
        }),
    };
    Ok(StreamState {
        epoch,
        top,
        replay,
        rooms,
    })
}

/// `MS KEYLEN\nKEYBODY` → (key, body).
fn decode_entry(raw: &Bytes) -> Option<(String, Bytes)> {
    let nl = raw.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&raw[..nl]).ok()?;
    let (_, klen) = head.split_once(' ')?;
    let klen: usize = klen.parse().ok()?;
    let start = nl + 1;
    let key = std::str::from_utf8(raw.get(start..start + klen)?).ok()?;
    Some((key.to_owned(), raw.slice(start + klen..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn keys_are_hash_tagged_by_user() {
        assert_eq!(
            keys(7, "alice"),
            ("stream:{7:alice}".into(), "stream:{7:alice}:log".into())
        );
    }

    #[test]
    fn answers_decode() {
        let stored = Value::Array(vec![b("e1"), Value::Integer(4), Value::Integer(0)]);
        assert_eq!(
            decode_stored(stored).unwrap(),
            Stored {
                epoch: "e1".into(),
                offset: 4,
                fresh: false
            }
        );
        let rooms = || Value::Array(vec![b("lobby")]);
        let none = decode_state(Value::Array(vec![rooms()]), Some(3)).unwrap();
        assert_eq!((none.epoch.as_str(), none.top), ("", 0));
        assert_eq!(none.replay, Some(Err(ResumeMiss::Epoch)));
        assert_eq!(none.rooms, ["lobby"]);
        let plain = Value::Array(vec![Value::Array(vec![]), b("e"), Value::Integer(9)]);
        let plain = decode_state(plain, None).unwrap();
        assert_eq!((plain.top, plain.replay), (9, None));
        assert!(plain.rooms.is_empty());
        let miss = Value::Array(vec![rooms(), b("e"), Value::Integer(9), b("too_many")]);
        let miss = decode_state(miss, Some(1)).unwrap();
        assert_eq!(miss.replay, Some(Err(ResumeMiss::TooMany)));
        let ok = Value::Array(vec![
            rooms(),
            b("e"),
            Value::Integer(9),
            b("ok"),
            b("1700 2\nk8body\nwith newline"),
            b("1701 3\nk:9"),
        ]);
        let ok = decode_state(ok, Some(7)).unwrap();
        assert_eq!(
            ok.replay,
            Some(Ok(vec![
                StoredEntry {
                    offset: 8,
                    key: "k8".into(),
                    body: Bytes::from_static(b"body\nwith newline")
                },
                StoredEntry {
                    offset: 9,
                    key: "k:9".into(),
                    body: Bytes::new()
                },
            ]))
        );
    }
}
