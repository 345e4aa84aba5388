//! Rooms on one core: the index, membership by user, best effort against reliable.

use super::*;

fn message(key: &str, room: &str) -> Rc<EncodedPush> {
    EncodedPush::for_room(
        key,
        room,
        Bytes::from_static(b"hi"),
        Bytes::from_static(b"hi"),
    )
}

#[test]
fn room_messages_reach_the_members_but_the_excluded_with_their_room_and_no_seq() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "alice", "laptop", Codec::Proto);
    h.open(3, "bob", "phone", Codec::Json);
    h.open(4, "carol", "phone", Codec::Json);
    h.shard.join_link(1, &["r1".into()]);
    assert_eq!(
        h.shard.join(1, "alice", &["r1".into(), "r2".into()]),
        Ok(2),
        "both devices"
    );
    h.shard.join(1, "bob", &["r1".into()]).unwrap();
    assert_eq!(h.shard.room_members(1, "r1"), (3, 2));
    let sent = h.shard.publish(
        1,
        Audience::Room("r1"),
        &message("m1", "r1"),
        &["bob".into()],
        false,
        h.at(1),
    );
    assert_eq!(sent, 2);
    for conn in [1, 2] {
        let f = h.frames(conn).remove(0);
        assert_eq!((f.key.as_str(), f.room.as_str(), f.seq), ("m1", "r1", 0));
    }
    assert!(h.frames(3).is_empty() && h.frames(4).is_empty());
    // Best effort: nothing to ack, nothing retransmitted.
    h.shard.handle_timeout(h.at(5000));
    assert!(h.frames(1).iter().all(|f| f.cmd != Cmd::Downstream as i32));
}

#[test]
fn leaving_and_closing_take_links_out_of_their_rooms() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "bob", "phone", Codec::Json);
    h.shard.join(1, "alice", &["r".into()]).unwrap();
    h.shard.join(1, "bob", &["r".into()]).unwrap();
    h.shard.leave(1, "alice", &["r".into()]);
    assert_eq!(h.shard.room_members(1, "r"), (1, 1));
    h.kick("bob", "bye", 1);
    assert_eq!(h.shard.room_members(1, "r"), (0, 0));
    assert!(h.shard.rooms.is_empty(), "an empty room is forgotten");
}

#[test]
fn a_link_is_in_at_most_max_rooms_and_the_rest_are_counted() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    let rooms: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    assert_eq!(h.shard.join_link(1, &rooms), 3);
    assert_eq!(h.shard.metrics.rooms_refused.get(), 2);
}

#[test]
fn a_join_that_would_pass_the_limit_on_any_link_changes_none() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "alice", "laptop", Codec::Json);
    h.shard.join_link(2, &["a".into(), "b".into()]);
    // The harness allows 3 rooms.
    let two: Vec<String> = vec!["c".into(), "d".into()];
    assert_eq!(
        h.shard.join(1, "alice", &two),
        Err(2),
        "the laptop would be in 4"
    );
    assert_eq!(h.shard.room_members(1, "c"), (0, 0));
    let two: Vec<String> = vec!["b".into(), "c".into()];
    assert_eq!(
        h.shard.join(1, "alice", &two),
        Ok(2),
        "b is no new room there"
    );
}

#[test]
fn a_backlogged_link_drops_best_effort_but_reliable_is_acked_and_retransmitted() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "bob", "phone", Codec::Json);
    h.shard.join(1, "alice", &["r".into()]).unwrap();
    h.shard.join(1, "bob", &["r".into()]).unwrap();
    h.shard.link_mut(2).unwrap().out = vec![0; 2000];
    let m = message("m", "r");
    h.shard
        .publish(1, Audience::Room("r"), &m, &[], false, h.at(1));
    assert_eq!(
        h.shard.metrics.room_dropped.get(),
        1,
        "bob's queue is backlogged"
    );
    h.frames(1);
    h.shard.link_mut(2).unwrap().out.clear();
    let reliable = message("rel", "r");
    h.shard
        .publish(1, Audience::Room("r"), &reliable, &[], true, h.at(2));
    let f = h.frames(1).remove(0);
    assert_eq!((f.key.as_str(), f.seq), ("rel", 1));
    h.send(1, 10, &cmd_frame(Cmd::DownstreamAck, "rel"));
    h.shard.handle_timeout(h.at(1100));
    assert!(h.frames(1).is_empty(), "acked: not sent again");
    assert_eq!(h.frames(2).remove(0).key, "rel", "retransmitted to bob");
    // Bob never acks: counted when he goes, not reported.
    h.shard.closed(2);
    assert_eq!(h.shard.metrics.room_undelivered.get(), 1);
    assert!(h.shard.take_undelivered().is_empty());
}

#[test]
fn a_broadcast_reaches_every_link_of_the_biz_only() {
    let mut h = Harness::new();
    h.open(1, "alice", "phone", Codec::Json);
    h.open(2, "bob", "phone", Codec::Json);
    let other = Identity {
        biz_id: 2,
        user_id: "zed".into(),
        device_id: "phone".into(),
    };
    h.shard.open(3, other, &upgrade(Codec::Json), far(), h.t0);
    h.shard.link_mut(3).unwrap().out.clear();
    let sent = h
        .shard
        .publish(1, Audience::Biz, &message("all", ""), &[], false, h.at(1));
    assert_eq!(sent, 2);
    assert_eq!(h.frames(1)[0].key, "all");
    assert!(
        h.shard.link_mut(3).unwrap().out.is_empty(),
        "biz 2 is not reached"
    );
}
