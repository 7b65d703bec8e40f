//! Real TCP and UDP between endpoints at their kernel defaults.
//!
//! A container's veth sends TCP and UDP with the checksum left to the
//! device (tx checksum offload is on by default) and GRO off. Nothing here
//! touches the endpoints' interfaces: the switch must carry their traffic
//! as they send it, on every path. Each case checks the bytes that arrived,
//! three ways: iperf3 TCP (bytes received), iperf3 UDP (datagrams received
//! and lost, as the receiver counts them) and a plain TCP transfer compared
//! byte for byte.
//!
//! The hosts' veths are on `afxdp:` ports (native XDP: the kernel turns
//! the container's TSO off while it runs) or on `veth:` container ports
//! (generic XDP and tc: the container keeps TSO and checksum offload; the
//! switch's punt device segments what crosses userspace).
//!
//! ```text
//!  a: a0 10.77.5.1 ── sa [sw: dataplane run] sb ── b0 10.77.5.2 :b
//!                               tap vm0 ──────────> vm0 10.77.5.9 :vm
//! ```

mod harness;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{privileged, steer_counter, tcp_transfer_both_ways, NetNs, RunningSwitch, Star};
use serde_json::Value;

/// Hosts a and b on 10.77.5.0/24 around the switch, at their defaults.
fn hosts(tag: &str) -> Star {
    harness::star(tag, 2, 5, false)
}

/// `iperf3 -s -1` in a namespace, killed on drop if still running.
struct IperfServer(Child);

impl IperfServer {
    fn start(ns: &NetNs, port: u16) -> IperfServer {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "iperf3", "-s", "-1"])
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 is installed (cargo xtask setup)");
        IperfServer(child)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `iperf3 -c` from `ns` (retrying while the server starts) and
/// returns its JSON report.
fn iperf_client(ns: &NetNs, server: &str, port: u16, extra: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut args = vec!["iperf3", "-c", server, "-J", "-t", "2"];
        let port = port.to_string();
        args.extend(["-p", &port]);
        args.extend(extra);
        let out = ns.exec(&args);
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let refused = json["error"]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused"));
        if !refused || Instant::now() > deadline {
            assert!(
                out.status.success() && json["error"].is_null(),
                "iperf3 -c {server} {extra:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return json;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// iperf3 TCP for 2 s from `from` to `to_addr`; returns bytes received.
fn iperf_tcp(from: &NetNs, to: &NetNs, to_addr: &str) -> u64 {
    let _server = IperfServer::start(to, 5201);
    let json = iperf_client(from, to_addr, 5201, &[]);
    json["end"]["sum_received"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no end.sum_received.bytes in {json:#}"))
}

/// iperf3 UDP, 1400-byte datagrams at 20 Mbit/s for 2 s; returns
/// (datagrams sent, datagrams lost) as the receiver counted them.
fn iperf_udp(from: &NetNs, to: &NetNs, to_addr: &str) -> (u64, u64) {
    let _server = IperfServer::start(to, 5202);
    let json = iperf_client(from, to_addr, 5202, &["-u", "-b", "20M", "-l", "1400"]);
    let sum = &json["end"]["sum"];
    let count = |key: &str| {
        sum[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no end.sum.{key} in {json:#}"))
    };
    (count("packets"), count("lost_packets"))
}

/// The three checks from `a` to `b` (and TCP back from `b` to `a`).
fn real_traffic_crosses(a: &NetNs, a_addr: &str, b: &NetNs, b_addr: &str, what: &str) {
    let bytes = iperf_tcp(a, b, b_addr);
    assert!(
        bytes > 1_000_000,
        "{what}: iperf3 TCP moved only {bytes} bytes in 2 s"
    );
    eprintln!("{what}: iperf3 TCP {:.2} Gbit/s", bytes as f64 * 8.0 / 2e9);
    let (sent, lost) = iperf_udp(a, b, b_addr);
    assert!(sent > 1000, "{what}: iperf3 UDP sent only {sent} datagrams");
    assert!(
        lost * 100 <= sent,
        "{what}: iperf3 UDP lost {lost} of {sent} datagrams"
    );
    tcp_transfer_both_ways(a, a_addr, b, b_addr, 4 << 20, what);
}

fn stop(sw: RunningSwitch) {
    sw.stop_accounted();
}

#[test]
fn tcp_and_udp_take_the_fast_path_between_default_endpoints() {
    if !privileged("tcp_and_udp_take_the_fast_path_between_default_endpoints") {
        return;
    }
    let h = hosts("tcpfast");
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa", "--port", "afxdp:sb"]);
    // Native XDP on the host end turns the container's TSO off (the
    // kernel's rule): the switch says so, in its log and in `show ports`.
    assert!(!tso_on(a, "a0"), "TSO off on a0 while sa runs native XDP");
    assert!(
        sw.output().contains("turns TSO off on its other end"),
        "{}",
        sw.output()
    );
    let ports: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "ports", "--json"])).unwrap();
    assert!(
        ports.as_array().unwrap().iter().all(|p| p["peer_effect"]
            .as_str()
            .is_some_and(|e| e.contains("TSO off"))),
        "{ports}"
    );
    real_traffic_crosses(a, "10.77.5.1", b, "10.77.5.2", "fast path");
    let handed_off = steer_counter(&h.sw, "sa", "fast_path_tc");
    assert!(
        handed_off > 1000,
        "a's traffic stayed in the kernel (tc hand-off): {handed_off}"
    );
    stop(sw);
    assert!(tso_on(a, "a0"), "and back on once the port closed");
}

#[test]
fn tcp_and_udp_cross_the_userspace_switch_between_default_endpoints() {
    if !privileged("tcp_and_udp_cross_the_userspace_switch_between_default_endpoints") {
        return;
    }
    let h = hosts("tcpslow");
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(
        &h.sw,
        &["--port", "afxdp:sa", "--port", "afxdp:sb", "--no-fast-path"],
    );
    real_traffic_crosses(a, "10.77.5.1", b, "10.77.5.2", "AF_XDP path");
    assert_eq!(steer_counter(&h.sw, "sa", "fast_path_tc"), 0);
    assert!(steer_counter(&h.sw, "sa", "redirected") > 1000);
    stop(sw);
}

#[test]
fn tcp_and_udp_cross_an_xconnect_between_default_endpoints() {
    if !privileged("tcp_and_udp_cross_an_xconnect_between_default_endpoints") {
        return;
    }
    let h = hosts("tcpxc");
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(
        &h.sw,
        &["--port", "afxdp:sa", "--port", "afxdp:sb", "--xconnect"],
    );
    real_traffic_crosses(a, "10.77.5.1", b, "10.77.5.2", "xconnect");
    stop(sw);
}

#[test]
fn tcp_and_udp_reach_a_vm_behind_a_tap_port() {
    if !privileged("tcp_and_udp_reach_a_vm_behind_a_tap_port") {
        return;
    }
    let mut h = hosts("tcptap");
    let vm = h.topo.netns("vm");
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa", "--port", "tap:vm0"]);
    h.sw.ip(&["link", "set", "vm0", "netns", vm.name()]);
    vm.ip(&["addr", "add", "10.77.5.9/24", "dev", "vm0"]);
    vm.ip(&["link", "set", "vm0", "up"]);
    let a = &h.hosts[0];
    assert!(tso_on(&vm, "vm0"), "the TAP offers TSO to the VM's stack");
    real_traffic_crosses(a, "10.77.5.1", &vm, "10.77.5.9", "veth <-> TAP");
    the_switch_did_the_vms_offloads(&h.sw, "tap:vm0");
    stop(sw);
}

/// The VM's stack sent super-frames with checksums left undone, and the
/// switch finished them (the transfers above prove the results correct).
fn the_switch_did_the_vms_offloads(sw: &NetNs, port: &str) {
    let ports: Value = serde_json::from_str(&sw.dataplane_ok(&["show", "ports", "--json"]))
        .expect("show ports --json");
    let p = ports
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == port))
        .unwrap_or_else(|| panic!("no {port} in {ports}"));
    let n = |key: &str| p[key].as_u64().unwrap_or_else(|| panic!("no {key} in {p}"));
    assert!(n("gso_frames") > 10, "TSO super-frames from the VM: {p}");
    assert!(
        n("gso_segments") > 2 * n("gso_frames"),
        "each cut into several segments: {p}"
    );
    assert!(
        n("checksums_completed") > 0,
        "UDP and small segments: checksums finished by the switch: {p}"
    );
    assert_eq!(p["drops"]["malformed"], 0, "{p}");
}

/// What `ethtool -k` in `ns` says of `ifname`'s TSO.
fn tso_on(ns: &NetNs, ifname: &str) -> bool {
    let out = ns.exec_ok(&["ethtool", "-k", ifname]);
    let line = out
        .lines()
        .find(|l| l.starts_with("tcp-segmentation-offload:"))
        .unwrap_or_else(|| panic!("ethtool -k {ifname} names no TSO: {out}"));
    line.split_whitespace().nth(1) == Some("on")
}

#[test]
fn container_ports_keep_the_containers_offloads_and_carry_tcp_in_the_kernel() {
    if !privileged("container_ports_keep_the_containers_offloads_and_carry_tcp_in_the_kernel") {
        return;
    }
    let h = hosts("tcpveth");
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    assert!(tso_on(a, "a0"), "a veth starts with TSO on");
    let sw = RunningSwitch::start(&h.sw, &["--port", "veth:sa", "--port", "veth:sb"]);
    assert!(
        tso_on(a, "a0") && tso_on(b, "b0"),
        "container ports leave TSO on"
    );
    let ports = h.sw.dataplane_ok(&["show", "ports", "--json"]);
    assert!(!ports.contains("peer_effect"), "nothing to report: {ports}");
    real_traffic_crosses(a, "10.77.5.1", b, "10.77.5.2", "container ports, fast path");
    let fast = steer_counter(&h.sw, "sa", "fast_path_tc");
    assert!(fast > 1000, "a's traffic stayed in the kernel: {fast}");
    assert!(
        steer_counter(&h.sw, "sa", "punted") > 0,
        "the first frames (ARP) went to the switch through the punt device"
    );
    stop(sw);
    assert!(
        h.sw.exec(&["ip", "link", "show", "dp-punt0"]).status.code() != Some(0),
        "the punt device is removed at exit"
    );
    assert!(tso_on(a, "a0"), "and TSO is still on");
}

#[test]
fn container_ports_carry_tcp_through_the_userspace_switch() {
    if !privileged("container_ports_carry_tcp_through_the_userspace_switch") {
        return;
    }
    let h = hosts("tcpvslow");
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(
        &h.sw,
        &["--port", "veth:sa", "--port", "veth:sb", "--no-fast-path"],
    );
    real_traffic_crosses(a, "10.77.5.1", b, "10.77.5.2", "container ports, userspace");
    // Segments of up to 64 KiB went in; the punt device cut them to
    // MTU-sized frames, which is what the switch received.
    let punted = steer_counter(&h.sw, "sa", "punted");
    let received = steer_counter(&h.sw, "dp-punt1", "redirected");
    assert!(punted > 100, "a's frames were punted: {punted}");
    assert!(
        received > punted,
        "the switch received more (segmented) frames than were punted: {received} <= {punted}"
    );
    assert!(tso_on(a, "a0"), "TSO stayed on");
    stop(sw);
}

#[test]
fn a_container_port_reaches_a_vm_behind_a_tap_port() {
    if !privileged("a_container_port_reaches_a_vm_behind_a_tap_port") {
        return;
    }
    let mut h = hosts("tcpvtap");
    let vm = h.topo.netns("vm");
    let sw = RunningSwitch::start(&h.sw, &["--port", "veth:sa", "--port", "tap:vm0"]);
    h.sw.ip(&["link", "set", "vm0", "netns", vm.name()]);
    vm.ip(&["addr", "add", "10.77.5.9/24", "dev", "vm0"]);
    vm.ip(&["link", "set", "vm0", "up"]);
    let a = &h.hosts[0];
    real_traffic_crosses(a, "10.77.5.1", &vm, "10.77.5.9", "container port <-> TAP");
    the_switch_did_the_vms_offloads(&h.sw, "tap:vm0");
    stop(sw);
}

#[test]
fn tcp_and_udp_cross_a_vlan_push_and_pop_between_default_endpoints() {
    if !privileged("tcp_and_udp_cross_a_vlan_push_and_pop_between_default_endpoints") {
        return;
    }
    // Two hosts' switches joined by a VLAN trunk, the endpoints untagged
    // on access ports of VLAN 10 (this kernel has no 8021q, so no endpoint
    // speaks VLAN itself, as most containers do not):
    //
    //   a: a0 ── sa [sw: vlan=10 | trunk=10] t1 ══ t2 [sw2: trunk=10 | vlan=10] sb ── b0 :b
    //
    // sw pushes the tag toward the trunk and pops it on the way back; sw2
    // does the same on its side. With container ports the tag travels in
    // the skb's metadata on the fast path and in the frame on the punt
    // device.
    for (tag, extra, fast) in [
        ("tcpvlf", None, true),
        ("tcpvls", Some("--no-fast-path"), false),
    ] {
        let mut h = hosts(tag);
        let sw2 = h.topo.netns("sw2");
        h.sw.ip(&["link", "set", "sb", "netns", sw2.name()]);
        sw2.ip(&["link", "set", "sb", "up"]);
        h.topo.veth((&h.sw, "t1"), (&sw2, "t2"));
        let (a, b) = (&h.hosts[0], &h.hosts[1]);
        let with = |ports: [&'static str; 2]| {
            let mut args = vec!["--port", ports[0], "--port", ports[1]];
            args.extend(extra);
            args
        };
        let sw_a = RunningSwitch::start(&h.sw, &with(["veth:sa,vlan=10", "veth:t1,trunk=10"]));
        let sw_b = RunningSwitch::start(&sw2, &with(["veth:t2,trunk=10", "veth:sb,vlan=10"]));
        let what = if fast {
            "VLAN push/pop across a trunk, fast path"
        } else {
            "VLAN push/pop across a trunk, --no-fast-path"
        };
        real_traffic_crosses(a, "10.77.5.1", b, "10.77.5.2", what);
        for (sw, ifname) in [(&h.sw, "sa"), (&sw2, "t2")] {
            let (in_kernel, to_switch) = (
                steer_counter(sw, ifname, "fast_path_tc"),
                steer_counter(sw, ifname, "punted"),
            );
            if fast {
                assert!(
                    in_kernel > 1000,
                    "{what}: {ifname} in the kernel: {in_kernel}"
                );
            } else {
                assert_eq!(in_kernel, 0, "{what}: {ifname}");
                assert!(
                    to_switch > 1000,
                    "{what}: {ifname} to the switch: {to_switch}"
                );
            }
        }
        stop(sw_b);
        stop(sw_a);
    }
}
