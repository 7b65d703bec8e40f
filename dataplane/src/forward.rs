//! The bare in-kernel XDP redirect: `forward` on one interface sends every
//! frame straight to another through a devmap. No switching at all: the
//! ceiling of kernel-assisted forwarding that benchmarks compare against.
//! The generator ([`crate::gen`]) drives the same program with BPF_PROG_RUN.

use aya::maps::{DevMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use dataplane_common::map_names;
use thiserror::Error;

use crate::netdev;

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
    #[error("attaching forward to {ifname}: {source}")]
    Attach {
        ifname: String,
        source: aya::programs::ProgramError,
    },
}

/// `forward` loaded with `target` in its devmap (not attached anywhere).
pub struct Forward {
    ebpf: Ebpf,
}

impl Forward {
    /// Loads the program and points it at `target`.
    pub fn load(target: &str) -> Result<Forward, Error> {
        let ifindex = netdev::ifindex(target)?;
        let mut ebpf = EbpfLoader::new().load(crate::steer::object())?;
        program_mut(&mut ebpf).load()?;
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
        Ok(Forward { ebpf })
    }

    /// Attaches to `from` in driver mode; detached when `self` is dropped.
    pub fn attach(&mut self, from: &str) -> Result<(), Error> {
        program_mut(&mut self.ebpf)
            .attach(from, XdpMode::Driver)
            .map(|_| ())
            .map_err(|source| Error::Attach {
                ifname: from.to_string(),
                source,
            })
    }

    /// The loaded program (for BPF_PROG_RUN).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(dataplane_common::FORWARD_PROGRAM)
            .expect("object has forward")
            .try_into()
            .expect("forward is XDP")
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

fn program_mut(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(dataplane_common::FORWARD_PROGRAM)
        .expect("object has forward")
        .try_into()
        .expect("forward is XDP")
}
