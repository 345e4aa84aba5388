//! The rules every link lives by: rates, sizes, retransmits, heartbeats, compression.

use std::time::Duration;

use clap::Args;

use crate::core::shard::ShardConfig;
use crate::link::bucket::Rate;
use crate::link::retry::RetryPolicy;
use crate::protocol::body_crypt::{BodyKeys, KeySpecError};
use crate::protocol::deflate::DeflatePolicy;
use crate::protocol::ws;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Links")]
pub struct LinkArgs {
    /// Loopback backend pushes every upstream body back to its sender.
    #[arg(long, env = "RINGWAY_ECHO")]
    pub echo: bool,
    /// Upstream messages per second per link (0 = unlimited). Heartbeats and acks are exempt.
    #[arg(long, env = "RINGWAY_LINK_RATE", default_value_t = 50)]
    pub link_rate: u32,
    /// Burst allowance of the per-link rate limit.
    #[arg(long, env = "RINGWAY_LINK_BURST", default_value_t = 100)]
    pub link_burst: u32,
    /// Wait before the first retransmit of an unacked push; doubles each time. A wait that
    /// ends with the push still queued for the link's socket is put off by the same wait and
    /// not counted as a send.
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
    /// Largest client message; bigger ones get ERROR(CODE_TOO_LARGE) and close 1009. At most
    /// 1 GiB.
    #[arg(long, env = "RINGWAY_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024,
          value_parser = message_bytes)]
    pub max_message_bytes: usize,
    /// Longest UPSTREAM key (bytes). A longer one gets ERROR(CODE_TOO_LARGE) without the key
    /// and is not processed; the link stays open. Keys are kept for the dedup window
    /// (--idem-ttl-ms), so this bounds what each one costs.
    #[arg(long, env = "RINGWAY_MAX_KEY_BYTES", default_value_t = 128)]
    pub max_key_bytes: usize,
    /// Accept permessage-deflate (RFC 7692) when a client offers it (browsers always do).
    #[arg(long, env = "RINGWAY_DEFLATE", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
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
    /// Rooms one user may be in (its token's `rooms` claim and API joins): an API join past it
    /// is refused whole (409), claims past it are counted (ringway_rooms_refused_total). Room
    /// names are 1 to 128 bytes.
    #[arg(long, env = "RINGWAY_MAX_ROOMS_PER_USER", default_value_t = 64)]
    pub max_rooms_per_user: usize,
    /// With --redis, how long a user's rooms joined through the API stay stored after the
    /// user's last connect or change (default 30 days); a token's `rooms` claim joins again at
    /// every connect regardless.
    #[arg(long, env = "RINGWAY_ROOM_MEMBERSHIP_TTL_MS", default_value_t = 30 * 24 * 3_600_000)]
    pub room_membership_ttl_ms: u64,
}

/// A message size up to what the frame reader takes ([`ws::MAX_MESSAGE`]).
fn message_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n > ws::MAX_MESSAGE {
        return Err(format!("at most {} (1 GiB)", ws::MAX_MESSAGE));
    }
    Ok(n)
}

impl LinkArgs {
    /// `presence_events`: whether devices coming and going are reported (to Kafka or the
    /// location registry), which the links' flags alone do not say.
    pub fn shard_config(
        &self,
        node_id: &str,
        presence_events: bool,
    ) -> Result<ShardConfig, KeySpecError> {
        Ok(ShardConfig {
            node_id: node_id.to_owned(),
            max_message_bytes: self.max_message_bytes,
            max_key_bytes: self.max_key_bytes.max(1),
            max_outbound_bytes: self.max_outbound_bytes,
            slow_consumer: Duration::from_millis(self.slow_consumer_ms.max(1)),
            link_rate: Rate {
                per_s: self.link_rate,
                burst: self.link_burst,
            },
            retry: RetryPolicy {
                initial: Duration::from_millis(self.push_retry_initial_ms.max(1)),
                max_attempts: self.push_retry_max.max(1),
                max_delay: Duration::from_millis(self.push_retry_max_delay_ms.max(1)),
                jitter: 0.2,
            },
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms.max(3)),
            max_devices_per_user: self.max_devices_per_user.max(1),
            max_rooms_per_user: self.max_rooms_per_user,
            presence_events,
            deflate: self.deflate.then_some(DeflatePolicy {
                min_bytes: self.deflate_min_bytes,
                takeover: self.deflate_takeover,
            }),
            body_keys: BodyKeys::parse(&self.body_keys)?,
            ws_echo: self.ws_echo,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_limit_over_1_gib_is_refused() {
        assert_eq!(super::message_bytes("65536"), Ok(65536));
        assert_eq!(super::message_bytes("1073741824"), Ok(1 << 30));
        assert!(super::message_bytes("1073741825").is_err());
        assert!(super::message_bytes("-1").is_err());
    }
}
