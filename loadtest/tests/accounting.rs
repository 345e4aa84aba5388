//! ringway-load's own accounting, checked against a gateway whose limits make every count
//! exact. The gateway binary is the one `cargo test --workspace` builds beside this test.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "accounting-secret-0123456789";

/// The gateway process, its client address and its admin address.
struct Gateway(Child, String, String);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gateway_binary() -> PathBuf {
    // target/<profile>/deps/accounting-<hash> → target/<profile>/ringway
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("ringway");
    assert!(
        bin.exists(),
        "{} missing: run the workspace tests (scripts/test.sh)",
        bin.display()
    );
    bin
}

fn start(extra: &[&str]) -> Gateway {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(gateway_binary())
        .args([
            "serve",
            "--listen",
            &addr,
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .args([
            "--jwt-secret",
            SECRET,
            "--workers",
            "2",
            "--pin-cores",
            "false",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Gateway(child, addr, format!("127.0.0.1:{admin}"))
}

/// Runs ringway-load and returns its JSON summary.
fn load(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-load"))
        .args(args)
        .args(["--jwt-secret", SECRET])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ringway-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

#[test]
fn echo_counts_every_ack_exactly() {
    let gw = start(&["--link-rate", "0"]);
    for codec in ["proto", "json"] {
        let s = load(&[
            "echo",
            "--server",
            &gw.1,
            "--links",
            "4",
            "--messages",
            "25",
            "--pipeline",
            "5",
            "--codec",
            codec,
            "--user-prefix",
            codec,
            "--duration",
            "30",
        ]);
        assert_eq!(s["acks"], 100, "{s}");
        assert_eq!(
            s["latency_us"]["count"], 100,
            "one latency sample per ack: {s}"
        );
        assert_eq!(
            (s["errors"].as_u64(), s["rate_limited"].as_u64()),
            (Some(0), Some(0)),
            "{s}"
        );
    }
}

#[test]
fn rate_limited_messages_are_counted_not_acked() {
    // A burst of 10 and a refill far slower than the test: of 20 messages sent at once,
    // exactly 10 are acked and 10 are refused.
    let gw = start(&["--link-rate", "1", "--link-burst", "10"]);
    let s = load(&[
        "echo",
        "--server",
        &gw.1,
        "--links",
        "1",
        "--messages",
        "20",
        "--pipeline",
        "20",
        "--duration",
        "0.5",
    ]);
    assert_eq!(
        (
            s["acks"].as_u64(),
            s["rate_limited"].as_u64(),
            s["errors"].as_u64()
        ),
        (Some(10), Some(10), Some(0)),
        "{s}"
    );
}

#[test]
fn idle_opens_exactly_the_links_asked_for() {
    let gw = start(&[]);
    let pid = gw.0.id().to_string();
    let s = load(&[
        "idle",
        "--server",
        &gw.1,
        "--links",
        "50",
        "--server-pid",
        &pid,
        "--hold",
        "0.2",
        "--sources",
        "127.0.0.1,127.0.0.2",
    ]);
    assert_eq!(s["links"], 50, "{s}");
    assert!(s["server_rss_kib_after"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn push_counts_each_delivery_once() {
    let gw = start(&[]);
    let s = load(&[
        "push",
        "--server",
        &gw.1,
        "--admin",
        &gw.2,
        "--links",
        "20",
        "--rate",
        "200",
        "--fanout",
        "5",
        "--senders",
        "3",
        "--duration",
        "1",
    ]);
    // Three senders split the schedule: every push exactly once, none twice.
    let accepted = s["pushes_accepted"].as_u64().unwrap();
    assert!(accepted >= 150, "{s}");
    assert_eq!(s["deliveries"].as_u64(), Some(accepted * 5), "{s}");
    assert_eq!(s["deliveries_expected"].as_u64(), Some(accepted * 5), "{s}");
    assert_eq!(
        (s["duplicates"].as_u64(), s["pushes_refused"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["latency_us"]["count"].as_u64(), Some(accepted * 5), "{s}");
}

#[test]
fn room_delivers_each_message_to_every_link_once() {
    let gw = start(&[]);
    let s = load(&[
        "room",
        "--server",
        &gw.1,
        "--admin",
        &gw.2,
        "--links",
        "30",
        "--rate",
        "100",
        "--duration",
        "1",
    ]);
    let accepted = s["pushes_accepted"].as_u64().unwrap();
    assert!(accepted >= 80, "{s}");
    assert_eq!(s["scenario"], "room", "{s}");
    assert_eq!(s["deliveries"].as_u64(), Some(accepted * 30), "{s}");
    assert_eq!(
        s["deliveries_expected"].as_u64(),
        Some(accepted * 30),
        "{s}"
    );
    assert_eq!(s["duplicates"].as_u64(), Some(0), "{s}");
}

#[test]
fn work_split_over_processes_adds_up_exactly() {
    let gw = start(&["--link-rate", "0"]);
    let s = load(&[
        "echo",
        "--server",
        &gw.1,
        "--links",
        "7",
        "--messages",
        "10",
        "--procs",
        "3",
        "--duration",
        "30",
    ]);
    assert_eq!(
        (s["links"].as_u64(), s["acks"].as_u64(), s["procs"].as_u64()),
        (Some(7), Some(70), Some(3)),
        "{s}"
    );
    assert_eq!(s["latency_us"]["count"], 70, "histograms merged: {s}");
    let pid = gw.0.id().to_string();
    let s = load(&[
        "idle",
        "--server",
        &gw.1,
        "--links",
        "31",
        "--procs",
        "2",
        "--user-prefix",
        "idle",
        "--server-pid",
        &pid,
        "--hold",
        "0.2",
    ]);
    assert_eq!(s["links"], 31, "{s}");
}

#[test]
fn raw_tcp_reference_counts_every_echo() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    let s = load(&[
        "echo",
        "--server",
        &addr,
        "--target",
        "tcp",
        "--links",
        "3",
        "--messages",
        "20",
        "--pipeline",
        "4",
        "--size",
        "100",
    ]);
    assert_eq!(
        (s["acks"].as_u64(), s["errors"].as_u64()),
        (Some(60), Some(0)),
        "{s}"
    );
}

#[test]
fn a_reconnect_storm_retries_refusals_until_every_link_is_back() {
    // The admission ramp refuses most of the storm at first; each refused client retries after
    // Retry-After, and the run ends with every link reconnected.
    let gw = start(&[
        "--admit-initial",
        "40",
        "--admit-step",
        "40",
        "--admit-interval-ms",
        "200",
    ]);
    let s = load(&["connect", "--server", &gw.1, "--links", "100", "--storm"]);
    assert_eq!(
        (
            s["links"].as_u64(),
            s["storm_links"].as_u64(),
            s["errors"].as_u64()
        ),
        (Some(100), Some(100), Some(0)),
        "{s}"
    );
    assert!(
        s["refused_503"].as_u64().unwrap() > 0,
        "the ramp refused some: {s}"
    );
}

#[test]
fn a_resume_storm_recovers_every_link_with_every_missed_push() {
    let gw = start(&[]);
    let s = load(&[
        "resume", "--server", &gw.1, "--admin", &gw.2, "--links", "200", "--missed", "10",
    ]);
    assert_eq!(
        (s["recovered"].as_u64(), s["not_recovered"].as_u64()),
        (Some(200), Some(0)),
        "{s}"
    );
    assert_eq!(s["replayed"].as_u64(), Some(2000), "{s}");
    // The embedded store reads no Redis.
    assert_eq!(s["redis_reads"].as_f64(), Some(0.0), "{s}");
}
