//! A client connection as the worker shell sees it: plain TCP, or TCP under rustls. Both are
//! read and written without blocking through the same calls, which say "would block" when the
//! socket has nothing or no room: the core's link loop drives links with those, and the
//! upgrade and HTTP-transport tasks use the async traits built on them.
//!
//! rustls is itself sans-IO: it takes TLS bytes in and hands plaintext out, and the other way
//! round. This file only moves bytes between it and the socket. Its buffered plaintext is
//! capped, so a client that stops reading holds a bounded amount in the TLS layer and the
//! link's own outbound cap (slow consumer, 4002) still applies.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::ServerConnection;

use super::readiness::{Readiness, Watch};

/// Plaintext rustls holds for the socket before a write says "would block".
const TLS_BUFFER: usize = 64 * 1024;
/// TLS bytes read from the socket per `recv`.
const TLS_READ: usize = 16 * 1024 + 512;

pub enum Conn {
    Plain(Socket),
    Tls(Box<TlsConn>),
}

/// A client's non-blocking TCP socket in the epoll set of the core that serves it.
pub struct Socket {
    // Declared first so it drops first: the socket leaves the epoll set while its fd is open.
    watch: Watch,
    _fd: OwnedFd,
}

impl Socket {
    pub fn new(fd: OwnedFd, readiness: &Rc<Readiness>) -> io::Result<Socket> {
        let watch = readiness.watch(fd.as_raw_fd())?;
        Ok(Socket { watch, _fd: fd })
    }
}

pub struct TlsConn {
    tcp: Socket,
    tls: ServerConnection,
    unsent: Vec<u8>,
    /// TLS bytes read from the socket that rustls had no room for yet: it takes at most what
    /// its record buffer has free, which behind a partial record is less than one read.
    unread: Vec<u8>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Conn {
    /// The client's address (`None` if the socket is already gone).
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        // SAFETY: borrows this connection's open fd for one getpeername; ManuallyDrop keeps
        // the borrowed stream from closing it.
        let tcp = std::mem::ManuallyDrop::new(unsafe {
            std::net::TcpStream::from_raw_fd(self.as_raw_fd())
        });
        tcp.peer_addr().ok()
    }

    pub fn tls(tcp: Socket, mut tls: ServerConnection) -> Conn {
        tls.set_buffer_limit(Some(TLS_BUFFER));
        Conn::Tls(Box::new(TlsConn {
            tcp,
            tls,
            unsent: Vec::new(),
            unread: Vec::new(),
        }))
    }

    /// The TLS session, if any, to move to another core with a duplicate of the socket; the
    /// socket itself closes here.
    pub fn into_tls(self) -> Option<Box<ServerConnection>> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(t) => Some(Box::new(t.tls)),
        }
    }

    pub fn watch(&self) -> &Watch {
        match self {
            Conn::Plain(s) => &s.watch,
            Conn::Tls(t) => &t.tcp.watch,
        }
    }

    /// Plaintext from the client: `Ok(0)` at its end, "would block" when nothing is there.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.watch.recv(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }

    /// Takes what fits of `buf`, or says it would block when nothing does.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.watch.send(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }

    /// Moves what the TLS layer holds onto the socket (nothing to do on plain TCP).
    pub fn try_flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(_) => Ok(()),
            Conn::Tls(t) => t.flush(),
        }
    }

    /// TLS records wait for room on the socket.
    pub fn wants_flush(&self) -> bool {
        match self {
            Conn::Plain(_) => false,
            Conn::Tls(t) => !t.unsent.is_empty() || t.tls.wants_write(),
        }
    }

    /// Ends the sending side: a TLS close_notify first (best effort: the socket may be full),
    /// then a TCP half-close, so the client still gets to answer the close.
    pub fn shutdown_write(&mut self) {
        if let Conn::Tls(t) = self {
            t.tls.send_close_notify();
            let _ = t.flush();
        }
        // SAFETY: shutdown(2) on the socket this connection owns.
        unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_WR) };
    }

    /// A task's read said it would block: wake it on input, and also on room to write when
    /// TLS records are waiting (a handshake's answer, a key update).
    fn park_read(&self, cx: &Context<'_>) {
        self.watch().park_read(cx);
        if self.wants_flush() {
            self.watch().park_write(cx);
        }
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.watch().as_raw_fd()
    }
}

impl TlsConn {
    /// Writes TLS records to the socket until rustls has none left, or says it would block.
    /// Records taken from rustls wait in `unsent`.
    fn flush(&mut self) -> io::Result<()> {
        loop {
            while !self.unsent.is_empty() {
                match self.tcp.watch.send(&self.unsent)? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => drop(self.unsent.drain(..n)),
                }
            }
            if !self.tls.wants_write() {
                if self.unsent.capacity() > TLS_READ {
                    self.unsent = Vec::new();
                }
                return Ok(());
            }
            self.tls.write_tls(&mut self.unsent)?;
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
            // The handshake and key updates answer the client while we wait for data.
            match self.flush() {
                Err(e) if !would_block(&e) => return Err(e),
                _ => {}
            }
            if self.unread.is_empty() {
                let mut wire = [0u8; TLS_READ];
                let n = self.tcp.watch.recv(&mut wire)?;
                if n == 0 {
                    return Ok(0);
                }
                let taken = self.tls.read_tls(&mut &wire[..n])?;
                self.unread.extend_from_slice(&wire[taken..n]);
            } else {
                // What rustls left last time goes first; the socket is read once it took all.
                let taken = self.tls.read_tls(&mut &self.unread[..])?;
                self.unread.drain(..taken);
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the client why (a TLS alert) before giving up on it.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tls.writer().write(buf)?;
        match (n, self.flush()) {
            (_, Err(e)) if !would_block(&e) => Err(e),
            // rustls is full and the socket too.
            (0, Err(e)) => Err(e),
            // Room again after the flush.
            (0, Ok(())) => self.tls.writer().write(buf),
            (n, _) => Ok(n),
        }
    }
}

/// Turns "would block" into Pending, with the task parked by `park`.
fn pending_on<T>(r: io::Result<T>, park: impl FnOnce()) -> Poll<io::Result<T>> {
    match r {
        Err(e) if would_block(&e) => {
            park();
            Poll::Pending
        }
        r => Poll::Ready(r),
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this.try_read(buf);
        pending_on(r, || this.park_read(cx))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this.try_write(buf);
        pending_on(r, || this.watch().park_write(cx))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = this.try_flush();
        pending_on(r, || this.watch().park_write(cx))
    }

    /// Sends a TLS session's close_notify; the socket itself closes when dropped.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Conn::Tls(t) = &mut *self {
            t.tls.send_close_notify();
        }
        self.poll_flush(cx)
    }
}
