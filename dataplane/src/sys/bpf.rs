//! The bpf(2) commands aya 0.14 does not offer publicly. Everything else
//! about BPF objects (loading, maps, links it made, test runs) goes through
//! aya; these three are for links *another* process made and pinned, which
//! `dataplane detach` must take down:
//!
//! - [`obj_get`]: open a pinned object by path (aya's `PinnedLink::from_pin`
//!   would do, but it hands back a link whose drop only closes it, and the
//!   detach below needs the raw fd);
//! - [`link_get_fd_by_id`]: open a link by id (aya has it, crate-private);
//! - [`link_detach`]: BPF_LINK_DETACH, which aya does not wrap at all.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A `union bpf_attr` as far as these commands read it: 32 bytes, 8-aligned.
type Attr = [u64; 4];

/// Two `u32` fields at offsets 0 and 4 of a `u64` slot, in memory order.
fn u32_pair(first: u32, second: u32) -> u64 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&first.to_ne_bytes());
    b[4..].copy_from_slice(&second.to_ne_bytes());
    u64::from_ne_bytes(b)
}

/// bpf(2) with `attr`; returns what the kernel returned (an fd for the
/// commands that open something).
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is ours and outlives the call; its size is passed with
    // it, and the kernel reads (never writes past) that many bytes. Any
    // pointer inside attr is the caller's to keep alive across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// Owns the fd a bpf(2) command returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// BPF_LINK_DETACH (bpf(2) command 34): force-detaches a link from its hook.
pub fn link_detach(link_fd: RawFd) -> std::io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    // bpf_attr for LINK_DETACH is { u32 link_fd }.
    bpf(BPF_LINK_DETACH, &mut [u32_pair(link_fd as u32, 0), 0, 0, 0]).map(|_| ())
}

/// BPF_OBJ_GET (bpf(2) command 7): opens a pinned object.
pub fn obj_get(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // bpf_attr for OBJ_GET is { u64 pathname; u32 bpf_fd; u32 file_flags };
    // `c` lives until the call returns.
    bpf(BPF_OBJ_GET, &mut [c.as_ptr() as u64, 0, 0, 0]).map(owned)
}

/// BPF_LINK_GET_FD_BY_ID (bpf(2) command 30): opens a link by its id.
pub fn link_get_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    // bpf_attr for GET_FD_BY_ID is { u32 id; u32 next_id; u32 open_flags }.
    bpf(BPF_LINK_GET_FD_BY_ID, &mut [u32_pair(id, 0), 0, 0, 0]).map(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u32_fields_land_at_their_offsets() {
        let slot = u32_pair(0x0102_0304, 0x0506_0708);
        let bytes = slot.to_ne_bytes();
        assert_eq!(bytes[..4], 0x0102_0304u32.to_ne_bytes());
        assert_eq!(bytes[4..], 0x0506_0708u32.to_ne_bytes());
    }

    #[test]
    fn a_missing_pin_is_enoent_not_a_panic() {
        let err = obj_get(std::path::Path::new("/nonexistent/dataplane-pin")).unwrap_err();
        // Without CAP_BPF the kernel may refuse before looking (EPERM).
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENOENT | libc::EPERM)),
            "{err}"
        );
    }
}
