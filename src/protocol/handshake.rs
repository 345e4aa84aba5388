//! The HTTP/1.1 upgrade request, sans-IO: parse what the client sent, answer with the exact
//! status a client can act on (never 500 for a client's mistake).

use super::codec::Codec;

/// Upper bound for the request head; browsers send well under 2 KiB.
pub const MAX_REQUEST_BYTES: usize = 8192;

/// A well-formed WebSocket upgrade request, before authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub token: Option<String>,
    pub ws_key: String,
    pub codec: Codec,
    /// Whether the client offered a subprotocol, so the answer must name the chosen one.
    pub echo_subprotocol: bool,
    pub origin: Option<String>,
    /// Bytes of the request head; anything after it already belongs to the WebSocket stream.
    pub head_len: usize,
}

/// A refusal: the status line and text the client gets before the socket closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
    pub retry_after_s: Option<u32>,
}

impl Reject {
    pub const fn new(status: u16, reason: &'static str) -> Self {
        Reject {
            status,
            reason,
            retry_after_s: None,
        }
    }
}

/// Parses the request head in `buf`. `Ok(None)` means more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Upgrade>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_BYTES => {
            return Err(Reject::new(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::new(431, "too many request headers"));
        }
        Err(_) => return Err(Reject::new(400, "malformed HTTP request")),
    };
    if req.version != Some(1) {
        return Err(Reject::new(505, "HTTP/1.1 required"));
    }
    if req.method != Some("GET") {
        return Err(Reject::new(405, "use GET to open a WebSocket"));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/ws" {
        return Err(Reject::new(404, "the WebSocket endpoint is /ws"));
    }

    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Reject::new(426, "this endpoint only speaks WebSocket"));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(Reject::new(426, "WebSocket version 13 required"));
    }
    let ws_key = match header("sec-websocket-key") {
        Some(k) if k.len() == 24 => k.to_owned(),
        _ => return Err(Reject::new(400, "missing or malformed Sec-WebSocket-Key")),
    };
    let (codec, echo_subprotocol) = Codec::negotiate(header("sec-websocket-protocol")).ok_or(
        Reject::new(400, "offer subprotocol ringway.v1.proto or ringway.v1.json"),
    )?;

    let bearer = header("authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned())
    });
    let token = bearer.or_else(|| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(percent_decode)
    });

    Ok(Some(Upgrade {
        token,
        ws_key,
        codec,
        echo_subprotocol,
        origin: header("origin").map(str::to_owned),
        head_len,
    }))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `101 Switching Protocols` answer.
pub fn accept_response(up: &Upgrade, out: &mut Vec<u8>) {
    let accept = tungstenite::handshake::derive_accept_key(up.ws_key.as_bytes());
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    if up.echo_subprotocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(up.codec.subprotocol().as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// A complete HTTP error response; the connection is closed after it.
pub fn reject_response(r: &Reject) -> Vec<u8> {
    let status_text = match r.status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let mut extra = String::new();
    if r.status == 426 {
        extra.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
    }
    if r.status == 401 {
        extra.push_str("WWW-Authenticate: Bearer\r\n");
    }
    if let Some(s) = r.retry_after_s {
        extra.push_str(&format!("Retry-After: {s}\r\n"));
    }
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{}\n",
        r.status,
        status_text,
        r.reason.len() + 1,
        extra,
        r.reason
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, extra: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    #[test]
    fn header_token_and_codec() {
        let r = req(
            "/ws",
            "Authorization: Bearer abc.def\r\nSec-WebSocket-Protocol: ringway.v1.proto\r\nOrigin: https://a.example\r\n",
        );
        let mut bytes = r.clone().into_bytes();
        bytes.extend_from_slice(b"\x81\x80");
        let up = parse(&bytes).unwrap().unwrap();
        assert_eq!(up.token.as_deref(), Some("abc.def"));
        assert_eq!((up.codec, up.echo_subprotocol), (Codec::Proto, true));
        assert_eq!(up.origin.as_deref(), Some("https://a.example"));
        assert_eq!(up.head_len, r.len());
        let mut out = Vec::new();
        accept_response(&up, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: ringway.v1.proto\r\n"));
    }

    #[test]
    fn query_token_default_codec() {
        let up = parse(req("/ws?x=1&token=a%2Eb", "").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(up.token.as_deref(), Some("a.b"));
        assert_eq!((up.codec, up.echo_subprotocol), (Codec::Json, false));
    }

    #[test]
    fn partial_then_complete() {
        let r = req("/ws", "");
        assert_eq!(parse(&r.as_bytes()[..20]), Ok(None));
        assert!(parse(r.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn rejections_carry_the_right_status() {
        let status = |s: &str| parse(s.as_bytes()).unwrap_err().status;
        assert_eq!(status("garbage\r\n\r\n"), 400);
        assert_eq!(status(&req("/other", "")), 404);
        assert_eq!(status(&req("/ws", "").replacen("GET", "POST", 1)), 405);
        assert_eq!(status("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), 426);
        assert_eq!(
            status(&req("/ws", "").replace("Version: 13", "Version: 8")),
            426
        );
        assert_eq!(
            status(&req("/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short")),
            400
        );
        assert_eq!(status(&req("/ws", "Sec-WebSocket-Protocol: mqtt\r\n")), 400);
        let big = format!("GET /ws HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(status(&big), 431);
        let resp = String::from_utf8(reject_response(&Reject {
            status: 503,
            reason: "draining",
            retry_after_s: Some(3),
        }))
        .unwrap();
        assert!(resp.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(resp.contains("Retry-After: 3\r\n"));
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("a%41%zz%4"), "aA%zz%4");
    }
}
