//! The hot path: the PMD threads that move frames between ports
//! ([`engine`]) and the mirror of learned unicast into the kernel's fast
//! path ([`fastpath`]). The ports themselves are in [`crate::port`], the
//! forwarding decisions in [`crate::switch`], AF_XDP in [`crate::xsk`].

pub mod engine;
pub mod fastpath;
