//! `ringway-load`: opens many real WebSocket links to a gateway and measures it.
//!
//! Scenarios: `idle` (memory per open link, read from the server's /proc entry) and `echo`
//! (closed-loop UPSTREAM → UPSTREAM_ACK: throughput and latency percentiles). Links spread over
//! several source addresses (127.0.0.x) so one process is not limited by one address's
//! ephemeral ports.

mod conn;
mod push;
mod report;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use ringway::protocol::Codec;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(name = "ringway-load", about = "Load generator for ringway")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N links and hold them; report the server's memory per link.
    Idle(IdleArgs),
    /// N links each send UPSTREAM and wait for its ACK, in a loop.
    Echo(EchoArgs),
    /// Open N links as fast as --connect-rate allows: handshakes per second and connect time
    /// (TCP connect to CONNECTED) percentiles.
    Connect(Common),
    /// Pushes through the gateway's HTTP push API to N links: deliveries per second and
    /// push-to-client latency.
    Push(PushArgs),
}

#[derive(Args, Clone)]
pub struct Common {
    /// Gateway address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub server: String,
    /// HS256 secret the gateway was started with.
    #[arg(long, env = "RINGWAY_JWT_SECRET")]
    pub jwt_secret: String,
    #[arg(long, default_value_t = 1)]
    pub biz: u64,
    /// Links to open.
    #[arg(long, default_value_t = 100)]
    pub links: usize,
    /// Source addresses to spread links over (each has ~28k ephemeral ports).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub sources: Vec<IpAddr>,
    /// `proto` or `json`.
    #[arg(long, default_value = "proto", value_parser = parse_codec)]
    pub codec: Codec,
    /// New links per second while ramping up.
    #[arg(long, default_value_t = 5000)]
    pub connect_rate: u32,
    /// Prefix of user ids, so several load processes can share one gateway.
    #[arg(long, default_value = "load")]
    pub user_prefix: String,
    /// `ringway`, or `plain` for a peer that only echoes WebSocket messages (no CONNECTED; the
    /// echoed UPSTREAM itself counts as the acknowledgement).
    #[arg(long, default_value = "ringway", value_parser = ["ringway", "plain"])]
    pub target: String,
    /// Write the summary as JSON to this file too.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    match s {
        "proto" => Ok(Codec::Proto),
        "json" => Ok(Codec::Json),
        _ => Err("codec is proto or json".into()),
    }
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// The gateway's process id, to read its memory from /proc.
    #[arg(long)]
    server_pid: u32,
    /// How long to hold the links after the last one opened (lets the server settle).
    #[arg(long, default_value = "3", value_parser = parse_secs)]
    hold: Duration,
}

#[derive(Args)]
struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Measurement time after all links are open.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    /// Body bytes per UPSTREAM.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per link at most; the run ends when all are answered or time is up.
    #[arg(long, default_value_t = u64::MAX)]
    messages: u64,
    /// Messages in flight per link (1 = strictly request/response).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// The gateway's process id: report how many of its CPU cores the run kept busy, which
    /// tells whether the server or this generator was the limit.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct PushArgs {
    #[command(flatten)]
    common: Common,
    /// The gateway's admin address (push API).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: String,
    /// Pushes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Users each push names (group fan-out).
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Body bytes per push (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    #[arg(long)]
    server_pid: Option<u32>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Idle(a) => idle(a).await,
        Scenario::Echo(a) => echo(a).await,
        Scenario::Connect(c) => connect(c).await,
        Scenario::Push(a) => push_run(a).await,
    };
    if let Err(e) = result {
        eprintln!("ringway-load: {e}");
        std::process::exit(1);
    }
}

async fn idle(a: IdleArgs) -> Result<(), String> {
    let before = report::MemorySample::read(a.server_pid)?;
    let started = Instant::now();
    let (links, _) = conn::open_all(&a.common).await?;
    let opened_in = started.elapsed();
    tokio::time::sleep(a.hold).await;
    let after = report::MemorySample::read(a.server_pid)?;
    let n = links.len() as f64;
    let summary = serde_json::json!({
        "scenario": "idle",
        "links": links.len(),
        "open_seconds": opened_in.as_secs_f64(),
        "server_rss_kib_before": before.rss_kib,
        "server_rss_kib_after": after.rss_kib,
        "server_rss_bytes_per_link": (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / n,
        "kernel_slab_bytes_per_link": (after.slab_kib as f64 - before.slab_kib as f64) * 1024.0 / n,
        "tcp_mem_pages_after": after.tcp_mem_pages,
    });
    report::print(&summary, a.common.json_out.as_deref())?;
    drop(links);
    Ok(())
}

async fn connect(c: Common) -> Result<(), String> {
    let started = Instant::now();
    let (links, times) = conn::open_all(&c).await?;
    let secs = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "scenario": "connect",
        "links": links.len(),
        "seconds": secs,
        "handshakes_per_second": links.len() as f64 / secs,
        "connect_us": report::percentiles(&times),
    });
    report::print(&summary, c.json_out.as_deref())
}

async fn push_run(a: PushArgs) -> Result<(), String> {
    let (links, _) = conn::open_all(&a.common).await?;
    let users: Vec<String> = (0..links.len())
        .map(|i| format!("{}{i}", a.common.user_prefix))
        .collect();
    let counts = Arc::new(push::Counts {
        deliveries: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
    });
    let started = Instant::now();
    let sending_until = started + a.duration;
    // Links listen a little longer than pushes are sent, so the last ones are counted.
    let receiving_until = sending_until + Duration::from_secs(2);
    let receivers: Vec<_> = links
        .into_iter()
        .map(|l| tokio::spawn(push::receive(l, receiving_until, counts.clone())))
        .collect();
    let cpu_before = a.server_pid.map(report::cpu_seconds).transpose()?;
    let mut admin = push::Admin::connect(&a.admin).await?;
    let (accepted, refused) = push::send(
        &mut admin,
        a.common.biz,
        &users,
        a.fanout,
        a.rate,
        a.size,
        sending_until,
    )
    .await?;
    let sent_secs = started.elapsed().as_secs_f64();
    let server_cores_busy = match (a.server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some((report::cpu_seconds(pid)? - before) / sent_secs),
        _ => None,
    };
    for r in receivers {
        let _ = r.await;
    }
    let h = counts.latency_us.lock().await;
    let deliveries = counts.deliveries.load(Relaxed);
    let summary = serde_json::json!({
        "scenario": "push",
        "links": users.len(),
        "fanout": a.fanout,
        "pushes_accepted": accepted,
        "pushes_refused": refused,
        "deliveries": deliveries,
        "deliveries_expected": accepted * a.fanout.min(users.len()) as u64,
        "duplicates": counts.duplicates.load(Relaxed),
        "deliveries_per_second": deliveries as f64 / sent_secs,
        "latency_us": report::percentiles(&h),
        "server_cores_busy": server_cores_busy,
    });
    report::print(&summary, a.common.json_out.as_deref())
}

async fn echo(a: EchoArgs) -> Result<(), String> {
    let (links, _) = conn::open_all(&a.common).await?;
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let acks = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + a.duration;
    let body = vec![b'x'; a.size];
    let mut tasks = Vec::new();
    for (i, link) in links.into_iter().enumerate() {
        let run = conn::EchoRun {
            deadline,
            messages: a.messages,
            body: body.clone(),
            pipeline: a.pipeline.max(1),
            prefix: format!("{i}-"),
            hist: hist.clone(),
            acks: acks.clone(),
            limited: limited.clone(),
            errors: errors.clone(),
        };
        tasks.push(tokio::spawn(run.drive(link)));
    }
    let started = Instant::now();
    let cpu_before = a.server_pid.map(report::cpu_seconds).transpose()?;
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let server_cores_busy = match (a.server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some((report::cpu_seconds(pid)? - before) / secs),
        _ => None,
    };
    let h = hist.lock().await;
    let summary = serde_json::json!({
        "scenario": "echo",
        "target": a.common.target,
        "links": a.common.links,
        "codec": format!("{:?}", a.common.codec),
        "body_bytes": a.size,
        "pipeline": a.pipeline,
        "seconds": secs,
        "acks": acks.load(Relaxed),
        "acks_per_second": acks.load(Relaxed) as f64 / secs,
        "rate_limited": limited.load(Relaxed),
        "errors": errors.load(Relaxed),
        "latency_us": report::percentiles(&h),
        "server_cores_busy": server_cores_busy,
    });
    report::print(&summary, a.common.json_out.as_deref())
}
