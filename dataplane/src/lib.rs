//! dataplane: a virtual switch on XDP and AF_XDP.
//!
//! Hot path:
//! - [`datapath`]: the PMD threads, the slow-path thread that keeps the
//!   switch, and the kernel fast-path mirror.
//! - [`port`]: the port kinds behind one trait (AF_XDP, container veth,
//!   TAP, vhost-user) and the offloads they finish in software.
//! - [`switch`]: FDB, VLANs and forwarding decisions (no I/O).
//! - [`xsk`]: AF_XDP sockets and the UMEM they share.
//!
//! Control path:
//! - [`daemon`]: `dataplane run`, its configuration and its lifecycle.
//! - [`control`]: the control socket, its protocol, and metrics.
//! - [`steer`]: the XDP/tc programs' attachments (pinned in bpffs so they
//!   outlive the CLI).
//! - [`sys`]: kernel glue (interfaces, namespaces, rights, private sockets).
//! - [`cni`]: the CNI plugin `dataplane-cni` (containers made by podman,
//!   containerd, CRI-O join the switch).
//!
//! And [`traffic`]: the generator and bare redirects of the benchmarks.

pub mod cni;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod logging;
pub mod port;
pub mod steer;
pub mod switch;
pub mod sync;
pub mod sys;
pub mod traffic;
pub mod xsk;
