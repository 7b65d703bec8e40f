//! One port: its kind, the `--port` form (parsed and printed), its
//! `[[port]]` table, and the checks every form of a port goes through.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::switch::{VlanMode, VlanSet};
use crate::sys::private_socket::SocketOwner;
use crate::xsk::BindMode;

/// Port kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortKind {
    /// AF_XDP sockets on a netdev running steer.
    Afxdp,
    /// The host end of a container's veth: steer in generic mode, so the
    /// container keeps TSO and checksum offload (see `port::veth`).
    Veth,
    /// A TAP device (a VM's virtio NIC sits behind it).
    Tap,
    /// A vhost-user socket a VM (QEMU) or DPDK's virtio_user connects to.
    VhostUser,
    /// A VXLAN tunnel to other hosts' switches over an underlay interface
    /// that stays the kernel's (see `port::vxlan`).
    Vxlan,
}

impl PortKind {
    /// The prefix of `--port` specs and port names.
    pub const fn prefix(self) -> &'static str {
        match self {
            PortKind::Afxdp => "afxdp",
            PortKind::Veth => "veth",
            PortKind::Tap => "tap",
            PortKind::VhostUser => "vhost-user",
            PortKind::Vxlan => "vxlan",
        }
    }

    /// Ports on a netdev of this namespace that run `steer` (and so take
    /// part in the fast path and are watched for link changes).
    pub const fn runs_steer(self) -> bool {
        matches!(self, PortKind::Afxdp | PortKind::Veth)
    }

    /// Ports whose learned unicast the in-kernel fast path forwards: those
    /// that run `steer`, and tunnels (their underlay runs it; the fast
    /// path encapsulates and decapsulates).
    pub const fn in_fast_path(self) -> bool {
        matches!(self, PortKind::Afxdp | PortKind::Veth | PortKind::Vxlan)
    }
}

/// Longest unix socket path (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// One port as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct PortConfig {
    pub kind: PortKind,
    /// The interface; for a vhost-user port, the socket path.
    pub iface: String,
    pub queues: Vec<u32>,
    pub vlan: VlanMode,
    pub bind: BindMode,
    /// Most MAC addresses the switch learns on this port at once (port
    /// security: a flood of source addresses cannot fill the FDB for the
    /// other ports). `None`: no limit but the FDB's size.
    pub max_macs: Option<u32>,
    /// AF_XDP: the PMD that polls each of `queues`, in order (`None`:
    /// round robin over the PMDs, from the least loaded one).
    pub pmds: Option<Vec<usize>>,
    /// vhost-user: who besides the switch's user may connect to the socket
    /// (`libvirt-qemu`, the user libvirt runs QEMU as on Debian).
    pub owner: Option<SocketOwner>,
    /// vxlan: the tunnel; `iface` is its underlay interface.
    pub vxlan: Option<VxlanSpec>,
}

/// A VXLAN port's tunnel: one VNI, this host's VTEP address, the remote
/// VTEPs (a static list: broadcast and unknown unicast go to each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub remotes: Vec<Ipv4Addr>,
    /// The UDP port both ends use (IANA's 4789 by default).
    pub udp_port: u16,
}

impl VxlanSpec {
    /// Checks what the `--port` and TOML forms share: a VNI in range, at
    /// least one remote, no remote twice and none that is `local`.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.vni > dataplane_common::wire::vxlan::MAX_VNI {
            return Err(format!(
                "vni {} is out of range: 0-{}",
                self.vni,
                dataplane_common::wire::vxlan::MAX_VNI
            ));
        }
        if self.remotes.is_empty() {
            return Err("needs at least one remote VTEP: remote=IP[+IP...]".into());
        }
        let mut seen = HashSet::new();
        for r in &self.remotes {
            if !seen.insert(r) {
                return Err(format!("remote {r} is listed twice"));
            }
            if *r == self.local {
                return Err(format!("remote {r} is the local address"));
            }
        }
        if self.udp_port == 0 {
            return Err("port 0 is not a UDP port (VXLAN's is 4789)".into());
        }
        Ok(())
    }
}

/// Parses `10.0.0.1+10.0.0.2`.
pub(super) fn parse_ipv4_list(value: &str) -> Result<Vec<Ipv4Addr>, String> {
    value
        .split('+')
        .map(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|_| format!("{a:?} is not an IPv4 address"))
        })
        .collect()
}

/// The largest `max_macs` (the FDB holds at most this many entries anyway).
pub const MAX_MACS_LIMIT: u32 = 1 << 20;

/// `max_macs` as given: 1 to [`MAX_MACS_LIMIT`].
pub(super) fn parse_max_macs(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_MACS_LIMIT).contains(n))
        .ok_or_else(|| format!("expected 1-{MAX_MACS_LIMIT} addresses"))
}

impl PortConfig {
    /// The `--port` form of this port (what `port add` takes).
    pub fn spec(&self) -> String {
        let mut s = self.name();
        let default_queues = match self.kind {
            PortKind::Afxdp | PortKind::Veth => self.queues == [0],
            PortKind::Tap | PortKind::VhostUser => self.queues.len() == 1,
            // Every receive queue of the underlay.
            PortKind::Vxlan => self.queues.is_empty(),
        };
        if !default_queues {
            match self.kind {
                PortKind::Tap | PortKind::VhostUser => {
                    s.push_str(&format!(",queues={}", self.queues.len()))
                }
                PortKind::Afxdp | PortKind::Veth | PortKind::Vxlan => {
                    s.push_str(&format!(",queues={}", join(&self.queues)))
                }
            }
        }
        if let Some(t) = &self.vxlan {
            s.push_str(&format!(
                ",vni={},local={},remote={}",
                t.vni,
                t.local,
                join(&t.remotes)
            ));
            if t.udp_port != dataplane_common::wire::vxlan::VXLAN_PORT {
                s.push_str(&format!(",port={}", t.udp_port));
            }
        }
        match &self.vlan {
            VlanMode::Access(v) => s.push_str(&format!(",vlan={v}")),
            VlanMode::Trunk { allowed, native } => {
                if let Some(set) = allowed {
                    s.push_str(&format!(",trunk={}", join(&set.iter().collect::<Vec<_>>())));
                }
                if *native != crate::switch::vlan::UNTAGGED {
                    s.push_str(&format!(",native={native}"));
                }
            }
        }
        if self.bind != BindMode::Auto {
            s.push_str(&format!(",bind={}", self.bind));
        }
        if let Some(n) = self.max_macs {
            s.push_str(&format!(",max_macs={n}"));
        }
        if let Some(pmds) = &self.pmds {
            s.push_str(&format!(",pmds={}", join(pmds)));
        }
        if let Some(owner) = &self.owner {
            s.push_str(&format!(",owner={owner}"));
        }
        s
    }

    /// `kind:iface`, as logs and statistics name the port.
    pub fn name(&self) -> String {
        format!("{}:{}", self.kind.prefix(), self.iface)
    }
}

pub(super) fn vlan_mode(
    name: &str,
    vlan: Option<u16>,
    trunk: Option<Vec<u16>>,
    native: Option<u16>,
) -> Result<VlanMode, Error> {
    let check = |vid: u16| {
        if (1..=4094).contains(&vid) {
            Ok(vid)
        } else {
            Err(Error::VlanRange {
                name: name.to_string(),
                vid,
            })
        }
    };
    match (vlan, trunk) {
        (Some(_), Some(_)) => Err(Error::AccessAndTrunk {
            name: name.to_string(),
        }),
        (Some(v), None) => Ok(VlanMode::Access(check(v)?)),
        (None, Some(list)) => {
            for v in &list {
                check(*v)?;
            }
            Ok(VlanMode::Trunk {
                allowed: Some(VlanSet::new(list)),
                native: match native {
                    Some(n) => check(n)?,
                    None => crate::switch::vlan::UNTAGGED,
                },
            })
        }
        (None, None) => Ok(match native {
            Some(n) => VlanMode::Trunk {
                allowed: None,
                native: check(n)?,
            },
            None => VlanMode::default(),
        }),
    }
}

pub(super) fn parse_bind(s: &str) -> Result<BindMode, String> {
    match s {
        "auto" => Ok(BindMode::Auto),
        "copy" => Ok(BindMode::Copy),
        "zerocopy" | "zero-copy" => Ok(BindMode::ZeroCopy),
        _ => Err("expected auto, copy or zerocopy".into()),
    }
}

/// Parses `afxdp:veth0,queues=0+1,vlan=10`.
pub fn parse_port_spec(spec: &str) -> Result<PortConfig, Error> {
    spec.parse()
}

impl FromStr for PortConfig {
    type Err = Error;

    /// The `--port` form: `afxdp:veth0,queues=0+1,vlan=10`.
    fn from_str(spec: &str) -> Result<PortConfig, Error> {
        let (kind, rest) = spec.split_once(':').ok_or_else(|| Error::BadPortSpec {
            spec: spec.to_string(),
        })?;
        let kind = match kind {
            "afxdp" => PortKind::Afxdp,
            "veth" => PortKind::Veth,
            "tap" => PortKind::Tap,
            "vhost-user" => PortKind::VhostUser,
            "vxlan" => PortKind::Vxlan,
            other => {
                return Err(Error::UnknownKind {
                    spec: spec.to_string(),
                    kind: other.to_string(),
                })
            }
        };
        let mut parts = rest.split(',').peekable();
        // `vxlan:vni=1,...,dev=IF` names its interface with `dev`; every
        // other form (and `vxlan:IF,vni=1,...`) starts with it.
        let mut iface = match parts.peek() {
            Some(first) if kind == PortKind::Vxlan && first.contains('=') => String::new(),
            _ => parts.next().unwrap_or_default().to_string(),
        };
        let bad = |key: &str, value: &str, why: &str| Error::BadValue {
            spec: spec.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        };
        let list = |key: &str, value: &str| -> Result<Vec<u32>, Error> {
            value
                .split('+')
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| bad(key, value, "expected numbers joined by '+'"))
                })
                .collect()
        };
        let default_queues = if kind == PortKind::Vxlan {
            Vec::new()
        } else {
            vec![0]
        };
        let (mut queues, mut vlan, mut trunk, mut native, mut bind) =
            (default_queues, None, None, None, BindMode::Auto);
        let mut max_macs = None;
        let mut pmds: Option<Vec<usize>> = None;
        let mut owner = None;
        let (mut vni, mut local, mut remotes) = (None, None, Vec::new());
        let mut udp_port = dataplane_common::wire::vxlan::VXLAN_PORT;
        let mut given = HashSet::new();
        for part in parts {
            let (key, value) = part.split_once('=').ok_or_else(|| Error::BadPortSpec {
                spec: spec.to_string(),
            })?;
            if !given.insert(key) {
                return Err(bad(key, value, "given twice; name it once"));
            }
            let vxlan_only = |key: &str| {
                if kind == PortKind::Vxlan {
                    Ok(())
                } else {
                    Err(bad(key, value, "only a vxlan port has a tunnel"))
                }
            };
            match key {
                // AF_XDP: the rx queue ids; TAP: how many queues.
                "queues" if kind == PortKind::Tap => {
                    let n = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or_else(|| bad(key, value, "a TAP takes a queue count, 1-16"))?;
                    queues = (0..n).collect();
                }
                "queues" if kind == PortKind::VhostUser => {
                    return Err(bad(key, value, "a vhost-user port has one queue pair"))
                }
                "queues" if kind == PortKind::Veth => {
                    return Err(bad(
                        key,
                        value,
                        "a veth port receives through the switch's punt device",
                    ))
                }
                "queues" => queues = list(key, value)?,
                "vlan" => {
                    vlan = Some(
                        value
                            .parse::<u16>()
                            .map_err(|_| bad(key, value, "expected a VLAN id"))?,
                    )
                }
                "trunk" => {
                    // Parsed wide and checked before narrowing: 65546 must not
                    // become VLAN 10.
                    let vids = list(key, value)?;
                    if vids.iter().any(|&v| v > 4094) {
                        return Err(bad(key, value, "VLAN ids are 1-4094"));
                    }
                    trunk = Some(vids.into_iter().map(|v| v as u16).collect())
                }
                "native" => {
                    native = Some(
                        value
                            .parse::<u16>()
                            .map_err(|_| bad(key, value, "expected a VLAN id"))?,
                    )
                }
                "bind" => bind = parse_bind(value).map_err(|why| bad(key, value, &why))?,
                "max_macs" => {
                    max_macs = Some(parse_max_macs(value).map_err(|why| bad(key, value, &why))?)
                }
                "pmds" if kind != PortKind::Afxdp => {
                    return Err(bad(
                        key,
                        value,
                        "only an AF_XDP port spreads its queues over PMDs",
                    ))
                }
                "pmds" => pmds = Some(list(key, value)?.into_iter().map(|p| p as usize).collect()),
                "owner" => {
                    owner = Some(parse_owner(kind, value).map_err(|why| bad(key, value, &why))?)
                }
                "vni" => {
                    vxlan_only(key)?;
                    vni = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| bad(key, value, "expected a VNI, 0-16777215"))?,
                    )
                }
                "local" => {
                    vxlan_only(key)?;
                    local =
                        Some(value.parse::<Ipv4Addr>().map_err(|_| {
                            bad(key, value, "expected this host's IPv4 VTEP address")
                        })?)
                }
                "remote" => {
                    vxlan_only(key)?;
                    remotes = parse_ipv4_list(value).map_err(|why| bad(key, value, &why))?
                }
                "port" => {
                    vxlan_only(key)?;
                    udp_port = value
                        .parse::<u16>()
                        .map_err(|_| bad(key, value, "expected a UDP port (VXLAN's is 4789)"))?
                }
                "dev" => {
                    vxlan_only(key)?;
                    if !iface.is_empty() {
                        return Err(bad(key, value, "the interface is named twice"));
                    }
                    iface = value.to_string();
                }
                other => {
                    return Err(Error::UnknownOption {
                        spec: spec.to_string(),
                        key: other.to_string(),
                    })
                }
            }
        }
        let max_len = match kind {
            PortKind::VhostUser => MAX_SOCKET_PATH,
            _ => 15,
        };
        if kind == PortKind::Vxlan && iface.is_empty() {
            return Err(Error::PortField {
                spec: spec.to_string(),
                why: "needs its underlay interface: dev=IF (where the remote VTEPs are reached)"
                    .into(),
            });
        }
        if iface.is_empty() || iface.len() > max_len {
            return Err(Error::BadPortSpec {
                spec: spec.to_string(),
            });
        }
        if kind != PortKind::VhostUser {
            check_ifname(&iface).map_err(|why| Error::PortField {
                spec: spec.to_string(),
                why,
            })?;
        }
        let vxlan = match kind {
            PortKind::Vxlan => {
                let t = VxlanSpec {
                    vni: vni.ok_or_else(|| Error::PortField {
                        spec: spec.to_string(),
                        why: "needs vni=N".into(),
                    })?,
                    local: local.ok_or_else(|| Error::PortField {
                        spec: spec.to_string(),
                        why: "needs local=IP, this host's VTEP address on the underlay".into(),
                    })?,
                    remotes,
                    udp_port,
                };
                t.check().map_err(|why| Error::PortField {
                    spec: spec.to_string(),
                    why,
                })?;
                Some(t)
            }
            _ => None,
        };
        let name = format!("{}:{iface}", kind.prefix());
        if let Some(p) = &pmds {
            check_pmds(&name, p, &queues)?;
        }
        Ok(PortConfig {
            kind,
            vlan: vlan_mode(&name, vlan, trunk, native)?,
            iface,
            queues,
            bind,
            max_macs,
            pmds,
            owner,
            vxlan,
        })
    }
}

/// `owner` as given: only a vhost-user socket is handed to another user.
pub(super) fn parse_owner(kind: PortKind, value: &str) -> Result<SocketOwner, String> {
    if kind != PortKind::VhostUser {
        return Err("only a vhost-user port has a socket another user connects to".into());
    }
    value.parse()
}

/// `pmds` names one PMD per queue.
pub(super) fn check_pmds(name: &str, pmds: &[usize], queues: &[u32]) -> Result<(), Error> {
    if pmds.len() == queues.len() {
        return Ok(());
    }
    Err(Error::BadValue {
        spec: name.to_string(),
        key: "pmds".into(),
        value: join(pmds),
        why: format!(
            "one PMD for each of the {} queues ({}), in the same order",
            queues.len(),
            join(queues)
        ),
    })
}

pub(super) fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("+")
}

/// The interface (or, for vhost-user, the socket path) of a TOML port.
pub(super) fn port_target(
    kind: PortKind,
    iface: Option<String>,
    path: Option<String>,
    origin: &str,
) -> Result<String, Error> {
    let spec = |what: &str| format!("{origin}: [[port]] kind = \"{}\"{what}", kind.prefix());
    match (kind, iface, path) {
        (PortKind::VhostUser, None, Some(p)) if !p.is_empty() && p.len() <= MAX_SOCKET_PATH => {
            Ok(p)
        }
        (PortKind::VhostUser, None, Some(p)) => Err(Error::PortField {
            spec: spec(&format!(", path = {p:?}")),
            why: format!("the socket path must be 1-{MAX_SOCKET_PATH} bytes"),
        }),
        (PortKind::VhostUser, _, _) => Err(Error::PortField {
            spec: spec(""),
            why: "needs `path = \"/run/dataplane/vm0.sock\"` (the socket) and no `iface`".into(),
        }),
        (_, Some(i), None) => match check_ifname(&i) {
            Ok(()) => Ok(i),
            Err(why) => Err(Error::PortField {
                spec: spec(&format!(", iface = {:?}", i)),
                why,
            }),
        },
        (_, _, _) => Err(Error::PortField {
            spec: spec(""),
            why: "needs `iface = \"...\"`; `path` is for vhost-user ports only".into(),
        }),
    }
}

/// An interface name the kernel could have (see `netdev::check_name`).
pub(super) fn check_ifname(name: &str) -> Result<(), String> {
    crate::sys::netdev::check_name(name).map_err(|e| e.to_string())
}
