//! The bare in-kernel XDP redirect: `forward` on one interface sends every
//! frame straight to another through a devmap. No switching at all: the
//! ceiling of kernel-assisted forwarding that benchmarks compare against.
//! The generator ([`crate::traffic::gen`]) drives the same program with BPF_PROG_RUN,
//! and the benchmarks' guests run it (`forward` between two "VFs") or its
//! `echo` variant (a container or VM answering towards the sink).

use aya::maps::{Array, DevMap, MapData, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader};
use dataplane_common::{map_names, GEN_HEADER_LEN};
use thiserror::Error;

use crate::sys::netdev;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Netdev(#[from] netdev::Error),
    #[error("loading the forward program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("loading the forward program into the kernel: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("setting {ifname} as the forward target: {source}")]
    Target {
        ifname: String,
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("reading forward counters: {0}")]
    Counters(aya::maps::MapError),
    #[error("writing the generator's frame headers into GEN_HEADER: {0}")]
    Header(aya::maps::MapError),
    #[error("more generator flows than a BPF array holds (2^32)")]
    TooManyFlows,
    #[error("writing the echo's MAC addresses into ECHO_MACS: {0}")]
    Echo(aya::maps::MapError),
    #[error("attaching forward to {ifname}: {source}")]
    Attach {
        ifname: String,
        source: aya::programs::ProgramError,
    },
}

/// `forward` (or `gen`) loaded with `target` in its devmap (not attached
/// anywhere).
pub struct Forward {
    ebpf: Ebpf,
    program: &'static str,
}

impl Forward {
    /// Loads the program and points it at `target`.
    pub fn load(target: &str) -> Result<Forward, Error> {
        Self::load_program(target, dataplane_common::FORWARD_PROGRAM)
    }

    /// Loads the generator's variant, which writes one of `headers` (a
    /// frame's first GEN_HEADER_LEN bytes, one per flow, taken in turn)
    /// into every frame before redirecting it.
    pub fn load_gen(target: &str, headers: &[[u8; GEN_HEADER_LEN]]) -> Result<Forward, Error> {
        let flows = u32::try_from(headers.len().max(1)).map_err(|_| Error::TooManyFlows)?;
        let mut fwd = Self::load_program_sized(
            target,
            dataplane_common::GEN_PROGRAM,
            &[(map_names::GEN_HEADER, flows)],
        )?;
        let mut map: Array<&mut MapData, [u8; GEN_HEADER_LEN]> = Array::try_from(
            fwd.ebpf
                .map_mut(map_names::GEN_HEADER)
                .expect("object has GEN_HEADER"),
        )
        .map_err(Error::Header)?;
        for (i, header) in headers.iter().enumerate() {
            map.set(i as u32, *header, 0).map_err(Error::Header)?;
        }
        let mut count: Array<&mut MapData, u32> = Array::try_from(
            fwd.ebpf
                .map_mut(map_names::GEN_FLOWS)
                .expect("object has GEN_FLOWS"),
        )
        .map_err(Error::Header)?;
        count.set(0, flows, 0).map_err(Error::Header)?;
        Ok(fwd)
    }

    /// Loads the benchmarks' guest echo for `iface`: IPv4 frames addressed
    /// to `guest` go back out of `iface` towards `sink` (MACs rewritten),
    /// the rest to the stack. Attach it to `iface` itself.
    pub fn load_echo(iface: &str, guest: [u8; 6], sink: [u8; 6]) -> Result<Forward, Error> {
        let mut fwd = Self::load_program(iface, dataplane_common::ECHO_PROGRAM)?;
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&guest);
        macs[6..].copy_from_slice(&sink);
        let mut map: Array<&mut MapData, [u8; 12]> = Array::try_from(
            fwd.ebpf
                .map_mut(map_names::ECHO_MACS)
                .expect("object has ECHO_MACS"),
        )
        .map_err(Error::Echo)?;
        map.set(0, macs, 0).map_err(Error::Echo)?;
        Ok(fwd)
    }

    fn load_program(target: &str, program: &'static str) -> Result<Forward, Error> {
        Self::load_program_sized(target, program, &[])
    }

    /// Loads `program` with the maps named in `sizes` resized (entries).
    fn load_program_sized(
        target: &str,
        program: &'static str,
        sizes: &[(&str, u32)],
    ) -> Result<Forward, Error> {
        let ifindex = netdev::ifindex(target)?;
        let mut loader = EbpfLoader::new();
        for (map, entries) in sizes {
            loader.map_max_entries(map, *entries);
        }
        let mut ebpf = loader.load(crate::steer::object())?;
        program_mut(&mut ebpf, program).load()?;
        // The loader's parse of the kernel's BTF (see sys::memory).
        crate::sys::memory::release_freed_memory();
        let mut port: DevMap<&mut MapData> = DevMap::try_from(
            ebpf.map_mut(map_names::FWD_PORT)
                .expect("object has FWD_PORT"),
        )
        .map_err(Error::Counters)?;
        port.set(0, ifindex, None, 0)
            .map_err(|source| Error::Target {
                ifname: target.to_string(),
                source,
            })?;
        Ok(Forward { ebpf, program })
    }

    /// Attaches to `from` in driver (native) mode, or in skb (generic)
    /// mode where `generic` says so (a macvlan has no native XDP);
    /// detached when `self` is dropped.
    pub fn attach(&mut self, from: &str, generic: bool) -> Result<(), Error> {
        let mode = if generic {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        };
        program_mut(&mut self.ebpf, self.program)
            .attach(from, mode)
            .map(|_| ())
            .map_err(|source| Error::Attach {
                ifname: from.to_string(),
                source,
            })
    }

    /// The loaded program (for BPF_PROG_RUN).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(self.program)
            .expect("object has forward, gen and echo")
            .try_into()
            .expect("forward is XDP")
    }

    /// Injects `repeat` copies of `frame` as if received on `ingress_ifindex`
    /// and runs the program on each (BPF_PROG_RUN in live-frame mode, 64
    /// frames a batch: the frames really leave through the redirect).
    pub fn run_live(&self, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> std::io::Result<()> {
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex }: the kernel wants data_end equal to
        // the frame's length and no metadata; the ingress device must exist in
        // this network namespace.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ingress_ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        };
        // The kernel's errno is kept (not wrapped): the generator tells an
        // interrupted run (EINTR, Ctrl-C) from a failed one by its kind.
        self.program()
            .test_run(opts)
            .map(|_| ())
            .map_err(|e| match e {
                ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error,
                other => std::io::Error::other(other),
            })
    }

    /// Frames redirected and frames whose redirect failed, over all CPUs.
    pub fn counts(&self) -> Result<(u64, u64), Error> {
        let counts: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(map_names::FWD_COUNT)
                .expect("object has FWD_COUNT"),
        )
        .map_err(Error::Counters)?;
        let get = |i: u32| -> Result<u64, Error> {
            Ok(counts.get(&i, 0).map_err(Error::Counters)?.iter().sum())
        };
        Ok((get(0)?, get(1)?))
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, program: &str) -> &'a mut Xdp {
    ebpf.program_mut(program)
        .expect("object has forward, gen and echo")
        .try_into()
        .expect("forward is XDP")
}
