//! `cargo xtask bench [p2p|pcp|pvp|tcp|scale|overlay]`: every forwarding
//! path side by side on the same veths, generator, sink, frame sizes and
//! duration; (`tcp`, `tcp.rs`) TCP and UDP between two containers at their
//! defaults; (`scale`, `scale.rs`) how the cost grows with MACs, ports and
//! a MAC flood; (`overlay`) two switches joined by VXLAN over an underlay
//! veth, frames plus one iperf3 TCP stream between the hosts at their
//! defaults. `scale` and `overlay` run only when asked for by name.
//!
//! ```text
//!  P2P  gen ns: a0 ── sa [sw ns: path] sb ── b0 :sink ns
//!  PCP  gen ns: a0 ── sa [sw ns: path] sb ── b0 :sink ns
//!                          sc ── c0 :guest ns (container, echoes back)
//!  PVP  gen ns: a0 ── sa [sw ns: path] sb ── b0 :sink ns
//!                          TAP ── guest ns (VM, echoes back)
//!  Overlay  gen ns: a0 ── sa [sw ns: path] u1 ══ VXLAN ══ u2 [sw2 ns: path] sb ── b0 :sink ns
//! ```
//!
//! - Generator: `dataplane gen` (XDP live frames, xdp_frame arrival at sa,
//!   no skb), pinned to CPU 0 (`traffic.rs`).
//! - Sink: `steer` in drop mode on b0 counts what arrives (XDP, no stack).
//! - Path under test: pinned to CPU 1 where it has a thread of its own
//!   (`paths.rs`, `ovs.rs`, `dpdk.rs`); guest applications in `guest.rs`.
//! - Latency: a UDP ping-pong at low rate through the path (`latency.rs`).
//! - Report: JSON, Markdown and PNG under target/bench/ (`report.rs`).
//!
//! veth facts that shape the numbers (docs/DESIGN-NOTES.md, kernel facts): the
//! receive work of a veth (NAPI, XDP, the bridge) runs on the CPU of the
//! sender, so for the bridge and the XDP redirect the forwarding itself runs
//! on the generator's CPU 0, while AF_XDP forwarders do their work on CPU 1.
//! Both CPUs' busy time is reported for that reason.

mod dpdk;
mod guest;
mod latency;
mod ovs;
mod paths;
mod report;
mod scale;
mod tcp;
pub mod topology;
mod traffic;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::build::{self, BuildOptions};
use crate::run::{is_root, target_dir};
use crate::setup;

pub use paths::PathKind;
use report::{Outcome, PathResult, Point};
use topology::Topology;
use traffic::Dataplane;

/// Debian packages only the benchmark needs.
const BENCH_PACKAGES: &[&str] = &[
    "dpdk",               // dpdk-testpmd and its PMDs (af_xdp, af_packet, tap, vhost)
    "dpdk-dev",           // the PMD shared objects testpmd loads
    "openvswitch-switch", // ovs-vswitchd with the userspace (netdev) datapath and afxdp ports
    "fonts-dejavu-core",  // the TTF the PNG chart is drawn with (no fontconfig needed)
    "iperf3",             // TCP/UDP streams of the tcp scenario
    "sockperf",           // TCP request/response of the tcp scenario
];

/// The whole default run must fit this on a 2-core machine, build included.
const BUDGET_SECS: f64 = 20.0 * 60.0;

#[derive(Args)]
pub struct BenchOptions {
    /// Scenario to run (default: all of them).
    #[arg(value_enum)]
    pub scenario: Option<Scenario>,
    /// Seconds of traffic per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Measurements per (path, frame size); min/median/max are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Frame sizes in bytes (with FCS), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,512,1500")]
    pub sizes: Vec<usize>,
    /// Only these paths (default: every path of the scenario).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub paths: Vec<PathKind>,
    /// Round trips of the latency ping-pong per path (0: skip latency).
    #[arg(long, default_value_t = 2000)]
    pub latency_rounds: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Scenario {
    /// Port to port: uplink -> switch -> uplink.
    P2p,
    /// Port to container and back: uplink -> switch -> container veth ->
    /// echo in the container -> switch -> uplink.
    Pcp,
    /// Port to VM and back: uplink -> switch -> VM port (TAP or
    /// vhost-user) -> echo in the VM -> switch -> uplink.
    Pvp,
    /// TCP and UDP between two containers at their defaults (iperf3,
    /// sockperf), Gbit/s and transactions/s.
    Tcp,
    /// How cost grows: Mpps against the number of MACs (2 to 65536),
    /// flooding against the number of ports (2 to 16), and an established
    /// flow during a MAC flood (scale.rs).
    Scale,
    /// Host A -> switch 1 -> VXLAN over an underlay veth -> switch 2 ->
    /// host B: both switches are the path under test; frames, latency and
    /// one iperf3 TCP stream between the hosts at their defaults.
    Overlay,
}

impl Scenario {
    /// The scenarios measured with the frame generator.
    const ALL: [Scenario; 3] = [Scenario::P2p, Scenario::Pcp, Scenario::Pvp];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::P2p => "p2p",
            Scenario::Pcp => "pcp",
            Scenario::Pvp => "pvp",
            Scenario::Tcp => "tcp",
            Scenario::Scale => "scale",
            Scenario::Overlay => "overlay",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::P2p => "P2P: host A -> switch -> host B",
            Scenario::Pcp => "PCP: host A -> switch -> container (echo) -> switch -> host B",
            Scenario::Pvp => "PVP: host A -> switch -> VM (echo) -> switch -> host B",
            Scenario::Tcp => "TCP: container A <-> switch <-> container B (iperf3, sockperf)",
            Scenario::Scale => "Scale: MACs, ports and a MAC flood",
            Scenario::Overlay => "Overlay: host A -> switch 1 -> VXLAN -> switch 2 -> host B",
        }
    }
}

/// Seconds a run of `paths` is expected to take (no build), from the
/// overheads measured on the 2-core machine: path start and learning ~3 s,
/// stop ~1 s, a 0.5 s warm-up per size, ~0.4 s per measurement around the
/// traffic itself, and the latency ping-pong at 2 kHz plus its warm-up.
fn estimate_secs(opts: &BenchOptions, runnable_paths: usize) -> f64 {
    let per_point = opts.repeat as f64 * (opts.seconds + 0.4) + 0.9;
    let latency = if opts.latency_rounds > 0 {
        opts.latency_rounds as f64 / 2000.0 + 1.5
    } else {
        0.0
    };
    let per_path = 4.0 + latency + opts.sizes.len() as f64 * per_point;
    runnable_paths as f64 * per_path + 5.0 * Scenario::ALL.len() as f64
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    let wall = Instant::now();
    if !is_root() {
        bail!("the benchmark builds namespaces and attaches XDP programs: run it as root (sudo cargo xtask bench)");
    }
    if traffic::num_cpus() < 2 {
        bail!("the benchmark pins the generator and the switch to different CPUs: it needs 2");
    }
    if opts.repeat == 0 || opts.sizes.is_empty() || opts.seconds <= 0.0 {
        bail!("--repeat, --sizes and --seconds must be positive");
    }
    if let Some(bad) = opts.sizes.iter().find(|s| !(64..=1518).contains(*s)) {
        bail!("frame size {bad}: the generator sends 64..=1518 bytes (with FCS)");
    }
    setup::run()?;
    setup::packages(BENCH_PACKAGES)?;
    let bin = build::build_all(&BuildOptions { release: true })?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    // A run killed with SIGKILL cannot clean up after itself: do it now.
    topology::remove_leftovers();
    ovs::remove_leftovers();
    dpdk::Hugepages::restore_leftovers();

    let _libxdp_dir = LibxdpDir::note();
    let dp = Dataplane { bin };
    if opts.scenario == Some(Scenario::Scale) {
        scale::run(opts, &dp, &stop)?;
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted (everything the run created has been removed)");
        }
        return Ok(());
    }
    if opts.scenario == Some(Scenario::Tcp) {
        tcp::run(opts, &dp, &stop)?;
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted (everything the run created has been removed)");
        }
        return Ok(());
    }
    let scenarios: Vec<Scenario> = match opts.scenario {
        Some(s) => vec![s],
        None => Scenario::ALL.to_vec(),
    };
    let plan: Vec<(Scenario, PathKind)> = scenarios
        .iter()
        .flat_map(|&s| {
            PathKind::for_scenario(s)
                .into_iter()
                .filter(|p| opts.paths.is_empty() || opts.paths.contains(p))
                .map(move |p| (s, p))
        })
        .collect();
    if plan.is_empty() {
        bail!("no path of the chosen scenario(s) matches --paths");
    }
    let runnable = plan.len();
    let estimate = estimate_secs(opts, runnable);
    eprintln!(
        "[bench] plan: {} scenario(s), {runnable} runnable path runs x {} sizes x {} repeats x {} s; \
         estimated {:.0} min {:02.0} s of measuring (budget for the whole default run, build included: {:.0} min)",
        scenarios.len(),
        opts.sizes.len(),
        opts.repeat,
        opts.seconds,
        (estimate / 60.0).floor(),
        estimate % 60.0,
        BUDGET_SECS / 60.0
    );

    let total = runnable * opts.sizes.len() * opts.repeat;
    let mut done = 0;
    let started = Instant::now();
    let mut results: Vec<PathResult> = Vec::new();
    'scenarios: for &scenario in &scenarios {
        let topo = Topology::up(scenario)?;
        dp.sink_policy(&topo, "drop")?;
        for &(s, path) in plan.iter().filter(|(s, _)| *s == scenario) {
            if stop.load(Ordering::Relaxed) {
                break 'scenarios;
            }
            let running = match paths::start(path, scenario, &topo, &dp) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("\n[bench] {} {}: cannot run: {e:#}", s.name(), path.name());
                    results.push(PathResult {
                        scenario: s,
                        path,
                        outcome: Outcome::Failed(format!("{e:#}")),
                    });
                    done += opts.sizes.len() * opts.repeat;
                    continue;
                }
            };
            let mut points = Vec::new();
            for &size in &opts.sizes {
                let mut samples = Vec::new();
                let mut errors = Vec::new();
                // Warm-up: learning, ring priming, page pools.
                let _ = traffic::measure(&topo, &dp, &running.target_mac, size, 0.5);
                for _ in 0..opts.repeat {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    done += 1;
                    eprint!(
                        "\r[bench] {done}/{total} {} {} {size}B ... {:.0}s elapsed, ~{:.0}s left   ",
                        s.name(),
                        path.name(),
                        started.elapsed().as_secs_f64(),
                        (estimate - started.elapsed().as_secs_f64()).max(0.0)
                    );
                    let _ = std::io::stderr().flush();
                    match traffic::measure(&topo, &dp, &running.target_mac, size, opts.seconds) {
                        Ok(sample) => samples.push(sample),
                        Err(e) => {
                            eprintln!("\n[bench] {} {} {size}B: {e:#}", s.name(), path.name());
                            errors.push(format!("{e:#}"));
                        }
                    }
                }
                points.push(Point {
                    size,
                    samples,
                    errors,
                });
            }
            let latency = if opts.latency_rounds > 0 && !stop.load(Ordering::Relaxed) {
                Some(
                    latency::through_path(&topo, &dp, &running.target_mac, opts.latency_rounds)
                        .map_err(|e| format!("{e:#}")),
                )
            } else {
                None
            };
            if let Some(Err(e)) = &latency {
                eprintln!("\n[bench] {} {} latency: {e}", s.name(), path.name());
            }
            let tcp = (s == Scenario::Overlay && !stop.load(Ordering::Relaxed))
                .then(|| overlay_tcp(&topo, &dp, opts, path));
            if let Some(Err(e)) = &tcp {
                eprintln!("\n[bench] {} {} tcp: {e}", s.name(), path.name());
            }
            drop(running);
            results.push(PathResult {
                scenario: s,
                path,
                outcome: Outcome::Ran {
                    points,
                    latency,
                    tcp,
                },
            });
        }
        drop(topo);
    }
    eprintln!();
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let report = report::render(opts, &scenarios, &results, wall.elapsed().as_secs_f64());
    println!("{}", report.markdown);
    let stem = match opts.scenario {
        Some(s) => s.name(),
        None => "all",
    };
    std::fs::write(dir.join(format!("{stem}.json")), &report.json)?;
    std::fs::write(dir.join(format!("{stem}.md")), &report.markdown)?;
    let chart = dir.join(format!("{stem}.png"));
    match report::chart(&chart, &scenarios, &results) {
        Ok(()) => eprintln!("[bench] chart: {}", chart.display()),
        Err(e) => eprintln!("[bench] no chart: {e:#}"),
    }
    eprintln!(
        "[bench] wrote {}/{stem}.{{json,md,png}}; wall time {:.0} s",
        dir.display(),
        wall.elapsed().as_secs_f64()
    );
    if opts.scenario.is_none() && !stop.load(Ordering::Relaxed) {
        tcp::run(opts, &dp, &stop)?;
    }
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted (everything the run created has been removed)");
    }
    Ok(())
}

/// libxdp (under testpmd's net_af_xdp and OVS's afxdp ports) creates
/// /sys/fs/bpf/xdp for its locks: removed at the end of the run if it was
/// not there at the start (and is empty: a user's pins stay).
struct LibxdpDir(bool);

const LIBXDP_DIR: &str = "/sys/fs/bpf/xdp";

impl LibxdpDir {
    fn note() -> LibxdpDir {
        LibxdpDir(std::path::Path::new(LIBXDP_DIR).exists())
    }
}

impl Drop for LibxdpDir {
    fn drop(&mut self) {
        if !self.0 {
            let _ = std::fs::remove_dir(LIBXDP_DIR);
        }
        // DPDK's runtime directory, if DPDK made it and left it empty.
        let _ = std::fs::remove_dir("/var/run/dpdk");
    }
}

/// The overlay's TCP figure: iperf3 from a0 to b0 across the tunnel,
/// `--repeat` times (the sink lets the kernel have b0's frames meanwhile).
fn overlay_tcp(
    topo: &Topology,
    dp: &Dataplane,
    opts: &BenchOptions,
    path: PathKind,
) -> std::result::Result<Vec<f64>, String> {
    let run = || -> Result<Vec<f64>> {
        dp.sink_policy(topo, "pass")?;
        let mut gbps = Vec::new();
        for i in 0..opts.repeat {
            eprint!(
                "\r[bench] overlay {} tcp {}/{} ...                              ",
                path.name(),
                i + 1,
                opts.repeat
            );
            let _ = std::io::stderr().flush();
            gbps.push(tcp::one_stream_gbps(opts.seconds)?);
        }
        Ok(gbps)
    };
    let result = run();
    let restored = dp.sink_policy(topo, "drop");
    match (result, restored) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) | (Ok(_), Err(e)) => Err(format!("{e:#}")),
    }
}
