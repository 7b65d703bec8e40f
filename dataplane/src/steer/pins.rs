//! Where an attachment lives in bpffs.
//!
//! ```text
//! <bpffs>/dataplane/ns<netns inode>/<ifname>/link      the XDP bpf_link (keeps it attached)
//!                                          /tc_link   the TCX bpf_link of `deliver` (ingress)
//!                                          /prog      the loaded `steer` program
//!                                          /POLICY /MATCHES /XSKS /COUNTERS /AYA_LOGS
//! ```
//!
//! Keying by network namespace keeps `veth0` in one namespace apart from
//! `veth0` in another; every namespace shares the host's bpffs as long as the
//! CLI is entered with `--netns` (setns) rather than `ip netns exec` (which
//! remounts /sys and hides /sys/fs/bpf).

use std::path::{Path, PathBuf};

use thiserror::Error;

/// statfs(2) magic of bpffs (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Default mount point of bpffs.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "bpffs is not mounted at {path}: mount it with `mount -t bpf bpf {path}` \
         (or run `cargo xtask setup`), or pass --bpffs DIR for another bpffs mount"
    )]
    NotMounted { path: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The dataplane directory for the current network namespace.
#[derive(Debug, Clone)]
pub struct PinRoot {
    dir: PathBuf,
}

impl PinRoot {
    /// Checks that `bpffs` is a bpffs mount and picks the namespace directory.
    pub fn open(bpffs: &Path) -> Result<PinRoot, Error> {
        if !is_bpffs(bpffs) {
            return Err(Error::NotMounted {
                path: bpffs.display().to_string(),
            });
        }
        let ns = crate::sys::netns::current_id().map_err(|source| Error::Io {
            action: "reading the network namespace of",
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
        Ok(PinRoot {
            dir: bpffs.join("dataplane").join(format!("ns{ns}")),
        })
    }

    /// Pins of one interface (they may or may not exist).
    pub fn interface(&self, ifname: &str) -> InterfacePins {
        InterfacePins {
            dir: self.dir.join(ifname),
            ifname: ifname.to_string(),
        }
    }

    /// Interfaces that have a pin directory, sorted by name.
    pub fn interfaces(&self) -> Result<Vec<InterfacePins>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    action: "listing",
                    path: self.dir.display().to_string(),
                    source,
                })
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names.iter().map(|n| self.interface(n)).collect())
    }

    /// Removes the namespace directory and `dataplane/` if they are empty,
    /// so a detach of the last interface leaves bpffs as it was.
    pub fn remove_empty_dirs(&self) {
        let _lock = TreeLock::take(self.dir.ancestors().nth(2));
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Pin paths of one attached interface.
#[derive(Debug, Clone)]
pub struct InterfacePins {
    dir: PathBuf,
    ifname: String,
}

impl InterfacePins {
    /// The interface these pins belong to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The directory holding the pins.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the pinned bpf_link.
    pub fn link(&self) -> PathBuf {
        self.dir.join("link")
    }

    /// Path of the pinned TCX link of `deliver`, the fast path's tc half.
    pub fn tc_link(&self) -> PathBuf {
        self.dir.join("tc_link")
    }

    /// Path of the pinned program.
    pub fn prog(&self) -> PathBuf {
        self.dir.join("prog")
    }

    /// Path of a pinned map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// True if anything is pinned for this interface.
    pub fn exist(&self) -> bool {
        self.dir.exists()
    }

    /// Creates the directory (and parents).
    pub fn create(&self) -> Result<(), Error> {
        // Under the tree lock: a detach in another namespace removes
        // `dataplane/` when it leaves it empty, and could do so between the
        // moment this creates a parent and the moment it creates the child.
        let _lock = TreeLock::take(self.dir.ancestors().nth(3));
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            action: "creating pin directory",
            path: self.dir.display().to_string(),
            source,
        })
    }

    /// Unlinks every pin and the directory. Unpinning the link detaches the
    /// program once no process holds it open.
    pub fn remove_all(&self) -> Result<(), Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    action: "listing",
                    path: self.dir.display().to_string(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            std::fs::remove_file(entry.path()).map_err(|source| Error::Io {
                action: "removing pin",
                path: entry.path().display().to_string(),
                source,
            })?;
        }
        std::fs::remove_dir(&self.dir).map_err(|source| Error::Io {
            action: "removing pin directory",
            path: self.dir.display().to_string(),
            source,
        })
    }
}

/// An exclusive flock(2) on the bpffs directory that holds `dataplane/`,
/// taken by everything that creates or removes the shared directories
/// (attaches and detaches in any namespace, in any process), released on
/// drop. bpffs holds only directories and pins, so the lock is on the
/// directory itself. Best effort: if the directory cannot be opened the
/// caller goes on unlocked, as before.
struct TreeLock(Option<std::fs::File>);

impl TreeLock {
    fn take(bpffs: Option<&Path>) -> TreeLock {
        use std::os::fd::AsRawFd;
        let Some(file) = bpffs.and_then(|p| std::fs::File::open(p).ok()) else {
            return TreeLock(None);
        };
        // SAFETY: flock(2) on a descriptor we own; blocks until granted.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        TreeLock(Some(file))
    }
}

impl Drop for TreeLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock.
        self.0.take();
    }
}

/// True if `path` is the root of a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) writes into a zeroed struct we own; c is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_is_not_bpffs() {
        let err = PinRoot::open(Path::new("/tmp")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/tmp") && msg.contains("mount -t bpf"),
            "{msg}"
        );
    }

    #[test]
    fn creating_pins_survives_a_concurrent_removal_of_empty_parents() {
        // What a detach in another namespace does (remove_empty_dirs) racing
        // with an attach here (create), on a scratch directory.
        let base = std::env::temp_dir().join(format!("dp-pins-race-{}", std::process::id()));
        // The stand-in for the bpffs mount, which always exists.
        std::fs::create_dir_all(&base).unwrap();
        let root = PinRoot {
            dir: base.join("dataplane").join("ns1"),
        };
        let pins = root.interface("x0");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let failures = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    root.remove_empty_dirs();
                }
            });
            let mut failures = 0;
            for _ in 0..3000 {
                if pins.create().is_err() {
                    failures += 1;
                }
                let _ = std::fs::remove_dir(pins.dir());
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            failures
        });
        let _ = std::fs::remove_dir_all(&base);
        assert_eq!(failures, 0, "creations lost to the concurrent removal");
    }

    #[test]
    fn layout() {
        let root = PinRoot {
            dir: PathBuf::from("/sys/fs/bpf/dataplane/ns1"),
        };
        let p = root.interface("veth0");
        assert_eq!(p.link(), Path::new("/sys/fs/bpf/dataplane/ns1/veth0/link"));
        assert_eq!(
            p.map("XSKS"),
            Path::new("/sys/fs/bpf/dataplane/ns1/veth0/XSKS")
        );
    }
}
