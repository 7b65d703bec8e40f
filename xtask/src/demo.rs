//! `cargo xtask demo`: the main job end to end on a topology of its own.
//!
//! Builds everything, brings up `scripts/veth-setup.sh up dpdemo` (hosts a
//! and b, switch namespace sw), attaches `steer` to both switch ports, sends
//! traffic from a to b and shows the live counters, then removes everything,
//! also on Ctrl-C or failure.

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
    let dp = |args: &[&str]| -> Result<()> {
        checked(Command::new(&bin).args(["--netns", &sw]).args(args))
    };
    dp(&["attach", "--iface", "sa", "--policy", "pass"])?;
    dp(&["attach", "--iface", "sb", "--policy", "pass"])?;

    // Until the userspace switch forwards between sa and sb, a kernel bridge
    // in the switch namespace connects them: steer counts every frame and
    // passes it on, which is exactly what it does for management traffic.
    let ip_sw = |args: &[&str]| checked(Command::new("ip").args(["-n", &sw]).args(args));
    ip_sw(&["link", "add", "br0", "type", "bridge"])?;
    ip_sw(&["link", "set", "sa", "master", "br0"])?;
    ip_sw(&["link", "set", "sb", "master", "br0"])?;
    ip_sw(&["link", "set", "br0", "up"])?;

    eprintln!(
        "[demo] ping from a to b for {}s; live counters of steer on sa and sb:\n",
        opts.seconds
    );
    let mut ping = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &format!("{TOPOLOGY}-a")])
            .args([
                "ping",
                "-i",
                "0.01",
                "-q",
                "-w",
                &opts.seconds.to_string(),
                "10.200.0.2",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting ping")?,
    );
    let mut watch = KillOnDrop(
        Command::new(&bin)
            .args(["--netns", &sw, "status", "--watch", "1"])
            .spawn()
            .context("starting dataplane status --watch")?,
    );
    let end = Instant::now() + Duration::from_secs(opts.seconds);
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        if ping.0.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    watch.interrupt();
    ping.interrupt();
    let out = ping.0.wait_with_output_ref()?;
    eprintln!("\n[demo] ping summary: {}", out.trim());
    eprintln!("[demo] final counters:");
    dp(&["status"])?;
    dp(&["detach", "--iface", "sa"])?;
    dp(&["detach", "--iface", "sb"])?;
    if stop.load(Ordering::Relaxed) {
        eprintln!("[demo] interrupted");
    }
    eprintln!("[demo] cleaning up");
    Ok(())
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

trait WaitOutputRef {
    fn wait_with_output_ref(&mut self) -> Result<String>;
}

impl WaitOutputRef for Child {
    /// Waits and returns what the child printed on stdout (its summary).
    fn wait_with_output_ref(&mut self) -> Result<String> {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut out) = self.stdout.take() {
            out.read_to_string(&mut s)?;
        }
        self.wait()?;
        Ok(s.lines()
            .filter(|l| l.contains("packets") || l.contains("rtt"))
            .collect::<Vec<_>>()
            .join("; "))
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
