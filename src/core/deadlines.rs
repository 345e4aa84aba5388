//! The upgrade deadlines of one core. Every upgrade gets the same `--handshake-timeout-ms`, so
//! they fall due in the order they were set: a queue replaces the glommio timer each upgrade
//! used to arm (a ring timeout and its cancel per connection, most of the 13 % that
//! `io_uring_submit` took of a handshake-bound core). The core's timer loop fires them,
//! waking at most once per [`SLACK`]: a deadline fires up to that much late.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How late a deadline may fire, so a steady stream of upgrades wakes the timer loop a few
/// times a second rather than once per upgrade.
pub const SLACK: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct Deadlines {
    /// Oldest first. An entry whose [`Deadline`] was dropped (the upgrade finished) stays until
    /// it reaches the front: at most a timeout's worth of upgrades, a few dozen bytes each.
    queue: RefCell<VecDeque<(Instant, Weak<Slot>)>>,
}

#[derive(Default)]
struct Slot {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Ready once its deadline has fired; dropping it cancels it.
pub struct Deadline(Rc<Slot>);

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Deadlines {
    /// A deadline at `at`, which must not come before any set earlier (they share one length).
    pub fn set(&self, at: Instant) -> Deadline {
        let slot = Rc::new(Slot::default());
        self.queue
            .borrow_mut()
            .push_back((at, Rc::downgrade(&slot)));
        Deadline(slot)
    }

    /// Fires every deadline due by `now`, and forgets the cancelled ones it passes.
    pub fn fire(&self, now: Instant) {
        let mut queue = self.queue.borrow_mut();
        while let Some((at, slot)) = queue.front() {
            let live = slot.upgrade();
            if live.is_some() && *at > now {
                break;
            }
            if let Some(slot) = live {
                slot.fired.set(true);
                if let Some(w) = slot.waker.borrow_mut().take() {
                    w.wake();
                }
            }
            queue.pop_front();
        }
    }

    /// When the timer loop should next call [`Deadlines::fire`].
    pub fn next(&self) -> Option<Instant> {
        self.queue.borrow().front().map(|(at, _)| *at + SLACK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(d: &Deadline) -> bool {
        d.0.fired.get()
    }

    /// Deadlines fire in order once due; a cancelled one is dropped from the queue without
    /// firing, and the next wake-up is the oldest live deadline's, plus the slack.
    #[test]
    fn due_deadlines_fire_in_order_and_cancelled_ones_are_forgotten() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let d = Deadlines::default();
        let a = d.set(t0 + ms(100));
        let b = d.set(t0 + ms(110));
        let c = d.set(t0 + ms(300));
        assert_eq!(d.next(), Some(t0 + ms(100) + SLACK));
        drop(b);
        d.fire(t0 + ms(99));
        assert!(!fired(&a) && !fired(&c));
        d.fire(t0 + ms(120));
        assert!(fired(&a) && !fired(&c));
        assert_eq!(d.next(), Some(t0 + ms(300) + SLACK), "b left with a");
        drop(c);
        d.fire(t0 + ms(121));
        assert_eq!(
            d.next(),
            None,
            "a cancelled front is forgotten before it is due"
        );
    }

    /// A task waiting on a deadline is woken when it fires.
    #[test]
    fn a_waiting_task_is_woken_when_its_deadline_fires() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let d = Rc::new(Deadlines::default());
                let at = Instant::now() + Duration::from_secs(3600);
                let waiter = glommio::spawn_local(d.set(at));
                futures_lite::future::yield_now().await;
                d.fire(at);
                waiter.await;
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
