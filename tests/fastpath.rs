//! The in-kernel fast path: learned unicast between AF_XDP ports is
//! redirected by `steer` in the kernel, and it never delivers a frame
//! anywhere the userspace switch would not.
//!
//! ```text
//!  a: a0 ── sa ┐
//!  b: b0 ── sb ├ sw (dataplane run)
//!  c: c0 ── sc ┘
//! ```
//! The hosts' veths have GRO on, which a veth needs to accept redirected
//! frames (the switch probes for it).

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{
    collect_test_frames, mac_of, privileged, steer_counter, test_frame, NetNs, RunningSwitch, Star,
    TEST_ETHERTYPE,
};
use serde_json::Value;

/// `n` hosts on 10.77.2.0/24 around the switch namespace. `gro`: GRO on
/// the hosts' veths, which makes them take XDP-redirected frames (only the
/// tests about that branch of the fast path set it; a container's veth at
/// its defaults has it off and gets the tc hand-off).
fn hosts(tag: &str, n: usize, gro: bool) -> Star {
    harness::star(tag, n, 2, gro)
}

/// Frames `ifname`'s steer forwarded in the kernel, by either branch.
fn fast_frames(sw: &NetNs, ifname: &str) -> u64 {
    steer_counter(sw, ifname, "fast_path") + steer_counter(sw, ifname, "fast_path_tc")
}

/// Sends `n` test frames from `ns`/`ifname` with explicit addresses,
/// numbered from `first`, paced; then lets learning (and its mirror into
/// the kernel) settle before the next step.
fn send(ns: &NetNs, ifname: &str, src: [u8; 6], dst: [u8; 6], first: u32, n: u32) {
    let frames = (first..first + n).map(move |seq| test_frame(dst, src, TEST_ETHERTYPE, seq, 64));
    harness::send_paced(ns, ifname, frames);
    std::thread::sleep(Duration::from_millis(150));
}

/// Like [`send`], with an 802.1Q tag.
fn send_tagged(ns: &NetNs, ifname: &str, src: [u8; 6], dst: [u8; 6], vid: u16, first: u32, n: u32) {
    let frames = (first..first + n)
        .map(move |seq| harness::tagged(&test_frame(dst, src, TEST_ETHERTYPE, seq, 64), vid));
    harness::send_paced(ns, ifname, frames);
    std::thread::sleep(Duration::from_millis(150));
}

#[test]
fn learned_unicast_takes_the_fast_path_without_loss() {
    if !privileged("learned_unicast_takes_the_fast_path_without_loss") {
        return;
    }
    // Hosts at their defaults: the egress veths take no XDP-redirected
    // frames, so the fast path hands every frame to tc.
    learned_unicast_fast("fast", false, "fast_path_tc");
}

#[test]
fn learned_unicast_to_peers_with_gro_is_redirected_by_xdp() {
    if !privileged("learned_unicast_to_peers_with_gro_is_redirected_by_xdp") {
        return;
    }
    // The XDP-redirect branch: peers that take XDP frames (GRO on).
    learned_unicast_fast("fastgro", true, "fast_path");
}

/// Learned unicast a -> b: every frame arrives once, all of them counted
/// under `branch` of sa's steer, none in userspace.
fn learned_unicast_fast(tag: &str, gro: bool, branch: &str) {
    let h = hosts(tag, 2, gro);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa", "--port", "afxdp:sb"]);
    let expect = if gro {
        "xdp_redirect=2 tc_handoff=0"
    } else {
        "xdp_redirect=0 tc_handoff=2"
    };
    assert!(sw.output().contains(expect), "{expect}:\n{}", sw.output());
    let (mac_a, mac_b) = (mac_of(a, "a0"), mac_of(b, "b0"));
    // Both speak once: both are learned (and mirrored into the kernel).
    send(a, "a0", mac_a, [0xff; 6], 1_000_000, 1);
    send(b, "b0", mac_b, mac_a, 1_000_001, 1);

    let fast_before = steer_counter(&h.sw, "sa", branch);
    let redirected_before = steer_counter(&h.sw, "sa", "redirected");
    const N: u32 = 5000;
    let (rx, ready) = collect_test_frames(b, "b0", N as usize, Duration::from_secs(10));
    ready.recv().unwrap();
    send(a, "a0", mac_a, mac_b, 0, N);
    let mut got = rx.join().unwrap();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "every frame arrives once");
    let fast = steer_counter(&h.sw, "sa", branch) - fast_before;
    let slow = steer_counter(&h.sw, "sa", "redirected") - redirected_before;
    assert_eq!(
        fast, N as u64,
        "all {N} took the fast path's {branch} ({slow} went to userspace)"
    );
    assert_eq!(slow, 0);
    // The run reports fast-path frames per port too.
    sw.stop_accounted();
    assert_eq!(h.sw.xdp_prog_id("sa"), None, "steer detached at exit");
}

/// Deliveries of one traffic script: host -> sorted (sequence, VLAN tag).
type Deliveries = BTreeMap<String, Vec<(u32, Option<u16>)>>;

/// The same traffic, step by step, with sequence ranges per step; returns
/// what each host received. `b_tag`: host b sends its frames tagged with
/// this VLAN (b sits on a trunk), else untagged.
fn play_script(h: &Star, b_tag: Option<u16>) -> Deliveries {
    let names = ["a", "b", "c"];
    let macs: Vec<[u8; 6]> = h
        .hosts
        .iter()
        .zip(names)
        .map(|(ns, n)| mac_of(ns, &format!("{n}0")))
        .collect();
    let (a, b, c) = (&h.hosts[0], &h.hosts[1], &h.hosts[2]);
    let keep: fn(&[u8]) -> bool = |f| vlan_and_seq(f).is_some();
    let collectors: Vec<_> = h
        .hosts
        .iter()
        .zip(names)
        .map(|(ns, n)| {
            let (handle, ready) = harness::collect_frames(
                ns,
                &format!("{n}0"),
                100_000,
                Duration::from_secs(6),
                keep,
            );
            ready.recv().unwrap();
            handle
        })
        .collect();
    // b's frames carry b_tag (a trunk host); everyone else's are untagged.
    let send_b = |src: [u8; 6], dst: [u8; 6], first: u32, n: u32| match b_tag {
        None => send(b, "b0", src, dst, first, n),
        Some(vid) => send_tagged(b, "b0", src, dst, vid, first, n),
    };
    let unknown = [0x02, 0xee, 0, 0, 0, 1];
    // 1. a and b introduce themselves (broadcast): learned.
    send(a, "a0", macs[0], [0xff; 6], 0, 1);
    send_b(macs[1], [0xff; 6], 10, 1);
    // 2. learned unicast both ways (fast path when enabled).
    send(a, "a0", macs[0], macs[1], 100, 200);
    send_b(macs[1], macs[0], 300, 200);
    // 3. broadcast and unknown unicast: flooded by userspace.
    send(a, "a0", macs[0], [0xff; 6], 500, 20);
    send(a, "a0", macs[0], unknown, 600, 20);
    // 4. c, not yet learned, sends to a: slow path learns c.
    send(c, "c0", macs[2], macs[0], 700, 50);
    // 5. b's address moves to c's port; a -> b must now reach c.
    send(c, "c0", macs[1], macs[0], 800, 1);
    send(a, "a0", macs[0], macs[1], 900, 100);
    // 6. b comes back on its own port.
    send_b(macs[1], macs[0], 1100, 1);
    send(a, "a0", macs[0], macs[1], 1200, 100);
    names
        .iter()
        .zip(collectors)
        .map(|(n, handle)| {
            let mut seen: Vec<(u32, Option<u16>)> = handle
                .join()
                .unwrap()
                .iter()
                .filter_map(|f| vlan_and_seq(f))
                .map(|(vlan, seq)| (seq, vlan))
                .collect();
            seen.sort_unstable();
            (n.to_string(), seen)
        })
        .collect()
}

/// Plays the script with and without the fast path on ports `ports` and
/// requires the same deliveries; returns them.
fn compare_paths(tag: &str, ports: &[&str], b_tag: Option<u16>) -> Deliveries {
    let mut results = Vec::new();
    for fast in [false, true] {
        let h = hosts(&format!("{tag}{}", if fast { "f" } else { "s" }), 3, false);
        let mut args: Vec<&str> = ports.iter().flat_map(|p| ["--port", p]).collect();
        if !fast {
            args.push("--no-fast-path");
        }
        let sw = RunningSwitch::start(&h.sw, &args);
        let deliveries = play_script(&h, b_tag);
        let fast_frames: u64 = ["sa", "sb", "sc"]
            .iter()
            .map(|i| fast_frames(&h.sw, i))
            .sum();
        sw.stop_accounted();
        if fast {
            assert!(
                fast_frames >= 400,
                "the fast path carried the learned unicast: {fast_frames}"
            );
        } else {
            assert_eq!(
                fast_frames, 0,
                "--no-fast-path keeps everything in userspace"
            );
        }
        results.push(deliveries);
    }
    let (slow, fast) = (&results[0], &results[1]);
    assert_eq!(
        slow, fast,
        "the fast path delivered differently from the userspace switch"
    );
    results.pop().unwrap()
}

fn has(d: &Deliveries, host: &str, seq: u32, vlan: Option<u16>) -> bool {
    d[host].binary_search(&(seq, vlan)).is_ok()
}

#[test]
fn fast_path_delivers_exactly_what_the_userspace_switch_delivers() {
    if !privileged("fast_path_delivers_exactly_what_the_userspace_switch_delivers") {
        return;
    }
    let d = compare_paths("cmp", &["afxdp:sa", "afxdp:sb", "afxdp:sc"], None);
    // Sanity of the script itself: what the userspace switch does.
    assert!(
        has(&d, "b", 100, None) && has(&d, "a", 300, None),
        "learned unicast"
    );
    assert!(
        has(&d, "b", 500, None) && has(&d, "c", 500, None),
        "broadcast floods"
    );
    assert!(
        has(&d, "c", 900, None) && !has(&d, "b", 900, None),
        "after the move, b's frames go to c"
    );
    assert!(
        has(&d, "b", 1200, None) && !has(&d, "c", 1200, None),
        "and back"
    );
}

#[test]
fn fast_path_delivers_what_the_userspace_switch_delivers_across_vlan_modes() {
    if !privileged("fast_path_delivers_what_the_userspace_switch_delivers_across_vlan_modes") {
        return;
    }
    // a, c: access ports of VLAN 10; b: a trunk sending VLAN 10 tagged.
    let d = compare_paths(
        "cmv",
        &[
            "afxdp:sa,vlan=10",
            "afxdp:sb,trunk=10+20",
            "afxdp:sc,vlan=10",
        ],
        Some(10),
    );
    assert!(
        has(&d, "b", 100, Some(10)),
        "a -> b leaves the trunk tagged"
    );
    assert!(
        has(&d, "a", 300, None),
        "b -> a leaves the access port untagged"
    );
    assert!(
        has(&d, "c", 900, None) && !has(&d, "b", 900, Some(10)),
        "the move is followed"
    );
}

#[test]
fn container_ports_deliver_what_the_userspace_switch_delivers_across_vlan_modes() {
    if !privileged("container_ports_deliver_what_the_userspace_switch_delivers_across_vlan_modes") {
        return;
    }
    // steer_tc's fast path and the punt device's way to userspace, against
    // the userspace switch alone, on the same script: learning, flooding,
    // moves, tags pushed and popped.
    let d = compare_paths(
        "cmc",
        &["veth:sa,vlan=10", "veth:sb,trunk=10+20", "veth:sc,vlan=10"],
        Some(10),
    );
    assert!(
        has(&d, "b", 100, Some(10)) && has(&d, "a", 300, None),
        "tags pushed and popped"
    );
    assert!(
        has(&d, "c", 900, None) && !has(&d, "b", 900, Some(10)),
        "the move is followed"
    );
}

#[test]
fn vlans_still_isolate_with_the_fast_path_on() {
    if !privileged("vlans_still_isolate_with_the_fast_path_on") {
        return;
    }
    let h = hosts("fvlan", 3, false);
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
    let (a, b, c) = (&h.hosts[0], &h.hosts[1], &h.hosts[2]);
    let (mac_a, mac_b, mac_c) = (mac_of(a, "a0"), mac_of(b, "b0"), mac_of(c, "c0"));
    send(a, "a0", mac_a, [0xff; 6], 0, 1);
    send(b, "b0", mac_b, [0xff; 6], 1, 1);
    send(c, "c0", mac_c, [0xff; 6], 2, 1);
    let (at_b, rb) = collect_test_frames(b, "b0", 100, Duration::from_secs(3));
    let (at_c, rc) = collect_test_frames(c, "c0", 100, Duration::from_secs(3));
    rb.recv().unwrap();
    rc.recv().unwrap();
    send(a, "a0", mac_a, mac_b, 10, 100);
    send(a, "a0", mac_a, mac_c, 200, 100);
    assert_eq!(at_b.join().unwrap().len(), 100, "same VLAN: delivered");
    assert!(
        at_c.join().unwrap().is_empty(),
        "other VLAN: nothing, fast or slow"
    );
    assert!(
        fast_frames(&h.sw, "sa") >= 100,
        "same-VLAN unicast went fast"
    );
    drop(sw);
}

#[test]
fn each_direction_takes_the_branch_its_receiver_allows() {
    if !privileged("each_direction_takes_the_branch_its_receiver_allows") {
        return;
    }
    // This test is about the GRO setting: only b's veth takes
    // XDP-redirected frames; a's is at its defaults.
    let h = hosts("oneway", 2, false);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    b.exec_ok(&["ethtool", "-K", "b0", "gro", "on"]);
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa", "--port", "afxdp:sb"]);
    assert!(
        sw.output().contains("xdp_redirect=1 tc_handoff=1"),
        "{}",
        sw.output()
    );
    let (mac_a, mac_b) = (mac_of(a, "a0"), mac_of(b, "b0"));
    send(a, "a0", mac_a, [0xff; 6], 1_000_000, 1);
    send(b, "b0", mac_b, [0xff; 6], 1_000_001, 1);
    let (at_b, rb) = collect_test_frames(b, "b0", 300, Duration::from_secs(5));
    let (at_a, ra) = collect_test_frames(a, "a0", 300, Duration::from_secs(5));
    rb.recv().unwrap();
    ra.recv().unwrap();
    send(a, "a0", mac_a, mac_b, 0, 300);
    send(b, "b0", mac_b, mac_a, 1000, 300);
    assert_eq!(at_b.join().unwrap().len(), 300, "a -> b delivered");
    assert_eq!(at_a.join().unwrap().len(), 300, "b -> a delivered");
    assert!(
        steer_counter(&h.sw, "sa", "fast_path") >= 300,
        "a -> b went fast by XDP redirect"
    );
    assert_eq!(
        steer_counter(&h.sw, "sb", "fast_path"),
        0,
        "b -> a must not be XDP-redirected to sa"
    );
    assert!(
        steer_counter(&h.sw, "sb", "fast_path_tc") >= 300,
        "b -> a went fast by tc hand-off"
    );
    drop(sw);
}

/// Entries in a port's fast-path FDB map, as bpftool sees it.
fn kernel_fdb_entries(sw: &NetNs, ifname: &str) -> usize {
    let map = sw.pin_dir(ifname).join("FDB");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&map)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        map.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array().map_or(0, |a| a.len())
}

#[test]
fn fast_path_hits_keep_entries_alive_and_idle_ones_age_out_everywhere() {
    if !privileged("fast_path_hits_keep_entries_alive_and_idle_ones_age_out_everywhere") {
        return;
    }
    let h = hosts("age", 3, false);
    let (a, b, c) = (&h.hosts[0], &h.hosts[1], &h.hosts[2]);
    let config = std::env::temp_dir().join(format!("dpt-age-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[fdb]\nmax_age = 2\n\n[[port]]\nkind = \"afxdp\"\niface = \"sa\"\n\n\
         [[port]]\nkind = \"afxdp\"\niface = \"sb\"\n\n[[port]]\nkind = \"afxdp\"\niface = \"sc\"\n",
    )
    .unwrap();
    let sw = RunningSwitch::start(&h.sw, &["--config", config.to_str().unwrap()]);
    let _ = std::fs::remove_file(&config);
    let (mac_a, mac_b, mac_c) = (mac_of(a, "a0"), mac_of(b, "b0"), mac_of(c, "c0"));
    send(a, "a0", mac_a, [0xff; 6], 0, 1);
    send(b, "b0", mac_b, [0xff; 6], 1, 1);
    send(c, "c0", mac_c, [0xff; 6], 2, 1);
    assert_eq!(
        kernel_fdb_entries(&h.sw, "sa"),
        3,
        "all three learned and mirrored"
    );

    // a and b talk for 5 s (2.5x the ageing time), all of it in the kernel;
    // c stays silent.
    let fast_before = fast_frames(&h.sw, "sa");
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let mut seq = 10;
    while std::time::Instant::now() < end {
        send(a, "a0", mac_a, mac_b, seq, 20);
        send(b, "b0", mac_b, mac_a, seq + 20, 20);
        seq += 40;
    }
    let fast = fast_frames(&h.sw, "sa") - fast_before;
    assert!(fast > 0, "a -> b took the fast path");
    let slow_after = steer_counter(&h.sw, "sa", "redirected");
    // Still fast at the end: a's and b's entries never expired, because
    // their hit counts moved; c's did, in userspace and in every map.
    send(a, "a0", mac_a, mac_b, 1_000_000, 20);
    assert_eq!(
        steer_counter(&h.sw, "sa", "redirected"),
        slow_after,
        "a -> b still in the kernel after 2.5 ageing times"
    );
    for port in ["sa", "sb", "sc"] {
        assert_eq!(
            kernel_fdb_entries(&h.sw, port),
            2,
            "c aged out of {port}'s map too"
        );
    }
    sw.signal(libc::SIGUSR1);
    let shown = harness::wait_for(Duration::from_secs(3), || {
        sw.output().contains("FDB (").then_some(())
    });
    assert!(shown.is_some());
    assert!(sw.output().contains("FDB (2 entries)"), "{}", sw.output());
    drop(sw);
}

/// (VLAN, sequence number) of a test frame, tagged or not.
fn vlan_and_seq(frame: &[u8]) -> Option<(Option<u16>, u32)> {
    let h = dataplane_common::wire::parse_l2(frame).ok()?;
    if h.ethertype != TEST_ETHERTYPE || frame.len() < h.header_len + 4 {
        return None;
    }
    let seq = u32::from_be_bytes(frame[h.header_len..h.header_len + 4].try_into().unwrap());
    Some((h.vlan, seq))
}

#[test]
fn vlan_tags_are_pushed_and_popped_in_the_fast_path() {
    if !privileged("vlan_tags_are_pushed_and_popped_in_the_fast_path") {
        return;
    }
    vlan_push_pop("fvtag", "afxdp");
}

#[test]
fn vlan_tags_are_pushed_and_popped_in_the_fast_path_of_container_ports() {
    if !privileged("vlan_tags_are_pushed_and_popped_in_the_fast_path_of_container_ports") {
        return;
    }
    // steer_tc: the kernel has moved a received tag into the skb before tc
    // sees it, and pushes and pops are done on the skb.
    vlan_push_pop("fvtagc", "veth");
}

/// a: access port of VLAN 10; b: trunk of VLANs 10 and 20; both `kind`.
fn vlan_push_pop(tag: &str, kind: &str) {
    let h = hosts(tag, 2, false);
    let (a, b) = (&h.hosts[0], &h.hosts[1]);
    let (port_a, port_b) = (
        format!("{kind}:sa,vlan=10"),
        format!("{kind}:sb,trunk=10+20"),
    );
    let sw = RunningSwitch::start(&h.sw, &["--port", &port_a, "--port", &port_b]);
    let (mac_a, mac_b) = (mac_of(a, "a0"), mac_of(b, "b0"));
    let send_raw = |ns: &NetNs, ifname: &str, frames: Vec<Vec<u8>>| {
        harness::send_paced(ns, ifname, frames);
        std::thread::sleep(Duration::from_millis(150));
    };
    // Both introduce themselves in VLAN 10 (b tagged, a untagged).
    send_raw(
        a,
        "a0",
        vec![test_frame([0xff; 6], mac_a, TEST_ETHERTYPE, 0, 64)],
    );
    send_raw(
        b,
        "b0",
        vec![harness::tagged(
            &test_frame([0xff; 6], mac_b, TEST_ETHERTYPE, 1, 64),
            10,
        )],
    );

    let keep: fn(&[u8]) -> bool = |f| vlan_and_seq(f).is_some_and(|(_, seq)| seq >= 100);
    let fast_a = fast_frames(&h.sw, "sa");
    let fast_b = fast_frames(&h.sw, "sb");

    // a -> b: untagged in, must leave on the trunk tagged with VLAN 10.
    let (at_b, rb) = harness::collect_frames(b, "b0", 100, Duration::from_secs(5), keep);
    rb.recv().unwrap();
    send_raw(
        a,
        "a0",
        (100..200)
            .map(|s| test_frame(mac_b, mac_a, TEST_ETHERTYPE, s, 64))
            .collect(),
    );
    let got: Vec<_> = at_b
        .join()
        .unwrap()
        .iter()
        .filter_map(|f| vlan_and_seq(f))
        .collect();
    assert_eq!(got.len(), 100, "a -> b delivered");
    assert!(
        got.iter().all(|(vlan, _)| *vlan == Some(10)),
        "tag pushed: {:?}",
        &got[..3]
    );
    assert_eq!(
        fast_frames(&h.sw, "sa") - fast_a,
        100,
        "a -> b in the kernel"
    );

    // b -> a: tagged VLAN 10 in, must reach the access port untagged.
    let (at_a, ra) = harness::collect_frames(a, "a0", 100, Duration::from_secs(5), keep);
    ra.recv().unwrap();
    send_raw(
        b,
        "b0",
        (200..300)
            .map(|s| harness::tagged(&test_frame(mac_a, mac_b, TEST_ETHERTYPE, s, 64), 10))
            .collect(),
    );
    let got: Vec<_> = at_a
        .join()
        .unwrap()
        .iter()
        .filter_map(|f| vlan_and_seq(f))
        .collect();
    assert_eq!(got.len(), 100, "b -> a delivered");
    assert!(
        got.iter().all(|(vlan, _)| vlan.is_none()),
        "tag popped: {:?}",
        &got[..3]
    );
    assert_eq!(
        fast_frames(&h.sw, "sb") - fast_b,
        100,
        "b -> a in the kernel"
    );

    // The same addresses in VLAN 20 reach nobody on VLAN 10's access port.
    let (at_a, ra) = harness::collect_frames(a, "a0", 10, Duration::from_secs(2), keep);
    ra.recv().unwrap();
    send_raw(
        b,
        "b0",
        (300..310)
            .map(|s| harness::tagged(&test_frame(mac_a, mac_b, TEST_ETHERTYPE, s, 64), 20))
            .collect(),
    );
    assert!(
        at_a.join().unwrap().is_empty(),
        "VLAN 20 leaked to an access port of VLAN 10"
    );
    sw.stop_accounted();
}

#[test]
fn no_vlan_hop_through_a_priority_tag_or_an_s_tag() {
    if !privileged("no_vlan_hop_through_a_priority_tag_or_an_s_tag") {
        return;
    }
    // a: access port of VLAN 10; b: trunk of 10 and 20, native 10 (so VLAN
    // 10 leaves it untagged: popping the priority tag would expose VLAN 20).
    for kind in ["afxdp", "veth"] {
        let h = hosts(&format!("hop{}", &kind[..1]), 2, false);
        let (a, b) = (&h.hosts[0], &h.hosts[1]);
        let (pa, pb) = (
            format!("{kind}:sa,vlan=10"),
            format!("{kind}:sb,trunk=10+20,native=10"),
        );
        let sw = RunningSwitch::start(&h.sw, &["--port", &pa, "--port", &pb]);
        let mac_a = mac_of(a, "a0");
        let keep: fn(&[u8]) -> bool = |f| vlan_and_seq(f).is_some();
        let (at_b, rb) = harness::collect_frames(b, "b0", 1, Duration::from_secs(2), keep);
        rb.recv().unwrap();
        let inner = harness::tagged(&test_frame([0xff; 6], mac_a, TEST_ETHERTYPE, 1, 64), 20);
        let hop = harness::tagged(&inner, 0);
        let mut s_tag = harness::tagged(&test_frame([0xff; 6], mac_a, TEST_ETHERTYPE, 2, 64), 10);
        s_tag[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        harness::send_paced(a, "a0", vec![hop, s_tag]);
        let got: Vec<_> = at_b
            .join()
            .unwrap()
            .iter()
            .filter_map(|f| vlan_and_seq(f))
            .collect();
        assert!(
            got.is_empty(),
            "{kind}: a double-tagged or S-tagged frame crossed from an access port: {got:?}"
        );
        // A plain frame still does (the port works).
        let (at_b, rb) = harness::collect_frames(b, "b0", 1, Duration::from_secs(5), keep);
        rb.recv().unwrap();
        harness::send_paced(
            a,
            "a0",
            vec![test_frame([0xff; 6], mac_a, TEST_ETHERTYPE, 3, 64)],
        );
        assert_eq!(
            at_b.join().unwrap().len(),
            1,
            "{kind}: untagged frames cross"
        );
        drop(sw);
    }
}
