//! `cargo xtask bench tcp`: the traffic users measure first, between two
//! containers whose interfaces keep the kernel's defaults (checksum offload
//! and TSO on, GRO off), through each path.
//!
//! ```text
//!  dpbench-a: a0 10.200.0.1 ── sa [dpbench-sw: path] sb ── b0 10.200.0.2 :dpbench-b
//! ```
//!
//! In `--repeat` rounds, each starting every path in turn, for `--seconds`: iperf3 TCP with 1 and
//! with 4 streams (Gbit/s received), iperf3 UDP of 1400-byte datagrams at
//! full speed (Gbit/s received, loss), and sockperf ping-pong over TCP
//! (14-byte messages, its smallest: request/response transactions per
//! second). Both CPUs' busy
//! share is sampled from /proc/stat around every measurement. Client and
//! server run unpinned, as containers would.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::paths::{self, PathKind, RunningPath};
use super::topology::{ethtool, ip, ns, Topology};
use super::traffic::{cpu_times, Dataplane};
use super::{BenchOptions, Scenario};

/// The paths of the TCP scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpPath {
    /// Linux bridge, bridge netfilter off (the libvirt/docker default path).
    LinuxBridge,
    /// dataplane, container ports (`veth:`): tc fast path, punt device.
    DataplaneVeth,
    /// The same with --no-fast-path: every frame through the PMD.
    DataplaneVethSlow,
    /// dataplane, AF_XDP ports (`afxdp:`): native XDP on the host ends,
    /// which turns the containers' TSO off while it runs.
    DataplaneAfxdp,
    /// Open vSwitch userspace datapath, afxdp ports (endpoints tuned).
    OvsAfxdp,
    /// DPDK testpmd io-fwd on net_af_xdp (endpoints tuned).
    TestpmdAfXdp,
}

impl TcpPath {
    const ALL: [TcpPath; 6] = [
        TcpPath::LinuxBridge,
        TcpPath::DataplaneVeth,
        TcpPath::DataplaneVethSlow,
        TcpPath::DataplaneAfxdp,
        TcpPath::OvsAfxdp,
        TcpPath::TestpmdAfXdp,
    ];

    fn name(self) -> &'static str {
        match self {
            TcpPath::LinuxBridge => "linux-bridge",
            TcpPath::DataplaneVeth => "dataplane-veth",
            TcpPath::DataplaneVethSlow => "dataplane-veth-nofast",
            TcpPath::DataplaneAfxdp => "dataplane-afxdp",
            TcpPath::OvsAfxdp => "ovs-afxdp (tuned)",
            TcpPath::TestpmdAfXdp => "testpmd-af_xdp (tuned)",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            TcpPath::LinuxBridge => "Linux bridge (kernel path); endpoints at defaults",
            TcpPath::DataplaneVeth => {
                "container ports, fast path in tc; endpoints at defaults (TSO kept)"
            }
            TcpPath::DataplaneVethSlow => {
                "container ports, --no-fast-path (punt device + PMD); endpoints at defaults"
            }
            TcpPath::DataplaneAfxdp => {
                "AF_XDP ports; endpoints at defaults, but native XDP turns their TSO off"
            }
            TcpPath::OvsAfxdp => {
                "Open vSwitch 3.1 userspace datapath, afxdp ports, port-to-port flows; \
                 ENDPOINTS TUNED: `ethtool -K a0/b0 tx off` (it copies bytes, so checksums \
                 left to the device would never be completed)"
            }
            TcpPath::TestpmdAfXdp => {
                "DPDK testpmd io-fwd on net_af_xdp; ENDPOINTS TUNED: `ethtool -K a0/b0 tx off`, \
                 as for OVS"
            }
        }
    }
}

/// What is measured, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Stream1,
    Stream4,
    Udp1400,
    Rr,
}

impl Test {
    const ALL: [Test; 4] = [Test::Stream1, Test::Stream4, Test::Udp1400, Test::Rr];

    fn name(self) -> &'static str {
        match self {
            Test::Stream1 => "tcp_stream_1",
            Test::Stream4 => "tcp_stream_4",
            Test::Udp1400 => "udp_1400",
            Test::Rr => "tcp_rr",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Test::Rr => "transactions/s",
            _ => "Gbit/s",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
struct Sample {
    /// Gbit/s received, or transactions/s.
    value: f64,
    /// UDP: datagrams lost, in percent.
    loss_pct: Option<f64>,
    /// Busy share of each CPU over the measurement, 0..1.
    cpu: Vec<f64>,
}

/// A path as running: undone on drop.
struct Running {
    switch: Option<Child>,
    bridge: bool,
    /// OVS or testpmd, started as in the frame benchmarks.
    peer: Option<RunningPath>,
    /// Endpoints whose tx checksum offload was turned off for `peer`.
    tuned: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.switch.take() {
            paths::interrupt_and_reap(&mut [&mut c], Duration::from_secs(5));
        }
        if self.bridge {
            let _ = ip(&["-n", &ns("sw"), "link", "del", "br0"]);
        }
        self.peer = None;
        if self.tuned {
            tune_endpoints("on");
        }
    }
}

/// `ethtool -K a0/b0 tx on|off` in the containers (the byte-copying peers
/// only: see `TcpPath::describe`).
fn tune_endpoints(state: &str) {
    for (host, ifname) in [("a", "a0"), ("b", "b0")] {
        ethtool(&ns(host), &["-K", ifname, "tx", state]);
    }
}

fn start(path: TcpPath, topo: &Topology, dp: &Dataplane) -> Result<Running> {
    let sw = ns("sw");
    let mut running = Running {
        switch: None,
        bridge: false,
        peer: None,
        tuned: false,
    };
    let ports: &[&str] = match path {
        TcpPath::LinuxBridge => {
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            running.bridge = true;
            for p in ["sa", "sb"] {
                ip(&["-n", &sw, "link", "set", p, "master", "br0"])?;
            }
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
            paths::bridge_netfilter_off(&sw);
            return Ok(running);
        }
        TcpPath::DataplaneVeth => &["--port", "veth:sa", "--port", "veth:sb"],
        TcpPath::DataplaneVethSlow => &["--port", "veth:sa", "--port", "veth:sb", "--no-fast-path"],
        TcpPath::DataplaneAfxdp => &["--port", "afxdp:sa", "--port", "afxdp:sb"],
        TcpPath::OvsAfxdp | TcpPath::TestpmdAfXdp => {
            let kind = match path {
                TcpPath::OvsAfxdp => PathKind::OvsAfxdp,
                _ => PathKind::TestpmdAfXdp,
            };
            running.tuned = true;
            tune_endpoints("off");
            running.peer = Some(paths::start(kind, Scenario::Tcp, topo, dp)?);
            return wait_for_ping(path, running);
        }
    };
    let mut args = vec!["run"];
    args.extend_from_slice(ports);
    running.switch = Some(dp.spawn(&sw, &args)?);
    wait_for_ping(path, running)
}

/// The path is up when its ports forward: a ping gets through.
fn wait_for_ping(path: TcpPath, running: Running) -> Result<Running> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ping() {
            return Ok(running);
        }
        if Instant::now() > deadline {
            bail!("{}: no ping from a to b within 10 s", path.name());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ping() -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns("a"),
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-q",
        ])
        .arg("10.200.0.2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A server in namespace b, killed on drop.
struct Server(Child);

impl Server {
    fn start(args: &[&str]) -> Result<Server> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns("b")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} in {}", args[0], ns("b")))?;
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!(
                "{} exited at once ({status}): {}",
                args.join(" "),
                err.trim()
            );
        }
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a client in namespace a, retrying while its server starts.
fn client(args: &[&str]) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns("a")])
            .args(args)
            .output()
            .with_context(|| format!("running {}", args[0]))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        if Instant::now() > deadline {
            bail!(
                "{} failed: {}{}",
                args.join(" "),
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn measure(test: Test, seconds: f64) -> Result<Sample> {
    let secs = format!("{}", seconds.ceil().max(1.0) as u64);
    let before = cpu_times()?;
    let (value, loss_pct) = match test {
        Test::Stream1 | Test::Stream4 | Test::Udp1400 => {
            let _server = Server::start(&["iperf3", "-s", "-1"])?;
            // A path that cannot carry TCP must fail in seconds, not in
            // the kernel's two-minute SYN timeout.
            let mut args = vec![
                "iperf3",
                "-c",
                "10.200.0.2",
                "-J",
                "-t",
                &secs,
                "--connect-timeout",
                "3000",
            ];
            match test {
                Test::Stream4 => args.extend(["-P", "4"]),
                Test::Udp1400 => args.extend(["-u", "-b", "0", "-l", "1400"]),
                _ => {}
            }
            let json: Value =
                serde_json::from_str(&client(&args)?).context("iperf3 -J printed no JSON")?;
            if let Some(e) = json["error"].as_str() {
                bail!("iperf3: {e}");
            }
            let end = &json["end"];
            if test == Test::Udp1400 {
                let bps = end["sum"]["bits_per_second"].as_f64().unwrap_or(0.0);
                let lost = end["sum"]["lost_percent"].as_f64().unwrap_or(100.0);
                // Received rate: what was sent minus what was lost.
                (bps * (1.0 - lost / 100.0) / 1e9, Some(lost))
            } else {
                let bps = end["sum_received"]["bits_per_second"]
                    .as_f64()
                    .context("no end.sum_received.bits_per_second in iperf3's report")?;
                (bps / 1e9, None)
            }
        }
        Test::Rr => {
            let _server = Server::start(&["sockperf", "sr", "--tcp", "-i", "10.200.0.2"])?;
            let out = client(&[
                "sockperf",
                "pp",
                "--tcp",
                "-i",
                "10.200.0.2",
                "-t",
                &secs,
                "-m",
                "14",
            ])?;
            (parse_sockperf_rate(&out)?, None)
        }
    };
    let after = cpu_times()?;
    let cpu = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            let total = (a.1 - b.1).max(1) as f64;
            (a.0 - b.0) as f64 / total
        })
        .collect();
    Ok(Sample {
        value,
        loss_pct,
        cpu,
    })
}

/// One iperf3 TCP stream from a0 to b0 for `seconds` (Gbit/s received):
/// the overlay scenario's TCP figure, on the same namespaces and
/// addresses as this scenario's.
pub fn one_stream_gbps(seconds: f64) -> Result<f64> {
    measure(Test::Stream1, seconds).map(|s| s.value)
}

/// Transactions per second from sockperf's "[Valid Duration] RunTime=T
/// sec; SentMessages=S; ReceivedMessages=R" line.
fn parse_sockperf_rate(out: &str) -> Result<f64> {
    let line = out
        .lines()
        .find(|l| l.contains("[Valid Duration]"))
        .with_context(|| format!("no [Valid Duration] line in sockperf's output: {out}"))?;
    let field = |key: &str| -> Result<f64> {
        let i = line
            .find(key)
            .with_context(|| format!("no {key} in {line}"))?;
        let rest = &line[i + key.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        Ok(rest[..end].parse()?)
    };
    let runtime = field("RunTime=")?;
    if runtime <= 0.0 {
        bail!("sockperf ran for {runtime} s");
    }
    Ok(field("ReceivedMessages=")? / runtime)
}

/// One path's results: per test, its samples or why it could not run.
struct PathRun {
    path: TcpPath,
    tests: Vec<(Test, Vec<Sample>, Vec<String>)>,
    failed: Option<String>,
}

pub fn run(
    opts: &BenchOptions,
    dp: &Dataplane,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    let started = Instant::now();
    let total = TcpPath::ALL.len() * Test::ALL.len() * opts.repeat;
    let estimate = total as f64 * (opts.seconds.ceil() + 1.5)
        + (TcpPath::ALL.len() * opts.repeat) as f64 * 4.0;
    eprintln!(
        "[bench] tcp: {} paths x {} tests x {} repeats x {} s; estimated {:.0} s",
        TcpPath::ALL.len(),
        Test::ALL.len(),
        opts.repeat,
        opts.seconds.ceil(),
        estimate
    );
    let topo = Topology::up(Scenario::Tcp)?;
    let mut runs: Vec<PathRun> = TcpPath::ALL
        .iter()
        .map(|&path| PathRun {
            path,
            tests: Test::ALL
                .iter()
                .map(|&t| (t, Vec::new(), Vec::new()))
                .collect(),
            failed: None,
        })
        .collect();
    let mut done = 0;
    // Rounds, not one path after another: each round starts every path,
    // measures each test once and stops it, so whatever drifts on a shared
    // two-core machine over minutes (other tenants, clocks, caches) falls
    // on every path alike and the ratios compare like with like.
    for round in 0..opts.repeat {
        for run in runs.iter_mut() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let path = run.path;
            if run.failed.is_some() {
                done += Test::ALL.len();
                continue;
            }
            let running = match start(path, &topo, dp) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("\n[bench] tcp {}: cannot run: {e:#}", path.name());
                    done += Test::ALL.len() * (opts.repeat - round);
                    run.failed = Some(format!("{e:#}"));
                    continue;
                }
            };
            for (test, samples, errors) in run.tests.iter_mut() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                done += 1;
                eprint!(
                    "\r[bench] tcp {done}/{total} round {}/{} {} {} ... {:.0}s elapsed, ~{:.0}s left   ",
                    round + 1,
                    opts.repeat,
                    path.name(),
                    test.name(),
                    started.elapsed().as_secs_f64(),
                    (estimate - started.elapsed().as_secs_f64()).max(0.0)
                );
                match measure(*test, opts.seconds) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        eprintln!("\n[bench] tcp {} {}: {e:#}", path.name(), test.name());
                        errors.push(format!("{e:#}"));
                    }
                }
            }
            drop(running);
        }
    }
    drop(topo);
    eprintln!();
    let (markdown, json) = render(opts, &runs, started.elapsed().as_secs_f64());
    println!("{markdown}");
    let dir = crate::run::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tcp.md"), &markdown)?;
    std::fs::write(dir.join("tcp.json"), serde_json::to_string_pretty(&json)?)?;
    eprintln!("[bench] wrote {}/tcp.{{json,md}}", dir.display());
    Ok(())
}

/// (min, median, max) of `v` (not empty).
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn median_of(runs: &[PathRun], path: TcpPath, test: Test) -> Option<f64> {
    let r = runs.iter().find(|r| r.path == path)?;
    let (_, samples, _) = r.tests.iter().find(|(t, _, _)| *t == test)?;
    if samples.is_empty() {
        return None;
    }
    Some(spread(samples.iter().map(|s| s.value).collect()).1)
}

fn render(opts: &BenchOptions, runs: &[PathRun], wall: f64) -> (String, Value) {
    let mut md = format!(
        "## TCP and UDP between two containers at their defaults\n\n\
         `cargo xtask bench tcp --seconds {} --repeat {}`; iperf3 and sockperf between two \
         namespaces whose veths keep the kernel's defaults (tx checksum offload and TSO on, \
         GRO off), unpinned. min / median / max of {} runs, in rounds that start every \
         path in turn; ratio: median over the Linux \
         bridge's median in this run. CPU: both cores' busy share, median run, in percent \
         of one core (200 = both busy). Wall time {:.0} s.\n\n",
        opts.seconds, opts.repeat, opts.repeat, wall
    );
    let mut json_paths = Vec::new();
    for test in Test::ALL {
        md.push_str(&format!(
            "### {} ({})\n\n| path | min | median | max | vs bridge | CPU % |{}\n| --- | ---: | ---: | ---: | ---: | ---: |{}\n",
            test.name(),
            test.unit(),
            if test == Test::Udp1400 { " loss % |" } else { "" },
            if test == Test::Udp1400 { " ---: |" } else { "" },
        ));
        let bridge = median_of(runs, TcpPath::LinuxBridge, test);
        for r in runs {
            let Some((_, samples, errors)) = r.tests.iter().find(|(t, _, _)| *t == test) else {
                md.push_str(&format!(
                    "| {} | could not run: {} |\n",
                    r.path.name(),
                    r.failed.as_deref().unwrap_or("-")
                ));
                continue;
            };
            if samples.is_empty() {
                let why = match (&r.failed, errors.first()) {
                    (Some(start), _) => format!("could not run: {start}"),
                    (None, Some(e)) => format!("failed: {e}"),
                    (None, None) => "not measured (interrupted)".into(),
                };
                md.push_str(&format!("| {} | {why} |\n", r.path.name()));
                continue;
            }
            let fmt = |v: f64| match test {
                Test::Rr => format!("{v:.0}"),
                _ => format!("{v:.2}"),
            };
            let (lo, med, hi) = spread(samples.iter().map(|s| s.value).collect());
            let ratio = bridge
                .filter(|b| *b > 0.0)
                .map_or("-".into(), |b| format!("{:.2}x", med / b));
            let mut by_value: Vec<&Sample> = samples.iter().collect();
            by_value.sort_by(|a, b| a.value.total_cmp(&b.value));
            let mid = by_value[by_value.len() / 2];
            let cpu: f64 = mid.cpu.iter().sum::<f64>() * 100.0;
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.0} |",
                r.path.name(),
                fmt(lo),
                fmt(med),
                fmt(hi),
                ratio,
                cpu
            ));
            if test == Test::Udp1400 {
                md.push_str(&format!(" {:.1} |", mid.loss_pct.unwrap_or(0.0)));
            }
            md.push('\n');
        }
        md.push('\n');
    }
    md.push_str("Paths:\n\n");
    for r in runs {
        md.push_str(&format!("- `{}`: {}\n", r.path.name(), r.path.describe()));
    }
    md.push_str(
        "\n(tuned): these peers copy bytes between AF_XDP sockets, so a checksum the sender \
         left to the device is never completed and TCP moves nothing with endpoints at their \
         defaults; they run with tx checksum offload (and with it TSO) off in both containers.\n",
    );
    for r in runs {
        let tests: Vec<Value> = r
            .tests
            .iter()
            .map(|(t, samples, errors)| {
                json!({
                    "test": t.name(),
                    "unit": t.unit(),
                    "samples": samples.iter().map(|s| json!({
                        "value": s.value,
                        "loss_pct": s.loss_pct,
                        "cpu_busy": s.cpu,
                    })).collect::<Vec<_>>(),
                    "errors": errors,
                })
            })
            .collect();
        json_paths.push(json!({
            "path": r.path.name(),
            "description": r.path.describe(),
            "failed": r.failed,
            "tests": tests,
        }));
    }
    let json = json!({
        "scenario": "tcp",
        "seconds": opts.seconds,
        "repeat": opts.repeat,
        "wall_seconds": wall,
        "paths": json_paths,
    });
    (md, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockperf_rate_is_messages_over_valid_runtime() {
        let out = "sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; \
                   SentMessages=162048; ReceivedMessages=162047\n\
                   sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=122548; \
                   ReceivedMessages=122548\n";
        let rate = parse_sockperf_rate(out).unwrap();
        assert!((rate - 122548.0 / 1.55).abs() < 1.0, "{rate}");
        assert!(parse_sockperf_rate("nothing").is_err());
    }

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
    }
}
