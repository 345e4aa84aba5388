//! The glommio timers a core's tasks arm besides the timer loop's [`Alarm`](super::alarm::Alarm):
//! deferred batch flushes and the accept pause.
//!
//! glommio keeps its timers in user space and hands the kernel a timeout only when it parks.
//! The link loop may block the core's thread in `epoll_wait` until the alarm is due (see
//! `worker::link_loop`); while any of these timers is armed it must not, or the timer would
//! fire late by the whole wait. So each is counted while it runs.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Naps(Rc<Cell<usize>>);

/// Uncounts a nap when it ends, whether it fired or its task was dropped.
struct Counted(Rc<Cell<usize>>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Naps {
    /// Sleeps for `d` on a glommio timer, counted for as long as it is armed.
    pub async fn sleep(&self, d: Duration) {
        self.0.set(self.0.get() + 1);
        let _counted = Counted(self.0.clone());
        glommio::timer::sleep(d).await;
    }

    /// Whether a timer is armed now.
    pub fn any(&self) -> bool {
        self.0.get() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nap_counts_while_armed_and_not_after_it_fired_or_was_dropped() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let naps = Naps::default();
                let fired = glommio::spawn_local({
                    let naps = naps.clone();
                    async move { naps.sleep(Duration::from_millis(1)).await }
                });
                let dropped = glommio::spawn_local({
                    let naps = naps.clone();
                    async move { naps.sleep(Duration::from_secs(3600)).await }
                });
                futures_lite::future::yield_now().await;
                assert_eq!(naps.0.get(), 2);
                fired.await;
                assert!(naps.any(), "the hour-long nap is still armed");
                assert!(dropped.cancel().await.is_none(), "cancelled unfired");
                assert!(!naps.any());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
