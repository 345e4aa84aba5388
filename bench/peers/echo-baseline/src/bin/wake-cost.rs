//! What one sleep and wake-up costs the thread that sleeps, on this machine.
//!
//! A sender on CPU 1 writes one byte to a socket every GAP µs; a receiver on CPU 0 waits for it
//! in `epoll_wait` (as the servers benchmarked here do), reads it, and waits again. The
//! receiver's own CPU time per byte is printed beside its waits per byte. With the bytes
//! coming faster than it sleeps (GAP 0) it is the cost of the reads alone; with a wait per
//! byte, the rest is the sleep and wake-up. A closed-loop benchmark charges that to a server
//! each time the load generator lets it go idle.
//!
//! Usage: wake-cost GAP_US [MESSAGES] [TIMEOUT_MS] (TIMEOUT_MS -1, the default, waits without
//! a timer, like tokio; ringway's loop waits with one).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity take it by pointer
    // for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: i64| {
        args.next()
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (gap, messages, timeout) = (arg(20), arg(50_000), arg(-1));
    let (mut ours, mut theirs) = UnixStream::pair().expect("a socket pair");
    ours.set_nonblocking(true).expect("non-blocking");
    let sender = std::thread::spawn(move || {
        pin(1);
        let gap = Duration::from_micros(gap as u64);
        let mut next = Instant::now();
        for _ in 0..messages {
            next += gap;
            while Instant::now() < next {}
            theirs.write_all(b"x").expect("write");
        }
    });
    pin(0);
    // SAFETY: epoll_create1 takes no pointers.
    let epoll = unsafe { libc::epoll_create1(0) };
    let mut interest = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: a valid epoll fd, an open socket and an event that outlives the call.
    unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, ours.as_raw_fd(), &mut interest) };
    let (cpu0, started) = (thread_cpu(), Instant::now());
    let (mut got, mut waits, mut buf) = (0i64, 0i64, [0u8; 4096]);
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    while got < messages {
        // SAFETY: the buffer holds 8 events.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 8, timeout as i32) };
        waits += 1;
        if n > 0 {
            while let Ok(k @ 1..) = ours.read(&mut buf) {
                got += k as i64;
            }
        }
    }
    let (cpu, wall) = (thread_cpu() - cpu0, started.elapsed());
    sender.join().expect("sender");
    println!(
        "gap {gap} us, timeout {timeout} ms: receiver CPU {:.2} us a message, {:.2} waits a message, busy {:.0} %",
        cpu.as_secs_f64() * 1e6 / messages as f64,
        waits as f64 / messages as f64,
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
}
