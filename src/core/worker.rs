//! The glommio shell of one worker core. It accepts sockets, runs the upgrade handshake, hands
//! each authenticated socket to its owner core, and moves bytes between sockets and the shard.
//! Rules live in the shard; this file only does I/O and bookkeeping of tasks.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream, UnixStream};
use tracing::{debug, warn};

use super::alarm::Alarm;
use super::batcher::Batcher;
use super::conn::{Conn, Socket};
use super::embedded::{Embedded, LocalBizs, StoreDownPolicy, StreamStore};
use super::inbox::{CoreHandle, CoreMsg, Handoff, Inbox};
use super::readiness::Readiness;
use super::services::{ServiceCall, Services};
use super::shard::{Audience, Delivery, Event, Shard, ShardConfig, Target, Transmit};
use super::stream::{StreamLimits, Streams};
use crate::auth::{AuthError, Verified, Verifier};
use crate::core::admission::{Admission, Refusal, Ticket};
use crate::core::tls::TlsFiles;
use crate::link::ConnId;
use crate::link::idem::{IdemTtl, MemoryIdemStore};
use crate::metrics::CoreMetrics;
use crate::protocol::events;
use crate::protocol::handshake::{self, Reject, Request, Route};
use crate::{FastMap, owner_core};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// The settings every worker core shares, cloned onto each core's thread at start.
#[derive(Clone)]
pub struct Rules {
    pub shard: ShardConfig,
    pub verifier: Arc<Verifier>,
    pub token_grace: Duration,
    pub allowed_origins: Arc<Vec<String>>,
    pub echo: bool,
    pub idem_ttl: IdemTtl,
    pub streams: StreamLimits,
    /// The users' streams live in Redis, not in each core.
    pub shared_streams: bool,
    /// Calls to the control thread, when Redis or a gRPC backend is configured.
    pub calls: Option<tokio::sync::mpsc::Sender<ServiceCall>>,
    /// Set with Redis: what to do while it is unreachable.
    pub shared_store: Option<StoreDownPolicy>,
    /// Bizs served by the loopback backend on the core; the rest go to the control thread
    /// in per-biz batches of this size and delay.
    pub local_bizs: Arc<LocalBizs>,
    pub batching: (usize, Duration),
    /// Undelivered pushes also go to Kafka.
    pub report_to_kafka: bool,
    pub handshake_timeout: Duration,
    pub admission: Arc<Admission>,
    /// Certificate for TLS on the client port, when configured.
    pub tls: Option<Arc<TlsFiles>>,
    pub peers: Vec<CoreHandle>,
}

/// What is one core's own: its listener, its inbox and its counters.
pub struct Core {
    pub index: usize,
    pub listener: OwnedFd,
    pub inbox: Inbox,
    pub metrics: Arc<CoreMetrics>,
}

/// The cores' inboxes: the handles anyone may send with, and each core's receiving end.
pub fn inboxes(cores: usize, capacity: usize) -> Result<(Vec<CoreHandle>, Vec<Inbox>), String> {
    let pairs = (0..cores)
        .map(|_| super::inbox::channel(capacity))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("creating core inboxes: {e}"))?;
    Ok(pairs.into_iter().unzip())
}

/// Bytes read from a socket per `recv`. One buffer serves every link of the core: a link that
/// waits for input holds no buffer at all.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Reads per link before it yields to the others.
const READ_BUDGET: usize = 16;
/// Inbox messages handled per batch before other tasks get a turn.
const INBOX_BATCH: usize = 256;

struct Worker {
    index: usize,
    shard: RefCell<Shard>,
    scratch: RefCell<Vec<u8>>,
    verifier: Arc<Verifier>,
    /// Added to a token's `exp` for the link's deadline (`--token-grace-ms`).
    token_grace: Duration,
    allowed_origins: Arc<Vec<String>>,
    services: RefCell<Services>,
    handshake_timeout: Duration,
    admission: Arc<Admission>,
    tls: Option<Arc<TlsFiles>>,
    peers: Vec<CoreHandle>,
    metrics: Arc<CoreMetrics>,
    next_conn: Cell<ConnId>,
    /// The task that owns each link's socket, with the attachment generation it serves (0 for
    /// a WebSocket), woken when the shard says the link has something for it.
    wakers: RefCell<FastMap<ConnId, (u32, Waker)>>,
    /// The WebSocket link whose task is running now: it writes what it queued before it reads
    /// again, so waking it would only poll it once more for nothing.
    running: Cell<Option<ConnId>>,
    readiness: Rc<Readiness>,
    /// The timer loop's sleep, pulled in by events that schedule something sooner.
    alarm: Alarm,
}

/// How each worker core's executor runs (`--preempt-ms`, `--ring-depth`).
pub struct Executor {
    pub preempt: Duration,
    pub ring_depth: usize,
}

/// A worker core's thread, ended by [`CoreMsg::Stop`].
pub type Thread = glommio::ExecutorJoinHandle<()>;

/// How long a worker core may take from its thread's start to its first accept. A core is
/// up in milliseconds; on a host busy with other work (a build, other nodes starting) one took
/// over 10 s in a test run, so the bound only guards against a core that never starts.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Starts a worker core per [`Core`], each on a thread of its own (core N pinned to the N-th
/// of `cpus`, when given), and returns once every one accepts: a node that says it is ready
/// serves on every core.
pub fn start_all(
    rules: &Rules,
    cores: Vec<Core>,
    cpus: Option<&[usize]>,
    executor: &Executor,
) -> Result<Vec<Thread>, String> {
    let began = Instant::now();
    let (accepting, started) = std::sync::mpsc::channel();
    let n = cores.len();
    let mut threads = Vec::with_capacity(n);
    for core in cores {
        let i = core.index;
        let cpu = cpus.map(|c| c[i % c.len()]);
        let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
        let (rules, accepting) = (rules.clone(), accepting.clone());
        let thread = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("ringway-w{i}"))
            .preempt_timer(executor.preempt)
            .ring_depth(executor.ring_depth)
            .spawn(move || run(rules, core, accepting))
            .map_err(|e| format!("starting worker {i}: {e}"))?;
        threads.push(thread);
    }
    let deadline = Instant::now() + START_LIMIT;
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        started
            .recv_timeout(left)
            .map_err(|_| format!("a worker core did not start within {START_LIMIT:?}"))?;
    }
    crate::warn_if_slow("starting the worker cores", began);
    Ok(threads)
}

/// Waits for the worker threads to end, at most `within` (a core that does not stop must not
/// keep the process alive); false if some did not.
pub fn join(threads: Vec<Thread>, within: Duration) -> bool {
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for t in threads {
            let _ = t.join();
        }
        let _ = done.send(());
    });
    ended.recv_timeout(within).is_ok()
}

async fn run(setup: Rules, core: Core, accepting: std::sync::mpsc::Sender<usize>) {
    setup.peers[core.index].adopt_current_thread();
    let readiness = Readiness::new().expect("a worker core needs an epoll set");
    let now = Instant::now();
    let seed = core.index as u64 ^ now.elapsed().as_nanos() as u64 ^ std::process::id() as u64;
    // Epochs must differ across restarts and cores: a clock-seeded generator of their own.
    let epochs = SmallRng::seed_from_u64(rand::random());
    let w = Rc::new(Worker {
        index: core.index,
        shard: RefCell::new(Shard::new(
            setup.shard,
            Embedded {
                store: MemoryIdemStore::new(setup.idem_ttl),
                shared_store: setup.shared_store,
                local_bizs: setup.local_bizs,
                echo: setup.echo,
                streams: match setup.shared_streams {
                    true => StreamStore::Shared,
                    false => StreamStore::Local(Streams::new(setup.streams, epochs)),
                },
            },
            core.metrics.clone(),
            seed,
            now,
        )),
        scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
        verifier: setup.verifier,
        token_grace: setup.token_grace,
        allowed_origins: setup.allowed_origins,
        services: RefCell::new(Services {
            core: core.index,
            calls: setup.calls,
            batcher: Batcher::new(setup.batching.0, setup.batching.1),
            timers: Vec::new(),
            pending_claims: Vec::new(),
            pending_streams: Default::default(),
            flush_queued: false,
            report_to_kafka: setup.report_to_kafka,
            tally: Default::default(),
        }),
        handshake_timeout: setup.handshake_timeout,
        admission: setup.admission,
        tls: setup.tls,
        peers: setup.peers,
        metrics: core.metrics,
        next_conn: Cell::new(1),
        wakers: RefCell::default(),
        running: Cell::new(None),
        readiness: readiness.clone(),
        alarm: Alarm::default(),
    });
    // SAFETY: the fd is a listening TCP socket created for this core and owned by nobody else.
    let listener = unsafe { TcpListener::from_raw_fd(core.listener.into_raw_fd()) };
    glommio::spawn_local(readiness.run()).detach();
    let acceptor = glommio::spawn_local(accept_loop(w.clone(), listener, accepting));
    glommio::spawn_local(timer_loop(w.clone())).detach();
    inbox_loop(w.clone(), core.inbox, acceptor).await;
}

async fn accept_loop(
    w: Rc<Worker>,
    listener: TcpListener,
    accepting: std::sync::mpsc::Sender<usize>,
) {
    // The first accept is about to be armed: the node may say it is ready.
    let _ = accepting.send(w.index);
    loop {
        match listener.accept().await {
            Ok(stream) => {
                // The ticket counts the connection from here on; one over the per-address cap
                // is closed now, unread, so a flood from one address holds no fds.
                let ticket = match stream.peer_addr() {
                    Ok(peer) => w.admission.try_admit(peer.ip(), Instant::now()),
                    Err(_) => continue,
                };
                if matches!(ticket, Err(Refusal::PerIp)) {
                    w.metrics.per_ip_closed.inc();
                    continue;
                }
                glommio::spawn_local(handshake(w.clone(), stream, ticket)).detach();
            }
            Err(e) => {
                let e = std::io::Error::from(e);
                // A listener that was shut down (at exit, by `shut_every_socket`) answers
                // EINVAL for good: each core logged a misleading warning after "drained".
                if e.raw_os_error() == Some(libc::EINVAL) {
                    debug!(
                        core = w.index,
                        "the listener was shut down: accepting no more"
                    );
                    return;
                }
                // Out of fds or memory: back off instead of spinning; existing links go on.
                warn!(core = w.index, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

enum HandshakeEnd {
    /// The peer went away or sent nothing useful before closing.
    Gone,
    TimedOut,
    Refused(Reject),
}

/// Reads and checks the upgrade request, then opens the link here or on its owner core.
/// The admission ticket is taken first and travels with the socket for the link's whole life;
/// a refused client still gets its request read, so the 503 reaches it instead of a reset.
async fn handshake(w: Rc<Worker>, tcp: TcpStream, ticket: Result<Ticket, Refusal>) {
    let _ = tcp.set_nodelay(true);
    let Some(tcp) = w.watch(tcp) else { return };
    // Under TLS the handshake runs inside the first reads, within the same deadline.
    let mut stream = match &w.tls {
        None => Conn::Plain(tcp),
        Some(files) => match rustls::ServerConnection::new(files.current()) {
            Ok(session) => Conn::tls(tcp, session),
            Err(e) => {
                warn!(core = w.index, error = %e, "cannot start a TLS session");
                return;
            }
        },
    };
    let max_body = w.shard.borrow().config().max_message_bytes;
    let read = read_request(&mut stream, max_body);
    let deadline = async {
        glommio::timer::sleep(w.handshake_timeout).await;
        Err(HandshakeEnd::TimedOut)
    };
    let (req, buf) = match futures_lite::future::or(read, deadline).await {
        Ok(v) => v,
        Err(HandshakeEnd::Gone) => return,
        Err(HandshakeEnd::TimedOut) => {
            return reject(&w, stream, Reject::new(408, "handshake timed out"), None).await;
        }
        Err(HandshakeEnd::Refused(r)) => return reject(&w, stream, r, None).await,
    };
    if let Some(origin) = req.origin()
        && !w.allowed_origins.is_empty()
        && !w.allowed_origins.iter().any(|o| o == origin)
    {
        return reject(&w, stream, Reject::new(403, "origin not allowed"), None).await;
    }
    if let Request::Http(h) = &req
        && h.route == Route::Preflight
    {
        return answer(stream, events::preflight_response(h.origin.as_deref())).await;
    }
    // A drain may have begun while this request was read.
    let ticket = match ticket {
        Ok(_) if w.admission.is_closed() => Err(Refusal::Closed),
        other => other,
    };
    let ticket = match ticket {
        Ok(t) => t,
        Err(r) => return reject(&w, stream, refused(r), browser_origin(&req)).await,
    };
    let token = match w.verifier.verify(req.token()) {
        Ok(token) => token,
        Err(e) => {
            debug!(core = w.index, error = %e, "auth refused");
            let reason = match e {
                AuthError::Missing => "missing token",
                AuthError::Invalid(_) => "invalid or expired token",
            };
            return reject(&w, stream, Reject::new(401, reason), browser_origin(&req)).await;
        }
    };
    let leftover = buf[req.head_len()..].to_vec();
    let owner = owner_core(token.who.biz_id, &token.who.user_id, w.peers.len());
    if owner == w.index {
        open_link(&w, stream, token, req, leftover, ticket);
        return;
    }
    hand_off(&w, owner, stream, token, req, leftover, ticket).await;
}

/// Moves an authenticated socket to its owner core; if that core's inbox is full, the client
/// gets 503 here instead.
async fn hand_off(
    w: &Worker,
    owner: usize,
    stream: Conn,
    token: Verified,
    req: Request,
    leftover: Vec<u8>,
    ticket: Ticket,
) {
    // The socket moves to its owner core as a plain fd; this core's stream object closes only
    // its own duplicate.
    // Close-on-exec like every socket we open: a `--scale-up-cmd` child must not inherit
    // clients' sockets.
    // SAFETY: duplicates a valid open socket; the new fd is owned by the OwnedFd.
    let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        let r = Reject::new(503, "out of file descriptors");
        return reject(w, stream, r, browser_origin(&req)).await;
    }
    let fd = unsafe { OwnedFd::from_raw_fd(dup) };
    let tls = stream.into_tls();
    let msg = CoreMsg::Handoff(Box::new(Handoff {
        fd,
        tls,
        token,
        request: req,
        leftover,
        ticket,
    }));
    match w.peers[owner].send(msg) {
        Ok(()) => w.metrics.handoffs.inc(),
        Err(msg) => {
            // The message came back with the socket and its session: answer on them.
            let CoreMsg::Handoff(h) = msg else {
                unreachable!("the handoff we sent")
            };
            let r = Reject {
                status: 503,
                reason: "owner core overloaded",
                retry_after_s: Some(1),
            };
            let h = *h;
            if let Some(stream) = received(w, h.fd, h.tls) {
                reject(w, stream, r, browser_origin(&h.request)).await
            }
        }
    }
}

/// Reads the upgrade request (and a POST's whole body) off a new connection.
async fn read_request(
    stream: &mut Conn,
    max_body: usize,
) -> Result<(Request, Vec<u8>), HandshakeEnd> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HandshakeEnd::Gone)?;
        if n == 0 {
            return Err(HandshakeEnd::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
        let req = match handshake::parse(&buf) {
            Ok(Some(req)) => req,
            Ok(None) => continue,
            Err(r) => return Err(HandshakeEnd::Refused(r)),
        };
        // A POST's body is read whole before anything else happens.
        let need = match &req {
            Request::Http(h) if h.route == Route::Send => {
                if h.content_length > max_body {
                    let r = Reject::new(413, "body larger than the message size limit");
                    return Err(HandshakeEnd::Refused(r));
                }
                h.head_len + h.content_length
            }
            _ => 0,
        };
        if buf.len() >= need {
            return Ok((req, buf));
        }
    }
}

/// A socket handed over by another core, with its TLS session if it has one; `None` as for
/// [`Worker::watch`].
fn received(w: &Worker, fd: OwnedFd, tls: Option<Box<rustls::ServerConnection>>) -> Option<Conn> {
    // SAFETY: the fd is a connected TCP socket handed over whole by another core.
    let tcp = w.watch(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })?;
    Some(match tls {
        Some(session) => Conn::tls(tcp, *session),
        None => Conn::Plain(tcp),
    })
}

/// The answer to an upgrade the admission gate refused.
fn refused(r: Refusal) -> Reject {
    match r {
        Refusal::Closed => Reject {
            status: 503,
            reason: "server shutting down",
            retry_after_s: Some(5),
        },
        Refusal::Full { retry_after_s } => Reject {
            status: 503,
            reason: "node at its admission limit",
            retry_after_s: Some(retry_after_s),
        },
        // Closed at accept, before any request is read: never answered.
        Refusal::PerIp => Reject::new(429, "too many connections from this address"),
    }
}

/// Answers a refused request; `origin` (from [`browser_origin`]) adds CORS headers.
async fn reject(w: &Worker, mut stream: Conn, r: Reject, origin: Option<&str>) {
    w.metrics.rejected(r.status);
    let _ = stream
        .write_all(&handshake::reject_response(&r, origin))
        .await;
    let _ = stream.close().await;
}

/// The origin a refusal must name for the page's script to read it: set on the HTTP
/// transports' requests (past the origin check), not on WebSocket upgrades, whose refusals a
/// browser never shows to the page.
fn browser_origin(req: &Request) -> Option<&str> {
    match req {
        Request::Http(h) => h.origin.as_deref(),
        Request::WebSocket(_) => None,
    }
}

/// Writes a whole answer and ends the request.
async fn answer(mut stream: Conn, bytes: Vec<u8>) {
    let _ = stream.write_all(&bytes).await;
    let _ = stream.close().await;
}

fn open_link(
    w: &Rc<Worker>,
    stream: Conn,
    token: Verified,
    req: Request,
    mut leftover: Vec<u8>,
    ticket: Ticket,
) {
    let conn = w.next_conn.get();
    w.next_conn.set(conn + 1);
    let now = Instant::now();
    let expires = w.token_deadline(token.exp, now);
    let (who, rooms) = (token.who, token.rooms);
    let h = match req {
        Request::WebSocket(up) => {
            {
                let mut shard = w.shard.borrow_mut();
                shard.open(conn, who, &up, expires, now);
                // The token's rooms join at every connect.
                shard.join_link(conn, &rooms);
                shard.set_peer(conn, stream.peer());
                if !leftover.is_empty() {
                    shard.handle_bytes(conn, &mut leftover, now);
                }
            }
            w.after_events(now);
            glommio::spawn_local(link_task(w.clone(), conn, stream, ticket)).detach();
            return;
        }
        Request::Http(h) => h,
    };
    let origin = h.origin.clone();
    if h.route == Route::Send {
        let posted = w
            .shard
            .borrow_mut()
            .post(&who, &leftover[..h.content_length], expires, now);
        w.after_events(now);
        let origin = origin.as_deref();
        let resp = match posted {
            Ok(()) => events::response(202, "text/plain", origin, b""),
            Err((status, reason)) => {
                w.metrics.rejected(status);
                events::response(status, "text/plain", origin, reason.as_bytes())
            }
        };
        glommio::spawn_local(answer(stream, resp)).detach();
        return;
    }
    let poll = h.route == Route::Poll;
    let (conn, generation) = w.shard.borrow_mut().attach(conn, who, &h, expires, now);
    w.shard.borrow_mut().join_link(conn, &rooms);
    // The link now answers through this request's socket.
    w.shard.borrow_mut().set_peer(conn, stream.peer());
    w.after_events(now);
    let task = http_link_task(w.clone(), conn, generation, poll, stream, origin, ticket);
    glommio::spawn_local(task).detach();
}

/// Owns one WebSocket link's socket (and its admission ticket) for its whole life.
async fn link_task(w: Rc<Worker>, conn: ConnId, mut stream: Conn, _ticket: Ticket) {
    let mut write_shut = false;
    poll_fn(|cx| w.poll_link(cx, conn, &mut stream, &mut write_shut)).await;
    w.wakers.borrow_mut().remove(&conn);
    w.shard.borrow_mut().closed(conn);
    w.after_events(Instant::now());
    let _ = stream.close().await;
}

/// Serves an HTTP-transport link for one request: the event stream until it drops or another
/// request takes over, or one poll until it is answered. The link itself lives on.
async fn http_link_task(
    w: Rc<Worker>,
    conn: ConnId,
    generation: u32,
    poll: bool,
    mut stream: Conn,
    origin: Option<String>,
    _ticket: Ticket,
) {
    let mut req = HttpReq {
        conn,
        generation,
        origin,
        answer: poll.then_some(None),
    };
    poll_fn(|cx| w.poll_http(cx, &mut req, &mut stream)).await;
    {
        let mut wakers = w.wakers.borrow_mut();
        // A newer request's waker stays.
        if wakers.get(&conn).is_some_and(|(g, _)| *g == generation) {
            wakers.remove(&conn);
        }
    }
    w.shard
        .borrow_mut()
        .detach(conn, generation, Instant::now());
    w.after_events(Instant::now());
    let _ = stream.close().await;
}

impl Worker {
    /// Puts a client's socket in this core's epoll set. Fails only when the set cannot take it
    /// (out of kernel memory): the socket then closes, with a warning.
    fn watch(&self, tcp: TcpStream) -> Option<Socket> {
        Socket::new(tcp, &self.readiness)
            .inspect_err(|e| warn!(core = self.index, error = %e, "cannot watch a socket"))
            .ok()
    }

    /// Flushes what the shard queued for the link, then reads what the client sent. Returns
    /// Ready when the link is over.
    ///
    /// A closing link, once its close frame is out, half-closes the socket and reads until the
    /// client's EOF: closing at once would answer the client's in-flight bytes with a reset,
    /// which makes its kernel discard the close frame before the client reads the code.
    fn poll_link(
        self: &Rc<Self>,
        cx: &mut Context<'_>,
        conn: ConnId,
        stream: &mut Conn,
        write_shut: &mut bool,
    ) -> Poll<()> {
        for _ in 0..READ_BUDGET {
            let mut shard = self.shard.borrow_mut();
            let idle = match write_out(&mut shard, conn, cx, stream) {
                Some(idle) => idle,
                None => return Poll::Ready(()),
            };
            // TLS records the socket did not take yet (a no-op on plain TCP).
            if let Poll::Ready(Err(_)) = Pin::new(&mut *stream).poll_flush(cx) {
                return Poll::Ready(());
            }
            if idle == Some(true) && !*write_shut {
                stream.shutdown_write();
                *write_shut = true;
            }
            let mut scratch = self.scratch.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    let now = Instant::now();
                    shard.handle_bytes(conn, &mut scratch[..n], now);
                    drop((shard, scratch));
                    self.running.set(Some(conn));
                    self.after_events(now);
                    self.running.set(None);
                }
                Poll::Pending => {
                    self.park(conn, 0, cx);
                    return Poll::Pending;
                }
            }
        }
        // Used its budget: let the other links run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Moves an HTTP-transport link's output to the request's socket. An event stream writes
    /// as frames come; a poll takes everything queued as one answer (or an empty one when the
    /// shard says the poll is due) and is done once that is written. Returns Ready when this
    /// request is over.
    fn poll_http(
        self: &Rc<Self>,
        cx: &mut Context<'_>,
        req: &mut HttpReq,
        stream: &mut Conn,
    ) -> Poll<()> {
        let mut shard = self.shard.borrow_mut();
        if !shard.serves(req.conn, req.generation) {
            return Poll::Ready(());
        }
        let done = match &mut req.answer {
            Some(answer) => {
                if answer.is_none() {
                    *answer = shard.take_poll_answer(req.conn, req.origin.as_deref());
                }
                match answer {
                    Some(bytes) => loop {
                        if bytes.is_empty() {
                            break true;
                        }
                        match Pin::new(&mut *stream).poll_write(cx, bytes) {
                            Poll::Ready(Ok(n)) if n > 0 => drop(bytes.drain(..n)),
                            Poll::Ready(_) => return Poll::Ready(()),
                            Poll::Pending => break false,
                        }
                    },
                    None => false,
                }
            }
            None => match write_out(&mut shard, req.conn, cx, stream) {
                None => return Poll::Ready(()),
                // A closed stream is over once the close is out.
                Some(idle) => idle == Some(true),
            },
        };
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            // Not done before the socket has every byte (TLS keeps some itself).
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {}
        }
        if done {
            return Poll::Ready(());
        }
        // The client says nothing more on this request; a read shows when it goes away.
        let mut scratch = self.scratch.borrow_mut();
        loop {
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => break,
            }
        }
        drop(scratch);
        self.park(req.conn, req.generation, cx);
        Poll::Pending
    }

    /// When a link on a token that expires at `exp` (unix seconds) must end: `exp` plus the
    /// grace, as an instant of the core's clock (the wall clock is read only here).
    fn token_deadline(&self, exp: u64, now: Instant) -> Instant {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let end = Duration::from_secs(exp) + self.token_grace;
        now + end.saturating_sub(wall)
    }

    /// Keeps the socket task's waker, for when the shard says its link has something for it.
    fn park(&self, conn: ConnId, generation: u32, cx: &Context<'_>) {
        let mut wakers = self.wakers.borrow_mut();
        match wakers.get(&conn) {
            Some((g, w)) if *g == generation && w.will_wake(cx.waker()) => {}
            _ => {
                wakers.insert(conn, (generation, cx.waker().clone()));
            }
        }
    }

    /// Wakes the task of a link with something for its socket; it registers again when it
    /// next waits.
    fn wake(&self, conn: ConnId) {
        if self.running.get() == Some(conn) {
            return;
        }
        let waker = self.wakers.borrow_mut().remove(&conn);
        if let Some((_, w)) = waker {
            w.wake();
        }
    }

    /// Carries out what the shard asked for (see [`Event`]): wakes link tasks, sends claims,
    /// backend batches, store updates, presence and reports to the control thread.
    fn after_events(self: &Rc<Self>, now: Instant) {
        let mut shard = self.shard.borrow_mut();
        let mut services = self.services.borrow_mut();
        let (mut updates, mut presence, mut undelivered) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(event) = shard.poll_event() {
            match event {
                Event::Wake(conn) => self.wake(conn),
                Event::Claim(req) => services.claim(req),
                Event::Upstream(req) => services.call(&mut shard, req, now),
                Event::IdemUpdate(u) => updates.push(u),
                Event::Presence(e) => presence.push(e),
                Event::Undelivered(u) => undelivered.push(u),
                Event::StreamAppend(a) => services.append(a),
                Event::StreamRead(r) => services.read(r),
                Event::Refresh { conn, token } => {
                    let checked = match self.verifier.verify(Some(&token)) {
                        Ok(t) => Ok((t.who.clone(), self.token_deadline(t.exp, now))),
                        Err(e) => Err(e.to_string()),
                    };
                    shard.on_refreshed(conn, checked, now);
                }
            }
        }
        if !updates.is_empty() {
            services.store_updates(updates);
        }
        if !presence.is_empty() {
            services.presence(presence);
        }
        if !undelivered.is_empty() {
            services.report(undelivered);
        }
        // Claims gathered in this pass leave together once the other ready tasks have run.
        if services.wants_flush() {
            self.defer(None, |services, shard, now| services.flush(shard, now));
        }
        // A batch started waiting: flush it at its deadline unless it fills first.
        for (biz_id, id, due) in services.timers.drain(..) {
            let wait = due.saturating_duration_since(now);
            self.defer(Some(wait), move |services, shard, now| {
                services.flush_due(shard, biz_id, id, now)
            });
        }
        self.alarm.pull_in(shard.timeout_floor());
    }

    /// Runs `f` on the services and the shard after `wait` (without one, once the other ready
    /// tasks have run), then settles what it queued.
    fn defer(
        self: &Rc<Self>,
        wait: Option<Duration>,
        f: impl FnOnce(&mut Services, &mut Shard, Instant) + 'static,
    ) {
        let w = self.clone();
        spawn_after(wait, move || {
            let now = Instant::now();
            {
                let mut shard = w.shard.borrow_mut();
                f(&mut w.services.borrow_mut(), &mut shard, now);
            }
            w.after_events(now);
        });
    }

    fn handle(self: &Rc<Self>, msg: CoreMsg, acceptor: &mut Option<glommio::Task<()>>) {
        let now = Instant::now();
        match msg {
            CoreMsg::Handoff(h) => {
                let Handoff {
                    fd,
                    tls,
                    token,
                    request,
                    leftover,
                    ticket,
                } = *h;
                if let Some(stream) = received(self, fd, tls) {
                    open_link(self, stream, token, request, leftover, ticket);
                }
            }
            CoreMsg::Push(job) => {
                self.peers[self.index]
                    .took_push_after(now.saturating_duration_since(job.accepted_at));
                let mut shard = self.shard.borrow_mut();
                let push = shard.encode_push(job.biz_id, &job.key, job.body, job.unsettled);
                let device = job.device_id.as_deref();
                let how = Delivery {
                    report_offline: job.report_offline,
                    ephemeral: job.ephemeral,
                    accepted_at: job.accepted_at,
                };
                shard.push(job.biz_id, &job.user_ids, device, &push, how, now);
            }
            CoreMsg::Kick(k) => {
                let t = Target {
                    biz_id: k.biz_id,
                    user_id: &k.user_id,
                    device_id: k.device_id.as_deref(),
                };
                self.shard.borrow_mut().kick(&t, &k.reason, now);
            }
            CoreMsg::Redirect(r) => {
                let t = r.target.as_ref().map(|(b, u, d)| Target {
                    biz_id: *b,
                    user_id: u,
                    device_id: d.as_deref(),
                });
                self.shard.borrow_mut().redirect(
                    t.as_ref(),
                    r.limit,
                    &r.nodes,
                    r.retry_after_ms,
                    now,
                );
            }
            CoreMsg::Answered(answers) => {
                let mut shard = self.shard.borrow_mut();
                for (req, result) in *answers {
                    shard.on_upstream_result(&req, result, now);
                }
            }
            CoreMsg::Streamed(answers) => {
                let mut shard = self.shard.borrow_mut();
                for (id, stored) in answers.appends {
                    shard.on_appended(id, stored, now);
                }
                for (conn, state) in answers.reads {
                    shard.on_stream_read(conn, state, now);
                }
            }
            CoreMsg::Claimed(answers) => {
                let mut shard = self.shard.borrow_mut();
                for (req, claim) in *answers {
                    shard.on_claimed(req, claim, now);
                }
            }
            CoreMsg::Shutdown => {
                if let Some(a) = acceptor.take() {
                    // Dropping the accept task drops the listener: the kernel stops routing
                    // new connections to this core.
                    drop(a);
                }
                self.shard
                    .borrow_mut()
                    .close_all("server shutting down", now);
            }
            CoreMsg::Inspect(i) => {
                let links = self.shard.borrow().inspect(i.biz_id, &i.user_id, now);
                // The asker may have given up waiting; nothing to do then.
                let _ = i.reply.send(links);
            }
            CoreMsg::Room(job) => {
                let mut shard = self.shard.borrow_mut();
                let message = shard.encode_room(job.biz_id, &job.key, &job.room, job.body.clone());
                let to = match job.room.as_str() {
                    "" => Audience::Biz,
                    room => Audience::Room(room),
                };
                let exclude = &job.exclude_user_ids;
                shard.publish(job.biz_id, to, &message, exclude, job.reliable, now);
            }
            CoreMsg::Membership(m) => {
                let mut shard = self.shard.borrow_mut();
                let links = if m.join {
                    shard.join(m.biz_id, &m.user_id, &m.rooms)
                } else {
                    Ok(shard.leave(m.biz_id, &m.user_id, &m.rooms))
                };
                if let Some(reply) = m.reply {
                    let _ = reply.send(links);
                }
            }
            CoreMsg::RoomMembers(q) => {
                let members = self.shard.borrow().room_members(q.biz_id, &q.room);
                let _ = q.reply.send(members);
            }
            CoreMsg::Stop => unreachable!("the inbox loop ends on Stop"),
        }
    }
}

/// Runs `task` after `wait`, and never before the caller's current poll has returned: glommio
/// polls a new task at once, and a sleep already due (a batch deadline that passed while the
/// core was busy) is ready on that first poll, so the task would borrow what its spawner still
/// holds and abort the node. A yield comes first, whatever the wait.
fn spawn_after(wait: Option<Duration>, task: impl FnOnce() + 'static) {
    glommio::spawn_local(async move {
        futures_lite::future::yield_now().await;
        if let Some(d) = wait {
            glommio::timer::sleep(d).await;
        }
        task();
    })
    .detach();
}

/// One HTTP request's hold on its link: the generation it serves and, for a long poll, its
/// answer once taken (`Some(None)`: a poll still waiting).
struct HttpReq {
    conn: ConnId,
    generation: u32,
    origin: Option<String>,
    answer: Option<Option<Vec<u8>>>,
}

/// Writes what the shard offers for the link until the socket would block. `None`: the link
/// is over; `Some(Some(closing))`: nothing is left to write; `Some(None)`: the socket is full.
fn write_out(
    shard: &mut Shard,
    conn: ConnId,
    cx: &mut Context<'_>,
    stream: &mut Conn,
) -> Option<Option<bool>> {
    loop {
        match shard.poll_transmit(conn) {
            Transmit::Gone => return None,
            Transmit::Idle { closing } => return Some(Some(closing)),
            Transmit::Bytes(out) => match Pin::new(&mut *stream).poll_write(cx, out) {
                Poll::Ready(Ok(n)) if n > 0 => shard.handle_written(conn, n, Instant::now()),
                Poll::Ready(_) => return None,
                Poll::Pending => return Some(None),
            },
        }
    }
}

async fn inbox_loop(w: Rc<Worker>, mut inbox: Inbox, acceptor: glommio::Task<()>) {
    let mut acceptor = Some(acceptor);
    // SAFETY: the doorbell's read end, owned by this core alone from here on.
    let mut bell = unsafe { UnixStream::from_raw_fd(inbox.take_reader().into_raw_fd()) };
    let mut sink = [0u8; 64];
    loop {
        let mut handled = 0;
        while let Ok(msg) = inbox.rx.try_recv() {
            if matches!(msg, CoreMsg::Stop) {
                // The executor ends with this task; the others (accept, timers) are dropped.
                return;
            }
            w.handle(msg, &mut acceptor);
            handled += 1;
            if handled == INBOX_BATCH {
                break;
            }
        }
        if handled > 0 {
            // One settle for the whole batch of messages.
            w.after_events(Instant::now());
            w.peers[w.index].beat();
        }
        w.metrics.inbox_depth.set(inbox.rx.len() as i64);
        if handled == INBOX_BATCH {
            glommio::yield_if_needed().await;
            continue;
        }
        if inbox.prepare_sleep() {
            let _ = bell.read(&mut sink).await;
        }
    }
}

/// How often a core publishes its latency figures, flushes its log tally and counts its store's
/// evictions, whatever else it does.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// The longest the timer loop sleeps, whatever its deadlines. glommio 0.9 can park a core with
/// tasks still queued (see `control::watchdog`); the watchdog sees a queued message or an
/// overdue deadline, not a link task left runnable, which waits for the core's next wake-up.
/// Waking at least this often bounds that wait, as the old 10 ms tick did more tightly. (In a
/// suite run beside a two-core compile, with the cores sleeping up to their 1 s housekeeping,
/// a re-ack through a second node once took over 5 s; not reproduced in 14 runs since, this
/// wait is the likeliest cause.) At 100 ms an idle node cost 0.33 % of a core (a wake-up costs
/// a worker ~100 µs); at 250 ms, 0.16 %.
const LONGEST_NAP: Duration = Duration::from_millis(250);

/// Runs the shard's timers when they are due and the housekeeping once a second, sleeping in
/// between until the earlier of the two (see [`Alarm`]).
async fn timer_loop(w: Rc<Worker>) {
    let me = &w.peers[w.index];
    let mut housekeeping = Instant::now() + HOUSEKEEPING;
    loop {
        me.beat();
        let now = Instant::now();
        {
            let mut shard = w.shard.borrow_mut();
            shard.handle_timeout(now);
            if now >= housekeeping {
                shard.publish_metrics();
                w.services.borrow_mut().log_tally();
                housekeeping = now + HOUSEKEEPING;
            }
        }
        w.after_events(now);
        let next = w.shard.borrow_mut().poll_timeout();
        let due = next
            .map_or(housekeeping, |d| d.min(housekeeping))
            .min(Instant::now() + LONGEST_NAP);
        me.sleeps_until(due);
        w.alarm.sleep_until(due).await;
    }
}

/// The CPUs this process may run on, so `taskset` decides where workers are pinned.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes into the zeroed set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    #[test]
    fn deferred_work_waits_for_its_spawner_even_when_already_due() {
        LocalExecutorBuilder::default()
            .spawn(|| async {
                let state = Rc::new(RefCell::new(Vec::new()));
                for wait in [Some(Duration::ZERO), None, Some(Duration::from_millis(1))] {
                    let held = state.borrow_mut();
                    let s = state.clone();
                    spawn_after(wait, move || s.borrow_mut().push(wait));
                    drop(held);
                }
                // Without the yield the first spawn would already have panicked above.
                let deadline = Instant::now() + Duration::from_secs(5);
                while state.borrow().len() < 3 && Instant::now() < deadline {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                assert_eq!(state.borrow().len(), 3);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
