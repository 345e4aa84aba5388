//! The `push` scenario: pushes posted to the gateway's HTTP push API at a steady rate, each to
//! `fanout` users; every link acks what it gets and records push-to-client latency from the
//! send time carried in the body.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use ringway::proto::{Cmd, Frame};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::conn::Link;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A minimal keep-alive HTTP/1.1 client for the admin API: one request at a time.
pub struct Admin {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Admin {
    pub async fn connect(addr: &str) -> Result<Admin, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("admin {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Admin {
            stream: BufReader::new(stream),
            host: addr.to_owned(),
        })
    }

    /// POSTs JSON; returns the status code.
    pub async fn post(&mut self, path: &str, body: &str) -> Result<u16, String> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        let io = |e: std::io::Error| e.to_string();
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(io)?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await.map_err(io)?;
        let status = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.map_err(io)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut sink = vec![0u8; length];
        self.stream.read_exact(&mut sink).await.map_err(io)?;
        Ok(status)
    }
}

pub struct Counts {
    pub deliveries: AtomicU64,
    pub duplicates: AtomicU64,
    pub latency_us: Mutex<Histogram<u64>>,
}

/// Receives pushes on one link until `until`: acks each, records its latency once per key.
pub async fn receive(mut link: Link, until: Instant, counts: Arc<Counts>) {
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut seen = std::collections::HashSet::new();
    while let Ok(Some(f)) = tokio::time::timeout(
        until.saturating_duration_since(Instant::now()),
        link.next_frame(),
    )
    .await
    {
        if f.cmd != Cmd::Downstream as i32 {
            continue;
        }
        let ack = Frame {
            cmd: Cmd::DownstreamAck as i32,
            key: f.key.clone(),
            ..Default::default()
        };
        let msg = link.message(&ack);
        let _ = futures_util::SinkExt::send(&mut link.ws, msg).await;
        if !seen.insert(f.key) {
            counts.duplicates.fetch_add(1, Relaxed);
            continue;
        }
        counts.deliveries.fetch_add(1, Relaxed);
        if let Some(sent) = f.body.get(..8) {
            let sent = u64::from_le_bytes(sent.try_into().expect("8 bytes"));
            local.saturating_record(now_ns().saturating_sub(sent) / 1000);
        }
    }
    let _ = counts.latency_us.lock().await.add(&local);
}

/// Posts pushes at `rate` per second until `until`, each to `fanout` consecutive users
/// (round robin over `users`). Returns (pushes accepted, pushes refused).
pub async fn send(
    admin: &mut Admin,
    biz: u64,
    users: &[String],
    fanout: usize,
    rate: u32,
    size: usize,
    until: Instant,
) -> Result<(u64, u64), String> {
    use base64::Engine;
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now();
    let (mut ok, mut refused) = (0u64, 0u64);
    let mut next_user = 0;
    for n in 0u64.. {
        let due = start + gap.mul_f64(n as f64);
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let to: Vec<&String> = (0..fanout.min(users.len()))
            .map(|i| &users[(next_user + i) % users.len()])
            .collect();
        next_user = (next_user + to.len()) % users.len();
        let mut body = now_ns().to_le_bytes().to_vec();
        body.resize(size.max(8), b'x');
        let b64 = base64::engine::general_purpose::STANDARD.encode(&body);
        let json =
            serde_json::json!({"biz_id": biz, "user_ids": to, "key": format!("p{n}"), "body": b64});
        match admin.post("/v1/push", &json.to_string()).await? {
            202 => ok += 1,
            _ => refused += 1,
        }
    }
    Ok((ok, refused))
}
