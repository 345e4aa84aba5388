//! Wakes a worker core whose executor went to sleep with work queued.
//!
//! glommio 0.9's executor loop arms its preemption timer, then runs the task queues; if the
//! timer has already fired by then (the thread was descheduled for longer than
//! `--preempt-ms`), it runs nothing, takes that for "no work" and parks in `io_uring_enter`,
//! to wake only for I/O or a pending timer. The core's one timer, the tick of `timer_loop`,
//! may be exactly the task left queued: the core then sleeps until some socket happens to
//! wake it, and every link it owns stalls. Seen in the push bench whenever another thread
//! shared the server's CPU: stalls of seconds, inboxes filling, pushes reported undelivered
//! once the clients gave up. (glommio's own fix, a park only when no queue is runnable, is
//! not in a crates.io release.) Each core's timer loop beats a pulse; a core whose pulse
//! stands still for `STALL` while its thread sleeps is sent `SIGURG`, whose empty handler
//! makes `io_uring_enter` return `EINTR`, and the executor's next pass runs what was queued.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::NodeState;

/// Five missed ticks: beyond a scheduling hiccup, short enough that links barely notice.
const STALL: Duration = Duration::from_millis(50);
const CHECK: Duration = Duration::from_millis(10);
const SIGNAL: libc::c_int = libc::SIGURG;

/// Installs the wake-up signal's handler for the whole process, before the cores start. No
/// `SA_RESTART`: the point is that the interrupted wait returns.
pub fn install_wakeup_signal() -> std::io::Result<()> {
    extern "C" fn wake(_: libc::c_int) {}
    // SAFETY: a handler that does nothing is async-signal-safe; the struct is zeroed, then
    // filled in as sigaction(2) asks.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = wake as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(SIGNAL, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub async fn run(node: Arc<NodeState>) {
    let mut stalls = Stalls::new(
        node.cores.len(),
        (STALL.as_millis() / CHECK.as_millis()) as u32,
    );
    let mut every = tokio::time::interval(CHECK);
    loop {
        every.tick().await;
        let pulses: Vec<u64> = node.cores.iter().map(|c| c.pulse()).collect();
        for (core, checks) in stalls.check(&pulses) {
            // A core that is running (a long burst of work, or starved of CPU) is not stalled.
            let Some(thread) = node.cores[core].thread().filter(|&t| asleep(t)) else {
                continue;
            };
            node.metrics[core].stall_wakeups.inc();
            let ms = CHECK.as_millis() as u64 * u64::from(checks);
            warn!(core, ms, "worker core stalled with work queued: woken");
            // SAFETY: tgkill only sends a signal, to a thread of this process.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), thread, SIGNAL) };
        }
    }
}

/// Whether the thread sleeps in the kernel now (state `S` in its `/proc` stat line).
fn asleep(thread: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{thread}/stat"))
        .is_ok_and(|stat| state(&stat) == Some('S'))
}

/// The state letter of a `/proc/.../stat` line: the first field after the command name, which
/// is in parentheses and may itself hold spaces and parentheses.
fn state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Which cores' pulses stood still for `patience` checks in a row (again every `patience`
/// checks while they stay still), with how many checks that makes.
struct Stalls {
    last: Vec<(u64, u32)>,
    patience: u32,
}

impl Stalls {
    fn new(cores: usize, patience: u32) -> Stalls {
        Stalls {
            last: vec![(0, 0); cores],
            patience: patience.max(1),
        }
    }

    fn check(&mut self, pulses: &[u64]) -> Vec<(usize, u32)> {
        let mut stalled = Vec::new();
        for (core, (&pulse, (last, still))) in pulses.iter().zip(&mut self.last).enumerate() {
            if pulse != *last {
                (*last, *still) = (pulse, 0);
                continue;
            }
            *still += 1;
            if *still % self.patience == 0 {
                stalled.push((core, *still));
            }
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_after_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(state("4242 (ringway-w0-1) S 1 4242"), Some('S'));
        assert_eq!(state("7 (a) b (c)) R 1 7"), Some('R'));
        assert_eq!(state("garbage"), None);
    }

    #[test]
    fn a_still_pulse_is_reported_after_patience_and_again_while_it_stays_still() {
        let mut s = Stalls::new(2, 3);
        let mut reports = Vec::new();
        for pulses in [
            [1, 1],
            [1, 2],
            [1, 3],
            [1, 4],
            [1, 5],
            [1, 6],
            [1, 6],
            [2, 6],
            [3, 6],
        ] {
            reports.push(s.check(&pulses));
        }
        let expected: [&[(usize, u32)]; 9] = [
            &[], // both moved from their start
            &[],
            &[],
            &[(0, 3)], // core 0 still for three checks
            &[],
            &[],
            &[(0, 6)], // still stalled: reported again
            &[],       // core 0 beats again: its count restarts
            &[(1, 3)], // core 1 stood still since the sixth check
        ];
        assert_eq!(reports, expected);
    }
}
