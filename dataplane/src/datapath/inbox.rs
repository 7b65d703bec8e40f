//! What crosses into one PMD thread from outside it: frames handed over
//! by other PMDs, port changes from the control side, changes to its view
//! of the switch from whoever publishes them, and an eventfd that wakes
//! the PMD when it sleeps in poll(2).
//!
//! A frame for a port of another PMD cannot travel by descriptor: each
//! UMEM has exactly one owner thread, which keeps its frame accounting
//! exact. So the sender copies it into one of the receiver's handoff
//! slots (as long as a UMEM frame's data room: any frame a port accepts
//! fits) and queues an 8-byte note of it; the receiver copies it into its
//! UMEM and gives the slot back. Slots are taken and given back through a
//! lock-free queue of their indexes; only the holder of an index touches
//! its bytes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crossbeam_queue::ArrayQueue;

use crate::port::Port;
use crate::switch::{FdbChange, PortTable};
use crate::sync::LockOrRecover;

/// Frames waiting in one PMD's handoff queue, at most (and its slots).
const HANDOFF_QUEUE: usize = 1024;

/// A change to a PMD's set of ports, applied between two iterations.
pub(super) enum PmdCommand {
    /// Start serving `port` (all of switch port `id`, or the part of it
    /// on some of its receive queues). The PMD of the primary part is the
    /// one other PMDs hand frames for the port to.
    Attach {
        id: usize,
        port: Box<dyn Port>,
        primary: bool,
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

/// A frame crossing from one PMD to the one that owns its egress port:
/// which slot of the receiver's holds its bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Handoff {
    pub(super) port: u16,
    pub(super) len: u16,
    pub(super) slot: u32,
}

/// The bytes of frames in flight to one PMD: [`HANDOFF_QUEUE`] slots.
pub(super) struct HandoffSlots {
    /// Start of the slots' memory (a leaked boxed slice, freed on drop):
    /// a raw pointer, because senders write through a shared reference.
    memory: NonNull<u8>,
    slot_size: usize,
    /// Indexes of the slots nobody holds.
    free: ArrayQueue<u32>,
}

// SAFETY: the bytes of slot i are read or written only by the thread that
// holds index i, taken off `free` (a sender) or off the inbox's queue (the
// receiver); the queues' push and pop order those accesses.
unsafe impl Sync for HandoffSlots {}
// SAFETY: as above; the memory itself is plain bytes.
unsafe impl Send for HandoffSlots {}

impl HandoffSlots {
    fn new(slot_size: usize) -> HandoffSlots {
        // Zeroed memory comes from mmap'd zero pages: a slot costs memory
        // only once a frame has used it.
        let memory: Box<[u8]> = vec![0u8; slot_size * HANDOFF_QUEUE].into_boxed_slice();
        let memory = NonNull::new(Box::into_raw(memory).cast::<u8>()).expect("Box is not null");
        let free = ArrayQueue::new(HANDOFF_QUEUE);
        for i in 0..HANDOFF_QUEUE as u32 {
            let _ = free.push(i);
        }
        HandoffSlots {
            memory,
            slot_size,
            free,
        }
    }

    /// Largest frame a slot holds.
    pub(super) fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Takes a free slot and copies `frame` into it; `None` if every slot
    /// is in flight or the frame is larger than a slot.
    pub(super) fn fill(&self, frame: &[u8]) -> Option<u32> {
        if frame.len() > self.slot_size {
            return None;
        }
        let slot = self.free.pop()?;
        // SAFETY: `slot` came off `free`: this thread is its only holder
        // until it is queued; the range lies inside the memory.
        unsafe { self.bytes(slot, frame.len()) }.copy_from_slice(frame);
        Some(slot)
    }

    /// The first `len` bytes of `slot`, then gives the slot back.
    pub(super) fn drain(&self, slot: u32, len: usize, into: &mut [u8]) {
        let len = len.min(self.slot_size).min(into.len());
        // SAFETY: `slot` came off the inbox's queue: the sender let go of
        // it when it queued it, and this thread holds it until it is back
        // on `free` below.
        into[..len].copy_from_slice(unsafe { self.bytes(slot, len) });
        let _ = self.free.push(slot);
    }

    /// Gives back a slot whose frame was not taken.
    pub(super) fn give_back(&self, slot: u32) {
        let _ = self.free.push(slot);
    }

    /// # Safety
    /// The caller holds `slot` (see the type's invariant) and no other
    /// reference to its bytes is alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes(&self, slot: u32, len: usize) -> &mut [u8] {
        debug_assert!((slot as usize) < HANDOFF_QUEUE && len <= self.slot_size);
        // SAFETY: slot < HANDOFF_QUEUE and len <= slot_size keep the range
        // inside the allocation; exclusivity is the caller's.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.memory.as_ptr().add(slot as usize * self.slot_size),
                len,
            )
        }
    }
}

impl Drop for HandoffSlots {
    fn drop(&mut self) {
        let len = self.slot_size * HANDOFF_QUEUE;
        // SAFETY: `memory` came from Box::into_raw of a boxed slice of
        // exactly `len` bytes, and is freed only here.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.memory.as_ptr(),
                len,
            ))
        });
    }
}

/// What crosses into one PMD: a queue, and a way to wake it when it sleeps.
pub(super) struct Inbox {
    pub(super) queue: ArrayQueue<Handoff>,
    /// Where the bytes of the queued frames are.
    pub(super) slots: HandoffSlots,
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
    /// An inbox whose handoff slots hold frames of up to `max_frame` bytes.
    pub(super) fn new(max_frame: usize) -> std::io::Result<Inbox> {
        // SAFETY: eventfd(2) with no preconditions; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Inbox {
            queue: ArrayQueue::new(HANDOFF_QUEUE),
            slots: HandoffSlots::new(max_frame),
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
