//! Frame codecs, chosen per link by the WebSocket subprotocol.

use prost::Message;

use super::arena::Arena;
use super::json;
pub use super::json::DecodeError;
use crate::proto::Frame;

pub const PROTO_SUBPROTOCOL: &str = "ringway.v1.proto";
pub const JSON_SUBPROTOCOL: &str = "ringway.v1.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Binary WebSocket messages carrying protobuf.
    Proto,
    /// Text WebSocket messages carrying canonical proto3 JSON.
    Json,
}

impl Codec {
    /// Picks the codec for a `Sec-WebSocket-Protocol` offer. No offer means JSON (the easy
    /// default for browsers and curl-style tools); an offer naming nothing we speak is `None`.
    pub fn negotiate(offer: Option<&str>) -> Option<(Codec, bool)> {
        let Some(offer) = offer else {
            return Some((Codec::Json, false));
        };
        offer.split(',').map(str::trim).find_map(|p| match p {
            PROTO_SUBPROTOCOL => Some((Codec::Proto, true)),
            JSON_SUBPROTOCOL => Some((Codec::Json, true)),
            _ => None,
        })
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Proto => PROTO_SUBPROTOCOL,
            Codec::Json => JSON_SUBPROTOCOL,
        }
    }

    /// Text frames for JSON, binary for protobuf.
    pub fn is_text(self) -> bool {
        self == Codec::Json
    }

    pub fn decode(self, payload: &[u8]) -> Result<Frame, DecodeError> {
        match self {
            Codec::Proto => Frame::decode(payload).map_err(|e| DecodeError(e.to_string())),
            Codec::Json => json::decode_frame(payload),
        }
    }

    /// Like [`Codec::decode`], into `frame`, whose strings keep their capacity, and with a
    /// protobuf body sliced from a copy of `payload` in `arena` (a JSON frame is built anew).
    pub fn decode_into(
        self,
        payload: &[u8],
        arena: &mut Arena,
        frame: &mut Frame,
    ) -> Result<(), DecodeError> {
        match self {
            Codec::Proto => {
                frame.clear();
                frame
                    .merge(arena.copy(payload))
                    .map_err(|e| DecodeError(e.to_string()))
            }
            Codec::Json => json::decode_frame(payload).map(|f| *frame = f),
        }
    }

    pub fn encode(self, frame: &Frame, out: &mut Vec<u8>) {
        match self {
            Codec::Proto => {
                // prost writes into what is there: growing as it goes would reallocate
                // several times per frame.
                out.reserve(frame.encoded_len());
                frame.encode(out).expect("a Vec grows as needed")
            }
            Codec::Json => json::encode_frame(frame, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Cmd, Code, Connected, Node, NodeState};

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame {
                cmd: Cmd::Upstream as i32,
                key: "k-1".into(),
                body: bytes::Bytes::from_static(b"\x00\xffhello \"world\"\n"),
                ..Default::default()
            },
            Frame {
                cmd: Cmd::Downstream as i32,
                key: "p/\u{e9}".into(),
                seq: u64::MAX,
                ..Default::default()
            },
            Frame {
                cmd: Cmd::Error as i32,
                code: Code::TooLarge as i32,
                reason: "tab\there".into(),
                retry_after_ms: 1500,
                ..Default::default()
            },
            Frame {
                cmd: Cmd::Connected as i32,
                connected: Some(Connected {
                    link_id: "1:alice:phone".into(),
                    node_id: "n1".into(),
                    heartbeat_interval_ms: 10_000,
                    server_time_ms: 1_700_000_000_000,
                    epoch: "5f3a".into(),
                    offset: 12,
                    recovered: true,
                }),
                ..Default::default()
            },
            Frame {
                cmd: Cmd::Redirect as i32,
                retry_after_ms: 200,
                nodes: vec![Node {
                    id: "n2".into(),
                    ip: "127.0.0.2".into(),
                    port: 8080,
                    weight: 10,
                    capacity: 100_000,
                    load: 42,
                    labels: vec!["a".into(), "b".into()],
                    location: "rack-1".into(),
                    state: NodeState::Serving as i32,
                    started_ms: 1_700_000_000_000,
                }],
                ..Default::default()
            },
            Frame::default(),
        ]
    }

    #[test]
    fn round_trip_both_codecs() {
        for codec in [Codec::Proto, Codec::Json] {
            for frame in sample_frames() {
                let mut out = Vec::new();
                codec.encode(&frame, &mut out);
                assert_eq!(codec.decode(&out).unwrap(), frame, "{codec:?}");
            }
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(Codec::negotiate(None), Some((Codec::Json, false)));
        assert_eq!(
            Codec::negotiate(Some("chat, ringway.v1.proto")),
            Some((Codec::Proto, true))
        );
        assert_eq!(
            Codec::negotiate(Some("ringway.v1.json")),
            Some((Codec::Json, true))
        );
        assert_eq!(Codec::negotiate(Some("mqtt")), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Codec::Proto.decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(Codec::Json.decode(b"{not json").is_err());
        assert!(Codec::Json.decode(b"[1,2]").is_err());
    }
}
