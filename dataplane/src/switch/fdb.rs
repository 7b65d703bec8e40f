//! The forwarding database: (VLAN, MAC) -> port, learned from source
//! addresses, aged out (a timer wheel: [`super::ageing`]), bounded in size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ageing::{AgeingWheel, Item};

/// Index of a port in the switch (its position in the port list).
pub type PortId = usize;

/// One learned address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// Where the address was last seen.
    pub port: PortId,
    /// When it was last seen.
    pub last_seen: Instant,
    /// Its item in the ageing wheel (an address learned again after it
    /// was removed has a new one; the old one is dropped).
    generation: u32,
}

/// What [`Fdb::learn`] did (counted by the switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new entry.
    New,
    /// Known on the same port: timestamp refreshed.
    Refreshed,
    /// Known on another port: the address moved.
    Moved { from: PortId },
    /// Not learned: the table is full (after evicting expired entries).
    TableFull,
    /// Not learned (nor moved): the port has as many addresses as its
    /// limit allows (port security: one port cannot fill the table).
    PortLimit,
    /// Not learned: the port learned as many new addresses this second as
    /// the learning rate allows.
    RateLimited,
    /// Not learned: a group (multicast/broadcast) source address is invalid.
    Ignored,
}

/// A change to the table, for mirrors of it (the in-kernel fast path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbChange {
    /// `mac` on `vlan` now lives on `port` (new or moved).
    Upsert {
        vlan: u16,
        mac: [u8; 6],
        port: PortId,
    },
    /// `mac` on `vlan` is forgotten (aged out, flushed, port down).
    Remove { vlan: u16, mac: [u8; 6] },
}

/// Learning table with ageing and a size limit.
#[derive(Debug)]
pub struct Fdb {
    entries: HashMap<(u16, [u8; 6]), FdbEntry>,
    max_entries: usize,
    max_age: Duration,
    /// When each entry is due for a look.
    wheel: AgeingWheel,
    /// The generation of the next entry filed in the wheel.
    next_generation: u32,
    /// Wheel items looked at so far (for tests and statistics).
    visits: u64,
    /// Scratch list of due items, reused.
    due: Vec<Item>,
    /// Entries per port, by port id.
    per_port: Vec<usize>,
    /// Most entries each port may have, by port id (`None`: no limit).
    port_limits: Vec<Option<usize>>,
    /// Most new addresses a port may add per second (`None`: no limit).
    learn_rate: Option<u32>,
    /// Per port: the start of its current one-second window and how many
    /// addresses it added in it.
    rate_windows: Vec<(Instant, u32)>,
    /// Changes since the last [`Fdb::take_changes`], when someone mirrors us.
    journal: Option<Vec<FdbChange>>,
}

impl Fdb {
    /// A table of at most `max_entries`, forgetting addresses unseen for `max_age`.
    pub fn new(max_entries: usize, max_age: Duration) -> Fdb {
        Fdb {
            entries: HashMap::with_capacity(max_entries.min(4096)),
            max_entries,
            max_age,
            wheel: AgeingWheel::new(max_age, Instant::now()),
            next_generation: 0,
            visits: 0,
            due: Vec::new(),
            per_port: Vec::new(),
            port_limits: Vec::new(),
            learn_rate: None,
            rate_windows: Vec::new(),
            journal: None,
        }
    }

    /// Starts recording changes; [`Fdb::take_changes`] must then be called
    /// regularly (the engine does, after every burst).
    pub fn record_changes(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The changes recorded since the last call.
    pub fn take_changes(&mut self) -> Vec<FdbChange> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// True if changes are waiting (cheap, for the per-burst check).
    pub fn has_changes(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| !j.is_empty())
    }

    fn record(&mut self, change: FdbChange) {
        if let Some(j) = self.journal.as_mut() {
            j.push(change);
        }
    }

    /// Marks `mac` on `vlan` as seen at `seen` if that is later than what
    /// the table knows (traffic the fast path forwarded without us).
    pub fn touch(&mut self, vlan: u16, mac: [u8; 6], seen: Instant) {
        if let Some(e) = self.entries.get_mut(&(vlan, mac)) {
            if seen > e.last_seen {
                e.last_seen = seen;
            }
        }
    }

    /// Sets the most addresses `port` may have learned at once (`None`: no
    /// limit). Entries it has already are kept.
    pub fn set_port_limit(&mut self, port: PortId, limit: Option<usize>) {
        if self.port_limits.len() <= port {
            self.port_limits.resize(port + 1, None);
        }
        self.port_limits[port] = limit;
    }

    /// Sets the most new addresses each port may add per second (`None`:
    /// no limit), so a flood of sources from one port cannot churn the
    /// table (and the kernel's mirror of it) at line rate.
    pub fn set_learn_rate(&mut self, rate: Option<u32>) {
        self.learn_rate = rate;
    }

    /// True if `port` may add one more address at `now`; counts it if so.
    /// Fixed one-second windows per port: O(1), and exact enough for a
    /// limit meant to stop floods, not to shape traffic.
    fn rate_allows(&mut self, port: PortId, now: Instant) -> bool {
        let Some(rate) = self.learn_rate else {
            return true;
        };
        if self.rate_windows.len() <= port {
            self.rate_windows.resize(port + 1, (now, 0));
        }
        let (start, count) = &mut self.rate_windows[port];
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            (*start, *count) = (now, 0);
        }
        if *count >= rate {
            return false;
        }
        *count += 1;
        true
    }

    /// Addresses learned on `port` now.
    pub fn port_entries(&self, port: PortId) -> usize {
        self.per_port.get(port).copied().unwrap_or(0)
    }

    /// True if `port` may not learn one more address.
    fn port_at_limit(&self, port: PortId) -> bool {
        self.port_limits
            .get(port)
            .copied()
            .flatten()
            .is_some_and(|limit| self.port_entries(port) >= limit)
    }

    fn count(&mut self, port: PortId, delta: isize) {
        if self.per_port.len() <= port {
            self.per_port.resize(port + 1, 0);
        }
        let n = &mut self.per_port[port];
        *n = n.saturating_add_signed(delta);
    }

    /// The ageing time.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Records that `mac` on `vlan` was seen on `port` at `now`.
    pub fn learn(&mut self, vlan: u16, mac: [u8; 6], port: PortId, now: Instant) -> Learned {
        if mac[0] & 1 == 1 {
            return Learned::Ignored;
        }
        if let Some(&FdbEntry { port: from, .. }) = self.entries.get(&(vlan, mac)) {
            if from != port && self.port_at_limit(port) {
                return Learned::PortLimit;
            }
            let e = self.entries.get_mut(&(vlan, mac)).expect("just found");
            e.last_seen = now;
            e.port = port;
            if from == port {
                return Learned::Refreshed;
            }
            self.count(from, -1);
            self.count(port, 1);
            self.record(FdbChange::Upsert { vlan, mac, port });
            return Learned::Moved { from };
        }
        if self.port_at_limit(port) {
            return Learned::PortLimit;
        }
        if self.entries.len() >= self.max_entries {
            self.expire(now);
            if self.entries.len() >= self.max_entries {
                return Learned::TableFull;
            }
        }
        if !self.rate_allows(port, now) {
            return Learned::RateLimited;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.entries.insert(
            (vlan, mac),
            FdbEntry {
                port,
                last_seen: now,
                generation,
            },
        );
        self.wheel
            .file(((vlan, mac), generation), now + self.max_age);
        self.count(port, 1);
        self.record(FdbChange::Upsert { vlan, mac, port });
        Learned::New
    }

    /// The port `mac` on `vlan` lives on, unless unknown or expired.
    pub fn lookup(&self, vlan: u16, mac: [u8; 6], now: Instant) -> Option<PortId> {
        let e = self.entries.get(&(vlan, mac))?;
        (now.saturating_duration_since(e.last_seen) < self.max_age).then_some(e.port)
    }

    /// Removes entries older than the ageing time; returns how many. Looks
    /// only at the entries whose due time has come (the ageing wheel): the
    /// others cost nothing, however many there are.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now, &mut due);
        self.visits += due.len() as u64;
        let mut removed = 0;
        for (key, generation) in due.drain(..) {
            let Some(e) = self.entries.get(&key) else {
                continue;
            };
            if e.generation != generation {
                // Removed and learned again since: the newer item stands.
                continue;
            }
            if now.saturating_duration_since(e.last_seen) >= self.max_age {
                let port = e.port;
                self.entries.remove(&key);
                self.count(port, -1);
                self.record(FdbChange::Remove {
                    vlan: key.0,
                    mac: key.1,
                });
                removed += 1;
            } else {
                // Seen since it was filed: due again a full age after that.
                let due_at = e.last_seen + self.max_age;
                self.wheel.file((key, generation), due_at);
            }
        }
        self.due = due;
        removed
    }

    /// Wheel items looked at so far (each entry is looked at about once
    /// per ageing time, whatever the table's fill).
    pub fn ageing_visits(&self) -> u64 {
        self.visits
    }

    /// Forgets everything learned on `port` (port removed or down).
    pub fn flush_port(&mut self, port: PortId) {
        self.remove_where(|e| e.port == port);
    }

    /// Forgets everything.
    pub fn flush(&mut self) {
        self.remove_where(|_| true);
    }

    fn remove_where(&mut self, gone: impl Fn(&FdbEntry) -> bool) -> usize {
        let mut removed = Vec::new();
        let per_port = &mut self.per_port;
        self.entries.retain(|k, e| {
            let drop = gone(e);
            if drop {
                removed.push(*k);
                if let Some(n) = per_port.get_mut(e.port) {
                    *n = n.saturating_sub(1);
                }
            }
            !drop
        });
        for (vlan, mac) in &removed {
            self.record(FdbChange::Remove {
                vlan: *vlan,
                mac: *mac,
            });
        }
        removed.len()
    }

    /// True when the table holds `max_entries` (expired ones included).
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries
    }

    /// Number of entries (expired ones included until [`Fdb::expire`] runs).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry as the change that would add it: what a new mirror (a
    /// PMD's view, the kernel's fast-path maps) starts from.
    pub fn as_changes(&self) -> Vec<FdbChange> {
        self.entries
            .iter()
            .map(|(&(vlan, mac), e)| FdbChange::Upsert {
                vlan,
                mac,
                port: e.port,
            })
            .collect()
    }

    /// All entries, sorted by VLAN then MAC (for `show fdb`).
    pub fn entries(&self) -> Vec<(u16, [u8; 6], FdbEntry)> {
        let mut v: Vec<_> = self.entries.iter().map(|(k, e)| (k.0, k.1, *e)).collect();
        v.sort_by_key(|(vlan, mac, _)| (*vlan, *mac));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn learn_lookup_refresh_move() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(10, Duration::from_secs(300));
        assert_eq!(fdb.lookup(1, A, t0), None);
        assert_eq!(fdb.learn(1, A, 3, t0), Learned::New);
        assert_eq!(fdb.lookup(1, A, t0), Some(3));
        assert_eq!(fdb.learn(1, A, 3, t0), Learned::Refreshed);
        assert_eq!(fdb.learn(1, A, 4, t0), Learned::Moved { from: 3 });
        assert_eq!(fdb.lookup(1, A, t0), Some(4));
    }

    #[test]
    fn vlans_are_separate_tables() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(10, Duration::from_secs(300));
        fdb.learn(1, A, 1, t0);
        assert_eq!(fdb.lookup(2, A, t0), None);
        fdb.learn(2, A, 2, t0);
        assert_eq!(fdb.lookup(1, A, t0), Some(1));
        assert_eq!(fdb.lookup(2, A, t0), Some(2));
    }

    #[test]
    fn entries_age_out() {
        let t0 = Instant::now();
        let age = Duration::from_secs(5);
        let mut fdb = Fdb::new(10, age);
        fdb.learn(1, A, 1, t0);
        assert_eq!(
            fdb.lookup(1, A, t0 + age - Duration::from_millis(1)),
            Some(1)
        );
        assert_eq!(fdb.lookup(1, A, t0 + age), None);
        assert_eq!(fdb.expire(t0 + age), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn full_table_evicts_only_expired_entries() {
        let t0 = Instant::now();
        let age = Duration::from_secs(5);
        let mut fdb = Fdb::new(1, age);
        fdb.learn(1, A, 1, t0);
        assert_eq!(fdb.learn(1, B, 1, t0), Learned::TableFull);
        assert_eq!(fdb.lookup(1, B, t0), None);
        assert_eq!(fdb.learn(1, B, 1, t0 + age), Learned::New);
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn a_full_table_under_a_mac_flood_is_not_scanned_per_frame() {
        let t0 = Instant::now();
        let age = Duration::from_secs(5);
        let mut fdb = Fdb::new(4, age);
        for i in 0..4u8 {
            assert_eq!(fdb.learn(1, [2, 0, 0, 0, 0, i], 1, t0), Learned::New);
        }
        // A flood of new sources while nothing can have aged out: each is
        // refused, and no entry is even looked at.
        for i in 0..10_000u32 {
            let mac = [2, 1, (i >> 16) as u8, (i >> 8) as u8, i as u8, 0];
            let now = t0 + Duration::from_millis(u64::from(i % 4000));
            assert_eq!(fdb.learn(1, mac, 2, now), Learned::TableFull);
        }
        assert_eq!(fdb.ageing_visits(), 0);
        // The periodic expiry costs nothing either until then.
        assert_eq!(fdb.expire(t0 + Duration::from_secs(4)), 0);
        assert_eq!(fdb.ageing_visits(), 0);
        // Once the first entries are old enough, a look at each of them
        // (and at nothing else) frees them and a new source is learned.
        assert_eq!(fdb.learn(1, B, 2, t0 + age), Learned::New);
        assert_eq!(fdb.ageing_visits(), 4);
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn each_entry_is_looked_at_about_once_per_ageing_time() {
        let t0 = Instant::now();
        let age = Duration::from_secs(10);
        let mut fdb = Fdb::new(10_000, age);
        for i in 0..1000u32 {
            fdb.learn(1, [2, 3, 0, (i >> 8) as u8, i as u8, 0], 1, t0);
        }
        // Every entry stays active (seen each second) for a minute, and
        // the slow path expires twice a second.
        for half in 1..=120u64 {
            let now = t0 + Duration::from_millis(500 * half);
            if half % 2 == 0 {
                for i in 0..1000u32 {
                    fdb.touch(1, [2, 3, 0, (i >> 8) as u8, i as u8, 0], now);
                }
            }
            assert_eq!(fdb.expire(now), 0);
        }
        // 60 s / 10 s ageing: about 6 looks per entry, not 120.
        assert!(fdb.ageing_visits() <= 7 * 1000, "{}", fdb.ageing_visits());
        assert_eq!(fdb.len(), 1000);
        // Then silence: all gone one ageing time later.
        assert_eq!(fdb.expire(t0 + Duration::from_secs(60) + age), 1000);
    }

    #[test]
    fn refreshed_entries_are_not_expired_by_a_stale_bound() {
        let t0 = Instant::now();
        let age = Duration::from_secs(5);
        let mut fdb = Fdb::new(2, age);
        fdb.learn(1, A, 1, t0);
        fdb.learn(1, B, 1, t0 + Duration::from_secs(1));
        assert_eq!(fdb.expire(t0 + Duration::from_secs(2)), 0);
        // A is seen again: the bound (t0 + 5 s) is now early, which only
        // costs a scan that finds nothing.
        fdb.learn(1, A, 1, t0 + Duration::from_secs(4));
        assert_eq!(fdb.expire(t0 + age), 0);
        assert_eq!(fdb.lookup(1, A, t0 + age), Some(1));
        // B ages out at t0 + 6 s, A at t0 + 9 s.
        assert_eq!(fdb.expire(t0 + Duration::from_secs(6)), 1);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(9)), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn a_port_at_its_limit_learns_and_takes_nothing_more() {
        let t0 = Instant::now();
        let age = Duration::from_secs(5);
        let mut fdb = Fdb::new(100, age);
        fdb.set_port_limit(1, Some(2));
        assert_eq!(fdb.learn(1, A, 1, t0), Learned::New);
        assert_eq!(fdb.learn(1, B, 1, t0), Learned::New);
        // A flood of sources on port 1: refused, counted, the table stays
        // open to the other ports.
        for i in 0..50u8 {
            assert_eq!(fdb.learn(1, [2, 9, 0, 0, 0, i], 1, t0), Learned::PortLimit);
        }
        assert_eq!(fdb.learn(1, [2, 8, 0, 0, 0, 1], 2, t0), Learned::New);
        // Known addresses still refresh; an address moving onto the full
        // port does not move.
        assert_eq!(fdb.learn(1, A, 1, t0), Learned::Refreshed);
        assert_eq!(fdb.learn(1, [2, 8, 0, 0, 0, 1], 1, t0), Learned::PortLimit);
        assert_eq!(fdb.lookup(1, [2, 8, 0, 0, 0, 1], t0), Some(2));
        assert_eq!((fdb.port_entries(1), fdb.port_entries(2)), (2, 1));
        // Moving away, ageing and flushing all give room back.
        assert!(matches!(fdb.learn(1, A, 2, t0), Learned::Moved { from: 1 }));
        assert_eq!(fdb.port_entries(1), 1);
        assert_eq!(fdb.learn(1, [2, 9, 0, 0, 0, 0], 1, t0), Learned::New);
        assert_eq!(fdb.expire(t0 + age), 4);
        assert_eq!((fdb.port_entries(1), fdb.port_entries(2)), (0, 0));
        fdb.learn(1, B, 1, t0 + age);
        fdb.flush_port(1);
        assert_eq!(fdb.port_entries(1), 0);
    }

    #[test]
    fn a_port_learns_at_most_its_rate_of_new_addresses_per_second() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(1000, Duration::from_secs(300));
        fdb.set_learn_rate(Some(5));
        let mac = |i: u8| [2, 7, 0, 0, 0, i];
        let learned = (0..20u8)
            .filter(|&i| fdb.learn(1, mac(i), 1, t0) == Learned::New)
            .count();
        assert_eq!(learned, 5, "5 per second on port 1");
        assert_eq!(fdb.learn(1, mac(50), 1, t0), Learned::RateLimited);
        // Other ports have their own budget; known addresses still refresh.
        assert_eq!(fdb.learn(1, mac(100), 2, t0), Learned::New);
        assert_eq!(fdb.learn(1, mac(0), 1, t0), Learned::Refreshed);
        // The next second brings a new budget.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(fdb.learn(1, mac(50), 1, t1), Learned::New);
        fdb.set_learn_rate(None);
        assert!((60..80u8).all(|i| fdb.learn(1, mac(i), 1, t1) == Learned::New));
    }

    #[test]
    fn group_sources_are_not_learned() {
        let mut fdb = Fdb::new(10, Duration::from_secs(5));
        assert_eq!(fdb.learn(1, [0xff; 6], 1, Instant::now()), Learned::Ignored);
        assert!(fdb.is_empty());
    }

    #[test]
    fn changes_are_journaled_only_when_recorded() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(10, Duration::from_secs(5));
        fdb.learn(1, A, 1, t0);
        assert!(fdb.take_changes().is_empty(), "not recording yet");
        fdb.record_changes();
        fdb.learn(1, B, 1, t0);
        fdb.learn(1, B, 1, t0); // refresh: no change
        fdb.learn(1, B, 2, t0); // move
        fdb.flush_port(1);
        assert_eq!(
            fdb.take_changes(),
            vec![
                FdbChange::Upsert {
                    vlan: 1,
                    mac: B,
                    port: 1
                },
                FdbChange::Upsert {
                    vlan: 1,
                    mac: B,
                    port: 2
                },
                FdbChange::Remove { vlan: 1, mac: A },
            ]
        );
        fdb.expire(t0 + Duration::from_secs(5));
        assert_eq!(
            fdb.take_changes(),
            vec![FdbChange::Remove { vlan: 1, mac: B }]
        );
        assert!(!fdb.has_changes());
    }

    #[test]
    fn touch_only_moves_forward() {
        let t0 = Instant::now();
        let age = Duration::from_secs(5);
        let mut fdb = Fdb::new(10, age);
        fdb.learn(1, A, 1, t0);
        fdb.touch(1, A, t0 + Duration::from_secs(4));
        fdb.touch(1, A, t0); // older: ignored
        assert_eq!(fdb.lookup(1, A, t0 + Duration::from_secs(8)), Some(1));
        assert_eq!(fdb.expire(t0 + Duration::from_secs(8)), 0);
    }

    #[test]
    fn flush_port_forgets_only_that_port() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(10, Duration::from_secs(5));
        fdb.learn(1, A, 1, t0);
        fdb.learn(1, B, 2, t0);
        fdb.flush_port(1);
        assert_eq!(fdb.lookup(1, A, t0), None);
        assert_eq!(fdb.lookup(1, B, t0), Some(2));
    }
}
