//! A Lua script run over many key sets as one pipeline, on a single Redis or a cluster.
//!
//! fred's pipelines carry no EVALSHA, so the command goes as a custom one routed to its first
//! key's slot (computed here: a cluster sends each call to that slot's primary at once, with
//! no MOVED round trip, which the store clients' single attempt would not survive). Every key
//! of one call must share the slot. A Redis that does not know the script yet (a restart, a new
//! primary) answers NOSCRIPT: the script is loaded on every primary and the batch sent again,
//! so scripts run this way must be safe to repeat.

use fred::interfaces::LuaInterface;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use fred::util::redis_keyslot;

use super::redis_bound::Redis;

pub struct Script {
    lua: &'static str,
    sha: String,
}

/// One call: its keys (one slot) and its arguments.
pub type Call = (Vec<String>, Vec<Value>);

impl Script {
    pub fn new(lua: &'static str) -> Script {
        Script {
            lua,
            sha: fred::util::sha1_hash(lua),
        }
    }

    /// Runs every call in one pipeline; each answer in order, or the error that call got.
    /// The whole run, a reload after NOSCRIPT included, is bounded as one call.
    pub async fn run(
        &self,
        redis: &Redis,
        calls: &[Call],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        redis.call(self.try_run(redis.client(), calls)).await
    }

    async fn try_run(
        &self,
        client: &Client,
        calls: &[Call],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        for attempt in 0..2 {
            let pipe = client.pipeline();
            for (keys, args) in calls {
                // EVALSHA sha numkeys key... args...
                let slot = keys.first().map(|k| redis_keyslot(k.as_bytes()));
                let cmd = CustomCommand::new_static("EVALSHA", ClusterHash::from(slot), false);
                let mut line = Vec::with_capacity(2 + keys.len() + args.len());
                line.push(Value::from(self.sha.as_str()));
                line.push(Value::Integer(keys.len() as i64));
                line.extend(keys.iter().map(|k| Value::from(k.as_str())));
                line.extend(args.iter().cloned());
                let _: () = pipe.custom(cmd, line).await?;
            }
            let values = pipe.try_all::<Value>().await;
            let unknown = values.iter().any(|v| {
                v.as_ref()
                    .is_err_and(|e| e.details().starts_with("NOSCRIPT"))
            });
            if !unknown || attempt == 1 {
                return Ok(values);
            }
            let _: Value = client.script_load_cluster(self.lua).await?;
        }
        unreachable!("the second attempt returns")
    }
}
