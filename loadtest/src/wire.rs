//! A link's WebSocket frames after the handshake, framed by hand for the echo's hot loop.
//!
//! tokio-tungstenite registers its read and write wakers on every poll and builds a `Message`
//! per frame. On the load generator's single core that was about a tenth of each message's
//! cost. A slower generator does more than lower the ACK rate: it leaves the server idle more
//! often, and on a virtual machine each sleep and wake-up costs the server several µs of its
//! own core, which the per-core-second figure then charges to the server.

use std::io;

use ringway::proto::Frame;
use ringway::protocol::Codec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;

/// Received bytes parsed past this are dropped from the front of the buffer.
const COMPACT_AT: usize = 64 * 1024;

pub struct Wire<S> {
    stream: S,
    codec: Codec,
    /// Frames queued for the next flush, masked and framed.
    out: Vec<u8>,
    /// A frame's encoding before it is framed.
    body: Vec<u8>,
    /// Bytes received; those before `parsed` are done with.
    received: Vec<u8>,
    parsed: usize,
    /// Xorshift state for the masking keys: RFC 6455 wants them unpredictable to script in a
    /// browser, which a load generator is not; they only have to vary.
    seed: u64,
}

/// What the front of the received bytes holds.
enum Parsed {
    Frame(Frame),
    /// A control frame or one to skip; parse on.
    Again,
    NeedMore,
    /// A close frame, or bytes that do not parse as a frame or a message.
    End,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Takes over `stream` just after the handshake. Bytes the handshake's reader had already
    /// taken past its last frame are not here: call it only when the server has no reason to
    /// have sent more yet.
    pub fn new(stream: S, codec: Codec, seed: u64) -> Self {
        Wire {
            stream,
            codec,
            out: Vec::with_capacity(4096),
            body: Vec::with_capacity(256),
            received: Vec::with_capacity(4096),
            parsed: 0,
            seed: seed | 1,
        }
    }

    /// Queues `f` as one masked client frame, to go out with the next [`Wire::flush`].
    pub fn queue(&mut self, f: &Frame) {
        self.body.clear();
        self.codec.encode(f, &mut self.body);
        let opcode = match self.codec {
            Codec::Proto => BINARY,
            Codec::Json => TEXT,
        };
        frame(&mut self.out, &mut self.seed, opcode, &self.body);
    }

    /// Writes every queued frame, in one write when the socket takes it.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next data frame, decoded; `None` once the link is closed or sent something that is
    /// not a whole, decodable message. Pings are answered with the next flush.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.parse() {
                Parsed::Frame(f) => return Some(f),
                Parsed::Again => continue,
                Parsed::End => return None,
                Parsed::NeedMore => {}
            }
            if self.parsed == self.received.len() {
                self.received.clear();
                self.parsed = 0;
            } else if self.parsed >= COMPACT_AT {
                self.received.drain(..self.parsed);
                self.parsed = 0;
            }
            self.received.reserve(4096);
            match self.stream.read_buf(&mut self.received).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn parse(&mut self) -> Parsed {
        let b = &self.received[self.parsed..];
        if b.len() < 2 {
            return Parsed::NeedMore;
        }
        let (head, opcode) = (b[0], b[0] & 0x0F);
        let (mut len, mut at) = (usize::from(b[1] & 0x7F), 2usize);
        if len == 126 {
            let Some(l) = b.get(2..4) else {
                return Parsed::NeedMore;
            };
            (len, at) = (usize::from(u16::from_be_bytes([l[0], l[1]])), 4);
        } else if len == 127 {
            let Some(l) = b.get(2..10) else {
                return Parsed::NeedMore;
            };
            let l = u64::from_be_bytes(l.try_into().expect("8 bytes"));
            let Ok(l) = usize::try_from(l) else {
                return Parsed::End;
            };
            (len, at) = (l, 10);
        }
        // A server never masks its frames.
        if b[1] & MASKED != 0 {
            return Parsed::End;
        }
        let Some(payload) = b.get(at..at.saturating_add(len)) else {
            return Parsed::NeedMore;
        };
        self.parsed += at + len;
        // Servers here send whole messages: a fragment is as unexpected as a bad frame.
        match (head & FIN != 0, opcode) {
            (true, TEXT | BINARY) => match self.codec.decode(payload) {
                Ok(f) => Parsed::Frame(f),
                Err(_) => Parsed::End,
            },
            (true, PING) => {
                frame(&mut self.out, &mut self.seed, PONG, payload);
                Parsed::Again
            }
            (true, PONG) => Parsed::Again,
            _ => Parsed::End,
        }
    }

    /// Says goodbye with a close frame; the server's answer is not waited for.
    pub async fn close(mut self) {
        frame(&mut self.out, &mut self.seed, CLOSE, &[]);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Appends `payload` to `out` as one masked client frame, its key drawn from `seed`.
fn frame(out: &mut Vec<u8>, seed: &mut u64, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.push(FIN | opcode);
    if len < 126 {
        out.push(MASKED | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(MASKED | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(MASKED | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let key = (*seed as u32).to_be_bytes();
    out.extend_from_slice(&key);
    out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use ringway::proto::Cmd;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::{Bytes, Message};

    fn frame(key: &str, body: usize) -> Frame {
        Frame {
            cmd: Cmd::Upstream as i32,
            key: key.into(),
            body: vec![b'x'; body].into(),
            ..Default::default()
        }
    }

    /// tungstenite, as the server, reads what the wire frames and frames what it reads: short
    /// and 16-bit lengths both ways, and a ping answered on the next flush.
    #[tokio::test]
    async fn frames_pass_tungstenite_both_ways() {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(theirs, Role::Server, None).await;
            let mut keys = Vec::new();
            for _ in 0..2 {
                match ws.next().await.unwrap().unwrap() {
                    Message::Binary(b) => keys.push(Codec::Proto.decode(&b).unwrap().key),
                    other => panic!("unexpected {other:?}"),
                }
            }
            ws.send(Message::Ping(Bytes::from_static(b"p")))
                .await
                .unwrap();
            for (key, body) in [("c", 300), ("d", 0)] {
                let mut reply = Vec::new();
                Codec::Proto.encode(&frame(key, body), &mut reply);
                ws.send(Message::Binary(reply.into())).await.unwrap();
            }
            let pong = ws.next().await.unwrap().unwrap();
            (keys, pong)
        });
        let mut wire = Wire::new(ours, Codec::Proto, 7);
        wire.queue(&frame("a", 300));
        wire.queue(&frame("b", 0));
        wire.flush().await.unwrap();
        assert_eq!(wire.next_frame().await.unwrap().key, "c");
        assert_eq!(wire.next_frame().await.unwrap().key, "d");
        wire.flush().await.unwrap();
        let (keys, pong) = server.await.unwrap();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(pong, Message::Pong(Bytes::from_static(b"p")));
    }
}
