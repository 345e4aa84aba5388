//! Measurements and their output.

use hdrhistogram::Histogram;

/// The server's resident memory and the kernel's shared figures at one moment.
pub struct MemorySample {
    pub rss_kib: u64,
    pub slab_kib: u64,
    pub tcp_mem_pages: u64,
}

impl MemorySample {
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

pub fn print(
    summary: &serde_json::Value,
    json_out: Option<&std::path::Path>,
) -> Result<(), String> {
    let text = serde_json::to_string_pretty(summary).expect("json");
    println!("{text}");
    if let Some(path) = json_out {
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}
