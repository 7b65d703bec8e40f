//! `dataplane run`: start the switch from flags or a file, report while it
//! runs, stop it cleanly and print the final frame accounting.

use anyhow::Context;
use dataplane::steer::pins::PinRoot;
use dataplane::sync::LockOrRecover;

use super::args::RunArgs;

pub fn run_switch(root: &PinRoot, args: RunArgs, socket: &std::path::Path) -> anyhow::Result<()> {
    use dataplane::daemon::config::{ForwardingMode, RunConfig, RunFlags};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let mut config = match &args.config {
        Some(path) => RunConfig::from_file(path)?,
        None => RunConfig::from_flags(
            &args.ports,
            RunFlags {
                mode: if args.xconnect {
                    ForwardingMode::Xconnect
                } else {
                    ForwardingMode::Switch
                },
                fast_path: !args.no_fast_path,
                busy_poll: args.busy_poll,
                cores: match args.core {
                    Some(c) => vec![c],
                    None => args.cores.clone(),
                },
                burst: args.burst,
                fdb_max_entries: args.fdb_max_entries,
                max_ports: args.max_ports,
                stats_interval: args
                    .stats_interval
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
            },
        )?,
    };
    if let Some(us) = args.socket_busy_poll {
        config.socket_busy_poll = Some(us);
    }
    let stop = super::status::ctrl_c_flag()?;
    let dump = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, dump.clone())?;

    let mut last: Option<(Instant, Vec<(String, dataplane::port::PortSnapshot)>)> = None;
    let mut next_stats = config.stats_interval.map(|i| Instant::now() + i);
    // Before any thread starts: they inherit it, and a PMD re-pins itself.
    match dataplane::sys::netdev::keep_off_cpus(&config.cores) {
        Ok(Some(left)) => {
            tracing::info!("threads other than the PMDs run on CPU(s) {left:?}, off the PMDs' CPUs")
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("could not keep other threads off the PMDs' CPUs: {e}"),
    }
    let daemon = Arc::new(Mutex::new(dataplane::daemon::run::Daemon::start(
        &config, root,
    )?));
    let handler = Arc::new(dataplane::daemon::ControlHandler(daemon.clone()));
    let server = match dataplane::control::Server::start(
        (!args.no_control).then_some(socket),
        args.metrics,
        handler,
    ) {
        Ok(server) => server,
        Err(e) => {
            // Release the ports before reporting.
            let _ = daemon.lock_or_recover().stop();
            return Err(e.into());
        }
    };
    if !args.no_control {
        tracing::info!(socket = %socket.display(), "control socket ready (dataplane show ports, port add, stats --watch)");
    }
    if let Some(addr) = args.metrics {
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let summary = dataplane::daemon::run::run_until(&daemon, &stop, &mut |d| {
        let now = Instant::now();
        let periodic = next_stats.is_some_and(|t| now >= t);
        let on_demand = dump.swap(false, Ordering::Relaxed);
        if !periodic && !on_demand {
            return;
        }
        if let (Some(t), Some(i)) = (next_stats.as_mut(), config.stats_interval) {
            if periodic {
                *t = now + i;
            }
        }
        let snap = dataplane::daemon::snapshot(d);
        let prev = last
            .as_ref()
            .map(|(t, p)| (p.as_slice(), now.duration_since(*t).as_secs_f64()));
        print!("{}", dataplane::daemon::stats_table(&snap, prev));
        if on_demand {
            print_fdb(&d.fdb_rows());
        }
        last = Some((now, snap));
    });
    drop(server);
    let summary = summary?;
    println!("final port statistics:");
    print!("{}", dataplane::daemon::stats_table(&summary.ports, None));
    let polling = (summary.busy_cycles + summary.idle_cycles).max(1);
    println!(
        "PMD: {:.1}% of polling cycles forwarded frames ({} busy, {} idle cycles; time asleep not counted); longest iteration {} us",
        summary.busy_cycles as f64 * 100.0 / polling as f64,
        summary.busy_cycles,
        summary.idle_cycles,
        summary.longest_iteration_ns / 1000
    );
    let a = summary.accounting;
    println!(
        "frames: {} total, {} free, {} in fill/RX rings, {} in TX/completion rings, {} unaccounted, {} refused frees",
        a.total,
        a.free,
        a.in_rx_rings,
        a.in_tx_rings,
        a.unaccounted(),
        a.refused_frees
    );
    if let Some(path) = &args.summary_json {
        write_summary(path, &summary)?;
    }
    Ok(())
}

/// `--summary-json`: the run's final accounting and port counters.
fn write_summary(
    path: &std::path::Path,
    summary: &dataplane::daemon::run::RunSummary,
) -> anyhow::Result<()> {
    let a = &summary.accounting;
    let ports: Vec<serde_json::Value> = summary
        .ports
        .iter()
        .map(|(name, p)| {
            serde_json::json!({
                "name": name,
                "rx_packets": p.rx_packets,
                "tx_packets": p.tx_packets,
                "fast_path": p.fast_path,
                "drops": p.total_drops(),
            })
        })
        .collect();
    let json = serde_json::json!({
        "frames": {
            "total": a.total,
            "free": a.free,
            "in_rx_rings": a.in_rx_rings,
            "in_tx_rings": a.in_tx_rings,
            "unaccounted": a.unaccounted(),
            "refused_frees": a.refused_frees,
        },
        "longest_iteration_ns": summary.longest_iteration_ns,
        "ports": ports,
    });
    std::fs::write(path, format!("{json:#}\n"))
        .with_context(|| format!("writing the run summary to {}", path.display()))
}

/// The FDB, as SIGUSR1 prints it.
fn print_fdb(fdb: &[dataplane::control::FdbRow]) {
    println!("FDB ({} entries):", fdb.len());
    print!("{}", dataplane::control::FdbRow::table(fdb));
}
