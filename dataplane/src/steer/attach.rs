//! Attaching `steer` to an interface and taking it off again: load, write
//! the policy, pin program, maps and link, and undo all of it on failure.

use std::os::fd::AsRawFd;

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use aya::programs::links::FdLink;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use dataplane_common::map_names;
use dataplane_common::policy::{AttachMode, MatchKey, Mode, Policy};

use super::attachment::Attachment;
use super::pins::{InterfacePins, PinRoot};
use super::policy::PolicySpec;
use super::status::{attachment_health, Health};
use super::{object, Error, PINNED_MAPS};
use crate::sys::bpf as sys_bpf;
use crate::sys::netdev::{self, AttachedXdp};
use crate::sys::privileges;

/// How the user asked to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRequest {
    /// Driver (native) mode, falling back to skb (generic) mode.
    Auto,
    /// Driver mode only.
    Driver,
    /// Skb (generic) mode only.
    Skb,
    /// No XDP: `steer_tc` at tc ingress (container ports: the container
    /// keeps its offloads, and no skb is copied for XDP).
    Tc,
}

/// What `attach` is asked to do.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub ifname: String,
    pub mode: ModeRequest,
    pub policy: PolicySpec,
    /// Replace another XDP program found on the interface.
    pub force: bool,
    /// Entries of the fast-path FDB map (the switch's FDB size). The
    /// kernel preallocates it: about 88 bytes an entry (5.5 MiB at 65536)
    /// per port.
    pub fdb_entries: u32,
    /// Entries of the `PORTS` devmap and `EGRESS` (the switch's port slots).
    pub ports: u32,
    /// Entries of the XSKMAP, at least: raised to the interface's receive
    /// queue count where that is more.
    pub queues: u32,
}

impl AttachOptions {
    /// Options for `ifname` with `policy` and the compiled map sizes.
    pub fn new(ifname: &str, mode: ModeRequest, policy: PolicySpec) -> AttachOptions {
        AttachOptions {
            ifname: ifname.to_string(),
            mode,
            policy,
            force: false,
            fdb_entries: dataplane_common::MAX_FDB,
            ports: dataplane_common::MAX_PORTS,
            queues: dataplane_common::MAX_QUEUES,
        }
    }
}

/// What `attach` did.
#[derive(Debug, Clone)]
pub enum AttachReport {
    /// steer is now attached.
    Attached {
        mode: AttachMode,
        /// Why driver mode was not used when `Auto` fell back to skb.
        fallback_reason: Option<String>,
        /// Programs removed because of `--force`.
        replaced: Vec<AttachedXdp>,
    },
    /// steer was already attached by dataplane; only the policy changed.
    PolicyUpdated { mode: Option<AttachMode> },
}

/// Attaches `steer` to an interface (or updates the policy of an existing
/// attachment) and pins it so it outlives this process.
pub fn attach(root: &PinRoot, opts: &AttachOptions) -> Result<AttachReport, Error> {
    privileges::require_admin()?;
    let ifname = opts.ifname.as_str();
    netdev::ifindex(ifname)?;
    let pins = root.interface(ifname);

    if pins.exist() {
        match attachment_health(&pins)? {
            Health::Attached { .. } => {
                let mut handle = Attachment::open(root, ifname)?;
                handle.set_policy(&opts.policy)?;
                return Ok(AttachReport::PolicyUpdated {
                    mode: handle.attach_mode()?,
                });
            }
            Health::Stale => {
                tracing::info!(ifname, "removing stale pins of an earlier attachment");
                pins.remove_all()?;
            }
        }
    }

    let replaced = clear_other_programs(ifname, opts.force)?;
    if opts.policy.mode != Mode::Pass && opts.policy.mode != Mode::Drop {
        privileges::require_xdp_sockets()?;
    }

    let queues = netdev::rx_queue_count(ifname)
        .ok()
        .flatten()
        .unwrap_or(0)
        .max(opts.queues);
    let mut ebpf = load_object(&MapSizes {
        fdb: opts.fdb_entries,
        ports: opts.ports,
        queues,
    })?;
    write_policy(&mut ebpf, ifname, &opts.policy)?;

    pins.create()?;
    // From here on a failure must not leave half an attachment behind.
    let guard = PinsGuard(&pins);
    pin_program_and_maps(&mut ebpf, &pins, opts.mode)?;
    let (mode, fallback_reason) = attach_and_pin_link(&mut ebpf, &pins, opts.mode)?;
    // `steer_tc` redirects by itself; XDP's hand-offs need `deliver`.
    let deliver = match mode {
        AttachMode::Tc => Ok(()),
        AttachMode::Driver | AttachMode::Skb => attach_and_pin_deliver(&mut ebpf, &pins),
    };
    if let Err(e) = deliver {
        // Without it the fast path's hand-offs would reach the stack
        // undelivered: take the XDP half off again.
        if let Ok(link) = sys_bpf::obj_get(&pins.link()) {
            let _ = sys_bpf::link_detach(link.as_raw_fd());
        }
        return Err(e);
    }
    set_attach_mode(&mut ebpf, ifname, mode)?;
    std::mem::forget(guard);
    Ok(AttachReport::Attached {
        mode,
        fallback_reason,
        replaced,
    })
}

/// Detaches `steer` from an interface and removes every pin it made.
pub fn detach(root: &PinRoot, ifname: &str) -> Result<(), Error> {
    netdev::check_name(ifname)?;
    privileges::require_admin()?;
    let pins = root.interface(ifname);
    if !pins.exist() {
        return Err(Error::NotAttached {
            ifname: ifname.to_string(),
        });
    }
    for path in [pins.link(), pins.tc_link()] {
        if let Ok(link) = sys_bpf::obj_get(&path) {
            // Unpinning alone would leave the program attached while any
            // other process (a running switch) still holds the link open;
            // BPF_LINK_DETACH takes it off the interface for everyone.
            sys_bpf::link_detach(link.as_raw_fd()).map_err(|source| Error::Detach {
                ifname: ifname.to_string(),
                source,
            })?;
        }
    }
    pins.remove_all()?;
    root.remove_empty_dirs();
    Ok(())
}

/// True if `ifname` has pins *and* their program is still attached to it
/// (false for the pins of an interface that was deleted and re-created,
/// or of a program someone detached).
pub fn is_attached(root: &PinRoot, ifname: &str) -> Result<bool, Error> {
    let pins = root.interface(ifname);
    Ok(pins.exist() && matches!(attachment_health(&pins)?, Health::Attached { .. }))
}

/// Removes the pins again if an attach fails half-way.
struct PinsGuard<'a>(&'a InterfacePins);

impl Drop for PinsGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove_all() {
            tracing::warn!("cleaning up after a failed attach: {e}");
        }
    }
}

/// Refuses (or with `force` removes) XDP programs that are not ours.
fn clear_other_programs(ifname: &str, force: bool) -> Result<Vec<AttachedXdp>, Error> {
    let others = netdev::attached_xdp(ifname)?;
    let Some(first) = others.first() else {
        return Ok(Vec::new());
    };
    if !force {
        return Err(Error::OtherProgram {
            ifname: ifname.to_string(),
            id: first.id,
            name: first.name.clone(),
            mode: first.mode,
        });
    }
    for prog in &others {
        remove_foreign_program(ifname, prog)?;
        tracing::warn!(ifname, id = prog.id, name = %prog.name, "removed XDP program (--force)");
    }
    Ok(others)
}

/// Takes one XDP program off an interface: netlink for the classic
/// attachment, BPF_LINK_DETACH when a bpf_link holds it (netlink refuses those).
fn remove_foreign_program(ifname: &str, prog: &AttachedXdp) -> Result<(), Error> {
    let failed = |detail: String| Error::ForceFailed {
        ifname: ifname.to_string(),
        id: prog.id,
        detail,
    };
    let link = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .find(|l| {
            l.program_id() == prog.id
                && l.link_type().ok() == Some(aya::programs::links::LinkType::Xdp)
        });
    if let Some(link) = link {
        let fd = sys_bpf::link_get_fd_by_id(link.id())
            .map_err(|e| failed(format!("opening its bpf_link {}: {e}", link.id())))?;
        return sys_bpf::link_detach(fd.as_raw_fd())
            .map_err(|e| failed(format!("detaching its bpf_link {}: {e}", link.id())));
    }
    let flag = if prog.mode == "skb" {
        "xdpgeneric"
    } else {
        "xdp"
    };
    let out = std::process::Command::new("ip")
        .args(["link", "set", "dev", ifname, flag, "off"])
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Entries of the maps sized at load.
struct MapSizes {
    fdb: u32,
    ports: u32,
    queues: u32,
}

/// Loads the object and the program into the kernel (the verifier runs here).
fn load_object(sizes: &MapSizes) -> Result<Ebpf, Error> {
    use dataplane_common::map_names;
    let mut ebpf = EbpfLoader::new()
        .override_global(aya_log::LEVEL, &ebpf_log_level(), false)
        .map_max_entries(map_names::FDB, sizes.fdb.max(1))
        .map_max_entries(map_names::PORTS, sizes.ports.max(1))
        .map_max_entries(map_names::EGRESS, sizes.ports.max(1))
        .map_max_entries(map_names::TUNNELS, sizes.ports.max(1))
        .map_max_entries(map_names::XSKS, sizes.queues.max(1))
        .load(object())?;
    steer_program(&mut ebpf).load().map_err(Error::Verify)?;
    deliver_program(&mut ebpf).load().map_err(Error::Verify)?;
    classifier(&mut ebpf, dataplane_common::STEER_TC_PROGRAM)
        .load()
        .map_err(Error::Verify)?;
    crate::sys::memory::release_freed_memory();
    Ok(ebpf)
}

fn deliver_program(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    classifier(ebpf, dataplane_common::DELIVER_PROGRAM)
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .unwrap_or_else(|| panic!("the embedded object has a {name} program"))
        .try_into()
        .unwrap_or_else(|_| panic!("{name} is a tc classifier"))
}

/// Attaches `deliver` to the interface's tc ingress and pins the link
/// next to steer's.
fn attach_and_pin_deliver(ebpf: &mut Ebpf, pins: &InterfacePins) -> Result<(), Error> {
    let link = attach_tc_ingress(ebpf, dataplane_common::DELIVER_PROGRAM, pins.ifname())?;
    link.pin(pins.tc_link())
        .map(drop)
        .map_err(|source| Error::Pin {
            ifname: pins.ifname().to_string(),
            what: "tc link".into(),
            source,
        })
}

/// aya-log level numbers (Error=1 .. Trace=5) from the tracing filter, so the
/// program skips formatting records nobody will print.
fn ebpf_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

fn steer_program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(dataplane_common::STEER_PROGRAM)
        .expect("the embedded object has a steer program")
        .try_into()
        .expect("steer is an XDP program")
}

fn object_map<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> &'a mut Map {
    ebpf.map_mut(name)
        .unwrap_or_else(|| panic!("the embedded object has map {name}"))
}

fn write_policy(ebpf: &mut Ebpf, ifname: &str, spec: &PolicySpec) -> Result<(), Error> {
    let err = |name: &'static str| {
        move |source: MapError| Error::Map {
            ifname: ifname.to_string(),
            name,
            source,
        }
    };
    let mut matches: HashMap<&mut MapData, MatchKey, u8> =
        HashMap::try_from(object_map(ebpf, map_names::MATCHES)).map_err(err(map_names::MATCHES))?;
    for key in &spec.matches {
        matches.insert(key, 1, 0).map_err(err(map_names::MATCHES))?;
    }
    let mut policy: Array<&mut MapData, Policy> =
        Array::try_from(object_map(ebpf, map_names::POLICY)).map_err(err(map_names::POLICY))?;
    policy
        .set(
            0,
            Policy {
                mode: spec.mode as u32,
                attach_mode: 0,
                fast_path: 0,
                port_id: 0,
                untagged_vlan: 0,
                vlan_mode: 0,
                owner_pid: 0,
                punt_ifindex: 0,
                punt_queue: 0,
                pad: 0,
                fast_path_until: 0,
            },
            0,
        )
        .map_err(err(map_names::POLICY))
}

fn set_attach_mode(ebpf: &mut Ebpf, ifname: &str, mode: AttachMode) -> Result<(), Error> {
    let err = |source| Error::Map {
        ifname: ifname.to_string(),
        name: map_names::POLICY,
        source,
    };
    let mut policy: Array<&mut MapData, Policy> =
        Array::try_from(object_map(ebpf, map_names::POLICY)).map_err(err)?;
    let mut p = policy.get(&0, 0).map_err(err)?;
    p.attach_mode = mode as u32;
    policy.set(0, p, 0).map_err(err)
}

fn pin_program_and_maps(
    ebpf: &mut Ebpf,
    pins: &InterfacePins,
    request: ModeRequest,
) -> Result<(), Error> {
    let ifname = pins.ifname().to_string();
    for name in PINNED_MAPS {
        object_map(ebpf, name)
            .pin(pins.map(name))
            .map_err(|source| Error::Pin {
                ifname: ifname.clone(),
                what: format!("map {name}"),
                source,
            })?;
    }
    let pinned = match request {
        ModeRequest::Tc => classifier(ebpf, dataplane_common::STEER_TC_PROGRAM).pin(pins.prog()),
        ModeRequest::Auto | ModeRequest::Driver | ModeRequest::Skb => {
            steer_program(ebpf).pin(pins.prog())
        }
    };
    pinned.map_err(|source| Error::Pin {
        ifname,
        what: "program".into(),
        source,
    })
}

/// Attaches in the requested mode and pins the resulting bpf_link.
fn attach_and_pin_link(
    ebpf: &mut Ebpf,
    pins: &InterfacePins,
    request: ModeRequest,
) -> Result<(AttachMode, Option<String>), Error> {
    let (mode, link, fallback_reason) = match request {
        ModeRequest::Tc => (
            AttachMode::Tc,
            attach_tc_ingress(ebpf, dataplane_common::STEER_TC_PROGRAM, pins.ifname())?,
            None,
        ),
        ModeRequest::Driver => (
            AttachMode::Driver,
            attach_steer(ebpf, pins.ifname(), AttachMode::Driver)?,
            None,
        ),
        ModeRequest::Skb => (
            AttachMode::Skb,
            attach_steer(ebpf, pins.ifname(), AttachMode::Skb)?,
            None,
        ),
        ModeRequest::Auto => match attach_steer(ebpf, pins.ifname(), AttachMode::Driver) {
            Ok(link) => (AttachMode::Driver, link, None),
            Err(driver_err) => {
                let link = attach_steer(ebpf, pins.ifname(), AttachMode::Skb)?;
                (AttachMode::Skb, link, Some(driver_err.to_string()))
            }
        },
    };
    link.pin(pins.link()).map_err(|source| Error::Pin {
        ifname: pins.ifname().to_string(),
        what: "link".into(),
        source,
    })?;
    Ok((mode, fallback_reason))
}

/// Attaches the XDP `steer` in `mode` (driver or skb).
fn attach_steer(ebpf: &mut Ebpf, ifname: &str, mode: AttachMode) -> Result<FdLink, Error> {
    let failed = |source| Error::Attach {
        ifname: ifname.to_string(),
        mode: mode.name(),
        source,
    };
    let xdp_mode = match mode {
        AttachMode::Driver => XdpMode::Driver,
        AttachMode::Skb | AttachMode::Tc => XdpMode::Skb,
    };
    let program = steer_program(ebpf);
    let id = program.attach(ifname, xdp_mode).map_err(failed)?;
    let link = program.take_link(id).map_err(failed)?;
    link.try_into().map_err(|_| Error::NotALink {
        ifname: ifname.to_string(),
    })
}

/// Attaches the classifier `name` to the tc ingress of `ifname` (a TCX
/// link, kernel 6.6+).
fn attach_tc_ingress(ebpf: &mut Ebpf, name: &str, ifname: &str) -> Result<FdLink, Error> {
    let failed = |source| Error::AttachTc {
        ifname: ifname.to_string(),
        source,
    };
    let program = classifier(ebpf, name);
    let id = program
        .attach(ifname, TcAttachType::Ingress)
        .map_err(failed)?;
    let link = program.take_link(id).map_err(failed)?;
    link.try_into().map_err(|_| Error::NotALink {
        ifname: ifname.to_string(),
    })
}

/// CLOCK_MONOTONIC now plus the fast path's lease, in ns: the clock
/// `bpf_ktime_get_ns` reads.
pub(super) fn lease_end() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into `ts`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000
        + ts.tv_nsec as u64
        + dataplane_common::policy::FAST_PATH_LEASE_NS
}
