//! Open vSwitch's userspace datapath (Debian openvswitch-switch 3.1) with
//! afxdp ports, run without its kernel module: a private ovsdb-server and
//! ovs-vswitchd with their own run/db/log/etc directories under
//! /run/dpbench-ovs, vswitchd inside the switch namespace, a
//! `datapath_type=netdev` bridge, and port-to-port OpenFlow rules (like
//! testpmd's io-fwd: no learning). Everything is stopped and removed on drop
//! and, after a killed run, by the next run (`remove_leftovers`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const ROOT: &str = "/run/dpbench-ovs";
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const VSWITCHD: &str = "/usr/lib/openvswitch-switch/ovs-vswitchd";

pub struct Ovs {
    root: PathBuf,
    /// Where vswitchd runs: its userspace datapath's tap devices live there.
    netns: String,
    /// The taps the netdev datapath made (the datapath's and each
    /// bridge's internal port), removed on drop.
    taps: Vec<&'static str>,
}

impl Ovs {
    /// Starts OVS in `netns` with `ports` (afxdp, native XDP) on bridge br0
    /// and the flows `(in, out)`, PMD on CPU 1; without flows, one flow
    /// `actions=NORMAL` (MAC learning, with a table of
    /// [`super::paths::SCALE_TABLE`] addresses).
    pub fn start(netns: &str, ports: &[&str], flows: Option<&[(&str, &str)]>) -> Result<Ovs> {
        remove_leftovers();
        let mut ovs = Ovs::daemons(0, netns)?;
        ovs.add_netdev_bridge("br0")?;
        for port in ports {
            ovs.add_afxdp_port("br0", port)?;
        }
        ovs.cmd("ovs-ofctl", &["del-flows", "br0"])?;
        let Some(flows) = flows else {
            ovs.vsctl(&[
                "set",
                "bridge",
                "br0",
                &format!("other_config:mac-table-size={}", super::paths::SCALE_TABLE),
            ])?;
            ovs.cmd("ovs-ofctl", &["add-flow", "br0", "actions=NORMAL"])?;
            return Ok(ovs);
        };
        for (from, to) in flows.iter() {
            ovs.cmd(
                "ovs-ofctl",
                &[
                    "add-flow",
                    "br0",
                    &format!("in_port={from},actions=output:{to}"),
                ],
            )?;
        }
        Ok(ovs)
    }

    /// OVS instance `instance` (0 or 1: one per host of the overlay
    /// scenario) in `netns` as OVS's userspace tunnelling wants it: the
    /// underlay interface on bridge br-phy, whose internal port takes the
    /// VTEP address `local`, and br-int with the uplink and a vxlan port to
    /// `remote`, both bridges learning (NORMAL). The caller moves `local`
    /// off the underlay interface first.
    pub fn start_vxlan(
        instance: usize,
        netns: &str,
        uplink: &str,
        underlay: &str,
        local: &str,
        remote: &str,
    ) -> Result<Ovs> {
        if instance == 0 {
            remove_leftovers();
        }
        let mut ovs = Ovs::daemons(instance, netns)?;
        ovs.add_netdev_bridge("br-phy")?;
        ovs.add_afxdp_port("br-phy", underlay)?;
        ovs.add_netdev_bridge("br-int")?;
        ovs.add_afxdp_port("br-int", uplink)?;
        ovs.vsctl(&[
            "add-port",
            "br-int",
            "vxlan0",
            "--",
            "set",
            "interface",
            "vxlan0",
            "type=vxlan",
            &format!("options:remote_ip={remote}"),
            "options:key=100",
        ])?;
        let in_ns = |args: &[&str]| -> Result<()> {
            let mut all = vec!["-n", netns];
            all.extend_from_slice(args);
            super::topology::ip(&all)
        };
        in_ns(&["addr", "add", &format!("{local}/24"), "dev", "br-phy"])?;
        in_ns(&["link", "set", "br-phy", "up"])?;
        in_ns(&["link", "set", "br-int", "up"])?;
        for br in ["br-phy", "br-int"] {
            ovs.cmd("ovs-ofctl", &["del-flows", br])?;
            ovs.cmd("ovs-ofctl", &["add-flow", br, "actions=NORMAL"])?;
        }
        Ok(ovs)
    }

    /// ovsdb-server and ovs-vswitchd (PMD on CPU 1), vswitchd in `netns`,
    /// with their files under instance `instance`'s directory.
    fn daemons(instance: usize, netns: &str) -> Result<Ovs> {
        if !Path::new(VSWITCHD).exists() {
            bail!("{VSWITCHD} not found: install openvswitch-switch (`cargo xtask bench` does)");
        }
        let ovs = Ovs {
            root: root_of(instance),
            netns: netns.to_string(),
            taps: vec!["ovs-netdev"],
        };
        for d in ["run", "db", "log", "etc"] {
            std::fs::create_dir_all(ovs.root.join(d))?;
        }
        let db = ovs.root.join("db/conf.db");
        ovs.cmd("ovsdb-tool", &["create", &db.to_string_lossy(), SCHEMA])?;
        let sock = format!("unix:{}", ovs.root.join("run/db.sock").display());
        ovs.cmd(
            "ovsdb-server",
            &[
                &db.to_string_lossy(),
                &format!("--remote=p{sock}"),
                &format!("--pidfile={}", ovs.pidfile("ovsdb-server").display()),
                &format!(
                    "--log-file={}",
                    ovs.root.join("log/ovsdb-server.log").display()
                ),
                "--detach",
            ],
        )?;
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:pmd-cpu-mask=0x2",
        ])?;
        let mut vswitchd = ovs.command("nsenter");
        vswitchd
            .arg(format!("--net=/var/run/netns/{netns}"))
            .arg(VSWITCHD)
            .arg(&sock)
            .arg(format!(
                "--pidfile={}",
                ovs.pidfile("ovs-vswitchd").display()
            ))
            .arg(format!(
                "--log-file={}",
                ovs.root.join("log/ovs-vswitchd.log").display()
            ))
            .args(["--detach", "-vconsole:off"]);
        run(&mut vswitchd, "ovs-vswitchd")?;
        Ok(ovs)
    }

    /// A `datapath_type=netdev` bridge; its internal port is a tap in the
    /// namespace, removed on drop.
    fn add_netdev_bridge(&mut self, name: &'static str) -> Result<()> {
        self.vsctl(&[
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
        ])?;
        self.taps.push(name);
        Ok(())
    }

    /// Adding an afxdp port right after another AF_XDP user exited sometimes
    /// fails with EINVAL (the kernel releases the queue in deferred work):
    /// retry a few times.
    fn add_afxdp_port(&self, bridge: &str, port: &str) -> Result<()> {
        let mut last = String::new();
        for _ in 0..4 {
            self.vsctl(&[
                "--may-exist",
                "add-port",
                bridge,
                port,
                "--",
                "set",
                "interface",
                port,
                "type=afxdp",
                "options:xdp-mode=native",
            ])?;
            last = self
                .vsctl(&["get", "interface", port, "error"])
                .unwrap_or_default();
            let ofport = self
                .vsctl(&["get", "interface", port, "ofport"])
                .unwrap_or_default();
            if last.trim() == "[]" && ofport.trim() != "-1" && !ofport.trim().is_empty() {
                return Ok(());
            }
            let _ = self.vsctl(&["del-port", bridge, port]);
            std::thread::sleep(Duration::from_millis(700));
        }
        bail!(
            "OVS could not open afxdp port {port}: {} (see {}/log/ovs-vswitchd.log while it runs)",
            last.trim(),
            self.root.display()
        )
    }

    /// `ovs-appctl fdb/show br0`: the MACs the NORMAL action learned.
    pub fn fdb_show(&self) -> Result<String> {
        let ctl = self.root.join(format!(
            "run/ovs-vswitchd.{}.ctl",
            read_pid(&self.pidfile("ovs-vswitchd")).unwrap_or(0)
        ));
        self.cmd(
            "ovs-appctl",
            &["-t", &ctl.to_string_lossy(), "fdb/show", "br0"],
        )
    }

    fn pidfile(&self, daemon: &str) -> PathBuf {
        self.root.join(format!("run/{daemon}.pid"))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("OVS_RUNDIR", self.root.join("run"))
            .env("OVS_DBDIR", self.root.join("db"))
            .env("OVS_LOGDIR", self.root.join("log"))
            .env("OVS_SYSCONFDIR", self.root.join("etc"));
        c
    }

    fn cmd(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args), program)
    }

    fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db=unix:{}", self.root.join("run/db.sock").display());
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        self.cmd("ovs-vsctl", &all)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what} (package openvswitch-switch)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // A clean exit lets vswitchd close its AF_XDP sockets and detach
        // its XDP programs; the kill below catches a hung one.
        let _ = self.cmd(
            "ovs-appctl",
            &[
                "-t",
                &self
                    .root
                    .join(format!(
                        "run/ovs-vswitchd.{}.ctl",
                        read_pid(&self.pidfile("ovs-vswitchd")).unwrap_or(0)
                    ))
                    .to_string_lossy(),
                "--timeout=10",
                "exit",
                // --cleanup: remove the ports, so vswitchd detaches its XDP
                // programs from the veths.
                "--cleanup",
            ],
        );
        stop_daemons(&self.root);
        // The netdev datapath makes a tap for the datapath (`ovs-netdev`)
        // and one for each bridge's internal port (`br0`); a vswitchd that
        // exits, even with --cleanup, leaves them in the namespace, where
        // the next path of a scenario (a Linux bridge named br0) collides.
        for tap in &self.taps {
            let _ = Command::new("ip")
                .args(["-n", &self.netns, "link", "del", tap])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Where instance `instance` keeps its files.
fn root_of(instance: usize) -> PathBuf {
    match instance {
        0 => PathBuf::from(ROOT),
        n => PathBuf::from(format!("{ROOT}-{n}")),
    }
}

/// Kills the daemons of a previous run (by their pid files) and removes
/// their directories.
pub fn remove_leftovers() {
    for instance in 0..2 {
        stop_daemons(&root_of(instance));
    }
}

/// Stops the daemons whose files are under `root` and removes it.
fn stop_daemons(root: &Path) {
    if !root.exists() {
        return;
    }
    for daemon in ["ovs-vswitchd", "ovsdb-server"] {
        if let Some(pid) = read_pid(&root.join(format!("run/{daemon}.pid"))) {
            // SAFETY: kill(2) with the pid the daemon wrote itself.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..50 {
                // SAFETY: signal 0 only checks that the process exists.
                if unsafe { libc::kill(pid, 0) } != 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_dir_all(root);
}
