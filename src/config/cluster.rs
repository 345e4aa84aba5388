//! The node in its fleet: etcd registration, push routing, drain and scale-up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tracing::warn;

use crate::cluster::rebalance::ScaleSetup;
use crate::cluster::registry::EtcdConfig;
use crate::cluster::routing::PushRouting;
use crate::control::fleet::{NodeRecord, RecordState};

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterArgs {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379). Enables registration, the
    /// fleet view (REDIRECT targets, rebalance) and routes from `{prefix}/routes/{biz}`.
    #[arg(long, env = "RINGWAY_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix of this fleet in etcd.
    #[arg(long, env = "RINGWAY_ETCD_PREFIX", default_value = "/ringway")]
    pub etcd_prefix: String,
    /// Lease TTL of the node's record: a node that dies vanishes from the fleet this late.
    #[arg(long, env = "RINGWAY_ETCD_LEASE_TTL_S", default_value_t = 10)]
    pub etcd_lease_ttl_s: u64,
    /// How often the node's load (link count) and state are written when they changed.
    #[arg(long, env = "RINGWAY_LOAD_REPORT_MS", default_value_t = 1_000)]
    pub load_report_ms: u64,
    /// Address clients are redirected to for this node (default: --listen, with an
    /// unspecified IP replaced by 127.0.0.1).
    #[arg(long, env = "RINGWAY_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// Weight advertised in etcd (0 while draining).
    #[arg(long, env = "RINGWAY_WEIGHT", default_value_t = 100)]
    pub weight: u32,
    /// Labels advertised in etcd, comma-separated.
    #[arg(long, env = "RINGWAY_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Location advertised in etcd (zone, rack).
    #[arg(long, env = "RINGWAY_LOCATION", default_value = "")]
    pub location: String,
    /// How pushes from Kafka find their user's node with --etcd and --redis: `located` (one
    /// consumer group for the fleet, a Redis lookup per batch of pushes, forward to the holding node's
    /// topic) or `broadcast` (every node reads every push).
    #[arg(long, env = "RINGWAY_PUSH_ROUTING", value_enum, default_value_t = PushRouting::Located)]
    pub push_routing: PushRouting,
    /// TTL of a device's location in Redis; refreshed at a third of it while connected.
    #[arg(long, env = "RINGWAY_LOCATION_TTL_MS", default_value_t = 60_000)]
    pub location_ttl_ms: u64,
    /// Links redirected per second while draining or rebalancing.
    #[arg(long, env = "RINGWAY_DRAIN_RATE", default_value_t = 2_000)]
    pub drain_rate: u32,
    /// Topic of scale events, read by every node (with --kafka and --etcd).
    #[arg(long, env = "RINGWAY_SCALE_TOPIC", default_value = "ringway.scale")]
    pub scale_topic: String,
    /// Command run (sh -c) by a firing /admin/rebalance alert before rebalancing, e.g.
    /// `systemctl start ringway@$(date +%s)`; the new node must register in etcd.
    #[arg(long, env = "RINGWAY_SCALE_UP_CMD")]
    pub scale_up_cmd: Option<String>,
    /// How long to wait for the scale-up command's node to register.
    #[arg(long, env = "RINGWAY_SCALE_UP_WAIT_MS", default_value_t = 60_000)]
    pub scale_up_wait_ms: u64,
}

impl ClusterArgs {
    /// The etcd registration, with `--etcd`: the node's record as first written. `listen` is
    /// advertised unless `--advertise` says otherwise; `capacity` is the admission cap.
    pub fn etcd_config(
        &self,
        node_id: &str,
        listen: SocketAddr,
        capacity: u64,
        started_ms: u64,
    ) -> Option<EtcdConfig> {
        if self.etcd.is_empty() {
            return None;
        }
        let advertise = self.advertise.unwrap_or(listen);
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
                capacity,
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

    pub fn scale_setup(&self) -> ScaleSetup {
        ScaleSetup {
            topic: (!self.etcd.is_empty()).then(|| self.scale_topic.clone()),
            command: self.scale_up_cmd.clone(),
            wait: Duration::from_millis(self.scale_up_wait_ms),
        }
    }
}
