//! Throwaway topologies for integration tests: network namespaces, veth
//! pairs, raw-frame senders, and the `dataplane` binary run inside them.
//!
//! Everything a [`Topology`] creates is removed when it is dropped, also when
//! the test panics: the namespaces (which takes their veths and XDP programs
//! with them) and any dataplane pins in bpffs that belong to them.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Returns false (and records the skip) when the test cannot run without
/// root. Privileged tests call this first and return early on false.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skipped(
        test,
        "needs root (creates network namespaces, veth pairs and XDP programs); \
         run `sudo cargo xtask test`",
    );
    false
}

/// Environment variable naming the file where skipped tests are recorded.
/// libtest shows a test that returned early as `ok` and hides its output,
/// so `cargo xtask test` sets this, then counts the lines: it reports the
/// skips, and fails a run as root that skipped anything.
pub const SKIP_LOG_ENV: &str = "DATAPLANE_TEST_SKIP_LOG";

/// Records that `test` did not run, and why: on stderr, and as one line
/// in the skip log when [`SKIP_LOG_ENV`] names one.
pub fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        // One short write per line with O_APPEND: lines from parallel test
        // threads and test binaries do not interleave.
        let line = format!("{test}: {}\n", why.replace('\n', " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("recording the skip of {test} in {path:?}: {e}");
        }
    }
}

/// The bpffs mount the tests use (the default one).
pub const BPFFS: &str = "/sys/fs/bpf";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces and veths with names unique to this test run.
pub struct Topology {
    prefix: String,
    namespaces: Vec<NetNs>,
}

impl Topology {
    /// `tag` names the test in the namespace names (`dpt-<tag>-<pid>-<n>-...`).
    pub fn new(tag: &str) -> Topology {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Topology {
            prefix: format!("dpt-{tag}-{}-{n}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    /// Creates a namespace `<prefix>-<short>` with loopback up and IPv6 off
    /// (no router solicitations or DAD frames to disturb exact counts).
    pub fn netns(&mut self, short: &str) -> NetNs {
        let ns = NetNs {
            name: format!("{}-{short}", self.prefix),
        };
        run_ok(Command::new("ip").args(["netns", "add", &ns.name]));
        // Registered before anything else can fail, so drop removes it.
        self.namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"]);
        for key in ["all", "default"] {
            ns.exec_ok(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
            ]);
        }
        ns
    }

    /// Creates a veth pair `a.1` in `a.0` and `b.1` in `b.0`, both up.
    pub fn veth(&mut self, a: (&NetNs, &str), b: (&NetNs, &str)) {
        run_ok(Command::new("ip").args([
            "-n", &a.0.name, "link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns",
            &b.0.name,
        ]));
        a.0.ip(&["link", "set", a.1, "up"]);
        b.0.ip(&["link", "set", b.1, "up"]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Pins live in the host's bpffs, keyed by namespace inode: remove
            // ours before the namespace (and its inode) goes away.
            if let Ok(inode) = ns.inode() {
                remove_pin_dir(&PathBuf::from(BPFFS).join(format!("dataplane/ns{inode}")));
            }
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).status();
        }
        let _ = std::fs::remove_dir(PathBuf::from(BPFFS).join("dataplane"));
    }
}

fn remove_pin_dir(dir: &PathBuf) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_pin_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A network namespace of a [`Topology`].
#[derive(Clone, Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Full name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Inode of the namespace (what dataplane's pin paths are keyed by).
    pub fn inode(&self) -> std::io::Result<u64> {
        Ok(std::fs::metadata(format!("/var/run/netns/{}", self.name))?.ino())
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NS ARGS`, whatever its result.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// `ip netns exec NS ARGS`, which must succeed.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the freshly built `dataplane` binary with `--netns NS`.
    pub fn dataplane(&self, args: &[&str]) -> Output {
        Command::new(dataplane_bin())
            .args(["--netns", &self.name])
            .args(args)
            .output()
            .expect("run dataplane")
    }

    /// Like [`NetNs::dataplane`], but the command must succeed; returns stdout.
    pub fn dataplane_ok(&self, args: &[&str]) -> String {
        let out = self.dataplane(args);
        assert!(
            out.status.success(),
            "dataplane {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace (setns only
    /// changes the calling thread, so the test's own thread stays put).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).expect("open netns");
                // SAFETY: setns on an fd we own; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// The program id of the XDP program the kernel reports on `ifname`.
    pub fn xdp_prog_id(&self, ifname: &str) -> Option<u64> {
        let out = self.ip(&["-j", "-d", "link", "show", "dev", ifname]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        v[0]["xdp"]["prog"]["id"].as_u64()
    }

    /// Pin directory of `ifname` in this namespace.
    pub fn pin_dir(&self, ifname: &str) -> PathBuf {
        PathBuf::from(BPFFS).join(format!("dataplane/ns{}/{ifname}", self.inode().unwrap()))
    }
}

/// Path of the `dataplane` binary cargo built for this test run.
pub fn dataplane_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dataplane"))
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A raw AF_PACKET socket bound to one interface of the current thread's
/// namespace: sends and receives whole Ethernet frames.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Opens and binds to `ifname` (call inside [`NetNs::enter`]).
    pub fn open(ifname: &str) -> PacketSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = CString::new(ifname).unwrap();
        // SAFETY: c is NUL-terminated.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        // The kernel strips received VLAN tags into metadata before packet
        // sockets see the frame; ask for it, to put the tag back (as
        // libpcap does) so tests see frames as they were on the wire.
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "PACKET_AUXDATA: {}", std::io::Error::last_os_error());
        PacketSocket { fd, ifindex }
    }

    /// Sets SO_RCVBUFFORCE (for sinks read only after a burst was sent).
    pub fn set_receive_buffer(&self, bytes: i32) {
        // SAFETY: `bytes` is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    }

    /// Sends one frame; panics if the kernel refuses it.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: frame is a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Receives frames for up to `timeout`, keeping those `keep` accepts,
    /// and stops early once `want` were kept.
    pub fn receive(
        &self,
        want: usize,
        timeout: Duration,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(100) as i32) };
            if ready <= 0 {
                continue;
            }
            match self.recv_one(&mut buf) {
                Some(frame) if keep(&frame) => got.push(frame),
                _ => {}
            }
        }
        got
    }

    /// One arrived frame (not one this host sent), with its VLAN tag put
    /// back if the kernel had stripped it; `None` if none is waiting.
    fn recv_one(&self, buf: &mut [u8]) -> Option<Vec<u8>> {
        // SAFETY: plain data structures, zeroed, then filled by recvmsg.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all pointers set below are live.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: msg describes live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            return None;
        }
        let mut frame = buf[..n as usize].to_vec();
        // SAFETY: walking the control messages recvmsg wrote into `control`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET
                    && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                {
                    let aux = &*(libc::CMSG_DATA(cmsg) as *const libc::tpacket_auxdata);
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12 {
                        let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                            aux.tp_vlan_tpid
                        } else {
                            0x8100
                        };
                        let mut tag = tpid.to_be_bytes().to_vec();
                        tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                        frame.splice(12..12, tag);
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Some(frame)
    }

    /// The interface index this socket is bound to.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }
}

/// Test EtherType (IEEE local experimental 1).
pub const TEST_ETHERTYPE: u16 = 0x88b5;

/// A frame of `len` bytes (at least 18): Ethernet header, then `seq` as a
/// big-endian u32, then zero padding.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(18)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

/// The sequence number [`test_frame`] wrote, if `frame` has `ethertype`.
pub fn test_frame_seq(frame: &[u8], ethertype: u16) -> Option<u32> {
    if frame.len() < 18 || frame[12..14] != ethertype.to_be_bytes() {
        return None;
    }
    Some(u32::from_be_bytes(frame[14..18].try_into().unwrap()))
}

/// The MAC address of `ifname` in `ns`.
pub fn mac_of(ns: &NetNs, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v[0]["address"].as_str().expect("address");
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything `child` prints on stdout and stderr, gathered line by line
/// into one string by two threads (join them once the child has exited).
pub fn capture_output(
    child: &mut std::process::Child,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    Vec<std::thread::JoinHandle<()>>,
) {
    use std::io::{BufRead, BufReader};
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut readers = Vec::new();
    for pipe in [
        Box::new(child.stdout.take().expect("stdout piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr piped")),
    ] {
        let out = output.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        }));
    }
    (output, readers)
}

/// `dataplane run` in a namespace, stopped with SIGINT on drop (as Ctrl-C
/// would), so every test exercises the real shutdown path.
pub struct RunningSwitch {
    child: Option<std::process::Child>,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl RunningSwitch {
    /// Starts `dataplane --netns NS run ARGS` and waits until it says it
    /// runs and, unless `--no-control`, serves its control socket.
    pub fn start(ns: &NetNs, args: &[&str]) -> RunningSwitch {
        Self::start_with_env(ns, args, &[])
    }

    /// [`RunningSwitch::start`] with extra environment variables.
    pub fn start_with_env(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> RunningSwitch {
        let control = !args.contains(&"--no-control");
        use std::process::Stdio;
        let mut child = Command::new(dataplane_bin())
            .args(["--netns", ns.name(), "run"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dataplane run");
        let (output, readers) = capture_output(&mut child);
        let mut sw = RunningSwitch {
            child: Some(child),
            output,
            readers,
        };
        let ready = wait_for(Duration::from_secs(20), || {
            let out = sw.output();
            if out.contains("switch running") && (!control || out.contains("control socket ready"))
            {
                return Some(true);
            }
            match sw.child.as_mut().unwrap().try_wait() {
                Ok(Some(_)) => Some(false),
                _ => None,
            }
        });
        assert_eq!(
            ready,
            Some(true),
            "dataplane run did not start:\n{}",
            sw.output()
        );
        sw
    }

    /// Process id of the switch.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything it printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends a signal (e.g. SIGUSR1 for statistics).
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Waits up to `timeout` for the switch to exit by itself; returns its
    /// exit status (`None`: still running) and everything it printed.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
        let status = self
            .child
            .as_mut()
            .and_then(|c| wait_for(timeout, || c.try_wait().ok().flatten()));
        if status.is_some() {
            self.child = None;
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        }
        (status, self.output())
    }

    /// SIGINT, wait for exit; returns (exit success, everything printed).
    pub fn stop(mut self) -> (bool, String) {
        let ok = self.stop_inner();
        (ok, self.output())
    }

    /// Sends `sig` and waits for the exit, as [`RunningSwitch::stop`] does
    /// with SIGINT.
    pub fn stop_with(mut self, sig: i32) -> (bool, String) {
        let ok = self.stop_with_inner(sig);
        (ok, self.output())
    }

    fn stop_inner(&mut self) -> bool {
        self.stop_with_inner(libc::SIGINT)
    }

    fn stop_with_inner(&mut self, sig: i32) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
        let ok = match status {
            Some(s) => s.success(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                false
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        ok
    }
}

impl Drop for RunningSwitch {
    fn drop(&mut self) {
        if self.child.is_some() && !self.stop_inner() {
            // Killed (a test failed with the switch stuck): it could not
            // remove its control socket itself.
            self.remove_control_socket();
        }
    }
}

impl RunningSwitch {
    /// Removes the control socket the switch said it serves (and
    /// /run/dataplane if that leaves it empty).
    fn remove_control_socket(&self) {
        let out = self.output();
        let Some(path) = out
            .lines()
            .filter(|l| l.contains("control socket ready"))
            .find_map(|l| l.split("socket=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
        else {
            return;
        };
        let path = std::path::Path::new(path);
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = path.parent() {
                // Fails, as it should, while anything else is in it.
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Receives test frames (ethertype [`TEST_ETHERTYPE`], untagged) in `ns`
/// on `ifname` on a background thread until `expect` arrived or `timeout`
/// passed; join the handle for the sequence numbers seen. Wait on the
/// receiver before sending: it fires once the socket is listening.
pub fn collect_test_frames(
    ns: &NetNs,
    ifname: &str,
    expect: usize,
    timeout: Duration,
) -> (
    std::thread::JoinHandle<Vec<u32>>,
    std::sync::mpsc::Receiver<()>,
) {
    let (frames, ready) = collect_frames(ns, ifname, expect, timeout, |f| {
        test_frame_seq(f, TEST_ETHERTYPE).is_some()
    });
    let seqs = std::thread::spawn(move || {
        frames
            .join()
            .expect("collector thread")
            .iter()
            .filter_map(|f| test_frame_seq(f, TEST_ETHERTYPE))
            .collect()
    });
    (seqs, ready)
}

/// User+system CPU time of a process, in clock ticks (from /proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Scheduler state letters (R, S, ...) of the threads of `pid` named `comm`.
pub fn thread_states(pid: u32, comm: &str) -> Vec<char> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = task.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
            if let Some(state) = stat[stat.rfind(')').unwrap() + 2..].chars().next() {
                out.push(state);
            }
        }
    }
    out
}

/// Like [`collect_test_frames`], but returns whole frames `keep` accepts.
pub fn collect_frames(
    ns: &NetNs,
    ifname: &str,
    expect: usize,
    timeout: Duration,
    keep: fn(&[u8]) -> bool,
) -> (
    std::thread::JoinHandle<Vec<Vec<u8>>>,
    std::sync::mpsc::Receiver<()>,
) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = format!("/var/run/netns/{}", ns.name());
    let ifname = ifname.to_string();
    let handle = std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: setns on an fd we own; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let sock = PacketSocket::open(&ifname);
        sock.set_receive_buffer(32 << 20);
        let _ = ready_tx.send(());
        sock.receive(expect, timeout, keep)
    });
    (handle, ready_rx)
}

/// `frame` with an 802.1Q tag for `vid` inserted after the MACs.
pub fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let mut tag = 0x8100u16.to_be_bytes().to_vec();
    tag.extend_from_slice(&vid.to_be_bytes());
    f.splice(12..12, tag);
    f
}

/// A switch namespace with hosts around it: host `x` (a, b, c, ...) has
/// `x0` with 10.77.SUBNET.(i+1)/24, wired to port `sx` in `sw`.
pub struct Star {
    /// Owns the namespaces (removed on drop).
    pub topo: Topology,
    pub sw: NetNs,
    pub hosts: Vec<NetNs>,
}

/// Builds a [`Star`] of `n` hosts (at most 3). `gro`: GRO on the hosts'
/// veths, which a veth needs to accept XDP-redirected frames.
pub fn star(tag: &str, n: usize, subnet: u8, gro: bool) -> Star {
    let mut topo = Topology::new(tag);
    let sw = topo.netns("sw");
    let mut hosts = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().take(n).enumerate() {
        let h = topo.netns(name);
        let (hif, sif) = (format!("{name}0"), format!("s{name}"));
        topo.veth((&h, &hif), (&sw, &sif));
        h.ip(&[
            "addr",
            "add",
            &format!("10.77.{subnet}.{}/24", i + 1),
            "dev",
            &hif,
        ]);
        if gro {
            h.exec_ok(&["ethtool", "-K", &hif, "gro", "on"]);
        }
        hosts.push(h);
    }
    Star { topo, sw, hosts }
}

/// `ping -c N` from a namespace; true if every reply came.
pub fn ping(from: &NetNs, to: &str, n: u32) -> bool {
    from.exec(&[
        "ping",
        "-c",
        &n.to_string(),
        "-i",
        "0.05",
        "-W",
        "2",
        "-q",
        to,
    ])
    .status
    .success()
}

/// Sends `frames` out of `ifname` in `ns`, in bursts of 32 with a pause in
/// between: a moderate rate (~50 kpps) that tests expect no loss at.
pub fn send_paced(ns: &NetNs, ifname: &str, frames: impl IntoIterator<Item = Vec<u8>> + Send) {
    ns.enter(|| {
        let sock = PacketSocket::open(ifname);
        for (i, f) in frames.into_iter().enumerate() {
            sock.send(&f);
            if i % 32 == 31 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    });
}

/// `n` test frames of `len` bytes from `ifname`'s own MAC to `dst`,
/// numbered from 0, paced as [`send_paced`].
pub fn send_test_stream(ns: &NetNs, ifname: &str, dst: [u8; 6], n: u32, len: usize) {
    let src = mac_of(ns, ifname);
    send_paced(
        ns,
        ifname,
        (0..n).map(move |seq| test_frame(dst, src, TEST_ETHERTYPE, seq, len)),
    );
}

/// A `steer` outcome counter of `ifname`, from `dataplane status --json`.
pub fn steer_counter(sw: &NetNs, ifname: &str, outcome: &str) -> u64 {
    let out = sw.dataplane_ok(&["status", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .find(|s| s["interface"] == ifname)
        .and_then(|s| s["counters"][outcome].as_u64())
        .unwrap_or_else(|| panic!("no {outcome} counter for {ifname} in {out}"))
}

/// Sorted, without duplicates.
pub fn distinct(mut seqs: Vec<u32>) -> Vec<u32> {
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}
