//! `cargo xtask bench p2p`: host A -> switch -> host B, every path on the
//! same veths, generator and sink, in one run.
//!
//! ```text
//!  gen ns: a0 ──veth── sa [switch ns: path under test] sb ──veth── b0 :sink ns
//! ```
//!
//! - Generator: `dataplane gen` (XDP live frames, xdp_frame arrival at sa,
//!   no skb), pinned to CPU 0. Its offered rate is reported next to every
//!   result.
//! - Sink: `steer` in drop mode on b0 counts what arrives (XDP, no stack).
//! - Path under test: pinned to CPU 1 where it has a thread of its own.
//!
//! veth facts that shape the numbers (see ../shared/TOOLCHAIN.md): the
//! receive work of a veth (NAPI, XDP, the bridge) runs on the CPU of the
//! sender, so for the bridge and the XDP redirect the forwarding itself runs
//! on the generator's CPU 0, while AF_XDP forwarders do their work on CPU 1.
//! Both CPUs' busy time is reported for that reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::build::{self, BuildOptions};
use crate::run::{is_root, target_dir, workspace_root};
use crate::setup;

const TOPOLOGY: &str = "dpbench";
/// Debian packages only the benchmark needs.
const BENCH_PACKAGES: &[&str] = &["dpdk", "dpdk-dev"];

#[derive(Args)]
pub struct BenchOptions {
    /// Scenario to run.
    #[arg(value_enum, default_value_t = Scenario::P2p)]
    pub scenario: Scenario,
    /// Seconds of traffic per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Measurements per (path, frame size); min/median/max are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Frame sizes in bytes (with FCS), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    pub sizes: Vec<usize>,
    /// Only these paths (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub paths: Vec<PathKind>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Scenario {
    /// Port to port: uplink -> switch -> uplink.
    P2p,
}

/// The forwarding paths compared.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum PathKind {
    /// Linux bridge in the switch namespace (the kernel path).
    LinuxBridge,
    /// dataplane, learning switch, in-kernel fast path for learned unicast.
    DataplaneFastpath,
    /// dataplane, learning switch, adaptive polling, AF_XDP path only.
    Dataplane,
    /// dataplane, learning switch, busy polling.
    DataplaneBusy,
    /// dataplane, cross-connect (like io-fwd), busy polling.
    DataplaneXconnect,
    /// DPDK testpmd io-fwd with two net_af_xdp vdevs.
    TestpmdAfXdp,
    /// Bare in-kernel XDP redirect sa -> sb (no switching: the ceiling).
    XdpRedirect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_names_are_unique() {
        let mut names: Vec<_> = PathKind::ALL.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PathKind::ALL.len());
    }
}

impl PathKind {
    const ALL: [PathKind; 7] = [
        PathKind::LinuxBridge,
        PathKind::DataplaneFastpath,
        PathKind::Dataplane,
        PathKind::DataplaneBusy,
        PathKind::DataplaneXconnect,
        PathKind::TestpmdAfXdp,
        PathKind::XdpRedirect,
    ];

    fn name(self) -> &'static str {
        match self {
            PathKind::LinuxBridge => "linux-bridge",
            PathKind::DataplaneFastpath => "dataplane-fastpath",
            PathKind::Dataplane => "dataplane",
            PathKind::DataplaneBusy => "dataplane-busy",
            PathKind::DataplaneXconnect => "dataplane-xconnect",
            PathKind::TestpmdAfXdp => "testpmd-af_xdp",
            PathKind::XdpRedirect => "xdp-redirect",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            PathKind::LinuxBridge => "Linux bridge br0 (sa, sb), GRO on sa, br_netfilter off",
            PathKind::DataplaneFastpath => "dataplane run, learning switch, learned unicast redirected in XDP (fast path), PMD on CPU 1",
            PathKind::Dataplane => "dataplane run --no-fast-path, learning switch, AF_XDP path, adaptive polling, PMD on CPU 1",
            PathKind::DataplaneBusy => "dataplane run --no-fast-path, learning switch, AF_XDP path, busy polling, PMD on CPU 1",
            PathKind::DataplaneXconnect => {
                "dataplane run --xconnect (io-fwd), busy polling, PMD on CPU 1"
            }
            PathKind::TestpmdAfXdp => {
                "dpdk-testpmd io-fwd, net_af_xdp on sa and sb, fwd lcore on CPU 1"
            }
            PathKind::XdpRedirect => "dataplane forward: XDP redirect sa -> sb in the kernel",
        }
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    offered_pps: f64,
    delivered_pps: f64,
    /// Busy fraction of CPU 0 (generator + veth receive work) and CPU 1.
    cpu0: f64,
    cpu1: f64,
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    if !is_root() {
        bail!("the benchmark builds namespaces and attaches XDP programs: run it as root");
    }
    if num_cpus() < 2 {
        bail!("the benchmark pins the generator and the switch to different CPUs: it needs 2");
    }
    setup::run()?;
    setup::packages(BENCH_PACKAGES)?;
    let bin = build::build_all(&BuildOptions { release: true })?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let paths: Vec<PathKind> = if opts.paths.is_empty() {
        PathKind::ALL.to_vec()
    } else {
        opts.paths.clone()
    };
    let topo = Topology::up()?;
    let dp = Dataplane { bin: bin.clone() };
    dp.ok(
        &topo.ns("b"),
        &["attach", "--iface", "b0", "--policy", "drop"],
    )?;
    let dst_mac = mac_of(&topo.ns("b"), "b0")?;

    let total = paths.len() * opts.sizes.len() * opts.repeat;
    let mut done = 0;
    let started = Instant::now();
    let mut results: Vec<(PathKind, usize, Vec<Sample>)> = Vec::new();
    'paths: for &path in &paths {
        let running = match start_path(path, &topo, &dp) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("[bench] {}: cannot run: {e:#}", path.name());
                results.push((path, 0, Vec::new()));
                continue;
            }
        };
        for &size in &opts.sizes {
            let mut samples = Vec::new();
            // Warm-up: learning, ring priming, page pools.
            let _ = measure(&topo, &dp, &dst_mac, size, 1);
            for _ in 0..opts.repeat {
                if stop.load(Ordering::Relaxed) {
                    break 'paths;
                }
                done += 1;
                eprint!(
                    "\r[bench] {done}/{total} {} {size}B ... ({:.0}s elapsed)   ",
                    path.name(),
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                match measure(&topo, &dp, &dst_mac, size, opts.seconds) {
                    Ok(s) => samples.push(s),
                    Err(e) => eprintln!("\n[bench] {} {size}B: {e:#}", path.name()),
                }
            }
            results.push((path, size, samples));
        }
        drop(running);
    }
    eprintln!();
    let report = render(opts, &paths, &results);
    println!("{}", report.markdown);
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let json_path = dir.join("p2p.json");
    std::fs::write(&json_path, &report.json)?;
    std::fs::write(dir.join("p2p.md"), &report.markdown)?;
    eprintln!("[bench] wrote {} and p2p.md", json_path.display());
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the generator for `seconds` and reads the sink and CPU counters.
fn measure(
    topo: &Topology,
    dp: &Dataplane,
    dst_mac: &str,
    size: usize,
    seconds: u64,
) -> Result<Sample> {
    let before = sink_count(topo, dp)?;
    let cpu_before = cpu_times()?;
    let out = dp.ok(
        &topo.ns("a"),
        &[
            "gen",
            "--iface",
            "a0",
            "--dst-mac",
            dst_mac,
            "--size",
            &size.to_string(),
            "--duration",
            &seconds.to_string(),
            "--cpu",
            "0",
            "--json",
        ],
    )?;
    let cpu_after = cpu_times()?;
    let after = sink_count(topo, dp)?;
    let gen = parse_json_fields(&out, &["sent", "seconds"])?;
    let secs = gen[1].max(1e-9);
    let busy = |cpu: usize| {
        let (b0, t0) = cpu_before[cpu];
        let (b1, t1) = cpu_after[cpu];
        (b1 - b0) as f64 / ((t1 - t0) as f64).max(1.0)
    };
    Ok(Sample {
        offered_pps: gen[0] / secs,
        delivered_pps: (after - before) as f64 / secs,
        cpu0: busy(0),
        cpu1: busy(1),
    })
}

fn sink_count(topo: &Topology, dp: &Dataplane) -> Result<u64> {
    let out = dp.ok(&topo.ns("b"), &["status", "--json"])?;
    let key = "\"dropped\":";
    let i = out.find(key).context("sink counters in status --json")?;
    let rest = out[i + key.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Ok(rest[..end].parse()?)
}

/// (busy, total) jiffies per CPU from /proc/stat.
fn cpu_times() -> Result<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let mut out = Vec::new();
    for line in stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        out.push((total - idle, total));
    }
    Ok(out)
}

fn num_cpus() -> usize {
    cpu_times().map(|v| v.len()).unwrap_or(1)
}

/// The running path under test; stops and unconfigures on drop.
struct RunningPath {
    child: Option<Child>,
    undo: Vec<Vec<String>>,
}

impl Drop for RunningPath {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { kill(c.id() as i32, 2) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for cmd in self.undo.iter().rev() {
            let _ = Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // AF_XDP users that just exited can make the next bind fail
        // (TOOLCHAIN.md): give the kernel a moment.
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn start_path(path: PathKind, topo: &Topology, dp: &Dataplane) -> Result<RunningPath> {
    let sw = topo.ns("sw");
    let mut running = RunningPath {
        child: None,
        undo: Vec::new(),
    };
    let ip = |args: &[&str]| -> Result<()> {
        let st = Command::new("ip").args(["-n", &sw]).args(args).status()?;
        if !st.success() {
            bail!("ip -n {sw} {args:?} failed");
        }
        Ok(())
    };
    match path {
        PathKind::LinuxBridge => {
            ip(&["link", "add", "br0", "type", "bridge"])?;
            running.undo.push(vec![
                "ip".into(),
                "-n".into(),
                sw.clone(),
                "link".into(),
                "del".into(),
                "br0".into(),
            ]);
            ip(&["link", "set", "sa", "master", "br0"])?;
            ip(&["link", "set", "sb", "master", "br0"])?;
            ip(&["link", "set", "br0", "up"])?;
            // Frames redirected into a veth without an XDP program are
            // dropped unless GRO is on; bridged IPv4 must not detour
            // through netfilter (not every kernel has these sysctls).
            let _ = Command::new("ip")
                .args(["netns", "exec", &sw, "ethtool", "-K", "sa", "gro", "on"])
                .stdout(Stdio::null())
                .status();
            for key in ["iptables", "ip6tables", "arptables"] {
                let _ = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &sw,
                        "sysctl",
                        "-qw",
                        &format!("net.bridge.bridge-nf-call-{key}=0"),
                    ])
                    .stderr(Stdio::null())
                    .status();
            }
            running.undo.push(vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                sw.clone(),
                "ethtool".into(),
                "-K".into(),
                "sa".into(),
                "gro".into(),
                "off".into(),
            ]);
        }
        PathKind::DataplaneFastpath
        | PathKind::Dataplane
        | PathKind::DataplaneBusy
        | PathKind::DataplaneXconnect => {
            let mut args = vec![
                "run", "--port", "afxdp:sa", "--port", "afxdp:sb", "--core", "1",
            ];
            match path {
                PathKind::DataplaneFastpath => {}
                PathKind::Dataplane => args.push("--no-fast-path"),
                PathKind::DataplaneBusy => args.extend(["--no-fast-path", "--busy-poll"]),
                _ => args.extend(["--xconnect", "--busy-poll"]),
            }
            running.child = Some(dp.spawn(&sw, &args)?);
        }
        PathKind::XdpRedirect => {
            running.child = Some(dp.spawn(&sw, &["forward", "--from", "sa", "--to", "sb"])?);
        }
        PathKind::TestpmdAfXdp => {
            // libxdp (under testpmd's af_xdp PMD) leaves a lock directory in
            // bpffs: remove it afterwards unless it was there before.
            let libxdp_dir = "/sys/fs/bpf/xdp";
            if !Path::new(libxdp_dir).exists() {
                running.undo.push(vec!["rmdir".into(), libxdp_dir.into()]);
            }
            // nsenter changes only the network namespace, so libxdp still
            // finds the host's bpffs (ip netns exec would remount /sys).
            let child = Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{sw}"))
                .args([
                    "dpdk-testpmd",
                    "--no-huge",
                    "-m",
                    "1024",
                    "-l",
                    "0,1",
                    "--no-pci",
                ])
                .args(["--file-prefix", "dpbench", "--log-level", "*:error"])
                .args([
                    "--vdev",
                    "net_af_xdp0,iface=sa",
                    "--vdev",
                    "net_af_xdp1,iface=sb",
                ])
                .args(["--", "--forward-mode=io", "--auto-start", "--nb-cores=1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting dpdk-testpmd")?;
            running.child = Some(child);
        }
    }
    // Let the path settle (attach, bind) before measuring.
    std::thread::sleep(Duration::from_secs(2));
    // The sink host speaks once, so learning switches know where b0 is (as
    // any real host would have; without it every frame is unknown unicast).
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.ns("b"),
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "10.200.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Some(c) = running.child.as_mut() {
        if let Some(status) = c.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!(
                "{} exited at start ({status}): {}",
                path.name(),
                err.lines().last().unwrap_or("")
            );
        }
    }
    Ok(running)
}

struct Dataplane {
    bin: PathBuf,
}

impl Dataplane {
    fn ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(["--netns", ns])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "dataplane {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn(&self, ns: &str, args: &[&str]) -> Result<Child> {
        Ok(Command::new(&self.bin)
            .args(["--netns", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn")
            .spawn()?)
    }
}

/// The benchmark topology (scripts/veth-setup.sh), removed on drop.
struct Topology {
    script: PathBuf,
}

impl Topology {
    fn up() -> Result<Topology> {
        let script = workspace_root().join("scripts/veth-setup.sh");
        let _ = Command::new(&script)
            .args(["down", TOPOLOGY])
            .stdout(Stdio::null())
            .status();
        let st = Command::new(&script)
            .args(["up", TOPOLOGY])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("veth-setup.sh up {TOPOLOGY} failed");
        }
        Ok(Topology { script })
    }

    fn ns(&self, short: &str) -> String {
        format!("{TOPOLOGY}-{short}")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .args(["down", TOPOLOGY])
            .stdout(Stdio::null())
            .status();
    }
}

fn mac_of(ns: &str, ifname: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", ifname])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .map(str::to_string)
        .context("reading a MAC address")
}

/// Reads numeric fields from a flat JSON object (the generator's --json).
fn parse_json_fields(json: &str, keys: &[&str]) -> Result<Vec<f64>> {
    keys.iter()
        .map(|k| {
            let pat = format!("\"{k}\":");
            let i = json.find(&pat).with_context(|| format!("{k} in {json}"))?;
            let rest = json[i + pat.len()..].trim_start();
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            Ok(rest[..end].trim().parse::<f64>()?)
        })
        .collect()
}

struct Report {
    markdown: String,
    json: String,
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn render(
    opts: &BenchOptions,
    paths: &[PathKind],
    results: &[(PathKind, usize, Vec<Sample>)],
) -> Report {
    let mut md = String::new();
    md.push_str(&format!(
        "## P2P, {} s per point, {} repeats (min / median / max)\n\n",
        opts.seconds, opts.repeat
    ));
    md.push_str("Generator: `dataplane gen` (XDP live frames) on CPU 0; sink: XDP drop on b0; forwarders on CPU 1 where they have a thread. All veth, copy-mode AF_XDP (veth has no zero-copy).\n\n");
    md.push_str("| path | size | delivered Mpps | offered Mpps | vs bridge | vs testpmd | vs XDP redirect | CPU0 busy | CPU1 busy | core-s per Mpkt |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let median_of = |p: PathKind, size: usize| -> Option<f64> {
        results
            .iter()
            .find(|(q, s, v)| *q == p && *s == size && !v.is_empty())
            .map(|(_, _, v)| stats(&v.iter().map(|x| x.delivered_pps).collect::<Vec<_>>()).1)
    };
    let mut rows = Vec::new();
    for &size in &opts.sizes {
        for &p in paths {
            let Some((_, _, samples)) = results
                .iter()
                .find(|(q, s, _)| *q == p && (*s == size || *s == 0))
            else {
                continue;
            };
            if samples.is_empty() {
                md.push_str(&format!(
                    "| {} | {size} | could not run | | | | | | |\n",
                    p.name()
                ));
                continue;
            }
            let d = stats(&samples.iter().map(|x| x.delivered_pps).collect::<Vec<_>>());
            let o = stats(&samples.iter().map(|x| x.offered_pps).collect::<Vec<_>>());
            let c0 = stats(&samples.iter().map(|x| x.cpu0).collect::<Vec<_>>()).1;
            let c1 = stats(&samples.iter().map(|x| x.cpu1).collect::<Vec<_>>()).1;
            let core_s_per_mpkt = (c0 + c1) / (d.1 / 1e6).max(1e-9);
            let ratio = |peer: PathKind| {
                median_of(peer, size)
                    .filter(|m| *m > 0.0)
                    .map(|m| format!("{:.2}x", d.1 / m))
                    .unwrap_or_else(|| "-".into())
            };
            md.push_str(&format!(
                "| {} | {size} | {:.3} / {:.3} / {:.3} | {:.2} | {} | {} | {} | {:.0}% | {:.0}% | {:.2} |\n",
                p.name(),
                d.0 / 1e6,
                d.1 / 1e6,
                d.2 / 1e6,
                o.1 / 1e6,
                ratio(PathKind::LinuxBridge),
                ratio(PathKind::TestpmdAfXdp),
                ratio(PathKind::XdpRedirect),
                c0 * 100.0,
                c1 * 100.0,
                core_s_per_mpkt
            ));
            rows.push(serde_json::json!({
                "path": p.name(),
                "describe": p.describe(),
                "size": size,
                "delivered_pps": { "min": d.0, "median": d.1, "max": d.2 },
                "offered_pps": { "min": o.0, "median": o.1, "max": o.2 },
                "cpu0_busy_median": c0,
                "cpu1_busy_median": c1,
                "core_seconds_per_mpkt": core_s_per_mpkt,
                "samples": samples.len(),
            }));
        }
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "scenario": "p2p",
        "seconds": opts.seconds,
        "repeat": opts.repeat,
        "generator": "dataplane gen (XDP live frames), pinned to CPU 0",
        "sink": "steer in drop mode on b0",
        "emulated": "veth pairs in network namespaces stand in for NICs; AF_XDP in copy mode (veth has no zero-copy)",
        "results": rows,
    }))
    .expect("JSON of plain values");
    md.push_str("\nPaths:\n");
    for &p in paths {
        md.push_str(&format!("- `{}`: {}\n", p.name(), p.describe()));
    }
    md.push_str("\nCPU: busy share of each CPU during the measurement, from /proc/stat. The bridge's and the XDP redirect's forwarding runs in softirq on CPU 0 (the sender's CPU, a veth property); AF_XDP forwarders do their work on CPU 1. core-s per Mpkt = (CPU0 + CPU1 busy) / delivered Mpps, generator included: compare between paths, not as absolute cost.\n");
    Report { markdown: md, json }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
