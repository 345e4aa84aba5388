//! Drain: the node leaves the fleet without losing a push.
//!
//! 1. Admission closes (new upgrades get 503) and the record's weight drops to 0.
//! 2. The push-topic consumer stops after handing off what it read; the node's own topic is
//!    still read, for pushes other nodes routed here before they saw the drain.
//! 3. Links are redirected in paced batches to the least-loaded open nodes; with none, closed
//!    with 1001 and a retry hint.
//! 4. Once empty (or at the timeout, when the rest are closed), the node topic is read to its
//!    end and committed, the cores' pushes still waiting for their stream appends are
//!    answered, and every push that was unacked on a moved link or found no link here is put
//!    back on the push topic, so routing finds the user's new node.
//! 5. The node deregisters and exits; it waits for nothing once it is empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::mover::move_links;
use super::registry::Registry;
use crate::control::Hub;
use crate::core::inbox::CoreMsg;

/// How many nodes a REDIRECT offers.
const REDIRECT_CHOICES: usize = 3;

pub async fn drain(node: Arc<Hub>, registry: Option<&Registry>, timeout: Duration) {
    let started = Instant::now();
    let deadline = started + timeout;
    info!(links = node.links(), "draining");
    node.start_draining();
    let me = node.node_id.clone();
    let moved = move_links(
        &node,
        None,
        node.drain_rate,
        || {
            node.fleet
                .read()
                .expect("fleet lock")
                .redirect_targets(&me, REDIRECT_CHOICES)
        },
        deadline,
    )
    .await;
    while node.links() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if node.links() > 0 {
        warn!(
            links = node.links(),
            "drain timeout: closing the links left"
        );
        close_all(&node).await;
        let grace = Instant::now() + Duration::from_secs(2);
        while node.links() > 0 && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    node.finish_node_topic().await;
    // Pushes still waiting for their stream appends are the cores' until answered: delivered
    // nowhere now, they are reported (and held for the republish) once the store answers.
    let answered = Instant::now() + Duration::from_secs(5);
    while node.appends_waiting() > 0 && Instant::now() < answered {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let republished = node.republish_held().await;
    if let Some(registry) = registry {
        registry.deregister(Duration::from_secs(2)).await;
    }
    info!(
        moved,
        republished,
        left = node.links(),
        ms = started.elapsed().as_millis() as u64,
        "drained"
    );
}

/// Ends every core's executor once the node is drained, so main can join their threads.
pub async fn stop_cores(node: &Hub) {
    for core in 0..node.cores.len() {
        if node
            .send_within(core, CoreMsg::Stop, Duration::from_secs(1))
            .await
            .is_err()
        {
            warn!(
                core,
                "core inbox full: the core is not stopped, the process ends anyway"
            );
        }
    }
}

/// Closes every link with 1001; the message must get through even to a flooded inbox.
async fn close_all(node: &Hub) {
    for core in 0..node.cores.len() {
        if node
            .send_within(core, CoreMsg::Shutdown, Duration::from_secs(1))
            .await
            .is_err()
        {
            warn!("a core's inbox stayed full; it will be stopped at exit");
        }
    }
}
