//! Turns the metric sets into the `prometheus` crate's families and its text exposition: the
//! crate owns the format (escaping, types, summaries); this file only says how a core-local
//! field becomes rows.

use std::sync::{Arc, OnceLock};

use hdrhistogram::Histogram;
use prometheus::core::Collector;
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use super::{CoreMetrics, Counter, Gauge, LabelSet, Labeled, Latencies, NodeCounters, PerCore};

static PROCESS: OnceLock<ProcessCollector> = OnceLock::new();

/// A field of a metric set, as rows of one family.
pub trait Export {
    const KIND: MetricType;
    /// Rows per core instead of one sum over the cores.
    const PER_CORE: bool = false;
    /// The label that tells the rows apart, when there is more than one.
    const KEY: Option<&'static str> = None;
    const ROWS: usize = 1;
    fn row_label(_row: usize) -> &'static str {
        ""
    }
    fn value(&self, row: usize) -> f64;
}

impl Export for Counter {
    const KIND: MetricType = MetricType::COUNTER;
    fn value(&self, _row: usize) -> f64 {
        self.get() as f64
    }
}

impl Export for Gauge {
    const KIND: MetricType = MetricType::GAUGE;
    fn value(&self, _row: usize) -> f64 {
        self.get() as f64
    }
}

impl<L: LabelSet> Export for Labeled<L> {
    const KIND: MetricType = MetricType::COUNTER;
    const KEY: Option<&'static str> = Some(L::KEY);
    const ROWS: usize = L::COUNT;
    fn row_label(row: usize) -> &'static str {
        L::value(row)
    }
    fn value(&self, row: usize) -> f64 {
        self.at(row).get() as f64
    }
}

impl<M: Export> Export for PerCore<M> {
    const KIND: MetricType = M::KIND;
    const PER_CORE: bool = true;
    fn value(&self, row: usize) -> f64 {
        self.0.value(row)
    }
}

/// One family from the same field of every set: summed, or a `core` row per set.
pub fn family<'a, M: Export + 'a>(
    name: &str,
    help: &str,
    sets: impl Iterator<Item = &'a M>,
) -> MetricFamily {
    let sets: Vec<&M> = sets.collect();
    let rows = if M::PER_CORE {
        sets.iter()
            .enumerate()
            .map(|(core, m)| sample(M::KIND, Some(("core", &core.to_string())), m.value(0)))
            .collect()
    } else {
        (0..M::ROWS)
            .map(|row| {
                let label = M::KEY.map(|k| (k, M::row_label(row)));
                sample(M::KIND, label, sets.iter().map(|m| m.value(row)).sum())
            })
            .collect()
    };
    named(name, help, M::KIND, rows)
}

fn named(name: &str, help: &str, kind: MetricType, rows: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.trim().to_owned());
    f.set_field_type(kind);
    f.set_metric(rows);
    f
}

fn sample(kind: MetricType, label: Option<(&str, &str)>, value: f64) -> proto::Metric {
    labeled(kind, label.as_slice(), value)
}

fn labeled(kind: MetricType, labels: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = proto::Metric::default();
    let pairs = labels
        .iter()
        .map(|(k, v)| {
            let mut pair = LabelPair::default();
            pair.set_name((*k).to_owned());
            pair.set_value((*v).to_owned());
            pair
        })
        .collect();
    m.set_label(pairs);
    if kind == MetricType::GAUGE {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    } else {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    }
    m
}

/// The Prometheus text exposition of all cores, merged, with the node's counters and the
/// admin server's gauges (name, help, value).
pub fn render(
    cores: &[Arc<CoreMetrics>],
    node: &NodeCounters,
    gauges: &[(&str, &str, u64)],
    more: Vec<MetricFamily>,
) -> String {
    let sets: Vec<&CoreMetrics> = cores.iter().map(|c| &**c).collect();
    let links: i64 = sets.iter().map(|c| c.links.get()).sum();
    let build = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("git_sha", crate::GIT_SHA),
    ];
    let mut out = vec![
        named(
            "ringway_build_info",
            "Always 1; the labels say which build runs.",
            MetricType::GAUGE,
            vec![labeled(MetricType::GAUGE, &build, 1.0)],
        ),
        named(
            "ringway_links",
            "Links open now.",
            MetricType::GAUGE,
            vec![sample(MetricType::GAUGE, None, links as f64)],
        ),
    ];
    CoreMetrics::export(&sets, &mut out);
    NodeCounters::export(&[node], &mut out);
    for (name, help, value) in gauges {
        let row = sample(MetricType::GAUGE, None, *value as f64);
        out.push(named(name, help, MetricType::GAUGE, vec![row]));
    }
    let mut merged = Latencies::default();
    for c in cores {
        if let Some(l) = c.published.lock().expect("metrics lock").as_ref() {
            merged.merge(l);
        }
    }
    out.extend([
        histogram(
            "ringway_upstream_latency_seconds",
            "UPSTREAM received to UPSTREAM_ACK queued.",
            &merged.upstream,
        ),
        histogram(
            "ringway_push_delivery_latency_seconds",
            "Push accepted to DOWNSTREAM queued on the link.",
            &merged.push_delivery,
        ),
        histogram(
            "ringway_push_ack_latency_seconds",
            "DOWNSTREAM sent to DOWNSTREAM_ACK received.",
            &merged.push_ack,
        ),
        histogram(
            "ringway_push_write_wait_seconds",
            "DOWNSTREAM queued on the link to written to its socket.",
            &merged.push_write_wait,
        ),
        histogram(
            "ringway_push_accepted_to_written_seconds",
            "Push accepted by the node to its DOWNSTREAM fully written to the socket.",
            &merged.push_written,
        ),
        histogram(
            "ringway_push_accepted_to_acked_seconds",
            "Push accepted by the node to the device's DOWNSTREAM_ACK (the whole path).",
            &merged.push_acked,
        ),
    ]);
    out.extend(more);
    // CPU seconds, resident memory, open and allowed fds, threads, start time.
    out.extend(PROCESS.get_or_init(ProcessCollector::for_self).collect());
    // The encoder refuses a family without rows (a per-core one with no cores).
    out.retain(|f| !f.get_metric().is_empty());
    let mut s = String::with_capacity(16 * 1024);
    prometheus::TextEncoder::new()
        .encode_utf8(&out, &mut s)
        .expect("every family has a name and a row");
    s
}

/// Bucket bounds of the latency histograms, in seconds: 100 µs (a push written at once) to
/// 10 s (a backend at its deadline), about three per decade, so a p99 is placed within a
/// factor of ~2.5 and a fleet's buckets add up.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A Prometheus histogram from a core-merged HDR histogram of microseconds. The HDR histogram
/// is never reset, which is what Prometheus buckets are: counters, read with `rate()`.
fn histogram(name: &str, help: &str, h: &Histogram<u64>) -> MetricFamily {
    // One pass over the recorded values; a value goes in the first bucket whose bound it does
    // not exceed (at the HDR histogram's resolution, 0.1 %).
    let mut counts = [0u64; LATENCY_BUCKETS.len()];
    for v in h.iter_recorded() {
        let secs = h.lowest_equivalent(v.value_iterated_to()) as f64 / 1e6;
        let i = LATENCY_BUCKETS.partition_point(|&le| le < secs);
        if let Some(c) = counts.get_mut(i) {
            *c += v.count_at_value();
        }
    }
    let mut cumulative = 0;
    let buckets = LATENCY_BUCKETS
        .iter()
        .zip(counts)
        .map(|(&le, n)| {
            cumulative += n;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(le);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut hist = proto::Histogram::default();
    hist.set_bucket(buckets);
    hist.set_sample_count(h.len());
    hist.set_sample_sum(h.mean() * h.len() as f64 / 1e6);
    let mut m = proto::Metric::default();
    m.set_histogram(hist);
    named(name, help, MetricType::HISTOGRAM, vec![m])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CloseReason, Transport};
    use crate::proto::Cmd;

    fn line<'a>(text: &'a str, sample: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
    }

    #[test]
    fn cores_are_summed_except_per_core_fields() {
        let a = Arc::new(CoreMetrics::default());
        let b = Arc::new(CoreMetrics::default());
        a.links.inc();
        b.links.inc();
        b.links.inc();
        a.links_opened.add(3);
        b.links_opened.add(4);
        a.closed(CloseReason::Kicked);
        b.closed(CloseReason::Kicked);
        b.links_by_transport.inc(Transport::EventStream);
        let text = render(
            &[a, b],
            &NodeCounters::default(),
            &[("ringway_x", "X.", 7)],
            Vec::new(),
        );
        assert_eq!(line(&text, "ringway_links"), Some("3"));
        assert_eq!(line(&text, "ringway_core_links{core=\"0\"}"), Some("1"));
        assert_eq!(line(&text, "ringway_core_links{core=\"1\"}"), Some("2"));
        assert_eq!(line(&text, "ringway_links_opened_total"), Some("7"));
        let kicked = "ringway_links_closed_total{reason=\"kicked\"}";
        assert_eq!(line(&text, kicked), Some("2"));
        let sse = "ringway_links_by_transport_total{transport=\"sse\"}";
        assert_eq!(line(&text, sse), Some("1"));
        assert_eq!(line(&text, "ringway_x"), Some("7"));
        assert!(text.contains("# TYPE ringway_links_opened_total counter\n"));
        assert!(text.contains("# HELP ringway_links_opened_total Links accepted.\n"));
    }

    #[test]
    fn unknown_commands_and_statuses_fall_in_their_catch_all_rows() {
        let m = Arc::new(CoreMetrics::default());
        m.frame_in(999);
        m.frame_in(-1);
        m.frame_out(Cmd::Downstream);
        m.rejected(418);
        m.rejected(401);
        let text = render(&[m], &NodeCounters::default(), &[], Vec::new());
        let unknown = "ringway_frames_in_total{cmd=\"CMD_UNSPECIFIED\"}";
        assert_eq!(line(&text, unknown), Some("2"));
        let down = "ringway_frames_out_total{cmd=\"CMD_DOWNSTREAM\"}";
        assert_eq!(line(&text, down), Some("1"));
        let other = "ringway_handshake_rejected_total{status=\"500\"}";
        assert_eq!(line(&text, other), Some("1"));
        let unauthorized = "ringway_handshake_rejected_total{status=\"401\"}";
        assert_eq!(line(&text, unauthorized), Some("1"));
    }

    #[test]
    fn latencies_are_histograms_with_cumulative_buckets() {
        let m = Arc::new(CoreMetrics::default());
        let mut l = Latencies::default();
        for us in [50, 100, 300, 2_000, 20_000_000] {
            Latencies::record(&mut l.push_delivery, us);
        }
        *m.published.lock().unwrap() = Some(l);
        let text = render(&[m], &NodeCounters::default(), &[], Vec::new());
        let name = "ringway_push_delivery_latency_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        let bucket = |le: &str| line(&text, &format!("{name}_bucket{{le=\"{le}\"}}"));
        assert_eq!(bucket("0.0001"), Some("2"), "50 and 100 µs");
        assert_eq!(bucket("0.0005"), Some("3"));
        assert_eq!(bucket("0.0025"), Some("4"));
        assert_eq!(bucket("10"), Some("4"), "20 s is past the last bound");
        assert_eq!(bucket("+Inf"), Some("5"));
        assert_eq!(line(&text, &format!("{name}_count")), Some("5"));
    }

    #[test]
    fn the_build_and_the_process_are_described() {
        let text = render(&[], &NodeCounters::default(), &[], Vec::new());
        let build = text
            .lines()
            .find(|l| l.starts_with("ringway_build_info{"))
            .expect("build info");
        assert!(build.contains(concat!("version=\"", env!("CARGO_PKG_VERSION"), "\"")));
        assert!(
            build.contains("git_sha=\"") && build.ends_with(" 1"),
            "{build}"
        );
        let fds: f64 = line(&text, "process_open_fds").unwrap().parse().unwrap();
        assert!(fds > 0.0);
        assert!(line(&text, "process_resident_memory_bytes").is_some());
    }
}
