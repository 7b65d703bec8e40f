//! When FDB entries are due for a look: a timer wheel, so that ageing
//! costs O(1) per entry per ageing period, whatever the table's size, and
//! a full table never scans.
//!
//! Each learned address has one item in the wheel, in the slot of the tick
//! it could expire at (its last sighting plus the ageing time, as of when
//! it was filed). A sighting does not touch the wheel: when the item's
//! tick comes, the FDB looks at the entry's real last sighting and either
//! removes it or files it again at its new due time. So an entry is never
//! removed early, and at most one tick late. An item carries the entry's
//! generation: an address removed and learned again gets a new item, and
//! the old one is dropped when its tick comes.

use std::time::{Duration, Instant};

/// Most slots: with very long ageing times a tick is longer than a second.
const MAX_SLOTS: u64 = 4096;

/// The key of an FDB entry and the generation of its item.
pub(super) type Item = ((u16, [u8; 6]), u32);

/// A ring of slots, one per tick, one revolution as long as the ageing
/// time (plus two ticks, so a due time never wraps onto the hand).
#[derive(Debug)]
pub(super) struct AgeingWheel {
    epoch: Instant,
    tick: Duration,
    slots: Vec<Vec<Item>>,
    /// The next tick to look at.
    hand: u64,
}

impl AgeingWheel {
    /// A wheel for entries that age out after `max_age`.
    pub(super) fn new(max_age: Duration, epoch: Instant) -> AgeingWheel {
        let tick = Duration::from_secs(1).max(max_age / MAX_SLOTS as u32);
        let n = (max_age.as_nanos() / tick.as_nanos()) as u64 + 2;
        AgeingWheel {
            epoch,
            tick,
            slots: (0..n).map(|_| Vec::new()).collect(),
            hand: 0,
        }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.epoch).as_nanos() / self.tick.as_nanos()) as u64
    }

    /// Files `item` to be looked at once `due` has come (or at the next
    /// tick, if that is later).
    pub(super) fn file(&mut self, item: Item, due: Instant) {
        let at = self.tick_of(due).max(self.hand);
        let n = self.slots.len() as u64;
        self.slots[(at % n) as usize].push(item);
    }

    /// Takes the items of every tick up to `now` into `due` (the caller
    /// looks at each and files it again if it is still fresh).
    pub(super) fn advance(&mut self, now: Instant, due: &mut Vec<Item>) {
        let until = self.tick_of(now);
        if until < self.hand {
            return;
        }
        let n = self.slots.len() as u64;
        // After a long pause every slot is due: one pass over them.
        let steps = (until - self.hand + 1).min(n);
        for k in 0..steps {
            due.append(&mut self.slots[((self.hand + k) % n) as usize]);
        }
        self.hand = until + 1;
    }

    /// Items filed, live or stale (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: (u16, [u8; 6]) = (1, [2, 0, 0, 0, 0, 1]);

    #[test]
    fn items_come_due_at_their_tick_and_not_before() {
        let t0 = Instant::now();
        let mut w = AgeingWheel::new(Duration::from_secs(10), t0);
        w.file((K, 0), t0 + Duration::from_secs(5));
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_millis(4999), &mut due);
        assert!(due.is_empty());
        w.advance(t0 + Duration::from_secs(5), &mut due);
        assert_eq!(due, [(K, 0)]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_due_time_already_passed_is_looked_at_next_tick() {
        let t0 = Instant::now();
        let mut w = AgeingWheel::new(Duration::from_secs(10), t0);
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_secs(3), &mut due);
        w.file((K, 7), t0);
        w.advance(t0 + Duration::from_secs(3), &mut due);
        assert!(due.is_empty(), "the hand is past tick 3 already");
        w.advance(t0 + Duration::from_secs(4), &mut due);
        assert_eq!(due, [(K, 7)]);
    }

    #[test]
    fn a_long_pause_takes_every_item_once() {
        let t0 = Instant::now();
        let mut w = AgeingWheel::new(Duration::from_secs(10), t0);
        for s in 0..10 {
            w.file((K, s), t0 + Duration::from_secs(s as u64));
        }
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_secs(3600), &mut due);
        assert_eq!(due.len(), 10);
    }

    #[test]
    fn long_ageing_times_keep_the_wheel_small() {
        let w = AgeingWheel::new(Duration::from_secs(365 * 86_400), Instant::now());
        assert!(w.slots.len() as u64 <= MAX_SLOTS + 2);
    }
}
