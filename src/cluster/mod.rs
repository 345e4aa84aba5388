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
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::info;

use crate::control::location::Locations;
use crate::control::remotes::Remotes;
use crate::control::services::{self, Remote};
use crate::control::startup::StartError;
use crate::control::{Hub, admin, watchdog};
use crate::core::services::ServiceCall;
use crate::core::tls::TlsFiles;
use rebalance::ScaleSetup;
use registry::Registry;
use routing::{Mode, PushRouting};

/// The control side's services, started before the admin API opens.
pub struct Services {
    pub remotes: Remotes,
    /// The cores' calls to the control thread, when any of their work leaves the core.
    pub calls: Option<mpsc::Receiver<ServiceCall>>,
    /// How Kafka pushes find their user's node (`None`: this node alone).
    pub routing: Option<PushRouting>,
    /// With a location registry (etcd and Redis): how long a device's entry lives unrefreshed.
    pub location_ttl: Option<Duration>,
    /// The client port's certificate, reloaded on SIGHUP.
    pub tls: Option<Arc<TlsFiles>>,
    /// The node's start, in milliseconds since the epoch (as its etcd record says).
    pub started_ms: u64,
}

/// What the node's life needs beside the control side's state.
pub struct Lifecycle {
    /// The etcd registration, deregistered at the end of a drain.
    pub registry: Option<Arc<Registry>>,
    pub scale: Arc<ScaleSetup>,
    /// The longest a drain waits for links to leave before it closes the rest.
    pub shutdown_timeout: Duration,
}

/// Starts the control side's services, serves the admin API until SIGTERM/SIGINT or
/// `POST /admin/drain`, then drains the node and returns once it is empty (or at the timeout).
pub async fn run(
    node: Arc<Hub>,
    admin: std::net::TcpListener,
    services: Services,
    life: Lifecycle,
) -> Result<(), StartError> {
    let admin = tokio::net::TcpListener::from_std(admin).map_err(|source| StartError::Os {
        what: "serving the admin port",
        source,
    })?;
    if let Some(registry) = &life.registry {
        tokio::spawn(registry.clone().run(node.clone()));
    }
    let began = Instant::now();
    start(&node, services, life.scale.topic.clone()).await?;
    crate::warn_if_slow(
        "starting the Kafka consumers and the location registry",
        began,
    );
    let more = fleet_api::routes(life.scale.clone())
        .merge(crate::control::inspect::routes())
        .merge(crate::control::rooms_api::routes())
        .merge(crate::control::presence_api::routes());
    tokio::spawn(admin::serve(node.clone(), admin, more));
    tokio::spawn(watchdog::run(node.clone()));
    tokio::select! {
        _ = wait_for_signal() => info!("signal: draining"),
        _ = node.drain_requested.notified() => info!("drain requested"),
    }
    drain::drain(
        node.clone(),
        life.registry.as_deref(),
        life.shutdown_timeout,
    )
    .await;
    drain::stop_cores(&node).await;
    Ok(())
}

/// The location registry, the cores' service calls, certificate reloads and the Kafka
/// consumers.
async fn start(node: &Arc<Hub>, s: Services, scale_topic: Option<String>) -> Result<(), String> {
    let locations = match (&s.remotes.redis, s.location_ttl) {
        (Some(r), Some(ttl)) => Some(Locations::start(r.redis(), node.clone(), ttl)),
        _ => None,
    };
    if let Some(loc) = &locations {
        let _ = node.locations.set(loc.clone());
    }
    if let Some(rx) = s.calls {
        let remote = Remote {
            redis: s.remotes.redis,
            streams: s.remotes.streams,
            routes: s.remotes.routes,
            kafka: s.remotes.kafka_out.clone(),
            locations: locations.clone(),
        };
        tokio::spawn(services::run(rx, node.clone(), remote));
    }
    tokio::spawn(crate::control::reload_on_hangup(node.clone(), s.tls));
    if let Some((cfg, out)) = s.remotes.kafka.zip(s.remotes.kafka_out) {
        let mode = match s.routing {
            None => Mode::Local,
            Some(PushRouting::Located) => {
                Mode::Located(locations.expect("located routing has redis"))
            }
            Some(PushRouting::Broadcast) => Mode::Broadcast(locations),
        };
        consumers::start(node, &cfg, out, mode, scale_topic, s.started_ms).await?;
    }
    Ok(())
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
