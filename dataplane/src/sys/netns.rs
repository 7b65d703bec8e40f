//! Running in a named network namespace, like `ip -n NAME`.
//!
//! `ip netns exec` also remounts /sys, which hides the host's bpffs and with
//! it every pin (see docs/PINNING in the README). `dataplane --netns NAME`
//! changes only the network namespace, so pins under /sys/fs/bpf stay shared
//! between commands.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("network namespace {name:?} not found ({path}): list them with `ip netns list`")]
    NotFound { name: String, path: String },
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("entering network namespace {name:?}: {source}{hint}", hint = if source.raw_os_error() == Some(libc::EPERM) { " (needs CAP_SYS_ADMIN: run dataplane as root)" } else { "" })]
    Enter {
        name: String,
        source: std::io::Error,
    },
}

/// Moves the calling thread into the named namespace (`/var/run/netns/NAME`).
/// Call it before spawning threads: threads started later inherit it.
pub fn enter(name: &str) -> Result<(), Error> {
    let path = if name.contains('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/var/run/netns").join(name)
    };
    let shown = path.display().to_string();
    let file = File::open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                name: name.to_string(),
                path: shown.clone(),
            }
        } else {
            Error::Open {
                path: shown.clone(),
                source,
            }
        }
    })?;
    // SAFETY: setns(2) on an fd we own; CLONE_NEWNET only changes the network
    // namespace of this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::Enter {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Identifies the current network namespace (its inode number), so that pins
/// of interfaces with the same name in different namespaces do not collide.
pub fn current_id() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Moves the calling thread into a new, empty network namespace of its own
/// (only `lo`, down), which lives as long as something holds it: a socket
/// made in it, for example. Nothing names it, so nothing is left behind when
/// the process ends, crash included.
pub fn enter_private() -> std::io::Result<()> {
    // SAFETY: unshare(2) with CLONE_NEWNET changes only the calling thread's
    // network namespace; it touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
