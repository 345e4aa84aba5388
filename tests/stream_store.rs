//! The users' streams in a real redis-server: the scripts' rules, read back as a core reads
//! them.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Redis, RedisCluster, wait_until};
use ringway::control::redis_idem::RedisIdem;
use ringway::control::redis_streams::{RedisStreams, keys};
use ringway::core::stream::{ResumeMiss, Stored, StreamAppend, StreamLimits, StreamRead};
use ringway::link::idem::IdemTtl;
use ringway::protocol::handshake::Since;

fn limits() -> StreamLimits {
    StreamLimits {
        max_len: 4,
        ttl: Duration::from_secs(60),
        resume_max: 3,
        max_bytes: 0,
    }
}

fn connect(rt: &tokio::runtime::Runtime, url: &str, limits: StreamLimits) -> RedisStreams {
    let ttl = IdemTtl {
        pending: Duration::from_secs(1),
        done: Duration::from_secs(1),
        max_entries: 1,
        max_bytes: 1,
    };
    let idem = rt
        .block_on(RedisIdem::connect(url, ttl, Duration::from_secs(2)))
        .unwrap();
    RedisStreams::new(idem.redis(), limits, std::time::Duration::from_secs(60))
}

fn push(user: &str, key: &str, id: u64) -> StreamAppend {
    StreamAppend {
        id,
        biz_id: 1,
        user_id: user.into(),
        key: key.into(),
        body: Bytes::from(format!("body of {key}\nwith a newline")),
    }
}

fn read(user: &str, since: Option<(&str, u64)>) -> StreamRead {
    StreamRead {
        conn: 1,
        biz_id: 1,
        user_id: user.into(),
        since: since.map(|(e, o)| Since {
            epoch: e.into(),
            offset: o,
        }),
    }
}

/// The rules every store keeps, against the Redis at `url`.
fn streams_keep_their_rules(url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = connect(&rt, url, limits());
    let appended: Vec<Stored> = rt
        .block_on(s.append(&[
            push("u", "a", 1),
            push("u", "b", 2),
            push("v", "a", 3),
            push("u", "a", 4),
        ]))
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let offsets: Vec<(u64, bool)> = appended.iter().map(|a| (a.offset, a.fresh)).collect();
    assert_eq!(offsets, [(1, true), (2, true), (1, true), (1, false)]);
    let epoch = appended[0].epoch.clone();
    assert_eq!(epoch.len(), 16);
    assert_ne!(appended[2].epoch, epoch, "each user a stream");

    let state = |r: StreamRead| rt.block_on(s.read(&[r])).unwrap().remove(0).unwrap();
    let plain = state(read("u", None));
    assert_eq!(
        (plain.epoch.as_str(), plain.top, plain.replay),
        (&*epoch, 2, None)
    );
    let r = state(read("u", Some((&epoch, 0)))).replay.unwrap().unwrap();
    assert_eq!(
        r.iter()
            .map(|e| (e.offset, e.key.as_str()))
            .collect::<Vec<_>>(),
        [(1, "a"), (2, "b")]
    );
    assert_eq!(&r[1].body[..], b"body of b\nwith a newline");
    assert_eq!(state(read("u", Some((&epoch, 2)))).replay, Some(Ok(vec![])));
    let miss = |since| state(read("u", Some(since))).replay.unwrap().unwrap_err();
    assert_eq!(miss(("other", 1)), ResumeMiss::Epoch);
    assert_eq!(miss((&epoch, 3)), ResumeMiss::TooOld);
    let none = state(read("nobody", Some((&epoch, 0))));
    assert_eq!(
        (none.epoch.as_str(), none.replay),
        ("", Some(Err(ResumeMiss::Epoch)))
    );

    // Trimmed by length: 4 kept of 6; a trimmed key is appended anew.
    let more: Vec<StreamAppend> = ["c", "d", "e", "f"]
        .iter()
        .map(|k| push("u", k, 9))
        .collect();
    rt.block_on(s.append(&more)).unwrap();
    assert_eq!(miss((&epoch, 1)), ResumeMiss::TooOld);
    assert_eq!(miss((&epoch, 2)), ResumeMiss::TooMany);
    let tail = state(read("u", Some((&epoch, 3)))).replay.unwrap().unwrap();
    assert_eq!(tail.iter().map(|e| e.offset).collect::<Vec<_>>(), [4, 5, 6]);
    let again = rt
        .block_on(s.append(&[push("u", "a", 10)]))
        .unwrap()
        .remove(0);
    assert_eq!(again.unwrap().offset, 7);

    // The keys vanish (a lost store, an eviction): the next push opens a new epoch.
    let (h, log) = keys(1, "u");
    rt.block_on(async {
        use fred::prelude::*;
        let c = Builder::from_config(Config::from_url(url).unwrap())
            .build()
            .unwrap();
        c.init().await.unwrap();
        let _: i64 = c.del(h).await.unwrap();
        let _: i64 = c.del(log).await.unwrap();
    });
    assert_eq!(miss((&epoch, 7)), ResumeMiss::Epoch);
    let fresh = rt
        .block_on(s.append(&[push("u", "z", 11)]))
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(fresh.offset, 1);
    assert_ne!(fresh.epoch, epoch);
}

/// An idle stream expires whole after its TTL.
fn streams_age_out(url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = connect(
        &rt,
        url,
        StreamLimits {
            ttl: Duration::from_millis(300),
            ..limits()
        },
    );
    let first = rt
        .block_on(s.append(&[push("w", "a", 1)]))
        .unwrap()
        .remove(0)
        .unwrap();
    let since = read("w", Some((&first.epoch, 0)));
    let replay = || {
        rt.block_on(s.read(std::slice::from_ref(&since)))
            .unwrap()
            .remove(0)
            .unwrap()
            .replay
    };
    assert_eq!(replay().map(|r| r.unwrap().len()), Some(1));
    wait_until("the idle stream expires", Duration::from_secs(5), || {
        replay() == Some(Err(ResumeMiss::Epoch))
    });
}

#[test]
fn streams_keep_their_rules_in_redis() {
    let redis = Redis::start();
    streams_keep_their_rules(&redis.url());
    streams_age_out(&redis.url());
}

#[test]
fn streams_keep_their_rules_in_a_redis_cluster() {
    let cluster = RedisCluster::start();
    streams_keep_their_rules(&cluster.url());
    streams_age_out(&cluster.url());
}
