//! What `serve`'s flags mean to each subsystem: one builder per setup, so `main` only wires
//! the results together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::TryRngCore;
use tracing::warn;

use super::{PushRouting, ServeArgs};
use crate::auth::{self, Identity, KeySource};
use crate::cluster::rebalance::ScaleSetup;
use crate::cluster::registry::EtcdConfig;
use crate::control::NodeSetup;
use crate::control::demo::DemoSetup;
use crate::control::fleet::{NodeRecord, RecordState};
use crate::control::grpc_backend::GrpcConfig;
use crate::control::kafka::{KafkaConfig, KafkaOut, Latency};
use crate::control::routes::LiveRoutes;
use crate::core::admission::{Admission, Ramp};
use crate::core::tls::TlsFiles;
use crate::core::worker::Executor;

impl ServeArgs {
    /// The key tokens are checked with. With neither a secret nor a public key, a fresh random
    /// development secret per process, shown once with a sample token: no shared key is ever
    /// built in.
    pub fn key_source(&self) -> Result<KeySource, String> {
        match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(s), _) => Ok(KeySource::Secret(s.as_bytes().to_vec())),
            (None, Some(path)) => Ok(KeySource::PublicKeyPem(
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?,
            )),
            (None, None) => {
                let mut raw = [0u8; 24];
                rand::rngs::OsRng
                    .try_fill_bytes(&mut raw)
                    .map_err(|e| e.to_string())?;
                let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                let who = Identity {
                    biz_id: 1,
                    user_id: "demo".into(),
                    device_id: "default".into(),
                };
                let sample = auth::mint_hs256(secret.as_bytes(), &who, 86_400);
                warn!(
                    jwt_secret = %secret,
                    sample_token = %sample,
                    "no --jwt-secret or --jwt-public-key: using a random development secret; \
                     mint tokens with `ringway token --jwt-secret <secret> --user <id>`"
                );
                Ok(KeySource::Secret(secret.into_bytes()))
            }
        }
    }

    /// `--node-id`, or the host's name.
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "ringway".into())
            })
    }

    pub fn kafka_config(&self, node_id: &str) -> Option<KafkaConfig> {
        self.kafka.as_ref().map(|brokers| KafkaConfig {
            brokers: brokers.clone(),
            group: self.kafka_group.clone(),
            push_topic: self.push_topic.clone(),
            undelivered_topic: self.undelivered_topic.clone(),
            presence_topic: self.presence_topic.clone(),
            node_id: node_id.to_owned(),
            latency: Latency {
                fetch_wait_ms: self.kafka_fetch_wait_ms,
                linger_ms: self.kafka_linger_ms,
            },
        })
    }

    /// The gRPC client settings every backend route shares; each route fills in its endpoint.
    pub fn grpc_config(&self, node_id: &str) -> GrpcConfig {
        GrpcConfig {
            endpoint: String::new(),
            node_id: node_id.to_owned(),
            timeout: Duration::from_millis(self.backend_timeout_ms.max(1)),
            attempts: self.backend_attempts,
            breaker_failures: self.backend_breaker_failures,
            breaker_cooldown: Duration::from_millis(self.backend_breaker_cooldown_ms),
        }
    }

    pub fn admission(&self) -> Admission {
        let ramp = Ramp {
            initial: self
                .admit_initial
                .unwrap_or(self.capacity)
                .min(self.capacity),
            step: self.admit_step,
            interval: Duration::from_millis(self.admit_interval_ms.max(1)),
            capacity: self.capacity,
        };
        Admission::new(ramp, self.max_links_per_ip, Instant::now())
    }

    /// The browser origins allowed to open links (empty: any).
    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .iter()
            .filter(|o| !o.is_empty())
            .cloned()
            .collect()
    }

    pub fn tls_files(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles::load(cert, key)?)),
            (None, None) => Ok(None),
            _ => Err("--tls-cert and --tls-key go together".into()),
        }
    }

    /// The etcd registration, with `--etcd`: the node's record as first written.
    pub fn etcd_config(&self, node_id: &str, started_ms: u64) -> Option<EtcdConfig> {
        if self.etcd.is_empty() {
            return None;
        }
        let advertise = self.advertise.unwrap_or(self.listen);
        let ip = match advertise.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            ip => ip.to_string(),
        };
        Some(EtcdConfig {
            endpoints: self.etcd.clone(),
            prefix: self.etcd_prefix.trim_end_matches('/').to_owned(),
            lease_ttl: Duration::from_secs(self.etcd_lease_ttl_s.max(1)),
            report_every: Duration::from_millis(self.load_report_ms.max(10)),
            record: NodeRecord {
                id: node_id.to_owned(),
                ip,
                port: advertise.port(),
                weight: self.weight,
                capacity: self.capacity,
                load: 0,
                labels: self.labels.clone(),
                location: self.location.clone(),
                state: RecordState::Active,
                started_ms,
            },
        })
    }

    /// How pushes from Kafka find their user's node: `None` on a node alone (no Kafka or no
    /// etcd). Located routing needs Redis; without it the node falls back to broadcast.
    pub fn push_routing(&self, kafka: bool, redis: bool) -> Option<PushRouting> {
        match (kafka, self.etcd.is_empty(), self.push_routing) {
            (false, _, _) | (_, true, _) => None,
            (true, false, PushRouting::Located) if redis => Some(PushRouting::Located),
            (true, false, PushRouting::Located) => {
                warn!(
                    "--push-routing located needs --redis for the location registry: using broadcast"
                );
                Some(PushRouting::Broadcast)
            }
            (true, false, PushRouting::Broadcast) => Some(PushRouting::Broadcast),
        }
    }

    pub fn node_setup(
        &self,
        node_id: &str,
        source: &KeySource,
        admission: Arc<Admission>,
        routes: Arc<LiveRoutes>,
        kafka: Option<Arc<KafkaOut>>,
        routing: Option<PushRouting>,
    ) -> NodeSetup {
        NodeSetup {
            node_id: node_id.to_owned(),
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
            admin_origins: self.admin_allowed_origins.clone(),
            admin_idle: Duration::from_millis(self.admin_idle_timeout_ms.max(1)),
            admission,
            routes,
            kafka,
            drain_rate: self.drain_rate,
            demo: DemoSetup {
                ws_port: self.listen.port(),
                mint_secret: match (source, self.demo) {
                    (KeySource::Secret(s), true) => Some(s.clone()),
                    _ => None,
                },
            },
            max_outbound_bytes: self.max_outbound_bytes,
            republish: routing.is_some(),
        }
    }

    /// Upstream batches per core and biz: at most this many messages, waiting at most this
    /// long.
    pub fn batching(&self) -> (usize, Duration) {
        (
            self.batch_size.max(1),
            Duration::from_millis(self.batch_delay_ms),
        )
    }

    pub fn executor(&self) -> Executor {
        Executor {
            preempt: Duration::from_millis(self.preempt_ms.max(1)),
            ring_depth: self.ring_depth as usize,
        }
    }

    pub fn scale_setup(&self) -> ScaleSetup {
        ScaleSetup {
            topic: (!self.etcd.is_empty()).then(|| self.scale_topic.clone()),
            command: self.scale_up_cmd.clone(),
            wait: Duration::from_millis(self.scale_up_wait_ms),
        }
    }
}
