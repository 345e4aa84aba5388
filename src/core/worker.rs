//! The glommio shell of one worker core. It accepts sockets, runs the upgrade handshake, hands
//! each authenticated socket to its owner core, and moves bytes between sockets and the shard.
//! Rules live in the shard; this file only does I/O and bookkeeping of tasks.
//!
//! One task, the link loop, serves the listener and every WebSocket link of the core
//! ([`Links`]); an upgrade being read and an HTTP-transport request each have a task of their
//! own, short-lived or rare.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::UnixStream;
use tracing::{debug, warn};

use super::alarm::Alarm;
use super::batcher::Batcher;
use super::conn::{Conn, Socket};
use super::deadlines::Deadlines;
use super::embedded::{Embedded, LocalBizs, StoreDownPolicy, StreamStore};
use super::inbox::{CoreHandle, CoreMsg, Handoff, Inbox, wake_thread};
use super::links::{Flushed, Links, write_out};
use super::naps::Naps;
use super::readiness::{Readiness, Ready, Watch};
use super::services::{ServiceCall, Services};
use super::shard::{Audience, Delivery, Event, Shard, ShardConfig, Target};
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
/// Connections accepted per pass before the links get their turn.
const ACCEPT_BUDGET: usize = 64;
/// The listener's id in the core's epoll set; links' ids start at 1.
const LISTENER: u64 = 0;
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
    /// The deadlines of the upgrades being read, fired by the timer loop.
    deadlines: Deadlines,
    admission: Arc<Admission>,
    tls: Option<Arc<TlsFiles>>,
    peers: Vec<CoreHandle>,
    metrics: Arc<CoreMetrics>,
    next_conn: Cell<ConnId>,
    /// The WebSocket links' sockets, served by the link loop.
    links: RefCell<Links>,
    /// The task serving each HTTP-transport link's request, with the attachment generation it
    /// serves, woken when the shard says the link has something for it.
    wakers: RefCell<FastMap<ConnId, (u32, Waker)>>,
    readiness: Rc<Readiness>,
    /// Taken at shutdown: the kernel stops routing new connections to this core.
    listener: RefCell<Option<Listener>>,
    /// The timer loop's sleep, pulled in by events that schedule something sooner.
    alarm: Alarm,
    /// The other glommio timers the core's tasks have armed.
    naps: Naps,
}

struct Listener {
    // Declared first so it drops first: it leaves the epoll set while the fd is open.
    watch: Watch,
    fd: OwnedFd,
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
    wait_accepting(&rules.peers, &started)?;
    crate::warn_if_slow("starting the worker cores", began);
    Ok(threads)
}

/// This process's threads whose names start with `prefix`: glommio names a core's executor
/// thread (and its helper thread) after the name it was given, plus `-` and a number.
fn threads_named(prefix: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}

/// How long a starting core may be quiet before it is woken. A core whose thread is
/// descheduled for longer than `--preempt-ms` as its executor begins can park with its first
/// task still queued (glommio runs even that one from a queue): the stall the watchdog mends
/// later in a node's life, before the watchdog runs. Seen on a loaded test machine as nodes
/// that gave up after `START_LIMIT`, both of their executor threads asleep in `io_uring_enter`.
const START_NUDGE: Duration = Duration::from_millis(50);

/// Waits until every core says it accepts, waking those that have not said so yet every
/// `START_NUDGE`, for at most `START_LIMIT`.
fn wait_accepting(
    peers: &[CoreHandle],
    started: &std::sync::mpsc::Receiver<usize>,
) -> Result<(), String> {
    let deadline = Instant::now() + START_LIMIT;
    // Per core: None once it accepts, else how many times it was woken.
    let mut waiting: Vec<Option<u32>> = vec![Some(0); peers.len()];
    while waiting.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "a worker core did not start within {START_LIMIT:?}"
            ));
        }
        match started.recv_timeout(left.min(START_NUDGE)) {
            Ok(core) => {
                if let Some(wakes @ 1..) = waiting[core].take() {
                    warn!(
                        core,
                        wakes, "worker core was quiet while starting, and woken"
                    );
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                for (core, (peer, wakes)) in peers.iter().zip(&mut waiting).enumerate() {
                    let Some(n) = wakes else { continue };
                    if !peer.wake() {
                        // Its first task, which says which thread it is, never ran.
                        threads_named(&format!("ringway-w{core}-"))
                            .into_iter()
                            .for_each(wake_thread);
                    }
                    *n += 1;
                }
            }
            Err(e) => return Err(format!("a worker core ended while starting: {e}")),
        }
    }
    Ok(())
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
        deadlines: Deadlines::default(),
        admission: setup.admission,
        tls: setup.tls,
        peers: setup.peers,
        metrics: core.metrics,
        next_conn: Cell::new(1),
        links: RefCell::default(),
        wakers: RefCell::default(),
        listener: RefCell::new(None),
        readiness: readiness.clone(),
        alarm: Alarm::default(),
        naps: Naps::default(),
    });
    let watch = readiness
        .watch_own(core.listener.as_raw_fd(), LISTENER)
        .expect("a worker core's epoll set takes its listener");
    *w.listener.borrow_mut() = Some(Listener {
        watch,
        fd: core.listener,
    });
    glommio::spawn_local(link_loop(w.clone(), accepting)).detach();
    glommio::spawn_local(timer_loop(w.clone())).detach();
    inbox_loop(w.clone(), core.inbox).await;
}

/// Serves the listener and the WebSocket links for the core's whole life. A pass reads every
/// link the epoll set reported, then writes all the output that caused in one batch (see
/// [`Worker::after_events`]), then accepts what waits. A busy loop goes on to its next pass
/// until the core's time slice (`--preempt-ms`) is used: yielding after every pass cost a
/// reactor turn each, and `io_uring_submit` fell from 7.5 % to 4.3 % of the echo core without
/// it.
///
/// With nothing reported, see [`Idle`]: the loop first lets the other tasks run, then waits in
/// `epoll_wait` itself, and sleeps in glommio only once that wait found nothing. glommio's
/// sleep costs a core about 35 µs more per wake-up than a blocking `epoll_wait` (9
/// `io_uring_enter`, a `membarrier` and an fd duplicated and closed, against one call): in a
/// request-reply exchange that is most of what a message costs once the core has gaps.
async fn link_loop(w: Rc<Worker>, accepting: std::sync::mpsc::Sender<usize>) {
    // The listener is in the set: the node may say it is ready.
    let _ = accepting.send(w.index);
    let mut ready = Vec::new();
    let mut again = Vec::new();
    let mut idle = Idle::Fresh;
    loop {
        let wait = match idle {
            Idle::Yielded => w.quiet_for(Instant::now()),
            Idle::Fresh | Idle::Quiet => None,
        };
        let seen = w.readiness.collect(&mut ready, wait.unwrap_or_default());
        ready.append(&mut again);
        if !ready.is_empty() {
            w.serve(&mut ready, &mut again);
            idle = Idle::Fresh;
            glommio::yield_if_needed().await;
            continue;
        }
        let sleep;
        (idle, sleep) = idle.after_empty_look(seen, wait.is_some());
        match sleep {
            true => w.readiness.sleep().await,
            false => futures_lite::future::yield_now().await,
        }
    }
}

/// The longest the link loop blocks in `epoll_wait` before it lets glommio take a turn. A ring
/// completion ends the wait early, but only for an operation glommio has already submitted: one
/// a task queued in the same turn, just before the wait, goes in at the next turn, at most this
/// much later. Long enough to cover the gaps of a request-reply exchange (tens of µs).
const LONGEST_WAIT: Duration = Duration::from_millis(2);

/// Where the link loop is in going quiet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    /// It served or woke something since it last yielded: tasks may be ready to run, and
    /// blocking the thread would stall them.
    Fresh,
    /// It has yielded since: every task queued before it has run (not the inbox, glommio's
    /// main future, hence the mail check in [`Worker::quiet_for`]), and it may wait in
    /// `epoll_wait` until the core's next timer, for at most [`LONGEST_WAIT`].
    Yielded,
    /// That wait found nothing: the core is quiet, and the next empty look sleeps in glommio.
    Quiet,
}

impl Idle {
    /// After a look at the set that found no link to serve, having seen `seen` events (for
    /// tasks' sockets or the inbox's doorbell) and having `waited` in `epoll_wait`: the next
    /// state, and whether to sleep in glommio (else yield to the other tasks).
    fn after_empty_look(self, seen: usize, waited: bool) -> (Idle, bool) {
        match (self, seen, waited) {
            // Events for tasks: they run before the next look, which may wait again.
            (_, 1.., _) | (Idle::Fresh, 0, _) => (Idle::Yielded, false),
            // The wait ended with nothing: the alarm is due, or a ring completion or a signal
            // interrupted it. glommio handles that on this yield.
            (Idle::Yielded, 0, true) => (Idle::Quiet, false),
            // Nothing, and no wait allowed (a timer armed) or already quiet.
            (Idle::Yielded | Idle::Quiet, 0, _) => (Idle::Fresh, true),
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
async fn handshake(w: Rc<Worker>, fd: OwnedFd, ticket: Result<Ticket, Refusal>) {
    let Some(tcp) = w.watch(fd) else { return };
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
    let at = Instant::now() + w.handshake_timeout;
    let deadline = w.deadlines.set(at);
    w.alarm.pull_in(Some(at + super::deadlines::SLACK));
    let deadline = async {
        deadline.await;
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
    let tcp = w.watch(fd)?;
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
            if let Err(e) = w.links.borrow_mut().adopt(conn, stream, ticket) {
                warn!(core = w.index, error = %e, "cannot serve a link's socket");
                w.shard.borrow_mut().closed(conn);
            }
            w.after_events(now);
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
    fn watch(&self, fd: OwnedFd) -> Option<Socket> {
        Socket::new(fd, &self.readiness)
            .inspect_err(|e| warn!(core = self.index, error = %e, "cannot watch a socket"))
            .ok()
    }

    /// Reads every link in `ready`, then settles what that caused (writing the links' output
    /// in one batch), then accepts what waits. Links with input left over go to `again`.
    fn serve(self: &Rc<Self>, ready: &mut Vec<Ready>, again: &mut Vec<Ready>) {
        let now = Instant::now();
        let mut listener = false;
        {
            let mut shard = self.shard.borrow_mut();
            let mut links = self.links.borrow_mut();
            let mut scratch = self.scratch.borrow_mut();
            for r in ready.drain(..) {
                if r.id == LISTENER {
                    listener = true;
                } else if links.read(r, &mut shard, &mut scratch, now) {
                    again.push(r);
                }
            }
            shard.settle(now);
        }
        self.after_events(now);
        // Last, with nothing borrowed: a new handshake task may run as soon as it is spawned.
        if listener && self.accept(now) {
            again.push(Ready {
                id: LISTENER,
                readable: true,
                writable: false,
                closed: false,
            });
        }
    }

    /// Takes up to [`ACCEPT_BUDGET`] connections off the listener, each to a handshake task of
    /// its own. Returns true when more may wait.
    fn accept(self: &Rc<Self>, now: Instant) -> bool {
        let listener = self.listener.borrow();
        let Some(l) = listener.as_ref() else {
            return false;
        };
        for _ in 0..ACCEPT_BUDGET {
            // SAFETY: an all-zero sockaddr_storage is a valid value of the type.
            let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: accept4(2) on our listener, with an address buffer of `len` bytes.
            let fd = unsafe {
                libc::accept4(
                    l.fd.as_raw_fd(),
                    (&raw mut addr).cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return false,
                    // The client gave up while queued, or a signal: the next one.
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => continue,
                    // A listener that was shut down (at exit, by `shut_every_socket`) answers
                    // EINVAL for good.
                    Some(libc::EINVAL) => {
                        debug!(
                            core = self.index,
                            "the listener was shut down: accepting no more"
                        );
                        return false;
                    }
                    _ => {
                        // Out of fds or memory: existing links go on, and the listener waits
                        // instead of spinning.
                        warn!(core = self.index, error = %e, "accept failed");
                        self.pause_accepting(&l.watch);
                        return false;
                    }
                }
            }
            // SAFETY: accept4 returned a new connected socket that nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let Some(ip) = peer_ip(&addr) else { continue };
            // The ticket counts the connection from here on; one over the per-address cap is
            // closed now, unread, so a flood from one address holds no fds.
            let ticket = self.admission.try_admit(ip, now);
            if matches!(ticket, Err(Refusal::PerIp)) {
                self.metrics.per_ip_closed.inc();
                continue;
            }
            set_nodelay(&fd);
            glommio::spawn_local(handshake(self.clone(), fd, ticket)).detach();
        }
        true
    }

    /// Stops watching the listener for 50 ms. Restarting it reports at once the connections
    /// that queued meanwhile.
    fn pause_accepting(self: &Rc<Self>, watch: &Watch) {
        let _ = watch.pause(None);
        let w = self.clone();
        glommio::spawn_local(async move {
            w.naps.sleep(Duration::from_millis(50)).await;
            if let Some(l) = w.listener.borrow().as_ref() {
                let _ = l.watch.pause(Some(LISTENER));
            }
        })
        .detach();
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
            None => match write_out(&mut shard, req.conn, stream, Instant::now()) {
                Flushed::Gone => return Poll::Ready(()),
                Flushed::Blocked => {
                    stream.watch().park_write(cx);
                    false
                }
                // A closed stream is over once the close is out.
                Flushed::Done { closing } => closing,
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

    /// Wakes the task of an HTTP-transport link with something for its socket; it registers
    /// again when it next waits.
    /// How long the link loop may block the thread waiting for its sockets: until the timer
    /// loop's alarm, at most [`LONGEST_WAIT`], and not at all while the timer loop is awake,
    /// another glommio timer is armed (glommio fires those only on its own turns) or the inbox
    /// holds messages. The inbox task is the executor's main future, which glommio polls only
    /// between its turns, never during a yield: a wait then would hold every push for up to
    /// a whole wait (p50 of pushes at 1,000/s went from 0.7 to 1.3 ms).
    fn quiet_for(&self, now: Instant) -> Option<Duration> {
        if self.naps.any() || self.peers[self.index].has_mail() {
            return None;
        }
        Some(
            self.alarm
                .due()?
                .saturating_duration_since(now)
                .min(LONGEST_WAIT),
        )
    }

    fn wake(&self, conn: ConnId) {
        let waker = self.wakers.borrow_mut().remove(&conn);
        if let Some((_, w)) = waker {
            w.wake();
        }
    }

    /// Carries out what the shard asked for (see [`Event`]): writes links' output (all of it
    /// in one batch, after every event is in), wakes HTTP-transport tasks, sends claims,
    /// backend batches, store updates, presence and reports to the control thread.
    fn after_events(self: &Rc<Self>, now: Instant) {
        let mut shard = self.shard.borrow_mut();
        let mut links = self.links.borrow_mut();
        let mut services = self.services.borrow_mut();
        let (mut updates, mut presence, mut undelivered) = (Vec::new(), Vec::new(), Vec::new());
        // A link that closes while written gives the shard events of its own.
        loop {
            while let Some(event) = shard.poll_event() {
                match event {
                    Event::Wake(conn) => {
                        if !links.mark(conn) {
                            self.wake(conn)
                        }
                    }
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
            if !links.flush(&mut shard, now) {
                break;
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
        spawn_after(wait, self.naps.clone(), move || {
            let now = Instant::now();
            {
                let mut shard = w.shard.borrow_mut();
                f(&mut w.services.borrow_mut(), &mut shard, now);
            }
            w.after_events(now);
        });
    }

    fn handle(self: &Rc<Self>, msg: CoreMsg) {
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
                let push = shard.encode_push(job.biz_id, job.key.as_str(), job.body, job.unsettled);
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
                // Closing the listener stops the kernel routing new connections to this core.
                self.listener.borrow_mut().take();
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
fn spawn_after(wait: Option<Duration>, naps: Naps, task: impl FnOnce() + 'static) {
    glommio::spawn_local(async move {
        futures_lite::future::yield_now().await;
        if let Some(d) = wait {
            naps.sleep(d).await;
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

async fn inbox_loop(w: Rc<Worker>, mut inbox: Inbox) {
    // SAFETY: the doorbell's read end, owned by this core alone from here on.
    let reader = inbox.take_reader().into_raw_fd();
    let mut bell = unsafe { UnixStream::from_raw_fd(reader) };
    // In the epoll set too, so a ring ends the link loop's wait there even when this task's
    // read of the bell is not yet submitted to the kernel; the loop then finds mail waiting
    // and leaves the thread to glommio ([`Worker::quiet_for`]). Declared after `bell`, so it
    // leaves the set before the fd closes.
    let _rung = w.readiness.watch(reader);
    let mut sink = [0u8; 64];
    loop {
        let mut handled = 0;
        while let Ok(msg) = inbox.rx.try_recv() {
            if matches!(msg, CoreMsg::Stop) {
                // The executor ends with this task; the others (links, timers) are dropped.
                return;
            }
            w.handle(msg);
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
/// overdue deadline, not a task left runnable (the link loop, an upgrade), which waits for the
/// core's next wake-up.
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
        w.deadlines.fire(now);
        w.after_events(now);
        let next = w.shard.borrow_mut().poll_timeout();
        let due = [next, w.deadlines.next()]
            .into_iter()
            .flatten()
            .fold(housekeeping, Instant::min)
            .min(Instant::now() + LONGEST_NAP);
        me.sleeps_until(due);
        w.alarm.sleep_until(due).await;
    }
}

/// The address a connection came from, as accept4 wrote it.
fn peer_ip(addr: &libc::sockaddr_storage) -> Option<IpAddr> {
    let addr: *const libc::sockaddr_storage = addr;
    // SAFETY: the family says which of the two layouts accept4 wrote; both fit the storage.
    unsafe {
        match (*addr).ss_family as libc::c_int {
            libc::AF_INET => {
                let v4 = &*addr.cast::<libc::sockaddr_in>();
                Some(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()))
            }
            libc::AF_INET6 => {
                let v6 = &*addr.cast::<libc::sockaddr_in6>();
                Some(IpAddr::from(v6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

/// Small frames go out at once: a gateway's messages are latency-bound, not bulk.
fn set_nodelay(fd: &OwnedFd) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt(2) on our socket with a valid int option.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
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

    /// The way to glommio's sleep: a yield first, then a wait in `epoll_wait` when allowed, and
    /// the sleep only once that wait found nothing. Events for tasks start over at the wait.
    #[test]
    fn an_idle_link_loop_yields_then_waits_in_epoll_then_sleeps() {
        use Idle::*;
        assert_eq!(Fresh.after_empty_look(0, false), (Yielded, false));
        assert_eq!(Yielded.after_empty_look(0, true), (Quiet, false));
        assert_eq!(Quiet.after_empty_look(0, false), (Fresh, true));
        // A timer armed: no wait, straight to the sleep after the yield.
        assert_eq!(Yielded.after_empty_look(0, false), (Fresh, true));
        // The doorbell or a task's socket: yield to it, then wait again.
        for state in [Fresh, Yielded, Quiet] {
            assert_eq!(state.after_empty_look(1, true), (Yielded, false));
        }
    }

    #[test]
    fn deferred_work_waits_for_its_spawner_even_when_already_due() {
        LocalExecutorBuilder::default()
            .spawn(|| async {
                let state = Rc::new(RefCell::new(Vec::new()));
                for wait in [Some(Duration::ZERO), None, Some(Duration::from_millis(1))] {
                    let held = state.borrow_mut();
                    let s = state.clone();
                    spawn_after(wait, Naps::default(), move || s.borrow_mut().push(wait));
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
