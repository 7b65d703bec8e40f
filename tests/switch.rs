//! The userspace switch on real veths: hosts in their own namespaces,
//! connected only through AF_XDP ports of `dataplane run` in a switch
//! namespace.
//!
//! ```text
//!  a: a0 10.77.1.1 ── sa ┐
//!  b: b0 10.77.1.2 ── sb ├ sw (dataplane run)
//!  c: c0 10.77.1.3 ── sc ┘
//! ```

mod harness;

use std::time::Duration;

use harness::{
    collect_test_frames, distinct, mac_of, ping, privileged, NetNs, RunningSwitch, Star,
};

/// `n` hosts on 10.77.1.0/24 around the switch namespace.
fn hosts(tag: &str, n: usize) -> Star {
    harness::star(tag, n, 1, false)
}

/// `n` 64-byte test frames from `ifname` to `dst`, paced.
fn send_paced(ns: &NetNs, ifname: &str, dst: [u8; 6], n: u32) {
    harness::send_test_stream(ns, ifname, dst, n, 64);
}

fn assert_clean_shutdown(h: &Star, sw: RunningSwitch, ifaces: &[&str]) -> String {
    let (out, frames) = sw.stop_accounted();
    assert_eq!(
        frames.in_tx_rings, 0,
        "after traffic stops every UMEM frame is free or a receive buffer:\n{out}"
    );
    for i in ifaces {
        assert_eq!(h.sw.xdp_prog_id(i), None, "steer left attached on {i}");
        assert!(!h.sw.pin_dir(i).exists(), "pins left for {i}");
    }
    out
}

#[test]
fn two_hosts_ping_and_a_udp_stream_without_loss() {
    if !privileged("two_hosts_ping_and_a_udp_stream_without_loss") {
        return;
    }
    let h = hosts("sw2", 2);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa", "--port", "afxdp:sb"]);
    assert!(
        ping(a, "10.77.1.2", 5),
        "ping a -> b through the switch:\n{}",
        sw.output()
    );
    assert!(ping(b, "10.77.1.1", 3), "ping b -> a through the switch");

    const N: u32 = 5000;
    let (rx, ready) = collect_test_frames(b, "b0", N as usize, Duration::from_secs(10));
    ready.recv().unwrap();
    send_paced(a, "a0", mac_of(b, "b0"), N);
    let got = distinct(rx.join().unwrap());
    assert_eq!(
        got.len(),
        N as usize,
        "lost {} of {N} frames",
        N as usize - got.len()
    );
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    // bind=auto (the default) on veth, which has no zero-copy: copy mode,
    // on the PMD's shared UMEM.
    let ports: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "ports", "--json"])).unwrap();
    for p in ports.as_array().unwrap() {
        assert_eq!(p["afxdp_mode"], "copy", "{p}");
    }

    let out = assert_clean_shutdown(&h, sw, &["sa", "sb"]);
    assert!(out.contains("afxdp:sa"), "{out}");
}

#[test]
fn unknown_destination_floods_learned_goes_to_one_port() {
    if !privileged("unknown_destination_floods_learned_goes_to_one_port") {
        return;
    }
    let h = hosts("flood", 3);
    let (a, b, c) = (&h.hosts[0], &h.hosts[1], &h.hosts[2]);
    let sw = RunningSwitch::start(
        &h.sw,
        &[
            "--port", "afxdp:sa", "--port", "afxdp:sb", "--port", "afxdp:sc",
        ],
    );
    let (mac_a, mac_b) = (mac_of(a, "a0"), mac_of(b, "b0"));

    // b has not sent anything: frames to it are unknown unicast, flooded.
    let (at_b, rb) = collect_test_frames(b, "b0", 20, Duration::from_secs(3));
    let (at_c, rc) = collect_test_frames(c, "c0", 20, Duration::from_secs(3));
    rb.recv().unwrap();
    rc.recv().unwrap();
    send_paced(a, "a0", mac_b, 20);
    assert_eq!(distinct(at_b.join().unwrap()).len(), 20, "flooded to b");
    assert_eq!(distinct(at_c.join().unwrap()).len(), 20, "flooded to c");

    // b speaks once: the switch learns where b is.
    send_paced(b, "b0", mac_a, 1);
    std::thread::sleep(Duration::from_millis(100));
    let (at_b, rb) = collect_test_frames(b, "b0", 30, Duration::from_secs(3));
    let (at_c, rc) = collect_test_frames(c, "c0", 30, Duration::from_secs(2));
    rb.recv().unwrap();
    rc.recv().unwrap();
    send_paced(a, "a0", mac_b, 30);
    assert_eq!(
        distinct(at_b.join().unwrap()).len(),
        30,
        "learned: all to b"
    );
    assert_eq!(at_c.join().unwrap().len(), 0, "learned: nothing to c");

    // The FDB is visible on demand (SIGUSR1).
    sw.signal(libc::SIGUSR1);
    let fdb_shown = harness::wait_for(Duration::from_secs(3), || {
        sw.output().contains("FDB (").then_some(())
    });
    assert!(fdb_shown.is_some(), "{}", sw.output());
    let out = sw.output();
    let mac_b_text = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac_b[0], mac_b[1], mac_b[2], mac_b[3], mac_b[4], mac_b[5]
    );
    assert!(
        out.lines()
            .any(|l| l.contains(&mac_b_text) && l.contains("afxdp:sb")),
        "FDB should show b on afxdp:sb:\n{out}"
    );
    assert_clean_shutdown(&h, sw, &["sa", "sb", "sc"]);
}

#[test]
fn vlans_isolate_access_ports() {
    if !privileged("vlans_isolate_access_ports") {
        return;
    }
    let h = hosts("vlan", 3);
    let (a, c) = (&h.hosts[0], &h.hosts[2]);
    let sw = RunningSwitch::start(
        &h.sw,
        &[
            "--port",
            "afxdp:sa,vlan=10",
            "--port",
            "afxdp:sb,vlan=10",
            "--port",
            "afxdp:sc,vlan=20",
        ],
    );
    assert!(ping(a, "10.77.1.2", 3), "same VLAN: a reaches b");
    assert!(!ping(a, "10.77.1.3", 2), "other VLAN: a must not reach c");
    let (at_c, rc) = collect_test_frames(c, "c0", 10, Duration::from_secs(2));
    rc.recv().unwrap();
    send_paced(a, "a0", [0xff; 6], 10);
    assert_eq!(
        at_c.join().unwrap().len(),
        0,
        "broadcast leaked across VLANs"
    );
    assert_clean_shutdown(&h, sw, &["sa", "sb", "sc"]);
}

#[test]
fn frames_the_policy_does_not_select_reach_the_switch_namespace_kernel() {
    if !privileged("frames_the_policy_does_not_select_reach_the_switch_namespace_kernel") {
        return;
    }
    let h = hosts("policy", 2);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    // Management address on the switch's own interface.
    h.sw.ip(&["addr", "add", "10.77.1.254/24", "dev", "sa"]);
    // Only the test EtherType goes to the switch; the rest stays the kernel's.
    h.sw.dataplane_ok(&["attach", "--iface", "sa", "--match", "ethertype=0x88b5"]);
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa", "--port", "afxdp:sb"]);
    assert!(
        ping(a, "10.77.1.254", 3),
        "the switch namespace's kernel still answers on sa"
    );
    let (at_b, rb) = collect_test_frames(b, "b0", 100, Duration::from_secs(5));
    rb.recv().unwrap();
    send_paced(a, "a0", mac_of(b, "b0"), 100);
    assert_eq!(
        distinct(at_b.join().unwrap()).len(),
        100,
        "selected frames are switched"
    );
    let (ok, out) = sw.stop();
    assert!(ok, "{out}");
    // steer was attached by the user, so `run` leaves it (with its policy).
    assert!(
        h.sw.xdp_prog_id("sa").is_some(),
        "user's attachment must stay"
    );
    h.sw.dataplane_ok(&["detach", "--iface", "sa"]);
}

#[test]
fn idle_switch_sleeps_instead_of_spinning() {
    if !privileged("idle_switch_sleeps_instead_of_spinning") {
        return;
    }
    let h = hosts("idle", 2);
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa", "--port", "afxdp:sb"]);
    assert!(ping(&h.hosts[0], "10.77.1.2", 2), "switch forwards");
    std::thread::sleep(Duration::from_millis(500));
    // The PMD thread must be asleep in poll(2) nearly every time we look.
    let mut sleeping = 0;
    let samples = 40;
    let t0 = harness::cpu_ticks(sw.pid());
    for _ in 0..samples {
        let states = harness::thread_states(sw.pid(), "dataplane-pmd");
        assert_eq!(states.len(), 1, "one PMD thread");
        if states[0] == 'S' {
            sleeping += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ticks = harness::cpu_ticks(sw.pid()) - t0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    eprintln!(
        "idle switch: PMD asleep in {sleeping}/{samples} samples; process CPU {:.2}% of a core over 2 s",
        ticks as f64 / hz / 2.0 * 100.0
    );
    assert!(
        sleeping >= samples * 9 / 10,
        "PMD asleep in only {sleeping}/{samples} samples"
    );
    assert_clean_shutdown(&h, sw, &["sa", "sb"]);
}

#[test]
fn busy_poll_pmd_keeps_running() {
    if !privileged("busy_poll_pmd_keeps_running") {
        return;
    }
    let h = hosts("busy", 2);
    let sw = RunningSwitch::start(
        &h.sw,
        // With the busy-poll socket options too (accepted on veth).
        &[
            "--busy-poll",
            "--socket-busy-poll",
            "20",
            "--port",
            "afxdp:sa",
            "--port",
            "afxdp:sb",
        ],
    );
    assert!(
        ping(&h.hosts[0], "10.77.1.2", 2),
        "switch forwards with busy polling"
    );
    let running = (0..20)
        .filter(|_| {
            std::thread::sleep(Duration::from_millis(20));
            harness::thread_states(sw.pid(), "dataplane-pmd") == vec!['R']
        })
        .count();
    assert!(
        running >= 15,
        "busy-poll PMD running in only {running}/20 samples"
    );
    assert_clean_shutdown(&h, sw, &["sa", "sb"]);
}

#[test]
fn a_killed_switch_is_cleaned_up_by_the_next_run() {
    if !privileged("a_killed_switch_is_cleaned_up_by_the_next_run") {
        return;
    }
    let h = hosts("kill9", 2);
    let args = ["--port", "afxdp:sa", "--port", "afxdp:sb"];
    let first = RunningSwitch::start(&h.sw, &args);
    assert!(ping(&h.hosts[0], "10.77.1.2", 2));
    // A second switch on the same ports is refused while the first lives.
    let second =
        h.sw.dataplane(&["run", "--port", "afxdp:sa", "--port", "afxdp:sb"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        err.contains("in use by another running dataplane switch"),
        "{err}"
    );
    let fast = |sw: &NetNs| {
        harness::steer_counter(sw, "sa", "fast_path")
            + harness::steer_counter(sw, "sa", "fast_path_tc")
    };
    assert!(ping(&h.hosts[0], "10.77.1.2", 3));
    assert!(fast(&h.sw) > 0, "the pings took the fast path");
    first.signal(libc::SIGKILL);
    drop(first);
    assert!(
        h.sw.xdp_prog_id("sa").is_some(),
        "SIGKILL leaves steer attached"
    );
    // Its fast path is leased: once the lease runs out (3 s), nothing is
    // forwarded in the kernel for a switch that no longer runs.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let before = fast(&h.sw);
    assert!(
        !ping(&h.hosts[0], "10.77.1.2", 2),
        "no switch, no forwarding, not even in the kernel"
    );
    assert_eq!(fast(&h.sw), before, "the dead switch's fast path is off");

    let next = RunningSwitch::start(&h.sw, &args);
    assert!(
        next.output()
            .contains("did not exit cleanly; taking it over"),
        "{}",
        next.output()
    );
    assert!(ping(&h.hosts[0], "10.77.1.2", 2), "the new switch forwards");
    // The dead run's control socket was replaced by this run's.
    let ports = h.sw.dataplane_ok(&["show", "ports"]);
    assert!(
        ports.contains("afxdp:sa") && ports.contains("up"),
        "{ports}"
    );
    // This run took the attachments over, so it detaches them on exit.
    assert_clean_shutdown(&h, next, &["sa", "sb"]);
}

#[test]
fn two_pmd_threads_switch_between_their_ports() {
    if !privileged("two_pmd_threads_switch_between_their_ports") {
        return;
    }
    // Ports go round robin: sa and sc on PMD 0 (CPU 0), sb on PMD 1 (CPU 1).
    let h = hosts("pmd2", 3);
    let (a, b, c) = (&h.hosts[0], &h.hosts[1], &h.hosts[2]);
    let sw = RunningSwitch::start(
        &h.sw,
        &[
            "--cores", "0,1", "--port", "afxdp:sa", "--port", "afxdp:sb", "--port", "afxdp:sc",
        ],
    );
    assert!(sw.output().contains("pmds=2"), "{}", sw.output());
    let pid = sw.pid();
    assert_eq!(harness::thread_states(pid, "dataplane-pmd").len(), 1);
    assert_eq!(harness::thread_states(pid, "dataplane-pmd1").len(), 1);
    assert!(
        ping(a, "10.77.1.2", 3),
        "across PMDs (a on PMD 0, b on PMD 1)"
    );
    assert!(ping(a, "10.77.1.3", 3), "within PMD 0");
    assert!(ping(b, "10.77.1.3", 3), "across PMDs the other way");

    const N: u32 = 3000;
    let (at_b, ready) = collect_test_frames(b, "b0", N as usize, Duration::from_secs(10));
    ready.recv().unwrap();
    send_paced(a, "a0", mac_of(b, "b0"), N);
    assert_eq!(
        distinct(at_b.join().unwrap()).len(),
        N as usize,
        "a -> b across PMDs without loss"
    );

    // `show pmd` says which PMD polls which port, and where the work went
    // (the PMDs publish their cycles twice a second).
    std::thread::sleep(Duration::from_millis(1100));
    let pmds: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "pmd", "--json"])).unwrap();
    let polled = |pmd: usize| -> Vec<String> {
        pmds[pmd]["rxqs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["port"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(polled(0), ["afxdp:sa", "afxdp:sc"], "{pmds}");
    assert_eq!(polled(1), ["afxdp:sb"], "{pmds}");
    assert_eq!(
        (pmds[0]["cpu"].as_u64(), pmds[1]["cpu"].as_u64()),
        (Some(0), Some(1))
    );
    let sa = &pmds[0]["rxqs"][0];
    assert_eq!(sa["queues"], serde_json::json!([0]), "{pmds}");
    assert!(
        sa["busy_cycles"].as_u64() > Some(0),
        "a's frames came in on sa: {pmds}"
    );
    let usage: f64 = (0..2)
        .filter_map(|i| pmds[0]["rxqs"][i]["usage"].as_f64())
        .sum();
    assert!(
        usage > 0.0 && usage <= 1.0 + 1e-9,
        "parts of PMD 0's work: {pmds}"
    );
    let text = h.sw.dataplane_ok(&["show", "pmd"]);
    assert!(
        text.contains("PMD 1 (CPU 1)") && text.contains("afxdp:sb"),
        "{text}"
    );

    // A broadcast from b (PMD 1) reaches both hosts on PMD 0.
    let (at_a, ra) = collect_test_frames(a, "a0", 20, Duration::from_secs(3));
    let (at_c, rc) = collect_test_frames(c, "c0", 20, Duration::from_secs(3));
    ra.recv().unwrap();
    rc.recv().unwrap();
    send_paced(b, "b0", [0xff; 6], 20);
    assert_eq!(distinct(at_a.join().unwrap()).len(), 20);
    assert_eq!(distinct(at_c.join().unwrap()).len(), 20);
    let out = assert_clean_shutdown(&h, sw, &["sa", "sb", "sc"]);
    // Two UMEMs of 8192 frames, all accounted for.
    assert!(out.contains("frames: 16384 total"), "{out}");
}

#[test]
fn a_port_going_down_or_away_does_not_stop_the_others() {
    if !privileged("a_port_going_down_or_away_does_not_stop_the_others") {
        return;
    }
    let h = hosts("fault", 3);
    let (a, c) = (&h.hosts[0], &h.hosts[2]);
    let sw = RunningSwitch::start(
        &h.sw,
        &[
            "--port", "afxdp:sa", "--port", "afxdp:sb", "--port", "afxdp:sc",
        ],
    );
    assert!(ping(a, "10.77.1.3", 2), "a -> c before");
    h.sw.ip(&["link", "set", "sc", "down"]);
    assert!(ping(a, "10.77.1.2", 10), "a -> b while sc is down");
    assert!(!ping(c, "10.77.1.1", 1), "nothing crosses a down port");
    h.sw.ip(&["link", "set", "sc", "up"]);
    let back = harness::wait_for(Duration::from_secs(5), || {
        ping(a, "10.77.1.3", 1).then_some(())
    });
    assert!(back.is_some(), "sc forwards again once up");
    h.sw.ip(&["link", "del", "sc"]);
    assert!(ping(a, "10.77.1.2", 10), "a -> b after sc was deleted");
    // The switch still exits cleanly and detaches from what is left.
    sw.stop_accounted();
    for i in ["sa", "sb"] {
        assert_eq!(h.sw.xdp_prog_id(i), None, "steer left on {i}");
    }
}

#[test]
fn a_killed_switch_whose_interface_was_recreated_comes_back_working() {
    if !privileged("a_killed_switch_whose_interface_was_recreated_comes_back_working") {
        return;
    }
    // A container restarts while no switch runs: its veth is new, the
    // pins of the killed switch's steer on the old one are stale.
    for kind in ["afxdp", "veth"] {
        let mut h = hosts(&format!("kill9r{}", &kind[..1]), 2);
        let (pa, pb) = (format!("{kind}:sa"), format!("{kind}:sb"));
        let first = RunningSwitch::start(&h.sw, &["--port", &pa, "--port", &pb]);
        assert!(ping(&h.hosts[0], "10.77.1.2", 2), "{kind}");
        first.signal(libc::SIGKILL);
        drop(first);
        h.sw.ip(&["link", "del", "sa"]);
        let (a, sw) = (h.hosts[0].clone(), h.sw.clone());
        h.topo.veth((&a, "a0"), (&sw, "sa"));
        a.ip(&["addr", "add", "10.77.1.1/24", "dev", "a0"]);
        let next = RunningSwitch::start(&h.sw, &["--port", &pa, "--port", &pb]);
        assert!(
            ping(&h.hosts[0], "10.77.1.2", 3),
            "{kind}: the re-created interface forwards:\n{}",
            next.output()
        );
        let (ok, out) = next.stop();
        assert!(ok, "{out}");
    }
}

/// Port security: a port with `max_macs=3` that sends from 50 source
/// addresses has at most 3 of them learned, its frames are still
/// forwarded, and the other port learns as usual.
#[test]
fn a_port_with_max_macs_learns_no_more_than_its_limit() {
    if !privileged("a_port_with_max_macs_learns_no_more_than_its_limit") {
        return;
    }
    let h = hosts("maclim", 2);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(
        &h.sw,
        &["--port", "afxdp:sa,max_macs=3", "--port", "afxdp:sb"],
    );
    let dst = mac_of(b, "b0");
    const N: u32 = 50;
    let (rx, ready) = collect_test_frames(b, "b0", N as usize, Duration::from_secs(10));
    ready.recv().unwrap();
    let frames = (0..N).map(move |seq| {
        let src = [2, 0x55, 0, 0, 0, seq as u8];
        harness::test_frame(dst, src, harness::TEST_ETHERTYPE, seq, 64)
    });
    harness::send_paced(a, "a0", frames);
    let got = distinct(rx.join().unwrap());
    assert_eq!(
        got.len(),
        N as usize,
        "frames from unlearned sources still forwarded"
    );
    assert!(
        ping(b, "10.77.1.1", 3),
        "b -> a still works (flooded if need be)"
    );

    let fdb: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "fdb", "--json"])).unwrap();
    let on = |port: &str| {
        fdb.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["port"].as_str() == Some(port))
            .count()
    };
    assert!(
        (1..=3).contains(&on("afxdp:sa")),
        "afxdp:sa learned {} addresses with max_macs=3: {fdb}",
        on("afxdp:sa")
    );
    assert_eq!(on("afxdp:sb"), 1, "b0 learned on sb: {fdb}");
    let stats: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["stats", "--json"])).unwrap();
    let refused = stats["learning"]["port_limit"].as_u64().unwrap_or(0);
    assert!(refused >= 47, "sources over the limit are counted: {stats}");
    let config = h.sw.dataplane_ok(&["show", "config"]);
    let parsed = dataplane::daemon::config::RunConfig::from_toml(&config, "show config").unwrap();
    assert_eq!(parsed.ports[0].max_macs, Some(3), "{config}");
    assert_clean_shutdown(&h, sw, &["sa", "sb"]);
}

/// `n` frames from `n` source MACs counting up from `src` to b0 (its MAC
/// `dst`), out of a0 at a paced rate (`dataplane gen --flows --vary src`).
fn send_from_many_sources(a: &NetNs, src: &str, dst: [u8; 6], n: usize) {
    let dst = dst
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let out = a.dataplane_ok(&[
        "gen",
        "--iface",
        "a0",
        "--src-mac",
        src,
        "--dst-mac",
        &dst,
        "--flows",
        &n.to_string(),
        "--vary",
        "src",
        "--count",
        &n.to_string(),
        "--rate",
        "20000",
        "--json",
    ]);
    let gen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(gen["flows"].as_u64(), Some(n as u64), "{gen}");
    assert_eq!(gen["sent"].as_u64(), Some(n as u64), "{gen}");
}

/// `stats --json` once its `learning` counters satisfy `done`, or after
/// 10 s (learning is the slow path's: wait for it, do not assume a time).
fn learning_once(sw: &NetNs, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats: serde_json::Value =
            serde_json::from_str(&sw.dataplane_ok(&["stats", "--json"])).unwrap();
        if done(&stats["learning"]) || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `dataplane gen --flows N --vary src`: N source addresses, one frame
/// each, learned by the switch's slow path from the PMD's sightings, all
/// on the port they came from.
#[test]
fn a_generator_with_many_flows_is_learned_source_by_source() {
    if !privileged("a_generator_with_many_flows_is_learned_source_by_source") {
        return;
    }
    let h = hosts("flows", 2);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa", "--port", "afxdp:sb"]);
    const N: usize = 500;
    send_from_many_sources(a, "02:66:00:00:00:00", mac_of(b, "b0"), N);
    let stats = learning_once(&h.sw, |l| l["learned"].as_u64() >= Some(N as u64));
    assert_eq!(stats["learning"]["queue_full"].as_u64(), Some(0), "{stats}");
    let fdb: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "fdb", "--json"])).unwrap();
    let learned: Vec<String> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["mac"].as_str().is_some_and(|m| m.starts_with("02:66:")))
        .map(|r| {
            assert_eq!(r["port"].as_str(), Some("afxdp:sa"), "{r}");
            r["mac"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(learned.len(), N, "every generated source learned");
    assert!(learned.contains(&"02:66:00:00:00:00".to_string()));
    assert!(learned.contains(&format!(
        "02:66:00:00:{:02x}:{:02x}",
        (N - 1) >> 8,
        (N - 1) & 0xff
    )));
    assert_clean_shutdown(&h, sw, &["sa", "sb"]);
}

/// A full table is a counted event: with room for 10 addresses, 2000 new
/// sources leave 10 learned, the rest counted as table_full (most by the
/// PMD, which stops reporting new addresses while the table is full), and
/// the frames still forwarded.
#[test]
fn a_full_table_counts_the_sources_it_cannot_learn() {
    if !privileged("a_full_table_counts_the_sources_it_cannot_learn") {
        return;
    }
    let h = hosts("full", 2);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(
        &h.sw,
        &[
            "--port",
            "afxdp:sa",
            "--port",
            "afxdp:sb",
            "--fdb-max-entries",
            "10",
        ],
    );
    const N: usize = 2000;
    let (rx, ready) = collect_test_frames(b, "b0", 1, Duration::from_secs(5));
    ready.recv().unwrap();
    send_from_many_sources(a, "02:67:00:00:00:00", [0xff; 6], N);
    let stats = learning_once(&h.sw, |l| {
        l["learned"].as_u64().unwrap_or(0) + l["table_full"].as_u64().unwrap_or(0) >= N as u64
    });
    let l = &stats["learning"];
    assert_eq!(l["learned"].as_u64(), Some(10), "{stats}");
    assert_eq!(l["table_full"].as_u64(), Some(N as u64 - 10), "{stats}");
    assert_eq!(l["queue_full"].as_u64(), Some(0), "{stats}");
    let rows = h.sw.dataplane_ok(&["show", "fdb", "--json"]);
    let fdb: serde_json::Value = serde_json::from_str(&rows).unwrap();
    assert_eq!(fdb.as_array().unwrap().len(), 10, "{rows}");
    drop(rx);
    let at_b: serde_json::Value = stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "afxdp:sb")
        .cloned()
        .unwrap();
    assert!(
        at_b["tx_packets"].as_u64().unwrap_or(0) >= N as u64,
        "every frame flooded on, learned or not: {at_b}"
    );
    assert_clean_shutdown(&h, sw, &["sa", "sb"]);
}

/// Frames larger than the 2 KiB a cross-PMD hand-off once held: with an
/// MTU of 3000 (what this test is about, so the veths are set to it) a
/// 3000-byte frame from a port of PMD 0 reaches a port of PMD 1, both ways.
#[test]
fn jumbo_frames_cross_between_pmds() {
    if !privileged("jumbo_frames_cross_between_pmds") {
        return;
    }
    let h = hosts("jumbo", 2);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    for (ns, dev) in [(a, "a0"), (&h.sw, "sa"), (&h.sw, "sb"), (b, "b0")] {
        ns.ip(&["link", "set", "dev", dev, "mtu", "3000"]);
    }
    let sw = RunningSwitch::start(
        &h.sw,
        &["--cores", "0,1", "--port", "afxdp:sa", "--port", "afxdp:sb"],
    );
    assert!(sw.output().contains("pmds=2"), "{}", sw.output());
    // Each side speaks once, so the frames below are unicast.
    assert!(ping(a, "10.77.1.2", 1), "a <-> b");
    const N: u32 = 300;
    const LEN: usize = 3000;
    for (from, dev, to, to_dev) in [(a, "a0", b, "b0"), (b, "b0", a, "a0")] {
        let (rx, ready) = collect_test_frames(to, to_dev, N as usize, Duration::from_secs(10));
        ready.recv().unwrap();
        harness::send_test_stream(from, dev, mac_of(to, to_dev), N, LEN);
        assert_eq!(
            distinct(rx.join().unwrap()).len(),
            N as usize,
            "{LEN}-byte frames {dev} -> {to_dev} across PMDs"
        );
    }
    let stats: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["stats", "--json"])).unwrap();
    for port in stats["ports"].as_array().unwrap() {
        assert_eq!(port["drops"]["policy"].as_u64(), Some(0), "{port}");
    }
    assert_clean_shutdown(&h, sw, &["sa", "sb"]);
}

/// Frames `dev` has received, from the kernel's own counters.
fn rx_packets(ns: &NetNs, dev: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "-s", "link", "show", dev])).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

/// `n` frames to `dst` out of a1 from CPU 0, then `n` from CPU 1 (so into
/// its peer's receive queue 0, then queue 1).
fn send_from_each_cpu(a: &NetNs, dst: &str, n: u64) {
    for cpu in ["0", "1"] {
        a.dataplane_ok(&[
            "gen",
            "--iface",
            "a1",
            "--dst-mac",
            dst,
            "--count",
            &n.to_string(),
            "--rate",
            "20000",
            "--cpu",
            cpu,
        ]);
    }
}

/// Waits (5 s at most) until b0 has received `total` frames in all.
fn wait_for_rx(b: &NetNs, total: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rx_packets(b, "b0") < total && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = rx_packets(b, "b0");
    assert!(
        got >= total,
        "every frame from both queues reached b0: {got} of {total}"
    );
}

/// A port's receive queues are the unit of work: `afxdp:s1,queues=0+1` on
/// a switch with two PMDs has queue 0 polled by PMD 0 and queue 1 by PMD 1
/// (`show pmd`). A veth hands an XDP frame to the receive queue of the CPU
/// that sends it, so the generator pinned to CPU 0, then to CPU 1, feeds
/// one queue, then the other: every frame reaches b0 either way, and each
/// PMD's part of the port did work.
#[test]
fn a_ports_receive_queues_are_spread_over_pmds() {
    if !privileged("a_ports_receive_queues_are_spread_over_pmds") {
        return;
    }
    let h = hosts("rxq", 2);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    a.ip(&[
        "link",
        "add",
        "a1",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "s1",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "netns",
        h.sw.name(),
    ]);
    a.ip(&["link", "set", "a1", "up"]);
    h.sw.ip(&["link", "set", "s1", "up"]);
    let sw = RunningSwitch::start(
        &h.sw,
        &[
            "--cores",
            "0,1",
            "--port",
            "afxdp:s1,queues=0+1",
            "--port",
            "afxdp:sb",
        ],
    );
    let pmds: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "pmd", "--json"])).unwrap();
    let rxqs = |pmds: &serde_json::Value, pmd: usize| -> Vec<(String, serde_json::Value)> {
        pmds[pmd]["rxqs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| (q["port"].as_str().unwrap().to_string(), q["queues"].clone()))
            .collect()
    };
    assert_eq!(
        rxqs(&pmds, 0),
        [("afxdp:s1".into(), serde_json::json!([0]))],
        "{pmds}"
    );
    assert_eq!(
        rxqs(&pmds, 1),
        [
            ("afxdp:s1".into(), serde_json::json!([1])),
            ("afxdp:sb".into(), serde_json::json!([0]))
        ],
        "{pmds}"
    );
    let dst = mac_of(b, "b0")
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let before = rx_packets(b, "b0");
    const N: u64 = 500;
    send_from_each_cpu(a, &dst, N);
    wait_for_rx(b, before + 2 * N);
    // The PMDs publish their cycles twice a second.
    std::thread::sleep(Duration::from_millis(1100));
    let pmds: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "pmd", "--json"])).unwrap();
    for pmd in [0, 1] {
        assert!(
            pmds[pmd]["rxqs"][0]["busy_cycles"].as_u64() > Some(0),
            "PMD {pmd} polled its queue of s1 and found frames: {pmds}"
        );
    }
    // Taken away part by part, and closed: nothing of s1 stays.
    h.sw.dataplane_ok(&["port", "del", "afxdp:s1"]);
    assert_eq!(h.sw.xdp_prog_id("s1"), None, "steer detached from s1");
    let pmds: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "pmd", "--json"])).unwrap();
    assert_eq!(rxqs(&pmds, 0), [], "{pmds}");
    assert_eq!(
        rxqs(&pmds, 1),
        [("afxdp:sb".into(), serde_json::json!([0]))]
    );
    // Back again, pinned the other way round (`pmds=`, as OVS's
    // pmd-rxq-affinity): queue 0 on PMD 1, queue 1 on PMD 0.
    h.sw.dataplane_ok(&["port", "add", "afxdp:s1,queues=0+1,pmds=1+0"]);
    let pmds: serde_json::Value =
        serde_json::from_str(&h.sw.dataplane_ok(&["show", "pmd", "--json"])).unwrap();
    assert_eq!(
        rxqs(&pmds, 0),
        [("afxdp:s1".into(), serde_json::json!([1]))],
        "{pmds}"
    );
    assert!(
        rxqs(&pmds, 1).contains(&("afxdp:s1".into(), serde_json::json!([0]))),
        "{pmds}"
    );
    send_from_each_cpu(a, &dst, N);
    wait_for_rx(b, before + 4 * N);
    let out = assert_clean_shutdown(&h, sw, &["s1", "sb"]);
    assert!(out.contains("0 unaccounted"), "{out}");
}

/// Entries of the map `name` steer pinned for `iface`, as the kernel has it.
fn pinned_map_entries(sw: &NetNs, iface: &str, name: &str) -> u32 {
    aya::maps::MapData::from_pin(sw.pin_dir(iface).join(name))
        .unwrap_or_else(|e| panic!("opening {iface}'s pinned {name}: {e}"))
        .info()
        .unwrap()
        .max_entries()
}

/// `--max-ports` and `--fdb-max-entries` size the switch and each port's
/// maps in the kernel; a port beyond the slots is refused with the fix.
#[test]
fn port_slots_and_fdb_size_set_the_kernel_maps() {
    if !privileged("port_slots_and_fdb_size_set_the_kernel_maps") {
        return;
    }
    let h = hosts("slots", 3);
    let sw = RunningSwitch::start(
        &h.sw,
        &[
            "--port",
            "afxdp:sa",
            "--port",
            "afxdp:sb",
            "--max-ports",
            "2",
            "--fdb-max-entries",
            "1000",
        ],
    );
    for iface in ["sa", "sb"] {
        assert_eq!(pinned_map_entries(&h.sw, iface, "PORTS"), 2, "{iface}");
        assert_eq!(pinned_map_entries(&h.sw, iface, "EGRESS"), 2, "{iface}");
        assert_eq!(pinned_map_entries(&h.sw, iface, "FDB"), 1000, "{iface}");
        // At least the compiled 64, more if the interface had more queues.
        assert_eq!(pinned_map_entries(&h.sw, iface, "XSKS"), 64, "{iface}");
    }
    let refused = h.sw.dataplane(&["port", "add", "afxdp:sc"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a third port on 2 slots: {err}");
    assert!(
        err.contains("no free port slot") && err.contains("--max-ports"),
        "{err}"
    );
    assert!(
        ping(&h.hosts[0], "10.77.1.2", 2),
        "the two ports still switch"
    );
    assert_clean_shutdown(&h, sw, &["sa", "sb"]);
}
