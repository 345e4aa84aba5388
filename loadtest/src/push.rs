//! The `push` scenario: pushes posted to the server's HTTP API at a steady rate, each to
//! `fanout` users; every link records push-to-client latency from the send time carried in the
//! body. Against ringway the pushes go to `/v1/push` and links ack each one; against a Pusher
//! server (sockudo) they are signed events on the users' channels, which Pusher does not ack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use ringway::proto::{Cmd, Frame};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sha2::Sha256;

use crate::Target;
use crate::conn::Link;
use crate::progress::Progress;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A minimal keep-alive HTTP/1.1 client for the push API: one request at a time. A server that
/// answers `Connection: close` (sockudo does on its API) gets a new connection per request.
pub struct Admin {
    stream: Option<BufReader<TcpStream>>,
    host: String,
    /// The `Authorization` header line, for a gateway started with `--admin-token`.
    auth: String,
}

impl Admin {
    pub async fn connect(addr: &str, token: Option<&str>) -> Result<Admin, String> {
        let mut admin = Admin {
            stream: None,
            host: addr.to_owned(),
            auth: token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n")),
        };
        admin.reconnect().await?;
        Ok(admin)
    }

    async fn reconnect(&mut self) -> Result<&mut BufReader<TcpStream>, String> {
        let stream = TcpStream::connect(&self.host)
            .await
            .map_err(|e| format!("admin {}: {e}", self.host))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(self.stream.insert(BufReader::new(stream)))
    }

    /// POSTs JSON; returns the status code.
    pub async fn post(&mut self, path: &str, body: &str) -> Result<u16, String> {
        self.request("POST", path, body)
            .await
            .map(|(status, _)| status)
    }

    /// GETs `path`; returns the status code and the body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), String> {
        self.request("GET", path, "").await
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.auth,
            body.len()
        );
        let io = |e: std::io::Error| e.to_string();
        let stream = match self.stream.as_mut() {
            Some(s) => s,
            None => self.reconnect().await?,
        };
        stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(io)?;
        let mut line = String::new();
        stream.read_line(&mut line).await.map_err(io)?;
        let status = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("bad status line {line:?}"))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            stream.read_line(&mut line).await.map_err(io)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.trim().eq_ignore_ascii_case("close");
                }
            }
        }
        let mut answer = vec![0u8; length];
        stream.read_exact(&mut answer).await.map_err(io)?;
        if close {
            self.stream = None;
        }
        Ok((status, answer))
    }
}

pub struct Counts {
    /// Receivers that have started reading; pushes start once every link has one.
    pub listening: AtomicU64,
    pub duplicates: AtomicU64,
    pub latency_us: Mutex<Histogram<u64>>,
    /// Deliveries go to `events`.
    pub progress: Arc<Progress>,
    /// With churn: links closed and opened again, and how many of those resumes the server
    /// could not recover (pushes may then be missing).
    pub reconnects: AtomicU64,
    pub not_recovered: AtomicU64,
}

/// Links leaving and coming back while pushes flow: each link reconnects every `1 / per_s`
/// seconds, at a phase of its own, so `per_s` of all links churn each second.
#[derive(Clone, Copy)]
pub struct Churn {
    pub per_s: f64,
}

impl Churn {
    /// When link `i` first leaves: spread over one period by the golden ratio, so any number
    /// of links churns evenly.
    fn first(&self, i: usize, start: Instant) -> (Instant, Duration) {
        let period = Duration::from_secs_f64(1.0 / self.per_s);
        let phase = (i as f64 * 0.618_033_988_75).fract();
        (start + period.mul_f64(phase), period)
    }
}

/// Receives pushes on link `i` until `done` says so: acks each (ringway), records its latency
/// once per key. With `churn`, the link leaves now and then (until `until`, the end of the
/// sending window) and comes back resuming its stream after the last offset it had; a push
/// seen twice across that is counted once.
pub async fn receive(
    mut link: Link,
    i: usize,
    until: Instant,
    mut done: watch::Receiver<bool>,
    counts: Arc<Counts>,
    churn: Option<Churn>,
) {
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut seen = std::collections::HashSet::new();
    let mut leave = churn.map(|c| c.first(i, Instant::now()));
    let mut last_offset = 0;
    let mut stream_epoch = String::new();
    counts.listening.fetch_add(1, Relaxed);
    loop {
        let leaving = leave.filter(|(at, _)| *at < until);
        let got = tokio::select! {
            got = next_push(&mut link) => Some(got),
            _ = done.wait_for(|d| *d) => break,
            _ = sleep_until(leaving.map(|(at, _)| at)) => None,
        };
        let Some(got) = got else {
            let Some((at, period)) = leaving else {
                break;
            };
            leave = Some((at + period, period));
            let epoch = link
                .hello
                .as_ref()
                .map(|h| h.epoch.clone())
                .unwrap_or_default();
            let since = (!epoch.is_empty()).then(|| format!("{epoch}:{last_offset}"));
            let resuming = since.is_some();
            // Acks still queued leave first, or the stream would replay what was acked.
            let _ = futures_util::SinkExt::flush(&mut link.ws).await;
            link = match link.reconnect(since, &counts.progress.refused).await {
                Ok(l) => l,
                Err(_) => {
                    counts.progress.errors.fetch_add(1, Relaxed);
                    break;
                }
            };
            counts.reconnects.fetch_add(1, Relaxed);
            if resuming && !link.hello.as_ref().is_some_and(|h| h.recovered) {
                counts.not_recovered.fetch_add(1, Relaxed);
            }
            continue;
        };
        let Some((key, latency_ns, offset)) = got else {
            break;
        };
        let epoch = link.hello.as_ref().map_or("", |h| h.epoch.as_str());
        if epoch != stream_epoch {
            // A new epoch counts its offsets from 1 again.
            stream_epoch = epoch.to_owned();
            last_offset = 0;
        }
        last_offset = last_offset.max(offset);
        if !seen.insert(key) {
            counts.duplicates.fetch_add(1, Relaxed);
            continue;
        }
        counts.progress.events.fetch_add(1, Relaxed);
        local.saturating_record(latency_ns / 1000);
    }
    let _ = counts.latency_us.lock().await.add(&local);
}

/// Waits, once pushes stop, until `events` reaches `expected` or stays still for `quiet`
/// (at most `max`); returns the seconds waited, so a report tells late from lost.
pub async fn drain(events: &AtomicU64, expected: u64, quiet: Duration, max: Duration) -> f64 {
    let start = Instant::now();
    let (mut seen, mut moved) = (events.load(Relaxed), start);
    while seen < expected && moved.elapsed() < quiet && start.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = events.load(Relaxed);
        if now != seen {
            (seen, moved) = (now, Instant::now());
        }
    }
    start.elapsed().as_secs_f64()
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The next push's key, how long it took to arrive and its stream offset (0: not stored);
/// acks it on a ringway link. The time is taken before the ack goes out, so acking costs
/// ringway's figures nothing that sockudo's (no acks) are spared. `None` once the link ends.
async fn next_push(link: &mut Link) -> Option<(String, u64, u64)> {
    loop {
        if link.target == Target::Pusher {
            let ev = link.next_pusher_event().await?;
            if ev["event"] != "push" {
                continue;
            }
            let data = ev["data"].as_str().unwrap_or_default();
            let mut parts = data.split(' ');
            let key = parts.next().unwrap_or_default().to_owned();
            let sent = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            return Some((key, now_ns().saturating_sub(sent), 0));
        }
        let f = link.next_frame_flushing().await?;
        if f.cmd != Cmd::Downstream as i32 {
            continue;
        }
        if let Some(named) = &f.connected {
            // The stream began (or began again) while the link was open: its first push
            // names the epoch a resume must give.
            link.hello.get_or_insert_with(Default::default).epoch = named.epoch.clone();
        }
        let sent = f
            .body
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let latency = now_ns().saturating_sub(sent);
        if f.seq == 0 {
            // Best effort (a room message): nothing to ack.
            return Some((f.key, latency, f.offset));
        }
        let ack = Frame {
            cmd: Cmd::DownstreamAck as i32,
            key: f.key.clone(),
            ..Default::default()
        };
        let msg = link.message(&ack);
        let _ = futures_util::SinkExt::feed(&mut link.ws, msg).await;
        return Some((f.key, latency, f.offset));
    }
}

/// Where pushes go.
pub enum Api {
    /// `PushMessage` records produced to a Kafka topic that ringway consumes (accepted = the
    /// broker confirmed the record).
    Kafka {
        producer: FutureProducer,
        topic: String,
        biz: u64,
    },
    /// ringway's `POST /v1/push` (202 = accepted).
    Ringway { biz: u64 },
    /// ringway's `POST /v1/rooms/publish`, best effort, to the room the push "names".
    RingwayRoom { biz: u64 },
    /// Pusher's `POST /apps/{id}/events`, signed with the app secret (200 = accepted).
    Pusher {
        app_id: String,
        key: String,
        secret: String,
    },
}

impl Api {
    pub fn kafka(brokers: &str, topic: &str, biz: u64) -> Result<Api, String> {
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "1")
            .create()
            .map_err(|e| format!("--kafka {brokers}: {e}"))?;
        Ok(Api::Kafka {
            producer,
            topic: topic.to_owned(),
            biz,
        })
    }

    /// Sends one push stamped `stamp_ns` (its send time on the wall clock, ns); true if the server
    /// (or broker) took it.
    async fn deliver(
        &self,
        admin: &mut Admin,
        key: &str,
        to: &[&String],
        size: usize,
        stamp_ns: u64,
    ) -> Result<bool, String> {
        if let Api::Kafka {
            producer,
            topic,
            biz,
        } = self
        {
            let push = ringway::proto::PushMessage {
                biz_id: *biz,
                user_ids: to.iter().map(|u| u.to_string()).collect(),
                key: key.to_owned(),
                body: stamped_body(stamp_ns, size).into(),
                ..Default::default()
            };
            let payload = prost::Message::encode_to_vec(&push);
            let record = FutureRecord::<str, [u8]>::to(topic)
                .key(key)
                .payload(&payload);
            return Ok(producer.send(record, Duration::from_secs(5)).await.is_ok());
        }
        let (path, body, accepted) = self.request(key, to, size, stamp_ns);
        Ok(admin.post(&path, &body).await? == accepted)
    }

    /// The request path (with query) and body for one push of `body_len` bytes.
    fn request(
        &self,
        key: &str,
        to: &[&String],
        body_len: usize,
        stamp_ns: u64,
    ) -> (String, String, u16) {
        match self {
            Api::Kafka { .. } => unreachable!("Kafka pushes are produced, not posted"),
            Api::Ringway { biz } => {
                let b64 = stamped_base64(stamp_ns, body_len);
                let json =
                    serde_json::json!({"biz_id": biz, "user_ids": to, "key": key, "body": b64});
                ("/v1/push".into(), json.to_string(), 202)
            }
            Api::RingwayRoom { biz } => {
                let b64 = stamped_base64(stamp_ns, body_len);
                let json =
                    serde_json::json!({"biz_id": biz, "room": to[0], "key": key, "body": b64});
                ("/v1/rooms/publish".into(), json.to_string(), 202)
            }
            Api::Pusher {
                app_id,
                key: app_key,
                secret,
            } => {
                let mut data = format!("{key} {stamp_ns} ");
                let pad = body_len.saturating_sub(data.len());
                data.extend(std::iter::repeat_n('x', pad));
                let json = serde_json::json!({"name": "push", "channels": to, "data": data});
                let body = json.to_string();
                let path = format!("/apps/{app_id}/events");
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let query = pusher_query(&path, app_key, secret, ts, &body);
                (format!("{path}?{query}"), body, 200)
            }
        }
    }
}

/// A push body of `len` bytes (at least 8) that starts with its send time, read back by
/// [`next_push`].
fn stamped_body(stamp_ns: u64, len: usize) -> Vec<u8> {
    let mut body = stamp_ns.to_le_bytes().to_vec();
    body.resize(len.max(8), b'x');
    body
}

/// [`stamped_body`] as the JSON APIs take it.
fn stamped_base64(stamp_ns: u64, len: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(stamped_body(stamp_ns, len))
}

/// The signed query of a Pusher REST call: the auth parameters in key order, then
/// `auth_signature` = HMAC-SHA256 of "POST\n{path}\n{those parameters}" with the app secret.
fn pusher_query(path: &str, key: &str, secret: &str, ts: u64, body: &str) -> String {
    let md5 = hex(&Md5::digest(body.as_bytes()));
    let query = format!("auth_key={key}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("POST\n{path}\n{query}").as_bytes());
    format!(
        "{query}&auth_signature={}",
        hex(&mac.finalize().into_bytes())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// When one sender posts: push `n` of a `rate`-per-second schedule that runs from `start` to
/// `until` is due at `start + n / rate`, and this sender takes every `step`-th from `first` on.
#[derive(Clone, Copy)]
pub struct Schedule {
    pub rate: u32,
    pub start: Instant,
    pub until: Instant,
    pub first: u64,
    pub step: u64,
}

impl Schedule {
    pub fn all(rate: u32, start: Instant, until: Instant) -> Schedule {
        Schedule {
            rate,
            start,
            until,
            first: 0,
            step: 1,
        }
    }

    /// The schedule dealt out to `senders` (at least one), one share each.
    pub fn split(self, senders: u64) -> impl Iterator<Item = Schedule> {
        (0..senders).map(move |first| Schedule {
            first,
            step: senders,
            ..self
        })
    }
}

/// Posts the pushes of `schedule`, push `n` going to `fanout` consecutive users from
/// `n * fanout` (round robin over `users`). Returns (pushes accepted, pushes refused).
pub async fn send(
    admin: &mut Admin,
    api: &Api,
    users: &[String],
    fanout: usize,
    size: usize,
    schedule: Schedule,
) -> Result<(u64, u64), String> {
    let Schedule {
        rate,
        start,
        until,
        first,
        step,
    } = schedule;
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let fanout = fanout.min(users.len());
    let (mut ok, mut refused) = (0u64, 0u64);
    let mut answered = start;
    for n in (first..).step_by(step as usize) {
        let due = start + gap.mul_f64(n as f64);
        // A server slower than the rate falls behind: stop at the end of the window all the same.
        if due >= until || Instant::now() >= until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let to: Vec<&String> = (0..fanout)
            .map(|i| &users[(n as usize * fanout + i) % users.len()])
            .collect();
        // A push held up by the server's late answer to the one before is stamped with the time
        // it was due: that wait is part of its latency too (coordinated omission). One that is
        // only as late as this task's own timer is stamped with the time it leaves.
        let held_up = if answered > due {
            due.elapsed()
        } else {
            Duration::ZERO
        };
        let stamp = now_ns().saturating_sub(held_up.as_nanos() as u64);
        let took = api
            .deliver(admin, &format!("p{n}"), &to, size, stamp)
            .await?;
        answered = Instant::now();
        if took {
            ok += 1;
        } else {
            refused += 1;
        }
    }
    Ok((ok, refused))
}

#[cfg(test)]
mod tests {
    /// The worked example of Pusher's REST API authentication documentation.
    #[test]
    fn signs_like_the_pusher_documentation() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = super::pusher_query(
            "/apps/3/events",
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            1353088179,
            body,
        );
        assert_eq!(
            q,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
