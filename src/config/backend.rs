//! Where upstream messages go, and how calls to a backend are batched, retried and cut off.

use std::time::Duration;

use clap::Args;

use crate::control::grpc_backend::GrpcConfig;
use crate::control::routes::{Target, parse_route};

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Backend")]
pub struct BackendArgs {
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
}

impl BackendArgs {
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

    /// Upstream batches per core and biz: at most this many messages, waiting at most this
    /// long.
    pub fn batching(&self) -> (usize, Duration) {
        (
            self.batch_size.max(1),
            Duration::from_millis(self.batch_delay_ms),
        )
    }
}
