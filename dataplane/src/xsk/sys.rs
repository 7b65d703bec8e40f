//! The AF_XDP kernel ABI (`linux/if_xdp.h`, `asm-generic/socket.h`), spelled
//! out here so that every layout and constant this module relies on is
//! visible in one place and checked against the kernel's sizes at compile
//! time. (libc has most of these too, but not the busy-poll options, and a
//! libc upgrade must not silently change a struct we hand to the kernel.)

/// `SOL_XDP`: the socket level of every AF_XDP option.
pub const SOL_XDP: libc::c_int = 283;

// AF_XDP socket options (level SOL_XDP).
/// Where the four rings sit in their mmaps (`struct xdp_mmap_offsets`).
pub const XDP_MMAP_OFFSETS: libc::c_int = 1;
/// RX ring size (entries).
pub const XDP_RX_RING: libc::c_int = 2;
/// TX ring size (entries).
pub const XDP_TX_RING: libc::c_int = 3;
/// Register the UMEM (`struct xdp_umem_reg`).
pub const XDP_UMEM_REG: libc::c_int = 4;
/// Fill ring size (entries).
pub const XDP_UMEM_FILL_RING: libc::c_int = 5;
/// Completion ring size (entries).
pub const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
/// Drop and error counters (`struct xdp_statistics`).
pub const XDP_STATISTICS: libc::c_int = 7;
/// How the socket was bound (`struct xdp_options`).
pub const XDP_OPTIONS: libc::c_int = 8;

/// `xdp_options.flags`: the socket is bound in zero-copy mode.
pub const XDP_OPTIONS_ZEROCOPY: u32 = 1 << 0;

// mmap page offsets selecting which ring of a socket to map.
/// mmap offset of the RX ring.
pub const XDP_PGOFF_RX_RING: libc::off_t = 0;
/// mmap offset of the TX ring.
pub const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
/// mmap offset of the fill ring.
pub const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
/// mmap offset of the completion ring.
pub const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

// bind(2) flags (`sockaddr_xdp.sxdp_flags`).
/// Use the UMEM of the socket in `sxdp_shared_umem_fd`.
pub const XDP_SHARED_UMEM: u16 = 1 << 0;
/// Force copy mode.
pub const XDP_COPY: u16 = 1 << 1;
/// Force zero-copy mode (fails if the driver cannot).
pub const XDP_ZEROCOPY: u16 = 1 << 2;
/// The kernel sets [`XDP_RING_NEED_WAKEUP`] when it wants a syscall.
pub const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;

/// Ring flag: the kernel will not look at this ring again until a syscall
/// (sendto for TX, recvfrom/poll for fill) wakes it.
pub const XDP_RING_NEED_WAKEUP: u32 = 1 << 0;

// Busy-poll socket options (level SOL_SOCKET); libc has none of them for
// linux-gnu.
/// Microseconds to busy-poll the device queue in a blocking call.
pub const SO_BUSY_POLL: libc::c_int = 46;
/// Prefer busy polling over interrupt-driven softirq processing.
pub const SO_PREFER_BUSY_POLL: libc::c_int = 69;
/// Packets handled per busy-poll round.
pub const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// `struct xdp_umem_reg`, including `tx_metadata_len` (kernel >= 6.8; older
/// kernels accept the longer struct as long as the tail is zero).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct XdpUmemReg {
    /// Start of the UMEM area in our address space.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Bytes per chunk (frame).
    pub chunk_size: u32,
    /// Headroom the kernel reserves in each chunk on RX on top of its
    /// XDP_PACKET_HEADROOM (`dataplane_common::wire::FRAME_HEADROOM`).
    pub headroom: u32,
    /// `XDP_UMEM_*` flags (unaligned chunks etc.; none used here).
    pub flags: u32,
    /// Bytes of TX metadata in front of each frame (unused: 0).
    pub tx_metadata_len: u32,
}

/// `struct xdp_ring_offset`: byte offsets inside one ring's mmap.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct XdpRingOffset {
    /// The producer index (u32).
    pub producer: u64,
    /// The consumer index (u32).
    pub consumer: u64,
    /// The entry array.
    pub desc: u64,
    /// The flags word (u32; kernel >= 5.4).
    pub flags: u64,
}

/// `struct xdp_mmap_offsets`: one [`XdpRingOffset`] per ring.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct XdpMmapOffsets {
    /// RX ring.
    pub rx: XdpRingOffset,
    /// TX ring.
    pub tx: XdpRingOffset,
    /// Fill ring.
    pub fr: XdpRingOffset,
    /// Completion ring.
    pub cr: XdpRingOffset,
}

/// `struct sockaddr_xdp`, the address bind(2) takes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct SockaddrXdp {
    /// `AF_XDP`.
    pub sxdp_family: u16,
    /// `XDP_SHARED_UMEM`, `XDP_COPY`, `XDP_ZEROCOPY`, `XDP_USE_NEED_WAKEUP`.
    pub sxdp_flags: u16,
    /// Interface index.
    pub sxdp_ifindex: u32,
    /// Rx queue.
    pub sxdp_queue_id: u32,
    /// With `XDP_SHARED_UMEM`: the socket that registered the UMEM.
    pub sxdp_shared_umem_fd: u32,
}

/// `struct xdp_options`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct XdpOptions {
    /// `XDP_OPTIONS_ZEROCOPY` if bound zero-copy.
    pub flags: u32,
}

/// `struct xdp_statistics`: the kernel's per-socket drop and error counters
/// (cumulative since the socket was created).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Frames dropped on RX for reasons other than the ones below.
    pub rx_dropped: u64,
    /// Invalid descriptors found in the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors found in the TX ring (their frames are consumed
    /// but never completed).
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full (kernel >= 5.9).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (kernel >= 5.9).
    pub rx_fill_ring_empty_descs: u64,
    /// Times a TX wakeup found the TX ring empty (kernel >= 5.9).
    pub tx_ring_empty_descs: u64,
}

// The kernel's sizes; a mismatch here would corrupt what we pass it.
const _: () = assert!(std::mem::size_of::<XdpUmemReg>() == 32);
const _: () = assert!(std::mem::size_of::<XdpRingOffset>() == 32);
const _: () = assert!(std::mem::size_of::<XdpMmapOffsets>() == 128);
const _: () = assert!(std::mem::size_of::<SockaddrXdp>() == 16);
const _: () = assert!(std::mem::size_of::<XdpOptions>() == 4);
const _: () = assert!(std::mem::size_of::<XdpStatistics>() == 48);
const _: () = assert!(std::mem::size_of::<super::ring::XdpDesc>() == 16);
