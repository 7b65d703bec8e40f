//! `dataplane run`: the daemon. Opens the ports, starts the PMD threads,
//! serves the control socket and metrics, watches the ports' interfaces,
//! and tears everything down again on SIGINT/SIGTERM. This file holds its
//! life (start, the loop, stop); changing its ports is in `ports.rs`, what
//! it reports in `report.rs`.
//!
//! [`Daemon`] owns the running switch and is the one place that changes it
//! while it runs (`port add|del`, `fdb flush`, an interface going away and
//! coming back). Each change keeps one order, so no frame is ever sent to a
//! port nobody serves: a new port is attached to its PMD before the switch
//! may choose it; a leaving port is taken out of the switch and the fast
//! path before its PMD lets go of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::ports::{fast_port, interface_index, open_port, peer_effect, place_queues, PortPlace};
use crate::daemon::config::{self, ForwardingMode, PortConfig, RunConfig};
use crate::datapath::fastpath::{FastPath, FastPortConfig};
use crate::datapath::pmds::{
    self, EngineConfig, EngineShared, FrameAccounting, PmdParts, PortPart, Running,
};
use crate::port;
use crate::port::veth::Punt;
use crate::port::{PortCounters, PortSnapshot};
use crate::steer::pins::PinRoot;
use crate::switch::{Forwarding, Switch, SwitchPort};
use crate::sync::LockOrRecover;
use crate::sys::privileges;
use crate::xsk::{self, FramePool, Umem, UmemConfig};

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
    #[error(transparent)]
    Vxlan(#[from] port::vxlan::Error),
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
pub(super) struct Slot {
    pub(super) config: PortConfig,
    pub(super) counters: Arc<PortCounters>,
    /// Open and served by a PMD (false while its interface is gone).
    pub(super) open: bool,
    /// The interface's index when opened (a deleted and re-created
    /// interface has another one: the port must be reopened).
    pub(super) ifindex: Option<u32>,
    /// The link carried frames at the last look.
    pub(super) link_up: bool,
    /// What the port does to the other end of its interface (`show ports`).
    pub(super) peer_effect: Option<&'static str>,
    /// Which PMD polls which of its receive queues (kept when it closes,
    /// so that it reopens the same way).
    pub(super) placement: Vec<(usize, Vec<u32>)>,
    /// A tunnel port's parameters and learned remote MACs (`show fdb`,
    /// the fast path).
    pub(super) tunnel: Option<port::vxlan::TunnelView>,
}

/// The running switch and everything needed to change it.
pub struct Daemon {
    pub(super) config: RunConfig,
    pub(super) pins: PinRoot,
    /// By switch port id.
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) running: Option<Running>,
    pub(super) started: Instant,
    /// The punt device of the container (`veth`) ports, made with the
    /// first of them; declared last, so it goes after the ports.
    pub(super) punt: Option<Arc<Punt>>,
}

impl Daemon {
    /// Opens every configured port and starts the PMD threads.
    pub fn start(config: &RunConfig, pins: &PinRoot) -> Result<Daemon, Error> {
        privileges::require_admin()?;
        raise_fd_limit();
        crate::sys::memory::keep_large_allocations_apart();
        // One PMD per listed core (one unpinned PMD if none), each with a
        // UMEM of its own; port i's first queue is polled by PMD i mod n,
        // its other queues by the next PMDs in turn (or as `pmds=` says).
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
        let placements: Vec<Vec<(usize, Vec<u32>)>> = config
            .ports
            .iter()
            .enumerate()
            .map(|(id, p)| place_queues(p, id % n_pmds, n_pmds))
            .collect();
        // Receive queues per PMD: each gets a fair part of its UMEM.
        let mut sharing = vec![0usize; n_pmds];
        for (pmd, queues) in placements.iter().flatten() {
            sharing[*pmd] += queues.len();
        }
        let mut slots = Vec::new();
        let mut punt = None;
        for ((id, p), placement) in config.ports.iter().enumerate().zip(placements) {
            let counters = Arc::new(PortCounters::default());
            let mut tunnel = None;
            for (k, (pmd, queues)) in placement.iter().enumerate() {
                let umem = pmds[*pmd].umem.clone();
                let at = PortPlace {
                    id,
                    sharing: sharing[*pmd],
                    umem: &umem,
                    punt: &mut punt,
                    queues: queues.clone(),
                    join: k > 0,
                };
                let port = open_port(config, p, pins, at, counters.clone())?;
                tunnel = tunnel.or_else(|| port.tunnel());
                pmds[*pmd].ports.push(PortPart {
                    id,
                    port,
                    queues: queues.clone(),
                });
            }
            slots.push(Some(Slot {
                config: p.clone(),
                counters,
                open: true,
                ifindex: interface_index(p),
                link_up: true,
                peer_effect: peer_effect(p),
                placement,
                tunnel,
            }));
        }
        let switch_ports = config
            .ports
            .iter()
            .map(|p| SwitchPort {
                name: p.name(),
                vlan: p.vlan.clone(),
                up: true,
                max_macs: p.max_macs.map(|n| n as usize),
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
                .filter(|(_, p)| p.kind.in_fast_path())
                .map(|(id, p)| {
                    let tunnel = slots.get(id).and_then(|s| s.as_ref()?.tunnel.clone());
                    fast_port(id, p, tunnel)
                })
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
                max_ports: config.max_ports,
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

    pub(super) fn running(&self) -> Result<&Running, Error> {
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
