//! One device's connection, as state: what it owes the client and what the client owes it.
//! Pure: no sockets, no clocks of its own. The core's shard drives it; the shell moves `out` to
//! the socket.

pub mod bucket;
pub mod idem;
pub mod push;
pub mod retry;

use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::auth::Identity;
use crate::core::timer_wheel::TimerId;
use crate::metrics::CloseReason;
use crate::proto::Frame;
use crate::protocol::{Codec, ws};
use bucket::TokenBucket;
use push::EncodedPush;

/// Identifies a link within its core for its whole life (never reused).
pub type ConnId = u64;

/// Close codes the gateway sends. 1xxx are RFC 6455's; 4xxx are ringway's own.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    /// Server shutting down or the link was redirected elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    /// No frame, heartbeat or pong within the heartbeat timeout.
    pub const IDLE_TIMEOUT: u16 = 4001;
    /// The client read too slowly and its outbound queue passed the cap.
    pub const SLOW_CONSUMER: u16 = 4002;
    /// A newer login took the device slot, or an operator kicked the link.
    pub const KICKED: u16 = 4003;
    /// The link was told to reconnect elsewhere (a REDIRECT frame came first).
    pub const REDIRECTED: u16 = 4004;
}

/// A push sent on this link and not yet acknowledged.
pub struct Inflight {
    pub push: Rc<EncodedPush>,
    pub seq: u64,
    /// Sends so far, the first included.
    pub attempts: u32,
    pub timer: TimerId,
    pub first_sent: Instant,
}

pub struct Link {
    pub who: Arc<Identity>,
    pub codec: Codec,
    pub reader: ws::WsReader,
    pub bucket: TokenBucket,
    next_seq: u64,
    pub inflight: Vec<Inflight>,
    pub last_activity: Instant,
    pub connected_at: Instant,
    pub liveness: Option<TimerId>,
    /// Bytes waiting for the socket. Empty (and unallocated) on an idle link.
    pub out: Vec<u8>,
    /// When the oldest push still in `out` was queued.
    pub push_queued_at: Option<Instant>,
    /// Set once the link is closing: the shell flushes `out`, then closes the socket.
    pub closing: Option<CloseReason>,
    /// The closing handshake is over (the client answered, or the linger ran out): the shell
    /// drops the socket.
    pub finished: bool,
    /// The task that owns the socket, woken when `out` grows or the link starts closing.
    pub waker: Option<Waker>,
}

impl Link {
    pub fn new(who: Arc<Identity>, codec: Codec, bucket: TokenBucket, now: Instant) -> Link {
        Link {
            who,
            codec,
            reader: ws::WsReader::default(),
            bucket,
            next_seq: 1,
            inflight: Vec::new(),
            last_activity: now,
            connected_at: now,
            liveness: None,
            out: Vec::new(),
            push_queued_at: None,
            closing: None,
            finished: false,
            waker: None,
        }
    }

    pub fn link_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.who.biz_id, self.who.user_id, self.who.device_id
        )
    }

    pub fn is_open(&self) -> bool {
        self.closing.is_none()
    }

    /// Downstream sequence numbers start at 1 on each link; 0 means unset.
    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    pub fn send_frame(&mut self, frame: &Frame) {
        let data = if self.codec.is_text() {
            Data::Text
        } else {
            Data::Binary
        };
        let codec = self.codec;
        ws::write_message_with(&mut self.out, OpCode::Data(data), |out| {
            codec.encode(frame, out)
        });
        self.wake();
    }

    pub fn send_push(&mut self, push: &EncodedPush, seq: u64) {
        push.write(self.codec, seq, &mut self.out);
        self.wake();
    }

    pub fn send_control(&mut self, ctl: Control, payload: &[u8]) {
        ws::write_frame(&mut self.out, OpCode::Control(ctl), payload);
        self.wake();
    }

    /// Starts the closing handshake: a close frame after whatever is queued.
    pub fn close(&mut self, code: u16, reason: &str, why: CloseReason) {
        if self.closing.is_none() {
            ws::write_close(&mut self.out, code, reason);
            self.closing = Some(why);
            self.wake();
        }
    }

    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}
