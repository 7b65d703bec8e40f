//! The forwarding database: (VLAN, MAC) -> port, learned from source
//! addresses, aged out, bounded in size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Index of a port in the switch (its position in the port list).
pub type PortId = usize;

/// One learned address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// Where the address was last seen.
    pub port: PortId,
    /// When it was last seen.
    pub last_seen: Instant,
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
    /// Not learned: a group (multicast/broadcast) source address is invalid.
    Ignored,
}

/// Learning table with ageing and a size limit.
#[derive(Debug)]
pub struct Fdb {
    entries: HashMap<(u16, [u8; 6]), FdbEntry>,
    max_entries: usize,
    max_age: Duration,
}

impl Fdb {
    /// A table of at most `max_entries`, forgetting addresses unseen for `max_age`.
    pub fn new(max_entries: usize, max_age: Duration) -> Fdb {
        Fdb {
            entries: HashMap::with_capacity(max_entries.min(4096)),
            max_entries,
            max_age,
        }
    }

    /// Records that `mac` on `vlan` was seen on `port` at `now`.
    pub fn learn(&mut self, vlan: u16, mac: [u8; 6], port: PortId, now: Instant) -> Learned {
        if mac[0] & 1 == 1 {
            return Learned::Ignored;
        }
        if let Some(e) = self.entries.get_mut(&(vlan, mac)) {
            let from = e.port;
            e.last_seen = now;
            e.port = port;
            return if from == port {
                Learned::Refreshed
            } else {
                Learned::Moved { from }
            };
        }
        if self.entries.len() >= self.max_entries {
            self.expire(now);
            if self.entries.len() >= self.max_entries {
                return Learned::TableFull;
            }
        }
        self.entries.insert(
            (vlan, mac),
            FdbEntry {
                port,
                last_seen: now,
            },
        );
        Learned::New
    }

    /// The port `mac` on `vlan` lives on, unless unknown or expired.
    pub fn lookup(&self, vlan: u16, mac: [u8; 6], now: Instant) -> Option<PortId> {
        let e = self.entries.get(&(vlan, mac))?;
        (now.saturating_duration_since(e.last_seen) < self.max_age).then_some(e.port)
    }

    /// Removes entries older than the ageing time; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let max_age = self.max_age;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < max_age);
        before - self.entries.len()
    }

    /// Forgets everything learned on `port` (port removed or down).
    pub fn flush_port(&mut self, port: PortId) {
        self.entries.retain(|_, e| e.port != port);
    }

    /// Forgets everything.
    pub fn flush(&mut self) {
        self.entries.clear();
    }

    /// Number of entries (expired ones included until [`Fdb::expire`] runs).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
    fn group_sources_are_not_learned() {
        let mut fdb = Fdb::new(10, Duration::from_secs(5));
        assert_eq!(fdb.learn(1, [0xff; 6], 1, Instant::now()), Learned::Ignored);
        assert!(fdb.is_empty());
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
