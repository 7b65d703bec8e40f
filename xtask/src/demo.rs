//! `cargo xtask demo`: the main job end to end on a topology of its own.
//!
//! Builds everything, brings up `scripts/veth-setup.sh up dpdemo` (hosts a
//! and b, switch namespace sw), runs the switch with a and b as containers
//! (`veth:` ports, their interfaces untouched), pings and streams TCP from
//! a to b with iperf3 while the switch prints live counters, then removes
//! everything, also on Ctrl-C or failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::build::{self, BuildOptions};
use crate::run::{checked, is_root, workspace_root};
use crate::setup;

const TOPOLOGY: &str = "dpdemo";

#[derive(Args)]
pub struct DemoOptions {
    /// How long traffic flows, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

pub fn run(opts: &DemoOptions) -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and attaches XDP programs: run it as root (sudo cargo xtask demo)");
    }
    setup::run()?;
    let bin = build::build_all(&BuildOptions::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }

    eprintln!("\n[demo] topology: {TOPOLOGY}-a (a0 10.200.0.1) <-> sa [{TOPOLOGY}-sw] sb <-> (b0 10.200.0.2) {TOPOLOGY}-b");
    let _topology = Topology::up(&workspace_root())?;
    let sw = format!("{TOPOLOGY}-sw");
    let host_a = format!("{TOPOLOGY}-a");
    let host_b = format!("{TOPOLOGY}-b");
    // The hosts' veths keep the kernel's defaults (checksum offload and TSO
    // on, GRO off), as a container's do: the switch copes with them.

    eprintln!("[demo] starting the switch with a and b as containers: dataplane -n {sw} run --port veth:sa --port veth:sb --stats-interval 1");
    let mut switch = KillOnDrop(
        Command::new(&bin)
            .args([
                "--netns", &sw, "run", "--port", "veth:sa", "--port", "veth:sb",
            ])
            .args(["--stats-interval", "1", "--core", "1"])
            .spawn()
            .context("starting dataplane run")?,
    );
    std::thread::sleep(Duration::from_secs(2));
    if let Some(status) = switch.0.try_wait()? {
        bail!("dataplane run exited early ({status})");
    }

    eprintln!("\n[demo] ping a -> b through the switch:");
    checked(Command::new("ip").args([
        "netns",
        "exec",
        &host_a,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "10.200.0.2",
    ]))?;

    eprintln!(
        "\n[demo] TCP from a to b with iperf3 for {}s, nothing tuned in a or b (TSO and checksum\n\
         offload on, as a container's veth has them). Learned unicast stays in the kernel: steer_tc\n\
         redirects each 64 KiB segment into b's veth (FAST_PKTS below, counters every second)\n",
        opts.seconds
    );
    let _server = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &host_b, "iperf3", "-s", "-1"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting iperf3 -s in b (cargo xtask setup installs iperf3)")?,
    );
    iperf_client(&host_a, "10.200.0.2", opts.seconds, &stop)?;
    eprintln!(
        "\n[demo] steer on the switch ports (what it did with each frame: fast path, punted to the switch, ...):"
    );
    checked(Command::new(&bin).args(["--netns", &sw, "status"]))?;
    eprintln!("\n[demo] asking the running switch over its control socket: dataplane -n {sw} show ports / show fdb");
    checked(Command::new(&bin).args(["--netns", &sw, "show", "ports"]))?;
    checked(Command::new(&bin).args(["--netns", &sw, "show", "fdb"]))?;
    eprintln!("(live view: dataplane -n {sw} stats --watch; ports come and go with dataplane -n {sw} port add|del)");
    eprintln!("\n[demo] stopping the switch (Ctrl-C): it detaches its programs, releases its sockets and removes its punt device");
    switch.interrupt();
    let _ = switch.0.wait();
    if stop.load(Ordering::Relaxed) {
        eprintln!("[demo] interrupted");
    }
    eprintln!("[demo] cleaning up");
    Ok(())
}

/// `iperf3 -c ADDR -t SECONDS` from `netns`, retried while the server
/// starts (not after Ctrl-C).
fn iperf_client(netns: &str, addr: &str, seconds: u64, stop: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-c", addr, "-i", "1"])
            .args(["-t", &seconds.to_string()])
            .status()
            .context("running iperf3 -c")?;
        if status.success() || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("iperf3 -c {addr} from {netns} failed ({status})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The demo topology, removed on drop (also on error and Ctrl-C).
struct Topology {
    script: PathBuf,
}

impl Topology {
    fn up(root: &Path) -> Result<Topology> {
        let script = root.join("scripts/veth-setup.sh");
        // A previous demo killed hard may have left it behind.
        let _ = Command::new(&script)
            .args(["down", TOPOLOGY])
            .stdout(Stdio::null())
            .status();
        let topo = Topology { script };
        checked(
            Command::new(&topo.script)
                .args(["up", TOPOLOGY])
                .stdout(Stdio::null()),
        )?;
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).args(["down", TOPOLOGY]).status();
    }
}

/// A child process that is stopped when the demo ends, however it ends.
struct KillOnDrop(Child);

impl KillOnDrop {
    /// SIGINT, so ping prints its summary and `status --watch` exits cleanly.
    fn interrupt(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { kill(self.0.id() as i32, 2) };
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.interrupt();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
