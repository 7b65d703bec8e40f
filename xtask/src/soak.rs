//! `cargo xtask soak`: the switch under routine churn for N minutes.
//!
//! Four containers (namespaces `dpsoak-h0..h3`, each with `c0` at
//! 10.201.0.(i+1), interfaces at the kernel's defaults) hang off the
//! switch namespace `dpsoak-sw`: h0 and h1 as `afxdp:` ports, h2 and h3 as
//! `veth:` ports. Pings run between them all the time and iperf3 TCP
//! streams from h0 to h3 in 5-second rounds. Every couple of seconds one
//! event, chosen at random (the seed is printed; `--seed` replays a run):
//!
//! - a port is removed and added back (`dataplane port del/add`);
//! - a container's veth is deleted and re-created (a container restart):
//!   the switch must reopen the port by itself;
//! - the switch is killed with SIGKILL and started again (rarely, so
//!   that some switch runs last minutes): it must take over the pins the
//!   dead one left;
//! - the switch is stopped with SIGINT and started again: its exit report
//!   must say 0 frames unaccounted and 0 refused frees.
//!
//! After each event every container must reach every other within 15 s.
//! At the end: the longest PMD iteration of every switch run (limit 10 ms
//! of the switch's own work; the time inside the kernel's transmit calls,
//! where AF_XDP copy mode runs the receiving container's stack on the PMD's
//! CPU, is reported beside it), the resident memory of each run from its
//! 30th second to its end (flat: growth under 10% + 4 MiB, for runs that
//! lived 90 s or more), and the event counts. Not part of CI (it takes
//! minutes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::bench::topology::{ip, remove_namespace};
use crate::build::{self, BuildOptions};
use crate::run::is_root;
use crate::setup;

const PREFIX: &str = "dpsoak";
const HOSTS: usize = 4;
/// How long connectivity may take to come back after an event.
const RECOVERY: Duration = Duration::from_secs(15);
/// A switch run's resident memory is taken as its baseline at this age,
/// and judged at its end if it lived at least `RSS_JUDGED_AGE`.
const RSS_BASELINE_AGE: Duration = Duration::from_secs(30);
const RSS_JUDGED_AGE: Duration = Duration::from_secs(90);
/// The longest PMD iteration allowed.
const MAX_ITERATION_US: f64 = 10_000.0;

#[derive(Args)]
pub struct SoakOptions {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seed of the event sequence (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

fn ns(short: &str) -> String {
    format!("{PREFIX}-{short}")
}

fn host(i: usize) -> String {
    ns(&format!("h{i}"))
}

fn host_ip(i: usize) -> String {
    format!("10.201.0.{}", i + 1)
}

/// The port spec of container `i`: two AF_XDP ports, two container ports.
fn port_spec(i: usize) -> String {
    if i < 2 {
        format!("afxdp:s{i}")
    } else {
        format!("veth:s{i}")
    }
}

pub fn run(opts: &SoakOptions) -> Result<()> {
    if !is_root() {
        bail!("the soak creates network namespaces and attaches XDP programs: run it as root");
    }
    setup::run()?;
    // Release, as deployed: the iteration limit is about the switch's own
    // work, which an unoptimised build multiplies (checksums byte by byte).
    let bin = build::build_all(&BuildOptions { release: true })?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = XorShift(seed | 1);
    // Everything this driver starts (ip, dataplane CLI calls, the traffic)
    // runs on CPU 0, so the PMD's CPU 1 carries only the switch's work and
    // the kernel's on its behalf.
    pin_self_to_cpu0();
    eprintln!(
        "[soak] {} minutes, seed {seed} (--seed {seed} replays the event sequence)",
        opts.minutes
    );

    let logs = crate::run::target_dir().join("soak");
    let _ = std::fs::remove_dir_all(&logs);
    eprintln!(
        "[soak] switch logs: {}/switch-N.log (one per switch run)",
        logs.display()
    );
    let _topology = Topology::up()?;
    let mut report = Report::default();
    let mut sw = Switch::start(&bin)?;
    let mut traffic = Traffic::start(stop.clone());
    expect_connectivity(&mut report, "start")?;

    let end = Instant::now() + Duration::from_secs_f64(opts.minutes * 60.0);
    let mut next_progress = Instant::now();
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        sw.sample(&bin)?;
        let roll = rng.next() % 100;
        let which = (rng.next() % HOSTS as u64) as usize;
        let event = match roll {
            0..=47 => {
                let spec = port_spec(which);
                dataplane_ok(&bin, &["port", "del", &spec])?;
                std::thread::sleep(Duration::from_millis(rng.next() % 500));
                dataplane_ok(&bin, &["port", "add", &spec])?;
                report.port_churn += 1;
                "port del+add"
            }
            48..=94 => {
                recreate_veth(which)?;
                report.veth_recreated += 1;
                "veth re-created"
            }
            95..=97 => {
                sw.finish(&mut report, libc::SIGKILL)?;
                sw = Switch::start(&bin)?;
                report.killed += 1;
                "kill -9 + restart"
            }
            _ => {
                sw.finish(&mut report, libc::SIGINT)?;
                sw = Switch::start(&bin)?;
                report.restarted += 1;
                "stop + restart"
            }
        };
        expect_connectivity(&mut report, event)?;
        if Instant::now() >= next_progress {
            next_progress = Instant::now() + Duration::from_secs(15);
            eprintln!(
                "[soak] {:>4.0} s: {} events, longest recovery {:.1} s ({}), longest PMD iteration {:.0} us ({:.0} us own), RSS {} KiB, iperf3 {} rounds ({:.1} GB)",
                opts.minutes * 60.0 - end.saturating_duration_since(Instant::now()).as_secs_f64(),
                report.events(),
                report.longest_recovery.as_secs_f64(),
                report.slowest_event,
                report.longest_iteration_us.max(sw.longest_iteration_us),
                report
                    .longest_own_iteration_us
                    .max(sw.longest_own_iteration_us),
                sw.rss_kib.last().copied().unwrap_or(0),
                traffic.rounds.load(Ordering::Relaxed),
                traffic.bytes.load(Ordering::Relaxed) as f64 / 1e9,
            );
        }
        std::thread::sleep(Duration::from_millis(1000 + rng.next() % 2000));
    }
    sw.sample(&bin)?;
    // Traffic first: an iperf3 round ends only while the switch runs.
    traffic.stop();
    sw.finish(&mut report, libc::SIGINT)?;
    report.iperf_rounds = traffic.rounds.load(Ordering::Relaxed);
    report.iperf_bytes = traffic.bytes.load(Ordering::Relaxed);
    report.print(seed);
    report.verdict()
}

/// What the run found.
#[derive(Default)]
struct Report {
    port_churn: u64,
    veth_recreated: u64,
    killed: u64,
    restarted: u64,
    longest_recovery: Duration,
    /// The event after which connectivity took longest to come back.
    slowest_event: String,
    longest_iteration_us: f64,
    /// The same without the kernel's transmit calls (what the limit is
    /// about: the switch's own work).
    longest_own_iteration_us: f64,
    /// Clean stops and what their exit report said.
    clean_stops: u64,
    accounting_failures: Vec<String>,
    /// Per long switch run: (RSS at RSS_BASELINE_AGE, RSS at its end), KiB.
    rss: Vec<(u64, u64)>,
    iperf_rounds: u64,
    iperf_bytes: u64,
}

impl Report {
    fn events(&self) -> u64 {
        self.port_churn + self.veth_recreated + self.killed + self.restarted
    }

    fn rss_growth_ok(start: u64, end: u64) -> bool {
        end <= start + start / 10 + 4096
    }

    fn print(&self, seed: u64) {
        println!("\nsoak report (seed {seed})");
        println!(
            "  events: {} ({} port del+add, {} veth re-created, {} kill -9 + restart, {} stop + restart)",
            self.events(),
            self.port_churn,
            self.veth_recreated,
            self.killed,
            self.restarted
        );
        println!(
            "  connectivity back after every event; longest wait {:.1} s, after {} (limit {} s)",
            self.longest_recovery.as_secs_f64(),
            self.slowest_event,
            RECOVERY.as_secs()
        );
        println!(
            "  clean stops: {}, with 0 unaccounted and 0 refused frees: {}",
            self.clean_stops,
            self.clean_stops - self.accounting_failures.len() as u64
        );
        println!(
            "  longest PMD iteration: {:.0} us without the kernel's transmit calls (limit {MAX_ITERATION_US:.0} us); {:.0} us with them",
            self.longest_own_iteration_us, self.longest_iteration_us
        );
        for (i, (start, end)) in self.rss.iter().enumerate() {
            println!(
                "  switch run {i} (lived over {} s): RSS {start} KiB at {} s, {end} KiB at its end{}",
                RSS_JUDGED_AGE.as_secs(),
                RSS_BASELINE_AGE.as_secs(),
                if Self::rss_growth_ok(*start, *end) {
                    ""
                } else {
                    "  <- grew"
                }
            );
        }
        println!(
            "  iperf3 h0 -> h3: {} rounds, {:.2} GB",
            self.iperf_rounds,
            self.iperf_bytes as f64 / 1e9
        );
    }

    fn verdict(&self) -> Result<()> {
        let mut failures = self.accounting_failures.clone();
        if self.longest_own_iteration_us > MAX_ITERATION_US {
            failures.push(format!(
                "a PMD iteration took {:.0} us of the switch's own work",
                self.longest_own_iteration_us
            ));
        }
        for (start, end) in &self.rss {
            if !Self::rss_growth_ok(*start, *end) {
                failures.push(format!("RSS grew from {start} to {end} KiB in one run"));
            }
        }
        if failures.is_empty() {
            println!("soak passed");
            Ok(())
        } else {
            bail!("soak failed: {}", failures.join("; "))
        }
    }
}

/// One `dataplane run` in the switch namespace.
struct Switch {
    child: Option<Child>,
    output: PathBuf,
    started: Instant,
    rss_kib: Vec<u64>,
    rss_baseline: Option<u64>,
    longest_iteration_us: f64,
    longest_own_iteration_us: f64,
}

impl Switch {
    fn start(bin: &Path) -> Result<Switch> {
        let dir = crate::run::target_dir().join("soak");
        std::fs::create_dir_all(&dir)?;
        let run = std::fs::read_dir(&dir)?.count();
        let output = dir.join(format!("switch-{run}.log"));
        let log = std::fs::File::create(&output)?;
        // The PMD gets CPU 1 and the traffic CPU 0, as a deployment gives
        // PMDs CPUs of their own: the longest-iteration limit is about the
        // switch's own work, not about a CPU shared with iperf3.
        let mut args = vec![
            "--netns".to_string(),
            ns("sw"),
            "run".into(),
            "--core".into(),
            "1".into(),
        ];
        for i in 0..HOSTS {
            args.push("--port".into());
            args.push(port_spec(i));
        }
        let child = Command::new(bin)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dataplane run")?;
        let sw = Switch {
            child: Some(child),
            output,
            started: Instant::now(),
            rss_kib: Vec::new(),
            rss_baseline: None,
            longest_iteration_us: 0.0,
            longest_own_iteration_us: 0.0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&sw.output).unwrap_or_default();
            if out.contains("control socket ready") {
                return Ok(sw);
            }
            if Instant::now() > deadline {
                bail!("dataplane run did not start:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reads RSS and the longest iteration so far.
    fn sample(&mut self, bin: &Path) -> Result<()> {
        let pid = self.child.as_ref().map_or(0, |c| c.id());
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            self.rss_kib.push(kib);
            if self.rss_baseline.is_none() && self.started.elapsed() > RSS_BASELINE_AGE {
                self.rss_baseline = Some(kib);
            }
        }
        let stats = dataplane_ok(bin, &["stats", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&stats)?;
        if let Some(us) = v["longest_iteration_us"].as_f64() {
            self.longest_iteration_us = self.longest_iteration_us.max(us);
        }
        if let Some(us) = v["longest_own_iteration_us"].as_f64() {
            self.longest_own_iteration_us = self.longest_own_iteration_us.max(us);
        }
        Ok(())
    }

    /// Ends this run with `sig`; a SIGINT stop must report exact accounting.
    fn finish(&mut self, report: &mut Report, sig: i32) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait()?;
        report.longest_iteration_us = report.longest_iteration_us.max(self.longest_iteration_us);
        report.longest_own_iteration_us = report
            .longest_own_iteration_us
            .max(self.longest_own_iteration_us);
        if let (Some(start), Some(end)) = (self.rss_baseline, self.rss_kib.last()) {
            if self.started.elapsed() >= RSS_JUDGED_AGE {
                report.rss.push((start, *end));
            }
        }
        if sig == libc::SIGINT {
            report.clean_stops += 1;
            let out = std::fs::read_to_string(&self.output).unwrap_or_default();
            if !status.success() || !out.contains(" 0 unaccounted, 0 refused frees") {
                report.accounting_failures.push(format!(
                    "a clean stop reported ({status}):\n{}",
                    out.lines()
                        .filter(|l| l.contains("frames:") || l.contains("error"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// Pings between all containers and an iperf3 stream h0 -> h3, in
/// background threads, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    rounds: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Traffic {
    fn start(global_stop: Arc<AtomicBool>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let _ = Command::new("taskset")
            .args([
                "-c",
                "0",
                "ip",
                "netns",
                "exec",
                &host(3),
                "iperf3",
                "-s",
                "-D",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        {
            let (stop, global, rounds, bytes) =
                (stop.clone(), global_stop, rounds.clone(), bytes.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && !global.load(Ordering::Relaxed) {
                    let out = Command::new("taskset")
                        .args(["-c", "0", "ip", "netns", "exec", &host(0), "iperf3", "-c"])
                        .arg(host_ip(3))
                        .args(["-t", "5", "-J", "--connect-timeout", "2000"])
                        .stderr(Stdio::null())
                        .output();
                    let received = out
                        .ok()
                        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                        .and_then(|v| v["end"]["sum_received"]["bytes"].as_u64());
                    match received {
                        Some(b) => {
                            rounds.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(b, Ordering::Relaxed);
                        }
                        None => std::thread::sleep(Duration::from_millis(500)),
                    }
                }
            }));
        }
        for (from, to) in [(0, 1), (1, 2), (2, 3), (3, 0)] {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = Command::new("taskset")
                        .args(["-c", "0", "ip", "netns", "exec", &host(from), "ping", "-q"])
                        .args(["-c", "200"])
                        .args(["-i", "0.01", "-W", "1", &host_ip(to)])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }));
        }
        Traffic {
            stop,
            threads,
            rounds,
            bytes,
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until every container reaches every other; records the wait.
fn expect_connectivity(report: &mut Report, after: &str) -> Result<()> {
    let started = Instant::now();
    for from in 0..HOSTS {
        for to in (0..HOSTS).filter(|&t| t != from) {
            loop {
                let ok = Command::new("ip")
                    .args(["netns", "exec", &host(from), "ping", "-c", "1", "-W", "1"])
                    .arg(host_ip(to))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                if started.elapsed() > RECOVERY {
                    bail!(
                        "after {after}: h{from} cannot reach h{to} ({}) for {} s; switch log: {}",
                        host_ip(to),
                        RECOVERY.as_secs(),
                        std::env::temp_dir()
                            .join(format!("{PREFIX}-switch.log"))
                            .display()
                    );
                }
            }
        }
    }
    if started.elapsed() > report.longest_recovery {
        report.longest_recovery = started.elapsed();
        report.slowest_event = after.to_string();
    }
    Ok(())
}

/// `dataplane -n dpsoak-sw ARGS`, failing with its stderr.
fn dataplane_ok(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(["--netns", &ns("sw")])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "dataplane {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes container `i`'s veth and makes a new one, as a container
/// restart does (new interface index, new MAC).
fn recreate_veth(i: usize) -> Result<()> {
    ip(&["-n", &ns("sw"), "link", "del", &format!("s{i}")])?;
    std::thread::sleep(Duration::from_millis(200));
    plug(i)
}

/// Container `i`'s veth pair: c0 in the container, s`i` on the switch.
fn plug(i: usize) -> Result<()> {
    let (h, s) = (host(i), format!("s{i}"));
    ip(&[
        "-n",
        &h,
        "link",
        "add",
        "c0",
        "type",
        "veth",
        "peer",
        "name",
        &s,
        "netns",
        &ns("sw"),
    ])?;
    ip(&[
        "-n",
        &h,
        "addr",
        "add",
        &format!("{}/24", host_ip(i)),
        "dev",
        "c0",
    ])?;
    ip(&["-n", &h, "link", "set", "c0", "up"])?;
    ip(&["-n", &ns("sw"), "link", "set", &s, "up"])
}

/// The soak's namespaces, removed on drop with what runs in them and the
/// pins made in them.
struct Topology;

impl Topology {
    fn up() -> Result<Topology> {
        remove_leftovers();
        let topo = Topology;
        ip(&["netns", "add", &ns("sw")])?;
        for i in 0..HOSTS {
            ip(&["netns", "add", &host(i)])?;
            ip(&["-n", &host(i), "link", "set", "lo", "up"])?;
            plug(i)?;
        }
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        remove_leftovers();
    }
}

fn remove_leftovers() {
    let mut names: Vec<String> = (0..HOSTS).map(host).collect();
    names.push(ns("sw"));
    for name in names {
        remove_namespace(&name);
    }
    let _ = std::fs::remove_dir("/sys/fs/bpf/dataplane");
    let _ = std::fs::remove_file(format!("/run/dataplane/{}.ctl", ns("sw")));
    let _ = std::fs::remove_dir("/run/dataplane");
}

/// Pins the calling thread (and so every process it starts) to CPU 0.
fn pin_self_to_cpu0() {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call
    // applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A small deterministic generator: the soak needs a replayable sequence,
/// not statistical quality (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
