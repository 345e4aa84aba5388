//! A live progress line on stderr while a scenario runs: links open, events (acks or
//! deliveries) and their rate, errors. On a terminal it redraws one line; in a log it prints a
//! line every few seconds.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Set on worker processes: their parent speaks for them.
pub const QUIET_ENV: &str = "RINGWAY_LOAD_QUIET";

#[derive(Default)]
pub struct Progress {
    pub links: AtomicU64,
    pub events: AtomicU64,
    pub errors: AtomicU64,
    /// Upgrades answered 503 (and retried after Retry-After).
    pub refused: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    /// Starts the ticker; it stops when `finish` is called.
    pub fn start(label: &'static str, target_links: usize) -> Arc<Progress> {
        let p = Arc::new(Progress::default());
        if std::env::var_os(QUIET_ENV).is_some() {
            return p;
        }
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let me = p.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let (mut last_events, mut last_at) = (0, t0);
            while !me.done.load(Relaxed) {
                tokio::time::sleep(every).await;
                if me.done.load(Relaxed) {
                    break;
                }
                let events = me.events.load(Relaxed);
                let now = Instant::now();
                let rate =
                    (events - last_events) as f64 / now.duration_since(last_at).as_secs_f64();
                (last_events, last_at) = (events, now);
                let line = format!(
                    "[{label} {:>5.1}s] links {}/{target_links}  {label_ev} {events} ({rate:.0}/s)  errors {}",
                    t0.elapsed().as_secs_f64(),
                    me.links.load(Relaxed),
                    me.errors.load(Relaxed),
                    label_ev = if label == "push" {
                        "deliveries"
                    } else {
                        "acks"
                    },
                );
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
            }
        });
        p
    }

    /// Stops the ticker and clears its line at once, so what follows (the summary, the JSON
    /// on stdout) starts on a line of its own.
    pub fn finish(&self) {
        if !self.done.swap(true, Relaxed)
            && std::env::var_os(QUIET_ENV).is_none()
            && std::io::stderr().is_terminal()
        {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}
