//! Rebalance on scale-up: when `k` new nodes join `n`, every old node redirects
//! `m − m(n−k)/n` of its `m` links to the new ones, paced.
//!
//! The trigger is an alert webhook (`POST /admin/rebalance`, Alertmanager or Grafana: only a
//! payload with a firing alert acts) or a scale event on the scale topic. The webhook may first
//! run `--scale-up-cmd` (e.g. `systemctl start ringway@N`) and wait for the new node to
//! register; it then publishes the event, so the whole fleet rebalances, not just the node that
//! got the webhook.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::mover::move_links;
use crate::control::Hub;
use crate::control::fleet::rebalance_count;

/// Published on the scale topic (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub total_nodes: u64,
    pub new_nodes: Vec<String>,
    /// When it was published (ms since the epoch): a node ignores events older than itself.
    pub at_ms: u64,
}

/// How scale-ups are run.
#[derive(Debug, Clone, Default)]
pub struct ScaleSetup {
    /// Kafka topic of scale events, read by every node.
    pub topic: Option<String>,
    /// Run by `sh -c` on a firing alert, before rebalancing.
    pub command: Option<String>,
    /// How long to wait for the command's node to register.
    pub wait: Duration,
}

/// The parts of an Alertmanager / Grafana webhook body that matter here.
#[derive(Debug, Deserialize)]
pub struct AlertPayload {
    #[serde(default)]
    status: String,
    #[serde(default)]
    alerts: Vec<Alert>,
    /// Optional: the new nodes, when the caller already started them.
    #[serde(default)]
    new_nodes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Alert {
    #[serde(default)]
    status: String,
}

impl AlertPayload {
    /// A "resolved" notification must not scale anything.
    pub fn firing(&self) -> bool {
        if self.alerts.is_empty() {
            self.status == "firing"
        } else {
            self.alerts.iter().any(|a| a.status == "firing")
        }
    }
}

/// Moves this node's share of links to the event's new nodes (if this node is an old one).
pub async fn on_scale_event(node: Arc<Hub>, ev: ScaleEvent) {
    let me = node.node_id.clone();
    if node.is_draining() || ev.new_nodes.contains(&me) {
        return;
    }
    let m = node.links().max(0) as u64;
    let count = rebalance_count(m, ev.total_nodes, ev.new_nodes.len() as u64);
    if count == 0 {
        return;
    }
    info!(links = m, moving = count, new_nodes = ?ev.new_nodes, "rebalancing");
    let new: BTreeSet<String> = ev.new_nodes.into_iter().collect();
    let targets = || -> Vec<crate::proto::Node> {
        let fleet = node.fleet.read().expect("fleet lock");
        let mut open: Vec<_> = fleet
            .nodes
            .values()
            .filter(|n| new.contains(&n.id) && n.is_open())
            .collect();
        open.sort_by_key(|n| (n.load, n.id.clone()));
        open.into_iter().map(|n| n.to_proto()).collect()
    };
    if targets().is_empty() {
        warn!("scale event names no open node this node knows; not moving links");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let moved = move_links(&node, Some(count), node.drain_rate, targets, deadline).await;
    info!(moved, "rebalance done");
}

/// Handles a webhook: returns what was done, as the JSON answer.
pub async fn on_alert(
    node: Arc<Hub>,
    scale: &ScaleSetup,
    alert: AlertPayload,
) -> Result<serde_json::Value, String> {
    if !alert.firing() {
        return Ok(serde_json::json!({ "acted": false, "why": "no firing alert" }));
    }
    if node.is_draining() {
        return Err("node is draining".into());
    }
    let me = node.node_id.clone();
    let known: BTreeSet<String> = node
        .fleet
        .read()
        .expect("fleet lock")
        .nodes
        .keys()
        .cloned()
        .collect();
    let new_nodes = if !alert.new_nodes.is_empty() {
        alert.new_nodes
    } else if let Some(cmd) = &scale.command {
        run_scale_up(cmd).await?;
        wait_for_new(&node, scale.wait, &known).await?
    } else {
        let fleet = node.fleet.read().expect("fleet lock");
        fleet.newer_than(&me).iter().map(|n| n.id.clone()).collect()
    };
    if new_nodes.is_empty() {
        return Ok(serde_json::json!({ "acted": false, "why": "no new node to move links to" }));
    }
    let total = node
        .fleet
        .read()
        .expect("fleet lock")
        .nodes
        .values()
        .filter(|n| n.is_open() || n.id == me)
        .count() as u64;
    let ev = ScaleEvent {
        total_nodes: total.max(new_nodes.len() as u64 + 1),
        new_nodes,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let answer = serde_json::json!({ "acted": true, "total_nodes": ev.total_nodes, "new_nodes": ev.new_nodes });
    match (&node.kafka, &scale.topic) {
        (Some(kafka), Some(topic)) => {
            let payload = serde_json::to_vec(&ev).expect("an event serializes");
            if !kafka.publish(topic, "scale", &payload).await {
                return Err("could not publish the scale event".into());
            }
        }
        _ => {
            tokio::spawn(on_scale_event(node.clone(), ev));
        }
    }
    Ok(answer)
}

async fn run_scale_up(cmd: &str) -> Result<(), String> {
    info!(command = cmd, "scaling up");
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
        .map_err(|e| format!("--scale-up-cmd: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("--scale-up-cmd exited with {status}"))
    }
}

/// The nodes that registered since `known` was read, once there is one (or at the timeout).
async fn wait_for_new(
    node: &Hub,
    wait: Duration,
    known: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + wait;
    loop {
        let new: Vec<String> = node
            .fleet
            .read()
            .expect("fleet lock")
            .nodes
            .values()
            .filter(|n| !known.contains(&n.id) && n.is_open())
            .map(|n| n.id.clone())
            .collect();
        if !new.is_empty() {
            return Ok(new);
        }
        if Instant::now() >= deadline {
            return Err("no new node registered after --scale-up-cmd".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(s: &str) -> AlertPayload {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn only_firing_alerts_act() {
        assert!(payload(r#"{"status":"firing","alerts":[{"status":"firing","labels":{"alertname":"Load"}}]}"#).firing());
        assert!(
            payload(
                r#"{"status":"resolved","alerts":[{"status":"resolved"},{"status":"firing"}]}"#
            )
            .firing()
        );
        assert!(!payload(r#"{"status":"firing","alerts":[{"status":"resolved"}]}"#).firing());
        assert!(!payload(r#"{"status":"resolved","alerts":[]}"#).firing());
        assert!(payload(r#"{"status":"firing"}"#).firing());
        assert!(!payload("{}").firing());
    }
}
