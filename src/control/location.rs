//! Where users are connected, in Redis: `loc:{BIZ:USER}` is a hash of device → node id (the
//! braces are a Redis Cluster hash tag: one user's keys share a slot), which push routing
//! reads, and `pres:{BIZ:USER}` the same devices' "transport since_ms node", which presence
//! queries read. Both are written and forgotten together.
//!
//! Each node writes its own devices as they come online (HSET + PEXPIRE), refreshes them at a
//! third of the TTL, and removes a device when its last link here closes, but only if the
//! field still names this node: a device that reconnected elsewhere first keeps its new
//! location. The TTL cleans up after a node that died without removing anything. Updates are
//! applied by one task in the order the cores reported them, so an online and the offline that
//! follows it can never land reversed; those reported while a write is out share the next.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use fred::prelude::*;
use fred::util::redis_keyslot;
use tokio::sync::mpsc;
use tracing::warn;

use crate::FastMap;
use crate::control::Hub;
use crate::control::redis_bound::Redis;
use crate::control::redis_script::{Call, Script};
use crate::core::shard::DeviceEvent;

/// KEYS are (loc, pres) pairs; for pair j, deletes device ARGV[j] from both only if its
/// location holds the last ARGV (this node).
const FORGET_IF_MINE: &str = "local me = ARGV[#ARGV] \
    for i = 1, #KEYS, 2 do \
      local d = ARGV[(i + 1) / 2] \
      if redis.call('HGET', KEYS[i], d) == me then \
        redis.call('HDEL', KEYS[i], d) \
        redis.call('HDEL', KEYS[i + 1], d) \
      end \
    end \
    return 0";

/// Refresh writes per pipeline.
const REFRESH_CHUNK: usize = 512;

pub fn key(biz_id: u64, user_id: &str) -> String {
    format!("loc:{{{biz_id}:{user_id}}}")
}

fn presence_key(biz_id: u64, user_id: &str) -> String {
    format!("pres:{{{biz_id}:{user_id}}}")
}

type Device = (u64, String, String);

/// A device online here: its links, and what presence says of it ("transport since_ms node").
struct Here {
    links: u32,
    detail: String,
}

/// One device of a user, as a presence query answers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Present {
    pub device_id: String,
    pub node: String,
    pub transport: String,
    pub since_ms: u64,
}

pub struct Locations {
    redis: Redis,
    forget: Script,
    node_id: String,
    ttl: Duration,
    updates: mpsc::UnboundedSender<(Vec<DeviceEvent>, u64)>,
}

impl Locations {
    /// Starts the writer task; must run inside the control runtime.
    pub fn start(redis: Redis, node: Arc<Hub>, ttl: Duration) -> Arc<Locations> {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Locations {
            redis,
            forget: Script::new(FORGET_IF_MINE),
            node_id: node.node_id.clone(),
            ttl,
            updates: tx,
        });
        tokio::spawn(me.clone().write_loop(rx, node));
        me
    }

    /// Devices that came online or went offline on this node at `at_ms`, in the cores' order.
    pub fn record(&self, events: Vec<DeviceEvent>, at_ms: u64) {
        let _ = self.updates.send((events, at_ms));
    }

    /// The user's devices, on every node.
    pub async fn presence(&self, biz_id: u64, user_id: &str) -> Result<Vec<Present>, Error> {
        let all: FastMap<String, String> = self
            .redis
            .call(self.redis.client().hgetall(presence_key(biz_id, user_id)))
            .await?;
        let mut devices: Vec<Present> = all
            .into_iter()
            .filter_map(|(device_id, detail)| {
                let (transport, rest) = detail.split_once(' ')?;
                let (since, node) = rest.split_once(' ')?;
                Some(Present {
                    device_id,
                    node: node.to_owned(),
                    transport: transport.to_owned(),
                    since_ms: since.parse().ok()?,
                })
            })
            .collect();
        devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(devices)
    }

    /// The devices of each (biz, user) and the nodes holding them, in one round trip.
    pub async fn lookup(
        &self,
        users: &[(u64, &str)],
    ) -> Result<Vec<FastMap<String, String>>, Error> {
        let pipe = self.redis.client().pipeline();
        for &(biz_id, u) in users {
            let _: () = pipe.hgetall(key(biz_id, u)).await?;
        }
        let answers = self.redis.call(async { Ok(pipe.try_all().await) });
        answers.await?.into_iter().collect()
    }

    async fn write_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(Vec<DeviceEvent>, u64)>,
        node: Arc<Hub>,
    ) {
        let counters = &node.counters;
        let mut here: FastMap<Device, Here> = FastMap::default();
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.tick().await;
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(first) = batch else { return };
                    // What the cores reported while the last write was out goes in this one.
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let (online, offline) = apply(&mut here, batch, &self.node_id);
                    if let Err(e) = self.write(&online, &offline).await {
                        counters.location_errors.inc();
                        warn!(error = %e, "location update failed; the refresh or the TTL repairs it");
                    }
                }
                _ = refresh.tick() => {
                    let all: Vec<Online> =
                        here.iter().map(|(d, h)| (d.clone(), h.detail.clone())).collect();
                    for chunk in all.chunks(REFRESH_CHUNK) {
                        if let Err(e) = self.write(chunk, &[]).await {
                            counters.location_errors.inc();
                            warn!(error = %e, "location refresh failed");
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn write(&self, online: &[Online], offline: &[Device]) -> Result<(), Error> {
        if online.is_empty() && offline.is_empty() {
            return Ok(());
        }
        let ttl_ms = self.ttl.as_millis().max(1) as i64;
        if !online.is_empty() {
            let pipe = self.redis.client().pipeline();
            for ((biz, user, device), detail) in online {
                let (k, p) = (key(*biz, user), presence_key(*biz, user));
                let _: () = pipe
                    .hset(&k, (device.as_str(), self.node_id.as_str()))
                    .await?;
                let _: () = pipe.pexpire(&k, ttl_ms, None).await?;
                let _: () = pipe.hset(&p, (device.as_str(), detail.as_str())).await?;
                let _: () = pipe.pexpire(&p, ttl_ms, None).await?;
            }
            let answers = self.redis.call(async { Ok(pipe.try_all::<Value>().await) });
            answers.await?.into_iter().collect::<Result<Vec<_>, _>>()?;
        }
        for chunk in offline.chunks(REFRESH_CHUNK) {
            let calls = by_slot(chunk, &self.node_id);
            for answer in self.forget.run(&self.redis, &calls).await? {
                answer?;
            }
        }
        Ok(())
    }
}

/// One FORGET_IF_MINE call per hash slot: a script's keys must share a slot in a cluster.
fn by_slot(devices: &[Device], node_id: &str) -> Vec<Call> {
    let mut slots: BTreeMap<u16, (Vec<String>, Vec<Value>)> = BTreeMap::new();
    for (b, u, d) in devices {
        let k = key(*b, u);
        let (keys, args) = slots.entry(redis_keyslot(k.as_bytes())).or_default();
        keys.push(k);
        keys.push(presence_key(*b, u));
        args.push(Value::from(d.as_str()));
    }
    slots
        .into_values()
        .map(|(keys, mut args)| {
            args.push(Value::from(node_id));
            (keys, args)
        })
        .collect()
}

/// A device to write as online, with its presence detail.
type Online = (Device, String);

/// Counts links per device and returns the devices that just came online and those whose last
/// link here just closed. A device may briefly hold two links (a re-login kicks the old one);
/// presence shows its first.
fn apply(
    here: &mut FastMap<Device, Here>,
    batches: Vec<(Vec<DeviceEvent>, u64)>,
    node_id: &str,
) -> (Vec<Online>, Vec<Device>) {
    let (mut online, mut offline): (Vec<Online>, Vec<Device>) = (Vec::new(), Vec::new());
    for (events, at_ms) in batches {
        for e in events {
            let who = &e.who;
            let d = (
                who.biz_id,
                who.user_id.to_string(),
                who.device_id.to_string(),
            );
            if e.online {
                let h = here.entry(d.clone()).or_insert_with(|| Here {
                    links: 0,
                    detail: format!("{} {at_ms} {node_id}", e.transport),
                });
                h.links += 1;
                if h.links == 1 {
                    offline.retain(|o| *o != d);
                    online.push((d, h.detail.clone()));
                }
            } else if let Some(h) = here.get_mut(&d) {
                h.links -= 1;
                if h.links == 0 {
                    here.remove(&d);
                    online.retain(|(o, _)| *o != d);
                    offline.push(d);
                }
            }
        }
    }
    (online, offline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;

    fn ev(user: &str, device: &str, online: bool) -> DeviceEvent {
        DeviceEvent {
            who: Arc::new(Identity {
                biz_id: 1,
                user_id: user.into(),
                device_id: device.into(),
            }),
            online,
            transport: "ws",
        }
    }

    /// One batch reported at 5 ms, applied on node gw.
    fn apply1(
        here: &mut FastMap<Device, Here>,
        events: Vec<DeviceEvent>,
    ) -> (Vec<Device>, Vec<Device>) {
        let (on, off) = apply(here, vec![(events, 5)], "gw");
        for (_, detail) in &on {
            assert_eq!(detail, "ws 5 gw");
        }
        (on.into_iter().map(|(d, _)| d).collect(), off)
    }

    fn dev(user: &str, device: &str) -> Device {
        (1, user.into(), device.into())
    }

    #[test]
    fn keys_are_hash_tagged_by_user() {
        assert_eq!(key(7, "alice"), "loc:{7:alice}");
    }

    #[test]
    fn forgets_go_one_call_per_slot_each_with_this_node_last() {
        let devices = [dev("a", "p"), dev("a", "t"), dev("b", "p")];
        let calls = by_slot(&devices, "gw-1");
        assert_eq!(calls.len(), 2, "a's two devices share a's slot");
        for (keys, args) in &calls {
            let slot = redis_keyslot(keys[0].as_bytes());
            assert!(keys.iter().all(|k| redis_keyslot(k.as_bytes()) == slot));
            assert_eq!(
                args.len(),
                keys.len() / 2 + 1,
                "a location and presence per device"
            );
            assert_eq!(args.last(), Some(&Value::from("gw-1")));
        }
    }

    #[test]
    fn first_link_writes_last_link_forgets_and_relogin_overlap_is_one_device() {
        let mut here = FastMap::default();
        let (on, off) = apply1(&mut here, vec![ev("a", "p", true), ev("b", "p", true)]);
        assert_eq!((on, off), (vec![dev("a", "p"), dev("b", "p")], vec![]));
        // Re-login: the new link opens before the old one closes; nothing changes in Redis.
        let (on, off) = apply1(&mut here, vec![ev("a", "p", true)]);
        assert!(on.is_empty() && off.is_empty());
        let (on, off) = apply1(&mut here, vec![ev("a", "p", false)]);
        assert!(on.is_empty() && off.is_empty());
        let (on, off) = apply1(&mut here, vec![ev("a", "p", false), ev("b", "p", false)]);
        assert_eq!((on, off), (vec![], vec![dev("a", "p"), dev("b", "p")]));
        assert!(here.is_empty());
    }

    #[test]
    fn a_flap_within_one_batch_writes_only_the_final_state() {
        let mut here = FastMap::default();
        let (on, off) = apply1(&mut here, vec![ev("a", "p", true), ev("a", "p", false)]);
        assert_eq!((on, off), (vec![], vec![dev("a", "p")]));
        let (on, off) = apply1(&mut here, vec![ev("a", "p", true)]);
        assert_eq!((on, off), (vec![dev("a", "p")], vec![]));
        // An offline for a device never seen (opened before a restart) changes nothing.
        let (on, off) = apply1(&mut here, vec![ev("z", "p", false)]);
        assert!(on.is_empty() && off.is_empty());
    }
}
