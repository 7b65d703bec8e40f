//! `cargo xtask bench scale`: how the cost of forwarding grows with the
//! work, every path measured at every point in the same run.
//!
//! 1. **MACs.** N/2 hosts behind a0 send to N/2 hosts behind b0, host i
//!    to host i, round robin (`dataplane gen --flows N/2`: the source and
//!    destination MAC change every frame). Both sides speak first, at a
//!    paced rate, so every switch knows every host before it is measured
//!    (the "learned" column says how many it knew). N = 2, 1k, 8k, 64k.
//! 2. **Ports.** Broadcast frames from a0, flooded to every other port:
//!    sb and up to 14 more (sf1.., whose far ends drop in XDP). Each frame
//!    reaches b0 once, so b0 counts frames switched; the cost of one grows
//!    with the copies it takes.
//! 3. **MAC flood.** An established flow a0 -> b0 while c0 sends from a
//!    million source MACs, each new (`--vary src`, to c0's own MAC: none
//!    of it is forwarded, it is all learning work), against the same with
//!    c0 sending from two known MACs. Both generators share CPU 0 in both
//!    runs, so the ratio is the cost of the learning alone.
//!
//! Every learning path gets the same table size ([`SCALE_TABLE`]): the
//! largest MAC point fits, the flood does not. The tables and a chart go
//! to target/bench/scale.{md,json,png}.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::paths::{self, PathKind, RunningPath, SCALE_TABLE};
use super::topology::{Topology, FLOOD_PORTS};
use super::traffic::{self, Dataplane, Flows, Sample};
use super::{BenchOptions, Scenario};
use crate::run::target_dir;

/// MAC counts of part 1 (two per flow).
const MAC_POINTS: [u32; 4] = [2, 1024, 8192, 65536];
/// Port counts of part 2.
const PORT_POINTS: [usize; 4] = [2, 4, 8, 16];
/// Distinct sources of the MAC flood.
const FLOOD_SOURCES: u32 = 1 << 20;
/// First MAC of the hosts behind a0, behind b0, and of the flood.
const A_HOSTS: &str = "02:5a:00:00:00:00";
const B_HOSTS: &str = "02:5b:00:00:00:00";
const FLOOD_HOSTS: &str = "02:5c:00:00:00:00";
/// Frames per second of the learning passes. The generator sends 40 ms
/// worth per call at line rate; at this rate that is 1600 frames, which
/// a 2048-frame receive ring holds (at 100k pps, 4000 overflowed it).
const LEARN_RATE: u64 = 40_000;
const SIZE: usize = 64;

/// The paths of each part: the fast path floods like the userspace path
/// (broadcast never takes it), so part 2 leaves it out.
const MAC_PATHS: [PathKind; 4] = [
    PathKind::LinuxBridge,
    PathKind::DataplaneFastpath,
    PathKind::Dataplane,
    PathKind::OvsAfxdp,
];
const PORT_PATHS: [PathKind; 3] = [
    PathKind::LinuxBridge,
    PathKind::Dataplane,
    PathKind::OvsAfxdp,
];

/// One point of a curve.
struct Point {
    x: u64,
    samples: Vec<Sample>,
    /// Addresses of the run's hosts in the path's table after learning.
    learned: Option<usize>,
    errors: Vec<String>,
}

/// One path's curve in one part.
struct Curve {
    path: PathKind,
    points: Vec<Point>,
    failed: Option<String>,
}

/// Progress line and the stop flag.
struct Progress<'a> {
    started: Instant,
    stop: &'a AtomicBool,
}

impl Progress<'_> {
    fn say(&self, what: &str) {
        eprint!(
            "\r[bench] scale: {what} ... {:.0}s elapsed          ",
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

pub fn run(opts: &BenchOptions, dp: &Dataplane, stop: &AtomicBool) -> Result<()> {
    let wall = Instant::now();
    let progress = Progress {
        started: wall,
        stop,
    };
    let chosen = |all: &[PathKind]| -> Vec<PathKind> {
        all.iter()
            .copied()
            .filter(|p| opts.paths.is_empty() || opts.paths.contains(p))
            .collect()
    };
    let topo = Topology::up(Scenario::Scale)?;
    dp.sink_policy(&topo, "drop")?;
    for i in 1..=FLOOD_PORTS {
        dp.ok(
            &topo.ns("b"),
            &["attach", "--iface", &format!("f{i}"), "--policy", "drop"],
        )?;
    }
    let macs: Vec<Curve> = chosen(&MAC_PATHS)
        .into_iter()
        .map(|p| mac_curve(opts, &topo, dp, p, &progress))
        .collect();
    let ports: Vec<Curve> = chosen(&PORT_PATHS)
        .into_iter()
        .map(|p| port_curve(opts, &topo, dp, p, &progress))
        .collect();
    let floods: Vec<Curve> = chosen(&MAC_PATHS)
        .into_iter()
        .map(|p| flood_curve(opts, &topo, dp, p, &progress))
        .collect();
    drop(topo);
    eprintln!();

    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let md = markdown(opts, &macs, &ports, &floods, wall.elapsed().as_secs_f64());
    println!("{md}");
    std::fs::write(dir.join("scale.md"), &md)?;
    std::fs::write(
        dir.join("scale.json"),
        serde_json::to_string_pretty(&json(&macs, &ports, &floods))?,
    )?;
    let png = dir.join("scale.png");
    match chart(&png, &macs, &ports, &floods) {
        Ok(()) => eprintln!("[bench] chart: {}", png.display()),
        Err(e) => eprintln!("[bench] no chart: {e:#}"),
    }
    eprintln!(
        "[bench] wrote {}/scale.{{md,json,png}}; wall time {:.0} s",
        dir.display(),
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts `path` on `ports`, or says why it could not.
fn start(
    topo: &Topology,
    dp: &Dataplane,
    path: PathKind,
    ports: &[&str],
) -> Result<RunningPath, String> {
    paths::start_on(
        path,
        Scenario::Scale,
        topo,
        dp,
        ports.iter().map(|p| p.to_string()).collect(),
    )
    .map_err(|e| {
        eprintln!("\n[bench] scale {}: cannot run: {e:#}", path.name());
        format!("{e:#}")
    })
}

/// `repeat` measurements of `flows` from a0 after a short warm-up.
fn measure(opts: &BenchOptions, topo: &Topology, dp: &Dataplane, flows: &Flows) -> Point {
    let _ = traffic::measure_flows(topo, dp, flows, SIZE, 0.5);
    let mut point = Point {
        x: 0,
        samples: Vec::new(),
        learned: None,
        errors: Vec::new(),
    };
    for _ in 0..opts.repeat {
        match traffic::measure_flows(topo, dp, flows, SIZE, opts.seconds) {
            Ok(s) => point.samples.push(s),
            Err(e) => point.errors.push(format!("{e:#}")),
        }
    }
    point
}

/// Part 1: one path, every MAC count.
fn mac_curve(
    opts: &BenchOptions,
    topo: &Topology,
    dp: &Dataplane,
    path: PathKind,
    progress: &Progress,
) -> Curve {
    let mut curve = Curve {
        path,
        points: Vec::new(),
        failed: None,
    };
    progress.say(&format!("{} starting", path.name()));
    let running = match start(topo, dp, path, &["sa", "sb"]) {
        Ok(r) => r,
        Err(e) => {
            curve.failed = Some(e);
            return curve;
        }
    };
    for macs in MAC_POINTS {
        if progress.stopped() {
            break;
        }
        let flows = macs / 2;
        progress.say(&format!("{} {macs} MACs: learning", path.name()));
        let learned = learn_hosts(topo, dp, &running, flows);
        progress.say(&format!("{} {macs} MACs: measuring", path.name()));
        let mut point = measure(
            opts,
            topo,
            dp,
            &Flows {
                src_mac: Some(A_HOSTS),
                dst_mac: B_HOSTS,
                flows,
                vary: "both",
            },
        );
        point.x = macs as u64;
        point.learned = learned;
        curve.points.push(point);
    }
    curve
}

/// Every host behind b0, then every host behind a0, sends one frame, and
/// again until the path's table holds them all (or three rounds passed);
/// returns how many of them it holds.
fn learn_hosts(
    topo: &Topology,
    dp: &Dataplane,
    running: &RunningPath,
    flows: u32,
) -> Option<usize> {
    let mut learned = None;
    for _ in 0..3 {
        for (ns, iface, src, dst) in [("b", "b0", B_HOSTS, A_HOSTS), ("a", "a0", A_HOSTS, B_HOSTS)]
        {
            let f = Flows {
                src_mac: Some(src),
                dst_mac: dst,
                flows,
                vary: "both",
            };
            if let Err(e) =
                traffic::send_count(dp, &topo.ns(ns), iface, &f, flows as u64, LEARN_RATE)
            {
                eprintln!("\n[bench] learning pass from {iface}: {e:#}");
            }
        }
        // Learning is asynchronous everywhere (the switch's slow path,
        // OVS's handlers): wait until the count stops growing.
        let mut last = None;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(250));
            let now = hosts_known(running, dp);
            if now.is_some() && now == last {
                break;
            }
            last = now;
        }
        learned = last;
        if learned.is_none_or(|n| n >= 2 * flows as usize) {
            break;
        }
    }
    learned
}

/// How many of the run's hosts (MACs 02:5a:.. and 02:5b:..) the path's
/// table holds.
fn hosts_known(running: &RunningPath, dp: &Dataplane) -> Option<usize> {
    let dump = running.fdb_dump(dp)?;
    Some(
        dump.lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("02:5a:") || l.contains("02:5b:")
            })
            .count(),
    )
}

/// Part 2: one path, every port count (a fresh start for each).
fn port_curve(
    opts: &BenchOptions,
    topo: &Topology,
    dp: &Dataplane,
    path: PathKind,
    progress: &Progress,
) -> Curve {
    let mut curve = Curve {
        path,
        points: Vec::new(),
        failed: None,
    };
    let flood: Vec<String> = (1..=FLOOD_PORTS).map(|i| format!("sf{i}")).collect();
    for n in PORT_POINTS {
        if progress.stopped() {
            break;
        }
        progress.say(&format!("{} flooding to {n} ports", path.name()));
        let mut ports = vec!["sa", "sb"];
        ports.extend(flood.iter().take(n - 2).map(String::as_str));
        let running = match start(topo, dp, path, &ports) {
            Ok(r) => r,
            Err(e) => {
                curve.failed = Some(e);
                break;
            }
        };
        let mut point = measure(
            opts,
            topo,
            dp,
            &Flows {
                src_mac: Some(A_HOSTS),
                dst_mac: "ff:ff:ff:ff:ff:ff",
                flows: 1,
                vary: "both",
            },
        );
        point.x = n as u64;
        curve.points.push(point);
        drop(running);
    }
    curve
}

/// Part 3: one path, the established flow beside two known sources
/// (x = 2) and beside the MAC flood (x = FLOOD_SOURCES).
fn flood_curve(
    opts: &BenchOptions,
    topo: &Topology,
    dp: &Dataplane,
    path: PathKind,
    progress: &Progress,
) -> Curve {
    let mut curve = Curve {
        path,
        points: Vec::new(),
        failed: None,
    };
    progress.say(&format!("{} MAC flood: starting", path.name()));
    let running = match start(topo, dp, path, &["sa", "sb", "sc"]) {
        Ok(r) => r,
        Err(e) => {
            curve.failed = Some(e);
            return curve;
        }
    };
    let Some(c0_mac) = topo.c0_mac.clone() else {
        curve.failed = Some("the scale topology has no c0".into());
        return curve;
    };
    // c0 speaks once, so frames to its own MAC stay on its port.
    paths::speak_once(&topo.ns("g"));
    let learned = learn_hosts(topo, dp, &running, 1);
    for sources in [2, FLOOD_SOURCES] {
        if progress.stopped() {
            break;
        }
        progress.say(&format!(
            "{} established flow beside {sources} sources",
            path.name()
        ));
        let noise = Flows {
            src_mac: Some(FLOOD_HOSTS),
            dst_mac: &c0_mac,
            flows: sources,
            vary: "src",
        };
        let established = Flows {
            src_mac: Some(A_HOSTS),
            dst_mac: B_HOSTS,
            flows: 1,
            vary: "both",
        };
        let mut point = Point {
            x: sources as u64,
            samples: Vec::new(),
            learned,
            errors: Vec::new(),
        };
        for _ in 0..opts.repeat {
            let child =
                traffic::spawn_gen(dp, &topo.ns("g"), "c0", &noise, SIZE, opts.seconds + 1.5);
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    point.errors.push(format!("{e:#}"));
                    continue;
                }
            };
            // The noise runs before and after the measurement.
            std::thread::sleep(Duration::from_millis(500));
            match traffic::measure_flows(topo, dp, &established, SIZE, opts.seconds) {
                Ok(s) => point.samples.push(s),
                Err(e) => point.errors.push(format!("{e:#}")),
            }
            let _ = child.wait();
        }
        curve.points.push(point);
    }
    if let Some(n) = hosts_in_flood(&running, dp) {
        eprintln!(
            "\n[bench] {} after the flood: {n} flood sources in its table",
            path.name()
        );
    }
    curve
}

/// Flood sources (02:5c:..) in the path's table.
fn hosts_in_flood(running: &RunningPath, dp: &Dataplane) -> Option<usize> {
    let dump = running.fdb_dump(dp)?;
    Some(
        dump.lines()
            .filter(|l| l.to_ascii_lowercase().contains("02:5c:"))
            .count(),
    )
}

/// (min, median, max).
fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some((*s.first()?, s[s.len() / 2], *s.last()?))
}

fn delivered(p: &Point) -> Option<(f64, f64, f64)> {
    stats(
        &p.samples
            .iter()
            .map(|s| s.delivered_pps / 1e6)
            .collect::<Vec<_>>(),
    )
}

/// Core-seconds per million frames delivered (both CPUs, generator
/// included), median over the samples.
fn cost(p: &Point) -> Option<f64> {
    stats(
        &p.samples
            .iter()
            .filter(|s| s.delivered_pps > 0.0)
            .map(|s| (s.cpu0 + s.cpu1) / (s.delivered_pps / 1e6))
            .collect::<Vec<_>>(),
    )
    .map(|s| s.1)
}

fn offered(p: &Point) -> Option<f64> {
    stats(
        &p.samples
            .iter()
            .map(|s| s.offered_pps / 1e6)
            .collect::<Vec<_>>(),
    )
    .map(|s| s.1)
}

fn fmt3(v: Option<(f64, f64, f64)>) -> String {
    v.map_or("-".into(), |(a, b, c)| format!("{a:.3} / {b:.3} / {c:.3}"))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn markdown(
    opts: &BenchOptions,
    macs: &[Curve],
    ports: &[Curve],
    floods: &[Curve],
    wall: f64,
) -> String {
    let mut md = format!(
        "## Scale: MACs, ports and a MAC flood\n\n{} B frames, {} x {} s per point; min / median / max of delivered Mpps. \
         Every learning path has a table of {SCALE_TABLE} addresses. Wall time {wall:.0} s.\n",
        SIZE, opts.repeat, opts.seconds
    );
    md.push_str("\n### 1. Delivered Mpps against the number of MACs\n\nN/2 hosts behind a0 send to N/2 hosts behind b0, round robin; every host spoke first. \"learned\": the run's hosts in the path's table before measuring. \"vs 2 MACs\": median against the path's own 2-MAC median.\n\n| path | MACs | delivered Mpps | offered Mpps | core-s per Mpkt | learned | vs 2 MACs |\n|---|---|---|---|---|---|---|\n");
    for c in macs {
        if let Some(e) = &c.failed {
            md.push_str(&format!(
                "| {} | - | could not run: {} | | | | |\n",
                c.path.name(),
                short(e)
            ));
            continue;
        }
        let base = c.points.first().and_then(delivered).map(|d| d.1);
        for p in &c.points {
            let d = delivered(p);
            let vs = match (d, base) {
                (Some(d), Some(b)) if b > 0.0 => format!("{:.2}", d.1 / b),
                _ => "-".into(),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {vs} |\n",
                c.path.name(),
                p.x,
                fmt3(d),
                opt(offered(p), 2),
                opt(cost(p), 2),
                p.learned.map_or("-".into(), |n| n.to_string()),
            ));
        }
    }
    md.push_str("\n### 2. Flooding against the number of ports\n\nBroadcast from a0, flooded to every other port; b0 counts each frame once (frames switched). \"per copy\": core-s per million copies sent (ports - 1 a frame). \"cost vs 2 ports\": core-s per frame against the path's own 2-port figure; linear growth is ports - 1 (1, 3, 7, 15).\n\n| path | ports | frames switched, Mpps | core-s per Mpkt | per copy | cost vs 2 ports |\n|---|---|---|---|---|---|\n");
    for c in ports {
        if let Some(e) = &c.failed {
            md.push_str(&format!(
                "| {} | - | could not run: {} | | | |\n",
                c.path.name(),
                short(e)
            ));
        }
        let base = c.points.first().and_then(cost);
        for p in &c.points {
            let k = cost(p);
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                c.path.name(),
                p.x,
                fmt3(delivered(p)),
                opt(k, 2),
                opt(k.map(|k| k / (p.x as f64 - 1.0)), 2),
                match (k, base) {
                    (Some(k), Some(b)) if b > 0.0 => format!("{:.2}", k / b),
                    _ => "-".into(),
                },
            ));
        }
    }
    md.push_str(&format!("\n### 3. An established flow during a MAC flood\n\na0 -> b0 (one learned flow) while c0 sends to its own MAC from 2 known sources, then from {FLOOD_SOURCES} sources, each new to the switch; both generators share CPU 0. \"kept\": the established flow's median during the flood against its median beside 2 sources.\n\n| path | c0's sources | established flow, Mpps | kept |\n|---|---|---|---|\n"));
    for c in floods {
        if let Some(e) = &c.failed {
            md.push_str(&format!(
                "| {} | - | could not run: {} | |\n",
                c.path.name(),
                short(e)
            ));
            continue;
        }
        let base = c.points.first().and_then(delivered).map(|d| d.1);
        for p in &c.points {
            let d = delivered(p);
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                c.path.name(),
                p.x,
                fmt3(d),
                match (d, base) {
                    (Some(d), Some(b)) if b > 0.0 && p.x != 2 => format!("{:.0}%", 100.0 * d.1 / b),
                    _ => "".into(),
                }
            ));
        }
    }
    let errors: Vec<String> = macs
        .iter()
        .chain(ports)
        .chain(floods)
        .flat_map(|c| {
            c.points.iter().flat_map(move |p| {
                p.errors
                    .iter()
                    .map(move |e| format!("- {} at {}: {}", c.path.name(), p.x, short(e)))
            })
        })
        .collect();
    if !errors.is_empty() {
        md.push_str("\nErrors:\n");
        md.push_str(&errors.join("\n"));
        md.push('\n');
    }
    md.push_str("\nPaths:\n");
    for p in MAC_PATHS {
        md.push_str(&format!(
            "- `{}`: {}\n",
            p.name(),
            p.describe(Scenario::Scale)
        ));
    }
    md
}

fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").replace('|', "/");
    line.chars().take(150).collect()
}

fn json(macs: &[Curve], ports: &[Curve], floods: &[Curve]) -> serde_json::Value {
    let curves = |cs: &[Curve]| -> serde_json::Value {
        cs.iter()
            .map(|c| {
                serde_json::json!({
                    "path": c.path.name(),
                    "failed": c.failed,
                    "points": c.points.iter().map(|p| serde_json::json!({
                        "x": p.x,
                        "learned": p.learned,
                        "delivered_mpps": p.samples.iter().map(|s| s.delivered_pps / 1e6).collect::<Vec<_>>(),
                        "offered_mpps": p.samples.iter().map(|s| s.offered_pps / 1e6).collect::<Vec<_>>(),
                        "cpu0": p.samples.iter().map(|s| s.cpu0).collect::<Vec<_>>(),
                        "cpu1": p.samples.iter().map(|s| s.cpu1).collect::<Vec<_>>(),
                        "errors": p.errors,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    serde_json::json!({
        "frame_size": SIZE,
        "table": SCALE_TABLE,
        "macs": curves(macs),
        "ports": curves(ports),
        "mac_flood": curves(floods),
    })
}

/// Three panels: Mpps against MACs (log scale), core-s per frame against
/// ports, and the established flow beside 2 sources and during the flood.
fn chart(file: &std::path::Path, macs: &[Curve], ports: &[Curve], floods: &[Curve]) -> Result<()> {
    use plotters::prelude::*;

    super::report::register_sans_serif()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let color =
        |p: PathKind| colors[MAC_PATHS.iter().position(|&q| q == p).unwrap_or(0) % colors.len()];
    let root = BitMapBackend::new(file, (1500, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));

    // 1. Mpps against MACs.
    let max = macs
        .iter()
        .flat_map(|c| c.points.iter().filter_map(delivered).map(|d| d.1))
        .fold(0.1f64, f64::max);
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("Delivered Mpps against MACs", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d((1f64..100_000f64).log_scale(), 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("MACs (log)")
        .y_desc("Mpps (median)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for c in macs {
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .filter_map(|p| delivered(p).map(|d| (p.x as f64, d.1)))
            .collect();
        let col = color(c.path);
        chart
            .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(c.path.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, col.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;

    // 2. Cost per frame against ports.
    let max = ports
        .iter()
        .flat_map(|c| c.points.iter().filter_map(cost))
        .fold(0.1f64, f64::max);
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(
            "Flooding: core-s per Mpkt against ports",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..17f64, 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("ports")
        .y_desc("core-s per Mpkt")
        .draw()?;
    for c in ports {
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .filter_map(|p| cost(p).map(|k| (p.x as f64, k)))
            .collect();
        let col = color(c.path);
        chart
            .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(c.path.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, col.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    // 3. The established flow: beside 2 sources, during the flood.
    let max = floods
        .iter()
        .flat_map(|c| c.points.iter().filter_map(delivered).map(|d| d.1))
        .fold(0.1f64, f64::max);
    let n = floods.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&panels[2])
        .caption(
            "Established flow: 2 sources | MAC flood",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..n, 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("Mpps (median)")
        .draw()?;
    for (i, c) in floods.iter().enumerate() {
        let col = color(c.path);
        for (j, p) in c.points.iter().enumerate() {
            let Some(d) = delivered(p) else { continue };
            let x0 = i as f64 + 0.1 + j as f64 * 0.4;
            let style = if j == 0 {
                col.mix(0.45).filled()
            } else {
                col.filled()
            };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + 0.35, d.1)],
                style,
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            c.path.name().to_string(),
            (i as f64 + 0.05, max * 1.1),
            ("sans-serif", 12).into_font(),
        )))?;
    }
    root.present()?;
    Ok(())
}
