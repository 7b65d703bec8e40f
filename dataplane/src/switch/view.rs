//! A PMD's own copy of the forwarding state, and the sightings it reports.
//!
//! The PMDs decide without taking any lock: each reads its [`SwitchView`]
//! (the port table, shared read-only behind an `Arc`, and a private copy of
//! the FDB). Only the slow path writes the FDB (the [`super::Switch`]): a
//! PMD reports a source address it does not know, or one that moved, as a
//! [`Sighting`]; the slow path learns it (limits, rate, counters) and the
//! changes reach every PMD's copy through its inbox, as they reach the
//! kernel's fast-path map. This is the split OVS makes between its PMDs and
//! its revalidators; docs/DESIGN-NOTES.md ("Who writes the FDB") says why.
//!
//! A PMD reports a known source only every tenth of the ageing time (at
//! most every 30 s, at least every second: the slow path needs it only for
//! ageing), and an unknown one at most once a second per (address, port)
//! while the slow path has not answered, so a flood of frames from one new
//! host costs one report, not one per frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane_common::wire::L2Header;

use super::fdb::{FdbChange, PortId};
use super::vlan::EgressTag;
use super::{Decision, DropReason, Forwarding, SwitchPort};

/// The ports and how frames are forwarded between them: written by the
/// control side (copy on write), read by every PMD.
#[derive(Debug, Clone)]
pub struct PortTable {
    /// By port id; absent slots are [`SwitchPort::absent`].
    pub ports: Vec<SwitchPort>,
    pub forwarding: Forwarding,
}

impl PortTable {
    /// True if `port` exists and is up.
    pub fn is_up(&self, port: PortId) -> bool {
        self.ports.get(port).is_some_and(|p| p.up)
    }

    /// The ports a frame of `vlan` from `in_port` is flooded to, with their tags.
    pub fn flood_targets(
        &self,
        in_port: PortId,
        vlan: u16,
    ) -> impl Iterator<Item = (PortId, EgressTag)> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter(move |(id, p)| *id != in_port && p.up)
            .filter_map(move |(id, p)| p.vlan.egress(vlan).map(|tag| (id, tag)))
    }
}

/// A source address seen on a port: the slow path learns or refreshes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub vlan: u16,
    pub mac: [u8; 6],
    pub port: PortId,
    pub at: Instant,
    /// The view knew nothing of the address (a full table cannot take it).
    pub new: bool,
}

/// One learned address in a PMD's copy.
#[derive(Debug, Clone, Copy)]
struct Known {
    port: PortId,
    /// The second (since the view's epoch) it was last reported in.
    reported: u64,
}

/// An unknown or moved source reported recently (see [`ASKED_SLOTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asked {
    key: u64,
    port: PortId,
    second: u64,
}

/// Slots of the direct-mapped memory of recent reports of unknown sources.
/// Two sources that share a slot may each be reported more than once a
/// second: harmless, the slow path refreshes.
const ASKED_SLOTS: usize = 256;

/// What one PMD reads to decide, without locks.
#[derive(Debug)]
pub struct SwitchView {
    ports: Arc<PortTable>,
    fdb: HashMap<(u16, [u8; 6]), Known>,
    asked: Box<[Option<Asked>; ASKED_SLOTS]>,
    epoch: Instant,
    /// Seconds between two reports of a known source.
    refresh_secs: u64,
}

impl SwitchView {
    /// A view of `ports` with nothing learned yet.
    pub fn new(ports: Arc<PortTable>) -> SwitchView {
        SwitchView {
            ports,
            fdb: HashMap::new(),
            asked: Box::new([None; ASKED_SLOTS]),
            epoch: Instant::now(),
            refresh_secs: 1,
        }
    }

    /// Reports known sources every `every` (whole seconds, at least 1)
    /// instead of every second.
    pub fn set_refresh(&mut self, every: Duration) {
        self.refresh_secs = every.as_secs().max(1);
    }

    /// The port table this view decides with.
    pub fn ports(&self) -> &PortTable {
        &self.ports
    }

    /// Takes a new port table. What was asked about the old ports is
    /// forgotten: a port re-added in a slot reports its sources at once.
    pub fn set_ports(&mut self, ports: Arc<PortTable>) {
        self.ports = ports;
        self.asked.fill(None);
    }

    /// Applies what the slow path changed in the FDB, in order.
    pub fn apply(&mut self, changes: &[FdbChange], now: Instant) {
        let second = self.second(now);
        for change in changes {
            match *change {
                FdbChange::Upsert { vlan, mac, port } => {
                    self.fdb.insert(
                        (vlan, mac),
                        Known {
                            port,
                            reported: second,
                        },
                    );
                }
                FdbChange::Remove { vlan, mac } => {
                    self.fdb.remove(&(vlan, mac));
                }
            }
        }
    }

    /// Addresses in this copy.
    pub fn len(&self) -> usize {
        self.fdb.len()
    }

    /// True when this copy knows no address.
    pub fn is_empty(&self) -> bool {
        self.fdb.is_empty()
    }

    /// The ports a frame of `vlan` from `in_port` is flooded to.
    pub fn flood_targets(
        &self,
        in_port: PortId,
        vlan: u16,
    ) -> impl Iterator<Item = (PortId, EgressTag)> + '_ {
        self.ports.flood_targets(in_port, vlan)
    }

    /// Decides what happens to a frame with `header` received on
    /// `in_port`, and says which source the slow path should learn from
    /// it, if any (nothing is learned here).
    pub fn decide(
        &mut self,
        in_port: PortId,
        header: &L2Header,
        now: Instant,
    ) -> (Decision, Option<Sighting>) {
        let ports = &*self.ports;
        if let Forwarding::CrossConnect { peer } = &ports.forwarding {
            let decision = match peer.get(in_port).copied().flatten() {
                Some(out) if ports.is_up(out) => Decision::Pass { out },
                _ => Decision::Drop(DropReason::NoEgress),
            };
            return (decision, None);
        }
        let Some(port) = ports.ports.get(in_port).filter(|p| p.is_present()) else {
            return (Decision::Drop(DropReason::NoIngress), None);
        };
        // An 802.1Q switch: 802.1ad S-tags and priority tags over another
        // tag (a VLAN hop) are refused on every port (docs/DESIGN-NOTES.md).
        if header.s_tag || header.is_priority_tag_over_a_tag() {
            return (Decision::Drop(DropReason::VlanPolicy), None);
        }
        let Some(vlan) = port.vlan.ingress(header.vlan) else {
            return (Decision::Drop(DropReason::VlanPolicy), None);
        };
        let decision = if header.is_multicast() {
            Decision::Flood { vlan }
        } else {
            match self.fdb.get(&(vlan, header.dst)).map(|k| k.port) {
                None => Decision::Flood { vlan },
                Some(out) if out == in_port => Decision::Drop(DropReason::SameSegment),
                Some(out) => match ports.ports.get(out).filter(|p| p.up) {
                    Some(p) => match p.vlan.egress(vlan) {
                        Some(tag) => Decision::Forward { out, vlan, tag },
                        None => Decision::Drop(DropReason::NoEgress),
                    },
                    None => Decision::Drop(DropReason::NoEgress),
                },
            }
        };
        (decision, self.note_source(vlan, header.src, in_port, now))
    }

    /// A sighting of `mac` on `port` if the slow path needs one: the
    /// address is unknown here or known elsewhere (and not reported this
    /// second), or known here and not reported this second (ageing).
    fn note_source(
        &mut self,
        vlan: u16,
        mac: [u8; 6],
        port: PortId,
        now: Instant,
    ) -> Option<Sighting> {
        if mac[0] & 1 == 1 {
            // A group address is never a source to learn.
            return None;
        }
        let second = self.second(now);
        let known = self.fdb.get_mut(&(vlan, mac));
        let new = known.is_none();
        match known {
            Some(known) if known.port == port => {
                if second.saturating_sub(known.reported) < self.refresh_secs {
                    return None;
                }
                known.reported = second;
            }
            _ => {
                let key = asked_key(vlan, mac);
                let asked = Asked { key, port, second };
                let slot = &mut self.asked[asked_slot(key)];
                if *slot == Some(asked) {
                    return None;
                }
                *slot = Some(asked);
            }
        }
        Some(Sighting {
            vlan,
            mac,
            port,
            at: now,
            new,
        })
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }
}

/// (VLAN, MAC) packed into one word.
fn asked_key(vlan: u16, mac: [u8; 6]) -> u64 {
    let [a, b, c, d, e, f] = mac;
    let [v0, v1] = vlan.to_le_bytes();
    u64::from_le_bytes([a, b, c, d, e, f, v0, v1])
}

/// A slot for `key` (Fibonacci hashing: the top bits of a multiplication
/// mix every byte of the MAC).
fn asked_slot(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ASKED_SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::VlanMode;
    use dataplane_common::wire::ETH_HLEN;
    use std::time::Duration;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn table(n: usize) -> Arc<PortTable> {
        Arc::new(PortTable {
            ports: (0..n)
                .map(|i| SwitchPort {
                    name: format!("p{i}"),
                    vlan: VlanMode::default(),
                    up: true,
                    max_macs: None,
                })
                .collect(),
            forwarding: Forwarding::Learning,
        })
    }

    fn hdr(src: [u8; 6], dst: [u8; 6]) -> L2Header {
        L2Header {
            s_tag: false,
            dst,
            src,
            vlan: None,
            ethertype: 0x0800,
            header_len: ETH_HLEN,
        }
    }

    /// `mac` learned on `port` as the slow path would publish it.
    fn learned(view: &mut SwitchView, mac: [u8; 6], port: PortId, at: Instant) {
        view.apply(&[FdbChange::Upsert { vlan: 0, mac, port }], at);
    }

    #[test]
    fn an_unknown_source_is_reported_once_a_second_until_learned() {
        let mut view = SwitchView::new(table(2));
        let t0 = view.epoch;
        let (_, first) = view.decide(0, &hdr(A, B), t0);
        assert_eq!(first.map(|s| (s.mac, s.port)), Some((A, 0)));
        // A burst of frames from the same new host: one report.
        for _ in 0..100 {
            assert_eq!(view.decide(0, &hdr(A, B), t0).1, None);
        }
        // Still unknown a second later (say its port is at its limit):
        // reported again, so the slow path can learn it once it may.
        let t1 = t0 + Duration::from_secs(1);
        assert!(view.decide(0, &hdr(A, B), t1).1.is_some());
        // From another port it is news at once (a move).
        assert!(view.decide(1, &hdr(A, B), t1).1.is_some());
    }

    #[test]
    fn a_known_source_is_reported_once_a_second_for_ageing() {
        let mut view = SwitchView::new(table(2));
        let t0 = view.epoch;
        learned(&mut view, A, 0, t0);
        assert_eq!(view.decide(0, &hdr(A, B), t0).1, None);
        let t1 = t0 + Duration::from_millis(1500);
        assert!(view.decide(0, &hdr(A, B), t1).1.is_some());
        assert_eq!(view.decide(0, &hdr(A, B), t1).1, None);
        // Seen on another port: a move, reported at once.
        assert!(view.decide(1, &hdr(A, B), t1).1.is_some());
    }

    #[test]
    fn a_known_source_is_reported_once_per_refresh_period() {
        let mut view = SwitchView::new(table(1));
        view.set_refresh(Duration::from_secs(30));
        let t0 = view.epoch;
        learned(&mut view, A, 0, t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(view.decide(0, &hdr(A, B), at(29)).1, None);
        let seen = view.decide(0, &hdr(A, B), at(30)).1.expect("due");
        assert!(!seen.new, "a refresh, not a new address");
        assert_eq!(view.decide(0, &hdr(A, B), at(59)).1, None);
        assert!(view.decide(0, &hdr(A, B), at(60)).1.is_some());
        assert!(view.decide(0, &hdr(B, A), at(60)).1.is_some_and(|s| s.new));
    }

    #[test]
    fn changes_apply_in_order_and_steer_unicast() {
        let mut view = SwitchView::new(table(3));
        let now = view.epoch;
        view.apply(
            &[
                FdbChange::Upsert {
                    vlan: 0,
                    mac: B,
                    port: 1,
                },
                FdbChange::Upsert {
                    vlan: 0,
                    mac: B,
                    port: 2,
                },
            ],
            now,
        );
        assert!(matches!(
            view.decide(0, &hdr(A, B), now).0,
            Decision::Forward { out: 2, .. }
        ));
        view.apply(&[FdbChange::Remove { vlan: 0, mac: B }], now);
        assert_eq!(
            view.decide(0, &hdr(A, B), now).0,
            Decision::Flood { vlan: 0 }
        );
        assert!(view.is_empty());
    }

    #[test]
    fn a_group_source_is_never_reported() {
        let mut view = SwitchView::new(table(2));
        let mut group = A;
        group[0] |= 1;
        assert_eq!(view.decide(0, &hdr(group, B), view.epoch).1, None);
    }

    #[test]
    fn asked_slots_spread_neighbouring_addresses() {
        let slots: std::collections::HashSet<usize> = (0..=255u8)
            .map(|i| asked_slot(asked_key(0, [2, 0, 0, 0, 0, i])))
            .collect();
        // Sequential MACs (a generator's, a flood's) must not pile up.
        assert!(slots.len() > 128, "only {} slots used", slots.len());
    }
}
