//! Results: one Markdown table and one latency table per scenario (every
//! path as a ratio of the scenario's Linux bridge), the same as JSON, and a
//! PNG bar chart drawn with plotters' bitmap backend (text via ab_glyph and
//! a DejaVu TTF file, so no fontconfig/freetype).

use std::path::Path;

use anyhow::{Context, Result};

use super::latency::Latency;
use super::paths::PathKind;
use super::traffic::Sample;
use super::{BenchOptions, Scenario};

pub struct Point {
    pub size: usize,
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

pub enum Outcome {
    Ran {
        points: Vec<Point>,
        latency: Option<Result<Latency, String>>,
        /// iperf3 TCP, one stream a0 -> b0, Gbit/s per repeat (overlay).
        tcp: Option<Result<Vec<f64>, String>>,
    },
    /// Could not start (the reason).
    Failed(String),
}

pub struct PathResult {
    pub scenario: Scenario,
    pub path: PathKind,
    pub outcome: Outcome,
}

pub struct Report {
    pub markdown: String,
    pub json: String,
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn median_delivered(results: &[PathResult], s: Scenario, p: PathKind, size: usize) -> Option<f64> {
    results
        .iter()
        .find(|r| r.scenario == s && r.path == p)
        .and_then(|r| match &r.outcome {
            Outcome::Ran { points, .. } => points.iter().find(|pt| pt.size == size),
            _ => None,
        })
        .filter(|pt| !pt.samples.is_empty())
        .map(|pt| {
            stats(
                &pt.samples
                    .iter()
                    .map(|x| x.delivered_pps)
                    .collect::<Vec<_>>(),
            )
            .1
        })
}

pub fn render(
    opts: &BenchOptions,
    scenarios: &[Scenario],
    results: &[PathResult],
    wall_secs: f64,
) -> Report {
    let mut md = String::new();
    let mut json_scenarios = Vec::new();
    md.push_str(&format!(
        "Generator: `dataplane gen` (XDP live frames) on CPU 0; sink: XDP drop on b0; forwarders on CPU 1 where they have a thread. All devices are veths in namespaces (no NIC here); AF_XDP in copy mode throughout (veth has no zero-copy). {} s per point, {} repeats (min / median / max). Wall time of this run: {:.0} s.\n",
        opts.seconds, opts.repeat, wall_secs
    ));
    for &s in scenarios {
        let base = PathKind::baseline(s);
        md.push_str(&format!("\n## {}\n\n", s.title()));
        md.push_str(&format!(
            "| path | size | delivered Mpps | offered Mpps | loss | vs {} | CPU0 busy | CPU1 busy | core-s per Mpkt |\n|---|---|---|---|---|---|---|---|---|\n",
            base.name()
        ));
        let mut rows = Vec::new();
        let mut lat_md = String::new();
        let mut notes = String::new();
        for &size in &opts.sizes {
            for r in results.iter().filter(|r| r.scenario == s) {
                let name = r.path.name();
                let points = match &r.outcome {
                    Outcome::Ran { points, .. } => points,
                    Outcome::Failed(why) => {
                        if size == opts.sizes[0] {
                            md.push_str(&format!(
                                "| {name} | all | {} | | | | | | |\n",
                                short(why)
                            ));
                            rows.push(
                                serde_json::json!({"path": name, "size": null, "error": why}),
                            );
                        }
                        continue;
                    }
                };
                let Some(pt) = points.iter().find(|p| p.size == size) else {
                    continue;
                };
                if pt.samples.is_empty() {
                    let why = pt
                        .errors
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "interrupted".into());
                    md.push_str(&format!(
                        "| {name} | {size} | failed: {} | | | | | | |\n",
                        short(&why)
                    ));
                    rows.push(serde_json::json!({"path": name, "size": size, "error": why}));
                    continue;
                }
                let d = stats(
                    &pt.samples
                        .iter()
                        .map(|x| x.delivered_pps)
                        .collect::<Vec<_>>(),
                );
                let o = stats(&pt.samples.iter().map(|x| x.offered_pps).collect::<Vec<_>>());
                let c0 = stats(&pt.samples.iter().map(|x| x.cpu0).collect::<Vec<_>>()).1;
                let c1 = stats(&pt.samples.iter().map(|x| x.cpu1).collect::<Vec<_>>()).1;
                let loss = if o.1 > 0.0 {
                    (1.0 - d.1 / o.1).max(0.0)
                } else {
                    0.0
                };
                let core_s_per_mpkt = (c0 + c1) / (d.1 / 1e6).max(1e-9);
                // A baseline that delivered (next to) nothing gives no ratio.
                let ratio = median_delivered(results, s, base, size)
                    .filter(|m| *m > 1000.0)
                    .map(|m| d.1 / m);
                md.push_str(&format!(
                    "| {name}{} | {size} | {:.3} / {:.3} / {:.3} | {:.2} | {:.1}% | {} | {:.0}% | {:.0}% | {:.2} |\n",
                    if r.path.is_emulation() { " (emulation)" } else { "" },
                    d.0 / 1e6,
                    d.1 / 1e6,
                    d.2 / 1e6,
                    o.1 / 1e6,
                    loss * 100.0,
                    ratio.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
                    c0 * 100.0,
                    c1 * 100.0,
                    core_s_per_mpkt
                ));
                rows.push(serde_json::json!({
                    "path": name,
                    "emulation": r.path.is_emulation(),
                    "size": size,
                    "delivered_pps": { "min": d.0, "median": d.1, "max": d.2 },
                    "offered_pps": { "min": o.0, "median": o.1, "max": o.2 },
                    "loss_median": loss,
                    "vs_baseline": ratio,
                    "cpu0_busy_median": c0,
                    "cpu1_busy_median": c1,
                    "core_seconds_per_mpkt": core_s_per_mpkt,
                    "samples": pt.samples.len(),
                    "errors": pt.errors,
                }));
            }
        }
        let mut lat_json = Vec::new();
        let mut tcp_md = String::new();
        let mut tcp_json = Vec::new();
        for r in results.iter().filter(|r| r.scenario == s) {
            let name = r.path.name();
            match &r.outcome {
                Outcome::Ran {
                    latency: Some(Ok(l)),
                    ..
                } => {
                    lat_md.push_str(&format!(
                        "| {name} | {:.0} | {:.0} | {:.0} | {} / {} |\n",
                        l.p50_us, l.p99_us, l.max_us, l.lost, l.rounds
                    ));
                    lat_json.push(serde_json::json!({
                        "path": name, "p50_us": l.p50_us, "p99_us": l.p99_us,
                        "max_us": l.max_us, "lost": l.lost, "rounds": l.rounds,
                    }));
                }
                Outcome::Ran {
                    latency: Some(Err(e)),
                    ..
                } => {
                    lat_md.push_str(&format!("| {name} | failed: {} | | | |\n", short(e)));
                    lat_json.push(serde_json::json!({"path": name, "error": e}));
                }
                _ => {}
            }
            match &r.outcome {
                Outcome::Ran {
                    tcp: Some(Ok(gbps)),
                    ..
                } if !gbps.is_empty() => {
                    let mut v = gbps.clone();
                    v.sort_by(f64::total_cmp);
                    let (min, med, max) = (v[0], v[v.len() / 2], v[v.len() - 1]);
                    tcp_md.push_str(&format!(
                        "| {name} | {min:.2} | {med:.2} | {max:.2} | {} |\n",
                        v.len()
                    ));
                    tcp_json.push(serde_json::json!({
                        "path": name, "gbps_min": min, "gbps_median": med,
                        "gbps_max": max, "samples": v,
                    }));
                }
                Outcome::Ran {
                    tcp: Some(Err(e)), ..
                } => {
                    tcp_md.push_str(&format!("| {name} | failed: {} | | | |\n", short(e)));
                    tcp_json.push(serde_json::json!({"path": name, "error": e}));
                }
                _ => {}
            }
            notes.push_str(&format!("- `{name}`: {}\n", r.path.describe(s)));
        }
        if !lat_md.is_empty() {
            md.push_str(&format!(
                "\nRound-trip latency at low load (UDP ping-pong a0 <-> b0, one request at a time, ~2 kHz; µs):\n\n| path | p50 | p99 | max | lost |\n|---|---|---|---|---|\n{lat_md}"
            ));
        }
        if !tcp_md.is_empty() {
            md.push_str(&format!(
                "\nTCP: iperf3, one stream a0 -> b0, both hosts at their defaults (checksum offload and TSO on; Gbit/s received):\n\n| path | min | median | max | runs |\n|---|---|---|---|---|\n{tcp_md}"
            ));
        }
        md.push_str(&format!("\nPaths:\n{notes}"));
        json_scenarios.push(serde_json::json!({
            "scenario": s.name(),
            "title": s.title(),
            "baseline": base.name(),
            "results": rows,
            "latency": lat_json,
            "tcp": tcp_json,
            "paths": results.iter().filter(|r| r.scenario == s)
                .map(|r| serde_json::json!({"path": r.path.name(), "describe": r.path.describe(s), "emulation": r.path.is_emulation()}))
                .collect::<Vec<_>>(),
        }));
    }
    md.push_str("\nCPU: busy share of each CPU during the measurement, from /proc/stat. A veth's receive work runs on the sender's CPU, so the bridge's and XDP redirects' forwarding runs in softirq on CPU 0 next to the generator; AF_XDP forwarders work on CPU 1. core-s per Mpkt = (CPU0 + CPU1 busy) / delivered Mpps, generator included: compare between paths, not as absolute cost. Loss = 1 - delivered / offered (the generator offers as much as it can).\n");
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "seconds": opts.seconds,
        "repeat": opts.repeat,
        "sizes": opts.sizes,
        "wall_seconds": wall_secs,
        "generator": "dataplane gen (XDP live frames), pinned to CPU 0",
        "sink": "steer in drop mode on b0",
        "emulated": "veth pairs in network namespaces stand in for NICs; AF_XDP in copy mode (veth has no zero-copy); vf-emul-* paths emulate device assignment",
        "scenarios": json_scenarios,
    }))
    .expect("JSON of plain values");
    Report { markdown: md, json }
}

/// First line of an error, short enough for a table cell.
fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").replace('|', "/");
    if line.chars().count() > 120 {
        format!("{}...", line.chars().take(117).collect::<String>())
    } else {
        line
    }
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Makes Debian's DejaVu Sans the charts' "sans-serif" (plotters draws text
/// with ab_glyph: no fontconfig).
pub fn register_sans_serif() -> Result<()> {
    use plotters::style::{register_font, FontStyle};
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (package fonts-dejavu-core)"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable TTF font"))
}

/// Horizontal bars: per scenario a block, per path a group of bars (one per
/// frame size) of median delivered Mpps, drawn in pixel coordinates.
pub fn chart(file: &Path, scenarios: &[Scenario], results: &[PathResult]) -> Result<()> {
    use plotters::prelude::*;

    register_sans_serif()?;

    // Per path: its scenario, the path, (frame size, median Mpps) bars, and
    // what to say when there are none.
    type Group = (Scenario, PathKind, Vec<(usize, f64)>, String);
    let mut groups: Vec<Group> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    for &s in scenarios {
        for r in results.iter().filter(|r| r.scenario == s) {
            let mut bars = Vec::new();
            let none = match &r.outcome {
                Outcome::Failed(_) => "could not run (see the table)".into(),
                Outcome::Ran { .. } => "no measurement".into(),
            };
            if let Outcome::Ran { points, .. } = &r.outcome {
                for pt in points.iter().filter(|p| !p.samples.is_empty()) {
                    let m = stats(
                        &pt.samples
                            .iter()
                            .map(|x| x.delivered_pps)
                            .collect::<Vec<_>>(),
                    )
                    .1;
                    bars.push((pt.size, m / 1e6));
                    if !sizes.contains(&pt.size) {
                        sizes.push(pt.size);
                    }
                }
            }
            groups.push((s, r.path, bars, none));
        }
    }
    sizes.sort();
    let max = groups
        .iter()
        .flat_map(|g| g.2.iter().map(|b| b.1))
        .fold(0.1f64, f64::max);
    let bar_h = 9i32;
    let group_h = bar_h * sizes.len().max(1) as i32 + 8;
    let header_h = 28i32;
    let (w, left, right) = (1100i32, 260i32, 90i32);
    let h = 60 + groups.len() as i32 * group_h + scenarios.len() as i32 * header_h + 20;
    let root = BitMapBackend::new(file, (w as u32, h as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let text = |size: i32| ("sans-serif", size).into_font().color(&BLACK);
    root.draw(&Text::new(
        "Delivered Mpps (median), veth on 2 cores; emulations marked",
        (10, 10),
        text(18),
    ))?;
    for (i, size) in sizes.iter().enumerate() {
        let x = 620 + i as i32 * 110;
        root.draw(&Rectangle::new(
            [(x, 14), (x + 14, 26)],
            colors[i % colors.len()].filled(),
        ))?;
        root.draw(&Text::new(format!("{size} B"), (x + 18, 12), text(14)))?;
    }
    let scale = (w - left - right) as f64 / max;
    let mut y = 45;
    let mut current: Option<Scenario> = None;
    for (s, p, bars, none) in &groups {
        if current != Some(*s) {
            current = Some(*s);
            root.draw(&Text::new(s.title(), (10, y + 6), text(15)))?;
            y += header_h;
        }
        let label = if p.is_emulation() {
            format!("{} (emul.)", p.name())
        } else {
            p.name().to_string()
        };
        root.draw(&Text::new(label, (20, y + group_h / 2 - 8), text(13)))?;
        if bars.is_empty() {
            root.draw(&Text::new(
                none.as_str(),
                (left + 4, y + group_h / 2 - 8),
                text(12),
            ))?;
        }
        for (size, mpps) in bars {
            let i = sizes.iter().position(|x| x == size).unwrap_or(0);
            let top = y + i as i32 * bar_h;
            let x1 = left + (mpps * scale).round() as i32;
            root.draw(&Rectangle::new(
                [(left, top), (x1.max(left + 1), top + bar_h - 1)],
                colors[i % colors.len()].filled(),
            ))?;
            root.draw(&Text::new(
                format!("{mpps:.2}"),
                (x1 + 4, top - 1),
                text(10),
            ))?;
        }
        y += group_h;
    }
    root.draw(&PathElement::new(vec![(left, 40), (left, y)], BLACK))?;
    root.present()?;
    Ok(())
}
