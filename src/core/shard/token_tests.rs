//! A link lives no longer than its token: the deadline, REFRESH, and the HTTP transports'
//! latest token.

use super::*;

impl Harness {
    /// A WebSocket link whose token runs out at `expires_ms`; its frames after the 101.
    fn open_until(&mut self, conn: ConnId, expires_ms: u64) -> Vec<Frame> {
        let up = upgrade(Codec::Json);
        let expires = self.at(expires_ms);
        self.shard
            .open(conn, who("alice", "phone"), &up, expires, self.t0);
        let link = self.shard.link_mut(conn).unwrap();
        let end = link.out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        link.out.drain(..end);
        self.frames(conn)
    }

    fn refreshes(&mut self) -> Vec<(ConnId, String)> {
        take_events!(self.shard, Event::Refresh { conn, token } => (conn, token))
    }
}

fn refresh(token: &str) -> Frame {
    Frame {
        cmd: Cmd::Refresh as i32,
        token: token.into(),
        ..Default::default()
    }
}

#[test]
fn at_the_deadline_the_link_gets_token_expired_and_4005() {
    let mut h = Harness::new();
    h.open_until(1, 5000);
    h.send(1, 4000, &cmd_frame(Cmd::Heartbeat, ""));
    h.drain(1);
    h.shard.handle_timeout(h.at(4990));
    assert!(h.shard.link_mut(1).unwrap().is_open(), "not before");
    h.shard.handle_timeout(h.at(5010));
    let out = h.drain(1);
    let Out::Frame(e) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (e.cmd, e.code),
        (Cmd::Error as i32, Code::TokenExpired as i32)
    );
    assert_eq!(out[1], Out::Close(close_code::TOKEN_EXPIRED));
    assert_eq!(
        h.shard.metrics.links_closed.get(CloseReason::TokenExpired),
        1
    );
}

#[test]
fn a_refresh_for_the_same_identity_moves_the_deadline_and_is_answered() {
    let mut h = Harness::new();
    h.open_until(1, 5000);
    h.send(1, 1000, &refresh("new.token"));
    assert_eq!(h.refreshes(), [(1, "new.token".to_owned())]);
    h.shard
        .on_refreshed(1, Ok((who("alice", "phone"), h.at(20_000))), h.at(1001));
    let f = h.frames(1).remove(0);
    assert_eq!((f.cmd, f.code), (Cmd::Refresh as i32, Code::Ok as i32));
    h.send(1, 9000, &cmd_frame(Cmd::Heartbeat, ""));
    h.shard.handle_timeout(h.at(10_000));
    assert!(
        h.shard.link_mut(1).unwrap().is_open(),
        "the old deadline passed"
    );
    h.send(1, 18_000, &cmd_frame(Cmd::Heartbeat, ""));
    h.shard.handle_timeout(h.at(20_010));
    assert!(
        !h.shard.link_mut(1).unwrap().is_open(),
        "the new one closes it"
    );
}

#[test]
fn a_refresh_for_another_identity_or_a_bad_token_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    h.open_until(1, 5000);
    let later = h.at(60_000);
    let cases: [Result<(Identity, Instant), String>; 3] = [
        Ok((who("mallory", "phone"), later)),
        Ok((who("alice", "tablet"), later)),
        Err("invalid token: InvalidSignature".into()),
    ];
    for checked in cases {
        h.shard.on_refreshed(1, checked, h.at(100));
        let f = h.frames(1).remove(0);
        assert_eq!(
            (f.cmd, f.code),
            (Cmd::Error as i32, Code::Unauthorized as i32)
        );
    }
    h.send(1, 200, &refresh(""));
    assert!(h.refreshes().is_empty(), "no token, nothing to check");
    assert_eq!(h.frames(1)[0].code, Code::Unauthorized as i32);
    h.send(1, 4000, &cmd_frame(Cmd::Heartbeat, ""));
    h.shard.handle_timeout(h.at(5010));
    assert!(
        !h.shard.link_mut(1).unwrap().is_open(),
        "deadline unchanged"
    );
}

#[test]
fn an_http_link_lives_until_the_latest_token_any_request_showed() {
    let mut h = Harness::new();
    let req = http_req(Route::EventStream, 0);
    let (conn, g) = h
        .shard
        .attach(1, who("alice", "web"), &req, h.at(5000), h.t0);
    h.shard.detach(conn, g, h.at(100));
    // The next request carries a later token; one after it an older one.
    h.shard
        .attach(2, who("alice", "web"), &req, h.at(20_000), h.at(200));
    h.shard
        .post(
            &who("alice", "web"),
            b"{\"cmd\":\"HEARTBEAT\"}",
            h.at(3000),
            h.at(300),
        )
        .unwrap();
    h.shard.handle_timeout(h.at(10_000));
    assert!(h.shard.link_mut(conn).unwrap().is_open());
    h.shard.handle_timeout(h.at(20_010));
    assert!(!h.shard.link_mut(conn).unwrap().is_open());
}
