//! Kernel glue, the only place with raw bpf(2) ([`bpf`]) and ioctls: what
//! the kernel says about interfaces ([`netdev`]), TAP devices ([`tun`]),
//! namespaces ([`netns`]) and our rights ([`privileges`]), turned into
//! errors a user can act on, and owner-only unix sockets
//! ([`private_socket`]).

pub mod bpf;
pub mod netdev;
pub mod netns;
pub mod private_socket;
pub mod privileges;
pub mod tun;
