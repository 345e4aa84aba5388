//! Streams and resume on one node with its embedded store, end to end: the real binary, real
//! clients over WebSocket and SSE, loopback.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Client, Gateway, Got, Redis, RedisCluster, connect_query, frame, report};
use ringway::proto::{Cmd, Connected, Frame};
use ringway::protocol::Codec;

fn connected(c: &Client) -> &Connected {
    c.connected.connected.as_ref().expect("CONNECTED")
}

fn resume(gw: &Gateway, user: &str, since: &str) -> Client {
    let query = format!("since={since}");
    let (mut c, first) = connect_query(gw.ws, user, "phone", Codec::Json, &query).expect("connect");
    assert_eq!(first.cmd, Cmd::Connected as i32);
    c.connected = first;
    c
}

/// Reads DOWNSTREAMs until `n` have come, acking each; returns them as (key, offset). The
/// epoch a push names (the user's stream began while the link was open) is kept in the
/// client's `connected`, as a client does to resume later.
fn take_acked(c: &mut Client, n: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let f: Frame = c.frame();
        assert_eq!(f.cmd, Cmd::Downstream as i32, "{f:?}");
        if let Some(named) = &f.connected {
            let known = c.connected.connected.get_or_insert_with(Default::default);
            known.epoch = named.epoch.clone();
        }
        c.send(&frame(Cmd::DownstreamAck, &f.key, b""));
        got.push((f.key, f.offset));
    }
    got
}

#[test]
fn a_client_that_reconnects_with_since_gets_every_push_it_missed_once_in_order() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    assert_eq!(connected(&c).epoch, "", "no stream before the first push");
    gw.push("alice", "p-1", b"one");
    let first = take_acked(&mut c, 1);
    assert_eq!(first, [("p-1".to_owned(), 1)]);
    let announced = connected(&c).epoch.clone();
    assert_eq!(
        announced.len(),
        16,
        "the new stream's epoch, told before its first push"
    );
    gw.wait_metric("ringway_push_acked_total", 1.0);
    drop(c);
    gw.wait_metric("ringway_links", 0.0);

    // Away: ten pushes, each stored and reported offline.
    for i in 2..=11 {
        gw.push("alice", &format!("p-{i}"), b"missed");
    }
    gw.wait_metric("ringway_undelivered_total{reason=\"offline\"}", 10.0);
    let epoch = announced;

    let mut c = resume(&gw, "alice", &format!("{epoch}:1"));
    let cc = connected(&c);
    assert_eq!(
        (cc.epoch.as_str(), cc.offset, cc.recovered),
        (&*epoch, 11, true)
    );
    gw.push("alice", "live", b"after");
    let got = take_acked(&mut c, 11);
    let offsets: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(offsets, (2..=12).collect::<Vec<_>>(), "replay, then live");
    assert_eq!(got[10].0, "live");
    let keys: BTreeSet<&String> = got.iter().map(|g| &g.0).collect();
    assert_eq!(keys.len(), 11, "each once");
    gw.wait_metric("ringway_push_acked_total", 12.0);
    assert_eq!(gw.metric("ringway_replayed_pushes_total"), 10.0);
    c.set_timeout(Duration::from_millis(300));
    assert!(matches!(c.recv(), Got::Quiet), "nothing more");
    report(&format!(
        "resume: 10 missed pushes replayed in order, then 1 live; offsets {offsets:?}"
    ));
}

#[test]
fn a_resume_that_cannot_be_served_says_recovered_false_and_replays_nothing() {
    let gw = Gateway::start(&["--stream-max-len", "5", "--resume-max", "3"]);
    for i in 1..=8 {
        gw.push("bob", &format!("k-{i}"), b"x");
    }
    gw.wait_metric("ringway_stream_appends_total", 8.0);
    let epoch = connected(&gw.connect("bob", "tablet", Codec::Json))
        .epoch
        .clone();
    // Retained: 4..=8.
    for (since, why) in [
        ("0123456789abcdef:7".to_owned(), "epoch"),
        (format!("{epoch}:2"), "too_old"),
        (format!("{epoch}:4"), "too_many"),
    ] {
        let mut c = resume(&gw, "bob", &since);
        let cc = connected(&c);
        assert_eq!((cc.offset, cc.recovered), (8, false), "{why}");
        c.set_timeout(Duration::from_millis(200));
        assert!(matches!(c.recv(), Got::Quiet), "{why}: nothing replayed");
        gw.wait_metric(&format!("ringway_resumes_total{{result=\"{why}\"}}"), 1.0);
    }
    let mut c = resume(&gw, "bob", &format!("{epoch}:5"));
    assert!(connected(&c).recovered);
    assert_eq!(
        take_acked(&mut c, 3),
        [6, 7, 8].map(|o| (format!("k-{o}"), o))
    );
    // A malformed since is the client's mistake: 400.
    let bad = connect_query(gw.ws, "bob", "phone", Codec::Json, "since=nope");
    assert_eq!(bad.err(), Some(400));
}

#[test]
fn a_push_posted_twice_keeps_its_offset_and_reaches_a_link_once() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect("carol", "phone", Codec::Proto);
    gw.push("carol", "same", b"x");
    gw.push("carol", "same", b"x");
    gw.push("carol", "next", b"y");
    assert_eq!(
        take_acked(&mut c, 2),
        [("same".to_owned(), 1), ("next".to_owned(), 2)]
    );
    assert_eq!(gw.metric("ringway_stream_duplicates_total"), 1.0);
}

/// `GET /sse` as `user`'s browser sends it, with `extra` header lines.
fn open_sse(gw: &Gateway, user: &str, extra: &str) -> TcpStream {
    let token = gw.token(user, "web");
    let mut s = TcpStream::connect(gw.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET /sse?token={token} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// Reads an event stream until `needle` has come; returns everything read.
fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = s.read(&mut buf).expect("stream answers in time");
        assert!(n > 0, "stream ended before {needle:?}; got {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    seen
}

/// The keys of the DOWNSTREAM events in `seen`, in order.
fn event_keys(seen: &str) -> Vec<&str> {
    seen.lines()
        .filter(|l| l.contains("CMD_DOWNSTREAM"))
        .filter_map(|l| l.split("\"key\":\"").nth(1)?.split('"').next())
        .collect()
}

/// Two stored pushes on a browser's event stream, which drops; then a third while it is
/// away. Returns the first push's event id, the one the browser is said to have kept.
fn a_browser_misses_a_push(gw: &Gateway, user: &str) -> String {
    let mut s = open_sse(gw, user, "");
    read_until(&mut s, "CMD_CONNECTED");
    gw.push(user, "a", b"1");
    gw.push(user, "b", b"2");
    let seen = read_until(&mut s, ":2\ndata: ");
    let ids: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0].ends_with(":1"), "{}", ids[0]);
    let first = ids[0].to_owned();
    // The stream drops; its link waits for the next request, and takes the third push.
    drop(s);
    gw.push(user, "c", b"3");
    first
}

#[test]
fn an_event_stream_resumes_from_the_last_event_id_a_browser_kept() {
    let gw = Gateway::start(&[]);
    let first = a_browser_misses_a_push(&gw, "dana");
    // EventSource reconnects with the last id it saw; say it only kept the first.
    let mut s = open_sse(&gw, "dana", &format!("Last-Event-ID: {first}\r\n"));
    let seen = read_until(&mut s, ":3\ndata: ");
    assert!(seen.contains("\"recovered\":true"), "{seen}");
    assert_eq!(event_keys(&seen), ["b", "c"]);
}

#[test]
fn an_event_stream_resumes_on_another_node_through_redis() {
    let redis = Redis::start();
    let a = Gateway::start(&["--redis", &redis.url()]);
    let b = Gateway::start(&["--redis", &redis.url()]);
    let first = a_browser_misses_a_push(&a, "hana");
    let mut s = open_sse(&b, "hana", &format!("Last-Event-ID: {first}\r\n"));
    let seen = read_until(&mut s, ":3\ndata: ");
    assert!(seen.contains("\"recovered\":true"), "{seen}");
    assert_eq!(event_keys(&seen), ["b", "c"]);
}

#[test]
fn an_ephemeral_push_is_neither_retransmitted_nor_reported() {
    let gw = Gateway::start(&["--push-retry-initial-ms", "100"]);
    let mut c = gw.connect("erin", "phone", Codec::Json);
    let typing =
        serde_json::json!({"biz_id": 1, "user_id": "erin", "ephemeral": true, "body": "dHlwaW5n"});
    let (status, _) = gw.post("/v1/push", typing.clone());
    assert_eq!(status, 202);
    let f = c.frame();
    assert_eq!((f.cmd, f.offset, f.seq), (Cmd::Downstream as i32, 0, 0));
    c.set_timeout(Duration::from_millis(500));
    assert!(
        matches!(c.recv(), Got::Quiet),
        "no retransmit without an ack"
    );
    // To a user with no link: dropped and counted, never reported or stored.
    let offline = serde_json::json!({"biz_id": 1, "user_id": "nobody", "ephemeral": true});
    assert_eq!(gw.post("/v1/push", offline).0, 202);
    gw.wait_metric("ringway_ephemeral_dropped_total", 1.0);
    assert_eq!(gw.metric("ringway_ephemeral_sent_total"), 1.0);
    assert_eq!(gw.metric("ringway_push_retransmits_total"), 0.0);
    assert_eq!(
        gw.metric("ringway_undelivered_total{reason=\"offline\"}"),
        0.0
    );
    assert_eq!(gw.metric("ringway_stream_appends_total"), 0.0);
}

#[test]
fn a_client_resumes_on_another_node_from_the_redis_stream() {
    let redis = Redis::start();
    resumes_on_another_node(&redis.url());
}

#[test]
fn a_client_resumes_on_another_node_from_a_redis_cluster_stream() {
    let cluster = RedisCluster::start();
    resumes_on_another_node(&cluster.url());
}

fn resumes_on_another_node(url: &str) {
    let a = Gateway::start(&["--redis", url]);
    let b = Gateway::start(&["--redis", url]);
    let mut c = a.connect("frank", "phone", Codec::Proto);
    assert_eq!(connected(&c).epoch, "");
    a.push("frank", "f-1", b"one");
    assert_eq!(take_acked(&mut c, 1), [("f-1".to_owned(), 1)]);
    let mut other = b.connect("frank", "tablet", Codec::Json);
    let epoch = connected(&other).epoch.clone();
    assert_eq!(
        (epoch.len(), connected(&other).offset),
        (16, 1),
        "B sees A's stream"
    );
    drop(c);
    a.wait_metric("ringway_links", 0.0);

    // Away: pushes through A's API (which, without Kafka, reaches A's links only) are
    // stored in Redis and reported offline.
    for i in 2..=4 {
        a.push("frank", &format!("f-{i}"), b"missed");
    }
    a.wait_metric("ringway_undelivered_total{reason=\"offline\"}", 3.0);
    let mut c = resume(&b, "frank", &format!("{epoch}:1"));
    let cc = connected(&c);
    assert_eq!((cc.offset, cc.recovered), (4, true));
    let got = take_acked(&mut c, 3);
    assert_eq!(got, [2, 3, 4].map(|o| (format!("f-{o}"), o)));
    b.push("frank", "f-5", b"live");
    assert_eq!(take_acked(&mut c, 1), [("f-5".to_owned(), 5)]);
    assert_eq!(take_acked(&mut other, 1), [("f-5".to_owned(), 5)]);
    report(&format!("resume on another node through Redis: {got:?}"));
}

#[test]
fn while_redis_is_down_pushes_go_out_unstored_and_resumes_are_not_recovered() {
    let mut redis = Redis::start();
    let gw = Gateway::start(&["--redis", &redis.url(), "--redis-timeout-ms", "200"]);
    let mut c = gw.connect("gina", "phone", Codec::Json);
    gw.push("gina", "g-1", b"x");
    assert_eq!(take_acked(&mut c, 1), [("g-1".to_owned(), 1)]);
    let epoch = {
        let t = gw.connect("gina", "tablet", Codec::Json);
        connected(&t).epoch.clone()
    };
    redis.stop();
    gw.push("gina", "g-2", b"x");
    assert_eq!(
        take_acked(&mut c, 1),
        [("g-2".to_owned(), 0)],
        "live, unstored"
    );
    let c2 = resume(&gw, "gina", &format!("{epoch}:1"));
    let cc = connected(&c2);
    assert_eq!((cc.epoch.as_str(), cc.offset, cc.recovered), ("", 0, false));
    gw.wait_metric("ringway_resumes_total{result=\"store_down\"}", 1.0);
    assert!(gw.metric("ringway_stream_store_errors_total") >= 2.0);
}
