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
//! max_ports = 64           # port slots, runtime additions included (2-1024)
//!
//! [umem]
//! frame_size = 4096
//! frames = 8192
//!
//! [fdb]
//! max_entries = 8192
//! max_age = 300            # seconds
//! learn_rate = 1000        # new addresses per port per second (optional)
//!
//! [[port]]
//! kind = "afxdp"
//! iface = "veth0"
//! queues = [0, 1]          # receive queues, round robin over the PMDs ...
//! pmds = [0, 1]            # ... or pinned: the PMD of each queue (optional)
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

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::switch::FdbConfig;

mod file;
mod port;
mod toml_location;

use file::FileConfig;
pub use port::{parse_port_spec, PortConfig, PortKind, VxlanSpec};
use toml_location::{describe_toml_error, locate};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingMode {
    /// L2 learning switch.
    #[default]
    Switch,
    /// Port 0 <-> 1, 2 <-> 3, ...
    Xconnect,
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
    /// Port slots: the most ports the switch may have at once (the kernel
    /// maps of each port, the PMDs' tables and the punt device's queues
    /// are sized from it).
    pub max_ports: usize,
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
    /// `[fdb] learn_rate`: new addresses per port per second (`None`: no limit).
    pub learn_rate: Option<u32>,
}

impl From<FdbSettings> for FdbConfig {
    fn from(s: FdbSettings) -> FdbConfig {
        FdbConfig {
            max_entries: s.max_entries,
            max_age: s.max_age,
            learn_rate: s.learn_rate,
        }
    }
}

/// `dataplane run`'s options besides `--port`, in the flag form (the TOML
/// form has a key for each, and more).
#[derive(Debug, Clone, PartialEq)]
pub struct RunFlags {
    pub mode: ForwardingMode,
    pub fast_path: bool,
    pub busy_poll: bool,
    /// CPUs of the PMD threads (empty: one unpinned PMD).
    pub cores: Vec<usize>,
    pub burst: usize,
    /// The FDB's size (`[fdb] max_entries`).
    pub fdb_max_entries: usize,
    /// Port slots (`max_ports`).
    pub max_ports: usize,
    pub stats_interval: Option<Duration>,
}

impl Default for RunFlags {
    fn default() -> Self {
        RunFlags {
            mode: ForwardingMode::Switch,
            fast_path: true,
            busy_poll: false,
            cores: Vec::new(),
            burst: DEFAULT_BURST,
            fdb_max_entries: DEFAULT_FDB_ENTRIES,
            max_ports: DEFAULT_MAX_PORTS,
            stats_interval: None,
        }
    }
}

/// Defaults shared by both forms.
pub const DEFAULT_FRAME_SIZE: u32 = 4096;
pub const DEFAULT_FRAMES: u32 = 8192;
pub const DEFAULT_BURST: usize = 64;
/// Port slots unless configured.
pub const DEFAULT_MAX_PORTS: usize = dataplane_common::MAX_PORTS as usize;
/// The most port slots (each costs every port's kernel maps a devmap
/// entry, and the punt device a queue).
pub const MAX_PORTS_LIMIT: usize = 1024;

/// FDB entries unless configured (the Linux bridge has no limit; OVS's
/// default mac-table-size is 2048).
pub const DEFAULT_FDB_ENTRIES: usize = 8192;

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

    /// The flag form: `--port afxdp:IF[,queues=0+1][,vlan=N|,trunk=N+M][,native=N][,bind=copy]`
    /// for each of `specs`, with `flags` for the rest.
    pub fn from_flags(specs: &[String], flags: RunFlags) -> Result<RunConfig, Error> {
        let RunFlags {
            mode,
            fast_path,
            busy_poll,
            cores,
            burst,
            fdb_max_entries,
            max_ports,
            stats_interval,
        } = flags;
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
            max_ports,
            frame_size: DEFAULT_FRAME_SIZE,
            frames: DEFAULT_FRAMES,
            fdb: FdbSettings {
                max_entries: fdb_max_entries,
                max_age: Duration::from_secs(300),
                learn_rate: None,
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
        if !(2..=MAX_PORTS_LIMIT).contains(&self.max_ports) || self.max_ports < self.ports.len() {
            return Err(Error::Invalid {
                field: "max_ports",
                value: self.max_ports.to_string(),
                why: format!(
                    "port slots, {}..={MAX_PORTS_LIMIT} (this configuration has {} ports)",
                    self.ports.len().max(2),
                    self.ports.len()
                ),
            });
        }
        let pmds = self.cores.len().max(1);
        for p in &self.ports {
            if let Some(bad) = p.pmds.iter().flatten().find(|&&i| i >= pmds) {
                return Err(Error::Invalid {
                    field: "pmds",
                    value: format!("{bad} (port {})", p.name()),
                    why: format!(
                        "this switch runs {pmds} PMD thread(s), 0-{} (one per --cores CPU)",
                        pmds - 1
                    ),
                });
            }
        }
        if self.fdb.max_entries == 0 || self.fdb.max_entries > 1 << 20 {
            return Err(Error::Invalid {
                field: "fdb.max_entries",
                value: self.fdb.max_entries.to_string(),
                why: "must be 1..=1048576".into(),
            });
        }
        if let Some(rate) = self.fdb.learn_rate {
            if !(1..=1_000_000).contains(&rate) {
                return Err(Error::Invalid {
                    field: "fdb.learn_rate",
                    value: rate.to_string(),
                    why: "must be 1..=1000000 new addresses per port per second".into(),
                });
            }
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
    /// included): the tables [`from_toml`](Self::from_toml) reads, written
    /// by serde.
    pub fn to_toml(&self) -> String {
        toml::to_string(&FileConfig::from(self))
            .expect("the configuration's tables hold only TOML-representable values")
    }

    /// Cross-connect peers: 0<->1, 2<->3, ...
    pub fn xconnect_peers(&self) -> Vec<Option<usize>> {
        (0..self.ports.len()).map(|i| Some(i ^ 1)).collect()
    }
}

#[cfg(test)]
mod tests;
