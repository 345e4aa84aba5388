//! The shard's rules, driven with a hand-moved clock and raw client frames.

use super::*;
use crate::core::embedded::{LocalBizs, StreamStore};
use crate::core::stream::{StreamLimits, Streams};
use crate::link::idem::{IdemTtl, MemoryIdemStore};
use crate::metrics::Transport;
use crate::protocol::Codec;
use crate::protocol::handshake::{HttpRequest, Route, Upgrade};
use crate::protocol::ws;
use prost::Message;
use std::io::Cursor;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

const MS: Duration = Duration::from_millis(1);

fn cfg() -> ShardConfig {
    ShardConfig {
        node_id: "n1".into(),
        max_message_bytes: 1024,
        max_key_bytes: 16,
        max_outbound_bytes: 4096,
        slow_consumer: 2000 * MS,
        link_rate: Rate {
            per_s: 10,
            burst: 2,
        },
        retry: RetryPolicy {
            initial: 1000 * MS,
            max_attempts: 3,
            max_delay: 10_000 * MS,
            jitter: 0.0,
        },
        heartbeat_timeout: 30_000 * MS,
        max_devices_per_user: 2,
        max_rooms_per_user: 3,
        presence_events: true,
        deflate: Some(DeflatePolicy {
            min_bytes: 64,
            takeover: false,
        }),
        body_keys: BodyKeys::default(),
        ws_echo: false,
    }
}

/// The core's own store, and every biz routed to a backend the test answers by hand.
fn embedded() -> Embedded {
    let ttl = IdemTtl {
        pending: Duration::from_secs(30),
        done: Duration::from_secs(600),
        max_entries: 1_000_000,
        max_bytes: usize::MAX,
    };
    Embedded {
        store: MemoryIdemStore::new(ttl),
        shared_store: None,
        local_bizs: Arc::new(LocalBizs::default()),
        echo: false,
        streams: StreamStore::Local(Streams::new(stream_limits(), SmallRng::seed_from_u64(3))),
    }
}

fn stream_limits() -> StreamLimits {
    StreamLimits {
        max_len: 8,
        ttl: 60_000 * MS,
        resume_max: 5,
        max_bytes: 1 << 20,
    }
}

/// Delivered as the push API delivers: reported when offline, stored, acked.
fn stored(accepted_at: Instant) -> Delivery {
    Delivery {
        report_offline: true,
        ephemeral: false,
        accepted_at,
    }
}

/// The shard's events of one kind, taken out; the others stay queued.
macro_rules! take_events {
    ($shard:expr, $pat:pat => $v:expr) => {{
        #[allow(unused_variables)]
        let wanted = |e: &Event| matches!(e, $pat);
        let (taken, kept): (VecDeque<Event>, VecDeque<Event>) =
            $shard.events.drain(..).partition(wanted);
        $shard.events = kept;
        taken
            .into_iter()
            .map(|e| match e {
                $pat => $v,
                _ => unreachable!("partitioned"),
            })
            .collect::<Vec<_>>()
    }};
}

impl Shard {
    fn take_upstream(&mut self) -> Vec<UpstreamRequest> {
        take_events!(self, Event::Upstream(r) => r)
    }

    fn take_claims(&mut self) -> Vec<UpstreamRequest> {
        take_events!(self, Event::Claim(r) => r)
    }

    fn take_undelivered(&mut self) -> Vec<Undelivered> {
        take_events!(self, Event::Undelivered(u) => u)
    }

    fn take_presence(&mut self) -> Vec<(Arc<Identity>, bool)> {
        take_events!(self, Event::Presence(e) => (e.who, e.online))
    }
}

struct Harness {
    shard: Shard,
    t0: Instant,
}

#[derive(Debug, PartialEq)]
enum Out {
    Frame(Frame),
    Ping,
    Pong(Vec<u8>),
    Close(u16),
}

/// A token deadline no test reaches.
fn far() -> Instant {
    Instant::now() + Duration::from_secs(30 * 86_400)
}

fn who(user: &str, device: &str) -> Identity {
    Identity {
        biz_id: 1,
        user_id: user.into(),
        device_id: device.into(),
    }
}

fn upgrade(codec: Codec) -> Upgrade {
    Upgrade {
        token: None,
        ws_key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
        codec,
        echo_subprotocol: true,
        origin: None,
        extensions: None,
        since: None,
        head_len: 0,
    }
}

/// A masked client message carrying `frame`.
fn client(codec: Codec, frame: &Frame) -> Vec<u8> {
    let mut payload = Vec::new();
    codec.encode(frame, &mut payload);
    raw_client(if codec.is_text() { 0x81 } else { 0x82 }, &payload)
}

fn raw_client(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]); // a zero mask is still a mask
    out.extend_from_slice(payload);
    out
}

fn up(key: &str, body: &'static [u8]) -> Frame {
    Frame {
        cmd: Cmd::Upstream as i32,
        key: key.into(),
        body: Bytes::from_static(body),
        ..Default::default()
    }
}

fn cmd_frame(cmd: Cmd, key: &str) -> Frame {
    Frame {
        cmd: cmd as i32,
        key: key.into(),
        ..Default::default()
    }
}

impl Harness {
    fn new() -> Self {
        let t0 = Instant::now();
        Harness {
            shard: Shard::new(cfg(), embedded(), Arc::default(), 7, t0),
            t0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Opens a link and consumes its 101 response; returns all it sent after it.
    fn open_raw(&mut self, conn: ConnId, user: &str, device: &str, codec: Codec) -> Vec<Out> {
        self.shard
            .open(conn, who(user, device), &upgrade(codec), far(), self.t0);
        let link = self.shard.link_mut(conn).unwrap();
        let end = link.out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(link.out.starts_with(b"HTTP/1.1 101"));
        link.written(end); // the 101 response, as a socket takes it
        self.drain(conn)
    }

    /// Opens a link; returns its CONNECTED frame.
    fn open(&mut self, conn: ConnId, user: &str, device: &str, codec: Codec) -> Frame {
        match self.open_raw(conn, user, device, codec).remove(0) {
            Out::Frame(f) => f,
            other => panic!("expected CONNECTED, got {other:?}"),
        }
    }

    fn send(&mut self, conn: ConnId, ms: u64, frame: &Frame) {
        let codec = self.shard.link_mut(conn).unwrap().codec;
        let mut bytes = client(codec, frame);
        self.shard.handle_bytes(conn, &mut bytes, self.at(ms));
    }

    /// Everything the shard queued for the link since the last drain.
    fn drain(&mut self, conn: ConnId) -> Vec<Out> {
        let link = self.shard.link_mut(conn).unwrap();
        let codec = link.codec;
        let bytes = link.take_out();
        let mut cur = Cursor::new(&bytes[..]);
        let mut out = Vec::new();
        while (cur.position() as usize) < bytes.len() {
            let (h, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            let start = cur.position() as usize;
            let payload = &bytes[start..start + len as usize];
            cur.set_position((start + len as usize) as u64);
            out.push(match h.opcode {
                OpCode::Data(Data::Text) | OpCode::Data(Data::Binary) => {
                    Out::Frame(codec.decode(payload).unwrap())
                }
                OpCode::Control(Control::Ping) => Out::Ping,
                OpCode::Control(Control::Pong) => Out::Pong(payload.to_vec()),
                OpCode::Control(Control::Close) => {
                    Out::Close(u16::from_be_bytes([payload[0], payload[1]]))
                }
                other => panic!("unexpected opcode {other:?}"),
            });
        }
        out
    }

    fn frames(&mut self, conn: ConnId) -> Vec<Frame> {
        self.drain(conn)
            .into_iter()
            .map(|o| match o {
                Out::Frame(f) => f,
                other => panic!("expected a frame, got {other:?}"),
            })
            .collect()
    }

    fn push(&mut self, user: &str, device: Option<&str>, key: &str, ms: u64) {
        let p = EncodedPush::new(key, Bytes::from_static(b"hello"));
        let how = stored(self.at(ms));
        self.shard
            .push(1, &[user.to_owned()], device, &p, how, self.at(ms));
    }

    /// Kicks every link of `user`.
    fn kick(&mut self, user: &str, reason: &str, ms: u64) {
        let all = Target {
            biz_id: 1,
            user_id: user,
            device_id: None,
        };
        self.shard.kick(&all, reason, self.at(ms));
    }

    fn answer_upstream(&mut self, ms: u64, result: Result<Bytes, BackendError>) -> UpstreamRequest {
        let mut reqs = self.shard.take_upstream();
        assert_eq!(reqs.len(), 1);
        let req = reqs.remove(0);
        self.shard.on_upstream_result(&req, result, self.at(ms));
        req
    }
}

#[test]
fn connected_comes_first_with_the_link_identity() {
    let mut h = Harness::new();
    let c = h.open(1, "alice", "phone", Codec::Json);
    assert_eq!(c.cmd, Cmd::Connected as i32);
    let info = c.connected.unwrap();
    assert_eq!(info.link_id, "1:alice:phone");
    assert_eq!(info.node_id, "n1");
    assert_eq!(info.heartbeat_interval_ms, 10_000);
    assert!(info.server_time_ms > 0);
}

#[test]
fn heartbeat_is_echoed_and_ping_answered() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Proto);
    h.send(
        1,
        0,
        &Frame {
            cmd: Cmd::Heartbeat as i32,
            key: "hb".into(),
            ..Default::default()
        },
    );
    let mut ping = raw_client(0x89, b"xy");
    h.shard.handle_bytes(1, &mut ping, h.at(0));
    let out = h.drain(1);
    assert_eq!(out[0], Out::Frame(cmd_frame(Cmd::Heartbeat, "hb")));
    assert_eq!(out[1], Out::Pong(b"xy".to_vec()));
}

#[test]
fn upstream_is_forwarded_once_and_duplicates_are_reacked() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.send(1, 0, &up("m1", b"hi"));
    h.send(1, 1, &up("m1", b"hi")); // resent while pending: dropped
    let req = h.answer_upstream(5, Ok(Bytes::from_static(b"reply")));
    assert_eq!(
        (&*req.key, &req.body[..], &*req.who.user_id),
        ("m1", &b"hi"[..], "alice")
    );
    let ack = Frame {
        cmd: Cmd::UpstreamAck as i32,
        key: "m1".into(),
        body: Bytes::from_static(b"reply"),
        ..Default::default()
    };
    assert_eq!(h.frames(1), vec![ack.clone()]);
    // The client lost the ack and resends after the burst refilled: same ack, no second forward.
    h.send(1, 500, &up("m1", b"hi"));
    assert!(h.shard.take_upstream().is_empty());
    assert_eq!(h.frames(1), vec![ack]);
    let m = &h.shard.metrics;
    assert_eq!(
        (m.upstream_forwarded.get(), m.upstream_reacked.get()),
        (1, 1)
    );
    assert_eq!(m.dropped.get(DropReason::DuplicatePending), 1);
}

/// A shell that reads many links in one pass settles once after the last: claims wait until
/// then, and are made in the order the messages were read.
#[test]
fn a_pass_claims_its_messages_at_the_settle_in_the_order_read() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "alice", "laptop", Codec::Json);
    for (conn, body) in [(1, &b"first"[..]), (2, &b"again"[..])] {
        let mut bytes = client(Codec::Json, &up("m1", body));
        h.shard.read_bytes(conn, &mut bytes, h.at(0));
    }
    assert!(h.shard.take_upstream().is_empty(), "nothing claimed yet");
    h.shard.settle(h.at(0));
    let sent = h.shard.take_upstream();
    assert_eq!(sent.len(), 1, "one copy of alice's m1 goes upstream");
    assert_eq!((sent[0].conn, &sent[0].body[..]), (1, &b"first"[..]));
    let m = &h.shard.metrics;
    assert_eq!(m.dropped.get(DropReason::DuplicatePending), 1);
}

#[test]
fn equal_keys_of_two_users_are_two_messages() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "bob", "phone", Codec::Json);
    h.send(1, 0, &up("m1", b"from alice"));
    h.answer_upstream(1, Ok(Bytes::from_static(b"alice's reply")));
    h.frames(1);
    h.send(2, 2, &up("m1", b"from bob"));
    let req = h.answer_upstream(3, Ok(Bytes::from_static(b"bob's reply")));
    assert_eq!(
        &req.body[..],
        b"from bob",
        "bob's message reached the backend"
    );
    let ack = h.frames(2).remove(0);
    assert_eq!(&ack.body[..], b"bob's reply");
}

#[test]
fn a_key_over_the_limit_is_refused_without_echoing_it_and_the_link_stays() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    let long = "k".repeat(17);
    h.send(1, 0, &up(&long, b"x"));
    assert!(h.shard.take_claims().is_empty() && h.shard.take_upstream().is_empty());
    let f = h.frames(1).remove(0);
    assert_eq!(
        (f.cmd, f.code, f.key.as_str()),
        (Cmd::Error as i32, Code::TooLarge as i32, "")
    );
    assert!(f.reason.contains("16 bytes"), "{}", f.reason);
    let m = &h.shard.metrics;
    assert_eq!(m.dropped.get(DropReason::KeyTooLarge), 1);
    assert!(h.shard.link_mut(1).unwrap().is_open());
    h.send(1, 1, &up(&long[..16], b"x"));
    h.answer_upstream(2, Ok(Bytes::new()));
    assert_eq!(h.frames(1)[0].cmd, Cmd::UpstreamAck as i32);
}

#[test]
fn backend_failure_answers_error_and_releases_the_key() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Proto);
    h.send(1, 0, &up("m1", b""));
    h.answer_upstream(1, Err(BackendError::Unavailable("backend down".into())));
    let f = h.frames(1).remove(0);
    assert_eq!(
        (f.cmd, f.code, f.key.as_str()),
        (Cmd::Error as i32, Code::BackendUnavailable as i32, "m1")
    );
    h.send(1, 1, &up("m1", b""));
    h.answer_upstream(2, Err(BackendError::Rejected("no".into())));
    assert_eq!(h.frames(1)[0].code, Code::BackendRejected as i32);
}

#[test]
fn missing_key_and_unsupported_cmds_get_errors() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.send(1, 0, &up("", b"x"));
    h.send(1, 0, &cmd_frame(Cmd::DownstreamAck, ""));
    h.send(1, 0, &cmd_frame(Cmd::Kicked, "k"));
    let codes: Vec<i32> = h.frames(1).iter().map(|f| f.code).collect();
    assert_eq!(
        codes,
        [
            Code::MissingKey as i32,
            Code::MissingKey as i32,
            Code::UnsupportedCmd as i32
        ]
    );
    assert!(h.shard.link_mut(1).unwrap().is_open());
}

#[test]
fn rate_limit_rejects_with_a_retry_hint_and_exempts_heartbeats() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    for k in ["a", "b", "c"] {
        h.send(1, 0, &up(k, b""));
    }
    for _ in 0..5 {
        h.send(1, 0, &cmd_frame(Cmd::Heartbeat, ""));
    }
    let out = h.frames(1);
    let limited: Vec<_> = out
        .iter()
        .filter(|f| f.cmd == Cmd::RateLimited as i32)
        .collect();
    assert_eq!(limited.len(), 1);
    assert_eq!(
        (limited[0].key.as_str(), limited[0].retry_after_ms),
        ("c", 100)
    );
    assert_eq!(
        out.iter()
            .filter(|f| f.cmd == Cmd::Heartbeat as i32)
            .count(),
        5
    );
    assert_eq!(h.shard.take_upstream().len(), 2);
    h.send(1, 100, &up("c", b""));
    assert_eq!(
        h.shard.take_upstream().len(),
        1,
        "allowed again after the hint"
    );
}

#[test]
fn garbage_gets_bad_frame_and_the_link_survives() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    let mut bytes = raw_client(0x81, b"{not json");
    h.shard.handle_bytes(1, &mut bytes, h.at(0));
    let f = h.frames(1).remove(0);
    assert_eq!((f.cmd, f.code), (Cmd::Error as i32, Code::BadFrame as i32));
    h.send(1, 0, &cmd_frame(Cmd::Heartbeat, ""));
    assert_eq!(h.frames(1).len(), 1);
}

#[test]
fn oversized_message_gets_too_large_then_1009() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Proto);
    let mut bytes = raw_client(0x82, &[0; 2000]);
    h.shard.handle_bytes(1, &mut bytes, h.at(0));
    let out = h.drain(1);
    assert!(matches!(&out[0], Out::Frame(f) if f.code == Code::TooLarge as i32));
    assert_eq!(out[1], Out::Close(1009));
    assert_eq!(
        h.shard.link_mut(1).unwrap().closing,
        Some(CloseReason::TooBig)
    );
}

#[test]
fn push_retransmits_on_schedule_until_acked() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Proto);
    h.push("alice", None, "p1", 0);
    h.push("alice", None, "p2", 0);
    let sent = h.frames(1);
    assert_eq!(
        sent.iter()
            .map(|f| (f.key.as_str(), f.seq))
            .collect::<Vec<_>>(),
        [("p1", 1), ("p2", 2)]
    );
    h.send(1, 500, &cmd_frame(Cmd::DownstreamAck, "p2"));
    h.shard.handle_timeout(h.at(990));
    assert!(h.frames(1).is_empty(), "nothing before the first deadline");
    h.shard.handle_timeout(h.at(1000));
    let again = h.frames(1);
    assert_eq!(
        again
            .iter()
            .map(|f| (f.key.as_str(), f.seq))
            .collect::<Vec<_>>(),
        [("p1", 1)],
        "same seq on resend"
    );
    // Second wait doubles: 1000 + 2000.
    h.shard.handle_timeout(h.at(2990));
    assert!(h.frames(1).is_empty());
    h.shard.handle_timeout(h.at(3000));
    assert_eq!(h.frames(1).len(), 1);
    h.send(1, 3100, &cmd_frame(Cmd::DownstreamAck, "p1"));
    h.send(1, 3100, &cmd_frame(Cmd::DownstreamAck, "p1")); // duplicate ack: harmless
    h.shard.handle_timeout(h.at(29_000));
    assert!(
        h.drain(1)
            .iter()
            .all(|o| !matches!(o, Out::Frame(f) if f.cmd == Cmd::Downstream as i32))
    );
    assert!(h.shard.take_undelivered().is_empty());
    assert_eq!(h.shard.metrics.push_acked.get(), 2);
    assert_eq!(h.shard.metrics.push_retransmits.get(), 2);
}

#[test]
fn a_push_still_queued_for_its_socket_is_not_sent_again_until_the_socket_takes_it() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Proto);
    h.push("alice", None, "p1", 0);
    // Its deadline comes with the push still in the link's output: nothing is added to it.
    h.shard.handle_timeout(h.at(1000));
    assert_eq!(h.frames(1).len(), 1, "the first copy only");
    assert_eq!(h.shard.metrics.push_retransmits.get(), 0);
    assert_eq!(h.shard.metrics.push_retransmits_deferred.get(), 1);
    // The socket took it at 1000 (the drain above); the put-off deadline, one first wait
    // later, finds it unacked and sends it again: it was not counted as an attempt.
    h.shard.handle_timeout(h.at(1999));
    assert!(h.frames(1).is_empty());
    h.shard.handle_timeout(h.at(2000));
    let again = h.frames(1);
    assert_eq!((again.len(), again[0].key.as_str()), (1, "p1"));
    assert_eq!(h.shard.metrics.push_retransmits.get(), 1);
    // The next wait doubles from there, as for a push that went out at once.
    h.shard.handle_timeout(h.at(3999));
    assert!(h.frames(1).is_empty());
    h.shard.handle_timeout(h.at(4000));
    assert_eq!(h.frames(1).len(), 1);
}

#[test]
fn push_gives_up_after_max_attempts_and_reports() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.push("alice", None, "p1", 0);
    // Sends at 0, 1000, 3000; the third send's wait (4000) ends at 7000.
    for t in [1000, 3000, 6999] {
        h.drain(1); // the client receives every copy, and acks none
        h.send(1, t, &cmd_frame(Cmd::Heartbeat, ""));
        h.shard.handle_timeout(h.at(t));
    }
    assert!(h.shard.take_undelivered().is_empty());
    h.shard.handle_timeout(h.at(7000));
    let u = h.shard.take_undelivered();
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].key.as_str(), u[0].reason),
        ("p1", UndeliveredReason::RetriesExhausted)
    );
    assert_eq!(h.shard.metrics.push_retransmits.get(), 2);
}

#[test]
fn offline_users_and_other_devices_are_reported() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.push("bob", None, "p1", 0);
    h.push("alice", Some("laptop"), "p2", 0);
    let u = h.shard.take_undelivered();
    assert_eq!(
        u.iter()
            .map(|u| (u.key.as_str(), u.reason))
            .collect::<Vec<_>>(),
        [
            ("p1", UndeliveredReason::Offline),
            ("p2", UndeliveredReason::Offline)
        ]
    );
}

#[test]
fn two_devices_each_get_the_push_with_their_own_seq() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "alice", "laptop", Codec::Proto);
    h.push("alice", None, "p1", 0);
    assert_eq!(h.frames(1)[0].seq, 1);
    assert_eq!(h.frames(2)[0].seq, 1);
    h.push("alice", Some("laptop"), "p2", 0);
    assert!(h.frames(1).is_empty());
    assert_eq!(h.frames(2)[0].key, "p2");
}

#[test]
fn relogin_kicks_the_old_link_and_carries_its_unacked_pushes() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.push("alice", None, "p1", 0);
    h.frames(1);
    let new = h.open_raw(2, "alice", "phone", Codec::Json);
    let old = h.drain(1);
    assert!(matches!(&old[0], Out::Frame(f) if f.cmd == Cmd::Kicked as i32));
    assert_eq!(old[1], Out::Close(close_code::KICKED));
    assert!(matches!(&new[0], Out::Frame(f) if f.cmd == Cmd::Connected as i32));
    assert!(
        matches!(&new[1], Out::Frame(f) if f.key == "p1" && f.seq == 1),
        "carried push resent on the new link after CONNECTED"
    );
    h.shard.closed(1);
    assert!(
        h.shard.take_undelivered().is_empty(),
        "nothing lost with the old link"
    );
    h.send(2, 10, &cmd_frame(Cmd::DownstreamAck, "p1"));
    h.shard.handle_timeout(h.at(100_000));
    assert!(h.shard.take_undelivered().is_empty());
}

#[test]
fn device_cap_signs_out_the_oldest() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "alice", "laptop", Codec::Json);
    h.open(3, "alice", "tablet", Codec::Json);
    assert_eq!(h.drain(1).last(), Some(&Out::Close(close_code::KICKED)));
    assert!(h.drain(2).is_empty());
}

#[test]
fn idle_links_are_pinged_then_closed_on_time() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    // Liveness checks come every ~10s (jittered ±20%); after 12s of silence a ping is due.
    h.shard.handle_timeout(h.at(12_000));
    assert_eq!(h.drain(1), vec![Out::Ping]);
    // Activity (any frame, or a pong) pushes the deadline out.
    let mut pong = raw_client(0x8A, b"");
    h.shard.handle_bytes(1, &mut pong, h.at(20_000));
    h.shard.handle_timeout(h.at(49_999));
    assert!(h.shard.link_mut(1).unwrap().is_open());
    h.shard.handle_timeout(h.at(50_000));
    let out = h.drain(1);
    assert_eq!(out.last(), Some(&Out::Close(close_code::IDLE_TIMEOUT)));
    assert_eq!(
        h.shard.link_mut(1).unwrap().closing,
        Some(CloseReason::IdleTimeout)
    );
}

/// Pushes to alice until her link's queue is over the 4 KiB cap; returns how many.
fn fill_past_cap(h: &mut Harness, ms: u64) -> usize {
    let mut sent = 0;
    while h.shard.link_mut(1).unwrap().out.len() <= 4096 {
        h.push("alice", None, &format!("p{sent}"), ms);
        sent += 1;
        assert!(sent < 1000, "the cap never tripped");
    }
    sent
}

#[test]
fn slow_consumer_is_cut_off_and_its_pushes_reported() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Proto);
    // Nobody drains the link's output: over the cap it stays open until the socket has taken
    // nothing for the slow-consumer time.
    let sent = fill_past_cap(&mut h, 0);
    h.shard.handle_timeout(h.at(1990));
    assert!(
        h.shard.link_mut(1).unwrap().is_open(),
        "over the cap alone is no reason"
    );
    h.shard.handle_timeout(h.at(2010));
    let link = h.shard.link_mut(1).unwrap();
    assert_eq!(link.closing, Some(CloseReason::SlowConsumer));
    assert!(
        link.out.len() < 64,
        "queued bytes dropped, only the close frame left"
    );
    h.push("alice", None, "late", 0);
    h.shard.closed(1);
    let u = h.shard.take_undelivered();
    assert_eq!(
        u.iter()
            .filter(|u| u.reason == UndeliveredReason::SlowConsumer)
            .count(),
        sent
    );
    assert_eq!(
        u.iter()
            .filter(|u| u.reason == UndeliveredReason::Offline)
            .count(),
        1,
        "the late push"
    );
    assert_eq!(
        h.shard.metrics.links_closed.get(CloseReason::SlowConsumer),
        1
    );
}

#[test]
fn a_client_that_keeps_reading_is_never_a_slow_consumer() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Proto);
    fill_past_cap(&mut h, 0);
    // Every second the socket takes a little of the queue, which stays over the cap.
    for s in 1..=10u64 {
        h.shard.link_mut(1).unwrap().written(10);
        h.push("alice", None, &format!("more{s}"), s * 1000);
        h.shard.handle_timeout(h.at(s * 1000 + 5));
        assert!(h.shard.link_mut(1).unwrap().is_open(), "closed at {s} s");
    }
    assert!(h.shard.link_mut(1).unwrap().out.len() > 4096);
    // It stops reading: closed once a whole check window passes without a byte taken (the
    // window that was open at its last read does not count).
    h.shard.handle_timeout(h.at(14_000));
    assert!(h.shard.link_mut(1).unwrap().is_open());
    h.shard.handle_timeout(h.at(16_100));
    assert_eq!(
        h.shard.link_mut(1).unwrap().closing,
        Some(CloseReason::SlowConsumer)
    );
}

#[test]
fn the_slow_consumer_close_follows_the_last_whole_frame_and_nothing_follows_it() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Proto);
    fill_past_cap(&mut h, 0);
    // The socket took 1.5 pushes' worth: the wire holds half a frame.
    let link = h.shard.link_mut(1).unwrap();
    let one = ws::frame_len(&link.out);
    let wire: Vec<u8> = link.out[..one + one / 2].to_vec();
    link.written(one + one / 2);
    let written = link.written_total;
    // That write came after the check was armed: closed at the check after.
    h.shard.handle_timeout(h.at(2010));
    h.shard.handle_timeout(h.at(4100));
    assert!(!h.shard.link_mut(1).unwrap().is_open());
    // Retransmits were due before the close; later ones may not write past it.
    let resent = h.shard.metrics.push_retransmits.get();
    h.shard.handle_timeout(h.at(60_000));
    assert_eq!(h.shard.metrics.push_retransmits.get(), resent);
    let link = h.shard.link_mut(1).unwrap();
    assert_eq!(link.written_total, written);
    let mut all = wire;
    all.extend_from_slice(&link.out);
    link.out = all;
    let out = h.drain(1);
    assert_eq!(out.len(), 3, "two pushes, then the close: {out:?}");
    assert!(matches!(&out[1], Out::Frame(f) if f.key == "p1"));
    assert_eq!(out[2], Out::Close(close_code::SLOW_CONSUMER));
}

#[test]
fn no_retransmit_follows_any_close() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.push("alice", None, "p1", 0);
    h.kick("alice", "bye", 1);
    h.shard.handle_timeout(h.at(1500));
    let out = h.drain(1);
    assert_eq!(out.last(), Some(&Out::Close(close_code::KICKED)));
    assert_eq!(h.shard.metrics.push_retransmits.get(), 0);
}

#[test]
fn a_report_keeps_its_push_unsettled_until_the_report_itself_is_gone() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    let token = Arc::new(Unsettled);
    let source = Arc::downgrade(&token);
    let p = h
        .shard
        .encode_push(1, "p1", Bytes::from_static(b"x"), Some(token));
    let users = ["alice".to_owned(), "nobody".to_owned()];
    h.shard.push(1, &users, None, &p, stored(h.at(0)), h.at(0));
    drop(p);
    // alice's link closes with the push unacked: two reports, and the push is settled by
    // neither link nor shard, only once the reports are written.
    h.shard.closed(1);
    let reports = h.shard.take_undelivered();
    assert_eq!(reports.len(), 2);
    assert!(
        source.strong_count() > 0,
        "settled before its reports were written"
    );
    drop(reports);
    assert_eq!(source.strong_count(), 0);
}

#[test]
fn close_reports_unacked_pushes_and_frees_all_timers() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.push("alice", None, "p1", 0);
    let mut close = raw_client(0x88, &1000u16.to_be_bytes());
    h.shard.handle_bytes(1, &mut close, h.at(1));
    assert_eq!(h.drain(1).last(), Some(&Out::Close(1000)));
    h.shard.closed(1);
    assert_eq!(
        h.shard.take_undelivered()[0].reason,
        UndeliveredReason::LinkClosed
    );
    assert_eq!(h.shard.timer_count(), 0);
    assert_eq!(h.shard.link_count(), 0);
    assert_eq!(
        h.shard.metrics.links_closed.get(CloseReason::ClientClosed),
        1
    );
}

#[test]
fn kick_redirect_and_shutdown() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "bob", "phone", Codec::Json);
    h.open(3, "carol", "phone", Codec::Json);
    let t = Target {
        biz_id: 1,
        user_id: "alice",
        device_id: None,
    };
    assert_eq!(h.shard.kick(&t, "operator", h.at(0)), 1);
    assert_eq!(h.drain(1).last(), Some(&Out::Close(close_code::KICKED)));
    let node = Node {
        id: "n2".into(),
        ip: "127.0.0.2".into(),
        port: 8080,
        ..Default::default()
    };
    let t = Target {
        biz_id: 1,
        user_id: "bob",
        device_id: None,
    };
    assert_eq!(
        h.shard
            .redirect(Some(&t), None, std::slice::from_ref(&node), 250, h.at(0)),
        1
    );
    let out = h.drain(2);
    assert!(
        matches!(&out[0], Out::Frame(f) if f.cmd == Cmd::Redirect as i32 && f.nodes == vec![node.clone()] && f.retry_after_ms == 250)
    );
    h.shard.close_all("bye", h.at(0));
    assert_eq!(h.drain(3), vec![Out::Close(close_code::GOING_AWAY)]);
}

#[test]
fn paced_redirect_moves_at_most_the_limit_and_no_target_means_going_away() {
    let mut h = Harness::new();
    for (conn, user) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        h.open(conn, user, "phone", Codec::Json);
    }
    let node = Node {
        id: "n2".into(),
        ..Default::default()
    };
    assert_eq!(
        h.shard
            .redirect(None, Some(3), std::slice::from_ref(&node), 100, h.at(0)),
        3
    );
    let redirected: Vec<u64> = (1..=4)
        .filter(|c| h.drain(*c).last() == Some(&Out::Close(close_code::REDIRECTED)))
        .collect();
    assert_eq!(redirected.len(), 3);
    // The one left gets no REDIRECT frame with an empty list: a close with a retry hint.
    assert_eq!(h.shard.redirect(None, Some(3), &[], 700, h.at(0)), 1);
    let last = (1..=4).find(|c| !redirected.contains(c)).unwrap();
    assert_eq!(h.drain(last), vec![Out::Close(close_code::GOING_AWAY)]);
    assert_eq!(h.shard.redirect(None, None, &[], 700, h.at(0)), 0);
}

#[test]
fn a_delivered_push_marks_when_it_was_queued_until_the_shell_writes_it() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.push("alice", None, "p1", 3);
    h.push("alice", None, "p2", 7);
    // The oldest unwritten push counts: the shell measures from it to the socket write.
    let queued = h.at(3);
    assert_eq!(
        h.shard.link_mut(1).unwrap().push_queued_at,
        Some(queued.into())
    );
}

#[test]
fn broadcast_pushes_count_absent_users_without_reporting_them() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    let p = EncodedPush::new("k", Bytes::from_static(b"x"));
    let users = ["alice".to_owned(), "zed".to_owned()];
    let how = Delivery {
        report_offline: false,
        ..stored(h.at(0))
    };
    h.shard.push(1, &users, None, &p, how, h.at(0));
    assert!(h.shard.take_undelivered().is_empty());
    assert_eq!(h.shard.metrics.pushes_not_here.get(), 1);
    assert_eq!(h.frames(1)[0].cmd, Cmd::Downstream as i32);
}

#[test]
fn proto_bytes_on_a_json_link_are_a_bad_frame_not_a_crash() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    let mut bytes = raw_client(0x82, &up("k", b"x").encode_to_vec());
    h.shard.handle_bytes(1, &mut bytes, h.at(0));
    assert_eq!(h.frames(1)[0].code, Code::BadFrame as i32);
}

#[test]
fn presence_events_follow_opens_and_closes() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "alice", "laptop", Codec::Json);
    h.shard.closed(1);
    let seen: Vec<(String, bool)> = h
        .shard
        .take_presence()
        .into_iter()
        .map(|(who, online)| (who.device_id.to_string(), online))
        .collect();
    assert_eq!(
        seen,
        [
            ("phone".to_string(), true),
            ("laptop".to_string(), true),
            ("phone".to_string(), false)
        ]
    );
    assert!(h.shard.take_presence().is_empty());
}

#[test]
fn deflate_links_compress_long_messages_and_inflate_compressed_ones() {
    use crate::protocol::deflate::{Agreed, LinkDeflate};
    let mut h = Harness::new();
    let mut offer = upgrade(Codec::Json);
    offer.extensions = Some("permessage-deflate; client_max_window_bits".into());
    h.shard.open(1, who("alice", "web"), &offer, far(), h.t0);
    let link = h.shard.link_mut(1).unwrap();
    let head = String::from_utf8_lossy(&link.out).into_owned();
    assert!(head.contains(
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    ));
    let end = link.out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    link.out.drain(..end);
    let connected = std::mem::take(&mut link.out);

    // What a client would do with each server message.
    let agreed = Agreed::default();
    let policy = DeflatePolicy {
        min_bytes: 0,
        takeover: false,
    };
    let mut client_side = LinkDeflate::new(agreed, policy);
    let read = |bytes: &[u8], client_side: &mut LinkDeflate| {
        let mut cur = Cursor::new(bytes);
        let (h, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
        let payload = &bytes[cur.position() as usize..][..len as usize];
        let mut plain = payload.to_vec();
        if h.rsv1 {
            plain.clear();
            client_side
                .decompress(payload, 1 << 20, &mut plain)
                .unwrap();
        }
        (h.rsv1, Codec::Json.decode(&plain).unwrap())
    };
    // CONNECTED is long enough to be compressed (≥ 64 bytes of JSON).
    let (zipped, f) = read(&connected, &mut client_side);
    assert!(zipped);
    assert_eq!(f.cmd, Cmd::Connected as i32);
    // A short heartbeat echo is not.
    h.send(1, 0, &cmd_frame(Cmd::Heartbeat, ""));
    let echo = std::mem::take(&mut h.shard.link_mut(1).unwrap().out);
    assert!(!read(&echo, &mut client_side).0);
    // A push is compressed per link, seq included.
    h.push("alice", None, "p-1", 1);
    let push = std::mem::take(&mut h.shard.link_mut(1).unwrap().out);
    let (zipped, f) = read(&push, &mut client_side);
    assert!(zipped);
    assert_eq!((f.key.as_str(), f.seq), ("p-1", 1));

    // A compressed upstream frame from the client.
    let mut plain = Vec::new();
    Codec::Json.encode(&up("m1", b"a compressed hello"), &mut plain);
    let mut wire = Vec::new();
    client_side.compress(&plain, &mut wire);
    let mut bytes = raw_client(0xC1, &wire);
    h.shard.handle_bytes(1, &mut bytes, h.at(2));
    let req = h.shard.take_upstream().remove(0);
    assert_eq!(&req.body[..], b"a compressed hello");
    let m = &h.shard.metrics;
    assert_eq!((m.deflated_out.get(), m.inflated_in.get()), (2, 1));
    assert_eq!(m.links_by_transport.get(Transport::WebSocketDeflate), 1);

    // Corrupt compressed data closes the link with 1002; a bomb with 1009.
    let mut junk = raw_client(0xC1, &[0xff, 0xff, 0xff]);
    h.shard.handle_bytes(1, &mut junk, h.at(3));
    assert!(!h.shard.link_mut(1).unwrap().is_open());
    h.shard.open(2, who("bob", "web"), &offer, far(), h.t0);
    h.shard.link_mut(2).unwrap().out.clear();
    let mut bomb = Vec::new();
    client_side.compress(&vec![b' '; 4096], &mut bomb);
    let mut bytes = raw_client(0xC1, &bomb);
    h.shard.handle_bytes(2, &mut bytes, h.at(3));
    let closed_with = h.shard.link_mut(2).unwrap().close_note.clone();
    assert_eq!(closed_with.unwrap().0, close_code::TOO_BIG);
}

#[test]
fn without_an_offer_or_with_deflate_off_nothing_is_compressed() {
    let mut h = Harness::new();
    h.shard
        .open(1, who("alice", "web"), &upgrade(Codec::Json), far(), h.t0);
    assert!(!String::from_utf8_lossy(&h.shard.link_mut(1).unwrap().out).contains("Extensions"));
    let mut off = cfg();
    off.deflate = None;
    let mut shard = Shard::new(off, embedded(), Arc::default(), 1, h.t0);
    let mut offer = upgrade(Codec::Json);
    offer.extensions = Some("permessage-deflate".into());
    shard.open(1, who("alice", "web"), &offer, far(), h.t0);
    assert!(!String::from_utf8_lossy(&shard.link_mut(1).unwrap().out).contains("Extensions"));
    // RSV1 from a client that was not granted deflate is a protocol error.
    let mut bytes = raw_client(0xC1, b"x");
    shard.handle_bytes(1, &mut bytes, h.t0);
    assert!(!shard.link_mut(1).unwrap().is_open());
}

#[test]
fn conformance_mode_echoes_data_messages_and_sends_nothing_first() {
    let mut h = Harness::new();
    let mut echo = cfg();
    echo.ws_echo = true;
    h.shard = Shard::new(echo, embedded(), Arc::default(), 1, h.t0);
    assert!(h.open_raw(1, "ab", "suite", Codec::Json).is_empty());
    let mut bytes = raw_client(0x81, "héllo".as_bytes());
    bytes.extend(raw_client(0x02, &[0, 1]));
    bytes.extend(raw_client(0x80, &[2]));
    bytes.extend(raw_client(0x89, b"p"));
    h.shard.handle_bytes(1, &mut bytes, h.at(0));
    let mut expected = Vec::new();
    ws::write_frame(&mut expected, OpCode::Data(Data::Text), "héllo".as_bytes());
    ws::write_frame(&mut expected, OpCode::Data(Data::Binary), &[0, 1, 2]);
    ws::write_frame(&mut expected, OpCode::Control(Control::Pong), b"p");
    assert_eq!(h.shard.link_mut(1).unwrap().out, expected);
    assert_eq!(h.shard.metrics.frames_in.total(), 0);
}

fn http_req(route: Route, last_event_id: u64) -> HttpRequest {
    HttpRequest {
        route,
        token: None,
        origin: Some("http://demo".into()),
        last_event_id,
        since: None,
        content_length: 0,
        head_len: 0,
    }
}

/// The SSE events (id, data) in `out`, after any response head.
fn sse_events(out: &[u8]) -> Vec<(Option<u64>, String)> {
    let text = String::from_utf8(out.to_vec()).unwrap();
    let body = text.split_once("\r\n\r\n").map_or(&text[..], |(_, b)| b);
    body.split("\n\n")
        .filter(|e| e.contains("data: "))
        .map(|e| {
            let id = e
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(|v| v.parse().unwrap());
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (id, data.to_owned())
        })
        .collect()
}

#[test]
fn event_stream_carries_frames_acks_arrive_by_post_and_a_resume_resends_what_was_lost() {
    let mut h = Harness::new();
    let (conn, g1) = h.shard.attach(
        1,
        who("alice", "web"),
        &http_req(Route::EventStream, 0),
        far(),
        h.t0,
    );
    assert_eq!(conn, 1);
    // Pushes for the device: not stored, so their event ids are the link's seq.
    h.push("alice", Some("web"), "p-1", 1);
    h.push("alice", Some("web"), "p-2", 2);
    let link = h.shard.link_mut(1).unwrap();
    let out = std::mem::take(&mut link.out);
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
    assert!(String::from_utf8_lossy(&out).contains("Access-Control-Allow-Origin: http://demo\r\n"));
    let events = sse_events(&out);
    assert!(events[0].1.contains("CMD_CONNECTED"));
    assert_eq!((events[1].0, events[2].0), (Some(1), Some(2)));

    // Upstream and the ack for p-1 come by POST /send.
    let body = br#"[{"cmd":"CMD_DOWNSTREAM_ACK","key":"p-1"},{"cmd":"UPSTREAM","key":"m1","body":"aGk="}]"#;
    h.shard
        .post(&who("alice", "web"), body, far(), h.at(3))
        .unwrap();
    assert_eq!(h.shard.take_upstream().len(), 1);
    assert_eq!(h.shard.link_mut(1).unwrap().inflight.len(), 1);
    // Bad bodies and devices without a stream get HTTP errors, not link damage.
    assert_eq!(
        h.shard
            .post(&who("alice", "web"), b"{", far(), h.at(3))
            .unwrap_err()
            .0,
        400
    );
    assert_eq!(
        h.shard
            .post(&who("alice", "tablet"), b"{}", far(), h.at(3))
            .unwrap_err()
            .0,
        409
    );

    // The stream drops; pushes wait on the link. EventStream resumes with Last-Event-ID 1.
    h.shard.detach(1, g1, h.at(4));
    h.push("alice", Some("web"), "p-3", 5);
    let (again, g2) = h.shard.attach(
        9,
        who("alice", "web"),
        &http_req(Route::EventStream, 1),
        far(),
        h.at(6),
    );
    assert_eq!((again, g2), (1, g1 + 1));
    let events = sse_events(&std::mem::take(&mut h.shard.link_mut(1).unwrap().out));
    let ids: Vec<Option<u64>> = events.iter().map(|e| e.0).collect();
    // p-3 waited in the buffer; CONNECTED again; p-2 (seq 2 > 1, unacked) resent as seq 2.
    assert_eq!(ids, [Some(3), None, Some(2)]);
    assert!(events[1].1.contains("CMD_CONNECTED"));
    // The superseded request's socket task ending changes nothing.
    h.shard.detach(1, g1, h.at(7));
    assert!(
        h.shard
            .link_mut(1)
            .unwrap()
            .wire
            .attachment()
            .unwrap()
            .attached
    );
    assert_eq!(h.shard.metrics.http_attaches.get(), 1);
}

#[test]
fn a_detached_link_waits_one_heartbeat_timeout_then_reports_its_pushes() {
    let mut h = Harness::new();
    let (_, g) = h.shard.attach(
        1,
        who("alice", "web"),
        &http_req(Route::EventStream, 0),
        far(),
        h.t0,
    );
    h.push("alice", None, "p-1", 1);
    h.shard.detach(1, g, h.at(2));
    // Retransmits go on while detached; the link survives until the timeout.
    h.shard.handle_timeout(h.at(29_000));
    assert!(h.shard.link_mut(1).is_some());
    h.shard.handle_timeout(h.at(40_000));
    assert!(
        h.shard.link_mut(1).is_none(),
        "closed without a socket to tell"
    );
    let reported = h.shard.take_undelivered();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].key, "p-1");
}

#[test]
fn long_poll_batches_frames_and_answers_empty_when_due() {
    let mut h = Harness::new();
    let (_, g) = h.shard.attach(
        1,
        who("alice", "old"),
        &http_req(Route::Poll, 0),
        far(),
        h.t0,
    );
    h.push("alice", None, "p-1", 1);
    let link = h.shard.link_mut(1).unwrap();
    let batch = std::mem::take(&mut link.out);
    let frames: Vec<serde_json::Value> =
        serde_json::from_slice(&[b"[", &batch[..], b"]"].concat()).unwrap();
    assert_eq!(frames[0]["cmd"], "CMD_CONNECTED");
    assert_eq!(
        (frames[1]["key"].as_str(), frames[1]["seq"].as_str()),
        (Some("p-1"), Some("1"))
    );
    // Nothing more to say: the heartbeat interval makes the poll due (an empty answer).
    h.shard.handle_timeout(h.at(12_100));
    assert!(poll_due(&mut h.shard));
    h.shard.detach(1, g, h.at(12_200));
    let (same, _) = h.shard.attach(
        2,
        who("alice", "old"),
        &http_req(Route::Poll, 0),
        far(),
        h.at(13_000),
    );
    assert_eq!(same, 1);
    assert!(!poll_due(&mut h.shard));
    // A kick ends the link; the waiting poll is answered with the close.
    h.kick("alice", "bye", 13_100);
    let link = h.shard.link_mut(1).unwrap();
    assert!(link.wire.attachment().unwrap().poll_due && !link.is_open());
    assert_eq!(link.close_note.as_ref().unwrap().0, close_code::KICKED);
}

#[test]
fn sealed_bizs_get_bodies_opened_upstream_and_sealed_once_downstream() {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let mut c = cfg();
    c.body_keys = BodyKeys::parse(&[format!("1={key}")]).unwrap();
    let client_keys = c.body_keys.clone();
    let mut h = Harness::new();
    h.shard = Shard::new(c, embedded(), Arc::default(), 7, h.t0);
    h.open(1, "alice", "phone", Codec::Proto);

    // Upstream: the backend gets the plain body; the ack's body comes back sealed.
    let sealed = client_keys.seal(1, Bytes::from_static(b"secret"));
    h.send(
        1,
        0,
        &Frame {
            body: sealed,
            ..up("m1", b"")
        },
    );
    let req = h.answer_upstream(1, Ok(Bytes::from_static(b"reply")));
    assert_eq!(&req.body[..], b"secret");
    let ack = h.frames(1).remove(0);
    assert_eq!(client_keys.open(1, ack.body).unwrap(), &b"reply"[..]);
    // A body that does not open is refused, not forwarded.
    h.send(
        1,
        2,
        &Frame {
            body: Bytes::from_static(b"0123456789abcdefghijklmnopqrstuvwxyz"),
            ..up("m2", b"")
        },
    );
    let err = h.frames(1).remove(0);
    assert_eq!(
        (err.cmd, err.code),
        (Cmd::Error as i32, Code::BadFrame as i32)
    );
    assert!(h.shard.take_upstream().is_empty());

    // Downstream: sealed once; the retransmit carries the very same bytes.
    let push = h
        .shard
        .encode_push(1, "p-1", Bytes::from_static(b"pushed"), None);
    h.shard.push(
        1,
        &["alice".to_owned()],
        None,
        &push,
        stored(h.at(3)),
        h.at(3),
    );
    let first = h.frames(1).remove(0);
    assert_eq!(
        client_keys.open(1, first.body.clone()).unwrap(),
        &b"pushed"[..]
    );
    h.shard.handle_timeout(h.at(1200));
    let again = h.frames(1).remove(0);
    assert_eq!((again.seq, &again.body), (first.seq, &first.body));
    // Reports carry the plain body, for whoever resends it.
    assert_eq!(push.body(), &Bytes::from_static(b"pushed"));
}

fn poll_due(shard: &mut Shard) -> bool {
    shard
        .link_mut(1)
        .unwrap()
        .wire
        .attachment()
        .unwrap()
        .poll_due
}

#[test]
fn a_link_is_handed_out_once_per_batch_of_output_then_again_after_more() {
    let mut h = Harness::new();
    h.shard
        .open(1, who("alice", "phone"), &upgrade(Codec::Json), far(), h.t0);
    h.push("alice", None, "p-1", 1);
    h.push("alice", None, "p-2", 1);
    let wakes = |s: &mut Shard| {
        std::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, Event::Wake(1)))
            .count()
    };
    assert_eq!(
        wakes(&mut h.shard),
        1,
        "listed once for 101, CONNECTED and two pushes"
    );
    assert_eq!(wakes(&mut h.shard), 0);
    h.push("alice", None, "p-3", 2);
    assert_eq!(wakes(&mut h.shard), 1);
}

#[test]
fn transmit_offers_the_queue_then_idle_then_the_close() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    assert_eq!(h.shard.poll_transmit(1), Transmit::Idle { closing: false });
    h.push("alice", None, "p-1", 1);
    let Transmit::Bytes(out) = h.shard.poll_transmit(1) else {
        panic!("the push is queued")
    };
    let len = out.len();
    let last = *out.last().unwrap();
    h.shard.handle_written(1, len - 1, h.at(2));
    assert_eq!(h.shard.poll_transmit(1), Transmit::Bytes(&[last]));
    h.shard.handle_written(1, 1, h.at(5));
    assert_eq!(h.shard.poll_transmit(1), Transmit::Idle { closing: false });
    // Queued at 1 ms, out at 5 ms.
    let waits = &h.shard.latencies.push_write_wait;
    assert!(waits.len() == 1 && waits.equivalent(waits.max(), 4_000));
    h.kick("alice", "bye", 6);
    assert!(matches!(h.shard.poll_transmit(1), Transmit::Bytes(_)));
    h.drain(1);
    assert_eq!(h.shard.poll_transmit(1), Transmit::Idle { closing: true });
    h.shard.closed(1);
    assert_eq!(h.shard.poll_transmit(1), Transmit::Gone);
}

#[test]
fn a_long_poll_is_answered_once_when_due_and_a_newer_request_takes_over() {
    let mut h = Harness::new();
    let (_, g) = h.shard.attach(
        1,
        who("alice", "old"),
        &http_req(Route::Poll, 0),
        far(),
        h.t0,
    );
    assert!(h.shard.serves(1, g));
    // CONNECTED waits: the poll is answered with it at once.
    let answer = h.shard.take_poll_answer(1, None).unwrap();
    assert!(String::from_utf8_lossy(&answer).contains("CMD_CONNECTED"));
    assert_eq!(
        h.shard.take_poll_answer(1, None),
        None,
        "nothing more is due"
    );
    let (_, g2) = h.shard.attach(
        2,
        who("alice", "old"),
        &http_req(Route::Poll, 0),
        far(),
        h.at(1),
    );
    assert!(!h.shard.serves(1, g) && h.shard.serves(1, g2));
}

#[test]
fn loopback_bizs_are_acked_and_echoed_by_the_shard_itself() {
    let t0 = Instant::now();
    let mut e = embedded();
    e.local_bizs = Arc::new(LocalBizs::new(true, Default::default()));
    e.echo = true;
    let mut h = Harness {
        shard: Shard::new(cfg(), e, Arc::default(), 7, t0),
        t0,
    };
    h.open(1, "alice", "phone", Codec::Json);
    h.send(1, 0, &up("m1", b"hi"));
    assert!(
        h.shard.take_upstream().is_empty(),
        "nothing leaves the core"
    );
    let frames = h.frames(1);
    assert_eq!(frames[0].cmd, Cmd::UpstreamAck as i32);
    assert_eq!(
        (frames[1].cmd, frames[1].key.as_str(), &frames[1].body[..]),
        (Cmd::Downstream as i32, "m1", &b"hi"[..])
    );
}

#[test]
fn with_a_shared_store_claims_go_out_and_an_unreachable_store_follows_the_policy() {
    for (policy, forwarded) in [
        (StoreDownPolicy::Local, true),
        (StoreDownPolicy::Refuse, false),
    ] {
        let t0 = Instant::now();
        let mut e = embedded();
        e.shared_store = Some(policy);
        let mut h = Harness {
            shard: Shard::new(cfg(), e, Arc::default(), 7, t0),
            t0,
        };
        h.open(1, "alice", "phone", Codec::Json);
        h.send(1, 0, &up("m1", b"hi"));
        let mut claims = h.shard.take_claims();
        assert_eq!(claims.len(), 1);
        h.shard.on_claimed(claims.remove(0), None, h.at(1));
        assert_eq!(
            h.shard.take_upstream().len(),
            usize::from(forwarded),
            "{policy:?}"
        );
        let fallbacks = h.shard.metrics.idem_fallbacks.get();
        assert_eq!(fallbacks, u64::from(forwarded));
        if !forwarded {
            let err = h.frames(1).remove(0);
            assert_eq!(err.code, Code::BackendUnavailable as i32);
        }
    }
}

#[test]
fn a_push_is_timed_from_its_acceptance_to_written_and_to_acked() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    let p = EncodedPush::new("p1", Bytes::from_static(b"x"));
    // Accepted at 0 ms, delivered by the core at 3 ms.
    let user = ["alice".to_owned()];
    h.shard.push(1, &user, None, &p, stored(h.at(0)), h.at(3));
    let Transmit::Bytes(out) = h.shard.poll_transmit(1) else {
        panic!("queued")
    };
    let len = out.len();
    h.shard.handle_written(1, len, h.at(5));
    let mut ack = client(Codec::Json, &cmd_frame(Cmd::DownstreamAck, "p1"));
    h.shard.handle_bytes(1, &mut ack, h.at(9));
    let l = &h.shard.latencies;
    let ms = |h: &hdrhistogram::Histogram<u64>| (h.len(), h.lowest_equivalent(h.max()) / 1000);
    assert_eq!(ms(&l.push_delivery), (1, 3), "accepted → queued");
    assert_eq!(ms(&l.push_written), (1, 5), "accepted → written");
    assert_eq!(ms(&l.push_ack), (1, 6), "sent → acked");
    assert_eq!(ms(&l.push_acked), (1, 9), "accepted → acked");
}

#[path = "shard/resume_tests.rs"]
mod resume;

#[path = "shard/token_tests.rs"]
mod token;

#[path = "shard/rooms_tests.rs"]
mod rooms;

#[path = "shard/alloc_tests.rs"]
mod alloc;
