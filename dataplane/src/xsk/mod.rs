//! AF_XDP sockets and the UMEM they share, on plain libc.
//!
//! Written against the kernel ABI rather than on xsk-rs: xsk-rs builds
//! libxdp and libbpf from C (clang, m4, libelf at build time) to get the same
//! few hundred lines of ring code, and hides the frame bookkeeping that the
//! switch must account for exactly. Here the rings are [`ring`], the memory
//! and its free list are [`umem`], and [`socket`] binds them to a queue.
//!
//! Several sockets (on different interfaces and queues) can share one UMEM,
//! each with its own fill and completion rings (kernel >= 5.10): a frame
//! received on one port is transmitted on another by moving its descriptor.

pub mod ring;
pub mod socket;
pub mod sys;
pub mod umem;

use thiserror::Error;

pub use socket::{BindMode, BoundMode, BusyPoll, SocketConfig, XskSocket};
pub use sys::XdpStatistics;
pub use umem::{FramePool, Umem, UmemConfig};

/// A frame in the UMEM: struct xdp_desc.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XdpDesc {
    /// Offset of the frame's first byte in the UMEM.
    pub addr: u64,
    /// Frame length.
    pub len: u32,
    /// Flags (multi-buffer continuation; unused here).
    pub options: u32,
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("interface {ifname:?} does not exist in this network namespace (see `ip link`)")]
    NoSuchInterface { ifname: String },
    #[error("this kernel has no AF_XDP sockets (socket(AF_XDP): EAFNOSUPPORT); it needs CONFIG_XDP_SOCKETS=y")]
    XdpSocketsUnsupported,
    #[error("{call} for {ifname} queue {queue}: {source}")]
    Syscall {
        call: &'static str,
        ifname: String,
        queue: u32,
        source: std::io::Error,
    },
    #[error("bind AF_XDP socket to {ifname} queue {queue} in {mode:?} mode: {source}{hint}", hint = bind_hint(source))]
    Bind {
        ifname: String,
        queue: u32,
        mode: BoundMode,
        source: std::io::Error,
    },
    #[error("mapping the {what}: {source}")]
    Mmap {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{field} = {value}: {why}")]
    Config {
        field: &'static str,
        value: u32,
        why: &'static str,
    },
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EINVAL) => " (does the interface have that rx queue? `ethtool -l IFACE`)",
        Some(libc::EBUSY) => " (another AF_XDP socket is bound to this queue)",
        Some(libc::EOPNOTSUPP) => " (the driver does not support this mode; try bind=copy)",
        _ => "",
    }
}
