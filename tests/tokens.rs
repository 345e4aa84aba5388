//! A link lives no longer than its token, end to end: the real binary and a real client.

mod common;

use std::time::Duration;

use common::{Gateway, Got, SECRET, connect_token};
use ringway::auth::{Identity, mint_hs256};
use ringway::proto::{Cmd, Code, Frame};
use ringway::protocol::Codec;

fn token(user: &str, ttl_secs: u64) -> String {
    let who = Identity {
        biz_id: 1,
        user_id: user.into(),
        device_id: "phone".into(),
    };
    mint_hs256(SECRET.as_bytes(), &who, ttl_secs)
}

fn refresh(token: String) -> Frame {
    Frame {
        cmd: Cmd::Refresh as i32,
        token,
        ..Default::default()
    }
}

#[test]
fn a_link_ends_with_token_expired_and_4005_when_its_token_does() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = connect_token(gw.ws, &token("ann", 1), Codec::Json).expect("connect");
    c.set_timeout(Duration::from_secs(5));
    let e = c.frame();
    assert_eq!(
        (e.cmd, e.code),
        (Cmd::Error as i32, Code::TokenExpired as i32)
    );
    assert_eq!(c.close_code(), Some(4005));
    gw.wait_metric("ringway_links_closed_total{reason=\"token_expired\"}", 1.0);
}

#[test]
fn a_refresh_moves_the_deadline_and_one_for_another_user_is_refused() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = connect_token(gw.ws, &token("bea", 2), Codec::Proto).expect("connect");
    c.set_timeout(Duration::from_secs(5));
    c.send(&refresh(token("eve", 3600)));
    let no = c.frame();
    assert_eq!(
        (no.cmd, no.code),
        (Cmd::Error as i32, Code::Unauthorized as i32)
    );
    c.send(&refresh("not.a.token".into()));
    assert_eq!(c.frame().code, Code::Unauthorized as i32);
    c.send(&refresh(token("bea", 3600)));
    let ok = c.frame();
    assert_eq!((ok.cmd, ok.code), (Cmd::Refresh as i32, Code::Ok as i32));
    // Past the first token's exp (2 s, plus up to a second of rounding), the link lives on.
    c.set_timeout(Duration::from_millis(3500));
    assert!(matches!(c.recv(), Got::Quiet), "still open");
    c.send(&common::frame(Cmd::Heartbeat, "hb", b""));
    c.set_timeout(Duration::from_secs(5));
    assert_eq!(c.frame().cmd, Cmd::Heartbeat as i32);
}
