//! The hot path: the PMD threads that move frames between ports
//! ([`engine`]: one PMD's loop; [`pmds`]: starting them, handing them
//! ports; what crosses between them in `inbox`; how long their
//! iterations take in `iteration_time`), the slow-path thread that learns
//! what they saw and keeps the switch (`slow_path`), and the mirror of
//! learned unicast into the kernel's fast path ([`fastpath`]). The ports themselves are in [`crate::port`], the
//! forwarding decisions in [`crate::switch`], AF_XDP in [`crate::xsk`].

pub mod engine;
pub mod fastpath;
mod inbox;
mod iteration_time;
pub mod pmds;
mod slow_path;
