//! The whole port, without root: a vhost-user frontend (rust-vmm's
//! `Frontend`, as QEMU would speak) connects over the socket and shares a
//! memfd as guest memory; the test writes the guest's rings by hand and
//! drives the port's `rx_burst`/`tx_burst` as the engine would. (One file:
//! the cases share that bench.)

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::Frontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::virtq::VNET_HDR_LEN;
use super::VhostUserPort;
use crate::port::{DropReason, Frames, Port, PortCounters, PortState};
use crate::xsk::{FramePool, Umem, UmemConfig, XdpDesc};

const MEM_SIZE: usize = 1 << 20;
const QSIZE: u16 = 16;
/// Guest-physical layout: queue q's rings at q * 0x4000 (+0 descriptors,
/// +0x1000 avail, +0x2000 used); buffers from 0x10000.
fn ring(q: u64, part: u64) -> u64 {
    q * 0x4000 + part * 0x1000
}
const BUF: u64 = 0x1_0000;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// How long the protocol thread may take to catch up.
const WAIT: Duration = Duration::from_secs(5);

/// A guest: shared memory, its rings, and a connected frontend.
struct Guest {
    mem: GuestMemoryMmap,
    frontend: Frontend,
    kick: [EventFd; 2],
    call: [EventFd; 2],
    avail_idx: [u16; 2],
}

impl Guest {
    fn connect(path: &std::path::Path) -> Guest {
        let name = std::ffi::CString::new("guest").unwrap();
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned
        // by the File right away.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MEM_SIZE as u64).unwrap();
        let mem = GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;

        let frontend = Frontend::connect(path, 2).expect("connect to the port's socket");
        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        let wanted = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(offered & wanted, wanted, "features offered: {offered:#x}");
        // Without VHOST_USER_F_PROTOCOL_FEATURES: SET_FEATURES enables the
        // rings (sent before they are set up, as QEMU does).
        frontend.set_features(wanted).unwrap();
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: MEM_SIZE as u64,
                userspace_addr: host,
                mmap_offset: 0,
                mmap_handle: file.as_raw_fd(),
            }])
            .unwrap();
        let kick = [new_eventfd(), new_eventfd()];
        let call = [new_eventfd(), new_eventfd()];
        for q in 0..2usize {
            let base = q as u64;
            frontend.set_vring_num(q, QSIZE).unwrap();
            frontend
                .set_vring_addr(
                    q,
                    &VringConfigData {
                        queue_max_size: QSIZE,
                        queue_size: QSIZE,
                        flags: 0,
                        desc_table_addr: host + ring(base, 0),
                        avail_ring_addr: host + ring(base, 1),
                        used_ring_addr: host + ring(base, 2),
                        log_addr: None,
                    },
                )
                .unwrap();
            frontend.set_vring_base(q, 0).unwrap();
            frontend.set_vring_call(q, &call[q]).unwrap();
            frontend.set_vring_kick(q, &kick[q]).unwrap();
        }
        Guest {
            mem,
            frontend,
            kick,
            call,
            avail_idx: [0; 2],
        }
    }

    fn desc(&self, q: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = ring(q, 0) + u64::from(i) * 16;
        self.mem.write_obj(addr, GuestAddress(d)).unwrap();
        self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
    }

    /// Makes chain `head` of queue `q` available and kicks.
    fn offer(&mut self, q: usize, head: u16) {
        let avail = ring(q as u64, 1);
        let slot = avail + 4 + 2 * u64::from(self.avail_idx[q] % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
            .unwrap();
        self.kick[q].write(1).unwrap();
    }

    /// Offers `frame` (behind a zero virtio-net header, in one buffer at
    /// BUF) as transmit chain `head`, and kicks.
    fn offer_tx_frame(&mut self, head: u16, frame: &[u8]) {
        self.mem
            .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(BUF))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(BUF + VNET_HDR_LEN as u64))
            .unwrap();
        self.desc(1, head, BUF, (VNET_HDR_LEN + frame.len()) as u32, 0, 0);
        self.offer(1, head);
    }

    fn used_idx(&self, q: u64) -> u16 {
        self.mem.read_obj(GuestAddress(ring(q, 2) + 2)).unwrap()
    }

    fn used(&self, q: u64, n: u16) -> (u32, u32) {
        let e = ring(q, 2) + 4 + 8 * u64::from(n % QSIZE);
        (
            self.mem.read_obj(GuestAddress(e)).unwrap(),
            self.mem.read_obj(GuestAddress(e + 4)).unwrap(),
        )
    }

    /// Whether the device signalled queue `q` since the last look.
    fn called(&self, q: usize) -> bool {
        self.call[q].read().is_ok()
    }
}

fn new_eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn frame(len: usize, seq: u8) -> Vec<u8> {
    let mut f = vec![seq; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, seq]);
    f
}

struct Bench {
    umem: Umem,
    pool: FramePool,
}

impl Bench {
    fn new() -> Bench {
        let umem = Umem::unregistered(UmemConfig {
            frame_count: 64,
            ..UmemConfig::default()
        })
        .unwrap();
        let pool = FramePool::new(&umem);
        Bench { umem, pool }
    }

    fn frames(&mut self) -> Frames<'_> {
        Frames {
            umem: &self.umem,
            pool: &mut self.pool,
        }
    }

    /// Receives from the port until `n` frames arrived or `wait` passed.
    fn receive(&mut self, port: &mut VhostUserPort, n: usize, wait: Duration) -> Vec<XdpDesc> {
        let mut got = Vec::new();
        let deadline = Instant::now() + wait;
        while got.len() < n && Instant::now() < deadline {
            let mut frames = self.frames();
            if port.rx_burst(&mut frames, &mut got, 64) == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        got
    }

    /// A UMEM frame holding `data`, as the switch would hand it to tx_burst.
    fn umem_frame(&mut self, data: &[u8]) -> XdpDesc {
        let chunk = self.pool.alloc().unwrap();
        // SAFETY: the chunk just came off the free list; nothing else
        // refers to it.
        let buf = unsafe { self.umem.frame_mut(chunk + 256, data.len()) };
        buf.copy_from_slice(data);
        XdpDesc {
            addr: chunk + 256,
            len: data.len() as u32,
            options: 0,
        }
    }
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dp-vhu-port-{tag}-{}.sock", std::process::id()))
}

/// Waits until the port has (or has not) a connection the PMD can see.
fn wait_link(port: &mut VhostUserPort, bench: &mut Bench, connected: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // rx_burst picks up connection changes.
        let mut sink = Vec::new();
        port.rx_burst(&mut bench.frames(), &mut sink, 0);
        if (port.counters().state() == PortState::Up) == connected {
            return;
        }
        assert!(Instant::now() < deadline, "link never became {connected}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A port on `path` with a guest connected and seen by the PMD side.
struct Connected {
    counters: Arc<PortCounters>,
    port: VhostUserPort,
    bench: Bench,
    /// Free frames before the test: all of them must come back.
    all_frames: usize,
    g: Guest,
}

impl Connected {
    fn new(path: &std::path::Path) -> Connected {
        let counters = Arc::new(PortCounters::default());
        let mut port = VhostUserPort::open(path, None, counters.clone()).unwrap();
        let mut bench = Bench::new();
        let all_frames = bench.pool.len();
        let g = Guest::connect(path);
        wait_link(&mut port, &mut bench, true);
        Connected {
            counters,
            port,
            bench,
            all_frames,
            g,
        }
    }
}

#[test]
fn a_frontend_exchanges_frames_with_the_port_and_survives_reconnects() {
    let path = socket_path("x");
    let Connected {
        counters,
        mut port,
        mut bench,
        all_frames,
        mut g,
    } = Connected::new(&path);

    // Guest -> port: two good frames around a chain outside guest memory and
    // a descriptor loop.
    let (f0, f3) = (frame(60, 0), frame(1500, 3));
    let hdr = [0u8; VNET_HDR_LEN];
    g.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    g.mem.write_slice(&f0, GuestAddress(BUF + 12)).unwrap();
    g.desc(1, 0, BUF, 72, 0, 0);
    g.desc(1, 1, MEM_SIZE as u64 + 0x1000, 100, 0, 0);
    g.desc(1, 2, BUF, 64, DESC_F_NEXT, 2);
    // Header and frame in separate descriptors.
    g.mem.write_slice(&hdr, GuestAddress(BUF + 0x1000)).unwrap();
    g.mem.write_slice(&f3, GuestAddress(BUF + 0x2000)).unwrap();
    g.desc(1, 3, BUF + 0x1000, 12, DESC_F_NEXT, 4);
    g.desc(1, 4, BUF + 0x2000, 1500, 0, 0);
    for head in [0, 1, 2, 3] {
        g.offer(1, head);
    }
    let got = bench.receive(&mut port, 2, WAIT);
    assert_eq!(got.len(), 2);
    assert_eq!(bench.umem.frame(got[0].addr, got[0].len as usize), &f0[..]);
    assert_eq!(bench.umem.frame(got[1].addr, got[1].len as usize), &f3[..]);
    for d in &got {
        bench.pool.free(d.addr);
    }
    let s = counters.snapshot();
    assert_eq!(s.rx_packets, 2);
    assert_eq!(s.drops(DropReason::InvalidDescriptor), 2);
    // Every chain went back, the bad ones too, with length 0.
    assert_eq!(g.used_idx(1), 4);
    assert_eq!(g.used(1, 1), (1, 0));
    assert!(g.called(1), "guest not signalled for its transmit queue");

    // Port -> guest: a 600-byte frame over 256-byte receive buffers
    // (mergeable: three of them).
    for i in 0..4u16 {
        g.desc(
            0,
            i,
            BUF + 0x8000 + u64::from(i) * 0x100,
            256,
            DESC_F_WRITE,
            0,
        );
        g.offer(0, i);
    }
    let f = frame(600, 7);
    let mut batch = vec![bench.umem_frame(&f)];
    port.tx_burst(&mut bench.frames(), &mut batch);
    assert!(batch.is_empty(), "frame not taken");
    assert_eq!(g.used_idx(0), 3);
    assert_eq!(
        (g.used(0, 0), g.used(0, 1), g.used(0, 2)),
        ((0, 256), (1, 256), (2, 100))
    );
    let mut seen = vec![0u8; 612];
    for i in 0..3u64 {
        let n = if i < 2 { 256 } else { 100 };
        g.mem
            .read_slice(
                &mut seen[i as usize * 256..i as usize * 256 + n],
                GuestAddress(BUF + 0x8000 + i * 0x100),
            )
            .unwrap();
    }
    assert_eq!(u16::from_le_bytes([seen[10], seen[11]]), 3, "num_buffers");
    assert_eq!(&seen[12..], &f[..]);
    assert!(g.called(0), "guest not signalled for its receive queue");
    assert_eq!(counters.snapshot().tx_packets, 1);
    // One 256-byte buffer left: the next frame does not fit and stays in
    // the batch (the engine drops and counts it).
    let mut batch = vec![bench.umem_frame(&f)];
    port.tx_burst(&mut bench.frames(), &mut batch);
    assert_eq!(batch.len(), 1);
    bench.pool.free(batch[0].addr);

    // The frontend goes away: the port is down, frames toward it stay in
    // the batch, and it never panics.
    drop(g);
    wait_link(&mut port, &mut bench, false);
    let mut batch = vec![bench.umem_frame(&f)];
    port.tx_burst(&mut bench.frames(), &mut batch);
    assert_eq!(batch.len(), 1);
    bench.pool.free(batch[0].addr);
    assert!(bench
        .receive(&mut port, 1, Duration::from_millis(200))
        .is_empty());

    // A new frontend on the same socket gets a fresh device.
    let mut g = Guest::connect(&path);
    wait_link(&mut port, &mut bench, true);
    g.offer_tx_frame(0, &f0);
    let got = bench.receive(&mut port, 1, WAIT);
    assert_eq!(got.len(), 1, "nothing from the reconnected frontend");
    bench.pool.free(got[0].addr);

    // No frame was kept by the port.
    assert_eq!(bench.pool.len(), all_frames);
    let _ = g.frontend.get_features();
    drop(port);
    assert!(!path.exists(), "socket file left after the port closed");
}

/// Fails the test (by aborting the test binary) instead of letting it hang
/// when a burst never returns, which is what these tests guard against.
struct Watchdog(Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    fn arm(what: &'static str) -> Watchdog {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("{what}: a burst did not return within 20 s");
                std::process::abort();
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_broken_avail_index_or_a_stopped_ring_never_holds_the_pmd() {
    let _watchdog = Watchdog::arm("a_broken_avail_index_or_a_stopped_ring_never_holds_the_pmd");
    let path = socket_path("stall");
    let Connected {
        counters,
        mut port,
        mut bench,
        all_frames,
        mut g,
    } = Connected::new(&path);

    // One good transmit chain, then the driver claims far more chains than
    // the ring holds, on both rings.
    let f0 = frame(60, 0);
    g.offer_tx_frame(0, &f0);
    let bogus = QSIZE * 3;
    for q in 0..2u64 {
        g.mem
            .write_obj(bogus, GuestAddress(ring(q, 1) + 2))
            .unwrap();
    }
    g.kick[1].write(1).unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        assert_eq!(port.rx_burst(&mut bench.frames(), &mut got, 64), 0);
        let f = frame(60, 1);
        let mut batch = vec![bench.umem_frame(&f)];
        port.tx_burst(&mut bench.frames(), &mut batch);
        assert_eq!(batch.len(), 1, "a frame went into a broken ring");
        bench.pool.free(batch[0].addr);
    }
    // Counted once per ring when the stall began, not once per look.
    assert_eq!(counters.snapshot().drops(DropReason::InvalidDescriptor), 2);
    assert_eq!(g.used_idx(1), 0);

    // Repaired: the offered chain comes through.
    g.mem
        .write_obj(g.avail_idx[1], GuestAddress(ring(1, 1) + 2))
        .unwrap();
    let got = bench.receive(&mut port, 1, WAIT);
    assert_eq!(got.len(), 1, "nothing after the guest repaired its ring");
    assert_eq!(bench.umem.frame(got[0].addr, got[0].len as usize), &f0[..]);
    bench.pool.free(got[0].addr);

    // The frontend stops its transmit ring (as DPDK and QEMU do when they
    // stop) with a chain still offered: nothing is taken from a stopped
    // ring, and the PMD is not held.
    g.offer_tx_frame(1, &f0);
    g.frontend.get_vring_base(1).unwrap();
    assert!(bench
        .receive(&mut port, 1, Duration::from_millis(200))
        .is_empty());
    assert_eq!(g.used_idx(1), 1);

    assert_eq!(bench.pool.len(), all_frames);
    drop(g);
    drop(port);
}

#[test]
fn a_guest_that_keeps_offering_bad_chains_gets_a_bounded_share_of_the_pmd() {
    let _watchdog = Watchdog::arm("a_guest_that_keeps_offering_bad_chains_gets_a_bounded_share");
    let path = socket_path("badflood");
    let Connected {
        counters,
        mut port,
        mut bench,
        all_frames,
        mut g,
    } = Connected::new(&path);
    // A full ring of transmit chains the device must refuse (zero length).
    for head in 0..QSIZE {
        g.desc(1, head, BUF, 0, 0, 0);
        g.offer(1, head);
    }
    // One burst of at most 4 takes at most 4 chains, refused ones
    // included: a guest refilling its ring as fast as bad chains come
    // back would otherwise keep the PMD in one burst for ever.
    let mut got = Vec::new();
    assert_eq!(port.rx_burst(&mut bench.frames(), &mut got, 4), 0);
    assert_eq!(g.used_idx(1), 4, "chains taken by one burst of 4");
    // The rest over the next bursts; each bad chain counted once.
    for _ in 0..3 {
        port.rx_burst(&mut bench.frames(), &mut got, 4);
    }
    assert_eq!(g.used_idx(1), QSIZE);
    assert_eq!(
        counters.snapshot().drops(DropReason::InvalidDescriptor)
            + counters.snapshot().drops(DropReason::Malformed),
        u64::from(QSIZE)
    );
    assert!(got.is_empty());
    assert_eq!(bench.pool.len(), all_frames);
    drop(g);
    drop(port);
}

/// Whether any of `fds` is readable within `timeout`.
fn readable(fds: &[RawFd], timeout: Duration) -> bool {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polled` is a live array of `polled.len()` pollfds.
    let n = unsafe {
        libc::poll(
            polled.as_mut_ptr(),
            polled.len() as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
    n > 0
}

#[test]
fn a_guest_kick_stays_visible_to_a_sleeping_pmd_until_it_takes_note() {
    // The PMD sleeps in poll(2) on `poll_fds`; the protocol thread consumes
    // the guest's kick eventfd. Before, the PMD polled that very fd, and a
    // kick consumed before its poll began was slept through until the
    // timer (up to 100 ms): the kick must stay visible until rx_burst.
    let path = socket_path("kick");
    let Connected {
        mut port,
        mut bench,
        all_frames,
        mut g,
        ..
    } = Connected::new(&path);
    let fds = port.poll_fds();
    assert!(!readable(&fds, Duration::ZERO), "an idle port wakes nobody");
    let f = frame(60, 7);
    g.offer_tx_frame(0, &f);
    assert!(readable(&fds, WAIT), "the kick reaches the PMD's poll");
    // Long after the protocol thread consumed the guest's own eventfd.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        readable(&fds, Duration::ZERO),
        "and stays until the PMD looks"
    );
    let got = bench.receive(&mut port, 1, WAIT);
    assert_eq!(got.len(), 1);
    bench.pool.free(got[0].addr);
    assert!(
        !readable(&port.poll_fds(), Duration::ZERO),
        "taken note of: an idle PMD can sleep again"
    );
    assert_eq!(bench.pool.len(), all_frames);
    drop(g);
    drop(port);
}

#[test]
fn a_guest_toggling_its_ring_is_counted_every_time_but_logged_rarely() {
    // A guest that flips its avail index between bogus and valid made the
    // PMD format a warning and an info line per flip.
    let mut stall = super::Stall::default();
    let e = super::virtq::ChainError::ZeroLength;
    let (mut counted, mut logged) = (0, 0);
    for _ in 0..1000 {
        counted += stall.enter("vhost-user:test", "transmit", &e);
        logged += usize::from(stall.logged);
        stall.clear("vhost-user:test", "transmit");
    }
    assert_eq!(counted, 1000, "every stall is counted");
    assert_eq!(logged, 1, "but logged once per 10 s");
}

#[test]
fn a_memory_table_larger_than_its_file_is_refused_not_mapped() {
    // Mapped as announced, the region's second half has no file behind
    // it: the first access there killed the whole switch with SIGBUS.
    let _watchdog = Watchdog::arm("a_memory_table_larger_than_its_file_is_refused_not_mapped");
    let path = socket_path("membus");
    let counters = Arc::new(PortCounters::default());
    let mut port = VhostUserPort::open(&path, None, counters.clone()).unwrap();
    let mut bench = Bench::new();
    let name = std::ffi::CString::new("short").unwrap();
    // SAFETY: memfd_create with a NUL-terminated name; owned by the File.
    let file = unsafe { File::from_raw_fd(libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC)) };
    file.set_len(MEM_SIZE as u64 / 2).unwrap();
    let frontend = Frontend::connect(&path, 2).expect("connect");
    frontend.set_owner().unwrap();
    let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF);
    frontend.set_features(features).unwrap();
    let table = frontend.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: 0x7000_0000_0000,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }]);
    // The relay closes the connection: this call or the next ones fail.
    let refused = table.is_err()
        || (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            frontend.set_vring_num(0, QSIZE).is_err()
        });
    assert!(refused, "the frontend was not disconnected");
    // The port never came up, and polling it touches no guest memory.
    for _ in 0..20 {
        let mut got = Vec::new();
        assert_eq!(port.rx_burst(&mut bench.frames(), &mut got, 64), 0);
    }
    assert_ne!(counters.state(), PortState::Up);
    drop(frontend);
    drop(port);
}
