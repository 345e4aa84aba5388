//! `wss://` on the client port: WebSocket and the HTTP transports under TLS, the certificate
//! reloaded on SIGHUP (a bad one keeps the old), links across the reload unharmed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, frame};
use prost::Message as _;
use ringway::proto::{Cmd, Frame};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for 127.0.0.1, written where the gateway reads it.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn new(tag: &str) -> CertFiles {
        let dir = std::env::temp_dir();
        let base = format!("ringway-tls-{}-{tag}", std::process::id());
        CertFiles {
            cert: dir.join(format!("{base}.crt")),
            key: dir.join(format!("{base}.key")),
        }
    }

    /// Writes a fresh certificate and returns it, for the client to trust.
    fn issue(&self) -> CertificateDer<'static> {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        std::fs::write(&self.cert, c.cert.pem()).unwrap();
        std::fs::write(&self.key, c.key_pair.serialize_pem()).unwrap();
        c.cert.der().clone()
    }
}

impl CertFiles {
    /// A gateway serving TLS with these files.
    fn gateway(&self) -> Gateway {
        Gateway::start(&[
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
        ])
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert);
        let _ = std::fs::remove_file(&self.key);
    }
}

fn tls_to(gw: &Gateway, trust: &CertificateDer<'static>) -> std::io::Result<Tls> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(gw.ws)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = StreamOwned::new(conn, tcp);
    // Finish the handshake now, so a certificate the client refuses shows here.
    tls.conn.complete_io(&mut tls.sock)?;
    Ok(tls)
}

fn wss(gw: &Gateway, trust: &CertificateDer<'static>, user: &str) -> tungstenite::WebSocket<Tls> {
    let stream = tls_to(gw, trust).expect("TLS handshake");
    let url = format!("wss://{}/ws?token={}", gw.ws, gw.token(user, "d"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "ringway.v1.proto".parse().unwrap(),
    );
    let (ws, _) = tungstenite::client(req, stream).expect("upgrade over TLS");
    ws
}

fn next_frame(ws: &mut tungstenite::WebSocket<Tls>) -> Frame {
    loop {
        match ws.read().expect("a frame") {
            Message::Binary(b) => return Frame::decode(&b[..]).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn wss_links_work_and_sighup_swaps_the_certificate() {
    let files = CertFiles::new("swap");
    let first = files.issue();
    let gw = files.gateway();

    let mut a = wss(&gw, &first, "alice");
    assert_eq!(next_frame(&mut a).cmd, Cmd::Connected as i32);
    a.send(Message::binary(
        frame(Cmd::Upstream, "m-1", b"hi").encode_to_vec(),
    ))
    .unwrap();
    let ack = next_frame(&mut a);
    assert_eq!(
        (ack.cmd, ack.key.as_str()),
        (Cmd::UpstreamAck as i32, "m-1")
    );
    gw.push("alice", "p-1", b"over tls");
    let push = next_frame(&mut a);
    assert_eq!(
        (push.cmd, &push.body[..]),
        (Cmd::Downstream as i32, &b"over tls"[..])
    );

    // Bigger than rustls' buffer and many TLS records: written as the socket takes it.
    let big = vec![b'z'; 300 * 1024];
    gw.push("alice", "p-big", &big);
    let push = next_frame(&mut a);
    assert_eq!((push.key.as_str(), push.body.len()), ("p-big", big.len()));

    // Plain WebSocket to the TLS port fails its handshake; the node goes on.
    let plain = format!("ws://{}/ws?token={}", gw.ws, gw.token("p", "d"));
    assert!(tungstenite::connect(plain).is_err());

    // A new certificate on disk, then SIGHUP: new connections get it, the open link stays.
    let second = files.issue();
    gw.signal(libc::SIGHUP);
    gw.wait_metric("ringway_tls_reloads_total", 1.0);
    assert!(tls_to(&gw, &first).is_err(), "the old certificate is gone");
    let mut b = wss(&gw, &second, "bob");
    assert_eq!(next_frame(&mut b).cmd, Cmd::Connected as i32);
    a.send(Message::binary(
        frame(Cmd::Heartbeat, "hb", b"").encode_to_vec(),
    ))
    .unwrap();
    assert_eq!(next_frame(&mut a).cmd, Cmd::Heartbeat as i32);

    // A broken file on SIGHUP: counted, logged, and the current certificate stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    gw.signal(libc::SIGHUP);
    gw.wait_metric("ringway_tls_reload_errors_total", 1.0);
    let mut c = wss(&gw, &second, "carol");
    assert_eq!(next_frame(&mut c).cmd, Cmd::Connected as i32);

    // An operator kick closes the TLS link cleanly: KICKED, then close 4003.
    let (status, _) = gw.post(
        "/v1/kick",
        serde_json::json!({"biz_id": 1, "user_id": "carol", "reason": "test"}),
    );
    assert_eq!(status, 202);
    assert_eq!(next_frame(&mut c).cmd, Cmd::Kicked as i32);
    match c.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4003),
        other => panic!("expected close 4003, got {other:?}"),
    }
}

#[test]
fn event_stream_over_tls() {
    let files = CertFiles::new("sse");
    let cert = files.issue();
    let gw = files.gateway();
    let mut s = tls_to(&gw, &cert).unwrap();
    let token = gw.token("sse", "web");
    write!(s, "GET /sse?token={token} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.flush().unwrap();
    let mut seen = String::new();
    let mut read_until = |needle: &str| {
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            let n = s
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("{e}: got {seen:?}"));
            assert!(n > 0, "stream ended: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen.clone()
    };
    let head = read_until("CMD_CONNECTED");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream"));
    gw.push("sse", "p-1", b"x");
    // A stored push: its event id is EPOCH:1.
    read_until(":1\ndata: ");
}

#[test]
fn mismatched_tls_flags_are_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(["serve", "--tls-cert", "/nonexistent.crt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let files = CertFiles::new("bad");
    files.issue();
    std::fs::write(&files.key, "garbage").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            files.cert.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn large_messages_over_tls_arrive_whole_in_both_directions() {
    // A message spanning many TLS records: rustls takes at most what its record buffer has
    // free per read, so bytes read past that must wait for it, not be dropped.
    let files = CertFiles::new("large");
    let cert = files.issue();
    let gw = Gateway::start(&[
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
        "--ws-echo",
        "--max-message-bytes",
        "1000000",
    ]);
    let stream = tls_to(&gw, &cert).expect("TLS handshake");
    let url = format!("wss://{}/ws?token={}", gw.ws, gw.token("big", "d"));
    let (mut ws, _) = tungstenite::client(url.into_client_request().unwrap(), stream).unwrap();
    for size in [40_000usize, 131_072, 600_000] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(body.clone())).unwrap();
        match ws.read().expect("the echo") {
            Message::Binary(b) => assert!(b[..] == body[..], "{size} bytes came back changed"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
