//! Heap allocations on the hot paths, counted with a counting global allocator: a push's
//! deliveries and acks reuse what the shard holds, and an echoed message allocates nothing; and
//! the heap bytes an idle link holds in the shard.

use super::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting the allocations of threads that asked to be counted (the
/// test harness runs other tests beside this one).
struct Counting;

thread_local! {
    static COUNTED: Cell<Option<u64>> = const { Cell::new(None) };
    /// Bytes allocated less bytes freed, while counting.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count(bytes: isize) {
    let _ = COUNTED.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
            live(bytes);
        }
    });
}

fn live(bytes: isize) {
    let counting = COUNTED.try_with(|c| c.get().is_some()).unwrap_or(false);
    if counting {
        let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    counted(f).0
}

/// The allocations `f` makes on this thread, and the bytes it leaves allocated.
fn counted(f: impl FnOnce()) -> (u64, isize) {
    LIVE.with(|l| l.set(0));
    COUNTED.with(|c| c.set(Some(0)));
    f();
    let n = COUNTED.with(|c| c.replace(None)).unwrap_or(0);
    (n, LIVE.with(|l| l.get()))
}

fn echo_harness() -> Harness {
    let t0 = Instant::now();
    let mut e = embedded();
    e.local_bizs = Arc::new(LocalBizs::new(true, Default::default()));
    e.echo = true;
    let mut config = cfg();
    config.link_rate.per_s = 0;
    Harness {
        shard: Shard::new(config, e, Arc::default(), 7, t0),
        t0,
    }
}

/// Hands the link's bytes to a socket that takes them all.
fn flush(h: &mut Harness, conn: ConnId, now: Instant) {
    if let Transmit::Bytes(b) = h.shard.poll_transmit(conn) {
        let n = b.len();
        h.shard.handle_written(conn, n, now);
    }
}

#[test]
fn an_echoed_message_allocates_nothing() {
    let mut h = echo_harness();
    h.open(1, "alice", "phone", Codec::Proto);
    // A client's turn: the message, then its echo's ack.
    let turns: Vec<[Vec<u8>; 2]> = (0..4000)
        .map(|i| {
            let key = format!("m{i:04}");
            [
                client(Codec::Proto, &up(&key, b"0123456789abcdef")),
                client(Codec::Proto, &cmd_frame(Cmd::DownstreamAck, &key)),
            ]
        })
        .collect();
    let mut turns = turns.into_iter();
    let now = h.at(1);
    let mut echo = |h: &mut Harness, n: usize| {
        for [mut message, mut ack] in turns.by_ref().take(n) {
            h.shard.handle_bytes(1, &mut message, now);
            flush(h, 1, now);
            h.shard.handle_bytes(1, &mut ack, now);
        }
    };
    echo(&mut h, 2000);
    let n = allocations(|| echo(&mut h, 2000));
    // The key is copied inline and the store keeps only its fingerprint, the body is a slice
    // of a shared chunk, the ack and the push reuse spent ones. Now and then a chunk, or the
    // store's table or expiry queues, grow.
    assert!(n <= 40, "{n} allocations for 2,000 echoed messages");
}

#[test]
fn a_push_to_many_links_and_their_acks_allocate_nothing_per_link() {
    let mut h = Harness::new();
    let users: Vec<String> = (0..200).map(|i| format!("u{i}")).collect();
    for (i, u) in users.iter().enumerate() {
        h.open(i as ConnId + 1, u, "phone", Codec::Proto);
    }
    // Keys of one length: a link's buffer grows once to the largest frame it has carried.
    let mut acks: Vec<Vec<Vec<u8>>> = (0..20)
        .map(|p| {
            let ack = cmd_frame(Cmd::DownstreamAck, &format!("p{p:02}"));
            (0..users.len())
                .map(|_| client(Codec::Proto, &ack))
                .collect()
        })
        .collect();
    let pushes: Vec<Rc<EncodedPush>> = (0..20)
        .map(|p| EncodedPush::new(&format!("p{p:02}"), Bytes::from_static(b"hello")))
        .collect();
    let now = h.at(1);
    let mut round = |h: &mut Harness, p: usize| {
        h.shard.push(1, &users, None, &pushes[p], stored(now), now);
        for (i, mut ack) in std::mem::take(&mut acks[p]).into_iter().enumerate() {
            let conn = i as ConnId + 1;
            flush(h, conn, now);
            h.shard.handle_bytes(conn, &mut ack, now);
        }
        h.shard.events.clear();
    };
    for p in 0..10 {
        round(&mut h, p);
    }
    let n = allocations(|| {
        for p in 10..20 {
            round(&mut h, p);
        }
    });
    // The push's own frames and its stream entry, whatever the number of links it reaches.
    assert!(
        n <= 3 * 10,
        "{n} allocations for 10 pushes, 2,000 deliveries and acks"
    );
}

#[test]
fn an_idle_link_keeps_no_write_buffer_once_greeted() {
    let mut h = Harness::new();
    let t = h.at(0);
    let who = who("alice", "phone");
    h.shard.open(1, who, &upgrade(Codec::Proto), far(), t);
    flush(&mut h, 1, t);
    assert_eq!(h.shard.link_mut(1).unwrap().out.capacity(), 0);
    h.push("alice", None, "p1", 1);
    flush(&mut h, 1, t);
    assert!(
        h.shard.link_mut(1).unwrap().out.capacity() > 0,
        "a link with traffic keeps its buffer"
    );
}

/// What the shard keeps for each of 15,000 greeted idle links of as many users (the sockets,
/// tasks and kernel buffers are the shell's: `bench/single-node.sh` measures the whole).
#[test]
fn an_idle_link_costs_the_shard_under_650_bytes() {
    const LINKS: u64 = 15_000;
    let mut h = Harness::new();
    let t = h.at(0);
    let up = upgrade(Codec::Proto);
    let (_, bytes) = counted(|| {
        for conn in 1..=LINKS {
            let who = who(&format!("user-{conn:05}"), "phone");
            h.shard.open(conn, who, &up, far(), t);
            flush(&mut h, conn, t);
            // The shell takes each event (here, the link's registration) as it comes.
            while h.shard.poll_event().is_some() {}
        }
    });
    let per_link = bytes / LINKS as isize;
    eprintln!("{per_link} bytes per idle link in the shard");
    // 622 today: the link 320, its identity 56 and strings, and the tables' and wheel's share.
    assert!(per_link < 650, "{per_link} bytes per idle link");
}

/// What the idempotency store holds per key in the dedup window (the window of a busy core
/// holds millions): the byte cap counts each key at `ENTRY_OVERHEAD`, 192, plus its reply.
/// The store is sized for one key more than fill a table of 2^17 slots half-way, so its
/// table is the emptiest a full store's can be: the most a key costs.
#[test]
fn a_stored_key_costs_the_store_under_192_bytes() {
    use crate::link::idem::{IdemStore, IdemTtl, IdemUpdate, MemoryIdemStore};
    const KEYS: usize = (1 << 16) + 1;
    let t0 = Instant::now();
    let ttl = IdemTtl {
        pending: Duration::from_secs(30),
        done: Duration::from_secs(600),
        max_entries: KEYS,
        max_bytes: usize::MAX,
    };
    let who = Arc::new(who("alice", "phone"));
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("0b7c5a52-3c3e-4a8f-9d8e-{i:012}"))
        .collect();
    // Kept past the counting: what the store holds is still allocated when counting ends.
    let mut store = None;
    let (_, bytes) = counted(|| {
        let s = store.insert(MemoryIdemStore::new(ttl));
        for key in &keys {
            s.claim(&who, key, t0);
            let key = key.as_str().into();
            let who = who.clone();
            s.update(
                IdemUpdate::Complete {
                    who,
                    key,
                    reply: Bytes::new(),
                },
                t0,
            );
        }
    });
    let per_key = bytes / KEYS as isize;
    eprintln!("{per_key} bytes per stored key");
    assert!(per_key < 192, "{per_key} bytes per stored key");
}
