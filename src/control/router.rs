//! Sends pushes, kicks and redirects to the cores that own the users.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use tracing::warn;

use super::NodeState;
use crate::core::inbox::{CoreMsg, Kick, PushJob, Redirect};
use crate::owner_core;
use crate::proto::Node;

/// How a push was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Users whose owner core queued the push.
    pub accepted: usize,
    /// Users whose owner core was full; each is reported undelivered (overloaded).
    pub rejected: usize,
}

/// Splits the receivers by owner core and queues one job per core, so each core encodes the
/// body once for all its receivers.
pub fn push(
    node: &NodeState,
    biz_id: u64,
    user_ids: Vec<String>,
    device_id: Option<String>,
    key: String,
    body: Bytes,
) -> Routed {
    let accepted_at = Instant::now();
    let mut by_core: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for u in user_ids {
        by_core
            .entry(owner_core(biz_id, &u, node.cores.len()))
            .or_default()
            .push(u);
    }
    let mut routed = Routed {
        accepted: 0,
        rejected: 0,
    };
    for (core, users) in by_core {
        let n = users.len();
        let job = PushJob {
            biz_id,
            user_ids: users,
            device_id: device_id.clone(),
            key: key.clone(),
            body: body.clone(),
            accepted_at,
        };
        match node.cores[core].send(CoreMsg::Push(Box::new(job))) {
            Ok(()) => routed.accepted += n,
            Err(_) => {
                routed.rejected += n;
                node.push_rejected.fetch_add(n as u64, Relaxed);
                warn!(biz_id, key = %key, core, users = n, reason = "overloaded", "undelivered push");
            }
        }
    }
    routed
}

/// Queues a kick on the user's owner core; false if that core's inbox is full.
pub fn kick(
    node: &NodeState,
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
    node: &NodeState,
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
                    nodes,
                    retry_after_ms,
                })))
                .is_ok()
        }
        None => node.cores.iter().all(|c| {
            c.send(CoreMsg::Redirect(Box::new(Redirect {
                target: None,
                nodes: nodes.clone(),
                retry_after_ms,
            })))
            .is_ok()
        }),
    }
}
