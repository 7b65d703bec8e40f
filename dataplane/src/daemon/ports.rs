//! Changing the running switch's ports: `port add` and `port del`, an
//! interface going away and coming back (supervision), and opening one
//! port of any kind on its PMD's UMEM. Each change keeps the order the
//! module docs of [`super::run`] give.

use std::sync::Arc;
use std::time::Duration;

use super::run::{Daemon, Error, Slot};
use crate::daemon::config::{self, ForwardingMode, PortConfig, PortKind, RunConfig};
use crate::datapath::fastpath::{FastPath, FastPortConfig};
use crate::datapath::pmds::SharedSwitch;
use crate::port::afxdp::{AfxdpConfig, AfxdpPort, ContainerConfig};
use crate::port::tap::TapPort;
use crate::port::veth::{self, Punt};
use crate::port::vhost_user::VhostUserPort;
use crate::port::vxlan::{VxlanConfig, VxlanPort};
use crate::port::{Port, PortCounters, PortSnapshot, PortState};
use crate::steer::pins::PinRoot;
use crate::steer::policy::PolicySpec;
use crate::steer::{Attachment, ModeRequest};
use crate::switch::SwitchPort;
use crate::sync::LockOrRecover;
use crate::sys::netdev;
use crate::xsk::{BusyPoll, SocketConfig, Umem};

impl Daemon {
    fn find(&self, name: &str) -> Result<usize, Error> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.config.name() == name))
            .ok_or_else(|| Error::NoSuchPort {
                name: name.to_string(),
            })
    }

    /// Adds a port while the switch runs; returns its switch port id.
    pub fn add_port(&mut self, spec: &str) -> Result<usize, Error> {
        if self.config.mode != ForwardingMode::Switch {
            return Err(Error::NotSwitchMode);
        }
        let p = config::parse_port_spec(spec)?;
        if self.find(&p.name()).is_ok() {
            return Err(config::Error::DuplicatePort { name: p.name() }.into());
        }
        let running = self.running()?;
        let n_pmds = running.pmd_count();
        if let Some(bad) = p.pmds.iter().flatten().find(|&&i| i >= n_pmds) {
            return Err(config::Error::Invalid {
                field: "pmds",
                value: format!("{bad} (port {})", p.name()),
                why: format!("this switch runs {n_pmds} PMD thread(s), 0-{}", n_pmds - 1),
            }
            .into());
        }
        let id = running.free_slot()?;
        let placement = place_queues(&p, running.least_loaded_pmd(), n_pmds);
        let counters = Arc::new(PortCounters::default());
        let parts = self.open_parts(id, &p, &placement, &counters)?;
        let tunnel = parts.iter().find_map(|(_, port, _)| port.tunnel());
        self.slots
            .resize_with(self.slots.len().max(id + 1), || None);
        self.slots[id] = Some(Slot {
            ifindex: interface_index(&p),
            peer_effect: peer_effect(&p),
            config: p,
            counters,
            open: false,
            link_up: true,
            placement: placement.clone(),
            tunnel,
        });
        self.plug(id, parts)?;
        tracing::info!(port = spec, id, placement = ?placement, "port added");
        Ok(id)
    }

    /// Opens port `id` as `placement` says: one part per PMD, on its UMEM,
    /// with its queues. On an error, what was opened is closed again.
    fn open_parts(
        &mut self,
        id: usize,
        p: &PortConfig,
        placement: &[(usize, Vec<u32>)],
        counters: &Arc<PortCounters>,
    ) -> Result<Vec<OpenPart>, Error> {
        // The field, not `self.running()`: `self.punt` is borrowed below.
        let running = self.running.as_ref().ok_or(Error::Stopping)?;
        let mut parts: Vec<OpenPart> = Vec::new();
        for (k, (pmd, queues)) in placement.iter().enumerate() {
            let at = PortPlace {
                id,
                sharing: 1 + running.queues_polled_by(*pmd),
                umem: running.umem(*pmd),
                punt: &mut self.punt,
                queues: queues.clone(),
                join: k > 0,
            };
            match open_port(&self.config, p, &self.pins, at, counters.clone()) {
                Ok(port) => parts.push((*pmd, port, queues.clone())),
                Err(e) => {
                    // The parts that joined the first one's steer go first.
                    while let Some(part) = parts.pop() {
                        drop(part);
                    }
                    return Err(e);
                }
            }
        }
        Ok(parts)
    }

    /// Hands each opened part to its PMD, then lets the switch and the fast
    /// path use the port.
    fn plug(&mut self, id: usize, parts: Vec<OpenPart>) -> Result<(), Error> {
        let running = self.running.as_ref().ok_or(Error::Stopping)?;
        for (pmd, port, queues) in parts {
            running.attach_port(pmd, id, port, queues)?;
        }
        let slot = self.slots[id].as_mut().expect("slot filled by the caller");
        slot.open = true;
        slot.counters.set_state(PortState::Up);
        // The slow part of joining the fast path (a program load, a probe
        // frame) happens before taking the switch lock: the slow path
        // learns under it, and sightings wait while it is held.
        let fast = fast_path_wanted(&self.config, &slot.config)
            .then(|| FastPath::prepare_port(&self.pins, &fast_port(id, &slot.config, None)));
        let mut shared = running.switch().lock_or_recover();
        let SharedSwitch {
            switch, fast_path, ..
        } = &mut *shared;
        switch.add_port(
            id,
            SwitchPort {
                name: slot.config.name(),
                vlan: slot.config.vlan.clone(),
                up: true,
                max_macs: slot.config.max_macs.map(|n| n as usize),
            },
        );
        if let (Some(fp), Some(prepared)) = (fast_path.as_mut(), fast) {
            let member = fast_port(id, &slot.config, slot.tunnel.clone());
            let added = prepared.and_then(|p| fp.add_port(p, &member, switch));
            if let Err(e) = added {
                tracing::warn!(
                    port = slot.config.name(),
                    "fast path not available for this port: {e}; it uses the AF_XDP path"
                );
            }
        }
        shared.publish();
        Ok(())
    }

    /// Takes port `id` out of the switch and the fast path, then away from
    /// its PMD (which returns its frames to the pool), and closes it.
    fn unplug(&mut self, id: usize, keep_in_switch: bool) -> Result<(), Error> {
        let running = self.running.as_ref().ok_or(Error::Stopping)?;
        if let Some(slot) = self.slots[id].as_ref() {
            quiesce(&self.pins, &slot.config, id, self.punt.as_deref());
        }
        {
            let mut shared = running.switch().lock_or_recover();
            if keep_in_switch {
                shared.switch.set_port_up(id, false);
            } else {
                shared.switch.remove_port(id);
            }
            shared.publish();
            if let Some(fp) = shared.fast_path.as_mut() {
                fp.remove_port(id);
            }
        }
        running.detach_port(id)?;
        if let Some(slot) = self.slots[id].as_mut() {
            slot.open = false;
        }
        Ok(())
    }

    /// Removes a port by name while the switch runs; returns its final
    /// counters.
    pub fn remove_port(&mut self, name: &str) -> Result<PortSnapshot, Error> {
        if self.config.mode != ForwardingMode::Switch {
            return Err(Error::NotSwitchMode);
        }
        let id = self.find(name)?;
        if self.slots[id].as_ref().is_some_and(|s| s.open) {
            self.unplug(id, false)?;
        } else {
            let running = self.running()?;
            let mut shared = running.switch().lock_or_recover();
            shared.switch.remove_port(id);
            shared.publish();
        }
        self.running()?.forget_port(id);
        let slot = self.slots[id].take().expect("found above");
        tracing::info!(port = name, id, "port removed");
        Ok(slot.counters.snapshot())
    }

    /// Forgets learned addresses (all, or one port's); returns how many.
    pub fn flush_fdb(&mut self, port: Option<&str>) -> Result<usize, Error> {
        let id = port.map(|name| self.find(name)).transpose()?;
        let running = self.running()?;
        let mut shared = running.switch().lock_or_recover();
        let removed = match id {
            Some(id) => shared.switch.flush_port(id),
            None => {
                let n = shared.switch.fdb().len();
                shared.switch.flush_fdb();
                n
            }
        };
        shared.publish();
        Ok(removed)
    }

    /// Once a second: follows each AF_XDP port's interface. Link down:
    /// the port goes down (no flooding to it, its addresses forgotten).
    /// Interface gone (deleted, or moved away): the port is closed and
    /// waits. Interface back: the port is reopened and comes back up.
    pub fn supervise(&mut self) {
        for id in 0..self.slots.len() {
            let Some(slot) = self.slots[id].as_ref() else {
                continue;
            };
            // A TAP is ours (its netdev may live in a guest's namespace).
            if !slot.config.kind.runs_steer() {
                continue;
            }
            let iface = slot.config.iface.clone();
            let now_index = match netdev::ifindex(&iface) {
                Ok(i) => Some(i),
                Err(netdev::Error::NoSuchInterface { .. }) => None,
                Err(e) => {
                    // Not an answer (out of descriptors, say): ask again
                    // next round rather than close a working port.
                    tracing::debug!(port = slot.config.name(), "interface query: {e}");
                    continue;
                }
            };
            let replaced = slot.open && now_index != slot.ifindex;
            if replaced {
                tracing::warn!(
                    port = slot.config.name(),
                    "interface {iface} is gone: port down; it comes back when {iface} returns"
                );
                slot.counters.set_state(PortState::Down);
                if let Err(e) = self.unplug(id, true) {
                    tracing::warn!(port = iface, "closing the port: {e}");
                }
                continue;
            }
            if !slot.open {
                if now_index.is_some() {
                    self.reopen(id);
                }
                continue;
            }
            let carries = netdev::link_state(&iface).is_ok_and(|l| l.carries());
            if carries != slot.link_up {
                let slot = self.slots[id].as_mut().expect("checked above");
                slot.link_up = carries;
                slot.counters.set_state(if carries {
                    PortState::Up
                } else {
                    PortState::Down
                });
                if carries {
                    tracing::info!(port = slot.config.name(), "link of {iface} is up: port up");
                } else {
                    tracing::warn!(
                        port = slot.config.name(),
                        "link of {iface} is down: port down"
                    );
                }
                if let Some(running) = self.running.as_ref() {
                    let mut shared = running.switch().lock_or_recover();
                    shared.switch.set_port_up(id, carries);
                    shared.publish();
                }
            }
        }
    }

    /// Opens a port whose interface came back, on the PMD it had.
    fn reopen(&mut self, id: usize) {
        let slot = self.slots[id].as_ref().expect("caller checked");
        let (config, placement, counters) = (
            slot.config.clone(),
            slot.placement.clone(),
            slot.counters.clone(),
        );
        let opened = self.open_parts(id, &config, &placement, &counters);
        let name = config.name();
        match opened {
            Ok(parts) => {
                let ifindex = interface_index(&config);
                if let Err(e) = self.plug(id, parts) {
                    tracing::warn!(port = name, "reopening: {e}");
                    return;
                }
                let slot = self.slots[id].as_mut().expect("caller checked");
                slot.ifindex = ifindex;
                slot.link_up = true;
                tracing::info!(port = name, "interface is back: port reopened");
            }
            // The interface may be half set up (no peer yet, down): retried
            // at the next look.
            Err(e) => tracing::debug!(port = name, "not reopened yet: {e}"),
        }
    }
}

/// One opened part of a port: its PMD, the port, its receive queues.
type OpenPart = (usize, Box<dyn Port>, Vec<u32>);

/// Which PMD polls which of `p`'s receive queues: as its `pmds` option
/// says, else round robin from PMD `first`. Only an AF_XDP port is split:
/// a TAP, vhost-user or container port is polled whole by `first`. One
/// entry per PMD, in the order of the port's first queue on each (the
/// first entry is the primary part).
pub(super) fn place_queues(p: &PortConfig, first: usize, n_pmds: usize) -> Vec<(usize, Vec<u32>)> {
    if p.kind != PortKind::Afxdp {
        return vec![(first, p.queues.clone())];
    }
    let mut parts: Vec<(usize, Vec<u32>)> = Vec::new();
    for (i, &queue) in p.queues.iter().enumerate() {
        let pmd = match &p.pmds {
            Some(pmds) => pmds[i],
            None => (first + i) % n_pmds.max(1),
        };
        match parts.iter_mut().find(|(p, _)| *p == pmd) {
            Some((_, queues)) => queues.push(queue),
            None => parts.push((pmd, vec![queue])),
        }
    }
    parts
}

/// Where a port is opened.
pub(super) struct PortPlace<'a> {
    /// Its switch slot.
    pub(super) id: usize,
    /// Receive queues sharing the UMEM's frames (each gets a fair part for
    /// its fill ring).
    pub(super) sharing: usize,
    /// Its PMD's UMEM.
    pub(super) umem: &'a Arc<Umem>,
    /// The punt device of container ports (made with the first one).
    pub(super) punt: &'a mut Option<Arc<Punt>>,
    /// The receive queues of this part of the port.
    pub(super) queues: Vec<u32>,
    /// Not the port's first part: steer is attached already.
    pub(super) join: bool,
}

/// Opens one port.
pub(super) fn open_port(
    config: &RunConfig,
    p: &PortConfig,
    pins: &PinRoot,
    at: PortPlace<'_>,
    counters: Arc<PortCounters>,
) -> Result<Box<dyn Port>, Error> {
    let PortPlace {
        id,
        sharing,
        umem,
        punt,
        queues,
        join,
    } = at;
    // Keep a quarter of a PMD's frames for flooding copies and TX in
    // flight; spread the rest over its fill rings.
    let fill_frames = ((config.frames as usize * 3 / 4) / sharing.max(1)).clamp(64, 2048) as u32;
    let socket = SocketConfig {
        bind: p.bind,
        busy_poll: config
            .socket_busy_poll
            .map(|usecs| BusyPoll { usecs, budget: 64 }),
        ..SocketConfig::default()
    };
    // validate() keeps them at most 2^20 and 1024.
    let fdb_entries = config.fdb.max_entries as u32;
    let max_ports = config.max_ports as u32;
    Ok(match p.kind {
        PortKind::Veth => {
            let punt = veth::punt_for(punt, pins, config.frame_size, max_ports)?;
            Box::new(AfxdpPort::open_container(
                &ContainerConfig {
                    ifname: p.iface.clone(),
                    slot: id as u32,
                    socket,
                    fill_frames,
                    fdb_entries,
                    max_ports,
                },
                umem,
                pins,
                punt,
                counters,
            )?)
        }
        PortKind::Afxdp => Box::new(AfxdpPort::open(
            &AfxdpConfig {
                ifname: p.iface.clone(),
                queues,
                socket,
                fill_frames,
                attach_mode: ModeRequest::Auto,
                fdb_entries,
                join,
                max_ports,
                policy: PolicySpec::redirect_all(),
            },
            umem,
            pins,
            counters,
        )?),
        PortKind::Vxlan => {
            let tunnel = p.vxlan.as_ref().ok_or_else(|| config::Error::PortField {
                spec: p.name(),
                why: "a vxlan port without its tunnel".into(),
            })?;
            Box::new(VxlanPort::open(
                VxlanConfig {
                    tunnel,
                    underlay: AfxdpConfig {
                        ifname: p.iface.clone(),
                        queues,
                        socket,
                        fill_frames,
                        attach_mode: ModeRequest::Auto,
                        fdb_entries,
                        join,
                        max_ports,
                        // Set by the port: only its UDP.
                        policy: PolicySpec::redirect_all(),
                    },
                    max_age: config.fdb.max_age,
                    max_entries: config.fdb.max_entries,
                },
                umem,
                pins,
                counters,
            )?)
        }
        PortKind::Tap => Box::new(TapPort::open(&p.iface, p.queues.len(), counters)?),
        PortKind::VhostUser => Box::new(VhostUserPort::open(
            std::path::Path::new(&p.iface),
            p.owner.as_ref(),
            counters,
        )?),
    })
}

/// Stops an AF_XDP port's receive side before its PMD lets go of it: its
/// sockets leave the XSKMAP (steer passes its frames to the kernel now), and
/// a moment later no receive is in flight. Done here, not on the PMD
/// thread, so the PMD never sleeps while its other ports have traffic.
pub(super) fn quiesce(pins: &PinRoot, p: &PortConfig, id: usize, punt: Option<&Punt>) {
    match (p.kind, punt) {
        (PortKind::Afxdp | PortKind::Vxlan, _) => {
            let Ok(mut attachment) = Attachment::open(pins, &p.iface) else {
                return;
            };
            for &q in &p.queues {
                let _ = attachment.unregister_socket(q);
            }
        }
        // A container port receives on its slot's queue of the punt device.
        (PortKind::Veth, Some(punt)) => {
            let _ = punt.attachment().unregister_socket(id as u32);
        }
        _ => return,
    }
    std::thread::sleep(Duration::from_millis(10));
}

/// Whether a port takes part in the in-kernel fast path.
pub(super) fn fast_path_wanted(config: &RunConfig, p: &PortConfig) -> bool {
    config.fast_path && config.mode == ForwardingMode::Switch && p.kind.in_fast_path()
}

pub(super) fn fast_port(
    id: usize,
    p: &PortConfig,
    tunnel: Option<crate::port::vxlan::TunnelView>,
) -> FastPortConfig {
    FastPortConfig {
        tunnel,
        port: id,
        ifname: p.iface.clone(),
        vlan: p.vlan.clone(),
    }
}

/// What a port does to the other end of its interface: native XDP on the
/// host end of a container's veth turns the container's TSO off (the
/// kernel's rule for veth) until the port closes; container ports do not.
pub(super) fn peer_effect(p: &PortConfig) -> Option<&'static str> {
    (p.kind == PortKind::Afxdp && netdev::is_veth_to_other_netns(&p.iface).unwrap_or(false))
        .then_some("peer TSO off while attached (native XDP on a veth; veth: keeps it)")
}

pub(super) fn interface_index(p: &PortConfig) -> Option<u32> {
    match p.kind {
        PortKind::Afxdp | PortKind::Veth => netdev::ifindex(&p.iface).ok(),
        PortKind::Tap | PortKind::VhostUser | PortKind::Vxlan => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_go_round_robin_from_the_first_pmd_or_where_pinned() {
        let p = config::parse_port_spec("afxdp:v0,queues=0+1+2+3").unwrap();
        assert_eq!(
            place_queues(&p, 1, 2),
            vec![(1, vec![0, 2]), (0, vec![1, 3])],
            "primary first: the PMD of queue 0"
        );
        assert_eq!(place_queues(&p, 0, 1), vec![(0, vec![0, 1, 2, 3])]);
        let pinned = config::parse_port_spec("afxdp:v0,queues=4+5,pmds=1+1").unwrap();
        assert_eq!(place_queues(&pinned, 0, 2), vec![(1, vec![4, 5])]);
        let tap = config::parse_port_spec("tap:vm0,queues=2").unwrap();
        assert_eq!(
            place_queues(&tap, 1, 2),
            vec![(1, vec![0, 1])],
            "a TAP is not split"
        );
    }
}
