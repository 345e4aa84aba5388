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
    /// Users whose owner core's inbox was full, or (with `shed`) whose core is that far
    /// behind: the caller retries them (Kafka) or refuses them (HTTP API).
    pub rejected: Vec<String>,
}

/// Splits `push`'s receivers by owner core and queues one job per core, so each core encodes
/// the body once for all its receivers. With `shed`, a core whose queue holds pushes that
/// waited longer than that is not given more ([`CoreHandle::behind`]).
///
/// [`CoreHandle::behind`]: crate::core::inbox::CoreHandle::behind
pub fn push(node: &Hub, shed: Option<Duration>, mut push: PushJob) -> Routed {
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
        let handle = &node.cores[core];
        if shed.is_some_and(|behind| handle.behind(behind)) {
            routed.rejected.extend(job.user_ids);
            continue;
        }
        match handle.send(CoreMsg::Push(Box::new(job))) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::inbox;

    #[test]
    fn a_core_that_is_behind_sheds_its_users_and_the_other_takes_its_own() {
        let (a, _a_inbox) = inbox::channel(16).unwrap();
        let (b, _b_inbox) = inbox::channel(16).unwrap();
        let node = Hub::for_tests(vec![a, b]);
        let on = |core| {
            (0..)
                .map(|i| format!("u{i}"))
                .find(|u| owner_core(1, u, 2) == core)
                .unwrap()
        };
        let (ua, ub) = (on(0), on(1));
        let limit = Some(Duration::from_millis(50));
        // Core a has a push queued that it has not taken, and the last it took waited 80 ms.
        assert_eq!(router_push(&node, limit, &[&ua]).accepted, 1);
        node.cores[0].took_push_after(Duration::from_millis(80));
        let routed = router_push(&node, limit, &[&ua, &ub]);
        assert_eq!((routed.accepted, routed.rejected), (1, vec![ua.clone()]));
        // Without a limit only a full inbox refuses.
        assert_eq!(router_push(&node, None, &[&ua]).accepted, 1);
    }

    fn router_push(node: &Hub, shed: Option<Duration>, users: &[&str]) -> Routed {
        push(node, shed, PushJob::for_tests(users))
    }
}
