//! Everything one core knows about its links, as a pure state machine in the manner of
//! quinn-proto's `Connection`.
//!
//! The shard owns its links, their user index, the timer wheel and the services it answers
//! itself (the core's idempotency store, the loopback backend). The glommio shell feeds it
//! events with the current time (`handle_bytes`, `handle_written`, `handle_timeout`, `push`,
//! `on_claimed`, `on_upstream_result`, ...) and takes its outputs: [`Shard::poll_event`] for
//! what the world must do (wake a link's socket task, claim a key in the shared store, call a
//! backend, report), [`Shard::poll_transmit`] for a link's bytes, and [`Shard::poll_timeout`]
//! for when to call `handle_timeout` next. The shard never touches a socket, a waker or a
//! clock, so every rule here is tested exactly, without sleeps.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tungstenite::protocol::frame::coding::Control;

use super::embedded::{Embedded, StoreDownPolicy, StreamStore};
use super::stream::{Resume, StreamAppend, StreamRead};
use crate::FastMap;
use crate::auth::Identity;
use crate::link::bucket::{Rate, TokenBucket};
use crate::link::idem::{Claim, IdemStore, IdemUpdate, Probe};
use crate::link::key::MessageKey;
use crate::link::push::{EncodedPush, Spent, StreamAt, Unsettled};
use crate::link::retry::RetryPolicy;
use crate::link::timer_wheel::TimerWheel;
use crate::link::{Backlog, ConnId, Deflating, Held, Inflight, Link, ReadyList, Wire, close_code};
use crate::metrics::{CloseReason, CoreMetrics, DropReason, Latencies, UndeliveredReason};
use crate::proto::{Cmd, Code, Connected, Frame, Node};
use crate::protocol::Codec;
use crate::protocol::arena::Arena;
use crate::protocol::body_crypt::BodyKeys;
use crate::protocol::deflate::{self, DeflatePolicy};
use crate::protocol::handshake::{self, Since};
use crate::protocol::ws::{WsError, WsEvent};

/// Decoded frames a core keeps for reuse: one pass's worth of acks.
const SPARE_FRAMES: usize = 64;

/// One user's links on a core: a few devices, kept off the heap.
pub(crate) type UserLinks = smallvec::SmallVec<[ConnId; 4]>;

/// A user's open links in the user index: most users hold one or two on a core, and those
/// fit in the 24 bytes a `Vec` takes without its heap block.
type Devices = smallvec::SmallVec<[ConnId; 2]>;

/// The user index's key: the identity of one of the user's links, looked up by its user id.
/// The link already holds that string, so the index keeps no copy of it per user.
struct UserKey(Arc<Identity>);

impl std::borrow::Borrow<str> for UserKey {
    fn borrow(&self) -> &str {
        &self.0.user_id
    }
}

impl std::hash::Hash for UserKey {
    /// As the `str` it borrows as, so lookups by `&str` find it.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.user_id.hash(state);
    }
}

impl PartialEq for UserKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.user_id == other.0.user_id
    }
}

impl Eq for UserKey {}

/// The knobs a shard runs by.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub node_id: String,
    pub max_message_bytes: usize,
    /// Longest upstream key: keys are stored for the dedup window, so their size is memory.
    pub max_key_bytes: usize,
    pub max_outbound_bytes: usize,
    /// A link over `max_outbound_bytes` is closed as a slow consumer only once its socket has
    /// taken no byte for this long: a client that keeps reading survives a burst.
    pub slow_consumer: Duration,
    /// Upstream messages a link may send (`--link-rate`, `--link-burst`).
    pub link_rate: Rate,
    pub retry: RetryPolicy,
    pub heartbeat_timeout: Duration,
    pub max_devices_per_user: usize,
    /// Record online/offline events for the presence topic.
    pub presence_events: bool,
    /// Rooms one link may be in (`--max-rooms-per-user`); joins past it are refused.
    pub max_rooms_per_user: usize,
    /// permessage-deflate, when offered; `None` declines every offer.
    pub deflate: Option<DeflatePolicy>,
    /// Bizs whose bodies travel sealed between clients and the gateway.
    pub body_keys: BodyKeys,
    /// Conformance mode (`--ws-echo`): data messages come back as they are.
    pub ws_echo: bool,
}

impl ShardConfig {
    /// What CONNECTED tells clients: three beats fit in one timeout.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_timeout / 3
    }
}

/// An upstream message on its way to the backend.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub conn: ConnId,
    pub who: Arc<Identity>,
    /// Scoped to `who`, and shared with the idempotency store.
    pub key: MessageKey,
    pub body: Bytes,
    pub received_at: Instant,
    /// The key hashed in the core's own store (none when a shared store claims it), so the
    /// claim and the reply's completion each find its slot without hashing it again.
    pub probe: Option<Probe>,
}

/// How the backend answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// Down, timed out or overloaded: the client may retry.
    Unavailable(String),
    /// Refused this message: retrying it will not help.
    Rejected(String),
}

/// A push that reached no device; the shell reports it (log + metric, later Kafka).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub biz_id: u64,
    pub user_id: String,
    pub device_id: Option<String>,
    pub key: String,
    /// The push's body, so whoever reads the report can store or resend it.
    pub body: Bytes,
    pub reason: UndeliveredReason,
    /// Where the push sits in the user's stream (empty and 0: not stored), so whoever reads
    /// the report knows a resuming client will still get it.
    pub epoch: String,
    pub offset: u64,
    /// Keeps the push unsettled (its Kafka offset uncommitted) until the report is written: a
    /// crash in between re-reads the push instead of losing the report.
    pub hold: Option<Arc<Unsettled>>,
}

/// One open link as `GET /v1/links` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinkInfo {
    pub device_id: String,
    pub transport: &'static str,
    /// When it opened, in milliseconds since the epoch.
    pub connected_ms: u64,
    pub unacked_pushes: usize,
    /// Bytes waiting for its socket.
    pub queued_bytes: usize,
    pub remote: Option<String>,
}

/// A device came online (its first link here opened) or went offline, for the presence topic
/// and the location registry, which answers presence queries.
#[derive(Debug, Clone)]
pub struct DeviceEvent {
    pub who: Arc<Identity>,
    pub online: bool,
    pub transport: &'static str,
}

/// How a push travels.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// Report users with no link here undelivered (false in broadcast routing, where another
    /// node may hold them: they are only counted, and not stored here).
    pub report_offline: bool,
    /// No stream, no ack, no retransmit, no report; dropped for a backlogged link.
    pub ephemeral: bool,
    /// When the node accepted the push: where its whole path starts.
    pub accepted_at: Instant,
}

/// Which links a push, kick or redirect is for.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub biz_id: u64,
    pub user_id: &'a str,
    pub device_id: Option<&'a str>,
}

/// What the shard asks of the world, in the order it arose (see [`Shard::poll_event`]).
#[derive(Debug)]
pub enum Event {
    /// The link has something for its socket (bytes, a close, its end): wake the task that
    /// owns the socket.
    Wake(ConnId),
    /// Claim this message's key in the shared store; answer with [`Shard::on_claimed`].
    Claim(UpstreamRequest),
    /// Hand this message to its backend; answer with [`Shard::on_upstream_result`].
    Upstream(UpstreamRequest),
    /// Store a reply or release a claim in the shared store; nothing answers.
    IdemUpdate(IdemUpdate),
    /// A device came online or went offline, when `presence_events` is on.
    Presence(DeviceEvent),
    /// A push reached no device: report it.
    Undelivered(Undelivered),
    /// Append to the shared stream store; answer with [`Shard::on_appended`].
    StreamAppend(StreamAppend),
    /// Read a stream from the shared store for a link that opens; answer with
    /// [`Shard::on_stream_read`].
    StreamRead(StreamRead),
    /// Check a REFRESH's token; answer with [`Shard::on_refreshed`].
    Refresh { conn: ConnId, token: String },
}

/// What a link's socket should do next (see [`Shard::poll_transmit`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit<'a> {
    /// The link is over: drop the socket.
    Gone,
    /// Write these bytes, then say how many the socket took with [`Shard::handle_written`].
    Bytes(&'a [u8]),
    /// Nothing queued. `closing`: all up to the close is out, so the write side may shut.
    Idle { closing: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerEvent {
    Liveness(ConnId),
    Retransmit(ConnId, u64),
    /// A link over its outbound cap: did its socket take anything since the check was armed?
    Backlog(ConnId),
    /// The link's token ran out.
    TokenExpiry(ConnId),
}

pub struct Shard {
    cfg: ShardConfig,
    embedded: Embedded,
    /// Boxed: the map keeps room for up to twice its links, and a spare slot of a key and a
    /// pointer costs 16 bytes where an inline link would cost over 500.
    links: FastMap<ConnId, Box<Link>>,
    /// Links with something for their socket, filled by the links themselves.
    ready: Rc<ReadyList>,
    /// Taken from `ready`, not yet handed out as [`Event::Wake`].
    woken: Vec<ConnId>,
    /// (biz, user) → that user's open links on this core, oldest first.
    users: FastMap<u64, FastMap<UserKey, Devices>>,
    /// (biz, room) → the links of this core in the room.
    rooms: FastMap<u64, FastMap<Rc<str>, Vec<ConnId>>>,
    wheel: TimerWheel<TimerEvent>,
    rng: SmallRng,
    pub metrics: Arc<CoreMetrics>,
    latencies: Latencies,
    /// Upstream messages waiting for their idempotency claim, answered by [`Shard::settle`];
    /// probed in the core's store unless a shared store claims them.
    claims: VecDeque<UpstreamRequest>,
    /// Ends of claims the core's store did not probe (a shared store's), applied by
    /// [`Shard::settle`]. A probed key's claim ends in its slot at once (see
    /// [`UpstreamRequest::probe`]).
    idem_updates: VecDeque<IdemUpdate>,
    /// Claimed upstream messages on their way to a backend, routed by [`Shard::settle`].
    upstream: VecDeque<UpstreamRequest>,
    events: VecDeque<Event>,
    /// Pushes waiting for the shared stream store, in arrival order.
    appends: resume::Appends,
    inbound: Vec<Inbound>,
    /// Decoded frames given back once handled (acks, heartbeats), decoded into again: a
    /// frame's strings keep their capacity, so an ack costs no allocation. Boxed because a
    /// frame is 280 bytes, and on the echo path each move of one (into the inbound queue, out
    /// of it, back here) was a copy call: 70 ns a message.
    #[allow(clippy::vec_box)]
    spare_frames: Vec<Box<Frame>>,
    /// Scratch for inflating compressed messages, reused across links and messages.
    inflated: Vec<u8>,
    /// What received protobuf frames are decoded out of, so their bodies are shared.
    arena: Arena,
    /// Acked pushes, for [`Shard::encode_push`] to reuse.
    spent: Spent,
}

/// The first frame of every link, and of every re-attached event stream, with its user's
/// stream as it stands.
fn connected_frame(cfg: &ShardConfig, link: &Link, stream: &Resume) -> Frame {
    Frame {
        cmd: Cmd::Connected as i32,
        connected: Some(Connected {
            link_id: link.link_id(),
            node_id: cfg.node_id.clone(),
            heartbeat_interval_ms: cfg.heartbeat_interval().as_millis() as u32,
            server_time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            epoch: stream.epoch.to_string(),
            offset: stream.top,
            recovered: stream.recovered(),
        }),
        ..Default::default()
    }
}

mod http;
mod input;
mod resume;
mod rooms;
mod token;

use input::Inbound;
pub use rooms::Audience;

const TICK: Duration = Duration::from_millis(10);
/// The coarsest rounding of a liveness check (see `Shard::next_liveness`).
const LIVENESS_GRAIN: Duration = Duration::from_millis(250);
/// A closing link gets this long to take its close frame before its socket is dropped.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

impl Shard {
    pub fn new(
        cfg: ShardConfig,
        embedded: Embedded,
        metrics: Arc<CoreMetrics>,
        seed: u64,
        now: Instant,
    ) -> Shard {
        Shard {
            cfg,
            embedded,
            links: FastMap::default(),
            ready: Rc::default(),
            woken: Vec::new(),
            users: FastMap::default(),
            rooms: FastMap::default(),
            wheel: TimerWheel::new(TICK, 4096, now),
            rng: SmallRng::seed_from_u64(seed),
            metrics,
            latencies: Latencies::default(),
            claims: VecDeque::new(),
            idem_updates: VecDeque::new(),
            upstream: VecDeque::new(),
            events: VecDeque::new(),
            appends: resume::Appends::default(),
            inbound: Vec::new(),
            spare_frames: Vec::new(),
            arena: Arena::default(),
            spent: Spent::default(),
            inflated: Vec::new(),
        }
    }

    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    /// A push from a backend, encoded once for every device of this core (its body sealed
    /// here when the biz encrypts bodies).
    pub fn encode_push(
        &mut self,
        biz_id: u64,
        key: impl Into<MessageKey>,
        body: Bytes,
        unsettled: Option<Arc<Unsettled>>,
    ) -> Rc<EncodedPush> {
        let wire = self.cfg.body_keys.seal(biz_id, body.clone());
        self.spent.tracked(key, body, wire, unsettled)
    }

    /// A room message or broadcast, encoded once for this core's members (sealed here when
    /// the biz encrypts bodies).
    pub fn encode_room(&self, biz_id: u64, key: &str, room: &str, body: Bytes) -> Rc<EncodedPush> {
        let wire = self.cfg.body_keys.seal(biz_id, body.clone());
        EncodedPush::for_room(key, room, body, wire)
    }

    #[cfg(test)]
    pub fn link_mut(&mut self, conn: ConnId) -> Option<&mut Link> {
        self.links.get_mut(&conn).map(|l| &mut **l)
    }

    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    pub fn timer_count(&self) -> usize {
        self.wheel.len()
    }

    /// The next thing the world must do for the shard, oldest first; `None` once there is
    /// nothing. The shell drains it after every event it feeds in.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if self.woken.is_empty() {
            self.ready.swap_into(&mut self.woken);
            self.woken.reverse();
        }
        let conn = self.woken.pop()?;
        if let Some(link) = self.links.get_mut(&conn) {
            link.listed = false;
        }
        Some(Event::Wake(conn))
    }

    /// What the link's socket should do now. Long-poll links answer with
    /// [`Shard::take_poll_answer`] instead.
    pub fn poll_transmit(&self, conn: ConnId) -> Transmit<'_> {
        match self.links.get(&conn) {
            None => Transmit::Gone,
            Some(l) if l.finished => Transmit::Gone,
            Some(l) if !l.out.is_empty() => Transmit::Bytes(&l.out),
            Some(l) => Transmit::Idle {
                closing: l.closing.is_some(),
            },
        }
    }

    /// The socket took the first `n` bytes [`Shard::poll_transmit`] offered.
    pub fn handle_written(&mut self, conn: ConnId, n: usize, now: Instant) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        link.written(n);
        if link.out.is_empty() {
            if let Some(queued) = link.push_queued_at.take() {
                let us = now.saturating_duration_since(queued.instant()).as_micros() as u64;
                Latencies::record(&mut self.latencies.push_write_wait, us);
            }
            if let Some(accepted) = link.push_accepted_at.take() {
                let us = now
                    .saturating_duration_since(accepted.instant())
                    .as_micros() as u64;
                Latencies::record(&mut self.latencies.push_written, us);
            }
            // A burst's buffer is not kept for an idle link, nor the one that carried the 101
            // and CONNECTED (~400 bytes): most links are idle, and one that is not grows a
            // buffer once for its traffic and keeps it.
            let first_write = link.written_total == n as u64;
            if link.out.capacity() > 4096 || first_write {
                link.out = Vec::new();
            }
        }
    }

    /// A WebSocket passed auth on this (its owner) core: answer 101, greet with CONNECTED, and
    /// make room in the user's device slots.
    /// `expires`: when the token runs out (its `exp` plus the grace).
    pub fn open(
        &mut self,
        conn: ConnId,
        who: Identity,
        up: &handshake::Upgrade,
        expires: Instant,
        now: Instant,
    ) {
        let deflate =
            self.cfg
                .deflate
                .zip(up.extensions.as_deref())
                .and_then(|(policy, offers)| {
                    let agreed = deflate::negotiate(offers, policy)?;
                    Some(Box::new(Deflating {
                        ctx: deflate::LinkDeflate::new(agreed, policy),
                        metrics: self.metrics.clone(),
                    }))
                });
        let mut head = Vec::new();
        handshake::accept_response(up, deflate.as_ref().map(|d| &d.ctx.agreed), &mut head);
        let wire = Wire::WebSocket(deflate);
        let since = up.since.as_ref();
        self.install(conn, Arc::new(who), up.codec, wire, head, since, now);
        self.extend_token(conn, expires);
    }

    /// Makes room in the user's device slots, then adds the link with its transport's opening
    /// bytes and CONNECTED, and replays its stream after `since`.
    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        conn: ConnId,
        who: Arc<Identity>,
        codec: Codec,
        wire: Wire,
        head: Vec<u8>,
        since: Option<&Since>,
        now: Instant,
    ) {
        let existing = self.user_conns(who.biz_id, &who.user_id).to_vec();

        // Same device slot: the newer login wins; its unacked pushes move to the new link.
        let mut carried = Vec::new();
        for old in &existing {
            if self.links[old].who.device_id == who.device_id {
                let link = self.links.get_mut(old).expect("indexed link exists");
                carried.extend(link.inflight.drain(..));
                for f in &carried {
                    self.wheel.cancel(f.timer);
                }
                self.kick_link(*old, "replaced by a newer login on the same device", now);
            }
        }
        // Device cap: the oldest devices make room.
        let live = self.user_conns(who.biz_id, &who.user_id).to_vec();
        let over = (live.len() + 1).saturating_sub(self.cfg.max_devices_per_user.max(1));
        for old in live.into_iter().take(over) {
            self.kick_link(
                old,
                "device limit reached; the oldest device was signed out",
                now,
            );
        }

        let bucket = TokenBucket::new(self.cfg.link_rate, now);
        let transport = wire.transport();
        let ready = self.ready.clone();
        let mut link = Link::new(conn, ready, who.clone(), codec, wire, bucket, now);
        link.set_head(head);
        let check = self.next_liveness(now);
        link.liveness = Some(self.wheel.insert(check, TimerEvent::Liveness(conn)));
        self.links.insert(conn, Box::new(link));
        let users = self.users.entry(who.biz_id).or_default();
        match users.get_mut(&*who.user_id) {
            Some(devices) => devices.push(conn),
            None => {
                users.insert(UserKey(who.clone()), smallvec::smallvec![conn]);
            }
        }
        self.metrics.links.inc();
        self.metrics.links_opened.inc();
        self.metrics.links_by_transport.inc(transport);
        if self.cfg.presence_events {
            self.events.push_back(Event::Presence(DeviceEvent {
                who: who.clone(),
                online: true,
                transport: transport.label(),
            }));
        }

        self.open_stream(conn, &who, since, carried, now);
    }

    fn on_upstream(&mut self, conn: ConnId, mut f: Box<Frame>, now: Instant) {
        let link = self.links.get_mut(&conn).expect("caller checked");
        if f.key.is_empty() {
            self.metrics.dropped(DropReason::MissingKey);
            self.reply_error(conn, "", Code::MissingKey, "UPSTREAM needs a key".into());
            return;
        }
        if f.key.len() > self.cfg.max_key_bytes {
            // Not echoed back: the key is what was too large.
            self.metrics.dropped(DropReason::KeyTooLarge);
            let max = self.cfg.max_key_bytes;
            let reason = format!("keys are limited to {max} bytes");
            self.reply_error(conn, "", Code::TooLarge, reason);
            return;
        }
        if let Err(wait) = link.bucket.try_take(self.cfg.link_rate, now) {
            self.metrics.dropped(DropReason::RateLimited);
            let frame = Frame {
                cmd: Cmd::RateLimited as i32,
                key: std::mem::take(&mut f.key),
                code: Code::RateLimited as i32,
                retry_after_ms: wait.as_millis().max(1) as u32,
                ..Default::default()
            };
            link.send_frame(&frame);
            self.metrics.frame_out(Cmd::RateLimited);
            return;
        }
        let body = std::mem::take(&mut f.body);
        let Ok(body) = self.cfg.body_keys.open(link.who.biz_id, body) else {
            self.metrics.dropped(DropReason::BadFrame);
            let reason = "body does not decrypt with this biz's key".to_owned();
            self.reply_error(conn, &f.key, Code::BadFrame, reason);
            return;
        };
        let probe = self.embedded.shared_store.is_none().then(|| {
            let who = &link.who;
            self.embedded.store.probe(who, &f.key)
        });
        let req = UpstreamRequest {
            conn,
            who: link.who.clone(),
            key: MessageKey::from(f.key.as_str()),
            body,
            received_at: now,
            probe,
        };
        self.claims.push_back(req);
        // Its key's buffer decodes the next frame.
        if self.spare_frames.len() < SPARE_FRAMES {
            self.spare_frames.push(f);
        }
    }

    /// The shared store answered a claim ([`Event::Claim`]); `None`: it was unreachable, and
    /// the store-down policy decides.
    pub fn on_claimed(&mut self, req: UpstreamRequest, claim: Option<Claim>, now: Instant) {
        let policy = self.embedded.shared_store.unwrap_or(StoreDownPolicy::Local);
        match (claim, policy) {
            (Some(claim), _) => self.claimed(req, claim, now),
            (None, StoreDownPolicy::Local) => {
                self.metrics.idem_fallbacks.inc();
                let claim = self.embedded.store.claim(&req.who, &req.key, now);
                self.claimed(req, claim, now);
            }
            (None, StoreDownPolicy::Refuse) => self.claim_refused(req),
        }
        self.settle(now);
    }

    /// A store answered a claim: forward a fresh message, re-ack a finished one, drop one
    /// whose first copy is still with the backend.
    fn claimed(&mut self, req: UpstreamRequest, claim: Claim, now: Instant) {
        match claim {
            Claim::Fresh => {
                self.metrics.upstream_forwarded.inc();
                self.upstream.push_back(req);
            }
            Claim::Pending => self.metrics.dropped(DropReason::DuplicatePending),
            Claim::Done(reply) => {
                self.metrics.upstream_reacked.inc();
                self.send_ack(req.conn, &req.key, reply);
                self.check_backlog(req.conn, now);
            }
        }
    }

    /// No claim could be made (the idempotency store is down and the node refuses to forward
    /// without one): the client gets ERROR and may retry.
    fn claim_refused(&mut self, req: UpstreamRequest) {
        self.metrics.dropped(DropReason::StoreUnavailable);
        let reason = "idempotency store unavailable; retry later".to_owned();
        self.reply_error(req.conn, &req.key, Code::BackendUnavailable, reason);
    }

    /// The backend answered an upstream message ([`Event::Upstream`]).
    pub fn on_upstream_result(
        &mut self,
        req: &UpstreamRequest,
        result: Result<Bytes, BackendError>,
        now: Instant,
    ) {
        self.answered(req, result, now);
        self.settle(now);
    }

    fn answered(
        &mut self,
        req: &UpstreamRequest,
        result: Result<Bytes, BackendError>,
        now: Instant,
    ) {
        let kept = result.as_ref().ok().cloned();
        match (req.probe, kept) {
            (Some(probe), kept) => self.embedded.store.finish_probed(probe, kept, now),
            (None, Some(reply)) => self.idem_updates.push_back(IdemUpdate::Complete {
                who: req.who.clone(),
                key: req.key.clone(),
                reply,
            }),
            (None, None) => self.idem_updates.push_back(IdemUpdate::Release {
                who: req.who.clone(),
                key: req.key.clone(),
            }),
        }
        match result {
            Ok(reply) => {
                self.metrics.upstream_acked.inc();
                let us = now.saturating_duration_since(req.received_at).as_micros() as u64;
                Latencies::record(&mut self.latencies.upstream, us);
                self.send_ack(req.conn, &req.key, reply);
            }
            Err(e) => {
                self.metrics.upstream_failed.inc();
                let (code, reason) = match e {
                    BackendError::Unavailable(r) => (Code::BackendUnavailable, r),
                    BackendError::Rejected(r) => (Code::BackendRejected, r),
                };
                self.reply_error(req.conn, &req.key, code, reason);
            }
        }
        self.check_backlog(req.conn, now);
    }

    fn send_ack(&mut self, conn: ConnId, key: &str, body: Bytes) {
        if let Some(link) = self.links.get_mut(&conn).filter(|l| l.is_open()) {
            // Built in a spare frame, whose key string keeps its capacity.
            let mut frame = self.spare_frames.pop().unwrap_or_default();
            prost::Message::clear(&mut frame);
            frame.cmd = Cmd::UpstreamAck as i32;
            frame.key.push_str(key);
            frame.body = self.cfg.body_keys.seal(link.who.biz_id, body);
            link.send_frame(&frame);
            frame.body = Bytes::new();
            self.spare_frames.push(frame);
            self.metrics.frame_out(Cmd::UpstreamAck);
        }
    }

    fn reply_error(&mut self, conn: ConnId, key: &str, code: Code, reason: String) {
        if let Some(link) = self.links.get_mut(&conn).filter(|l| l.is_open()) {
            let frame = Frame {
                cmd: Cmd::Error as i32,
                key: key.to_owned(),
                code: code as i32,
                reason,
                ..Default::default()
            };
            link.send_frame(&frame);
            self.metrics.frame_out(Cmd::Error);
        }
    }

    fn on_downstream_ack(&mut self, conn: ConnId, key: &str, now: Instant) {
        if key.is_empty() {
            self.metrics.dropped(DropReason::MissingKey);
            self.reply_error(
                conn,
                "",
                Code::MissingKey,
                "DOWNSTREAM_ACK needs the push key".into(),
            );
            return;
        }
        let link = self.links.get_mut(&conn).expect("caller checked");
        // Duplicate acks, and acks for pushes that already gave up, are harmless no-ops.
        let mut i = 0;
        while i < link.inflight.len() {
            if &*link.inflight[i].push.key == key {
                let f = link.inflight.swap_remove(i);
                self.wheel.cancel(f.timer);
                self.spent.give(f.push);
                self.metrics.push_acked.inc();
                let us = now.saturating_duration_since(f.first_sent).as_micros() as u64;
                Latencies::record(&mut self.latencies.push_ack, us);
                let us = now.saturating_duration_since(f.accepted_at).as_micros() as u64;
                Latencies::record(&mut self.latencies.push_acked, us);
            } else {
                i += 1;
            }
        }
    }

    /// Delivers a push to every matching open link of each user, after appending it to the
    /// user's stream (unless it is for one device, or ephemeral). Users with no matching link
    /// are reported undelivered (offline) when `report_offline`; in broadcast routing another
    /// node may hold them, so they are only counted.
    pub fn push(
        &mut self,
        biz_id: u64,
        user_ids: &[impl AsRef<str>],
        device_id: Option<&str>,
        push: &Rc<EncodedPush>,
        how: Delivery,
        now: Instant,
    ) {
        for user in user_ids {
            let user = user.as_ref();
            if how.ephemeral {
                let conns = self.matching(&Target {
                    biz_id,
                    user_id: user,
                    device_id,
                });
                self.send_ephemeral(&conns, push);
            } else {
                self.push_user(biz_id, user, device_id, push, how, now);
            }
        }
    }

    /// Whether the user has an open link on this core.
    fn has_links(&self, biz_id: u64, user: &str) -> bool {
        !self.user_conns(biz_id, user).is_empty()
    }

    /// Delivers a push, stored or not, to the user's matching links, or reports it when there
    /// is none.
    #[allow(clippy::too_many_arguments)]
    fn fan_out(
        &mut self,
        biz_id: u64,
        user: &str,
        device_id: Option<&str>,
        push: &Rc<EncodedPush>,
        stored: Option<(StreamAt, bool)>,
        how: Delivery,
        now: Instant,
    ) {
        {
            let conns = self.matching(&Target {
                biz_id,
                user_id: user,
                device_id,
            });
            if conns.is_empty() {
                if how.report_offline {
                    let at = stored.as_ref().map(|(at, _)| at);
                    let offline = UndeliveredReason::Offline;
                    self.report(biz_id, user, device_id, push, at, offline);
                } else {
                    self.metrics.pushes_not_here.inc();
                }
                return;
            }
            for conn in conns {
                let at = match &stored {
                    // A push read twice goes only to links that never had its offset.
                    Some((at, _)) if self.links[&conn].has_had(at) => continue,
                    Some((at, _)) => Some(at.clone()),
                    None => None,
                };
                self.deliver(conn, push.clone(), at, now, how.accepted_at, None);
                let us = now.saturating_duration_since(how.accepted_at).as_micros() as u64;
                Latencies::record(&mut self.latencies.push_delivery, us);
            }
        }
    }

    fn deliver(
        &mut self,
        conn: ConnId,
        push: Rc<EncodedPush>,
        at: Option<StreamAt>,
        now: Instant,
        accepted_at: Instant,
        first_sent: Option<Instant>,
    ) {
        let delay = self.cfg.retry.delay(1, self.rng.random());
        let link = self
            .links
            .get_mut(&conn)
            .expect("delivering to a live link");
        if let Some(opening) = &mut link.opening {
            // Its CONNECTED has not gone out yet: the push follows it.
            let held = Held {
                push,
                at,
                accepted_at,
            };
            return opening.held.push(held);
        }
        // The stream began (or began again, its history lost) while the link was open: this
        // push names its epoch, so the client can resume from it.
        let announce = at.as_ref().is_some_and(|at| !link.knows_epoch(at));
        let seq = link.take_seq();
        link.push_queued_at.get_or_insert(now.into());
        link.push_accepted_at.get_or_insert(accepted_at.into());
        link.send_push(&push, seq, at.as_ref(), announce);
        if let Some(at) = &at {
            link.record(at);
        }
        let timer = self
            .wheel
            .insert(now + delay, TimerEvent::Retransmit(conn, seq));
        let ends_at = link.queued_end();
        link.inflight.push(Inflight {
            push,
            seq,
            at,
            announce,
            attempts: 1,
            timer,
            ends_at,
            first_sent: first_sent.unwrap_or(now),
            accepted_at,
        });
        self.metrics.pushes_sent.inc();
        self.metrics.frame_out(Cmd::Downstream);
        self.check_backlog(conn, now);
    }

    fn report(
        &mut self,
        biz_id: u64,
        user: &str,
        device: Option<&str>,
        push: &EncodedPush,
        at: Option<&StreamAt>,
        reason: UndeliveredReason,
    ) {
        self.metrics.undelivered(reason);
        self.events.push_back(Event::Undelivered(Undelivered {
            biz_id,
            user_id: user.to_owned(),
            device_id: device.map(str::to_owned),
            key: push.key.to_string(),
            body: push.body().clone(),
            reason,
            epoch: at.map_or_else(String::new, |a| a.epoch.to_string()),
            offset: at.map_or(0, |a| a.offset),
            hold: push.hold(),
        }));
    }

    /// Advances the timer wheel: retransmits, liveness checks, server pings.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.wheel.advance(now, |ev| due.push(ev));
        for ev in due {
            match ev {
                TimerEvent::Retransmit(conn, seq) => self.retransmit_due(conn, seq, now),
                TimerEvent::Liveness(conn) => self.liveness(conn, now),
                TimerEvent::Backlog(conn) => self.backlog(conn, now),
                TimerEvent::TokenExpiry(conn) => self.token_expired(conn, now),
            }
        }
    }

    /// When [`Shard::handle_timeout`] next has work: the earliest pending deadline. The shell sleeps until
    /// then (an idle core wakes only for its links' own deadlines), as quinn-proto's
    /// `poll_timeout` lets its caller arm a single timer.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.wheel.next_deadline()
    }

    /// No deadline is earlier than this; cheap, for asking after every event whether a timer
    /// armed for [`Shard::poll_timeout`] must fire sooner.
    pub fn timeout_floor(&self) -> Option<Instant> {
        self.wheel.earliest()
    }

    /// A push's retransmit deadline came. One still queued behind a socket that is not taking
    /// bytes as fast as they come (a core at saturation, a client reading slowly) cannot have
    /// reached the client, and a copy would only queue behind it: the deadline is put off, not
    /// counted as an attempt. The slow-consumer check deals with a socket that takes nothing.
    fn retransmit_due(&mut self, conn: ConnId, seq: u64, now: Instant) {
        let Some(link) = self.links.get_mut(&conn).filter(|l| l.is_open()) else {
            return;
        };
        let written = link.written_total;
        let Some(f) = link.inflight.iter_mut().find(|f| f.seq == seq) else {
            return;
        };
        if written >= f.ends_at {
            return self.retransmit(conn, seq, now);
        }
        let delay = self.cfg.retry.delay(f.attempts, self.rng.random());
        f.timer = self
            .wheel
            .insert(now + delay, TimerEvent::Retransmit(conn, seq));
        self.metrics.push_retransmits_deferred.inc();
    }

    /// Sends an unacked push again (its deadline came, or the socket that took it is gone), or
    /// reports it once its attempts are used up.
    fn retransmit(&mut self, conn: ConnId, seq: u64, now: Instant) {
        let max = self.cfg.retry.max_attempts;
        let unit: f64 = self.rng.random();
        let Some(link) = self.links.get_mut(&conn).filter(|l| l.is_open()) else {
            return;
        };
        let Some(i) = link.inflight.iter().position(|f| f.seq == seq) else {
            return;
        };
        if link.inflight[i].attempts >= max {
            let f = link.inflight.swap_remove(i);
            if f.push.is_room() {
                self.metrics.room_undelivered.inc();
                return;
            }
            let who = link.who.clone();
            self.report(
                who.biz_id,
                &who.user_id,
                Some(&who.device_id),
                &f.push,
                f.at.as_ref(),
                UndeliveredReason::RetriesExhausted,
            );
            return;
        }
        let delay = self.cfg.retry.delay(link.inflight[i].attempts + 1, unit);
        let f = &mut link.inflight[i];
        f.attempts += 1;
        f.timer = self
            .wheel
            .insert(now + delay, TimerEvent::Retransmit(conn, seq));
        let (push, at, announce) = (f.push.clone(), f.at.clone(), f.announce);
        link.send_push(&push, seq, at.as_ref(), announce);
        let end = link.queued_end();
        link.inflight[i].ends_at = end;
        self.metrics.push_retransmits.inc();
        self.metrics.frame_out(Cmd::Downstream);
        self.check_backlog(conn, now);
    }

    /// When a link's next liveness check is due: a jittered interval from now, rounded up to a
    /// grain every link of the core shares, so an idle core wakes once for many links' pings
    /// rather than once per link. The idle close itself is not rounded.
    fn next_liveness(&mut self, now: Instant) -> Instant {
        let interval = self.cfg.heartbeat_interval();
        let at = now + interval.mul_f64(self.jitter());
        self.wheel.round_up(at, (interval / 8).min(LIVENESS_GRAIN))
    }

    fn liveness(&mut self, conn: ConnId, now: Instant) {
        let timeout = self.cfg.heartbeat_timeout;
        let interval = self.cfg.heartbeat_interval();
        let next = self.next_liveness(now);
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        link.liveness = None;
        if !link.is_open() {
            // The close linger ran out: the shell drops the socket.
            link.finished = true;
            link.wake();
            return;
        }
        if link.wire.attachment().is_some_and(|a| a.attached) {
            // An open stream or a waiting poll is the client's presence; keep it talking.
            link.last_activity = now.into();
            link.keepalive();
        }
        let idle = now.saturating_duration_since(link.last_activity.instant());
        if idle >= timeout {
            self.close_link(
                conn,
                close_code::IDLE_TIMEOUT,
                "heartbeat timeout",
                CloseReason::IdleTimeout,
                now,
            );
            return;
        }
        if idle >= interval {
            link.keepalive();
        }
        // Never sleep past the deadline, so an idle link closes on time.
        let deadline = link.last_activity.instant() + timeout;
        link.liveness = Some(
            self.wheel
                .insert(next.min(deadline), TimerEvent::Liveness(conn)),
        );
    }

    /// A factor in [0.8, 1.2) so links that connected together do not beat together.
    fn jitter(&mut self) -> f64 {
        0.8 + 0.4 * self.rng.random::<f64>()
    }

    /// A link whose queued output passed the cap may have stopped reading: look again after
    /// `slow_consumer`. Queuing never closes a link by itself.
    fn check_backlog(&mut self, conn: ConnId, now: Instant) {
        let cap = self.cfg.max_outbound_bytes;
        if let Some(link) = self.links.get_mut(&conn)
            && link.is_open()
            && link.backlog.is_none()
            && link.out.len() > cap
        {
            let timer = self
                .wheel
                .insert(now + self.cfg.slow_consumer, TimerEvent::Backlog(conn));
            link.backlog = Some(Box::new(Backlog {
                written: link.written_total,
                timer,
            }));
        }
    }

    /// The backlog check is due: a link still over the cap whose socket took no byte since it
    /// was armed is a slow consumer, closed after the last message it began to receive (what
    /// it never started is dropped; its unacked pushes are reported when it is removed).
    fn backlog(&mut self, conn: ConnId, now: Instant) {
        let cap = self.cfg.max_outbound_bytes;
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let Some(armed) = link.backlog.take() else {
            return;
        };
        if !link.is_open() || link.out.len() <= cap {
            return;
        }
        if link.written_total != armed.written {
            // Still reading, just behind: look again later.
            return self.check_backlog(conn, now);
        }
        link.discard_unsent();
        let reason = "slow consumer: outbound queue full";
        self.close_link(
            conn,
            close_code::SLOW_CONSUMER,
            reason,
            CloseReason::SlowConsumer,
            now,
        );
    }

    /// Operator or re-login kick: KICKED, then close.
    fn kick_link(&mut self, conn: ConnId, reason: &str, now: Instant) {
        if let Some(link) = self.links.get_mut(&conn).filter(|l| l.is_open()) {
            let frame = Frame {
                cmd: Cmd::Kicked as i32,
                reason: reason.into(),
                ..Default::default()
            };
            link.send_frame(&frame);
            self.metrics.frame_out(Cmd::Kicked);
            self.close_link(conn, close_code::KICKED, reason, CloseReason::Kicked, now);
        }
    }

    /// Kicks the matching links; returns how many.
    pub fn kick(&mut self, t: &Target<'_>, reason: &str, now: Instant) -> usize {
        let conns = self.matching(t);
        for c in &conns {
            self.kick_link(*c, reason, now);
        }
        conns.len()
    }

    /// Tells the matching links (or, with no user, up to `limit` of all) to reconnect
    /// elsewhere. With no node to offer, the links are closed with 1001 and the retry hint in
    /// the close reason: a REDIRECT with nowhere to go would only confuse clients.
    pub fn redirect(
        &mut self,
        t: Option<&Target<'_>>,
        limit: Option<usize>,
        nodes: &[Node],
        retry_after_ms: u32,
        now: Instant,
    ) -> usize {
        let conns: Vec<ConnId> = match t {
            Some(t) => self.matching(t).into_vec(),
            None => self
                .links
                .iter()
                .filter(|(_, l)| l.is_open())
                .map(|(c, _)| *c)
                .take(limit.unwrap_or(usize::MAX))
                .collect(),
        };
        if nodes.is_empty() {
            let reason = format!("going away; retry in {retry_after_ms} ms");
            for c in &conns {
                self.close_link(
                    *c,
                    close_code::GOING_AWAY,
                    &reason,
                    CloseReason::Shutdown,
                    now,
                );
            }
            return conns.len();
        }
        for c in &conns {
            let link = self.links.get_mut(c).expect("matched link exists");
            let frame = Frame {
                cmd: Cmd::Redirect as i32,
                nodes: nodes.to_vec(),
                retry_after_ms,
                ..Default::default()
            };
            link.send_frame(&frame);
            self.metrics.frame_out(Cmd::Redirect);
            self.close_link(
                *c,
                close_code::REDIRECTED,
                "redirected",
                CloseReason::Redirected,
                now,
            );
        }
        conns.len()
    }

    /// Closes every link with 1001 (shutdown).
    pub fn close_all(&mut self, reason: &str, now: Instant) {
        let conns: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.is_open())
            .map(|(c, _)| *c)
            .collect();
        for c in conns {
            self.close_link(
                c,
                close_code::GOING_AWAY,
                reason,
                CloseReason::Shutdown,
                now,
            );
        }
    }

    /// The open link of this device whose transport `wire` accepts.
    fn device_link(&self, who: &Identity, wire: impl Fn(&Wire) -> bool) -> Option<ConnId> {
        self.user_conns(who.biz_id, &who.user_id)
            .iter()
            .copied()
            .find(|c| {
                let l = &self.links[c];
                l.who.device_id == who.device_id && wire(&l.wire)
            })
    }

    /// A user's open links on this core, oldest first, as the operator sees them.
    pub fn inspect(&self, biz_id: u64, user_id: &str, now: Instant) -> Vec<LinkInfo> {
        let wall_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.user_conns(biz_id, user_id)
            .iter()
            .map(|c| {
                let l = &self.links[c];
                let age = now.saturating_duration_since(l.connected_at.instant());
                LinkInfo {
                    device_id: l.who.device_id.to_string(),
                    transport: l.wire.transport().label(),
                    connected_ms: wall_now.saturating_sub(age).as_millis() as u64,
                    unacked_pushes: l.inflight.len(),
                    queued_bytes: l.out.len(),
                    remote: l.peer.map(|p| p.to_string()),
                }
            })
            .collect()
    }

    /// The client's address of a link, once its socket is known.
    pub fn set_peer(&mut self, conn: ConnId, peer: Option<std::net::SocketAddr>) {
        if let Some(link) = self.links.get_mut(&conn) {
            link.peer = peer;
        }
    }

    /// A user's open links on this core, oldest first.
    fn user_conns(&self, biz_id: u64, user_id: &str) -> &[ConnId] {
        self.users
            .get(&biz_id)
            .and_then(|u| u.get(user_id))
            .map_or(&[], |d| d.as_slice())
    }

    /// A user's matching links, on the stack for the few devices a user has: every push and
    /// echo looks them up.
    fn matching(&self, t: &Target<'_>) -> UserLinks {
        self.user_conns(t.biz_id, t.user_id)
            .iter()
            .copied()
            .filter(|c| {
                t.device_id
                    .is_none_or(|d| *self.links[c].who.device_id == *d)
            })
            .collect()
    }

    fn close_link(
        &mut self,
        conn: ConnId,
        code: u16,
        reason: &str,
        why: CloseReason,
        now: Instant,
    ) {
        let Some(link) = self.links.get_mut(&conn).filter(|l| l.is_open()) else {
            return;
        };
        link.close(code, reason, why);
        self.metrics.closed(why);
        if let Some(t) = link.liveness.take() {
            self.wheel.cancel(t);
        }
        // Nothing follows the close frame: no retransmit during the linger. The pushes stay
        // in flight until the link is removed, which reports them.
        for f in &link.inflight {
            self.wheel.cancel(f.timer);
        }
        if let Some(b) = link.backlog.take() {
            self.wheel.cancel(b.timer);
        }
        if let Some((_, t)) = link.token_deadline.take() {
            self.wheel.cancel(t);
        }
        let detached = link.wire.attachment().is_some_and(|a| !a.attached);
        link.liveness = Some(
            self.wheel
                .insert(now + CLOSE_LINGER, TimerEvent::Liveness(conn)),
        );
        self.unindex(conn);
        if detached {
            // No request holds the link, so nobody is left to tell: it ends here.
            self.closed(conn);
        }
    }

    /// A closing link takes no new pushes or room messages.
    fn unindex(&mut self, conn: ConnId) {
        self.unroom(conn);
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let (biz_id, user_id) = (link.who.biz_id, &*link.who.user_id);
        if let Some(users) = self.users.get_mut(&biz_id) {
            if let Some(v) = users.get_mut(user_id) {
                v.retain(|c| *c != conn);
                if v.is_empty() {
                    users.remove(user_id);
                }
            }
            if users.is_empty() {
                self.users.remove(&biz_id);
            }
        }
    }

    /// The socket is gone (closed after the handshake, reset, or EOF). Unacked pushes are
    /// reported undelivered; nothing is dropped silently.
    pub fn closed(&mut self, conn: ConnId) {
        self.unindex(conn);
        let Some(link) = self.links.remove(&conn) else {
            return;
        };
        if self.cfg.presence_events {
            self.events.push_back(Event::Presence(DeviceEvent {
                who: link.who.clone(),
                online: false,
                transport: link.wire.transport().label(),
            }));
        }
        self.metrics.links.dec();
        if link.closing.is_none() {
            self.metrics.closed(CloseReason::Disconnected);
        }
        if let Some(t) = link.liveness {
            self.wheel.cancel(t);
        }
        if let Some(b) = link.backlog {
            self.wheel.cancel(b.timer);
        }
        if let Some((_, t)) = link.token_deadline {
            self.wheel.cancel(t);
        }
        let reason = if link.closing == Some(CloseReason::SlowConsumer) {
            UndeliveredReason::SlowConsumer
        } else {
            UndeliveredReason::LinkClosed
        };
        for f in link.inflight {
            self.wheel.cancel(f.timer);
            if f.push.is_room() {
                self.metrics.room_undelivered.inc();
                continue;
            }
            self.report(
                link.who.biz_id,
                &link.who.user_id,
                Some(&link.who.device_id),
                &f.push,
                f.at.as_ref(),
                reason,
            );
        }
        // Gone before its stream was read: what it held for after CONNECTED never went out.
        if let Some(o) = link.opening {
            let who = &link.who;
            let device = Some(&*who.device_id);
            let waiting = o.carried.into_iter().map(|f| (f.push, f.at));
            for (push, at) in waiting.chain(o.held.into_iter().map(|h| (h.push, h.at))) {
                self.report(who.biz_id, &who.user_id, device, &push, at.as_ref(), reason);
            }
        }
    }

    /// Copies what only the shard sees (latency histograms, the store's evictions) where
    /// `/metrics` can read it.
    pub fn publish_metrics(&self) {
        *self.metrics.published.lock().expect("metrics lock") = Some(self.latencies.clone());
        let evicted = self.embedded.store.evicted();
        self.metrics.idem_evictions.set(evicted);
        if let StreamStore::Local(streams) = &self.embedded.streams {
            self.metrics.stream_evictions.set(streams.evicted());
            self.metrics.stream_bytes.set(streams.bytes() as i64);
        }
    }

    /// Answers what the shard can answer itself, and turns the rest into events, until nothing
    /// is left: claims in the core's store (without a shared store), messages of loopback bizs
    /// (acked at once, echoed with `echo`), idempotency updates (applied to the core's store,
    /// and sent on for a shared store).
    pub fn settle(&mut self, now: Instant) {
        let shared = self.embedded.shared_store.is_some();
        // Queues, not taken vectors: they keep their buffers, so a message costs no
        // allocation here.
        while !(self.claims.is_empty() && self.upstream.is_empty() && self.idem_updates.is_empty())
        {
            for probe in self.claims.iter().filter_map(|r| r.probe) {
                self.embedded.store.prefetch(probe);
            }
            while let Some(req) = self.claims.pop_front() {
                match req.probe {
                    Some(probe) => {
                        let claim = self.embedded.store.claim_probed(probe, now);
                        self.claimed(req, claim, now);
                    }
                    None => self.events.push_back(Event::Claim(req)),
                }
            }
            while let Some(req) = self.upstream.pop_front() {
                if self.embedded.local_bizs.is_local(req.who.biz_id) {
                    self.loopback(req, now);
                } else {
                    self.events.push_back(Event::Upstream(req));
                }
            }
            while let Some(u) = self.idem_updates.pop_front() {
                if shared {
                    self.events.push_back(Event::IdemUpdate(u.clone()));
                }
                self.embedded.store.update(u, now);
            }
        }
    }

    /// The built-in backend: accepts at once, and with `echo` pushes the body back to its
    /// sender's device.
    fn loopback(&mut self, req: UpstreamRequest, now: Instant) {
        self.answered(&req, Ok(Bytes::new()), now);
        if self.embedded.echo {
            let who = &req.who;
            let push = self.encode_push(who.biz_id, req.key.clone(), req.body.clone(), None);
            let user = std::slice::from_ref(&who.user_id);
            let device = Some(&*who.device_id);
            let how = Delivery {
                report_offline: true,
                ephemeral: false,
                accepted_at: now,
            };
            self.push(who.biz_id, user, device, &push, how, now);
        }
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
