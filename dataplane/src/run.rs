//! `dataplane run`: open the ports, start the PMD thread, report, and tear
//! everything down again on SIGINT/SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::{ForwardingMode, PortKind, RunConfig};
use crate::engine::{Engine, EngineConfig, EngineShared, FrameAccounting};
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
    #[error("starting the PMD thread: {0}")]
    Thread(std::io::Error),
    #[error("the PMD thread panicked; ports were released as it unwound")]
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
    let pool = FramePool::new(&umem);
    // Keep a quarter of the frames for flooding copies and TX in flight;
    // spread the rest over the fill rings.
    let fill_queues: usize = config.ports.iter().map(|p| p.queues.len()).sum();
    let fill_frames = ((config.frames as usize * 3 / 4) / fill_queues.max(1)).min(2048) as u32;

    let mut ports: Vec<Box<dyn Port>> = Vec::new();
    for p in &config.ports {
        match p.kind {
            PortKind::Afxdp => {
                let socket = SocketConfig {
                    bind: p.bind,
                    busy_poll: config
                        .socket_busy_poll
                        .map(|usecs| BusyPoll { usecs, budget: 64 }),
                    ..SocketConfig::default()
                };
                let port = AfxdpPort::open(
                    &AfxdpConfig {
                        ifname: p.iface.clone(),
                        queues: p.queues.clone(),
                        socket,
                        fill_frames,
                        attach_mode: ModeRequest::Auto,
                    },
                    &umem,
                    pins,
                    Arc::new(PortCounters::default()),
                )?;
                ports.push(Box::new(port));
            }
            PortKind::Tap => {
                let port =
                    TapPort::open(&p.iface, p.queues.len(), Arc::new(PortCounters::default()))?;
                ports.push(Box::new(port));
            }
        }
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
    let engine = Engine::new(
        EngineConfig {
            burst: config.burst,
            busy_poll: config.busy_poll,
            cpu: config.core,
        },
        umem,
        pool,
        ports,
        switch,
        fast_path,
    );
    let shared = engine.shared();
    let pmd = std::thread::Builder::new()
        .name("dataplane-pmd".into())
        .spawn(move || engine.run())
        .map_err(Error::Thread)?;
    tracing::info!(
        ports = config.ports.len(),
        mode = ?config.mode,
        polling = if config.busy_poll { "busy" } else { "adaptive" },
        core = ?config.core,
        "switch running"
    );

    while !stop.load(Ordering::Relaxed) && !pmd.is_finished() {
        let tick = Instant::now() + Duration::from_secs(1);
        while Instant::now() < tick && !stop.load(Ordering::Relaxed) && !pmd.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
        }
        on_tick(&shared);
    }
    shared.request_stop();
    let accounting = pmd.join().map_err(|_| Error::Panicked)?;
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
