//! Where the node listens and how its worker cores run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::core::tls::{TlsError, TlsFiles};
use crate::core::worker::Executor;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Node")]
pub struct NodeArgs {
    /// Client WebSocket address; every worker core binds it with SO_REUSEPORT.
    #[arg(long, env = "RINGWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// PEM certificate chain for `wss://` (and https for the HTTP transports) on --listen.
    /// Reloaded with its key on SIGHUP; links already open keep their session.
    #[arg(long, env = "RINGWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "RINGWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Admin HTTP address: /metrics, /healthz, /readyz, /v1/push, /v1/kick, /v1/redirect.
    /// Keep it on loopback or a private network.
    #[arg(long, env = "RINGWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Worker cores (one pinned io_uring executor each). Default: every CPU this process may
    /// run on (so `taskset` limits it).
    #[arg(long, env = "RINGWAY_WORKERS")]
    pub workers: Option<usize>,
    /// Pin worker N to the N-th allowed CPU. Turn off when sharing cores with other programs.
    #[arg(long, env = "RINGWAY_PIN_CORES", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub pin_cores: bool,
    /// Node id sent in CONNECTED (default: the host name).
    #[arg(long, env = "RINGWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// Messages a core's inbox holds (pushes, hand-offs, backend answers). When full, what
    /// has a sender to answer is refused at once (push, kick and redirect APIs: 503; an
    /// upgrade: 503 with Retry-After); what has none waits, never dropped (pushes read from
    /// Kafka, backend and store answers).
    #[arg(long, env = "RINGWAY_CORE_INBOX", default_value_t = 65_536)]
    pub core_inbox: usize,
    /// How long a worker core may run ready tasks before it polls for I/O again. Lower keeps
    /// tail latency down when a core is busy (glommio's default is 100 ms).
    #[arg(long, env = "RINGWAY_PREEMPT_MS", default_value_t = 1)]
    pub preempt_ms: u64,
    /// Submission entries of each io_uring ring a worker core opens (three per core; the
    /// completion queue is twice this). The kernel sizes a ring's table of armed polls from it,
    /// at most 256 buckets from 4,096 up, and every link waiting for input holds one poll: with
    /// glommio's default of 128 the table has 8 buckets, and each of the thousands of timer
    /// cancels per second glommio issues walks a bucket of a few hundred links. Costs about
    /// 3 MB of memory per core at 4,096.
    #[arg(long, env = "RINGWAY_RING_DEPTH", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(32..=32_768))]
    pub ring_depth: u32,
    /// How long a stopping node waits for links to close before it exits anyway.
    #[arg(long, env = "RINGWAY_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
}

impl NodeArgs {
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

    /// The certificate and key, with `--tls-cert` (clap makes `--tls-key` come with it).
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles::load(cert, key)?)),
            _ => Ok(None),
        }
    }

    pub fn executor(&self) -> Executor {
        Executor {
            preempt: Duration::from_millis(self.preempt_ms.max(1)),
            ring_depth: self.ring_depth as usize,
        }
    }
}
