//! The single-node gateway end to end: the real binary, a real WebSocket client, loopback.

mod common;

use std::time::Duration;

use common::{Gateway, Got, frame, wait_until};
use ringway::proto::{Cmd, Code};
use ringway::protocol::Codec;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

#[test]
fn connected_heartbeat_upstream_ack_in_both_codecs() {
    let gw = Gateway::start(&[]);
    for codec in [Codec::Proto, Codec::Json] {
        let mut c = gw.connect("alice", &format!("{codec:?}"), codec);
        let info = c.connected.connected.clone().unwrap();
        assert_eq!(info.link_id, format!("1:alice:{codec:?}"));
        assert_eq!(info.heartbeat_interval_ms, 30_000);

        c.send(&frame(Cmd::Heartbeat, "hb", b"x"));
        let hb = c.frame();
        assert_eq!(
            (hb.cmd, hb.key.as_str(), &hb.body[..]),
            (Cmd::Heartbeat as i32, "hb", &b"x"[..])
        );

        let key = format!("m-{codec:?}");
        c.send(&frame(Cmd::Upstream, &key, b"hello"));
        let ack = c.frame();
        assert_eq!(
            (ack.cmd, ack.key.as_str()),
            (Cmd::UpstreamAck as i32, key.as_str())
        );
        // A resend (the client lost the ack) is answered with the same ack, not forwarded again.
        c.send(&frame(Cmd::Upstream, &key, b"hello"));
        assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);
    }
    assert_eq!(gw.metric("ringway_upstream_forwarded_total"), 2.0);
    assert_eq!(gw.metric("ringway_upstream_reacked_total"), 2.0);
}

#[test]
fn json_link_accepts_names_without_prefix_and_no_subprotocol() {
    let gw = Gateway::start(&[]);
    let mut req = gw.url().into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", gw.token("bob", "web"))).unwrap(),
    );
    let (mut c, connected) = common::Client::open(gw.ws, req, Codec::Json).unwrap();
    assert_eq!(connected.cmd, Cmd::Connected as i32);
    c.send_raw(Message::text(
        r#"{"cmd":"UPSTREAM","key":"k1","body":"aGk="}"#,
    ));
    assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);
}

#[test]
fn echo_pushes_back_and_downstream_ack_stops_retransmits() {
    let gw = Gateway::start(&["--echo", "--push-retry-initial-ms", "200"]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    c.send(&frame(Cmd::Upstream, "e1", b"ping"));
    let mut got = [c.frame(), c.frame()];
    got.sort_by_key(|f| f.cmd);
    assert_eq!(got[0].cmd, Cmd::UpstreamAck as i32);
    assert_eq!(
        (got[1].cmd, got[1].seq, &got[1].body[..]),
        (Cmd::Downstream as i32, 1, &b"ping"[..])
    );
    c.send(&frame(Cmd::DownstreamAck, "e1", b""));
    gw.wait_metric("ringway_push_acked_total", 1.0);
    c.set_timeout(Duration::from_millis(700));
    assert!(
        matches!(c.recv(), Got::Quiet),
        "an acked push is not resent"
    );
    assert_eq!(gw.metric("ringway_push_retransmits_total"), 0.0);
}

#[test]
fn unacked_push_is_retransmitted_with_the_same_seq_then_reported() {
    let gw = Gateway::start(&["--push-retry-initial-ms", "100", "--push-retry-max", "3"]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    gw.push("alice", "p1", b"body");
    let first = c.frame();
    let again = c.frame();
    assert_eq!((first.key.as_str(), first.seq), ("p1", 1));
    assert_eq!(
        (again.key.as_str(), again.seq),
        ("p1", 1),
        "retransmit keeps its seq"
    );
    c.send(&frame(Cmd::DownstreamAck, "p1", b""));
    gw.wait_metric("ringway_push_acked_total", 1.0);

    gw.push("alice", "p2", b"body");
    for _ in 0..3 {
        let f = c.frame();
        assert_eq!((f.key.as_str(), f.seq), ("p2", 2));
    }
    gw.wait_metric(
        "ringway_undelivered_total{reason=\"retries_exhausted\"}",
        1.0,
    );
    assert_eq!(gw.metric("ringway_push_retransmits_total"), 3.0);
}

#[test]
fn push_to_offline_user_is_reported_and_bad_push_requests_get_400() {
    let gw = Gateway::start(&[]);
    gw.push("nobody", "p1", b"x");
    gw.wait_metric("ringway_undelivered_total{reason=\"offline\"}", 1.0);
    let bad = [
        serde_json::json!({"biz_id": 1, "user_id": "a", "body": ""}),
        serde_json::json!({"biz_id": 1, "key": "k"}),
        serde_json::json!({"biz_id": 1, "user_id": "a", "key": "k", "body": "***"}),
        serde_json::json!({"biz_id": "x", "user_id": "a", "key": "k"}),
        serde_json::json!({"biz_id": 1, "user_id": "a", "key": "k", "bogus": 1}),
    ];
    for b in bad {
        let (status, resp) = gw.post("/v1/push", b.clone());
        assert_eq!(status, 400, "{b} -> {resp}");
        assert!(resp["error"].is_string());
    }
    assert_eq!(gw.get("/readyz").0, 200);
}

#[test]
fn group_push_reaches_users_on_both_cores() {
    let gw = Gateway::start(&[]);
    let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    let mut clients: Vec<_> = users
        .iter()
        .map(|u| gw.connect(u, "d", Codec::Proto))
        .collect();
    let (_, text) = gw.get("/metrics");
    assert!(
        text.contains("ringway_core_links{core=\"0\"}")
            && !text.contains("ringway_core_links{core=\"0\"} 0\n")
    );
    assert!(
        !text.contains("ringway_core_links{core=\"1\"} 0\n"),
        "12 users all on one core?"
    );
    assert!(
        gw.metric("ringway_socket_handoffs_total") > 0.0,
        "some sockets were accepted by the other core"
    );
    let (status, _) = gw.post(
        "/v1/push",
        serde_json::json!({"biz_id": "1", "user_ids": users, "key": "g1", "body": "aGk="}),
    );
    assert_eq!(status, 202);
    for c in &mut clients {
        let f = c.frame();
        assert_eq!((f.key.as_str(), &f.body[..]), ("g1", &b"hi"[..]));
    }
}

#[test]
fn auth_and_upgrade_failures_get_clear_statuses() {
    let gw = Gateway::start(&["--allowed-origins", "https://chat.example"]);
    let status = |mutate: &dyn Fn(&mut tungstenite::handshake::client::Request)| {
        let mut req = gw.url().into_client_request().unwrap();
        mutate(&mut req);
        common::Client::open(gw.ws, req, Codec::Json).err()
    };
    assert_eq!(status(&|_| {}), Some(401), "no token");
    assert_eq!(
        status(&|r| {
            r.headers_mut()
                .insert("Authorization", HeaderValue::from_static("Bearer garbage"));
        }),
        Some(401)
    );
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        encode(
            &Header::default(),
            &serde_json::json!({"biz_id": 1, "user_id": "a", "exp": 1}),
            &EncodingKey::from_secret(common::SECRET.as_bytes()),
        )
        .unwrap()
    };
    let bearer = HeaderValue::from_str(&format!("Bearer {expired}")).unwrap();
    assert_eq!(
        status(&|r| {
            r.headers_mut().insert("Authorization", bearer.clone());
        }),
        Some(401),
        "expired"
    );
    let good = HeaderValue::from_str(&format!("Bearer {}", gw.token("a", "d"))).unwrap();
    assert_eq!(
        status(&|r| {
            r.headers_mut().insert("Authorization", good.clone());
            r.headers_mut()
                .insert("Origin", HeaderValue::from_static("https://evil.example"));
        }),
        Some(403)
    );
    assert_eq!(
        status(&|r| {
            r.headers_mut().insert("Authorization", good.clone());
            r.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        }),
        Some(400)
    );
    // Allowed origin, token in the query (as browsers must): accepted.
    let url = format!("{}?token={}", gw.url(), gw.token("a", "d"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", HeaderValue::from_static("https://chat.example"));
    assert!(common::Client::open(gw.ws, req, Codec::Json).is_ok());

    // Plain HTTP to the WebSocket port: 426, never 500.
    let (code, _) = raw_http(gw.ws, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 426);
    let (code, _) = raw_http(gw.ws, "BREW /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 405);
    assert_eq!(
        gw.metric("ringway_handshake_rejected_total{status=\"401\"}"),
        3.0
    );
}

fn raw_http(addr: std::net::SocketAddr, req: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

#[test]
fn handshake_timeout_answers_408() {
    let gw = Gateway::start(&["--handshake-timeout-ms", "300"]);
    let (code, _) = raw_http(gw.ws, "GET /ws HTTP/1.1\r\n");
    assert_eq!(code, 408);
}

#[test]
fn rate_limited_messages_get_a_retry_hint_and_heartbeats_pass() {
    let gw = Gateway::start(&["--link-rate", "5", "--link-burst", "2"]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    for k in ["a", "b", "c"] {
        c.send(&frame(Cmd::Upstream, k, b""));
    }
    c.send(&frame(Cmd::Heartbeat, "", b""));
    let got: Vec<_> = (0..4).map(|_| c.frame()).collect();
    let limited: Vec<_> = got
        .iter()
        .filter(|f| f.cmd == Cmd::RateLimited as i32)
        .collect();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].key, "c");
    assert!(limited[0].retry_after_ms > 0 && limited[0].retry_after_ms <= 200);
    assert!(got.iter().any(|f| f.cmd == Cmd::Heartbeat as i32));
    assert_eq!(
        gw.metric("ringway_dropped_total{reason=\"rate_limited\"}"),
        1.0
    );
}

#[test]
fn relogin_kicks_the_old_device_and_two_devices_coexist() {
    let gw = Gateway::start(&[]);
    let mut phone = gw.connect("alice", "phone", Codec::Json);
    let mut laptop = gw.connect("alice", "laptop", Codec::Proto);
    gw.push("alice", "p1", b"both");
    assert_eq!(phone.frame().key, "p1");
    assert_eq!(laptop.frame().key, "p1");

    let mut phone2 = gw.connect("alice", "phone", Codec::Json);
    let kicked = phone.frame();
    assert_eq!(kicked.cmd, Cmd::Kicked as i32);
    assert_eq!(phone.close_code(), Some(4003));
    // The unacked push moved to the new login of the same device.
    let carried = phone2.frame();
    assert_eq!((carried.key.as_str(), carried.seq), ("p1", 1));

    let (status, _) = gw.post(
        "/v1/kick",
        serde_json::json!({"biz_id": 1, "user_id": "alice", "device_id": "laptop"}),
    );
    assert_eq!(status, 202);
    assert_eq!(laptop.frame().cmd, Cmd::Kicked as i32);
    assert_eq!(laptop.close_code(), Some(4003));
    phone2.send(&frame(Cmd::Heartbeat, "", b""));
    assert_eq!(
        phone2.frame().cmd,
        Cmd::Heartbeat as i32,
        "the other device is untouched"
    );
}

#[test]
fn redirect_names_the_new_node_then_closes() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    let (status, _) = gw.post(
        "/v1/redirect",
        serde_json::json!({"biz_id": 1, "user_id": "alice", "nodes": [{"id": "n2", "ip": "127.0.0.2", "port": 8080}], "retry_after_ms": 300}),
    );
    assert_eq!(status, 202);
    let f = c.frame();
    assert_eq!(f.cmd, Cmd::Redirect as i32);
    assert_eq!(
        (f.nodes[0].ip.as_str(), f.nodes[0].port, f.retry_after_ms),
        ("127.0.0.2", 8080, 300)
    );
    assert_eq!(c.close_code(), Some(4004));
}

#[test]
fn garbage_gets_error_frames_and_oversized_closes_1009() {
    let gw = Gateway::start(&["--max-message-bytes", "1024"]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    c.send_raw(Message::text("{not json"));
    let e = c.frame();
    assert_eq!((e.cmd, e.code), (Cmd::Error as i32, Code::BadFrame as i32));
    c.send_raw(Message::text(r#"{"cmd":"CMD_UPSTREAM","body":"aGk="}"#));
    assert_eq!(c.frame().code, Code::MissingKey as i32);
    c.send_raw(Message::text(r#"{"cmd":"CMD_CONNECTED"}"#));
    assert_eq!(c.frame().code, Code::UnsupportedCmd as i32);
    c.send(&frame(Cmd::Heartbeat, "", b""));
    assert_eq!(
        c.frame().cmd,
        Cmd::Heartbeat as i32,
        "still alive after garbage"
    );

    let mut other = gw.connect("bob", "phone", Codec::Proto);
    c.send_raw(Message::binary(vec![0u8; 4096]));
    assert_eq!(c.frame().code, Code::TooLarge as i32);
    assert_eq!(c.close_code(), Some(1009));
    other.send(&frame(Cmd::Heartbeat, "", b""));
    assert_eq!(
        other.frame().cmd,
        Cmd::Heartbeat as i32,
        "other links unaffected"
    );
    gw.wait_metric("ringway_links_closed_total{reason=\"too_big\"}", 1.0);
}

#[test]
fn idle_links_are_closed_and_heartbeats_keep_them_open() {
    let gw = Gateway::start(&["--heartbeat-timeout-ms", "900"]);
    let mut idle = gw.connect("alice", "phone", Codec::Json);
    let mut busy = gw.connect("bob", "phone", Codec::Json);
    let start = std::time::Instant::now();
    // bob beats every 200ms; alice says nothing and does not read (so she answers no ping).
    while start.elapsed() < Duration::from_millis(1500) {
        busy.send(&frame(Cmd::Heartbeat, "", b""));
        assert_eq!(busy.frame().cmd, Cmd::Heartbeat as i32);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(idle.close_code(), Some(4001));
    gw.wait_metric("ringway_links_closed_total{reason=\"idle_timeout\"}", 1.0);
    busy.send(&frame(Cmd::Heartbeat, "", b""));
    assert_eq!(busy.frame().cmd, Cmd::Heartbeat as i32);
}

#[test]
fn slow_consumer_is_closed_counted_and_its_pushes_reported() {
    let gw = Gateway::start(&["--max-outbound-bytes", "65536", "--slow-consumer-ms", "200"]);
    let slow = gw.connect("alice", "phone", Codec::Proto);
    let mut fine = gw.connect("bob", "phone", Codec::Proto);
    // Its JSON frame (~44 KB) fits under the cap; a larger push would be refused with 413.
    let body = vec![7u8; 32 * 1024];
    let mut n = 0;
    // alice never reads: kernel buffers fill, then the gateway's queue passes the cap.
    while gw.metric("ringway_links_closed_total{reason=\"slow_consumer\"}") == 0.0 {
        gw.push("alice", &format!("p{n}"), &body);
        n += 1;
        assert!(n < 2000, "slow consumer never detected");
    }
    wait_until("slow link removed", Duration::from_secs(10), || {
        gw.metric("ringway_links") == 1.0
    });
    assert!(gw.metric("ringway_undelivered_total{reason=\"slow_consumer\"}") >= 1.0);
    drop(slow);
    gw.push("bob", "b1", b"still here");
    assert_eq!(fine.frame().key, "b1");
}

#[test]
fn sigterm_closes_links_with_1001_and_exits_promptly() {
    let mut gw = Gateway::start(&[]);
    let mut a = gw.connect("alice", "phone", Codec::Json);
    let mut b = gw.connect("bob", "phone", Codec::Proto);
    gw.signal(libc::SIGTERM);
    assert_eq!(a.close_code(), Some(1001));
    assert_eq!(b.close_code(), Some(1001));
    let status = gw.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}");
}

#[test]
fn admin_drain_needs_a_configured_token_and_then_drains_like_sigterm() {
    let gw = Gateway::start(&[]);
    let (status, body) = gw.post_as(Some("guess"), "/admin/drain", serde_json::json!({}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(gw.get("/readyz").0, 200, "nothing changed");

    let mut gw = Gateway::start(&["--admin-token", "op-token"]);
    let mut a = gw.connect("alice", "phone", Codec::Json);
    // A user's links show client addresses: the token guards this read too.
    assert_eq!(gw.get("/v1/links?biz_id=1&user_id=alice").0, 401);
    assert_eq!(gw.get("/v1/nodes").0, 200);
    assert_eq!(
        gw.post_as(Some("wrong"), "/admin/drain", serde_json::json!({}))
            .0,
        401
    );
    assert_eq!(
        gw.post_as(Some("op-token"), "/admin/drain", serde_json::json!({}))
            .0,
        202
    );
    // A lone node has nowhere to send its links: 1001 with a retry hint, then exit.
    assert_eq!(a.close_code(), Some(1001));
    assert!(gw.wait_exit(Duration::from_secs(5)).success());
}

#[test]
fn a_full_idempotency_store_forgets_early_and_says_so() {
    let gw = Gateway::start(&["--idem-max-entries", "4", "--link-rate", "0"]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    for i in 0..10 {
        c.send(&frame(Cmd::Upstream, &format!("m{i}"), b""));
        assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);
    }
    // alice's core holds 4 keys: the 6 oldest were forgotten, and /metrics tells.
    gw.wait_metric("ringway_idem_evictions_total", 6.0);
    c.send(&frame(Cmd::Upstream, "m0", b""));
    assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);
    assert_eq!(
        gw.metric("ringway_upstream_forwarded_total"),
        11.0,
        "m0 was forgotten, so forwarded again"
    );
}

/// An HTTP request on its own connection, kept open for reading what the server streams.
fn open_stream(addr: std::net::SocketAddr, req: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// Reads from a stream until `needle` has arrived; returns everything read.
fn read_until(s: &mut std::net::TcpStream, seen: &mut String, needle: &str) {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = s.read(&mut buf).expect("stream answers in time");
        assert!(n > 0, "stream ended before {needle:?}; got {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

fn send_frames(gw: &Gateway, token: &str, body: &str) -> (u16, String) {
    raw_http(
        gw.ws,
        &format!(
            "POST /send?token={token} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn event_stream_and_post_send_carry_frames_and_a_resumed_stream_gets_lost_pushes_again() {
    let gw = Gateway::start(&["--allowed-origins", "http://page.example"]);
    let token = gw.token("sse-user", "web");
    let sse = |extra: &str| {
        format!(
            "GET /sse?token={token} HTTP/1.1\r\nHost: x\r\nOrigin: http://page.example\r\n{extra}\r\n"
        )
    };
    let mut stream = open_stream(gw.ws, &sse(""));
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "CMD_CONNECTED");
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
    assert!(seen.contains("Access-Control-Allow-Origin: http://page.example\r\n"));
    assert!(seen.contains("retry: 2000\n"));

    gw.push("sse-user", "p-1", b"one");
    read_until(&mut stream, &mut seen, ":1\ndata: ");
    let (code, _) = send_frames(
        &gw,
        &token,
        r#"{"cmd":"UPSTREAM","key":"m-1","body":"aGk="}"#,
    );
    assert_eq!(code, 202);
    read_until(
        &mut stream,
        &mut seen,
        r#""cmd":"CMD_UPSTREAM_ACK","key":"m-1""#,
    );

    // The stream drops with p-1 unacked; the client re-attaches having seen nothing after
    // CONNECTED (an id without a colon: the same link, not a stream resume). p-1 is stored, so
    // its event id is EPOCH:1.
    drop(stream);
    gw.wait_metric("ringway_links", 1.0);
    let mut stream = open_stream(gw.ws, &sse("Last-Event-ID: 0\r\n"));
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, ":1\ndata: ");
    assert!(seen.contains(r#""key":"p-1""#));
    let (code, _) = send_frames(&gw, &token, r#"[{"cmd":"DOWNSTREAM_ACK","key":"p-1"}]"#);
    assert_eq!(code, 202);
    gw.wait_metric("ringway_push_acked_total", 1.0);
    assert_eq!(gw.metric("ringway_http_attaches_total"), 1.0);
    assert_eq!(
        gw.metric("ringway_links_by_transport_total{transport=\"sse\"}"),
        1.0
    );
    // The link outlived its first socket: still one link, no undelivered report.
    assert_eq!(gw.metric("ringway_links"), 1.0);
    assert_eq!(
        gw.metric("ringway_undelivered_total{reason=\"link_closed\"}"),
        0.0
    );
}

#[test]
fn long_poll_answers_with_batches() {
    let gw = Gateway::start(&[]);
    let token = gw.token("poller", "old-phone");
    let poll = format!("GET /poll?token={token} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (code, body) = raw_http(gw.ws, &poll);
    assert_eq!(code, 200);
    assert!(
        body.contains(r#"{"frames":[{"cmd":"CMD_CONNECTED""#),
        "{body}"
    );
    gw.push("poller", "p-1", b"one");
    gw.push("poller", "p-2", b"two");
    let (_, body) = raw_http(gw.ws, &poll);
    let json: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let keys: Vec<&str> = json["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["p-1", "p-2"]);
    let (code, _) = send_frames(
        &gw,
        &token,
        r#"[{"cmd":"DOWNSTREAM_ACK","key":"p-1"},{"cmd":"DOWNSTREAM_ACK","key":"p-2"}]"#,
    );
    assert_eq!(code, 202);
    gw.wait_metric("ringway_push_acked_total", 2.0);
}

#[test]
fn http_transport_mistakes_get_clear_statuses() {
    let gw = Gateway::start(&["--max-message-bytes", "1024"]);
    let token = gw.token("nobody", "d");
    let (code, body) = send_frames(&gw, &token, r#"{"cmd":"HEARTBEAT"}"#);
    assert_eq!(code, 409, "no stream open: {body}");
    let (code, _) = raw_http(
        gw.ws,
        &format!("POST /send?token={token} HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    assert_eq!(code, 411);
    let (code, _) = raw_http(
        gw.ws,
        &format!("POST /send?token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"),
    );
    assert_eq!(code, 413);
    let (code, _) = raw_http(gw.ws, "GET /sse HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 401);
    // From a page, the refusal carries CORS headers, or its script could not read the 401.
    let (code, head) = raw_http(
        gw.ws,
        "GET /sse HTTP/1.1\r\nHost: x\r\nOrigin: http://o.example\r\n\r\n",
    );
    assert_eq!(code, 401);
    assert!(head.contains("Access-Control-Allow-Origin: http://o.example\r\n"));
    let (code, head) = raw_http(
        gw.ws,
        "OPTIONS /send HTTP/1.1\r\nHost: x\r\nOrigin: http://o.example\r\n\r\n",
    );
    assert_eq!(code, 204);
    assert!(head.contains("Access-Control-Allow-Origin: http://o.example\r\n"));
    // With a stream open, frames that are not JSON get 400 and the link goes on.
    let _stream = open_stream(
        gw.ws,
        &format!("GET /sse?token={token} HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    gw.wait_metric("ringway_links", 1.0);
    let (code, body) = send_frames(&gw, &token, "not json");
    assert_eq!(code, 400, "{body}");
    let (code, _) = send_frames(&gw, &token, r#"{"cmd":"HEARTBEAT"}"#);
    assert_eq!(code, 202);
}

#[test]
fn metrics_give_latency_histograms_the_build_and_the_process() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    gw.push("alice", "p1", b"body");
    assert_eq!(c.frame().key, "p1");
    c.send(&frame(Cmd::DownstreamAck, "p1", b""));
    // Each core publishes its latencies once a second.
    let ack = "ringway_push_ack_latency_seconds";
    gw.wait_metric(&format!("{ack}_count"), 1.0);
    assert_eq!(gw.metric(&format!("{ack}_bucket{{le=\"+Inf\"}}")), 1.0);
    assert_eq!(gw.metric(&format!("{ack}_bucket{{le=\"10\"}}")), 1.0);
    let (_, text) = gw.get("/metrics");
    assert!(text.contains(&format!("# TYPE {ack} histogram\n")));
    let build = text
        .lines()
        .find(|l| l.starts_with("ringway_build_info{"))
        .expect("ringway_build_info");
    assert!(
        build.contains("git_sha=\"") && build.ends_with(" 1"),
        "{build}"
    );
    assert!(gw.metric("process_open_fds") > 0.0);
    assert!(gw.metric("process_cpu_seconds_total") >= 0.0);
    // The admin API times itself: the push above was one 202 on /v1/push.
    let pushes = "ringway_admin_request_duration_seconds_count{path=\"/v1/push\",status=\"202\"}";
    assert_eq!(gw.metric(pushes), 1.0);
    // Every series the shipped dashboard queries is one this node exports.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/ringway.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 12, "{} queries", exprs.len());
    for expr in exprs {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ringway_") || w.starts_with("process_"));
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which /metrics does not export: {expr}"
            );
        }
    }
    // Prometheus' own linter accepts the whole exposition.
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/services.sh install)");
    use std::io::Write;
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks `value` against an OpenAPI schema of `doc`: types, required properties, array
/// items and `$ref`s; says where it differs.
fn conforms(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
) {
    let schema = match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    };
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_u64() || value.is_i64(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    assert!(ok, "{at}: {value} is not of type {}", schema["type"]);
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        assert!(
            value.get(name).is_some(),
            "{at}: required {name} missing from {value}"
        );
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, v) in value.as_object().into_iter().flatten() {
            if let Some(s) = props.get(k) {
                conforms(doc, s, v, &format!("{at}.{k}"));
            }
        }
    }
    if let Some(items) = schema.get("items") {
        for (i, v) in value.as_array().into_iter().flatten().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}

#[test]
fn the_openapi_document_describes_the_admin_api_as_it_answers() {
    let gw = Gateway::start(&["--push-retry-initial-ms", "60000"]);
    let (status, text) = gw.get("/openapi.json");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let response = |path: &str, method: &str, status: u16| {
        doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
            ["schema"]
            .clone()
    };
    // Every documented route is served (nothing documented answers 404 or 405).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if path == "/admin/drain" {
                continue; // served: it would drain this node
            }
            let status = match method.as_str() {
                "get" => gw.get(path).0,
                _ => gw.post(path, serde_json::json!({})).0,
            };
            assert!(
                ![0, 404, 405].contains(&status),
                "{method} {path} answered {status}"
            );
        }
    }
    // The answers have the documented shapes.
    let mut phone = gw.connect("alice", "phone", Codec::Json);
    let _web = gw.connect("alice", "web", Codec::Proto);
    gw.push("alice", "p1", b"body");
    assert_eq!(phone.frame().key, "p1");
    let (status, body) = gw.get("/v1/links?biz_id=1&user_id=alice");
    assert_eq!(status, 200);
    let links: serde_json::Value = serde_json::from_str(&body).unwrap();
    conforms(&doc, &response("/v1/links", "get", 200), &links, "links");
    let devices: Vec<&str> = links["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["phone", "web"], "{body}");
    let phone_link = &links["links"][0];
    assert_eq!(phone_link["unacked_pushes"], 1, "{body}");
    assert!(
        phone_link["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let (status, body) = gw.get("/v1/presence?biz_id=1&user_id=alice");
    assert_eq!(status, 200);
    let presence: serde_json::Value = serde_json::from_str(&body).unwrap();
    conforms(
        &doc,
        &response("/v1/presence", "get", 200),
        &presence,
        "presence",
    );
    let seen: Vec<(&str, &str)> = presence["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap(),
                d["transport"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("phone", "websocket"), ("web", "websocket")],
        "{body}"
    );
    assert_eq!(presence["scope"], "node", "no Redis: this node's devices");
    let (status, body) = gw.get("/v1/links?biz_id=1&user_id=nobody");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["links"],
        serde_json::json!([])
    );
    let (status, body) = gw.get("/v1/links?biz_id=x&user_id=alice");
    assert_eq!(status, 400);
    conforms(
        &doc,
        &response("/v1/links", "get", 400),
        &serde_json::from_str(&body).unwrap(),
        "error",
    );
    let (status, body) = gw.get("/v1/nodes");
    assert_eq!(status, 200);
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    conforms(&doc, &response("/v1/nodes", "get", 200), &nodes, "nodes");
    let (status, body) = gw.post(
        "/v1/push",
        serde_json::json!({"biz_id": 1, "user_id": "bob", "key": "k"}),
    );
    assert_eq!(status, 202);
    conforms(&doc, &response("/v1/push", "post", 202), &body, "push");
    let (status, body) = gw.post("/v1/push", serde_json::json!({"biz_id": 1}));
    assert_eq!(status, 400);
    conforms(
        &doc,
        &response("/v1/push", "post", 400),
        &body,
        "push error",
    );
    let (status, body) = gw.post(
        "/v1/kick",
        serde_json::json!({"biz_id": 1, "user_id": "alice", "device_id": "web"}),
    );
    assert_eq!(status, 202);
    conforms(&doc, &response("/v1/kick", "post", 202), &body, "kick");
}
