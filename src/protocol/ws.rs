//! Server side of RFC 6455 framing, sans-IO.
//!
//! The reader is fed whatever bytes the socket produced and calls back once per complete
//! message or control frame. It keeps no buffer while a link is idle: only a partial frame
//! (or a fragmented message) is copied into the link, so ten thousand quiet links cost nothing
//! here. Frame headers are parsed with tungstenite's `FrameHeader` and written by hand; message
//! assembly, the server's validation rules and buffer ownership live here.

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// One thing the peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent<'a> {
    /// A complete data message. `text` tells the opcode; the payload of an uncompressed text
    /// message is already checked to be UTF-8. A `compressed` one (permessage-deflate) is
    /// checked by whoever inflates it.
    Message {
        text: bool,
        compressed: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong,
    /// The peer started the closing handshake. `None` when it sent no status code.
    Close(Option<u16>),
}

/// Why a link's input cannot be read any further. Each maps to the close code the RFC names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    Protocol(&'static str),
    TooLarge,
    BadUtf8,
}

impl WsError {
    pub fn close_code(self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::TooLarge => 1009,
            WsError::BadUtf8 => 1007,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            WsError::Protocol(why) => why,
            WsError::TooLarge => "message too large",
            WsError::BadUtf8 => "text message is not UTF-8",
        }
    }
}

/// A data message whose first frames have arrived.
#[derive(Debug)]
struct Fragments {
    text: bool,
    compressed: bool,
    payload: Vec<u8>,
    /// Uncompressed text: how much of `payload` is known to start valid UTF-8, so a bad
    /// sequence fails the link at the fragment that brings it, not at the message's end.
    checked: usize,
}

/// A text frame still arriving: its payload so far is unmasked and checked as it comes, so bad
/// UTF-8 fails the link before the frame's last byte (which may never come).
/// 32-bit counts keep every idle link 8 bytes smaller: a frame's payload is at most
/// [`MAX_MESSAGE`].
#[derive(Debug, Default)]
struct Arriving {
    unmasked: u32,
    /// Bytes of this frame's payload known to be valid UTF-8 so far; counted only when the
    /// frame starts on a character boundary of its message.
    checked: u32,
}

/// The largest message a reader takes, whatever it is asked for (`--max-message-bytes` is
/// refused above it).
pub const MAX_MESSAGE: usize = 1 << 30;

/// Incremental reader of client frames.
#[derive(Debug, Default)]
pub struct WsReader {
    /// Bytes of a frame that has not fully arrived yet.
    partial: Vec<u8>,
    /// A fragmented data message being assembled.
    /// Boxed: fragmented messages are rare, and every idle link carries this field.
    fragments: Option<Box<Fragments>>,
    /// The frame at the start of `partial`, as far as it was read before the rest arrived.
    arriving: Arriving,
    /// Set by the first error: where a bad frame ends is unknown, so nothing after it is read.
    failed: Option<WsError>,
    /// permessage-deflate was agreed: RSV1 marks a compressed message.
    pub deflate: bool,
}

impl WsReader {
    /// Feeds bytes read from the socket. `input` is unmasked in place, so the caller's scratch
    /// buffer is reused instead of copying each payload. Returns an error once the stream is
    /// unusable; the caller closes the link with [`WsError::close_code`].
    pub fn feed(
        &mut self,
        input: &mut [u8],
        max_message: usize,
        mut on_event: impl FnMut(WsEvent<'_>),
    ) -> Result<(), WsError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = if self.partial.is_empty() {
            self.parse(input, max_message, &mut on_event).map(|used| {
                if used < input.len() {
                    self.partial.extend_from_slice(&input[used..]);
                }
            })
        } else {
            self.partial.extend_from_slice(input);
            let mut buf = std::mem::take(&mut self.partial);
            self.parse(&mut buf, max_message, &mut on_event)
                .map(|used| {
                    buf.drain(..used);
                    self.partial = buf;
                })
        };
        if let Err(e) = result {
            *self = WsReader {
                failed: Some(e),
                ..WsReader::default()
            };
            return Err(e);
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            // Give the memory back: a link that sent one big message keeps no big buffer.
            self.partial = Vec::new();
        }
        Ok(())
    }

    /// Parses every complete frame at the start of `buf`; returns how many bytes were used.
    fn parse(
        &mut self,
        buf: &mut [u8],
        max_message: usize,
        on_event: &mut impl FnMut(WsEvent<'_>),
    ) -> Result<usize, WsError> {
        let mut pos = 0;
        loop {
            let mut cursor = Cursor::new(&buf[pos..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(pos),
                Err(_) => return Err(WsError::Protocol("malformed frame header")),
            };
            let header_len = cursor.position() as usize;
            if let OpCode::Control(_) = header.opcode {
                if len > 125 {
                    return Err(WsError::Protocol("control frames must be final and short"));
                }
            } else {
                let already = self.fragments.as_ref().map_or(0, |f| f.payload.len());
                if len > max_message.min(MAX_MESSAGE).saturating_sub(already) as u64 {
                    return Err(WsError::TooLarge);
                }
            }
            let len = len as usize;
            let start = pos + header_len;
            if buf.len() - start < len {
                self.check_arriving(&header, &mut buf[start..])?;
                return Ok(pos);
            }
            let payload = &mut buf[start..start + len];
            pos = start + len;
            let arriving = std::mem::take(&mut self.arriving);
            self.frame(&header, payload, arriving, on_event)?;
        }
    }

    /// Unmasks and checks what has arrived of an uncompressed text frame that starts on a
    /// character boundary; `so_far` is its payload up to the end of the input.
    fn check_arriving(&mut self, header: &FrameHeader, so_far: &mut [u8]) -> Result<(), WsError> {
        let at_boundary = match (header.opcode, &self.fragments) {
            (OpCode::Data(Data::Text), None) => !header.rsv1,
            (OpCode::Data(Data::Continue), Some(f)) => {
                f.text && !f.compressed && f.checked == f.payload.len()
            }
            _ => false,
        };
        let Some(mask) = header.mask.filter(|_| at_boundary) else {
            return Ok(());
        };
        let a = &mut self.arriving;
        unmask_from(so_far, mask, a.unmasked as usize);
        a.unmasked = so_far.len() as u32;
        a.checked = utf8_prefix(so_far, a.checked as usize)? as u32;
        Ok(())
    }

    /// Handles one whole frame; `arriving` tells how much of it was read while incomplete.
    fn frame(
        &mut self,
        header: &FrameHeader,
        payload: &mut [u8],
        arriving: Arriving,
        on_event: &mut impl FnMut(WsEvent<'_>),
    ) -> Result<(), WsError> {
        // RSV1 is deflate's flag, allowed only on the first frame of a data message.
        let first_of_message = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        if header.rsv2 || header.rsv3 || header.rsv1 && !(self.deflate && first_of_message) {
            return Err(WsError::Protocol(
                "reserved bits set without a negotiated extension",
            ));
        }
        let Some(mask) = header.mask else {
            return Err(WsError::Protocol("client frames must be masked"));
        };
        unmask_from(payload, mask, arriving.unmasked as usize);
        match header.opcode {
            OpCode::Control(ctl) => {
                if !header.is_final || payload.len() > 125 {
                    return Err(WsError::Protocol("control frames must be final and short"));
                }
                match ctl {
                    Control::Ping => on_event(WsEvent::Ping(payload)),
                    Control::Pong => on_event(WsEvent::Pong),
                    Control::Close => on_event(WsEvent::Close(parse_close(payload)?)),
                    Control::Reserved(_) => return Err(WsError::Protocol("reserved opcode")),
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some(mut msg) = self.fragments.take() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                if arriving.checked > 0 {
                    // This frame started on a boundary: its checked bytes extend the message's.
                    msg.checked = msg.payload.len() + arriving.checked as usize;
                }
                msg.payload.extend_from_slice(payload);
                if header.is_final {
                    deliver(
                        msg.text,
                        msg.compressed,
                        &msg.payload,
                        msg.checked,
                        on_event,
                    )?;
                } else {
                    msg.check_utf8()?;
                    self.fragments = Some(msg);
                }
            }
            OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                if self.fragments.is_some() {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                let text = data == Data::Text;
                let compressed = header.rsv1;
                if header.is_final {
                    deliver(
                        text,
                        compressed,
                        payload,
                        arriving.checked as usize,
                        on_event,
                    )?;
                } else {
                    let mut msg = Box::new(Fragments {
                        text,
                        compressed,
                        payload: payload.to_vec(),
                        checked: arriving.checked as usize,
                    });
                    msg.check_utf8()?;
                    self.fragments = Some(msg);
                }
            }
            OpCode::Data(Data::Reserved(_)) => return Err(WsError::Protocol("reserved opcode")),
        }
        Ok(())
    }
}

impl Fragments {
    fn check_utf8(&mut self) -> Result<(), WsError> {
        if self.text && !self.compressed {
            self.checked = utf8_prefix(&self.payload, self.checked)?;
        }
        Ok(())
    }
}

/// How much of `bytes` is valid UTF-8 so far, given that `bytes[..from]` was: a sequence cut
/// off at the end may still be completed by the next fragment; any other error is final.
fn utf8_prefix(bytes: &[u8], from: usize) -> Result<usize, WsError> {
    match std::str::from_utf8(&bytes[from..]) {
        Ok(_) => Ok(bytes.len()),
        Err(e) if e.error_len().is_none() => Ok(from + e.valid_up_to()),
        Err(_) => Err(WsError::BadUtf8),
    }
}

/// Hands a whole message on; `checked` bytes of an uncompressed text message were validated
/// as its fragments came.
fn deliver(
    text: bool,
    compressed: bool,
    payload: &[u8],
    checked: usize,
    on_event: &mut impl FnMut(WsEvent<'_>),
) -> Result<(), WsError> {
    if text && !compressed && utf8_prefix(payload, checked)? != payload.len() {
        return Err(WsError::BadUtf8);
    }
    on_event(WsEvent::Message {
        text,
        compressed,
        payload,
    });
    Ok(())
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_allowed() {
                return Err(WsError::Protocol("close code not allowed on the wire"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(WsError::BadUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// Unmasks `payload[from..]`, the bytes before `from` being unmasked already.
fn unmask_from(payload: &mut [u8], mask: [u8; 4], from: usize) {
    if from == 0 {
        // Nearly every frame arrives whole.
        return unmask(payload, mask);
    }
    let rotated = std::array::from_fn(|i| mask[(from + i) & 3]);
    unmask(&mut payload[from..], rotated);
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Length of the header [`write_header`] emits for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// An unmasked, final server frame header, and how many of its bytes are used.
///
/// Written by hand rather than by `FrameHeader::format`, which goes through `io::Write`: on
/// the echo path that was a copy call per header and another per payload moved to meet it.
/// The test `server_headers_match_tungstenite` holds the two equal.
fn server_header(opcode: OpCode, compressed: bool, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | if compressed { 0x40 } else { 0 } | u8::from(opcode);
    let used = header_len(len);
    match used {
        2 => h[1] = len as u8,
        4 => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
    (h, used)
}

/// Appends an unmasked, final server frame header.
pub fn write_header(out: &mut Vec<u8>, opcode: OpCode, len: usize) {
    let (h, used) = server_header(opcode, false, len);
    out.extend_from_slice(&h[..used]);
}

/// Appends a whole server frame whose payload `encode` writes straight into `out`, so a frame
/// costs no buffer of its own. The payload goes after room for a two-byte header, which is
/// every message under 126 bytes; a longer one moves up to make room for its longer header.
/// `compressed` sets RSV1 (permessage-deflate). Returns the payload's length.
pub fn write_message_with(
    out: &mut Vec<u8>,
    opcode: OpCode,
    compressed: bool,
    encode: impl FnOnce(&mut Vec<u8>),
) -> usize {
    const SHORT: usize = 2;
    let start = out.len();
    out.extend_from_slice(&[0; SHORT]);
    encode(out);
    let end = out.len();
    let len = end - start - SHORT;
    let (h, used) = server_header(opcode, compressed, len);
    if used > SHORT {
        out.resize(end + used - SHORT, 0);
        out.copy_within(start + SHORT..end, start + used);
    }
    out[start..start + used].copy_from_slice(&h[..used]);
    len
}

/// Appends a whole server frame.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    out.reserve(header_len(payload.len()) + payload.len());
    write_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// The whole length (header and payload) of the frame that starts `buf`; `buf.len()` when its
/// header is cut short.
pub fn frame_len(buf: &[u8]) -> usize {
    let Some(&b1) = buf.get(1) else {
        return buf.len();
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (head, payload) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (4, u64::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => (
            10,
            u64::from_be_bytes(buf[2..10].try_into().expect("eight bytes")),
        ),
        126 | 127 => return buf.len(),
        n => (2, u64::from(n)),
    };
    usize::try_from(payload).map_or(usize::MAX, |p| p.saturating_add(head + mask))
}

/// Appends a close frame with a status code and a reason cut to fit a control frame.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    write_frame(out, OpCode::Control(Control::Close), &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Msg(bool, Vec<u8>),
        Zipped(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    fn feed_all(reader: &mut WsReader, bytes: &[u8], max: usize) -> Result<Vec<Got>, WsError> {
        let mut got = Vec::new();
        reader.feed(&mut bytes.to_vec(), max, |ev| {
            got.push(match ev {
                WsEvent::Message {
                    text,
                    compressed,
                    payload,
                } => match compressed {
                    false => Got::Msg(text, payload.to_vec()),
                    true => Got::Zipped(text, payload.to_vec()),
                },
                WsEvent::Ping(p) => Got::Ping(p.to_vec()),
                WsEvent::Pong => Got::Pong,
                WsEvent::Close(c) => Got::Close(c),
            })
        })?;
        Ok(got)
    }

    #[test]
    fn whole_messages_in_one_read() {
        let mut bytes = client_frame(0x81, b"hello");
        bytes.extend(client_frame(0x82, &[1, 2, 3]));
        bytes.extend(client_frame(0x89, b"p"));
        let got = feed_all(&mut WsReader::default(), &bytes, 1024).unwrap();
        assert_eq!(
            got,
            vec![
                Got::Msg(true, b"hello".to_vec()),
                Got::Msg(false, vec![1, 2, 3]),
                Got::Ping(b"p".to_vec())
            ]
        );
    }

    #[test]
    fn byte_at_a_time_and_buffer_released() {
        let payload = vec![7u8; 300];
        let bytes = client_frame(0x82, &payload);
        let mut reader = WsReader::default();
        let mut got = Vec::new();
        for b in &bytes {
            got.extend(feed_all(&mut reader, &[*b], 1024).unwrap());
        }
        assert_eq!(got, vec![Got::Msg(false, payload)]);
        assert_eq!(reader.partial.capacity(), 0, "idle reader holds no buffer");
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let mut bytes = client_frame(0x01, b"he");
        bytes.extend(client_frame(0x89, b""));
        bytes.extend(client_frame(0x00, b"ll"));
        bytes.extend(client_frame(0x80, b"o"));
        let got = feed_all(&mut WsReader::default(), &bytes, 1024).unwrap();
        assert_eq!(
            got,
            vec![Got::Ping(vec![]), Got::Msg(true, b"hello".to_vec())]
        );
    }

    #[test]
    fn text_fragments_fail_at_the_first_bad_sequence() {
        // "κ" is CE BA: a fragment may end inside a sequence and the next one complete it.
        let mut split = client_frame(0x01, &[b'a', 0xCE]);
        split.extend(client_frame(0x80, &[0xBA]));
        let got = feed_all(&mut WsReader::default(), &split, 100).unwrap();
        assert_eq!(got, vec![Got::Msg(true, "aκ".as_bytes().to_vec())]);
        // A sequence that can never become valid fails before the message's last frame.
        let mut reader = WsReader::default();
        let first = client_frame(0x01, "κ".as_bytes());
        assert_eq!(feed_all(&mut reader, &first, 100), Ok(vec![]));
        let bad = client_frame(0x00, &[0xCE, b'x']);
        assert_eq!(feed_all(&mut reader, &bad, 100), Err(WsError::BadUtf8));
        // Inside one frame that arrives in pieces, too: the rest of it never has to come.
        let mut reader = WsReader::default();
        let mut whole = client_frame(0x81, &[b'o', b'k', 0xCE, 0xBA, 0xFF, b'z', b'z']);
        let (start, rest) = whole.split_at_mut(9);
        assert_eq!(feed_all(&mut reader, start, 100), Ok(vec![]));
        assert_eq!(
            reader.feed(&mut rest[..2], 100, |_| ()),
            Err(WsError::BadUtf8)
        );
        // Nothing after a failure is read: where the bad frame ends is not trusted.
        let mut close = client_frame(0x88, &[0x03, 0xe8]);
        assert_eq!(
            reader.feed(&mut rest[2..], 100, |_| ()),
            Err(WsError::BadUtf8)
        );
        assert_eq!(reader.feed(&mut close, 100, |_| ()), Err(WsError::BadUtf8));
        // A continuation frame arriving in pieces, split inside a character, reads right.
        let mut reader = WsReader::default();
        let mut bytes = client_frame(0x01, b"a");
        bytes.extend(client_frame(0x80, "κλμ".as_bytes()));
        let mut got = Vec::new();
        for chunk in bytes.chunks_mut(3) {
            reader
                .feed(chunk, 100, |ev| {
                    if let WsEvent::Message { payload, .. } = ev {
                        got.push(payload.to_vec())
                    }
                })
                .unwrap();
        }
        assert_eq!(got, vec!["aκλμ".as_bytes().to_vec()]);
        // A message that ends cut off is refused at its end.
        let mut cut = client_frame(0x01, b"a");
        cut.extend(client_frame(0x80, &[0xCE]));
        assert_eq!(
            feed_all(&mut WsReader::default(), &cut, 100),
            Err(WsError::BadUtf8)
        );
    }

    #[test]
    fn limits_count_the_whole_message() {
        let one = client_frame(0x82, &[0; 11]);
        assert_eq!(
            feed_all(&mut WsReader::default(), &one, 10),
            Err(WsError::TooLarge)
        );
        let mut frags = client_frame(0x02, &[0; 6]);
        frags.extend(client_frame(0x80, &[0; 6]));
        assert_eq!(
            feed_all(&mut WsReader::default(), &frags, 10),
            Err(WsError::TooLarge)
        );
        // A header announcing a huge payload is refused before any of it arrives.
        let mut huge = client_frame(0x82, &[0; 70000]);
        huge.truncate(20);
        assert_eq!(
            feed_all(&mut WsReader::default(), &huge, 65536),
            Err(WsError::TooLarge)
        );
        // Past MAX_MESSAGE whatever the limit asked for: a frame's progress counts in 32 bits.
        let over = [0x82, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            feed_all(&mut WsReader::default(), &over, usize::MAX),
            Err(WsError::TooLarge)
        );
    }

    #[test]
    fn protocol_violations() {
        let unmasked = [0x81u8, 0x01, b'a'];
        assert!(matches!(
            feed_all(&mut WsReader::default(), &unmasked, 100),
            Err(WsError::Protocol(_))
        ));
        let rsv = client_frame(0xC1, b"a");
        assert!(matches!(
            feed_all(&mut WsReader::default(), &rsv, 100),
            Err(WsError::Protocol(_))
        ));
        let cont = client_frame(0x80, b"a");
        assert!(matches!(
            feed_all(&mut WsReader::default(), &cont, 100),
            Err(WsError::Protocol(_))
        ));
        let long_ping = client_frame(0x89, &[0; 126]);
        assert!(matches!(
            feed_all(&mut WsReader::default(), &long_ping, 1000),
            Err(WsError::Protocol(_))
        ));
        let reserved = client_frame(0x83, b"");
        assert!(matches!(
            feed_all(&mut WsReader::default(), &reserved, 100),
            Err(WsError::Protocol(_))
        ));
        let bad_text = client_frame(0x81, &[0xff, 0xfe]);
        assert_eq!(
            feed_all(&mut WsReader::default(), &bad_text, 100),
            Err(WsError::BadUtf8)
        );
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_when_agreed() {
        let deflate = || WsReader {
            deflate: true,
            ..WsReader::default()
        };
        // RSV1 on the first fragment covers the whole message; text is not checked as UTF-8
        // before it is inflated.
        let mut bytes = client_frame(0x41, &[0xf2, 0x48]);
        bytes.extend(client_frame(0x80, &[0xcd]));
        bytes.extend(client_frame(0x82, b"plain"));
        let got = feed_all(&mut deflate(), &bytes, 100).unwrap();
        assert_eq!(
            got,
            vec![
                Got::Zipped(true, vec![0xf2, 0x48, 0xcd]),
                Got::Msg(false, b"plain".to_vec())
            ]
        );
        for bad in [
            client_frame(0xC1, b"a"),                                      // not agreed
            [client_frame(0x01, b"a"), client_frame(0xC0, b"b")].concat(), // on a continuation
            client_frame(0xC9, b""),                                       // on a control frame
        ] {
            let mut reader = if bad[0] == 0xC1 {
                WsReader::default()
            } else {
                deflate()
            };
            assert!(matches!(
                feed_all(&mut reader, &bad, 100),
                Err(WsError::Protocol(_))
            ));
        }
    }

    #[test]
    fn close_frames() {
        let mut close = client_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']);
        close.extend(client_frame(0x88, &[]));
        let got = feed_all(&mut WsReader::default(), &close, 100).unwrap();
        assert_eq!(got, vec![Got::Close(Some(1000)), Got::Close(None)]);
        let reserved_code = client_frame(0x88, &[0x03, 0xed]); // 1005 must not be sent
        assert!(matches!(
            feed_all(&mut WsReader::default(), &reserved_code, 100),
            Err(WsError::Protocol(_))
        ));
    }

    #[test]
    fn encoding_in_place_matches_a_copied_payload() {
        for len in [0usize, 1, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut copied = b"before".to_vec();
            write_frame(&mut copied, OpCode::Data(Data::Binary), &payload);
            let mut in_place = b"before".to_vec();
            let len = write_message_with(&mut in_place, OpCode::Data(Data::Binary), false, |out| {
                out.extend_from_slice(&payload)
            });
            assert_eq!(len, payload.len());
            assert_eq!(copied, in_place, "len {len}");
        }
    }

    #[test]
    fn server_headers_match_tungstenite() {
        let opcodes = [
            OpCode::Data(Data::Text),
            OpCode::Data(Data::Binary),
            OpCode::Control(Control::Ping),
            OpCode::Control(Control::Close),
        ];
        for opcode in opcodes {
            for compressed in [false, true] {
                for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
                    let mut theirs = Vec::new();
                    let header = FrameHeader {
                        opcode,
                        rsv1: compressed,
                        ..FrameHeader::default()
                    };
                    header.format(len as u64, &mut theirs).unwrap();
                    let (ours, used) = server_header(opcode, compressed, len);
                    assert_eq!(&ours[..used], &theirs[..], "{opcode:?} {compressed} {len}");
                }
            }
        }
    }

    #[test]
    fn server_frames_are_well_formed() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            write_frame(&mut out, OpCode::Data(Data::Binary), &vec![9; len]);
            assert_eq!(out.len(), header_len(len) + len);
            let (h, l) = FrameHeader::parse(&mut Cursor::new(&out)).unwrap().unwrap();
            assert_eq!(l as usize, len);
            assert!(h.is_final && h.mask.is_none());
        }
        let mut out = Vec::new();
        write_close(&mut out, 4003, &"é".repeat(100));
        assert!(out.len() <= 2 + 125);
        assert_eq!(&out[2..4], &4003u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
