//! `dataplane-cni`: a CNI plugin (spec 1.0.0) that plugs containers into a
//! running switch, the way ovs-cni plugs them into Open vSwitch.
//!
//! The runtime (podman, containerd, CRI-O) execs the plugin with the
//! command and the container in environment variables and the network's
//! configuration on stdin:
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "dpnet", "type": "dataplane-cni",
//!  "switch": {"netns": "sw"}, "vlan": 10, "mtu": 1500,
//!  "ipam": {"type": "host-local", "subnet": "10.88.0.0/24"}}
//! ```
//!
//! ADD makes a veth pair, moves one end into the container under the name
//! the runtime asked for, gets addresses from the IPAM plugin the
//! configuration names (delegation: the plugin is found in `CNI_PATH`),
//! puts them on it, and adds the other end to the switch as a `veth:` port
//! over the control socket (a container port keeps its offloads and gets
//! the fast path: see `port::veth`). DEL undoes each step that is there to
//! undo, so a second DEL, a DEL after the switch restarted or for a
//! container that is gone succeeds. CHECK verifies the port is on the
//! switch and up and the container's interface is there; STATUS (spec 1.1)
//! says whether the switch answers. Errors are the
//! spec's error object on stdout with a code and a message naming what to
//! fix. The steps themselves are in `link` (interfaces) and `ipam`.

mod ipam;
mod link;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::control::{default_socket_path, Client, PortStatus, Request};

/// The versions this plugin speaks (its results are 1.0.0 results).
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Error codes of the spec, and this plugin's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (spec 1.1): the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The switch is not running (no control socket).
    pub const SWITCH_NOT_RUNNING: u32 = 100;
    /// The switch refused the port.
    pub const SWITCH_REFUSED: u32 = 101;
    /// The interface name is taken in the container.
    pub const NAME_TAKEN: u32 = 102;
    /// The IPAM plugin failed.
    pub const IPAM: u32 = 103;
}

/// The spec's error object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            cni_version: "1.0.0".into(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
}

/// Where the switch runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRef {
    /// Its network namespace (`dataplane -n NETNS run`); absent: the
    /// plugin's own.
    #[serde(default)]
    pub netns: Option<String>,
    /// Its control socket, if not the default of that namespace.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// The network configuration this plugin reads (other keys are the
/// runtime's or the IPAM plugin's and are passed on untouched).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(default)]
    pub switch: SwitchRef,
    /// Access VLAN of the port.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// MTU of both ends of the veth (default: the kernel's, 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The IPAM section (`type` names the plugin to delegate to).
    #[serde(default)]
    pub ipam: Option<Value>,
    /// Capabilities the runtime fills in (`mac`).
    #[serde(default)]
    pub runtime_config: Option<RuntimeConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub mac: Option<String>,
}

/// The runtime's environment variables.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    /// Path of the container's network namespace.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// Directories to find delegated plugins in.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads the `CNI_*` variables.
    pub fn from_env() -> CniEnv {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        CniEnv {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: std::env::var_os("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ifname: var("CNI_IFNAME"),
            path: std::env::split_paths(&std::env::var_os("CNI_PATH").unwrap_or_default())
                .collect(),
        }
    }

    fn require(&self, what: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "{what} is not set (the runtime sets it for {})",
                    self.command
                ),
            ));
        }
        Ok(())
    }
}

/// Runs one command; `Some(json)` is printed on stdout.
pub fn run(env: &CniEnv, stdin: &str) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(serde_json::json!({
            "cniVersion": "1.0.0",
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("the network configuration on stdin: {e}"),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} is not supported; this plugin speaks {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let err_version = |mut e: CniError| {
        e.cni_version = conf.cni_version.clone();
        e
    };
    match env.command.as_str() {
        "ADD" => add(env, &conf, stdin).map(Some).map_err(err_version),
        "DEL" => del(env, &conf, stdin).map(|()| None).map_err(err_version),
        "CHECK" => check(env, &conf, stdin).map(|()| None).map_err(err_version),
        // Nothing of ours outlives DEL.
        "GC" => Ok(None),
        // Ready for ADD when the switch answers on its socket.
        "STATUS" => switch(&conf).map(|_| None).map_err(|e| {
            err_version(CniError {
                code: code::NOT_AVAILABLE,
                ..e
            })
        }),
        other => Err(err_version(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND={other:?}: expected ADD, DEL, CHECK or VERSION"),
        ))),
    }
}

/// The switch's control socket for `conf`.
fn socket_of(conf: &NetConf) -> PathBuf {
    conf.switch
        .socket
        .clone()
        .unwrap_or_else(|| default_socket_path(conf.switch.netns.as_deref()))
}

/// A connection to the running switch, or the error that says which
/// socket is missing.
fn switch(conf: &NetConf) -> Result<Client, CniError> {
    let socket = socket_of(conf);
    Client::connect(&socket).map_err(|e| {
        CniError::new(
            code::SWITCH_NOT_RUNNING,
            format!(
                "the switch is not running: no control socket at {} (start it with `dataplane{} run ...`)",
                socket.display(),
                conf.switch
                    .netns
                    .as_deref()
                    .map_or(String::new(), |n| format!(" -n {n}"))
            ),
        )
        .details(e.to_string())
    })
}

/// The switch port name of the container's interface.
fn port_name(host: &str) -> String {
    format!("veth:{host}")
}

fn add(env: &CniEnv, conf: &NetConf, stdin: &str) -> Result<Value, CniError> {
    env.require("CNI_CONTAINERID", &env.container_id)?;
    env.require("CNI_IFNAME", &env.ifname)?;
    let netns = env.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_NETNS is not set (ADD needs the container's namespace)",
        )
    })?;
    // Refuse early, before anything is made, if there is no switch.
    let mut client = switch(conf)?;
    let names = link::Names::for_container(&env.container_id, &env.ifname);
    let made = link::make_veth(
        conf.switch.netns.as_deref(),
        netns,
        &names,
        conf.mtu,
        conf.runtime_config.as_ref().and_then(|r| r.mac.as_deref()),
        &env.ifname,
    )?;
    let undo_link = || link::delete_host_end(conf.switch.netns.as_deref(), &names.host);
    let ips = match conf.ipam.as_ref() {
        Some(ipam) => match ipam::delegate(env, "ADD", ipam, stdin) {
            Ok(result) => result,
            Err(e) => {
                undo_link();
                return Err(e);
            }
        },
        None => Value::Null,
    };
    let undo_all = |e: CniError| {
        if let Some(ipam) = conf.ipam.as_ref() {
            let _ = ipam::delegate(env, "DEL", ipam, stdin);
        }
        undo_link();
        e
    };
    link::configure_addresses(netns, &env.ifname, &ips).map_err(undo_all)?;
    let mut spec = port_name(&names.host);
    if let Some(vlan) = conf.vlan {
        spec.push_str(&format!(",vlan={vlan}"));
    }
    client
        .request(&Request::PortAdd { spec: spec.clone() })
        .map_err(|e| {
            undo_all(CniError::new(
                code::SWITCH_REFUSED,
                format!("the switch did not add port {spec}: {e}"),
            ))
        })?;
    let mut result = serde_json::json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": names.host, "mac": made.host_mac},
            {"name": env.ifname, "mac": made.container_mac, "sandbox": netns},
        ],
    });
    if let Value::Object(ipam) = ips {
        for key in ["ips", "routes", "dns"] {
            if let Some(mut v) = ipam.get(key).cloned() {
                if key == "ips" {
                    // Each address belongs to the container's interface.
                    for ip in v.as_array_mut().into_iter().flatten() {
                        ip["interface"] = Value::from(1);
                    }
                }
                result[key] = v;
            }
        }
    }
    Ok(result)
}

fn del(env: &CniEnv, conf: &NetConf, stdin: &str) -> Result<(), CniError> {
    env.require("CNI_CONTAINERID", &env.container_id)?;
    env.require("CNI_IFNAME", &env.ifname)?;
    let names = link::Names::for_container(&env.container_id, &env.ifname);
    // The port: only if the switch runs and has it (a restarted switch
    // does not).
    if let Ok(mut client) = switch(conf) {
        let ports: Vec<PortStatus> = client.call(&Request::ShowPorts).unwrap_or_default();
        let name = port_name(&names.host);
        if ports.iter().any(|p| p.name == name) {
            client
                .request(&Request::PortDel { name: name.clone() })
                .map_err(|e| {
                    CniError::new(code::TRY_AGAIN_LATER, format!("removing port {name}: {e}"))
                })?;
        }
    }
    if let Some(ipam) = conf.ipam.as_ref() {
        ipam::delegate(env, "DEL", ipam, stdin)?;
    }
    link::delete_host_end(conf.switch.netns.as_deref(), &names.host);
    Ok(())
}

fn check(env: &CniEnv, conf: &NetConf, stdin: &str) -> Result<(), CniError> {
    env.require("CNI_CONTAINERID", &env.container_id)?;
    env.require("CNI_IFNAME", &env.ifname)?;
    let names = link::Names::for_container(&env.container_id, &env.ifname);
    let name = port_name(&names.host);
    let ports: Vec<PortStatus> = switch(conf)?
        .call(&Request::ShowPorts)
        .map_err(|e| CniError::new(code::IO, format!("asking the switch for its ports: {e}")))?;
    match ports.iter().find(|p| p.name == name) {
        None => {
            return Err(CniError::new(
                code::SWITCH_REFUSED,
                format!("port {name} is not on the switch (was the switch restarted? ADD again)"),
            ))
        }
        Some(p) if p.state != "up" => {
            return Err(CniError::new(
                code::SWITCH_REFUSED,
                format!("port {name} is {} on the switch", p.state),
            ))
        }
        Some(_) => {}
    }
    if let Some(netns) = env.netns.as_deref() {
        link::check_container_end(netns, &env.ifname)?;
    }
    if let Some(ipam) = conf.ipam.as_ref() {
        ipam::delegate(env, "CHECK", ipam, stdin)?;
    }
    Ok(())
}

/// The first existing `dir/name` of `dirs`.
fn find_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| Path::new(p).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            container_id: "c1".into(),
            netns: None,
            ifname: "eth0".into(),
            path: Vec::new(),
        }
    }

    #[test]
    fn version_answers_without_a_configuration() {
        let v = run(&env("VERSION"), "").unwrap().unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"1.0.0".into()));
    }

    #[test]
    fn bad_input_is_a_spec_error_with_a_code() {
        let e = run(&env("ADD"), "{not json").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = run(&env("ADD"), r#"{"cniVersion":"0.1.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = run(&env("FROB"), r#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        let mut no_id = env("ADD");
        no_id.container_id.clear();
        let e = run(&no_id, r#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("CNI_CONTAINERID"), "{}", e.msg);
    }

    #[test]
    fn no_switch_names_the_socket() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","switch":{"socket":"/nonexistent/dp.ctl"}}"#;
        let mut e = env("ADD");
        e.netns = Some("/proc/self/ns/net".into());
        let err = run(&e, conf).unwrap_err();
        assert_eq!(err.code, code::SWITCH_NOT_RUNNING);
        assert!(err.msg.contains("/nonexistent/dp.ctl"), "{}", err.msg);
        // DEL with no switch has nothing to remove there: it succeeds.
        assert_eq!(run(&env("DEL"), conf), Ok(None));
        // STATUS (1.1) says the plugin cannot serve ADD now, and why.
        let status = run(&env("STATUS"), conf).unwrap_err();
        assert_eq!(status.code, code::NOT_AVAILABLE);
        assert!(status.msg.contains("/nonexistent/dp.ctl"), "{}", status.msg);
        assert_eq!(run(&env("GC"), conf), Ok(None));
    }
}
