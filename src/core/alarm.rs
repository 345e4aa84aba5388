//! The core's one timer. The timer loop sleeps on it until the shard's next deadline, and an
//! event that schedules something sooner pulls it in. There is no fixed tick: an idle core
//! sleeps until its links' own deadlines (heartbeats, pings) or its once-a-second
//! housekeeping.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Instant;

#[derive(Default)]
pub struct Alarm {
    /// What the sleeper sleeps until; `None` while it is awake.
    armed: Cell<Option<Instant>>,
    pulled: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Alarm {
    /// Wakes the sleeper now if `due` comes before what it sleeps until. Cheap enough to call
    /// after every event.
    pub fn pull_in(&self, due: Option<Instant>) {
        let (Some(due), Some(armed)) = (due, self.armed.get()) else {
            return;
        };
        if due < armed {
            self.armed.set(None);
            self.pulled.set(true);
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// What the sleeper sleeps until; `None` while it is awake (or woken and not yet run).
    pub fn due(&self) -> Option<Instant> {
        self.armed.get()
    }

    /// Sleeps until `due`, or until [`Alarm::pull_in`] is given something sooner.
    pub async fn sleep_until(&self, due: Instant) {
        self.pulled.set(false);
        self.armed.set(Some(due));
        let pulled = poll_fn(|cx| {
            if self.pulled.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        let timer = glommio::timer::sleep(due.saturating_duration_since(Instant::now()));
        futures_lite::future::or(timer, pulled).await;
        self.armed.set(None);
        self.waker.borrow_mut().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    /// A sleeper due in an hour is woken by an earlier deadline, and not by a later one.
    #[test]
    fn an_earlier_deadline_pulls_the_sleeper_in_and_a_later_one_does_not() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let alarm = Rc::new(Alarm::default());
                let hour = Instant::now() + Duration::from_secs(3600);
                let sleeper = glommio::spawn_local({
                    let alarm = alarm.clone();
                    async move { alarm.sleep_until(hour).await }
                });
                futures_lite::future::yield_now().await;
                alarm.pull_in(Some(hour + Duration::from_secs(1)));
                alarm.pull_in(None);
                futures_lite::future::yield_now().await;
                assert!(alarm.armed.get().is_some(), "still asleep");
                alarm.pull_in(Some(hour - Duration::from_secs(1)));
                sleeper.await;
                assert!(alarm.armed.get().is_none());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
