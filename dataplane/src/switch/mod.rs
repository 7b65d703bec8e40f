//! The switching decision: which ports a frame leaves on, with which tag.
//!
//! Pure logic over parsed headers, no I/O, in two halves: a PMD decides
//! with its [`SwitchView`] (read-only, no lock) and executes the
//! [`Decision`]; the slow path owns the [`Switch`] (the ports, the FDB and
//! its rules: limits, rates, ageing) and learns from the PMDs'
//! [`Sighting`]s. The FDB's journal carries every change to the views.
//! Learning, flooding and VLAN rules stay testable without root.

mod ageing;
pub mod fdb;
pub mod view;
pub mod vlan;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use fdb::{Fdb, FdbChange, Learned, PortId};
pub use view::{PortTable, Sighting, SwitchView};
pub use vlan::{EgressTag, VlanMode, VlanSet};

/// How frames are forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarding {
    /// MAC learning switch with flooding, per VLAN.
    Learning,
    /// Fixed pairs: everything from port `i` goes to `peer[i]` unchanged,
    /// like testpmd io-fwd (for benchmarks).
    CrossConnect {
        /// The peer of each port (by index), if it has one.
        peer: Vec<Option<PortId>>,
    },
}

/// Why the switch dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The port does not accept the frame's VLAN (or tag).
    VlanPolicy,
    /// The destination was learned on the port the frame came from.
    SameSegment,
    /// Cross-connect port without a peer, or the egress port is down.
    NoEgress,
    /// The frame came from a slot that holds no port: one being added
    /// (its PMD may poll it a moment before the switch knows it) or
    /// removed. Nothing is learned from it.
    NoIngress,
}

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Drop and count.
    Drop(DropReason),
    /// Send on one port with this tag.
    Forward {
        out: PortId,
        vlan: u16,
        tag: EgressTag,
    },
    /// Send on every member port of `vlan` except the ingress port
    /// (see [`Switch::flood_targets`]).
    Flood { vlan: u16 },
    /// Cross-connect: send unchanged on `out`.
    Pass { out: PortId },
}

/// Per-port switch settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchPort {
    /// Port name (for logs and `show`).
    pub name: String,
    /// VLAN membership.
    pub vlan: VlanMode,
    /// A port that is down is neither a flood target nor a unicast egress.
    pub up: bool,
    /// Most addresses it may have in the FDB at once (`None`: no limit).
    pub max_macs: Option<usize>,
}

impl SwitchPort {
    /// An empty slot: never a target, never learned on.
    pub fn absent() -> SwitchPort {
        SwitchPort {
            name: String::new(),
            vlan: VlanMode::default(),
            up: false,
            max_macs: None,
        }
    }

    /// True if the slot holds a port.
    pub fn is_present(&self) -> bool {
        !self.name.is_empty()
    }
}

/// FDB limits.
#[derive(Debug, Clone, Copy)]
pub struct FdbConfig {
    /// Most entries kept.
    pub max_entries: usize,
    /// Ageing time.
    pub max_age: Duration,
    /// Most new addresses one port may add per second (`None`: no limit).
    pub learn_rate: Option<u32>,
}

impl Default for FdbConfig {
    /// Linux bridge defaults: 300 s ageing; a limit that keeps memory small.
    fn default() -> Self {
        FdbConfig {
            max_entries: 8192,
            max_age: Duration::from_secs(300),
            learn_rate: None,
        }
    }
}

/// Counters the switch keeps about learning (in `stats --json` and the
/// metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LearningStats {
    pub learned: u64,
    pub moved: u64,
    /// Sources not learned because the table was full (with those the
    /// PMDs did not report while it was: see `datapath::slow_path`).
    pub table_full: u64,
    /// Sources not learned because their port was at its `max_macs`.
    pub port_limit: u64,
    /// Sources not learned because their port exceeded `fdb.learn_rate`.
    pub rate_limited: u64,
    /// Sightings a PMD could not hand to the slow path (its queue was
    /// full, as under a MAC flood): learned on a later frame, or not.
    pub queue_full: u64,
}

/// The switch as the slow path owns it: ports, FDB and forwarding mode.
/// Every FDB change is journaled ([`Fdb::take_changes`]) for the mirrors:
/// the PMDs' views and the fast path.
#[derive(Debug)]
pub struct Switch {
    /// Copied on write: the PMDs' views hold the previous table until
    /// they take the new one.
    table: Arc<PortTable>,
    fdb: Fdb,
    learning: LearningStats,
}

impl Switch {
    /// A switch over `ports` (their indices are the [`PortId`]s).
    pub fn new(ports: Vec<SwitchPort>, forwarding: Forwarding, fdb: FdbConfig) -> Switch {
        let learn_rate = fdb.learn_rate;
        let mut fdb = Fdb::new(fdb.max_entries, fdb.max_age);
        fdb.set_learn_rate(learn_rate);
        fdb.record_changes();
        for (id, p) in ports.iter().enumerate() {
            fdb.set_port_limit(id, p.max_macs);
        }
        Switch {
            table: Arc::new(PortTable { ports, forwarding }),
            fdb,
            learning: LearningStats::default(),
        }
    }

    /// The ports, by id.
    pub fn ports(&self) -> &[SwitchPort] {
        &self.table.ports
    }

    /// The port table as the PMDs read it (a new `Arc` after each change).
    pub fn port_table(&self) -> &Arc<PortTable> {
        &self.table
    }

    /// A view for a PMD: the current ports and every learned address.
    pub fn view(&self) -> SwitchView {
        let mut view = SwitchView::new(self.table.clone());
        // Ageing needs a sighting now and then, not every second.
        view.set_refresh(
            (self.fdb.max_age() / 10).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        );
        view.apply(&self.fdb.as_changes(), Instant::now());
        view
    }

    /// Puts `port` in slot `id` (a port added at runtime); the slot must be
    /// free. Slots beyond the current table are created absent.
    pub fn add_port(&mut self, id: PortId, port: SwitchPort) {
        let ports = &mut Arc::make_mut(&mut self.table).ports;
        if ports.len() <= id {
            ports.resize_with(id + 1, SwitchPort::absent);
        }
        self.fdb.set_port_limit(id, port.max_macs);
        ports[id] = port;
    }

    /// Empties slot `id`: the port is no longer a flood target or egress
    /// and its addresses are forgotten (recorded in the FDB journal, so
    /// the fast path forgets them too).
    pub fn remove_port(&mut self, id: PortId) {
        if id >= self.table.ports.len() {
            return;
        }
        if let Some(p) = Arc::make_mut(&mut self.table).ports.get_mut(id) {
            *p = SwitchPort::absent();
            self.fdb.flush_port(id);
            self.fdb.set_port_limit(id, None);
        }
    }

    /// Forgets what was learned on one port; returns how many entries.
    pub fn flush_port(&mut self, id: PortId) -> usize {
        let before = self.fdb.len();
        self.fdb.flush_port(id);
        before - self.fdb.len()
    }

    /// Marks a port up or down; a port going down forgets its addresses.
    pub fn set_port_up(&mut self, port: PortId, up: bool) {
        if self.table.ports.get(port).is_none_or(|p| p.up == up) {
            return;
        }
        if let Some(p) = Arc::make_mut(&mut self.table).ports.get_mut(port) {
            p.up = up;
            if !up {
                self.fdb.flush_port(port);
            }
        }
    }

    /// True if `port` exists and is up.
    pub fn is_up(&self, port: PortId) -> bool {
        self.table.is_up(port)
    }

    /// The learning table.
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Forgets every learned address.
    pub fn flush_fdb(&mut self) {
        self.fdb.flush();
    }

    /// The learning table, for mirrors (journal, fast-path refresh).
    pub fn fdb_mut(&mut self) -> &mut Fdb {
        &mut self.fdb
    }

    /// True when the switch learns (not cross-connect).
    pub fn is_learning(&self) -> bool {
        self.table.forwarding == Forwarding::Learning
    }

    /// Learning counters.
    pub fn learning_stats(&self) -> LearningStats {
        self.learning
    }

    /// Drops expired FDB entries (call now and then, not per frame).
    pub fn expire(&mut self, now: Instant) -> usize {
        self.fdb.expire(now)
    }

    /// True when the FDB holds as many addresses as it may: a new one is
    /// learned only after another expires.
    pub fn fdb_is_full(&self) -> bool {
        self.fdb.is_full()
    }

    /// Learns (or refreshes) what a PMD saw; counts the outcome.
    pub fn learn(&mut self, seen: &Sighting) -> Learned {
        if !self
            .table
            .ports
            .get(seen.port)
            .is_some_and(|p| p.is_present())
        {
            // Removed since the PMD saw it: nothing to learn on.
            return Learned::Ignored;
        }
        let learned = self.fdb.learn(seen.vlan, seen.mac, seen.port, seen.at);
        match learned {
            Learned::New => self.learning.learned += 1,
            Learned::Moved { .. } => self.learning.moved += 1,
            Learned::TableFull => self.learning.table_full += 1,
            Learned::PortLimit => self.learning.port_limit += 1,
            Learned::RateLimited => self.learning.rate_limited += 1,
            Learned::Refreshed | Learned::Ignored => {}
        }
        learned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::wire::{L2Header, ETH_HLEN};

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
    const BCAST: [u8; 6] = [0xff; 6];

    fn port(name: &str, vlan: VlanMode) -> SwitchPort {
        SwitchPort {
            name: name.into(),
            vlan,
            up: true,
            max_macs: None,
        }
    }

    fn hdr(src: [u8; 6], dst: [u8; 6], vlan: Option<u16>) -> L2Header {
        L2Header {
            s_tag: false,
            dst,
            src,
            vlan,
            ethertype: 0x0800,
            header_len: ETH_HLEN,
        }
    }

    /// A switch and one PMD's view of it, kept in step as the daemon does:
    /// the view decides, the switch learns what it reports, and the
    /// journal and port table go back to the view.
    struct Both {
        switch: Switch,
        view: SwitchView,
        /// The port table the view has.
        published: Arc<PortTable>,
    }

    impl Both {
        fn new(ports: Vec<SwitchPort>, forwarding: Forwarding, fdb: FdbConfig) -> Both {
            let switch = Switch::new(ports, forwarding, fdb);
            let view = switch.view();
            let published = switch.port_table().clone();
            Both {
                switch,
                view,
                published,
            }
        }

        fn sync(&mut self, now: Instant) {
            if !Arc::ptr_eq(self.switch.port_table(), &self.published) {
                self.published = self.switch.port_table().clone();
                self.view.set_ports(self.published.clone());
            }
            let changes = self.switch.fdb_mut().take_changes();
            self.view.apply(&changes, now);
        }

        fn decide(&mut self, in_port: PortId, header: &L2Header, now: Instant) -> Decision {
            self.sync(now);
            let (decision, seen) = self.view.decide(in_port, header, now);
            if let Some(seen) = seen {
                self.switch.learn(&seen);
            }
            self.sync(now);
            decision
        }

        fn flood_targets(&self, in_port: PortId, vlan: u16) -> Vec<(PortId, EgressTag)> {
            self.view.flood_targets(in_port, vlan).collect()
        }
    }

    impl std::ops::Deref for Both {
        type Target = Switch;
        fn deref(&self) -> &Switch {
            &self.switch
        }
    }

    impl std::ops::DerefMut for Both {
        fn deref_mut(&mut self) -> &mut Switch {
            &mut self.switch
        }
    }

    fn three_ports() -> Both {
        Both::new(
            vec![
                port("p0", VlanMode::default()),
                port("p1", VlanMode::default()),
                port("p2", VlanMode::default()),
            ],
            Forwarding::Learning,
            FdbConfig::default(),
        )
    }

    #[test]
    fn no_vlan_hop_through_a_priority_tag_and_no_s_tags() {
        let mut sw = Both::new(
            vec![
                port("access10", VlanMode::Access(10)),
                port(
                    "trunk",
                    VlanMode::Trunk {
                        allowed: Some(VlanSet::new([10, 20])),
                        native: 10,
                    },
                ),
            ],
            Forwarding::Learning,
            FdbConfig::default(),
        );
        let now = Instant::now();
        // [8100 VID 0][8100 VID 20] from the access port: once the outer
        // tag is popped toward the trunk's native VLAN it would be VLAN 20.
        let mut hop = hdr(A, BCAST, Some(0));
        hop.ethertype = dataplane_common::wire::ETH_P_8021Q;
        assert_eq!(
            sw.decide(0, &hop, now),
            Decision::Drop(DropReason::VlanPolicy)
        );
        // A priority tag over IP is a plain untagged frame with a priority.
        let prio = hdr(A, BCAST, Some(0));
        assert_eq!(sw.decide(0, &prio, now), Decision::Flood { vlan: 10 });
        // An 802.1ad S-tag is not one of this switch's VLANs, on any port.
        let mut s_tagged = hdr(B, BCAST, Some(20));
        s_tagged.s_tag = true;
        assert_eq!(
            sw.decide(1, &s_tagged, now),
            Decision::Drop(DropReason::VlanPolicy)
        );
    }

    #[test]
    fn a_frame_from_a_slot_without_a_port_is_dropped_not_learned() {
        // A port being added is polled by its PMD a moment before the
        // switch knows it; a removed one may still deliver a frame.
        let mut sw = three_ports();
        let now = Instant::now();
        for in_port in [3, 63, 1000] {
            assert_eq!(
                sw.decide(in_port, &hdr(A, B, None), now),
                Decision::Drop(DropReason::NoIngress)
            );
        }
        sw.remove_port(2);
        assert_eq!(
            sw.decide(2, &hdr(B, A, None), now),
            Decision::Drop(DropReason::NoIngress)
        );
        assert_eq!(sw.fdb().len(), 0, "nothing learned from them");
    }

    #[test]
    fn a_port_at_its_mac_limit_still_forwards_but_learns_no_more() {
        let mut limited = port("p0", VlanMode::default());
        limited.max_macs = Some(1);
        let mut sw = Both::new(
            vec![limited, port("p1", VlanMode::default())],
            Forwarding::Learning,
            FdbConfig::default(),
        );
        let now = Instant::now();
        sw.decide(0, &hdr(A, B, None), now);
        // A second source on p0 is forwarded (flooded) but not learned.
        assert_eq!(
            sw.decide(0, &hdr(C, B, None), now),
            Decision::Flood { vlan: 0 }
        );
        let stats = sw.learning_stats();
        assert_eq!((stats.learned, stats.port_limit), (1, 1));
        // So a reply to it floods, while A is known.
        assert_eq!(
            sw.decide(1, &hdr(B, C, None), now),
            Decision::Flood { vlan: 0 }
        );
        assert!(matches!(
            sw.decide(1, &hdr(B, A, None), now),
            Decision::Forward { out: 0, .. }
        ));
        // A port added in its place later has its own limit (none here).
        sw.remove_port(0);
        sw.add_port(0, port("p0", VlanMode::default()));
        sw.decide(0, &hdr(A, B, None), now);
        sw.decide(0, &hdr(C, B, None), now);
        assert_eq!(sw.learning_stats().port_limit, 1);
    }

    #[test]
    fn unknown_floods_then_learned_goes_to_one_port() {
        let mut sw = three_ports();
        let now = Instant::now();
        // A (on p0) -> B: unknown, flooded to p1 and p2.
        assert_eq!(
            sw.decide(0, &hdr(A, B, None), now),
            Decision::Flood { vlan: 0 }
        );
        let targets: Vec<_> = sw.flood_targets(0, 0).into_iter().map(|(p, _)| p).collect();
        assert_eq!(targets, vec![1, 2]);
        // B answers from p1: A is known on p0.
        assert_eq!(
            sw.decide(1, &hdr(B, A, None), now),
            Decision::Forward {
                out: 0,
                vlan: 0,
                tag: EgressTag::Untagged
            }
        );
        // Now A -> B goes to p1 only.
        assert!(matches!(
            sw.decide(0, &hdr(A, B, None), now),
            Decision::Forward { out: 1, .. }
        ));
        assert_eq!(sw.learning_stats().learned, 2);
    }

    #[test]
    fn broadcast_always_floods() {
        let mut sw = three_ports();
        let now = Instant::now();
        sw.decide(1, &hdr(B, A, None), now);
        assert_eq!(
            sw.decide(0, &hdr(A, BCAST, None), now),
            Decision::Flood { vlan: 0 }
        );
    }

    #[test]
    fn mac_move_updates_the_port() {
        let mut sw = three_ports();
        let now = Instant::now();
        sw.decide(1, &hdr(B, A, None), now);
        sw.decide(2, &hdr(B, A, None), now);
        assert!(matches!(
            sw.decide(0, &hdr(A, B, None), now),
            Decision::Forward { out: 2, .. }
        ));
        assert_eq!(sw.learning_stats().moved, 1);
    }

    #[test]
    fn destination_on_ingress_port_is_dropped() {
        let mut sw = three_ports();
        let now = Instant::now();
        sw.decide(0, &hdr(B, A, None), now);
        assert_eq!(
            sw.decide(0, &hdr(A, B, None), now),
            Decision::Drop(DropReason::SameSegment)
        );
    }

    #[test]
    fn vlans_isolate_and_tags_follow_port_modes() {
        let mut sw = Both::new(
            vec![
                port("access10", VlanMode::Access(10)),
                port("access20", VlanMode::Access(20)),
                port(
                    "trunk",
                    VlanMode::Trunk {
                        allowed: Some(VlanSet::new([10, 20])),
                        native: 1,
                    },
                ),
                port("access10b", VlanMode::Access(10)),
            ],
            Forwarding::Learning,
            FdbConfig::default(),
        );
        let now = Instant::now();
        assert_eq!(
            sw.decide(0, &hdr(A, BCAST, None), now),
            Decision::Flood { vlan: 10 }
        );
        let targets = sw.flood_targets(0, 10);
        assert_eq!(
            targets,
            vec![(2, EgressTag::Tagged(10)), (3, EgressTag::Untagged)]
        );
        // Tagged frame on an access port: refused.
        assert_eq!(
            sw.decide(0, &hdr(A, B, Some(10)), now),
            Decision::Drop(DropReason::VlanPolicy)
        );
        // VLAN 30 is not allowed on the trunk.
        assert_eq!(
            sw.decide(2, &hdr(B, A, Some(30)), now),
            Decision::Drop(DropReason::VlanPolicy)
        );
        // A learned in VLAN 10 is unknown in VLAN 20.
        assert_eq!(
            sw.decide(1, &hdr(B, A, None), now),
            Decision::Flood { vlan: 20 }
        );
    }

    #[test]
    fn down_ports_are_skipped_and_forgotten() {
        let mut sw = three_ports();
        let now = Instant::now();
        sw.decide(1, &hdr(B, A, None), now);
        sw.set_port_up(1, false);
        assert_eq!(
            sw.decide(0, &hdr(A, B, None), now),
            Decision::Flood { vlan: 0 }
        );
        let targets: Vec<_> = sw.flood_targets(0, 0).into_iter().map(|(p, _)| p).collect();
        assert_eq!(targets, vec![2]);
    }

    #[test]
    fn cross_connect_ignores_addresses() {
        let mut sw = Both::new(
            vec![
                port("a", VlanMode::default()),
                port("b", VlanMode::default()),
            ],
            Forwarding::CrossConnect {
                peer: vec![Some(1), Some(0)],
            },
            FdbConfig::default(),
        );
        let now = Instant::now();
        assert_eq!(
            sw.decide(0, &hdr(A, B, None), now),
            Decision::Pass { out: 1 }
        );
        assert_eq!(
            sw.decide(1, &hdr(B, BCAST, None), now),
            Decision::Pass { out: 0 }
        );
        assert!(sw.fdb().is_empty());
    }
}
