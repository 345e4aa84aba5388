//! A client connection as the worker shell sees it: plain TCP, or TCP under rustls. Both are
//! read and written through the same async traits, so the upgrade, the link tasks and the
//! HTTP transports do not care which one they hold.
//!
//! rustls is itself sans-IO: it takes TLS bytes in and hands plaintext out, and the other way
//! round. This file only moves bytes between it and the socket. Its buffered plaintext is
//! capped, so a client that stops reading holds a bounded amount in the TLS layer and the
//! link's own outbound cap (slow consumer, 4002) still applies.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::ServerConnection;

use super::readiness::{Readiness, Watch};

/// Plaintext rustls holds for the socket before `poll_write` says "later".
const TLS_BUFFER: usize = 64 * 1024;
/// TLS bytes read from the socket per `recv`.
const TLS_READ: usize = 16 * 1024 + 512;

pub enum Conn {
    Plain(Socket),
    Tls(Box<TlsConn>),
}

/// A client's TCP socket on the core that serves it: written through glommio, read through the
/// core's epoll set ([`Readiness`]).
pub struct Socket {
    // Declared first so it drops first: the socket leaves the epoll set while its fd is open.
    watch: Watch,
    tcp: TcpStream,
}

impl Socket {
    pub fn new(tcp: TcpStream, readiness: &Rc<Readiness>) -> io::Result<Socket> {
        let watch = readiness.watch(tcp.as_raw_fd())?;
        Ok(Socket { watch, tcp })
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.watch.poll_recv(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_close(cx)
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

    /// Ends the sending side: a TLS close_notify first (best effort: the socket may be full),
    /// then a TCP half-close, so the client still gets to answer the close.
    pub fn shutdown_write(&mut self) {
        if let Conn::Tls(t) = self {
            t.tls.send_close_notify();
            let fd = t.tcp.as_raw_fd();
            let mut out = FdWriter(fd);
            let _ = out.write_all(&std::mem::take(&mut t.unsent));
            while t.tls.wants_write() {
                if t.tls.write_tls(&mut out).is_err() {
                    break;
                }
            }
        }
        // SAFETY: shutdown(2) on the socket this connection owns.
        unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_WR) };
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Conn::Plain(s) => s.as_raw_fd(),
            Conn::Tls(t) => t.tcp.as_raw_fd(),
        }
    }
}

/// Non-blocking writes straight to the socket, for the last bytes of a closing TLS session.
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: send(2) on an open socket with a valid buffer.
        let n = unsafe {
            libc::send(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsConn {
    /// Writes TLS records to the socket until rustls has none left (Ready) or the socket is
    /// full (Pending, woken when it drains). Records taken from rustls wait in `unsent`.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while !self.unsent.is_empty() {
                match Pin::new(&mut self.tcp).poll_write(cx, &self.unsent) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.unsent.drain(..n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.tls.wants_write() {
                if self.unsent.capacity() > TLS_READ {
                    self.unsent = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            self.tls.write_tls(&mut self.unsent)?;
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let t = match self.get_mut() {
            Conn::Plain(s) => return Pin::new(s).poll_read(cx, buf),
            Conn::Tls(t) => t,
        };
        loop {
            match t.tls.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // The handshake and key updates answer the client while we wait for data.
            if let Poll::Ready(Err(e)) = t.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            if t.unread.is_empty() {
                let mut wire = [0u8; TLS_READ];
                let n = ready!(Pin::new(&mut t.tcp).poll_read(cx, &mut wire))?;
                if n == 0 {
                    return Poll::Ready(Ok(0));
                }
                let taken = t.tls.read_tls(&mut &wire[..n])?;
                t.unread.extend_from_slice(&wire[taken..n]);
            } else {
                // What rustls left last time goes first; the socket is read once it took all.
                let taken = t.tls.read_tls(&mut &t.unread[..])?;
                t.unread.drain(..taken);
            }
            if let Err(e) = t.tls.process_new_packets() {
                // Tell the client why (a TLS alert) before giving up on it.
                let _ = t.poll_flush_tls(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let t = match self.get_mut() {
            Conn::Plain(s) => return Pin::new(s).poll_write(cx, buf),
            Conn::Tls(t) => t,
        };
        let n = t.tls.writer().write(buf)?;
        let flushed = t.poll_flush_tls(cx);
        match (n, flushed) {
            (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            // rustls is full and the socket too: come back when the socket drains.
            (0, Poll::Pending) => Poll::Pending,
            (0, Poll::Ready(Ok(()))) => {
                // Room again after the flush.
                Poll::Ready(t.tls.writer().write(buf))
            }
            (n, _) => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(t) => t.poll_flush_tls(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
            Conn::Tls(t) => {
                t.tls.send_close_notify();
                ready!(t.poll_flush_tls(cx))?;
                Pin::new(&mut t.tcp).poll_close(cx)
            }
        }
    }
}
