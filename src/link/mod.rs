//! One device's connection, as state: what it owes the client and what the client owes it.
//! Pure: no sockets, no clocks, no wakers of its own. The core's shard drives it; a link with
//! something new for its socket puts itself on the shard's ready list, and the shell, told so
//! by the shard, moves `out` to the socket.

pub mod bucket;
pub mod idem;
pub mod key;
pub mod push;
pub mod retry;
pub mod stamp;
pub mod timer_wheel;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use thin_vec::ThinVec;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::auth::Identity;
use crate::metrics::{CloseReason, CoreMetrics, Transport};
use crate::proto::{Connected, Frame};
use crate::protocol::deflate::LinkDeflate;
use crate::protocol::events::EventId;
use crate::protocol::handshake::Since;
use crate::protocol::{Codec, events, ws};
use bucket::TokenBucket;
use push::{EncodedPush, StreamAt};
use stamp::Stamp;
use timer_wheel::TimerId;

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
    /// The link's token expired with no REFRESH (an ERROR with CODE_TOKEN_EXPIRED came first).
    pub const TOKEN_EXPIRED: u16 = 4005;
}

/// A push sent on this link and not yet acknowledged.
pub struct Inflight {
    pub push: Rc<EncodedPush>,
    pub seq: u64,
    /// Its place in the user's stream, when stored.
    pub at: Option<StreamAt>,
    /// The first push of an epoch the link did not know: it carries the epoch.
    pub announce: bool,
    /// Sends so far, the first included.
    pub attempts: u32,
    pub timer: TimerId,
    /// Where its latest copy ends in the link's output (see [`Link::queued_end`]): until the
    /// socket has taken that much, the client cannot have had it.
    pub ends_at: u64,
    pub first_sent: Instant,
    /// When the node accepted the push (API, Kafka, loopback): where its whole path starts.
    pub accepted_at: Instant,
}

/// A link whose stream a shared store is still reading (DESIGN §2a): CONNECTED waits for the
/// answer, and so do the client's bytes and the pushes that come meanwhile, so every push
/// lands in offset order after the replay.
#[derive(Default)]
pub struct Opening {
    pub since: Option<Since>,
    /// Unacked pushes of the link this one replaced.
    pub carried: Vec<Inflight>,
    /// Pushes for this link that came before the answer.
    pub held: Vec<Held>,
    /// What the client sent before CONNECTED.
    pub input: Vec<u8>,
    /// Rooms the user left meanwhile: the stored set the answer brings may predate the leave.
    pub left: Vec<String>,
}

/// The offsets of one epoch in `(from, upto]` went out on a link: `from` is where it began
/// (its resume point, or the top when it opened), `upto` the newest sent; `older`, those
/// before `from` sent since (re-read pushes it never had).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    pub epoch: Rc<str>,
    pub from: u64,
    pub upto: u64,
    pub older: Vec<u64>,
}

/// A push waiting for its link's CONNECTED.
pub struct Held {
    pub push: Rc<EncodedPush>,
    pub at: Option<StreamAt>,
    pub accepted_at: Instant,
}

/// A link's compression contexts and the counters that show it is used.
pub struct Deflating {
    pub ctx: LinkDeflate,
    pub metrics: Arc<CoreMetrics>,
}

/// How frames reach the client. Every transport shares the link's rules (acks, retransmits,
/// limits); only the bytes in `out` differ.
pub enum Wire {
    WebSocket(Option<Box<Deflating>>),
    /// Server-sent events (`GET /sse`); upstream arrives by `POST /send`.
    EventStream(Box<Attachment>),
    /// Batches of frames answer `GET /poll`; upstream arrives by `POST /send`.
    LongPoll(Box<Attachment>),
}

/// An HTTP-transport link's hold on the requests that serve it: they come and go (a stream
/// drops, a poll is answered), the link stays. Kept off the WebSocket links.
#[derive(Debug, Default)]
pub struct Attachment {
    /// Bumped by every request that takes the link over; a socket task whose generation is
    /// older steps aside.
    pub generation: u32,
    /// A request's socket currently serves the link.
    pub attached: bool,
    /// The last seq handed to a request's socket before it went away. Pushes after it still
    /// wait in `out`; those up to it may have died with the socket.
    pub seq_at_detach: u64,
    /// Long polling: answer the waiting poll now, even with no frames.
    pub poll_due: bool,
}

/// The links that have something new for their socket (bytes, a close, their end), each
/// listed once until the shard hands it to the shell.
#[derive(Debug, Default)]
pub struct ReadyList(RefCell<Vec<ConnId>>);

impl ReadyList {
    /// Moves the listed links into `into` (empty) and keeps its buffer for the next ones, so
    /// a busy core allocates no list per batch.
    pub fn swap_into(&self, into: &mut Vec<ConnId>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut *self.0.borrow_mut(), into);
    }
}

impl Wire {
    /// The HTTP transports outlive their sockets: a stream that drops, or a poll that was
    /// answered, leaves the link waiting for the next request.
    pub fn is_http(&self) -> bool {
        !matches!(self, Wire::WebSocket(_))
    }

    pub fn attachment(&self) -> Option<&Attachment> {
        match self {
            Wire::WebSocket(_) => None,
            Wire::EventStream(a) | Wire::LongPoll(a) => Some(a),
        }
    }

    pub fn attachment_mut(&mut self) -> Option<&mut Attachment> {
        match self {
            Wire::WebSocket(_) => None,
            Wire::EventStream(a) | Wire::LongPoll(a) => Some(a),
        }
    }

    /// The label links are counted under.
    pub fn transport(&self) -> Transport {
        match self {
            Wire::WebSocket(None) => Transport::WebSocket,
            Wire::WebSocket(Some(_)) => Transport::WebSocketDeflate,
            Wire::EventStream(_) => Transport::EventStream,
            Wire::LongPoll(_) => Transport::LongPoll,
        }
    }
}

pub struct Link {
    /// This link's id, and the list it joins when it has something for its socket.
    conn: ConnId,
    ready: Rc<ReadyList>,
    /// On the ready list now: listed once, however much is queued before the shell looks.
    pub listed: bool,
    pub who: Arc<Identity>,
    pub codec: Codec,
    pub wire: Wire,
    pub reader: ws::WsReader,
    pub bucket: TokenBucket,
    next_seq: u64,
    /// A thin vector (its length and capacity live with its items), like `rooms`: an idle
    /// link's empty list is one word, not three.
    pub inflight: ThinVec<Inflight>,
    /// The part of its user's stream this link holds. A push read twice keeps its first
    /// offset and is not sent again to a link that had it. Boxed: only links of users with a
    /// stream have one.
    pub seen: Option<Box<Followed>>,
    /// Set until the shared store answers for the link's stream.
    pub opening: Option<Box<Opening>>,
    /// The rooms the link is in.
    pub rooms: ThinVec<Rc<str>>,
    pub last_activity: Stamp,
    pub connected_at: Stamp,
    /// The client's address, as the socket says (`GET /v1/links`).
    pub peer: Option<std::net::SocketAddr>,
    pub liveness: Option<TimerId>,
    /// When the link's token runs out (its `exp` plus the grace), and the timer that closes
    /// it then.
    pub token_deadline: Option<(Stamp, TimerId)>,
    /// Bytes waiting for the socket. Empty (and unallocated) on an idle link. The shell reports
    /// what the socket took with [`Link::written`], never by editing it.
    pub out: Vec<u8>,
    /// How many bytes at the front of `out` must still go out whole: the rest of a message the
    /// socket took only part of, or the transport's opening head. Whatever is discarded (a slow
    /// consumer's queue), these stay, so the close that follows starts on a message boundary.
    unbroken: usize,
    /// Bytes the socket took over the link's life: a queue over the cap with this unchanged
    /// for `--slow-consumer-ms` is a client that stopped reading.
    pub written_total: u64,
    /// Set while `out` is over the outbound cap. Boxed: only a link in trouble has one.
    pub backlog: Option<Box<Backlog>>,
    /// When the oldest push still in `out` was queued.
    pub push_queued_at: Option<Stamp>,
    /// When the node accepted the oldest push still in `out`.
    pub push_accepted_at: Option<Stamp>,
    /// Set once the link is closing: the shell flushes `out`, then closes the socket.
    pub closing: Option<CloseReason>,
    /// The closing handshake is over (the client answered, or the linger ran out): the shell
    /// drops the socket.
    pub finished: bool,
    /// How the link was closed, for transports that say it in their own words. Boxed: an open
    /// link has none.
    pub close_note: Option<Box<(u16, Box<str>)>>,
}

/// A link's queued output passed the outbound cap: is its client still reading?
pub struct Backlog {
    /// `Link::written_total` when the check was armed.
    pub written: u64,
    /// The timer that looks again.
    pub timer: TimerId,
}

thread_local! {
    /// Encode-then-compress scratch, one per core.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Link {
    pub fn new(
        conn: ConnId,
        ready: Rc<ReadyList>,
        who: Arc<Identity>,
        codec: Codec,
        wire: Wire,
        bucket: TokenBucket,
        now: Instant,
    ) -> Link {
        let mut reader = ws::WsReader::default();
        reader.deflate = matches!(wire, Wire::WebSocket(Some(_)));
        Link {
            conn,
            ready,
            listed: false,
            who,
            codec,
            wire,
            reader,
            bucket,
            next_seq: 1,
            inflight: ThinVec::new(),
            seen: None,
            opening: None,
            rooms: ThinVec::new(),
            last_activity: now.into(),
            connected_at: now.into(),
            peer: None,
            liveness: None,
            token_deadline: None,
            out: Vec::new(),
            unbroken: 0,
            written_total: 0,
            backlog: None,
            push_queued_at: None,
            push_accepted_at: None,
            closing: None,
            finished: false,
            close_note: None,
        }
    }

    /// Queues the transport's opening bytes (an HTTP response head) before anything else. They
    /// go out whole, like a message.
    pub fn set_head(&mut self, head: Vec<u8>) {
        let waiting = std::mem::replace(&mut self.out, head);
        self.unbroken = self.out.len();
        self.out.extend_from_slice(&waiting);
    }

    /// The socket took the first `n` bytes of `out`.
    pub fn written(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.written_total += n as u64;
        if n >= self.out.len() {
            self.out.clear();
            self.unbroken = 0;
            return;
        }
        // Past what had to go whole, walk messages until the one the write stopped inside.
        let mut end = self.unbroken;
        while end < n {
            end += self.message_len(end);
        }
        self.out.drain(..n);
        self.unbroken = end - n;
    }

    /// Everything queued, handed to one request at once (a long poll's answer).
    pub fn take_out(&mut self) -> Vec<u8> {
        self.unbroken = 0;
        self.written_total += self.out.len() as u64;
        std::mem::take(&mut self.out)
    }

    /// The offset in the link's output, counted over its life, up to which everything queued
    /// so far ends. Once `written_total` reaches it, the socket has taken all of it.
    pub fn queued_end(&self) -> u64 {
        self.written_total + self.out.len() as u64
    }

    /// Drops what the client has not started to receive; a message begun on the wire is kept
    /// whole, so whatever follows still parses.
    pub fn discard_unsent(&mut self) {
        self.out.truncate(self.unbroken);
    }

    /// The length of the message that starts `at` bytes into `out`.
    fn message_len(&self, at: usize) -> usize {
        let rest = &self.out[at..];
        let len = match self.wire {
            Wire::WebSocket(_) => ws::frame_len(rest),
            Wire::EventStream(_) => rest
                .windows(2)
                .position(|w| w == b"\n\n")
                .map_or(rest.len(), |p| p + 2),
            Wire::LongPoll(_) => rest.len(),
        };
        len.clamp(1, rest.len().max(1))
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

    /// Whether the stream entry at `at` went out on this link (live or replayed).
    pub fn has_had(&self, at: &StreamAt) -> bool {
        self.seen.as_ref().is_some_and(|s| {
            s.epoch == at.epoch
                && ((s.from < at.offset && at.offset <= s.upto) || s.older.contains(&at.offset))
        })
    }

    /// Whether the link knows the epoch of `at` (else a push names it).
    pub fn knows_epoch(&self, at: &StreamAt) -> bool {
        self.seen.as_ref().is_some_and(|s| s.epoch == at.epoch)
    }

    /// A stored push went out on the link.
    pub fn record(&mut self, at: &StreamAt) {
        match &mut self.seen {
            Some(s) if s.epoch == at.epoch && at.offset <= s.from => s.older.push(at.offset),
            Some(s) if s.epoch == at.epoch => s.upto = s.upto.max(at.offset),
            _ => {
                self.seen = Some(Box::new(Followed {
                    epoch: at.epoch.clone(),
                    from: at.offset - 1,
                    upto: at.offset,
                    older: Vec::new(),
                }))
            }
        }
    }

    /// Downstream sequence numbers start at 1 on each link; 0 means unset.
    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// The seq of the newest push sent on this link (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn send_frame(&mut self, frame: &Frame) {
        let codec = self.codec;
        let id = match frame.seq {
            0 => EventId::None,
            seq => EventId::Seq(seq),
        };
        self.write_message(id, codec.is_text(), |out| codec.encode(frame, out));
    }

    /// Sends `payload` as one data message of the given kind (`--ws-echo`).
    pub fn send_data(&mut self, text: bool, payload: &[u8]) {
        self.write_message(EventId::None, text, |out| out.extend_from_slice(payload));
    }

    /// Queues a DOWNSTREAM. With `announce`, the frame also names the stream's epoch in its
    /// `connected` field (a client that opened before the stream began learns it there), so
    /// it is encoded for this link alone.
    pub fn send_push(
        &mut self,
        push: &EncodedPush,
        seq: u64,
        at: Option<&StreamAt>,
        announce: bool,
    ) {
        let codec = self.codec;
        let offset = at.map_or(0, |a| a.offset);
        if let Some(at) = at.filter(|_| announce) {
            let frame = Frame {
                connected: Some(Connected {
                    epoch: at.epoch.to_string(),
                    offset: at.offset - 1,
                    ..Connected::default()
                }),
                ..push.frame(seq, offset)
            };
            let id = EventId::Stream(&at.epoch, at.offset);
            return self.write_message(id, codec.is_text(), |out| codec.encode(&frame, out));
        }
        match &self.wire {
            // The common case: the shared prefix copied once, with its exact header.
            Wire::WebSocket(None) => {
                push.write(codec, seq, offset, &mut self.out);
                self.wake();
            }
            _ => {
                let id = at.map_or(EventId::Seq(seq), |a| EventId::Stream(&a.epoch, a.offset));
                self.write_message(id, codec.is_text(), |out| {
                    push.write_payload(codec, seq, offset, out)
                })
            }
        }
    }

    /// Queues one message in the link's transport: a WebSocket message (compressed when agreed
    /// and long enough), an event with its id, or an item of the next poll's batch.
    fn write_message(&mut self, id: EventId<'_>, text: bool, encode: impl FnOnce(&mut Vec<u8>)) {
        let opcode = OpCode::Data(if text { Data::Text } else { Data::Binary });
        match &mut self.wire {
            Wire::WebSocket(None) => {
                ws::write_message_with(&mut self.out, opcode, false, encode);
            }
            // Encoded into the core's scratch, then compressed straight into `out`: no buffer
            // per message.
            Wire::WebSocket(Some(deflate)) => PLAIN.with_borrow_mut(|plain| {
                plain.clear();
                encode(plain);
                if deflate.ctx.wants(plain.len()) {
                    let ctx = &mut deflate.ctx;
                    let len = ws::write_message_with(&mut self.out, opcode, true, |out| {
                        ctx.compress(plain, out)
                    });
                    deflate.metrics.deflated_out.inc();
                    let saved = plain.len().saturating_sub(len) as u64;
                    deflate.metrics.deflate_saved_bytes.add(saved);
                } else {
                    ws::write_frame(&mut self.out, opcode, plain);
                }
            }),
            Wire::EventStream(_) => events::write_event(&mut self.out, id, encode),
            Wire::LongPoll(_) => events::write_batch_item(&mut self.out, encode),
        }
        self.wake();
    }

    pub fn send_control(&mut self, ctl: Control, payload: &[u8]) {
        if !self.wire.is_http() {
            ws::write_frame(&mut self.out, OpCode::Control(ctl), payload);
            self.wake();
        }
    }

    /// Tells a quiet client the link is alive: a ping, an SSE comment, or an empty poll answer.
    pub fn keepalive(&mut self) {
        match &mut self.wire {
            Wire::WebSocket(_) => self.send_control(Control::Ping, b""),
            Wire::EventStream(_) => events::write_comment(&mut self.out),
            Wire::LongPoll(a) => a.poll_due = true,
        }
        self.wake();
    }

    /// Starts the closing handshake: a close frame (or close event) after whatever is queued.
    pub fn close(&mut self, code: u16, reason: &str, why: CloseReason) {
        if self.closing.is_none() {
            match &mut self.wire {
                Wire::WebSocket(_) => ws::write_close(&mut self.out, code, reason),
                Wire::EventStream(_) => events::write_close(&mut self.out, code, reason),
                Wire::LongPoll(a) => a.poll_due = true,
            }
            self.close_note = Some(Box::new((code, reason.into())));
            self.closing = Some(why);
            self.wake();
        }
    }

    /// Puts the link on the ready list, so the shell comes to move its bytes (or drop its
    /// socket).
    pub fn wake(&mut self) {
        if !self.listed {
            self.listed = true;
            self.ready.0.borrow_mut().push(self.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every idle link is one of these, allocated whole: past 320 bytes it moves up to the
    /// allocator's next size class (384), a fifth more memory per idle link.
    #[test]
    fn a_link_fits_the_320_byte_size_class() {
        let size = std::mem::size_of::<super::Link>();
        assert!(size <= 320, "a Link is {size} bytes");
    }
}
