//! The dedup window of upstream keys and where it is kept (per core, or Redis).

use std::time::Duration;

use clap::Args;

use crate::core::embedded::StoreDownPolicy;
use crate::link::idem::IdemTtl;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Idempotency")]
pub struct IdemArgs {
    /// How long an upstream reply is kept to re-ack duplicates.
    #[arg(long, env = "RINGWAY_IDEM_TTL_MS", default_value_t = 600_000)]
    pub idem_ttl_ms: u64,
    /// Keys each core's in-memory idempotency store holds at most: ~95 bytes each once full
    /// (~190 MB per core at the default), ~120 while keys younger than the pending TTL still have
    /// their pending row too (a key is held as a 16-byte fingerprint, whatever its length).
    /// Past it the oldest replies are forgotten early (ringway_idem_evictions_total). The
    /// store's table is sized for this many keys at start (up to 2,097,152): address space
    /// the kernel backs with memory only as keys land on its pages.
    #[arg(long, env = "RINGWAY_IDEM_MAX_ENTRIES", default_value_t = 2_000_000)]
    pub idem_max_entries: usize,
    /// Bytes each core's in-memory idempotency store holds at most: stored backend replies,
    /// and 192 bytes of bookkeeping counted per key. Past it the oldest replies are forgotten
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
    /// Deadline of one Redis round trip; past it the store counts as unreachable. Every call
    /// the gateway waits on is also cut at twice this, whatever state the client is in.
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
    pub redis_unavailable: StoreDownPolicy,
}

impl IdemArgs {
    pub fn idem_ttl(&self) -> IdemTtl {
        IdemTtl {
            pending: Duration::from_millis(self.idem_pending_ttl_ms),
            done: Duration::from_millis(self.idem_ttl_ms),
            max_entries: self.idem_max_entries,
            max_bytes: self.idem_max_bytes,
        }
    }

    /// The deadline of one Redis round trip.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }
}
