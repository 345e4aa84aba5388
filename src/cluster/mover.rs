//! Moves links off this node in paced batches: the drain moves all of them, a rebalance a
//! share. Pacing spreads the reconnects, so the receiving nodes' admission ramps and backends
//! see a steady stream instead of a storm.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::control::NodeState;
use crate::core::inbox::{CoreMsg, Redirect};
use crate::proto::Node;

const TICK: Duration = Duration::from_millis(100);

/// Redirects up to `count` links (all with `None`) at `rate` links/s until done, the node is
/// empty or `deadline` passes; `targets` is asked afresh for every batch, since loads change
/// as links arrive. A batch with no target closes its links with 1001 and a retry hint.
/// Returns how many links were asked to move.
pub async fn move_links(
    node: &NodeState,
    count: Option<u64>,
    rate: u32,
    targets: impl Fn() -> Vec<Node>,
    deadline: Instant,
) -> u64 {
    let per_tick = (u64::from(rate) * TICK.as_millis() as u64 / 1000).max(1);
    let cores = node.cores.len() as u64;
    let mut moved = 0;
    let mut rng = SmallRng::from_os_rng();
    loop {
        let left = node.links().max(0) as u64;
        let want = count.map_or(left, |c| c.saturating_sub(moved)).min(left);
        if want == 0 || Instant::now() >= deadline {
            return moved;
        }
        let batch = want.min(per_tick);
        let share = batch.div_ceil(cores) as usize;
        let nodes = targets();
        // Spread the batch's reconnects over the tick that follows it; with nowhere to go now,
        // come back (here or wherever DNS says) in one to three seconds.
        let retry_after_ms = if nodes.is_empty() {
            rng.random_range(1000..3000)
        } else {
            rng.random_range(0..TICK.as_millis() as u32)
        };
        for core in &node.cores {
            let _ = core.send(CoreMsg::Redirect(Box::new(Redirect {
                target: None,
                limit: Some(share),
                nodes: nodes.clone(),
                retry_after_ms,
            })));
        }
        moved += batch;
        node.counters.links_moved.add(batch);
        tokio::time::sleep(TICK).await;
    }
}
