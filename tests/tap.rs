//! TAP ports: a namespace plays the VM. The switch creates the TAP device,
//! the test moves its netdev into the VM namespace (as QEMU's guest NIC sits
//! behind the host's vnetX), and the VM's own kernel stack talks to a host
//! on an AF_XDP port through the switch.
//!
//! ```text
//!  a: a0 10.77.3.1 ── sa [sw: dataplane run] tap vm0 ──> vm: vm0 10.77.3.2
//! ```

mod harness;

use std::time::Duration;

use harness::{collect_test_frames, mac_of, privileged, NetNs, RunningSwitch, Topology};

struct Setup {
    _topo: Topology,
    sw: NetNs,
    a: NetNs,
    vm: NetNs,
}

fn setup(tag: &str) -> Setup {
    let mut topo = Topology::new(tag);
    let sw = topo.netns("sw");
    let a = topo.netns("a");
    let vm = topo.netns("vm");
    topo.veth((&a, "a0"), (&sw, "sa"));
    a.ip(&["addr", "add", "10.77.3.1/24", "dev", "a0"]);
    Setup {
        _topo: topo,
        sw,
        a,
        vm,
    }
}

/// Moves the switch's TAP into the VM namespace and configures it there.
fn plug_vm(s: &Setup, tap: &str) {
    s.sw.ip(&["link", "set", tap, "netns", s.vm.name()]);
    s.vm.ip(&["addr", "add", "10.77.3.2/24", "dev", tap]);
    s.vm.ip(&["link", "set", tap, "up"]);
}

fn ping(from: &NetNs, to: &str) -> bool {
    harness::ping(from, to, 3)
}

/// `n` 200-byte test frames from `ifname` to `dst`, paced.
fn send_paced(ns: &NetNs, ifname: &str, dst: [u8; 6], n: u32) {
    harness::send_test_stream(ns, ifname, dst, n, 200);
}

fn distinct(v: Vec<u32>) -> usize {
    harness::distinct(v).len()
}

#[test]
fn a_vm_behind_a_tap_port_reaches_a_host_on_an_afxdp_port() {
    if !privileged("a_vm_behind_a_tap_port_reaches_a_host_on_an_afxdp_port") {
        return;
    }
    let s = setup("tap");
    let sw = RunningSwitch::start(&s.sw, &["--port", "afxdp:sa", "--port", "tap:vm0"]);
    assert!(sw.output().contains("TAP port open"), "{}", sw.output());
    let qlen = s.sw.ip(&["-j", "link", "show", "vm0"]);
    assert!(
        qlen.contains("\"txqlen\":4096"),
        "queue toward the switch: {qlen}"
    );
    plug_vm(&s, "vm0");
    assert!(ping(&s.a, "10.77.3.2"), "host -> VM:\n{}", sw.output());
    assert!(ping(&s.vm, "10.77.3.1"), "VM -> host");

    // A stream each way, every frame counted at the other end.
    const N: u32 = 2000;
    let (at_vm, ready) = collect_test_frames(&s.vm, "vm0", N as usize, Duration::from_secs(10));
    ready.recv().unwrap();
    send_paced(&s.a, "a0", mac_of(&s.vm, "vm0"), N);
    assert_eq!(
        distinct(at_vm.join().unwrap()),
        N as usize,
        "host -> VM without loss"
    );
    let (at_a, ready) = collect_test_frames(&s.a, "a0", N as usize, Duration::from_secs(10));
    ready.recv().unwrap();
    send_paced(&s.vm, "vm0", mac_of(&s.a, "a0"), N);
    let got = distinct(at_a.join().unwrap());
    if got != N as usize {
        sw.signal(libc::SIGUSR1);
        std::thread::sleep(Duration::from_millis(1500));
        let vm_stats = s.vm.ip(&["-s", "link", "show", "vm0"]);
        panic!(
            "VM -> host: {got} of {N} arrived\n{vm_stats}\n{}",
            sw.output()
        );
    }

    let (out, _) = sw.stop_accounted();
    assert!(
        out.lines().any(|l| l.starts_with("tap:vm0")),
        "TAP port in the statistics:\n{out}"
    );
    // The switch held the only fd: the VM's NIC is gone with it.
    let gone = s.vm.exec(&["ip", "link", "show", "vm0"]);
    assert!(
        !gone.status.success(),
        "TAP left behind after the switch exited"
    );
}

#[test]
fn multi_queue_tap_carries_traffic() {
    if !privileged("multi_queue_tap_carries_traffic") {
        return;
    }
    let s = setup("tapmq");
    let sw = RunningSwitch::start(
        &s.sw,
        &["--port", "afxdp:sa", "--port", "tap:vmq0,queues=2"],
    );
    assert!(sw.output().contains("queues=2"), "{}", sw.output());
    plug_vm(&s, "vmq0");
    assert!(ping(&s.a, "10.77.3.2"), "host -> VM over a 2-queue TAP");
    let (at_vm, ready) = collect_test_frames(&s.vm, "vmq0", 500, Duration::from_secs(5));
    ready.recv().unwrap();
    send_paced(&s.a, "a0", mac_of(&s.vm, "vmq0"), 500);
    // One flow: one queue, so the VM reads it in the order it was sent.
    let got = at_vm.join().unwrap();
    assert_eq!(got, (0..500).collect::<Vec<u32>>(), "every frame, in order");
    drop(sw);
}

#[test]
fn bad_tap_names_are_refused_and_nothing_is_left() {
    if !privileged("bad_tap_names_are_refused_and_nothing_is_left") {
        return;
    }
    let s = setup("tapbad");
    let out = s.sw.dataplane(&[
        "run",
        "--port",
        "afxdp:sa",
        "--port",
        "tap:a-name-much-too-long",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("a-name-much-too-long"), "{err}");
    // The AF_XDP port opened before the failure was released again.
    assert_eq!(
        s.sw.xdp_prog_id("sa"),
        None,
        "steer left attached after a failed start"
    );
}
