//! `ringway-load`: opens many real WebSocket links to a gateway (or a peer) and measures it.
//!
//! Scenarios: `idle` (memory per open link, read from the server's /proc entry), `echo`
//! (closed-loop UPSTREAM → UPSTREAM_ACK: throughput and latency percentiles), `connect`
//! (handshakes per second), `push` (fan-out through the push API), `resume` (a storm of links
//! resuming their streams after missing pushes). Links spread over several
//! source addresses (127.0.0.x) so one process is not limited by one address's ephemeral ports,
//! and over several processes (`--procs`) so none hits the per-process file limit.

mod conn;
mod procs;
mod progress;
mod push;
mod report;
mod resume;
mod tcp;
mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use ringway::protocol::Codec;
use tokio::sync::Mutex;

use progress::Progress;

#[derive(Parser)]
#[command(name = "ringway-load", version = ringway::VERSION, about = "Load generator for ringway")]
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
    /// (TCP connect to CONNECTED) percentiles; with --storm, then drop them all and reconnect
    /// at once (a reconnect storm), retrying 503s after their Retry-After.
    Connect(ConnectArgs),
    /// Echo on every link while pushes arrive on the same links: both workloads at once.
    Mixed(EchoArgs),
    /// Pushes through the gateway's HTTP push API to N links: deliveries per second and
    /// push-to-client latency.
    Push(PushArgs),
    /// N links get a push, drop, miss --missed pushes each, and reconnect at once with
    /// since=EPOCH:OFFSET: time until all recovered, replayed pushes per second, the server's
    /// CPU, Redis round trips per resume.
    Resume(ResumeArgs),
    /// Every link is in one room (--room; ringway: the token's claim, pusher: a channel with
    /// every link subscribed) and messages are published to it at --rate: deliveries per
    /// second, publish-to-client latency, the server's CPU.
    Room(PushArgs),
}

/// Where the gateway's admin API is (push API, /metrics).
#[derive(Args)]
pub struct AdminAddr {
    /// The gateway's admin address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: String,
    /// The gateway's `--admin-token`, when it has one (sent as a bearer token).
    #[arg(long, env = "RINGWAY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

impl AdminAddr {
    pub async fn connect(&self) -> Result<push::Admin, String> {
        push::Admin::connect(&self.admin, self.admin_token.as_deref()).await
    }
}

#[derive(Args)]
struct ResumeArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    admin: AdminAddr,
    /// Pushes each user misses while its link is away.
    #[arg(long, default_value_t = 10)]
    missed: usize,
    #[arg(long)]
    server_pid: Option<u32>,
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
    /// What the server is: `ringway`; `plain`, a WebSocket echo server (no CONNECTED; the
    /// echoed UPSTREAM itself counts as the acknowledgement); `tcp`, a raw TCP echo server
    /// (the physical reference: same bytes, no WebSocket); `pusher`, a Pusher-protocol server
    /// such as sockudo (each link subscribes to its user's channel; pushes are HTTP events).
    #[arg(long, value_enum, default_value_t = Target::Ringway)]
    pub target: Target,
    /// Pusher target: the app key (WebSocket path `/app/{key}`), id and secret (HTTP API).
    #[arg(long, default_value = "bench-key")]
    pub app_key: String,
    #[arg(long, default_value = "bench-app")]
    pub app_id: String,
    #[arg(long, default_value = "bench-secret")]
    pub app_secret: String,
    /// Connect over TLS (wss://), trusting the certificate authority (or the self-signed
    /// certificate) in this PEM file: handshakes and memory then include the TLS session.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Write the summary as JSON to this file too.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
    /// Write the latency distribution (percentile against latency) to this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Processes to spread the links over (idle, connect and echo): each holds its share, so
    /// together they pass the per-process file limit.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Set by the parent on its worker processes: which share of the links this one opens.
    #[arg(long, hide = true)]
    pub proc_index: Option<usize>,
    /// A room every link joins (ringway: its token's `rooms` claim; pusher: the channel it
    /// subscribes to instead of its user's). The room scenario uses "bench-room" unless set.
    #[arg(long)]
    pub room: Option<String>,
}

impl Common {
    /// The link indices this process opens.
    pub fn my_links(&self) -> std::ops::Range<usize> {
        match self.proc_index {
            None => 0..self.links,
            Some(k) => {
                let n = self.procs.max(1);
                self.links * k / n..self.links * (k + 1) / n
            }
        }
    }

    /// A parent of worker processes does no work of its own.
    fn is_parent(&self) -> bool {
        self.procs > 1 && self.proc_index.is_none()
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Ringway,
    Plain,
    Tcp,
    Pusher,
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
    /// Links opened and closed before the first reading, so what any first link costs (code
    /// paged in, per-core buffers, tables' first allocation) is not counted per link.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
}

#[derive(Args)]
struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// After the first connect, drop every link and reconnect all of them at once.
    #[arg(long)]
    storm: bool,
    /// The gateway's process id: report how many of its cores the first connect kept busy,
    /// for handshakes per server core-second.
    #[arg(long)]
    server_pid: Option<u32>,
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
    /// Mixed: pushes per second posted meanwhile (one user each, round robin over the links).
    #[arg(long, default_value_t = 0)]
    push_rate: u32,
    /// Mixed: where pushes are posted.
    #[command(flatten)]
    admin: AdminAddr,
}

#[derive(Args)]
struct PushArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    admin: AdminAddr,
    /// Pushes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Users each push names (group fan-out).
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Body bytes per push (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Connections posting pushes at once, each taking every N-th push of the schedule. One
    /// waits for each answer, so a server that answers late gets fewer pushes; several keep
    /// pushes coming to it at the rate asked for.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    senders: u64,
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    #[arg(long)]
    server_pid: Option<u32>,
    /// Produce the pushes to Kafka (PushMessage on --topic) instead of posting them.
    #[arg(long)]
    kafka: Option<String>,
    #[arg(long, default_value = "ringway.push")]
    topic: String,
    /// Share of the links that leave and come back each second while pushes flow (0.005:
    /// 0.5 %/s), each resuming its stream after the last offset it had (ringway). Pushes seen
    /// twice across a resume count once; reconnects and resumes not recovered are reported.
    #[arg(long)]
    churn: Option<f64>,
    /// After the sending window, links listen until every expected delivery arrived or none
    /// arrived for this long: a late delivery is counted (with its latency), a lost one is not.
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    quiet: Duration,
    /// The longest that wait lasts, however steadily late deliveries keep coming.
    #[arg(long, default_value = "120", value_parser = parse_secs)]
    drain_max: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| e.to_string())
}

/// Pinned to one core (`bench/` runs it under `taskset`, and `--procs` adds processes), the
/// generator runs on one thread: a multi-thread runtime's single worker there only added
/// atomics and cross-thread wake-ups to every message, ~10 % of the echo's rate. A slower
/// generator also leaves the server it measures idle more often, and each sleep and wake-up
/// costs the server's core several µs on a virtual machine. Given more cores, it uses them.
fn main() {
    let cli = Cli::parse();
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut runtime = match one_core {
        true => tokio::runtime::Builder::new_current_thread(),
        false => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime.enable_all().build().expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("ringway-load: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.scenario {
        Scenario::Idle(a) if a.common.is_parent() => procs::idle(&a).await,
        Scenario::Idle(a) => idle(a).await,
        Scenario::Echo(a) if a.common.is_parent() => procs::merged(&a.common, a.server_pid).await,
        Scenario::Echo(a) => echo(a).await,
        Scenario::Connect(c) if c.common.is_parent() => {
            procs::merged(&c.common, c.server_pid).await
        }
        Scenario::Connect(c) => connect(c).await,
        Scenario::Mixed(a) if a.push_rate == 0 => Err("mixed needs --push-rate".into()),
        Scenario::Mixed(a) if a.common.procs > 1 => {
            Err("mixed runs in one process (its sender must see every link)".into())
        }
        Scenario::Mixed(a) => echo(a).await,
        Scenario::Push(a) if a.common.procs > 1 => {
            Err("push runs in one process (its sender must see every link)".into())
        }
        Scenario::Push(a) => push_run(a).await,
        Scenario::Room(a) if a.common.procs > 1 => {
            Err("room runs in one process (its sender must see every link)".into())
        }
        Scenario::Room(mut a) => {
            a.common.room.get_or_insert_with(|| "bench-room".into());
            push_run(a).await
        }
        Scenario::Resume(a) if a.common.procs > 1 => {
            Err("resume runs in one process (it must see every link)".into())
        }
        Scenario::Resume(a) => {
            let run = resume::Resume {
                common: &a.common,
                admin: &a.admin,
                missed: a.missed,
                server_pid: a.server_pid,
            };
            run.run().await
        }
    }
}

async fn idle(a: IdleArgs) -> Result<(), String> {
    if a.common.proc_index.is_some() {
        // A worker process: open, say so, hold until the parent closes our stdin.
        let progress = Progress::start("idle", a.common.my_links().len());
        let (links, _) = conn::open_all(&a.common, &progress).await?;
        progress.finish();
        println!("ready {}", links.len());
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
        drop(links);
        return Ok(());
    }
    let before = warm_up(&a).await?;
    let progress = Progress::start("idle", a.common.my_links().len());
    let started = Instant::now();
    let (links, _) = conn::open_all(&a.common, &progress).await?;
    let opened_in = started.elapsed();
    progress.finish();
    tokio::time::sleep(a.hold).await;
    let after = report::MemorySample::settled(a.server_pid).await?;
    let summary = report::idle_summary(links.len(), opened_in, &before, &after);
    report::finish(summary, None, &a.common)?;
    drop(links);
    Ok(())
}

/// Opens and closes `--warmup` links, then reads the server's memory once it holds still:
/// the reading the idle links' cost is measured from.
async fn warm_up(a: &IdleArgs) -> Result<report::MemorySample, String> {
    if a.warmup > 0 {
        let warm = Common {
            links: a.warmup,
            procs: 1,
            proc_index: None,
            user_prefix: format!("{}warmup", a.common.user_prefix),
            ..a.common.clone()
        };
        let progress = Progress::start("warm-up", a.warmup);
        let (links, _) = conn::open_all(&warm, &progress).await?;
        progress.finish();
        drop(links);
    }
    report::MemorySample::settled(a.server_pid).await
}

async fn connect(a: ConnectArgs) -> Result<(), String> {
    let c = &a.common;
    let progress = Progress::start("connect", c.my_links().len());
    let cpu = report::CpuMark::start(a.server_pid)?;
    let started = Instant::now();
    let (links, times) = conn::open_all(c, &progress).await?;
    let secs = started.elapsed().as_secs_f64();
    let server_cores_busy = cpu.cores_busy(secs)?;
    let refused = progress.refused.load(Relaxed);
    let mut summary = serde_json::json!({
        "scenario": "connect",
        "target": format!("{:?}", c.target).to_lowercase(),
        "links": links.len(),
        "seconds": secs,
        "handshakes_per_second": links.len() as f64 / secs,
        "server_cores_busy": server_cores_busy,
        "refused_503": refused,
        "errors": progress.errors.load(Relaxed),
    });
    if !a.storm {
        progress.finish();
        return report::finish(summary, Some(&times), c);
    }
    // Every client loses its link at once and comes straight back.
    drop(links);
    let storm = Common {
        connect_rate: u32::MAX,
        ..c.clone()
    };
    let started = Instant::now();
    let (again, storm_times) = conn::open_all(&storm, &progress).await?;
    let secs = started.elapsed().as_secs_f64();
    progress.finish();
    summary["storm_links"] = again.len().into();
    summary["storm_seconds"] = secs.into();
    summary["storm_refused_503"] = (progress.refused.load(Relaxed) - refused).into();
    summary["storm_connect_us"] = report::percentiles(&storm_times);
    report::finish(summary, Some(&times), c)
}

/// The push scenario, or with `--room` the room scenario: each message goes to the one room
/// every link is in, rather than to `fanout` users.
async fn push_run(a: PushArgs) -> Result<(), String> {
    let scenario = if a.common.room.is_some() {
        "room"
    } else {
        "push"
    };
    let progress = Progress::start(scenario, a.common.links);
    let (links, _) = conn::open_all(&a.common, &progress).await?;
    let links_open = links.len();
    let (users, fanout): (Vec<String>, usize) = match &a.common.room {
        Some(room) => (vec![room.clone()], 1),
        None => {
            let users = (0..links.len())
                .map(|i| format!("{}{i}", a.common.user_prefix))
                .collect();
            (users, a.fanout)
        }
    };
    let counts = Arc::new(push::Counts {
        listening: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
        progress: progress.clone(),
        reconnects: AtomicU64::new(0),
        not_recovered: AtomicU64::new(0),
    });
    let churn = a
        .churn
        .filter(|&c| c > 0.0)
        .map(|per_s| push::Churn { per_s });
    let api = match (a.common.target, &a.kafka) {
        (Target::Ringway, _) if a.common.room.is_some() => {
            push::Api::RingwayRoom { biz: a.common.biz }
        }
        (Target::Ringway, Some(brokers)) => push::Api::kafka(brokers, &a.topic, a.common.biz)?,
        (Target::Ringway, None) => push::Api::Ringway { biz: a.common.biz },
        (Target::Pusher, _) => push::Api::Pusher {
            app_id: a.common.app_id.clone(),
            key: a.common.app_key.clone(),
            secret: a.common.app_secret.clone(),
        },
        (t, _) => return Err(format!("push needs --target ringway or pusher, not {t:?}")),
    };
    let started = Instant::now();
    let sending_until = started + a.duration;
    let (done, listen) = tokio::sync::watch::channel(false);
    let receivers: Vec<_> = links
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let counts = counts.clone();
            tokio::spawn(push::receive(
                l,
                i,
                sending_until,
                listen.clone(),
                counts,
                churn,
            ))
        })
        .collect();
    // Every receiver is polled once before the first push, so the schedule's first pushes do
    // not wait behind thousands of tasks starting on the load generator's own core.
    while counts.listening.load(Relaxed) < receivers.len() as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu = report::CpuMark::start(a.server_pid)?;
    let mut admins = Vec::new();
    for _ in 0..a.senders {
        admins.push(a.admin.connect().await?);
    }
    let schedule = push::Schedule::all(a.rate, Instant::now(), sending_until);
    let shares = admins
        .iter_mut()
        .zip(schedule.split(a.senders))
        .map(|(admin, share)| push::send(admin, &api, &users, fanout, a.size, share));
    let (accepted, refused) = futures_util::future::try_join_all(shares)
        .await?
        .into_iter()
        .fold((0, 0), |(ok, no), (o, n)| (ok + o, no + n));
    let sent_secs = started.elapsed().as_secs_f64();
    let server_cores_busy = cpu.cores_busy(sent_secs)?;
    let reached = match a.common.room {
        Some(_) => links_open,
        None => fanout.min(users.len()),
    };
    let expected = accepted * reached as u64;
    let drain_secs = push::drain(&progress.events, expected, a.quiet, a.drain_max).await;
    let _ = done.send(true);
    for r in receivers {
        let _ = r.await;
    }
    progress.finish();
    let h = counts.latency_us.lock().await;
    let deliveries = progress.events.load(Relaxed);
    let summary = serde_json::json!({
        "scenario": scenario,
        "target": format!("{:?}", a.common.target).to_lowercase(),
        "links": links_open,
        "fanout": reached,
        "pushes_accepted": accepted,
        "pushes_refused": refused,
        "deliveries": deliveries,
        "deliveries_expected": expected,
        "drain_seconds": drain_secs,
        "duplicates": counts.duplicates.load(Relaxed),
        "reconnects": counts.reconnects.load(Relaxed),
        "resumes_not_recovered": counts.not_recovered.load(Relaxed),
        "deliveries_per_second": deliveries as f64 / sent_secs,
        "server_cores_busy": server_cores_busy,
    });
    report::finish(summary, Some(&h), &a.common)
}

async fn echo(a: EchoArgs) -> Result<(), String> {
    let progress = Progress::start("echo", a.common.my_links().len());
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let limited = Arc::new(AtomicU64::new(0));
    let pushes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut sender = None;
    if a.common.target == Target::Tcp {
        let links = tcp::open_all(&a.common, &progress).await?;
        let deadline = Instant::now() + a.duration;
        for s in links {
            tasks.push(tokio::spawn(tcp::drive(
                s,
                a.size,
                a.pipeline.max(1),
                a.messages,
                deadline,
                hist.clone(),
                progress.clone(),
            )));
        }
    } else {
        let (links, _) = conn::open_all(&a.common, &progress).await?;
        let deadline = Instant::now() + a.duration;
        let body = vec![b'x'; a.size];
        for (i, link) in a.common.my_links().zip(links) {
            let run = conn::EchoRun {
                deadline,
                messages: a.messages,
                body: body.clone(),
                pipeline: a.pipeline.max(1),
                prefix: format!("{i}-"),
                hist: hist.clone(),
                limited: limited.clone(),
                pushes: pushes.clone(),
                progress: progress.clone(),
            };
            let (wire, target) = link.into_wire(i as u64 + 1);
            tasks.push(tokio::spawn(run.drive(wire, target)));
        }
        if a.push_rate > 0 {
            let users: Vec<String> = a
                .common
                .my_links()
                .map(|i| format!("{}{i}", a.common.user_prefix))
                .collect();
            let mut admin = a.admin.connect().await?;
            let (api, rate) = (push::Api::Ringway { biz: a.common.biz }, a.push_rate);
            sender = Some(tokio::spawn(async move {
                let schedule = push::Schedule::all(rate, Instant::now(), deadline);
                push::send(&mut admin, &api, &users, 1, 16, schedule).await
            }));
        }
    }
    let started = Instant::now();
    let cpu = report::CpuMark::start(a.server_pid)?;
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    progress.finish();
    let server_cores_busy = cpu.cores_busy(secs)?;
    let pushed = match sender {
        Some(t) => Some(t.await.map_err(|e| e.to_string())??.0),
        None => None,
    };
    let h = hist.lock().await;
    let acks = progress.events.load(Relaxed);
    let mut summary = serde_json::json!({
        "scenario": if pushed.is_some() { "mixed" } else { "echo" },
        "target": format!("{:?}", a.common.target).to_lowercase(),
        "links": a.common.my_links().len(),
        "codec": format!("{:?}", a.common.codec),
        "body_bytes": a.size,
        "pipeline": a.pipeline,
        "seconds": secs,
        "acks": acks,
        "acks_per_second": acks as f64 / secs,
        "rate_limited": limited.load(Relaxed),
        "errors": progress.errors.load(Relaxed),
        "server_cores_busy": server_cores_busy,
    });
    if let Some(pushed) = pushed {
        summary["pushes_accepted"] = pushed.into();
        summary["pushes_received"] = pushes.load(Relaxed).into();
        summary["pushes_received_per_second"] = (pushes.load(Relaxed) as f64 / secs).into();
    }
    report::finish(summary, Some(&h), &a.common)
}
