//! `dataplane run` configuration: a TOML file, or `--port` flags for the
//! simple case. Both end as one validated [`RunConfig`].
//!
//! ```toml
//! mode = "switch"          # or "xconnect" (port pairs, like testpmd io-fwd)
//! fast_path = true         # learned unicast between AF_XDP ports stays in the kernel
//! busy_poll = false        # spin even when idle (benchmarks)
//! cores = [1]              # CPUs of the PMD threads, one each (or `core = 1`)
//! burst = 64
//! stats_interval = 5       # seconds between statistics lines (0: off)
//! socket_busy_poll = 20    # SO_BUSY_POLL microseconds on AF_XDP sockets (optional)
//!
//! [umem]
//! frame_size = 4096
//! frames = 8192
//!
//! [fdb]
//! max_entries = 8192
//! max_age = 300            # seconds
//!
//! [[port]]
//! kind = "afxdp"
//! iface = "veth0"
//! queues = [0]
//! vlan = 10                # access port of VLAN 10 ...
//!
//! [[port]]
//! kind = "afxdp"
//! iface = "veth1"
//! trunk = [10, 20]         # ... or a trunk of these VLANs
//! native_vlan = 1          # untagged frames of a trunk
//!
//! [[port]]
//! kind = "veth"            # the host end of a container's veth: the
//! iface = "veth-c1"        # container keeps its offloads (TSO, checksum)
//!
//! [[port]]
//! kind = "vhost-user"      # a VM (QEMU) connects to this socket
//! path = "/run/dataplane/vm0.sock"
//! ```

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::switch::{FdbConfig, VlanMode, VlanSet};
use crate::xsk::BindMode;

#[derive(Debug, Error, PartialEq)]
pub enum Error {
    #[error("reading config {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("config {path}: {detail}")]
    Syntax { path: String, detail: String },
    #[error(
        "port {spec:?}: unknown port kind {kind:?}; known kinds: afxdp, veth, tap, vhost-user"
    )]
    UnknownKind { spec: String, kind: String },
    #[error("port {spec:?}: expected KIND:IFACE[,key=value...] (e.g. afxdp:veth0,vlan=10)")]
    BadPortSpec { spec: String },
    #[error("port {spec:?}: unknown option {key:?}; known: queues, vlan, trunk, native, bind")]
    UnknownOption { spec: String, key: String },
    #[error("port {spec:?}: bad value {value:?} for {key}: {why}")]
    BadValue {
        spec: String,
        key: String,
        value: String,
        why: String,
    },
    #[error("port {spec:?}: {why}")]
    PortField { spec: String, why: String },
    #[error("port {name} is configured twice")]
    DuplicatePort { name: String },
    #[error("port {name}: `vlan` (access) and `trunk` exclude each other")]
    AccessAndTrunk { name: String },
    #[error("port {name}: VLAN {vid} is out of range (1-4094)")]
    VlanRange { name: String, vid: u16 },
    #[error(
        "no ports: give --port KIND:IFACE (at least two) or a config file with [[port]] tables"
    )]
    NoPorts,
    #[error("xconnect mode pairs ports: it needs an even number of ports, got {0}")]
    OddCrossConnect(usize),
    #[error("{field} = {value} is invalid: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: String,
    },
    /// An error found in a config file after parsing, with where it is.
    #[error("config {path}, line {line}, column {column}: {source}")]
    At {
        path: String,
        line: usize,
        column: usize,
        source: Box<Error>,
    },
}

/// How frames are forwarded between ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingMode {
    /// L2 learning switch.
    #[default]
    Switch,
    /// Port 0 <-> 1, 2 <-> 3, ...
    Xconnect,
}

/// Port kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
}

impl PortKind {
    /// The prefix of `--port` specs and port names.
    pub const fn prefix(self) -> &'static str {
        match self {
            PortKind::Afxdp => "afxdp",
            PortKind::Veth => "veth",
            PortKind::Tap => "tap",
            PortKind::VhostUser => "vhost-user",
        }
    }

    /// Ports on a netdev of this namespace that run `steer` (and so take
    /// part in the fast path and are watched for link changes).
    pub const fn runs_steer(self) -> bool {
        matches!(self, PortKind::Afxdp | PortKind::Veth)
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
}

impl PortConfig {
    /// The `--port` form of this port (what `port add` takes).
    pub fn spec(&self) -> String {
        let mut s = self.name();
        let default_queues = match self.kind {
            PortKind::Afxdp | PortKind::Veth => self.queues == [0],
            PortKind::Tap | PortKind::VhostUser => self.queues.len() == 1,
        };
        if !default_queues {
            match self.kind {
                PortKind::Tap | PortKind::VhostUser => {
                    s.push_str(&format!(",queues={}", self.queues.len()))
                }
                PortKind::Afxdp | PortKind::Veth => {
                    s.push_str(&format!(",queues={}", join(&self.queues)))
                }
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
        s
    }

    /// This port as a `[[port]]` table.
    fn to_toml(&self) -> String {
        let kind = self.kind.prefix();
        let mut t = match self.kind {
            PortKind::VhostUser => {
                format!("[[port]]\nkind = \"{kind}\"\npath = {:?}\n", self.iface)
            }
            _ => format!("[[port]]\nkind = \"{kind}\"\niface = {:?}\n", self.iface),
        };
        match self.kind {
            PortKind::Afxdp => t.push_str(&format!("queues = {:?}\n", self.queues)),
            PortKind::Veth => {}
            PortKind::Tap => t.push_str(&format!("queues = [{}]\n", self.queues.len())),
            PortKind::VhostUser => {}
        }
        match &self.vlan {
            VlanMode::Access(v) => t.push_str(&format!("vlan = {v}\n")),
            VlanMode::Trunk { allowed, native } => {
                if let Some(set) = allowed {
                    t.push_str(&format!("trunk = {:?}\n", set.iter().collect::<Vec<_>>()));
                }
                if *native != crate::switch::vlan::UNTAGGED {
                    t.push_str(&format!("native_vlan = {native}\n"));
                }
            }
        }
        if self.bind != BindMode::Auto {
            t.push_str(&format!("bind = \"{}\"\n", self.bind));
        }
        t
    }

    /// `kind:iface`, as logs and statistics name the port.
    pub fn name(&self) -> String {
        format!("{}:{}", self.kind.prefix(), self.iface)
    }
}

/// Everything `dataplane run` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub mode: ForwardingMode,
    /// Redirect learned unicast between AF_XDP ports in the kernel.
    pub fast_path: bool,
    /// SO_BUSY_POLL microseconds (with SO_PREFER_BUSY_POLL) on AF_XDP
    /// sockets, for drivers that poll in the syscall (not veth in copy mode).
    pub socket_busy_poll: Option<u32>,
    pub busy_poll: bool,
    /// CPUs of the PMD threads, one thread each (empty: one unpinned PMD).
    pub cores: Vec<usize>,
    pub burst: usize,
    pub stats_interval: Option<Duration>,
    pub frame_size: u32,
    pub frames: u32,
    pub fdb: FdbSettings,
    pub ports: Vec<PortConfig>,
}

/// FDB limits as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FdbSettings {
    pub max_entries: usize,
    pub max_age: Duration,
}

impl From<FdbSettings> for FdbConfig {
    fn from(s: FdbSettings) -> FdbConfig {
        FdbConfig {
            max_entries: s.max_entries,
            max_age: s.max_age,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
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

/// Defaults shared by both forms.
pub const DEFAULT_FRAME_SIZE: u32 = 4096;
pub const DEFAULT_FRAMES: u32 = 8192;
pub const DEFAULT_BURST: usize = 64;

impl RunConfig {
    /// Reads and validates a TOML file. Syntax errors carry line and column.
    pub fn from_file(path: &Path) -> Result<RunConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML text (`origin` names it in errors). Every error carries
    /// the line and column: syntax errors from the parser, the others from
    /// the place of the key they are about.
    pub fn from_toml(text: &str, origin: &str) -> Result<RunConfig, Error> {
        let file: FileConfig = toml::from_str(text).map_err(|e| Error::Syntax {
            path: origin.to_string(),
            detail: describe_toml_error(text, &e),
        })?;
        Self::from_file_config(file, origin).map_err(|(error, key)| match locate(text, &key) {
            Some((line, column)) => Error::At {
                path: origin.to_string(),
                line,
                column,
                source: Box::new(error),
            },
            None => error,
        })
    }

    /// The checks of [`from_toml`](Self::from_toml) past the syntax; an error
    /// comes with the key it is about.
    fn from_file_config(file: FileConfig, origin: &str) -> Result<RunConfig, (Error, KeyPath)> {
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

    /// The flag form: `--port afxdp:IF[,queues=0+1][,vlan=N|,trunk=N+M][,native=N][,bind=copy]`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_flags(
        specs: &[String],
        mode: ForwardingMode,
        fast_path: bool,
        busy_poll: bool,
        cores: Vec<usize>,
        burst: usize,
        stats_interval: Option<Duration>,
    ) -> Result<RunConfig, Error> {
        let ports = specs
            .iter()
            .map(|s| parse_port_spec(s))
            .collect::<Result<Vec<_>, _>>()?;
        let config = RunConfig {
            mode,
            fast_path,
            socket_busy_poll: None,
            busy_poll,
            cores,
            burst,
            stats_interval,
            frame_size: DEFAULT_FRAME_SIZE,
            frames: DEFAULT_FRAMES,
            fdb: FdbSettings {
                max_entries: 8192,
                max_age: Duration::from_secs(300),
            },
            ports,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Error> {
        if self.ports.is_empty() {
            return Err(Error::NoPorts);
        }
        let mut seen = HashSet::new();
        for p in &self.ports {
            if !seen.insert(p.name()) {
                return Err(Error::DuplicatePort { name: p.name() });
            }
        }
        if self.mode == ForwardingMode::Xconnect && !self.ports.len().is_multiple_of(2) {
            return Err(Error::OddCrossConnect(self.ports.len()));
        }
        if !(self.frame_size == 2048 || self.frame_size == 4096) {
            return Err(Error::Invalid {
                field: "umem.frame_size",
                value: self.frame_size.to_string(),
                why: "must be 2048 or 4096".into(),
            });
        }
        if !self.frames.is_power_of_two() || self.frames < 512 {
            return Err(Error::Invalid {
                field: "umem.frames",
                value: self.frames.to_string(),
                why: "must be a power of two, at least 512".into(),
            });
        }
        let mut seen = HashSet::new();
        for c in &self.cores {
            if !seen.insert(*c) {
                return Err(Error::Invalid {
                    field: "cores",
                    value: c.to_string(),
                    why: "listed twice (one PMD thread per CPU)".into(),
                });
            }
        }
        // SAFETY: sysconf(3) reads a value; no memory is passed.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize;
        if let Some(c) = self.cores.iter().find(|&&c| c >= cpus) {
            return Err(Error::Invalid {
                field: "cores",
                value: c.to_string(),
                why: format!("this machine has {cpus} CPU(s), 0-{}", cpus - 1),
            });
        }
        if self.fdb.max_entries == 0 || self.fdb.max_entries > 1 << 20 {
            return Err(Error::Invalid {
                field: "fdb.max_entries",
                value: self.fdb.max_entries.to_string(),
                why: "must be 1..=1048576".into(),
            });
        }
        let max_age = self.fdb.max_age.as_secs();
        if max_age == 0 || max_age > 86_400 * 365 {
            return Err(Error::Invalid {
                field: "fdb.max_age",
                value: max_age.to_string(),
                why: "seconds, 1..=31536000 (a year)".into(),
            });
        }
        if let Some(i) = self.stats_interval.filter(|i| i.as_secs() > 86_400) {
            return Err(Error::Invalid {
                field: "stats_interval",
                value: i.as_secs().to_string(),
                why: "seconds, 0 (off) to 86400 (a day)".into(),
            });
        }
        if let Some(us) = self.socket_busy_poll.filter(|us| *us > 1_000_000) {
            return Err(Error::Invalid {
                field: "socket_busy_poll",
                value: us.to_string(),
                why: "microseconds, at most 1000000".into(),
            });
        }
        if self.burst == 0 || self.burst > 1024 {
            return Err(Error::Invalid {
                field: "burst",
                value: self.burst.to_string(),
                why: "must be 1..=1024".into(),
            });
        }
        Ok(())
    }

    /// The configuration as a TOML file that `run --config` reads back to
    /// the same switch (`show config` prints it, ports added at runtime
    /// included).
    pub fn to_toml(&self) -> String {
        let mode = match self.mode {
            ForwardingMode::Switch => "switch",
            ForwardingMode::Xconnect => "xconnect",
        };
        let mut t = format!(
            "mode = \"{mode}\"\nfast_path = {}\nbusy_poll = {}\ncores = {:?}\nburst = {}\n",
            self.fast_path, self.busy_poll, self.cores, self.burst
        );
        if let Some(i) = self.stats_interval {
            t.push_str(&format!("stats_interval = {}\n", i.as_secs()));
        }
        if let Some(us) = self.socket_busy_poll {
            t.push_str(&format!("socket_busy_poll = {us}\n"));
        }
        t.push_str(&format!(
            "\n[umem]\nframe_size = {}\nframes = {}\n\n[fdb]\nmax_entries = {}\nmax_age = {}\n",
            self.frame_size,
            self.frames,
            self.fdb.max_entries,
            self.fdb.max_age.as_secs()
        ));
        for p in &self.ports {
            t.push('\n');
            t.push_str(&p.to_toml());
        }
        t
    }

    /// Cross-connect peers: 0<->1, 2<->3, ...
    pub fn xconnect_peers(&self) -> Vec<Option<usize>> {
        (0..self.ports.len()).map(|i| Some(i ^ 1)).collect()
    }
}

fn vlan_mode(
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

fn parse_bind(s: &str) -> Result<BindMode, String> {
    match s {
        "auto" => Ok(BindMode::Auto),
        "copy" => Ok(BindMode::Copy),
        "zerocopy" | "zero-copy" => Ok(BindMode::ZeroCopy),
        _ => Err("expected auto, copy or zerocopy".into()),
    }
}

/// Parses `afxdp:veth0,queues=0+1,vlan=10`.
pub fn parse_port_spec(spec: &str) -> Result<PortConfig, Error> {
    let (kind, rest) = spec.split_once(':').ok_or_else(|| Error::BadPortSpec {
        spec: spec.to_string(),
    })?;
    let kind = match kind {
        "afxdp" => PortKind::Afxdp,
        "veth" => PortKind::Veth,
        "tap" => PortKind::Tap,
        "vhost-user" => PortKind::VhostUser,
        other => {
            return Err(Error::UnknownKind {
                spec: spec.to_string(),
                kind: other.to_string(),
            })
        }
    };
    let mut parts = rest.split(',');
    let iface = parts.next().unwrap_or_default().to_string();
    let max_len = match kind {
        PortKind::VhostUser => MAX_SOCKET_PATH,
        _ => 15,
    };
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
    let (mut queues, mut vlan, mut trunk, mut native, mut bind) =
        (vec![0], None, None, None, BindMode::Auto);
    let mut given = HashSet::new();
    for part in parts {
        let (key, value) = part.split_once('=').ok_or_else(|| Error::BadPortSpec {
            spec: spec.to_string(),
        })?;
        if !given.insert(key) {
            return Err(bad(key, value, "given twice; name it once"));
        }
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
            other => {
                return Err(Error::UnknownOption {
                    spec: spec.to_string(),
                    key: other.to_string(),
                })
            }
        }
    }
    let name = format!("{}:{iface}", kind.prefix());
    Ok(PortConfig {
        kind,
        vlan: vlan_mode(&name, vlan, trunk, native)?,
        iface,
        queues,
        bind,
    })
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("+")
}

/// The interface (or, for vhost-user, the socket path) of a TOML port.
fn port_target(
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
fn check_ifname(name: &str) -> Result<(), String> {
    crate::sys::netdev::check_name(name).map_err(|e| e.to_string())
}

/// Where in a config file an error is: table keys, and the index of the
/// `[[port]]` table for port fields. Empty: nowhere in particular.
#[derive(Debug, Default)]
struct KeyPath(Vec<KeySeg>);

#[derive(Debug)]
enum KeySeg {
    Key(String),
    Index(usize),
}

impl KeyPath {
    fn top(key: &str) -> KeyPath {
        KeyPath(vec![KeySeg::Key(key.to_string())])
    }

    /// `fdb.max_age` -> table `fdb`, key `max_age`.
    fn dotted(field: &str) -> KeyPath {
        KeyPath(
            field
                .split('.')
                .map(|k| KeySeg::Key(k.to_string()))
                .collect(),
        )
    }

    /// Key `key` of the `index`-th `[[port]]` table.
    fn port(index: usize, key: &str) -> KeyPath {
        KeyPath(vec![
            KeySeg::Key("port".into()),
            KeySeg::Index(index),
            KeySeg::Key(key.into()),
        ])
    }
}

/// Line and column (1-based) of the value at `key` in `text`, or of the
/// nearest enclosing table that is there (a missing key: its table).
fn locate(text: &str, key: &KeyPath) -> Option<(usize, usize)> {
    if key.0.is_empty() {
        return None;
    }
    // toml_edit keeps the spans toml's serde interface drops; the text has
    // parsed once already, so this parse succeeds.
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for seg in &key.0 {
        let next = match seg {
            KeySeg::Key(k) => item.get(k.as_str()),
            KeySeg::Index(i) => item.get(*i),
        };
        match next {
            Some(next) => {
                item = next;
                span = item.span().or(span);
            }
            None => break,
        }
    }
    let start = span?.start;
    Some(line_column(text, start))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// toml's error with the line and column spelled out first.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    // One line, as every error of the CLI.
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_toml_reads_back_to_the_same_config() {
        let text = "mode = \"switch\"\nfast_path = false\ncores = [1]\nstats_interval = 5\n\
            [umem]\nframe_size = 2048\nframes = 1024\n[fdb]\nmax_age = 30\n\
            [[port]]\nkind = \"afxdp\"\niface = \"v0\"\nqueues = [0, 1]\nvlan = 10\n\
            [[port]]\nkind = \"afxdp\"\niface = \"v1\"\ntrunk = [10, 20]\nnative_vlan = 5\nbind = \"copy\"\n\
            [[port]]\nkind = \"veth\"\niface = \"c0\"\ntrunk = [10]\n\
            [[port]]\nkind = \"tap\"\niface = \"vm0\"\nqueues = [2]\n\
            [[port]]\nkind = \"vhost-user\"\npath = \"/run/dataplane/vm1.sock\"\nvlan = 4\n";
        let c = RunConfig::from_toml(text, "t").unwrap();
        let again = RunConfig::from_toml(&c.to_toml(), "again").unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn spec_parses_back_to_the_same_port() {
        for spec in [
            "afxdp:v0",
            "afxdp:v1,queues=0+1,vlan=10",
            "afxdp:v2,trunk=10+20,native=5,bind=copy",
            "afxdp:v3,native=7",
            "veth:c0",
            "veth:c1,vlan=10",
            "tap:vm0,queues=2,vlan=3",
            "vhost-user:/run/dataplane/vm1.sock,vlan=4",
        ] {
            let p = parse_port_spec(spec).unwrap();
            assert_eq!(p.spec(), spec);
            assert_eq!(parse_port_spec(&p.spec()).unwrap(), p);
        }
    }

    #[test]
    fn flag_form() {
        let c = RunConfig::from_flags(
            &[
                "afxdp:v0".into(),
                "afxdp:v1,vlan=10,queues=0+1,bind=copy".into(),
            ],
            ForwardingMode::Switch,
            true,
            false,
            vec![1],
            64,
            None,
        )
        .unwrap();
        assert_eq!(c.ports[0].vlan, VlanMode::default());
        assert_eq!(c.ports[1].vlan, VlanMode::Access(10));
        assert_eq!(c.ports[1].queues, vec![0, 1]);
        assert_eq!(c.ports[1].bind, BindMode::Copy);
    }

    #[test]
    fn every_number_a_user_gives_is_range_checked() {
        let flag = |s: &str| parse_port_spec(s).unwrap_err().to_string();
        assert!(
            flag("afxdp:v0,trunk=65546").contains("trunk"),
            "65546 is not VLAN 10"
        );
        assert!(flag("afxdp:v0,trunk=10+4095").contains("1-4094"));
        assert!(flag("afxdp:v0,vlan=1,vlan=2").contains("given twice"));
        assert!(flag("afxdp:v0,vlan=4095").contains("4095"));
        assert!(flag("afxdp:v0,native=0").contains('0'));
        assert!(flag("tap:vm0,queues=17").contains("1-16"));
        assert!(
            flag("afxdp:a\u{1b}[2J").contains("is invalid"),
            "control characters"
        );
        assert!(flag("afxdp:a/b").contains("is invalid"));
        assert!(flag("afxdp:..").contains("is invalid"));
        let toml = |body: &str| {
            RunConfig::from_toml(body, "t.toml")
                .unwrap_err()
                .to_string()
        };
        let port = "[[port]]\nkind = \"afxdp\"\niface = \"v0\"\n";
        assert!(
            toml(&format!("{port}queues = []\n")).contains("at least one"),
            "an AF_XDP port with no queue"
        );
        assert!(
            toml("[[port]]\nkind = \"tap\"\niface = \"t0\"\nqueues = [4294967295]\n")
                .contains("1-16")
        );
        assert!(
            toml("[[port]]\nkind = \"afxdp\"\niface = \"a-very-long-name0\"\n")
                .contains("1-15 bytes")
        );
        assert!(toml(&format!("cores = [5000]\n{port}")).contains("cores"));
        assert!(toml(&format!("[fdb]\nmax_entries = 0\n{port}")).contains("fdb.max_entries"));
        assert!(toml(&format!("[fdb]\nmax_age = 0\n{port}")).contains("fdb.max_age"));
        assert!(
            toml(&format!("stats_interval = 9223372036854775807\n{port}"))
                .contains("stats_interval")
        );
        assert!(
            toml(&format!("socket_busy_poll = 4294967295\n{port}")).contains("socket_busy_poll")
        );
        assert!(toml(&format!("{port}trunk = [65546]\n")).contains("line 4, column 10"));
    }

    #[test]
    fn errors_found_after_parsing_carry_line_and_column() {
        let err = |body: &str| {
            RunConfig::from_toml(body, "t.toml")
                .unwrap_err()
                .to_string()
        };
        let port = |iface: &str| format!("[[port]]\nkind = \"afxdp\"\niface = \"{iface}\"\n");
        let two = format!("{}{}", port("v0"), port("v1"));
        let cases = [
            (
                format!("[fdb]\nmax_age = 0\n{two}"),
                "line 2, column 11",
                "fdb.max_age",
            ),
            (format!("burst = 0\n{two}"), "line 1, column 9", "burst"),
            (
                format!("cores = [0, 5000]\n{two}"),
                "line 1, column 9",
                "cores",
            ),
            (format!("core = 5000\n{two}"), "line 1, column 8", "cores"),
            (
                format!("{two}vlan = 4095\n"),
                "line 7, column 8",
                "VLAN 4095",
            ),
            (
                format!("{}native_vlan = 0\n{}", port("v0"), port("v1")),
                "line 4, column 15",
                "VLAN 0",
            ),
            (
                format!("{}queues = []\n", port("v0")),
                "line 4, column 10",
                "at least one",
            ),
            (
                format!("{}bind = \"fast\"\n", port("v0")),
                "line 4, column 8",
                "bind",
            ),
            (
                format!("{}{}", port("v0"), port("v0")),
                "line 6, column 9",
                "configured twice",
            ),
            (
                format!("mode = \"xconnect\"\n{}", port("v0")),
                "line 1, column 8",
                "even number",
            ),
            (
                format!("{}[[port]]\nkind = \"tap\"\n", port("v0")),
                "line 4, column 1",
                "needs `iface",
            ),
        ];
        for (body, place, what) in cases {
            let e = err(&body);
            assert!(
                e.starts_with(&format!("config t.toml, {place}: ")) && e.contains(what),
                "{body:?}: {e}"
            );
        }
    }

    #[test]
    fn bad_flags_name_the_problem() {
        let err = |s: &str| parse_port_spec(s).unwrap_err();
        assert!(matches!(err("tap0"), Error::BadPortSpec { .. }));
        assert!(matches!(err("vhost:x"), Error::UnknownKind { kind, .. } if kind == "vhost"));
        assert!(
            matches!(err("tap:vm0,queues=0+1"), Error::BadValue { key, .. } if key == "queues")
        );
        assert!(
            matches!(err("afxdp:v0,color=red"), Error::UnknownOption { key, .. } if key == "color")
        );
        assert!(matches!(err("afxdp:v0,vlan=x"), Error::BadValue { key, .. } if key == "vlan"));
        assert!(matches!(err("veth:c0,queues=1"), Error::BadValue { key, .. } if key == "queues"));
        assert!(matches!(
            err("afxdp:v0,vlan=5000"),
            Error::VlanRange { vid: 5000, .. }
        ));
        assert!(matches!(
            err("afxdp:v0,vlan=1,trunk=2"),
            Error::AccessAndTrunk { .. }
        ));
        let dup = RunConfig::from_flags(
            &["afxdp:v0".into(), "afxdp:v0".into()],
            ForwardingMode::Switch,
            true,
            false,
            Vec::new(),
            64,
            None,
        );
        assert_eq!(
            dup,
            Err(Error::DuplicatePort {
                name: "afxdp:v0".into()
            })
        );
        let odd = RunConfig::from_flags(
            &["afxdp:v0".into()],
            ForwardingMode::Xconnect,
            true,
            false,
            Vec::new(),
            64,
            None,
        );
        assert_eq!(odd, Err(Error::OddCrossConnect(1)));
    }

    #[test]
    fn tap_ports() {
        let p = parse_port_spec("tap:vm0,queues=2,vlan=10").unwrap();
        assert_eq!(
            (p.kind, p.queues.len(), p.name()),
            (PortKind::Tap, 2, "tap:vm0".to_string())
        );
        let c = RunConfig::from_toml(
            "[[port]]\nkind = \"tap\"\niface = \"vm0\"\nqueues = [4]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.ports[0].queues.len(), 4);
    }

    #[test]
    fn vhost_user_ports() {
        let p = parse_port_spec("vhost-user:/run/dataplane/vm0.sock,vlan=10").unwrap();
        assert_eq!(
            (p.kind, p.iface.as_str(), p.name()),
            (
                PortKind::VhostUser,
                "/run/dataplane/vm0.sock",
                "vhost-user:/run/dataplane/vm0.sock".to_string()
            )
        );
        assert!(matches!(
            parse_port_spec("vhost-user:/a.sock,queues=2"),
            Err(Error::BadValue { key, .. }) if key == "queues"
        ));
        let long = format!("vhost-user:/{}", "x".repeat(200));
        assert!(matches!(
            parse_port_spec(&long),
            Err(Error::BadPortSpec { .. })
        ));
        let c = RunConfig::from_toml(
            "[[port]]\nkind = \"vhost-user\"\npath = \"/tmp/v.sock\"\n[[port]]\nkind = \"tap\"\niface = \"t0\"\n",
            "v.toml",
        )
        .unwrap();
        assert_eq!(c.ports[0].name(), "vhost-user:/tmp/v.sock");
        let missing = RunConfig::from_toml("[[port]]\nkind = \"vhost-user\"\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("path =") && missing.contains("m.toml"),
            "{missing}"
        );
        let mixed = RunConfig::from_toml("[[port]]\nkind = \"afxdp\"\npath = \"/x\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(mixed.contains("vhost-user ports only"), "{mixed}");
        let unknown = parse_port_spec("vhost:/x").unwrap_err().to_string();
        assert!(
            unknown.contains("afxdp, veth, tap, vhost-user"),
            "{unknown}"
        );
    }

    #[test]
    fn toml_form() {
        let c = RunConfig::from_toml(
            r#"
mode = "xconnect"
busy_poll = true
core = 1
[umem]
frames = 4096
[[port]]
kind = "afxdp"
iface = "a"
trunk = [10, 20]
native_vlan = 5
[[port]]
kind = "afxdp"
iface = "b"
"#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.mode, ForwardingMode::Xconnect);
        assert!(c.busy_poll);
        assert_eq!(c.frames, 4096);
        assert_eq!(c.xconnect_peers(), vec![Some(1), Some(0)]);
        match &c.ports[0].vlan {
            VlanMode::Trunk { allowed, native } => {
                assert_eq!(*native, 5);
                assert!(allowed.as_ref().unwrap().contains(20));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn toml_syntax_errors_have_line_and_column() {
        let err = RunConfig::from_toml("mode = \"switch\"\nburst = \n", "x.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("x.toml") && msg.contains("line 2, column"),
            "{msg}"
        );
        let unknown = RunConfig::from_toml(
            "[[port]]\nkind = \"afxdp\"\niface = \"a\"\ncolour = 1\n",
            "y.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("line 4") && unknown.contains("colour"),
            "{unknown}"
        );
        let kind = RunConfig::from_toml("[[port]]\nkind = \"floppy\"\niface = \"a\"\n", "z.toml")
            .unwrap_err()
            .to_string();
        assert!(kind.contains("line 2") && kind.contains("floppy"), "{kind}");
    }

    #[test]
    fn no_ports_is_an_error() {
        assert_eq!(RunConfig::from_toml("", "e.toml"), Err(Error::NoPorts));
    }
}
