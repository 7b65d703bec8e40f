//! `dataplane run`: the daemon. Opens the ports, starts the PMD threads,
//! serves the control socket and metrics, watches the ports' interfaces,
//! and tears everything down again on SIGINT/SIGTERM.
//!
//! [`Daemon`] owns the running switch and is the one place that changes it
//! while it runs (`port add|del`, `fdb flush`, an interface going away and
//! coming back). Each change keeps one order, so no frame is ever sent to a
//! port nobody serves: a new port is attached to its PMD before the switch
//! may choose it; a leaving port is taken out of the switch and the fast
//! path before its PMD lets go of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::control::metrics::{self, MetricsSnapshot};
use crate::control::{FdbRow, Handler, PortStatus, Request, Response, Stats};
use crate::daemon::config::{self, ForwardingMode, PortConfig, PortKind, RunConfig};
use crate::datapath::engine;
use crate::datapath::fastpath::{FastPath, FastPortConfig};
use crate::datapath::pmds::{
    self, EngineConfig, EngineShared, FrameAccounting, PmdParts, Running, SharedSwitch,
};
use crate::port;
use crate::port::afxdp::{AfxdpConfig, AfxdpPort, ContainerConfig};
use crate::port::tap::TapPort;
use crate::port::veth::{self, Punt};
use crate::port::vhost_user::VhostUserPort;
use crate::port::{DropReason, Port, PortCounters, PortSnapshot, PortState};
use crate::steer::pins::PinRoot;
use crate::steer::{Attachment, ModeRequest};
use crate::switch::{Forwarding, Switch, SwitchPort};
use crate::sync::LockOrRecover;
use crate::sys::{netdev, privileges};
use crate::xsk::{self, BusyPoll, FramePool, SocketConfig, Umem, UmemConfig};

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Privileges(#[from] privileges::Error),
    #[error("creating the UMEM ({frames} frames of {frame_size} bytes): {source}")]
    Umem {
        frames: u32,
        frame_size: u32,
        source: xsk::Error,
    },
    #[error(transparent)]
    Afxdp(#[from] port::afxdp::Error),
    #[error(transparent)]
    FastPath(#[from] crate::datapath::fastpath::Error),
    #[error(transparent)]
    Tap(#[from] port::tap::Error),
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    PortChange(#[from] pmds::PortChangeError),
    #[error(transparent)]
    VhostUser(#[from] port::vhost_user::Error),
    #[error(transparent)]
    Punt(#[from] port::veth::Error),
    #[error("starting the PMD thread: {0}")]
    Thread(std::io::Error),
    #[error("a PMD thread panicked; ports were released as it unwound")]
    Panicked,
    #[error("no port named {name:?} (see `dataplane show ports`)")]
    NoSuchPort { name: String },
    #[error("ports can be added and removed in switch mode only (this switch cross-connects fixed pairs)")]
    NotSwitchMode,
    #[error("the switch is stopping")]
    Stopping,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub accounting: FrameAccounting,
    /// PMD cycles in iterations that found frames, and that found none.
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    /// The longest PMD iteration, in nanoseconds.
    pub longest_iteration_ns: u64,
    pub ports: Vec<(String, PortSnapshot)>,
}

/// One configured port, open or waiting for its interface.
struct Slot {
    config: PortConfig,
    counters: Arc<PortCounters>,
    /// Open and served by a PMD (false while its interface is gone).
    open: bool,
    /// The interface's index when opened (a deleted and re-created
    /// interface has another one: the port must be reopened).
    ifindex: Option<u32>,
    /// The link carried frames at the last look.
    link_up: bool,
    /// What the port does to the other end of its interface (`show ports`).
    peer_effect: Option<&'static str>,
}

/// The running switch and everything needed to change it.
pub struct Daemon {
    config: RunConfig,
    pins: PinRoot,
    /// By switch port id.
    slots: Vec<Option<Slot>>,
    running: Option<Running>,
    started: Instant,
    /// The punt device of the container (`veth`) ports, made with the
    /// first of them; declared last, so it goes after the ports.
    punt: Option<Arc<Punt>>,
}

impl Daemon {
    /// Opens every configured port and starts the PMD threads.
    pub fn start(config: &RunConfig, pins: &PinRoot) -> Result<Daemon, Error> {
        privileges::require_admin()?;
        raise_fd_limit();
        // One PMD per listed core (one unpinned PMD if none); port i runs on
        // PMD i mod n, each PMD with a UMEM of its own.
        let n_pmds = config.cores.len().max(1);
        let mut pmds: Vec<PmdParts> = Vec::new();
        for pmd in 0..n_pmds {
            let umem = Arc::new(
                Umem::new(UmemConfig {
                    frame_size: config.frame_size,
                    frame_count: config.frames,
                    ..UmemConfig::default()
                })
                .map_err(|source| Error::Umem {
                    frames: config.frames,
                    frame_size: config.frame_size,
                    source,
                })?,
            );
            pmds.push(PmdParts {
                cpu: config.cores.get(pmd).copied(),
                pool: FramePool::new(&umem),
                umem,
                ports: Vec::new(),
            });
        }
        let mut slots = Vec::new();
        let mut punt = None;
        for (id, p) in config.ports.iter().enumerate() {
            let pmd = id % n_pmds;
            let sharing = config
                .ports
                .iter()
                .enumerate()
                .filter(|(i, _)| i % n_pmds == pmd)
                .map(|(_, p)| p.queues.len())
                .sum();
            let counters = Arc::new(PortCounters::default());
            let umem = pmds[pmd].umem.clone();
            let at = PortPlace {
                id,
                sharing,
                umem: &umem,
                punt: &mut punt,
            };
            let port = open_port(config, p, pins, at, counters.clone())?;
            pmds[pmd].ports.push((id, port));
            slots.push(Some(Slot {
                config: p.clone(),
                counters,
                open: true,
                ifindex: interface_index(p),
                link_up: true,
                peer_effect: peer_effect(p),
            }));
        }
        let switch_ports = config
            .ports
            .iter()
            .map(|p| SwitchPort {
                name: p.name(),
                vlan: p.vlan.clone(),
                up: true,
            })
            .collect();
        let forwarding = match config.mode {
            ForwardingMode::Switch => Forwarding::Learning,
            ForwardingMode::Xconnect => Forwarding::CrossConnect {
                peer: config.xconnect_peers(),
            },
        };
        let switch = Switch::new(switch_ports, forwarding, config.fdb.into());
        let fast_path = if config.fast_path && config.mode == ForwardingMode::Switch {
            let members: Vec<FastPortConfig> = config
                .ports
                .iter()
                .enumerate()
                .filter(|(_, p)| p.kind.runs_steer())
                .map(|(id, p)| fast_port(id, p))
                .collect();
            Some(FastPath::start(pins, config.ports.len(), &members)?)
        } else {
            None
        };
        let running = pmds::start(
            EngineConfig {
                burst: config.burst,
                busy_poll: config.busy_poll,
                cpu: None,
            },
            pmds,
            switch,
            fast_path,
        )
        .map_err(Error::Thread)?;
        tracing::info!(
            ports = config.ports.len(),
            mode = ?config.mode,
            polling = if config.busy_poll { "busy" } else { "adaptive" },
            pmds = n_pmds,
            cores = ?config.cores,
            "switch running"
        );
        Ok(Daemon {
            config: config.clone(),
            pins: pins.clone(),
            slots,
            running: Some(running),
            started: Instant::now(),
            punt,
        })
    }

    fn running(&self) -> Result<&Running, Error> {
        self.running.as_ref().ok_or(Error::Stopping)
    }

    /// State shared with the PMD threads (counters, FDB copy).
    pub fn shared(&self) -> Option<Arc<EngineShared>> {
        self.running.as_ref().map(|r| r.shared.clone())
    }

    /// True once a PMD thread ended (only on a panic while running).
    pub fn pmd_finished(&self) -> bool {
        self.running.as_ref().is_some_and(Running::any_finished)
    }

    /// The configuration as it is now (ports added at runtime included).
    pub fn current_config(&self) -> RunConfig {
        RunConfig {
            ports: self
                .slots
                .iter()
                .flatten()
                .map(|s| s.config.clone())
                .collect(),
            ..self.config.clone()
        }
    }

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
        // The field, not `self.running()`: `self.punt` is borrowed below.
        let running = self.running.as_ref().ok_or(Error::Stopping)?;
        let id = running.free_slot()?;
        let pmd = running.least_loaded_pmd();
        let sharing = 1 + self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.open)
            .map(|s| s.config.queues.len())
            .sum::<usize>()
            / running.pmd_count();
        let counters = Arc::new(PortCounters::default());
        let at = PortPlace {
            id,
            sharing,
            umem: running.umem(pmd),
            punt: &mut self.punt,
        };
        let port = open_port(&self.config, &p, &self.pins, at, counters.clone())?;
        self.slots
            .resize_with(self.slots.len().max(id + 1), || None);
        self.slots[id] = Some(Slot {
            ifindex: interface_index(&p),
            peer_effect: peer_effect(&p),
            config: p,
            counters,
            open: false,
            link_up: true,
        });
        self.plug(id, pmd, port)?;
        tracing::info!(port = spec, id, pmd, "port added");
        Ok(id)
    }

    /// Hands an opened port to PMD `pmd`, then lets the switch and the fast
    /// path use it.
    fn plug(&mut self, id: usize, pmd: usize, port: Box<dyn Port>) -> Result<(), Error> {
        let running = self.running.as_ref().ok_or(Error::Stopping)?;
        running.attach_port(pmd, id, port)?;
        let slot = self.slots[id].as_mut().expect("slot filled by the caller");
        slot.open = true;
        slot.counters.set_state(PortState::Up);
        // The slow part of joining the fast path (a program load, a probe
        // frame) happens before taking the switch lock: the PMDs take it
        // for every burst, and a stall overflows their rings.
        let fast = fast_path_wanted(&self.config, &slot.config)
            .then(|| FastPath::prepare_port(&self.pins, &fast_port(id, &slot.config)));
        let mut shared = running.switch().lock_or_recover();
        let SharedSwitch { switch, fast_path } = &mut *shared;
        switch.add_port(
            id,
            SwitchPort {
                name: slot.config.name(),
                vlan: slot.config.vlan.clone(),
                up: true,
            },
        );
        if let (Some(fp), Some(prepared)) = (fast_path.as_mut(), fast) {
            let added = prepared.and_then(|p| fp.add_port(p, &fast_port(id, &slot.config), switch));
            if let Err(e) = added {
                tracing::warn!(
                    port = slot.config.name(),
                    "fast path not available for this port: {e}; it uses the AF_XDP path"
                );
            }
        }
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
            engine::mirror_fdb(&mut shared);
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
            engine::mirror_fdb(&mut shared);
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
        engine::mirror_fdb(&mut shared);
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
                    engine::mirror_fdb(&mut shared);
                }
            }
        }
    }

    /// Opens a port whose interface came back, on the PMD it had.
    fn reopen(&mut self, id: usize) {
        let Some(running) = self.running.as_ref() else {
            return;
        };
        let slot = self.slots[id].as_ref().expect("caller checked");
        let pmd = running.shared.port(id).map_or(0, |p| p.pmd);
        let at = PortPlace {
            id,
            sharing: 1 + running.shared.ports().len() / running.pmd_count(),
            umem: running.umem(pmd),
            punt: &mut self.punt,
        };
        let opened = open_port(
            &self.config,
            &slot.config,
            &self.pins,
            at,
            slot.counters.clone(),
        );
        let name = slot.config.name();
        match opened {
            Ok(port) => {
                let ifindex = interface_index(&slot.config);
                if let Err(e) = self.plug(id, pmd, port) {
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

    /// Every port with its state and counters, by id.
    pub fn port_status(&self) -> Vec<PortStatus> {
        let pmds: BTreeMap<usize, usize> = self
            .running
            .as_ref()
            .map(|r| {
                r.shared
                    .ports()
                    .into_iter()
                    .map(|(id, e)| (id, e.pmd))
                    .collect()
            })
            .unwrap_or_default();
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(id, s)| s.as_ref().map(|s| (id, s)))
            .map(|(id, s)| {
                let snap = s.counters.snapshot();
                PortStatus {
                    id,
                    name: s.config.name(),
                    state: snap.state.name().to_string(),
                    pmd: pmds.get(&id).copied().unwrap_or(0),
                    rx_packets: snap.rx_packets,
                    rx_bytes: snap.rx_bytes,
                    tx_packets: snap.tx_packets,
                    tx_bytes: snap.tx_bytes,
                    fast_path: snap.fast_path,
                    checksums_completed: snap.checksums_completed,
                    gso_frames: snap.gso_frames,
                    gso_segments: snap.gso_segments,
                    drops: DropReason::ALL
                        .iter()
                        .map(|r| (r.name().to_string(), snap.drops(*r)))
                        .collect(),
                    peer_effect: s.peer_effect.map(str::to_string),
                }
            })
            .collect()
    }

    /// Counters for `stats`.
    pub fn stats(&self) -> Stats {
        let (busy, idle, longest, own) = self
            .running
            .as_ref()
            .map(|r| {
                (
                    r.shared.busy_cycles.load(Ordering::Relaxed),
                    r.shared.idle_cycles.load(Ordering::Relaxed),
                    r.shared.longest_iteration_ns.load(Ordering::Relaxed),
                    r.shared.longest_own_iteration_ns.load(Ordering::Relaxed),
                )
            })
            .unwrap_or_default();
        Stats {
            uptime: self.started.elapsed().as_secs_f64(),
            ports: self.port_status(),
            busy_cycles: busy,
            idle_cycles: idle,
            longest_iteration_us: longest as f64 / 1e3,
            longest_own_iteration_us: own as f64 / 1e3,
        }
    }

    /// The learned addresses.
    pub fn fdb_rows(&self) -> Vec<FdbRow> {
        let Some(running) = self.running.as_ref() else {
            return Vec::new();
        };
        let shared = running.switch().lock_or_recover();
        let names: Vec<String> = shared
            .switch
            .ports()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        shared
            .switch
            .fdb()
            .entries()
            .into_iter()
            .map(|(vlan, mac, e)| FdbRow {
                vlan,
                mac: crate::steer::policy::format_mac(&mac),
                port: names.get(e.port).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Everything a Prometheus scrape shows.
    pub fn metrics(&self) -> MetricsSnapshot {
        let stats = self.stats();
        let xdp = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.config.kind.runs_steer() && s.open)
            .filter_map(|s| {
                let c = Attachment::open(&self.pins, &s.config.iface)
                    .ok()?
                    .counters()
                    .ok()?;
                let outcomes = dataplane_common::counters::Outcome::ALL
                    .iter()
                    .map(|o| (o.name(), c.get(*o)))
                    .collect();
                Some((s.config.iface.clone(), outcomes))
            })
            .collect();
        let fdb_entries = self
            .running
            .as_ref()
            .map_or(0, |r| r.switch().lock_or_recover().switch.fdb().len());
        MetricsSnapshot {
            ports: stats.ports,
            xdp,
            busy_cycles: stats.busy_cycles,
            idle_cycles: stats.idle_cycles,
            longest_iteration_us: stats.longest_iteration_us,
            longest_own_iteration_us: stats.longest_own_iteration_us,
            fdb_entries,
            uptime: stats.uptime,
        }
    }

    /// Stops the PMDs, turns the fast path off, closes every port.
    pub fn stop(&mut self) -> Result<RunSummary, Error> {
        let running = self.running.take().ok_or(Error::Stopping)?;
        let shared = running.shared.clone();
        let accounting = running.stop().map_err(|_| Error::Panicked)?;
        Ok(RunSummary {
            accounting,
            busy_cycles: shared.busy_cycles.load(Ordering::Relaxed),
            idle_cycles: shared.idle_cycles.load(Ordering::Relaxed),
            longest_iteration_ns: shared.longest_iteration_ns.load(Ordering::Relaxed),
            ports: self
                .slots
                .iter()
                .flatten()
                .map(|s| (s.config.name(), s.counters.snapshot()))
                .collect(),
        })
    }
}

/// Control requests and metrics scrapes, served against the daemon.
pub struct ControlHandler(pub Arc<Mutex<Daemon>>);

impl Handler for ControlHandler {
    fn handle(&self, request: Request) -> Response {
        let mut d = self.0.lock_or_recover();
        match request {
            Request::ShowPorts => Response::ok(d.port_status()),
            Request::ShowFdb => Response::ok(d.fdb_rows()),
            Request::ShowConfig => Response::ok(d.current_config().to_toml()),
            Request::Stats => Response::ok(d.stats()),
            Request::FdbFlush { port } => match d.flush_fdb(port.as_deref()) {
                Ok(n) => Response::ok(serde_json::json!({ "removed": n })),
                Err(e) => Response::error(e.to_string()),
            },
            Request::PortAdd { spec } => match d.add_port(&spec) {
                Ok(id) => Response::ok(serde_json::json!({
                    "id": id,
                    "name": d.slots[id].as_ref().map(|s| s.config.name()),
                })),
                Err(e) => Response::error(e.to_string()),
            },
            Request::PortDel { name } => match d.remove_port(&name) {
                Ok(snap) => Response::ok(serde_json::json!({
                    "name": name,
                    "rx_packets": snap.rx_packets,
                    "tx_packets": snap.tx_packets,
                })),
                Err(e) => Response::error(e.to_string()),
            },
        }
    }

    fn metrics(&self) -> String {
        let snapshot = self.0.lock_or_recover().metrics();
        metrics::render(&snapshot)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: the switch holds
/// sockets, TAPs, eventfds and connections, and systemd's default soft
/// limit (1024) is low for a daemon that local clients can connect to.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(before, after = lim.rlim_cur, "raised the open-file limit");
            }
        }
    }
}

/// Where a port is opened.
struct PortPlace<'a> {
    /// Its switch slot.
    id: usize,
    /// Receive queues sharing the UMEM's frames (each gets a fair part for
    /// its fill ring).
    sharing: usize,
    /// Its PMD's UMEM.
    umem: &'a Arc<Umem>,
    /// The punt device of container ports (made with the first one).
    punt: &'a mut Option<Arc<Punt>>,
}

/// Opens one port.
fn open_port(
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
    Ok(match p.kind {
        PortKind::Veth => {
            let punt = veth::punt_for(punt, pins, config.frame_size)?;
            Box::new(AfxdpPort::open_container(
                &ContainerConfig {
                    ifname: p.iface.clone(),
                    slot: id as u32,
                    socket,
                    fill_frames,
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
                queues: p.queues.clone(),
                socket,
                fill_frames,
                attach_mode: ModeRequest::Auto,
            },
            umem,
            pins,
            counters,
        )?),
        PortKind::Tap => Box::new(TapPort::open(&p.iface, p.queues.len(), counters)?),
        PortKind::VhostUser => Box::new(VhostUserPort::open(
            std::path::Path::new(&p.iface),
            counters,
        )?),
    })
}

/// Stops an AF_XDP port's receive side before its PMD lets go of it: its
/// sockets leave the XSKMAP (steer passes its frames to the kernel now), and
/// a moment later no receive is in flight. Done here, not on the PMD
/// thread, so the PMD never sleeps while its other ports have traffic.
fn quiesce(pins: &PinRoot, p: &PortConfig, id: usize, punt: Option<&Punt>) {
    match (p.kind, punt) {
        (PortKind::Afxdp, _) => {
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
fn fast_path_wanted(config: &RunConfig, p: &PortConfig) -> bool {
    config.fast_path && config.mode == ForwardingMode::Switch && p.kind.runs_steer()
}

fn fast_port(id: usize, p: &PortConfig) -> FastPortConfig {
    FastPortConfig {
        port: id,
        ifname: p.iface.clone(),
        vlan: p.vlan.clone(),
    }
}

/// What a port does to the other end of its interface: native XDP on the
/// host end of a container's veth turns the container's TSO off (the
/// kernel's rule for veth) until the port closes; container ports do not.
fn peer_effect(p: &PortConfig) -> Option<&'static str> {
    (p.kind == PortKind::Afxdp && netdev::is_veth_to_other_netns(&p.iface).unwrap_or(false))
        .then_some("peer TSO off while attached (native XDP on a veth; veth: keeps it)")
}

fn interface_index(p: &PortConfig) -> Option<u32> {
    match p.kind {
        PortKind::Afxdp | PortKind::Veth => netdev::ifindex(&p.iface).ok(),
        PortKind::Tap | PortKind::VhostUser => None,
    }
}

/// Runs the daemon until `stop` is set: `on_tick` about once a second with
/// the daemon (statistics printing, on-demand dumps); the interfaces are
/// watched at the same pace. Returns the final report.
pub fn run_until(
    daemon: &Arc<Mutex<Daemon>>,
    stop: &AtomicBool,
    on_tick: &mut dyn FnMut(&Daemon),
) -> Result<RunSummary, Error> {
    loop {
        let tick = Instant::now() + Duration::from_secs(1);
        while Instant::now() < tick && !stop.load(Ordering::Relaxed) {
            if daemon.lock_or_recover().pmd_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut d = daemon.lock_or_recover();
        if stop.load(Ordering::Relaxed) || d.pmd_finished() {
            return d.stop();
        }
        d.supervise();
        on_tick(&d);
    }
}

/// Opens every port, runs the switch until `stop` is set, and releases
/// everything (no control socket: tests and simple embeddings).
pub fn run(
    config: &RunConfig,
    pins: &PinRoot,
    stop: &AtomicBool,
    on_tick: &mut dyn FnMut(&Daemon),
) -> Result<RunSummary, Error> {
    let daemon = Arc::new(Mutex::new(Daemon::start(config, pins)?));
    run_until(&daemon, stop, on_tick)
}

/// A statistics table: totals, and rates since `previous` over `dt` seconds.
pub fn stats_table(
    now: &[(String, PortSnapshot)],
    previous: Option<(&[(String, PortSnapshot)], f64)>,
) -> String {
    let mut s = format!(
        "{:<20} {:>5} {:>12} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "PORT", "STATE", "RX_PKTS", "RX_PPS", "TX_PKTS", "TX_PPS", "FAST_PKTS", "FAST_PPS"
    );
    for r in DropReason::ALL {
        s.push_str(&format!(" {:>13}", format!("drop_{}", r.name())));
    }
    s.push('\n');
    for (name, c) in now {
        let (rx_pps, tx_pps, fast_pps) = match previous {
            Some((prev, dt)) if dt > 0.0 => {
                let p = prev
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| *p)
                    .unwrap_or_default();
                let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
                (
                    rate(c.rx_packets, p.rx_packets),
                    rate(c.tx_packets, p.tx_packets),
                    rate(c.fast_path, p.fast_path),
                )
            }
            _ => (0.0, 0.0, 0.0),
        };
        s.push_str(&format!(
            "{:<20} {:>5} {:>12} {:>10.0} {:>12} {:>10.0} {:>12} {:>10.0}",
            name,
            c.state.name(),
            c.rx_packets,
            rx_pps,
            c.tx_packets,
            tx_pps,
            c.fast_path,
            fast_pps
        ));
        for r in DropReason::ALL {
            s.push_str(&format!(" {:>13}", c.drops(r)));
        }
        s.push('\n');
    }
    s
}

/// Snapshots of every port's counters.
pub fn snapshot(daemon: &Daemon) -> Vec<(String, PortSnapshot)> {
    daemon
        .slots
        .iter()
        .flatten()
        .map(|s| (s.config.name(), s.counters.snapshot()))
        .collect()
}
