//! Moves links off this node in paced batches: the drain moves all of them, a rebalance a
//! share. Pacing spreads the reconnects, so the receiving nodes' admission ramps and backends
//! see a steady stream instead of a storm.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::control::Hub;
use crate::core::inbox::{CoreMsg, Redirect};
use crate::proto::Node;

const TICK: Duration = Duration::from_millis(100);

/// Redirects up to `count` links (all with `None`) at `rate` links/s until done, the node is
/// empty or `deadline` passes; `targets` is asked afresh for every batch, since loads change
/// as links arrive. A batch with no target closes its links with 1001 and a retry hint.
/// Returns how many links were asked to move: a core whose inbox was full took no share, and
/// its links are asked again at the next tick.
pub async fn move_links(
    node: &Hub,
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
        let taken = node
            .cores
            .iter()
            .filter(|core| {
                let msg = CoreMsg::Redirect(Box::new(Redirect {
                    target: None,
                    limit: Some(share),
                    nodes: nodes.clone(),
                    retry_after_ms,
                }));
                core.send(msg).is_ok()
            })
            .count() as u64;
        let asked = batch.min(share as u64 * taken);
        moved += asked;
        node.counters.links_moved.add(asked);
        tokio::time::sleep(TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::inbox;

    #[tokio::test]
    async fn a_core_whose_inbox_is_full_moves_nothing_and_is_not_counted() {
        let (a, _a_inbox) = inbox::channel(16).unwrap();
        let (b, _b_inbox) = inbox::channel(1).unwrap();
        assert!(b.send(CoreMsg::Shutdown).is_ok(), "b's inbox is now full");
        let node = Hub::for_tests(vec![a, b]);
        node.metrics[0].links.set(5);
        node.metrics[1].links.set(5);
        // One tick of 10 links/s asks for one link, a share of one per core.
        let deadline = Instant::now() + Duration::from_millis(50);
        let moved = move_links(&node, Some(1), 10, Vec::new, deadline).await;
        assert_eq!(moved, 1, "only core a took its share");
        assert_eq!(node.counters.links_moved.get(), 1);
        let (c, _c_inbox) = inbox::channel(1).unwrap();
        assert!(c.send(CoreMsg::Shutdown).is_ok());
        let full = Hub::for_tests(vec![c]);
        full.metrics[0].links.set(5);
        let deadline = Instant::now() + Duration::from_millis(250);
        assert_eq!(move_links(&full, Some(3), 10, Vec::new, deadline).await, 0);
        assert_eq!(
            full.counters.links_moved.get(),
            0,
            "none asked, none counted"
        );
    }
}
