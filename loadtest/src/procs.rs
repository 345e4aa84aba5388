//! Runs a scenario over several worker processes, each holding its share of the links, so a
//! run can pass the per-process file limit (~20k sockets here). The parent re-runs this binary
//! with `--proc-index K`, then measures (idle) or merges what the workers report (echo,
//! connect: counts summed, latency histograms merged).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::progress::QUIET_ENV;
use crate::report;
use crate::{Common, IdleArgs};

fn spawn_workers(common: &Common) -> Result<Vec<Child>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    (0..common.procs)
        .map(|k| {
            Command::new(&exe)
                .args(&args)
                .args(["--proc-index", &k.to_string()])
                .env(QUIET_ENV, "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("starting worker process {k}: {e}"))
        })
        .collect()
}

/// Idle over several processes: the parent reads the server's memory before the workers open
/// their links and after all of them say they hold them.
pub async fn idle(a: &IdleArgs) -> Result<(), String> {
    let common = &a.common;
    let before = crate::warm_up(a).await?;
    let started = Instant::now();
    let mut workers = spawn_workers(common)?;
    let mut links = 0usize;
    for (k, w) in workers.iter_mut().enumerate() {
        let mut line = String::new();
        let out = w.stdout.as_mut().expect("piped");
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        links += line
            .strip_prefix("ready ")
            .and_then(|n| n.trim().parse::<usize>().ok())
            .ok_or(format!("worker {k} failed (see above)"))?;
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(a.hold).await;
    let after = report::MemorySample::settled(a.server_pid).await?;
    for w in &mut workers {
        drop(w.stdin.take());
        let _ = w.wait();
    }
    let mut summary = report::idle_summary(links, opened_in, &before, &after);
    summary["procs"] = common.procs.into();
    report::finish(summary, None, common)
}

/// Echo or connect over several processes: counts are summed, histograms merged, rates taken
/// over the longest worker's time.
pub async fn merged(common: &Common, server_pid: Option<u32>) -> Result<(), String> {
    let cpu = report::CpuMark::start(server_pid)?;
    let started = Instant::now();
    let workers = spawn_workers(common)?;
    let mut parts = Vec::new();
    for (k, w) in workers.into_iter().enumerate() {
        let out = w.wait_with_output().map_err(|e| e.to_string())?;
        let last = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        let part: serde_json::Value =
            serde_json::from_str(&last).map_err(|_| format!("worker {k} failed (see above)"))?;
        parts.push(part);
    }
    let wall = started.elapsed().as_secs_f64();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut summary = parts[0].clone();
    let sum = |key: &str| parts.iter().filter_map(|p| p[key].as_u64()).sum::<u64>();
    let secs = parts
        .iter()
        .filter_map(|p| p["seconds"].as_f64())
        .fold(0.0, f64::max);
    for key in ["links", "acks", "errors", "rate_limited"] {
        if summary.get(key).is_some() {
            summary[key] = sum(key).into();
        }
    }
    for p in &parts {
        report::from_raw(&p["hist"], &mut hist);
    }
    let obj = summary.as_object_mut().expect("a summary is an object");
    obj.remove("hist");
    obj.insert("seconds".into(), secs.into());
    obj.insert("procs".into(), common.procs.into());
    if obj.contains_key("acks_per_second") {
        obj.insert("acks_per_second".into(), (sum("acks") as f64 / secs).into());
    }
    if obj.contains_key("handshakes_per_second") {
        obj.insert(
            "handshakes_per_second".into(),
            (sum("links") as f64 / secs).into(),
        );
    }
    if let Some(busy) = cpu.cores_busy(wall)? {
        obj.insert("server_cores_busy".into(), busy.into());
    }
    report::finish(summary, Some(&hist), common)
}
