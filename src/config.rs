//! The command line. Every flag has an environment fallback (`RINGWAY_*`), and the names in
//! DESIGN §6 are a contract: operators script them.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::KeySource;
use crate::cluster::Lifecycle;
use crate::cluster::registry::{EtcdConfig, Registry};
use crate::cluster::routing::PushRouting;
use crate::control::NodeSetup;
use crate::control::admin::AdminSettings;
use crate::control::demo::DemoSetup;
use crate::control::remotes::{RemoteSetup, Remotes};
use crate::control::startup::StartError;
use crate::core::admission::Admission;
use crate::core::shard::ShardConfig;
use crate::protocol::body_crypt::KeySpecError;

mod admin;
mod admission;
mod backend;
mod clients;
mod cluster;
mod idem;
mod kafka;
mod links;
mod node;
mod streams;

pub use admin::AdminArgs;
pub use admission::AdmissionArgs;
pub use backend::BackendArgs;
pub use clients::ClientArgs;
pub use cluster::ClusterArgs;
pub use idem::IdemArgs;
pub use kafka::KafkaArgs;
pub use links::LinkArgs;
pub use node::NodeArgs;
pub use streams::StreamArgs;

#[derive(Parser, Debug)]
#[command(
    name = "ringway",
    version = crate::VERSION,
    about = "IM WebSocket gateway: thread-per-core on io_uring"
)]
pub struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object a line:
    /// timestamp, level, target, message and fields) for a log pipeline.
    #[arg(long, global = true, env = "RINGWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a gateway node. With no flags: a complete single node with no external service
    /// (in-memory idempotency, built-in loopback backend, HTTP push API, metrics).
    Serve(Box<ServeArgs>),
    /// Check `serve`'s flags and the files they name (JWT key, TLS certificate and key, body
    /// keys, the Redis URL) without starting a node; exits 1 with the first problem.
    Check(Box<ServeArgs>),
    /// Mint an HS256 client token (for trying the gateway out and for scripts).
    Token(TokenArgs),
}

/// `serve`'s flags, grouped by the subsystem they set (each group is a `--help` heading and
/// builds that subsystem's setup).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub clients: ClientArgs,
    #[command(flatten)]
    pub links: LinkArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub idem: IdemArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub admission: AdmissionArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl TokenArgs {
    /// The token these flags describe.
    pub fn mint(&self) -> String {
        let who = crate::auth::Identity {
            biz_id: self.biz,
            user_id: self.user.as_str().into(),
            device_id: self.device.as_str().into(),
        };
        crate::auth::mint_hs256(self.jwt_secret.as_bytes(), &who, self.ttl)
    }
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The HS256 secret the gateway checks tokens with (its --jwt-secret).
    #[arg(long, env = "RINGWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// The token's `biz_id` claim.
    #[arg(long, default_value_t = 1)]
    pub biz: u64,
    /// The token's `user_id` claim.
    #[arg(long)]
    pub user: String,
    /// The token's `device_id` claim: one link per device.
    #[arg(long, default_value = "default")]
    pub device: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
}

/// The setups that take flags from more than one group.
impl ServeArgs {
    /// Builds what `serve` builds from its flags before it binds or connects anything; says
    /// what was checked.
    pub fn check(&self) -> Result<String, StartError> {
        // Without a key, serve makes a development secret; there is nothing to check.
        let keyed = self.clients.jwt_secret.is_some() || self.clients.jwt_public_key.is_some();
        let key = if keyed {
            let source = self.clients.key_source()?;
            self.clients.verifier(&source)?;
            match source {
                KeySource::Secret(_) => "JWT secret",
                KeySource::PublicKeyPem(_) => "JWT public key",
            }
        } else {
            "no JWT key: a development secret at start"
        };
        self.shard_config("check")?;
        let tls = self.node.tls_files()?;
        if let Some(url) = &self.idem.redis {
            crate::control::redis_idem::parse_url(url)?;
        }
        Ok(format!(
            "ringway check: the flags are valid ({key}{}{}{})",
            if tls.is_some() {
                ", TLS certificate and key"
            } else {
                ""
            },
            if self.links.body_keys.is_empty() {
                ""
            } else {
                ", body keys"
            },
            if self.idem.redis.is_some() {
                ", Redis URL"
            } else {
                ""
            },
        ))
    }

    /// Devices are recorded in the Redis location registry whenever there is a Redis: pushes
    /// are routed by it in a cluster, and presence queries read it on every node.
    fn tracks_locations(&self) -> bool {
        self.idem.redis.is_some()
    }

    /// How long a device's location lives unrefreshed, when locations are tracked.
    pub fn location_ttl(&self) -> Option<Duration> {
        self.tracks_locations()
            .then(|| Duration::from_millis(self.cluster.location_ttl_ms.max(1_000)))
    }

    pub fn shard_config(&self, node_id: &str) -> Result<ShardConfig, KeySpecError> {
        let presence = self.kafka.kafka.is_some() || self.tracks_locations();
        self.links.shard_config(node_id, presence)
    }

    pub fn remote_setup(&self, node_id: &str) -> RemoteSetup {
        RemoteSetup {
            redis: self
                .idem
                .redis
                .clone()
                .map(|url| (url, self.idem.idem_ttl(), self.idem.redis_timeout())),
            streams: self.streams.limits(),
            rooms: (
                self.links.max_rooms_per_user,
                Duration::from_millis(self.links.room_membership_ttl_ms.max(1)),
            ),
            kafka: self.kafka.config(node_id),
            grpc: self.backend.grpc_config(node_id),
            backend: self.backend.backend.clone(),
            routes: self.backend.routes.clone(),
            routes_in_etcd: !self.cluster.etcd.is_empty(),
        }
    }

    /// The etcd registration, with `--etcd`.
    pub fn etcd_config(&self, node_id: &str, started_ms: u64) -> Option<EtcdConfig> {
        let capacity = self.admission.capacity;
        self.cluster
            .etcd_config(node_id, self.node.listen, capacity, started_ms)
    }

    pub fn push_routing(&self, remotes: &Remotes) -> Option<PushRouting> {
        self.cluster
            .push_routing(remotes.kafka.is_some(), remotes.redis.is_some())
    }

    pub fn node_setup(
        &self,
        node_id: &str,
        source: &KeySource,
        admission: Arc<Admission>,
        remotes: &Remotes,
        routing: Option<PushRouting>,
    ) -> NodeSetup {
        NodeSetup {
            node_id: node_id.to_owned(),
            admin: AdminSettings {
                token: self.admin.admin_token.clone().filter(|t| !t.is_empty()),
                origins: self.admin.admin_allowed_origins.clone(),
                idle: Duration::from_millis(self.admin.admin_idle_timeout_ms.max(1)),
                shed: (self.admin.push_shed_ms > 0)
                    .then(|| Duration::from_millis(self.admin.push_shed_ms)),
                demo: DemoSetup {
                    ws_port: self.node.listen.port(),
                    mint_secret: match (source, self.admin.demo) {
                        (KeySource::Secret(s), true) => Some(s.clone()),
                        _ => None,
                    },
                },
            },
            admission,
            routes: remotes.routes.clone(),
            kafka: remotes.kafka_out.clone(),
            rooms: remotes.rooms.clone(),
            drain_rate: self.cluster.drain_rate,
            max_outbound_bytes: self.links.max_outbound_bytes,
            republish: routing.is_some(),
        }
    }

    pub fn lifecycle(&self, registry: Option<Arc<Registry>>) -> Lifecycle {
        Lifecycle {
            registry,
            scale: Arc::new(self.cluster.scale_setup()),
            shutdown_timeout: Duration::from_millis(self.node.shutdown_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from([&["ringway", "serve"], args].concat()).unwrap();
        match cli.command {
            Command::Serve(a) => *a,
            _ => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn boolean_flags_take_the_usual_spellings() {
        for (v, want) in [
            ("0", false),
            ("1", true),
            ("false", false),
            ("yes", true),
            ("off", false),
        ] {
            assert_eq!(serve(&["--deflate", v]).links.deflate, want, "{v}");
            assert_eq!(serve(&["--pin-cores", v]).node.pin_cores, want, "{v}");
        }
        assert!(serve(&[]).links.deflate && serve(&[]).node.pin_cores);
        assert!(Cli::try_parse_from(["ringway", "serve", "--deflate", "maybe"]).is_err());
    }

    #[test]
    fn every_flag_says_what_it_does() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let flag = arg.get_long().unwrap_or(id);
                assert!(
                    help.len() > 10,
                    "{} --{flag} has no help text",
                    sub.get_name()
                );
            }
        }
    }

    #[test]
    fn the_log_format_is_given_before_or_after_the_subcommand() {
        let after = Cli::try_parse_from(["ringway", "serve", "--log-format", "json"]).unwrap();
        let before = Cli::try_parse_from(["ringway", "--log-format", "json", "serve"]).unwrap();
        assert_eq!(
            (after.log_format, before.log_format),
            (LogFormat::Json, LogFormat::Json)
        );
        assert_eq!(
            Cli::try_parse_from(["ringway", "serve"])
                .unwrap()
                .log_format,
            LogFormat::Text
        );
    }
}
