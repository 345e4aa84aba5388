//! Counters each core owns and the admin server reads.
//!
//! A core increments its own counters (relaxed atomics on lines no other core writes), so
//! counting costs no contention; the control thread adds to a core's count only for what it
//! refuses on that core's behalf. Latency histograms stay core-local on the hot path; once a
//! second the core copies them into a mutex-guarded slot that `/metrics` merges.
//!
//! Each metric is defined once: the field, its doc comment (which is its help text) and its
//! exported name sit together in a `metric_set!` declaration, and `export` turns the fields
//! into the `prometheus` crate's metric families, summed over the cores.

mod export;

use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

use crate::proto::Cmd;
pub use export::{LATENCY_BUCKETS, render};

/// The admin API's answer times, by route and status: the control thread's only histogram,
/// so the crate's own type (a mutex per sample is nothing at the API's rates).
pub fn api_latency() -> prometheus::HistogramVec {
    let opts = prometheus::HistogramOpts::new(
        "ringway_admin_request_duration_seconds",
        "Admin API requests, from routed to answered, by route and status.",
    )
    .buckets(LATENCY_BUCKETS.to_vec());
    prometheus::HistogramVec::new(opts, &["path", "status"]).expect("a valid histogram")
}

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// For a count kept elsewhere (a store's evictions) and copied here.
    pub fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A metric exported per core (`core="N"`) rather than summed over the cores.
#[derive(Default)]
pub struct PerCore<M>(pub M);

impl<M> std::ops::Deref for PerCore<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.0
    }
}

/// The values of one label, each a row of a counter family.
pub trait LabelSet {
    /// The label's name.
    const KEY: &'static str;
    const COUNT: usize;
    /// Row `i`'s value of the label.
    fn value(i: usize) -> &'static str;
}

/// A counter per value of label `L`.
pub struct Labeled<L> {
    rows: Box<[Counter]>,
    label: PhantomData<L>,
}

impl<L: LabelSet> Default for Labeled<L> {
    fn default() -> Self {
        Labeled {
            rows: (0..L::COUNT).map(|_| Counter::default()).collect(),
            label: PhantomData,
        }
    }
}

impl<L: LabelSet> Labeled<L> {
    /// Row `i`; an index past the rows counts in the last one.
    pub fn at(&self, i: usize) -> &Counter {
        &self.rows[i.min(L::COUNT - 1)]
    }
    /// The sum over every row.
    pub fn total(&self) -> u64 {
        self.rows.iter().map(Counter::get).sum()
    }
}

/// Declares a label enum with its Prometheus label name and values.
macro_rules! labels {
    ($(#[$m:meta])* $name:ident $key:literal { $($var:ident = $label:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn label(self) -> &'static str {
                match self { $($name::$var => $label),+ }
            }
        }
        impl LabelSet for $name {
            const KEY: &'static str = $key;
            const COUNT: usize = Self::ALL.len();
            fn value(i: usize) -> &'static str {
                Self::ALL[i].label()
            }
        }
        impl Labeled<$name> {
            pub fn inc(&self, l: $name) {
                self.at(l as usize).inc();
            }
            pub fn get(&self, l: $name) -> u64 {
                self.at(l as usize).get()
            }
        }
    };
}

/// Declares a struct of metrics, each field with its help (its doc comment) and its exported
/// name, plus fields that are not exported; and `export`, which appends one family per metric
/// to `out`, summed over `sets` (or per set, for `PerCore` fields).
macro_rules! metric_set {
    (
        $(#[$sm:meta])*
        pub struct $name:ident {
            $( $(#[doc = $help:literal])+ pub $field:ident: $ty:ty => $metric:literal, )*
        }
        $(#[doc = $plain_doc:literal])*
        unexported { $( $(#[doc = $pd:literal])* pub $pfield:ident: $pty:ty, )* }
    ) => {
        $(#[$sm])*
        #[derive(Default)]
        pub struct $name {
            $( $(#[doc = $help])+ pub $field: $ty, )*
            $( $(#[doc = $pd])* pub $pfield: $pty, )*
        }
        impl $name {
            pub fn export(sets: &[&$name], out: &mut Vec<prometheus::proto::MetricFamily>) {
                $(
                    out.push(export::family(
                        $metric,
                        concat!($($help),+),
                        sets.iter().map(|s| &s.$field),
                    ));
                )*
            }
        }
    };
}

labels! {
    /// Why a link ended.
    CloseReason "reason" {
        ClientClosed = "client_closed",
        Disconnected = "disconnected",
        ProtocolError = "protocol_error",
        TooBig = "too_big",
        IdleTimeout = "idle_timeout",
        SlowConsumer = "slow_consumer",
        Kicked = "kicked",
        Redirected = "redirected",
        Shutdown = "shutdown",
        TokenExpired = "token_expired",
    }
}

labels! {
    /// How a link reaches its client.
    Transport "transport" {
        WebSocket = "websocket",
        WebSocketDeflate = "websocket_deflate",
        EventStream = "sse",
        LongPoll = "long_poll",
    }
}

labels! {
    /// Why a push reached no device.
    UndeliveredReason "reason" {
        Offline = "offline",
        RetriesExhausted = "retries_exhausted",
        LinkClosed = "link_closed",
        SlowConsumer = "slow_consumer",
        Overloaded = "overloaded",
    }
}

labels! {
    /// How a request to resume a stream (`since=`) was answered: recovered, or not for want
    /// of the epoch (history lost), of old entries (trimmed, evicted), of room (more than
    /// --resume-max), or of the store.
    ResumeResult "result" {
        Recovered = "recovered",
        Epoch = "epoch",
        TooOld = "too_old",
        TooMany = "too_many",
        StoreDown = "store_down",
    }
}

labels! {
    /// Why an inbound message was not processed.
    DropReason "reason" {
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
pub struct RejectStatus;

const REJECT_STATUSES: [(u16, &str); 15] = [
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (411, "411"),
    (413, "413"),
    (426, "426"),
    (429, "429"),
    (431, "431"),
    (503, "503"),
    (505, "505"),
    (500, "500"),
];

impl LabelSet for RejectStatus {
    const KEY: &'static str = "status";
    const COUNT: usize = REJECT_STATUSES.len();
    fn value(i: usize) -> &'static str {
        REJECT_STATUSES[i].1
    }
}

/// Frames by command; an unknown command number counts as CMD_UNSPECIFIED.
impl LabelSet for Cmd {
    const KEY: &'static str = "cmd";
    const COUNT: usize = 12;
    fn value(i: usize) -> &'static str {
        Cmd::try_from(i as i32).map_or("CMD_UNSPECIFIED", |c| c.as_str_name())
    }
}

metric_set! {
    pub struct CoreMetrics {
        /// Links open now, per worker core.
        pub links: PerCore<Gauge> => "ringway_core_links",
        /// Messages waiting in each core's inbox.
        pub inbox_depth: PerCore<Gauge> => "ringway_core_inbox_depth",
        /// Times a core's executor slept past its own timer with work queued and the watchdog
        /// woke it.
        pub stall_wakeups: PerCore<Counter> => "ringway_core_stall_wakeups_total",
        /// Links accepted.
        pub links_opened: Counter => "ringway_links_opened_total",
        /// Links opened, by transport.
        pub links_by_transport: Labeled<Transport> => "ringway_links_by_transport_total",
        /// SSE and long-poll requests that took over an existing link (resumed streams, every
        /// poll after the first).
        pub http_attaches: Counter => "ringway_http_attaches_total",
        /// POST /send requests whose frames reached a link.
        pub http_sends: Counter => "ringway_http_sends_total",
        /// Messages sent compressed with permessage-deflate.
        pub deflated_out: Counter => "ringway_deflated_out_total",
        /// Bytes permessage-deflate took off outgoing messages.
        pub deflate_saved_bytes: Counter => "ringway_deflate_saved_bytes_total",
        /// Compressed messages received and inflated.
        pub inflated_in: Counter => "ringway_inflated_in_total",
        /// Links ended, by reason.
        pub links_closed: Labeled<CloseReason> => "ringway_links_closed_total",
        /// Upgrade requests refused, by HTTP status.
        pub handshake_rejected: Labeled<RejectStatus> => "ringway_handshake_rejected_total",
        /// Sockets moved from the accepting core to the owner core.
        pub handoffs: Counter => "ringway_socket_handoffs_total",
        /// Connections closed at accept without reading a byte: their address (IPv6: its /64)
        /// held --max-links-per-ip connections.
        pub per_ip_closed: Counter => "ringway_per_ip_closed_total",
        /// Frames received, by cmd.
        pub frames_in: Labeled<Cmd> => "ringway_frames_in_total",
        /// Frames sent, by cmd.
        pub frames_out: Labeled<Cmd> => "ringway_frames_out_total",
        /// Upstream messages handed to the backend.
        pub upstream_forwarded: Counter => "ringway_upstream_forwarded_total",
        /// Upstream messages the backend accepted (acked).
        pub upstream_acked: Counter => "ringway_upstream_acked_total",
        /// Duplicates answered with the stored ack.
        pub upstream_reacked: Counter => "ringway_upstream_reacked_total",
        /// Upstream messages answered with ERROR after the backend failed.
        pub upstream_failed: Counter => "ringway_upstream_failed_total",
        /// Pushes written to a link (first send).
        pub pushes_sent: Counter => "ringway_pushes_sent_total",
        /// Broadcast-routed pushes for users with no link on this node (not reported).
        pub pushes_not_here: Counter => "ringway_pushes_not_here_total",
        /// Pushes sent again for want of an ack.
        pub push_retransmits: Counter => "ringway_push_retransmits_total",
        /// Retransmits put off because the push had not all reached the socket yet (the
        /// client cannot have had it): a sign of links or a core that cannot keep up.
        pub push_retransmits_deferred: Counter => "ringway_push_retransmits_deferred_total",
        /// Pushes acknowledged by a device.
        pub push_acked: Counter => "ringway_push_acked_total",
        /// Pushes that reached no device, by reason (each is reported).
        pub undelivered: Labeled<UndeliveredReason> => "ringway_undelivered_total",
        /// Inbound messages not processed, by reason.
        pub dropped: Labeled<DropReason> => "ringway_dropped_total",
        /// Claims made in the core's local store while the shared store was unreachable.
        pub idem_fallbacks: Counter => "ringway_idem_fallbacks_total",
        /// Keys the in-memory idempotency stores forgot before their TTL because they were
        /// full (copied from the store once a second).
        pub idem_evictions: Counter => "ringway_idem_evictions_total",
        /// Pushes appended to their user's stream.
        pub stream_appends: Counter => "ringway_stream_appends_total",
        /// Pushes whose key their user's stream already held (a re-read or a retried post):
        /// they keep the first offset and are not sent again to a link that had it.
        pub stream_duplicates: Counter => "ringway_stream_duplicates_total",
        /// Stream entries the in-memory store dropped before their TTL for its byte budget
        /// (copied from the store once a second).
        pub stream_evictions: Counter => "ringway_stream_evictions_total",
        /// Pushes waiting for the shared stream store to answer their appends, per core.
        pub appends_waiting: PerCore<Gauge> => "ringway_stream_appends_waiting",
        /// Bytes the in-memory stream store holds, per core (copied once a second).
        pub stream_bytes: PerCore<Gauge> => "ringway_stream_bytes",
        /// Appends and reads the shared stream store did not answer: those pushes went out
        /// with offset 0, those links opened with no stream (a resume: recovered false).
        pub stream_store_errors: Counter => "ringway_stream_store_errors_total",
        /// Links that asked to resume (since=), by answer.
        pub resumes: Labeled<ResumeResult> => "ringway_resumes_total",
        /// Stored pushes sent again to a resuming link.
        pub replayed: Counter => "ringway_replayed_pushes_total",
        /// Room messages and broadcasts written to a link.
        pub room_sent: Counter => "ringway_room_sent_total",
        /// Best-effort room messages and broadcasts dropped for a backlogged link.
        pub room_dropped: Counter => "ringway_room_dropped_total",
        /// Reliable room messages a link never acked (retries exhausted, or it closed).
        pub room_undelivered: Counter => "ringway_room_undelivered_total",
        /// Room joins refused: the link was in --max-rooms-per-user rooms already.
        pub rooms_refused: Counter => "ringway_rooms_refused_total",
        /// Ephemeral pushes written to a link.
        pub ephemeral_sent: Counter => "ringway_ephemeral_sent_total",
        /// Ephemeral pushes dropped for a link with a backlog.
        pub ephemeral_dropped: Counter => "ringway_ephemeral_dropped_total",
    }
    unexported {
        /// The core's latency histograms, as of its last copy.
        pub published: Mutex<Option<Latencies>>,
    }
}

impl CoreMetrics {
    pub fn frame_in(&self, cmd: i32) {
        let known = usize::try_from(cmd)
            .ok()
            .filter(|c| *c < <Cmd as LabelSet>::COUNT);
        self.frames_in.at(known.unwrap_or(0)).inc();
    }
    pub fn frame_out(&self, cmd: Cmd) {
        self.frames_out.at(cmd as usize).inc();
    }
    pub fn closed(&self, r: CloseReason) {
        self.links_closed.inc(r);
    }
    pub fn undelivered(&self, r: UndeliveredReason) {
        self.undelivered.inc(r);
    }
    pub fn dropped(&self, r: DropReason) {
        self.dropped.inc(r);
    }
    pub fn rejected(&self, status: u16) {
        let i = REJECT_STATUSES
            .iter()
            .position(|(s, _)| *s == status)
            .unwrap_or(REJECT_STATUSES.len() - 1);
        self.handshake_rejected.at(i).inc();
    }
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
    /// Push accepted by the node → its DOWNSTREAM fully written to the socket: the server's
    /// whole part of a delivery (core inbox, queue, socket).
    pub push_written: Histogram<u64>,
    /// Push accepted by the node → the device's DOWNSTREAM_ACK: the whole path, retransmits
    /// and the client included.
    pub push_acked: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Latencies {
            upstream: h(),
            push_delivery: h(),
            push_ack: h(),
            push_write_wait: h(),
            push_written: h(),
            push_acked: h(),
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
        let _ = self.push_written.add(&other.push_written);
        let _ = self.push_acked.add(&other.push_acked);
    }
}

metric_set! {
    /// Node-level counters kept by the control thread (not by a core).
    pub struct NodeCounters {
        /// Admin API requests refused (403) because their Origin is not allowed.
        pub admin_refused_origins: Counter => "ringway_admin_refused_origins_total",
        /// TLS certificate reloads on SIGHUP that took effect.
        pub tls_reloads: Counter => "ringway_tls_reloads_total",
        /// TLS certificate reloads that failed (the previous certificate stays).
        pub tls_reload_errors: Counter => "ringway_tls_reload_errors_total",
        /// Failed round trips to the shared idempotency store (Redis).
        pub store_errors: Counter => "ringway_idem_store_errors_total",
        /// Pipelines of stream appends sent to Redis (one round trip each).
        pub stream_append_batches: Counter => "ringway_stream_append_batches_total",
        /// Pipelines of stream reads sent to Redis: links opening (resuming or not) share
        /// round trips.
        pub stream_read_batches: Counter => "ringway_stream_read_batches_total",
        /// Stream reads sent to Redis (one per opening link).
        pub stream_reads: Counter => "ringway_stream_reads_total",
        /// Claims sent to the shared idempotency store.
        pub idem_claims: Counter => "ringway_idem_claims_total",
        /// Redis pipelines (round trips) that carried them; claims/batches is the mean batch.
        pub idem_claim_batches: Counter => "ringway_idem_claim_batches_total",
        /// Calls to the gRPC backend (OnReceive or BatchOnReceive).
        pub backend_calls: Counter => "ringway_backend_calls_total",
        /// Upstream messages carried by those calls; messages/calls is the mean batch size.
        pub backend_messages: Counter => "ringway_backend_messages_total",
        /// Pushes consumed from Kafka and handed to their owner cores.
        pub kafka_pushes: Counter => "ringway_kafka_pushes_total",
        /// Kafka records skipped because they are not a PushMessage.
        pub kafka_bad_pushes: Counter => "ringway_kafka_bad_pushes_total",
        /// Undelivered reports written to Kafka.
        pub kafka_reports: Counter => "ringway_kafka_undelivered_reports_total",
        /// Undelivered reports Kafka did not take (they are still logged).
        pub kafka_report_errors: Counter => "ringway_kafka_undelivered_report_errors_total",
        /// Registrations in etcd: the first and each one after a lost session.
        pub etcd_registrations: Counter => "ringway_etcd_registrations_total",
        /// etcd sessions that ended in an error (etcd down, lease lost).
        pub etcd_errors: Counter => "ringway_etcd_errors_total",
        /// Pushes forwarded to the topic of the node holding the user.
        pub pushes_forwarded: Counter => "ringway_pushes_forwarded_total",
        /// Forwards Kafka did not take (each reported undelivered).
        pub forward_errors: Counter => "ringway_push_forward_errors_total",
        /// Pushes for users with no live location (reported undelivered: offline).
        pub pushes_unroutable: Counter => "ringway_pushes_unroutable_total",
        /// Failed location reads or writes in Redis.
        pub location_errors: Counter => "ringway_location_errors_total",
        /// Unacked pushes of a draining node put back on the push topic.
        pub pushes_republished: Counter => "ringway_pushes_republished_total",
        /// Pushes read from a departed node's topic and routed again.
        pub pushes_adopted: Counter => "ringway_pushes_adopted_total",
        /// Links asked to move by drain and rebalance batches.
        pub links_moved: Counter => "ringway_links_moved_total",
        /// Kafka records read and not committed yet: their pushes are not all acked or
        /// reported. A count that keeps growing is a consumer that cannot commit.
        pub kafka_uncommitted: Gauge => "ringway_kafka_uncommitted_records",
    }
    unexported {}
}
