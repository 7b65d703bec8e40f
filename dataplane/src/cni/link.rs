//! The container's veth pair: made, moved, addressed, removed, with
//! iproute2 in the switch's namespace and `nsenter` into the container's
//! (by path, as runtimes give it). The plugin runs once per container
//! event, so the cost of a few commands is nothing beside the runtime's,
//! and iproute2's messages name what went wrong.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{code, CniError};

/// Interface names of one container's pair, from its id and interface
/// name: the same for ADD, CHECK and DEL, 10 characters (IFNAMSIZ is 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Names {
    /// The switch's end (a `veth:` port).
    pub host: String,
    /// The container's end until it is renamed inside the container.
    pub temporary: String,
}

impl Names {
    pub fn for_container(container_id: &str, ifname: &str) -> Names {
        // FNV-1a: stable across builds (std's hasher is not).
        let mut h: u32 = 0x811c_9dc5;
        for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
            h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        }
        Names {
            host: format!("dp{h:08x}"),
            temporary: format!("dt{h:08x}"),
        }
    }
}

/// MACs of the pair.
pub(super) struct Made {
    pub host_mac: String,
    pub container_mac: String,
}

/// `ip [-n NETNS] ARGS`.
fn ip(netns: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    c.args(args);
    c
}

/// `ip ARGS` inside the network namespace at `path`.
fn ip_in(path: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", path.display()))
        .arg("ip")
        .args(args);
    c
}

/// Runs `cmd`; its stderr in the error.
fn run(mut cmd: Command, what: &str) -> Result<String, CniError> {
    let out = cmd.output().map_err(|e| {
        CniError::new(
            code::IO,
            format!("{what}: {e} (are iproute2 and util-linux installed?)"),
        )
    })?;
    if !out.status.success() {
        return Err(CniError::new(
            code::IO,
            format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac_of(out: &str) -> String {
    serde_json::from_str::<Value>(out)
        .ok()
        .and_then(|v| v[0]["address"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Makes the pair: the host end in `switch_netns`, the other end in the
/// container at `container` named `names`' container name, with `mtu` and
/// `mac` if given, both up. On an error nothing is left.
pub(super) fn make_veth(
    switch_netns: Option<&str>,
    container: &Path,
    names: &Names,
    mtu: Option<u32>,
    mac: Option<&str>,
    ifname: &str,
) -> Result<Made, CniError> {
    if !container.exists() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {} does not exist", container.display()),
        ));
    }
    if ip_in(container, &["link", "show", ifname])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Err(CniError::new(
            code::NAME_TAKEN,
            format!(
                "the container already has an interface named {ifname} (choose another CNI_IFNAME)"
            ),
        ));
    }
    let mtu = mtu.map(|m| m.to_string());
    let mut add = vec!["link", "add", names.host.as_str()];
    if let Some(m) = &mtu {
        add.extend(["mtu", m.as_str()]);
    }
    add.extend(["type", "veth", "peer", "name", names.temporary.as_str()]);
    if let Some(m) = &mtu {
        add.extend(["mtu", m.as_str()]);
    }
    run(
        ip(switch_netns, &add),
        &format!("creating the veth pair {}", names.host),
    )?;
    let made = (|| {
        let path = container.to_string_lossy();
        run(
            ip(
                switch_netns,
                &["link", "set", &names.temporary, "netns", &path],
            ),
            "moving the veth into the container",
        )?;
        let mut set = vec!["link", "set", names.temporary.as_str(), "name", ifname];
        if let Some(mac) = mac {
            set.extend(["address", mac]);
        }
        set.push("up");
        run(
            ip_in(container, &set),
            &format!("naming the container's end {ifname}"),
        )?;
        run(
            ip(switch_netns, &["link", "set", &names.host, "up"]),
            "setting the host end up",
        )?;
        Ok(Made {
            host_mac: mac_of(&run(
                ip(switch_netns, &["-j", "link", "show", &names.host]),
                "reading the host end",
            )?),
            container_mac: mac_of(&run(
                ip_in(container, &["-j", "link", "show", ifname]),
                "reading the container end",
            )?),
        })
    })();
    if made.is_err() {
        delete_host_end(switch_netns, &names.host);
    }
    made
}

/// Puts the IPAM result's addresses and routes on `ifname` in the container.
pub(super) fn configure_addresses(
    container: &Path,
    ifname: &str,
    ipam: &Value,
) -> Result<(), CniError> {
    for ip in ipam["ips"].as_array().into_iter().flatten() {
        let Some(address) = ip["address"].as_str() else {
            continue;
        };
        run(
            ip_in(container, &["addr", "add", address, "dev", ifname]),
            &format!("adding {address} to {ifname}"),
        )?;
    }
    for route in ipam["routes"].as_array().into_iter().flatten() {
        let Some(dst) = route["dst"].as_str() else {
            continue;
        };
        let mut args = vec!["route", "add", dst];
        if let Some(gw) = route["gw"].as_str() {
            args.extend(["via", gw]);
        }
        args.extend(["dev", ifname]);
        run(
            ip_in(container, &args),
            &format!("adding the route to {dst}"),
        )?;
    }
    Ok(())
}

/// Deletes the pair by its host end, if it is there (deleting one end of a
/// veth deletes both; a container's namespace that is gone took its end).
pub(super) fn delete_host_end(switch_netns: Option<&str>, host: &str) {
    let _ = ip(switch_netns, &["link", "del", host]).output();
}

/// The container's interface is there.
pub(super) fn check_container_end(container: &Path, ifname: &str) -> Result<(), CniError> {
    run(
        ip_in(container, &["link", "show", ifname]),
        &format!("looking for {ifname} in the container"),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_per_interface() {
        let a = Names::for_container("abc", "eth0");
        assert_eq!(a, Names::for_container("abc", "eth0"));
        assert_ne!(a, Names::for_container("abc", "eth1"));
        assert_ne!(a.host, Names::for_container("abd", "eth0").host);
        assert!(a.host.len() <= 15 && a.temporary.len() <= 15);
        assert!(a.host.starts_with("dp") && a.temporary.starts_with("dt"));
    }
}
