//! What crosses into one PMD thread from outside it: frames handed over
//! by other PMDs (a bounded queue of copies: each UMEM has one owner
//! thread), port changes from the control side, changes to its view of
//! the switch from whoever publishes them, and an eventfd that wakes the
//! PMD when it sleeps in poll(2).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crossbeam_queue::ArrayQueue;

use crate::port::Port;
use crate::switch::{FdbChange, PortTable};
use crate::sync::LockOrRecover;

/// Largest frame that can cross between PMD threads (standard MTU frames
/// with two tags fit).
pub(super) const HANDOFF_MAX: usize = 2048;
/// Frames waiting in one PMD's handoff queue, at most.
const HANDOFF_QUEUE: usize = 1024;

/// A change to a PMD's set of ports, applied between two iterations.
pub(super) enum PmdCommand {
    /// Start serving `port` as switch port `id`.
    Attach {
        id: usize,
        port: Box<dyn Port>,
        done: mpsc::Sender<()>,
    },
    /// Stop serving port `id`: the frames the kernel returned go back to
    /// the pool and the port is handed back, to be closed by the caller.
    Detach {
        id: usize,
        done: mpsc::Sender<Box<dyn Port>>,
    },
    /// Frames a closed port's sockets had lent to the kernel: free now.
    Reclaim {
        frames: Vec<u64>,
        done: mpsc::Sender<()>,
    },
    /// The switch changed: a new port table (if it changed) and the FDB
    /// changes since the last update, in order. Every PMD gets every one.
    View {
        ports: Option<Arc<PortTable>>,
        fdb: Arc<[FdbChange]>,
    },
}

/// A frame crossing from one PMD to the one that owns its egress port.
pub(super) struct Handoff {
    pub(super) port: u16,
    pub(super) len: u16,
    pub(super) data: [u8; HANDOFF_MAX],
}

/// What crosses into one PMD: a queue, and a way to wake it when it sleeps.
pub(super) struct Inbox {
    pub(super) queue: ArrayQueue<Handoff>,
    /// Set while the owner sleeps in poll(2); senders then write `wake`.
    pub(super) sleeping: AtomicBool,
    /// An eventfd in the owner's poll set.
    pub(super) wake: OwnedFd,
    /// Port changes for the owner; `has_commands` spares it the lock on
    /// every iteration.
    pub(super) commands: Mutex<Vec<PmdCommand>>,
    pub(super) has_commands: AtomicBool,
}

impl Inbox {
    pub(super) fn new() -> std::io::Result<Inbox> {
        // SAFETY: eventfd(2) with no preconditions; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Inbox {
            queue: ArrayQueue::new(HANDOFF_QUEUE),
            sleeping: AtomicBool::new(false),
            // SAFETY: fd is fresh and ours.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            commands: Mutex::new(Vec::new()),
            has_commands: AtomicBool::new(false),
        })
    }

    pub(super) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Queues a command for the owner and wakes it if it sleeps.
    pub(super) fn command(&self, command: PmdCommand) {
        self.commands.lock_or_recover().push(command);
        self.has_commands.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Queues a command for the owner without waking it: a sleeping PMD
    /// has nothing to forward, and applies it when it wakes (at the latest
    /// after its poll timeout).
    pub(super) fn post(&self, command: PmdCommand) {
        self.commands.lock_or_recover().push(command);
        self.has_commands.store(true, Ordering::SeqCst);
    }

    pub(super) fn clear_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 (nonblocking).
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}
