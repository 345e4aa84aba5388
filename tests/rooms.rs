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

fn members(gw: &Gateway, room: &str) -> (u64, u64) {
    let (status, body) = gw.get(&format!("/v1/rooms/members?biz_id=1&room={room}"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (v["links"].as_u64().unwrap(), v["users"].as_u64().unwrap())
}

#[test]
fn with_redis_api_joins_are_kept_for_later_connects_and_the_limit_is_the_users() {
    let redis = common::Redis::start();
    let url = redis.url();
    let gw = Gateway::start(&["--redis", &url, "--max-rooms-per-user", "2"]);
    let change = |path: &str, rooms: &[&str]| {
        gw.post(path, json!({"biz_id": 1, "user_id": "dan", "rooms": rooms}))
    };
    let (status, body) = change("/v1/rooms/join", &["a", "b", "c"]);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-rooms-per-user"),
        "{body}"
    );
    let (status, body) = change("/v1/rooms/join", &["a", "b", "b"]);
    assert_eq!(
        (status, body["links"].as_u64()),
        (202, Some(0)),
        "dan is offline: {body}"
    );
    // Dan connects with no claim: the stored rooms are his.
    let mut dan = member(&gw, 1, "dan", &[]);
    assert_eq!((members(&gw, "a"), members(&gw, "b")), ((1, 1), (1, 1)));
    assert_eq!(change("/v1/rooms/join", &["c"]).0, 409, "a third room");
    assert_eq!(change("/v1/rooms/leave", &["a"]).0, 202);
    assert_eq!(members(&gw, "a"), (0, 0));
    drop(dan);
    gw.wait_metric("ringway_links", 0.0);
    dan = member(&gw, 1, "dan", &[]);
    assert_eq!(
        (members(&gw, "a"), members(&gw, "b")),
        ((0, 0), (1, 1)),
        "the leave was kept"
    );
    let m = json!({"biz_id": 1, "room": "b", "key": "kb"});
    assert_eq!(gw.post("/v1/rooms/publish", m).0, 202);
    assert_eq!(next(&mut dan).key, "kb");
}

#[test]
fn without_redis_a_join_past_the_limit_on_a_live_link_is_refused_whole() {
    let gw = Gateway::start(&["--max-rooms-per-user", "2"]);
    let _eve = member(&gw, 1, "eve", &["x"]);
    let join = json!({"biz_id": 1, "user_id": "eve", "rooms": ["y", "z"]});
    let (status, body) = gw.post("/v1/rooms/join", join);
    assert_eq!(status, 409, "{body}");
    assert_eq!((members(&gw, "y"), members(&gw, "z")), ((0, 0), (0, 0)));
    assert_eq!(gw.metric("ringway_rooms_refused_total"), 1.0);
}
