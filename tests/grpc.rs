//! Upstream through a real gRPC backend (the repo's test backend, over loopback).

mod common;

use std::time::Duration;

use common::{Backend, Gateway, frame, wait_until};
use ringway::proto::{Cmd, Code};
use ringway::protocol::Codec;

#[test]
fn upstream_reaches_the_backend_with_the_senders_identity_and_acks_its_reply() {
    let backend = Backend::start(&[]);
    let gw = Gateway::start(&["--backend", &backend.url(), "--node-id", "gw-test"]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    c.send(&frame(Cmd::Upstream, "k1", b"hello"));
    let ack = c.frame();
    assert_eq!(
        (ack.cmd, ack.key.as_str(), &ack.body[..]),
        (Cmd::UpstreamAck as i32, "k1", &b"ok:k1"[..])
    );
    let msgs = backend.wait_seen("msg ", 1);
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0].starts_with(
            "msg biz=1 user=alice device=phone link=1:alice:phone node=gw-test key=k1 body_len=5"
        ),
        "{}",
        msgs[0]
    );
    // A duplicate is re-acked from the stored reply: the backend does not see it again.
    c.send(&frame(Cmd::Upstream, "k1", b"hello"));
    assert_eq!(&c.frame().body[..], b"ok:k1");
    assert_eq!(backend.seen("msg ").len(), 1);
}

#[test]
fn batches_form_under_load_and_an_idle_message_goes_alone() {
    let backend = Backend::start(&[]);
    let gw = Gateway::start(&[
        "--backend",
        &backend.url(),
        "--batch-size",
        "16",
        "--batch-delay-ms",
        "30",
    ]);
    let mut lone = gw.connect("lone", "d", Codec::Proto);
    lone.send(&frame(Cmd::Upstream, "solo", b""));
    assert_eq!(lone.frame().cmd, Cmd::UpstreamAck as i32);
    assert_eq!(
        backend.wait_seen("call ", 1),
        vec!["call OnReceive biz=1 size=1".to_string()]
    );

    let mut clients: Vec<_> = (0..24)
        .map(|i| gw.connect(&format!("u{i}"), "d", Codec::Proto))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&frame(Cmd::Upstream, &format!("m{i}"), b"x"));
    }
    for c in &mut clients {
        assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);
    }
    backend.wait_seen("msg ", 25);
    let sizes: Vec<usize> = backend
        .seen("call ")
        .iter()
        .map(|l| l.rsplit("size=").next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        sizes.iter().sum::<usize>(),
        25,
        "every message reached the backend once: {sizes:?}"
    );
    assert!(sizes.iter().any(|s| *s > 1), "no batch formed: {sizes:?}");
    assert!(gw.metric("ringway_backend_calls_total") < 25.0);
}

#[test]
fn a_rejected_message_fails_alone_and_can_be_retried() {
    let backend = Backend::start(&["--reject-prefix", "bad-"]);
    let gw = Gateway::start(&[
        "--backend",
        &backend.url(),
        "--batch-size",
        "8",
        "--batch-delay-ms",
        "50",
    ]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    c.send(&frame(Cmd::Upstream, "bad-1", b""));
    c.send(&frame(Cmd::Upstream, "good-1", b""));
    let mut got = [c.frame(), c.frame()];
    got.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        (got[0].key.as_str(), got[0].cmd, got[0].code),
        ("bad-1", Cmd::Error as i32, Code::BackendRejected as i32)
    );
    assert_eq!(
        (got[1].key.as_str(), got[1].cmd),
        ("good-1", Cmd::UpstreamAck as i32)
    );
    backend.wait_seen("msg ", 2);
    assert!(
        backend
            .seen("call BatchOnReceive")
            .iter()
            .any(|l| l.ends_with("size=2"))
    );
    // The refused key's claim was released: a retry reaches the backend again.
    c.send(&frame(Cmd::Upstream, "bad-1", b""));
    assert_eq!(c.frame().code, Code::BackendRejected as i32);
    assert_eq!(
        backend
            .wait_seen("msg ", 3)
            .iter()
            .filter(|l| l.contains("key=bad-1 "))
            .count(),
        2
    );
}

#[test]
fn backend_down_means_fast_errors_then_recovery() {
    let mut backend = Backend::start(&[]);
    let gw = Gateway::start(&[
        "--backend",
        &backend.url(),
        "--batch-size",
        "1",
        "--backend-timeout-ms",
        "500",
        "--backend-attempts",
        "2",
        "--backend-breaker-failures",
        "2",
        "--backend-breaker-cooldown-ms",
        "300",
    ]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    c.send(&frame(Cmd::Upstream, "before", b""));
    assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);

    backend.stop();
    for i in 0..3 {
        let started = std::time::Instant::now();
        c.send(&frame(Cmd::Upstream, &format!("down-{i}"), b""));
        let f = c.frame();
        assert_eq!(
            (f.cmd, f.code),
            (Cmd::Error as i32, Code::BackendUnavailable as i32),
            "{f:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered in {:?}",
            started.elapsed()
        );
    }

    // The failures opened the circuit; /metrics says so until a call succeeds.
    assert_eq!(gw.metric("ringway_backend_breakers_open"), 1.0);

    backend.restart();
    wait_until(
        "acks after the backend is back",
        Duration::from_secs(15),
        || {
            c.send(&frame(Cmd::Upstream, "down-0", b""));
            c.frame().cmd == Cmd::UpstreamAck as i32
        },
    );
    assert_eq!(gw.metric("ringway_backend_breakers_open"), 0.0);
}
