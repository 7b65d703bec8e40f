//! The client commands that talk to a running switch over its control
//! socket: `port add|del`, `show ports|fdb|config`, `stats`, `fdb flush`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dataplane::control::{Client, FdbRow, PmdStatus, PortStatus, Request, Stats};

use super::status::{ctrl_c_flag, sleep_unless};

/// `dataplane port add SPEC`.
pub fn port_add(socket: &Path, spec: &str) -> anyhow::Result<()> {
    let v = Client::connect(socket)?.request(&Request::PortAdd { spec: spec.into() })?;
    println!(
        "added port {} (id {})",
        v["name"].as_str().unwrap_or(spec),
        v["id"]
    );
    Ok(())
}

/// `dataplane port del NAME`.
pub fn port_del(socket: &Path, name: &str) -> anyhow::Result<()> {
    let v = Client::connect(socket)?.request(&Request::PortDel { name: name.into() })?;
    println!(
        "removed port {name} ({} frames received, {} sent over its life)",
        v["rx_packets"], v["tx_packets"]
    );
    Ok(())
}

/// `dataplane fdb flush [--port NAME]`.
pub fn fdb_flush(socket: &Path, port: Option<String>) -> anyhow::Result<()> {
    let v = Client::connect(socket)?.request(&Request::FdbFlush { port: port.clone() })?;
    match port {
        Some(p) => println!("flushed {} addresses learned on {p}", v["removed"]),
        None => println!("flushed {} addresses", v["removed"]),
    }
    Ok(())
}

/// `dataplane show ports`.
pub fn show_ports(socket: &Path, json: bool) -> anyhow::Result<()> {
    let ports: Vec<PortStatus> = Client::connect(socket)?.call(&Request::ShowPorts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ports)?);
        return Ok(());
    }
    println!(
        "{:>3}  {:<24} {:<5} {:>3} {:>12} {:>12} {:>12} {:>10}  NOTE",
        "ID", "PORT", "STATE", "PMD", "RX_PKTS", "TX_PKTS", "FAST_PKTS", "DROPS"
    );
    for p in ports {
        println!(
            "{:>3}  {:<24} {:<5} {:>3} {:>12} {:>12} {:>12} {:>10}  {}",
            p.id,
            p.name,
            p.state,
            p.pmd,
            p.rx_packets,
            p.tx_packets,
            p.fast_path,
            p.drops.values().sum::<u64>(),
            p.peer_effect.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// `dataplane show fdb`.
pub fn show_fdb(socket: &Path, json: bool) -> anyhow::Result<()> {
    let rows: Vec<FdbRow> = Client::connect(socket)?.call(&Request::ShowFdb)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print!("{}", FdbRow::table(&rows));
    println!("({} entries)", rows.len());
    Ok(())
}

/// `dataplane show pmd`.
pub fn show_pmd(socket: &Path, json: bool) -> anyhow::Result<()> {
    let pmds: Vec<PmdStatus> = Client::connect(socket)?.call(&Request::ShowPmd)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&pmds)?);
        return Ok(());
    }
    for p in &pmds {
        let cpu = p.cpu.map_or("unpinned".to_string(), |c| format!("CPU {c}"));
        println!(
            "PMD {} ({cpu}): busy {:.1}% of its polling cycles",
            p.pmd,
            100.0 * p.busy_share
        );
        for q in &p.rxqs {
            let queues: Vec<String> = q.queues.iter().map(u32::to_string).collect();
            println!(
                "  {:<24} queues {:<8} usage {:>5.1}%",
                q.port,
                queues.join("+"),
                100.0 * q.usage
            );
        }
    }
    Ok(())
}

/// `dataplane show config`.
pub fn show_config(socket: &Path) -> anyhow::Result<()> {
    let text: String = Client::connect(socket)?.call(&Request::ShowConfig)?;
    print!("{text}");
    Ok(())
}

/// `dataplane stats [--watch SECS]`: one table, or a live view redrawn in
/// place (a plain sequence of tables when stdout is not a terminal).
pub fn stats(socket: &Path, watch: Option<f64>, json: bool) -> anyhow::Result<()> {
    let mut client = Client::connect(socket)?;
    let Some(secs) = watch else {
        let s: Stats = client.call(&Request::Stats)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            print!("{}", stats_table(&s, None));
        }
        return Ok(());
    };
    let stop = ctrl_c_flag()?;
    let interval = Duration::from_secs_f64(secs.max(0.1));
    let tty = std::io::stdout().is_terminal();
    let mut previous: Option<Stats> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let s: Stats = match client.call(&Request::Stats) {
            Ok(s) => s,
            Err(e) => anyhow::bail!("the switch went away: {e}"),
        };
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&stats_table(&s, previous.as_ref()));
        if tty {
            out.push_str("\n(Ctrl-C to stop)\n");
        } else {
            out.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        previous = Some(s);
        sleep_unless(&stop, interval.saturating_sub(started.elapsed()));
    }
    Ok(())
}

/// Per port: state, packets and bits per second (rates against `before`),
/// drops by reason; then the PMDs' busy share.
fn stats_table(now: &Stats, before: Option<&Stats>) -> String {
    let dt = before.map(|b| now.uptime - b.uptime).filter(|dt| *dt > 0.0);
    let reasons: Vec<&String> = now
        .ports
        .first()
        .map(|p| p.drops.keys().collect())
        .unwrap_or_default();
    let mut s = format!(
        "{:<24} {:<5} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "PORT", "STATE", "RX_PPS", "RX_MBPS", "TX_PPS", "TX_MBPS", "FAST_PPS"
    );
    for r in &reasons {
        s.push_str(&format!(" {:>14}", format!("drop_{r}")));
    }
    s.push('\n');
    for p in &now.ports {
        let prev = before.and_then(|b| b.ports.iter().find(|q| q.name == p.name));
        let rate = |f: fn(&PortStatus) -> u64| match (dt, prev) {
            (Some(dt), Some(q)) => f(p).saturating_sub(f(q)) as f64 / dt,
            _ => 0.0,
        };
        s.push_str(&format!(
            "{:<24} {:<5} {:>10.0} {:>10.2} {:>10.0} {:>10.2} {:>10.0}",
            p.name,
            p.state,
            rate(|p| p.rx_packets),
            rate(|p| p.rx_bytes) * 8.0 / 1e6,
            rate(|p| p.tx_packets),
            rate(|p| p.tx_bytes) * 8.0 / 1e6,
            rate(|p| p.fast_path),
        ));
        for r in &reasons {
            s.push_str(&format!(" {:>14}", p.drops.get(*r).copied().unwrap_or(0)));
        }
        s.push('\n');
    }
    let (busy, idle) = match before {
        Some(b) => (
            now.busy_cycles.saturating_sub(b.busy_cycles),
            now.idle_cycles.saturating_sub(b.idle_cycles),
        ),
        None => (now.busy_cycles, now.idle_cycles),
    };
    s.push_str(&format!(
        "PMD busy {:.1}% of polling cycles; longest iteration {:.0} us ({:.0} us without kernel transmit calls); uptime {:.0}s\n",
        busy as f64 * 100.0 / (busy + idle).max(1) as f64,
        now.longest_iteration_us,
        now.longest_own_iteration_us,
        now.uptime
    ));
    s
}
