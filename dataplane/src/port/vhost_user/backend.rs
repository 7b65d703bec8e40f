//! The vhost-user protocol side of a port: the listening socket, and one
//! `VhostUserDaemon` (rust-vmm `vhost-user-backend`) per frontend
//! connection, on a thread of its own.
//!
//! The daemon handles the handshake, SET_MEM_TABLE (mapping the frontend's
//! memfd or hugetlbfs fds), vring addresses and the kick/call eventfds.
//! What the PMD needs from a connection — the vrings and the guest memory —
//! is published in [`Shared`] as a [`Link`]; the PMD copies frames through
//! it. A fresh daemon per connection gives every frontend a clean device
//! (the daemon keeps "owner claimed" and ring state across a disconnect).
//! The protocol thread accepts the frontend itself and joins it to the
//! daemon, which listens on a private socket, through `super::relay`.
//!
//! Kicks: the daemon's worker thread reads (consumes) the kick eventfds in
//! its epoll loop, and passes a transmit kick on to the PMD through an
//! eventfd of our own, [`Shared::kicked`], which only the PMD reads. (The
//! PMD once polled the frontend's kick fd directly, without reading it: when
//! the worker consumed the kick before the PMD's poll(2) began, the PMD
//! slept through it until its timer, up to 100 ms per idle-to-busy
//! transition.) [`Shared::wake`] wakes the PMD when the connection changes.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::sys::private_socket::{self, SocketOwner};

/// Queue 0 is the guest's receive queue, 1 its transmit queue (VIRTIO 1.2,
/// 5.1.2); one pair.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
const NUM_QUEUES: usize = 2;
/// Largest ring the frontend may ask for (QEMU and DPDK default to 256).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: the frontend enables rings itself.
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// Virtio features offered: the version 1 header layout, mergeable receive
/// buffers, event-index notification suppression, indirect tables, and
/// the guest's transmit offloads: checksums left to the device and TCP
/// super-frames (IPv4, IPv6, ECN), which the switch finishes and cuts in
/// software (`port/offload/`). Frames toward the guest are whole and
/// their checksums complete (no GUEST_* offloads).
pub const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_ECN)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VHOST_USER_F_PROTOCOL_FEATURES);

/// epoll token of the one-shot event that hands the backend the daemon's
/// vrings (tokens up to the queue count belong to the daemon).
const GRAB_VRINGS: u64 = NUM_QUEUES as u64 + 1;

#[derive(Debug, Error)]
pub enum Error {
    #[error("vhost-user {path}: {what}: {source}{hint}", hint = hint(source))]
    Socket {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "vhost-user {path}: a live process is listening on this socket; stop it or pick another path"
    )]
    InUse { path: PathBuf },
    #[error("vhost-user {path}: exists and is not a socket; remove it or pick another path")]
    NotASocket { path: PathBuf },
    #[error("vhost-user {path}: path is not valid UTF-8 or has no file name")]
    BadPath { path: PathBuf },
    #[error("vhost-user {path}: owner {owner}: {why}")]
    Owner {
        path: PathBuf,
        owner: SocketOwner,
        why: String,
    },
    #[error("vhost-user {path}: creating the vhost-user daemon: {detail}")]
    Daemon { path: PathBuf, detail: String },
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) => " (does the directory exist?)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (no permission on the directory)",
        Some(libc::ENAMETOOLONG) => " (unix socket paths are limited to 107 bytes)",
        _ => "",
    }
}

/// A connected frontend's rings and memory, as the PMD uses them.
#[derive(Clone)]
pub struct Link {
    pub vrings: Vec<VringRwLock>,
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
}

/// State shared by the protocol thread and the PMD.
pub struct Shared {
    /// Written when `link` changes, so a sleeping PMD picks the new
    /// connection (and its kick fd) up. Non-blocking.
    pub wake: EventFd,
    /// Written by the protocol side for every transmit kick of the guest;
    /// read (drained) only by the PMD, so a kick stays visible to its
    /// poll(2) until the PMD has taken note. Non-blocking.
    pub kicked: EventFd,
    /// Set after each write to `kicked`: the PMD drains `kicked` only
    /// when this says there is something to drain (no syscall per burst).
    pub kick_pending: AtomicBool,
    /// The current connection, if any.
    link: Mutex<Option<Link>>,
    /// Bumped whenever `link` changes, so the PMD re-reads it only then.
    pub generation: AtomicU64,
    /// Virtio features the frontend acknowledged.
    pub acked: AtomicU64,
    stop: AtomicBool,
    /// The open connection's shutdown handle, for a prompt stop.
    conn: Mutex<Option<ShutdownHandle>>,
}

impl Shared {
    fn set_link(&self, link: Option<Link>) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = link;
        // Wake a sleeping PMD, then publish: a PMD that sees the new
        // generation drains this write (see `VhostUserPort::refresh_link`).
        let _ = self.wake.write(1);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current connection.
    pub fn link(&self) -> Option<Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The `VhostUserBackend` of one connection: features and acknowledgement.
struct NetBackend {
    shared: Arc<Shared>,
    /// Filled once by the GRAB_VRINGS event, which `grab` fires.
    vrings: Mutex<Option<Vec<VringRwLock>>>,
    grab: EventFd,
    exit: Mutex<Option<(EventConsumer, EventNotifier)>>,
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn acked_features(&self, features: u64) {
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            tracing::warn!(
                features = format_args!("{features:#x}"),
                "vhost-user frontend did not accept VIRTIO_F_VERSION_1 (a legacy virtio driver); \
                 the port stays down: use a virtio 1.0 device (QEMU: virtio-net-pci, not disable-modern=on)"
            );
        }
        self.shared.acked.store(features, Ordering::Release);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The daemon sets it on every vring; the PMD reads it from there.
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        // The daemon swaps the new map into the GuestMemoryAtomic the Link
        // already holds.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if u64::from(device_event) == GRAB_VRINGS {
            // Consume it: the daemon's epoll is level-triggered.
            let _ = self.grab.read();
            *self.vrings.lock().unwrap_or_else(|p| p.into_inner()) = Some(vrings.to_vec());
        }
        // A transmit kick, consumed by the daemon: hand it to the PMD.
        // Written before the flag: a PMD that sees the flag finds the
        // write to drain (see `VhostUserPort::rx_burst`).
        if usize::from(device_event) == TX_QUEUE {
            let _ = self.shared.kicked.write(1);
            self.shared.kick_pending.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// The listening socket and the protocol thread of one port.
pub struct Server {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Identity of the socket file we created, so drop removes only ours.
    inode: (u64, u64),
}

impl Server {
    /// Listens on `path` (owner-only, 0600, or given to `owner`; a stale
    /// socket there is replaced) and serves one frontend at a time until
    /// dropped.
    pub fn start(path: &Path, name: &str, owner: Option<&SocketOwner>) -> Result<Server, Error> {
        let listener = listen(path, owner)?;
        let meta = std::fs::metadata(path).map_err(|source| Error::Socket {
            path: path.into(),
            what: "stat after bind",
            source,
        })?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Socket {
            path: path.into(),
            what: "eventfd",
            source,
        })?;
        let kicked = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Socket {
            path: path.into(),
            what: "eventfd",
            source,
        })?;
        let shared = Arc::new(Shared {
            wake,
            kicked,
            kick_pending: AtomicBool::new(false),
            link: Mutex::new(None),
            generation: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            conn: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let thread_path = path.to_path_buf();
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name("vhost-user".into())
            .spawn(move || serve(listener, &thread_path, &thread_name, &thread_shared))
            .map_err(|source| Error::Socket {
                path: path.into(),
                what: "starting the protocol thread",
                source,
            })?;
        Ok(Server {
            path: path.to_path_buf(),
            shared,
            thread: Some(thread),
            inode: (meta.dev(), meta.ino()),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Set stop before taking the handle: a thread that stores its handle
        // after this sees stop and shuts the connection itself.
        if let Some(h) = self
            .shared
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.shutdown();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.set_link(None);
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds the socket with owner-only permissions (or `owner`'s): bound under
/// a temporary name, chmod 0600, then renamed over `path`, so no other user
/// can ever connect, and a stale socket is replaced in one step.
fn listen(path: &Path, owner: Option<&SocketOwner>) -> Result<UnixListener, Error> {
    if path.file_name().and_then(|f| f.to_str()).is_none() {
        return Err(Error::BadPath { path: path.into() });
    }
    private_socket::listen(path, owner).map_err(|e| match e {
        private_socket::Error::Owner { owner, why, .. } => Error::Owner {
            path: path.into(),
            owner,
            why,
        },
        private_socket::Error::NotASocket { .. } => Error::NotASocket { path: path.into() },
        private_socket::Error::InUse { .. } => Error::InUse { path: path.into() },
        private_socket::Error::Io { what, source, .. } => Error::Socket {
            path: path.into(),
            what,
            source,
        },
    })
}

/// The protocol thread: accept a frontend, serve it until it leaves, repeat.
fn serve(listener: UnixListener, path: &Path, name: &str, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        // Wait for a connection without blocking in accept, so a stop is
        // noticed within 100 ms.
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        if let Err(e) = serve_one(&listener, name, shared) {
            tracing::warn!(port = name, socket = %path.display(), "vhost-user connection failed: {e}");
            // Do not spin on a persistent error.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve_one(listener: &UnixListener, name: &str, shared: &Arc<Shared>) -> Result<(), String> {
    let (front, _) = listener.accept().map_err(|e| format!("accepting: {e}"))?;
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let exit = new_event_consumer_and_notifier(EventFlag::NONBLOCK)
        .map_err(|e| format!("exit eventfd: {e}"))?;
    let backend = Arc::new(NetBackend {
        shared: shared.clone(),
        vrings: Mutex::new(None),
        exit: Mutex::new(Some(exit)),
        grab: EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?,
    });
    let mut daemon = VhostUserDaemon::new(name.to_string(), backend.clone(), mem.clone())
        .map_err(|e| format!("creating the daemon: {e}"))?;
    let handlers = daemon.get_epoll_handlers();
    let vrings = grab_vrings(&handlers[0], &backend)?;
    // The daemon serves a private socket; the relay joins it to the
    // frontend (see `relay` for why).
    let dir = private_socket::PrivateDir::new_in(&std::env::temp_dir())
        .map_err(|e| format!("private socket directory: {e}"))?;
    let inner_path = dir.path().join("daemon.sock");
    let mut inner = Listener::new(&inner_path, true).map_err(|e| format!("daemon socket: {e}"))?;
    let back = UnixStream::connect(&inner_path).map_err(|e| format!("daemon socket: {e}"))?;
    daemon
        .start(&mut inner)
        .map_err(|e| format!("daemon accepting: {e}"))?;
    drop(inner);
    drop(dir);
    // Nothing negotiated yet: the last frontend's features do not carry
    // over. Reset before the relay starts: from then on the daemon may
    // process SET_FEATURES at any moment, and a reset after it would leave
    // the port down for the whole connection.
    shared.acked.store(0, Ordering::Release);
    let relay = super::relay::spawn(front, back).map_err(|e| format!("relay: {e}"))?;
    *shared.conn.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
    if shared.stop.load(Ordering::SeqCst) {
        daemon.request_shutdown();
    }
    tracing::info!(port = name, "vhost-user frontend connected");
    shared.set_link(Some(Link { vrings, mem }));
    let result = daemon.wait();
    for t in relay {
        let _ = t.join();
    }
    shared.set_link(None);
    shared.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
    for h in &handlers {
        h.send_exit_event();
    }
    match result {
        Ok(()) => tracing::info!(port = name, "vhost-user frontend disconnected; port down"),
        Err(e) => tracing::info!(port = name, "vhost-user frontend gone ({e}); port down"),
    }
    Ok(())
}

/// Has the daemon's worker thread hand the backend its vrings (the daemon
/// exposes them only there), by firing a private event once.
fn grab_vrings(
    handler: &vhost_user_backend::VringEpollHandler<Arc<NetBackend>>,
    backend: &NetBackend,
) -> Result<Vec<VringRwLock>, String> {
    let fd = &backend.grab;
    handler
        .register_listener(fd.as_raw_fd(), EventSet::IN, GRAB_VRINGS)
        .map_err(|e| format!("registering with the daemon's epoll: {e}"))?;
    let _ = fd.write(1);
    let mut got = None;
    for _ in 0..500 {
        got = backend
            .vrings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if got.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = handler.unregister_listener(fd.as_raw_fd(), EventSet::IN, GRAB_VRINGS);
    got.ok_or_else(|| "the daemon's worker thread did not answer within 1 s".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    /// A fresh directory under the system temp dir (removed at the end).
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dp-vhu-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn socket_is_owner_only_replaces_a_stale_one_and_goes_away() {
        let dir = scratch("stale");
        let path = dir.join("vm0.sock");
        // A socket nobody listens on any more: what a killed switch leaves.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = Server::start(&path, "test", None).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // It accepts: a frontend can connect.
        UnixStream::connect(&path).unwrap();
        drop(server);
        assert!(!path.exists(), "socket file left after drop");
        // Only the socket: no temporary file either.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn live_socket_other_files_and_missing_directories_are_refused() {
        let dir = scratch("refuse");
        let live = dir.join("live.sock");
        let _listener = UnixListener::bind(&live).unwrap();
        let err = Server::start(&live, "test", None).err().unwrap();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        assert!(live.exists(), "a live socket must be left alone");

        let file = dir.join("file.sock");
        std::fs::write(&file, b"not a socket").unwrap();
        let err = Server::start(&file, "test", None).err().unwrap();
        assert!(matches!(err, Error::NotASocket { .. }), "{err}");
        assert!(err.to_string().contains("file.sock"), "{err}");

        let missing = dir.join("no/such/dir.sock");
        let err = Server::start(&missing, "test", None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("dir.sock") && err.contains("does the directory exist?"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
