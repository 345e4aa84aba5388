//! Turns the metric sets into the `prometheus` crate's families and its text exposition: the
//! crate owns the format (escaping, types, summaries); this file only says how a core-local
//! field becomes rows.

use std::sync::Arc;

use hdrhistogram::Histogram;
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use super::{CoreMetrics, Counter, Gauge, LabelSet, Labeled, Latencies, NodeCounters, PerCore};

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
    let mut m = proto::Metric::default();
    if let Some((k, v)) = label {
        let mut pair = LabelPair::default();
        pair.set_name(k.to_owned());
        pair.set_value(v.to_owned());
        m.set_label(vec![pair]);
    }
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
) -> String {
    let sets: Vec<&CoreMetrics> = cores.iter().map(|c| &**c).collect();
    let links: i64 = sets.iter().map(|c| c.links.get()).sum();
    let mut out = vec![named(
        "ringway_links",
        "Links open now.",
        MetricType::GAUGE,
        vec![sample(MetricType::GAUGE, None, links as f64)],
    )];
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
        summary(
            "ringway_upstream_latency_seconds",
            "UPSTREAM received to UPSTREAM_ACK queued.",
            &merged.upstream,
        ),
        summary(
            "ringway_push_delivery_latency_seconds",
            "Push accepted to DOWNSTREAM queued on the link.",
            &merged.push_delivery,
        ),
        summary(
            "ringway_push_ack_latency_seconds",
            "DOWNSTREAM sent to DOWNSTREAM_ACK received.",
            &merged.push_ack,
        ),
        summary(
            "ringway_push_write_wait_seconds",
            "DOWNSTREAM queued on the link to written to its socket.",
            &merged.push_write_wait,
        ),
    ]);
    let mut s = String::with_capacity(16 * 1024);
    prometheus::TextEncoder::new()
        .encode_utf8(&out, &mut s)
        .expect("every family has a name and a row");
    s
}

fn summary(name: &str, help: &str, h: &Histogram<u64>) -> MetricFamily {
    let quantiles = [0.5, 0.9, 0.99, 0.999]
        .into_iter()
        .map(|q| {
            let mut row = proto::Quantile::default();
            row.set_quantile(q);
            row.set_value(if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e6
            });
            row
        })
        .collect();
    let mut s = proto::Summary::default();
    s.set_quantile(quantiles);
    s.set_sample_count(h.len());
    s.set_sample_sum(h.mean() * h.len() as f64 / 1e6);
    let mut m = proto::Metric::default();
    m.set_summary(s);
    named(name, help, MetricType::SUMMARY, vec![m])
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
        let text = render(&[a, b], &NodeCounters::default(), &[("ringway_x", "X.", 7)]);
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
        let text = render(&[m], &NodeCounters::default(), &[]);
        let unknown = "ringway_frames_in_total{cmd=\"CMD_UNSPECIFIED\"}";
        assert_eq!(line(&text, unknown), Some("2"));
        let down = "ringway_frames_out_total{cmd=\"CMD_DOWNSTREAM\"}";
        assert_eq!(line(&text, down), Some("1"));
        let other = "ringway_handshake_rejected_total{status=\"500\"}";
        assert_eq!(line(&text, other), Some("1"));
        let unauthorized = "ringway_handshake_rejected_total{status=\"401\"}";
        assert_eq!(line(&text, unauthorized), Some("1"));
    }
}
