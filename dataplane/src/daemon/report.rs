//! What the running switch reports: port states, statistics, the FDB and
//! metrics for the control socket, and the statistics table `run` prints.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::run::Daemon;
use crate::control::metrics::{self, MetricsSnapshot};
use crate::control::{FdbRow, Handler, PmdStatus, PortStatus, Request, Response, RxqStatus, Stats};
use crate::port::{DropReason, PortSnapshot};
use crate::steer::Attachment;
use crate::sync::LockOrRecover;

impl Daemon {
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
                    afxdp_mode: snap.afxdp_mode.map(|m| m.to_string()),
                }
            })
            .collect()
    }

    /// Each PMD with the ports it polls (`show pmd`).
    pub fn pmd_status(&self) -> Vec<PmdStatus> {
        let Some(running) = self.running.as_ref() else {
            return Vec::new();
        };
        let ports = running.shared.ports();
        running
            .shared
            .pmds
            .iter()
            .enumerate()
            .map(|(pmd, c)| {
                let busy = c.busy.load(Ordering::Relaxed);
                let idle = c.idle.load(Ordering::Relaxed);
                let rxqs = ports
                    .iter()
                    .flat_map(|(id, e)| {
                        e.parts
                            .iter()
                            .filter(|(p, _)| *p == pmd)
                            .map(move |(_, queues)| (*id, e, queues))
                    })
                    .map(|(id, e, queues)| {
                        let spent = running.shared.rxq_cycles[pmd]
                            .get(id)
                            .map_or(0, |c| c.load(Ordering::Relaxed));
                        RxqStatus {
                            port: e.name.clone(),
                            queues: queues.clone(),
                            busy_cycles: spent,
                            usage: if busy > 0 {
                                (spent as f64 / busy as f64).min(1.0)
                            } else {
                                0.0
                            },
                        }
                    })
                    .collect();
                PmdStatus {
                    pmd,
                    cpu: c.cpu,
                    busy_cycles: busy,
                    idle_cycles: idle,
                    busy_share: if busy + idle > 0 {
                        busy as f64 / (busy + idle) as f64
                    } else {
                        0.0
                    },
                    rxqs,
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
            learning: self
                .running
                .as_ref()
                .map(|r| r.learning_stats())
                .unwrap_or_default(),
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
        // Tunnel ports' remote tables, copied once for the whole listing.
        let remotes: Vec<Vec<crate::port::vxlan::RemoteMac>> = (0..names.len())
            .map(|id| {
                self.slots
                    .get(id)
                    .and_then(|s| Some(&s.as_ref()?.tunnel.as_ref()?.remote_macs))
                    .map(|t| t.lock_or_recover().clone())
                    .unwrap_or_default()
            })
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
                // The inner frames carry the switch VLAN as a tag (trunk) or
                // no tag (access, untagged).
                remote: remotes
                    .get(e.port)
                    .and_then(|t| {
                        t.iter()
                            .find(|r| r.mac == mac && (r.vlan == vlan || r.vlan == 0))
                    })
                    .map(|r| r.remote.to_string()),
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
            learning: stats.learning,
            uptime: stats.uptime,
        }
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
            Request::ShowPmd => Response::ok(d.pmd_status()),
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
