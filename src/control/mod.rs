//! The control side of a node: one tokio thread beside the worker cores. It serves the admin
//! API, routes pushes to their owner cores, and runs shutdown. Worker cores never wait on it.

pub mod admin;
pub mod breaker;
pub mod grpc_backend;
pub mod kafka;
pub mod redis_idem;
pub mod router;
pub mod routes;
pub mod services;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::core::inbox::{CoreHandle, CoreMsg};
use crate::metrics::{CoreMetrics, NodeCounters};

/// What the control thread shares with its request handlers.
pub struct NodeState {
    pub cores: Vec<CoreHandle>,
    pub metrics: Vec<Arc<CoreMetrics>>,
    pub draining: AtomicBool,
    pub counters: NodeCounters,
    pub admin_token: Option<String>,
}

impl NodeState {
    pub fn links(&self) -> i64 {
        self.metrics.iter().map(|m| m.links.load(Relaxed)).sum()
    }
}

/// Serves the admin API until SIGTERM/SIGINT, then stops the node: no new links, every link
/// closed with 1001, exit as soon as none is left (or at the timeout).
pub async fn run(node: Arc<NodeState>, admin: tokio::net::TcpListener, shutdown_timeout: Duration) {
    tokio::spawn(admin::serve(node.clone(), admin));
    wait_for_signal().await;
    info!("shutting down: closing links");
    node.draining.store(true, Relaxed);
    for core in &node.cores {
        // Shutdown must get through even to a flooded inbox.
        let mut msg = CoreMsg::Shutdown;
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Err(back) = core.send(msg) {
            if Instant::now() > deadline {
                warn!("a core's inbox stayed full; it will be stopped at exit");
                break;
            }
            msg = back;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let deadline = Instant::now() + shutdown_timeout;
    while node.links() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = node.links();
    if left > 0 {
        warn!(
            links = left,
            "shutdown timeout: exiting with links still open"
        );
    } else {
        info!("all links closed");
    }
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
