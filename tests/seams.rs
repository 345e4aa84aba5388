//! The seams where messages leaked or strangers got in: each test drives the real binary the
//! way a careless client, an attacker or a habitual operator would.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;
use common::{Gateway, Got, frame};
use ringway::proto::{Cmd, Code, Frame};
use ringway::protocol::Codec;
use serde_json::json;

fn b64(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(body)
}

/// A WebSocket client over a raw socket that reads only when told to, with a small receive
/// buffer so the gateway's queue is what fills up.
fn raw_upgrade(addr: SocketAddr, token: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    write!(
        s,
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ringway.v1.proto\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// One server frame: opcode and payload.
#[derive(Debug)]
struct RawFrame {
    opcode: u8,
    payload: Vec<u8>,
}

/// Splits a server's byte stream into frames; panics on a frame cut short (the stream is
/// corrupt for any client).
fn parse_frames(mut bytes: &[u8]) -> Vec<RawFrame> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "a frame header cut short");
        assert_eq!(bytes[1] & 0x80, 0, "server frames are never masked");
        let (head, len) = match bytes[1] & 0x7f {
            126 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
            ),
            n => (2, n as usize),
        };
        assert!(
            bytes.len() >= head + len,
            "frame of {len} bytes cut short at {}: {} frames before it",
            bytes.len() - head,
            out.len()
        );
        out.push(RawFrame {
            opcode: bytes[0] & 0x0f,
            payload: bytes[head..head + len].to_vec(),
        });
        bytes = &bytes[head + len..];
    }
    out
}

#[test]
fn a_slow_consumer_gets_whole_frames_then_the_close_and_nothing_after() {
    let gw = Gateway::start(&[
        "--max-outbound-bytes",
        "65536",
        "--slow-consumer-ms",
        "300",
        "--push-retry-initial-ms",
        "100",
    ]);
    let mut s = raw_upgrade(gw.ws, &gw.token("slow", "phone"));
    let body = b64(&[7u8; 8 * 1024]);
    let closed = "ringway_links_closed_total{reason=\"slow_consumer\"}";
    let (mut pushes, mut posts) = (0, 0);
    while gw.metric(closed) == 0.0 {
        let push =
            json!({"biz_id": 1, "user_id": "slow", "key": format!("p{pushes}"), "body": body});
        let (status, _) = gw.post("/v1/push", push);
        posts += 1;
        assert!(posts < 10_000, "never closed as a slow consumer");
        match status {
            202 => pushes += 1,
            // The core is behind (on a loaded machine, a stalled core until the watchdog wakes
            // it): the same push again, as a client is told to.
            503 => continue,
            _ => break, // the link is gone: the user is offline now
        }
    }
    // Retransmits would be due during the close linger; none may follow the close frame.
    std::thread::sleep(Duration::from_millis(400));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let frames = parse_frames(&bytes);
    let close = frames
        .iter()
        .position(|f| f.opcode == 0x8)
        .expect("a close frame");
    assert_eq!(close, frames.len() - 1, "frames after the close");
    let code = u16::from_be_bytes([frames[close].payload[0], frames[close].payload[1]]);
    assert_eq!(code, 4002);
    common::report(&format!(
        "slow consumer: {pushes} pushes posted, {} whole frames then close 4002",
        frames.len() - 1
    ));
}

#[test]
fn a_reading_client_survives_a_large_push_and_a_burst_and_too_large_is_413() {
    let gw = Gateway::start(&["--slow-consumer-ms", "300"]);
    let mut c = gw.connect("reader", "phone", Codec::Json);
    // 700 KB of body is ~933 KB as JSON: under the 1 MiB cap, queued whole at once.
    let (status, _) = gw.post(
        "/v1/push",
        json!({"biz_id": 1, "user_id": "reader", "key": "big", "body": b64(&vec![1u8; 700_000])}),
    );
    assert_eq!(status, 202);
    let f = c.frame();
    assert_eq!((f.key.as_str(), f.body.len()), ("big", 700_000));
    // Over the cap as JSON: refused up front, never accepted and then fatal to the link.
    let (status, resp) = gw.post(
        "/v1/push",
        json!({"biz_id": 1, "user_id": "reader", "key": "huge", "body": b64(&vec![1u8; 900_000])}),
    );
    assert_eq!(status, 413, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("--max-outbound-bytes")
    );
    // 50 pushes of 20 KB queued before the client reads a byte.
    for i in 0..50 {
        let push = json!({"biz_id": 1, "user_id": "reader", "key": format!("b{i}"), "body": b64(&[2u8; 20_000])});
        assert_eq!(gw.post("/v1/push", push).0, 202);
    }
    let keys: Vec<String> = (0..50).map(|_| c.frame().key).collect();
    assert_eq!(keys, (0..50).map(|i| format!("b{i}")).collect::<Vec<_>>());
    c.set_timeout(Duration::from_millis(500));
    assert!(matches!(c.recv(), Got::Quiet), "the link stays open");
    assert_eq!(
        gw.metric("ringway_links_closed_total{reason=\"slow_consumer\"}"),
        0.0
    );
}

#[test]
fn a_user_named_three_times_gets_the_push_once() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect("dup", "phone", Codec::Proto);
    let (status, resp) = gw.post(
        "/v1/push",
        json!({"biz_id": 1, "user_ids": ["dup", "dup", "dup"], "key": "g1", "body": ""}),
    );
    assert_eq!((status, resp["accepted"].as_u64()), (202, Some(1)));
    let f = c.frame();
    assert_eq!((f.key.as_str(), f.seq), ("g1", 1));
    c.set_timeout(Duration::from_millis(300));
    assert!(matches!(c.recv(), Got::Quiet), "no second copy");
}

#[test]
fn equal_upstream_keys_of_two_users_both_reach_the_backend() {
    let gw = Gateway::start(&[]);
    let mut a = gw.connect("alice", "phone", Codec::Proto);
    let mut b = gw.connect("bob", "phone", Codec::Proto);
    a.send(&frame(Cmd::Upstream, "same-key", b"from alice"));
    assert_eq!(a.frame().cmd, Cmd::UpstreamAck as i32);
    b.send(&frame(Cmd::Upstream, "same-key", b"from bob"));
    assert_eq!(b.frame().cmd, Cmd::UpstreamAck as i32);
    assert_eq!(gw.metric("ringway_upstream_forwarded_total"), 2.0);
    assert_eq!(gw.metric("ringway_upstream_reacked_total"), 0.0);
}

#[test]
fn a_key_over_the_limit_gets_too_large_and_the_link_stays() {
    let gw = Gateway::start(&["--max-key-bytes", "32"]);
    let mut c = gw.connect("alice", "phone", Codec::Json);
    c.send(&frame(Cmd::Upstream, &"k".repeat(60_000), b"x"));
    let e = c.frame();
    assert_eq!(
        (e.cmd, e.code, e.key.as_str()),
        (Cmd::Error as i32, Code::TooLarge as i32, "")
    );
    c.send(&frame(Cmd::Upstream, &"k".repeat(32), b"x"));
    assert_eq!(c.frame().cmd, Cmd::UpstreamAck as i32);
    assert_eq!(
        gw.metric("ringway_dropped_total{reason=\"key_too_large\"}"),
        1.0
    );
}

#[test]
fn sighup_without_tls_keeps_the_node_and_its_links() {
    let mut gw = Gateway::start(&[]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    for _ in 0..3 {
        gw.signal(libc::SIGHUP);
    }
    c.send(&frame(Cmd::Heartbeat, "hb", b""));
    let f: Frame = c.frame();
    assert_eq!(
        f.cmd,
        Cmd::Heartbeat as i32,
        "the link outlived the hangups"
    );
    gw.push("alice", "after-hup", b"x");
    assert_eq!(c.frame().key, "after-hup");
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn a_second_node_on_the_same_listen_address_fails_to_start() {
    let gw = Gateway::start(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(["serve", "--listen", &gw.ws.to_string()])
        .args(["--admin-listen", &common::free_port().to_string()])
        .args(["--jwt-secret", common::SECRET, "--workers", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process already listens"), "{err}");
    // The first node serves every upgrade alone.
    for i in 0..20 {
        let _ = gw.connect("alice", &format!("d{i}"), Codec::Proto);
    }
    assert_eq!(
        gw.metric("ringway_handshake_rejected_total{status=\"401\"}"),
        0.0
    );
}

/// A POST as a browser page would send it: CORS-simple, with the page's Origin.
fn post_from_page(gw: &Gateway, origin: &str, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(gw.admin).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        gw.admin,
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer[9..12].parse().unwrap()
}

#[test]
fn no_web_page_can_drive_the_admin_api() {
    let gw = Gateway::start(&["--admin-allowed-origins", "https://ops.example"]);
    let mut c = gw.connect("alice", "phone", Codec::Proto);
    let redirect = r#"{"nodes":[{"id":"evil","ip":"203.0.113.9","port":443}]}"#;
    let push = r#"{"biz_id":1,"user_id":"alice","key":"p1","body":""}"#;
    let kick = r#"{"biz_id":1,"user_id":"alice"}"#;
    for (path, body) in [
        ("/v1/redirect", redirect),
        ("/v1/push", push),
        ("/v1/kick", kick),
    ] {
        assert_eq!(post_from_page(&gw, "https://evil.example", path, body), 403);
    }
    c.set_timeout(Duration::from_millis(300));
    assert!(matches!(c.recv(), Got::Quiet), "nothing reached the link");
    assert_eq!(gw.metric("ringway_admin_refused_origins_total"), 3.0);
    // The admin server's own page (the demo) and a listed origin pass; curl sends no Origin.
    let own = format!("http://{}", gw.admin);
    assert_eq!(post_from_page(&gw, &own, "/v1/push", push), 202);
    assert_eq!(c.frame().key, "p1");
    let push2 = push.replace("p1", "p2");
    assert_eq!(
        post_from_page(&gw, "https://ops.example", "/v1/push", &push2),
        202
    );
    assert_eq!(c.frame().key, "p2");
    gw.push("alice", "p3", b"");
    assert_eq!(c.frame().key, "p3");
}

#[test]
fn idle_admin_connections_are_closed() {
    let gw = Gateway::start(&["--admin-idle-timeout-ms", "300"]);
    let mut idle = TcpStream::connect(gw.admin).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed without a request");
    // After one answered request, a kept-alive connection is closed once idle too.
    let mut kept = TcpStream::connect(gw.admin).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    loop {
        match kept.read(&mut buf).unwrap() {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn undelivered_pushes_are_logged_as_a_tally_with_client_values_escaped() {
    let log = std::env::temp_dir().join(format!("ringway-seams-{}.log", std::process::id()));
    let (ws, admin) = (common::free_port(), common::free_port());
    let mut child = common::serve_command(ws, admin)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let metric = |s: &str| common::metric_at(admin, s);
    common::wait_until("the node answers", Duration::from_secs(20), || {
        metric("ringway_links").is_some()
    });
    let post = |body: serde_json::Value| {
        ureq::post(format!("http://{admin}/v1/push"))
            .config()
            .http_status_as_error(false)
            .build()
            .send(body.to_string())
            .unwrap()
            .status()
            .as_u16()
    };
    let users: Vec<String> = (0..2_000).map(|i| format!("offline-{i}")).collect();
    assert_eq!(
        post(json!({"biz_id": 1, "user_ids": users, "key": "k", "body": ""})),
        202
    );
    let forged_key = "k\nINFO ringway: FORGED line \u{1b}[2J";
    assert_eq!(
        post(json!({"biz_id": 1, "user_id": "x", "key": forged_key, "body": ""})),
        202
    );
    // An id with control characters cannot exist: refused.
    assert_eq!(
        post(json!({"biz_id": 1, "user_id": "a\nb", "key": "k", "body": ""})),
        400
    );
    common::wait_until("every report counted", Duration::from_secs(10), || {
        metric("ringway_undelivered_total{reason=\"offline\"}") == Some(2_001.0)
    });
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_until("the tally is logged", Duration::from_secs(10), || {
        text().matches("undelivered pushes").count() >= 2
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = text();
    let _ = std::fs::remove_file(&log);
    let lines = text.matches("undelivered pushes").count();
    assert!(lines <= 4, "{lines} lines for 2,001 reports:\n{text}");
    // Each went to its user's stream: the lines say so, with the example's offset.
    let tally: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("undelivered pushes"))
        .collect();
    assert!(
        tally
            .iter()
            .all(|l| l.contains("stored=") && !l.contains("stored=0")),
        "{tally:?}"
    );
    assert!(
        tally.iter().all(|l| l.contains("example_offset=1")),
        "{tally:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("INFO ringway: FORGED")),
        "a client's key forged a log line:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "a raw escape byte reached the log"
    );
}

#[test]
fn a_node_restarted_on_its_port_starts_while_old_connections_linger() {
    let (ws, admin) = (common::free_port(), common::free_port());
    let start = || {
        let child = common::serve_command(ws, admin)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while common::metric_at(admin, "ringway_links").is_none() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("the node exited at start ({status}): {err}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let mut first = start();
    // Links whose clients never answer the close: the old node's side lingers after it exits.
    let clients: Vec<_> = (0..50)
        .map(|i| raw_upgrade(ws, &common::token("linger", &format!("d{i}"))))
        .collect();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    assert!(first.wait().unwrap().success());
    let mut second = start();
    let _ = second.kill();
    let _ = second.wait();
    drop(clients);
}

#[test]
fn json_logs_are_one_object_a_line_whatever_a_client_sends() {
    let log = std::env::temp_dir().join(format!("ringway-json-{}.log", std::process::id()));
    let (ws, admin) = (common::free_port(), common::free_port());
    let mut child = common::serve_command(ws, admin)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_until("the node answers", Duration::from_secs(20), || {
        common::metric_at(admin, "ringway_links").is_some()
    });
    let forged_key = "k\"}\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"FORGED\"}}";
    let body = json!({"biz_id": 1, "user_id": "nobody", "key": forged_key, "body": ""});
    let status = ureq::post(format!("http://{admin}/v1/push"))
        .send(body.to_string())
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_until("the tally is logged", Duration::from_secs(10), || {
        text().contains("undelivered pushes")
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = text();
    let _ = std::fs::remove_file(&log);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "ringway ready")
    );
    let tally = lines
        .iter()
        .find(|l| l["fields"]["message"] == "undelivered pushes")
        .expect("the tally line");
    // The key reaches the log as a value of its own (Debug-escaped inside the JSON string).
    let logged = tally["fields"]["example_key"].as_str().unwrap();
    assert_eq!(logged, format!("{forged_key:?}"));
    assert!(!lines.iter().any(|l| l["fields"]["message"] == "FORGED"));
}

#[test]
fn check_validates_flags_and_files_without_starting() {
    let check = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway"))
            .arg("check")
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = check(&["--jwt-secret", common::SECRET]);
    assert!(
        ok && text.contains("the flags are valid (JWT secret"),
        "{text}"
    );
    let (ok, text) = check(&[
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        "/nonexistent.pem",
    ]);
    assert!(
        !ok && text.contains("--tls-cert /nonexistent.pem"),
        "{text}"
    );
    let (ok, text) = check(&["--jwt-secret", "short"]);
    assert!(!ok && text.contains("at least 16 bytes"), "{text}");
    let (ok, text) = check(&["--body-key", "1=AAAA"]);
    assert!(!ok && text.contains("need 32 bytes"), "{text}");
    let (ok, text) = check(&["--redis", "redis://host:notaport"]);
    assert!(
        !ok && text.contains("--redis redis://host:notaport"),
        "{text}"
    );
    // Nothing was started: the default ports stay free for whatever runs there.
    let (ok, _) = check(&[]);
    assert!(ok);
}
