//! Read readiness of a core's client sockets, from one edge-triggered epoll set per core.
//!
//! glommio waits for a socket by arming a one-shot io_uring poll each time a read comes up
//! empty. The kernel completes that poll on the CPU that received the packet, as task work for
//! this core's thread, and interrupts the core to run it: in the echo benchmark that was about
//! 15,000 reschedule interrupts a second on the server core, against none for an epoll-based
//! server, and on a virtual machine each one costs both CPUs an exit. An epoll set keeps every
//! socket registered for its whole life instead. A busy core collects what became readable with
//! one non-blocking `epoll_wait` per executor pass; only a core that found nothing arms a single
//! io_uring poll, on the epoll fd, to sleep on.
//!
//! Writes stay with glommio: a `send` that does not fit is rare and arms its own poll.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::AsyncRead;
use glommio::net::UnixStream;
use tracing::warn;

/// Events taken per `epoll_wait`; more wait for the next pass.
const EVENTS: usize = 256;

pub struct Readiness {
    epoll: OwnedFd,
    /// The task waiting for each socket to become readable, by fd.
    waiting: RefCell<Vec<Option<Waker>>>,
    /// How many times the set was read. An event for a socket nobody waits on is dropped, so a
    /// reader may trust an earlier short read only while this has not moved.
    looks: Cell<u64>,
}

/// One socket's place in the epoll set, for as long as the socket is open on this core.
/// Dropping it leaves the set; it must drop before its fd closes (see [`Watch::drop`]).
pub struct Watch {
    fd: RawFd,
    /// A short read notes the set's look count here: while the count has not moved, the socket
    /// is known to be empty (anything newer has its event still in the set) and the next read
    /// waits without asking the kernel. Saves the `recv` that would only say `EAGAIN`, once per
    /// message in a request-reply exchange.
    drained_until: Cell<Option<u64>>,
    readiness: Rc<Readiness>,
}

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
            waiting: RefCell::new(Vec::new()),
            looks: Cell::new(0),
        }))
    }

    /// Adds `fd` to the set. Edge-triggered: an event says only that new bytes arrived, so a
    /// reader waits only once it knows the socket empty ([`Watch::poll_recv`]).
    pub fn watch(self: &Rc<Self>, fd: RawFd) -> io::Result<Watch> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: a valid epoll fd, an open socket and an event that outlives the call.
        let r =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watch {
            fd,
            drained_until: Cell::new(None),
            readiness: self.clone(),
        })
    }

    /// Wakes the tasks whose sockets became readable, for the core's whole life.
    pub async fn run(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            // SAFETY: the buffer holds EVENTS entries; a zero timeout never blocks the core.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as i32,
                    0,
                )
            };
            if n > 0 {
                self.looks.set(self.looks.get() + 1);
                for event in &events[..n as usize] {
                    let waker = self
                        .waiting
                        .borrow_mut()
                        .get_mut(event.u64 as usize)
                        .and_then(Option::take);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
                // The woken tasks read before the set is looked at again.
                futures_lite::future::yield_now().await;
            } else if n == 0 {
                self.sleep().await;
            } else {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(error = %e, "epoll_wait failed");
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// Returns once the epoll fd is readable (or the wait failed, which a look at the set
    /// settles either way).
    ///
    /// glommio has no public "wait until this fd is readable", but a stream built from a raw fd
    /// arms exactly that poll when it is made, and its first read waits on it without touching
    /// the fd. The stream is a throw-away duplicate of the epoll fd: only its poll is used.
    async fn sleep(&self) {
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
    /// Reads what the socket holds; with nothing there, waits for the epoll set to say more
    /// arrived.
    pub fn poll_recv(&self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let looks = self.readiness.looks.get();
        if self.drained_until.get() != Some(looks) {
            match self.recv(buf) {
                Ok(n) => {
                    if n > 0 && n < buf.len() {
                        self.drained_until.set(Some(looks));
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let mut waiting = self.readiness.waiting.borrow_mut();
        let at = self.fd as usize;
        if waiting.len() <= at {
            waiting.resize(at + 1, None);
        }
        match &mut waiting[at] {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: recv(2) into a valid buffer of buf.len() bytes on our open socket.
            let n = unsafe {
                libc::recv(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
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
        if let Some(slot) = self
            .readiness
            .waiting
            .borrow_mut()
            .get_mut(self.fd as usize)
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use std::io::Write;
    use std::os::unix::net::UnixStream as StdUnixStream;

    /// Runs `test` on a glommio core with the set's dispatcher and returns what it returns.
    /// Checks belong outside: a task that panics leaves the executor running the dispatcher
    /// forever, so a failed check would hang instead of failing.
    fn on_a_core<T: Send + 'static>(
        test: impl FnOnce(Rc<Readiness>) -> Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    ) -> T {
        LocalExecutorBuilder::default()
            .spawn(|| async {
                let readiness = Readiness::new().unwrap();
                glommio::spawn_local(readiness.clone().run()).detach();
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

    async fn read(watch: &Watch, buf: &mut [u8]) -> Option<usize> {
        in_time(poll_fn(|cx| watch.poll_recv(cx, buf))).await
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
                    watch.poll_recv(cx, &mut buf)
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
}
