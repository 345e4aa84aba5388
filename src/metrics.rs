//! Counters each core owns and the admin server reads.
//!
//! A core only ever increments its own counters (relaxed atomics on lines no other core writes),
//! so counting costs no contention. Latency histograms stay core-local on the hot path; once a
//! second the core copies them into a mutex-guarded slot that `/metrics` merges.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

use crate::proto::Cmd;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Declares a label enum with its Prometheus label values.
macro_rules! labels {
    ($(#[$m:meta])* $name:ident { $($var:ident = $label:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub const COUNT: usize = Self::ALL.len();
            pub fn label(self) -> &'static str {
                match self { $($name::$var => $label),+ }
            }
        }
    };
}

labels! {
    /// Why a link ended.
    CloseReason {
        ClientClosed = "client_closed",
        Disconnected = "disconnected",
        ProtocolError = "protocol_error",
        TooBig = "too_big",
        IdleTimeout = "idle_timeout",
        SlowConsumer = "slow_consumer",
        Kicked = "kicked",
        Redirected = "redirected",
        Shutdown = "shutdown",
    }
}

labels! {
    /// How a link reaches its client.
    Transport {
        WebSocket = "websocket",
        WebSocketDeflate = "websocket_deflate",
        EventStream = "sse",
        LongPoll = "long_poll",
    }
}

labels! {
    /// Why a push reached no device.
    UndeliveredReason {
        Offline = "offline",
        RetriesExhausted = "retries_exhausted",
        LinkClosed = "link_closed",
        SlowConsumer = "slow_consumer",
        Overloaded = "overloaded",
    }
}

labels! {
    /// Why an inbound message was not processed.
    DropReason {
        RateLimited = "rate_limited",
        DuplicatePending = "duplicate_pending",
        BadFrame = "bad_frame",
        MissingKey = "missing_key",
        UnsupportedCmd = "unsupported_cmd",
        StoreUnavailable = "store_unavailable",
        KeyTooLarge = "key_too_large",
    }
}

/// HTTP statuses the upgrade path answers with, for `ringway_handshake_rejected_total`.
/// The last one, 500, stands for any status not listed (none is answered today).
pub const REJECT_STATUSES: [u16; 15] = [
    400, 401, 403, 404, 405, 408, 409, 411, 413, 426, 429, 431, 503, 505, 500,
];

const CMDS: usize = 11;

#[derive(Default)]
pub struct CoreMetrics {
    pub links: AtomicI64,
    pub links_opened: Counter,
    pub links_by_transport: [Counter; Transport::COUNT],
    /// Requests that took over an HTTP-transport link that already existed (resumed streams,
    /// every poll after the first).
    pub http_attaches: Counter,
    /// `POST /send` requests whose frames reached a link.
    pub http_sends: Counter,
    /// Messages sent compressed (permessage-deflate) and the bytes that saved.
    pub deflated_out: Counter,
    pub deflate_saved_bytes: Counter,
    /// Compressed messages received and inflated.
    pub inflated_in: Counter,
    pub links_closed: [Counter; CloseReason::COUNT],
    pub handshake_rejected: [Counter; REJECT_STATUSES.len()],
    pub handoffs: Counter,
    /// Connections closed at accept, unread, because their address was at --max-links-per-ip.
    pub per_ip_closed: Counter,
    pub frames_in: [Counter; CMDS],
    pub frames_out: [Counter; CMDS],
    pub upstream_forwarded: Counter,
    pub upstream_acked: Counter,
    pub upstream_reacked: Counter,
    pub upstream_failed: Counter,
    pub pushes_sent: Counter,
    /// Broadcast pushes for users this node does not hold (another node may).
    pub pushes_not_here: Counter,
    pub push_retransmits: Counter,
    pub push_acked: Counter,
    pub undelivered: [Counter; UndeliveredReason::COUNT],
    pub dropped: [Counter; DropReason::COUNT],
    pub inbox_depth: AtomicU64,
    /// Times the watchdog found the core asleep past its own timer and woke it.
    pub stall_wakeups: Counter,
    /// Claims answered by the core's local store because the shared one was unreachable.
    pub idem_fallbacks: Counter,
    /// Keys the core's in-memory store forgot early because it was full (copied from the
    /// store once a second).
    pub idem_evictions: AtomicU64,
    pub published: Mutex<Option<Latencies>>,
}

impl CoreMetrics {
    pub fn frame_in(&self, cmd: i32) {
        self.frames_in[cmd_index(cmd)].inc();
    }
    pub fn frame_out(&self, cmd: Cmd) {
        self.frames_out[cmd as usize].inc();
    }
    pub fn closed(&self, r: CloseReason) {
        self.links_closed[r as usize].inc();
    }
    pub fn undelivered(&self, r: UndeliveredReason) {
        self.undelivered[r as usize].inc();
    }
    pub fn dropped(&self, r: DropReason) {
        self.dropped[r as usize].inc();
    }
    pub fn rejected(&self, status: u16) {
        let i = REJECT_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(REJECT_STATUSES.len() - 1);
        self.handshake_rejected[i].inc();
    }
}

/// Unknown command numbers are counted as CMD_UNSPECIFIED.
fn cmd_index(cmd: i32) -> usize {
    usize::try_from(cmd).ok().filter(|c| *c < CMDS).unwrap_or(0)
}

/// Latency distributions in microseconds.
#[derive(Clone)]
pub struct Latencies {
    /// UPSTREAM decoded → UPSTREAM_ACK queued (the backend round trip included).
    pub upstream: Histogram<u64>,
    /// Push accepted by the node → DOWNSTREAM queued on the link.
    pub push_delivery: Histogram<u64>,
    /// DOWNSTREAM first sent → DOWNSTREAM_ACK received.
    pub push_ack: Histogram<u64>,
    /// DOWNSTREAM queued on the link → the link's buffer written to its socket: how long a
    /// woken link waits for its core.
    pub push_write_wait: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Latencies {
            upstream: h(),
            push_delivery: h(),
            push_ack: h(),
            push_write_wait: h(),
        }
    }
}

impl Latencies {
    pub fn record(h: &mut Histogram<u64>, micros: u64) {
        h.saturating_record(micros.max(1));
    }

    fn merge(&mut self, other: &Latencies) {
        let _ = self.upstream.add(&other.upstream);
        let _ = self.push_delivery.add(&other.push_delivery);
        let _ = self.push_ack.add(&other.push_ack);
        let _ = self.push_write_wait.add(&other.push_write_wait);
    }
}

/// Node-level counters kept by the control thread (not by a core).
#[derive(Default)]
pub struct NodeCounters {
    /// Pushes refused at the HTTP API because an owner core's inbox was full (each reported
    /// undelivered: overloaded).
    pub push_api_rejected: Counter,
    /// Failed round trips to the shared idempotency store.
    pub store_errors: Counter,
    /// Claims sent to the shared store, and the pipelines (round trips) that carried them.
    pub idem_claims: Counter,
    pub idem_claim_batches: Counter,
    /// gRPC backend calls, and the messages they carried (their ratio is the mean batch size).
    pub backend_calls: Counter,
    pub backend_messages: Counter,
    /// Pushes read from Kafka, and those skipped because they could not be decoded.
    pub kafka_pushes: Counter,
    pub kafka_bad_pushes: Counter,
    /// Undelivered reports written to / failed to write to Kafka.
    pub kafka_reports: Counter,
    pub kafka_report_errors: Counter,
    /// etcd registrations (the first and every re-registration) and failed sessions.
    pub etcd_registrations: Counter,
    pub etcd_errors: Counter,
    /// Pushes forwarded to the node holding the user, and those that failed to forward.
    pub pushes_forwarded: Counter,
    pub forward_errors: Counter,
    /// Pushes with no live location anywhere (reported undelivered by the router).
    pub pushes_unroutable: Counter,
    /// Failed location reads or writes in Redis.
    pub location_errors: Counter,
    /// Unacked pushes of a draining node put back on the push topic.
    pub pushes_republished: Counter,
    /// TLS certificate reloads (SIGHUP) that took, and those that failed (the old one stays).
    pub tls_reloads: Counter,
    pub tls_reload_errors: Counter,
    /// Pushes read from a departed node's topic and routed again.
    pub pushes_adopted: Counter,
    /// Links moved by drain and rebalance batches (asked of the cores).
    pub links_moved: Counter,
    /// Admin API requests refused for their Origin (a web page tried to drive the API).
    pub admin_refused_origins: Counter,
}

/// Node counters shown as plain counters.
type NodePick = fn(&NodeCounters) -> u64;

const NODE_COUNTERS: &[(&str, &str, NodePick)] = &[
    (
        "ringway_admin_refused_origins_total",
        "Admin API requests refused (403) because their Origin is not allowed.",
        |n| n.admin_refused_origins.get(),
    ),
    (
        "ringway_tls_reloads_total",
        "TLS certificate reloads on SIGHUP that took effect.",
        |n| n.tls_reloads.get(),
    ),
    (
        "ringway_tls_reload_errors_total",
        "TLS certificate reloads that failed (the previous certificate stays).",
        |n| n.tls_reload_errors.get(),
    ),
    (
        "ringway_idem_store_errors_total",
        "Failed round trips to the shared idempotency store (Redis).",
        |n| n.store_errors.get(),
    ),
    (
        "ringway_idem_claims_total",
        "Claims sent to the shared idempotency store.",
        |n| n.idem_claims.get(),
    ),
    (
        "ringway_idem_claim_batches_total",
        "Redis pipelines (round trips) that carried them; claims/batches is the mean batch.",
        |n| n.idem_claim_batches.get(),
    ),
    (
        "ringway_backend_calls_total",
        "Calls to the gRPC backend (OnReceive or BatchOnReceive).",
        |n| n.backend_calls.get(),
    ),
    (
        "ringway_backend_messages_total",
        "Upstream messages carried by those calls; messages/calls is the mean batch size.",
        |n| n.backend_messages.get(),
    ),
    (
        "ringway_kafka_pushes_total",
        "Pushes consumed from Kafka and handed to their owner cores.",
        |n| n.kafka_pushes.get(),
    ),
    (
        "ringway_kafka_bad_pushes_total",
        "Kafka records skipped because they are not a PushMessage.",
        |n| n.kafka_bad_pushes.get(),
    ),
    (
        "ringway_kafka_undelivered_reports_total",
        "Undelivered reports written to Kafka.",
        |n| n.kafka_reports.get(),
    ),
    (
        "ringway_kafka_undelivered_report_errors_total",
        "Undelivered reports Kafka did not take (they are still logged).",
        |n| n.kafka_report_errors.get(),
    ),
    (
        "ringway_etcd_registrations_total",
        "Registrations in etcd: the first and each one after a lost session.",
        |n| n.etcd_registrations.get(),
    ),
    (
        "ringway_etcd_errors_total",
        "etcd sessions that ended in an error (etcd down, lease lost).",
        |n| n.etcd_errors.get(),
    ),
    (
        "ringway_pushes_forwarded_total",
        "Pushes forwarded to the topic of the node holding the user.",
        |n| n.pushes_forwarded.get(),
    ),
    (
        "ringway_push_forward_errors_total",
        "Forwards Kafka did not take (each reported undelivered).",
        |n| n.forward_errors.get(),
    ),
    (
        "ringway_pushes_unroutable_total",
        "Pushes for users with no live location (reported undelivered: offline).",
        |n| n.pushes_unroutable.get(),
    ),
    (
        "ringway_location_errors_total",
        "Failed location reads or writes in Redis.",
        |n| n.location_errors.get(),
    ),
    (
        "ringway_pushes_republished_total",
        "Unacked pushes of a draining node put back on the push topic.",
        |n| n.pushes_republished.get(),
    ),
    (
        "ringway_pushes_adopted_total",
        "Pushes read from a departed node's topic and routed again.",
        |n| n.pushes_adopted.get(),
    ),
    (
        "ringway_links_moved_total",
        "Links asked to move by drain and rebalance batches.",
        |n| n.links_moved.get(),
    ),
];

type Pick = fn(&CoreMetrics) -> u64;

/// Plain counters: name, help, how to read one core's value.
const COUNTERS: &[(&str, &str, Pick)] = &[
    ("ringway_links_opened_total", "Links accepted.", |c| {
        c.links_opened.get()
    }),
    (
        "ringway_per_ip_closed_total",
        "Connections closed at accept without reading a byte: their address (IPv6: its /64) held --max-links-per-ip connections.",
        |c| c.per_ip_closed.get(),
    ),
    (
        "ringway_socket_handoffs_total",
        "Sockets moved from the accepting core to the owner core.",
        |c| c.handoffs.get(),
    ),
    (
        "ringway_http_attaches_total",
        "SSE and long-poll requests that took over an existing link.",
        |c| c.http_attaches.get(),
    ),
    (
        "ringway_http_sends_total",
        "POST /send requests whose frames reached a link.",
        |c| c.http_sends.get(),
    ),
    (
        "ringway_deflated_out_total",
        "Messages sent compressed with permessage-deflate.",
        |c| c.deflated_out.get(),
    ),
    (
        "ringway_deflate_saved_bytes_total",
        "Bytes permessage-deflate took off outgoing messages.",
        |c| c.deflate_saved_bytes.get(),
    ),
    (
        "ringway_inflated_in_total",
        "Compressed messages received and inflated.",
        |c| c.inflated_in.get(),
    ),
    (
        "ringway_upstream_forwarded_total",
        "Upstream messages handed to the backend.",
        |c| c.upstream_forwarded.get(),
    ),
    (
        "ringway_upstream_acked_total",
        "Upstream messages the backend accepted (acked).",
        |c| c.upstream_acked.get(),
    ),
    (
        "ringway_upstream_reacked_total",
        "Duplicates answered with the stored ack.",
        |c| c.upstream_reacked.get(),
    ),
    (
        "ringway_upstream_failed_total",
        "Upstream messages answered with ERROR after the backend failed.",
        |c| c.upstream_failed.get(),
    ),
    (
        "ringway_pushes_sent_total",
        "Pushes written to a link (first send).",
        |c| c.pushes_sent.get(),
    ),
    (
        "ringway_pushes_not_here_total",
        "Broadcast-routed pushes for users with no link on this node (not reported).",
        |c| c.pushes_not_here.get(),
    ),
    (
        "ringway_push_retransmits_total",
        "Pushes sent again for want of an ack.",
        |c| c.push_retransmits.get(),
    ),
    (
        "ringway_push_acked_total",
        "Pushes acknowledged by a device.",
        |c| c.push_acked.get(),
    ),
    (
        "ringway_idem_evictions_total",
        "Keys the in-memory idempotency stores forgot before their TTL because they were full.",
        |c| c.idem_evictions.load(Relaxed),
    ),
    (
        "ringway_idem_fallbacks_total",
        "Claims made in the core's local store while the shared store was unreachable.",
        |c| c.idem_fallbacks.get(),
    ),
];

/// The Prometheus text exposition of all cores, merged.
pub fn render(
    cores: &[std::sync::Arc<CoreMetrics>],
    node: &NodeCounters,
    gauges: &[(&str, &str, u64)],
) -> String {
    let mut s = String::with_capacity(8192);
    let sum = |f: &dyn Fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
    let per_core = |f: fn(&CoreMetrics) -> u64| {
        cores
            .iter()
            .enumerate()
            .map(move |(i, c)| (format!("core=\"{i}\""), f(c)))
    };
    let unlabeled = |v: u64| [(String::new(), v)];

    let links: i64 = cores.iter().map(|c| c.links.load(Relaxed)).sum();
    family(
        &mut s,
        "ringway_links",
        "gauge",
        "Links open now.",
        [(String::new(), links)],
    );
    family(
        &mut s,
        "ringway_core_links",
        "gauge",
        "Links open now, per worker core.",
        per_core(|c| c.links.load(Relaxed).max(0) as u64),
    );
    family(
        &mut s,
        "ringway_core_inbox_depth",
        "gauge",
        "Messages waiting in each core's inbox.",
        per_core(|c| c.inbox_depth.load(Relaxed)),
    );
    family(
        &mut s,
        "ringway_core_stall_wakeups_total",
        "counter",
        "Times a core's executor slept past its own timer with work queued and the watchdog woke it.",
        per_core(|c| c.stall_wakeups.get()),
    );
    for (name, help, pick) in COUNTERS {
        family(&mut s, name, "counter", help, unlabeled(sum(pick)));
    }
    family(
        &mut s,
        "ringway_links_by_transport_total",
        "counter",
        "Links opened, by transport.",
        Transport::ALL.iter().map(|t| {
            (
                format!("transport=\"{}\"", t.label()),
                sum(&|c| c.links_by_transport[*t as usize].get()),
            )
        }),
    );
    let by_reason = |label: &str| format!("reason=\"{label}\"");
    family(
        &mut s,
        "ringway_links_closed_total",
        "counter",
        "Links ended, by reason.",
        CloseReason::ALL.iter().map(|r| {
            (
                by_reason(r.label()),
                sum(&|c| c.links_closed[*r as usize].get()),
            )
        }),
    );
    family(
        &mut s,
        "ringway_handshake_rejected_total",
        "counter",
        "Upgrade requests refused, by HTTP status.",
        REJECT_STATUSES.iter().enumerate().map(|(i, st)| {
            (
                format!("status=\"{st}\""),
                sum(&|c| c.handshake_rejected[i].get()),
            )
        }),
    );
    let cmd_rows = |inbound: bool| {
        (0..CMDS).map(move |cmd| {
            let label = Cmd::try_from(cmd as i32).map_or("CMD_UNSPECIFIED", |c| c.as_str_name());
            let v = sum(&|c| {
                if inbound {
                    c.frames_in[cmd].get()
                } else {
                    c.frames_out[cmd].get()
                }
            });
            (format!("cmd=\"{label}\""), v)
        })
    };
    family(
        &mut s,
        "ringway_frames_in_total",
        "counter",
        "Frames received, by cmd.",
        cmd_rows(true),
    );
    family(
        &mut s,
        "ringway_frames_out_total",
        "counter",
        "Frames sent, by cmd.",
        cmd_rows(false),
    );
    family(
        &mut s,
        "ringway_undelivered_total",
        "counter",
        "Pushes that reached no device, by reason (each is reported).",
        UndeliveredReason::ALL.iter().map(|r| {
            let api = if *r == UndeliveredReason::Overloaded {
                node.push_api_rejected.get()
            } else {
                0
            };
            (
                by_reason(r.label()),
                sum(&|c| c.undelivered[*r as usize].get()) + api,
            )
        }),
    );
    family(
        &mut s,
        "ringway_dropped_total",
        "counter",
        "Inbound messages not processed, by reason.",
        DropReason::ALL
            .iter()
            .map(|r| (by_reason(r.label()), sum(&|c| c.dropped[*r as usize].get()))),
    );
    for (name, help, pick) in NODE_COUNTERS {
        family(&mut s, name, "counter", help, unlabeled(pick(node)));
    }
    for (name, help, value) in gauges {
        family(&mut s, name, "gauge", help, unlabeled(*value));
    }

    let mut merged = Latencies::default();
    for c in cores {
        if let Some(l) = c.published.lock().expect("metrics lock").as_ref() {
            merged.merge(l);
        }
    }
    summary(
        &mut s,
        "ringway_upstream_latency_seconds",
        "UPSTREAM received to UPSTREAM_ACK queued.",
        &merged.upstream,
    );
    summary(
        &mut s,
        "ringway_push_delivery_latency_seconds",
        "Push accepted to DOWNSTREAM queued on the link.",
        &merged.push_delivery,
    );
    summary(
        &mut s,
        "ringway_push_ack_latency_seconds",
        "DOWNSTREAM sent to DOWNSTREAM_ACK received.",
        &merged.push_ack,
    );
    summary(
        &mut s,
        "ringway_push_write_wait_seconds",
        "DOWNSTREAM queued on the link to written to its socket.",
        &merged.push_write_wait,
    );
    s
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One metric family: its header, then a sample per (labels, value) row.
fn family<V: std::fmt::Display>(
    s: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, V)>,
) {
    header(s, name, kind, help);
    for (labels, v) in rows {
        if labels.is_empty() {
            let _ = writeln!(s, "{name} {v}");
        } else {
            let _ = writeln!(s, "{name}{{{labels}}} {v}");
        }
    }
}

fn summary(s: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    header(s, name, "summary", help);
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1e6
        };
        let _ = writeln!(s, "{name}{{quantile=\"{q}\"}} {v}");
    }
    let total = h.mean() * h.len() as f64 / 1e6;
    let _ = writeln!(s, "{name}_sum {total}\n{name}_count {}", h.len());
}
