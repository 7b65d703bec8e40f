//! Owner-only unix sockets at a fixed path: the control socket and every
//! vhost-user port listen on one.
//!
//! The socket is bound inside a fresh 0700 directory made next to the path
//! (so nobody else can reach it while it is still being set up), given
//! mode 0600, and renamed into place. Nothing touches the process-wide
//! umask, which other threads may rely on. What is already at the path
//! decides first: a socket somebody accepts on is refused, a stale one
//! (its owner died) is replaced, anything that is not a socket is refused
//! and left alone.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: something is there that is not a socket; remove it or choose another path")]
    NotASocket { path: PathBuf },
    #[error("{path}: another process is serving this socket")]
    InUse { path: PathBuf },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// Listens on `path`, owner-only (0600), as described above. The caller
/// removes the socket when it is done.
pub fn listen(path: &Path) -> Result<UnixListener, Error> {
    let io_err = |what, source| Error::Io {
        path: path.into(),
        what,
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::NotASocket { path: path.into() })
        }
        Ok(_) => {
            // A socket: stale unless someone accepts on it.
            if UnixStream::connect(path).is_ok() {
                return Err(Error::InUse { path: path.into() });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = PrivateDir::new_in(parent).map_err(|e| io_err("creating a private directory", e))?;
    let tmp = dir.path().join("s");
    let listener = UnixListener::bind(&tmp).map_err(|e| io_err("bind", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("chmod 0600", e))?;
    // Atomic, and replaces a stale socket in the same step.
    std::fs::rename(&tmp, path).map_err(|e| io_err("rename into place", e))?;
    Ok(listener)
}

/// A directory of mode 0700 with an unpredictable name (mkdtemp(3)), so
/// nobody else can enter it or prepare anything in its place; removed,
/// with whatever is left in it, on drop.
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// A new one inside `parent`.
    pub fn new_in(parent: &Path) -> io::Result<PrivateDir> {
        let template = parent.join(".dataplane-XXXXXX");
        let mut raw = CString::new(template.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .into_bytes_with_nul();
        // SAFETY: `raw` is a writable NUL-terminated template that mkdtemp
        // fills in place; it outlives the call.
        let made = unsafe { libc::mkdtemp(raw.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(io::Error::last_os_error());
        }
        raw.pop();
        Ok(PrivateDir(PathBuf::from(std::ffi::OsStr::from_bytes(&raw))))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dp-privsock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn listens_owner_only_and_leaves_no_temporary_behind() {
        let d = scratch("ok");
        let path = d.join("x.sock");
        let listener = listen(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(UnixStream::connect(&path).is_ok(), "reachable at its path");
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the socket: {left:?}");
        // A live socket is refused; once its listener is gone, replaced.
        assert!(matches!(listen(&path), Err(Error::InUse { .. })));
        drop(listener);
        assert!(listen(&path).is_ok(), "a stale socket is replaced");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_refused_and_kept() {
        let d = scratch("file");
        let path = d.join("precious");
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(listen(&path), Err(Error::NotASocket { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
