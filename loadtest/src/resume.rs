//! The `resume` scenario: N links get a first push (their streams begin), all drop, K pushes
//! per user are made while they are away, and all reconnect at once with
//! `since=EPOCH:OFFSET`. Reports the time until every link was recovered and had its K
//! pushes, replayed entries per second, the server's CPU meanwhile, and (from its /metrics)
//! how many Redis round trips the resumes took.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::SinkExt;
use ringway::proto::{Cmd, Frame};

use crate::conn::{self, Link};
use crate::progress::Progress;
use crate::push::Admin;
use crate::{AdminAddr, Common, report};

/// Users a push names at most: one request reaches many offline users.
const PER_PUSH: usize = 500;

pub struct Resume<'a> {
    pub common: &'a Common,
    pub admin: &'a AdminAddr,
    /// Pushes each user gets while away.
    pub missed: usize,
    pub server_pid: Option<u32>,
}

impl Resume<'_> {
    pub async fn run(self) -> Result<(), String> {
        let c = self.common;
        let progress = Progress::start("resume", c.links);
        let (mut links, _) = conn::open_all(c, &progress).await?;
        let users: Vec<String> = (0..links.len())
            .map(|i| format!("{}{i}", c.user_prefix))
            .collect();
        let mut admin = self.admin.connect().await?;
        push_all(&mut admin, c.biz, &users, "first").await?;
        // Each stream's first push names its epoch; the client keeps it and the offset.
        let mut since = Vec::with_capacity(links.len());
        for l in &mut links {
            let f = first_push(l).await?;
            let epoch = f.connected.map(|n| n.epoch).unwrap_or_default();
            since.push(format!("{epoch}:{}", f.offset));
        }
        drop(links);
        for k in 0..self.missed {
            push_all(&mut admin, c.biz, &users, &format!("missed-{k}")).await?;
        }
        let before = Counters::read(&mut admin).await;
        let cpu = report::CpuMark::start(self.server_pid)?;
        let storm = Common {
            connect_rate: u32::MAX,
            ..c.clone()
        };
        let started = Instant::now();
        let (again, _) =
            conn::open_resuming(&storm, &progress, &|i| Some(since[i].clone())).await?;
        let recovered = again
            .iter()
            .filter(|l| l.hello.as_ref().is_some_and(|h| h.recovered))
            .count();
        let missed = self.missed;
        let tasks: Vec<_> = again
            .into_iter()
            .map(|l| tokio::spawn(take_replay(l, missed)))
            .collect();
        let mut replayed = 0;
        for t in tasks {
            replayed += t.await.map_err(|e| e.to_string())??;
        }
        let secs = started.elapsed().as_secs_f64();
        let server_cores_busy = cpu.cores_busy(secs)?;
        let after = Counters::read(&mut admin).await;
        progress.finish();
        let reads = after.reads - before.reads;
        let summary = serde_json::json!({
            "scenario": "resume",
            "links": users.len(),
            "missed_per_link": missed,
            "recovered": recovered,
            "not_recovered": users.len() - recovered,
            "replayed": replayed,
            "seconds_to_all_recovered": secs,
            "replayed_per_second": replayed as f64 / secs,
            "server_cores_busy": server_cores_busy,
            "redis_reads": reads,
            "redis_read_round_trips": after.read_batches - before.read_batches,
            "redis_round_trips_per_resume": (after.read_batches - before.read_batches) / reads.max(1.0),
            "errors": progress.errors.load(Relaxed),
        });
        report::finish(summary, None, c)
    }
}

/// One push (key `key`) to every user, in requests of [`PER_PUSH`] users.
async fn push_all(admin: &mut Admin, biz: u64, users: &[String], key: &str) -> Result<(), String> {
    let body = base64::engine::general_purpose::STANDARD.encode(key);
    for chunk in users.chunks(PER_PUSH) {
        let req = serde_json::json!({"biz_id": biz, "user_ids": chunk, "key": key, "body": body});
        let status = admin.post("/v1/push", &req.to_string()).await?;
        if status != 202 {
            return Err(format!("POST /v1/push answered {status}"));
        }
    }
    Ok(())
}

async fn ack(link: &mut Link, key: &str) {
    let ack = Frame {
        cmd: Cmd::DownstreamAck as i32,
        key: key.to_owned(),
        ..Default::default()
    };
    let msg = link.message(&ack);
    let _ = link.ws.send(msg).await;
}

/// The first DOWNSTREAM, acked.
async fn first_push(link: &mut Link) -> Result<Frame, String> {
    let wait = Duration::from_secs(30);
    loop {
        let f = tokio::time::timeout(wait, link.next_frame())
            .await
            .map_err(|_| "no first push within 30 s")?
            .ok_or("link closed before its first push")?;
        if f.cmd == Cmd::Downstream as i32 {
            ack(link, &f.key).await;
            return Ok(f);
        }
    }
}

/// Reads the `missed` replayed pushes, acking each; how many came.
async fn take_replay(mut link: Link, missed: usize) -> Result<u64, String> {
    let mut got = 0;
    while got < missed {
        let f = tokio::time::timeout(Duration::from_secs(60), link.next_frame())
            .await
            .map_err(|_| format!("{got} of {missed} replayed within 60 s"))?
            .ok_or("link closed during its replay")?;
        if f.cmd == Cmd::Downstream as i32 {
            ack(&mut link, &f.key).await;
            got += 1;
        }
    }
    Ok(got as u64)
}

/// The server's stream-read counters (zero for an embedded store).
struct Counters {
    reads: f64,
    read_batches: f64,
}

impl Counters {
    async fn read(admin: &mut Admin) -> Counters {
        let text = match admin.get("/metrics").await {
            Ok((200, body)) => String::from_utf8_lossy(&body).into_owned(),
            _ => String::new(),
        };
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        };
        Counters {
            reads: value("ringway_stream_reads_total"),
            read_batches: value("ringway_stream_read_batches_total"),
        }
    }
}
