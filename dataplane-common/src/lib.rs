//! Types shared across the kernel boundary.
//!
//! Everything here is `#![no_std]` and compiled twice: into the XDP object
//! (`dataplane-ebpf`, target `bpfel-unknown-none`) and into userspace
//! (`dataplane`, with the `user` feature so aya can move the types in and out
//! of maps). Map value layouts are `#[repr(C)]` and padded explicitly: the
//! kernel copies them as raw bytes.
//!
//! The parsing and policy logic lives here too, as plain functions over a
//! [`wire::FrameBytes`] reader, so the exact code the verifier accepts is also
//! unit-tested on byte slices without root.
#![no_std]

pub mod checksum;
pub mod counters;
pub mod fastpath;
pub mod flow;
pub mod policy;
pub mod wire;

/// Name of the XDP program in the object, as `aya` looks it up.
pub const STEER_PROGRAM: &str = "steer";

/// Name of `steer`'s tc twin, for container ports (no XDP on them).
pub const STEER_TC_PROGRAM: &str = "steer_tc";

/// Name of the tc program that completes `steer`'s fast-path hand-offs.
pub const DELIVER_PROGRAM: &str = "deliver";

/// Name of the redirect-everything XDP program (bare redirect).
pub const FORWARD_PROGRAM: &str = "forward";

/// Name of the benchmarks' guest echo: `forward` for IPv4 frames addressed
/// to the guest, after a MAC rewrite towards the sink ([`map_names::ECHO_MACS`]).
pub const ECHO_PROGRAM: &str = "echo";

/// Name of the generator's program: `forward` that first writes the frame's
/// headers afresh from [`map_names::GEN_HEADER`], one flow after the other.
pub const GEN_PROGRAM: &str = "gen";

/// Bytes of every generated frame `gen` rewrites: Ethernet + IPv4 + UDP.
pub const GEN_HEADER_LEN: usize = wire::build::UDP_IPV4_HEADERS;

/// Map names in the object (kernel map names are limited to 15 bytes).
pub mod map_names {
    /// `Array<Policy>` with one entry: how this interface steers.
    pub const POLICY: &str = "POLICY";
    /// `HashMap<MatchKey, u8>`: the listed MACs, VLANs and EtherTypes.
    pub const MATCHES: &str = "MATCHES";
    /// `XskMap`: rx queue index -> AF_XDP socket.
    pub const XSKS: &str = "XSKS";
    /// `PerCpuArray<u64>` indexed by [`crate::counters::Outcome`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `DevMap` with one slot: where `forward` sends frames.
    pub const FWD_PORT: &str = "FWD_PORT";
    /// `PerCpuArray<u64>`: frames forwarded (0) and failed (1).
    pub const FWD_COUNT: &str = "FWD_COUNT";
    /// `Array<[u8; GEN_HEADER_LEN]>`, one entry per flow: the generator's
    /// headers (sized at load).
    pub const GEN_HEADER: &str = "GEN_HEADER";
    /// `Array<u32>` with one entry: how many flows `GEN_HEADER` holds.
    pub const GEN_FLOWS: &str = "GEN_FLOWS";
    /// `HashMap<FdbKey, FdbValue>`: learned addresses for the fast path.
    pub const FDB: &str = "FDB";
    /// `DevMap`: switch port id -> egress device, for XDP redirects.
    pub const PORTS: &str = "PORTS";
    /// `Array<u32>`: switch port id -> egress ifindex, as `PORTS`, for the
    /// tc programs (the kernel lets only XDP programs read a devmap).
    pub const EGRESS: &str = "EGRESS";
    /// `Array<TunnelPort>`: switch port id -> its tunnel, for tunnel ports
    /// (VXLAN): what encapsulation writes and decapsulation checks.
    pub const TUNNELS: &str = "TUNNELS";
    /// `Array<u64>` of 64 words: the VLANs a trunk port allows, as a bitmap.
    pub const ALLOWED: &str = "ALLOWED";
    /// `Array<[u8; 12]>` with one entry: the echo guest's MAC, then the
    /// MAC its answers go to.
    pub const ECHO_MACS: &str = "ECHO_MACS";
    /// aya-log's ring buffer.
    pub const LOGS: &str = "AYA_LOGS";
}

/// Capacity of the XSKMAP as compiled: the highest rx queue index a socket
/// can sit on, plus one. The loader raises it to the interface's queue
/// count where that is more.
pub const MAX_QUEUES: u32 = 64;
/// Capacity of the fast-path FDB map as compiled (the switch sizes it from
/// its FDB's size at load).
pub const MAX_FDB: u32 = 8192;
/// Capacity of the `PORTS` devmap and `EGRESS` as compiled, and the
/// switch's default number of port slots (it sizes them from its
/// `max_ports` at load).
pub const MAX_PORTS: u32 = 64;
/// Capacity of the match table (MACs + VLANs + EtherTypes together).
pub const MAX_MATCHES: u32 = 1024;
