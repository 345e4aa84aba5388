//! How long the users' streams keep pushes for a client that comes back, and how much a
//! resume may replay.

use std::time::Duration;

use clap::Args;

use crate::core::stream::StreamLimits;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Streams and resume")]
pub struct StreamArgs {
    /// Pushes each user's stream keeps at most; older ones leave first. A client that missed
    /// more than this re-syncs from the app's own source (CONNECTED says recovered: false).
    #[arg(long, env = "RINGWAY_STREAM_MAX_LEN", default_value_t = 100)]
    pub stream_max_len: usize,
    /// How long a stream keeps a push. A stream whose pushes are all gone is forgotten; its
    /// next push starts a new epoch.
    #[arg(long, env = "RINGWAY_STREAM_TTL_MS", default_value_t = 300_000)]
    pub stream_ttl_ms: u64,
    /// Most pushes one resume (since=EPOCH:OFFSET) replays; a bigger gap answers
    /// recovered: false, so a storm of reconnects cannot replay without bound.
    #[arg(long, env = "RINGWAY_RESUME_MAX", default_value_t = 100)]
    pub resume_max: u64,
    /// Bytes each core's in-memory streams hold at most: keys, bodies and ~400 bytes of
    /// bookkeeping per push. Past it the core's oldest pushes are dropped early
    /// (ringway_stream_evictions_total).
    #[arg(long, env = "RINGWAY_STREAM_MAX_BYTES", default_value_t = 512 << 20)]
    pub stream_max_bytes: usize,
}

impl StreamArgs {
    pub fn limits(&self) -> StreamLimits {
        StreamLimits {
            max_len: self.stream_max_len.max(1),
            ttl: Duration::from_millis(self.stream_ttl_ms.max(1)),
            resume_max: self.resume_max,
            max_bytes: self.stream_max_bytes,
        }
    }
}
