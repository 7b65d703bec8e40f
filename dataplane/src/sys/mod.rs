//! Kernel glue: what the kernel says about interfaces ([`netdev`]),
//! namespaces ([`netns`]) and our rights ([`privileges`]), turned into
//! errors a user can act on, and owner-only unix sockets
//! ([`private_socket`]).

pub mod netdev;
pub mod netns;
pub mod private_socket;
pub mod privileges;
