//! The dedup window's table: each slot holds a fingerprint and its row together, probed
//! linearly from the fingerprint's first word.
//!
//! A general map keeps its control bytes apart from its slots. A claim of a fresh key, the
//! common case, then misses the cache twice at a million keys: on the control group it reads,
//! and on the slot it then writes. Here the slot is the key, so the line that answers the
//! lookup also takes the insert. Fingerprints are keyed hashes already (see
//! [`MemoryIdemStore`](super::MemoryIdemStore)), so their first word serves as the hash.

use super::{Fingerprint, Row};

/// A slot whose fingerprint is this holds nothing. The store never hands it in: a key that
/// hashes to it is held as [`Table::REMAPPED`] (one key in 2^128).
const EMPTY: Fingerprint = Fingerprint([0, 0]);

type Slot = (Fingerprint, Row);

/// Open addressing with linear probing, at most half full, so a lookup reads one or two
/// neighbouring slots of 32 bytes. Removal shifts the run back (no tombstones), so a table
/// that sees keys come and go forever stays as short to probe as a fresh one.
#[derive(Debug, Default)]
pub(super) struct Table {
    /// All zeroes is an empty slot (no fingerprint, no reply), so a new table is zeroed
    /// memory the kernel maps in only as slots are written.
    slots: Box<[Slot]>,
    len: usize,
}

impl Table {
    pub(super) const REMAPPED: Fingerprint = Fingerprint([0, 1]);

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, fp: Fingerprint) -> usize {
        fp.0[0] as usize & self.mask()
    }

    /// Asks the CPU to load `fp`'s home slot without waiting for it: a hint, so it is
    /// harmless if the table grows before the slot is read.
    pub(super) fn prefetch(&self, fp: Fingerprint) {
        if self.slots.is_empty() {
            return;
        }
        let slot: *const Slot = &self.slots[self.home(fp)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing a program sees, and `slot` points into the table.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(slot.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// Where `fp` is (`Ok`), or the empty slot that ends its run (`Err`).
    fn find(&self, fp: Fingerprint) -> Result<usize, usize> {
        if self.slots.is_empty() {
            return Err(0);
        }
        let mut i = self.home(fp);
        loop {
            match self.slots[i].0 {
                f if f == fp => return Ok(i),
                EMPTY => return Err(i),
                _ => i = (i + 1) & self.mask(),
            }
        }
    }

    pub(super) fn get(&self, fp: Fingerprint) -> Option<&Row> {
        self.find(fp).ok().map(|i| &self.slots[i].1)
    }

    /// Stores `row` under `fp`; returns the row it replaces.
    pub(super) fn insert(&mut self, fp: Fingerprint, row: Row) -> Option<Row> {
        debug_assert!(fp != EMPTY);
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        match self.find(fp) {
            Ok(i) => Some(std::mem::replace(&mut self.slots[i].1, row)),
            Err(i) => {
                self.slots[i] = (fp, row);
                self.len += 1;
                None
            }
        }
    }

    /// Removes `fp` if `due` says so of its row.
    pub(super) fn remove_if(&mut self, fp: Fingerprint, due: impl Fn(&Row) -> bool) -> Option<Row> {
        let i = self.find(fp).ok().filter(|&i| due(&self.slots[i].1))?;
        let (_, row) = std::mem::take(&mut self.slots[i]);
        self.len -= 1;
        self.close_gap(i);
        Some(row)
    }

    /// Moves back each later slot of the run that a probe from its home would no longer
    /// reach past the emptied slot `gap`.
    fn close_gap(&mut self, mut gap: usize) {
        let mask = self.mask();
        let mut j = gap;
        loop {
            j = (j + 1) & mask;
            if self.slots[j].0 == EMPTY {
                return;
            }
            let home = self.home(self.slots[j].0);
            // Whether `home` lies cyclically in (gap, j]: then the slot is still reachable.
            let reachable = if gap <= j {
                gap < home && home <= j
            } else {
                gap < home || home <= j
            };
            if !reachable {
                self.slots.swap(gap, j);
                gap = j;
            }
        }
    }

    pub(super) fn with_capacity(keys: usize) -> Table {
        let mut t = Table::default();
        t.resize((keys * 2).next_power_of_two().max(16));
        t
    }

    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(16));
    }

    fn resize(&mut self, size: usize) {
        // SAFETY: all zeroes is a valid slot: a `[u64; 2]`, a `u64` and a `None` box.
        let fresh = unsafe { Box::<[Slot]>::new_zeroed_slice(size).assume_init() };
        let old = std::mem::replace(&mut self.slots, fresh);
        for (fp, row) in old.into_vec() {
            if fp != EMPTY {
                let i = self.find(fp).expect_err("keys are unique");
                self.slots[i] = (fp, row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(home: u64, tag: u64) -> Fingerprint {
        Fingerprint([home, tag])
    }

    #[test]
    fn keys_are_found_replaced_and_removed_across_growth() {
        let mut t = Table::default();
        for k in 1..=1000u64 {
            assert!(
                t.insert(
                    fp(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), k),
                    Row::pending(k)
                )
                .is_none()
            );
        }
        assert_eq!(t.len(), 1000);
        assert!(t.slots.len() >= 2000, "at most half full");
        for k in 1..=1000u64 {
            let key = fp(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), k);
            assert_eq!(t.get(key).map(Row::expires), Some(k));
        }
        let key = fp(7u64.wrapping_mul(0x9e37_79b9_7f4a_7c15), 7);
        let old = t.insert(key, Row::pending(70)).expect("replaced");
        assert_eq!((old.expires(), t.len()), (7, 1000));
        assert!(t.remove_if(key, |r| r.expires() == 7).is_none(), "not due");
        assert!(t.remove_if(key, |r| r.expires() == 70).is_some());
        assert!(t.get(key).is_none());
        assert_eq!(t.len(), 999);
    }

    /// Keys that share a home, and a run that wraps past the table's end: removing any one
    /// leaves every other reachable.
    #[test]
    fn removal_keeps_every_other_key_of_a_run_reachable() {
        for removed in 0..6 {
            let mut t = Table::default();
            t.grow(); // 16 slots
            let keys = [
                fp(14, 1),
                fp(14, 2),
                fp(15, 3),
                fp(0, 4),
                fp(14, 5),
                fp(1, 6),
            ];
            for (n, &k) in keys.iter().enumerate() {
                t.insert(k, Row::pending(n as u64));
            }
            assert_eq!(t.slots.len(), 16, "no growth in this test");
            t.remove_if(keys[removed], |_| true).expect("present");
            for (n, &k) in keys.iter().enumerate() {
                let found = t.get(k).map(Row::expires);
                assert_eq!(
                    found,
                    (n != removed).then_some(n as u64),
                    "removed {removed}, key {n}"
                );
            }
            assert_eq!(t.len(), 5);
        }
    }

    #[test]
    fn a_table_sized_for_its_keys_never_grows() {
        let mut t = Table::with_capacity(1000);
        let size = t.slots.len();
        for k in 1..=1000u64 {
            t.insert(
                fp(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), k),
                Row::pending(k),
            );
        }
        assert_eq!((t.slots.len(), size), (size, 2048));
    }

    #[test]
    fn a_slot_is_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }
}
