//! The control side of a node: one tokio thread beside the worker cores. It serves the admin
//! API, routes pushes to their owner cores, keeps the node in its cluster, and runs the drain.
//! Worker cores never wait on it.

pub mod admin;
pub mod allocator;
pub mod breaker;
pub mod demo;
pub mod fleet;
pub mod grpc_backend;
pub mod inspect;
pub mod kafka;
pub mod listeners;
pub mod location;
pub mod presence_api;
pub mod push_api;
pub mod redis_bound;
pub mod redis_idem;
pub mod redis_rooms;
pub mod redis_script;
pub mod redis_streams;
pub mod remotes;
pub mod rooms_api;
pub mod router;
pub mod routes;
pub mod services;
pub mod startup;
pub mod throttle;
pub mod watchdog;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::control::fleet::Fleet;
use crate::core::admission::Admission;
use crate::core::inbox::{CoreHandle, CoreMsg};
use crate::core::shard::Undelivered;
use crate::metrics::{CoreMetrics, NodeCounters};
use kafka::KafkaOut;
use location::Locations;
use redis_rooms::RedisRooms;
use routes::LiveRoutes;

/// What the control thread shares with its tasks and request handlers.
pub struct Hub {
    pub node_id: String,
    pub cores: Vec<CoreHandle>,
    pub metrics: Vec<Arc<CoreMetrics>>,
    pub draining: AtomicBool,
    pub counters: NodeCounters,
    /// `ringway_admin_request_duration_seconds`, by route and status.
    pub api_latency: prometheus::HistogramVec,
    pub admin: admin::AdminSettings,
    pub admission: Arc<Admission>,
    pub routes: Arc<LiveRoutes>,
    /// The fleet as etcd shows it (empty without --etcd).
    pub fleet: RwLock<Fleet>,
    pub kafka: Option<Arc<KafkaOut>>,
    /// Room memberships kept in Redis for later connects, with `--redis`.
    pub rooms: Option<Arc<RedisRooms>>,
    /// The Redis location registry, which presence queries read fleet-wide; set once the
    /// control side starts.
    pub locations: OnceLock<Arc<Locations>>,
    /// Links redirected per second while draining or rebalancing.
    pub drain_rate: u32,
    /// Set by `POST /admin/drain`.
    pub drain_requested: Notify,
    /// `--max-outbound-bytes`: a push whose frame would not fit is refused (413).
    pub max_outbound_bytes: usize,
    /// While draining with cluster routing: pushes that found no link here, kept to be put
    /// back on the push topic once the node is empty.
    held: Mutex<Option<Vec<Undelivered>>>,
    republish: bool,
    node_topic: NodeTopic,
}

/// The node's own push topic consumer, which the drain stops last.
#[derive(Default)]
struct NodeTopic {
    running: AtomicBool,
    stop: AtomicBool,
    done: Notify,
}

/// What `Hub::new` needs beyond the cores.
pub struct NodeSetup {
    pub node_id: String,
    pub admin: admin::AdminSettings,
    pub admission: Arc<Admission>,
    pub routes: Arc<LiveRoutes>,
    pub kafka: Option<Arc<KafkaOut>>,
    /// Room memberships kept in Redis for later connects, with `--redis`.
    pub rooms: Option<Arc<RedisRooms>>,
    pub drain_rate: u32,
    pub max_outbound_bytes: usize,
    /// Put a draining node's undelivered pushes back on the push topic (cluster routing).
    pub republish: bool,
}

impl Hub {
    pub fn new(cores: Vec<CoreHandle>, metrics: Vec<Arc<CoreMetrics>>, s: NodeSetup) -> Hub {
        Hub {
            node_id: s.node_id,
            cores,
            metrics,
            draining: AtomicBool::new(false),
            counters: NodeCounters::default(),
            api_latency: crate::metrics::api_latency(),
            admin: s.admin,
            admission: s.admission,
            routes: s.routes,
            fleet: RwLock::default(),
            kafka: s.kafka,
            rooms: s.rooms,
            locations: OnceLock::new(),
            drain_rate: s.drain_rate.max(1),
            drain_requested: Notify::new(),
            max_outbound_bytes: s.max_outbound_bytes,
            held: Mutex::new(None),
            republish: s.republish,
            node_topic: NodeTopic::default(),
        }
    }

    /// A node with `cores` and nothing else configured (embedded, no services), for tests of
    /// the control side's rules.
    #[cfg(test)]
    pub fn for_tests(cores: Vec<CoreHandle>) -> Hub {
        let metrics = cores.iter().map(|_| Arc::default()).collect();
        let ramp = crate::core::admission::Ramp {
            initial: 1000,
            step: 1000,
            interval: Duration::from_secs(1),
            capacity: 1000,
        };
        let no_grpc = Box::new(|_: &str| Err("no gRPC in tests".to_owned()));
        let (routes, _) =
            LiveRoutes::new(routes::Target::Loopback, Vec::new(), false, no_grpc).expect("routes");
        Hub::new(
            cores,
            metrics,
            NodeSetup {
                node_id: "test".into(),
                admin: admin::AdminSettings {
                    token: None,
                    origins: Vec::new(),
                    idle: Duration::from_secs(10),
                    shed: None,
                    demo: demo::DemoSetup {
                        ws_port: 0,
                        mint_secret: None,
                    },
                },
                admission: Arc::new(Admission::new(ramp, 0, std::time::Instant::now())),
                routes: Arc::new(routes),
                kafka: None,
                rooms: None,
                drain_rate: 1000,
                max_outbound_bytes: 1 << 20,
                republish: false,
            },
        )
    }

    pub fn links(&self) -> i64 {
        self.metrics.iter().map(|m| m.links.get()).sum()
    }

    /// Pushes the cores hold until the shared stream store answers their appends.
    pub fn appends_waiting(&self) -> i64 {
        self.metrics.iter().map(|m| m.appends_waiting.get()).sum()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn start_draining(&self) {
        if self.republish {
            *self.held.lock().expect("held lock") = Some(Vec::new());
        }
        self.admission.close();
        self.draining.store(true, Relaxed);
    }

    /// Keeps reports for republishing while draining; returns those to report now.
    pub fn hold_for_republish(&self, reports: Vec<Undelivered>) -> Vec<Undelivered> {
        match self.held.lock().expect("held lock").as_mut() {
            Some(held) => {
                held.extend(reports);
                Vec::new()
            }
            None => reports,
        }
    }

    /// Puts held pushes back on the push topic (one per user and device); returns how many.
    pub async fn republish_held(&self) -> u64 {
        let held = self
            .held
            .lock()
            .expect("held lock")
            .take()
            .unwrap_or_default();
        let Some(kafka) = &self.kafka else {
            return 0;
        };
        let mut n = 0;
        for u in held {
            if kafka.republish(&u).await {
                n += 1;
                self.counters.pushes_republished.inc();
            } else {
                self.report(kafka, u).await;
            }
        }
        n
    }

    /// Writes an undelivered report to Kafka and counts whether Kafka took it. A report that
    /// holds its push unsettled (a push read from Kafka) is retried until Kafka takes it: only
    /// then may the push's offset be committed, so a crash or a broker outage re-reads the push
    /// rather than losing its report.
    pub async fn report(&self, kafka: &KafkaOut, u: Undelivered) {
        let mut wait = Duration::from_millis(100);
        loop {
            if kafka.report(&u).await {
                self.counters.kafka_reports.inc();
                return;
            }
            self.counters.kafka_report_errors.inc();
            if u.hold.is_none() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Sends to a core, waiting out a full inbox for at most `limit`; the message comes back
    /// if the inbox stayed full.
    pub async fn send_within(
        &self,
        core: usize,
        mut msg: CoreMsg,
        limit: Duration,
    ) -> Result<(), CoreMsg> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.cores[core].send(msg) {
                Ok(()) => return Ok(()),
                Err(back) if tokio::time::Instant::now() < deadline => {
                    msg = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(back) => return Err(back),
            }
        }
    }

    /// The node-topic consumer registers itself, polls `keep_consuming` and says when done.
    pub fn node_topic_started(&self) {
        self.node_topic.running.store(true, Relaxed);
    }

    pub fn node_topic_keep_consuming(&self) -> bool {
        !self.node_topic.stop.load(Relaxed)
    }

    pub fn node_topic_finished(&self) {
        self.node_topic.done.notify_one();
    }

    pub async fn finish_node_topic(&self) {
        if !self.node_topic.running.load(Relaxed) {
            return;
        }
        let done = self.node_topic.done.notified();
        self.node_topic.stop.store(true, Relaxed);
        if tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .is_err()
        {
            warn!("the node-topic consumer did not stop in 5 s");
        }
    }
}

/// The control side's runtime: one thread, the process's main one.
pub fn runtime() -> Result<tokio::runtime::Runtime, startup::StartError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ringway-control")
        .build()
        .map_err(|source| startup::StartError::Os {
            what: "starting the control runtime",
            source,
        })
}

/// SIGHUP's default action ends the process: until [`reload_on_hangup`] takes over, a hangup
/// is ignored rather than fatal. (A handler, unlike SIG_IGN, is not inherited by the commands
/// the node runs.)
pub fn ignore_hangup() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
}

/// SIGHUP reloads what can be reloaded (the TLS certificate) and never stops the node: a
/// logrotate or a habitual `systemctl reload` must not drop every user.
pub async fn reload_on_hangup(node: Arc<Hub>, tls: Option<Arc<crate::core::tls::TlsFiles>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    while hup.recv().await.is_some() {
        let Some(files) = &tls else {
            info!("SIGHUP: nothing to reload (no --tls-cert); still serving");
            continue;
        };
        match files.reload() {
            Ok(()) => {
                node.counters.tls_reloads.inc();
                info!("SIGHUP: TLS certificate reloaded");
            }
            Err(e) => {
                node.counters.tls_reload_errors.inc();
                warn!(error = %e, "SIGHUP: TLS reload failed; serving the previous certificate");
            }
        }
    }
}
