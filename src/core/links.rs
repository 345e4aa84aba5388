//! The WebSocket links of a core as the core's own state, not one task each: their sockets,
//! and what only the socket side knows of them (a send came up short, the write side is shut).
//!
//! The core's link loop reads every link the epoll set reported in one pass, feeding the bytes
//! to the shard, and every link the shard then has output for is written at the pass's end.
//! A link costs no task, future or waker, so an idle one is its shard state and this entry;
//! and a burst of input on many links is answered in one batch of sends after one clock read.

use std::io;
use std::time::Instant;

use super::admission::Ticket;
use super::conn::Conn;
use super::readiness::Ready;
use super::shard::{Shard, Transmit};
use crate::FastMap;
use crate::link::ConnId;

/// Reads of one link per pass before the others get their turn; a link with more waiting is
/// read again in the next pass (the edge-triggered set will not say so twice).
const READ_BUDGET: usize = 16;

#[derive(Default)]
pub struct Links {
    /// Boxed for the same reason as the shard's links: the map keeps room for up to twice its
    /// entries, and grows by copying into a table twice the size. A spare slot of a key and a
    /// pointer is 16 bytes; an inline socket entry, 80.
    wires: FastMap<ConnId, Box<Wire>>,
    /// Links with output to write at the end of this pass, each listed once.
    dirty: Vec<ConnId>,
}

/// One link's socket, with the admission slot it holds for its whole life.
struct Wire {
    io: Conn,
    _ticket: Ticket,
    listed: bool,
    /// A send came up short: write again once the socket says it has room.
    blocked: bool,
    write_shut: bool,
}

/// How far a link's output got onto its socket (see [`write_out`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// The link is over, or its socket failed: drop it.
    Gone,
    /// The socket is full; the rest waits for room.
    Blocked,
    /// All of it. `closing`: up to the close frame, so the write side may shut.
    Done { closing: bool },
}

/// Writes what the shard has for the link until the socket would block or nothing is left.
/// `now` stamps the writes (the pass's one clock read).
pub fn write_out(shard: &mut Shard, conn: ConnId, io: &mut Conn, now: Instant) -> Flushed {
    loop {
        let wrote = match shard.poll_transmit(conn) {
            Transmit::Gone => return Flushed::Gone,
            Transmit::Idle { closing } => {
                return match io.try_flush() {
                    Ok(()) => Flushed::Done { closing },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Flushed::Blocked,
                    Err(_) => Flushed::Gone,
                };
            }
            Transmit::Bytes(out) => io.try_write(out),
        };
        match wrote {
            Ok(n) if n > 0 => shard.handle_written(conn, n, now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
            _ => return Flushed::Gone,
        }
    }
}

impl Links {
    /// Takes over a link's socket from the task that read its upgrade. The link is listed at
    /// once: the shard queues its 101 and greeting without waking anyone, for the socket side
    /// writes a new link's output unasked.
    pub fn adopt(&mut self, conn: ConnId, io: Conn, ticket: Ticket) -> io::Result<()> {
        io.watch().adopt(conn)?;
        let wire = Wire {
            io,
            _ticket: ticket,
            listed: true,
            blocked: false,
            write_shut: false,
        };
        self.wires.insert(conn, Box::new(wire));
        self.dirty.push(conn);
        Ok(())
    }

    /// Lists a link the shard has output for, to write at the end of the pass. `false`: not a
    /// link of this table (an HTTP-transport link, served by its request's task).
    pub fn mark(&mut self, conn: ConnId) -> bool {
        let Some(wire) = self.wires.get_mut(&conn) else {
            return false;
        };
        list(&mut self.dirty, wire, conn);
        true
    }

    /// Feeds what the link's socket holds to the shard, which the caller settles once every
    /// ready link is read. Returns true when the link has more than its budget waiting, to
    /// read again next pass.
    pub fn read(
        &mut self,
        ready: Ready,
        shard: &mut Shard,
        scratch: &mut [u8],
        now: Instant,
    ) -> bool {
        let conn = ready.id;
        let Some(wire) = self.wires.get_mut(&conn) else {
            // Closed earlier in this pass, or an event from before it moved here.
            return false;
        };
        if ready.writable && wire.blocked {
            list(&mut self.dirty, wire, conn);
        }
        if !ready.readable {
            return false;
        }
        if ready.closed {
            wire.io.watch().peer_closed();
        }
        for _ in 0..READ_BUDGET {
            match wire.io.try_read(scratch) {
                Ok(0) => {
                    // The client half-closed; what it sent last may still want an answer
                    // (its close frame, an ack), which goes out before the socket closes.
                    shard.settle(now);
                    let _ = write_out(shard, conn, &mut wire.io, now);
                    self.close(conn, shard);
                    return false;
                }
                Ok(n) => shard.read_bytes(conn, &mut scratch[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if wire.io.wants_flush() {
                        list(&mut self.dirty, wire, conn);
                    }
                    return false;
                }
                Err(_) => {
                    self.close(conn, shard);
                    return false;
                }
            }
        }
        true
    }

    /// Writes every listed link's output. Returns true if a link closed, which gives the
    /// shard new events to settle.
    pub fn flush(&mut self, shard: &mut Shard, now: Instant) -> bool {
        let mut closed = false;
        for i in 0..self.dirty.len() {
            let conn = self.dirty[i];
            let Some(wire) = self.wires.get_mut(&conn) else {
                continue;
            };
            wire.listed = false;
            match write_out(shard, conn, &mut wire.io, now) {
                Flushed::Gone => {
                    self.close(conn, shard);
                    closed = true;
                }
                Flushed::Blocked => wire.blocked = true,
                Flushed::Done { closing } => {
                    wire.blocked = false;
                    // Once the close frame is out, half-close and read until the client's
                    // EOF: closing at once would answer its in-flight bytes with a reset,
                    // which makes its kernel discard the close frame before it is read.
                    if closing && !wire.write_shut {
                        wire.io.shutdown_write();
                        wire.write_shut = true;
                    }
                }
            }
        }
        self.dirty.clear();
        closed
    }

    /// Drops the link's socket and tells the shard.
    fn close(&mut self, conn: ConnId, shard: &mut Shard) {
        self.wires.remove(&conn);
        shard.closed(conn);
    }
}

fn list(dirty: &mut Vec<ConnId>, wire: &mut Wire, conn: ConnId) {
    if !wire.listed {
        wire.listed = true;
        dirty.push(conn);
    }
}
