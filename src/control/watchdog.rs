//! Wakes a worker core whose executor went to sleep with work queued.
//!
//! glommio 0.9's executor loop arms its preemption timer, then runs the task queues; if the
//! timer has already fired by then (the thread was descheduled for longer than
//! `--preempt-ms`), it runs nothing, takes that for "no work" and parks in `io_uring_enter`,
//! to wake only for I/O or a pending timer. The core's one timer, the sleep of `timer_loop`,
//! may be exactly the task left queued: the core then sleeps until some socket happens to
//! wake it, and every link it owns stalls. Seen in the push bench whenever another thread
//! shared the server's CPU: stalls of seconds, inboxes filling, pushes reported undelivered
//! once the clients gave up. (glommio's own fix, a park only when no queue is runnable, is
//! not in a crates.io release.)
//!
//! A core has no fixed tick: it sleeps until its next deadline, which may be seconds away, so
//! a still pulse alone says nothing. A core is stalled when its pulse (a beat per pass of its
//! timer or inbox loop) stands still for `STALL` while it has work it is not doing (messages
//! in its inbox, or the deadline it went to sleep for already `STALL` past) and its thread
//! sleeps. It is then sent `SIGURG`, whose empty handler makes `io_uring_enter` return
//! `EINTR`, and the executor's next pass runs what was queued.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::Hub;
use super::startup::StartError;
use crate::core::inbox::WAKE_SIGNAL;

/// Beyond a scheduling hiccup, short enough that links barely notice.
const STALL: Duration = Duration::from_millis(50);
/// Two checks per `STALL`: each wakes the control thread, and an idle node's cost is mostly
/// these wake-ups (at 10 ms they were three quarters of it).
const CHECK: Duration = Duration::from_millis(25);

/// Installs the wake-up signal's handler for the whole process, before the cores start. No
/// `SA_RESTART`: the point is that the interrupted wait returns.
pub fn install_wakeup_signal() -> Result<(), StartError> {
    extern "C" fn wake(_: libc::c_int) {}
    // SAFETY: a handler that does nothing is async-signal-safe; the struct is zeroed, then
    // filled in as sigaction(2) asks.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = wake as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(WAKE_SIGNAL, &action, std::ptr::null_mut()) != 0 {
            return Err(StartError::Os {
                what: "installing the wake-up signal",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

pub async fn run(node: Arc<Hub>) {
    let mut stalls = Stalls::new(
        node.cores.len(),
        (STALL.as_millis() / CHECK.as_millis()) as u32,
    );
    loop {
        tokio::time::sleep(stalls.next_wait()).await;
        let now = std::time::Instant::now();
        let pulses: Vec<(u64, bool)> = node
            .cores
            .iter()
            .map(|c| (c.pulse(), c.has_work(now, STALL)))
            .collect();
        for (core, checks) in stalls.check(&pulses) {
            // A core that is running (a long burst of work, or starved of CPU) is not stalled.
            if !node.cores[core].thread().is_some_and(asleep) {
                continue;
            }
            node.metrics[core].stall_wakeups.inc();
            warn!(core, checks, "worker core stalled with work queued: woken");
            node.cores[core].wake();
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

/// Which cores had work while their pulses stood still for `patience` checks in a row (again
/// every `patience` checks while that lasts), with how many checks that makes. A core without
/// work (asleep until a later deadline) is never still, however long its pulse stands.
///
/// While no core has work, checks back off from `CHECK` to `IDLE_CHECK`: checking every 25 ms
/// regardless was most of what an idle node cost. A stall needs work, so the first check that
/// finds some is at most `IDLE_CHECK` late, and the checks after it are `CHECK` apart again.
struct Stalls {
    last: Vec<(u64, u32)>,
    patience: u32,
    wait: Duration,
}

/// The longest the watchdog waits between checks while every core is idle.
const IDLE_CHECK: Duration = Duration::from_millis(200);

impl Stalls {
    fn new(cores: usize, patience: u32) -> Stalls {
        Stalls {
            last: vec![(0, 0); cores],
            patience: patience.max(1),
            wait: CHECK,
        }
    }

    /// How long to wait before the next check.
    fn next_wait(&self) -> Duration {
        self.wait
    }

    /// `cores`: each core's pulse, and whether it has work now.
    fn check(&mut self, cores: &[(u64, bool)]) -> Vec<(usize, u32)> {
        let mut stalled = Vec::new();
        let mut quiet = true;
        for (core, (&(pulse, work), (last, still))) in cores.iter().zip(&mut self.last).enumerate()
        {
            quiet &= !work;
            if pulse != *last || !work {
                (*last, *still) = (pulse, 0);
                continue;
            }
            *still += 1;
            if *still % self.patience == 0 {
                stalled.push((core, *still));
            }
        }
        self.wait = if quiet {
            (self.wait * 2).min(IDLE_CHECK)
        } else {
            CHECK
        };
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
    fn a_still_pulse_with_work_is_reported_after_patience_and_again_while_it_stays_still() {
        let mut s = Stalls::new(2, 3);
        let mut reports = Vec::new();
        for pulses in [1, 2, 3, 4, 5, 6, 6, 6, 6] {
            // Core 0 has work and never beats; core 1 beats until it too stands still.
            reports.push(s.check(&[(1, true), (pulses, true)]));
        }
        let expected: [&[(usize, u32)]; 9] = [
            &[], // both moved from their start
            &[],
            &[],
            &[(0, 3)], // core 0 still for three checks
            &[],
            &[],
            &[(0, 6)], // still stalled: reported again
            &[],
            &[(1, 3)], // core 1 stood still since the sixth check
        ];
        assert_eq!(reports, expected);
    }

    #[test]
    fn checks_back_off_while_no_core_has_work_and_tighten_when_one_has() {
        let mut s = Stalls::new(2, 2);
        assert_eq!(s.next_wait(), CHECK);
        let waits: Vec<_> = (0..5)
            .map(|_| {
                s.check(&[(1, false), (1, false)]);
                s.next_wait().as_millis()
            })
            .collect();
        assert_eq!(waits, [50, 100, 200, 200, 200]);
        s.check(&[(2, false), (1, false)]);
        assert_eq!(
            s.next_wait().as_millis(),
            200,
            "a beat without work is no reason"
        );
        s.check(&[(2, false), (1, true)]);
        assert_eq!(s.next_wait(), CHECK, "work");
    }

    #[test]
    fn a_core_asleep_until_its_deadline_is_not_stalled_however_long() {
        let mut s = Stalls::new(1, 3);
        for _ in 0..100 {
            assert!(s.check(&[(7, false)]).is_empty());
        }
        // Its deadline passes and it does not wake: now it counts.
        let reports: Vec<_> = (0..3).map(|_| s.check(&[(7, true)])).collect();
        assert_eq!(reports[2], [(0, 3)]);
    }
}
