//! AF_XDP sockets and the UMEM they share, on xsk-rs (libxdp's rings and
//! socket setup), with the frame accounting the switch needs around it.
//!
//! - [`umem`]: the packet memory ([`Umem`]), made by xsk-rs;
//! - [`pool`]: its free list ([`FramePool`]), which is ours;
//! - [`config`]: the sizes and modes a UMEM and a socket are made with;
//! - [`anchor`]: the socket that holds a UMEM's registration, bound to `lo`
//!   in a network namespace of its own (why: see below);
//! - [`socket`]: [`XskSocket`], one port's socket on (interface, queue):
//!   xsk-rs's four rings plus the record of which frames the kernel holds
//!   through it (`lent.rs`).
//!
//! # What xsk-rs does and what stays here
//!
//! xsk-rs (libxdp underneath) creates the UMEM, the sockets and their rings
//! and moves descriptors through them. Around it this module keeps, each for
//! a reason xsk-rs 0.11 gives:
//!
//! - **The free list** ([`FramePool`]): xsk-rs hands every frame descriptor
//!   to the caller and tracks none, which is what exact accounting needs.
//! - **Frames by address** ([`XdpDesc`], [`Umem::frame`]): the engine, the
//!   TAP and vhost-user ports and the hand-off between PMDs name frames by
//!   (address, length) and a VLAN push moves a frame's start; an xsk-rs
//!   `FrameDesc` can neither be made for an address nor have its address
//!   changed. So a frame is sent from its frame's canonical descriptor (the
//!   one `Umem::new` returned for it), and a frame whose start moved is moved
//!   back to the canonical start first (a memmove of its bytes, only for
//!   frames a VLAN push or pop touched).
//! - **The anchor** ([`anchor`]): libxdp binds the UMEM's first socket on
//!   the fd that registered the UMEM and never closes that fd while the
//!   UMEM lives, so the first port's (interface, queue) could never be bound
//!   again after that port is deleted (EINVAL). The anchor is that first
//!   socket; it is never a port, so ports come and go in any order. Sharing
//!   sockets inherit its copy mode; a zero-copy port has a UMEM of its own
//!   ([`Umem::new_zero_copy`], see [`BindMode`]).
//! - **Busy-poll options**: set on the socket's fd (xsk-rs has none).
//!
//! # Typical use
//!
//! ```no_run
//! use std::sync::Arc;
//! use dataplane::xsk::{FramePool, SocketConfig, Umem, UmemConfig, XskSocket};
//!
//! // Needs root: the anchor socket is made in a network namespace of its own.
//! let umem = Arc::new(Umem::new(UmemConfig::default())?);
//! let mut pool = FramePool::new(&umem);
//! let mut sock = XskSocket::new(&umem, "veth0", 0, &SocketConfig::default())?;
//! sock.fill(&mut pool, 1024);
//! let mut rx = Vec::with_capacity(64);
//! sock.recv(&mut rx, 64);
//! let sent = sock.send(&rx) as usize; // echo them back out
//! sock.kick_tx();
//! for desc in &rx[sent..] {
//!     pool.free(desc.addr);
//! }
//! sock.complete(&mut pool, 64);
//! # Ok::<(), dataplane::xsk::Error>(())
//! ```

pub mod anchor;
pub mod config;
mod lent;
pub mod pool;
pub mod socket;
pub mod umem;

use std::io;

use thiserror::Error;

pub use config::{BindMode, BoundMode, BusyPoll, SocketConfig, UmemConfig};
pub use pool::FramePool;
pub use socket::XskSocket;
pub use umem::Umem;

/// One frame as the switch passes it around: the layout of the kernel's
/// `struct xdp_desc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XdpDesc {
    /// Offset of the frame's first byte from the start of the UMEM (it may
    /// point past the chunk's start: RX headroom, a pushed tag).
    pub addr: u64,
    /// Frame length in bytes.
    pub len: u32,
    /// Option flags (multi-buffer continuation); 0 here.
    pub options: u32,
}

/// The kernel's drop and error counters of one socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Frames dropped on RX for reasons other than the ones below.
    pub rx_dropped: u64,
    /// Invalid descriptors found in the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors found in the TX ring (their frames are consumed
    /// but never completed).
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times a TX wakeup found the TX ring empty.
    pub tx_ring_empty_descs: u64,
}

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
    /// Making or registering the UMEM failed (xsk-rs's `Umem::new`).
    #[error(
        "creating the UMEM ({frame_count} frames of {frame_size} bytes): {reason}{detail}{hint}",
        detail = source.as_ref().map(|s| format!(": {s}")).unwrap_or_default(),
        hint = umem_hint(source.as_ref())
    )]
    Umem {
        frame_count: u32,
        frame_size: u32,
        reason: String,
        source: Option<io::Error>,
    },
    /// The anchor's network namespace could not be made.
    #[error(
        "making a private network namespace for the UMEM's anchor socket (unshare CLONE_NEWNET): \
         {source}{hint}",
        hint = if source.raw_os_error() == Some(libc::EPERM) { " (needs CAP_SYS_ADMIN: run as root)" } else { "" }
    )]
    AnchorNamespace { source: io::Error },
    /// The anchor socket could not be bound to `lo` of its namespace.
    #[error(
        "binding the UMEM's anchor socket to lo of its private namespace: {reason}{detail}{hint}",
        detail = source.as_ref().map(|s| format!(": {s}")).unwrap_or_default(),
        hint = source.as_ref().map_or("", socket_hint)
    )]
    Anchor {
        reason: String,
        source: Option<io::Error>,
    },
    /// `if_nametoindex` found no such interface.
    #[error(
        "no network interface named {ifname:?} in this network namespace (if_nametoindex failed): \
         check `ip link`"
    )]
    NoSuchInterface { ifname: String },
    /// Looking the interface up failed otherwise (a bad name, out of fds).
    #[error(transparent)]
    Interface { source: crate::sys::netdev::Error },
    /// Creating or binding the socket failed (xsk-rs's `Socket::new`).
    #[error(
        "AF_XDP socket on {ifname} queue {queue}: {reason}{detail}{hint}",
        detail = source.as_ref().map(|s| format!(": {s}")).unwrap_or_default(),
        hint = source.as_ref().map_or("", bind_hint)
    )]
    Socket {
        ifname: String,
        queue: u32,
        reason: String,
        source: Option<io::Error>,
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
    /// An explicit mode that differs from the UMEM's.
    #[error(
        "bind AF_XDP socket to {ifname} queue {queue}: {requested} mode was asked, but its UMEM \
         is bound in {umem_mode} mode, and every socket on a UMEM has the mode of its first: \
         use bind=auto"
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
        Some(libc::EAFNOSUPPORT) => {
            " (this kernel has no AF_XDP sockets: it was built without CONFIG_XDP_SOCKETS)"
        }
        _ => "",
    }
}

fn umem_hint(e: Option<&io::Error>) -> &'static str {
    match e.and_then(|e| e.raw_os_error()) {
        Some(libc::ENOMEM | libc::EPERM | libc::EAGAIN) => {
            " (the UMEM is pinned and counted against RLIMIT_MEMLOCK: raise `ulimit -l`, \
             run with CAP_IPC_LOCK, or use fewer frames)"
        }
        _ => "",
    }
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES | libc::EAFNOSUPPORT) => socket_hint(e),
        Some(libc::EINVAL) => " (does the interface have that rx queue? see `ethtool -l IFACE`)",
        Some(libc::EBUSY) => " (another AF_XDP socket is bound to this queue)",
        Some(libc::EOPNOTSUPP) => {
            " (the driver has no zero-copy, e.g. veth or TAP: use bind=copy or bind=auto)"
        }
        Some(libc::ENETDOWN) => " (the interface is down)",
        _ => "",
    }
}
