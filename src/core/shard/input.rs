//! A link's bytes from its socket: WebSocket frames read and inflated, frames decoded (into
//! reused frames), then each handled in order.

use super::*;

pub(super) enum Inbound {
    Frame(Box<Frame>),
    Undecodable(String),
    /// `--ws-echo`: a data message to send back unread.
    Echo(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// A compressed message, inflated into `plain` (the core's scratch) and, for text, checked to
/// be UTF-8.
fn inflate(
    d: &mut Deflating,
    payload: &[u8],
    max: usize,
    text: bool,
    plain: &mut Vec<u8>,
) -> Result<(), WsError> {
    plain.clear();
    d.ctx.decompress(payload, max, plain).map_err(|e| match e {
        deflate::InflateError::TooLarge => WsError::TooLarge,
        deflate::InflateError::Corrupt => WsError::Protocol("corrupt compressed message"),
    })?;
    if text && std::str::from_utf8(plain).is_err() {
        return Err(WsError::BadUtf8);
    }
    d.metrics.inflated_in.inc();
    Ok(())
}

impl Shard {
    /// Bytes arrived on a link's socket. `input` is the shell's scratch buffer; it is unmasked
    /// in place.
    pub fn handle_bytes(&mut self, conn: ConnId, input: &mut [u8], now: Instant) {
        self.read_bytes(conn, input, now);
        self.settle(now);
    }

    /// [`handle_bytes`](Shard::handle_bytes) for a shell that reads many links in one pass:
    /// it [`settle`](Shard::settle)s once after the last. Until then the messages' claims
    /// wait, their store slots loading while the other links are read.
    pub fn read_bytes(&mut self, conn: ConnId, input: &mut [u8], now: Instant) {
        let max = self.cfg.max_message_bytes;
        if self.hold_input(conn, input, now) {
            return;
        }
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if !link.is_open() {
            // Closing: only the client's close frame matters now; it ends the handshake.
            let mut answered = false;
            let res = link
                .reader
                .feed(input, max, |ev| answered |= matches!(ev, WsEvent::Close(_)));
            if answered || res.is_err() {
                link.finished = true;
                link.wake();
            }
            return;
        }
        link.last_activity = now.into();
        let codec = link.codec;
        let echo = self.cfg.ws_echo;
        let mut deflate = match &mut link.wire {
            Wire::WebSocket(Some(d)) => Some(d),
            _ => None,
        };
        let mut broken = None;
        let mut inbound = std::mem::take(&mut self.inbound);
        let mut spare = std::mem::take(&mut self.spare_frames);
        let mut inflated = std::mem::take(&mut self.inflated);
        let arena = &mut self.arena;
        let result = link.reader.feed(input, max, |ev| {
            if broken.is_some() {
                return;
            }
            inbound.push(match ev {
                WsEvent::Message {
                    text,
                    compressed,
                    payload,
                } => {
                    let payload = if compressed {
                        let d = deflate.as_mut().expect("RSV1 is accepted only once agreed");
                        if let Err(e) = inflate(d, payload, max, text, &mut inflated) {
                            return broken = Some(e);
                        }
                        &inflated[..]
                    } else {
                        payload
                    };
                    if echo {
                        return inbound.push(Inbound::Echo(text, payload.to_vec()));
                    }
                    let mut f = spare.pop().unwrap_or_default();
                    match codec.decode_into(payload, arena, &mut f) {
                        Ok(()) => Inbound::Frame(f),
                        Err(e) => Inbound::Undecodable(e.0),
                    }
                }
                WsEvent::Ping(p) => Inbound::Ping(p.to_vec()),
                WsEvent::Pong => Inbound::Pong,
                WsEvent::Close(code) => Inbound::Close(code),
            })
        });
        self.inflated = inflated;
        self.spare_frames = spare;
        let result = result.and(broken.map_or(Ok(()), Err));
        for ev in inbound.drain(..) {
            self.handle(conn, ev, now);
        }
        self.inbound = inbound;
        if let Err(e) = result {
            self.fail_stream(conn, e, now);
        }
        self.check_backlog(conn, now);
    }

    fn fail_stream(&mut self, conn: ConnId, e: WsError, now: Instant) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if e == WsError::TooLarge {
            let frame = Frame {
                cmd: Cmd::Error as i32,
                code: Code::TooLarge as i32,
                reason: format!(
                    "messages are limited to {} bytes",
                    self.cfg.max_message_bytes
                ),
                ..Default::default()
            };
            link.send_frame(&frame);
            self.metrics.frame_out(Cmd::Error);
        }
        let why = if e == WsError::TooLarge {
            CloseReason::TooBig
        } else {
            CloseReason::ProtocolError
        };
        self.close_link(conn, e.close_code(), e.reason(), why, now);
    }

    pub(super) fn handle(&mut self, conn: ConnId, ev: Inbound, now: Instant) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if !link.is_open() {
            return;
        }
        match ev {
            Inbound::Ping(p) => link.send_control(Control::Pong, &p),
            Inbound::Pong => {}
            Inbound::Echo(text, payload) => link.send_data(text, &payload),
            Inbound::Close(code) => {
                let code = code.unwrap_or(close_code::NORMAL);
                self.close_link(conn, code, "", CloseReason::ClientClosed, now);
            }
            Inbound::Undecodable(why) => {
                self.metrics.dropped(DropReason::BadFrame);
                if link.bucket.try_take(self.cfg.link_rate, now).is_ok() {
                    let reason = format!("cannot decode frame as {:?}: {why}", link.codec);
                    self.reply_error(conn, "", Code::BadFrame, reason);
                }
            }
            Inbound::Frame(f) => {
                self.metrics.frame_in(f.cmd);
                match Cmd::try_from(f.cmd) {
                    Ok(Cmd::Heartbeat) => {
                        let echo = Frame {
                            cmd: Cmd::Heartbeat as i32,
                            key: f.key,
                            body: f.body,
                            ..Default::default()
                        };
                        link.send_frame(&echo);
                        self.metrics.frame_out(Cmd::Heartbeat);
                    }
                    Ok(Cmd::Upstream) => self.on_upstream(conn, f, now),
                    Ok(Cmd::DownstreamAck) => {
                        self.on_downstream_ack(conn, &f.key, now);
                        if self.spare_frames.len() < SPARE_FRAMES {
                            self.spare_frames.push(f);
                        }
                    }
                    Ok(Cmd::Refresh) => self.on_refresh(conn, f.token),
                    _ => {
                        self.metrics.dropped(DropReason::UnsupportedCmd);
                        if link.bucket.try_take(self.cfg.link_rate, now).is_ok() {
                            let reason = format!("clients may not send cmd {}", f.cmd);
                            self.reply_error(conn, &f.key, Code::UnsupportedCmd, reason);
                        }
                    }
                }
            }
        }
    }
}
