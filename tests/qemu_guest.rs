//! A real Linux guest on a vhost-user port: QEMU with KVM boots Debian's
//! cloud kernel, whose virtio-net driver is the frontend, exactly as a
//! production VM's would be.
//!
//! ```text
//!  a: a0 ── sa [sw: dataplane run] vhost-user SOCK <── QEMU (KVM)
//!                                                      guest eth0: echo
//! ```
//!
//! The guest's userspace is this very test binary: run as PID 1 (its
//! `init`), it loads the virtio-net modules, brings eth0 up and sends every
//! test frame it receives back to where it came from. The host side sends
//! numbered frames from a0 to the guest's MAC and counts the echoes. Then
//! the two kernels talk TCP: the guest gives eth0 an address and echoes a
//! connection, and a0's stack, at its defaults (checksums left to the
//! device), sends through the switch and compares what comes back.
//!
//! The guest kernel comes from `cargo xtask setup` (target/guest-kernel);
//! without it or without QEMU the test says it is skipped and why.
//!
//! Not a libtest harness (`harness = false` in Cargo.toml): the same `main`
//! runs the test on the host and the echo in the guest.

mod guest;
mod harness;

use std::path::Path;
use std::time::Duration;

use guest::{
    build_initramfs, guest_kernel_dir, send_one, send_slowly, tcp_round_trip, Scratch, Vm, ECHOED,
    GUEST_MAC, HOST_IP, QUIT, READY, TCP_BYTES, TCP_ECHOED, TCP_READY,
};
use harness::{
    collect_test_frames, mac_of, privileged, test_frame, wait_for, NetNs, RunningSwitch, Topology,
    TEST_ETHERTYPE,
};

const TEST: &str = "qemu_guest_frames_cross_a_vhost_user_port_both_ways";
/// Frames per size sent through the guest and back.
const SMALL: u32 = 1000;
const LARGE: u32 = 200;

fn main() {
    guest::main(TEST, host_test);
}

fn host_test() {
    if !privileged(TEST) {
        return;
    }
    if let Some(why) = guest::qemu_missing(&guest_kernel_dir()) {
        harness::skipped(TEST, &why);
        return;
    }
    let scratch = Scratch::new("qemu");
    let initramfs = scratch.0.join("initramfs.cpio");
    build_initramfs(&initramfs);
    let sock = scratch.0.join("vm.sock");
    let port = format!("vhost-user:{}", sock.display());

    let mut topo = Topology::new("qg");
    let sw_ns = topo.netns("sw");
    let a = topo.netns("a");
    topo.veth((&a, "a0"), (&sw_ns, "sa"));
    a.ip(&["addr", "add", HOST_IP, "dev", "a0"]);
    let sw = RunningSwitch::start(&sw_ns, &["--port", "afxdp:sa", "--port", &port]);
    wait_for(Duration::from_secs(5), || sock.exists().then_some(()))
        .expect("the switch's vhost-user socket");

    let vm = Qemu::start(&sw_ns, &initramfs, &sock);
    let up = wait_for(Duration::from_secs(60), || {
        let (sw_out, vm_out) = (sw.output(), vm.output());
        if vm_out.contains("Kernel panic") || vm_out.contains("guest: error") {
            panic!("the guest failed:\n{vm_out}");
        }
        (vm_out.contains(READY) && sw_out.contains("vhost-user port up")).then_some(())
    });
    assert!(
        up.is_some(),
        "guest or port not up within 60 s\nguest:\n{}\nswitch:\n{}",
        vm.output(),
        sw.output()
    );

    // a0 -> switch -> guest -> switch -> a0, small frames then frames that
    // need more than one of the guest's receive buffers' worth of header
    // room (1400 bytes).
    let total = (SMALL + LARGE) as usize;
    let (echoes, ready) = collect_test_frames(&a, "a0", total, Duration::from_secs(30));
    ready.recv().unwrap();
    let a_mac = mac_of(&a, "a0");
    let frames = (0..SMALL + LARGE).map(|seq| {
        let len = if seq < SMALL { 64 } else { 1400 };
        test_frame(GUEST_MAC, a_mac, TEST_ETHERTYPE, seq, len)
    });
    send_slowly(&a, frames);
    let mut seqs = echoes.join().unwrap();
    seqs.sort_unstable();
    let expected: Vec<u32> = (0..SMALL + LARGE).collect();
    assert_eq!(
        seqs.len(),
        total,
        "echoes at a0: {} of {total}\nguest:\n{}\nswitch:\n{}",
        seqs.len(),
        vm.output(),
        sw.output()
    );
    assert_eq!(seqs, expected, "every frame echoed exactly once");

    // End the guest's loop: it prints its count and powers off, QEMU exits,
    // and the port goes down while the switch runs on.
    send_one(&a, a_mac, QUIT);
    let listening = wait_for(Duration::from_secs(30), || {
        let out = vm.output();
        if out.contains("guest: error") {
            panic!("the guest failed:\n{out}");
        }
        out.contains(TCP_READY).then_some(())
    });
    assert!(
        listening.is_some(),
        "no TCP echo in the guest:\n{}",
        vm.output()
    );
    let sent = harness::pattern(TCP_BYTES);
    let back = tcp_round_trip(&a, &sent);
    assert!(
        back == sent,
        "TCP through the switch to the guest's kernel and back: {} of {} bytes, or they differ\nguest:\n{}\nswitch:\n{}",
        back.len(),
        sent.len(),
        vm.output(),
        sw.output()
    );
    let (exited, vm_out) = vm.wait(Duration::from_secs(30));
    assert!(
        exited,
        "QEMU did not exit after the guest powered off:\n{vm_out}"
    );
    let echoed = vm_out
        .lines()
        .find_map(|l| l.split(ECHOED).nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no count from the guest:\n{vm_out}"));
    assert_eq!(echoed, total, "the guest's own count:\n{vm_out}");
    let down = wait_for(Duration::from_secs(5), || {
        sw.output().contains("vhost-user port down").then_some(())
    });
    assert!(
        down.is_some(),
        "port not down after QEMU exited:\n{}",
        sw.output()
    );
    // The guest's kernel negotiated checksum offload and TSO: its echo
    // came as super-frames with checksums left undone, which the switch
    // finished and cut (and `back == sent` above says it did so right).
    let ports: serde_json::Value =
        serde_json::from_str(&sw_ns.dataplane_ok(&["show", "ports", "--json"])).unwrap();
    let guest_port = ports
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == port.as_str()))
        .unwrap_or_else(|| panic!("no {port} in {ports}"));
    let count = |key: &str| guest_port[key].as_u64().unwrap_or(0);
    assert!(
        count("gso_frames") > 0 && count("gso_segments") > count("gso_frames"),
        "the guest's TSO super-frames were cut by the switch: {guest_port}"
    );
    assert!(
        count("checksums_completed") > 0,
        "the guest left checksums to the switch: {guest_port}"
    );
    assert_eq!(guest_port["drops"]["malformed"], 0, "{guest_port}");
    let offloads = format!(
        "{} super-frames cut into {} segments, {} checksums finished",
        count("gso_frames"),
        count("gso_segments"),
        count("checksums_completed")
    );
    sw.stop_accounted();
    assert!(!sock.exists(), "socket left behind");
    let tcp_echoed = vm_out
        .lines()
        .find_map(|l| l.split(TCP_ECHOED).nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok());
    assert_eq!(
        tcp_echoed,
        Some(TCP_BYTES),
        "the guest's TCP count:\n{vm_out}"
    );
    println!(
        "qemu guest: {total} frames echoed through a vhost-user port, {echoed} counted by the guest; \
         {TCP_BYTES} bytes of TCP echoed by the guest's kernel, byte for byte \
         (the guest's offloads: {offloads})"
    );
}

/// The guest's QEMU: on the switch's vhost-user socket, its memory shared
/// with the switch (vhost-user maps it).
struct Qemu;

impl Qemu {
    fn start(ns: &NetNs, initramfs: &Path, sock: &Path) -> Vm {
        let device = format!(
            "virtio-net-pci,netdev=n0,mac={},rx_queue_size=1024,tx_queue_size=1024,vectors=0,romfile=",
            GUEST_MAC.map(|b| format!("{b:02x}")).join(":")
        );
        let chardev = format!("socket,id=c0,path={}", sock.display());
        Vm::start(
            ns,
            &guest_kernel_dir().join("vmlinuz"),
            initramfs,
            &[
                "-smp",
                "1",
                "-m",
                "512M",
                "-object",
                "memory-backend-memfd,id=mem0,size=512M,share=on",
                "-machine",
                "q35,memory-backend=mem0",
                "-chardev",
                &chardev,
                "-netdev",
                "vhost-user,id=n0,chardev=c0",
                "-device",
                &device,
            ],
        )
    }
}
