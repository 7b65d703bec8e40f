//! Whether attachments are healthy, what `dataplane status` shows, and the
//! program's log stream.

use aya::programs::{ProgramInfo, SchedClassifier, TcAttachType};
use dataplane_common::policy::{AttachMode, Mode};

use super::attachment::{Attachment, Counters};
use super::pins::{InterfacePins, PinRoot};
use super::Error;
use crate::sys::netdev;

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

/// Whether the program pinned for an interface is attached to it, at XDP or
/// at tc ingress.
pub(super) fn attachment_health(pins: &InterfacePins) -> Result<Health, Error> {
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
