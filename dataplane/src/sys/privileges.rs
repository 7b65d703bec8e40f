//! Checks that turn "Operation not permitted" deep inside a syscall into an
//! error that says what is missing before anything is changed.

use thiserror::Error;

/// Capability bit numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// What the process lacks.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "missing capability {missing}: dataplane loads XDP programs and configures interfaces; \
         run it as root (sudo) or grant CAP_BPF and CAP_NET_ADMIN"
    )]
    MissingCapability { missing: &'static str },
    #[error(
        "this kernel has no AF_XDP sockets (socket(AF_XDP) failed: {0}); \
         it needs CONFIG_XDP_SOCKETS=y"
    )]
    NoXdpSockets(std::io::Error),
    #[error("reading capabilities from /proc/self/status: {0}")]
    ReadStatus(std::io::Error),
}

/// Fails unless the process may load BPF programs and change interfaces.
pub fn require_admin() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(Error::ReadStatus)?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if !has(CAP_NET_ADMIN) {
        return Err(Error::MissingCapability {
            missing: "CAP_NET_ADMIN",
        });
    }
    // CAP_SYS_ADMIN implies what CAP_BPF grants on older kernels.
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Err(Error::MissingCapability { missing: "CAP_BPF" });
    }
    Ok(())
}

/// Fails if the kernel cannot create AF_XDP sockets.
pub fn require_xdp_sockets() -> Result<(), Error> {
    // SAFETY: plain socket(2) call; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::NoXdpSockets(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by socket(2) and is owned here.
    unsafe { libc::close(fd) };
    Ok(())
}
