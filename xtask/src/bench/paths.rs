//! The forwarding paths compared, per scenario: how each is started on the
//! benchmark topology and torn down again.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use super::dpdk::{self, Hugepages, Testpmd};
use super::guest;
use super::ovs::Ovs;
use super::topology::{ethtool, ip, mac_of, Topology};
use super::traffic::Dataplane;
use super::Scenario;

/// The MAC the PVP bridge path's VM (a process on the TAP's fd) answers to;
/// not the TAP netdev's own, which the bridge keeps for itself.
const TAP_GUEST_MAC: &str = "02:00:00:00:0e:01";

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
    /// DPDK testpmd io-fwd with net_af_xdp vdevs.
    #[value(name = "testpmd-af_xdp")]
    TestpmdAfXdp,
    /// DPDK testpmd io-fwd with net_af_packet vdevs.
    #[value(name = "testpmd-af_packet")]
    TestpmdAfPacket,
    /// Open vSwitch userspace datapath, afxdp ports, port-to-port flows.
    OvsAfxdp,
    /// Bare in-kernel XDP redirect (no switching: the ceiling).
    XdpRedirect,
    /// Emulated direct assignment: the guest owns the uplink veths.
    VfEmulVeth,
    /// Emulated SR-IOV VF: macvlan passthru on each uplink, owned by the guest.
    VfEmulMacvlan,
    /// PVP: Linux bridge with a TAP; a process on the TAP's fd is the VM.
    LinuxBridgeTap,
    /// PVP: dataplane with a `tap:` port; the TAP netdev is the VM's NIC.
    DataplaneTap,
    /// PVP: the same with busy polling.
    DataplaneTapBusy,
    /// PVP: dataplane `vhost-user:` port, testpmd virtio_user as the VM.
    DataplaneVhostUser,
    /// PVP: testpmd net_vhost io-fwd (the DPDK peer), virtio_user as the VM.
    TestpmdVhost,
}

impl PathKind {
    pub fn for_scenario(s: Scenario) -> &'static [PathKind] {
        use PathKind::*;
        match s {
            Scenario::P2p => &[
                LinuxBridge,
                DataplaneFastpath,
                Dataplane,
                DataplaneBusy,
                DataplaneXconnect,
                TestpmdAfXdp,
                TestpmdAfPacket,
                OvsAfxdp,
                XdpRedirect,
            ],
            Scenario::Pcp => &[
                LinuxBridge,
                DataplaneFastpath,
                Dataplane,
                DataplaneBusy,
                TestpmdAfXdp,
                TestpmdAfPacket,
                OvsAfxdp,
                XdpRedirect,
                VfEmulVeth,
                VfEmulMacvlan,
            ],
            Scenario::Pvp => &[
                LinuxBridgeTap,
                DataplaneTap,
                DataplaneTapBusy,
                DataplaneVhostUser,
                TestpmdVhost,
            ],
            // Measured with iperf3 and sockperf, not the generator (tcp.rs).
            Scenario::Tcp => &[],
        }
    }

    /// The path every other one is given as a ratio of.
    pub fn baseline(s: Scenario) -> PathKind {
        match s {
            Scenario::Pvp => PathKind::LinuxBridgeTap,
            _ => PathKind::LinuxBridge,
        }
    }

    pub fn name(self) -> &'static str {
        use PathKind::*;
        match self {
            LinuxBridge => "linux-bridge",
            DataplaneFastpath => "dataplane-fastpath",
            Dataplane => "dataplane",
            DataplaneBusy => "dataplane-busy",
            DataplaneXconnect => "dataplane-xconnect",
            TestpmdAfXdp => "testpmd-af_xdp",
            TestpmdAfPacket => "testpmd-af_packet",
            OvsAfxdp => "ovs-afxdp",
            XdpRedirect => "xdp-redirect",
            VfEmulVeth => "vf-emul-veth",
            VfEmulMacvlan => "vf-emul-macvlan",
            LinuxBridgeTap => "linux-bridge-tap",
            DataplaneTap => "dataplane-tap",
            DataplaneTapBusy => "dataplane-tap-busy",
            DataplaneVhostUser => "dataplane-vhost-user",
            TestpmdVhost => "testpmd-vhost",
        }
    }

    /// Emulations stand in for hardware this machine does not have.
    pub fn is_emulation(self) -> bool {
        matches!(self, PathKind::VfEmulVeth | PathKind::VfEmulMacvlan)
    }

    pub fn describe(self, s: Scenario) -> String {
        use PathKind::*;
        let pcp = s == Scenario::Pcp;
        let ports = if pcp { "sa, sb and sc" } else { "sa and sb" };
        match self {
            LinuxBridge => format!("Linux bridge br0 ({ports}), GRO on the ports that receive XDP-redirected frames, br_netfilter off"),
            DataplaneFastpath => format!("dataplane run, learning switch on {ports}, learned unicast redirected in XDP (fast path), PMD on CPU 1"),
            Dataplane => format!("dataplane run --no-fast-path on {ports}: every frame through AF_XDP (copy mode: veth has no zero-copy) and the userspace switch, adaptive polling, PMD on CPU 1"),
            DataplaneBusy => "as `dataplane`, with --busy-poll".into(),
            DataplaneXconnect => "dataplane run --xconnect (io-fwd, no switching), busy polling, PMD on CPU 1".into(),
            TestpmdAfXdp => format!("DPDK 22.11 dpdk-testpmd io-fwd, net_af_xdp on {ports}{}, fwd lcore on CPU 1", if pcp { " (chained: sa->sc->sb->sa)" } else { "" }),
            TestpmdAfPacket => format!("DPDK 22.11 dpdk-testpmd io-fwd, net_af_packet on {ports}{}, fwd lcore on CPU 1", if pcp { " (chained)" } else { "" }),
            OvsAfxdp => format!("Open vSwitch 3.1 userspace datapath (netdev bridge), afxdp ports in native XDP mode on {ports}, in_port->output flows, PMD on CPU 1"),
            XdpRedirect => if pcp { "dataplane forward sa->sc and sc->sb: bare XDP redirects, no switching".into() } else { "dataplane forward sa->sb: a bare XDP redirect, no switching (the ceiling)".into() },
            VfEmulVeth => "EMULATION of direct assignment: the uplink veths sa and sb are moved into the guest namespace, whose application (an XDP redirect sa->sb) owns them; no switch at all: the ceiling of device assignment".into(),
            VfEmulMacvlan => "EMULATION of SR-IOV VFs: a macvlan in passthru mode on each uplink (sa, sb), standing in for the NIC's PF/VF demux, owned by the guest namespace, whose application redirects between them (generic XDP: macvlan has no native XDP)".into(),
            LinuxBridgeTap => "Linux bridge br0 (sa, sb, TAP vmtap); the VM is a process holding the TAP's fd (where QEMU/vhost-net would be) that echoes frames addressed to it towards b0 (MAC rewrite, read+write per frame, on CPU 1); static FDB entry for the VM's MAC".into(),
            DataplaneTap => "dataplane run with afxdp:sa, afxdp:sb and tap:vm0 (the switch holds the TAP's fd, as vhost-net would); the VM is the TAP netdev in the guest namespace, whose echo is an XDP program (MAC rewrite, back out of vm0 to the switch); PMD on CPU 1, adaptive polling".into(),
            DataplaneTapBusy => "as `dataplane-tap`, with --busy-poll".into(),
            DataplaneVhostUser => "dataplane run with afxdp:sa, afxdp:sb and a vhost-user port, PMD on CPU 1; the VM is dpdk-testpmd virtio_user in mac-fwd (rewrite toward b0) on CPU 0, sharing it with the generator (2 cores)".into(),
            TestpmdVhost => "dpdk-testpmd io-fwd chained sa -> net_vhost -> sb, fwd lcore on CPU 1; the same VM".into(),
        }
    }
}

/// A path that runs; stops and unconfigures everything on drop.
pub struct RunningPath {
    children: Vec<(String, Child)>,
    ovs: Option<Ovs>,
    undo: Vec<Vec<String>>,
    hugepages: Option<Hugepages>,
    uses_dpdk: bool,
    sw: String,
    /// Destination MAC of the generator's frames for this path.
    pub target_mac: String,
}

impl Drop for RunningPath {
    fn drop(&mut self) {
        let mut children: Vec<&mut Child> = self.children.iter_mut().map(|(_, c)| c).collect();
        interrupt_and_reap(&mut children, Duration::from_secs(10));
        self.ovs = None;
        // Whatever a path's process attached through netlink and left
        // behind (a crashed testpmd, OVS) must not meet the next path.
        for p in ["sa", "sb", "sc"] {
            self.undo.insert(
                0,
                ["ip", "-n", &self.sw, "link", "set", "dev", p, "xdp", "off"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            );
        }
        for cmd in self.undo.iter().rev() {
            let _ = Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if self.uses_dpdk {
            dpdk::remove_files();
        }
        self.hugepages = None;
        // AF_XDP users that just exited can make the next bind fail
        // (TOOLCHAIN.md): give the kernel a moment.
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl RunningPath {
    fn ip(&mut self, args: &[&str], undo: Option<&[&str]>) -> Result<()> {
        ip(args)?;
        if let Some(u) = undo {
            let mut v = vec!["ip".to_string()];
            v.extend(u.iter().map(|s| s.to_string()));
            self.undo.push(v);
        }
        Ok(())
    }

    /// GRO on a veth that receives XDP-redirected frames but has no XDP
    /// program of its own (the kernel drops them otherwise).
    fn gro(&mut self, netns: &str, ifname: &str) {
        ethtool(netns, &["-K", ifname, "gro", "on"]);
        self.undo.push(
            [
                "ip", "netns", "exec", netns, "ethtool", "-K", ifname, "gro", "off",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
    }

    fn child(&mut self, what: &str, c: Child) {
        self.children.push((what.to_string(), c));
    }
}

/// Bridged IPv4 must not detour through netfilter in `netns`, as on a host
/// without bridged firewalling (the sysctls exist only where br_netfilter
/// is loaded, so a failure is not an error).
pub fn bridge_netfilter_off(netns: &str) {
    for key in ["iptables", "ip6tables", "arptables"] {
        let _ = Command::new("ip")
            .args(["netns", "exec", netns, "sysctl", "-qw"])
            .arg(format!("net.bridge.bridge-nf-call-{key}=0"))
            .stderr(Stdio::null())
            .status();
    }
}

/// SIGINT to every child (dataplane and testpmd then detach and close
/// their sockets), then waits up to `grace` for each before SIGKILL.
pub fn interrupt_and_reap(children: &mut [&mut Child], grace: Duration) {
    for c in children.iter() {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    }
    let deadline = Instant::now() + grace;
    for c in children.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn start(
    path: PathKind,
    scenario: Scenario,
    topo: &Topology,
    dp: &Dataplane,
) -> Result<RunningPath> {
    use PathKind::*;
    let sw = topo.ns("sw");
    let g = topo.ns("g");
    let pcp = scenario == Scenario::Pcp;
    let mut r = RunningPath {
        children: Vec::new(),
        ovs: None,
        undo: Vec::new(),
        hugepages: None,
        uses_dpdk: false,
        sw: sw.clone(),
        target_mac: match &topo.c0_mac {
            Some(c0) if pcp && !path.is_emulation() => c0.clone(),
            _ => topo.b0_mac.clone(),
        },
    };
    // The container's application: echo what is addressed to it towards
    // the sink (see guest.rs). The VF emulations replace the container's
    // veth by devices of their own.
    if pcp && !path.is_emulation() {
        topo.c0_mac.as_deref().context("PCP topology without c0")?;
        r.child("guest echo", guest::echo(dp, &g, "c0", &topo.b0_mac)?);
    }
    // Uplink ports, in the order testpmd chains them (sa -> sc -> sb -> sa).
    let ports: Vec<&str> = if pcp {
        vec!["sa", "sc", "sb"]
    } else {
        vec!["sa", "sb"]
    };
    match path {
        LinuxBridge | LinuxBridgeTap => {
            if path == LinuxBridgeTap {
                // The VM: `dataplane echo --tap`, a process on the TAP's fd.
                r.child(
                    "TAP guest echo",
                    guest::tap_echo(dp, &sw, "vmtap", TAP_GUEST_MAC, &topo.b0_mac)?,
                );
                r.ip(&["-n", &sw, "link", "set", "vmtap", "up"], None)?;
                r.target_mac = TAP_GUEST_MAC.into();
            }
            r.ip(
                &["-n", &sw, "link", "add", "br0", "type", "bridge"],
                Some(&["-n", &sw, "link", "del", "br0"]),
            )?;
            let mut members = ports.clone();
            if path == LinuxBridgeTap {
                members.push("vmtap");
            }
            for p in &members {
                r.ip(&["-n", &sw, "link", "set", p, "master", "br0"], None)?;
            }
            r.ip(&["-n", &sw, "link", "set", "br0", "up"], None)?;
            r.gro(&sw, "sa");
            if pcp {
                r.gro(&sw, "sc");
            }
            if path == LinuxBridgeTap {
                // The VM never speaks first: tell the bridge where the VM
                // is, or every frame would be flooded to the sink as well.
                let st = Command::new("bridge")
                    .args([
                        "-n",
                        &sw,
                        "fdb",
                        "add",
                        TAP_GUEST_MAC,
                        "dev",
                        "vmtap",
                        "master",
                        "static",
                    ])
                    .status()?;
                if !st.success() {
                    bail!("bridge fdb add {TAP_GUEST_MAC} dev vmtap failed");
                }
            }
            bridge_netfilter_off(&sw);
        }
        DataplaneFastpath | Dataplane | DataplaneBusy | DataplaneXconnect | DataplaneTap
        | DataplaneTapBusy => {
            let mut args: Vec<String> = Vec::new();
            for p in &ports {
                args.push("--port".into());
                args.push(format!("afxdp:{p}"));
            }
            if matches!(path, DataplaneTap | DataplaneTapBusy) {
                args.extend(["--port".into(), "tap:vm0".into()]);
            }
            args.extend(["--core".into(), "1".into()]);
            match path {
                Dataplane => args.push("--no-fast-path".into()),
                DataplaneBusy => args.extend(["--no-fast-path".into(), "--busy-poll".into()]),
                DataplaneXconnect => args.extend(["--xconnect".into(), "--busy-poll".into()]),
                DataplaneTapBusy => args.push("--busy-poll".into()),
                _ => {}
            }
            let mut full = vec!["run".to_string()];
            full.extend(args);
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            let c = dp.spawn(&sw, &refs)?;
            r.child("dataplane run", c);
            if matches!(path, DataplaneTap | DataplaneTapBusy) {
                plug_vm(&mut r, topo, dp)?;
            }
        }
        XdpRedirect => {
            let mut hops: Vec<(&str, &str)> = ports.windows(2).map(|w| (w[0], w[1])).collect();
            // The way back, for the latency replies from b0.
            hops.push(("sb", "sa"));
            for (from, to) in hops {
                let c = dp.spawn(&sw, &["forward", "--from", from, "--to", to])?;
                r.child("dataplane forward", c);
            }
        }
        TestpmdAfXdp | TestpmdAfPacket => {
            r.uses_dpdk = true;
            let af_xdp = path == TestpmdAfXdp;
            if !af_xdp {
                r.gro(&sw, "sa");
                if pcp {
                    r.gro(&sw, "sc");
                }
            }
            let vdevs = ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if af_xdp {
                        format!("net_af_xdp{i},iface={p}")
                    } else {
                        format!("net_af_packet{i},iface={p},qpairs=1")
                    }
                })
                .collect();
            let mut app_args = vec!["--forward-mode=io".to_string()];
            if pcp {
                app_args.push("--port-topology=chained".into());
            }
            let c = Testpmd {
                netns: &sw,
                vdevs,
                app_args,
                huge: false,
                prefix: dpdk::FILE_PREFIX,
                lcores: "0,1",
            }
            .spawn()?;
            r.child("dpdk-testpmd", c);
        }
        OvsAfxdp => {
            let mut flows: Vec<(&str, &str)> = ports.windows(2).map(|w| (w[0], w[1])).collect();
            flows.push(("sb", "sa"));
            r.ovs = Some(Ovs::start(&sw, &ports, &flows)?);
        }
        VfEmulVeth => {
            for p in ["sa", "sb"] {
                // Moving a device brings it down: up again once back (undo
                // runs in reverse, so this comes after the move back).
                r.undo.push(
                    ["ip", "-n", &sw, "link", "set", p, "up"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                );
                r.ip(
                    &["-n", &sw, "link", "set", p, "netns", &g],
                    Some(&["-n", &g, "link", "set", p, "netns", &sw]),
                )?;
                r.ip(&["-n", &g, "link", "set", p, "up"], None)?;
            }
            r.child("guest forward", guest::redirect(dp, &g, "sa", "sb", false)?);
            r.child("guest forward", guest::redirect(dp, &g, "sb", "sa", false)?);
        }
        VfEmulMacvlan => {
            r.gro(&sw, "sa");
            for (lower, vf) in [("sa", "vfa"), ("sb", "vfb")] {
                r.ip(
                    &[
                        "-n", &sw, "link", "add", vf, "link", lower, "type", "macvlan", "mode",
                        "passthru",
                    ],
                    None,
                )?;
                r.ip(
                    &["-n", &sw, "link", "set", vf, "netns", &g],
                    Some(&["-n", &g, "link", "del", vf]),
                )?;
                r.ip(&["-n", &g, "link", "set", vf, "up"], None)?;
            }
            r.child(
                "guest forward",
                guest::redirect(dp, &g, "vfa", "vfb", true)?,
            );
            r.child(
                "guest forward",
                guest::redirect(dp, &g, "vfb", "vfa", true)?,
            );
        }
        DataplaneVhostUser | TestpmdVhost => start_vhost_user(&mut r, path, &sw, dp, &topo.b0_mac)?,
    }
    // Let the path settle (attach, bind) before measuring.
    std::thread::sleep(Duration::from_secs(2));
    learn(topo, pcp && !path.is_emulation());
    for (what, c) in &mut r.children {
        if let Some(status) = c.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            bail!(
                "{what} exited at start ({status}): {}",
                last[last.len().saturating_sub(3)..].join(" | ")
            );
        }
    }
    Ok(r)
}

/// The vhost-user socket of the PVP paths (the switch, or testpmd's
/// net_vhost, serves it; the VM connects).
const VHOST_SOCKET: &str = "/run/dpbench-vhost.sock";
/// The VM's virtio NIC (testpmd virtio_user) MAC: the generator's target.
const VHOST_GUEST_MAC: &str = "02:00:00:00:0d:01";
/// 2 MB hugepages for the two DPDK processes (512 MB each).
const VHOST_HUGEPAGES: u64 = 600;

/// The PVP paths through a vhost-user port. The VM is dpdk-testpmd with a
/// virtio_user NIC on the socket, in mac-fwd (MAC rewrite towards b0,
/// frames back out of the same port). Only two CPUs: the switch side keeps
/// CPU 1 as on every other path, the VM shares CPU 0 with the generator
/// (its offered load is reported next to every result).
fn start_vhost_user(
    r: &mut RunningPath,
    path: PathKind,
    sw: &str,
    dp: &Dataplane,
    b0: &str,
) -> Result<()> {
    r.hugepages = Some(Hugepages::reserve(VHOST_HUGEPAGES)?);
    r.uses_dpdk = true;
    let _ = std::fs::remove_file(VHOST_SOCKET);
    r.undo
        .push(vec!["rm".into(), "-f".into(), VHOST_SOCKET.into()]);
    match path {
        PathKind::DataplaneVhostUser => {
            let socket = format!("vhost-user:{VHOST_SOCKET}");
            let c = dp.spawn(
                sw,
                &[
                    "run", "--port", "afxdp:sa", "--port", "afxdp:sb", "--port", &socket, "--core",
                    "1",
                ],
            )?;
            r.child("dataplane run", c);
        }
        _ => {
            // testpmd io-fwd chained sa -> vhost -> sb -> sa: the VM's echo
            // comes back on the vhost port and goes on to sb.
            let c = Testpmd {
                netns: sw,
                vdevs: vec![
                    "net_af_xdp0,iface=sa".into(),
                    format!("net_vhost0,iface={VHOST_SOCKET},queues=1"),
                    "net_af_xdp1,iface=sb".into(),
                ],
                app_args: vec!["--forward-mode=io".into(), "--port-topology=chained".into()],
                huge: true,
                prefix: dpdk::FILE_PREFIX,
                lcores: "0,1",
            }
            .spawn()?;
            r.child("dpdk-testpmd (switch)", c);
        }
    }
    wait_for_socket(r, VHOST_SOCKET)?;
    let vm = Testpmd {
        netns: sw,
        vdevs: vec![format!(
            "net_virtio_user0,path={VHOST_SOCKET},queues=1,queue_size=1024,mac={VHOST_GUEST_MAC}"
        )],
        app_args: vec![
            // Deep rings: the VM shares its CPU and must absorb what arrives
            // while it is not scheduled.
            "--rxd=1024".into(),
            "--txd=1024".into(),
            "--forward-mode=mac".into(),
            "--port-topology=loop".into(),
            format!("--eth-peer=0,{b0}"),
        ],
        huge: true,
        prefix: dpdk::VM_FILE_PREFIX,
        // Main and forwarding lcore both on CPU 0 (beside the generator).
        lcores: "0@0,1@0",
    }
    .spawn()?;
    r.child("dpdk-testpmd (VM)", vm);
    r.target_mac = VHOST_GUEST_MAC.into();
    Ok(())
}

/// Waits until the path's process listens on the unix socket `path`.
fn wait_for_socket(r: &mut RunningPath, path: &str) -> Result<()> {
    wait_until(r, &format!("serving {path}"), || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    })
}

/// PVP with dataplane's TAP port: the switch made `vm0`; move its netdev
/// into the guest namespace (the VM), give it an address, and attach the
/// VM's echo.
fn plug_vm(r: &mut RunningPath, topo: &Topology, dp: &Dataplane) -> Result<()> {
    let sw = topo.ns("sw");
    let g = topo.ns("g");
    wait_for_link(r, &sw, "vm0")?;
    ip(&["-n", &sw, "link", "set", "vm0", "netns", &g])?;
    ip(&["-n", &g, "addr", "add", "10.200.0.4/24", "dev", "vm0"])?;
    ip(&["-n", &g, "link", "set", "vm0", "up"])?;
    let mac = mac_of(&g, "vm0")?;
    r.child("guest echo", guest::echo(dp, &g, "vm0", &topo.b0_mac)?);
    r.target_mac = mac;
    Ok(())
}

/// Waits until the path's process has created `ifname` in `netns`.
fn wait_for_link(r: &mut RunningPath, netns: &str, ifname: &str) -> Result<()> {
    wait_until(r, &format!("creating {ifname} in {netns}"), || {
        Command::new("ip")
            .args(["-n", netns, "link", "show", ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Polls `ready` for up to 15 s; fails at once, with its last words, if one
/// of the path's processes exits meanwhile.
fn wait_until(
    r: &mut RunningPath,
    waiting_for: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        for (what, c) in &mut r.children {
            if let Some(st) = c.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("{what} exited ({st}) before {waiting_for}: {}", err.trim());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no {waiting_for} within 15 s")
}

/// Each host speaks once, so learning switches know where it is (as any
/// real host would have; without it every frame is unknown unicast).
fn learn(topo: &Topology, guest: bool) {
    let mut who = vec![topo.ns("b")];
    if guest || topo.scenario == Scenario::Pvp {
        who.push(topo.ns("g"));
    }
    for ns in who {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_names_are_unique_and_every_scenario_has_its_baseline_first() {
        let mut names: Vec<_> = PathKind::value_variants()
            .iter()
            .map(|p| p.name())
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        for s in Scenario::ALL {
            assert_eq!(PathKind::for_scenario(s)[0], PathKind::baseline(s));
        }
    }
}
