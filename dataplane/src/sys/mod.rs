//! Kernel glue, the only place with raw bpf(2) ([`bpf`]) and ioctls: what
//! the kernel says about interfaces ([`netdev`]), TAP devices ([`tun`]),
//! namespaces ([`netns`]) and our rights ([`privileges`]), turned into
//! errors a user can act on, and owner-only unix sockets
//! ([`private_socket`]).
//!
//! Why each piece is written here rather than taken from a crate (aya,
//! nix/rustix, rtnetlink, tun, ethtool crates were looked at):
//! - bpf(2) link detach, pinned-object open, link by id: aya 0.14 has no
//!   link detach, and its link-by-id is crate-private (`bpf.rs`).
//! - TAP open with `IFF_VNET_HDR` and `TUNSETOFFLOAD`: the tun crates hide
//!   the fd's offload flags and the vnet header size the ports need (`tun.rs`).
//! - MTU, flags, MAC (`SIOCGIF*`), ethtool statistics and channel counts
//!   (`SIOCETHTOOL`): one helper per kind of ioctl, read at port open and
//!   once a second; rtnetlink would bring an async netlink stack for three
//!   reads, and the ethtool crates are netlink-only and async (`netdev.rs`).
//! - XDP programs on an interface and a veth's peer namespace: from `ip -j
//!   -d link` (iproute2 is a dependency anyway), read at attach and open,
//!   not per frame (`netdev.rs`).
//! - setns/unshare: two calls, on a thread the caller chose (`netns.rs`).
//! - `malloc_trim` after eBPF loads: aya's loader parses the kernel's BTF
//!   each time, and glibc would keep that memory per thread (`memory.rs`).
//! - A unix socket that is owner-only from its first moment (bound in a
//!   0700 directory, then renamed): std has no way to bind with a mode
//!   (`private_socket.rs`).

pub mod bpf;
pub mod memory;
pub mod netdev;
pub mod netns;
pub mod private_socket;
pub mod privileges;
pub mod route;
pub mod tun;
