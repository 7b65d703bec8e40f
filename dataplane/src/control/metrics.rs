//! Prometheus text exposition (format 0.0.4) of the switch's counters.

use std::fmt::Write;

use super::protocol::PortStatus;

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    pub ports: Vec<PortStatus>,
    /// Per interface running `steer`: (interface, [(outcome, frames)]).
    pub xdp: Vec<(String, Vec<(&'static str, u64)>)>,
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    /// The longest PMD iteration since the start, in microseconds.
    pub longest_iteration_us: f64,
    /// The same without the kernel's transmit calls, in microseconds.
    pub longest_own_iteration_us: f64,
    pub fdb_entries: usize,
    pub learning: crate::switch::LearningStats,
    pub uptime: f64,
}

/// Reads one counter of a port.
type PortField = fn(&PortStatus) -> u64;

/// Renders `m` as Prometheus text.
pub fn render(m: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let port_counters: [(&str, &str, PortField); 8] = [
        (
            "dataplane_port_rx_packets_total",
            "Frames the switch received on the port (AF_XDP and TAP paths).",
            |p| p.rx_packets,
        ),
        (
            "dataplane_port_rx_bytes_total",
            "Bytes the switch received on the port.",
            |p| p.rx_bytes,
        ),
        (
            "dataplane_port_tx_packets_total",
            "Frames the switch sent on the port.",
            |p| p.tx_packets,
        ),
        (
            "dataplane_port_tx_bytes_total",
            "Bytes the switch sent on the port.",
            |p| p.tx_bytes,
        ),
        (
            "dataplane_port_fast_path_packets_total",
            "Frames from the port forwarded by the in-kernel fast path.",
            |p| p.fast_path,
        ),
        (
            "dataplane_port_checksums_completed_total",
            "Received frames whose checksum the sender left to the device and the switch finished.",
            |p| p.checksums_completed,
        ),
        (
            "dataplane_port_gso_frames_total",
            "Received super-frames (TSO) the switch cut into segments.",
            |p| p.gso_frames,
        ),
        (
            "dataplane_port_gso_segments_total",
            "Segments the switch cut received super-frames into.",
            |p| p.gso_segments,
        ),
    ];
    for (name, help, value) in port_counters {
        header(&mut out, name, help, "counter");
        for p in &m.ports {
            let _ = writeln!(out, "{name}{{port=\"{}\"}} {}", escape(&p.name), value(p));
        }
    }
    header(
        &mut out,
        "dataplane_port_drops_total",
        "Frames dropped, by port and reason.",
        "counter",
    );
    for p in &m.ports {
        for (reason, n) in &p.drops {
            let _ = writeln!(
                out,
                "dataplane_port_drops_total{{port=\"{}\",reason=\"{}\"}} {n}",
                escape(&p.name),
                escape(reason)
            );
        }
    }
    header(
        &mut out,
        "dataplane_port_up",
        "1 if the port carries frames, 0 if it is down (link down or interface gone).",
        "gauge",
    );
    for p in &m.ports {
        let _ = writeln!(
            out,
            "dataplane_port_up{{port=\"{}\"}} {}",
            escape(&p.name),
            u8::from(p.state == "up")
        );
    }
    header(
        &mut out,
        "dataplane_xdp_packets_total",
        "Frames the steer XDP program handled, by interface and outcome.",
        "counter",
    );
    for (iface, outcomes) in &m.xdp {
        for (outcome, n) in outcomes {
            let _ = writeln!(
                out,
                "dataplane_xdp_packets_total{{interface=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(iface)
            );
        }
    }
    header(
        &mut out,
        "dataplane_pmd_cycles_total",
        "PMD CPU cycles in polling iterations that moved frames (busy) or found none (idle); sleep not counted.",
        "counter",
    );
    let _ = writeln!(
        out,
        "dataplane_pmd_cycles_total{{state=\"busy\"}} {}",
        m.busy_cycles
    );
    let _ = writeln!(
        out,
        "dataplane_pmd_cycles_total{{state=\"idle\"}} {}",
        m.idle_cycles
    );
    header(
        &mut out,
        "dataplane_pmd_longest_iteration_seconds",
        "The longest single PMD iteration since the start: the longest a port waited to be served while its PMD was awake.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "dataplane_pmd_longest_iteration_seconds {}",
        m.longest_iteration_us / 1e6
    );
    header(
        &mut out,
        "dataplane_pmd_longest_own_iteration_seconds",
        "The same without the time inside the kernel's transmit and refill calls (AF_XDP copy mode runs the receiver's stack inside them): the PMD's own work.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "dataplane_pmd_longest_own_iteration_seconds {}",
        m.longest_own_iteration_us / 1e6
    );
    header(
        &mut out,
        "dataplane_fdb_entries",
        "Addresses in the learning table.",
        "gauge",
    );
    let _ = writeln!(out, "dataplane_fdb_entries {}", m.fdb_entries);
    let l = &m.learning;
    for (name, help, value) in [
        (
            "dataplane_fdb_learned_total",
            "Source addresses learned.",
            l.learned,
        ),
        (
            "dataplane_fdb_moved_total",
            "Learned addresses seen again on another port.",
            l.moved,
        ),
        (
            "dataplane_fdb_table_full_total",
            "Source addresses not learned: the learning table was full.",
            l.table_full,
        ),
        (
            "dataplane_fdb_port_limit_total",
            "Source addresses not learned: their port was at its max_macs.",
            l.port_limit,
        ),
        (
            "dataplane_fdb_rate_limited_total",
            "Source addresses not learned: their port exceeded fdb.learn_rate.",
            l.rate_limited,
        ),
        (
            "dataplane_fdb_queue_full_total",
            "Sightings of source addresses a PMD could not hand to the slow path (its queue was full).",
            l.queue_full,
        ),
    ] {
        header(&mut out, name, help, "counter");
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "dataplane_uptime_seconds",
        "Seconds since the switch started.",
        "gauge",
    );
    let _ = writeln!(out, "dataplane_uptime_seconds {:.3}", m.uptime);
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, state: &str) -> PortStatus {
        PortStatus {
            id: 0,
            name: name.into(),
            state: state.into(),
            pmd: 0,
            rx_packets: 5,
            rx_bytes: 300,
            tx_packets: 7,
            tx_bytes: 420,
            fast_path: 9,
            checksums_completed: 0,
            gso_frames: 0,
            gso_segments: 0,
            drops: [("policy".to_string(), 2)].into_iter().collect(),
            peer_effect: None,
            afxdp_mode: None,
        }
    }

    #[test]
    fn every_sample_line_is_name_labels_value() {
        let text = render(&MetricsSnapshot {
            ports: vec![port("afxdp:sa", "up"), port("tap:vm\"0", "down")],
            xdp: vec![("sa".into(), vec![("redirected", 4), ("fast_path", 1)])],
            busy_cycles: 10,
            idle_cycles: 20,
            longest_iteration_us: 250.0,
            longest_own_iteration_us: 100.0,
            fdb_entries: 3,
            learning: crate::switch::LearningStats {
                port_limit: 7,
                ..Default::default()
            },
            uptime: 1.5,
        });
        assert!(
            text.contains("dataplane_fdb_port_limit_total 7\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.starts_with("dataplane_"), "{line}");
        }
        assert!(text.contains("dataplane_port_rx_packets_total{port=\"afxdp:sa\"} 5\n"));
        assert!(text.contains("dataplane_port_up{port=\"tap:vm\\\"0\"} 0\n"));
        assert!(text.contains("dataplane_pmd_longest_iteration_seconds 0.00025\n"));
        assert!(
            text.contains("dataplane_port_drops_total{port=\"afxdp:sa\",reason=\"policy\"} 2\n")
        );
        assert!(text
            .contains("dataplane_xdp_packets_total{interface=\"sa\",outcome=\"redirected\"} 4\n"));
        assert!(text.contains("dataplane_pmd_cycles_total{state=\"idle\"} 20\n"));
        // Each metric family is declared once.
        assert_eq!(text.matches("# TYPE dataplane_port_up gauge").count(), 1);
    }
}
