//! A push encoded once, written to every device as the same bytes.
//!
//! The only per-link fields of a DOWNSTREAM frame are `seq` and, since one push may name many
//! users, the stream `offset`, so each codec's encoding is split into a shared prefix
//! (everything else) and a tiny per-link suffix. Protobuf allows fields in any order, so the
//! suffix is fields 10 and 4 appended; for JSON the prefix stops before the closing brace.
//! Retransmits reuse the prefix too, so a body is never encoded (or encrypted) twice.

use std::cell::{Cell, OnceCell};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::key::MessageKey;
use crate::proto::{Cmd, Frame};
use crate::protocol::{Codec, json, ws};

/// Held by every copy of a push that is not settled yet. A push is settled once every device it
/// was sent to acked it or it was reported undelivered; then the last copy drops and the
/// source, which keeps only a `Weak`, may commit its offset. A crash before that leaves the
/// offset uncommitted, so the push is read again rather than lost. An undelivered report holds
/// one too, until Kafka has taken the report.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsettled;

/// Where a stored push sits in its user's stream (DESIGN §2a).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAt {
    pub epoch: Rc<str>,
    pub offset: u64,
}

/// A suffix's room: `,"offset":"` and `,"seq":"` with 20 digits each, and the brace.
const SUFFIX_BYTES: usize = 64;

pub struct EncodedPush {
    pub key: MessageKey,
    /// A room message's room (a broadcast's is empty); `None` for a push.
    room: Option<Rc<str>>,
    /// The body as the backend sent it, for undelivered reports.
    body: Bytes,
    /// The body as frames carry it: sealed once here when the biz encrypts bodies, so a
    /// retransmit sends the same bytes and never encrypts again.
    wire_body: Bytes,
    proto: OnceCell<Vec<u8>>,
    json: OnceCell<Box<[u8]>>,
    /// Released when the last link holding this push acks it or reports it.
    unsettled: Option<Arc<Unsettled>>,
    /// A spent push's protobuf buffer, for [`Spent`] to encode the next one into.
    spare: Cell<Vec<u8>>,
}

/// Pushes no link holds any more, kept for the next ones: with the echo backend every
/// upstream message becomes a push, and reusing one (its allocation and its protobuf
/// buffer) makes a message's push cost no allocation.
#[derive(Default)]
pub struct Spent(Vec<Rc<EncodedPush>>);

/// Most spent pushes kept per core.
const SPENT: usize = 256;

/// The largest protobuf buffer a spent push keeps: one large push must not leave every spent
/// push holding a large buffer.
const SPENT_BUFFER: usize = 4096;

impl Spent {
    /// Keeps `push` if nothing else holds it. Its bodies and its hold on the source are let
    /// go now, as a dropped push would.
    pub fn give(&mut self, mut push: Rc<EncodedPush>) {
        if self.0.len() >= SPENT {
            return;
        }
        if let Some(p) = Rc::get_mut(&mut push) {
            p.body = Bytes::new();
            p.wire_body = Bytes::new();
            p.unsettled = None;
            p.room = None;
            p.json = OnceCell::new();
            if let Some(buf) = p.proto.take().filter(|b| b.capacity() <= SPENT_BUFFER) {
                p.spare.set(buf);
            }
            self.0.push(push);
        }
    }

    /// [`EncodedPush::tracked`], in a spent push when there is one.
    pub fn tracked(
        &mut self,
        key: impl Into<MessageKey>,
        body: Bytes,
        wire_body: Bytes,
        unsettled: Option<Arc<Unsettled>>,
    ) -> Rc<EncodedPush> {
        let Some(mut push) = self.0.pop() else {
            return EncodedPush::tracked(key, body, wire_body, unsettled);
        };
        let p = Rc::get_mut(&mut push).expect("spent pushes are not shared");
        p.key = key.into();
        p.body = body;
        p.wire_body = wire_body;
        p.unsettled = unsettled;
        push
    }
}

impl EncodedPush {
    pub fn new(key: &str, body: Bytes) -> Rc<Self> {
        Self::tracked(key, body.clone(), body, None)
    }

    /// A push whose settlement the source waits for; `wire_body` is what clients receive.
    pub fn tracked(
        key: impl Into<MessageKey>,
        body: Bytes,
        wire_body: Bytes,
        unsettled: Option<Arc<Unsettled>>,
    ) -> Rc<Self> {
        Rc::new(EncodedPush {
            key: key.into(),
            room: None,
            body,
            wire_body,
            proto: OnceCell::new(),
            json: OnceCell::new(),
            unsettled,
            spare: Cell::default(),
        })
    }

    /// A room message (or, with `room` empty, a broadcast), encoded once for every member of
    /// the core.
    pub fn for_room(key: &str, room: &str, body: Bytes, wire_body: Bytes) -> Rc<Self> {
        let mut push = Self::tracked(key, body, wire_body, None);
        Rc::get_mut(&mut push).expect("just made").room = Some(room.into());
        push
    }

    /// Whether this is a room message or a broadcast, not a push.
    pub fn is_room(&self) -> bool {
        self.room.is_some()
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body as frames carry it.
    pub fn wire_body(&self) -> &Bytes {
        &self.wire_body
    }

    /// A hold on the push's source for a report about it: the source may not settle the push
    /// before the report is written.
    pub fn hold(&self) -> Option<Arc<Unsettled>> {
        self.unsettled.clone()
    }

    /// The whole frame for one link, for a link that needs more than `seq` and `offset`.
    pub fn frame(&self, seq: u64, offset: u64) -> Frame {
        Frame {
            cmd: Cmd::Downstream as i32,
            key: self.key.to_string(),
            body: self.wire_body.clone(),
            seq,
            offset,
            room: self.room.as_deref().unwrap_or_default().to_owned(),
            ..Default::default()
        }
    }

    /// The protobuf prefix, written field by field in prost's order (the same bytes it
    /// would write), into a spent push's buffer or one exact allocation: building a
    /// [`Frame`] first copied the key.
    fn proto_prefix(&self) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let room = self.room.as_deref().unwrap_or_default().as_bytes();
        let fields: [(u32, &[u8]); 3] =
            [(2, self.key.as_bytes()), (3, &self.wire_body), (11, room)];
        let cmd = Cmd::Downstream as u64;
        let field_len = |tag: u32, len: usize| {
            prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
        };
        let len = prost::encoding::key_len(1)
            + encoded_len_varint(cmd)
            + fields
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(tag, v)| field_len(*tag, v.len()))
                .sum::<usize>();
        let mut out = self.spare.take();
        out.clear();
        out.reserve_exact(len);
        encode_key(1, WireType::Varint, &mut out);
        encode_varint(cmd, &mut out);
        for (tag, v) in fields.into_iter().filter(|(_, v)| !v.is_empty()) {
            encode_key(tag, WireType::LengthDelimited, &mut out);
            encode_varint(v.len() as u64, &mut out);
            out.extend_from_slice(v);
        }
        debug_assert_eq!(out.len(), len);
        out
    }

    fn prefix(&self, codec: Codec) -> &[u8] {
        match codec {
            Codec::Proto => self.proto.get_or_init(|| self.proto_prefix()),
            Codec::Json => self.json.get_or_init(|| {
                let mut out = Vec::new();
                json::encode_frame(&self.frame(0, 0), &mut out);
                out.pop(); // the closing brace; the suffix adds it back after `seq`
                out.into()
            }),
        }
    }

    /// The per-link suffix: `offset` when stored, `seq` when set (best-effort messages have
    /// none), and for JSON the closing brace.
    fn suffix(codec: Codec, seq: u64, offset: u64, suffix: &mut [u8; SUFFIX_BYTES]) -> usize {
        let mut n = 0;
        match codec {
            Codec::Proto => {
                if offset != 0 {
                    suffix[0] = 10 << 3; // field 10, varint
                    n = 1 + put_varint(offset, &mut suffix[1..]);
                }
                if seq != 0 {
                    suffix[n] = 4 << 3; // field 4, varint
                    n += 1 + put_varint(seq, &mut suffix[n + 1..]);
                }
                n
            }
            Codec::Json => {
                let mut put = |p: &[u8]| {
                    suffix[n..n + p.len()].copy_from_slice(p);
                    n += p.len();
                };
                if offset != 0 {
                    put(b",\"offset\":\"");
                    put(itoa::Buffer::new().format(offset).as_bytes());
                    put(b"\"");
                }
                if seq != 0 {
                    put(b",\"seq\":\"");
                    put(itoa::Buffer::new().format(seq).as_bytes());
                    put(b"\"");
                }
                put(b"}");
                n
            }
        }
    }

    /// Appends the encoded frame for one link, without transport framing.
    pub fn write_payload(&self, codec: Codec, seq: u64, offset: u64, out: &mut Vec<u8>) {
        let mut suffix = [0u8; SUFFIX_BYTES];
        let n = Self::suffix(codec, seq, offset, &mut suffix);
        out.extend_from_slice(self.prefix(codec));
        out.extend_from_slice(&suffix[..n]);
    }

    /// Appends the whole WebSocket message for one link.
    pub fn write(&self, codec: Codec, seq: u64, offset: u64, out: &mut Vec<u8>) {
        let prefix = self.prefix(codec);
        let mut suffix = [0u8; SUFFIX_BYTES];
        let n = Self::suffix(codec, seq, offset, &mut suffix);
        let opcode = OpCode::Data(if codec.is_text() {
            Data::Text
        } else {
            Data::Binary
        });
        let len = prefix.len() + n;
        out.reserve(ws::header_len(len) + len);
        ws::write_header(out, opcode, len);
        out.extend_from_slice(prefix);
        out.extend_from_slice(&suffix[..n]);
    }
}

/// The most bytes one DOWNSTREAM of this key and body can queue on a link: its JSON frame (the
/// larger codec) with a sealed body and the longest `seq`, plus transport framing. A push over
/// the outbound cap is refused before it is accepted, never left to close a reading link.
pub fn largest_frame_bytes(key: &str, body_len: usize) -> usize {
    let mut head = Vec::new();
    let frame = Frame {
        cmd: Cmd::Downstream as i32,
        key: key.to_owned(),
        seq: u64::MAX,
        offset: u64::MAX,
        ..Default::default()
    };
    json::encode_frame(&frame, &mut head);
    let sealed = body_len + crate::protocol::body_crypt::SEAL_OVERHEAD;
    /// `,"body":""`, a WebSocket header or an SSE event's `id:` and `data:` lines, and the
    /// epoch a stream's first push on a link names (`"connected":{"epoch":..,"offset":..}`).
    const FRAMING: usize = 160;
    head.len() + sealed.div_ceil(3) * 4 + FRAMING
}

fn put_varint(mut v: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::FrameHeader;

    #[test]
    fn the_largest_frame_bound_holds() {
        let body = Bytes::from(vec![0xff; 1000]);
        let push = EncodedPush::new("k\"ey", body);
        let mut out = Vec::new();
        push.write(Codec::Json, u64::MAX, u64::MAX, &mut out);
        let bound = largest_frame_bytes("k\"ey", 1000);
        assert!(
            out.len() <= bound && bound < out.len() + 192,
            "{} vs {bound}",
            out.len()
        );
    }

    #[test]
    fn same_frame_as_a_full_encode() {
        let push = EncodedPush::new("p-1", Bytes::from_static(b"\x01body"));
        for codec in [Codec::Proto, Codec::Json] {
            for (seq, offset) in [(1u64, 0u64), (300, 1), (u64::MAX, u64::MAX), (0, 0), (0, 7)] {
                let mut out = Vec::new();
                push.write(codec, seq, offset, &mut out);
                let mut cur = Cursor::new(&out);
                let (h, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
                assert_eq!(
                    h.opcode,
                    OpCode::Data(if codec.is_text() {
                        Data::Text
                    } else {
                        Data::Binary
                    })
                );
                let payload = &out[cur.position() as usize..];
                assert_eq!(payload.len() as u64, len);
                let f = codec.decode(payload).unwrap();
                assert_eq!(
                    f,
                    Frame {
                        cmd: Cmd::Downstream as i32,
                        key: "p-1".into(),
                        body: Bytes::from_static(b"\x01body"),
                        seq,
                        offset,
                        ..Default::default()
                    }
                );
            }
        }
    }

    #[test]
    fn the_protobuf_prefix_is_the_bytes_prost_writes() {
        let big = Bytes::from(vec![7u8; 300]);
        let pushes = [
            EncodedPush::new("p-1", Bytes::from_static(b"\x01body")),
            EncodedPush::new("p-2", Bytes::new()),
            EncodedPush::new("", big.clone()),
            EncodedPush::for_room("r-1", "lobby", big.clone(), big.clone()),
            EncodedPush::for_room("b-1", "", big.clone(), big),
        ];
        for push in pushes {
            let mut full = Vec::new();
            Codec::Proto.encode(&push.frame(0, 0), &mut full);
            assert_eq!(push.prefix(Codec::Proto), &full[..], "{:?}", push.key);
        }
    }
}
