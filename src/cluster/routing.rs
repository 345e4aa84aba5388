//! Which node delivers a push.
//!
//! - `Local` (one node): hand the push to this node's cores; users with no link are reported.
//! - `Located`: the push topic is shared by the fleet's consumer group, so each push is read by
//!   one node. It looks the receivers up in the location registry, hands its own users to its
//!   cores, forwards the others to the holding node's own topic, and hands users with no live
//!   location to its own cores too, which store the push in their streams and report it
//!   offline. Cost: a Redis round trip per batch of pushes read together (see
//!   `kafka::consume`) and a second Kafka hop for users held elsewhere; every push is read once.
//! - `Broadcast`: every node reads every push (a consumer group per node) and delivers to the
//!   links it holds. No lookups, but each node reads the whole stream; fine for small fleets.
//!   Users held nowhere are stored and reported by one node only (the lowest live id), which
//!   checks the location registry first; without Redis they are counted, not reported.
//!
//! The caller commits the push's offset only once it is settled: forwarded with the broker's
//! confirmation, reported, and acked or reported by every core it was handed to (`Unsettled`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::FastMap;
use crate::control::kafka::{KafkaOut, Membership};
use crate::control::location::Locations;
use crate::control::{Hub, router};
use crate::core::inbox::PushJob;
use crate::core::shard::Undelivered;
use crate::link::push::Unsettled;
use crate::metrics::UndeliveredReason;
use crate::proto::PushMessage;

/// How pushes from Kafka find the node holding their user (`--push-routing`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushRouting {
    /// One consumer group for the fleet, a location lookup per batch, a forward to the
    /// holding node's topic.
    Located,
    /// Every node reads every push.
    Broadcast,
}

pub enum Mode {
    Local,
    Located(Arc<Locations>),
    Broadcast(Option<Arc<Locations>>),
}

pub struct PushRouter {
    pub node: Arc<Hub>,
    pub kafka: Arc<KafkaOut>,
    pub mode: Mode,
}

/// A push taken apart for routing: the push, its distinct receivers, its settle token.
type Taken = (PushMessage, Vec<String>, Arc<Unsettled>);

impl PushRouter {
    /// Routes pushes in their order. In located routing (and for broadcast's report of users
    /// held nowhere) the receivers of the whole batch are looked up in one Redis round trip,
    /// and the forwards to other nodes' topics are all queued before any is waited for: a
    /// backlog costs a round trip per batch, not per push.
    pub async fn route(&self, pushes: Vec<(PushMessage, Arc<Unsettled>)>) {
        let pushes: Vec<Taken> = pushes
            .into_iter()
            .map(|(mut push, unsettled)| {
                let mut users = std::mem::take(&mut push.user_ids);
                if !push.user_id.is_empty() {
                    users.push(std::mem::take(&mut push.user_id));
                }
                (push, crate::distinct_receivers(users), unsettled)
            })
            .collect();
        match &self.mode {
            Mode::Local => {
                for (push, users, unsettled) in pushes {
                    hand_off(&self.node, &push, users, true, &unsettled).await;
                }
            }
            Mode::Located(loc) => self.located(loc, pushes).await,
            Mode::Broadcast(loc) => {
                let reporter = loc.as_ref().filter(|_| self.is_reporter());
                let held = match reporter {
                    Some(loc) => self.lookup(loc, &pushes).await,
                    None => Vec::new(),
                };
                let mut held = held.into_iter();
                for (push, users, unsettled) in pushes {
                    hand_off(&self.node, &push, users.clone(), false, &unsettled).await;
                    let Some(held) = held.next() else { continue };
                    let nowhere: Vec<String> = users
                        .into_iter()
                        .zip(held)
                        .filter(|(_, n)| n.is_empty())
                        .map(|(u, _)| u)
                        .collect();
                    // Stored and reported offline by this node's owner cores, as in located
                    // routing.
                    if !nowhere.is_empty() {
                        hand_off(&self.node, &push, nowhere, true, &unsettled).await;
                    }
                }
            }
        }
    }

    async fn located(&self, loc: &Locations, pushes: Vec<Taken>) {
        let held = self.lookup(loc, &pushes).await;
        let me = self.node.node_id.as_str();
        let mut forwards = Vec::new();
        for ((push, users, unsettled), held) in pushes.into_iter().zip(held) {
            let (here, elsewhere) = place(me, users, held);
            if !here.is_empty() {
                hand_off(&self.node, &push, here, true, &unsettled).await;
            }
            for (node_id, users) in elsewhere {
                let fwd = PushMessage {
                    user_ids: users,
                    ..push.clone()
                };
                let sent = self.kafka.queue(&self.kafka.node_topic(&node_id), &fwd);
                forwards.push((sent, fwd, unsettled.clone()));
            }
        }
        // Each push stays unsettled (its token held here) until the broker took its forwards.
        for (sent, mut fwd, _unsettled) in forwards {
            if sent.await {
                self.node.counters.pushes_forwarded.inc();
            } else {
                self.node.counters.forward_errors.inc();
                for user in std::mem::take(&mut fwd.user_ids) {
                    self.unroutable(&fwd, user, UndeliveredReason::Overloaded)
                        .await;
                }
            }
        }
    }

    /// For each push, the live nodes holding each receiver's matching devices. Redis errors
    /// are waited out: the pushes' offsets are not stored meanwhile, so nothing is skipped.
    async fn lookup(&self, loc: &Locations, pushes: &[Taken]) -> Vec<Vec<Vec<String>>> {
        let pairs: Vec<(u64, &str)> = pushes
            .iter()
            .flat_map(|(p, users, _)| users.iter().map(|u| (p.biz_id, u.as_str())))
            .collect();
        let found = loop {
            match loc.lookup(&pairs).await {
                Ok(f) => break f,
                Err(e) => {
                    self.node.counters.location_errors.inc();
                    warn!(error = %e, "location lookup failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let fleet = self.node.fleet.read().expect("fleet lock");
        let me = self.node.node_id.as_str();
        // The live nodes holding a user's devices that `push` names.
        let holding = |push: &PushMessage, devices: FastMap<String, String>| {
            let mut nodes: Vec<String> = devices
                .into_iter()
                .filter(|(d, _)| push.device_id.is_empty() || *d == push.device_id)
                .map(|(_, n)| n)
                .filter(|n| n == me || fleet.is_live(n))
                .collect();
            nodes.sort();
            nodes.dedup();
            nodes
        };
        let mut found = found.into_iter();
        pushes
            .iter()
            .map(|(push, users, _)| {
                let devices = found.by_ref().take(users.len());
                devices.map(|d| holding(push, d)).collect()
            })
            .collect()
    }

    /// The lowest live id reports broadcast pushes that reached nobody.
    fn is_reporter(&self) -> bool {
        let fleet = self.node.fleet.read().expect("fleet lock");
        fleet
            .nodes
            .keys()
            .next()
            .is_none_or(|first| *first == self.node.node_id)
    }

    async fn unroutable(&self, push: &PushMessage, user: String, reason: UndeliveredReason) {
        self.node.counters.pushes_unroutable.inc();
        let report = Undelivered {
            biz_id: push.biz_id,
            user_id: user,
            device_id: device_of(push),
            key: push.key.clone(),
            body: push.body.clone(),
            reason,
            epoch: String::new(),
            offset: 0,
            // The consumer holds the push until this returns, after the report is written.
            hold: None,
        };
        self.node.report(&self.kafka, report).await;
    }
}

/// Splits a push's receivers, given the nodes holding each, into this node's (`me`) and each
/// other node's. A user held nowhere is this node's: its owner core stores the push in the
/// user's stream (for a resume on any node) and reports it offline, with its offset.
fn place(
    me: &str,
    users: Vec<String>,
    held: Vec<Vec<String>>,
) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let mut here = Vec::new();
    let mut elsewhere: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (user, nodes) in users.into_iter().zip(held) {
        if nodes.is_empty() {
            here.push(user);
            continue;
        }
        for n in nodes {
            if n == me {
                here.push(user.clone());
            } else {
                elsewhere.entry(n).or_default().push(user.clone());
            }
        }
    }
    (here, elsewhere)
}

/// How a node reads the push topic in located routing: the partitions the fleet's etcd view
/// gives it (see [`Membership::Share`]).
pub fn push_topic_share(node: Arc<Hub>) -> Membership {
    Membership::Share(Box::new(move |partitions| {
        let fleet = node.fleet.read().expect("fleet lock");
        fleet.share(&node.node_id, partitions)
    }))
}

/// The device a push names, if any (empty means every device).
fn device_of(push: &PushMessage) -> Option<String> {
    (!push.device_id.is_empty()).then(|| push.device_id.clone())
}

/// Gives the push to its receivers' owner cores, waiting while a core's inbox is full.
pub async fn hand_off(
    node: &Hub,
    push: &PushMessage,
    mut users: Vec<String>,
    report_offline: bool,
    unsettled: &Arc<Unsettled>,
) {
    let accepted_at = Instant::now();
    let mut wait = Duration::from_millis(1);
    while !users.is_empty() {
        let job = PushJob {
            biz_id: push.biz_id,
            user_ids: users,
            device_id: device_of(push),
            key: push.key.clone(),
            body: push.body.clone(),
            report_offline,
            ephemeral: push.ephemeral,
            unsettled: Some(unsettled.clone()),
            accepted_at,
        };
        users = router::push(node, None, job).rejected;
        if !users.is_empty() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }
}

/// Keeps `ringway_kafka_uncommitted_records` for a consumer (every consumer adds its own).
pub fn uncommitted(node: &Arc<Hub>) -> Arc<dyn Fn(i64) + Send + Sync> {
    let node = node.clone();
    Arc::new(move |change| node.counters.kafka_uncommitted.add(change))
}
