//! The HTTP transports for clients that cannot hold a WebSocket, sans-IO: how frames are laid
//! out as server-sent events and as long-poll batches, and the HTTP answers around them.
//!
//! Both carry the JSON codec's frames unchanged, so a client keeps one frame handler for every
//! transport. Downstream frames keep their acks: a client acks by `POST /send`, exactly as it
//! would on a WebSocket.

use super::http::{cors, status_text};

/// What the `retry:` field tells EventSource to wait before it reconnects.
pub const SSE_RETRY_MS: u32 = 2000;

/// An event's id, which a reconnecting EventSource reports back in `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventId<'a> {
    None,
    /// A push's `seq`: the same link is re-attached.
    Seq(u64),
    /// A stored push's `EPOCH:OFFSET`: the user's stream is resumed, on any node.
    Stream(&'a str, u64),
}

/// Appends one event with its id. The JSON codec escapes every newline, so one `data:` line
/// always suffices.
pub fn write_event(out: &mut Vec<u8>, id: EventId<'_>, encode: impl FnOnce(&mut Vec<u8>)) {
    match id {
        EventId::None => {}
        EventId::Seq(seq) => {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
            out.push(b'\n');
        }
        EventId::Stream(epoch, offset) => {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(epoch.as_bytes());
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"data: ");
    encode(out);
    out.extend_from_slice(b"\n\n");
}

/// A comment line: keeps proxies from timing the stream out and shows a dead socket.
pub fn write_comment(out: &mut Vec<u8>) {
    out.extend_from_slice(b":\n\n");
}

/// The `close` event: the stream's equivalent of a WebSocket close frame.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"event: close\ndata: ");
    write_close_json(out, code, reason);
    out.extend_from_slice(b"\n\n");
}

fn write_close_json(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"{\"code\":");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.extend_from_slice(b",\"reason\":");
    serde_json::to_writer(&mut *out, reason).expect("a Vec takes any write");
    out.push(b'}');
}

/// Appends one frame to the next poll's batch (a JSON array without its brackets).
pub fn write_batch_item(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    if !out.is_empty() {
        out.push(b',');
    }
    encode(out);
}

/// The head of an event stream, with the first `retry:` hint. The body ends when the
/// connection does.
pub fn stream_head(origin: Option<&str>) -> Vec<u8> {
    let mut h = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n",
    );
    cors(&mut h, origin);
    h.push_str(&format!("\r\nretry: {SSE_RETRY_MS}\n\n"));
    h.into_bytes()
}

/// The answer to one poll: `{"frames":[...]}`, plus `"close":{code,reason}` when the link
/// ended (the client must not poll this link again).
pub fn poll_response(origin: Option<&str>, batch: &[u8], close: Option<(u16, &str)>) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.len() + 64);
    body.extend_from_slice(b"{\"frames\":[");
    body.extend_from_slice(batch);
    body.push(b']');
    if let Some((code, reason)) = close {
        body.extend_from_slice(b",\"close\":");
        write_close_json(&mut body, code, reason);
    }
    body.push(b'}');
    response(200, "application/json", origin, &body)
}

/// A complete answer that ends the request (its connection closes after it).
pub fn response(status: u16, content_type: &str, origin: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        status_text(status),
        body.len()
    );
    cors(&mut h, origin);
    h.push_str("\r\n");
    let mut out = h.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The CORS preflight answer for the HTTP transports.
pub fn preflight_response(origin: Option<&str>) -> Vec<u8> {
    let mut h = String::from(
        "HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: authorization, content-type, last-event-id\r\nAccess-Control-Max-Age: 600\r\nContent-Length: 0\r\nConnection: close\r\n",
    );
    cors(&mut h, origin);
    h.push_str("\r\n");
    h.into_bytes()
}

/// The frames of a `POST /send` body: one JSON frame, or an array of them.
pub fn split_send_body(body: &[u8]) -> Result<Vec<&serde_json::value::RawValue>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_owned())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<&serde_json::value::RawValue>>(trimmed)
            .map_err(|e| format!("body is not a JSON array of frames: {e}"))
    } else {
        serde_json::from_str::<&serde_json::value::RawValue>(trimmed)
            .map(|v| vec![v])
            .map_err(|e| format!("body is not a JSON frame: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_batches() {
        let mut out = Vec::new();
        write_event(&mut out, EventId::None, |o| {
            o.extend_from_slice(b"{\"cmd\":\"CMD_CONNECTED\"}")
        });
        write_event(&mut out, EventId::Seq(7), |o| {
            o.extend_from_slice(b"{\"seq\":\"7\"}")
        });
        write_event(&mut out, EventId::Stream("e0", 3), |o| {
            o.extend_from_slice(b"{}")
        });
        write_comment(&mut out);
        write_close(&mut out, 4003, "kicked \"now\"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"cmd\":\"CMD_CONNECTED\"}\n\nid: 7\ndata: {\"seq\":\"7\"}\n\nid: e0:3\ndata: {}\n\n:\n\nevent: close\ndata: {\"code\":4003,\"reason\":\"kicked \\\"now\\\"\"}\n\n"
        );
        let mut batch = Vec::new();
        write_batch_item(&mut batch, |o| o.extend_from_slice(b"{\"a\":1}"));
        write_batch_item(&mut batch, |o| o.extend_from_slice(b"{\"b\":2}"));
        let resp = String::from_utf8(poll_response(Some("http://x"), &batch, Some((1001, "bye"))))
            .unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Access-Control-Allow-Origin: http://x\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["frames"][1]["b"], 2);
        assert_eq!(v["close"]["code"], 1001);
    }

    #[test]
    fn send_bodies() {
        assert_eq!(split_send_body(b"{\"cmd\":1}").unwrap().len(), 1);
        assert_eq!(split_send_body(b" [{\"a\":1},{\"b\":2}]").unwrap().len(), 2);
        assert!(split_send_body(b"[1,").is_err());
        assert!(split_send_body(b"\xff").is_err());
        assert!(split_send_body(b"").is_err());
    }

    #[test]
    fn stream_head_has_retry_hint() {
        let h = String::from_utf8(stream_head(None)).unwrap();
        assert!(h.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(h.ends_with("\r\n\r\nretry: 2000\n\n"));
        assert!(!h.contains("Access-Control"));
    }
}
