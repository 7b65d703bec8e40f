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
use std::os::unix::net::UnixListener;
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
            // A socket: stale unless someone listens on it.
            if listened_on(path).map_err(|e| io_err("probing the socket", e))? {
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

/// Whether a process listens on the socket at `path`, found with a
/// non-blocking connect: a plain connect to a listener that never accepts
/// (its backlog full) would block the caller for good, and the caller
/// holds the daemon's lock. Refused (ECONNREFUSED): nobody listens, the
/// socket is stale. Connected, or "try again" (EAGAIN: backlog full): a
/// listener is there.
fn listened_on(path: &Path) -> io::Result<bool> {
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path too long for a unix socket",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: `addr` is a valid sockaddr_un of the given size, alive for
    // the call; the socket is non-blocking, so connect returns at once.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EINPROGRESS) => Ok(true),
        Some(libc::ECONNREFUSED | libc::ENOENT) => Ok(false),
        _ => Err(e),
    }
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
    use std::os::unix::net::UnixStream;

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
    fn a_listener_that_never_accepts_is_in_use_and_does_not_block() {
        let d = scratch("full");
        let path = d.join("busy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Backlog 0: one pending connection fills it; a blocking connect
        // would now wait until somebody accepts, which nobody does.
        // SAFETY: listen(2) on our own listening socket.
        assert_eq!(
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) },
            0
        );
        let _pending = UnixStream::connect(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(matches!(listen(&probe), Err(Error::InUse { .. })));
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(answer, Ok(true), "refused as in use, at once");
        drop(listener);
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
