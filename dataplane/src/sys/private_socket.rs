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
//!
//! A socket another user's process must reach (a vhost-user socket that
//! libvirt's QEMU connects to, running as `libvirt-qemu`) is given that
//! owner, or that group with mode 0660, while it is still in the private
//! directory: no moment exists where anybody else could connect.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::unistd::{Gid, Group, Uid, User};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: something is there that is not a socket; remove it or choose another path")]
    NotASocket { path: PathBuf },
    #[error("{path}: another process is serving this socket")]
    InUse { path: PathBuf },
    #[error("{path}: owner {owner}: {why}")]
    Owner {
        path: PathBuf,
        owner: SocketOwner,
        why: String,
    },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// Who besides root may connect to a socket: `USER` (the socket becomes
/// theirs, still 0600), `USER:GROUP` or `:GROUP` (that group may connect
/// too: 0660). Names or numeric ids; looked up when the socket is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOwner {
    pub user: Option<String>,
    pub group: Option<String>,
}

impl FromStr for SocketOwner {
    type Err = String;

    fn from_str(s: &str) -> Result<SocketOwner, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let name = |n: &str| {
            // What useradd(8) accepts, and numbers; nothing that could be
            // read as another option of a port spec.
            let ok = !n.is_empty()
                && n.len() <= 32
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            ok.then(|| n.to_string())
        };
        let user = match user {
            "" => None,
            u => Some(name(u).ok_or_else(|| format!("{u:?} is not a user name or uid"))?),
        };
        let group = match group {
            None => None,
            Some(g) => Some(name(g).ok_or_else(|| format!("{g:?} is not a group name or gid"))?),
        };
        if user.is_none() && group.is_none() {
            return Err("expected USER, USER:GROUP or :GROUP".into());
        }
        Ok(SocketOwner { user, group })
    }
}

impl std::fmt::Display for SocketOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.user.as_deref().unwrap_or(""))?;
        if let Some(g) = &self.group {
            write!(f, ":{g}")?;
        }
        Ok(())
    }
}

impl SocketOwner {
    /// The ids on this host; an unknown name is an error that says so.
    fn resolve(&self) -> Result<(Option<Uid>, Option<Gid>), String> {
        let uid = match self.user.as_deref() {
            None => None,
            Some(n) => Some(match n.parse::<u32>() {
                Ok(id) => Uid::from_raw(id),
                Err(_) => User::from_name(n)
                    .map_err(|e| format!("looking up user {n:?}: {e}"))?
                    .ok_or_else(|| {
                        format!("no user {n:?} on this host (`getent passwd {n}`); create it or give a uid")
                    })?
                    .uid,
            }),
        };
        let gid = match self.group.as_deref() {
            None => None,
            Some(n) => Some(match n.parse::<u32>() {
                Ok(id) => Gid::from_raw(id),
                Err(_) => Group::from_name(n)
                    .map_err(|e| format!("looking up group {n:?}: {e}"))?
                    .ok_or_else(|| {
                        format!("no group {n:?} on this host (`getent group {n}`); create it or give a gid")
                    })?
                    .gid,
            }),
        };
        Ok((uid, gid))
    }
}

/// Listens on `path`, owner-only (0600), as described above, or reachable
/// by `owner` too. The caller removes the socket when it is done.
pub fn listen(path: &Path, owner: Option<&SocketOwner>) -> Result<UnixListener, Error> {
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
    if let Some(owner) = owner {
        let owner_err = |why: String| Error::Owner {
            path: path.into(),
            owner: owner.clone(),
            why,
        };
        let (uid, gid) = owner.resolve().map_err(owner_err)?;
        nix::unistd::chown(&tmp, uid, gid).map_err(|e| {
            owner_err(format!(
                "chown: {e} (the switch must run as root to give a socket away)"
            ))
        })?;
        if gid.is_some() {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
                .map_err(|e| io_err("chmod 0660", e))?;
        }
    }
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
        let listener = listen(&path, None).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(UnixStream::connect(&path).is_ok(), "reachable at its path");
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the socket: {left:?}");
        // A live socket is refused; once its listener is gone, replaced.
        assert!(matches!(listen(&path, None), Err(Error::InUse { .. })));
        drop(listener);
        assert!(listen(&path, None).is_ok(), "a stale socket is replaced");
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
            let _ = tx.send(matches!(listen(&probe, None), Err(Error::InUse { .. })));
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
        assert!(matches!(listen(&path, None), Err(Error::NotASocket { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_owner_is_user_user_group_or_group() {
        let o: SocketOwner = "libvirt-qemu".parse().unwrap();
        assert_eq!(
            (o.user.as_deref(), o.group.as_deref()),
            (Some("libvirt-qemu"), None)
        );
        let o: SocketOwner = "64055:kvm".parse().unwrap();
        assert_eq!(
            (o.user.as_deref(), o.group.as_deref()),
            (Some("64055"), Some("kvm"))
        );
        let o: SocketOwner = ":kvm".parse().unwrap();
        assert_eq!((o.user, o.group.as_deref()), (None, Some("kvm")));
        for written in ["libvirt-qemu", "1:2", ":kvm"] {
            let o: SocketOwner = written.parse().unwrap();
            assert_eq!(o.to_string(), written, "printed as given");
        }
        for bad in ["", ":", "a b", "x=y", "u:g:h", "user:"] {
            assert!(bad.parse::<SocketOwner>().is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn a_socket_given_to_a_user_and_group_is_theirs_and_0660() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: giving a socket away needs root");
            return;
        }
        let d = scratch("owner");
        let path = d.join("vm.sock");
        let nobody = User::from_name("nobody").unwrap().expect("user nobody");
        let owner: SocketOwner = format!("nobody:{}", nobody.gid).parse().unwrap();
        let _listener = listen(&path, Some(&owner)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (nobody.uid.as_raw(), nobody.gid.as_raw())
        );
        assert_eq!(meta.mode() & 0o777, 0o660);
        // A user alone: theirs, still owner-only.
        let path2 = d.join("vm2.sock");
        let _l2 = listen(&path2, Some(&"nobody".parse().unwrap())).unwrap();
        let meta = std::fs::symlink_metadata(&path2).unwrap();
        assert_eq!(meta.uid(), nobody.uid.as_raw());
        assert_eq!(meta.mode() & 0o777, 0o600);
        // An unknown user: refused, naming it, and nothing left behind.
        let path3 = d.join("vm3.sock");
        let err = listen(&path3, Some(&"no-such-user-dp".parse().unwrap()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no user \"no-such-user-dp\""), "{err}");
        assert!(!path3.exists());
        let left = std::fs::read_dir(&d).unwrap().count();
        assert_eq!(left, 2, "no private directory left behind");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
