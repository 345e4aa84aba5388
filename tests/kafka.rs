//! Push ingress and undelivered reports against a real Kafka-protocol broker (Tansu).

mod common;

use std::time::Duration;

use common::{Broker, Gateway, wait_until};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use ringway::proto::{Cmd, PresenceEvent, UndeliveredPush};
use ringway::protocol::Codec;

const PUSH: &str = "ringway.push";
const UNDELIVERED: &str = "ringway.undelivered";

/// The next offset the gateway's group will read from the push topic (committed), if any.
fn committed(broker: &Broker) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", "ringway")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(PUSH, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    match got.find_partition(PUSH, 0)?.offset() {
        Offset::Offset(n) => Some(n),
        _ => None,
    }
}

#[test]
fn a_kafka_push_is_committed_only_once_the_client_acked_it() {
    let broker = Broker::start(&[PUSH, UNDELIVERED]);
    let mut gw = Gateway::start(&["--kafka", &broker.addr()]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    broker.produce(PUSH, &common::push("alice", "k1", b"from kafka"));
    c.set_timeout(Duration::from_secs(30)); // the consumer group may still be joining
    let f = c.frame();
    assert_eq!(
        (f.cmd, f.key.as_str(), &f.body[..]),
        (Cmd::Downstream as i32, "k1", &b"from kafka"[..])
    );
    // Handed to the core and sent, but not acked: the offset stays where it was, so a crash
    // now would re-read k1 instead of losing it.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(committed(&broker), None);
    // ... and /metrics shows the record waiting.
    gw.wait_metric("ringway_kafka_uncommitted_records", 1.0);
    c.send(&common::frame(Cmd::DownstreamAck, "k1", b""));
    wait_until("offset 1 committed", Duration::from_secs(15), || {
        committed(&broker) == Some(1)
    });
    assert_eq!(gw.metric("ringway_kafka_pushes_total"), 1.0);
    gw.wait_metric("ringway_kafka_uncommitted_records", 0.0);

    // A new node in the same group starts after the committed offset: k1 is not read again.
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(10));
    let gw = Gateway::start(&["--kafka", &broker.addr()]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    c.set_timeout(Duration::from_secs(30));
    broker.produce(PUSH, &common::push("alice", "k2", b"second"));
    assert_eq!(c.frame().key, "k2");
    c.send(&common::frame(Cmd::DownstreamAck, "k2", b""));
    wait_until("offset 2 committed", Duration::from_secs(15), || {
        committed(&broker) == Some(2)
    });
    assert_eq!(gw.metric("ringway_kafka_pushes_total"), 1.0);
}

#[test]
fn offline_pushes_are_reported_with_their_body_and_garbage_is_skipped() {
    let broker = Broker::start(&[PUSH, UNDELIVERED]);
    let gw = Gateway::start(&["--kafka", &broker.addr(), "--node-id", "gw-k"]);
    broker.produce(PUSH, b"\xff\xff not a push");
    broker.produce(PUSH, &common::push("nobody", "lost-1", b"keep me"));

    let (_, payload) = broker.read(UNDELIVERED, 1).remove(0);
    let r = UndeliveredPush::decode(&payload[..]).unwrap();
    assert_eq!(
        (r.biz_id, r.user_id.as_str(), r.key.as_str()),
        (1, "nobody", "lost-1")
    );
    assert_eq!(
        (&r.body[..], r.reason.as_str(), r.node_id.as_str()),
        (&b"keep me"[..], "offline", "gw-k")
    );
    assert_eq!(gw.metric("ringway_kafka_bad_pushes_total"), 1.0);
    assert_eq!(
        gw.metric("ringway_undelivered_total{reason=\"offline\"}"),
        1.0
    );
    wait_until("report counted", Duration::from_secs(5), || {
        gw.metric("ringway_kafka_undelivered_reports_total") == 1.0
    });
}

#[test]
fn upstream_routed_to_kafka_is_acked_after_the_broker_has_it() {
    const UP: &str = "ringway.upstream";
    let broker = Broker::start(&[PUSH, UNDELIVERED, UP]);
    let gw = Gateway::start(&[
        "--kafka",
        &broker.addr(),
        "--backend",
        &format!("kafka:{UP}"),
        "--node-id",
        "gw-up",
    ]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    c.set_timeout(Duration::from_secs(15));
    c.send(&common::frame(Cmd::Upstream, "u1", b"to kafka"));
    let ack = c.frame();
    assert_eq!((ack.cmd, ack.key.as_str()), (Cmd::UpstreamAck as i32, "u1"));

    let (key, payload) = broker.read(UP, 1).remove(0);
    assert_eq!(key, b"1:alice", "keyed by user for per-user order");
    let r = ringway::backend_proto::OnReceiveRequest::decode(&payload[..]).unwrap();
    assert_eq!(
        (r.biz_id, r.user_id.as_str(), r.device_id.as_str()),
        (1, "alice", "phone")
    );
    assert_eq!(
        (r.key.as_str(), &r.body[..], r.node_id.as_str()),
        ("u1", &b"to kafka"[..], "gw-up")
    );
}

#[test]
fn devices_going_online_and_offline_are_published() {
    const PRESENCE: &str = "ringway.presence";
    let broker = Broker::start(&[PUSH, UNDELIVERED, PRESENCE]);
    let gw = Gateway::start(&["--kafka", &broker.addr(), "--node-id", "gw-p"]);
    let c = gw.connect("alice", "phone", Codec::Proto);
    drop(c);
    wait_until("link gone", Duration::from_secs(10), || {
        gw.metric("ringway_links") == 0.0
    });
    let events: Vec<PresenceEvent> = broker
        .read(PRESENCE, 2)
        .into_iter()
        .map(|(_, p)| PresenceEvent::decode(&p[..]).unwrap())
        .collect();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.user_id.as_str(),
                e.device_id.as_str(),
                e.node_id.as_str(),
                e.online,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("alice", "phone", "gw-p", true),
            ("alice", "phone", "gw-p", false)
        ]
    );
}

#[test]
fn a_killed_broker_comes_back_with_its_log_and_offsets_and_the_gateway_goes_on() {
    let mut broker = Broker::start_durable(&[PUSH, UNDELIVERED]);
    let gw = Gateway::start(&["--kafka", &broker.addr()]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    c.set_timeout(Duration::from_secs(30));
    let mut deliver = |broker: &Broker, key: &str, offset: i64| {
        broker.produce(PUSH, &common::push("alice", key, b"durable"));
        assert_eq!(c.frame().key, key);
        c.send(&common::frame(Cmd::DownstreamAck, key, b""));
        wait_until(
            &format!("offset {offset} committed"),
            Duration::from_secs(30),
            || committed(broker) == Some(offset),
        );
    };
    deliver(&broker, "k1", 1);
    broker.restart(); // SIGKILL; back on the same port with what it stored
    assert_eq!(committed(&broker), Some(1), "the group's offset survived");
    // The gateway's consumer reconnects by itself and reads on from its offset: k2 only.
    deliver(&broker, "k2", 2);
    let log: Vec<Vec<u8>> = broker.read(PUSH, 2).into_iter().map(|r| r.1).collect();
    assert_eq!(log.len(), 2, "both records are still in the log");
    assert_eq!(gw.metric("ringway_kafka_pushes_total"), 2.0);
}
