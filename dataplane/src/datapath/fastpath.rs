//! The in-kernel fast path of a running switch.
//!
//! The userspace switch stays the one that learns and decides; this module
//! mirrors what it learned into each port's `steer` maps (`FDB`: address ->
//! port, `PORTS`: port -> device), so that `steer` can redirect learned
//! unicast between XDP-capable ports straight to the egress device
//! (see `dataplane_common::fastpath::decide` for exactly when).
//!
//! Consistency rules:
//! - an entry is installed only while its port can take redirects and sends
//!   that VLAN untagged; every change of the userspace FDB (learn, move,
//!   ageing, flush) is applied to every port's map after the burst that
//!   caused it;
//! - the kernel counts a hit on the *source* entry of each frame it
//!   fast-forwards; userspace ageing treats a changed count as "seen"
//!   before it would expire an entry;
//! - a veth drops XDP-redirected frames, silently, unless its peer runs XDP
//!   or has GRO on, and a container's interface at its defaults has
//!   neither: each egress is probed with one frame (its `xdp_xmit` counter
//!   must grow). One that fails takes the tc hand-off instead: `steer`
//!   passes the frame to the kernel with a note in its metadata and the tc
//!   program `deliver` redirects the skb (into the veth's other end when
//!   that is in another namespace). While XDP redirects are used, the
//!   frames redirected are compared with what the egress devices sent;
//! - frames whose checksum the sender left to the device take the tc
//!   hand-off whatever the egress (decided per frame by `steer`): only the
//!   skb knows the checksum is to be finished;
//! - a tunnel port (VXLAN) takes part through its underlay's `steer`: every
//!   map learns its parameters (`TUNNELS`), and an address behind it
//!   carries its remote VTEP and the next hop toward it, from the port's
//!   own table and next-hop thread, refreshed twice a second. Frames to
//!   it are redirected (encapsulated) only while both are known; frames
//!   from it are decapsulated only when they come from that very remote.

use std::collections::HashMap;
use std::time::Instant;

use dataplane_common::counters::Outcome;
use dataplane_common::fastpath::{
    vlan_mode, Tunnel, TunnelPort, FDB_REDIRECT, FDB_TAGGED, FDB_TC_ONLY, FDB_TUNNEL, FDB_VETH_PEER,
};
use thiserror::Error;

use crate::port::vxlan::TunnelView;
use crate::steer::pins::PinRoot;
use crate::steer::{self, Attachment};
use crate::switch::{EgressTag, FdbChange, Switch, VlanMode};
use crate::sys::netdev;
use crate::traffic::forward::Forward;

#[derive(Debug, Error)]
pub enum Error {
    #[error("fast path on {ifname}: {source}")]
    Steer {
        ifname: String,
        source: Box<steer::Error>,
    },
}

/// One switch port that runs `steer`.
struct FastPort {
    ifname: String,
    attachment: Attachment,
    /// XDP redirects to this port are accepted (probe passed, none lost
    /// since); else frames to it take the tc hand-off.
    egress_ok: bool,
    /// A veth with its other end in another namespace: the tc hand-off
    /// delivers into that end.
    veth_peer: bool,
    /// A tunnel port: `ifname` is its underlay.
    tunnel: Option<TunnelView>,
}

impl FastPort {
    /// `FDB` flags of entries on this port, besides redirect and tag.
    fn delivery_flags(&self) -> u32 {
        let tc_only = if self.egress_ok { 0 } else { FDB_TC_ONLY };
        // Straight into the other end of a veth skips that end's XDP: never
        // for a tunnel's underlay, whose other end may be a switch whose
        // XDP must see the tunnelled frame.
        let peer = if self.veth_peer && self.tunnel.is_none() {
            FDB_VETH_PEER
        } else {
            0
        };
        tc_only | peer
    }
}

/// The fast path of one switch, by switch port id.
pub struct FastPath {
    ports: Vec<Option<FastPort>>,
    /// Hit counts of FDB entries when ageing last looked at them.
    hits_seen: HashMap<(u16, [u8; 6]), u64>,
    /// Frames redirected by all ports, and sent by all egress devices, when
    /// last compared.
    last_redirected: u64,
    last_sent: u64,
    /// Where each address behind a tunnel was last installed to go. Kept
    /// while the address stays in the FDB: once its frames take the fast
    /// path, the port's own table no longer sees them and ages them out.
    tunnelled: HashMap<(u16, [u8; 6]), Tunnel>,
}

/// A port about to join the fast path (see [`FastPath::prepare_port`]).
pub struct PreparedPort {
    attachment: Attachment,
    egress_ok: bool,
    veth_peer: bool,
}

/// A port taking part: its switch port id, interface and VLAN settings.
#[derive(Debug, Clone)]
pub struct FastPortConfig {
    pub port: usize,
    /// The interface (a tunnel's underlay).
    pub ifname: String,
    pub vlan: VlanMode,
    /// A tunnel port's parameters and remotes.
    pub tunnel: Option<TunnelView>,
}

impl FastPortConfig {
    /// (untagged VLAN, `vlan_mode` value, allowed bitmap) for `steer`.
    fn vlan_settings(&self) -> (u16, u32, [u64; 64]) {
        match &self.vlan {
            VlanMode::Access(vid) => (*vid, vlan_mode::ACCESS, [0; 64]),
            VlanMode::Trunk {
                allowed: None,
                native,
            } => (*native, vlan_mode::TRUNK_ALL, [0; 64]),
            VlanMode::Trunk {
                allowed: Some(set),
                native,
            } => (*native, vlan_mode::TRUNK_LISTED, set.words()),
        }
    }
}

impl FastPath {
    /// Probes every port's egress, programs the devmaps and turns the fast
    /// path on in each port's `steer`.
    pub fn start(
        pins: &PinRoot,
        n_ports: usize,
        members: &[FastPortConfig],
    ) -> Result<FastPath, Error> {
        let mut ports: Vec<Option<FastPort>> = (0..n_ports).map(|_| None).collect();
        for m in members {
            let PreparedPort {
                attachment,
                egress_ok,
                veth_peer,
            } = Self::prepare_port(pins, m)?;
            ports[m.port] = Some(FastPort {
                ifname: m.ifname.clone(),
                attachment,
                egress_ok,
                veth_peer,
                tunnel: m.tunnel.clone(),
            });
        }
        let tunnels: Vec<(u32, TunnelPort)> = members
            .iter()
            .filter_map(|m| Some((m.port as u32, m.tunnel.as_ref()?.params)))
            .collect();
        // Every member is in every devmap: XDP redirects use the entries of
        // ports that take them, tc hand-offs read the ifindex of the rest.
        let egress: Vec<(u32, u32)> = ports
            .iter()
            .enumerate()
            .filter_map(|(id, p)| {
                let ifindex = netdev::ifindex(&p.as_ref()?.ifname).ok()?;
                Some((id as u32, ifindex))
            })
            .collect();
        for m in members {
            let p = ports[m.port].as_mut().expect("just set");
            let err = |source| Error::Steer {
                ifname: m.ifname.clone(),
                source: Box::new(source),
            };
            for &(id, ifindex) in &egress {
                p.attachment.set_fast_port(id, ifindex).map_err(err)?;
            }
            for &(id, params) in &tunnels {
                p.attachment.set_tunnel(id, params).map_err(err)?;
            }
            let (untagged_vlan, mode, allowed) = m.vlan_settings();
            p.attachment
                .enable_fast_path(m.port as u32, untagged_vlan, mode, &allowed)
                .map_err(err)?;
        }
        let by_xdp = ports.iter().flatten().filter(|p| p.egress_ok).count();
        tracing::info!(
            ports = members.len(),
            xdp_redirect = by_xdp,
            tc_handoff = members.len() - by_xdp,
            "fast path on: learned unicast between these ports stays in the kernel"
        );
        let mut fp = FastPath {
            ports,
            hits_seen: HashMap::new(),
            last_redirected: 0,
            last_sent: 0,
            tunnelled: HashMap::new(),
        };
        (fp.last_redirected, fp.last_sent) = fp.totals();
        Ok(fp)
    }

    /// First half of adding a port while the switch runs, done without
    /// the switch lock (it loads a program and sends a probe frame): opens
    /// the port's `steer` maps and probes its egress.
    pub fn prepare_port(pins: &PinRoot, m: &FastPortConfig) -> Result<PreparedPort, Error> {
        let attachment = Attachment::open(pins, &m.ifname).map_err(|source| Error::Steer {
            ifname: m.ifname.clone(),
            source: Box::new(source),
        })?;
        let egress_ok = match probe_egress(&m.ifname) {
            Ok(()) => true,
            Err(why) => {
                tracing::info!(
                    ifname = m.ifname,
                    "fast path toward {} by tc hand-off: {why}",
                    m.ifname
                );
                false
            }
        };
        let veth_peer = netdev::is_veth_to_other_netns(&m.ifname).unwrap_or(false);
        Ok(PreparedPort {
            attachment,
            egress_ok,
            veth_peer,
        })
    }

    /// Second half, under the switch lock: exchanges devmap entries with
    /// the other ports, turns the fast path on in the port's `steer` and
    /// installs what was learned so far.
    pub fn add_port(
        &mut self,
        prepared: PreparedPort,
        m: &FastPortConfig,
        switch: &Switch,
    ) -> Result<(), Error> {
        let err = |source| Error::Steer {
            ifname: m.ifname.clone(),
            source: Box::new(source),
        };
        let PreparedPort {
            mut attachment,
            egress_ok,
            veth_peer,
        } = prepared;
        for (id, p) in self.ports.iter().enumerate() {
            let Some(p) = p.as_ref() else {
                continue;
            };
            if let Ok(ifindex) = netdev::ifindex(&p.ifname) {
                attachment.set_fast_port(id as u32, ifindex).map_err(err)?;
            }
            if let Some(t) = &p.tunnel {
                attachment.set_tunnel(id as u32, t.params).map_err(err)?;
            }
        }
        if let Some(t) = &m.tunnel {
            attachment
                .set_tunnel(m.port as u32, t.params)
                .map_err(err)?;
            for p in self.ports.iter_mut().flatten() {
                if let Err(e) = p.attachment.set_tunnel(m.port as u32, t.params) {
                    tracing::warn!(ifname = p.ifname, "fast path toward {}: {e}", m.ifname);
                }
            }
        }
        if let Ok(ifindex) = netdev::ifindex(&m.ifname) {
            attachment
                .set_fast_port(m.port as u32, ifindex)
                .map_err(err)?;
            for p in self.ports.iter_mut().flatten() {
                if let Err(e) = p.attachment.set_fast_port(m.port as u32, ifindex) {
                    tracing::warn!(ifname = p.ifname, "fast path toward {}: {e}", m.ifname);
                }
            }
        }
        let (untagged_vlan, mode, allowed) = m.vlan_settings();
        attachment
            .enable_fast_path(m.port as u32, untagged_vlan, mode, &allowed)
            .map_err(err)?;
        if self.ports.len() <= m.port {
            self.ports.resize_with(m.port + 1, || None);
        }
        self.ports[m.port] = Some(FastPort {
            ifname: m.ifname.clone(),
            attachment,
            egress_ok,
            veth_peer,
            tunnel: m.tunnel.clone(),
        });
        self.apply(&switch.fdb().as_changes(), switch);
        (self.last_redirected, self.last_sent) = self.totals();
        Ok(())
    }

    /// Takes port `id` out of the fast path before it closes. The caller
    /// has removed it from the switch and mirrored that (so no map still
    /// sends frames its way); this turns its own `steer` fast path off.
    pub fn remove_port(&mut self, id: usize) {
        if let Some(mut p) = self.ports.get_mut(id).and_then(Option::take) {
            if let Err(e) = p.attachment.disable_fast_path() {
                tracing::debug!(ifname = p.ifname, "turning the fast path off: {e}");
            }
            if p.tunnel.is_some() {
                for other in self.ports.iter_mut().flatten() {
                    let _ = other
                        .attachment
                        .set_tunnel(id as u32, TunnelPort::default());
                }
            }
        }
        (self.last_redirected, self.last_sent) = self.totals();
    }

    /// Renews every port's fast-path lease: called every half second while
    /// the switch runs; a switch that stops calling (killed) leaves a fast
    /// path that turns itself off.
    pub fn keep_alive(&mut self) {
        for p in self.ports.iter_mut().flatten() {
            if let Err(e) = p.attachment.renew_fast_path() {
                tracing::debug!(ifname = p.ifname, "renewing the fast path: {e}");
            }
        }
    }

    /// (frames XDP-redirected by every port's steer, frames the egress
    /// devices that report it sent from redirects). tc hand-offs are not
    /// XDP transmits and count in neither.
    fn totals(&self) -> (u64, u64) {
        let redirected = self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.attachment.counters().ok())
            .map(|c| c.get(Outcome::FastPath))
            .sum();
        let sent = self
            .ports
            .iter()
            .flatten()
            .filter(|p| p.egress_ok)
            .filter_map(|p| netdev::xdp_xmit_count(&p.ifname).ok().flatten())
            .sum();
        (redirected, sent)
    }

    /// Mirrors userspace FDB changes into every port's map.
    pub fn apply(&mut self, changes: &[FdbChange], switch: &Switch) {
        for change in changes {
            match *change {
                FdbChange::Upsert { vlan, mac, port } => {
                    // Installed in any case (a known source is what lets the
                    // frames *from* it go fast); a redirect target only if
                    // its port is in the fast path, up and carries this VLAN.
                    let delivery = self
                        .ports
                        .get(port)
                        .and_then(Option::as_ref)
                        .filter(|_| switch.is_up(port))
                        .map(FastPort::delivery_flags);
                    let egress = switch.ports().get(port).and_then(|p| p.vlan.egress(vlan));
                    let mut flags = match (delivery, egress) {
                        (Some(d), Some(EgressTag::Untagged)) => FDB_REDIRECT | d,
                        (Some(d), Some(EgressTag::Tagged(_))) => FDB_REDIRECT | FDB_TAGGED | d,
                        _ => 0,
                    };
                    // Behind a tunnel: redirected (encapsulated) only once
                    // its remote and the next hop toward it are known.
                    let remote = self.tunnel_of(port, vlan, mac);
                    match (&remote, self.view(port).is_some()) {
                        (_, false) => {}
                        (Some(t), true) if t.next_hop != [0; 6] => flags |= FDB_TUNNEL,
                        (_, true) => flags = 0,
                    }
                    match remote {
                        Some(t) => self.tunnelled.insert((vlan, mac), t),
                        None => self.tunnelled.remove(&(vlan, mac)),
                    };
                    for p in self.ports.iter_mut().flatten() {
                        if let Err(e) =
                            p.attachment
                                .fdb_insert(vlan, mac, port as u32, flags, remote)
                        {
                            // A full map only costs speed: userspace still
                            // forwards what the kernel does not know.
                            tracing::debug!(ifname = p.ifname, "fast-path FDB insert: {e}");
                        }
                    }
                }
                FdbChange::Remove { vlan, mac } => {
                    self.hits_seen.remove(&(vlan, mac));
                    self.tunnelled.remove(&(vlan, mac));
                    for p in self.ports.iter_mut().flatten() {
                        p.attachment.fdb_remove(vlan, mac);
                    }
                }
            }
        }
    }

    /// Port `port`'s tunnel, if it is one.
    fn view(&self, port: usize) -> Option<&TunnelView> {
        self.ports.get(port)?.as_ref()?.tunnel.as_ref()
    }

    /// Where an address on `port` sits behind its tunnel: the port's table
    /// and next hops now, else what was installed last.
    fn tunnel_of(&self, port: usize, vlan: u16, mac: [u8; 6]) -> Option<Tunnel> {
        match self.view(port)?.locate(vlan, mac) {
            Some(t) => Some(t),
            None => self.tunnelled.get(&(vlan, mac)).copied(),
        }
    }

    /// Twice a second: re-installs the addresses behind tunnels whose
    /// remote or next hop changed (learned, moved, an ARP answered).
    pub fn refresh_tunnels(&mut self, switch: &Switch) {
        let updates: Vec<FdbChange> = switch
            .fdb()
            .entries()
            .into_iter()
            .filter(|(vlan, mac, e)| {
                let now = self.view(e.port).and_then(|v| v.locate(*vlan, *mac));
                now.is_some_and(|t| self.tunnelled.get(&(*vlan, *mac)) != Some(&t))
            })
            .map(|(vlan, mac, e)| FdbChange::Upsert {
                vlan,
                mac,
                port: e.port,
            })
            .collect();
        if !updates.is_empty() {
            self.apply(&updates, switch);
        }
    }

    /// Before ageing: entries whose hit count moved since the last look
    /// were used by the fast path, so they count as seen now. Only entries
    /// past half their ageing time are looked at (a map read each).
    pub fn refresh_ageing(&mut self, switch: &mut Switch, now: Instant) {
        let max_age = switch.fdb().max_age();
        let candidates: Vec<_> = switch
            .fdb()
            .entries()
            .into_iter()
            .filter(|(_, _, e)| now.saturating_duration_since(e.last_seen) > max_age / 2)
            .collect();
        for (vlan, mac, entry) in candidates {
            // The hit is counted in the map of the port the address is on.
            let Some(p) = self.ports.get(entry.port).and_then(Option::as_ref) else {
                continue;
            };
            let Some(hits) = p.attachment.fdb_hits(vlan, mac) else {
                continue;
            };
            let before = self.hits_seen.insert((vlan, mac), hits);
            if hits != 0 && before != Some(hits) {
                switch.fdb_mut().touch(vlan, mac, now);
            }
        }
    }

    /// Watches the egress devices: if the fast path redirected more frames
    /// than the egress devices sent, one of them is dropping them; probe
    /// each again and stop using the ones that fail, saying why.
    pub fn check_egress(&mut self, switch: &Switch) {
        let (redirected, sent) = self.totals();
        let lost = lost_since((self.last_redirected, self.last_sent), (redirected, sent));
        (self.last_redirected, self.last_sent) = (redirected, sent);
        // Counters are read a moment apart: tolerate a burst's worth.
        if lost <= 64 {
            return;
        }
        let mut newly_bad = Vec::new();
        for (id, slot) in self.ports.iter_mut().enumerate() {
            let Some(p) = slot.as_mut().filter(|p| p.egress_ok) else {
                continue;
            };
            if let Err(why) = probe_egress(&p.ifname) {
                p.egress_ok = false;
                newly_bad.push(id);
                tracing::warn!(
                    ifname = p.ifname,
                    lost,
                    "fast path toward {} now by tc hand-off: {why}",
                    p.ifname
                );
            }
        }
        if newly_bad.is_empty() {
            return;
        }
        // Re-install their entries: now with the tc hand-off.
        let updates: Vec<FdbChange> = switch
            .fdb()
            .entries()
            .into_iter()
            .filter(|(_, _, e)| newly_bad.contains(&e.port))
            .map(|(vlan, mac, e)| FdbChange::Upsert {
                vlan,
                mac,
                port: e.port,
            })
            .collect();
        self.apply(&updates, switch);
        (self.last_redirected, self.last_sent) = self.totals();
    }

    /// Frames each port's `steer` fast-forwarded (XDP redirect and tc
    /// hand-off), by switch port id.
    pub fn forwarded(&self) -> Vec<Option<u64>> {
        self.ports
            .iter()
            .map(|p| {
                p.as_ref()
                    .and_then(|p| p.attachment.counters().ok())
                    .map(|c| c.get(Outcome::FastPath) + c.get(Outcome::FastPathTc))
            })
            .collect()
    }
}

impl Drop for FastPath {
    /// Off before the ports go: nothing may be redirected to a port that is
    /// being torn down.
    fn drop(&mut self) {
        for p in self.ports.iter_mut().flatten() {
            if let Err(e) = p.attachment.disable_fast_path() {
                tracing::warn!(ifname = p.ifname, "turning the fast path off: {e}");
            }
        }
    }
}

/// Frames redirected but not sent between two readings of (redirected,
/// sent). Both are sums over the current ports, so either can go *down*
/// when a port leaves (its counters leave the sums): such a reading
/// counts as no loss rather than underflowing.
fn lost_since(before: (u64, u64), now: (u64, u64)) -> u64 {
    let redirected = now.0.saturating_sub(before.0);
    let sent = now.1.saturating_sub(before.1);
    redirected.saturating_sub(sent)
}

/// Sends one frame to `ifname` by XDP redirect and checks that the device
/// transmitted it (a veth whose peer has neither XDP nor GRO drops it
/// without a trace, except that its `xdp_xmit` counter stays put).
fn probe_egress(ifname: &str) -> Result<(), String> {
    let sent = || netdev::xdp_xmit_count(ifname).map_err(|e| e.to_string());
    let Some(before) = sent()? else {
        // No counter to judge by (not a veth): trust it.
        return Ok(());
    };
    let forward = Forward::load(ifname).map_err(|e| e.to_string())?;
    let ifindex = netdev::ifindex(ifname).map_err(|e| e.to_string())?;
    let mac = netdev::mac(ifname).map_err(|e| e.to_string())?;
    // Addressed to the port itself: the peer's stack drops it as not its own.
    let mut frame = vec![0u8; 60];
    frame[0..6].copy_from_slice(&mac);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    forward
        .run_live(&frame, ifindex, 1)
        .map_err(|e| format!("probe frame: {e}"))?;
    if sent()?.unwrap_or(0) <= before {
        return Err(format!(
            "the other end of {ifname} takes no XDP-redirected frames (it has neither an XDP \
             program nor GRO, as a container's interface at its defaults)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_redirected_minus_sent_and_never_underflows() {
        assert_eq!(lost_since((100, 100), (200, 150)), 50);
        assert_eq!(lost_since((100, 100), (200, 250)), 0);
        // A port left: both sums shrank.
        assert_eq!(lost_since((500, 400), (100, 90)), 0);
        assert_eq!(lost_since((500, 400), (600, 10)), 100);
    }
}
