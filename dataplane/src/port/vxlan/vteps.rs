//! Which remote VTEP each MAC address behind the tunnel sits at, learned
//! from decapsulated frames: the port's own table, below the switch's FDB
//! (the FDB says "this port", this table says "this remote"), as the Linux
//! vxlan device keeps its own FDB below the bridge's.
//!
//! Entries age like the FDB's (the switch's `max_age`); a MAC not here (or
//! aged out) is sent to every remote, as broadcast is. The table is bounded:
//! when it is full, new addresses are not learned (their frames go to every
//! remote), so a flood of source addresses from one remote cannot grow it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One learned address: its remote (an index into the port's list) and
/// when a frame from it was last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    remote: u16,
    seen: Instant,
}

/// A published entry: the inner frames' VLAN tag (0: untagged), the MAC,
/// its remote VTEP, seconds since a frame from it was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub vlan: u16,
    pub mac: [u8; 6],
    pub remote: Ipv4Addr,
    pub age_secs: u64,
}

pub struct VtepTable {
    entries: HashMap<(u16, [u8; 6]), Entry>,
    max_age: Duration,
    max_entries: usize,
    /// The remotes' addresses, by index.
    remotes: Vec<Ipv4Addr>,
    /// A copy for whoever reports the table, refreshed by [`age`](Self::age).
    published: Arc<Mutex<Vec<Row>>>,
}

impl VtepTable {
    pub fn new(max_age: Duration, max_entries: usize, remotes: &[Ipv4Addr]) -> VtepTable {
        VtepTable {
            entries: HashMap::new(),
            max_age,
            max_entries,
            remotes: remotes.to_vec(),
            published: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Records that `mac` (in VLAN `vlan` of the inner frames, 0 untagged)
    /// sent a frame through `remote` at `now`. Multicast sources are not
    /// addresses of a station and are ignored.
    #[inline]
    pub fn learn(&mut self, vlan: u16, mac: [u8; 6], remote: u16, now: Instant) {
        if mac[0] & 1 != 0 {
            return;
        }
        let full = self.entries.len() >= self.max_entries;
        match self.entries.get_mut(&(vlan, mac)) {
            Some(e) => *e = Entry { remote, seen: now },
            None if !full => {
                self.entries
                    .insert((vlan, mac), Entry { remote, seen: now });
            }
            None => {}
        }
    }

    /// The remote `mac` was last seen at, unless that is older than the
    /// ageing time.
    #[inline]
    pub fn lookup(&self, vlan: u16, mac: [u8; 6], now: Instant) -> Option<u16> {
        let e = self.entries.get(&(vlan, mac))?;
        (now.saturating_duration_since(e.seen) < self.max_age).then_some(e.remote)
    }

    /// Forgets what aged out and publishes the rest.
    pub fn age(&mut self, now: Instant) {
        let max_age = self.max_age;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.seen) < max_age);
        let rows = self
            .entries
            .iter()
            .map(|(&(vlan, mac), e)| Row {
                vlan,
                mac,
                remote: self.remotes[e.remote as usize],
                age_secs: now.saturating_duration_since(e.seen).as_secs(),
            })
            .collect();
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = rows;
    }

    /// The last published copy of the table (for `show fdb`).
    pub fn published(&self) -> Arc<Mutex<Vec<Row>>> {
        self.published.clone()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const R0: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const R1: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);

    #[test]
    fn learns_moves_and_ages() {
        let t0 = Instant::now();
        let mut t = VtepTable::new(Duration::from_secs(10), 100, &[R0, R1]);
        assert_eq!(t.lookup(0, A, t0), None);
        t.learn(0, A, 1, t0);
        assert_eq!(t.lookup(0, A, t0), Some(1));
        assert_eq!(t.lookup(5, A, t0), None, "per VLAN");
        t.learn(0, A, 0, t0 + Duration::from_secs(1));
        assert_eq!(
            t.lookup(0, A, t0 + Duration::from_secs(1)),
            Some(0),
            "moved"
        );
        let late = t0 + Duration::from_secs(12);
        assert_eq!(t.lookup(0, A, late), None, "aged");
        t.age(late);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn multicast_is_not_learned_and_a_full_table_learns_nothing_new() {
        let now = Instant::now();
        let mut t = VtepTable::new(Duration::from_secs(10), 1, &[R0, R1]);
        t.learn(0, [0x01, 0, 0x5e, 0, 0, 1], 0, now);
        assert_eq!(t.len(), 0);
        t.learn(0, A, 0, now);
        t.learn(0, B, 1, now);
        assert_eq!((t.len(), t.lookup(0, B, now)), (1, None));
        t.learn(0, A, 1, now);
        assert_eq!(t.lookup(0, A, now), Some(1), "a known address still moves");
        t.age(now);
        let rows = t.published();
        let row = Row {
            vlan: 0,
            mac: A,
            remote: R1,
            age_secs: 0,
        };
        assert_eq!(rows.lock().unwrap().as_slice(), &[row]);
    }
}
