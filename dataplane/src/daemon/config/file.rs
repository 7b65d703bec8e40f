//! The TOML form of the configuration (see the example in [`super`]): its
//! tables as serde reads them, and how they become a [`RunConfig`], each
//! error with the key it is about.

use std::time::Duration;

use serde::Deserialize;

use super::port::{parse_bind, port_target, vlan_mode, PortConfig, PortKind};
use super::toml_location::KeyPath;
use super::{
    Error, FdbSettings, ForwardingMode, RunConfig, DEFAULT_BURST, DEFAULT_FRAMES,
    DEFAULT_FRAME_SIZE,
};
use crate::xsk::BindMode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    mode: ForwardingMode,
    fast_path: Option<bool>,
    socket_busy_poll: Option<u32>,
    #[serde(default)]
    busy_poll: bool,
    core: Option<usize>,
    cores: Option<Vec<usize>>,
    burst: Option<usize>,
    stats_interval: Option<u64>,
    #[serde(default)]
    umem: UmemSection,
    #[serde(default)]
    fdb: FdbSection,
    #[serde(default, rename = "port")]
    ports: Vec<PortSection>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UmemSection {
    frame_size: Option<u32>,
    frames: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FdbSection {
    max_entries: Option<usize>,
    max_age: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSection {
    kind: PortKind,
    #[serde(default)]
    iface: Option<String>,
    /// vhost-user: the socket path.
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    queues: Option<Vec<u32>>,
    vlan: Option<u16>,
    trunk: Option<Vec<u16>>,
    native_vlan: Option<u16>,
    #[serde(default)]
    bind: Option<String>,
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
            let iface =
                port_target(p.kind, p.iface, p.path, origin).map_err(|e| (e, at(target_key)))?;
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
                (_, None) => vec![0],
            };
            ports.push(PortConfig {
                kind: p.kind,
                iface,
                queues,
                vlan,
                bind,
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
            frame_size: file.umem.frame_size.unwrap_or(DEFAULT_FRAME_SIZE),
            frames: file.umem.frames.unwrap_or(DEFAULT_FRAMES),
            fdb: FdbSettings {
                max_entries: file.fdb.max_entries.unwrap_or(8192),
                max_age: Duration::from_secs(file.fdb.max_age.unwrap_or(300)),
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
