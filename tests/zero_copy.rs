//! AF_XDP zero-copy on a driver that has it: the virtio-net of a Linux
//! guest, with the switch running inside the guest.
//!
//! ```text
//!  host namespace h                       guest (QEMU, TCG)
//!  zt0 (TAP) ── virtio-net ── eth0 ─┐
//!                                   ├─ dataplane run: eth0 bind=zerocopy, eth1 auto (copy)
//!  zt1 (TAP) ── virtio-net ── eth1 ─┘
//! ```
//!
//! veth and TAP have no zero-copy, so the host cannot show it. A guest's
//! virtio-net can: its driver advertises AF_XDP zero-copy from Linux 6.13
//! on, when the device offers queue reset and platform DMA
//! (`iommu_platform=on`). `cargo xtask setup` fetches such a kernel
//! (target/guest-kernel-zc). The guest's init is this test binary: it
//! mounts what the switch needs, loads virtio-net, and runs the project's
//! own `dataplane` binary with both NICs as ports and the fast path off:
//! eth0 `bind=zerocopy` on two queues, so every frame crosses its
//! zero-copy sockets and the copy between its UMEM and the PMD's; eth1 the
//! default `bind=auto`, which must decline zero-copy on this guest's
//! virtio-net (a loadable module whose zero-copy transmit hands the device
//! a header from outside the guest's RAM; see docs/DESIGN-NOTES.md) and
//! take copy mode. Once the switch runs, eth0 is deleted and added again
//! (its UMEM goes, which releases its queues, and a new one binds them).
//! The host sends numbered UDP frames (of varied flows, so that eth0's two
//! queues both receive) into each TAP and checks every one comes out of
//! the other, byte for byte. The guest reports the driver's frames per
//! queue of eth0 (`ethtool -S`: both queues), the switch's `show ports
//! --json` (eth0 "zero-copy", eth1 "copy") and, after SIGINT, its exit
//! summary (no frame of the PMD lost) and eth0's own frame check, at its
//! delete and at exit.
//!
//! Not a libtest harness (`harness = false` in Cargo.toml): the same `main`
//! runs the test on the host and the switch in the guest.

mod guest;
mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane_common::wire::build::{write_udp_ipv4, UdpIpv4, UDP_IPV4_HEADERS};
use dataplane_common::wire::{parse_l2, parse_l3, FrameBytes, FrameBytesMut, UdpHdr, IPPROTO_UDP};
use guest::Scratch;
use harness::{collect_frames, privileged, wait_for, NetNs, PacketSocket, Topology};

const TEST: &str = "zero_copy_ports_forward_between_a_guests_virtio_nics";
/// Frames each way: the first SMALL of 64 bytes, the rest of 1400.
const FRAMES: u32 = 300;
const SMALL: u32 = 200;
/// The UDP port the test's frames go to. Their source ports vary, so the
/// host's two-queue TAP spreads them over both of eth0's queues by flow
/// hash (frames of one EtherType and no IP would all take one queue).
const TEST_UDP_PORT: u16 = 9;
/// The MACs of the two hosts behind zt0 and zt1 (the test's frames').
const MAC_A: [u8; 6] = [0x02, 0x7a, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x7a, 0, 0, 0, 0x0b];
/// What the host types on the guest's console once it has every frame.
const STOP: &str = "stop";
/// Lines the guest prints.
const READY: &str = "zc-guest: switch up";
const PORTS: &str = "zc-guest: ports ";
const SUMMARY: &str = "zc-guest: summary ";
const RX_QUEUES: &str = "zc-guest: eth0 frames redirected per rx queue ";
const ERROR: &str = "zc-guest: error";
/// The switch binary's path inside the guest.
const GUEST_DATAPLANE: &str = "/dataplane";

fn main() {
    guest::main_with(TEST, host_test, guest_init, || {
        let path = PathBuf::from(std::env::var_os("QEMU_GUEST_WRITE_INITRAMFS").unwrap());
        let scratch = Scratch::new("zc-initramfs");
        write_initramfs(&path, &scratch.0);
    });
}

/// Where `cargo xtask setup` unpacks this test's guest kernel (see
/// xtask/src/setup.rs, `ZERO_COPY_GUEST_KERNEL_DIR`).
fn kernel_dir() -> PathBuf {
    guest::guest_kernel_dir().with_file_name("guest-kernel-zc")
}

/// The initramfs: this binary as init, the switch binary without its
/// debug sections (a tenth of the size), the kernel's virtio-net modules.
fn write_initramfs(path: &Path, scratch: &Path) {
    let stripped = scratch.join("dataplane");
    let dataplane = harness::dataplane_bin();
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(&dataplane)
        .status()
        .is_ok_and(|s| s.success());
    let binary = if ok { stripped } else { dataplane };
    // The switch asks iproute2 about links, as on any host; the guest asks
    // ethtool for the driver's per-queue counters.
    let host_tool = |name: &str| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .into_iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {name} (`cargo xtask setup` installs it)"))
    };
    let (ip, ethtool) = (host_tool("ip"), host_tool("ethtool"));
    guest::build_initramfs_with(
        path,
        &kernel_dir(),
        &[
            (GUEST_DATAPLANE.trim_start_matches('/'), &binary),
            ("bin/ip", &ip),
            ("bin/ethtool", &ethtool),
        ],
    );
}

fn host_test() {
    if !privileged(TEST) {
        return;
    }
    if let Some(why) = guest::qemu_missing(&kernel_dir()) {
        harness::skipped(TEST, &why);
        return;
    }
    let scratch = Scratch::new("zc");
    let initramfs = scratch.0.join("initramfs.cpio");
    write_initramfs(&initramfs, &scratch.0);

    let mut topo = Topology::new("zc");
    let h = topo.netns("h");
    h.ip(&["tuntap", "add", "dev", "zt0", "mode", "tap", "multi_queue"]);
    h.ip(&["tuntap", "add", "dev", "zt1", "mode", "tap"]);
    for tap in ["zt0", "zt1"] {
        h.ip(&["link", "set", tap, "up"]);
    }
    let mut vm = guest::Vm::start(
        &h,
        &kernel_dir().join("vmlinuz"),
        &initramfs,
        &[
            // Two CPUs: virtio-net uses as many queue pairs as CPUs, and
            // eth0 is a two-queue port.
            "-smp",
            "2",
            "-m",
            "1G",
            "-machine",
            "q35",
            "-netdev",
            // vnet_hdr=off: QEMU then passes frames to the TAPs without the
            // guest's virtio-net header, so the garbage header of the
            // driver's zero-copy transmit (see the module docs) cannot make
            // the host drop eth0's frames. Frames, not offloads, are what
            // this test is about.
            "tap,id=n0,ifname=zt0,script=no,downscript=no,vhost=off,vnet_hdr=off,queues=2",
            // Zero-copy needs platform DMA and queue reset (QEMU's default
            // on modern devices) from the device.
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:7a:00:01,iommu_platform=on,disable-legacy=on,mq=on,vectors=6",
            "-netdev",
            "tap,id=n1,ifname=zt1,script=no,downscript=no,vhost=off,vnet_hdr=off",
            "-device",
            "virtio-net-pci,netdev=n1,mac=52:54:00:7a:00:02,iommu_platform=on,disable-legacy=on",
        ],
    );
    let guest_failed = |out: &str| out.contains(ERROR) || out.contains("Kernel panic");
    let up = wait_for(Duration::from_secs(90), || {
        let out = vm.output();
        if guest_failed(&out) {
            panic!("the guest failed:\n{out}");
        }
        out.contains(READY).then_some(())
    });
    assert!(
        up.is_some(),
        "switch in the guest not up within 90 s:\n{}",
        vm.output()
    );

    // Both ways, one after the other: A -> B enters eth0 and leaves eth1.
    let mut crossed = Vec::new();
    for (from, to, src, dst) in [("zt0", "zt1", MAC_A, MAC_B), ("zt1", "zt0", MAC_B, MAC_A)] {
        let (frames, ready) =
            collect_frames(&h, to, FRAMES as usize, Duration::from_secs(30), |f| {
                flow_frame_seq(f).is_some()
            });
        ready.recv().unwrap();
        let sent: Vec<Vec<u8>> = (0..FRAMES)
            .map(|seq| flow_frame(dst, src, seq, if seq < SMALL { 64 } else { 1400 }))
            .collect();
        send_slowly(&h, from, &sent);
        let mut got = frames.join().unwrap();
        got.sort_by_key(|f| flow_frame_seq(f));
        crossed.push((format!("{from} -> guest -> {to}"), got, sent));
    }

    // Now the guest may report and stop the switch (stopping it before the
    // host has every frame could cut frames still in its TX rings); its
    // report also explains a failure below.
    vm.type_line(STOP);
    let (exited, out) = vm.wait(Duration::from_secs(90));
    for (way, got, sent) in &crossed {
        assert_eq!(
            got.len(),
            sent.len(),
            "{way}: {} of {} frames\nguest:\n{out}",
            got.len(),
            sent.len()
        );
        for (g, s) in got.iter().zip(sent) {
            assert!(
                g == s,
                "{way}: frame {:?} differs from what was sent",
                flow_frame_seq(s)
            );
        }
    }
    assert!(exited, "the guest did not power off:\n{out}");
    assert!(!guest_failed(&out), "the guest failed:\n{out}");
    let json_line = |prefix: &str| -> serde_json::Value {
        let line = out
            .lines()
            .find_map(|l| l.split(prefix).nth(1))
            .unwrap_or_else(|| panic!("no {prefix:?} line from the guest:\n{out}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let ports = json_line(PORTS);
    for (name, from_host, mode) in [
        ("afxdp:eth0", "zt0", "zero-copy"),
        ("afxdp:eth1", "zt1", "copy"),
    ] {
        let port = ports
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no {name} in {ports}"));
        assert_eq!(port["afxdp_mode"], mode, "{name}: {port}");
        let count = |key: &str| port[key].as_u64().unwrap_or(0);
        assert!(
            count("rx_packets") >= u64::from(FRAMES) && count("tx_packets") >= u64::from(FRAMES),
            "{name} carried the frames from {from_host} and to it: {port}"
        );
        assert_eq!(port["drops"]["no_free_frame"], 0, "{port}");
        assert_eq!(port["drops"]["too_big"], 0, "{port}");
    }
    // Both of eth0's queues are bound on the port's own UMEM, at the start
    // and again after the re-add; the switch said why it has zero-copy
    // there only because it was asked, and why eth1 has none.
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("AF_XDP port open (zero-copy")
                && l.contains("port=\"afxdp:eth0\" queues=[0, 1]"))
            .count(),
        2,
        "eth0's two queues bound zero-copy, twice:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("zero-copy on eth0, as asked")
                && l.contains("virtio_net is a loadable module")),
        "the warning for eth0's explicit zero-copy:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("not trying zero-copy on eth1, using copy mode")),
        "bind=auto's reason for copy mode on eth1:\n{out}"
    );
    // Frames from zt0 spread over both of eth0's queues: each socket
    // received some.
    let per_queue = json_line(RX_QUEUES);
    assert!(
        per_queue
            .as_array()
            .is_some_and(|q| q.len() == 2 && q.iter().all(|n| n.as_u64() > Some(0))),
        "eth0's two queues each received frames (redirected per queue: {per_queue}):\n{out}"
    );
    let summary = json_line(SUMMARY);
    let frames = &summary["frames"];
    assert!(frames["total"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert_eq!(frames["unaccounted"], 0, "the PMD's frames: {summary}");
    assert_eq!(frames["refused_frees"], 0, "the PMD's frames: {summary}");
    let checked = out
        .lines()
        .filter(|l| l.contains("zero-copy UMEM: all") && l.contains("frames accounted for"))
        .count();
    assert_eq!(
        checked, 2,
        "eth0's own frames all back at its delete and at exit:\n{out}"
    );
    assert!(
        !out.contains("frames unaccounted"),
        "a port lost frames of its own:\n{out}"
    );
    println!(
        "zero-copy: {FRAMES} frames each way between a guest's two virtio-net NICs through \
         a zero-copy port (deleted and added again; its queues received {per_queue}) and a \
         copy-mode one, byte for byte; PMD frames {}, 0 unaccounted",
        frames["total"]
    );
}

/// Test frame `seq` of `len` bytes from `src` to `dst`: Ethernet, IPv4
/// and UDP to [`TEST_UDP_PORT`] from a port that varies with `seq`, then
/// `seq` (big-endian) and zeros.
fn flow_frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    let h = UdpIpv4 {
        src_mac: src,
        dst_mac: dst,
        src_ip: [10, 122, 0, 1],
        dst_ip: [10, 122, 0, 2],
        src_port: 20_000 + (seq % 4096) as u16,
        dst_port: TEST_UDP_PORT,
    };
    write_udp_ipv4(&mut f, &h).expect("a test frame has room for its headers");
    // Qualified: std's io::Write, in scope here, has a `write` too.
    FrameBytesMut::write(f.as_mut_slice(), UDP_IPV4_HEADERS, &seq.to_be_bytes())
        .expect("a test frame has room for its sequence number");
    f
}

/// The sequence number of a [`flow_frame`], if `frame` is one.
fn flow_frame_seq(frame: &[u8]) -> Option<u32> {
    let l2 = parse_l2(frame).ok()?;
    let l3 = parse_l3(frame, l2.header_len, l2.ethertype)?;
    let udp: UdpHdr = frame.read(l3.l4_offset)?;
    if l3.proto != IPPROTO_UDP || udp.dst_port() != TEST_UDP_PORT {
        return None;
    }
    frame
        .bytes::<4>(l3.l4_offset + UdpHdr::LEN)
        .map(u32::from_be_bytes)
}

/// About 4000 frames/s: the emulated guest is slow, and the test is about
/// every frame crossing, not speed.
fn send_slowly(ns: &NetNs, ifname: &str, frames: &[Vec<u8>]) {
    ns.enter(|| {
        let sock = PacketSocket::open(ifname);
        for (i, f) in frames.iter().enumerate() {
            sock.send(f);
            if i % 4 == 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
}

/// The guest: runs the switch on eth0 and eth1 until the host types STOP
/// on the console (it has every frame then), reports the ports, stops the
/// switch with SIGINT, reports its summary, powers off.
fn guest_init() -> ! {
    if let Err(e) = run_switch() {
        println!("{ERROR}: {e}");
    }
    guest::init::power_off()
}

fn mount(fstype: &str, target: &str) -> Result<(), String> {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (src, dst, ty) = (c(fstype), c(target), c(fstype));
    // SAFETY: NUL-terminated strings that live across the call; no data.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(format!(
            "mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn run_switch() -> Result<(), String> {
    // /dev/null and friends, for the switch's children's stdio.
    mount("devtmpfs", "/dev")?;
    mount("proc", "/proc")?;
    mount("sysfs", "/sys")?;
    mount("bpf", "/sys/fs/bpf")?;
    guest::init::load_modules()?;
    for ifname in ["eth0", "eth1"] {
        wait_for(Duration::from_secs(10), || {
            Path::new("/sys/class/net")
                .join(ifname)
                .exists()
                .then_some(())
        })
        .ok_or(format!("no {ifname} within 10 s of loading virtio_net"))?;
        guest::init::link_up(ifname)?;
    }
    let summary = "/run/summary.json";
    let mut switch = Command::new(GUEST_DATAPLANE)
        .args(["run", "--no-fast-path", "--summary-json", summary])
        // eth0 asks for zero-copy on both its queues (the second socket
        // shares the port's UMEM); eth1 leaves it to bind=auto, which must
        // see that this virtio-net's zero-copy is unsound and take copy.
        .args([
            "--port",
            "afxdp:eth0,queues=0+1,bind=zerocopy",
            "--port",
            "afxdp:eth1",
        ])
        .env("NO_COLOR", "1")
        .env("PATH", "/bin")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {GUEST_DATAPLANE}: {e}"))?;
    let show = || -> Option<serde_json::Value> {
        let out = Command::new(GUEST_DATAPLANE)
            .args(["show", "ports", "--json"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    };
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while show().is_none() {
            if Instant::now() > deadline || switch.try_wait().ok().flatten().is_some() {
                return Err("the switch did not come up".to_string());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // The zero-copy port leaves (its UMEM goes, which releases both
        // queues) and comes back on the same queues, while the switch runs.
        for change in [
            ["port", "del", "afxdp:eth0"],
            ["port", "add", "afxdp:eth0,queues=0+1,bind=zerocopy"],
        ] {
            let out = Command::new(GUEST_DATAPLANE)
                .args(change)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "dataplane {change:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        println!("{READY}");
        let _ = std::io::stdout().flush();
        // Until the host, which has every frame by then, types STOP.
        let mut line = String::new();
        while line.trim() != STOP {
            line.clear();
            if std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("the console closed before the host said stop".into());
            }
        }
        // What the driver redirected to the sockets of each of eth0's
        // queues (`ethtool -S`: rxN_xdp_redirects).
        let stats = Command::new("/bin/ethtool")
            .args(["-S", "eth0"])
            .output()
            .map_err(|e| format!("ethtool -S eth0: {e}"))?;
        let redirected: Vec<u64> = (0..2)
            .map(|q| {
                String::from_utf8_lossy(&stats.stdout)
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("rx{q}_xdp_redirects:")))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        println!("{RX_QUEUES}{redirected:?}");
        let ports = show().ok_or("`dataplane show ports` failed")?;
        println!("{PORTS}{ports}");
        Ok(())
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(switch.id() as libc::pid_t, libc::SIGINT) };
    let status = switch
        .wait()
        .map_err(|e| format!("waiting for the switch: {e}"))?;
    result?;
    if !status.success() {
        return Err(format!("the switch exited with {status}"));
    }
    let text = std::fs::read_to_string(summary).map_err(|e| format!("{summary}: {e}"))?;
    println!("{SUMMARY}{}", text.replace('\n', " "));
    Ok(())
}
