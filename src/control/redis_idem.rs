//! The shared idempotency store in Redis.
//!
//! One command per claim, `SET idem:{biz}:{key} P<token> NX PX <pending ttl> GET`, answers all
//! three cases in one round trip: nil = the claim is ours (fresh), `P…` = pending elsewhere,
//! `D<reply>` = done (re-ack with the reply). A core's claims go out as one pipeline.
//!
//! A claim whose answer never came (timeout, connection lost) may still have been applied, or
//! may be applied later when the client replays its buffer. Left alone, such a ghost claim would
//! make every retry of the message a "pending duplicate" until the TTL ends. So each claim
//! carries a unique token, and after an unknown outcome a compare-and-delete removes the key if
//! it still holds our token; commands on one connection run in order, so it lands after any
//! ghost SET.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::LuaInterface;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use tracing::{info, warn};

use super::redis_bound::Redis;
use crate::auth::Identity;
use crate::core::shard::UpstreamRequest;
use crate::link::idem::{Claim, IdemTtl, IdemUpdate};

const PENDING: u8 = b'P';
const DONE: u8 = b'D';
/// Deletes KEYS[1] only if it still holds ARGV[1] (our claim token).
const RELEASE_IF_OURS: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub struct RedisIdem {
    redis: Redis,
    ttl: IdemTtl,
    /// Random per process, so tokens of different nodes never collide.
    nonce: u64,
    next_token: AtomicU64,
}

/// `idem:{BIZ:USER}:KEY`: scoped to the sender, and hash-tagged by user so Redis Cluster keeps
/// one user's keys on one slot.
fn key(who: &Identity, key: &str) -> String {
    format!("idem:{{{}:{}}}:{key}", who.biz_id, who.user_id)
}

fn millis(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// A `--redis` URL as the client reads it (standalone, sentinel or cluster).
pub fn parse_url(url: &str) -> Result<Config, String> {
    Config::from_url(url).map_err(|e| format!("--redis {url}: {e}"))
}

impl RedisIdem {
    /// Connects in the background: a Redis that is down at start is retried forever, and
    /// commands meanwhile fail within `timeout` (the node's store-down policy applies).
    pub async fn connect(url: &str, ttl: IdemTtl, timeout: Duration) -> Result<RedisIdem, String> {
        let config = parse_url(url)?;
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2000, 2))
            .build()
            .map_err(|e| format!("redis client: {e}"))?;
        client.connect();
        match tokio::time::timeout(timeout * 4, client.wait_for_connect()).await {
            Ok(Ok(())) => info!(url, "connected to redis"),
            _ => warn!(url, "redis not reachable yet; retrying in the background"),
        }
        let nonce =
            rand::Rng::random(&mut <rand::rngs::SmallRng as rand::SeedableRng>::from_os_rng());
        Ok(RedisIdem {
            redis: Redis::new(client, timeout),
            ttl,
            nonce,
            next_token: AtomicU64::new(0),
        })
    }

    /// The connection, shared with streams, rooms and the location registry.
    pub fn redis(&self) -> Redis {
        self.redis.clone()
    }

    pub async fn claim(&self, reqs: &[UpstreamRequest]) -> Result<Vec<Claim>, Error> {
        let claims: Vec<(String, Vec<u8>)> = reqs
            .iter()
            .map(|r| {
                let n = self.next_token.fetch_add(1, Relaxed);
                let token = format!("{}{:016x}{n:016x}", PENDING as char, self.nonce);
                (key(&r.who, &r.key), token.into_bytes())
            })
            .collect();
        let result = self.redis.call(self.try_claim(&claims)).await;
        if result.is_err() {
            tokio::spawn(release_if_ours(
                self.redis.clone(),
                claims,
                self.ttl.pending,
            ));
        }
        result
    }

    async fn try_claim(&self, claims: &[(String, Vec<u8>)]) -> Result<Vec<Claim>, Error> {
        let pipe = self.redis.client().pipeline();
        let px = Some(Expiration::PX(millis(self.ttl.pending)));
        for (k, token) in claims {
            let _: () = pipe
                .set(
                    k.as_str(),
                    token.as_slice(),
                    px.clone(),
                    Some(SetOptions::NX),
                    true,
                )
                .await?;
        }
        let values: Vec<Value> = pipe.try_all().await.into_iter().collect::<Result<_, _>>()?;
        Ok(values.into_iter().map(decode_claim).collect())
    }

    pub async fn update(&self, updates: Vec<IdemUpdate>) -> Result<(), Error> {
        self.redis.call(self.try_update(updates)).await
    }

    async fn try_update(&self, updates: Vec<IdemUpdate>) -> Result<(), Error> {
        let pipe = self.redis.client().pipeline();
        for u in updates {
            match u {
                IdemUpdate::Complete { who, key: k, reply } => {
                    let mut v = Vec::with_capacity(1 + reply.len());
                    v.push(DONE);
                    v.extend_from_slice(&reply);
                    let px = Some(Expiration::PX(millis(self.ttl.done)));
                    let _: () = pipe.set(key(&who, &k), v, px, None, false).await?;
                }
                IdemUpdate::Release { who, key: k } => {
                    let _: () = pipe.del(key(&who, &k)).await?;
                }
            }
        }
        pipe.try_all::<Value>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }
}

/// Undoes claims whose outcome is unknown, retrying until Redis answers; after the pending TTL
/// there is nothing left to undo.
async fn release_if_ours(redis: Redis, claims: Vec<(String, Vec<u8>)>, ttl: Duration) {
    let give_up = Instant::now() + ttl;
    let mut wait = Duration::from_millis(50);
    let mut left = claims;
    while Instant::now() < give_up {
        let mut failed = Vec::new();
        for (k, token) in left {
            let release = redis
                .client()
                .eval(RELEASE_IF_OURS, k.as_str(), token.as_slice());
            let r: Result<Value, Error> = redis.call(release).await;
            if r.is_err() {
                failed.push((k, token));
            }
        }
        if failed.is_empty() {
            return;
        }
        left = failed;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
    warn!(
        claims = left.len(),
        "could not undo claims of unknown outcome before their TTL"
    );
}

fn decode_claim(v: Value) -> Claim {
    let bytes: Option<Bytes> = match v {
        Value::Null => None,
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        // Anything else under our key was not written by ringway: treat it as taken.
        _ => return Claim::Pending,
    };
    match bytes {
        None => Claim::Fresh,
        Some(b) if b.first() == Some(&DONE) => Claim::Done(b.slice(1..)),
        Some(_) => Claim::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_and_hash_tagged_by_user() {
        let who = Identity {
            biz_id: 7,
            user_id: "alice".into(),
            device_id: "phone".into(),
        };
        assert_eq!(key(&who, "m1"), "idem:{7:alice}:m1");
    }

    #[test]
    fn claim_answers_decode() {
        assert_eq!(decode_claim(Value::Null), Claim::Fresh);
        assert_eq!(
            decode_claim(Value::Bytes(Bytes::from_static(b"P"))),
            Claim::Pending
        );
        assert_eq!(
            decode_claim(Value::Bytes(Bytes::from_static(b"Dreply"))),
            Claim::Done(Bytes::from_static(b"reply"))
        );
        assert_eq!(
            decode_claim(Value::Bytes(Bytes::from_static(b"D"))),
            Claim::Done(Bytes::new())
        );
        assert_eq!(decode_claim(Value::Integer(1)), Claim::Pending);
    }
}
