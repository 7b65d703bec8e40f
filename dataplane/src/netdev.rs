//! What the kernel says about a network interface.

use std::ffi::CString;
use std::process::Command;

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("interface {ifname:?} does not exist in this network namespace (see `ip link`; use --netns NAME for another namespace)")]
    NoSuchInterface { ifname: String },
    #[error("interface name {ifname:?} is invalid")]
    BadName { ifname: String },
    #[error("querying interface {ifname}: `ip -j -d link show` failed: {detail}")]
    Query { ifname: String, detail: String },
}

/// The kernel's index of `ifname` in the current network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, Error> {
    let c = CString::new(ifname).map_err(|_| Error::BadName {
        ifname: ifname.to_string(),
    })?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(Error::NoSuchInterface {
            ifname: ifname.to_string(),
        });
    }
    Ok(index)
}

/// An XDP program the kernel reports attached to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedXdp {
    /// Kernel program id.
    pub id: u32,
    /// Program name as loaded (may be truncated to 15 bytes by the kernel).
    pub name: String,
    /// "driver", "skb" or "hw".
    pub mode: &'static str,
}

/// The XDP programs attached to `ifname`, as `ip -d link` reports them.
pub fn attached_xdp(ifname: &str) -> Result<Vec<AttachedXdp>, Error> {
    ifindex(ifname)?;
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", ifname])
        .output()
        .map_err(|e| Error::Query {
            ifname: ifname.to_string(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Query {
            ifname: ifname.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| Error::Query {
        ifname: ifname.to_string(),
        detail: e.to_string(),
    })?;
    Ok(parse_xdp_json(&json))
}

/// Reads the `xdp` object of `ip -j -d link show` output: either one
/// program (`xdp.prog`) or several (`xdp.attached[]`).
fn parse_xdp_json(json: &Value) -> Vec<AttachedXdp> {
    let Some(xdp) = json.get(0).and_then(|link| link.get("xdp")) else {
        return Vec::new();
    };
    let one = |entry: &Value| -> Option<AttachedXdp> {
        let prog = entry.get("prog")?;
        Some(AttachedXdp {
            id: prog.get("id")?.as_u64()? as u32,
            name: prog
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            mode: mode_name(entry.get("mode").and_then(Value::as_u64).unwrap_or(0)),
        })
    };
    match xdp.get("attached").and_then(Value::as_array) {
        Some(list) => list.iter().filter_map(one).collect(),
        None => one(xdp).into_iter().collect(),
    }
}

/// XDP_ATTACHED_* values from linux/if_link.h.
fn mode_name(mode: u64) -> &'static str {
    match mode {
        1 => "driver",
        2 => "skb",
        3 => "hw",
        _ => "unknown",
    }
}

/// The hardware address of `ifname`, asked through an ioctl on a socket of
/// the current network namespace (/sys/class/net shows the namespace /sys
/// was mounted in, which `--netns` does not change).
pub fn mac(ifname: &str) -> Result<[u8; 6], Error> {
    ifindex(ifname)?;
    let query_err = |detail: String| Error::Query {
        ifname: ifname.to_string(),
        detail,
    };
    // SAFETY: ifreq is plain data; zeroed is a valid start.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(query_err(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of req.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(query_err(format!("SIOCGIFHWADDR: {err}")));
    }
    // SAFETY: the kernel filled ifr_hwaddr for a successful SIOCGIFHWADDR.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut out = [0u8; 6];
    for (o, d) in out.iter_mut().zip(data.iter()) {
        *o = *d as u8;
    }
    Ok(out)
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call
    // applies to the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_program() {
        let j: Value = serde_json::from_str(
            r#"[{"ifname":"v0","xdp":{"mode":1,"prog":{"id":42,"name":"steer","tag":"ab"}}}]"#,
        )
        .unwrap();
        assert_eq!(
            parse_xdp_json(&j),
            vec![AttachedXdp {
                id: 42,
                name: "steer".into(),
                mode: "driver"
            }]
        );
    }

    #[test]
    fn multiple_programs_and_none() {
        let j: Value = serde_json::from_str(
            r#"[{"xdp":{"mode":4,"attached":[{"mode":2,"prog":{"id":7,"name":"a"}},{"mode":1,"prog":{"id":8,"name":"b"}}]}}]"#,
        )
        .unwrap();
        let got = parse_xdp_json(&j);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id, got[0].mode), (7, "skb"));
        assert_eq!((got[1].id, got[1].mode), (8, "driver"));
        let none: Value = serde_json::from_str(r#"[{"ifname":"v0"}]"#).unwrap();
        assert!(parse_xdp_json(&none).is_empty());
    }

    #[test]
    fn missing_interface_is_named() {
        let err = ifindex("dp-no-such-if").unwrap_err();
        assert!(err.to_string().contains("dp-no-such-if"));
    }
}
