//! Ports: where frames enter and leave the switch, one module per kind,
//! all behind [`Port`].
//!
//! Frames live in the one UMEM every port of a PMD thread shares; a frame is
//! named by its [`XdpDesc`] (address and length in that UMEM). AF_XDP ports
//! hand descriptors over without copying; other kinds copy in or out of
//! UMEM frames at their edge.

pub mod afxdp;
pub mod offload;
pub mod tap;
pub mod veth;
pub mod vhost_user;
pub mod vxlan;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::xsk::{BoundMode, FramePool, Umem, XdpDesc};

/// The frames of a PMD thread: the UMEM and its free list.
pub struct Frames<'a> {
    pub umem: &'a Umem,
    pub pool: &'a mut FramePool,
}

/// One switch port.
pub trait Port: Send {
    /// Name for logs and statistics (e.g. `afxdp:veth0`).
    fn name(&self) -> &str;

    /// Appends up to `max` received frames to `out`; returns how many.
    fn rx_burst(&mut self, frames: &mut Frames<'_>, out: &mut Vec<XdpDesc>, max: usize) -> usize;

    /// Queues `batch` for transmission. Frames the port accepted are removed
    /// from `batch` (the port returns them to the pool once sent); what is
    /// left did not fit and stays the caller's to free and count.
    fn tx_burst(&mut self, frames: &mut Frames<'_>, batch: &mut Vec<XdpDesc>);

    /// Reclaims sent frames, refills receive buffers, kicks the kernel.
    /// Called once per engine iteration.
    fn maintain(&mut self, frames: &mut Frames<'_>);

    /// File descriptors to wait on (POLLIN) when the switch is idle.
    fn poll_fds(&self) -> Vec<RawFd>;

    /// Frames this port holds right now: the exact-accounting check adds
    /// these to the free pool.
    fn frames_held(&self) -> HeldFrames;

    /// Refreshes counters that cost a syscall (kernel drop statistics);
    /// the engine calls it about once a second, never per frame.
    fn refresh_counters(&mut self);

    /// The port's counters (shared with whoever reports them).
    fn counters(&self) -> &Arc<PortCounters>;

    /// A tunnel port's parameters, remotes and table of which remote each
    /// learned MAC sits behind (`show fdb`, the fast path); `None` for
    /// every other kind.
    fn tunnel(&self) -> Option<vxlan::TunnelView> {
        None
    }

    /// The port is about to be closed while the switch goes on (`port del`,
    /// or its interface went away): stop receiving and take back what the
    /// kernel already returned (received frames, completed sends), without
    /// blocking. A copying port holds no frames and needs nothing here.
    fn release_frames(&mut self, _frames: &mut Frames<'_>) {}

    /// Closes the port, off the PMD thread (closing a socket waits for the
    /// kernel), and returns the base addresses of the UMEM frames the
    /// kernel still held through it: free now, for the owning PMD's pool.
    fn close(self: Box<Self>) -> Vec<u64> {
        Vec::new()
    }
}

/// Frames a port holds, by where they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldFrames {
    /// Receive buffers: in fill rings or RX rings.
    pub rx_side: u64,
    /// Queued for transmit: in TX rings, on the wire, or in completion rings.
    pub tx_side: u64,
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// No free UMEM frame for a copy (flooding, or a copying port).
    NoFreeFrame = 0,
    /// The egress port's transmit ring was full.
    TxRingFull = 1,
    /// The kernel dropped on receive: RX ring full, or no fill buffer.
    RxKernel = 2,
    /// The kernel rejected a descriptor (RX or TX).
    InvalidDescriptor = 3,
    /// Switch policy: VLAN not allowed, destination on the ingress port,
    /// no egress.
    Policy = 4,
    /// Too short to parse.
    Malformed = 5,
    /// The egress port is down: link down, interface gone, or no
    /// vhost-user frontend connected.
    PortDown = 6,
    /// A tunnel port received a frame that is not for it: another VNI, a
    /// VTEP not in its list, not VXLAN at all.
    Tunnel = 7,
    /// A tunnel port has no next hop toward the remote VTEP yet (the
    /// kernel has no route to it, or its ARP is unanswered).
    NoNextHop = 8,
    /// Larger than the port's path can carry (a tunnel's overlay MTU is
    /// the underlay's less the encapsulation): never sent as a fragment.
    TooBig = 9,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 10] = [
        DropReason::NoFreeFrame,
        DropReason::TxRingFull,
        DropReason::RxKernel,
        DropReason::InvalidDescriptor,
        DropReason::Policy,
        DropReason::Malformed,
        DropReason::PortDown,
        DropReason::Tunnel,
        DropReason::NoNextHop,
        DropReason::TooBig,
    ];

    /// Name in statistics output.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoFreeFrame => "no_free_frame",
            DropReason::TxRingFull => "tx_ring_full",
            DropReason::RxKernel => "rx_kernel",
            DropReason::InvalidDescriptor => "invalid_desc",
            DropReason::Policy => "policy",
            DropReason::Malformed => "malformed",
            DropReason::PortDown => "port_down",
            DropReason::Tunnel => "tunnel",
            DropReason::NoNextHop => "no_next_hop",
            DropReason::TooBig => "too_big",
        }
    }
}

/// Whether a port can carry frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum PortState {
    /// Open and its link is up.
    #[default]
    Up = 0,
    /// Its link is down, or its interface is gone (it reopens when the
    /// interface comes back).
    Down = 1,
}

impl PortState {
    /// Name in statistics output.
    pub const fn name(self) -> &'static str {
        match self {
            PortState::Up => "up",
            PortState::Down => "down",
        }
    }
}

/// Counters of one port, written by its PMD thread, read by anyone.
/// Relaxed atomics: each counter is independent and only ever grows
/// (except the state, which the supervisor sets).
#[derive(Debug, Default)]
pub struct PortCounters {
    /// [`PortState`] as a u8.
    state: AtomicU8,
    /// An AF_XDP port's bind mode: 0 not AF_XDP, 1 copy, 2 zero-copy.
    afxdp_mode: AtomicU8,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames the in-kernel fast path forwarded from this port (they never
    /// reach the AF_XDP socket, so rx/tx above do not count them).
    pub fast_path: AtomicU64,
    /// Received frames whose TCP/UDP checksum the sender left to the
    /// device and the switch finished (see `offload/`).
    pub checksums_completed: AtomicU64,
    /// Received super-frames (GSO/TSO) the switch cut into segments, and
    /// the segments it made of them.
    pub gso_frames: AtomicU64,
    pub gso_segments: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl PortCounters {
    /// Adds received frames.
    pub fn add_rx(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds transmitted frames.
    pub fn add_tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds drops for `reason`.
    pub fn add_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds checksums finished in software.
    pub fn add_checksums_completed(&self, n: u64) {
        self.checksums_completed.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one super-frame cut into `segments` segments.
    pub fn add_gso_frame(&self, segments: u64) {
        self.gso_frames.fetch_add(1, Ordering::Relaxed);
        self.gso_segments.fetch_add(segments, Ordering::Relaxed);
    }

    /// Sets the fast-path total (read from the port's `steer` counters).
    pub fn set_fast_path(&self, total: u64) {
        self.fast_path.store(total, Ordering::Relaxed);
    }

    /// Sets the port's state.
    pub fn set_state(&self, state: PortState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Records how an AF_XDP port's sockets are bound.
    pub fn set_afxdp_mode(&self, mode: BoundMode) {
        let v = match mode {
            BoundMode::Copy => 1,
            BoundMode::ZeroCopy => 2,
        };
        self.afxdp_mode.store(v, Ordering::Relaxed);
    }

    /// How an AF_XDP port's sockets are bound; `None` for other kinds.
    pub fn afxdp_mode(&self) -> Option<BoundMode> {
        match self.afxdp_mode.load(Ordering::Relaxed) {
            1 => Some(BoundMode::Copy),
            2 => Some(BoundMode::ZeroCopy),
            _ => None,
        }
    }

    /// The port's state.
    pub fn state(&self) -> PortState {
        match self.state.load(Ordering::Relaxed) {
            0 => PortState::Up,
            _ => PortState::Down,
        }
    }

    /// A consistent-enough copy for display.
    pub fn snapshot(&self) -> PortSnapshot {
        let mut drops = [0; DropReason::ALL.len()];
        for (d, c) in drops.iter_mut().zip(&self.drops) {
            *d = c.load(Ordering::Relaxed);
        }
        PortSnapshot {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            fast_path: self.fast_path.load(Ordering::Relaxed),
            checksums_completed: self.checksums_completed.load(Ordering::Relaxed),
            gso_frames: self.gso_frames.load(Ordering::Relaxed),
            gso_segments: self.gso_segments.load(Ordering::Relaxed),
            drops,
            state: self.state(),
            afxdp_mode: self.afxdp_mode(),
        }
    }
}

/// Plain copy of [`PortCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub fast_path: u64,
    pub checksums_completed: u64,
    pub gso_frames: u64,
    pub gso_segments: u64,
    pub drops: [u64; DropReason::ALL.len()],
    pub state: PortState,
    pub afxdp_mode: Option<BoundMode>,
}

impl PortSnapshot {
    /// Drops for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}
