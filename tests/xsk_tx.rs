//! AF_XDP transmit on a real veth pair: frames written into UMEM frames and
//! sent through `dataplane::xsk::XskSocket` on one end must all arrive at
//! an AF_PACKET socket on the other end, and every frame must come back to
//! the pool through the completion ring.
//!
//! Needs root (network namespaces, AF_XDP, AF_PACKET); skipped otherwise.
//! Everything happens inside a private namespace `dpx-<pid>`, deleted at the
//! end even if the test panics.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::xsk::{
    BindMode, BoundMode, Error, FramePool, SocketConfig, Umem, UmemConfig, XdpDesc, XskSocket,
};

const FRAMES: u32 = 1000;
const BURST: usize = 64;
const FRAME_LEN: usize = 64;
const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A network namespace that is deleted when this is dropped (also while
/// unwinding from a failed assertion).
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Netns {
        // Guard first: whatever happens below, Drop cleans up.
        let ns = Netns {
            name: name.to_string(),
        };
        // A namespace left over by a killed earlier run with our pid.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name]);
        ns
    }

    /// Runs `ip -n NS ARGS...`.
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", self.name.as_str()];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Runs CMD inside the namespace (`ip netns exec`).
    fn exec(&self, cmd: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", self.name.as_str()];
        all.extend_from_slice(cmd);
        run(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cleanup: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("cleanup: ip netns del {}: {e}", self.name),
        }
    }
}

fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Moves the calling thread (only) into the namespace.
fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd; it changes only this thread's
    // network namespace, which is what the test wants.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

fn ifindex(ifname: &str) -> u32 {
    let c = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: NUL-terminated string valid for the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {ifname}");
    index
}

fn set_int_opt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) {
    // SAFETY: `value` is a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
}

/// An AF_PACKET socket receiving everything that arrives on `ifname`.
fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2), checked and owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto as i32,
        )
    };
    assert!(
        raw >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Room for all frames even if we read only after sending (each 64-byte
    // frame costs ~1 KiB of skb truesize).
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20);
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: `timeout` is a live timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex(ifname) as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind AF_PACKET to {ifname}: {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// Sequence numbers of the test frames received on `fd` until `want` have
/// arrived or nothing arrives for a while.
fn receive_test_frames(fd: &OwnedFd, want: usize) -> (HashSet<u32>, usize) {
    let (mut seqs, mut test_frames) = (HashSet::new(), 0usize);
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    while seqs.len() < want && Instant::now() < deadline {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // The receive timeout: nothing more is coming.
                Some(libc::EAGAIN) => break,
                Some(libc::EINTR) => continue,
                _ => panic!("recv on AF_PACKET: {e}"),
            }
        }
        let frame = &buf[..n as usize];
        if frame.len() < 18 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE {
            continue;
        }
        test_frames += 1;
        assert_eq!(frame.len(), FRAME_LEN, "frame length");
        assert_eq!(&frame[0..6], &DST, "destination MAC");
        assert_eq!(&frame[6..12], &SRC, "source MAC");
        let seq = u32::from_be_bytes(frame[14..18].try_into().unwrap());
        assert!(seq < FRAMES, "sequence number {seq} out of range");
        assert!(seqs.insert(seq), "sequence number {seq} received twice");
    }
    (seqs, test_frames)
}

fn write_test_frame(buf: &mut [u8], seq: u32) {
    buf.fill(0);
    buf[0..6].copy_from_slice(&DST);
    buf[6..12].copy_from_slice(&SRC);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[14..18].copy_from_slice(&seq.to_be_bytes());
}

/// The test proper, on a thread inside the namespace.
fn send_and_check() {
    let sink = packet_socket("x1");

    let umem = Arc::new(Umem::new(UmemConfig::default()).expect("UMEM"));
    let mut pool = FramePool::new(&umem);
    let capacity = umem.frame_count() as usize;
    assert_eq!(pool.len(), capacity);

    // Sockets in creation order: the first registers the UMEM and must be
    // dropped last.
    let mut sockets: Vec<XskSocket> = Vec::new();
    sockets.push(
        XskSocket::new(&umem, "x0", 0, &SocketConfig::default()).expect("AF_XDP socket on x0"),
    );
    assert_eq!(
        sockets[0].bound_mode(),
        BoundMode::Copy,
        "veth has no zero-copy: Auto must fall back to copy mode"
    );

    // A second socket on the other veth end shares the UMEM (own fill and
    // completion rings, XDP_SHARED_UMEM) and inherits copy mode. With no
    // XDP program on x1 it does not take frames from the AF_PACKET sink.
    let shared =
        XskSocket::new(&umem, "x1", 0, &SocketConfig::default()).expect("shared-UMEM socket on x1");
    assert_eq!(shared.bound_mode(), BoundMode::Copy);
    sockets.push(shared);
    // An explicit zero-copy request cannot join a copy-mode UMEM, and the
    // owner's queue cannot be bound twice: both refused with a clear error.
    let zc = SocketConfig {
        bind: BindMode::ZeroCopy,
        ..SocketConfig::default()
    };
    match XskSocket::new(&umem, "x1", 1, &zc) {
        Err(e @ Error::ModeMismatch { .. }) => println!("expected refusal: {e}"),
        other => panic!("zero-copy on a copy-mode UMEM: {:?}", other.map(|s| s.fd())),
    }
    match XskSocket::new(&umem, "x0", 0, &SocketConfig::default()) {
        Err(e @ Error::QueueTaken { .. }) => println!("expected refusal: {e}"),
        other => panic!(
            "second socket on the owner's queue: {:?}",
            other.map(|s| s.fd())
        ),
    }
    match XskSocket::new(&umem, "dpx-nonexistent", 0, &SocketConfig::default()) {
        Err(e @ Error::NoSuchInterface { .. }) => println!("expected refusal: {e}"),
        other => panic!("missing interface: {:?}", other.map(|s| s.fd())),
    }

    let sock = &mut sockets[0];
    let mut burst: Vec<XdpDesc> = Vec::with_capacity(BURST);
    let (mut next_seq, mut kicks) = (0u32, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while next_seq < FRAMES || !burst.is_empty() || sock.outstanding_tx() > 0 {
        assert!(
            Instant::now() < deadline,
            "TX stalled: {next_seq} written, {} waiting, {} outstanding, stats {:?}",
            burst.len(),
            sock.outstanding_tx(),
            sock.statistics()
        );
        if burst.is_empty() {
            while burst.len() < BURST && next_seq < FRAMES {
                let addr = pool.alloc().expect("a free frame");
                // SAFETY: `addr` just came off the free list: this test is
                // the frame's only holder until it is queued for TX.
                write_test_frame(unsafe { umem.frame_mut(addr, FRAME_LEN) }, next_seq);
                burst.push(XdpDesc {
                    addr,
                    len: FRAME_LEN as u32,
                    options: 0,
                });
                next_seq += 1;
            }
        }
        let accepted = sock.send(&burst) as usize;
        burst.drain(..accepted);
        sock.kick_tx();
        kicks += 1;
        let completed = sock.complete(&mut pool, u32::MAX);
        if accepted == 0 && completed == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
        // Exact accounting at every step: free + queued here + in the socket.
        assert_eq!(
            pool.len() + burst.len() + sock.outstanding_tx() as usize,
            capacity,
            "a frame is missing or counted twice"
        );
    }
    let stats = sock.statistics().expect("XDP_STATISTICS");
    println!("sent {FRAMES} frames in {kicks} loop rounds; socket statistics {stats:?}");
    assert_eq!(stats.tx_invalid_descs, 0, "kernel rejected TX descriptors");
    assert_eq!(pool.len(), capacity, "every frame back in the pool");
    assert_eq!(pool.len(), umem.frame_count() as usize);

    let (seqs, test_frames) = receive_test_frames(&sink, FRAMES as usize);
    println!(
        "AF_PACKET on x1 received {test_frames} test frames, {} distinct sequence numbers",
        seqs.len()
    );
    assert_eq!(test_frames, FRAMES as usize, "frames received on x1");
    assert_eq!(seqs.len(), FRAMES as usize, "distinct sequence numbers");

    // Drop in reverse order of creation: the UMEM's owner last.
    while let Some(s) = sockets.pop() {
        drop(s);
    }
}

#[test]
fn xsk_tx_reaches_the_peer_and_frames_come_back() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED xsk tx test: needs root (creates network namespaces and AF_XDP sockets)");
        return;
    }
    let ns = Netns::create(&format!("dpx-{}", std::process::id()));
    // Keep the namespace quiet (no IPv6 autoconf, router solicitations).
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    ns.ip(&["link", "add", "x0", "type", "veth", "peer", "name", "x1"]);
    ns.ip(&["link", "set", "x0", "up"]);
    ns.ip(&["link", "set", "x1", "up"]);

    let name = ns.name.clone();
    let result = std::thread::spawn(move || {
        enter(&name);
        send_and_check();
    })
    .join();
    // Delete the namespace before reporting a failure from the thread.
    drop(ns);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
