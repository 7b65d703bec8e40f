//! AF_XDP transmit on a real veth pair: frames written into UMEM frames and
//! sent through `dataplane::xsk::XskSocket` on one end must all arrive at
//! an AF_PACKET socket on the other end, and every frame must come back to
//! the pool through the completion ring.
//!
//! Needs root (network namespaces, AF_XDP, AF_PACKET); skipped otherwise.
//! Everything happens inside a throwaway namespace of the harness, deleted
//! at the end even if the test panics.

mod harness;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::xsk::{
    BindMode, BoundMode, Error, FramePool, SocketConfig, Umem, UmemConfig, XdpDesc, XskSocket,
};
use harness::{privileged, test_frame, test_frame_seq, PacketSocket, Topology, TEST_ETHERTYPE};

const FRAMES: u32 = 1000;
const BURST: usize = 64;
const FRAME_LEN: usize = 64;
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Sequence numbers of the test frames received on `sink`, checking each
/// frame's length and addresses; panics on a duplicate.
fn receive_test_frames(sink: &PacketSocket, want: usize) -> (HashSet<u32>, usize) {
    let frames = sink.receive(want, Duration::from_secs(10), |f| {
        test_frame_seq(f, TEST_ETHERTYPE).is_some()
    });
    let mut seqs = HashSet::new();
    for frame in &frames {
        assert_eq!(frame.len(), FRAME_LEN, "frame length");
        assert_eq!(&frame[0..6], &DST, "destination MAC");
        assert_eq!(&frame[6..12], &SRC, "source MAC");
        let seq = test_frame_seq(frame, TEST_ETHERTYPE).unwrap();
        assert!(seq < FRAMES, "sequence number {seq} out of range");
        assert!(seqs.insert(seq), "sequence number {seq} received twice");
    }
    (seqs, frames.len())
}

/// The test proper, on a thread inside the namespace.
fn send_and_check() {
    let sink = PacketSocket::open("x1");
    // Room for every frame: the sink is read only after all were sent.
    sink.set_receive_buffer(16 << 20);

    let umem = Arc::new(Umem::new(UmemConfig::default()).expect("UMEM"));
    let mut pool = FramePool::new(&umem);
    let capacity = umem.frame_count() as usize;
    assert_eq!(pool.len(), capacity);

    // veth has no zero-copy: a zero-copy UMEM of its own cannot be bound
    // there (the queue stays free), and the error says what to do.
    let zc = SocketConfig {
        bind: BindMode::ZeroCopy,
        ..SocketConfig::default()
    };
    match Umem::new_zero_copy(UmemConfig::default(), "x0", 0, &zc) {
        Err(e @ Error::Socket { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("x0") && text.contains("has no zero-copy"),
                "{text}"
            );
            println!("expected refusal: {text}");
        }
        other => panic!("zero-copy on veth: {:?}", other.map(|(_, s)| s.fd())),
    }

    // The UMEM's registration is held by its anchor socket (on lo of a
    // private namespace), so these may be dropped in any order.
    let mut sockets: Vec<XskSocket> = Vec::new();
    sockets.push(
        XskSocket::new(&umem, "x0", 0, &SocketConfig::default()).expect("AF_XDP socket on x0"),
    );
    assert_eq!(
        sockets[0].bound_mode(),
        BoundMode::Copy,
        "Auto binds in the UMEM's mode, which is copy"
    );

    // A second socket on the other veth end shares the UMEM (own fill and
    // completion rings, XDP_SHARED_UMEM) and inherits copy mode. With no
    // XDP program on x1 it does not take frames from the AF_PACKET sink.
    let shared =
        XskSocket::new(&umem, "x1", 0, &SocketConfig::default()).expect("shared-UMEM socket on x1");
    assert_eq!(shared.bound_mode(), BoundMode::Copy);
    sockets.push(shared);
    // An explicit zero-copy request cannot join a copy-mode UMEM, and x0's
    // queue cannot be bound twice: both refused with a clear error.
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
                unsafe { umem.frame_mut(addr, FRAME_LEN) }.copy_from_slice(&test_frame(
                    DST,
                    SRC,
                    TEST_ETHERTYPE,
                    next_seq,
                    FRAME_LEN,
                ));
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
    if !privileged("xsk_tx_reaches_the_peer_and_frames_come_back") {
        return;
    }
    let mut topo = Topology::new("xsk");
    let ns = topo.netns("x");
    topo.veth((&ns, "x0"), (&ns, "x1"));
    ns.enter(send_and_check);
}

/// The frames a socket lent to the kernel (fill ring, a TX ring the kernel
/// cannot drain because the link is down) come back when it closes, and
/// only then: none is lost, none is handed out while still lent.
fn lent_frames_come_back_on_close() {
    let umem = Arc::new(Umem::new(UmemConfig::default()).expect("UMEM"));
    let mut pool = FramePool::new(&umem);
    let capacity = pool.capacity();
    let mut sock = XskSocket::new(&umem, "y0", 0, &SocketConfig::default()).expect("socket on y0");
    assert_eq!(
        sock.fill(&mut pool, 100),
        100,
        "fill ring takes 100 buffers"
    );
    let unsent: Vec<XdpDesc> = (0..10)
        .map(|_| XdpDesc {
            addr: pool.alloc().expect("a free frame"),
            len: FRAME_LEN as u32,
            options: 0,
        })
        .collect();
    assert_eq!(sock.send(&unsent), 10);
    // y0 is down: the kernel refuses to transmit (ENETDOWN) and keeps them.
    sock.kick_tx();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        sock.complete(&mut pool, u32::MAX),
        0,
        "nothing sent on a down link"
    );
    assert_eq!(sock.lent_frames(), 110);
    assert_eq!(pool.len(), capacity - 110);

    let mut back = sock.close();
    back.sort();
    back.dedup();
    assert_eq!(back.len(), 110, "every lent frame, once");
    let mut expected: Vec<u64> = unsent.iter().map(|d| d.addr).collect();
    expected.extend((0..100).map(|i| i * umem.frame_size() as u64));
    expected.sort();
    assert_eq!(back, expected, "exactly the frames that were lent");
    pool.free_cold(&back);
    assert_eq!(pool.len(), capacity, "every frame back in the pool");
    assert_eq!(pool.refused_frees(), 0);
}

#[test]
fn xsk_close_returns_the_frames_the_kernel_held() {
    if !privileged("xsk_close_returns_the_frames_the_kernel_held") {
        return;
    }
    let mut topo = Topology::new("xskl");
    let ns = topo.netns("y");
    topo.veth((&ns, "y0"), (&ns, "y1"));
    ns.ip(&["link", "set", "y0", "down"]);
    ns.enter(lent_frames_come_back_on_close);
}

/// The first port socket made on a UMEM can be closed and its queue bound
/// again while another socket keeps the UMEM in use (libxdp alone would
/// keep the first socket bound for the UMEM's life: the anchor socket takes
/// that role), and a frame sent after the re-bind still arrives.
fn first_socket_leaves_and_binds_again() {
    let sink = PacketSocket::open("z1");
    let umem = Arc::new(Umem::new(UmemConfig::default()).expect("UMEM"));
    let mut pool = FramePool::new(&umem);
    let first = XskSocket::new(&umem, "z0", 0, &SocketConfig::default()).expect("socket on z0");
    let other = XskSocket::new(&umem, "z1", 0, &SocketConfig::default()).expect("socket on z1");
    pool.free_cold(&first.close());
    let mut again =
        XskSocket::new(&umem, "z0", 0, &SocketConfig::default()).expect("z0 queue 0 bound again");
    // A frame whose start is 4 bytes before its frame's usual start, as a
    // VLAN push leaves it: it must arrive byte for byte.
    let addr = pool.alloc().expect("a free frame") + 252;
    let frame = test_frame(DST, SRC, TEST_ETHERTYPE, 7, FRAME_LEN);
    // SAFETY: the frame just came off the free list: this test holds it.
    unsafe { umem.frame_mut(addr, FRAME_LEN) }.copy_from_slice(&frame);
    let desc = XdpDesc {
        addr,
        len: FRAME_LEN as u32,
        options: 0,
    };
    assert_eq!(again.send(&[desc]), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while again.outstanding_tx() > 0 {
        assert!(Instant::now() < deadline, "the frame never completed");
        again.kick_tx();
        again.complete(&mut pool, 64);
    }
    let got = sink.receive(1, Duration::from_secs(5), |f| {
        test_frame_seq(f, TEST_ETHERTYPE).is_some()
    });
    assert_eq!(got, vec![frame], "the moved frame arrives intact");
    pool.free_cold(&again.close());
    pool.free_cold(&other.close());
    assert_eq!(pool.len(), pool.capacity(), "every frame back in the pool");
    assert_eq!(pool.refused_frees(), 0);
}

#[test]
fn xsk_first_socket_can_leave_and_its_queue_bind_again() {
    if !privileged("xsk_first_socket_can_leave_and_its_queue_bind_again") {
        return;
    }
    let mut topo = Topology::new("xskf");
    let ns = topo.netns("z");
    topo.veth((&ns, "z0"), (&ns, "z1"));
    ns.enter(first_socket_leaves_and_binds_again);
}
