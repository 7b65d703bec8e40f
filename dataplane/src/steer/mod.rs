//! The `steer` XDP program: attach, detach, inspect, and the handle the
//! switch uses to register its AF_XDP sockets.
//!
//! An attachment is a pinned bpf_link plus the program's pinned maps (see
//! [`pins`]), so it outlives the process that made it: `dataplane attach`
//! exits, the interface keeps steering, and any later `dataplane` process
//! (status, detach, run) finds it again through bpffs.

mod attach;
mod attachment;
pub mod pins;
pub mod policy;
mod status;

pub use attach::{attach, detach, is_attached, AttachOptions, AttachReport, ModeRequest};
pub use attachment::{Attachment, Counters};
pub use status::{follow_logs, status, Health, Status};

use aya::maps::MapError;
use aya::programs::ProgramError;
use dataplane_common::map_names;
use thiserror::Error;

use crate::sys::netdev;
use crate::sys::privileges;

/// The XDP object built by `cargo xtask build-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf.o"));

/// The embedded XDP object (all programs), for other loaders in this crate.
pub(crate) fn object() -> &'static [u8] {
    OBJECT
}

/// Maps that are pinned next to the link.
const PINNED_MAPS: [&str; 10] = [
    map_names::POLICY,
    map_names::MATCHES,
    map_names::XSKS,
    map_names::COUNTERS,
    map_names::FDB,
    map_names::PORTS,
    map_names::EGRESS,
    map_names::TUNNELS,
    map_names::ALLOWED,
    map_names::LOGS,
];

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Privileges(#[from] privileges::Error),
    #[error(transparent)]
    Netdev(#[from] netdev::Error),
    #[error(transparent)]
    Pins(#[from] pins::Error),
    #[error(
        "interface {ifname} already has XDP program {name:?} (id {id}, {mode} mode) attached: \
         remove it (`ip link set dev {ifname} xdp off`) or pass --force to replace it"
    )]
    OtherProgram {
        ifname: String,
        id: u32,
        name: String,
        mode: &'static str,
    },
    #[error("--force could not remove XDP program {id} from {ifname}: {detail}")]
    ForceFailed {
        ifname: String,
        id: u32,
        detail: String,
    },
    #[error("loading the steer XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("loading steer into the kernel (verifier): {0}")]
    Verify(ProgramError),
    #[error("attaching steer to {ifname} in {mode} mode: {source}")]
    Attach {
        ifname: String,
        mode: &'static str,
        source: ProgramError,
    },
    #[error(
        "attaching a tc program of steer to the tc ingress of {ifname}: {source} \
         (TCX links need kernel >= 6.6)"
    )]
    AttachTc {
        ifname: String,
        source: ProgramError,
    },
    #[error(
        "steer on {ifname} was attached through netlink, not a bpf_link, so it cannot be pinned \
         (needs kernel >= 5.9); it has been detached again"
    )]
    NotALink { ifname: String },
    #[error("pinning {what} of {ifname}: {source}")]
    Pin {
        ifname: String,
        what: String,
        source: aya::pin::PinError,
    },
    #[error("map {name} of {ifname}: {source}")]
    Map {
        ifname: String,
        name: &'static str,
        source: MapError,
    },
    #[error(
        "interface {ifname} is in use by another running dataplane switch (pid {pid}); stop it first"
    )]
    InUse { ifname: String, pid: u32 },
    #[error("fast path of {ifname}: setting switch port {port_id}: {source}")]
    FastPort {
        ifname: String,
        port_id: u32,
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("dataplane has nothing attached to {ifname} in this network namespace (see `dataplane status`)")]
    NotAttached { ifname: String },
    #[error("detaching the XDP link of {ifname}: {source}")]
    Detach {
        ifname: String,
        source: std::io::Error,
    },
    #[error("reading the pinned steer program of {ifname}: {source}")]
    ProgramInfo {
        ifname: String,
        source: ProgramError,
    },
    #[error("reading eBPF logs of {ifname}: {source}")]
    Logs {
        ifname: String,
        source: aya_log::Error,
    },
}
