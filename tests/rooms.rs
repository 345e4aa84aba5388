//! Rooms and broadcast on one node, end to end: membership by the token's claim and by the
//! API, publish, exclude, leave, members, and a broadcast that stays inside its biz.

mod common;

use std::time::Duration;

use common::{Client, Gateway, Got, SECRET, connect_token};
use ringway::auth::{Identity, mint_hs256_in};
use ringway::proto::{Cmd, Frame};
use ringway::protocol::Codec;
use serde_json::json;

fn member(gw: &Gateway, biz_id: u64, user: &str, rooms: &[&str]) -> Client {
    let who = Identity {
        biz_id,
        user_id: user.into(),
        device_id: "phone".into(),
    };
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    let token = mint_hs256_in(SECRET.as_bytes(), &who, 3600, &rooms);
    let (mut c, _) = connect_token(gw.ws, &token, Codec::Json).expect("connect");
    c.set_timeout(Duration::from_secs(5));
    c
}

fn next(c: &mut Client) -> Frame {
    let f = c.frame();
    assert_eq!(f.cmd, Cmd::Downstream as i32, "{f:?}");
    f
}

fn quiet(c: &mut Client) -> bool {
    c.set_timeout(Duration::from_millis(300));
    let q = matches!(c.recv(), Got::Quiet);
    c.set_timeout(Duration::from_secs(5));
    q
}

#[test]
fn a_room_message_reaches_its_members_by_claim_and_by_api_but_the_excluded() {
    let gw = Gateway::start(&[]);
    let mut ann = member(&gw, 1, "ann", &["lobby"]);
    let mut ben = member(&gw, 1, "ben", &[]);
    let mut cat = member(&gw, 1, "cat", &["lobby"]);
    let (status, body) = gw.post(
        "/v1/rooms/join",
        json!({"biz_id": 1, "user_id": "ben", "rooms": ["lobby"]}),
    );
    assert_eq!((status, body["links"].as_u64()), (202, Some(1)), "{body}");
    let (status, m) = gw.get("/v1/rooms/members?biz_id=1&room=lobby");
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert_eq!(
        (m["links"].as_u64(), m["users"].as_u64()),
        (Some(3), Some(3))
    );

    let publish = json!({"biz_id": 1, "room": "lobby", "key": "r1", "body": "aGk=", "exclude_user_ids": ["cat"]});
    assert_eq!(gw.post("/v1/rooms/publish", publish).0, 202);
    for c in [&mut ann, &mut ben] {
        let f = next(c);
        assert_eq!(
            (f.key.as_str(), f.room.as_str(), f.seq, f.offset),
            ("r1", "lobby", 0, 0)
        );
    }
    assert!(quiet(&mut cat), "excluded");

    // Ben leaves; a reliable message takes a seq and is retransmitted until acked.
    let leave = json!({"biz_id": 1, "user_id": "ben", "rooms": ["lobby"]});
    assert_eq!(gw.post("/v1/rooms/leave", leave).0, 202);
    let reliable = json!({"biz_id": 1, "room": "lobby", "key": "r2", "body": "", "reliable": true});
    assert_eq!(gw.post("/v1/rooms/publish", reliable).0, 202);
    assert_eq!(
        (next(&mut ann).key, next(&mut cat).key),
        ("r2".into(), "r2".into())
    );
    assert!(quiet(&mut ben), "left");
    assert_eq!(gw.metric("ringway_room_sent_total"), 4.0);

    // Bad requests get 400 with a reason.
    for bad in [
        json!({"biz_id": 1, "key": "x"}),
        json!({"biz_id": 1, "room": "", "key": "x"}),
        json!({"biz_id": 1, "room": "a\nb", "key": "x"}),
        json!({"biz_id": 1, "room": "r", "key": ""}),
    ] {
        assert_eq!(gw.post("/v1/rooms/publish", bad.clone()).0, 400, "{bad}");
    }
}

#[test]
fn a_broadcast_reaches_every_link_of_its_biz_and_no_other() {
    let gw = Gateway::start(&[]);
    let mut a = member(&gw, 1, "ann", &[]);
    let mut b = member(&gw, 1, "ben", &["x"]);
    let mut other = member(&gw, 2, "zed", &[]);
    let all = json!({"biz_id": 1, "key": "news", "body": "aGk="});
    assert_eq!(gw.post("/v1/broadcast", all).0, 202);
    for c in [&mut a, &mut b] {
        let f = next(c);
        assert_eq!((f.key.as_str(), f.room.as_str(), f.seq), ("news", "", 0));
    }
    assert!(quiet(&mut other), "another biz");
    let named = json!({"biz_id": 1, "room": "x", "key": "k"});
    assert_eq!(
        gw.post("/v1/broadcast", named).0,
        400,
        "a broadcast names no room"
    );
}
