//! The HTTP/1.1 request that opens a link, sans-IO: a WebSocket upgrade, or one of the HTTP
//! transports' requests (event stream, poll, send). Parse what the client sent, answer with the
//! exact status a client can act on (never 500 for a client's mistake).

use super::codec::Codec;
use super::deflate::Agreed;
use super::http::{cors, status_text};

/// Where a client says it stopped reading its stream: `since=EPOCH:OFFSET` on `/ws`, `/sse`
/// and `/poll`, or an SSE `Last-Event-ID` with a colon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

impl Since {
    pub fn parse(s: &str) -> Option<Since> {
        let (epoch, offset) = s.rsplit_once(':')?;
        Some(Since {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }
}

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
    /// Every `Sec-WebSocket-Extensions` line, joined by commas (offers may span lines).
    pub extensions: Option<String>,
    pub since: Option<Since>,
    /// Bytes of the request head; anything after it already belongs to the WebSocket stream.
    pub head_len: usize,
}

/// Which HTTP-transport request this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /sse`: open (or resume) an event stream.
    EventStream,
    /// `GET /poll`: wait for the next batch of frames.
    Poll,
    /// `POST /send`: frames from the client.
    Send,
    /// `OPTIONS` on any endpoint: a CORS preflight.
    Preflight,
}

/// A request of the HTTP transports, before authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub route: Route,
    pub token: Option<String>,
    pub origin: Option<String>,
    /// `Last-Event-ID` (or `?lastEventId=`) without a colon: the last push's seq a
    /// re-attached stream saw.
    pub last_event_id: u64,
    /// `since=`, or a `Last-Event-ID` with a colon: resume the user's stream.
    pub since: Option<Since>,
    /// `POST /send`'s body length; the body follows the head.
    pub content_length: usize,
    pub head_len: usize,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    WebSocket(Upgrade),
    Http(HttpRequest),
}

impl Request {
    pub fn origin(&self) -> Option<&str> {
        match self {
            Request::WebSocket(u) => u.origin.as_deref(),
            Request::Http(h) => h.origin.as_deref(),
        }
    }

    pub fn token(&self) -> Option<&str> {
        match self {
            Request::WebSocket(u) => u.token.as_deref(),
            Request::Http(h) => h.token.as_deref(),
        }
    }

    /// Bytes of the request head; what follows belongs to the link (frames, a POST body).
    pub fn head_len(&self) -> usize {
        match self {
            Request::WebSocket(u) => u.head_len,
            Request::Http(h) => h.head_len,
        }
    }
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
pub fn parse(buf: &[u8]) -> Result<Option<Request>, Reject> {
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
    // RFC 7230: exactly one Host, and one Content-Length value; a request that disagrees with
    // itself is refused rather than guessed at (request smuggling starts there).
    if count_headers(req.headers, "host") != 1 {
        return Err(Reject::new(400, "HTTP/1.1 needs exactly one Host header"));
    }
    let mut lengths = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value.trim_ascii());
    if let Some(first) = lengths.next()
        && lengths.any(|v| v != first)
    {
        return Err(Reject::new(400, "conflicting Content-Length headers"));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| find_header(req.headers, name);
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    };
    let bearer = header("authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned())
    });
    let token = bearer.or_else(|| param("token"));
    let origin = header("origin").map(str::to_owned);
    let since = match param("since") {
        Some(v) => Some(Since::parse(&v).ok_or(Reject::new(400, "since must be EPOCH:OFFSET"))?),
        None => None,
    };

    let method = req.method.unwrap_or("");
    let route = match (method, path) {
        ("OPTIONS", "/ws" | "/sse" | "/poll" | "/send") => Route::Preflight,
        ("GET", "/ws") => {
            return websocket(&req, token, origin, head_len)
                .map(|u| Some(Request::WebSocket(Upgrade { since, ..u })));
        }
        ("GET", "/sse") => Route::EventStream,
        ("GET", "/poll") => Route::Poll,
        ("POST", "/send") => Route::Send,
        (_, "/ws") => return Err(Reject::new(405, "use GET to open a WebSocket")),
        (_, "/sse" | "/poll") => return Err(Reject::new(405, "use GET")),
        (_, "/send") => return Err(Reject::new(405, "use POST to send frames")),
        _ => {
            return Err(Reject::new(
                404,
                "endpoints: /ws (WebSocket), /sse, /poll, /send",
            ));
        }
    };
    let content_length = match header("content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| Reject::new(400, "malformed Content-Length"))?,
        None if route == Route::Send => {
            return Err(Reject::new(411, "POST /send needs a Content-Length"));
        }
        None => 0,
    };
    if header("transfer-encoding").is_some() {
        return Err(Reject::new(
            411,
            "send a Content-Length, not a chunked body",
        ));
    }
    let event_id = header("last-event-id")
        .map(str::to_owned)
        .or_else(|| param("lastEventId"));
    let (last_event_id, since) = match event_id {
        // A stored push's id: the stream resumes from it. It wins over `since`, which an
        // EventSource repeats from its URL on every reconnect of its own.
        Some(id) if id.contains(':') => {
            let resumed = Since::parse(&id).ok_or(Reject::new(
                400,
                "Last-Event-ID must be EPOCH:OFFSET or a seq",
            ))?;
            (0, Some(resumed))
        }
        Some(id) => (id.parse().unwrap_or(0), since),
        None => (0, since),
    };
    Ok(Some(Request::Http(HttpRequest {
        route,
        token,
        origin,
        last_event_id,
        since,
        content_length,
        head_len,
    })))
}

fn count_headers(headers: &[httparse::Header<'_>], name: &str) -> usize {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

fn find_header<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn is_nonce(key: &str) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

/// The checks RFC 6455 puts on an upgrade request.
fn websocket(
    req: &httparse::Request<'_, '_>,
    token: Option<String>,
    origin: Option<String>,
    head_len: usize,
) -> Result<Upgrade, Reject> {
    let header = |name: &str| find_header(req.headers, name);
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Reject::new(426, "this endpoint only speaks WebSocket"));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(Reject::new(426, "WebSocket version 13 required"));
    }
    // RFC 6455 4.1: the key is 16 random bytes in base64.
    let ws_key = match header("sec-websocket-key") {
        Some(k) if is_nonce(k) => k.to_owned(),
        _ => return Err(Reject::new(400, "missing or malformed Sec-WebSocket-Key")),
    };
    let (codec, echo_subprotocol) = Codec::negotiate(header("sec-websocket-protocol")).ok_or(
        Reject::new(400, "offer subprotocol ringway.v1.proto or ringway.v1.json"),
    )?;
    let extensions: Vec<&str> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .collect();

    Ok(Upgrade {
        token,
        ws_key,
        codec,
        echo_subprotocol,
        origin,
        extensions: (!extensions.is_empty()).then(|| extensions.join(",")),
        since: None,
        head_len,
    })
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

/// The `101 Switching Protocols` answer, naming the extension agreed on, if any.
pub fn accept_response(up: &Upgrade, deflate: Option<&Agreed>, out: &mut Vec<u8>) {
    let accept = tungstenite::handshake::derive_accept_key(up.ws_key.as_bytes());
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    if up.echo_subprotocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(up.codec.subprotocol().as_bytes());
    }
    if let Some(agreed) = deflate {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(agreed.response().as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// The complete answer to a refused request; the connection is closed after it. `origin` is set for a browser's request on an HTTP
/// transport from an allowed origin: without CORS headers its script could not read the status
/// (401, 429, 503) or the `Retry-After` it needs to back off.
pub fn reject_response(r: &Reject, origin: Option<&str>) -> Vec<u8> {
    let status_text = status_text(r.status);
    let mut extra = String::new();
    cors(&mut extra, origin);
    if origin.is_some() && r.retry_after_s.is_some() {
        extra.push_str("Access-Control-Expose-Headers: Retry-After\r\n");
    }
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

    fn ws(bytes: &[u8]) -> Upgrade {
        match parse(bytes).unwrap().unwrap() {
            Request::WebSocket(u) => u,
            other => panic!("not an upgrade: {other:?}"),
        }
    }

    fn http(s: &str) -> HttpRequest {
        match parse(s.as_bytes()).unwrap().unwrap() {
            Request::Http(h) => h,
            other => panic!("not an HTTP-transport request: {other:?}"),
        }
    }

    #[test]
    fn since_on_every_route_and_in_last_event_id() {
        let at = |e: &str, o| {
            Some(Since {
                epoch: e.into(),
                offset: o,
            })
        };
        assert_eq!(
            ws(req("/ws?since=ab12:7", "").as_bytes()).since,
            at("ab12", 7)
        );
        assert_eq!(ws(req("/ws", "").as_bytes()).since, None);
        let poll = http("GET /poll?since=e:3 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(poll.since, at("e", 3));
        let sse = http("GET /sse HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e:9\r\n\r\n");
        assert_eq!((sse.since, sse.last_event_id), (at("e", 9), 0));
        let sse = http("GET /sse HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 9\r\n\r\n");
        assert_eq!((sse.since, sse.last_event_id), (None, 9));
        let again = http("GET /sse?since=e:2 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e:5\r\n\r\n");
        assert_eq!(
            again.since,
            at("e", 5),
            "the browser's last id wins over its URL's since"
        );
        for bad in [
            "GET /ws?since=7 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /sse?since=e:x HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /sse HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e:-1\r\n\r\n",
        ] {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn http_transport_routes() {
        let sse = http(
            "GET /sse?token=t%2E1&lastEventId=9 HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\nLast-Event-ID: 12\r\n\r\n",
        );
        assert_eq!(sse.route, Route::EventStream);
        assert_eq!(sse.token.as_deref(), Some("t.1"));
        assert_eq!(sse.origin.as_deref(), Some("http://a"));
        assert_eq!(sse.last_event_id, 12, "the header wins over the query");
        let poll = http("GET /poll?token=x&lastEventId=9 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((poll.route, poll.last_event_id), (Route::Poll, 9));
        let head = "POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer b\r\nContent-Length: 5\r\n\r\n";
        let send = http(&format!("{head}hello"));
        assert_eq!(send.route, Route::Send);
        assert_eq!(send.token.as_deref(), Some("b"));
        assert_eq!((send.content_length, send.head_len), (5, head.len()));
        assert_eq!(
            http("OPTIONS /send HTTP/1.1\r\nHost: x\r\n\r\n").route,
            Route::Preflight
        );
        let status = |s: &str| parse(s.as_bytes()).unwrap_err().status;
        assert_eq!(status("POST /send HTTP/1.1\r\nHost: x\r\n\r\n"), 411);
        assert_eq!(
            status(
                "POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"
            ),
            411
        );
        assert_eq!(
            status("POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n"),
            400
        );
        assert_eq!(status("GET /send HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert_eq!(status("POST /sse HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
    }

    #[test]
    fn requests_that_disagree_with_themselves_are_refused() {
        let status = |s: &str| parse(s.as_bytes()).unwrap_err().status;
        let no_host = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(status(no_host), 400);
        assert_eq!(
            status("GET /sse HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400
        );
        let two_lengths =
            "POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n";
        assert_eq!(status(two_lengths), 400);
        let same_twice =
            "POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
        assert!(parse(same_twice.as_bytes()).is_ok());
        let bad_key =
            req("/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "not-base64-but-24-chars!");
        assert_eq!(status(&bad_key), 400);
        let short_nonce =
            req("/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ");
        assert_eq!(status(&short_nonce), 400);
    }

    #[test]
    fn header_token_and_codec() {
        let r = req(
            "/ws",
            "Authorization: Bearer abc.def\r\nSec-WebSocket-Protocol: ringway.v1.proto\r\nOrigin: https://a.example\r\n",
        );
        let mut bytes = r.clone().into_bytes();
        bytes.extend_from_slice(b"\x81\x80");
        let up = ws(&bytes);
        assert_eq!(up.token.as_deref(), Some("abc.def"));
        assert_eq!((up.codec, up.echo_subprotocol), (Codec::Proto, true));
        assert_eq!(up.origin.as_deref(), Some("https://a.example"));
        assert_eq!(up.head_len, r.len());
        assert_eq!(up.extensions, None);
        let mut out = Vec::new();
        accept_response(&up, None, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: ringway.v1.proto\r\n"));
    }

    #[test]
    fn extension_offers_on_several_lines() {
        let r = req(
            "/ws",
            "Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        );
        let up = ws(r.as_bytes());
        assert_eq!(
            up.extensions.as_deref(),
            Some("x-foo,permessage-deflate; client_max_window_bits")
        );
        let agreed = Agreed::default();
        let mut out = Vec::new();
        accept_response(&up, Some(&agreed), &mut out);
        assert!(String::from_utf8(out).unwrap().contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n"
        ));
    }

    #[test]
    fn query_token_default_codec() {
        let up = ws(req("/ws?x=1&token=a%2Eb", "").as_bytes());
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
        let big = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nX: {}",
            "a".repeat(MAX_REQUEST_BYTES)
        );
        assert_eq!(status(&big), 431);
        let draining = Reject {
            status: 503,
            reason: "draining",
            retry_after_s: Some(3),
        };
        let resp = String::from_utf8(reject_response(&draining, None)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(resp.contains("Retry-After: 3\r\n"));
        assert!(!resp.contains("Access-Control"));
        // A browser's script sees the status and the back-off only with CORS headers.
        let resp = reject_response(&draining, Some("https://app.example"));
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.contains("Access-Control-Allow-Origin: https://app.example\r\n"));
        assert!(resp.contains("Access-Control-Expose-Headers: Retry-After\r\n"));
        let resp = reject_response(
            &Reject::new(401, "missing token"),
            Some("https://a.example"),
        );
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.contains("Access-Control-Allow-Origin: https://a.example\r\n"));
        assert!(!resp.contains("Expose-Headers"));
        assert!(resp.ends_with("\r\n\r\nmissing token\n"));
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("a%41%zz%4"), "aA%zz%4");
    }
}
