//! The steer XDP program on real veths: attach, policies, counters, the
//! kernel's own view, errors, and cleanup.
//!
//! Topology of every test: host namespace `a` (a0, 10.77.0.1) <-veth->
//! switch namespace `sw` (s0, 10.77.0.2), steer attached to s0.

mod harness;

use std::time::Duration;

use harness::{
    mac_of, ping, privileged, test_frame, test_frame_seq, wait_for, NetNs, PacketSocket, Topology,
    TEST_ETHERTYPE,
};
use serde_json::Value;

fn two_hosts(tag: &str) -> (Topology, NetNs, NetNs) {
    let mut topo = Topology::new(tag);
    let a = topo.netns("a");
    let sw = topo.netns("sw");
    topo.veth((&a, "a0"), (&sw, "s0"));
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", "a0"]);
    sw.ip(&["addr", "add", "10.77.0.2/24", "dev", "s0"]);
    (topo, a, sw)
}

/// The `counters` object of `dataplane status --json` for `ifname`.
fn counters(sw: &NetNs, ifname: &str) -> Value {
    let out = sw.dataplane_ok(&["status", "--json"]);
    let list: Value = serde_json::from_str(&out).expect("status --json is JSON");
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["interface"] == ifname)
        .unwrap_or_else(|| panic!("{ifname} missing from status: {out}"))["counters"]
        .clone()
}

fn count(c: &Value, outcome: &str) -> u64 {
    c[outcome]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {outcome} in {c}"))
}

/// Sends `n` test frames from `a0` in namespace `a` to `dst`.
fn send_test_frames(a: &NetNs, dst: [u8; 6], ethertype: u16, n: u32) {
    let src = mac_of(a, "a0");
    a.enter(|| {
        let sock = PacketSocket::open("a0");
        for seq in 0..n {
            sock.send(&test_frame(dst, src, ethertype, seq, 64));
        }
    });
}

#[test]
fn pass_policy_keeps_ping_working_and_counts_it() {
    if !privileged("pass_policy_keeps_ping_working_and_counts_it") {
        return;
    }
    let (_topo, a, sw) = two_hosts("pass");
    let out = sw.dataplane_ok(&["attach", "--iface", "s0", "--policy", "pass"]);
    assert!(
        out.contains("driver mode"),
        "veth supports native XDP: {out}"
    );

    // The kernel's view: a program is attached, and it is the pinned one.
    let prog_id = sw
        .xdp_prog_id("s0")
        .expect("kernel reports an XDP program on s0");
    let status: Value = serde_json::from_str(&sw.dataplane_ok(&["status", "--json"])).unwrap();
    assert_eq!(status[0]["program_id"].as_u64(), Some(prog_id));
    assert_eq!(status[0]["mode"], "driver");
    assert_eq!(status[0]["policy"], "pass");

    assert!(
        ping(&a, "10.77.0.2", 5),
        "ping through a pass policy must work"
    );
    let c = counters(&sw, "s0");
    // 5 echo requests, plus ARP.
    assert!(count(&c, "passed") >= 5, "{c}");
    assert_eq!(count(&c, "redirected"), 0, "{c}");
    assert_eq!(count(&c, "no_socket"), 0, "{c}");
}

#[test]
fn attachment_outlives_the_cli_and_detach_leaves_nothing() {
    if !privileged("attachment_outlives_the_cli_and_detach_leaves_nothing") {
        return;
    }
    let (_topo, a, sw) = two_hosts("detach");
    let before_links = sw.ip(&["-d", "link", "show", "s0"]);
    sw.dataplane_ok(&["attach", "--iface", "s0", "--policy", "pass"]);
    // The attaching process has exited; the program still counts frames.
    assert!(ping(&a, "10.77.0.2", 3));
    assert!(count(&counters(&sw, "s0"), "passed") >= 3);
    let pins = sw.pin_dir("s0");
    for name in ["link", "prog", "POLICY", "MATCHES", "XSKS", "COUNTERS"] {
        assert!(pins.join(name).exists(), "pin {name} missing");
    }

    let prog_id = sw.xdp_prog_id("s0").expect("attached");
    sw.dataplane_ok(&["detach", "--iface", "s0"]);
    // Not just detached: unloaded (bpftool no longer knows the id). The
    // kernel frees a released link's program from deferred work, so allow
    // it a moment.
    let unloaded = harness::wait_for(std::time::Duration::from_secs(5), || {
        let prog = std::process::Command::new("bpftool")
            .args(["prog", "show", "id", &prog_id.to_string()])
            .output()
            .unwrap();
        (!prog.status.success()).then_some(())
    });
    assert!(
        unloaded.is_some(),
        "program {prog_id} still loaded 5 s after detach"
    );
    assert_eq!(
        sw.xdp_prog_id("s0"),
        None,
        "program still attached after detach"
    );
    assert!(!pins.exists(), "pins left behind: {}", pins.display());
    assert!(
        !pins.parent().unwrap().exists(),
        "namespace pin dir left behind"
    );
    let after_links = sw.ip(&["-d", "link", "show", "s0"]);
    // Same device description except the counters-free link line.
    assert_eq!(
        before_links.lines().count(),
        after_links.lines().count(),
        "before:\n{before_links}\nafter:\n{after_links}"
    );
    assert!(!after_links.contains("xdp"), "{after_links}");
    let status = sw.dataplane_ok(&["status"]);
    assert!(status.contains("no interface"), "{status}");
    // Detaching twice is an error that says so.
    let again = sw.dataplane(&["detach", "--iface", "s0"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing attached to s0"));
}

#[test]
fn redirect_policy_without_socket_falls_back_to_the_kernel() {
    if !privileged("redirect_policy_without_socket_falls_back_to_the_kernel") {
        return;
    }
    let (_topo, a, sw) = two_hosts("nosock");
    sw.dataplane_ok(&["attach", "--iface", "s0", "--policy", "all"]);
    assert!(
        ping(&a, "10.77.0.2", 4),
        "frames without a socket must reach the kernel"
    );
    let c = counters(&sw, "s0");
    assert!(count(&c, "no_socket") >= 4, "{c}");
    assert_eq!(count(&c, "redirected"), 0, "{c}");
    assert_eq!(count(&c, "passed"), 0, "{c}");
}

#[test]
fn drop_policy_drops_and_counts() {
    if !privileged("drop_policy_drops_and_counts") {
        return;
    }
    let (_topo, a, sw) = two_hosts("drop");
    sw.dataplane_ok(&["attach", "--iface", "s0", "--policy", "drop"]);
    let dst = mac_of(&sw, "s0");
    send_test_frames(&a, dst, TEST_ETHERTYPE, 50);
    assert!(
        !ping(&a, "10.77.0.2", 1),
        "ping must fail through a drop policy"
    );
    let c = counters(&sw, "s0");
    assert!(count(&c, "dropped") >= 50, "{c}");
    assert_eq!(count(&c, "passed"), 0, "{c}");
}

#[test]
fn listed_policy_selects_only_listed_frames() {
    if !privileged("listed_policy_selects_only_listed_frames") {
        return;
    }
    let (_topo, a, sw) = two_hosts("listed");
    sw.dataplane_ok(&[
        "attach",
        "--iface",
        "s0",
        "--match",
        "ethertype=0x88b5",
        "--match",
        "vlan=42",
    ]);
    let dst = mac_of(&sw, "s0");
    send_test_frames(&a, dst, TEST_ETHERTYPE, 30);
    // Tagged with VLAN 42 (listed) and VLAN 43 (not listed).
    let src = mac_of(&a, "a0");
    a.enter(|| {
        let sock = PacketSocket::open("a0");
        for (vid, n) in [(42u16, 7), (43u16, 11)] {
            for _ in 0..n {
                let mut f = test_frame(dst, src, 0x8100, 0, 64);
                f[14..16].copy_from_slice(&vid.to_be_bytes());
                f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
                sock.send(&f);
            }
        }
    });
    assert!(
        ping(&a, "10.77.0.2", 3),
        "unlisted traffic still reaches the kernel"
    );
    let c = counters(&sw, "s0");
    // No socket is registered, so selected frames are counted as no_socket.
    assert_eq!(count(&c, "no_socket"), 30 + 7, "{c}");
    assert!(count(&c, "passed") >= 11 + 3, "{c}");
}

#[test]
fn truncated_vlan_header_is_counted_malformed() {
    if !privileged("truncated_vlan_header_is_counted_malformed") {
        return;
    }
    let (_topo, a, sw) = two_hosts("malformed");
    sw.dataplane_ok(&["attach", "--iface", "s0", "--policy", "all"]);
    let dst = mac_of(&sw, "s0");
    let src = mac_of(&a, "a0");
    a.enter(|| {
        let sock = PacketSocket::open("a0");
        for _ in 0..5 {
            // An 802.1Q EtherType with the frame ending inside the tag.
            let f = test_frame(dst, src, 0x8100, 0, 18);
            sock.send(&f[..16]);
        }
    });
    let c = counters(&sw, "s0");
    assert_eq!(count(&c, "malformed"), 5, "{c}");
}

#[test]
fn another_xdp_program_is_named_and_force_replaces_it() {
    if !privileged("another_xdp_program_is_named_and_force_replaces_it") {
        return;
    }
    let (_topo, _a, sw) = two_hosts("force");
    // Something else (this test process, through aya and a bpf_link, the
    // hardest kind to remove) attaches an XDP program; dataplane has no pins for it.
    let obj = std::fs::read(dataplane_ebpf_object()).expect("XDP object built");
    let foreign_holder = sw.enter(|| {
        let mut ebpf = aya::Ebpf::load(&obj).expect("load object");
        let prog: &mut aya::programs::Xdp = ebpf.program_mut("steer").unwrap().try_into().unwrap();
        prog.load().expect("verifier");
        prog.attach("s0", aya::programs::XdpMode::Skb)
            .expect("attach foreign");
        ebpf
    });
    let foreign = sw.xdp_prog_id("s0").expect("foreign program attached");

    let refused = sw.dataplane(&["attach", "--iface", "s0"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains(&format!("id {foreign}")) && err.contains("--force"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        sw.xdp_prog_id("s0"),
        Some(foreign),
        "refusal must not change anything"
    );

    let out = sw.dataplane_ok(&["attach", "--iface", "s0", "--force"]);
    assert!(out.contains("replaced"), "{out}");
    let ours = sw.xdp_prog_id("s0").expect("steer attached");
    assert_ne!(ours, foreign);
    drop(foreign_holder);
    sw.dataplane_ok(&["detach", "--iface", "s0"]);
    assert_eq!(sw.xdp_prog_id("s0"), None);
}

#[test]
fn user_errors_are_one_line_without_panics() {
    if !privileged("user_errors_are_one_line_without_panics") {
        return;
    }
    let (_topo, _a, sw) = two_hosts("errors");
    let cases: [(&[&str], &str); 4] = [
        (&["attach", "--iface", "nosuchif0"], "nosuchif0"),
        (
            &["attach", "--iface", "s0", "--bpffs", "/tmp"],
            "bpffs is not mounted at /tmp",
        ),
        (
            &["attach", "--iface", "s0", "--match", "vlan=5000"],
            "not a VLAN id",
        ),
        (&["logs", "--iface", "s0"], "nothing attached to s0"),
    ];
    for (args, want) in cases {
        let out = sw.dataplane(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
    }
    assert_eq!(
        sw.xdp_prog_id("s0"),
        None,
        "failed attaches must leave nothing attached"
    );
    let missing_ns = std::process::Command::new(harness::dataplane_bin())
        .args(["--netns", "dpt-no-such-ns", "status"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing_ns.stderr).contains("ip netns list"));
}

#[test]
fn deleted_interface_shows_stale_and_detach_cleans_up() {
    if !privileged("deleted_interface_shows_stale_and_detach_cleans_up") {
        return;
    }
    let (_topo, _a, sw) = two_hosts("stale");
    sw.dataplane_ok(&["attach", "--iface", "s0", "--policy", "pass"]);
    sw.ip(&["link", "del", "s0"]);
    let status = sw.dataplane_ok(&["status"]);
    assert!(status.contains("stale"), "{status}");
    sw.dataplane_ok(&["detach", "--iface", "s0"]);
    assert!(!sw.pin_dir("s0").exists());
}

fn dataplane_ebpf_object() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| root.join("target").display().to_string());
    format!("{target}/bpfel-unknown-none/release/dataplane-ebpf")
}

#[test]
fn redirect_policy_delivers_to_a_registered_af_xdp_socket() {
    use dataplane::steer::{pins::PinRoot, Attachment};
    use dataplane::xsk::{FramePool, SocketConfig, Umem, UmemConfig, XskSocket};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    if !privileged("redirect_policy_delivers_to_a_registered_af_xdp_socket") {
        return;
    }
    let (_topo, a, sw) = two_hosts("xsk");
    // Only the test EtherType is redirected; ping keeps using the kernel.
    sw.dataplane_ok(&["attach", "--iface", "s0", "--match", "ethertype=0x88b5"]);
    const N: u32 = 200;
    let dst = mac_of(&sw, "s0");
    let (received, accounted) = sw.enter(|| {
        let umem = Arc::new(Umem::new(UmemConfig::default()).unwrap());
        let mut pool = FramePool::new(&umem);
        let mut socket = XskSocket::new(&umem, "s0", 0, &SocketConfig::default()).unwrap();
        socket.fill(&mut pool, 1024);
        let pins = PinRoot::open(std::path::Path::new(harness::BPFFS)).unwrap();
        let mut attachment = Attachment::open(&pins, "s0").unwrap();
        attachment.register_socket(0, socket.fd()).unwrap();

        send_test_frames(&a, dst, TEST_ETHERTYPE, N);
        let mut seqs = Vec::new();
        let mut descs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seqs.len() < N as usize && Instant::now() < deadline {
            descs.clear();
            socket.recv(&mut descs, 64);
            for d in &descs {
                let frame = umem.frame(d.addr, d.len as usize);
                if let Some(seq) = harness::test_frame_seq(frame, TEST_ETHERTYPE) {
                    seqs.push(seq);
                }
                pool.free(d.addr);
            }
            socket.fill(&mut pool, descs.len() as u32);
            if descs.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        attachment.unregister_socket(0).unwrap();
        seqs.sort_unstable();
        // Every frame is either free or in the fill ring: none went missing.
        (seqs, pool.len() as u64 + 1024)
    });
    assert_eq!(
        received,
        (0..N).collect::<Vec<_>>(),
        "every redirected frame reaches the socket"
    );
    assert_eq!(accounted, UmemConfig::default().frame_count as u64);
    assert!(
        ping(&a, "10.77.0.2", 2),
        "unselected traffic (ICMP, ARP) still reaches the kernel"
    );
    let c = counters(&sw, "s0");
    assert_eq!(count(&c, "redirected"), N as u64, "{c}");
    assert_eq!(count(&c, "no_socket"), 0, "{c}");
    assert!(count(&c, "passed") >= 2, "{c}");
}

#[test]
fn skb_mode_attach_works_and_is_reported() {
    if !privileged("skb_mode_attach_works_and_is_reported") {
        return;
    }
    let (_topo, a, sw) = two_hosts("skb");
    let out = sw.dataplane_ok(&[
        "attach", "--iface", "s0", "--mode", "skb", "--policy", "pass",
    ]);
    assert!(out.contains("skb mode"), "{out}");
    let status: Value = serde_json::from_str(&sw.dataplane_ok(&["status", "--json"])).unwrap();
    assert_eq!(status[0]["mode"], "skb");
    let kernel = sw.ip(&["-d", "link", "show", "s0"]);
    assert!(
        kernel.contains("xdpgeneric") || kernel.contains("prog/xdp"),
        "{kernel}"
    );
    assert!(ping(&a, "10.77.0.2", 3), "generic XDP passes traffic too");
    assert!(count(&counters(&sw, "s0"), "passed") >= 3);
    sw.dataplane_ok(&["detach", "--iface", "s0"]);
    assert_eq!(sw.xdp_prog_id("s0"), None);
}

#[test]
fn missing_capabilities_are_named_before_anything_changes() {
    if !privileged("missing_capabilities_are_named_before_anything_changes") {
        return;
    }
    let (_topo, _a, sw) = two_hosts("caps");
    // Root, but with every capability dropped (as an unprivileged user is).
    let out = std::process::Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(harness::dataplane_bin())
        .args(["--netns", sw.name(), "attach", "--iface", "s0"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // Entering the namespace already needs CAP_SYS_ADMIN; either way the
    // message names the missing capability and says to run as root.
    assert!(err.contains("CAP_") && err.contains("root"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(sw.xdp_prog_id("s0"), None, "nothing attached");
}

#[test]
fn ebpf_log_records_reach_dataplane_logs() {
    if !privileged("ebpf_log_records_reach_dataplane_logs") {
        return;
    }
    let (_topo, a, sw) = two_hosts("logs");
    // The program logs malformed frames at debug level when attached with it on.
    let attach = std::process::Command::new(harness::dataplane_bin())
        .args([
            "--netns",
            sw.name(),
            "attach",
            "--iface",
            "s0",
            "--policy",
            "pass",
        ])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(attach.status.success());
    let logs = std::process::Command::new(harness::dataplane_bin())
        .args(["--netns", sw.name(), "logs", "--iface", "s0"])
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let dst = mac_of(&sw, "s0");
    let src = mac_of(&a, "a0");
    a.enter(|| {
        let sock = PacketSocket::open("a0");
        let f = test_frame(dst, src, 0x8100, 0, 18);
        sock.send(&f[..16]);
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(logs.id() as i32, libc::SIGINT) };
    let out = logs.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("malformed frame of 16 bytes"),
        "eBPF record not shown:\n{err}"
    );
}

#[test]
fn an_interrupted_generator_exits_cleanly() {
    if !privileged("an_interrupted_generator_exits_cleanly") {
        return;
    }
    let (_topo, a, sw) = two_hosts("genint");
    // The sink takes the generator's frames (XDP frames need an XDP
    // program on the receiving veth) and drops them.
    sw.dataplane_ok(&["attach", "--iface", "s0", "--policy", "drop"]);
    let dst = mac_of(&sw, "s0");
    let dst = dst
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    // Ctrl-C usually lands inside the generator's long BPF_PROG_RUN call
    // (it spends nearly all its time there): a few tries make that sure.
    for round in 0..3 {
        let child = std::process::Command::new(harness::dataplane_bin())
            .args([
                "--netns",
                a.name(),
                "gen",
                "--iface",
                "a0",
                "--dst-mac",
                &dst,
            ])
            .args(["--duration", "30"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start dataplane gen");
        std::thread::sleep(std::time::Duration::from_millis(700 + 150 * round));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().expect("gen exits");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "round {round}: {:?}\n{stderr}",
            out.status
        );
        assert!(
            !stderr.contains("error"),
            "round {round}: an interrupted run prints no error:\n{stderr}"
        );
    }
    sw.dataplane_ok(&["detach", "--iface", "s0"]);
}

#[test]
fn attach_and_detach_in_parallel_namespaces_never_fail() {
    if !privileged("attach_and_detach_in_parallel_namespaces_never_fail") {
        return;
    }
    // Detaching the last interface of a namespace removes the shared
    // `dataplane/` pin directory while attaches elsewhere create theirs:
    // 8 namespaces x 10 rounds at once, every command must succeed.
    let mut topo = Topology::new("par");
    let spaces: Vec<NetNs> = (0..8)
        .map(|i| {
            let host = topo.netns(&format!("h{i}"));
            let sw = topo.netns(&format!("s{i}"));
            topo.veth((&host, "x0"), (&sw, "x1"));
            sw
        })
        .collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = spaces
            .iter()
            .map(|sw| {
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for round in 0..10 {
                        for verb in ["attach", "detach"] {
                            let out = sw.dataplane(&[verb, "--iface", "x1"]);
                            if !out.status.success() {
                                failed.push(format!(
                                    "{} round {round} {verb}: {}",
                                    sw.name(),
                                    String::from_utf8_lossy(&out.stderr).trim()
                                ));
                            }
                        }
                    }
                    failed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn interface_names_cannot_walk_out_of_bpffs() {
    if !privileged("interface_names_cannot_walk_out_of_bpffs") {
        return;
    }
    // Names become directories under bpffs: `..` must never reach them.
    let (_topo, _a, sw) = two_hosts("dotdot");
    for name in ["../../..", "..", "a/b", "x\u{1b}[2J"] {
        for verb in ["detach", "logs", "attach"] {
            let out = sw.dataplane(&[verb, "--iface", name]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{verb} {name:?} was accepted");
            assert!(err.contains("is invalid"), "{verb} {name:?}: {err}");
            assert!(
                !err.contains('\u{1b}'),
                "control characters reach the terminal raw"
            );
        }
    }
    assert!(
        std::path::Path::new("/sys/fs/bpf").exists(),
        "bpffs is still there"
    );
}

#[test]
fn the_benchmark_guest_echo_answers_ipv4_for_its_mac_and_passes_the_rest() {
    if !privileged("the_benchmark_guest_echo_answers_ipv4_for_its_mac_and_passes_the_rest") {
        return;
    }
    // `dataplane echo` on s0 stands for a container that answers towards
    // a sink: IPv4 frames for s0's MAC come back out of s0 addressed to
    // SINK, from s0; ARP and frames for other MACs go to s0's stack.
    const SINK: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    let (_topo, a, sw) = two_hosts("echo");
    // a0 receives the answers as XDP frames, which a veth takes only with
    // an XDP program of its own: steer, passing everything to the stack.
    a.dataplane_ok(&["attach", "--iface", "a0", "--policy", "pass"]);
    let mut echo = std::process::Command::new(harness::dataplane_bin())
        .args(["--netns", sw.name(), "echo", "--iface", "s0"])
        .args(["--peer", "02:00:00:00:00:99"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dataplane echo");
    let attached = wait_for(Duration::from_secs(10), || sw.xdp_prog_id("s0"));
    if attached.is_none() {
        let _ = echo.kill();
        let out = echo.wait_with_output().unwrap();
        panic!(
            "echo never attached: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s0 = mac_of(&sw, "s0");
    let a0 = mac_of(&a, "a0");
    let answers = a.enter(|| {
        let sock = PacketSocket::open("a0");
        for seq in 0..20u32 {
            sock.send(&test_frame(s0, a0, 0x0800, seq, 60));
            // Not answered: another EtherType, another destination.
            sock.send(&test_frame(s0, a0, 0x0806, 1000 + seq, 60));
            sock.send(&test_frame(
                [0x02, 0, 0, 0, 0, 0x77],
                a0,
                0x0800,
                2000 + seq,
                60,
            ));
        }
        sock.receive(20, Duration::from_secs(5), |f| f[..6] == SINK)
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(echo.id() as i32, libc::SIGINT) };
    let out = echo.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seqs: Vec<u32> = answers
        .iter()
        .map(|f| {
            assert_eq!(&f[6..12], &s0, "answers come from the guest's MAC");
            test_frame_seq(f, 0x0800).expect("an IPv4 answer")
        })
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (0..20).collect::<Vec<_>>(),
        "every IPv4 frame for s0 answered once"
    );
    assert!(
        stdout.contains("answered 20 frames on s0 (0 failed)"),
        "only the IPv4 frames for s0 are answered: {stdout}"
    );
    assert_eq!(sw.xdp_prog_id("s0"), None, "echo detaches on Ctrl-C");
    a.dataplane_ok(&["detach", "--iface", "a0"]);
}
