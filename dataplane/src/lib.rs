//! dataplane: a virtual switch on XDP and AF_XDP.
//!
//! - [`steer`]: the XDP program that picks the frames the switch wants, and
//!   its attachments (pinned in bpffs so they outlive the CLI).
//! - [`xsk`]: AF_XDP sockets and the UMEM they share.
//! - [`netdev`], [`netns`], [`privileges`]: what the kernel says about
//!   interfaces, namespaces and our rights, turned into errors a user can act on.
//! - [`run`]: the daemon (`dataplane run`); [`engine`] its PMD threads;
//!   [`control`] its control socket and metrics.

pub mod config;
pub mod control;
pub mod engine;
pub mod fastpath;
pub mod forward;
pub mod gen;
pub mod logging;
pub mod netdev;
pub mod netns;
pub mod port;
pub mod private_socket;
pub mod privileges;
pub mod run;
pub mod steer;
pub mod switch;
pub mod sync;
pub mod xsk;
