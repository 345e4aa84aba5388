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
    }
}

/// HTTP statuses the upgrade path answers with, for `ringway_handshake_rejected_total`.
pub const REJECT_STATUSES: [u16; 11] = [400, 401, 403, 404, 405, 408, 426, 431, 503, 505, 500];

const CMDS: usize = 11;

#[derive(Default)]
pub struct CoreMetrics {
    pub links: AtomicI64,
    pub links_opened: Counter,
    pub links_closed: [Counter; CloseReason::COUNT],
    pub handshake_rejected: [Counter; REJECT_STATUSES.len()],
    pub handoffs: Counter,
    pub frames_in: [Counter; CMDS],
    pub frames_out: [Counter; CMDS],
    pub upstream_forwarded: Counter,
    pub upstream_acked: Counter,
    pub upstream_reacked: Counter,
    pub upstream_failed: Counter,
    pub pushes_sent: Counter,
    pub push_retransmits: Counter,
    pub push_acked: Counter,
    pub undelivered: [Counter; UndeliveredReason::COUNT],
    pub dropped: [Counter; DropReason::COUNT],
    pub inbox_depth: AtomicU64,
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
}

impl Default for Latencies {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Latencies {
            upstream: h(),
            push_delivery: h(),
            push_ack: h(),
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
    }
}

/// Node-level figures that do not come from a core.
pub struct NodeFigures {
    pub push_api_rejected: u64,
    pub draining: bool,
}

/// The Prometheus text exposition of all cores, merged.
pub fn render(cores: &[std::sync::Arc<CoreMetrics>], node: &NodeFigures) -> String {
    let mut s = String::with_capacity(8192);
    let sum = |f: &dyn Fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();

    header(&mut s, "ringway_links", "gauge", "Links open now.");
    let links: i64 = cores.iter().map(|c| c.links.load(Relaxed)).sum();
    let _ = writeln!(s, "ringway_links {links}");
    header(
        &mut s,
        "ringway_core_links",
        "gauge",
        "Links open now, per worker core.",
    );
    for (i, c) in cores.iter().enumerate() {
        let _ = writeln!(
            s,
            "ringway_core_links{{core=\"{i}\"}} {}",
            c.links.load(Relaxed)
        );
    }
    header(
        &mut s,
        "ringway_core_inbox_depth",
        "gauge",
        "Messages waiting in each core's inbox.",
    );
    for (i, c) in cores.iter().enumerate() {
        let _ = writeln!(
            s,
            "ringway_core_inbox_depth{{core=\"{i}\"}} {}",
            c.inbox_depth.load(Relaxed)
        );
    }
    counter(
        &mut s,
        "ringway_links_opened_total",
        "Links accepted.",
        sum(&|c| c.links_opened.get()),
    );
    counter(
        &mut s,
        "ringway_socket_handoffs_total",
        "Sockets moved from the accepting core to the owner core.",
        sum(&|c| c.handoffs.get()),
    );

    header(
        &mut s,
        "ringway_links_closed_total",
        "counter",
        "Links ended, by reason.",
    );
    for r in CloseReason::ALL {
        let _ = writeln!(
            s,
            "ringway_links_closed_total{{reason=\"{}\"}} {}",
            r.label(),
            sum(&|c| c.links_closed[*r as usize].get())
        );
    }
    header(
        &mut s,
        "ringway_handshake_rejected_total",
        "counter",
        "Upgrade requests refused, by HTTP status.",
    );
    for (i, st) in REJECT_STATUSES.iter().enumerate() {
        let _ = writeln!(
            s,
            "ringway_handshake_rejected_total{{status=\"{st}\"}} {}",
            sum(&|c| c.handshake_rejected[i].get())
        );
    }
    for (name, help, pick) in [
        ("ringway_frames_in_total", "Frames received, by cmd.", 0),
        ("ringway_frames_out_total", "Frames sent, by cmd.", 1),
    ] {
        header(&mut s, name, "counter", help);
        for cmd in 0..CMDS {
            let label = Cmd::try_from(cmd as i32)
                .map(|c| c.as_str_name())
                .unwrap_or("CMD_UNSPECIFIED");
            let v = sum(&|c| {
                if pick == 0 {
                    c.frames_in[cmd].get()
                } else {
                    c.frames_out[cmd].get()
                }
            });
            let _ = writeln!(s, "{name}{{cmd=\"{label}\"}} {v}");
        }
    }
    counter(
        &mut s,
        "ringway_upstream_forwarded_total",
        "Upstream messages handed to the backend.",
        sum(&|c| c.upstream_forwarded.get()),
    );
    counter(
        &mut s,
        "ringway_upstream_acked_total",
        "Upstream messages the backend accepted (acked).",
        sum(&|c| c.upstream_acked.get()),
    );
    counter(
        &mut s,
        "ringway_upstream_reacked_total",
        "Duplicates answered with the stored ack.",
        sum(&|c| c.upstream_reacked.get()),
    );
    counter(
        &mut s,
        "ringway_upstream_failed_total",
        "Upstream messages answered with ERROR after the backend failed.",
        sum(&|c| c.upstream_failed.get()),
    );
    counter(
        &mut s,
        "ringway_pushes_sent_total",
        "Pushes written to a link (first send).",
        sum(&|c| c.pushes_sent.get()),
    );
    counter(
        &mut s,
        "ringway_push_retransmits_total",
        "Pushes sent again for want of an ack.",
        sum(&|c| c.push_retransmits.get()),
    );
    counter(
        &mut s,
        "ringway_push_acked_total",
        "Pushes acknowledged by a device.",
        sum(&|c| c.push_acked.get()),
    );
    header(
        &mut s,
        "ringway_undelivered_total",
        "counter",
        "Pushes that reached no device, by reason (each is reported).",
    );
    for r in UndeliveredReason::ALL {
        let mut v = sum(&|c| c.undelivered[*r as usize].get());
        if *r == UndeliveredReason::Overloaded {
            v += node.push_api_rejected;
        }
        let _ = writeln!(
            s,
            "ringway_undelivered_total{{reason=\"{}\"}} {v}",
            r.label()
        );
    }
    header(
        &mut s,
        "ringway_dropped_total",
        "counter",
        "Inbound messages not processed, by reason.",
    );
    for r in DropReason::ALL {
        let _ = writeln!(
            s,
            "ringway_dropped_total{{reason=\"{}\"}} {}",
            r.label(),
            sum(&|c| c.dropped[*r as usize].get())
        );
    }
    header(
        &mut s,
        "ringway_draining",
        "gauge",
        "1 while the node is shutting down.",
    );
    let _ = writeln!(s, "ringway_draining {}", u8::from(node.draining));

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
    s
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(s: &mut String, name: &str, help: &str, v: u64) {
    header(s, name, "counter", help);
    let _ = writeln!(s, "{name} {v}");
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
