//! One port's AF_XDP socket, bound to (interface, rx queue) on a shared
//! UMEM: xsk-rs's four rings, plus the record of which frames the kernel
//! holds through it.
//!
//! The per-burst calls ([`XskSocket::fill`], [`recv`](XskSocket::recv),
//! [`send`](XskSocket::send), [`complete`](XskSocket::complete)) touch only
//! the mapped rings: no syscall, no allocation. Syscalls happen only in the
//! wakeups ([`kick_tx`](XskSocket::kick_tx), [`wakeup_rx`](XskSocket::wakeup_rx)),
//! and only when the kernel needs them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use xsk_rs::config::{BindFlags, Interface, LibxdpFlags, QueueSize};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue};

use super::anchor::os_error;
use super::config::{BindMode, BoundMode, BusyPoll, SocketConfig};
use super::lent::LentFrames;
use super::pool::FramePool;
use super::umem::{Registered, Umem};
use super::{Error, XdpDesc, XdpStatistics};
use crate::sys::netdev;

/// A bound AF_XDP socket.
///
/// Frames move through it as [`XdpDesc`]s and UMEM addresses; the socket
/// counts the frames it holds for TX ([`outstanding_tx`](Self::outstanding_tx)),
/// while frames given to the fill ring are the caller's to count (it knows
/// how many [`fill`](Self::fill) moved and [`recv`](Self::recv) returned).
pub struct XskSocket {
    // The four queues each hold a handle on the socket: it is deleted when
    // the last of them drops, before our reference to the UMEM goes.
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    umem: Arc<Umem>,
    /// Descriptors of one burst, for xsk-rs's slice calls: sized for the
    /// largest ring once, so no burst allocates.
    scratch: Vec<FrameDesc>,
    /// Clears the in-frame offset of an address: `!(frame_size - 1)`.
    chunk_mask: u64,
    ifname: String,
    ifindex: u32,
    queue: u32,
    tx_size: u32,
    /// Frames submitted to TX and not yet back from the completion ring.
    outstanding_tx: u32,
    /// Every frame this socket handed to the kernel (fill or TX ring) and
    /// did not get back (RX or completion ring): what the kernel may still
    /// write or read, and what [`close`](Self::close) returns.
    lent: LentFrames,
    /// Unexpected kick failures (logged once).
    kick_errors: u64,
}

/// A socket closed a moment ago keeps its queue until a kernel work item
/// runs; EBUSY at bind is retried this many times, this far apart.
const BUSY_RETRIES: u32 = 10;
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(20);

impl XskSocket {
    /// Creates, configures and binds a socket on `ifname` rx queue
    /// `queue_id`, sharing `umem` (`XDP_SHARED_UMEM`, with fill and
    /// completion rings of its own), in the UMEM's mode. Sockets may be
    /// made and closed in any order; one per interface queue. (On a
    /// zero-copy UMEM the first socket is the one that binds zero-copy:
    /// see [`Umem::new_zero_copy`].)
    pub fn new(
        umem: &Arc<Umem>,
        ifname: &str,
        queue_id: u32,
        config: &SocketConfig,
    ) -> Result<XskSocket, Error> {
        config.validate()?;
        let kernel = umem.kernel().ok_or_else(|| Error::Socket {
            ifname: ifname.to_string(),
            queue: queue_id,
            reason: "this UMEM is test memory the kernel does not know".into(),
            source: None,
        })?;
        let ifindex = netdev::ifindex(ifname).map_err(|source| match source {
            netdev::Error::NoSuchInterface { .. } => Error::NoSuchInterface {
                ifname: ifname.to_string(),
            },
            source => Error::Interface { source },
        })?;
        let mismatch = match config.bind {
            BindMode::Auto => false,
            BindMode::Copy => umem.mode() != BoundMode::Copy,
            BindMode::ZeroCopy => umem.mode() != BoundMode::ZeroCopy,
        };
        if mismatch {
            return Err(Error::ModeMismatch {
                ifname: ifname.to_string(),
                queue: queue_id,
                requested: config.bind,
                umem_mode: umem.mode(),
            });
        }
        // Held until the socket is entered, so that two threads cannot bind
        // the same queue.
        let mut bound = umem.bound();
        if bound.contains(&(ifindex, queue_id)) {
            return Err(Error::QueueTaken {
                ifname: ifname.to_string(),
                queue: queue_id,
            });
        }
        let (tx, rx, fill, comp) = open_retrying(kernel, umem.mode(), ifname, queue_id, config)?;
        bound.push((ifindex, queue_id));
        drop(bound);
        let socket = XskSocket {
            rx,
            tx,
            fill,
            comp,
            umem: Arc::clone(umem),
            scratch: vec![
                FrameDesc::default();
                [
                    config.rx_size,
                    config.tx_size,
                    umem.config().fill_size,
                    umem.config().comp_size
                ]
                .into_iter()
                .max()
                .unwrap_or(0) as usize
            ],
            chunk_mask: !(umem.frame_size() as u64 - 1),
            ifname: ifname.to_string(),
            ifindex,
            queue: queue_id,
            tx_size: config.tx_size,
            outstanding_tx: 0,
            lent: LentFrames::new(umem),
            kick_errors: 0,
        };
        if let Some(bp) = config.busy_poll {
            socket.set_busy_poll(bp)?;
        }
        tracing::debug!(
            ifname,
            queue = queue_id,
            mode = %umem.mode(),
            "AF_XDP socket bound"
        );
        Ok(socket)
    }

    /// `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` and `SO_BUSY_POLL_BUDGET` on the
    /// socket's fd: xsk-rs has no option for them.
    fn set_busy_poll(&self, bp: BusyPoll) -> Result<(), Error> {
        let as_int = |v: u32| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
        for (option, name, value) in [
            (libc::SO_PREFER_BUSY_POLL, "SO_PREFER_BUSY_POLL", 1),
            (libc::SO_BUSY_POLL, "SO_BUSY_POLL", as_int(bp.usecs)),
            (
                libc::SO_BUSY_POLL_BUDGET,
                "SO_BUSY_POLL_BUDGET",
                as_int(bp.budget),
            ),
        ] {
            // SAFETY: `value` is a live c_int and its exact size is passed;
            // the kernel only reads it.
            let rc = unsafe {
                libc::setsockopt(
                    self.fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(Error::SetSockOpt {
                    option: name,
                    ifname: self.ifname.clone(),
                    queue: self.queue,
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// The socket's fd: to register in an XSKMAP, or to poll(2) for POLLIN.
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// The interface it is bound to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The rx queue it is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue
    }

    /// Copy or zero-copy, as the kernel bound it: its UMEM's mode.
    pub fn bound_mode(&self) -> BoundMode {
        self.umem.mode()
    }

    /// Free slots in the TX ring: how many frames [`send`](Self::send)
    /// would take now.
    pub fn tx_room(&mut self) -> u32 {
        self.tx.nb_free(self.tx_size)
    }

    /// The UMEM its frames live in.
    pub fn umem(&self) -> &Arc<Umem> {
        &self.umem
    }

    /// Moves up to `max` frames from `pool` into the fill ring (receive
    /// buffers for the kernel); returns how many. Limited by the free
    /// frames and the free ring slots.
    pub fn fill(&mut self, pool: &mut FramePool, max: u32) -> u32 {
        let room = self.fill.nb_free(max);
        let want = max
            .min(room)
            .min(u32::try_from(pool.len()).unwrap_or(u32::MAX)) as usize;
        if want == 0 {
            return 0;
        }
        let kernel = self
            .umem
            .kernel()
            .expect("a socket exists only on a registered UMEM");
        let shift = self.umem.frame_size().trailing_zeros();
        for slot in &mut self.scratch[..want] {
            let addr = pool.alloc().expect("want <= the pool's free frames");
            self.lent.lend(addr);
            *slot = kernel.fill_descriptor((addr >> shift) as usize);
        }
        // SAFETY: every descriptor names a frame of this socket's UMEM,
        // taken from the free list: the kernel is its only holder from now.
        let n = unsafe { self.fill.produce(&self.scratch[..want]) };
        if n == 0 {
            // All or nothing, and nb_free said there was room; but never
            // lose a frame over it.
            for desc in &self.scratch[..want] {
                let addr = desc.addr() as u64 & self.chunk_mask;
                self.lent.take_back(addr);
                pool.free(addr);
            }
        }
        n as u32
    }

    /// Appends up to `max` received frames to `out`; returns how many. The
    /// caller now holds them (an `addr` points inside its frame, past the
    /// kernel's headroom). Allocates only if `out` lacks capacity.
    pub fn recv(&mut self, out: &mut Vec<XdpDesc>, max: u32) -> u32 {
        let max = (max as usize).min(self.scratch.len());
        // SAFETY: the descriptors are written by the kernel's RX ring, which
        // only names frames of this UMEM; the caller holds them from now.
        let n = unsafe { self.rx.consume(&mut self.scratch[..max]) };
        for desc in &self.scratch[..n] {
            let addr = desc.addr() as u64;
            self.lent.take_back(addr);
            out.push(XdpDesc {
                addr,
                len: desc.lengths().data() as u32,
                options: desc.options(),
            });
        }
        n as u32
    }

    /// Queues `descs` for transmission, as many as fit in the TX ring, from
    /// the front; returns how many. Those frames are the socket's until
    /// [`complete`](Self::complete) returns them; the rest stay the
    /// caller's. Call [`kick_tx`](Self::kick_tx) after a burst.
    ///
    /// Each descriptor must lie inside one frame of the UMEM. A frame whose
    /// start was moved (a VLAN push or pop) is moved back to its frame's
    /// canonical start first (see the module docs of [`super`]).
    pub fn send(&mut self, descs: &[XdpDesc]) -> u32 {
        let want = u32::try_from(descs.len()).unwrap_or(u32::MAX);
        let room = (self.tx.nb_free(want).min(want) as usize).min(self.scratch.len());
        let kernel = self
            .umem
            .kernel()
            .expect("a socket exists only on a registered UMEM");
        let mut count = 0;
        for desc in &descs[..room] {
            debug_assert!(
                (desc.addr & !self.chunk_mask) + desc.len as u64 <= self.umem.frame_size() as u64
                    && desc.addr < self.umem.len_bytes() as u64,
                "TX descriptor {desc:?} leaves its frame or the UMEM"
            );
            // A frame that cannot sit at its canonical start stops the burst
            // here; it and the rest stay the caller's.
            let Some(frame) = self.umem.descriptor(kernel, desc.addr, desc.len) else {
                break;
            };
            self.scratch[count] = frame;
            count += 1;
        }
        // SAFETY: every descriptor names a frame of this UMEM that the caller
        // handed over; the kernel is its only holder until it completes.
        let n = unsafe { self.tx.produce(&self.scratch[..count]) };
        for desc in &self.scratch[..n] {
            self.lent.lend(desc.addr() as u64);
        }
        self.outstanding_tx += n as u32;
        n as u32
    }

    /// Makes the kernel process the TX ring while frames wait in it: copy
    /// mode transmits only inside sendto, a few dozen frames per call. In
    /// zero-copy mode the driver takes frames off the ring at once, and
    /// may still need waking (the ring's need_wakeup flag says so) to send
    /// and complete them: it is woken while frames are outstanding.
    ///
    /// "Try later" answers (EAGAIN: more left, EBUSY/ENOBUFS: no room now,
    /// ENETDOWN: interface down, which xsk-rs swallows; ENXIO: interface
    /// going away) are not errors: the frames stay queued and the next kick
    /// retries. Anything else is logged once per socket.
    pub fn kick_tx(&mut self) {
        let waiting = match self.umem.mode() {
            BoundMode::Copy => self.tx.nb_free_exact() != self.tx_size,
            BoundMode::ZeroCopy => self.outstanding_tx > 0 && self.tx.needs_wakeup(),
        };
        if !waiting {
            return;
        }
        if let Err(e) = self.tx.wakeup() {
            // ENXIO: the interface is being deleted; the supervisor notices
            // and takes the port down.
            if e.raw_os_error() != Some(libc::ENXIO) {
                self.kick_errors += 1;
                if self.kick_errors == 1 {
                    tracing::warn!(
                        ifname = self.ifname,
                        queue = self.queue,
                        "sendto (TX kick) on AF_XDP socket failed: {e}"
                    );
                }
            }
        }
    }

    /// Moves up to `max` completed TX frames back to `pool`; returns how
    /// many.
    pub fn complete(&mut self, pool: &mut FramePool, max: u32) -> u32 {
        let max = (max as usize).min(self.scratch.len());
        // SAFETY: the completion ring only names frames of this UMEM that
        // this socket sent; they are ours again.
        let n = unsafe { self.comp.consume(&mut self.scratch[..max]) };
        for desc in &self.scratch[..n] {
            let addr = desc.addr() as u64 & self.chunk_mask;
            self.lent.take_back(addr);
            pool.free(addr);
        }
        let n = n as u32;
        debug_assert!(
            n <= self.outstanding_tx,
            "{n} completions for {} frames sent",
            self.outstanding_tx
        );
        self.outstanding_tx = self.outstanding_tx.saturating_sub(n);
        n
    }

    /// Closes the socket and returns the base addresses of the frames the
    /// kernel still held through it (fill ring, RX buffers it took and kept,
    /// TX ring, completions not yet read): once the socket is closed they
    /// are the caller's again, to free into the pool they came from.
    ///
    /// Closing unbinds: xsk-rs unmaps the rings and closes the fd, so the
    /// kernel releases the socket, and its release waits
    /// (`synchronize_net`) until no receive or transmit is still running on
    /// it. Frames are therefore never handed back while the kernel can
    /// still write them.
    pub fn close(self) -> Vec<u64> {
        let lent = self.lent.addresses();
        drop(self);
        lent
    }

    /// Frames the kernel holds through this socket (see [`close`](Self::close)).
    pub fn lent_frames(&self) -> u32 {
        self.lent.count
    }

    /// Frames submitted by [`send`](Self::send) and not yet returned by
    /// [`complete`](Self::complete).
    pub fn outstanding_tx(&self) -> u32 {
        self.outstanding_tx
    }

    /// True if the kernel stopped taking buffers from the fill ring until a
    /// syscall ([`wakeup_rx`](Self::wakeup_rx) or poll) wakes it.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Wakes the kernel's RX processing: a zero-length, non-blocking
    /// recvfrom, which (unlike xsk-rs's poll-based wakeup) also runs the
    /// socket's busy poll when SO_BUSY_POLL is set. Its errors mean
    /// "nothing to do" and are ignored.
    pub fn wakeup_rx(&self) {
        // SAFETY: a zero-length, non-blocking recvfrom on our own socket
        // with no buffer and no address: the kernel writes no user memory.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The kernel's drop and error counters for this socket (one syscall:
    /// call it about once a second, not per burst).
    pub fn statistics(&self) -> Result<XdpStatistics, Error> {
        let s = self
            .rx
            .fd()
            .xdp_statistics()
            .map_err(|source| Error::GetSockOpt {
                option: "XDP_STATISTICS",
                ifname: self.ifname.clone(),
                queue: self.queue,
                source,
            })?;
        Ok(XdpStatistics {
            rx_dropped: s.rx_dropped(),
            rx_invalid_descs: s.rx_invalid_descs(),
            tx_invalid_descs: s.tx_invalid_descs(),
            rx_ring_full: s.rx_ring_full(),
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs(),
            tx_ring_empty_descs: s.tx_ring_empty_descs(),
        })
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        // The queues (and with them the socket) go by the fields' own drops,
        // after this; here the UMEM forgets the queue we were bound to.
        let key = (self.ifindex, self.queue);
        self.umem.bound().retain(|b| *b != key);
    }
}

/// The socket's four queues, as xsk-rs made them.
type Queues = (TxQueue, RxQueue, FillQueue, CompQueue);

/// Creates the socket, retried with a fresh one while bind says EBUSY (the
/// queue of a socket closed a moment ago is released by deferred kernel
/// work).
fn open_retrying(
    kernel: &Registered,
    mode: BoundMode,
    ifname: &str,
    queue: u32,
    config: &SocketConfig,
) -> Result<Queues, Error> {
    let size = |field: &'static str, value: u32| {
        QueueSize::new(value).map_err(|_| Error::InvalidConfig {
            field,
            value,
            expected: "a power of two",
        })
    };
    // Bind flags count only for a UMEM's first socket (libxdp binds the
    // others with XDP_SHARED_UMEM, in the first one's mode): on a zero-copy
    // UMEM that is the port's first queue; a copy UMEM's is its anchor.
    let bind_flags = match mode {
        BoundMode::ZeroCopy => BindFlags::XDP_ZEROCOPY | BindFlags::XDP_USE_NEED_WAKEUP,
        BoundMode::Copy => BindFlags::empty(),
    };
    let socket_config = xsk_rs::config::SocketConfig::builder()
        .rx_queue_size(size("socket rx_size", config.rx_size)?)
        .tx_queue_size(size("socket tx_size", config.tx_size)?)
        // steer is the only XDP program: the socket's fd goes into its XSKMAP.
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(bind_flags)
        .build();
    let iface: Interface = ifname.parse().map_err(|_| Error::NoSuchInterface {
        ifname: ifname.to_string(),
    })?;
    let mut attempt = 0;
    loop {
        // SAFETY: xsk-rs's contract for Socket::new: the UMEM outlives the
        // socket (each queue holds a handle on it), and the queues are used
        // only with frames of this UMEM (the descriptors come from its
        // canonical table or its own rings).
        match unsafe { Socket::new(socket_config, &kernel.umem, &iface, queue) } {
            Ok((tx, rx, Some((fill, comp)))) => return Ok((tx, rx, fill, comp)),
            Ok((_, _, None)) => {
                // libxdp found fill/completion rings for this (namespace,
                // interface, queue) already: another socket of this UMEM
                // is bound there, which the bound list rules out.
                return Err(Error::QueueTaken {
                    ifname: ifname.to_string(),
                    queue,
                });
            }
            Err(e) => {
                let source = os_error(&e);
                if source.as_ref().and_then(|s| s.raw_os_error()) == Some(libc::EBUSY)
                    && attempt < BUSY_RETRIES
                {
                    attempt += 1;
                    std::thread::sleep(BUSY_RETRY_DELAY);
                    continue;
                }
                return Err(Error::Socket {
                    ifname: ifname.to_string(),
                    queue,
                    reason: e.to_string(),
                    source,
                });
            }
        }
    }
}
