//! `dataplane run`: open the ports, start the PMD thread, report, and tear
//! everything down again on SIGINT/SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::{ForwardingMode, PortKind, RunConfig};
use crate::engine::{self, EngineConfig, EngineShared, FrameAccounting, PmdParts};
use crate::fastpath::{FastPath, FastPortConfig};
use crate::port::afxdp::{AfxdpConfig, AfxdpPort};
use crate::port::tap::TapPort;
use crate::port::{DropReason, Port, PortCounters, PortSnapshot};
use crate::steer::pins::PinRoot;
use crate::steer::ModeRequest;
use crate::switch::{Forwarding, Switch, SwitchPort};
use crate::xsk::{self, BusyPoll, FramePool, SocketConfig, Umem, UmemConfig};
use crate::{port, privileges};

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
    FastPath(#[from] crate::fastpath::Error),
    #[error(transparent)]
    Tap(#[from] port::tap::Error),
    #[error(transparent)]
    VhostUser(#[from] port::vhost_user::Error),
    #[error("starting the PMD thread: {0}")]
    Thread(std::io::Error),
    #[error("a PMD thread panicked; ports were released as it unwound")]
    Panicked,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub accounting: FrameAccounting,
    /// PMD cycles in iterations that found frames, and that found none.
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub ports: Vec<(String, PortSnapshot)>,
}

/// Opens every port, runs the switch until `stop` is set, and releases
/// everything. `on_tick` is called about once a second with a view of the
/// running switch (statistics printing, on-demand dumps).
pub fn run(
    config: &RunConfig,
    pins: &PinRoot,
    stop: &AtomicBool,
    on_tick: &mut dyn FnMut(&EngineShared),
) -> Result<RunSummary, Error> {
    privileges::require_admin()?;
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
    let mut names = Vec::new();
    for (id, p) in config.ports.iter().enumerate() {
        let pmd = id % n_pmds;
        // Keep a quarter of a PMD's frames for flooding copies and TX in
        // flight; spread the rest over its fill rings.
        let fill_queues: usize = config
            .ports
            .iter()
            .enumerate()
            .filter(|(i, _)| i % n_pmds == pmd)
            .map(|(_, p)| p.queues.len())
            .sum();
        let fill_frames = ((config.frames as usize * 3 / 4) / fill_queues.max(1)).min(2048) as u32;
        let counters = Arc::new(PortCounters::default());
        let umem = pmds[pmd].umem.clone();
        let port: Box<dyn Port> = match p.kind {
            PortKind::Afxdp => {
                let socket = SocketConfig {
                    bind: p.bind,
                    busy_poll: config
                        .socket_busy_poll
                        .map(|usecs| BusyPoll { usecs, budget: 64 }),
                    ..SocketConfig::default()
                };
                Box::new(AfxdpPort::open(
                    &AfxdpConfig {
                        ifname: p.iface.clone(),
                        queues: p.queues.clone(),
                        socket,
                        fill_frames,
                        attach_mode: ModeRequest::Auto,
                    },
                    &umem,
                    pins,
                    counters.clone(),
                )?)
            }
            PortKind::Tap => Box::new(TapPort::open(&p.iface, p.queues.len(), counters.clone())?),
            PortKind::VhostUser => Box::new(port::vhost_user::VhostUserPort::open(
                std::path::Path::new(&p.iface),
                counters.clone(),
            )?),
        };
        names.push((port.name().to_string(), counters));
        pmds[pmd].ports.push((id, port));
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
            .filter(|(_, p)| p.kind == PortKind::Afxdp)
            .map(|(id, p)| FastPortConfig {
                port: id,
                ifname: p.iface.clone(),
                vlan: p.vlan.clone(),
            })
            .collect();
        Some(FastPath::start(pins, config.ports.len(), &members)?)
    } else {
        None
    };
    let running = engine::start(
        EngineConfig {
            burst: config.burst,
            busy_poll: config.busy_poll,
            cpu: None,
        },
        pmds,
        config.ports.len(),
        names,
        switch,
        fast_path,
    )
    .map_err(Error::Thread)?;
    let shared = running.shared.clone();
    tracing::info!(
        ports = config.ports.len(),
        mode = ?config.mode,
        polling = if config.busy_poll { "busy" } else { "adaptive" },
        pmds = n_pmds,
        cores = ?config.cores,
        "switch running"
    );

    while !stop.load(Ordering::Relaxed) && !running.any_finished() {
        let tick = Instant::now() + Duration::from_secs(1);
        while Instant::now() < tick && !stop.load(Ordering::Relaxed) && !running.any_finished() {
            std::thread::sleep(Duration::from_millis(50));
        }
        on_tick(&shared);
    }
    let accounting = running.stop().map_err(|_| Error::Panicked)?;
    Ok(RunSummary {
        accounting,
        busy_cycles: shared.busy_cycles.load(Ordering::Relaxed),
        idle_cycles: shared.idle_cycles.load(Ordering::Relaxed),
        ports: shared
            .ports
            .iter()
            .map(|(name, c)| (name.clone(), c.snapshot()))
            .collect(),
    })
}

/// A statistics table: totals, and rates since `previous` over `dt` seconds.
pub fn stats_table(
    now: &[(String, PortSnapshot)],
    previous: Option<(&[(String, PortSnapshot)], f64)>,
) -> String {
    let mut s = format!(
        "{:<20} {:>12} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "PORT", "RX_PKTS", "RX_PPS", "TX_PKTS", "TX_PPS", "FAST_PKTS", "FAST_PPS"
    );
    for r in DropReason::ALL {
        s.push_str(&format!(" {:>13}", format!("drop_{}", r.name())));
    }
    s.push('\n');
    for (i, (name, c)) in now.iter().enumerate() {
        let (rx_pps, tx_pps, fast_pps) = match previous {
            Some((prev, dt)) if dt > 0.0 => {
                let p = prev.get(i).map(|(_, p)| *p).unwrap_or_default();
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
            "{:<20} {:>12} {:>10.0} {:>12} {:>10.0} {:>12} {:>10.0}",
            name, c.rx_packets, rx_pps, c.tx_packets, tx_pps, c.fast_path, fast_pps
        ));
        for r in DropReason::ALL {
            s.push_str(&format!(" {:>13}", c.drops(r)));
        }
        s.push('\n');
    }
    s
}

/// Snapshots of every port's counters.
pub fn snapshot(shared: &EngineShared) -> Vec<(String, PortSnapshot)> {
    shared
        .ports
        .iter()
        .map(|(name, c)| (name.clone(), c.snapshot()))
        .collect()
}
