//! The shared idempotency store and the location registry against a real redis-server and a
//! real Redis Cluster.

mod common;

use std::time::Duration;

use common::{Etcd, Gateway, Got, Redis, RedisCluster, frame, wait_until};
use ringway::proto::{Cmd, Code};
use ringway::protocol::Codec;

#[test]
fn a_duplicate_through_another_gateway_is_reacked_not_forwarded() {
    let redis = Redis::start();
    a_duplicate_is_reacked_through_any_gateway(&redis.url());
}

#[test]
fn a_duplicate_is_reacked_through_any_gateway_of_a_redis_cluster() {
    let cluster = RedisCluster::start();
    a_duplicate_is_reacked_through_any_gateway(&cluster.url());
}

fn a_duplicate_is_reacked_through_any_gateway(url: &str) {
    let a = Gateway::start(&["--redis", url]);
    let b = Gateway::start(&["--redis", url]);
    let mut phone = a.connect("alice", "phone", Codec::Proto);
    phone.send(&frame(Cmd::Upstream, "m1", b"hello"));
    assert_eq!(phone.frame().cmd, Cmd::UpstreamAck as i32);

    // The ack was lost; the client resends through another node.
    let mut laptop = b.connect("alice", "laptop", Codec::Json);
    laptop.send(&frame(Cmd::Upstream, "m1", b"hello"));
    let ack = laptop.frame();
    assert_eq!((ack.cmd, ack.key.as_str()), (Cmd::UpstreamAck as i32, "m1"));

    assert_eq!(a.metric("ringway_upstream_forwarded_total"), 1.0);
    assert_eq!(
        b.metric("ringway_upstream_forwarded_total"),
        0.0,
        "the backend saw it once"
    );
    assert_eq!(b.metric("ringway_upstream_reacked_total"), 1.0);
    assert_eq!(b.metric("ringway_idem_fallbacks_total"), 0.0);
}

/// Sends `key` and returns the answer, which must come within the client's read timeout:
/// nothing may hang while Redis is away.
fn answer(c: &mut common::Client, key: &str) -> ringway::proto::Frame {
    c.send(&frame(Cmd::Upstream, key, b"x"));
    match c.recv() {
        Got::Frame(f) => f,
        other => panic!("no answer for {key}: {other:?}"),
    }
}

#[test]
fn redis_outage_with_the_local_policy_keeps_messages_flowing() {
    let mut redis = Redis::start();
    let gw = Gateway::start(&["--redis", &redis.url(), "--redis-timeout-ms", "300"]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    assert_eq!(answer(&mut c, "before").cmd, Cmd::UpstreamAck as i32);

    redis.stop();
    let f = answer(&mut c, "during");
    assert_eq!(f.cmd, Cmd::UpstreamAck as i32, "claimed locally: {f:?}");
    assert_eq!(
        answer(&mut c, "during").cmd,
        Cmd::UpstreamAck as i32,
        "local store re-acks"
    );
    assert!(gw.metric("ringway_idem_fallbacks_total") >= 2.0);
    assert!(gw.metric("ringway_idem_store_errors_total") >= 1.0);

    redis.restart();
    // Claims go through Redis again once no new message falls back to the local store.
    let mut n = 0;
    wait_until(
        "claims through redis again",
        Duration::from_secs(15),
        || {
            n += 1;
            let before = gw.metric("ringway_idem_fallbacks_total");
            answer(&mut c, &format!("after-{n}")).cmd == Cmd::UpstreamAck as i32
                && gw.metric("ringway_idem_fallbacks_total") == before
        },
    );
}

#[test]
fn redis_outage_with_the_refuse_policy_answers_errors_then_recovers() {
    let mut redis = Redis::start();
    let gw = Gateway::start(&[
        "--redis",
        &redis.url(),
        "--redis-timeout-ms",
        "300",
        "--redis-unavailable",
        "refuse",
    ]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    assert_eq!(answer(&mut c, "before").cmd, Cmd::UpstreamAck as i32);

    redis.stop();
    let f = answer(&mut c, "during");
    assert_eq!(
        (f.cmd, f.code, f.key.as_str()),
        (Cmd::Error as i32, Code::BackendUnavailable as i32, "during")
    );
    assert_eq!(
        gw.metric("ringway_upstream_forwarded_total"),
        1.0,
        "nothing forwarded without a claim"
    );
    assert!(gw.metric("ringway_dropped_total{reason=\"store_unavailable\"}") >= 1.0);

    redis.restart();
    wait_until(
        "acks again after redis is back",
        Duration::from_secs(15),
        || answer(&mut c, "during").cmd == Cmd::UpstreamAck as i32,
    );
}

#[test]
fn claims_from_many_links_share_redis_round_trips() {
    let redis = Redis::start();
    let gw = Gateway::start(&["--redis", &redis.url()]);
    let mut clients: Vec<_> = (0..32)
        .map(|i| gw.connect(&format!("u{i}"), "d", Codec::Proto))
        .collect();
    for round in 0..5 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&frame(Cmd::Upstream, &format!("r{round}-{i}"), b""));
        }
        for c in &mut clients {
            assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);
        }
    }
    let claims = gw.metric("ringway_idem_claims_total");
    let batches = gw.metric("ringway_idem_claim_batches_total");
    assert_eq!(claims, 160.0);
    assert!(
        batches < claims,
        "{claims} claims in {batches} round trips: no batching across links"
    );
}

/// Locations are written as devices come online and forgotten when they go, in a cluster too:
/// devices of many users going offline together are forgotten one slot at a time (one script
/// over keys of many slots is refused with CROSSSLOT).
#[test]
fn locations_come_and_go_in_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let etcd = Etcd::start();
    let gw = Gateway::start(&["--redis", &cluster.url(), "--etcd", &etcd.url()]);
    let users: Vec<String> = (0..40).map(|i| format!("loc-{i}")).collect();
    let clients: Vec<_> = users
        .iter()
        .map(|u| gw.connect(u, "phone", Codec::Proto))
        .collect();
    let key = |u: &str| format!("loc:{{1:{u}}}");
    wait_until("every location written", Duration::from_secs(10), || {
        users.iter().all(|u| cluster.exists(&key(u)))
    });
    drop(clients);
    gw.wait_metric("ringway_links", 0.0);
    wait_until("every location forgotten", Duration::from_secs(10), || {
        users.iter().all(|u| !cluster.exists(&key(u)))
    });
    assert_eq!(gw.metric("ringway_location_errors_total"), 0.0);
}
