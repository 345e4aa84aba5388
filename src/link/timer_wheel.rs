//! A hashed timer wheel: O(1) insert and cancel, expiry work proportional to what expires.
//!
//! Each core keeps one for all its links' deadlines and retransmits, so there is no timer task
//! per link and nothing scans all links. Slots hold intrusive doubly linked lists threaded
//! through a slab; a `TimerId` carries a generation so cancelling a timer that already fired
//! (or whose slot was reused) is a harmless no-op.
//!
//! Deadlines beyond one turn (a token's expiry an hour out) wait in a heap, not in the slots,
//! and move into their slot as the wheel comes within a turn of them: finding the next
//! deadline then walks only timers of the current turn. Left in the slots, 10,000 far timers
//! made that walk a tenth of a core busy fanning out room messages.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

struct Entry<T> {
    /// Absolute tick at which the entry fires.
    deadline: u64,
    prev: u32,
    next: u32,
    generation: u32,
    payload: Option<T>,
    /// Waiting in the far heap, not linked into a slot.
    far: bool,
}

pub struct TimerWheel<T> {
    tick: Duration,
    origin: Instant,
    /// Next tick to process; everything due before it has fired.
    current: u64,
    slots: Vec<u32>,
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
    /// Timers beyond a turn, as (deadline, index, generation); a cancelled one stays until it
    /// comes to the top, where its generation gives it away.
    far: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Live timers in `far`.
    far_len: usize,
    /// No pending deadline is earlier than this tick: exact after [`TimerWheel::next_deadline`],
    /// lowered by every insert, left alone by fires and cancels (so it may be early, never
    /// late).
    floor: u64,
}

impl<T> TimerWheel<T> {
    /// `slots` is rounded up to a power of two; one turn of the wheel is `tick * slots`. Longer
    /// deadlines stay in their slot and are skipped until their turn comes.
    pub fn new(tick: Duration, slots: usize, origin: Instant) -> Self {
        let slots = slots.next_power_of_two();
        TimerWheel {
            tick,
            origin,
            current: 0,
            slots: vec![NIL; slots],
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            far: BinaryHeap::new(),
            far_len: 0,
            floor: u64::MAX,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `payload` to fire at the first tick at or after `at` (never earlier).
    pub fn insert(&mut self, at: Instant, payload: T) -> TimerId {
        let since = at.saturating_duration_since(self.origin);
        let deadline = since.as_nanos().div_ceil(self.tick.as_nanos()) as u64;
        let deadline = deadline.max(self.current);
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    deadline: 0,
                    prev: NIL,
                    next: NIL,
                    generation: 0,
                    payload: None,
                    far: false,
                });
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[index as usize];
        e.deadline = deadline;
        e.payload = Some(payload);
        let generation = e.generation;
        if deadline >= self.current + self.slots.len() as u64 {
            e.far = true;
            self.far.push(Reverse((deadline, index, generation)));
            self.far_len += 1;
        } else {
            self.link(index);
        }
        self.len += 1;
        self.floor = self.floor.min(deadline);
        TimerId { index, generation }
    }

    /// Threads a live entry into its deadline's slot.
    fn link(&mut self, index: u32) {
        let slot = self.slot_of(self.entries[index as usize].deadline);
        let head = self.slots[slot];
        let e = &mut self.entries[index as usize];
        e.far = false;
        e.prev = NIL;
        e.next = head;
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.slots[slot] = index;
    }

    /// The far heap's top, once cancelled timers there are dropped: (deadline, index).
    fn far_top(&mut self) -> Option<(u64, u32)> {
        while let Some(&Reverse((deadline, index, generation))) = self.far.peek() {
            let e = &self.entries[index as usize];
            if e.generation == generation && e.far && e.payload.is_some() {
                return Some((deadline, index));
            }
            self.far.pop();
        }
        None
    }

    /// Moves far timers due before `before` into their slots.
    fn bring_near(&mut self, before: u64) {
        while let Some((deadline, index)) = self.far_top() {
            if deadline >= before {
                return;
            }
            self.far.pop();
            self.far_len -= 1;
            self.link(index);
        }
    }

    /// Removes a pending timer and returns its payload; `None` if it already fired or was
    /// cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let e = self.entries.get(id.index as usize)?;
        if e.generation != id.generation || e.payload.is_none() {
            return None;
        }
        Some(self.remove(id.index))
    }

    /// Fires every timer due at or before `now`, in deadline order tick by tick.
    pub fn advance(&mut self, now: Instant, mut fire: impl FnMut(T)) {
        let target =
            (now.saturating_duration_since(self.origin).as_nanos() / self.tick.as_nanos()) as u64;
        if target < self.current {
            return;
        }
        // Everything due by the end of the next turn goes into the slots first: what is due by
        // `target` fires below, the rest is within a turn once `current` moves on.
        self.bring_near(target + self.slots.len() as u64);
        let turns = (target - self.current + 1).min(self.slots.len() as u64);
        for step in 0..turns {
            let tick = self.current + step;
            let mut i = self.slots[self.slot_of(tick)];
            while i != NIL {
                let e = &self.entries[i as usize];
                let next = e.next;
                if e.deadline <= target {
                    fire(self.remove(i));
                }
                i = next;
            }
        }
        self.current = target + 1;
    }

    /// When the earliest pending timer is due: the instant from which [`TimerWheel::advance`]
    /// fires it. A core sleeps until then instead of ticking. Walks the slots of the current
    /// turn while any timer is in them (every one there is due within the turn, so earlier
    /// than any far one), else asks the far heap.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if self.len == 0 {
            self.floor = u64::MAX;
            return None;
        }
        let turn = self.slots.len() as u64;
        let near = (self.len > self.far_len)
            .then(|| {
                (self.current..self.current + turn).find(|&tick| {
                    let mut i = self.slots[self.slot_of(tick)];
                    while i != NIL {
                        let e = &self.entries[i as usize];
                        if e.deadline <= tick {
                            return true;
                        }
                        i = e.next;
                    }
                    false
                })
            })
            .flatten();
        let tick = match near {
            Some(tick) => tick,
            None => {
                self.far_top()
                    .expect("a non-empty wheel has a live timer")
                    .0
            }
        };
        self.floor = tick;
        Some(self.at(tick))
    }

    /// No pending timer is due before this: exact after [`TimerWheel::next_deadline`], and
    /// lowered by every insert since. Cheap, for asking after every event whether a sleeping
    /// core must wake sooner than it planned.
    pub fn earliest(&self) -> Option<Instant> {
        (self.len > 0).then(|| self.at(self.floor.max(self.current)))
    }

    /// `at`, rounded up to the next multiple of `grain` counted from the wheel's origin: timers
    /// rounded alike fire on one tick, so a core wakes once for all of them.
    pub fn round_up(&self, at: Instant, grain: Duration) -> Instant {
        let grain = grain.as_nanos().max(1);
        let since = at.saturating_duration_since(self.origin).as_nanos();
        let rounded = since.div_ceil(grain).saturating_mul(grain);
        self.origin + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
    }

    fn at(&self, tick: u64) -> Instant {
        self.origin + Duration::from_nanos((self.tick.as_nanos() as u64).saturating_mul(tick))
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick as usize) & (self.slots.len() - 1)
    }

    fn remove(&mut self, index: u32) -> T {
        let (prev, next, deadline, far) = {
            let e = &self.entries[index as usize];
            (e.prev, e.next, e.deadline, e.far)
        };
        if far {
            // Its heap item goes stale with the generation below.
            self.far_len -= 1;
        } else if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            let slot = self.slot_of(deadline);
            self.slots[slot] = next;
        }
        if !far && next != NIL {
            self.entries[next as usize].prev = prev;
        }
        let e = &mut self.entries[index as usize];
        e.far = false;
        e.generation = e.generation.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
        e.payload.take().expect("live entry has a payload")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn wheel(t0: Instant) -> TimerWheel<u32> {
        TimerWheel::new(10 * MS, 8, t0)
    }

    fn fired(w: &mut TimerWheel<u32>, now: Instant) -> Vec<u32> {
        let mut v = Vec::new();
        w.advance(now, |x| v.push(x));
        v.sort();
        v
    }

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + 25 * MS, 1);
        w.insert(t0 + 30 * MS, 2);
        assert_eq!(fired(&mut w, t0 + 29 * MS), Vec::<u32>::new());
        assert_eq!(fired(&mut w, t0 + 30 * MS), vec![1, 2]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_turn_wait_their_turn() {
        let t0 = Instant::now();
        let mut w = wheel(t0); // one turn = 80ms
        w.insert(t0 + 200 * MS, 7);
        w.insert(t0 + 40 * MS, 8);
        assert_eq!(fired(&mut w, t0 + 50 * MS), vec![8]);
        assert_eq!(fired(&mut w, t0 + 199 * MS), Vec::<u32>::new());
        assert_eq!(fired(&mut w, t0 + 200 * MS), vec![7]);
    }

    #[test]
    fn a_long_pause_fires_everything_due_once() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        for i in 0..50 {
            w.insert(t0 + (i * 7) * MS, i);
        }
        w.insert(t0 + 10_000 * MS, 99);
        assert_eq!(fired(&mut w, t0 + 5_000 * MS), (0..50).collect::<Vec<_>>());
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn cancel_is_exact_and_stale_ids_are_harmless() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        let a = w.insert(t0 + 10 * MS, 1);
        let b = w.insert(t0 + 10 * MS, 2);
        let c = w.insert(t0 + 10 * MS, 3);
        assert_eq!(w.cancel(b), Some(2));
        assert_eq!(w.cancel(b), None);
        assert_eq!(fired(&mut w, t0 + 10 * MS), vec![1, 3]);
        assert_eq!(w.cancel(a), None, "already fired");
        // The slab slot of `c` is reused; the old id must not cancel the new timer.
        let d = w.insert(t0 + 50 * MS, 4);
        assert_eq!(w.cancel(c), None);
        assert_eq!(w.cancel(d), Some(4));
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.advance(t0 + 100 * MS, |_| {});
        w.insert(t0, 5);
        assert_eq!(fired(&mut w, t0 + 100 * MS), Vec::<u32>::new());
        assert_eq!(fired(&mut w, t0 + 110 * MS), vec![5]);
    }

    #[test]
    fn rounding_up_shares_a_grain_counted_from_the_origin() {
        let t0 = Instant::now();
        let w = wheel(t0);
        let grain = 250 * MS;
        assert_eq!(w.round_up(t0 + 1 * MS, grain), t0 + 250 * MS);
        assert_eq!(w.round_up(t0 + 249 * MS, grain), t0 + 250 * MS);
        assert_eq!(
            w.round_up(t0 + 250 * MS, grain),
            t0 + 250 * MS,
            "never later than needed"
        );
        assert_eq!(w.round_up(t0 + 251 * MS, grain), t0 + 500 * MS);
    }

    #[test]
    fn the_next_deadline_is_the_first_tick_that_fires_something() {
        let t0 = Instant::now();
        let mut w = wheel(t0); // one turn = 80ms
        assert_eq!(w.next_deadline(), None);
        w.insert(t0 + 200 * MS, 7); // beyond the turn
        assert_eq!(w.next_deadline(), Some(t0 + 200 * MS));
        w.insert(t0 + 35 * MS, 8); // fires from the 40 ms tick
        assert_eq!(w.earliest(), Some(t0 + 40 * MS), "an insert lowers it");
        assert_eq!(w.next_deadline(), Some(t0 + 40 * MS));
        assert_eq!(fired(&mut w, t0 + 39 * MS), Vec::<u32>::new());
        assert_eq!(fired(&mut w, t0 + 40 * MS), vec![8]);
        assert_eq!(
            w.earliest(),
            Some(t0 + 50 * MS),
            "early after a fire, never late"
        );
        assert_eq!(w.next_deadline(), Some(t0 + 200 * MS));
        let id = w.insert(t0 + 60 * MS, 9);
        w.cancel(id);
        assert_eq!(
            w.next_deadline(),
            Some(t0 + 200 * MS),
            "a cancelled timer is not due"
        );
        assert_eq!(fired(&mut w, t0 + 200 * MS), vec![7]);
        assert_eq!(w.next_deadline(), None);
        assert_eq!(w.earliest(), None);
    }

    #[test]
    fn far_timers_cancel_and_reuse_their_slab_slot_exactly() {
        let t0 = Instant::now();
        let mut w = wheel(t0); // one turn = 80ms
        let far = w.insert(t0 + 500 * MS, 1);
        assert_eq!(w.cancel(far), Some(1));
        // The slab slot is reused by a near timer; the stale heap item must not count.
        w.insert(t0 + 30 * MS, 2);
        w.insert(t0 + 900 * MS, 3);
        assert_eq!(w.next_deadline(), Some(t0 + 30 * MS));
        assert_eq!(fired(&mut w, t0 + 30 * MS), vec![2]);
        assert_eq!(w.next_deadline(), Some(t0 + 900 * MS));
        assert_eq!(fired(&mut w, t0 + 600 * MS), Vec::<u32>::new());
        assert_eq!(w.len(), 1);
        assert_eq!(fired(&mut w, t0 + 900 * MS), vec![3]);
        assert!(w.is_empty() && w.next_deadline().is_none());
    }
}
