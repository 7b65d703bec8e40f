//! AF_XDP sockets and the UMEM they share, written directly on libc.
//!
//! - [`umem`]: the packet memory ([`Umem`]) and its free list ([`FramePool`]);
//! - [`ring`]: the four single-producer/single-consumer rings shared with
//!   the kernel (fill, RX, TX, completion);
//! - [`socket`]: [`XskSocket`], which binds rings on a UMEM to one
//!   interface queue;
//! - [`sys`]: the kernel ABI (structs and constants of `linux/if_xdp.h`).
//!
//! # Why not xsk-rs (libxdp)
//!
//! - **No C build.** xsk-rs compiles libxdp and libbpf from source (clang,
//!   m4, libelf, zlib at build time) to obtain what is, for our use, a few
//!   hundred lines of ring code and four syscalls.
//! - **Exact frame accounting.** The switch must know where every frame is
//!   at every moment (free list, fill ring, RX ring, in flight, TX ring,
//!   completion ring). Here the free list is ours ([`FramePool`]), each
//!   socket counts the frames it holds for TX, and nothing moves a frame
//!   behind our back.
//! - **One UMEM across interfaces.** All AF_XDP ports of a PMD thread share
//!   one UMEM, each socket with its own fill and completion rings (since
//!   kernel 5.10), so a frame received on one port is sent on another by moving
//!   its descriptor, never its bytes; completions come back on the sending
//!   socket, which keeps the accounting per port.
//!
//! # Typical use
//!
//! ```no_run
//! use std::sync::Arc;
//! use dataplane::xsk::{FramePool, SocketConfig, Umem, UmemConfig, XskSocket};
//!
//! let umem = Arc::new(Umem::new(UmemConfig::default())?);
//! let mut pool = FramePool::new(&umem);
//! // The first socket registers the UMEM; later ones share it, and they may
//! // close in any order.
//! let mut sock = XskSocket::new(&umem, "veth0", 0, &SocketConfig::default())?;
//! sock.fill(&mut pool, 1024);
//! let mut rx = Vec::with_capacity(64);
//! sock.recv(&mut rx, 64);
//! let sent = sock.send(&rx) as usize; // echo them back out
//! sock.kick_tx();
//! for desc in &rx[sent..] {
//!     pool.free(desc.addr & !(umem.frame_size() as u64 - 1));
//! }
//! sock.complete(&mut pool, 64);
//! # Ok::<(), dataplane::xsk::Error>(())
//! ```

pub mod ring;
pub mod socket;
pub mod sys;
pub mod umem;

use std::io;

use thiserror::Error;

pub use ring::{ConsumerRing, ProducerRing, XdpDesc};
pub use socket::{BindMode, BoundMode, BusyPoll, SocketConfig, XskSocket};
pub use sys::XdpStatistics;
pub use umem::{FramePool, Umem, UmemConfig};

/// What went wrong creating or querying an AF_XDP socket or its UMEM: each
/// variant names the call that failed and the interface and queue.
#[derive(Debug, Error)]
pub enum Error {
    /// A size in [`UmemConfig`] or [`SocketConfig`] the kernel would refuse.
    #[error("invalid {field} = {value}: expected {expected}")]
    InvalidConfig {
        field: &'static str,
        value: u32,
        expected: &'static str,
    },
    /// Mapping the UMEM area failed.
    #[error(
        "mmap of {bytes} bytes for the UMEM ({frame_count} frames of {frame_size} bytes): {source}"
    )]
    UmemMmap {
        bytes: usize,
        frame_count: u32,
        frame_size: u32,
        source: io::Error,
    },
    /// `if_nametoindex` found no such interface.
    #[error(
        "no network interface named {ifname:?} in this network namespace (if_nametoindex failed): \
         check `ip link`"
    )]
    NoSuchInterface { ifname: String },
    /// `socket(AF_XDP)` said EAFNOSUPPORT.
    #[error(
        "socket(AF_XDP) for {ifname} queue {queue}: this kernel has no AF_XDP sockets \
         (EAFNOSUPPORT): it was built without CONFIG_XDP_SOCKETS"
    )]
    XdpSocketsUnsupported { ifname: String, queue: u32 },
    /// `socket(AF_XDP)` failed otherwise.
    #[error("socket(AF_XDP) for {ifname} queue {queue}: {source}{hint}", hint = socket_hint(.source))]
    Socket {
        ifname: String,
        queue: u32,
        source: io::Error,
    },
    /// `setsockopt(XDP_UMEM_REG)` failed.
    #[error(
        "setsockopt(XDP_UMEM_REG) registering the {bytes}-byte UMEM on the AF_XDP socket for \
         {ifname} queue {queue}: {source}{hint}",
        hint = umem_reg_hint(.source)
    )]
    UmemRegister {
        ifname: String,
        queue: u32,
        bytes: u64,
        source: io::Error,
    },
    /// Another `setsockopt` failed (ring sizes, busy poll).
    #[error("setsockopt({option}) on the AF_XDP socket for {ifname} queue {queue}: {source}")]
    SetSockOpt {
        option: &'static str,
        ifname: String,
        queue: u32,
        source: io::Error,
    },
    /// A `getsockopt` failed (ring offsets, bind options, statistics).
    #[error("getsockopt({option}) on the AF_XDP socket for {ifname} queue {queue}: {source}")]
    GetSockOpt {
        option: &'static str,
        ifname: String,
        queue: u32,
        source: io::Error,
    },
    /// Mapping one of the socket's rings failed.
    #[error("mmap of the {ring} ring of the AF_XDP socket for {ifname} queue {queue}: {source}")]
    RingMmap {
        ring: &'static str,
        ifname: String,
        queue: u32,
        source: io::Error,
    },
    /// `bind` failed.
    #[error(
        "bind AF_XDP socket to {ifname} queue {queue} ({flags}): {source}{hint}",
        hint = bind_hint(.source)
    )]
    Bind {
        ifname: String,
        queue: u32,
        /// The mode flag bound with: XDP_COPY, XDP_ZEROCOPY or XDP_SHARED_UMEM.
        flags: &'static str,
        source: io::Error,
    },
    /// An explicit mode that differs from the shared UMEM's.
    #[error(
        "bind AF_XDP socket to {ifname} queue {queue}: {requested} mode was asked, but the shared \
         UMEM is bound in {umem_mode} mode by its first socket, and every socket on a UMEM has its mode"
    )]
    ModeMismatch {
        ifname: String,
        queue: u32,
        requested: BindMode,
        umem_mode: BoundMode,
    },
    /// A socket of this UMEM is on this very interface queue.
    #[error(
        "bind AF_XDP socket to {ifname} queue {queue}: a socket of this UMEM is bound there \
         already (one socket per interface queue)"
    )]
    QueueTaken { ifname: String, queue: u32 },
}

fn socket_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (AF_XDP sockets need CAP_NET_RAW: run as root)",
        _ => "",
    }
}

fn umem_reg_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOMEM | libc::EPERM | libc::EAGAIN) => {
            " (the UMEM is pinned and counted against RLIMIT_MEMLOCK: raise `ulimit -l`, \
             run with CAP_IPC_LOCK, or use fewer frames)"
        }
        _ => "",
    }
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EINVAL) => " (does the interface have that rx queue? see `ethtool -l IFACE`)",
        Some(libc::EBUSY) => " (another AF_XDP socket is bound to this queue)",
        Some(libc::EOPNOTSUPP) => " (the driver cannot do this mode: use copy mode)",
        Some(libc::ENETDOWN) => " (the interface is down)",
        _ => "",
    }
}
