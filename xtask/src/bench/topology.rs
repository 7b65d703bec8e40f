//! The benchmark's namespaces and veths, built here (not by a script) so
//! that every scenario gets exactly its own devices, and removed on drop,
//! including processes still running in them and dataplane's pins.
//!
//! ```text
//!  dpbench-a: a0 10.200.0.1 ── sa  dpbench-sw  sb ── b0 10.200.0.2 :dpbench-b
//!  PCP only:                   sc ── c0 10.200.0.3 :dpbench-g (container)
//!  PVP: dpbench-g is the VM; its NIC is made by the path (a TAP).
//!  Scale: sc ── c0 as PCP, and sf1..sf14 ── f1..f14 :dpbench-b (sinks)
//!  Overlay: dpbench-sw u1 10.99.0.1 ── u2 10.99.0.2 dpbench-sw2 (the underlay,
//!           MTU 1550), and sb in dpbench-sw2
//! ```

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::Scenario;

pub const PREFIX: &str = "dpbench";
/// Extra switch ports of the scale scenario (sf1.. in the switch
/// namespace, f1.. in the sink's), for flooding to up to 16 ports.
pub const FLOOD_PORTS: usize = 14;
/// Short names of every namespace the benchmark may create.
const NAMESPACES: [&str; 5] = ["a", "sw", "b", "g", "sw2"];
/// The overlay scenario's VTEP addresses, on u1 (switch 1) and u2.
pub const VTEPS: [&str; 2] = ["10.99.0.1", "10.99.0.2"];
/// Its underlay MTU: VXLAN's 50 bytes on top of the largest frame.
const UNDERLAY_MTU: &str = "1550";

pub struct Topology {
    pub scenario: Scenario,
    /// MAC of the sink's b0.
    pub b0_mac: String,
    /// PCP: MAC of the container's c0.
    pub c0_mac: Option<String>,
}

impl Topology {
    pub fn up(scenario: Scenario) -> Result<Topology> {
        remove_leftovers();
        // Record nothing: the fixed namespace names are the record, and
        // `remove_leftovers` deletes them whatever state they are in.
        let built = (|| -> Result<()> {
            let overlay = scenario == Scenario::Overlay;
            for short in NAMESPACES.iter().filter(|&&n| n != "sw2" || overlay) {
                ip(&["netns", "add", &ns(short)])?;
                ip(&["-n", &ns(short), "link", "set", "lo", "up"])?;
            }
            veth(("a", "a0"), ("sw", "sa"))?;
            veth(("b", "b0"), (if overlay { "sw2" } else { "sw" }, "sb"))?;
            if overlay {
                veth(("sw", "u1"), ("sw2", "u2"))?;
                for (short, dev, addr) in [("sw", "u1", VTEPS[0]), ("sw2", "u2", VTEPS[1])] {
                    ip(&["-n", &ns(short), "link", "set", dev, "mtu", UNDERLAY_MTU])?;
                    ip(&[
                        "-n",
                        &ns(short),
                        "addr",
                        "add",
                        &format!("{addr}/24"),
                        "dev",
                        dev,
                    ])?;
                }
            }
            ip(&["-n", &ns("a"), "addr", "add", "10.200.0.1/24", "dev", "a0"])?;
            ip(&["-n", &ns("b"), "addr", "add", "10.200.0.2/24", "dev", "b0"])?;
            if matches!(scenario, Scenario::Pcp | Scenario::Scale) {
                veth(("g", "c0"), ("sw", "sc"))?;
                ip(&["-n", &ns("g"), "addr", "add", "10.200.0.3/24", "dev", "c0"])?;
            }
            if scenario == Scenario::Scale {
                for i in 1..=FLOOD_PORTS {
                    veth(("b", &format!("f{i}")), ("sw", &format!("sf{i}")))?;
                }
            }
            if scenario == Scenario::Tcp {
                // Two containers at the kernel's defaults: nothing tuned.
                return Ok(());
            }
            // The frame scenarios' generator and sink are instruments, not
            // containers. a0 receives the latency replies; some peers
            // (bare XDP redirect, the guests' echo) redirect them into it
            // in XDP, which a veth drops without GRO or an XDP program.
            ethtool(&ns("a"), &["-K", "a0", "gro", "on"]);
            // The latency ping-pong's UDP must carry real checksums for the
            // peers that copy bytes (DPDK, OVS): with offload, a0's stack
            // leaves them to "hardware", and b0 drops them.
            ethtool(&ns("a"), &["-K", "a0", "tx", "off"]);
            ethtool(&ns("b"), &["-K", "b0", "tx", "off"]);
            Ok(())
        })();
        let mut topo = Topology {
            scenario,
            b0_mac: String::new(),
            c0_mac: None,
        };
        built.context(
            "building the benchmark namespaces (is iproute2 installed and are you root?)",
        )?;
        let a0_mac = mac_of(&ns("a"), "a0")?;
        topo.b0_mac = mac_of(&ns("b"), "b0")?;
        if matches!(scenario, Scenario::Pcp | Scenario::Scale) {
            topo.c0_mac = Some(mac_of(&ns("g"), "c0")?);
        }
        if scenario == Scenario::Tcp {
            return Ok(topo);
        }
        // Replies of the latency ping-pong go straight to a0: the sink drops
        // everything (steer drop mode) most of the time, so ARP cannot be
        // relied upon.
        ip(&[
            "-n",
            &ns("b"),
            "neigh",
            "replace",
            "10.200.0.1",
            "lladdr",
            &a0_mac,
            "dev",
            "b0",
            "nud",
            "permanent",
        ])?;
        Ok(topo)
    }

    pub fn ns(&self, short: &str) -> String {
        ns(short)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        remove_leftovers();
    }
}

pub fn ns(short: &str) -> String {
    format!("{PREFIX}-{short}")
}

/// Kills what still runs in the benchmark namespaces, removes dataplane's
/// pins made in them (they live in the host's bpffs) and the namespaces.
pub fn remove_leftovers() {
    for short in NAMESPACES {
        remove_namespace(&ns(short));
    }
    // Empty directory only: a user's own attachments stay.
    let _ = std::fs::remove_dir("/sys/fs/bpf/dataplane");
}

/// Removes network namespace `name` if it exists, with what still runs in
/// it and the pins dataplane made for it in the host's bpffs.
pub fn remove_namespace(name: &str) {
    let path = format!("/var/run/netns/{name}");
    let Ok(meta) = std::fs::metadata(&path) else {
        return;
    };
    let pids = Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) with a pid read from `ip netns pids`.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    use std::os::unix::fs::MetadataExt;
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/dataplane/ns{}", meta.ino()));
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// `ip ARGS`, failing with the command line in the error.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ethtool ARGS` in a namespace; a failure is not fatal (offload switches
/// are tuning, and not every device has every knob).
pub fn ethtool(netns: &str, args: &[&str]) {
    let _ = Command::new("ip")
        .args(["netns", "exec", netns, "ethtool"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn veth(a: (&str, &str), b: (&str, &str)) -> Result<()> {
    ip(&[
        "-n",
        &ns(a.0),
        "link",
        "add",
        a.1,
        "type",
        "veth",
        "peer",
        "name",
        b.1,
        "netns",
        &ns(b.0),
    ])?;
    ip(&["-n", &ns(a.0), "link", "set", a.1, "up"])?;
    ip(&["-n", &ns(b.0), "link", "set", b.1, "up"])
}

pub fn mac_of(netns: &str, ifname: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["-n", netns, "-br", "link", "show", ifname])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .map(str::to_string)
        .with_context(|| format!("reading the MAC address of {ifname} in {netns}"))
}

/// Runs `f` on a thread that has entered network namespace `netns`: sockets
/// it opens and interface indexes it resolves belong to that namespace. Only
/// the network namespace changes (unlike `ip netns exec`), so bpffs stays.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/var/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on a namespace fd we own; it changes only
            // this thread's network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {netns}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {netns} panicked"))?
    })
}
