//! Readiness of a core's client sockets and its listener, from one edge-triggered epoll set
//! per core.
//!
//! glommio waits for a socket by arming a one-shot io_uring poll each time a read comes up
//! empty. The kernel completes that poll on the CPU that received the packet, as task work for
//! this core's thread, and interrupts the core to run it: in the echo benchmark that was about
//! 15,000 reschedule interrupts a second on the server core, against none for an epoll-based
//! server, and on a virtual machine each one costs both CPUs an exit. An epoll set keeps every
//! socket registered for its whole life instead. A busy core collects what became ready with
//! one non-blocking `epoll_wait` per pass. Between two close passes it waits in `epoll_wait`
//! itself (see `worker::link_loop`); only a core that found nothing there arms a single
//! io_uring poll, on the epoll fd, to sleep on in glommio.
//!
//! Each registration carries a [`Token`]. A socket still owned by a task (an upgrade being
//! read, an HTTP-transport request) is named by its fd, and its event wakes the task. Links
//! and the listener are the core's own state, served by its link loop: their events are handed
//! back to it as they are.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Waker};
use std::time::Duration;

use futures_lite::AsyncRead;
use glommio::net::UnixStream;

use crate::FastMap;

/// Events taken per `epoll_wait`; more wait for the next pass.
const EVENTS: usize = 256;
/// Marks a token as the core's own; below it, a task's socket by its fd.
const OWN: u64 = 1 << 63;
/// Every registration asks for the same: new input, the peer's half-close, and room to write
/// again after a `send` came up short (the kernel signals that edge only after a short send,
/// so a socket that always has room costs no events).
const INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// What became ready for one of the core's own registrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub id: u64,
    pub readable: bool,
    pub writable: bool,
    /// The peer half-closed, hung up or errored. No further edge will come for what is
    /// already queued, so the reader goes on until it sees the end or the error.
    pub closed: bool,
}

#[derive(Default)]
struct Waiting {
    read: Option<Waker>,
    write: Option<Waker>,
}

pub struct Readiness {
    epoll: OwnedFd,
    /// The tasks waiting on their sockets, by fd.
    tasks: RefCell<FastMap<RawFd, Waiting>>,
    /// What `epoll_wait` fills, kept: a fresh one would be 3 KB zeroed on every pass.
    events: RefCell<Vec<libc::epoll_event>>,
    /// How many times the set was read (from 1). An event for a socket nobody waits on is
    /// dropped, so a reader may trust an earlier short read only while this has not moved.
    looks: Cell<u64>,
}

/// One socket's place in the epoll set, for as long as the socket is open on this core.
/// Dropping it leaves the set; it must drop before its fd closes (see [`Watch::drop`]).
pub struct Watch {
    fd: RawFd,
    /// A short read notes the set's look count here (0: none): while the count has not moved,
    /// the socket is known to be empty (anything newer has its event still in the set) and
    /// the next read says "would block" without asking the kernel. Saves the `recv` that
    /// would only say `EAGAIN`, once per message in a request-reply exchange.
    drained_at: Cell<u64>,
    readiness: Rc<Readiness>,
}

/// `drained_at` once the peer has closed. Its FIN may have come in with its last bytes, under
/// one edge: after a short read nothing would report it again, so reads ask the kernel until
/// they see the end.
const ENDED: u64 = u64::MAX;

impl Readiness {
    pub fn new() -> io::Result<Rc<Readiness>> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rc::new(Readiness {
            // SAFETY: just created, owned by nobody else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            tasks: RefCell::default(),
            events: RefCell::new(vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS]),
            looks: Cell::new(1),
        }))
    }

    /// Adds a task's socket to the set. Edge-triggered: an event says only that something
    /// changed, so a reader waits only once it knows the socket empty ([`Watch::recv`]).
    pub fn watch(self: &Rc<Self>, fd: RawFd) -> io::Result<Watch> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, INTEREST, fd as u64)?;
        Ok(Watch {
            fd,
            drained_at: Cell::new(0),
            readiness: self.clone(),
        })
    }

    /// Adds one of the core's own fds (the listener), reported as `id`.
    pub fn watch_own(self: &Rc<Self>, fd: RawFd, id: u64) -> io::Result<Watch> {
        let watch = self.watch(fd)?;
        watch.adopt(id)?;
        Ok(watch)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: a valid epoll fd, an open fd and an event that outlives the call.
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes what became ready since the last look, waiting up to `wait` (rounded up to a
    /// millisecond) for something if nothing has: wakes the tasks waiting on their sockets
    /// and appends the core's own registrations to `own`. Returns how many events there were.
    ///
    /// A wait blocks the core's thread, so glommio runs nothing meanwhile. A completion on one
    /// of its rings (the preemption timer, a task's I/O) ends the wait early with EINTR: the
    /// kernel runs it as task work, which counts as a pending signal.
    pub fn collect(&self, own: &mut Vec<Ready>, wait: Duration) -> usize {
        let mut events = self.events.borrow_mut();
        let timeout = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: the buffer holds EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                timeout,
            )
        };
        // An error (EINTR is the only one a valid set gives) reads as nothing this time.
        let Ok(n) = usize::try_from(n) else { return 0 };
        if n == 0 {
            return 0;
        }
        self.looks.set(self.looks.get() + 1);
        let mut tasks = self.tasks.borrow_mut();
        for event in &events[..n] {
            let (bits, token) = (event.events, event.u64);
            let errors = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
            let readable = bits & ((libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | errors) != 0;
            let writable = bits & (libc::EPOLLOUT as u32 | errors) != 0;
            if token & OWN != 0 {
                own.push(Ready {
                    id: token & !OWN,
                    readable,
                    writable,
                    closed: bits & (libc::EPOLLRDHUP as u32 | errors) != 0,
                });
                continue;
            }
            let fd = token as RawFd;
            let Some(waiting) = tasks.get_mut(&fd) else {
                continue;
            };
            if let Some(w) = waiting.read.take_if(|_| readable) {
                w.wake();
            }
            if let Some(w) = waiting.write.take_if(|_| writable) {
                w.wake();
            }
            if waiting.read.is_none() && waiting.write.is_none() {
                tasks.remove(&fd);
            }
        }
        n
    }

    /// Returns once the epoll fd is readable (or the wait failed, which a look at the set
    /// settles either way).
    ///
    /// glommio has no public "wait until this fd is readable", but a stream built from a raw fd
    /// arms exactly that poll when it is made, and its first read waits on it without touching
    /// the fd. The stream is a throw-away duplicate of the epoll fd: only its poll is used.
    pub async fn sleep(&self) {
        // SAFETY: F_DUPFD_CLOEXEC on our own open fd; a non-negative result is ours to own.
        let dup = unsafe { libc::fcntl(self.epoll.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            // Out of fds: look again a little later instead.
            glommio::timer::sleep(Duration::from_millis(1)).await;
            return;
        }
        // SAFETY: the duplicate is owned by the stream, which closes it when dropped.
        let mut waiter = unsafe { UnixStream::from_raw_fd(dup) };
        poll_fn(|cx| Pin::new(&mut waiter).poll_read(cx, &mut []).map(drop)).await;
    }
}

impl Watch {
    /// Hands the socket to the core's own state: its events are reported as `id` from now on,
    /// and one is reported at once if it already holds input.
    pub fn adopt(&self, id: u64) -> io::Result<()> {
        self.readiness.tasks.borrow_mut().remove(&self.fd);
        let r = self
            .readiness
            .ctl(libc::EPOLL_CTL_MOD, self.fd, INTEREST, OWN | id);
        // The kernel looks at the socket afresh, so a short read before this says nothing.
        self.drained_at.set(0);
        r
    }

    /// Stops (`None`) or restarts reporting one of the core's own fds.
    pub fn pause(&self, id: Option<u64>) -> io::Result<()> {
        let Some(id) = id else {
            return self.readiness.ctl(libc::EPOLL_CTL_MOD, self.fd, 0, 0);
        };
        self.adopt(id)
    }

    /// Reads what the socket holds, or says it would block.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let looks = self.readiness.looks.get();
        if self.drained_at.get() == looks {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let len = buf.len();
        // SAFETY: `buf` is writable for `len` bytes.
        let n = unsafe { transfer(libc::SYS_recvfrom, self.fd, buf.as_mut_ptr(), len, 0) }?;
        if n > 0 && n < len && self.drained_at.get() != ENDED {
            self.drained_at.set(looks);
        }
        Ok(n)
    }

    /// The set reported the peer's half-close or an error ([`Ready::closed`]): no read says
    /// "would block" without asking the kernel from now on.
    pub fn peer_closed(&self) {
        self.drained_at.set(ENDED);
    }

    /// Writes what the socket takes, or says it would block.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        // No SIGPIPE for a gone peer.
        let flags = libc::MSG_NOSIGNAL;
        // SAFETY: `buf` is readable for its length.
        unsafe { transfer(libc::SYS_sendto, self.fd, buf.as_ptr(), buf.len(), flags) }
    }

    /// Wakes the task of `cx` once the socket has new input (after a read said it would block).
    pub fn park_read(&self, cx: &Context<'_>) {
        let mut tasks = self.readiness.tasks.borrow_mut();
        keep(&mut tasks.entry(self.fd).or_default().read, cx);
    }

    /// Wakes the task of `cx` once the socket has room again (after a send came up short).
    pub fn park_write(&self, cx: &Context<'_>) {
        let mut tasks = self.readiness.tasks.borrow_mut();
        keep(&mut tasks.entry(self.fd).or_default().write, cx);
    }
}

/// One `recvfrom` or `sendto` on `fd` without blocking and with no peer address, tried again
/// when a signal interrupts it. Made through `syscall(2)` rather than glibc's `recv`/`send`:
/// those are thread cancellation points, and entering and leaving cancellable mode around
/// every call was ~1.5 % of the echo core. No thread is ever cancelled here.
///
/// # Safety
/// `buf` must be valid for `len` bytes: writable for `recvfrom`, readable for `sendto`.
unsafe fn transfer(
    call: libc::c_long,
    fd: RawFd,
    buf: *const u8,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    let flags = (flags | libc::MSG_DONTWAIT) as libc::c_long;
    loop {
        // SAFETY: both calls take (fd, buffer, length, flags, address, address length); the
        // caller vouches for the buffer, and the address is null.
        let none: libc::c_long = 0;
        let n = unsafe { libc::syscall(call, fd as libc::c_long, buf, len, flags, none, none) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn keep(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
    }
}

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for Watch {
    /// Leaves the set while the fd is still open: an fd moved to another core lives on as a
    /// duplicate, and the set would keep reporting it here otherwise.
    fn drop(&mut self) {
        // SAFETY: a valid epoll fd and our still-open socket; the event pointer may be null
        // for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.readiness.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                self.fd,
                std::ptr::null_mut(),
            )
        };
        self.readiness.tasks.borrow_mut().remove(&self.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use std::future::Future;
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream as StdUnixStream;
    use std::task::Poll;

    /// Wakes the tasks waiting on their sockets, as the link loop does.
    async fn dispatch(readiness: Rc<Readiness>) {
        let mut own = Vec::new();
        loop {
            match readiness.collect(&mut own, Duration::ZERO) {
                0 => readiness.sleep().await,
                _ => futures_lite::future::yield_now().await,
            }
            own.clear();
        }
    }

    /// Runs `test` on a glommio core with a dispatcher and returns what it returns. Checks
    /// belong outside: a task that panics leaves the executor running the dispatcher forever,
    /// so a failed check would hang instead of failing.
    fn on_a_core<T: Send + 'static>(
        test: impl FnOnce(Rc<Readiness>) -> Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    ) -> T {
        LocalExecutorBuilder::default()
            .spawn(|| async {
                let readiness = Readiness::new().unwrap();
                glommio::spawn_local(dispatch(readiness.clone())).detach();
                test(readiness).await
            })
            .unwrap()
            .join()
            .unwrap()
    }

    /// A watched socket and its peer.
    fn pair(readiness: &Rc<Readiness>) -> (Watch, StdUnixStream, StdUnixStream) {
        let (ours, theirs) = StdUnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (readiness.watch(ours.as_raw_fd()).unwrap(), ours, theirs)
    }

    /// A read's result, or `None` if nothing woke the reader within five seconds.
    async fn in_time(read: impl Future<Output = io::Result<usize>>) -> Option<usize> {
        let deadline = async {
            glommio::timer::sleep(Duration::from_secs(5)).await;
            None
        };
        // The deadline first: once due, it wins even though the read would now succeed.
        futures_lite::future::or(deadline, async { read.await.ok() }).await
    }

    fn poll_recv(watch: &Watch, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match watch.recv(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                watch.park_read(cx);
                Poll::Pending
            }
            r => Poll::Ready(r),
        }
    }

    async fn read(watch: &Watch, buf: &mut [u8]) -> Option<usize> {
        in_time(poll_fn(|cx| poll_recv(watch, cx, buf))).await
    }

    #[test]
    fn a_waiting_reader_wakes_for_bytes_sent_after_it_slept_and_for_eof() {
        let (polls, bytes, eof) = on_a_core(|readiness| {
            Box::pin(async move {
                let (watch, _ours, mut theirs) = pair(&readiness);
                // Writes once the reader found nothing and the dispatcher parked.
                let writer = glommio::spawn_local(async move {
                    for _ in 0..3 {
                        futures_lite::future::yield_now().await;
                    }
                    theirs.write_all(b"hello").unwrap();
                    theirs
                });
                let mut buf = [0u8; 16];
                let mut polls = 0;
                let n = in_time(poll_fn(|cx| {
                    polls += 1;
                    poll_recv(&watch, cx, &mut buf)
                }))
                .await;
                let bytes = n.map(|n| buf[..n].to_vec());
                drop(writer.await);
                let eof = read(&watch, &mut buf).await;
                (polls, bytes, eof)
            })
        });
        assert_eq!(
            bytes.as_deref(),
            Some(&b"hello"[..]),
            "woken with the bytes"
        );
        assert_eq!(polls, 2, "one empty read, one after the wake-up");
        assert_eq!(eof, Some(0));
    }

    #[test]
    fn bytes_after_a_short_read_arrive_whether_or_not_the_set_was_looked_at_in_between() {
        let reads = on_a_core(|readiness| {
            Box::pin(async move {
                let (watch, _ours, mut theirs) = pair(&readiness);
                let mut buf = [0u8; 16];
                theirs.write_all(b"a").unwrap();
                let short = read(&watch, &mut buf).await;
                // Straight after the short read: the next read waits on the set, which has
                // the new bytes' event.
                theirs.write_all(b"bc").unwrap();
                let next = read(&watch, &mut buf).await;
                // The set looks (and drops the event: nobody waits) between a short read and
                // the next one, which must then ask the kernel.
                theirs.write_all(b"def").unwrap();
                for _ in 0..3 {
                    futures_lite::future::yield_now().await;
                }
                let after_look = read(&watch, &mut buf).await;
                [short, next, after_look]
            })
        });
        assert_eq!(reads, [Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn a_dropped_watch_leaves_the_set_so_the_socket_can_be_watched_again() {
        let (twice, again) = on_a_core(|readiness| {
            Box::pin(async move {
                let (first, ours, _theirs) = pair(&readiness);
                let twice = readiness.watch(ours.as_raw_fd()).err();
                drop(first);
                let again = readiness.watch(ours.as_raw_fd()).map(drop);
                (twice.and_then(|e| e.raw_os_error()), again.is_ok())
            })
        });
        assert_eq!(twice, Some(libc::EEXIST));
        assert!(again);
    }

    /// The link loop's wait in `epoll_wait` relies on this: an io_uring completion for a task
    /// (here a read on a socket the set does not hold) ends the wait, as task work, instead
    /// of leaving the task stalled until the wait's own end.
    #[test]
    fn a_wait_in_the_set_ends_when_a_ring_completion_arrives() {
        let (waited, read) = LocalExecutorBuilder::default()
            // No preemption timer to end the wait: only the read's completion can.
            .preempt_timer(Duration::from_secs(60))
            .spawn(|| async {
                let readiness = Readiness::new().unwrap();
                let (ours, mut theirs) = StdUnixStream::pair().unwrap();
                // SAFETY: the fd is moved into the stream, which owns it from here on.
                let mut stream = unsafe { UnixStream::from_raw_fd(ours.into_raw_fd()) };
                let reader = glommio::spawn_local(async move {
                    let mut buf = [0u8; 8];
                    futures_lite::AsyncReadExt::read(&mut stream, &mut buf)
                        .await
                        .ok()
                });
                // The reader arms its poll, which glommio submits before it parks.
                glommio::timer::sleep(Duration::from_millis(5)).await;
                let writer = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    theirs.write_all(b"x").unwrap();
                    theirs
                });
                let began = std::time::Instant::now();
                let seen = readiness.collect(&mut Vec::new(), Duration::from_secs(30));
                let waited = began.elapsed();
                assert_eq!(seen, 0);
                let read = reader.await;
                drop(writer.join());
                (waited, read)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(
            waited < Duration::from_secs(10),
            "woken by the completion: {waited:?}"
        );
        assert_eq!(read, Some(1));
    }

    /// What the set reports for the core's own registrations right now.
    fn own_events(readiness: &Readiness) -> Vec<Ready> {
        let mut own = Vec::new();
        readiness.collect(&mut own, Duration::ZERO);
        own
    }

    /// The next report for the core's own registrations, waiting for it (loopback TCP may
    /// deliver in a softirq after the sender's call returned).
    fn next_events(readiness: &Readiness) -> Vec<Ready> {
        let mut own = Vec::new();
        for _ in 0..50 {
            readiness.collect(&mut own, Duration::from_millis(100));
            if !own.is_empty() {
                break;
            }
        }
        own
    }

    /// What the short-read shortcut stands on: on TCP a short read empties the socket, and
    /// whatever arrives after it is reported again. A FIN queued behind the bytes is not, so
    /// the report says `closed`, and the reads after it go to the kernel.
    #[test]
    fn after_a_short_tcp_read_new_bytes_are_reported_and_a_queued_fin_says_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let readiness = Readiness::new().unwrap();
        let watch = readiness.watch_own(ours.as_raw_fd(), 5).unwrap();
        own_events(&readiness);
        let mut buf = [0u8; 16];

        theirs.write_all(b"ab").unwrap();
        let first = next_events(&readiness);
        assert!(
            first.len() == 1 && first[0].readable && !first[0].closed,
            "{first:?}"
        );
        assert_eq!(
            watch.recv(&mut buf).unwrap(),
            2,
            "short: the socket is empty"
        );
        theirs.write_all(b"c").unwrap();
        let again = next_events(&readiness);
        assert!(again.len() == 1 && again[0].readable, "{again:?}");
        assert_eq!(watch.recv(&mut buf).unwrap(), 1);

        theirs.write_all(b"d").unwrap();
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        // The byte and the FIN may come as one report or as two.
        loop {
            let seen = next_events(&readiness);
            assert!(!seen.is_empty(), "no report of the FIN");
            if seen.iter().any(|r| r.closed) {
                break;
            }
        }
        watch.peer_closed();
        assert_eq!(watch.recv(&mut buf).unwrap(), 1, "a short read, then");
        assert_eq!(
            watch.recv(&mut buf).unwrap(),
            0,
            "the end, which no new edge would tell"
        );
    }

    #[test]
    fn an_adopted_socket_is_reported_by_its_id_with_the_input_it_already_held() {
        let (ours, mut theirs) = StdUnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let readiness = Readiness::new().unwrap();
        let watch = readiness.watch(ours.as_raw_fd()).unwrap();
        // Writable at once: the task-side event, dropped since no task waits.
        assert!(own_events(&readiness).is_empty());
        theirs.write_all(b"x").unwrap();
        assert!(own_events(&readiness).is_empty(), "still a task's socket");
        watch.adopt(7).unwrap();
        let held = own_events(&readiness);
        assert_eq!(held.len(), 1);
        assert!(held[0].id == 7 && held[0].readable, "{held:?}");
        assert!(
            own_events(&readiness).is_empty(),
            "edge-triggered: reported once"
        );
        let mut buf = [0u8; 4];
        assert_eq!(watch.recv(&mut buf).unwrap(), 1);
        theirs.write_all(b"y").unwrap();
        let more = own_events(&readiness);
        assert!(more.len() == 1 && more[0].readable, "{more:?}");
    }

    #[test]
    fn a_paused_registration_reports_nothing_until_restarted_then_what_queued() {
        let (ours, mut theirs) = StdUnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let readiness = Readiness::new().unwrap();
        let watch = readiness.watch_own(ours.as_raw_fd(), 3).unwrap();
        own_events(&readiness);
        watch.pause(None).unwrap();
        theirs.write_all(b"x").unwrap();
        assert!(own_events(&readiness).is_empty());
        watch.pause(Some(3)).unwrap();
        let queued = own_events(&readiness);
        assert!(
            queued.len() == 1 && queued[0].id == 3 && queued[0].readable,
            "{queued:?}"
        );
    }
}
