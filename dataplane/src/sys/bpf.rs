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

/// BPF_LINK_DETACH (bpf(2) command 34): force-detaches a link from its hook.
pub fn link_detach(link_fd: RawFd) -> std::io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    // bpf_attr for LINK_DETACH is { u32 link_fd }, zero-padded; 16 bytes is
    // more than the kernel reads for this command.
    let mut attr = [0u32; 4];
    attr[0] = link_fd as u32;
    // SAFETY: attr outlives the call and its size is passed with it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// BPF_OBJ_GET (bpf(2) command 7): opens a pinned object.
pub fn obj_get(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // bpf_attr for OBJ_GET is { u64 pathname; u32 bpf_fd; u32 file_flags; ... }.
    let mut attr = [0u64; 4];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: attr and the path string outlive the call; size is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// BPF_LINK_GET_FD_BY_ID (bpf(2) command 30).
pub fn link_get_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    // bpf_attr for GET_FD_BY_ID is { u32 id; u32 next_id; u32 open_flags }.
    let mut attr = [0u32; 4];
    attr[0] = id;
    // SAFETY: attr outlives the call and its size is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}
