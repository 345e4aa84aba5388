//! Where users are connected, in Redis: `loc:{BIZ:USER}` is a hash of device → node id (the
//! braces are a Redis Cluster hash tag: one user's keys share a slot).
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
use crate::auth::Identity;
use crate::control::Hub;
use crate::control::redis_script::{Call, Script};

/// For each KEYS[i], deletes field ARGV[i] only if it holds the last ARGV (this node).
const FORGET_IF_MINE: &str = "local me = ARGV[#ARGV] \
    for i, k in ipairs(KEYS) do \
      if redis.call('HGET', k, ARGV[i]) == me then redis.call('HDEL', k, ARGV[i]) end \
    end \
    return 0";

/// Refresh writes per pipeline.
const REFRESH_CHUNK: usize = 512;

pub fn key(biz_id: u64, user_id: &str) -> String {
    format!("loc:{{{biz_id}:{user_id}}}")
}

type Device = (u64, String, String);

pub struct Locations {
    client: Client,
    forget: Script,
    node_id: String,
    ttl: Duration,
    updates: mpsc::UnboundedSender<Vec<(Arc<Identity>, bool)>>,
}

impl Locations {
    /// Starts the writer task; must run inside the control runtime.
    pub fn start(client: Client, node: Arc<Hub>, ttl: Duration) -> Arc<Locations> {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Locations {
            client,
            forget: Script::new(FORGET_IF_MINE),
            node_id: node.node_id.clone(),
            ttl,
            updates: tx,
        });
        tokio::spawn(me.clone().write_loop(rx, node));
        me
    }

    /// Devices that came online (true) or went offline on this node, in the cores' order.
    pub fn record(&self, events: Vec<(Arc<Identity>, bool)>) {
        let _ = self.updates.send(events);
    }

    /// The devices of each user and the nodes holding them.
    pub async fn lookup(
        &self,
        biz_id: u64,
        users: &[String],
    ) -> Result<Vec<FastMap<String, String>>, Error> {
        let pipe = self.client.pipeline();
        for u in users {
            let _: () = pipe.hgetall(key(biz_id, u)).await?;
        }
        pipe.try_all::<FastMap<String, String>>()
            .await
            .into_iter()
            .collect()
    }

    async fn write_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Vec<(Arc<Identity>, bool)>>,
        node: Arc<Hub>,
    ) {
        let counters = &node.counters;
        let mut here: FastMap<Device, u32> = FastMap::default();
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.tick().await;
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(mut batch) = batch else { return };
                    // What the cores reported while the last write was out goes in this one.
                    while let Ok(more) = rx.try_recv() {
                        batch.extend(more);
                    }
                    let (online, offline) = apply(&mut here, batch);
                    if let Err(e) = self.write(&online, &offline).await {
                        counters.location_errors.inc();
                        warn!(error = %e, "location update failed; the refresh or the TTL repairs it");
                    }
                }
                _ = refresh.tick() => {
                    let all: Vec<Device> = here.keys().cloned().collect();
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

    async fn write(&self, online: &[Device], offline: &[Device]) -> Result<(), Error> {
        if online.is_empty() && offline.is_empty() {
            return Ok(());
        }
        let ttl_ms = self.ttl.as_millis().max(1) as i64;
        if !online.is_empty() {
            let pipe = self.client.pipeline();
            for (biz, user, device) in online {
                let k = key(*biz, user);
                let _: () = pipe
                    .hset(&k, (device.as_str(), self.node_id.as_str()))
                    .await?;
                let _: () = pipe.pexpire(&k, ttl_ms, None).await?;
            }
            pipe.try_all::<Value>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
        }
        for chunk in offline.chunks(REFRESH_CHUNK) {
            let calls = by_slot(chunk, &self.node_id);
            for answer in self.forget.run(&self.client, &calls).await? {
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

/// Counts links per device and returns the devices that just came online and those whose last
/// link here just closed. A device may briefly hold two links (a re-login kicks the old one).
fn apply(
    here: &mut FastMap<Device, u32>,
    batch: Vec<(Arc<Identity>, bool)>,
) -> (Vec<Device>, Vec<Device>) {
    let (mut online, mut offline) = (Vec::new(), Vec::new());
    for (who, up) in batch {
        let d = (who.biz_id, who.user_id.clone(), who.device_id.clone());
        if up {
            let n = here.entry(d.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                offline.retain(|o| *o != d);
                online.push(d);
            }
        } else if let Some(n) = here.get_mut(&d) {
            *n -= 1;
            if *n == 0 {
                here.remove(&d);
                online.retain(|o| *o != d);
                offline.push(d);
            }
        }
    }
    (online, offline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, device: &str) -> Arc<Identity> {
        Arc::new(Identity {
            biz_id: 1,
            user_id: user.into(),
            device_id: device.into(),
        })
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
            assert_eq!(args.len(), keys.len() + 1);
            assert_eq!(args.last(), Some(&Value::from("gw-1")));
        }
    }

    #[test]
    fn first_link_writes_last_link_forgets_and_relogin_overlap_is_one_device() {
        let mut here = FastMap::default();
        let (on, off) = apply(
            &mut here,
            vec![(who("a", "p"), true), (who("b", "p"), true)],
        );
        assert_eq!((on, off), (vec![dev("a", "p"), dev("b", "p")], vec![]));
        // Re-login: the new link opens before the old one closes; nothing changes in Redis.
        let (on, off) = apply(&mut here, vec![(who("a", "p"), true)]);
        assert!(on.is_empty() && off.is_empty());
        let (on, off) = apply(&mut here, vec![(who("a", "p"), false)]);
        assert!(on.is_empty() && off.is_empty());
        let (on, off) = apply(
            &mut here,
            vec![(who("a", "p"), false), (who("b", "p"), false)],
        );
        assert_eq!((on, off), (vec![], vec![dev("a", "p"), dev("b", "p")]));
        assert!(here.is_empty());
    }

    #[test]
    fn a_flap_within_one_batch_writes_only_the_final_state() {
        let mut here = FastMap::default();
        let (on, off) = apply(
            &mut here,
            vec![(who("a", "p"), true), (who("a", "p"), false)],
        );
        assert_eq!((on, off), (vec![], vec![dev("a", "p")]));
        let (on, off) = apply(&mut here, vec![(who("a", "p"), true)]);
        assert_eq!((on, off), (vec![dev("a", "p")], vec![]));
        // An offline for a device never seen (opened before a restart) changes nothing.
        let (on, off) = apply(&mut here, vec![(who("z", "p"), false)]);
        assert!(on.is_empty() && off.is_empty());
    }
}
