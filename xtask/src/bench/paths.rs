//! The forwarding paths compared, per scenario: how each is started on the
//! benchmark topology and torn down again.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use super::dpdk::{self, Hugepages, Testpmd};
use super::guest;
use super::ovs::Ovs;
use super::topology::{ethtool, ip, mac_of, Topology, VTEPS};
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
    /// Overlay: a Linux bridge with a vxlan device on each host.
    LinuxBridgeVxlan,
    /// Overlay: dataplane with a `vxlan:` port on each host, learned
    /// unicast encapsulated and decapsulated in XDP (fast path).
    DataplaneVxlanFastpath,
    /// Overlay: dataplane with a `vxlan:` port on each host, AF_XDP path.
    DataplaneVxlan,
    /// Overlay: Open vSwitch's userspace datapath with a vxlan port on
    /// each host (userspace tunnelling, afxdp ports).
    OvsVxlan,
}

/// One row per path: its name, the scenarios it is measured in (in report
/// order within each), what the report says it is, and how it starts (it
/// stops when its [`RunningPath`] drops). Adding a path is a variant of
/// [`PathKind`] and a row here.
pub struct PathSpec {
    pub kind: PathKind,
    pub name: &'static str,
    scenarios: &'static [Scenario],
    /// Stands in for hardware this machine does not have.
    emulation: bool,
    /// The report's description, given the uplink ports and whether the
    /// scenario chains through a container (PCP).
    describe: fn(ports: &str, pcp: bool) -> String,
    start: fn(&mut RunningPath, &Setup) -> Result<()>,
}

/// What a path's start function works with.
pub struct Setup<'a> {
    pub kind: PathKind,
    /// The PCP scenario: a container (c0) between the uplinks.
    pub pcp: bool,
    /// Uplink ports, in the order testpmd chains them (sa -> sc -> sb -> sa).
    pub ports: Vec<String>,
    /// The scenario (the scale scenario learns: OVS runs NORMAL, tables
    /// are sized for its largest point).
    pub scenario: Scenario,
    /// The switch and guest namespaces.
    pub sw: String,
    pub g: String,
    pub topo: &'a Topology,
    pub dp: &'a Dataplane,
}

use PathKind::*;
use Scenario::{Overlay, P2p, Pcp, Pvp, Scale};

/// FDB size of every learning path in the scale scenario: its largest
/// point (65536 MACs) fits, a MAC flood of a million sources does not.
pub const SCALE_TABLE: usize = 131072;

/// Every path, in report order.
pub const PATHS: &[PathSpec] = &[
    PathSpec {
        kind: LinuxBridge,
        name: "linux-bridge",
        scenarios: &[P2p, Pcp, Scale],
        emulation: false,
        describe: |ports, _| {
            format!("Linux bridge br0 ({ports}), GRO on the ports that receive XDP-redirected frames, br_netfilter off")
        },
        start: start_linux_bridge,
    },
    PathSpec {
        kind: DataplaneFastpath,
        name: "dataplane-fastpath",
        scenarios: &[P2p, Pcp, Scale],
        emulation: false,
        describe: |ports, _| {
            format!("dataplane run, learning switch on {ports}, learned unicast redirected in XDP (fast path), PMD on CPU 1")
        },
        start: start_dataplane,
    },
    PathSpec {
        kind: Dataplane,
        name: "dataplane",
        scenarios: &[P2p, Pcp, Scale],
        emulation: false,
        describe: |ports, _| {
            format!("dataplane run --no-fast-path on {ports}: every frame through AF_XDP (copy mode: veth has no zero-copy) and the userspace switch, adaptive polling, PMD on CPU 1")
        },
        start: start_dataplane,
    },
    PathSpec {
        kind: DataplaneBusy,
        name: "dataplane-busy",
        scenarios: &[P2p, Pcp],
        emulation: false,
        describe: |_, _| "as `dataplane`, with --busy-poll".into(),
        start: start_dataplane,
    },
    PathSpec {
        kind: DataplaneXconnect,
        name: "dataplane-xconnect",
        scenarios: &[P2p],
        emulation: false,
        describe: |_, _| {
            "dataplane run --xconnect (io-fwd, no switching), busy polling, PMD on CPU 1".into()
        },
        start: start_dataplane,
    },
    PathSpec {
        kind: TestpmdAfXdp,
        name: "testpmd-af_xdp",
        scenarios: &[P2p, Pcp],
        emulation: false,
        describe: |ports, pcp| {
            format!(
                "DPDK 22.11 dpdk-testpmd io-fwd, net_af_xdp on {ports}{}, fwd lcore on CPU 1",
                if pcp {
                    " (chained: sa->sc->sb->sa)"
                } else {
                    ""
                }
            )
        },
        start: start_testpmd,
    },
    PathSpec {
        kind: TestpmdAfPacket,
        name: "testpmd-af_packet",
        scenarios: &[P2p, Pcp],
        emulation: false,
        describe: |ports, pcp| {
            format!(
                "DPDK 22.11 dpdk-testpmd io-fwd, net_af_packet on {ports}{}, fwd lcore on CPU 1",
                if pcp { " (chained)" } else { "" }
            )
        },
        start: start_testpmd,
    },
    PathSpec {
        kind: OvsAfxdp,
        name: "ovs-afxdp",
        scenarios: &[P2p, Pcp, Scale],
        emulation: false,
        describe: |ports, _| {
            format!("Open vSwitch 3.1 userspace datapath (netdev bridge), afxdp ports in native XDP mode on {ports}, in_port->output flows (scale: actions=NORMAL, MAC learning), PMD on CPU 1")
        },
        start: start_ovs,
    },
    PathSpec {
        kind: XdpRedirect,
        name: "xdp-redirect",
        scenarios: &[P2p, Pcp],
        emulation: false,
        describe: |_, pcp| {
            if pcp {
                "dataplane forward sa->sc and sc->sb: bare XDP redirects, no switching".into()
            } else {
                "dataplane forward sa->sb: a bare XDP redirect, no switching (the ceiling)".into()
            }
        },
        start: start_xdp_redirect,
    },
    PathSpec {
        kind: VfEmulVeth,
        name: "vf-emul-veth",
        scenarios: &[Pcp],
        emulation: true,
        describe: |_, _| {
            "EMULATION of direct assignment: the uplink veths sa and sb are moved into the guest namespace, whose application (an XDP redirect sa->sb) owns them; no switch at all: the ceiling of device assignment".into()
        },
        start: start_vf_emul_veth,
    },
    PathSpec {
        kind: VfEmulMacvlan,
        name: "vf-emul-macvlan",
        scenarios: &[Pcp],
        emulation: true,
        describe: |_, _| {
            "EMULATION of SR-IOV VFs: a macvlan in passthru mode on each uplink (sa, sb), standing in for the NIC's PF/VF demux, owned by the guest namespace, whose application redirects between them (generic XDP: macvlan has no native XDP)".into()
        },
        start: start_vf_emul_macvlan,
    },
    PathSpec {
        kind: LinuxBridgeTap,
        name: "linux-bridge-tap",
        scenarios: &[Pvp],
        emulation: false,
        describe: |_, _| {
            "Linux bridge br0 (sa, sb, TAP vmtap); the VM is a process holding the TAP's fd (where QEMU/vhost-net would be) that echoes frames addressed to it towards b0 (MAC rewrite, read+write per frame, on CPU 1); static FDB entry for the VM's MAC".into()
        },
        start: start_linux_bridge,
    },
    PathSpec {
        kind: DataplaneTap,
        name: "dataplane-tap",
        scenarios: &[Pvp],
        emulation: false,
        describe: |_, _| {
            "dataplane run with afxdp:sa, afxdp:sb and tap:vm0 (the switch holds the TAP's fd, as vhost-net would); the VM is the TAP netdev in the guest namespace, whose echo is an XDP program (MAC rewrite, back out of vm0 to the switch); PMD on CPU 1, adaptive polling".into()
        },
        start: start_dataplane,
    },
    PathSpec {
        kind: DataplaneTapBusy,
        name: "dataplane-tap-busy",
        scenarios: &[Pvp],
        emulation: false,
        describe: |_, _| "as `dataplane-tap`, with --busy-poll".into(),
        start: start_dataplane,
    },
    PathSpec {
        kind: DataplaneVhostUser,
        name: "dataplane-vhost-user",
        scenarios: &[Pvp],
        emulation: false,
        describe: |_, _| {
            "dataplane run with afxdp:sa, afxdp:sb and a vhost-user port, PMD on CPU 1; the VM is dpdk-testpmd virtio_user in mac-fwd (rewrite toward b0) on CPU 0, sharing it with the generator (2 cores)".into()
        },
        start: start_vhost_user,
    },
    PathSpec {
        kind: TestpmdVhost,
        name: "testpmd-vhost",
        scenarios: &[Pvp],
        emulation: false,
        describe: |_, _| {
            "dpdk-testpmd io-fwd chained sa -> net_vhost -> sb, fwd lcore on CPU 1; the same VM"
                .into()
        },
        start: start_vhost_user,
    },
    PathSpec {
        kind: LinuxBridgeVxlan,
        name: "linux-bridge-vxlan",
        scenarios: &[Overlay],
        emulation: false,
        describe: |ports, _| {
            format!("a Linux bridge with a vxlan device (VNI 100) on each host ({ports}), GRO on sa, br_netfilter off")
        },
        start: start_linux_vxlan,
    },
    PathSpec {
        kind: DataplaneVxlanFastpath,
        name: "dataplane-vxlan-fastpath",
        scenarios: &[Overlay],
        emulation: false,
        describe: |ports, _| {
            format!("dataplane run on each host ({ports}), learned unicast encapsulated and decapsulated in XDP (fast path), PMDs on CPU 1")
        },
        start: start_dataplane_vxlan,
    },
    PathSpec {
        kind: DataplaneVxlan,
        name: "dataplane-vxlan",
        scenarios: &[Overlay],
        emulation: false,
        describe: |ports, _| {
            format!("dataplane run on each host ({ports}), AF_XDP path, both PMDs on CPU 1")
        },
        start: start_dataplane_vxlan,
    },
    PathSpec {
        kind: OvsVxlan,
        name: "ovs-vxlan",
        scenarios: &[Overlay],
        emulation: false,
        describe: |ports, _| {
            format!("Open vSwitch userspace datapath on each host ({ports}): br-int with the uplink and a vxlan port, br-phy with the underlay and the VTEP address, afxdp ports, NORMAL, PMDs on CPU 1")
        },
        start: start_ovs_vxlan,
    },
];

impl PathKind {
    /// Its row in [`PATHS`].
    pub fn spec(self) -> &'static PathSpec {
        PATHS
            .iter()
            .find(|p| p.kind == self)
            .expect("every PathKind has a row in PATHS")
    }

    /// The paths measured in scenario `s`, in report order. (The TCP
    /// scenario has paths of its own: tcp.rs.)
    pub fn for_scenario(s: Scenario) -> Vec<PathKind> {
        PATHS
            .iter()
            .filter(|p| p.scenarios.contains(&s))
            .map(|p| p.kind)
            .collect()
    }

    /// The path every other one is given as a ratio of.
    pub fn baseline(s: Scenario) -> PathKind {
        match s {
            Scenario::Pvp => PathKind::LinuxBridgeTap,
            Scenario::Overlay => PathKind::LinuxBridgeVxlan,
            _ => PathKind::LinuxBridge,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Emulations stand in for hardware this machine does not have.
    pub fn is_emulation(self) -> bool {
        self.spec().emulation
    }

    pub fn describe(self, s: Scenario) -> String {
        let pcp = s == Scenario::Pcp;
        let ports = match s {
            Scenario::Pcp => "sa, sb and sc",
            Scenario::Overlay => "sa and the VXLAN port on u1, sb and the one on u2",
            _ => "sa and sb",
        };
        (self.spec().describe)(ports, pcp)
    }
}

/// A path that runs; stops and unconfigures everything on drop.
pub struct RunningPath {
    children: Vec<(String, Child)>,
    /// OVS instances (two in the overlay scenario: one per host).
    ovs: Vec<Ovs>,
    undo: Vec<Vec<String>>,
    hugepages: Option<Hugepages>,
    uses_dpdk: bool,
    sw: String,
    kind: PathKind,
    /// The switch namespace's ports the path used.
    ports: Vec<String>,
    /// Destination MAC of the generator's frames for this path.
    pub target_mac: String,
}

impl Drop for RunningPath {
    fn drop(&mut self) {
        let mut children: Vec<&mut Child> = self.children.iter_mut().map(|(_, c)| c).collect();
        interrupt_and_reap(&mut children, Duration::from_secs(10));
        self.ovs.clear();
        // Whatever a path's process attached through netlink and left
        // behind (a crashed testpmd, OVS) must not meet the next path.
        for p in &self.ports {
            self.undo.insert(
                0,
                [
                    "ip",
                    "-n",
                    &self.sw,
                    "link",
                    "set",
                    "dev",
                    p.as_str(),
                    "xdp",
                    "off",
                ]
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
        // (the kernel releases a queue in deferred work): give it a moment.
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

    /// The learning table of a switching path, one address a line, as
    /// its own tool prints it (`None` for paths that do not learn).
    pub fn fdb_dump(&self, dp: &Dataplane) -> Option<String> {
        match self.kind {
            LinuxBridge => Command::new("bridge")
                .args(["-n", &self.sw, "fdb", "show", "br", "br0"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
            Dataplane | DataplaneFastpath | DataplaneBusy => dp.ok(&self.sw, &["show", "fdb"]).ok(),
            OvsAfxdp => self.ovs.first()?.fdb_show().ok(),
            _ => None,
        }
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

/// Starts `path` on the scenario's uplinks (sa, sb; sa, sc, sb for PCP).
pub fn start(
    path: PathKind,
    scenario: Scenario,
    topo: &Topology,
    dp: &Dataplane,
) -> Result<RunningPath> {
    // Uplink ports, in the order testpmd chains them (sa -> sc -> sb -> sa).
    let ports = if scenario == Scenario::Pcp {
        vec!["sa", "sc", "sb"]
    } else {
        vec!["sa", "sb"]
    };
    start_on(
        path,
        scenario,
        topo,
        dp,
        ports.into_iter().map(String::from).collect(),
    )
}

/// Starts `path` on the switch namespace's `ports`.
pub fn start_on(
    path: PathKind,
    scenario: Scenario,
    topo: &Topology,
    dp: &Dataplane,
    ports: Vec<String>,
) -> Result<RunningPath> {
    let sw = topo.ns("sw");
    let g = topo.ns("g");
    let pcp = scenario == Scenario::Pcp;
    let mut r = RunningPath {
        children: Vec::new(),
        ovs: Vec::new(),
        undo: Vec::new(),
        hugepages: None,
        uses_dpdk: false,
        sw: sw.clone(),
        kind: path,
        ports: ports.clone(),
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
    let setup = Setup {
        kind: path,
        pcp,
        ports,
        scenario,
        sw: sw.clone(),
        g: g.clone(),
        topo,
        dp,
    };
    (path.spec().start)(&mut r, &setup)?;
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

/// The Linux bridge, with the TAP "VM" for the PVP scenario.
fn start_linux_bridge(r: &mut RunningPath, s: &Setup) -> Result<()> {
    let (sw, path, pcp) = (s.sw.clone(), s.kind, s.pcp);
    if path == LinuxBridgeTap {
        // The VM: `dataplane echo --tap`, a process on the TAP's fd.
        r.child(
            "TAP guest echo",
            guest::tap_echo(s.dp, &sw, "vmtap", TAP_GUEST_MAC, &s.topo.b0_mac)?,
        );
        r.ip(&["-n", &sw, "link", "set", "vmtap", "up"], None)?;
        r.target_mac = TAP_GUEST_MAC.into();
    }
    r.ip(
        &["-n", &sw, "link", "add", "br0", "type", "bridge"],
        Some(&["-n", &sw, "link", "del", "br0"]),
    )?;
    let mut members = s.ports.clone();
    if path == LinuxBridgeTap {
        members.push("vmtap".into());
    }
    for p in &members {
        r.ip(&["-n", &sw, "link", "set", p, "master", "br0"], None)?;
    }
    r.ip(&["-n", &sw, "link", "set", "br0", "up"], None)?;
    if s.scenario == Scale {
        // Generators send into every port of the scale scenario; its
        // table is as large as the others' (fdb_max_learned: Linux 6.8+).
        for p in &s.ports {
            r.gro(&sw, p);
        }
        let limit = SCALE_TABLE.to_string();
        let limited = ip(&[
            "-n",
            &sw,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "fdb_max_learned",
            &limit,
        ]);
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if limited.is_err() && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // iproute2 before 6.8 has no such option (nor does sysfs).
            eprintln!(
                "\n[bench] the Linux bridge keeps no FDB limit: this iproute2 cannot set fdb_max_learned"
            );
        }
    } else {
        r.gro(&sw, "sa");
        if pcp {
            r.gro(&sw, "sc");
        }
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
    Ok(())
}

/// `dataplane run` on the uplinks (and a TAP port for PVP), with the
/// options of the path.
fn start_dataplane(r: &mut RunningPath, s: &Setup) -> Result<()> {
    let path = s.kind;
    let tap = matches!(path, DataplaneTap | DataplaneTapBusy);
    let mut args: Vec<String> = vec!["run".into()];
    for p in &s.ports {
        args.push("--port".into());
        args.push(format!("afxdp:{p}"));
    }
    if tap {
        args.extend(["--port".into(), "tap:vm0".into()]);
    }
    if s.scenario == Scale {
        args.extend(["--fdb-max-entries".into(), SCALE_TABLE.to_string()]);
    }
    args.extend(["--core".into(), "1".into()]);
    let options: &[&str] = match path {
        Dataplane => &["--no-fast-path"],
        DataplaneBusy => &["--no-fast-path", "--busy-poll"],
        DataplaneXconnect => &["--xconnect", "--busy-poll"],
        DataplaneTapBusy => &["--busy-poll"],
        _ => &[],
    };
    args.extend(options.iter().map(|o| o.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = s.dp.spawn(&s.sw, &refs)?;
    r.child("dataplane run", c);
    if tap {
        plug_vm(r, s.topo, s.dp)?;
    }
    Ok(())
}

/// The overlay's two hosts: (namespace, uplink, underlay, local VTEP,
/// remote VTEP).
fn overlay_hosts(
    s: &Setup,
) -> [(
    String,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
); 2] {
    [
        (s.sw.clone(), "sa", "u1", VTEPS[0], VTEPS[1]),
        (s.topo.ns("sw2"), "sb", "u2", VTEPS[1], VTEPS[0]),
    ]
}

/// A Linux bridge on each host with the uplink and a vxlan device.
fn start_linux_vxlan(r: &mut RunningPath, s: &Setup) -> Result<()> {
    for (ns, uplink, underlay, local, remote) in overlay_hosts(s) {
        r.ip(
            &["-n", &ns, "link", "add", "br0", "type", "bridge"],
            Some(&["-n", &ns, "link", "del", "br0"]),
        )?;
        r.ip(
            &[
                "-n", &ns, "link", "add", "vx0", "type", "vxlan", "id", "100", "local", local,
                "remote", remote, "dstport", "4789", "dev", underlay,
            ],
            Some(&["-n", &ns, "link", "del", "vx0"]),
        )?;
        for dev in [uplink, "vx0"] {
            r.ip(&["-n", &ns, "link", "set", dev, "master", "br0"], None)?;
            r.ip(&["-n", &ns, "link", "set", dev, "up"], None)?;
        }
        r.ip(&["-n", &ns, "link", "set", "br0", "up"], None)?;
        bridge_netfilter_off(&ns);
    }
    // The generator's frames arrive at sa XDP-redirected.
    r.gro(&s.sw, "sa");
    Ok(())
}

/// `dataplane run` on each host: the uplink and a `vxlan:` port. Host 2
/// first: its steer on u2 is there when host 1's fast path probes whether
/// u1's other end takes XDP-redirected frames (else it would hand the
/// measured direction to tc).
fn start_dataplane_vxlan(r: &mut RunningPath, s: &Setup) -> Result<()> {
    let fast = s.kind == DataplaneVxlanFastpath;
    for (ns, uplink, underlay, local, remote) in overlay_hosts(s).into_iter().rev() {
        let tunnel = format!("vxlan:vni=100,local={local},remote={remote},dev={underlay}");
        let uplink = format!("afxdp:{uplink}");
        // CPU 0 is the generator's: both switches share CPU 1.
        let mut args = vec!["run", "--port", &uplink, "--port", &tunnel, "--core", "1"];
        if !fast {
            args.push("--no-fast-path");
        }
        let c = s.dp.spawn(&ns, &args)?;
        r.child("dataplane run", c);
        std::thread::sleep(Duration::from_millis(1500));
    }
    Ok(())
}

/// Open vSwitch on each host, its userspace tunnelling as its manual sets
/// it up: the VTEP address moves from the underlay interface to br-phy.
fn start_ovs_vxlan(r: &mut RunningPath, s: &Setup) -> Result<()> {
    for (i, (ns, uplink, underlay, local, remote)) in overlay_hosts(s).into_iter().enumerate() {
        let addr = format!("{local}/24");
        r.ip(
            &["-n", &ns, "addr", "del", &addr, "dev", underlay],
            Some(&["-n", &ns, "addr", "add", &addr, "dev", underlay]),
        )?;
        r.ovs
            .push(Ovs::start_vxlan(i, &ns, uplink, underlay, local, remote)?);
    }
    // OVS learns a tunnel's next hop from the ARP it sees on br-phy: each
    // VTEP speaks to the other once.
    for (ns, _, _, _, remote) in overlay_hosts(s) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "ping", "-c", "1", "-W", "2", remote])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

/// Bare XDP redirects between the uplinks (and back, for the latency
/// replies from b0).
fn start_xdp_redirect(r: &mut RunningPath, s: &Setup) -> Result<()> {
    let mut hops: Vec<(&str, &str)> = s
        .ports
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect();
    hops.push(("sb", "sa"));
    for (from, to) in hops {
        let c =
            s.dp.spawn(&s.sw, &["forward", "--from", from, "--to", to])?;
        r.child("dataplane forward", c);
    }
    Ok(())
}

/// dpdk-testpmd io-fwd with net_af_xdp or net_af_packet vdevs.
fn start_testpmd(r: &mut RunningPath, s: &Setup) -> Result<()> {
    r.uses_dpdk = true;
    let af_xdp = s.kind == TestpmdAfXdp;
    if !af_xdp {
        r.gro(&s.sw, "sa");
        if s.pcp {
            r.gro(&s.sw, "sc");
        }
    }
    let vdevs = s
        .ports
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
    if s.pcp {
        app_args.push("--port-topology=chained".into());
    }
    let c = Testpmd {
        netns: &s.sw,
        vdevs,
        app_args,
        huge: false,
        prefix: dpdk::FILE_PREFIX,
        lcores: "0,1",
    }
    .spawn()?;
    r.child("dpdk-testpmd", c);
    Ok(())
}

/// Open vSwitch's userspace datapath with afxdp ports and port-to-port
/// flows.
fn start_ovs(r: &mut RunningPath, s: &Setup) -> Result<()> {
    let ports: Vec<&str> = s.ports.iter().map(String::as_str).collect();
    if s.scenario == Scale {
        r.ovs.push(Ovs::start(&s.sw, &ports, None)?);
        return Ok(());
    }
    let mut flows: Vec<(&str, &str)> = ports.windows(2).map(|w| (w[0], w[1])).collect();
    flows.push(("sb", "sa"));
    r.ovs.push(Ovs::start(&s.sw, &ports, Some(&flows))?);
    Ok(())
}

/// Direct assignment, emulated: the uplinks move into the guest, whose
/// application redirects between them.
fn start_vf_emul_veth(r: &mut RunningPath, s: &Setup) -> Result<()> {
    let (sw, g) = (&s.sw, &s.g);
    for p in ["sa", "sb"] {
        // Moving a device brings it down: up again once back (undo
        // runs in reverse, so this comes after the move back).
        r.undo.push(
            ["ip", "-n", sw, "link", "set", p, "up"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
        r.ip(
            &["-n", sw, "link", "set", p, "netns", g],
            Some(&["-n", g, "link", "set", p, "netns", sw]),
        )?;
        r.ip(&["-n", g, "link", "set", p, "up"], None)?;
    }
    r.child(
        "guest forward",
        guest::redirect(s.dp, g, "sa", "sb", false)?,
    );
    r.child(
        "guest forward",
        guest::redirect(s.dp, g, "sb", "sa", false)?,
    );
    Ok(())
}

/// SR-IOV VFs, emulated: a passthru macvlan on each uplink, owned by the
/// guest, whose application redirects between them.
fn start_vf_emul_macvlan(r: &mut RunningPath, s: &Setup) -> Result<()> {
    let (sw, g) = (&s.sw, &s.g);
    r.gro(sw, "sa");
    for (lower, vf) in [("sa", "vfa"), ("sb", "vfb")] {
        r.ip(
            &[
                "-n", sw, "link", "add", vf, "link", lower, "type", "macvlan", "mode", "passthru",
            ],
            None,
        )?;
        r.ip(
            &["-n", sw, "link", "set", vf, "netns", g],
            Some(&["-n", g, "link", "del", vf]),
        )?;
        r.ip(&["-n", g, "link", "set", vf, "up"], None)?;
    }
    r.child(
        "guest forward",
        guest::redirect(s.dp, g, "vfa", "vfb", true)?,
    );
    r.child(
        "guest forward",
        guest::redirect(s.dp, g, "vfb", "vfa", true)?,
    );
    Ok(())
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
fn start_vhost_user(r: &mut RunningPath, s: &Setup) -> Result<()> {
    let (path, sw, dp, b0) = (s.kind, s.sw.as_str(), s.dp, s.topo.b0_mac.as_str());
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
        speak_once(&ns);
    }
}

/// One ping from namespace `ns` to a0 (10.200.0.1): its host's MAC is then
/// known to a learning switch. The answer does not matter.
pub fn speak_once(ns: &str) {
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
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
            if s == Scenario::Tcp {
                assert!(
                    PathKind::for_scenario(s).is_empty(),
                    "tcp.rs has its own paths"
                );
                continue;
            }
            assert_eq!(PathKind::for_scenario(s)[0], PathKind::baseline(s));
        }
    }

    #[test]
    fn every_path_has_exactly_one_row_and_a_scenario() {
        for kind in PathKind::value_variants() {
            let rows = PATHS.iter().filter(|p| p.kind == *kind).count();
            assert_eq!(rows, 1, "{kind:?} has {rows} rows in PATHS");
            assert!(
                !kind.spec().scenarios.is_empty(),
                "{kind:?} is measured nowhere"
            );
        }
        // The command line's name for a path is the report's.
        for p in PATHS {
            let cli = p.kind.to_possible_value().expect("no skipped variant");
            assert_eq!(cli.get_name(), p.name, "{:?}", p.kind);
        }
    }
}
