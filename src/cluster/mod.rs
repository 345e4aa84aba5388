//! Running as a fleet: etcd registration, push routing between nodes, a departed node's topic,
//! drain and rebalance, and the node's life from serving to exit. The fleet's view and the
//! location registry, which the control side reads, live there; this layer acts on them.

pub mod consumers;
pub mod drain;
pub mod fleet_api;
pub mod mover;
pub mod orphans;
pub mod rebalance;
pub mod registry;
pub mod routing;

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::control::{NodeState, admin, watchdog};
use rebalance::ScaleSetup;
use registry::Registry;

/// What the node's life needs beside the control side's state.
pub struct Lifecycle {
    /// The etcd registration, deregistered at the end of a drain.
    pub registry: Option<Arc<Registry>>,
    pub scale: Arc<ScaleSetup>,
    /// The longest a drain waits for links to leave before it closes the rest.
    pub shutdown_timeout: Duration,
}

/// Serves the admin API until SIGTERM/SIGINT or `POST /admin/drain`, then drains the node and
/// returns once it is empty (or at the timeout).
pub async fn run(node: Arc<NodeState>, admin: tokio::net::TcpListener, life: Lifecycle) {
    let fleet_ops = fleet_api::routes(life.scale.clone());
    tokio::spawn(admin::serve(node.clone(), admin, fleet_ops));
    tokio::spawn(watchdog::run(node.clone()));
    tokio::select! {
        _ = wait_for_signal() => info!("signal: draining"),
        _ = node.drain_requested.notified() => info!("drain requested"),
    }
    drain::drain(node, life.registry.as_deref(), life.shutdown_timeout).await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
