//! The canonical proto3 JSON mapping of [`Frame`], written by hand.
//!
//! Output follows the mapping exactly (lowerCamelCase names, enum names, 64-bit integers as
//! strings, bytes as padded base64, defaults omitted). Input is what the mapping says parsers
//! accept — both field spellings, enums by name or number, integers as numbers or strings,
//! standard or URL-safe base64 with or without padding, `null` as the default — plus one ringway
//! leniency: enum names without their `CMD_`/`CODE_` prefix. Unknown fields are ignored so older
//! gateways accept frames from newer clients.

use std::fmt;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::proto::{Cmd, Code, Connected, Frame, Node, NodeState};

/// Why a client's message could not be turned into a [`Frame`], by either codec. It lives with
/// the JSON codec, which has the most ways to fail; `codec` re-exports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

pub fn decode_frame(payload: &[u8]) -> Result<Frame, DecodeError> {
    let f: JsonFrame = serde_json::from_slice(payload).map_err(|e| DecodeError(e.to_string()))?;
    Ok(Frame {
        cmd: f.cmd,
        key: f.key.unwrap_or_default(),
        body: f.body,
        seq: f.seq,
        code: f.code,
        reason: f.reason.unwrap_or_default(),
        retry_after_ms: f.retry_after_ms,
        connected: f.connected.map(|c| Connected {
            link_id: c.link_id.unwrap_or_default(),
            node_id: c.node_id.unwrap_or_default(),
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            server_time_ms: c.server_time_ms,
            epoch: c.epoch.unwrap_or_default(),
            offset: c.offset,
            recovered: c.recovered.unwrap_or_default(),
        }),
        nodes: f
            .nodes
            .unwrap_or_default()
            .into_iter()
            .map(JsonNode::into_node)
            .collect(),
        offset: f.offset,
        room: f.room.unwrap_or_default(),
        token: f.token.unwrap_or_default(),
    })
}

/// One `Node` in the canonical mapping (the etcd record is one).
pub fn decode_node(payload: &[u8]) -> Result<Node, DecodeError> {
    let n: JsonNode = serde_json::from_slice(payload).map_err(|e| DecodeError(e.to_string()))?;
    Ok(n.into_node())
}

pub fn encode_frame(f: &Frame, out: &mut Vec<u8>) {
    let mut w = ObjectWriter::open(out);
    if f.cmd != 0 {
        w.enum_field("cmd", f.cmd, |v| {
            Cmd::try_from(v).ok().map(|c| c.as_str_name())
        });
    }
    if !f.key.is_empty() {
        w.str_field("key", &f.key);
    }
    if !f.body.is_empty() {
        w.bytes_field("body", &f.body);
    }
    if f.seq != 0 {
        w.u64_field("seq", f.seq);
    }
    if f.code != 0 {
        w.enum_field("code", f.code, |v| {
            Code::try_from(v).ok().map(|c| c.as_str_name())
        });
    }
    if !f.reason.is_empty() {
        w.str_field("reason", &f.reason);
    }
    if f.retry_after_ms != 0 {
        w.u32_field("retryAfterMs", f.retry_after_ms);
    }
    if let Some(c) = &f.connected {
        w.name("connected");
        encode_connected(c, w.out);
    }
    if !f.nodes.is_empty() {
        w.name("nodes");
        w.out.push(b'[');
        for (i, n) in f.nodes.iter().enumerate() {
            if i > 0 {
                w.out.push(b',');
            }
            encode_node(n, w.out);
        }
        w.out.push(b']');
    }
    if f.offset != 0 {
        w.u64_field("offset", f.offset);
    }
    if !f.room.is_empty() {
        w.str_field("room", &f.room);
    }
    if !f.token.is_empty() {
        w.str_field("token", &f.token);
    }
    w.close();
}

fn encode_connected(c: &Connected, out: &mut Vec<u8>) {
    let mut w = ObjectWriter::open(out);
    if !c.link_id.is_empty() {
        w.str_field("linkId", &c.link_id);
    }
    if !c.node_id.is_empty() {
        w.str_field("nodeId", &c.node_id);
    }
    if c.heartbeat_interval_ms != 0 {
        w.u32_field("heartbeatIntervalMs", c.heartbeat_interval_ms);
    }
    if c.server_time_ms != 0 {
        w.u64_field("serverTimeMs", c.server_time_ms);
    }
    if !c.epoch.is_empty() {
        w.str_field("epoch", &c.epoch);
    }
    if c.offset != 0 {
        w.u64_field("offset", c.offset);
    }
    if c.recovered {
        w.name("recovered");
        w.out.extend_from_slice(b"true");
    }
    w.close();
}

pub fn encode_node(n: &Node, out: &mut Vec<u8>) {
    let mut w = ObjectWriter::open(out);
    for (name, v) in [("id", &n.id), ("ip", &n.ip)] {
        if !v.is_empty() {
            w.str_field(name, v);
        }
    }
    if n.port != 0 {
        w.u32_field("port", n.port);
    }
    if n.weight != 0 {
        w.u32_field("weight", n.weight);
    }
    if n.capacity != 0 {
        w.u64_field("capacity", n.capacity);
    }
    if n.load != 0 {
        w.u64_field("load", n.load);
    }
    if !n.labels.is_empty() {
        w.name("labels");
        w.out.push(b'[');
        for (i, l) in n.labels.iter().enumerate() {
            if i > 0 {
                w.out.push(b',');
            }
            write_str(w.out, l);
        }
        w.out.push(b']');
    }
    if !n.location.is_empty() {
        w.str_field("location", &n.location);
    }
    if n.state != 0 {
        w.enum_field("state", n.state, |v| {
            NodeState::try_from(v).ok().map(|s| s.as_str_name())
        });
    }
    if n.started_ms != 0 {
        w.u64_field("startedMs", n.started_ms);
    }
    w.close();
}

/// Writes `{"name":value,...}` with the commas in the right places.
struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }

    fn name(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str_field(&mut self, name: &str, v: &str) {
        self.name(name);
        write_str(self.out, v);
    }

    fn bytes_field(&mut self, name: &str, v: &[u8]) {
        self.name(name);
        self.out.push(b'"');
        let start = self.out.len();
        let len = base64::encoded_len(v.len(), true).expect("body fits in memory");
        self.out.resize(start + len, 0);
        base64::engine::general_purpose::STANDARD
            .encode_slice(v, &mut self.out[start..])
            .expect("sized above");
        self.out.push(b'"');
    }

    fn u64_field(&mut self, name: &str, v: u64) {
        self.name(name);
        self.out.push(b'"');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self.out.push(b'"');
    }

    fn u32_field(&mut self, name: &str, v: u32) {
        self.name(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// Known values by name; values this build has no name for as numbers, as the mapping says.
    fn enum_field(&mut self, name: &str, v: i32, name_of: impl Fn(i32) -> Option<&'static str>) {
        self.name(name);
        match name_of(v) {
            Some(s) => write_str(self.out, s),
            None => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[derive(Deserialize)]
struct JsonFrame {
    #[serde(default, deserialize_with = "cmd")]
    cmd: i32,
    #[serde(default)]
    key: Option<String>,
    #[serde(default, deserialize_with = "base64_bytes")]
    body: Bytes,
    #[serde(default, deserialize_with = "uint")]
    seq: u64,
    #[serde(default, deserialize_with = "code")]
    code: i32,
    #[serde(default)]
    reason: Option<String>,
    #[serde(
        default,
        alias = "retry_after_ms",
        rename = "retryAfterMs",
        deserialize_with = "uint32"
    )]
    retry_after_ms: u32,
    #[serde(default)]
    connected: Option<JsonConnected>,
    #[serde(default)]
    nodes: Option<Vec<JsonNode>>,
    #[serde(default, deserialize_with = "uint")]
    offset: u64,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonConnected {
    #[serde(default, alias = "link_id")]
    link_id: Option<String>,
    #[serde(default, alias = "node_id")]
    node_id: Option<String>,
    #[serde(default, alias = "heartbeat_interval_ms", deserialize_with = "uint32")]
    heartbeat_interval_ms: u32,
    #[serde(default, alias = "server_time_ms", deserialize_with = "uint")]
    server_time_ms: u64,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default, deserialize_with = "uint")]
    offset: u64,
    #[serde(default)]
    recovered: Option<bool>,
}

#[derive(Deserialize)]
struct JsonNode {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default, deserialize_with = "uint32")]
    port: u32,
    #[serde(default, deserialize_with = "uint32")]
    weight: u32,
    #[serde(default, deserialize_with = "uint")]
    capacity: u64,
    #[serde(default, deserialize_with = "uint")]
    load: u64,
    #[serde(default)]
    labels: Option<Vec<String>>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default, deserialize_with = "node_state")]
    state: i32,
    #[serde(
        default,
        rename = "startedMs",
        alias = "started_ms",
        deserialize_with = "uint"
    )]
    started_ms: u64,
}

impl JsonNode {
    fn into_node(self) -> Node {
        Node {
            id: self.id.unwrap_or_default(),
            ip: self.ip.unwrap_or_default(),
            port: self.port,
            weight: self.weight,
            capacity: self.capacity,
            load: self.load,
            labels: self.labels.unwrap_or_default(),
            location: self.location.unwrap_or_default(),
            state: self.state,
            started_ms: self.started_ms,
        }
    }
}

/// Visits an enum given by name (with or without its prefix), by number, or as `null`.
struct EnumVisitor {
    prefix: &'static str,
    by_name: fn(&str) -> Option<i32>,
}

impl<'de> Visitor<'de> for EnumVisitor {
    type Value = i32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {}* enum name or number", self.prefix)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
        if let Some(n) = (self.by_name)(v) {
            return Ok(n);
        }
        let mut prefixed = String::with_capacity(self.prefix.len() + v.len());
        prefixed.push_str(self.prefix);
        prefixed.push_str(v);
        (self.by_name)(&prefixed).ok_or_else(|| E::custom(format!("unknown enum value {v:?}")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
        i32::try_from(v).map_err(|_| E::custom("enum number out of range"))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
        i32::try_from(v).map_err(|_| E::custom("enum number out of range"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<i32, E> {
        Ok(0)
    }
}

fn cmd<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    d.deserialize_any(EnumVisitor {
        prefix: "CMD_",
        by_name: |s| Cmd::from_str_name(s).map(|c| c as i32),
    })
}

fn code<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    d.deserialize_any(EnumVisitor {
        prefix: "CODE_",
        by_name: |s| Code::from_str_name(s).map(|c| c as i32),
    })
}

fn node_state<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    d.deserialize_any(EnumVisitor {
        prefix: "NODE_STATE_",
        by_name: |s| NodeState::from_str_name(s).map(|c| c as i32),
    })
}

/// Visits an unsigned integer given as a number, a decimal string, or `null`.
struct UintVisitor;

impl<'de> Visitor<'de> for UintVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an unsigned integer as a number or a string")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom("negative value for an unsigned field"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        if v.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&v) {
            Ok(v as u64)
        } else {
            Err(E::custom("not an unsigned integer"))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        v.parse()
            .map_err(|_| E::custom(format!("{v:?} is not an unsigned integer")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }
}

fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(UintVisitor)
}

fn uint32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = d.deserialize_any(UintVisitor)?;
    u32::try_from(v).map_err(|_| de::Error::custom("value out of range for uint32"))
}

struct Base64Visitor;

impl<'de> Visitor<'de> for Base64Visitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("base64 text")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        let engine = if v.contains(['-', '_']) {
            &URL_SAFE_ANY_PAD
        } else {
            &STANDARD_ANY_PAD
        };
        engine
            .decode(v)
            .map(Bytes::from)
            .map_err(|e| E::custom(format!("body is not base64: {e}")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Bytes, E> {
        Ok(Bytes::new())
    }
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_any(Base64Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_output() {
        let f = Frame {
            cmd: Cmd::Downstream as i32,
            key: "k\"1".into(),
            body: Bytes::from_static(b"hi"),
            seq: 7,
            retry_after_ms: 5,
            ..Default::default()
        };
        let mut out = Vec::new();
        encode_frame(&f, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"cmd":"CMD_DOWNSTREAM","key":"k\"1","body":"aGk=","seq":"7","retryAfterMs":5}"#
        );
        let mut out = Vec::new();
        encode_frame(&Frame::default(), &mut out);
        assert_eq!(out, b"{}");
    }

    #[test]
    fn lenient_input() {
        let f = decode_frame(
            br#"{"cmd":"UPSTREAM","key":"a","body":"aGk","seq":9,"retry_after_ms":"3","extra":{"x":1},"code":null}"#,
        )
        .unwrap();
        assert_eq!(f.cmd, Cmd::Upstream as i32);
        assert_eq!(&f.body[..], b"hi");
        assert_eq!((f.seq, f.retry_after_ms, f.code), (9, 3, 0));
        let f = decode_frame(br#"{"cmd":2,"body":"_-8"}"#).unwrap();
        assert_eq!(f.cmd, 2);
        assert_eq!(&f.body[..], &[0xff, 0xef]);
        let f =
            decode_frame(br#"{"connected":{"link_id":"x","heartbeatIntervalMs":"10"}}"#).unwrap();
        assert_eq!(f.connected.unwrap().heartbeat_interval_ms, 10);
    }

    /// A field the JSON codec forgets is a silent loss: every field of a frame survives the
    /// trip, as protobuf carries it.
    #[test]
    fn every_field_round_trips() {
        let f = Frame {
            cmd: Cmd::Connected as i32,
            key: "k".into(),
            body: Bytes::from_static(b"b"),
            seq: u64::MAX,
            code: Code::Internal as i32,
            reason: "r".into(),
            retry_after_ms: 9,
            connected: Some(Connected {
                link_id: "1:u:d".into(),
                node_id: "n".into(),
                heartbeat_interval_ms: 3,
                server_time_ms: 4,
                epoch: "e".into(),
                offset: 6,
                recovered: true,
            }),
            nodes: vec![Node {
                id: "n".into(),
                ip: "127.0.0.1".into(),
                port: 1,
                weight: 2,
                capacity: 3,
                load: 4,
                labels: vec!["l".into()],
                location: "z".into(),
                state: 2,
                started_ms: 5,
            }],
            offset: 10,
            room: "r".into(),
            token: "t.o.k".into(),
        };
        let mut out = Vec::new();
        encode_frame(&f, &mut out);
        assert_eq!(decode_frame(&out).unwrap(), f);
    }

    #[test]
    fn wrong_input() {
        assert!(decode_frame(br#"{"cmd":"NOPE"}"#).is_err());
        assert!(decode_frame(br#"{"seq":-1}"#).is_err());
        assert!(decode_frame(br#"{"seq":1.5}"#).is_err());
        assert!(decode_frame(br#"{"body":"***"}"#).is_err());
        assert!(decode_frame(br#"{"retryAfterMs":5000000000}"#).is_err());
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = Vec::new();
        write_str(&mut out, "a\u{1}b\\");
        assert_eq!(out, br#""a\u0001b\\""#);
    }
}
