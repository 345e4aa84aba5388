//! Measurements and their output.

use hdrhistogram::Histogram;

/// The server's resident memory and the kernel's shared figures at one moment.
pub struct MemorySample {
    pub rss_kib: u64,
    pub slab_kib: u64,
    pub tcp_mem_pages: u64,
}

/// How far apart two readings [`MemorySample::settled`] takes may be and still count as one.
const SETTLED_KIB: u64 = 64;

impl MemorySample {
    /// A reading once the server's memory holds still: two readings 250 ms apart within
    /// 64 KiB, or the last of 20. A server that has just started, or has just closed links,
    /// is still allocating and freeing for a moment; a reading then lands anywhere in that.
    pub async fn settled(pid: u32) -> Result<MemorySample, String> {
        let mut last = MemorySample::read(pid)?;
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let now = MemorySample::read(pid)?;
            if now.rss_kib.abs_diff(last.rss_kib) <= SETTLED_KIB {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }

    pub fn read(pid: u32) -> Result<MemorySample, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").map_err(|e| e.to_string())?;
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let tcp_mem_pages = sockstat
            .lines()
            .find(|l| l.starts_with("TCP:"))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(MemorySample {
            rss_kib: field(&status, "VmRSS:"),
            slab_kib: field(&meminfo, "Slab:"),
            tcp_mem_pages,
        })
    }
}

/// A process's CPU time at the start of a measurement (nothing without a process id).
pub struct CpuMark(Option<(u32, f64)>);

impl CpuMark {
    pub fn start(pid: Option<u32>) -> Result<CpuMark, String> {
        Ok(CpuMark(match pid {
            Some(pid) => Some((pid, cpu_seconds(pid)?)),
            None => None,
        }))
    }

    /// The cores the process kept busy over the `secs` since the mark.
    pub fn cores_busy(&self, secs: f64) -> Result<Option<f64>, String> {
        self.0
            .map(|(pid, before)| Ok((cpu_seconds(pid)? - before) / secs))
            .transpose()
    }
}

/// CPU seconds a process has used so far (user + system).
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed stat")?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(f.iter().sum::<u64>() as f64 / ticks)
}

pub fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    serde_json::json!({
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max(),
        "count": h.len(),
    })
}

/// The idle scenario's figures: server memory per link, user space and kernel apart.
pub fn idle_summary(
    links: usize,
    opened_in: std::time::Duration,
    before: &MemorySample,
    after: &MemorySample,
) -> serde_json::Value {
    let n = links.max(1) as f64;
    serde_json::json!({
        "scenario": "idle",
        "links": links,
        "open_seconds": opened_in.as_secs_f64(),
        "server_rss_kib_before": before.rss_kib,
        "server_rss_kib_after": after.rss_kib,
        "server_rss_bytes_per_link": (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / n,
        "kernel_slab_bytes_per_link": (after.slab_kib as f64 - before.slab_kib as f64) * 1024.0 / n,
        "tcp_mem_pages_after": after.tcp_mem_pages,
    })
}

/// The histogram as (value, count) pairs, for a parent process to merge.
pub fn raw(h: &Histogram<u64>) -> serde_json::Value {
    h.iter_recorded()
        .map(|v| serde_json::json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

pub fn from_raw(pairs: &serde_json::Value, into: &mut Histogram<u64>) {
    for p in pairs.as_array().into_iter().flatten() {
        if let (Some(v), Some(n)) = (p[0].as_u64(), p[1].as_u64()) {
            into.saturating_record_n(v, n);
        }
    }
}

/// Adds the latency percentiles, then prints the summary: JSON on stdout (one line from a
/// worker process, for its parent), a table on stderr, and the JSON and plot files asked for.
pub fn finish(
    mut summary: serde_json::Value,
    hist: Option<&Histogram<u64>>,
    common: &crate::Common,
) -> Result<(), String> {
    if let Some(h) = hist {
        summary["latency_us"] = percentiles(h);
        if common.proc_index.is_some() {
            summary["hist"] = raw(h);
        }
    }
    if common.proc_index.is_some() {
        println!("{summary}");
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&summary).expect("json");
    println!("{text}");
    eprint!("{}", human(&summary));
    if let Some(warning) = rate_limit_warning(&summary) {
        eprintln!("{warning}");
    }
    if let Some(path) = &common.json_out {
        std::fs::write(path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let (Some(path), Some(h)) = (&common.plot, hist) {
        let title = format!(
            "{} {} — {} links",
            summary["scenario"].as_str().unwrap_or(""),
            summary["target"].as_str().unwrap_or(""),
            summary["links"]
        );
        std::fs::write(path, plot_svg(h, &title))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Said when the gateway answered RATE_LIMITED: the run then measured the per-link limit, not
/// the gateway, and the figures are not comparable with a peer's.
fn rate_limit_warning(summary: &serde_json::Value) -> Option<String> {
    let limited = summary["rate_limited"].as_u64().filter(|n| *n > 0)?;
    Some(format!(
        "warning: the gateway rate-limited {limited} messages (RATE_LIMITED): this run measured \
         its per-link limit. Start it with --link-rate 0, or raise --link-rate and --link-burst \
         above this run's per-link rate."
    ))
}

/// A rate for people: 14824 → "14.8k/s".
fn rate(per_s: f64) -> String {
    match per_s {
        r if r >= 1e6 => format!("{:.2}M/s", r / 1e6),
        r if r >= 1e3 => format!("{:.1}k/s", r / 1e3),
        r => format!("{r:.1}/s"),
    }
}

/// A latency for people: 834 µs → "0.83 ms", 201000 → "201 ms".
fn micros(us: u64) -> String {
    match us {
        u if u >= 10_000_000 => format!("{:.1} s", u as f64 / 1e6),
        u if u >= 1_000_000 => format!("{:.2} s", u as f64 / 1e6),
        u if u >= 100_000 => format!("{:.0} ms", u as f64 / 1e3),
        u if u >= 100 => format!("{:.2} ms", u as f64 / 1e3),
        u => format!("{u} µs"),
    }
}

/// What went wrong in the run, if anything; empty is a clean run.
fn problems(s: &serde_json::Value) -> Vec<String> {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let mut out = Vec::new();
    for (key, what) in [
        ("errors", "errors"),
        ("rate_limited", "messages rate-limited"),
        ("pushes_refused", "pushes refused"),
    ] {
        if n(key) > 0 {
            out.push(format!("{} {what}", n(key)));
        }
    }
    if let (Some(got), Some(want)) = (s["deliveries"].as_u64(), s["deliveries_expected"].as_u64())
        && got < want
    {
        out.push(format!("{} of {want} deliveries missing", want - got));
    }
    out
}

/// The summary for people, in the manner of k6: the run, its rates and latency, the server,
/// then a verdict line. The JSON on stdout stays what scripts read.
fn human(s: &serde_json::Value) -> String {
    let mut out = String::new();
    let text = |k: &str| s[k].as_str().unwrap_or("").to_owned();
    let secs = s["seconds"].as_f64().or(s["open_seconds"].as_f64());
    out.push_str(&format!(
        "\n  {} against {}: {} links{}\n\n",
        text("scenario"),
        text("target"),
        s["links"],
        secs.map_or(String::new(), |t| format!(", {t:.1} s"))
    ));
    let row = |out: &mut String, name: &str, value: String| {
        out.push_str(&format!("  {name:.<28} {value}\n"));
    };
    // A count and its rate share a row: "deliveries ...... 148250   14.8k/s".
    let mut shown = vec![
        "links",
        "seconds",
        "server_cores_busy",
        "latency_us",
        "hist",
    ];
    for (k, v) in s.as_object().into_iter().flatten() {
        if let (Some(name), Some(r)) = (k.strip_suffix("_per_second"), v.as_f64()) {
            let count = s.get(name).and_then(|c| c.as_u64());
            let value = count.map_or(rate(r), |c| format!("{c}   {}", rate(r)));
            row(&mut out, name, value);
            shown.extend([k.as_str(), name]);
        }
    }
    if let Some(l) = s["latency_us"].as_object() {
        let q = |k: &str| micros(l.get(k).and_then(|v| v.as_u64()).unwrap_or(0));
        let line = format!(
            "p50 {}   p90 {}   p99 {}   p99.9 {}   max {}",
            q("p50"),
            q("p90"),
            q("p99"),
            q("p999"),
            q("max")
        );
        row(&mut out, "latency", line);
    }
    if let Some(busy) = s["server_cores_busy"].as_f64() {
        row(
            &mut out,
            "server",
            format!("{:.0} % of a core busy", busy * 100.0),
        );
    }
    for (k, v) in s.as_object().into_iter().flatten() {
        if !shown.contains(&k.as_str()) && v.is_number() {
            let value = v
                .as_f64()
                .filter(|f| f.fract() != 0.0)
                .map_or(v.to_string(), |f| format!("{f:.2}"));
            row(&mut out, k, value);
        }
    }
    let problems = problems(s);
    out.push('\n');
    if problems.is_empty() {
        out.push_str(
            "  ✓ clean run: no errors, nothing refused or rate-limited, nothing missing\n",
        );
    } else {
        out.push_str(&format!("  ✗ {}\n", problems.join(", ")));
    }
    out
}

/// Latency against percentile (HdrHistogram style: the x axis stretches the tail, 0 % to
/// 99.999 %), as a small self-contained SVG.
pub fn plot_svg(h: &Histogram<u64>, title: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 420.0;
    const L: f64 = 90.0;
    const B: f64 = 50.0;
    const NINES: f64 = 5.0;
    let x_of = |q: f64| L + (W - L - 40.0) * ((1.0 / (1.0 - q.min(0.99999))).log10() / NINES);
    let max = h.value_at_quantile(0.99999).max(1) as f64;
    let y_of = |us: f64| H - B - (H - B - 40.0) * (us / max);
    let mut points = String::new();
    for v in h.iter_quantiles(4) {
        let q = v.quantile_iterated_to();
        points.push_str(&format!(
            "{:.1},{:.1} ",
            x_of(q),
            y_of(v.value_iterated_to() as f64)
        ));
    }
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{L}\" y=\"22\" font-size=\"15\">{title}: latency by percentile</text>\n"
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = L + (W - L - 40.0) * (i as f64 / NINES);
        svg.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"40\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
            H - B,
            H - B + 18.0
        ));
    }
    let step = tick_step(max);
    for i in 0..=((max / step) as u32) {
        let us = step * f64::from(i);
        let y = y_of(us);
        svg.push_str(&format!(
            "<line x1=\"{L}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            W - 40.0,
            L - 6.0,
            y + 4.0,
            micros(us as u64)
        ));
    }
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{points}\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\n</svg>\n",
        (W + L) / 2.0,
        H - 10.0
    ));
    svg
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `max` into at most 8 ticks.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1.0);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| max / s <= 7.0)
        .unwrap_or(10.0 * power)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_in_human_units_and_ticks_are_round() {
        assert_eq!(rate(14_824.0), "14.8k/s");
        assert_eq!(rate(2_500_000.0), "2.50M/s");
        assert_eq!(micros(834), "0.83 ms");
        assert_eq!(micros(201_000), "201 ms");
        assert_eq!(micros(1_500_000), "1.50 s");
        assert_eq!(micros(70), "70 µs");
        assert_eq!(tick_step(1234.0), 200.0);
        assert_eq!(tick_step(9_700.0), 2_000.0);
        assert_eq!(tick_step(3.0), 1.0);
    }

    #[test]
    fn the_verdict_names_what_went_wrong() {
        let clean = serde_json::json!({"scenario": "push", "target": "ringway", "links": 10,
            "seconds": 10.0, "deliveries": 50, "deliveries_expected": 50, "errors": 0,
            "deliveries_per_second": 5.0, "latency_us": {"p50": 400, "p99": 900}});
        assert!(problems(&clean).is_empty());
        let text = human(&clean);
        assert!(
            text.contains("✓ clean run") && text.contains("5.0/s"),
            "{text}"
        );
        assert!(text.contains("p99 0.90 ms"), "{text}");
        let bad = serde_json::json!({"errors": 2, "rate_limited": 3, "deliveries": 40,
            "deliveries_expected": 50});
        assert_eq!(
            problems(&bad),
            [
                "2 errors",
                "3 messages rate-limited",
                "10 of 50 deliveries missing"
            ]
        );
        assert!(human(&bad).contains("✗ 2 errors"));
    }

    #[test]
    fn a_rate_limited_run_says_which_flag_to_change() {
        let limited = serde_json::json!({"rate_limited": 12});
        let warning = rate_limit_warning(&limited).unwrap();
        assert!(warning.contains("12 messages") && warning.contains("--link-rate 0"));
        assert_eq!(
            rate_limit_warning(&serde_json::json!({"rate_limited": 0})),
            None
        );
        assert_eq!(rate_limit_warning(&serde_json::json!({"acks": 5})), None);
    }
}
