//! The `steer` XDP program: attach, detach, inspect, and the handle the
//! switch uses to register its AF_XDP sockets.
//!
//! An attachment is a pinned bpf_link plus the program's pinned maps (see
//! [`pins`]), so it outlives the process that made it: `dataplane attach`
//! exits, the interface keeps steering, and any later `dataplane` process
//! (status, detach, run) finds it again through bpffs.

pub mod pins;
pub mod policy;

use std::os::fd::{AsRawFd, RawFd};

use aya::maps::{Array, DevMap, HashMap, Map, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::links::FdLink;
use aya::programs::{ProgramError, ProgramInfo, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use dataplane_common::counters::Outcome;
use dataplane_common::fastpath::{FdbKey, FdbValue};
use dataplane_common::map_names;
use dataplane_common::policy::{AttachMode, MatchKey, Mode, Policy};
use thiserror::Error;

use crate::sys::bpf as sys_bpf;
use crate::sys::netdev::{self, AttachedXdp};
use crate::sys::privileges;
use pins::{InterfacePins, PinRoot};
use policy::PolicySpec;

/// The XDP object built by `cargo xtask build-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf.o"));

/// The embedded XDP object (all programs), for other loaders in this crate.
pub(crate) fn object() -> &'static [u8] {
    OBJECT
}

/// Maps that are pinned next to the link.
const PINNED_MAPS: [&str; 9] = [
    map_names::POLICY,
    map_names::MATCHES,
    map_names::XSKS,
    map_names::COUNTERS,
    map_names::FDB,
    map_names::PORTS,
    map_names::EGRESS,
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

    let mut ebpf = load_object()?;
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

/// Whether a pinned attachment is still on its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The pinned program is attached to the interface.
    Attached { program_id: u32 },
    /// The interface is gone or no longer runs the pinned program.
    Stale,
}

/// One line of `dataplane status`.
#[derive(Debug, Clone)]
pub struct Status {
    pub ifname: String,
    pub health: Health,
    pub mode: Option<AttachMode>,
    pub policy: Mode,
    pub matches: usize,
    pub counters: Counters,
}

/// Status of every attachment in this network namespace.
pub fn status(root: &PinRoot) -> Result<Vec<Status>, Error> {
    let mut out = Vec::new();
    for pins in root.interfaces()? {
        let health = attachment_health(&pins)?;
        let handle = Attachment::open(root, pins.ifname())?;
        out.push(Status {
            ifname: pins.ifname().to_string(),
            health,
            mode: handle.attach_mode()?,
            policy: handle.mode()?,
            matches: handle.match_count(),
            counters: handle.counters()?,
        });
    }
    Ok(out)
}

/// Outcome counters of one interface, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters([u64; Outcome::COUNT as usize]);

impl Counters {
    /// Frames counted under `outcome`.
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome.index() as usize]
    }

    /// All frames the program saw.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `self - earlier`, per outcome (for rates).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = [0; Outcome::COUNT as usize];
        for (i, v) in d.iter_mut().enumerate() {
            *v = self.0[i].saturating_sub(earlier.0[i]);
        }
        Counters(d)
    }
}

/// An existing attachment, opened through its pins.
pub struct Attachment {
    ifname: String,
    policy: Array<MapData, Policy>,
    matches: HashMap<MapData, MatchKey, u8>,
    xsks: XskMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    fdb: HashMap<MapData, FdbKey, FdbValue>,
    ports: DevMap<MapData>,
    egress: Array<MapData, u32>,
    allowed: Array<MapData, u64>,
}

impl Attachment {
    /// Opens the pinned maps of `ifname`.
    pub fn open(root: &PinRoot, ifname: &str) -> Result<Attachment, Error> {
        netdev::check_name(ifname)?;
        let pins = root.interface(ifname);
        if !pins.exist() {
            return Err(Error::NotAttached {
                ifname: ifname.to_string(),
            });
        }
        let map = |name: &'static str| -> Result<Map, Error> {
            let data = MapData::from_pin(pins.map(name)).map_err(|source| Error::Map {
                ifname: ifname.to_string(),
                name,
                source,
            })?;
            Map::from_map_data(data).map_err(|source| Error::Map {
                ifname: ifname.to_string(),
                name,
                source,
            })
        };
        let typed = |name: &'static str, source: MapError| Error::Map {
            ifname: ifname.to_string(),
            name,
            source,
        };
        Ok(Attachment {
            ifname: ifname.to_string(),
            policy: map(map_names::POLICY)?
                .try_into()
                .map_err(|e| typed(map_names::POLICY, e))?,
            matches: map(map_names::MATCHES)?
                .try_into()
                .map_err(|e| typed(map_names::MATCHES, e))?,
            xsks: map(map_names::XSKS)?
                .try_into()
                .map_err(|e| typed(map_names::XSKS, e))?,
            counters: map(map_names::COUNTERS)?
                .try_into()
                .map_err(|e| typed(map_names::COUNTERS, e))?,
            fdb: map(map_names::FDB)?
                .try_into()
                .map_err(|e| typed(map_names::FDB, e))?,
            ports: map(map_names::PORTS)?
                .try_into()
                .map_err(|e| typed(map_names::PORTS, e))?,
            egress: map(map_names::EGRESS)?
                .try_into()
                .map_err(|e| typed(map_names::EGRESS, e))?,
            allowed: map(map_names::ALLOWED)?
                .try_into()
                .map_err(|e| typed(map_names::ALLOWED, e))?,
        })
    }

    /// The interface this attachment steers.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Sends frames of rx queue `queue` to the AF_XDP socket `fd`.
    pub fn register_socket(&mut self, queue: u32, fd: RawFd) -> Result<(), Error> {
        self.xsks
            .set(queue, fd, 0)
            .map_err(|source| self.map_error(map_names::XSKS, source))
    }

    /// Stops redirecting rx queue `queue` (its frames go to the kernel again).
    pub fn unregister_socket(&mut self, queue: u32) -> Result<(), Error> {
        self.xsks
            .unset(queue)
            .map_err(|source| self.map_error(map_names::XSKS, source))
    }

    /// Turns the in-kernel fast path on for this interface as switch port
    /// `port_id`: untagged frames belong to `untagged_vlan`, tagged ones are
    /// classified by `vlan_mode` (`fastpath::vlan_mode`) and, for a listed
    /// trunk, the `allowed` bitmap.
    pub fn enable_fast_path(
        &mut self,
        port_id: u32,
        untagged_vlan: u16,
        vlan_mode: u32,
        allowed: &[u64; 64],
    ) -> Result<(), Error> {
        for (i, word) in allowed.iter().enumerate() {
            self.allowed
                .set(i as u32, word, 0)
                .map_err(|source| self.map_error(map_names::ALLOWED, source))?;
        }
        self.update_policy(|p| {
            p.fast_path = 1;
            p.port_id = port_id;
            p.untagged_vlan = untagged_vlan as u32;
            p.vlan_mode = vlan_mode;
            p.fast_path_until = lease_end();
        })
    }

    /// Renews the fast path's lease (see `Policy::fast_path_until`).
    pub fn renew_fast_path(&mut self) -> Result<(), Error> {
        self.update_policy(|p| p.fast_path_until = lease_end())
    }

    /// The `dataplane run` that owns this attachment (0: none, a user's).
    pub fn owner_pid(&self) -> Result<u32, Error> {
        let p = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        Ok(p.owner_pid)
    }

    /// Records which `dataplane run` owns this attachment (0: none).
    pub fn set_owner_pid(&mut self, pid: u32) -> Result<(), Error> {
        self.update_policy(|p| p.owner_pid = pid)
    }

    /// Turns the fast path off and forgets its FDB entries and ports.
    /// Makes this a container port's steer: frames for the switch go to
    /// the punt device `ifindex` and arrive on its rx queue `queue` (see
    /// `Policy::punt_ifindex`); `None` sends them to this interface's own
    /// AF_XDP sockets again.
    pub fn set_punt(&mut self, punt: Option<(u32, u32)>) -> Result<(), Error> {
        self.update_policy(|p| {
            (p.punt_ifindex, p.punt_queue) = match punt {
                Some((ifindex, queue)) => (ifindex, queue + 1),
                None => (0, 0),
            };
        })
    }

    pub fn disable_fast_path(&mut self) -> Result<(), Error> {
        self.update_policy(|p| {
            p.fast_path = 0;
            p.fast_path_until = 0;
        })?;
        let keys: Vec<FdbKey> = self.fdb.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.fdb.remove(&k);
        }
        for port in 0..dataplane_common::MAX_PORTS {
            let _ = self.ports.set(port, 0, None, 0).ok();
            let _ = self.egress.set(port, 0, 0).ok();
        }
        Ok(())
    }

    /// Lets the fast path redirect to switch port `port_id` (device `ifindex`).
    pub fn set_fast_port(&mut self, port_id: u32, ifindex: u32) -> Result<(), Error> {
        let failed = |source| Error::FastPort {
            ifname: self.ifname.clone(),
            port_id,
            source,
        };
        self.ports.set(port_id, ifindex, None, 0).map_err(failed)?;
        self.egress
            .set(port_id, ifindex, 0)
            .map_err(|e| self.map_error(map_names::EGRESS, e))
    }

    /// Installs or moves a learned address for the fast path. `flags`:
    /// `FDB_REDIRECT` if frames to it may be redirected to `port` (else it
    /// only serves as a known source), `FDB_TAGGED` if `port` sends `vlan`
    /// tagged.
    pub fn fdb_insert(
        &mut self,
        vlan: u16,
        mac: [u8; 6],
        port: u32,
        flags: u32,
    ) -> Result<(), Error> {
        let key = FdbKey { mac, vlan };
        let value = FdbValue {
            port,
            flags,
            hits: 0,
        };
        self.fdb
            .insert(key, value, 0)
            .map_err(|source| self.map_error(map_names::FDB, source))
    }

    /// Removes a learned address from the fast path (absent is fine).
    pub fn fdb_remove(&mut self, vlan: u16, mac: [u8; 6]) {
        let _ = self.fdb.remove(&FdbKey { mac, vlan });
    }

    /// Frames from this address the fast path forwarded (change = alive).
    pub fn fdb_hits(&self, vlan: u16, mac: [u8; 6]) -> Option<u64> {
        self.fdb.get(&FdbKey { mac, vlan }, 0).ok().map(|v| v.hits)
    }

    /// Entries in the fast-path FDB.
    pub fn fdb_len(&self) -> usize {
        self.fdb.keys().filter(Result::is_ok).count()
    }

    fn update_policy(&mut self, f: impl FnOnce(&mut Policy)) -> Result<(), Error> {
        let mut p = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        f(&mut p);
        self.policy
            .set(0, p, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))
    }

    /// Replaces the policy (mode and match table).
    pub fn set_policy(&mut self, spec: &PolicySpec) -> Result<(), Error> {
        let keys: Vec<MatchKey> = self.matches.keys().filter_map(Result::ok).collect();
        for key in keys.iter().filter(|k| !spec.matches.contains(k)) {
            let _ = self.matches.remove(key);
        }
        for key in &spec.matches {
            self.matches
                .insert(key, 1, 0)
                .map_err(|source| self.map_error(map_names::MATCHES, source))?;
        }
        let mut current = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        current.mode = spec.mode as u32;
        self.policy
            .set(0, current, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))
    }

    /// The current steering mode.
    pub fn mode(&self) -> Result<Mode, Error> {
        let p = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        Ok(Mode::from_raw(p.mode))
    }

    /// How the program was attached (recorded at attach time).
    pub fn attach_mode(&self) -> Result<Option<AttachMode>, Error> {
        let p = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        Ok(AttachMode::from_raw(p.attach_mode))
    }

    /// Number of entries in the match table.
    pub fn match_count(&self) -> usize {
        self.matches.keys().filter(Result::is_ok).count()
    }

    /// Outcome counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, Error> {
        let mut c = Counters::default();
        for outcome in Outcome::ALL {
            let per_cpu = self
                .counters
                .get(&outcome.index(), 0)
                .map_err(|source| self.map_error(map_names::COUNTERS, source))?;
            c.0[outcome.index() as usize] = per_cpu.iter().sum();
        }
        Ok(c)
    }

    fn map_error(&self, name: &'static str, source: MapError) -> Error {
        Error::Map {
            ifname: self.ifname.clone(),
            name,
            source,
        }
    }
}

/// Prints the eBPF program's aya-log records of `ifname` through the `log`
/// facade (and so through tracing) until `stop` returns true.
pub fn follow_logs(root: &PinRoot, ifname: &str, stop: impl Fn() -> bool) -> Result<(), Error> {
    netdev::check_name(ifname)?;
    let pins = root.interface(ifname);
    if !pins.exist() {
        return Err(Error::NotAttached {
            ifname: ifname.to_string(),
        });
    }
    let info = ProgramInfo::from_pin(pins.prog()).map_err(|source| Error::ProgramInfo {
        ifname: ifname.to_string(),
        source,
    })?;
    let mut logger =
        aya_log::EbpfLogger::init_from_id(info.id()).map_err(|source| Error::Logs {
            ifname: ifname.to_string(),
            source,
        })?;
    while !stop() {
        logger.flush();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    logger.flush();
    Ok(())
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

fn attachment_health(pins: &InterfacePins) -> Result<Health, Error> {
    let Ok(info) = ProgramInfo::from_pin(pins.prog()) else {
        return Ok(Health::Stale);
    };
    let program_id = info.id();
    let attached = match netdev::attached_xdp(pins.ifname()) {
        Ok(list) => list.iter().any(|p| p.id == program_id),
        Err(netdev::Error::NoSuchInterface { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    // A container port's steer_tc is on the tc ingress instead.
    let attached = attached
        || SchedClassifier::query_tcx(pins.ifname(), TcAttachType::Ingress)
            .is_ok_and(|(_, programs)| programs.iter().any(|p| p.id() == program_id));
    Ok(if attached {
        Health::Attached { program_id }
    } else {
        Health::Stale
    })
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

/// Loads the object and the program into the kernel (the verifier runs here).
fn load_object() -> Result<Ebpf, Error> {
    let mut ebpf = EbpfLoader::new()
        .override_global(aya_log::LEVEL, &ebpf_log_level(), false)
        .load(OBJECT)?;
    steer_program(&mut ebpf).load().map_err(Error::Verify)?;
    deliver_program(&mut ebpf).load().map_err(Error::Verify)?;
    classifier(&mut ebpf, dataplane_common::STEER_TC_PROGRAM)
        .load()
        .map_err(Error::Verify)?;
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
fn lease_end() -> u64 {
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
