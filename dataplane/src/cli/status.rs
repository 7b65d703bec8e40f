//! `dataplane status`: the table, JSON, and the live `--watch` view.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::steer::pins::PinRoot;
use dataplane::steer::{self, Counters, Health, Status};
use dataplane_common::counters::Outcome;

/// Prints every attachment once.
pub fn print(root: &PinRoot, json: bool) -> anyhow::Result<()> {
    let all = steer::status(root)?;
    if json {
        let list: Vec<_> = all.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no interface has steer attached in this network namespace");
        return Ok(());
    }
    print!("{}", table(&all, None));
    Ok(())
}

/// Redraws the table every `secs` seconds with rates, until Ctrl-C.
pub fn watch(root: &PinRoot, secs: f64) -> anyhow::Result<()> {
    let stop = ctrl_c_flag()?;
    let interval = Duration::from_secs_f64(secs.max(0.1));
    let tty = std::io::stdout().is_terminal();
    let mut previous: Option<(Instant, Vec<Status>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let all = steer::status(root)?;
        let rates = previous.as_ref().map(|(t, before)| {
            let dt = now.duration_since(*t).as_secs_f64();
            (dt, before.clone())
        });
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&table(
            &all,
            rates.as_ref().map(|(dt, b)| (*dt, b.as_slice())),
        ));
        if tty {
            out.push_str("\n(Ctrl-C to stop)\n");
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        previous = Some((now, all));
        sleep_unless(&stop, interval);
    }
    Ok(())
}

/// A flag that Ctrl-C (SIGINT), SIGTERM, SIGHUP and SIGQUIT set, instead
/// of killing us.
pub fn ctrl_c_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    // SIGHUP (the terminal went away) and SIGQUIT stop as cleanly: their
    // default action would leave attachments and pins behind.
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}

pub fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let end = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn table(all: &[Status], rates: Option<(f64, &[Status])>) -> String {
    let mut s = format!(
        "{:<16} {:<9} {:<7} {:<8} {:>7}",
        "INTERFACE", "STATE", "MODE", "POLICY", "MATCHES"
    );
    for o in Outcome::ALL {
        s.push_str(&format!(" {:>12}", o.name().to_uppercase()));
    }
    s.push('\n');
    for st in all {
        let state = match st.health {
            Health::Attached { .. } => "attached",
            Health::Stale => "stale",
        };
        s.push_str(&format!(
            "{:<16} {:<9} {:<7} {:<8} {:>7}",
            st.ifname,
            state,
            st.mode.map(|m| m.name()).unwrap_or("?"),
            st.policy.name(),
            st.matches
        ));
        for o in Outcome::ALL {
            s.push_str(&format!(" {:>12}", st.counters.get(o)));
        }
        s.push('\n');
        if let Some((dt, before)) = rates {
            if let Some(b) = before.iter().find(|b| b.ifname == st.ifname) {
                let d: Counters = st.counters.since(&b.counters);
                s.push_str(&format!("{:<16} {:>42}", "", "per second:"));
                for o in Outcome::ALL {
                    s.push_str(&format!(" {:>12.0}", d.get(o) as f64 / dt));
                }
                s.push('\n');
            }
        }
        if st.health == Health::Stale {
            s.push_str(&format!(
                "  {} is gone or no longer runs steer: `dataplane detach --iface {}` removes the pins\n",
                st.ifname, st.ifname
            ));
        }
    }
    s
}

fn to_json(st: &Status) -> serde_json::Value {
    let mut counters = serde_json::Map::new();
    for o in Outcome::ALL {
        counters.insert(o.name().into(), st.counters.get(o).into());
    }
    serde_json::json!({
        "interface": st.ifname,
        "state": match st.health { Health::Attached { .. } => "attached", Health::Stale => "stale" },
        "program_id": match st.health { Health::Attached { program_id } => Some(program_id), Health::Stale => None },
        "mode": st.mode.map(|m| m.name()),
        "policy": st.policy.name(),
        "matches": st.matches,
        "counters": counters,
    })
}
