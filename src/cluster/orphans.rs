//! Pushes left in the topic of a node that is gone.
//!
//! Other nodes forward pushes to a node's own topic while its users' locations name it. If the
//! node dies (or drains) just after such a forward, the push would wait in its topic for a node
//! that may never come back. So when a node leaves the fleet (deregistered, or its lease
//! expired), the lowest-id live node reads that topic in the dead node's consumer group, from
//! where it stopped, and routes each push again: by then the user has reconnected elsewhere, or
//! the push is reported undelivered. It stops once the topic stays quiet or the node returns.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::routing::PushRouter;
use crate::control::kafka::{self, Membership, Record, Subscription};

/// How long an adopted topic must stay quiet before it is let go (a consumer group join on a
/// slow broker takes seconds).
const QUIET: Duration = Duration::from_secs(15);

pub async fn adopt_orphans(router: Arc<PushRouter>, brokers: String, group: String) {
    let node = router.node.clone();
    let mut known: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if node.is_draining() {
            return;
        }
        let (now, first) = {
            let fleet = node.fleet.read().expect("fleet lock");
            let ids: BTreeSet<String> = fleet.nodes.keys().cloned().collect();
            let first = ids.iter().next().cloned();
            (ids, first)
        };
        if first.as_deref() == Some(node.node_id.as_str()) {
            for gone in known.difference(&now).filter(|id| **id != node.node_id) {
                tokio::spawn(adopt(
                    router.clone(),
                    brokers.clone(),
                    group.clone(),
                    gone.clone(),
                ));
            }
        }
        known = now;
    }
}

async fn adopt(router: Arc<PushRouter>, brokers: String, group: String, gone: String) {
    let node = router.node.clone();
    let sub = Subscription {
        topic: router.kafka.node_topic(&gone),
        group: format!("{group}.node.{gone}"),
        membership: Membership::All,
        fetch_wait_ms: router.kafka.fetch_wait_ms(),
        uncommitted: super::routing::uncommitted(&node),
        from_newest: false,
    };
    info!(node = %gone, topic = %sub.topic, "a node left the fleet: routing what is left in its topic");
    let t0 = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let seen = last.clone();
    let keep_going = || {
        let quiet = t0
            .elapsed()
            .saturating_sub(Duration::from_millis(seen.load(Relaxed)));
        quiet < QUIET
            && !node.fleet.read().expect("fleet lock").is_live(&gone)
            && !node.is_draining()
    };
    let handle = |records: Vec<Record>| {
        let (router, last) = (router.clone(), last.clone());
        async move {
            last.store(t0.elapsed().as_millis() as u64, Relaxed);
            let pushes: Vec<_> = records
                .into_iter()
                .filter_map(|(bytes, u)| Some((kafka::decode_push(&router.node, &bytes)?, u)))
                .collect();
            router.node.counters.pushes_adopted.add(pushes.len() as u64);
            router.route(pushes).await;
        }
    };
    if let Err(e) = kafka::consume(&brokers, &sub, keep_going, handle).await {
        warn!(error = %e, node = %gone, "could not read a departed node's topic");
    }
}
