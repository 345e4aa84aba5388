//! Opening links and driving them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use ringway::auth::{Identity, mint_hs256_in};
use ringway::proto::{Cmd, Frame};
use ringway::protocol::Codec;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::progress::Progress;
use crate::wire::Wire;
use crate::{Common, Target};

pub struct Link {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub codec: Codec,
    pub target: Target,
    /// What CONNECTED said (ringway): the user's stream, and whether a resume recovered.
    pub hello: Option<ringway::proto::Connected>,
    /// How to open this link again (a churning link reconnects as itself).
    redial: Arc<Redial>,
}

struct Redial {
    server: SocketAddr,
    source: IpAddr,
    how: How,
}

/// Links opened at once at most, so a ramp does not flood the accept queue.
const IN_FLIGHT: usize = 256;

/// Opens `common.links` links at `connect_rate`, spread over the source addresses. Also returns
/// each link's connect time (TCP connect to CONNECTED) in microseconds.
pub async fn open_all(
    common: &Common,
    progress: &Arc<Progress>,
) -> Result<(Vec<Link>, Histogram<u64>), String> {
    open_resuming(common, progress, &|_| None).await
}

/// As [`open_all`], each link `i` resuming its user's stream from `since(i)` when given.
pub async fn open_resuming(
    common: &Common,
    progress: &Arc<Progress>,
    since: &(dyn Fn(usize) -> Option<String> + Sync),
) -> Result<(Vec<Link>, Histogram<u64>), String> {
    let server: SocketAddr = tokio::net::lookup_host(&common.server)
        .await
        .map_err(|e| format!("resolving {}: {e}", common.server))?
        .next()
        .ok_or("server address resolves to nothing")?;
    let gap = Duration::from_secs_f64(1.0 / f64::from(common.connect_rate.max(1)));
    let tls = common.tls_ca.as_deref().map(tls_config).transpose()?;
    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mine = common.my_links();
    let mut tasks = Vec::with_capacity(mine.len());
    let start = Instant::now();
    for (n, i) in mine.enumerate() {
        let due = start + gap.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let source = common.sources[i % common.sources.len()];
        let user = format!("{}{i}", common.user_prefix);
        let who = Identity {
            biz_id: common.biz,
            user_id: user.as_str().into(),
            device_id: "d".into(),
        };
        let rooms: Vec<String> = common.room.iter().cloned().collect();
        let how = How {
            token: mint_hs256_in(common.jwt_secret.as_bytes(), &who, 3600, &rooms),
            channel: common.room.clone().unwrap_or_else(|| user.clone()),
            codec: common.codec,
            target: common.target,
            app_key: common.app_key.clone(),
            tls: tls.clone(),
            since: since(i),
        };
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = connect_retrying(server, source, how, &progress.refused).await;
            drop(permit);
            match &r {
                Ok(_) => progress.links.fetch_add(1, Relaxed),
                Err(_) => progress.errors.fetch_add(1, Relaxed),
            };
            r.map(|l| (l, started.elapsed()))
        }));
    }
    let mut links = Vec::with_capacity(tasks.len());
    let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut failed = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((l, took)) => {
                times.saturating_record(took.as_micros() as u64);
                links.push(l);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} links failed; first: {}",
            links.len() + failed,
            first_error.unwrap_or_default()
        ));
    }
    Ok((links, times))
}

/// Who a link logs in as and how it speaks.
#[derive(Clone)]
struct How {
    token: String,
    /// The Pusher channel the link subscribes to: its room, else its user's own.
    channel: String,
    codec: Codec,
    target: Target,
    app_key: String,
    /// Set with --tls-ca: the links speak wss://.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `EPOCH:OFFSET` to resume the user's stream from.
    since: Option<String>,
}

/// A TLS client that trusts exactly the certificates in `ca` (a bench's own self-signed one).
fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TCP connection from `source` to `server`, without Nagle.
pub async fn dial(server: SocketAddr, source: IpAddr) -> Result<TcpStream, String> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// A 503 from an admission-limited server: retry after this long.
pub struct Refused(pub Duration);

/// Why a connect failed: refused for now (retry), or an error.
pub enum ConnectError {
    Refused(Duration),
    Failed(String),
}

impl From<String> for ConnectError {
    fn from(e: String) -> Self {
        ConnectError::Failed(e)
    }
}

impl From<Refused> for ConnectError {
    fn from(r: Refused) -> Self {
        ConnectError::Refused(r.0)
    }
}

/// Connects, retrying each 503 after the server's Retry-After (counted in `refused`).
async fn connect_retrying(
    server: SocketAddr,
    source: IpAddr,
    how: How,
    refused: &AtomicU64,
) -> Result<Link, String> {
    loop {
        match connect(server, source, &how).await {
            Ok(l) => return Ok(l),
            Err(ConnectError::Refused(wait)) => {
                refused.fetch_add(1, Relaxed);
                tokio::time::sleep(wait).await;
            }
            Err(ConnectError::Failed(e)) => return Err(e),
        }
    }
}

async fn connect(server: SocketAddr, source: IpAddr, how: &How) -> Result<Link, ConnectError> {
    let stream = dial(server, source).await?;
    let scheme = if how.tls.is_some() { "wss" } else { "ws" };
    let url = match how.target {
        Target::Pusher => format!(
            "{scheme}://{server}/app/{}?protocol=7&client=ringway-load&version=1.0",
            how.app_key
        ),
        _ => match &how.since {
            Some(since) => format!("{scheme}://{server}/ws?since={since}"),
            None => format!("{scheme}://{server}/ws"),
        },
    };
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    h.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", how.token)).map_err(|e| e.to_string())?,
    );
    if how.target == Target::Ringway {
        // Echo and Pusher peers negotiate no subprotocol; offering one would fail their
        // handshake.
        h.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(how.codec.subprotocol()),
        );
    }
    // Small buffers: the load generator holds as many links as the server. Frames a link
    // queues with `feed` wait (up to 4 KiB) for its next flush, so a window refilled at once
    // goes out in one write; `send` still writes at once.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);
    let connector = match &how.tls {
        Some(tls) => Connector::Rustls(tls.clone()),
        None => Connector::Plain,
    };
    let handshake =
        tokio_tungstenite::client_async_tls_with_config(req, stream, Some(config), Some(connector));
    let ws = match handshake.await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 503 => {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1u64);
            return Err(Refused(Duration::from_secs(wait)).into());
        }
        Err(e) => return Err(format!("handshake: {e}").into()),
    };
    let mut link = Link {
        ws,
        codec: how.codec,
        target: how.target,
        hello: None,
        redial: Arc::new(Redial {
            server,
            source,
            how: how.clone(),
        }),
    };
    match how.target {
        Target::Plain | Target::Tcp => Ok(link),
        Target::Pusher => {
            link.pusher_subscribe(&how.channel).await?;
            Ok(link)
        }
        Target::Ringway => match link.next_frame().await {
            Some(f) if f.cmd == Cmd::Connected as i32 => {
                link.hello = f.connected;
                Ok(link)
            }
            other => Err(format!("expected CONNECTED, got {other:?}").into()),
        },
    }
}

impl Link {
    /// Closes the link and opens it again as the same user and device, resuming the user's
    /// stream from `since` (`EPOCH:OFFSET`) when given; 503s are retried (counted in
    /// `refused`).
    pub async fn reconnect(
        mut self,
        since: Option<String>,
        refused: &AtomicU64,
    ) -> Result<Link, String> {
        let _ = self.ws.close(None).await;
        drop(self.ws);
        let r = &self.redial;
        let how = How {
            since,
            ..r.how.clone()
        };
        connect_retrying(r.server, r.source, how, refused).await
    }

    /// Waits for `pusher:connection_established`, subscribes to the user's channel and waits
    /// for the confirmation.
    async fn pusher_subscribe(&mut self, channel: &str) -> Result<(), String> {
        self.pusher_event("pusher:connection_established").await?;
        let sub = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
        self.ws
            .send(Message::Text(sub.to_string().into()))
            .await
            .map_err(|e| e.to_string())?;
        self.pusher_event("pusher_internal:subscription_succeeded")
            .await
            .map(drop)
    }

    async fn pusher_event(&mut self, name: &str) -> Result<serde_json::Value, String> {
        match self.next_pusher_event().await {
            Some(ev) if ev["event"] == name => Ok(ev),
            other => Err(format!("expected {name}, got {other:?}")),
        }
    }

    /// The next Pusher event (JSON text); `None` once the link is closed.
    pub async fn next_pusher_event(&mut self) -> Option<serde_json::Value> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Hands the link's socket to a [`Wire`] for the echo's loop. Right after the handshake
    /// the server has sent nothing past CONNECTED, so the handshake's reader holds no bytes
    /// the wire would miss.
    pub fn into_wire(self, seed: u64) -> (Wire<MaybeTlsStream<TcpStream>>, Target) {
        (
            Wire::new(self.ws.into_inner(), self.codec, seed),
            self.target,
        )
    }

    pub fn message(&self, f: &Frame) -> Message {
        let mut out = Vec::with_capacity(64);
        self.codec.encode(f, &mut out);
        match self.codec {
            Codec::Proto => Message::Binary(Bytes::from(out)),
            Codec::Json => Message::Text(String::from_utf8(out).expect("JSON is UTF-8").into()),
        }
    }

    /// The next frame; if none has arrived yet, frames queued with `feed` go out first. Acks
    /// of pushes that arrived together then leave in one write.
    pub async fn next_frame_flushing(&mut self) -> Option<Frame> {
        if let Some(f) = self.next_frame().now_or_never() {
            return f;
        }
        let _ = self.ws.flush().await;
        self.next_frame().await
    }

    /// The next decoded frame; `None` once the link is closed.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Binary(b)) => return self.codec.decode(&b).ok(),
                Ok(Message::Text(t)) => return self.codec.decode(t.as_bytes()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

/// One link's closed-loop echo run.
pub struct EchoRun {
    pub deadline: Instant,
    /// Messages to send on this link at most (then the run ends once all are answered).
    pub messages: u64,
    pub body: Vec<u8>,
    pub pipeline: usize,
    pub prefix: String,
    pub hist: Arc<Mutex<Histogram<u64>>>,
    pub limited: Arc<AtomicU64>,
    /// Pushes received (and acked) meanwhile, in the mixed scenario.
    pub pushes: Arc<AtomicU64>,
    /// Acks go to `events`, failures to `errors`.
    pub progress: Arc<Progress>,
}

impl EchoRun {
    pub async fn drive(self, mut wire: Wire<MaybeTlsStream<TcpStream>>, target: Target) {
        let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut sent_at: HashMap<String, Instant> = HashMap::new();
        let mut n = 0u64;
        let body = Bytes::from(self.body.clone());
        // After RATE_LIMITED, no new message goes out before this; reading goes on.
        let mut resume_at = Instant::now();
        let mut arrived = Vec::new();
        // Frames are queued, then written together: a client with several messages to send
        // (the acks of pushes, the messages that refill its window) writes them at once,
        // rather than one write per frame.
        let mut unflushed = false;
        loop {
            while sent_at.len() < self.pipeline
                && n < self.messages
                && Instant::now() < self.deadline
                && Instant::now() >= resume_at
            {
                let key = format!("{}{n}", self.prefix);
                n += 1;
                let f = Frame {
                    cmd: Cmd::Upstream as i32,
                    key: key.clone(),
                    body: body.clone(),
                    ..Default::default()
                };
                wire.queue(&f);
                unflushed = true;
                sent_at.insert(key, Instant::now());
            }
            if std::mem::take(&mut unflushed) && wire.flush().await.is_err() {
                self.progress.errors.fetch_add(1, Relaxed);
                return;
            }
            if sent_at.is_empty() {
                if n < self.messages && resume_at > Instant::now() && resume_at < self.deadline {
                    tokio::time::sleep_until(resume_at.into()).await;
                    continue;
                }
                break;
            }
            let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(5), wire.next_frame()).await
            else {
                self.progress.errors.fetch_add(1, Relaxed);
                break;
            };
            // And whatever else has already arrived, so the refill above sends several.
            arrived.push(f);
            while let Some(Some(f)) = wire.next_frame().now_or_never() {
                arrived.push(f);
            }
            for f in arrived.drain(..) {
                let cmd = if target == Target::Plain && f.cmd == Cmd::Upstream as i32 {
                    Ok(Cmd::UpstreamAck)
                } else {
                    Cmd::try_from(f.cmd)
                };
                match cmd {
                    Ok(Cmd::UpstreamAck) => {
                        if let Some(t) = sent_at.remove(&f.key) {
                            local.saturating_record(t.elapsed().as_micros() as u64);
                            self.progress.events.fetch_add(1, Relaxed);
                        }
                    }
                    Ok(Cmd::RateLimited) => {
                        self.limited.fetch_add(1, Relaxed);
                        sent_at.remove(&f.key);
                        let wait = Duration::from_millis(u64::from(f.retry_after_ms));
                        resume_at = resume_at.max(Instant::now() + wait);
                    }
                    Ok(Cmd::Downstream) => {
                        self.pushes.fetch_add(1, Relaxed);
                        let ack = Frame {
                            cmd: Cmd::DownstreamAck as i32,
                            key: f.key,
                            ..Default::default()
                        };
                        wire.queue(&ack);
                        unflushed = true;
                    }
                    _ => {
                        self.progress.errors.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        let _ = self.hist.lock().await.add(&local);
        wire.close().await;
    }
}
