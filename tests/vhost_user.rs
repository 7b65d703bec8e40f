//! vhost-user ports with a real frontend: DPDK's dpdk-testpmd with a
//! virtio_user port (the virtio-net driver side, sharing its hugepage
//! memory over the socket, as QEMU shares a guest's RAM) plays the VM.
//!
//! ```text
//!  a: a0 ── sa [sw: dataplane run] vhost-user SOCK <── testpmd (in sw)
//!  b: b0 ── sb
//! ```
//!
//! testpmd needs 2 MB hugepages: [`Hugepages`] reserves them for the test
//! and gives them back (and removes what DPDK left in hugetlbfs and
//! /var/run/dpdk) on drop, also when the test fails.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{
    collect_frames, collect_test_frames, distinct, mac_of, privileged, send_test_stream, wait_for,
    NetNs, RunningSwitch, Topology,
};

/// The MAC testpmd's virtio_user port gets (devargs `mac=`).
const TESTPMD_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
const TESTPMD_MAC_STR: &str = "02:00:5e:10:00:01";
/// Frame length of testpmd's txonly frames (`--txpkts`).
const TXONLY_LEN: usize = 64;
/// Ring size of testpmd's virtio_user queues (devargs `queue_size=`).
const RING: u64 = 1024;

/// Tests here share the machine's hugepage pool: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static N: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "dpt{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const HUGETLBFS: &str = "/dev/hugepages";

/// 2 MB hugepages reserved for the test, given back on drop with every
/// file DPDK left behind for the prefixes handed out.
struct Hugepages {
    previous: u64,
    mounted: bool,
    created_dir: bool,
    prefixes: Vec<String>,
}

impl Hugepages {
    fn reserve(pages: u64) -> Hugepages {
        let previous = read_u64(NR_HUGEPAGES);
        // The guard exists before anything changes, so a failure below
        // still restores what was there.
        let mut guard = Hugepages {
            previous,
            mounted: false,
            created_dir: false,
            prefixes: Vec::new(),
        };
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(HUGETLBFS) && l.contains("hugetlbfs"))
        {
            if !Path::new(HUGETLBFS).exists() {
                std::fs::create_dir_all(HUGETLBFS).expect("mkdir /dev/hugepages");
                guard.created_dir = true;
            }
            harness::run_ok(Command::new("mount").args(["-t", "hugetlbfs", "nodev", HUGETLBFS]));
            guard.mounted = true;
        }
        let want = previous + pages;
        std::fs::write(NR_HUGEPAGES, want.to_string()).expect("write nr_hugepages");
        let got = read_u64(NR_HUGEPAGES);
        assert!(
            got >= want,
            "asked the kernel for {want} hugepages, got {got}: not enough free contiguous memory"
        );
        guard
    }

    /// A fresh DPDK `--file-prefix`, cleaned up on drop.
    fn prefix(&mut self, tag: &str) -> String {
        let p = unique(tag);
        self.prefixes.push(p.clone());
        p
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        for p in &self.prefixes {
            // A killed testpmd leaves its hugepage files (`<prefix>map_N`)
            // and its runtime directory.
            if let Ok(entries) = std::fs::read_dir(HUGETLBFS) {
                for e in entries.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{p}map_"))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{p}"));
        }
        let _ = std::fs::write(NR_HUGEPAGES, self.previous.to_string());
        if self.mounted {
            let _ = Command::new("umount").arg(HUGETLBFS).status();
        }
        if self.created_dir {
            let _ = std::fs::remove_dir(HUGETLBFS);
        }
    }
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// A socket path for the test, removed on drop if the switch left it.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new() -> SocketPath {
        SocketPath(PathBuf::from(format!("/tmp/{}.sock", unique("vhu"))))
    }
    fn port(&self) -> String {
        format!("vhost-user:{}", self.0.display())
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// dpdk-testpmd with one virtio_user port on a socket, in a namespace
/// (`nsenter --net`, which changes only the network namespace). Killed on
/// drop.
struct Testpmd {
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Testpmd {
    /// Starts testpmd and waits until it forwards. `fwd`: its options
    /// after `--` (forwarding mode and friends).
    fn start(ns: &NetNs, sock: &Path, prefix: &str, fwd: &[&str]) -> Testpmd {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", ns.name()))
            .args([
                "dpdk-testpmd",
                "-l",
                "0-1",
                "--no-pci",
                // One file for all of its memory: virtio_user shares memory
                // one fd per region, and the vhost-user limit is 8 regions.
                "--single-file-segments",
                "--file-prefix",
                prefix,
                "-m",
                "256",
                "--vdev",
                &format!(
                    "net_virtio_user0,path={},queues=1,queue_size={RING},mrg_rxbuf=1,mac={TESTPMD_MAC_STR}",
                    sock.display()
                ),
                "--",
                "--nb-cores=1",
                // Deep rings: testpmd's lcore shares two CPUs with the switch
                // and the sender, and must not run out of receive buffers.
                &format!("--rxd={RING}"),
                &format!("--txd={RING}"),
                "--total-num-mbufs=16384",
                // Small receive buffers: a 1500-byte frame takes two, so
                // mergeable receive buffers are exercised.
                "--mbuf-size=1024",
                "--enable-scatter",
                // Runs until signalled (instead of reading stdin).
                "--stats-period=1",
            ])
            .args(fwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dpdk-testpmd (package dpdk-dev; `cargo xtask setup` installs it)");
        let (output, readers) = harness::capture_output(&mut child);
        let mut t = Testpmd {
            child: Some(child),
            output,
            readers,
        };
        let started = wait_for(Duration::from_secs(30), || {
            if t.output().contains("packet forwarding - ports=1") {
                return Some(true);
            }
            match t.child.as_mut().unwrap().try_wait() {
                Ok(Some(_)) => Some(false),
                _ => None,
            }
        });
        assert_eq!(
            started,
            Some(true),
            "testpmd did not start forwarding:\n{}",
            t.output()
        );
        t
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends `sig`, waits for the exit, returns everything it printed.
    fn stop(&mut self, sig: i32) -> String {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, sig) };
            if wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.output()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.stop(libc::SIGKILL);
    }
}

/// `RX-packets` and `TX-packets` of testpmd's final "Forward statistics
/// for port 0" block (printed when it stops on SIGINT).
fn testpmd_totals(out: &str) -> (u64, u64) {
    let block = out
        .rsplit_once("Forward statistics for port 0")
        .unwrap_or_else(|| panic!("no forward statistics in testpmd output:\n{out}"))
        .1;
    let field = |name: &str| -> u64 {
        let rest = block.split_once(name).expect(name).1;
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    (field("RX-packets:"), field("TX-packets:"))
}

/// One port's counters from the switch's latest statistics table, by
/// column name (`RX_PKTS`, `TX_PKTS`, `drop_tx_ring_full`, ...).
fn switch_counter(out: &str, port: &str, column: &str) -> u64 {
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .rposition(|l| l.starts_with("PORT "))
        .unwrap_or_else(|| panic!("no statistics table in:\n{out}"));
    let cols: Vec<&str> = lines[header].split_whitespace().collect();
    let row = lines[header + 1..]
        .iter()
        .find(|l| l.split_whitespace().next() == Some(port))
        .unwrap_or_else(|| panic!("no row for {port} in:\n{out}"));
    let i = cols.iter().position(|c| *c == column).expect(column);
    row.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Asks the switch for statistics (SIGUSR1) and returns its output once
/// the new table is there.
fn fresh_stats(sw: &RunningSwitch) -> String {
    let before = sw.output().matches("FDB (").count();
    sw.signal(libc::SIGUSR1);
    wait_for(Duration::from_secs(5), || {
        let out = sw.output();
        (out.matches("FDB (").count() > before).then_some(out)
    })
    .expect("statistics after SIGUSR1")
}

/// Waits until the switch has logged "vhost-user port up" more than
/// `before` times (the PMD saw the frontend's rings enabled).
fn wait_port_up(sw: &RunningSwitch, before: usize, frontend: &Testpmd) {
    let up = wait_for(Duration::from_secs(20), || {
        (sw.output().matches("vhost-user port up").count() > before).then_some(())
    });
    assert!(
        up.is_some(),
        "vhost-user port never came up:\n{}\ntestpmd:\n{}",
        sw.output(),
        frontend.output()
    );
    // DPDK resets the rings once while starting; testpmd prints that it
    // forwards only after its final start, and the PMD notices within a poll.
    std::thread::sleep(Duration::from_millis(300));
}

fn from_testpmd(f: &[u8]) -> bool {
    f.len() >= 12 && f[6..12] == TESTPMD_MAC
}

fn testpmd_available(test: &str) -> bool {
    let ok = Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "{test}: dpdk-testpmd is missing (Debian package dpdk-dev); `cargo xtask setup` installs it"
    );
    ok
}

#[test]
fn testpmd_frames_cross_the_switch_both_ways() {
    const TEST: &str = "testpmd_frames_cross_the_switch_both_ways";
    if !privileged(TEST) || !testpmd_available(TEST) {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Declared first: dropped last, after testpmd and the switch are gone.
    let mut huge = Hugepages::reserve(256);
    let sock = SocketPath::new();
    let mut topo = Topology::new("vhu");
    let sw_ns = topo.netns("sw");
    let a = topo.netns("a");
    topo.veth((&a, "a0"), (&sw_ns, "sa"));
    let sw = RunningSwitch::start(&sw_ns, &["--port", "afxdp:sa", "--port", &sock.port()]);
    let mode = std::fs::metadata(&sock.0)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket permissions");

    // testpmd -> switch -> a: txonly toward a0's MAC for about 2 s.
    let a_mac = mac_of(&a, "a0");
    let peer = format!("0,{}", a_mac.map(|b| format!("{b:02x}")).join(":"));
    let (at_a, ready) = collect_frames(&a, "a0", 10_000_000, Duration::from_secs(5), from_testpmd);
    ready.recv().unwrap();
    let ups = sw.output().matches("vhost-user port up").count();
    let mut tp = Testpmd::start(
        &sw_ns,
        &sock.0,
        &huge.prefix("tx"),
        &[
            "--forward-mode=txonly",
            &format!("--eth-peer={peer}"),
            &format!("--txpkts={TXONLY_LEN}"),
        ],
    );
    wait_port_up(&sw, ups, &tp);
    std::thread::sleep(Duration::from_secs(2));
    let out = tp.stop(libc::SIGINT);
    let (_, sent) = testpmd_totals(&out);
    let frames = at_a.join().unwrap();
    let stats = fresh_stats(&sw);
    let port = sock.port();
    let switch_rx = switch_counter(&stats, &port, "RX_PKTS");
    let afxdp_tx = switch_counter(&stats, "afxdp:sa", "TX_PKTS");
    assert!(
        frames.len() >= 1000,
        "only {} testpmd frames reached a (testpmd sent {sent}, switch took {switch_rx}):\n{}",
        frames.len(),
        sw.output()
    );
    assert!(
        frames
            .iter()
            .all(|f| f.len() == TXONLY_LEN && f[..6] == a_mac),
        "frames as testpmd built them"
    );
    // Everything testpmd queued was taken off its ring, but for what was
    // still in flight when it closed the device.
    assert!(
        switch_rx <= sent && switch_rx + RING >= sent,
        "testpmd sent {sent}, the switch received {switch_rx}"
    );
    assert!(
        afxdp_tx >= frames.len() as u64 && afxdp_tx <= switch_rx,
        "switch sent {afxdp_tx} to sa of {switch_rx}; a counted {}",
        frames.len()
    );
    eprintln!(
        "testpmd txonly: {sent} sent, {switch_rx} into the switch, {afxdp_tx} out of sa, {} counted at a0",
        frames.len()
    );

    // a -> switch -> testpmd: small frames, and 1500-byte ones that take
    // two of testpmd's 1 KiB receive buffers (mergeable).
    let ups = sw.output().matches("vhost-user port up").count();
    let mut tp = Testpmd::start(
        &sw_ns,
        &sock.0,
        &huge.prefix("rx"),
        &["--forward-mode=rxonly"],
    );
    wait_port_up(&sw, ups, &tp);
    let tx_before = switch_counter(&fresh_stats(&sw), &port, "TX_PKTS");
    send_test_stream(&a, "a0", TESTPMD_MAC, 2000, 200);
    send_test_stream(&a, "a0", TESTPMD_MAC, 200, 1500);
    std::thread::sleep(Duration::from_millis(500));
    let out = tp.stop(libc::SIGINT);
    let (received, _) = testpmd_totals(&out);
    let stats = fresh_stats(&sw);
    let switch_tx = switch_counter(&stats, &port, "TX_PKTS") - tx_before;
    assert_eq!(switch_tx, 2200, "switch -> testpmd:\n{stats}");
    assert_eq!(received, 2200, "testpmd received:\n{out}");

    sw.stop_accounted();
    assert!(!sock.0.exists(), "socket file left after the switch exited");
    drop(huge);
}

#[test]
fn frontend_restart_leaves_the_switch_running() {
    const TEST: &str = "frontend_restart_leaves_the_switch_running";
    if !privileged(TEST) || !testpmd_available(TEST) {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut huge = Hugepages::reserve(256);
    let sock = SocketPath::new();
    let mut topo = Topology::new("vhr");
    let sw_ns = topo.netns("sw");
    let a = topo.netns("a");
    let b = topo.netns("b");
    topo.veth((&a, "a0"), (&sw_ns, "sa"));
    topo.veth((&b, "b0"), (&sw_ns, "sb"));
    let port = sock.port();
    let sw = RunningSwitch::start(
        &sw_ns,
        &["--port", "afxdp:sa", "--port", "afxdp:sb", "--port", &port],
    );

    // A first frontend sends; then it dies without a goodbye (SIGKILL, as
    // a crashed VM).
    let a_mac = mac_of(&a, "a0");
    let peer = format!("0,{}", a_mac.map(|b| format!("{b:02x}")).join(":"));
    let (at_a, ready) = collect_frames(&a, "a0", 500, Duration::from_secs(10), from_testpmd);
    ready.recv().unwrap();
    let ups = sw.output().matches("vhost-user port up").count();
    let mut tp = Testpmd::start(
        &sw_ns,
        &sock.0,
        &huge.prefix("k"),
        &["--forward-mode=txonly", &format!("--eth-peer={peer}")],
    );
    wait_port_up(&sw, ups, &tp);
    assert_eq!(at_a.join().unwrap().len(), 500, "first frontend -> a");
    tp.stop(libc::SIGKILL);
    let gone = wait_for(Duration::from_secs(5), || {
        sw.output()
            .contains("vhost-user frontend gone")
            .then_some(())
    });
    assert!(gone.is_some(), "disconnect not noticed:\n{}", sw.output());

    // The switch runs on: a -> b without loss, and frames toward the dead
    // frontend's MAC (learned on the vhost-user port) are dropped and counted.
    let (at_b, ready) = collect_test_frames(&b, "b0", 1000, Duration::from_secs(10));
    ready.recv().unwrap();
    send_test_stream(&a, "a0", mac_of(&b, "b0"), 1000, 200);
    assert_eq!(
        distinct(at_b.join().unwrap()).len(),
        1000,
        "a -> b while down"
    );
    let drops_before = switch_counter(&fresh_stats(&sw), &port, "drop_port_down");
    send_test_stream(&a, "a0", TESTPMD_MAC, 100, 200);
    let dropped = wait_for(Duration::from_secs(5), || {
        let d = switch_counter(&fresh_stats(&sw), &port, "drop_port_down") - drops_before;
        (d >= 100).then_some(d)
    });
    assert_eq!(dropped, Some(100), "drops toward the down port");

    // A new frontend on the same socket: traffic flows again.
    let ups = sw.output().matches("vhost-user port up").count();
    let mut tp = Testpmd::start(
        &sw_ns,
        &sock.0,
        &huge.prefix("r"),
        &["--forward-mode=rxonly"],
    );
    wait_port_up(&sw, ups, &tp);
    send_test_stream(&a, "a0", TESTPMD_MAC, 1000, 200);
    std::thread::sleep(Duration::from_millis(500));
    let (received, _) = testpmd_totals(&tp.stop(libc::SIGINT));
    assert_eq!(received, 1000, "a -> restarted frontend");

    sw.stop_accounted();
    assert!(!sock.0.exists(), "socket file left after the switch exited");
    drop(huge);
}
