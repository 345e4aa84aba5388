//! A core's inbox: a bounded lock-free queue plus a doorbell that wakes the core's executor.
//!
//! Any thread may send (the control thread, other cores). Senders only `try_send`, never block,
//! and ring the doorbell only when the core has said it is about to sleep, so a busy core drains
//! batches with no wake-up cost. The doorbell is a socketpair: its read end is an ordinary
//! glommio stream, so waiting on it is one io_uring poll. Beside it sit the core's pulse, the
//! deadline it sleeps until and its thread id, by which `control::watchdog` tells a parked core
//! from a working one and from one asleep on purpose.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::auth::Verified;
use crate::core::admission::Ticket;
use crate::core::shard::{BackendError, UpstreamRequest};
use crate::core::stream::{Stored, StreamState};
use crate::link::idem::Claim;
use crate::link::push::Unsettled;
use crate::proto::Node;
use crate::protocol::handshake::Request;

/// What other threads ask of a core. Payloads are boxed: the bounded queue preallocates every
/// slot, so a small message keeps a deep inbox cheap.
pub enum CoreMsg {
    /// An authenticated socket whose user this core owns.
    Handoff(Box<Handoff>),
    Push(Box<PushJob>),
    Kick(Box<Kick>),
    Redirect(Box<Redirect>),
    /// The shared store answered claims (`None`: it was unreachable).
    Claimed(Box<Vec<(UpstreamRequest, Option<Claim>)>>),
    /// The shared stream store answered appends and reads (`None`: it could not be reached).
    Streamed(Box<Streamed>),
    /// The backend answered upstream messages.
    Answered(Box<Vec<(UpstreamRequest, Result<Bytes, BackendError>)>>),
    /// Answer with a user's open links on this core (`GET /v1/links`).
    Inspect(Box<Inspect>),
    /// A room message or broadcast for this core's members; every core gets the same one.
    Room(Arc<RoomJob>),
    /// A user joins or leaves rooms (sent to the user's owner core).
    Membership(Box<Membership>),
    /// Answer with a room's members on this core.
    RoomMembers(Box<RoomQuery>),
    /// Stop accepting and close every link with 1001.
    Shutdown,
    /// The node is done: end the core's executor, so its thread can be joined.
    Stop,
}

/// The stream store's answers to one batch of a core's appends (by id) and reads (by link).
#[derive(Default)]
pub struct Streamed {
    pub appends: Vec<(u64, Option<Stored>)>,
    pub reads: Vec<(crate::link::ConnId, Option<StreamState>)>,
}

/// A room message (`room` set) or a broadcast to the biz (`room` empty).
pub struct RoomJob {
    pub biz_id: u64,
    pub room: String,
    pub key: String,
    pub body: Bytes,
    pub exclude_user_ids: Vec<String>,
    pub reliable: bool,
}

pub struct Membership {
    pub biz_id: u64,
    pub user_id: String,
    pub rooms: Vec<String>,
    pub join: bool,
    /// How many of the user's links it reached, or (a join past `--max-rooms-per-user`) how
    /// many rooms the fullest is in. None for a change from the room topic, which nobody
    /// waits for.
    pub reply: Option<tokio::sync::oneshot::Sender<Result<usize, usize>>>,
}

pub struct RoomQuery {
    pub biz_id: u64,
    pub room: String,
    /// (links, users) in the room on this core.
    pub reply: tokio::sync::oneshot::Sender<(usize, usize)>,
}

pub struct Inspect {
    pub biz_id: u64,
    pub user_id: String,
    pub reply: tokio::sync::oneshot::Sender<Vec<crate::core::shard::LinkInfo>>,
}

pub struct Handoff {
    pub fd: OwnedFd,
    /// The TLS session, mid-stream: it moves with its socket.
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// The token that passed, with the identity it names.
    pub token: Verified,
    pub request: Request,
    /// Bytes the client sent after its request head: WebSocket frames, or a `POST /send`
    /// body.
    pub leftover: Vec<u8>,
    pub ticket: Ticket,
}

pub struct Kick {
    pub biz_id: u64,
    pub user_id: String,
    pub device_id: Option<String>,
    pub reason: String,
}

pub struct Redirect {
    /// (biz, user, device); `None` redirects every link of the core.
    pub target: Option<(u64, String, Option<String>)>,
    /// With no target: at most this many links (a paced drain or rebalance batch).
    pub limit: Option<usize>,
    /// Empty: close with 1001 and a retry hint instead.
    pub nodes: Vec<Node>,
    pub retry_after_ms: u32,
}

/// A push for users this core owns; the body is encoded once on arrival.
pub struct PushJob {
    pub biz_id: u64,
    pub user_ids: Vec<String>,
    pub device_id: Option<String>,
    pub key: String,
    pub body: Bytes,
    /// Report users with no link here undelivered (false in broadcast routing).
    pub report_offline: bool,
    /// No stream, no ack, no retransmit, no report.
    pub ephemeral: bool,
    /// Held until the push is settled on this core (see `EncodedPush`).
    pub unsettled: Option<Arc<Unsettled>>,
    pub accepted_at: Instant,
}

#[cfg(test)]
impl PushJob {
    /// A push of an empty body to `users` of biz 1, accepted now.
    pub fn for_tests(users: &[&str]) -> PushJob {
        PushJob {
            biz_id: 1,
            user_ids: users.iter().map(|u| u.to_string()).collect(),
            device_id: None,
            key: "k".into(),
            body: Bytes::new(),
            report_offline: true,
            ephemeral: false,
            unsettled: None,
            accepted_at: Instant::now(),
        }
    }
}

struct Doorbell {
    writer: StdUnixStream,
    sleeping: AtomicBool,
    /// Passes of the core's timer and inbox loops, for `control::watchdog`.
    pulse: AtomicU64,
    /// Milliseconds from `origin` to the deadline the core's timer sleeps until (`u64::MAX`
    /// before it first sleeps), so the watchdog tells a core asleep on purpose from one past
    /// its deadline.
    due_ms: AtomicU64,
    origin: Instant,
    /// The core's OS thread id (0 until the core starts), for the watchdog's wake-up signal.
    thread: AtomicI32,
    /// How long the last push the core took had waited in its inbox, in microseconds.
    waited_us: AtomicU64,
}

/// The sending side; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct CoreHandle {
    tx: Sender<CoreMsg>,
    bell: Arc<Doorbell>,
}

/// The receiving side, owned by the core.
pub struct Inbox {
    pub rx: Receiver<CoreMsg>,
    bell: Arc<Doorbell>,
    reader: Option<StdUnixStream>,
}

pub fn channel(capacity: usize) -> std::io::Result<(CoreHandle, Inbox)> {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let (writer, reader) = StdUnixStream::pair()?;
    writer.set_nonblocking(true)?;
    reader.set_nonblocking(true)?;
    let bell = Arc::new(Doorbell {
        writer,
        sleeping: AtomicBool::new(false),
        pulse: AtomicU64::new(0),
        due_ms: AtomicU64::new(u64::MAX),
        origin: Instant::now(),
        thread: AtomicI32::new(0),
        waited_us: AtomicU64::new(0),
    });
    Ok((
        CoreHandle {
            tx,
            bell: bell.clone(),
        },
        Inbox {
            rx,
            bell,
            reader: Some(reader),
        },
    ))
}

impl CoreHandle {
    /// Whether messages wait in the core's inbox.
    pub fn has_mail(&self) -> bool {
        !self.tx.is_empty()
    }

    /// Queues without blocking; a full inbox hands the message back so the caller can answer
    /// "overloaded" instead of waiting.
    pub fn send(&self, msg: CoreMsg) -> Result<(), CoreMsg> {
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(m) | TrySendError::Disconnected(m) => m,
        })?;
        if self.bell.sleeping.swap(false, SeqCst) {
            // A full socket buffer means a ring is already pending: nothing to add.
            let _ = (&self.bell.writer).write(&[1]);
        }
        Ok(())
    }

    /// Called on the core's own thread once, before it serves anything.
    pub fn adopt_current_thread(&self) {
        // SAFETY: gettid(2) takes nothing and cannot fail.
        self.bell.thread.store(unsafe { libc::gettid() }, Relaxed);
    }

    /// The core's timer or inbox loop says it ran.
    pub fn beat(&self) {
        self.bell.pulse.fetch_add(1, Relaxed);
    }

    pub fn pulse(&self) -> u64 {
        self.bell.pulse.load(Relaxed)
    }

    /// The core's timer says when it wakes next.
    pub fn sleeps_until(&self, due: Instant) {
        let ms = due.saturating_duration_since(self.bell.origin).as_millis() as u64;
        self.bell.due_ms.store(ms, Relaxed);
    }

    /// Whether the core has work it should be doing by `now`: messages queued, or its timer's
    /// deadline passed more than `grace` ago. A core sleeping until a later deadline with an
    /// empty inbox has none.
    pub fn has_work(&self, now: Instant, grace: Duration) -> bool {
        let due = self.bell.due_ms.load(Relaxed);
        let late = due != u64::MAX
            && now.saturating_duration_since(self.bell.origin) > Duration::from_millis(due) + grace;
        late || !self.tx.is_empty()
    }

    /// The core says how long the push it just took had waited in its inbox.
    pub fn took_push_after(&self, waited: Duration) {
        self.bell
            .waited_us
            .store(waited.as_micros() as u64, Relaxed);
    }

    /// Whether the core is more than `limit` behind: messages are queued and the last push it
    /// took had waited longer than `limit`. Both are needed: the last wait alone goes stale
    /// once the queue is empty, and a queue alone says nothing of how long it takes to clear.
    pub fn behind(&self, limit: Duration) -> bool {
        !self.tx.is_empty() && self.bell.waited_us.load(Relaxed) > limit.as_micros() as u64
    }

    pub fn thread(&self) -> Option<i32> {
        Some(self.bell.thread.load(Relaxed)).filter(|&t| t != 0)
    }

    /// Interrupts the core's thread in its wait: glommio 0.9 can park an executor with tasks
    /// still queued (see `control::watchdog`), and the signal's empty handler makes the wait
    /// return so the executor's next pass runs them. False before the thread has started.
    pub fn wake(&self) -> bool {
        self.thread().map(wake_thread).is_some()
    }
}

/// Sends [`WAKE_SIGNAL`] to a thread of this process.
pub fn wake_thread(thread: i32) {
    // SAFETY: tgkill only sends a signal, to a thread of this process.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), thread, WAKE_SIGNAL) };
}

/// The signal that interrupts a parked core ([`CoreHandle::wake`]); its handler, installed
/// once per process before the cores start, does nothing.
pub const WAKE_SIGNAL: libc::c_int = libc::SIGURG;

impl Inbox {
    /// The doorbell's read end, to be wrapped in the executor's own stream type once.
    pub fn take_reader(&mut self) -> StdUnixStream {
        self.reader.take().expect("doorbell reader taken once")
    }

    /// Announces the core is going to sleep; returns false if messages arrived meanwhile (then
    /// the core must drain instead of sleeping).
    pub fn prepare_sleep(&self) -> bool {
        self.bell.sleeping.store(true, SeqCst);
        if self.rx.is_empty() {
            true
        } else {
            self.bell.sleeping.store(false, SeqCst);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn push() -> CoreMsg {
        CoreMsg::Push(Box::new(PushJob::for_tests(&[])))
    }

    #[test]
    fn rings_only_when_the_core_sleeps_and_refuses_when_full() {
        let (h, mut inbox) = channel(2).unwrap();
        let mut reader = inbox.take_reader();
        let mut buf = [0u8; 8];
        assert!(h.send(push()).is_ok());
        assert!(reader.read(&mut buf).is_err(), "awake core: no ring");
        assert!(!inbox.prepare_sleep(), "queue not empty: don't sleep");
        inbox.rx.try_recv().unwrap();
        assert!(inbox.prepare_sleep());
        assert!(h.send(push()).is_ok());
        assert_eq!(
            reader.read(&mut buf).unwrap(),
            1,
            "sleeping core is rung once"
        );
        assert!(h.send(push()).is_ok());
        assert!(h.send(push()).is_err(), "full: handed back");
    }

    #[test]
    fn behind_only_with_a_queue_that_waited_past_the_limit() {
        let (h, inbox) = channel(4).unwrap();
        let limit = Duration::from_millis(50);
        h.took_push_after(Duration::from_millis(80));
        assert!(!h.behind(limit), "empty queue: the old wait is stale");
        assert!(h.send(push()).is_ok());
        assert!(h.behind(limit));
        h.took_push_after(Duration::from_millis(50));
        assert!(!h.behind(limit), "at the limit is not past it");
        h.took_push_after(Duration::from_millis(51));
        inbox.rx.try_recv().unwrap();
        assert!(!h.behind(limit), "drained");
    }
}
