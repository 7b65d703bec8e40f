//! The TOML form of the configuration (see the example in [`super`]): its
//! tables as serde reads and writes them, how they become a [`RunConfig`]
//! (each error with the key it is about), and how a [`RunConfig`] becomes
//! them again (`show config`).

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::switch::vlan::UNTAGGED;
use crate::switch::VlanMode;

use super::port::{
    check_pmds, parse_bind, parse_ipv4_list, parse_max_macs, parse_owner, port_target, vlan_mode,
    PortConfig, PortKind, VxlanSpec,
};
use super::toml_location::KeyPath;
use super::{
    Error, FdbSettings, ForwardingMode, RunConfig, DEFAULT_BURST, DEFAULT_FRAMES,
    DEFAULT_FRAME_SIZE,
};
use crate::xsk::BindMode;

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    mode: ForwardingMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    fast_path: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_busy_poll: Option<u32>,
    #[serde(default)]
    busy_poll: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    core: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cores: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats_interval: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ports: Option<usize>,
    #[serde(default)]
    umem: UmemSection,
    #[serde(default)]
    fdb: FdbSection,
    #[serde(default, rename = "port")]
    ports: Vec<PortSection>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct UmemSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    frame_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames: Option<u32>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct FdbSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_entries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_age: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    learn_rate: Option<u32>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PortSection {
    kind: PortKind,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    iface: Option<String>,
    /// vhost-user: the socket path.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    queues: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlan: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trunk: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    native_vlan: Option<u16>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<String>,
    /// Port security: most MAC addresses learned on the port at once.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_macs: Option<u32>,
    /// AF_XDP: the PMD of each queue, in the order of `queues`.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pmds: Option<Vec<usize>>,
    /// vhost-user: who else may connect (`"libvirt-qemu"`, `"USER:GROUP"`).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// vxlan: the tunnel (`iface` is the underlay).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    vni: Option<u32>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    remote: Option<Vec<String>>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    udp_port: Option<u16>,
}

impl RunConfig {
    /// The checks of [`from_toml`](Self::from_toml) past the syntax; an error
    /// comes with the key it is about.
    pub(super) fn from_file_config(
        file: FileConfig,
        origin: &str,
    ) -> Result<RunConfig, (Error, KeyPath)> {
        let mut ports = Vec::new();
        for (i, p) in file.ports.into_iter().enumerate() {
            let at = |key: &'static str| KeyPath::port(i, key);
            let target_key = if p.kind == PortKind::VhostUser {
                "path"
            } else {
                "iface"
            };
            let iface = port_target(p.kind, p.iface.clone(), p.path.clone(), origin)
                .map_err(|e| (e, at(target_key)))?;
            let name = format!("{}:{}", p.kind.prefix(), iface);
            if p.kind == PortKind::VhostUser && p.queues.is_some() {
                return Err((
                    Error::PortField {
                        spec: name,
                        why: "a vhost-user port has one queue pair; remove `queues`".into(),
                    },
                    at("queues"),
                ));
            }
            if p.kind == PortKind::Veth && p.queues.is_some() {
                return Err((
                    Error::PortField {
                        spec: name,
                        why:
                            "a veth port receives through the switch's punt device; remove `queues`"
                                .into(),
                    },
                    at("queues"),
                ));
            }
            let vlan_key = |e: &Error| match e {
                Error::VlanRange { vid, .. } if p.vlan == Some(*vid) => "vlan",
                Error::VlanRange { vid, .. } if p.native_vlan == Some(*vid) => "native_vlan",
                _ => "trunk",
            };
            let vlan = vlan_mode(&name, p.vlan, p.trunk.clone(), p.native_vlan).map_err(|e| {
                let key = vlan_key(&e);
                (e, at(key))
            })?;
            let bind = match p.bind.as_deref() {
                None => BindMode::Auto,
                Some(b) => parse_bind(b).map_err(|why| {
                    (
                        Error::BadValue {
                            spec: name.clone(),
                            key: "bind".into(),
                            value: b.into(),
                            why,
                        },
                        at("bind"),
                    )
                })?,
            };
            let vxlan = tunnel_of(&p, &name).map_err(|(e, key)| (e, at(key)))?;
            let queues = match (p.kind, p.queues) {
                // A TAP's queues are a count, not queue ids.
                (PortKind::Tap, Some(q)) => match q.as_slice() {
                    [n] if (1..=16).contains(n) => (0..*n).collect(),
                    _ => {
                        return Err((
                            Error::PortField {
                                spec: name,
                                why: format!(
                                "queues = {q:?}: a TAP takes one queue count, 1-16 (queues = [2])"
                            ),
                            },
                            at("queues"),
                        ))
                    }
                },
                (_, Some(q)) if q.is_empty() => {
                    return Err((
                        Error::PortField {
                            spec: name,
                            why: "queues = []: name at least one rx queue (queues = [0])".into(),
                        },
                        at("queues"),
                    ))
                }
                (_, Some(q)) => q,
                // Every receive queue of the underlay.
                (PortKind::Vxlan, None) => Vec::new(),
                (_, None) => vec![0],
            };
            let max_macs = match p.max_macs {
                Some(n) => Some(parse_max_macs(&n.to_string()).map_err(|why| {
                    (
                        Error::BadValue {
                            spec: name.clone(),
                            key: "max_macs".into(),
                            value: n.to_string(),
                            why,
                        },
                        at("max_macs"),
                    )
                })?),
                None => None,
            };
            if let Some(pmds) = &p.pmds {
                if p.kind != PortKind::Afxdp {
                    return Err((
                        Error::BadValue {
                            spec: name.clone(),
                            key: "pmds".into(),
                            value: super::port::join(pmds),
                            why: "only an AF_XDP port spreads its queues over PMDs".into(),
                        },
                        at("pmds"),
                    ));
                }
                check_pmds(&name, pmds, &queues).map_err(|e| (e, at("pmds")))?;
            }
            let owner = match &p.owner {
                Some(o) => Some(parse_owner(p.kind, o).map_err(|why| {
                    (
                        Error::BadValue {
                            spec: name.clone(),
                            key: "owner".into(),
                            value: o.clone(),
                            why,
                        },
                        at("owner"),
                    )
                })?),
                None => None,
            };
            ports.push(PortConfig {
                kind: p.kind,
                iface,
                queues,
                vlan,
                bind,
                max_macs,
                pmds: p.pmds,
                owner,
                vxlan,
            });
        }
        let cores_key = if file.cores.is_some() {
            "cores"
        } else {
            "core"
        };
        let config = RunConfig {
            mode: file.mode,
            fast_path: file.fast_path.unwrap_or(true),
            socket_busy_poll: file.socket_busy_poll.filter(|us| *us > 0),
            busy_poll: file.busy_poll,
            cores: match (file.cores, file.core) {
                (Some(list), _) => list,
                (None, Some(c)) => vec![c],
                (None, None) => Vec::new(),
            },
            burst: file.burst.unwrap_or(DEFAULT_BURST),
            stats_interval: file
                .stats_interval
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            max_ports: file.max_ports.unwrap_or(super::DEFAULT_MAX_PORTS),
            frame_size: file.umem.frame_size.unwrap_or(DEFAULT_FRAME_SIZE),
            frames: file.umem.frames.unwrap_or(DEFAULT_FRAMES),
            fdb: FdbSettings {
                max_entries: file.fdb.max_entries.unwrap_or(super::DEFAULT_FDB_ENTRIES),
                max_age: Duration::from_secs(file.fdb.max_age.unwrap_or(300)),
                learn_rate: file.fdb.learn_rate,
            },
            ports,
        };
        config.validate().map_err(|e| {
            let key = match &e {
                Error::Invalid { field: "cores", .. } => KeyPath::top(cores_key),
                Error::Invalid { field, .. } => KeyPath::dotted(field),
                Error::OddCrossConnect(_) => KeyPath::top("mode"),
                Error::DuplicatePort { name } => config
                    .ports
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.name() == *name)
                    .nth(1)
                    .map_or(KeyPath::default(), |(i, _)| KeyPath::port(i, "iface")),
                _ => KeyPath::default(),
            };
            (e, key)
        })?;
        Ok(config)
    }
}

impl From<&RunConfig> for FileConfig {
    /// The tables that read back as `config` (every value spelled out, so
    /// the file does not depend on the defaults of a later version).
    fn from(config: &RunConfig) -> FileConfig {
        FileConfig {
            mode: config.mode,
            fast_path: Some(config.fast_path),
            socket_busy_poll: config.socket_busy_poll,
            busy_poll: config.busy_poll,
            core: None,
            cores: Some(config.cores.clone()),
            burst: Some(config.burst),
            stats_interval: config.stats_interval.map(|i| i.as_secs()),
            max_ports: Some(config.max_ports),
            umem: UmemSection {
                frame_size: Some(config.frame_size),
                frames: Some(config.frames),
            },
            fdb: FdbSection {
                max_entries: Some(config.fdb.max_entries),
                max_age: Some(config.fdb.max_age.as_secs()),
                learn_rate: config.fdb.learn_rate,
            },
            ports: config.ports.iter().map(PortSection::from).collect(),
        }
    }
}

/// A `[[port]]` table's tunnel keys: required on a vxlan port, refused on
/// any other. An error names the key it is about.
fn tunnel_of(p: &PortSection, name: &str) -> Result<Option<VxlanSpec>, (Error, &'static str)> {
    let field = |why: String| Error::PortField {
        spec: name.to_string(),
        why,
    };
    if p.kind != PortKind::Vxlan {
        let given = [
            ("vni", p.vni.is_some()),
            ("local", p.local.is_some()),
            ("remote", p.remote.is_some()),
            ("udp_port", p.udp_port.is_some()),
        ];
        return match given.iter().find(|(_, g)| *g) {
            Some((key, _)) => Err((
                field(format!("`{key}`: only a vxlan port has a tunnel")),
                key,
            )),
            None => Ok(None),
        };
    }
    let vni = p
        .vni
        .ok_or_else(|| (field("needs `vni = N`".into()), "vni"))?;
    let local = p
        .local
        .as_deref()
        .ok_or_else(|| {
            (
                field("needs `local = \"IP\"`, this host's VTEP address".into()),
                "local",
            )
        })?
        .parse::<Ipv4Addr>()
        .map_err(|_| {
            (
                field(format!(
                    "local = {:?} is not an IPv4 address",
                    p.local.as_deref().unwrap_or_default()
                )),
                "local",
            )
        })?;
    let remotes = match &p.remote {
        Some(list) => parse_ipv4_list(&list.join("+")).map_err(|why| (field(why), "remote"))?,
        None => Vec::new(),
    };
    let t = VxlanSpec {
        vni,
        local,
        remotes,
        udp_port: p
            .udp_port
            .unwrap_or(dataplane_common::wire::vxlan::VXLAN_PORT),
    };
    t.check().map_err(|why| {
        let key = if why.starts_with("vni") {
            "vni"
        } else if why.starts_with("port") {
            "udp_port"
        } else {
            "remote"
        };
        (field(why), key)
    })?;
    Ok(Some(t))
}

impl From<&PortConfig> for PortSection {
    fn from(p: &PortConfig) -> PortSection {
        let (vlan, trunk, native_vlan) = match &p.vlan {
            VlanMode::Access(v) => (Some(*v), None, None),
            VlanMode::Trunk { allowed, native } => (
                None,
                allowed.as_ref().map(|set| set.iter().collect()),
                (*native != UNTAGGED).then_some(*native),
            ),
        };
        let (iface, path) = match p.kind {
            PortKind::VhostUser => (None, Some(p.iface.clone())),
            _ => (Some(p.iface.clone()), None),
        };
        PortSection {
            kind: p.kind,
            iface,
            path,
            queues: match p.kind {
                PortKind::Afxdp => Some(p.queues.clone()),
                // A TAP's `queues` is a count, as in `--port tap:NAME,queues=N`.
                PortKind::Tap => Some(vec![p.queues.len() as u32]),
                PortKind::Vxlan => (!p.queues.is_empty()).then(|| p.queues.clone()),
                PortKind::Veth | PortKind::VhostUser => None,
            },
            vlan,
            trunk,
            native_vlan,
            bind: (p.bind != BindMode::Auto).then(|| p.bind.to_string()),
            max_macs: p.max_macs,
            pmds: p.pmds.clone(),
            owner: p.owner.as_ref().map(|o| o.to_string()),
            vni: p.vxlan.as_ref().map(|t| t.vni),
            local: p.vxlan.as_ref().map(|t| t.local.to_string()),
            remote: p
                .vxlan
                .as_ref()
                .map(|t| t.remotes.iter().map(|r| r.to_string()).collect()),
            udp_port: p
                .vxlan
                .as_ref()
                .map(|t| t.udp_port)
                .filter(|&u| u != dataplane_common::wire::vxlan::VXLAN_PORT),
        }
    }
}
