//! Room membership kept in Redis (DESIGN §4a), so a user's later connects on any node are in
//! the rooms the backend joined it to: `rooms:{BIZ:USER}` is a set of room names, hash-tagged
//! like the user's stream keys. The stream read every connect makes on a shared store returns
//! the set in the same round trip (see [`super::redis_streams`]); this module writes it.
//!
//! The set lives `--room-membership-ttl-ms` after the user's last connect or change, so the
//! rooms of users who left the platform do not stay in Redis for ever.

use std::time::Duration;

use fred::prelude::*;

use crate::control::redis_bound::Redis;
use crate::control::redis_script::Script;

/// KEYS: the set. ARGV: max rooms, ttl ms, '1' to join, rooms... Joins all or none: returns
/// {members now, 1} or, when the new ones would pass the limit, {members, 0} with nothing
/// changed.
const CHANGE: &str = r#"
local set = KEYS[1]
local max, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[3] ~= '1' then
  for i = 4, #ARGV do redis.call('SREM', set, ARGV[i]) end
  return {redis.call('SCARD', set), 1}
end
local have, new = redis.call('SCARD', set), 0
for i = 4, #ARGV do
  if redis.call('SISMEMBER', set, ARGV[i]) == 0 then new = new + 1 end
end
if have + new > max then return {have, 0} end
for i = 4, #ARGV do redis.call('SADD', set, ARGV[i]) end
redis.call('PEXPIRE', set, ttl)
return {have + new, 1}
"#;

/// `rooms:{BIZ:USER}`.
pub fn key(biz_id: u64, user_id: &str) -> String {
    format!("rooms:{{{biz_id}:{user_id}}}")
}

/// A join the stored set refused: the user is in `have` rooms, and the new ones would pass
/// `--max-rooms-per-user`.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub have: usize,
}

pub struct RedisRooms {
    redis: Redis,
    change: Script,
    max: usize,
    ttl: Duration,
}

impl RedisRooms {
    pub fn new(redis: Redis, max: usize, ttl: Duration) -> RedisRooms {
        RedisRooms {
            redis,
            change: Script::new(CHANGE),
            max,
            ttl,
        }
    }

    /// Joins (all of `rooms` or, past the limit, none) or leaves; the user's room count after.
    pub async fn change(
        &self,
        biz_id: u64,
        user_id: &str,
        rooms: &[String],
        join: bool,
    ) -> Result<Result<usize, Refused>, Error> {
        let mut args = vec![
            Value::Integer(self.max as i64),
            Value::Integer(self.ttl.as_millis().max(1) as i64),
            Value::from(if join { "1" } else { "0" }),
        ];
        args.extend(rooms.iter().map(|r| Value::from(r.as_str())));
        let call = (vec![key(biz_id, user_id)], args);
        let answer = self
            .change
            .run(&self.redis, &[call])
            .await?
            .pop()
            .expect("one call, one answer")?;
        let (count, applied): (i64, i64) = answer.convert()?;
        let have = count.max(0) as usize;
        Ok(match applied {
            1 => Ok(have),
            _ => Err(Refused { have }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_shares_the_users_slot() {
        assert_eq!(key(7, "alice"), "rooms:{7:alice}");
        assert_eq!(
            fred::util::redis_keyslot(key(7, "alice").as_bytes()),
            fred::util::redis_keyslot(super::super::redis_streams::keys(7, "alice").0.as_bytes())
        );
    }
}
