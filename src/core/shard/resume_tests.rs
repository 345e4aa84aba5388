//! The stream rules as a link sees them: offsets on pushes, CONNECTED's epoch and top, resume
//! with `since`, pushes read twice, ephemeral pushes.

use super::*;
use crate::core::stream::{ResumeMiss, Stored, StoredEntry, StreamState};
use crate::metrics::ResumeResult;

impl Harness {
    /// Opens a WebSocket link at `ms`, resuming after `since`; returns its frames.
    fn open_since(
        &mut self,
        conn: ConnId,
        device: &str,
        since: Option<Since>,
        ms: u64,
    ) -> Vec<Frame> {
        let up = Upgrade {
            since,
            ..upgrade(Codec::Json)
        };
        self.shard
            .open(conn, who("alice", device), &up, far(), self.at(ms));
        let link = self.shard.link_mut(conn).unwrap();
        let end = link.out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        link.written(end); // the 101 response, as a socket takes it
        self.frames(conn)
    }

    fn ack(&mut self, conn: ConnId, key: &str, ms: u64) {
        self.send(conn, ms, &cmd_frame(Cmd::DownstreamAck, key));
    }
}

fn connected(f: &Frame) -> &Connected {
    assert_eq!(f.cmd, Cmd::Connected as i32);
    f.connected.as_ref().unwrap()
}

/// (key, offset) of each DOWNSTREAM.
fn pushes(frames: &[Frame]) -> Vec<(String, u64)> {
    frames
        .iter()
        .filter(|f| f.cmd == Cmd::Downstream as i32)
        .map(|f| (f.key.clone(), f.offset))
        .collect()
}

fn since(epoch: &str, offset: u64) -> Option<Since> {
    Some(Since {
        epoch: epoch.into(),
        offset,
    })
}

#[test]
fn pushes_for_a_user_carry_dense_offsets_and_device_pushes_none() {
    let mut h = Harness::new();
    let first = h.open_since(1, "phone", None, 0);
    let c = connected(&first[0]);
    assert_eq!((c.epoch.as_str(), c.offset, c.recovered), ("", 0, false));
    h.push("alice", None, "a", 1);
    h.push("alice", Some("phone"), "d", 2);
    h.push("alice", None, "b", 3);
    let got = pushes(&h.frames(1));
    assert_eq!(got, [("a".into(), 1), ("d".into(), 0), ("b".into(), 2)]);
    // A second device opens: CONNECTED gives the epoch and the top, nothing is replayed.
    let second = h.open_since(2, "tablet", None, 4);
    let c = connected(&second[0]);
    assert_eq!((c.epoch.len(), c.offset, c.recovered), (16, 2, false));
    assert_eq!(second.len(), 1);
    assert_eq!(h.shard.metrics.stream_appends.get(), 2);
}

#[test]
fn a_reconnect_with_since_gets_what_it_missed_in_order_before_live_pushes() {
    let mut h = Harness::new();
    h.open_since(1, "phone", None, 0);
    h.push("alice", None, "a", 1);
    // The stream begins while the link is open: its first push names the epoch.
    let frames = h.frames(1);
    let c = frames[0].connected.as_ref().expect("the epoch");
    assert_eq!(
        (frames[0].cmd, frames[0].offset),
        (Cmd::Downstream as i32, 1)
    );
    assert_eq!((c.epoch.len(), c.offset), (16, 0));
    h.ack(1, "a", 2);
    h.shard.closed(1);
    // Offline: stored and reported, with its offset.
    h.push("alice", None, "b", 4);
    h.push("alice", None, "c", 5);
    let reports = h.shard.take_undelivered();
    assert_eq!(reports.iter().map(|u| u.offset).collect::<Vec<_>>(), [2, 3]);
    assert!(reports.iter().all(|u| u.epoch.len() == 16));
    let e = reports[0].epoch.clone();

    let frames = h.open_since(2, "phone", since(&e, 1), 6);
    let c = connected(&frames[0]);
    assert_eq!((c.epoch.as_str(), c.offset, c.recovered), (&*e, 3, true));
    assert_eq!(pushes(&frames), [("b".into(), 2), ("c".into(), 3)]);
    h.push("alice", None, "d", 7);
    assert_eq!(pushes(&h.frames(2)), [("d".into(), 4)]);
    // Replayed pushes are acked and retransmitted like live ones.
    assert_eq!(h.shard.link_mut(2).unwrap().inflight.len(), 3);
    h.shard.handle_timeout(h.at(1100));
    let again = pushes(&h.frames(2));
    assert_eq!(again.len(), 3, "each is retransmitted once: {again:?}");
    assert_eq!(h.shard.metrics.resumes.get(ResumeResult::Recovered), 1);
    assert_eq!(h.shard.metrics.replayed.get(), 2);
}

#[test]
fn a_resume_that_cannot_be_served_says_recovered_false_and_replays_nothing() {
    let mut h = Harness::new();
    for (i, k) in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
        .iter()
        .enumerate()
    {
        h.push("alice", None, k, i as u64);
    }
    h.shard.take_undelivered();
    let e = h.open_since(1, "phone", None, 10)[0]
        .connected
        .clone()
        .unwrap()
        .epoch;
    // max_len 8 keeps 3..=10; resume_max is 5.
    let cases = [since("other", 9), since(&e, 1), since(&e, 11), since(&e, 4)];
    for (i, s) in cases.into_iter().enumerate() {
        let frames = h.open_since(2 + i as u64, "phone", s, 11);
        let c = connected(&frames[0]);
        assert_eq!((c.offset, c.recovered, frames.len()), (10, false, 1));
    }
    let m = &h.shard.metrics.resumes;
    let by_reason = [
        ResumeResult::Epoch,
        ResumeResult::TooOld,
        ResumeResult::TooMany,
    ];
    assert_eq!(by_reason.map(|r| m.get(r)), [1, 2, 1]);
    let frames = h.open_since(9, "phone", since(&e, 5), 12);
    assert!(connected(&frames[0]).recovered);
    let offsets: Vec<u64> = pushes(&frames).iter().map(|p| p.1).collect();
    assert_eq!(offsets, [6, 7, 8, 9, 10]);
}

#[test]
fn a_push_read_twice_keeps_its_offset_and_is_not_sent_again() {
    let mut h = Harness::new();
    h.open_since(1, "phone", None, 0);
    h.push("alice", None, "a", 1);
    h.push("alice", None, "a", 2);
    assert_eq!(pushes(&h.frames(1)), [("a".into(), 1)]);
    assert_eq!(h.shard.metrics.stream_duplicates.get(), 1);
    // A link opened since then never had it: it gets it (a re-read after a push went
    // undelivered, as a drain republishes it), the phone does not.
    h.open_since(2, "tablet", None, 3);
    h.push("alice", None, "a", 4);
    assert_eq!(pushes(&h.frames(2)), [("a".into(), 1)]);
    assert!(pushes(&h.frames(1)).is_empty());
    h.push("alice", None, "b", 5);
    assert_eq!(pushes(&h.frames(2)), [("b".into(), 2)]);
    h.push("alice", None, "a", 6);
    assert!(pushes(&h.frames(2)).is_empty(), "now it had it");
}

#[test]
fn a_newer_login_resuming_gets_each_offset_once() {
    let mut h = Harness::new();
    h.open_since(1, "phone", None, 0);
    h.push("alice", None, "a", 1);
    h.push("alice", None, "b", 2);
    h.push("alice", Some("phone"), "dev", 3);
    let frames = h.frames(1);
    let epoch = frames[0].connected.clone().unwrap().epoch;
    assert_eq!(pushes(&frames)[0], ("a".into(), 1));
    // The same device logs in again from offset 1: b comes from the stream; of the old link's
    // unacked pushes, a is one the client says it has, b was just replayed, and dev (not
    // stored) moves over.
    let frames = h.open_since(2, "phone", since(&epoch, 1), 4);
    assert!(connected(&frames[0]).recovered);
    assert_eq!(pushes(&frames), [("b".into(), 2), ("dev".into(), 0)]);
    // Without a resume, everything unacked moves over.
    let frames = h.open_since(3, "phone", None, 5);
    let got = pushes(&frames);
    assert_eq!(got, [("b".into(), 2), ("dev".into(), 0)]);
}

#[test]
fn ephemeral_pushes_are_sent_once_never_stored_acked_or_reported() {
    let mut h = Harness::new();
    h.open_since(1, "phone", None, 0);
    let typing = EncodedPush::new("", Bytes::from_static(b"typing"));
    let how = Delivery {
        ephemeral: true,
        ..stored(h.at(1))
    };
    let users = ["alice".to_owned()];
    h.shard.push(1, &users, None, &typing, how, h.at(1));
    let f = h.frames(1);
    assert_eq!(
        (f.len(), f[0].offset, f[0].seq),
        (1, 0, 0),
        "best effort: no seq"
    );
    assert!(h.shard.link_mut(1).unwrap().inflight.is_empty());
    h.shard.handle_timeout(h.at(5000));
    assert!(pushes(&h.frames(1)).is_empty(), "never retransmitted");
    // Offline and backlogged: dropped and counted, never reported.
    h.shard
        .push(1, &["bob".to_owned()], None, &typing, how, h.at(2));
    h.shard.link_mut(1).unwrap().out = vec![0; 2000];
    h.shard.push(1, &users, None, &typing, how, h.at(3));
    assert_eq!(h.shard.metrics.ephemeral_dropped.get(), 2);
    assert_eq!(h.shard.metrics.ephemeral_sent.get(), 1);
    assert!(h.shard.take_undelivered().is_empty());
    assert_eq!(h.shard.metrics.stream_appends.get(), 0);
}

#[test]
fn an_event_stream_names_stored_pushes_by_epoch_and_offset_and_resumes_by_them() {
    let mut h = Harness::new();
    h.shard.attach(
        1,
        who("alice", "web"),
        &http_req(Route::EventStream, 0),
        far(),
        h.t0,
    );
    h.push("alice", None, "a", 1);
    h.push("alice", None, "b", 2);
    let out = String::from_utf8(std::mem::take(&mut h.shard.link_mut(1).unwrap().out)).unwrap();
    let ids: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    let epoch = ids[0].split_once(':').unwrap().0.to_owned();
    assert_eq!(ids, [format!("{epoch}:1"), format!("{epoch}:2")]);
    // A browser's Last-Event-ID of the first: a new link takes over and replays the second.
    let req = HttpRequest {
        since: since(&epoch, 1),
        ..http_req(Route::EventStream, 0)
    };
    let (conn, _) = h.shard.attach(5, who("alice", "web"), &req, far(), h.at(3));
    assert_eq!(conn, 5);
    let out = String::from_utf8(std::mem::take(&mut h.shard.link_mut(5).unwrap().out)).unwrap();
    assert!(out.contains("\"recovered\":true"), "{out}");
    let ids: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert_eq!(ids, [format!("{epoch}:2")]);
}

/// A shard whose streams live in a shared store the test answers by hand.
fn shared() -> Harness {
    let mut h = Harness::new();
    h.shard.embedded.streams = StreamStore::Shared;
    h
}

impl Shard {
    fn take_appends(&mut self) -> Vec<StreamAppend> {
        take_events!(self, Event::StreamAppend(a) => a)
    }

    fn take_reads(&mut self) -> Vec<StreamRead> {
        take_events!(self, Event::StreamRead(r) => r)
    }
}

fn appended(epoch: &str, offset: u64, fresh: bool) -> Option<Stored> {
    Some(Stored {
        epoch: epoch.into(),
        offset,
        fresh,
    })
}

fn state(top: u64, replay: Option<Result<Vec<StoredEntry>, ResumeMiss>>) -> Option<StreamState> {
    Some(StreamState {
        epoch: "e".into(),
        top,
        replay,
        rooms: Vec::new(),
    })
}

fn entry(offset: u64, key: &str) -> StoredEntry {
    StoredEntry {
        offset,
        key: key.into(),
        body: Bytes::from_static(b"stored"),
    }
}

#[test]
fn with_a_shared_store_connected_waits_for_the_stream_and_so_do_pushes_and_input() {
    let mut h = shared();
    let first = h.open_since(1, "phone", since("e", 1), 0);
    assert!(first.is_empty(), "nothing before CONNECTED");
    let read = h.shard.take_reads();
    assert_eq!((read.len(), read[0].since.clone()), (1, since("e", 1)));
    // A live push comes while the stream is read: its append is answered (offset 4).
    h.push("alice", None, "live", 1);
    let appends = h.shard.take_appends();
    assert_eq!(appends[0].key, "live");
    h.shard
        .on_appended(appends[0].id, appended("e", 4, true), h.at(2));
    // The client says something before CONNECTED; it waits too.
    h.send(1, 2, &cmd_frame(Cmd::Heartbeat, "hb"));
    assert!(h.frames(1).is_empty());
    // The stream: top 4, entries 2..=4 (4 is the live push, appended before the read ran).
    let replay = vec![entry(2, "b"), entry(3, "c"), entry(4, "live")];
    h.shard
        .on_stream_read(1, state(4, Some(Ok(replay))), h.at(3));
    let frames = h.frames(1);
    let c = connected(&frames[0]);
    assert_eq!((c.epoch.as_str(), c.offset, c.recovered), ("e", 4, true));
    let got = pushes(&frames);
    assert_eq!(got, [("b".into(), 2), ("c".into(), 3), ("live".into(), 4)]);
    assert_eq!(
        frames.last().unwrap().cmd,
        Cmd::Heartbeat as i32,
        "then the held input"
    );
}

#[test]
fn with_a_shared_store_pushes_go_out_in_offset_order_whatever_order_answers_come_in() {
    let mut h = shared();
    h.open_since(1, "phone", None, 0);
    h.shard.take_reads();
    h.shard.on_stream_read(1, state(0, None), h.t0);
    h.drain(1);
    h.push("alice", None, "a", 1);
    h.push("alice", Some("phone"), "dev", 1);
    h.push("alice", None, "b", 1);
    let appends = h.shard.take_appends();
    assert_eq!(appends.len(), 2, "the device's push is not stored");
    h.shard
        .on_appended(appends[1].id, appended("e", 2, true), h.at(2));
    assert!(
        h.frames(1).is_empty(),
        "b waits for a, and dev (behind a) too"
    );
    h.shard
        .on_appended(appends[0].id, appended("e", 1, true), h.at(3));
    assert_eq!(
        pushes(&h.frames(1)),
        [("a".into(), 1), ("dev".into(), 0), ("b".into(), 2)]
    );
    assert_eq!(h.shard.metrics.stream_appends.get(), 2);
}

#[test]
fn while_the_shared_store_is_down_pushes_go_out_unstored_and_resumes_are_not_recovered() {
    let mut h = shared();
    h.open_since(1, "phone", since("e", 1), 0);
    h.shard.take_reads();
    h.shard.on_stream_read(1, None, h.at(1));
    let c = connected(&h.frames(1)[0]).clone();
    assert_eq!((c.epoch.as_str(), c.offset, c.recovered), ("", 0, false));
    h.push("alice", None, "a", 2);
    let a = h.shard.take_appends();
    h.shard.on_appended(a[0].id, None, h.at(3));
    assert_eq!(pushes(&h.frames(1)), [("a".into(), 0)]);
    assert_eq!(h.shard.metrics.stream_store_errors.get(), 2);
    assert_eq!(h.shard.metrics.resumes.get(ResumeResult::StoreDown), 1);
}

#[test]
fn a_link_gone_before_its_stream_was_read_reports_what_it_held() {
    let mut h = shared();
    h.shard
        .open(1, who("alice", "phone"), &upgrade(Codec::Json), far(), h.t0);
    h.push("alice", Some("phone"), "dev", 1);
    h.shard.take_undelivered();
    h.shard.closed(1);
    let reports = h.shard.take_undelivered();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].key.as_str(), reports[0].reason),
        ("dev", UndeliveredReason::LinkClosed)
    );
    // Its stream's answer, arriving late, changes nothing.
    h.shard.on_stream_read(1, state(0, None), h.at(2));
}

#[test]
fn a_stream_begun_again_while_the_link_is_open_names_its_new_epoch_on_its_first_push() {
    let mut h = Harness::new();
    h.open_since(1, "phone", None, 0);
    h.push("alice", None, "a", 0);
    let first = h.frames(1)[0].connected.clone().unwrap().epoch;
    // The TTL (60 s) passes with no push: the stream is forgotten; the next opens a new epoch.
    h.push("alice", None, "b", 61_000);
    let frames = h.frames(1);
    let c = frames[0].connected.as_ref().expect("the new epoch");
    assert_ne!(c.epoch, first);
    assert_eq!(c.offset, 0);
    assert_eq!(pushes(&frames), [("b".into(), 1)]);
    // Within one epoch, nothing more; a retransmit of the first still names it.
    h.push("alice", None, "c", 61_001);
    let next = h.frames(1);
    assert_eq!(
        (pushes(&next), next[0].connected.is_none()),
        (vec![("c".into(), 2)], true)
    );
    h.send(1, 61_500, &cmd_frame(Cmd::Heartbeat, ""));
    h.shard.handle_timeout(h.at(62_100));
    let again = h.frames(1);
    let b = again.iter().find(|f| f.key == "b").expect("b resent");
    assert!(b.connected.is_some());
}

#[test]
fn a_long_poll_with_since_resumes_too() {
    let mut h = Harness::new();
    h.push("alice", None, "a", 0);
    h.push("alice", None, "b", 1);
    let epoch = h.shard.take_undelivered()[0].epoch.clone();
    let req = HttpRequest {
        since: since(&epoch, 1),
        ..http_req(Route::Poll, 0)
    };
    let (conn, _) = h.shard.attach(1, who("alice", "web"), &req, far(), h.at(2));
    let answer = h.shard.take_poll_answer(conn, None).expect("frames wait");
    let text = String::from_utf8(answer).unwrap();
    assert!(text.contains("\"recovered\":true"), "{text}");
    assert!(
        text.contains("\"key\":\"b\"") && !text.contains("\"key\":\"a\""),
        "{text}"
    );
}

#[test]
fn a_link_closed_while_its_stream_is_read_sends_nothing_after_its_close() {
    let mut h = shared();
    h.open_since(1, "phone", None, 0);
    h.shard.take_reads();
    let typing = EncodedPush::new("", Bytes::from_static(b"typing"));
    let best_effort = Delivery {
        ephemeral: true,
        ..stored(h.at(1))
    };
    h.shard.push(
        1,
        &["alice".to_owned()],
        None,
        &typing,
        best_effort,
        h.at(1),
    );
    assert_eq!(
        h.shard.metrics.ephemeral_dropped.get(),
        1,
        "nothing before CONNECTED"
    );
    h.push("alice", Some("phone"), "dev", 2);
    h.kick("alice", "operator", 3);
    let out = h.drain(1);
    assert!(
        matches!(out.last(), Some(Out::Close(c)) if *c == close_code::KICKED),
        "{out:?}"
    );
    h.shard.on_stream_read(1, state(0, None), h.at(4));
    assert!(h.drain(1).is_empty(), "no CONNECTED after the close");
    h.shard.take_undelivered();
    h.shard.closed(1);
    let reports = h.shard.take_undelivered();
    assert_eq!(
        reports.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
        ["dev"]
    );
}

#[test]
fn a_shared_store_brings_the_users_rooms_but_those_left_while_it_was_asked() {
    let mut h = shared();
    h.open_since(1, "phone", None, 0);
    h.shard.take_reads();
    h.shard.leave(1, "alice", &["gone".into()]);
    let mut answer = state(0, None).unwrap();
    answer.rooms = vec!["kept".into(), "gone".into()];
    h.shard.on_stream_read(1, Some(answer), h.t0);
    assert_eq!(h.shard.room_members(1, "kept"), (1, 1));
    assert_eq!(
        h.shard.room_members(1, "gone"),
        (0, 0),
        "left after the read"
    );
}
