//! Sends pushes, kicks and redirects to the cores that own the users, and room messages to
//! every core.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::Hub;
use crate::core::inbox::{CoreMsg, Kick, Membership, PushJob, Redirect, RoomJob};
use crate::owner_core;
use crate::proto::{Node, RoomMessage};

/// How a push was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Users whose owner core queued the push.
    pub accepted: usize,
    /// Users whose owner core's inbox was full: the caller retries them (Kafka) or reports them
    /// undelivered (HTTP API).
    pub rejected: Vec<String>,
}

/// Splits `push`'s receivers by owner core and queues one job per core, so each core encodes
/// the body once for all its receivers.
pub fn push(node: &Hub, mut push: PushJob) -> Routed {
    let mut by_core: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for u in std::mem::take(&mut push.user_ids) {
        by_core
            .entry(owner_core(push.biz_id, &u, node.cores.len()))
            .or_default()
            .push(u);
    }
    let mut routed = Routed {
        accepted: 0,
        rejected: Vec::new(),
    };
    for (core, users) in by_core {
        let n = users.len();
        let job = PushJob {
            user_ids: users,
            device_id: push.device_id.clone(),
            key: push.key.clone(),
            body: push.body.clone(),
            unsettled: push.unsettled.clone(),
            ..push
        };
        match node.cores[core].send(CoreMsg::Push(Box::new(job))) {
            Ok(()) => routed.accepted += n,
            Err(CoreMsg::Push(job)) => routed.rejected.extend(job.user_ids),
            Err(_) => unreachable!("send hands back what it was given"),
        }
    }
    routed
}

/// Hands a room message or broadcast to every core (each delivers to its members), waiting
/// out a full inbox: the message is the cores' once this returns.
pub async fn room(node: &Hub, m: RoomMessage) {
    if let Some(c) = m.change {
        let core = owner_core(m.biz_id, &c.user_id, node.cores.len());
        let msg = CoreMsg::Membership(Box::new(Membership {
            biz_id: m.biz_id,
            user_id: c.user_id,
            rooms: c.rooms,
            join: c.join,
            reply: None,
        }));
        return send_waiting(node, core, msg, "a room membership change").await;
    }
    let job = Arc::new(RoomJob {
        biz_id: m.biz_id,
        room: m.room,
        key: m.key,
        body: m.body,
        exclude_user_ids: m.exclude_user_ids,
        reliable: m.reliable,
    });
    for core in 0..node.cores.len() {
        send_waiting(node, core, CoreMsg::Room(job.clone()), "a room message").await;
    }
}

/// Queues on `core`, waiting out a full inbox (a warning every 5 s): what the room topic hands
/// over is committed once queued, so it is never refused.
async fn send_waiting(node: &Hub, core: usize, mut msg: CoreMsg, what: &str) {
    while let Err(back) = node.send_within(core, msg, Duration::from_secs(5)).await {
        warn!(core, "core inbox full: {what} waits for it");
        msg = back;
    }
}

/// Queues a kick on the user's owner core; false if that core's inbox is full.
pub fn kick(
    node: &Hub,
    biz_id: u64,
    user_id: String,
    device_id: Option<String>,
    reason: String,
) -> bool {
    let core = owner_core(biz_id, &user_id, node.cores.len());
    node.cores[core]
        .send(CoreMsg::Kick(Box::new(Kick {
            biz_id,
            user_id,
            device_id,
            reason,
        })))
        .is_ok()
}

/// Redirects one user's links, or with no user every link of the node.
pub fn redirect(
    node: &Hub,
    target: Option<(u64, String, Option<String>)>,
    nodes: Vec<Node>,
    retry_after_ms: u32,
) -> bool {
    match target {
        Some(t) => {
            let core = owner_core(t.0, &t.1, node.cores.len());
            node.cores[core]
                .send(CoreMsg::Redirect(Box::new(Redirect {
                    target: Some(t),
                    limit: None,
                    nodes,
                    retry_after_ms,
                })))
                .is_ok()
        }
        None => node.cores.iter().all(|c| {
            c.send(CoreMsg::Redirect(Box::new(Redirect {
                target: None,
                limit: None,
                nodes: nodes.clone(),
                retry_after_ms,
            })))
            .is_ok()
        }),
    }
}
