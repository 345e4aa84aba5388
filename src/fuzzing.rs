//! What the fuzz targets (`fuzz/`) check, one function per input the gateway takes from the
//! outside. Each runs the real parser on arbitrary bytes and asserts what must hold for any
//! input: no panic, and where a value was accepted, that it survives a round trip. Crashing
//! inputs are saved under `fuzz/regressions/<target>/` and replayed by `tests/fuzz_regressions.rs`
//! on stable Rust, so a fixed crash stays fixed without a fuzzer installed.

use prost::Message;

use crate::control::push_api;
use crate::proto::{Frame, PushMessage};
use crate::protocol::deflate::{self, Agreed, DeflatePolicy, LinkDeflate};
use crate::protocol::handshake::{self, Request};
use crate::protocol::ws::{WsEvent, WsReader};
use crate::protocol::{Codec, events, json};

/// One target's check: runs the parser on the input and panics if a property breaks.
pub type Check = fn(&[u8]);

/// The targets, by name, as `fuzz/fuzz_targets/*.rs` and the regression folders call them.
pub const TARGETS: &[(&str, Check)] = &[
    ("upgrade_request", upgrade_request),
    ("ws_frames", ws_frames),
    ("frame_codecs", frame_codecs),
    ("send_body", send_body),
    ("push_api", push_api_body),
];

const POLICY: DeflatePolicy = DeflatePolicy {
    min_bytes: 0,
    takeover: true,
};

/// The request head of a new connection, and the extension negotiation it may carry.
pub fn upgrade_request(data: &[u8]) {
    match handshake::parse(data) {
        Ok(Some(Request::WebSocket(up))) => {
            assert!(up.head_len <= data.len());
            let agreed = up
                .extensions
                .as_deref()
                .and_then(|offers| deflate::negotiate(offers, POLICY));
            let mut out = Vec::new();
            handshake::accept_response(&up, agreed.as_ref(), &mut out);
            assert!(out.ends_with(b"\r\n\r\n"));
        }
        Ok(Some(Request::Http(h))) => assert!(h.head_len <= data.len()),
        Ok(None) => {}
        Err(r) => {
            assert!((400..600).contains(&r.status));
            let _ = handshake::reject_response(&r, None);
        }
    }
}

/// A client's byte stream after the upgrade. The first byte picks whether deflate was agreed
/// and where reads split the rest; compressed messages are inflated under the size limit.
pub fn ws_frames(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    const MAX: usize = 4096;
    let mut reader = WsReader::default();
    reader.deflate = flags & 1 == 1;
    let agreed = Agreed {
        server_takeover: flags & 2 == 2,
        client_takeover: flags & 4 == 4,
        server_window_bits: None, // compression is not fuzzed: the gateway writes it
    };
    let mut ctx = LinkDeflate::new(agreed, POLICY);
    let step = usize::from(flags >> 3) + 1;
    let mut input = rest.to_vec();
    let mut failed = None;
    for chunk in input.chunks_mut(step) {
        if let Some(e) = failed {
            // A closing link keeps feeding its reader, looking for the close frame.
            assert_eq!(reader.feed(chunk, MAX, |_| ()), Err(e));
            continue;
        }
        let result = reader.feed(chunk, MAX, |ev| {
            if let WsEvent::Message {
                compressed: true,
                payload,
                ..
            } = ev
            {
                let mut plain = Vec::new();
                if ctx.decompress(payload, MAX, &mut plain).is_ok() {
                    assert!(plain.len() <= MAX);
                }
            }
            if let WsEvent::Message {
                text: true,
                compressed: false,
                payload,
            } = ev
            {
                assert!(std::str::from_utf8(payload).is_ok());
            }
        });
        failed = result.err();
    }
}

/// A frame in either codec: whatever decodes must encode and decode to the same frame, and a
/// frame read as protobuf must survive the JSON mapping too.
pub fn frame_codecs(data: &[u8]) {
    if let Ok(f) = json::decode_frame(data) {
        assert_eq!(round_trip(Codec::Json, &f), f);
    }
    if let Ok(f) = Frame::decode(data) {
        assert_eq!(round_trip(Codec::Proto, &f), f);
        let through_json = round_trip(Codec::Json, &f);
        assert_eq!(through_json.cmd, f.cmd);
        assert_eq!(through_json.body, f.body);
        assert_eq!(through_json.seq, f.seq);
    }
}

fn round_trip(codec: Codec, f: &Frame) -> Frame {
    let mut out = Vec::new();
    codec.encode(f, &mut out);
    codec
        .decode(&out)
        .unwrap_or_else(|e| panic!("{codec:?} cannot read its own encoding of {f:?}: {e}"))
}

/// `POST /send` bodies: split into frames, each decoded as the shard does.
pub fn send_body(data: &[u8]) {
    if let Ok(frames) = events::split_send_body(data) {
        for raw in frames {
            let _ = json::decode_frame(raw.get().as_bytes());
        }
    }
}

/// The HTTP push API's body, and a Kafka push record.
pub fn push_api_body(data: &[u8]) {
    if let Ok(p) = push_api::parse(data) {
        assert!(!p.key.is_empty() && !p.user_ids.is_empty());
    }
    let _ = PushMessage::decode(data);
}
