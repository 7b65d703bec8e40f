//! Generator and sink: `dataplane gen` in the generator namespace (XDP live
//! frames from CPU 0) and `steer` in drop mode on b0, whose counter is read
//! before and after each measurement; CPU time from /proc/stat.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use super::topology::Topology;

/// One measurement.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub offered_pps: f64,
    pub delivered_pps: f64,
    /// Busy fraction of CPU 0 (generator + veth receive work) and CPU 1.
    pub cpu0: f64,
    pub cpu1: f64,
}

pub struct Dataplane {
    pub bin: PathBuf,
}

impl Dataplane {
    pub fn ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(["--netns", ns])
            .args(args)
            .output()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "dataplane -n {ns} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn spawn(&self, ns: &str, args: &[&str]) -> Result<Child> {
        Command::new(&self.bin)
            .args(["--netns", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn")
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))
    }

    /// Sets the sink's policy on b0: `drop` counts and drops (throughput),
    /// `pass` hands frames to b0's stack (the latency reflector).
    pub fn sink_policy(&self, topo: &Topology, policy: &str) -> Result<()> {
        self.ok(
            &topo.ns("b"),
            &["attach", "--iface", "b0", "--policy", policy],
        )
        .map(|_| ())
    }
}

/// What a generator sends: `flows` flows from `src_mac` (default: the
/// interface's) to `dst_mac`, stepping the MACs `vary` says
/// (`dataplane gen --flows --vary`).
#[derive(Clone, Copy, Debug)]
pub struct Flows<'a> {
    pub src_mac: Option<&'a str>,
    pub dst_mac: &'a str,
    pub flows: u32,
    pub vary: &'a str,
}

impl<'a> Flows<'a> {
    /// One flow from the interface's MAC to `dst_mac`.
    pub fn one(dst_mac: &'a str) -> Flows<'a> {
        Flows {
            src_mac: None,
            dst_mac,
            flows: 1,
            vary: "both",
        }
    }

    /// `dataplane gen` arguments for these flows out of `iface`.
    fn gen_args(&self, iface: &str, size: usize) -> Vec<String> {
        let mut args: Vec<String> = [
            "gen",
            "--iface",
            iface,
            "--dst-mac",
            self.dst_mac,
            "--size",
            &size.to_string(),
            "--flows",
            &self.flows.to_string(),
            "--vary",
            self.vary,
            "--cpu",
            "0",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(src) = self.src_mac {
            args.extend(["--src-mac".into(), src.into()]);
        }
        args
    }
}

/// Sends `count` frames of `flows` out of `iface` in namespace `ns` at
/// `rate` pps and waits for the generator to finish.
pub fn send_count(
    dp: &Dataplane,
    ns: &str,
    iface: &str,
    flows: &Flows,
    count: u64,
    rate: u64,
) -> Result<()> {
    let mut args = flows.gen_args(iface, 64);
    args.extend([
        "--count".into(),
        count.to_string(),
        "--rate".into(),
        rate.to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    dp.ok(ns, &refs).map(drop)
}

/// Starts a generator of `flows` out of `iface` in `ns` for `seconds`,
/// in the background.
pub fn spawn_gen(
    dp: &Dataplane,
    ns: &str,
    iface: &str,
    flows: &Flows,
    size: usize,
    seconds: f64,
) -> Result<Child> {
    let mut args = flows.gen_args(iface, size);
    args.extend(["--duration".into(), seconds.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    dp.spawn(ns, &refs)
}

/// Runs the generator for `seconds` towards `dst_mac` and reads the sink
/// and CPU counters around it.
pub fn measure(
    topo: &Topology,
    dp: &Dataplane,
    dst_mac: &str,
    size: usize,
    seconds: f64,
) -> Result<Sample> {
    measure_flows(topo, dp, &Flows::one(dst_mac), size, seconds)
}

/// Runs the generator on a0 for `seconds` with `flows` and reads the sink
/// and CPU counters around it.
pub fn measure_flows(
    topo: &Topology,
    dp: &Dataplane,
    flows: &Flows,
    size: usize,
    seconds: f64,
) -> Result<Sample> {
    let before = sink_count(topo, dp)?;
    let cpu_before = cpu_times()?;
    let mut args = flows.gen_args("a0", size);
    args.extend(["--duration".into(), seconds.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dp.ok(&topo.ns("a"), &refs)?;
    let cpu_after = cpu_times()?;
    // Frames still in flight (queues of a userspace forwarder) land within
    // a few milliseconds; count them with the run that sent them.
    std::thread::sleep(std::time::Duration::from_millis(20));
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
        delivered_pps: after.saturating_sub(before) as f64 / secs,
        cpu0: busy(0),
        cpu1: busy(1),
    })
}

fn sink_count(topo: &Topology, dp: &Dataplane) -> Result<u64> {
    let out = dp.ok(&topo.ns("b"), &["status", "--json"])?;
    let key = "\"dropped\":";
    let i = out
        .find(key)
        .context("no \"dropped\" counter in the sink's `status --json`")?;
    let rest = out[i + key.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Ok(rest[..end].parse()?)
}

/// (busy, total) jiffies per CPU from /proc/stat.
pub fn cpu_times() -> Result<Vec<(u64, u64)>> {
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

pub fn num_cpus() -> usize {
    cpu_times().map(|v| v.len()).unwrap_or(1)
}

/// Reads numeric fields from a flat JSON object (the generator's --json).
fn parse_json_fields(json: &str, keys: &[&str]) -> Result<Vec<f64>> {
    keys.iter()
        .map(|k| {
            let pat = format!("\"{k}\":");
            let i = json
                .find(&pat)
                .with_context(|| format!("no {k} in the generator's output {json}"))?;
            let rest = json[i + pat.len()..].trim_start();
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            Ok(rest[..end].trim().parse::<f64>()?)
        })
        .collect()
}
