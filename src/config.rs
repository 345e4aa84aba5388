//! The command line. Every flag has an environment fallback (`RINGWAY_*`), and the names in
//! DESIGN §6 are a contract: operators script them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::control::routes::{Target, parse_route};
use crate::core::shard::ShardConfig;
use crate::link::idem::IdemTtl;
use crate::link::retry::RetryPolicy;
use crate::protocol::body_crypt::BodyKeys;
use crate::protocol::deflate::DeflatePolicy;

mod setups;

#[derive(Parser, Debug)]
#[command(
    name = "ringway",
    version,
    about = "IM WebSocket gateway: thread-per-core on io_uring"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a gateway node. With no flags: a complete single node with no external service
    /// (in-memory idempotency, built-in loopback backend, HTTP push API, metrics).
    Serve(Box<ServeArgs>),
    /// Mint an HS256 client token (for trying the gateway out and for scripts).
    Token(TokenArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
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
    #[arg(long, env = "RINGWAY_PIN_CORES", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin_cores: bool,
    /// Node id sent in CONNECTED (default: the host name).
    #[arg(long, env = "RINGWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// HS256 secret for client JWTs (at least 16 bytes). Without it and without
    /// --jwt-public-key, a random secret is made at start and logged with a sample token.
    #[arg(long, env = "RINGWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 (RSA key) or ES256 (EC P-256 key) client JWTs.
    #[arg(long, env = "RINGWAY_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "RINGWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "RINGWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Comma-separated Origin values browsers may connect from; empty allows any. Requests
    /// without an Origin header (non-browser clients) are always allowed.
    #[arg(long, env = "RINGWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Bearer token required on admin POST endpoints (push, kick, redirect), when set; compared
    /// in constant time.
    #[arg(long, env = "RINGWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Comma-separated Origin values whose pages may call the admin API. Any other request
    /// that carries an Origin header gets 403, so no web page can drive the API from a
    /// browser; by default only the admin server's own origin (its demo page) passes.
    /// Requests without an Origin (curl, backends) are unaffected.
    #[arg(long, env = "RINGWAY_ADMIN_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub admin_allowed_origins: Vec<String>,
    /// How long an admin connection may take to send a request head, and may sit idle
    /// between requests, before it is closed.
    #[arg(long, env = "RINGWAY_ADMIN_IDLE_TIMEOUT_MS", default_value_t = 10_000)]
    pub admin_idle_timeout_ms: u64,
    /// Loopback backend pushes every upstream body back to its sender.
    #[arg(long, env = "RINGWAY_ECHO")]
    pub echo: bool,
    /// Upstream messages per second per link (0 = unlimited). Heartbeats and acks are exempt.
    #[arg(long, env = "RINGWAY_LINK_RATE", default_value_t = 50)]
    pub link_rate: u32,
    /// Burst allowance of the per-link rate limit.
    #[arg(long, env = "RINGWAY_LINK_BURST", default_value_t = 100)]
    pub link_burst: u32,
    /// Wait before the first retransmit of an unacked push; doubles each time.
    #[arg(long, env = "RINGWAY_PUSH_RETRY_INITIAL_MS", default_value_t = 2000)]
    pub push_retry_initial_ms: u64,
    /// Sends of a push per link, the first included, before it is reported undelivered.
    #[arg(long, env = "RINGWAY_PUSH_RETRY_MAX", default_value_t = 5)]
    pub push_retry_max: u32,
    /// Cap on any single retransmit wait.
    #[arg(
        long,
        env = "RINGWAY_PUSH_RETRY_MAX_DELAY_MS",
        default_value_t = 30_000
    )]
    pub push_retry_max_delay_ms: u64,
    /// Close links silent for this long. CONNECTED advertises a third of it as the heartbeat
    /// interval; the server pings links idle for that long.
    #[arg(long, env = "RINGWAY_HEARTBEAT_TIMEOUT_MS", default_value_t = 90_000)]
    pub heartbeat_timeout_ms: u64,
    /// Largest client message; bigger ones get ERROR(CODE_TOO_LARGE) and close 1009.
    #[arg(long, env = "RINGWAY_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,
    /// Longest UPSTREAM key (bytes). A longer one gets ERROR(CODE_TOO_LARGE) without the key
    /// and is not processed; the link stays open. Keys are kept for the dedup window
    /// (--idem-ttl-ms), so this bounds what each one costs.
    #[arg(long, env = "RINGWAY_MAX_KEY_BYTES", default_value_t = 128)]
    pub max_key_bytes: usize,
    /// Accept permessage-deflate (RFC 7692) when a client offers it (browsers always do).
    #[arg(long, env = "RINGWAY_DEFLATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub deflate: bool,
    /// Messages shorter than this are sent uncompressed even on a deflate link.
    #[arg(long, env = "RINGWAY_DEFLATE_MIN_BYTES", default_value_t = 256)]
    pub deflate_min_bytes: usize,
    /// Keep a compression context per link and direction across messages (better ratios,
    /// about 300 KiB more per deflate link). Off: every message is compressed on its own with
    /// the core's shared context, and clients are told to do the same.
    #[arg(long, env = "RINGWAY_DEFLATE_TAKEOVER")]
    pub deflate_takeover: bool,
    /// Seal message bodies of a biz between its clients and the gateway with AES-256-GCM:
    /// `BIZ=KEY`, KEY 32 bytes in base64 (repeatable; env: comma-separated). Clients send and
    /// receive `body` as a 12-byte nonce + ciphertext + tag; backends see plain bodies.
    #[arg(
        long = "body-key",
        env = "RINGWAY_BODY_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub body_keys: Vec<String>,
    /// Let the admin server mint client tokens for its demo page (POST /demo/token). For
    /// trying ringway out only: anyone who reaches the admin port can then sign in as anyone.
    #[arg(long, env = "RINGWAY_DEMO")]
    pub demo: bool,
    /// Conformance mode: every WebSocket data message is answered with itself (same opcode,
    /// compressed again when deflate was agreed) instead of being read as a frame, so a
    /// WebSocket test suite such as Autobahn's (`scripts/autobahn.sh`) exercises the real
    /// socket, framing, deflate and closing code. Not for production: no frame is read.
    #[arg(long, env = "RINGWAY_WS_ECHO")]
    pub ws_echo: bool,
    /// Bytes queued for one link before it counts as backlogged. A link over it whose socket
    /// took no byte for --slow-consumer-ms is closed with 4002; one that keeps reading is never
    /// closed for a burst or a large message. A push whose JSON frame would not fit under it is
    /// refused up front (413 from /v1/push). The kernel's send buffer comes on top.
    #[arg(long, env = "RINGWAY_MAX_OUTBOUND_BYTES", default_value_t = 1024 * 1024)]
    pub max_outbound_bytes: usize,
    /// How long a link over --max-outbound-bytes may go without its socket taking a byte
    /// before it is closed as a slow consumer (4002; its unacked pushes are reported).
    #[arg(long, env = "RINGWAY_SLOW_CONSUMER_MS", default_value_t = 5_000)]
    pub slow_consumer_ms: u64,
    /// Devices one user may have connected; a new one signs out the oldest.
    #[arg(long, env = "RINGWAY_MAX_DEVICES_PER_USER", default_value_t = 5)]
    pub max_devices_per_user: usize,
    /// Time a new connection has to send its upgrade request (408 after).
    #[arg(long, env = "RINGWAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 5000)]
    pub handshake_timeout_ms: u64,
    /// How long a stopping node waits for links to close before it exits anyway.
    #[arg(long, env = "RINGWAY_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
    /// How long an upstream reply is kept to re-ack duplicates.
    #[arg(long, env = "RINGWAY_IDEM_TTL_MS", default_value_t = 600_000)]
    pub idem_ttl_ms: u64,
    /// Keys each core's in-memory idempotency store holds at most: ~230 bytes each once full
    /// (~460 MB per core at the default), ~280 while keys younger than the pending TTL still have
    /// their pending row too. Past it the oldest replies are forgotten early
    /// (ringway_idem_evictions_total).
    #[arg(long, env = "RINGWAY_IDEM_MAX_ENTRIES", default_value_t = 2_000_000)]
    pub idem_max_entries: usize,
    /// Bytes each core's in-memory idempotency store holds at most: keys, stored backend
    /// replies and ~200 bytes of bookkeeping per key. Past it the oldest replies are forgotten
    /// early, as past --idem-max-entries, so large replies cannot exhaust memory.
    #[arg(long, env = "RINGWAY_IDEM_MAX_BYTES", default_value_t = 512 << 20)]
    pub idem_max_bytes: usize,
    /// How long an upstream key stays claimed while its backend call is outstanding.
    #[arg(long, env = "RINGWAY_IDEM_PENDING_TTL_MS", default_value_t = 30_000)]
    pub idem_pending_ttl_ms: u64,
    /// Redis for the shared idempotency store (redis://host:port/db). Without it each core keeps
    /// an in-memory store, which dedups retries within this node only.
    #[arg(long, env = "RINGWAY_REDIS")]
    pub redis: Option<String>,
    /// Deadline of one Redis round trip; past it the store counts as unreachable.
    #[arg(long, env = "RINGWAY_REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// While Redis is unreachable: `local` claims in the core's own store (messages flow, dedup is
    /// per node), `refuse` answers ERROR(CODE_BACKEND_UNAVAILABLE) until it is back.
    #[arg(
        long,
        env = "RINGWAY_REDIS_UNAVAILABLE",
        value_enum,
        default_value = "local"
    )]
    pub redis_unavailable: crate::core::services::StoreDownPolicy,
    /// Where upstream messages go by default: `loopback` (built in: accept at once),
    /// `grpc://host:port` (BackendService in proto/ringway/backend/v1), `kafka:TOPIC` (one
    /// record per message) or `kafka-batch:TOPIC` (one record per batch; needs --kafka).
    #[arg(long, env = "RINGWAY_BACKEND", default_value = "loopback", value_parser = Target::parse)]
    pub backend: Target,
    /// Per-biz route, `BIZ=TARGET` with a target as for --backend; repeat the flag (or
    /// comma-separate in the env var) for several bizs.
    #[arg(long = "route", env = "RINGWAY_ROUTES", value_delimiter = ',', value_parser = parse_route)]
    pub routes: Vec<(u64, Target)>,
    /// Deadline of one backend call (each retry gets its own).
    #[arg(long, env = "RINGWAY_BACKEND_TIMEOUT_MS", default_value_t = 3000)]
    pub backend_timeout_ms: u64,
    /// Attempts per backend call, the first included; only UNAVAILABLE, DEADLINE_EXCEEDED,
    /// RESOURCE_EXHAUSTED and ABORTED are retried (jittered backoff from 50 ms).
    #[arg(long, env = "RINGWAY_BACKEND_ATTEMPTS", default_value_t = 3)]
    pub backend_attempts: u32,
    /// Failed calls in a row that open the circuit: calls then fail at once with
    /// ERROR(CODE_BACKEND_UNAVAILABLE).
    #[arg(long, env = "RINGWAY_BACKEND_BREAKER_FAILURES", default_value_t = 5)]
    pub backend_breaker_failures: u32,
    /// How long the circuit stays open before one probe call is let through.
    #[arg(
        long,
        env = "RINGWAY_BACKEND_BREAKER_COOLDOWN_MS",
        default_value_t = 2000
    )]
    pub backend_breaker_cooldown_ms: u64,
    /// Upstream messages per backend call, batched per core and biz (1 = no batching).
    #[arg(long, env = "RINGWAY_BATCH_SIZE", default_value_t = 32)]
    pub batch_size: usize,
    /// Longest a message waits for its batch to fill.
    #[arg(long, env = "RINGWAY_BATCH_DELAY_MS", default_value_t = 2)]
    pub batch_delay_ms: u64,
    /// Kafka brokers (host:port,...): consume pushes from --push-topic and write undelivered
    /// reports to --undelivered-topic.
    #[arg(long, env = "RINGWAY_KAFKA")]
    pub kafka: Option<String>,
    /// Longest a Kafka consumer's fetch waits for records (librdkafka fetch.wait.max.ms). A
    /// broker that holds a fetch for its whole wait (Tansu does) adds up to this much to every
    /// Kafka push, so librdkafka's default 500 ms is too slow for chat; but each consumer then
    /// sends up to 1000/this fetches a second while its topic is idle, so raise it for a broker
    /// whose fetches are expensive (one that reads object storage on each).
    #[arg(long, env = "RINGWAY_KAFKA_FETCH_WAIT_MS", default_value_t = 10)]
    pub kafka_fetch_wait_ms: u32,
    /// How long produced records wait to share a batch (librdkafka linger.ms): undelivered
    /// reports, forwards, Kafka upstream routes.
    #[arg(long, env = "RINGWAY_KAFKA_LINGER_MS", default_value_t = 1)]
    pub kafka_linger_ms: u32,
    /// Consumer group of the push consumer.
    #[arg(long, env = "RINGWAY_KAFKA_GROUP", default_value = "ringway")]
    pub kafka_group: String,
    /// Topic of PushMessage records (protobuf) to deliver.
    #[arg(long, env = "RINGWAY_PUSH_TOPIC", default_value = "ringway.push")]
    pub push_topic: String,
    /// Topic the node writes PresenceEvent records (a device online / offline) to.
    #[arg(
        long,
        env = "RINGWAY_PRESENCE_TOPIC",
        default_value = "ringway.presence"
    )]
    pub presence_topic: String,
    /// Topic the node writes UndeliveredPush records (protobuf, with the body) to.
    #[arg(
        long,
        env = "RINGWAY_UNDELIVERED_TOPIC",
        default_value = "ringway.undelivered"
    )]
    pub undelivered_topic: String,
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

    // --- cluster ---
    /// Links this node takes at most (also advertised in etcd). The admission ramp grows up to
    /// it; past it, upgrades get 503 with a jittered Retry-After.
    #[arg(long, env = "RINGWAY_CAPACITY", default_value_t = 1_000_000)]
    pub capacity: u64,
    /// Links admitted right after start (default: --capacity, no ramp). A node restarted into
    /// a reconnect storm should start low.
    #[arg(long, env = "RINGWAY_ADMIT_INITIAL")]
    pub admit_initial: Option<u64>,
    /// How many more links the ramp admits every --admit-interval-ms.
    #[arg(long, env = "RINGWAY_ADMIT_STEP", default_value_t = 1_000)]
    pub admit_step: u64,
    #[arg(long, env = "RINGWAY_ADMIT_INTERVAL_MS", default_value_t = 1_000)]
    pub admit_interval_ms: u64,
    /// TCP connections one client address may hold, counted from accept (a link is one; a
    /// handshake in progress is one too); IPv6 addresses count per /64. A connection over it is
    /// closed at accept without reading a byte (ringway_per_ip_closed_total). 0 = no cap. Mind
    /// NATs and load generators on one address.
    #[arg(long, env = "RINGWAY_MAX_LINKS_PER_IP", default_value_t = 0)]
    pub max_links_per_ip: u32,
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
    /// consumer group for the fleet, a Redis lookup per push, forward to the holding node's
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

/// How pushes find the node holding their user (see `cluster::routing`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushRouting {
    Located,
    Broadcast,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[arg(long, env = "RINGWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    #[arg(long, default_value_t = 1)]
    pub biz: u64,
    #[arg(long)]
    pub user: String,
    #[arg(long, default_value = "default")]
    pub device: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
}

impl ServeArgs {
    /// Devices are recorded in the Redis location registry: a cluster with a shared Redis.
    pub fn tracks_locations(&self) -> bool {
        !self.etcd.is_empty() && self.redis.is_some()
    }

    pub fn shard_config(&self, node_id: &str) -> Result<ShardConfig, String> {
        Ok(ShardConfig {
            node_id: node_id.to_owned(),
            max_message_bytes: self.max_message_bytes,
            max_key_bytes: self.max_key_bytes.max(1),
            max_outbound_bytes: self.max_outbound_bytes,
            slow_consumer: Duration::from_millis(self.slow_consumer_ms.max(1)),
            link_rate: self.link_rate,
            link_burst: self.link_burst,
            retry: RetryPolicy {
                initial: Duration::from_millis(self.push_retry_initial_ms.max(1)),
                max_attempts: self.push_retry_max.max(1),
                max_delay: Duration::from_millis(self.push_retry_max_delay_ms.max(1)),
                jitter: 0.2,
            },
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms.max(3)),
            max_devices_per_user: self.max_devices_per_user.max(1),
            presence_events: self.kafka.is_some() || self.tracks_locations(),
            deflate: self.deflate.then_some(DeflatePolicy {
                min_bytes: self.deflate_min_bytes,
                takeover: self.deflate_takeover,
            }),
            body_keys: BodyKeys::parse(&self.body_keys)?,
            ws_echo: self.ws_echo,
        })
    }

    pub fn idem_ttl(&self) -> IdemTtl {
        IdemTtl {
            pending: Duration::from_millis(self.idem_pending_ttl_ms),
            done: Duration::from_millis(self.idem_ttl_ms),
            max_entries: self.idem_max_entries,
            max_bytes: self.idem_max_bytes,
        }
    }
}
