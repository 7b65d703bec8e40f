//! TAP devices: opening a queue of one (`/dev/net/tun` + TUNSETIFF), the
//! virtio-net header and offloads it speaks, and the two interface settings
//! a TAP's owner makes (queue length, up). The switch's TAP ports
//! (`port::tap`) and the benchmark's TAP guest (`traffic::tap_echo`) open
//! their devices here. Hand-written: nix has no TUN ioctls, and these are
//! four fixed-size requests on a struct libc already defines.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

// linux/if_tun.h
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
// linux/sockios.h
const SIOCSIFTXQLEN: libc::c_ulong = 0x8943;

/// Offload flags for [`TapOptions::vnet_hdr`] (TUNSETOFFLOAD).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// Longest interface name (IFNAMSIZ without the NUL).
const MAX_NAME: usize = 15;

#[derive(Debug, Error)]
pub enum Error {
    #[error("TAP {name:?}: name must be 1-15 bytes without '/' or spaces")]
    BadName { name: String },
    #[error("TAP {name}: opening /dev/net/tun: {source} (is the tun module loaded?)")]
    OpenTun {
        name: String,
        source: std::io::Error,
    },
    #[error("TAP {name}: {call}: {source}{hint}", hint = tap_hint(source))]
    Ioctl {
        name: String,
        call: &'static str,
        source: std::io::Error,
    },
}

fn tap_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBUSY) => " (another process has this TAP open)",
        Some(libc::EINVAL) => {
            " (a device of that name exists with other flags, e.g. not multi-queue, or is not a TAP)"
        }
        Some(libc::EPERM) => " (needs CAP_NET_ADMIN)",
        _ => "",
    }
}

/// How a TAP queue is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct TapOptions {
    /// IFF_MULTI_QUEUE: each open adds a queue to the same device.
    pub multi_queue: bool,
    /// IFF_VNET_HDR with this header length and these `TUN_F_*` offloads;
    /// `None`: plain frames, no offloads (what a simple guest reads).
    pub vnet_hdr: Option<(i32, u32)>,
}

/// Refuses names the kernel would refuse or misread.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains(['/', ' ']) {
        return Err(Error::BadName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Opens one queue of TAP `name` (creating the device if it does not
/// exist), non-blocking and close-on-exec.
pub fn open(name: &str, opts: &TapOptions) -> Result<OwnedFd, Error> {
    check_name(name)?;
    // SAFETY: open(2) with a NUL-terminated literal path; the fd is owned below.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(Error::OpenTun {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ifreq(name);
    let mut flags = IFF_TAP | IFF_NO_PI;
    if opts.multi_queue {
        flags |= IFF_MULTI_QUEUE;
    }
    if opts.vnet_hdr.is_some() {
        flags |= IFF_VNET_HDR;
    }
    req.ifr_ifru.ifru_flags = flags;
    let ioctl_err = |call| Error::Ioctl {
        name: name.to_string(),
        call,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(ioctl_err("TUNSETIFF"));
    }
    if let Some((hdr_len, offloads)) = opts.vnet_hdr {
        // SAFETY: TUNSETVNETHDRSZ reads an int we own.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } != 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ"));
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, offloads as libc::c_ulong) } != 0 {
            return Err(ioctl_err("TUNSETOFFLOAD"));
        }
    }
    Ok(fd)
}

/// Sets the device's transmit queue length and IFF_UP in the current
/// namespace, best effort: a persistent device may be configured by its
/// owner, and the device works (with tun's default of 500) either way.
pub fn set_queue_len_and_up(name: &str, tx_queue_len: i32) {
    // SAFETY: a datagram socket for the ioctls, owned (closed on drop).
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return;
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let s = sock.as_raw_fd();
    let mut req = ifreq(name);
    // ifr_qlen shares the int slot of the union with ifr_ifindex.
    req.ifr_ifru.ifru_ifindex = tx_queue_len;
    // SAFETY: each ioctl reads (and SIOCGIFFLAGS writes) the ifreq we own.
    unsafe {
        libc::ioctl(s, SIOCSIFTXQLEN, &mut req);
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &mut req);
        }
    }
}

/// A zeroed `struct ifreq` naming `name` (which [`check_name`] bounded to
/// 15 bytes, so the NUL stays).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(MAX_NAME)) {
        *d = s as libc::c_char;
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_before_any_syscall() {
        for bad in ["", "a/b", "has space", "sixteen-bytes-xx"] {
            assert!(
                matches!(check_name(bad), Err(Error::BadName { .. })),
                "{bad:?}"
            );
        }
        assert!(check_name("vnet0").is_ok());
        assert!(check_name("fifteen-bytes-x").is_ok());
    }
}
