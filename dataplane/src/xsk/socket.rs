//! One AF_XDP socket, bound to (interface, rx queue), with its own four
//! rings on a UMEM it may share with other sockets.
//!
//! Setup follows the kernel's order: socket, register the UMEM (first
//! socket only) or not, ring sizes, ring mmaps, bind. The per-burst calls
//! ([`XskSocket::fill`], [`recv`](XskSocket::recv), [`send`](XskSocket::send),
//! [`complete`](XskSocket::complete)) touch only the mapped rings: no
//! syscall, no allocation. Syscalls happen only in the wakeups
//! ([`kick_tx`](XskSocket::kick_tx), [`wakeup_rx`](XskSocket::wakeup_rx)),
//! and only when the kernel needs them.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::ring::{map_consumer, map_producer, mmap_offsets, ConsumerRing, ProducerRing, XdpDesc};
use super::sys::*;
use super::umem::{FramePool, Umem, UmemMember};
use super::Error;

/// How to bind a socket: the requested mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Zero-copy if the driver supports it, copy otherwise.
    #[default]
    Auto,
    /// Copy mode: works on every driver (veth included).
    Copy,
    /// Zero-copy only: fails on drivers without support (e.g. veth).
    ZeroCopy,
}

/// How the kernel actually bound a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundMode {
    /// The kernel copies frames between skbs/driver buffers and the UMEM.
    Copy,
    /// The driver DMAs straight to and from the UMEM.
    ZeroCopy,
}

impl fmt::Display for BindMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindMode::Auto => "auto",
            BindMode::Copy => "copy",
            BindMode::ZeroCopy => "zero-copy",
        })
    }
}

impl fmt::Display for BoundMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BoundMode::Copy => "copy",
            BoundMode::ZeroCopy => "zero-copy",
        })
    }
}

/// Busy-poll socket options: `SO_PREFER_BUSY_POLL` = 1, plus these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: microseconds to busy-poll the device queue.
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets per busy-poll round.
    pub budget: u32,
}

/// Settings of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketConfig {
    /// RX ring entries: a power of two (default 2048).
    pub rx_size: u32,
    /// TX ring entries: a power of two (default 2048).
    pub tx_size: u32,
    /// Copy / zero-copy. Only the UMEM's first socket chooses; sockets
    /// sharing it get its mode (an explicit mismatch is an error).
    pub bind: BindMode,
    /// `XDP_USE_NEED_WAKEUP`: the kernel flags the rings when it needs a
    /// syscall, so a quiet socket costs none (default true). Also decided
    /// by the UMEM's first socket.
    pub need_wakeup: bool,
    /// Busy-poll options, if any (default none).
    pub busy_poll: Option<BusyPoll>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            rx_size: 2048,
            tx_size: 2048,
            bind: BindMode::Auto,
            need_wakeup: true,
            busy_poll: None,
        }
    }
}

impl SocketConfig {
    /// Refuses ring sizes the kernel would refuse, naming the bad value.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("socket rx_size", self.rx_size),
            ("socket tx_size", self.tx_size),
        ] {
            if !value.is_power_of_two() {
                return Err(Error::InvalidConfig {
                    field,
                    value,
                    expected: "a power of two",
                });
            }
        }
        Ok(())
    }
}

/// A bound AF_XDP socket.
///
/// Frames move through it as [`XdpDesc`]s and UMEM addresses; the socket
/// counts the frames it holds for TX ([`outstanding_tx`](Self::outstanding_tx)),
/// while frames given to the fill ring are the caller's to count (it knows
/// how many [`fill`](Self::fill) moved and [`recv`](Self::recv) returned).
pub struct XskSocket {
    // Field order is drop order: the rings (and their mmaps) go first, then
    // the fd is closed, then our reference to the UMEM memory is released.
    rx: ConsumerRing<XdpDesc>,
    tx: ProducerRing<XdpDesc>,
    fill: ProducerRing<u64>,
    comp: ConsumerRing<u64>,
    fd: OwnedFd,
    umem: Arc<Umem>,
    /// Clears the in-frame offset of an address: `!(frame_size - 1)`.
    chunk_mask: u64,
    ifname: String,
    queue: u32,
    bound: BoundMode,
    need_wakeup: bool,
    /// Frames submitted to TX and not yet back from the completion ring.
    outstanding_tx: u32,
    /// Every frame this socket handed to the kernel (fill or TX ring) and
    /// did not get back (RX or completion ring): what the kernel may still
    /// write or read, and what [`close`](Self::close) returns.
    lent: LentFrames,
    /// Unexpected kick failures (logged once).
    kick_errors: u64,
}

/// One bit per UMEM frame: set while the frame is lent to the kernel
/// through this socket. Kept per socket (not in the pool) because only the
/// socket knows which frames its rings hold, including the ones the kernel
/// consumed from the fill ring and keeps (copy mode caches them; a
/// zero-copy driver posts them to the NIC) and which no ring shows.
struct LentFrames {
    bits: Vec<u64>,
    /// log2 of the frame size: address -> frame index.
    shift: u32,
    count: u32,
}

impl LentFrames {
    fn new(umem: &Umem) -> LentFrames {
        let frames = umem.frame_count() as usize;
        LentFrames {
            bits: vec![0; frames.div_ceil(64)],
            shift: umem.frame_size().trailing_zeros(),
            count: 0,
        }
    }

    /// Marks the frame holding `addr` lent. Addresses come from the pool or
    /// the kernel's rings, which only name frames of this UMEM; an address
    /// past it is ignored (the ring code refuses such descriptors anyway).
    #[inline]
    fn lend(&mut self, addr: u64) {
        let i = (addr >> self.shift) as usize;
        if let Some(word) = self.bits.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            self.count += u32::from(*word & bit == 0);
            *word |= bit;
        }
    }

    /// The kernel gave the frame holding `addr` back.
    #[inline]
    fn take_back(&mut self, addr: u64) {
        let i = (addr >> self.shift) as usize;
        if let Some(word) = self.bits.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            self.count -= u32::from(*word & bit != 0);
            *word &= !bit;
        }
    }

    /// Base addresses of the lent frames, lowest first.
    fn addresses(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.count as usize);
        for (w, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let bit = word.trailing_zeros() as usize;
                out.push(((w * 64 + bit) as u64) << self.shift);
                word &= word - 1;
            }
        }
        out
    }
}

/// A socket whose rings are mapped and which is bound, before it is
/// entered in the UMEM's registration.
struct Opened {
    fd: OwnedFd,
    rx: ConsumerRing<XdpDesc>,
    tx: ProducerRing<XdpDesc>,
    fill: ProducerRing<u64>,
    comp: ConsumerRing<u64>,
    bound: BoundMode,
}

/// What `open` does about the UMEM.
#[derive(Clone, Copy)]
enum Umode {
    /// Register it (first socket) and bind in this mode.
    Register { mode: BoundMode, need_wakeup: bool },
    /// Share it through a socket bound to it.
    Share(UmemMember),
}

/// A socket closed a moment ago keeps its queue until a kernel work item
/// runs; EBUSY at bind is retried this many times, this far apart.
const BUSY_RETRIES: u32 = 10;
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(20);

impl XskSocket {
    /// Creates, configures and binds a socket on `ifname` rx queue
    /// `queue_id`, with frames in `umem`.
    ///
    /// The first socket on a UMEM registers it (`XDP_UMEM_REG`) and decides
    /// copy/zero-copy and need_wakeup for all; later ones share it
    /// (`XDP_SHARED_UMEM`) through any socket still bound to it, each with
    /// its own fill and completion rings (kernel >= 5.10), so they must be
    /// on other interfaces or queues. Sockets may close in any order.
    ///
    /// [`BindMode::Auto`] on the first socket tries zero-copy and, if bind
    /// refuses it, starts over in copy mode with a fresh socket (a failed
    /// bind leaves the first socket's rings unusable); see
    /// [`bound_mode`](Self::bound_mode).
    pub fn new(
        umem: &Arc<Umem>,
        ifname: &str,
        queue_id: u32,
        config: &SocketConfig,
    ) -> Result<XskSocket, Error> {
        config.validate()?;
        let ifindex = ifindex(ifname)?;
        let ctx = Ctx {
            ifname,
            queue: queue_id,
        };
        // Held until the socket is entered, so that two threads cannot both
        // register the UMEM, nor share it with a socket being closed.
        let mut reg = umem.registration();
        if reg
            .members
            .iter()
            .any(|m| (m.ifindex, m.queue) == (ifindex, queue_id))
        {
            return Err(Error::QueueTaken {
                ifname: ifname.to_string(),
                queue: queue_id,
            });
        }
        let opened = match reg.members.first().copied() {
            Some(owner) => {
                let clash = matches!(
                    (config.bind, owner.mode),
                    (BindMode::Copy, BoundMode::ZeroCopy) | (BindMode::ZeroCopy, BoundMode::Copy)
                );
                if clash {
                    return Err(Error::ModeMismatch {
                        ifname: ifname.to_string(),
                        queue: queue_id,
                        requested: config.bind,
                        umem_mode: owner.mode,
                    });
                }
                open_retrying(umem, &ctx, ifindex, config, Umode::Share(owner))?
            }
            None => {
                let register = |mode| Umode::Register {
                    mode,
                    need_wakeup: config.need_wakeup,
                };
                match config.bind {
                    BindMode::Copy => {
                        open_retrying(umem, &ctx, ifindex, config, register(BoundMode::Copy))?
                    }
                    BindMode::ZeroCopy => {
                        open_retrying(umem, &ctx, ifindex, config, register(BoundMode::ZeroCopy))?
                    }
                    BindMode::Auto => {
                        match open_retrying(
                            umem,
                            &ctx,
                            ifindex,
                            config,
                            register(BoundMode::ZeroCopy),
                        ) {
                            Ok(opened) => opened,
                            Err(Error::Bind { source, .. })
                                if source.raw_os_error() != Some(libc::EBUSY) =>
                            {
                                tracing::info!(
                                    ifname,
                                    queue = queue_id,
                                    "zero-copy bind refused ({source}); binding in copy mode"
                                );
                                open_retrying(
                                    umem,
                                    &ctx,
                                    ifindex,
                                    config,
                                    register(BoundMode::Copy),
                                )?
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        };

        // The first member decided the mode for all.
        let need_wakeup = reg
            .members
            .first()
            .map_or(config.need_wakeup, |m| m.need_wakeup);
        let shared = !reg.members.is_empty();
        reg.members.push(UmemMember {
            fd: opened.fd.as_raw_fd(),
            ifindex,
            queue: queue_id,
            mode: opened.bound,
            need_wakeup,
        });
        drop(reg);
        tracing::debug!(
            ifname,
            queue = queue_id,
            mode = %opened.bound,
            shared,
            "AF_XDP socket bound"
        );
        Ok(XskSocket {
            rx: opened.rx,
            tx: opened.tx,
            fill: opened.fill,
            comp: opened.comp,
            fd: opened.fd,
            umem: Arc::clone(umem),
            chunk_mask: !(umem.frame_size() as u64 - 1),
            ifname: ifname.to_string(),
            queue: queue_id,
            bound: opened.bound,
            need_wakeup,
            outstanding_tx: 0,
            lent: LentFrames::new(umem),
            kick_errors: 0,
        })
    }

    /// The socket's fd: to register in an XSKMAP, or to poll(2) for POLLIN.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The interface it is bound to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The rx queue it is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue
    }

    /// Copy or zero-copy, as the kernel bound it.
    pub fn bound_mode(&self) -> BoundMode {
        self.bound
    }

    /// The UMEM its frames live in.
    pub fn umem(&self) -> &Arc<Umem> {
        &self.umem
    }

    /// Moves up to `max` frames from `pool` into the fill ring (receive
    /// buffers for the kernel); returns how many. Limited by the free
    /// frames and the free ring slots.
    pub fn fill(&mut self, pool: &mut FramePool, max: u32) -> u32 {
        let want = max.min(u32::try_from(pool.len()).unwrap_or(u32::MAX));
        let n = self.fill.reserve(want);
        for i in 0..n {
            let addr = pool.alloc().expect("reserved no more than the pool holds");
            self.lent.lend(addr);
            self.fill.write(i, addr);
        }
        self.fill.submit(n);
        n
    }

    /// Appends up to `max` received frames to `out`; returns how many. The
    /// caller now holds them (an `addr` points inside its frame, past the
    /// kernel's headroom). Allocates only if `out` lacks capacity.
    pub fn recv(&mut self, out: &mut Vec<XdpDesc>, max: u32) -> u32 {
        let n = self.rx.peek(max);
        for i in 0..n {
            let desc = self.rx.read(i);
            self.lent.take_back(desc.addr);
            out.push(desc);
        }
        self.rx.release(n);
        n
    }

    /// Queues `descs` for transmission, as many as fit in the TX ring, from
    /// the front; returns how many. Those frames are the socket's until
    /// [`complete`](Self::complete) returns them; the rest stay the
    /// caller's. Call [`kick_tx`](Self::kick_tx) after a burst.
    ///
    /// Each descriptor must lie inside one frame of the UMEM: the kernel
    /// skips an invalid one without completing it, so its frame would be
    /// lost (debug builds assert).
    pub fn send(&mut self, descs: &[XdpDesc]) -> u32 {
        let n = self
            .tx
            .reserve(u32::try_from(descs.len()).unwrap_or(u32::MAX));
        for (i, desc) in descs[..n as usize].iter().enumerate() {
            debug_assert!(
                (desc.addr & !self.chunk_mask) + desc.len as u64 <= self.umem.frame_size() as u64
                    && desc.addr < self.umem.len_bytes() as u64,
                "TX descriptor {desc:?} leaves its frame or the UMEM"
            );
            self.lent.lend(desc.addr);
            self.tx.write(i as u32, *desc);
        }
        self.tx.submit(n);
        self.outstanding_tx += n;
        n
    }

    /// Makes the kernel process the TX ring, if it needs a syscall for it:
    /// always in copy mode while frames wait in the ring (copy mode only
    /// transmits inside sendto, a few dozen frames per call), in zero-copy
    /// mode when the ring asks for a wakeup (or always without need_wakeup).
    ///
    /// "Try later" answers (EAGAIN: more left, EBUSY/ENOBUFS: no room now,
    /// ENETDOWN: interface down, ENXIO: interface going away) are not
    /// errors: the frames stay queued and the next kick retries. Anything
    /// else is logged once per socket.
    pub fn kick_tx(&mut self) {
        let needed = match self.bound {
            BoundMode::Copy => self.tx.pending() > 0,
            BoundMode::ZeroCopy => !self.need_wakeup || self.tx.needs_wakeup(),
        };
        if !needed {
            return;
        }
        // SAFETY: a zero-length, non-blocking sendto on our own socket with
        // no buffer and no address: the kernel reads no user memory.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // ENXIO: the interface is being deleted; the supervisor
                // notices and takes the port down.
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::ENXIO) => {
                }
                _ => {
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
    }

    /// Moves up to `max` completed TX frames back to `pool`; returns how
    /// many.
    pub fn complete(&mut self, pool: &mut FramePool, max: u32) -> u32 {
        let n = self.comp.peek(max);
        for i in 0..n {
            // The kernel returns the TX descriptor's address, which may
            // point inside the frame.
            let addr = self.comp.read(i) & self.chunk_mask;
            self.lent.take_back(addr);
            pool.free(addr);
        }
        self.comp.release(n);
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
    /// Closing unbinds: the rings are unmapped first (a mapping holds a
    /// reference to the socket's file), so the close releases the socket,
    /// and the kernel's release waits (`synchronize_net`) until no receive
    /// or transmit is still running on it. Frames are therefore never
    /// handed back while the kernel can still write them. (In zero-copy mode
    /// the driver lets go of its posted buffers when the queue's buffer pool
    /// is torn down, a kernel work item that may run a moment later: free
    /// these frames so they are reused last; see `FramePool::free_cold`.)
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
    /// syscall ([`wakeup_rx`](Self::wakeup_rx) or poll) wakes it. Only ever
    /// set with need_wakeup.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Wakes the kernel's RX processing (a zero-length, non-blocking
    /// recvfrom); call it when [`fill_needs_wakeup`](Self::fill_needs_wakeup).
    /// Its errors mean "nothing to do" and are ignored.
    pub fn wakeup_rx(&self) {
        // SAFETY: a zero-length, non-blocking recvfrom on our own socket
        // with no buffer and no address: the kernel writes no user memory.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
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
        let mut stats = XdpStatistics::default();
        // Older kernels fill a prefix (the rest stays 0).
        getsockopt(self.fd(), XDP_STATISTICS, &mut stats).map_err(|source| Error::GetSockOpt {
            option: "XDP_STATISTICS",
            ifname: self.ifname.clone(),
            queue: self.queue,
            source,
        })?;
        Ok(stats)
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        // The fd and rings are released by the fields' own drops, after
        // this; here the UMEM forgets us.
        // Out of the list before the fd closes (under the lock), so no new
        // socket can name a recycled fd number as its share target.
        let fd = self.fd.as_raw_fd();
        self.umem.registration().members.retain(|m| m.fd != fd);
    }
}

// SAFETY: the socket exclusively owns its fd and its side of the four rings
// (mutated only through `&mut self`); the UMEM is Send + Sync. Nothing ties
// it to the thread that created it.
unsafe impl Send for XskSocket {}

/// Interface and queue, for error messages.
struct Ctx<'a> {
    ifname: &'a str,
    queue: u32,
}

impl Ctx<'_> {
    fn setsockopt(&self, option: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::SetSockOpt {
            option,
            ifname: self.ifname.to_string(),
            queue: self.queue,
            source,
        }
    }

    fn getsockopt(&self, option: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::GetSockOpt {
            option,
            ifname: self.ifname.to_string(),
            queue: self.queue,
            source,
        }
    }

    fn mmap(&self, ring: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::RingMmap {
            ring,
            ifname: self.ifname.to_string(),
            queue: self.queue,
            source,
        }
    }
}

/// The kernel's index of `ifname` in this network namespace.
fn ifindex(ifname: &str) -> Result<u32, Error> {
    let missing = || Error::NoSuchInterface {
        ifname: ifname.to_string(),
    };
    let c = CString::new(ifname).map_err(|_| missing())?;
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(missing());
    }
    Ok(index)
}

/// [`open`], retried with a fresh socket while bind says EBUSY (the queue
/// of a socket closed a moment ago is released by deferred kernel work).
fn open_retrying(
    umem: &Umem,
    ctx: &Ctx<'_>,
    ifindex: u32,
    config: &SocketConfig,
    umode: Umode,
) -> Result<Opened, Error> {
    let mut attempt = 0;
    loop {
        match open(umem, ctx, ifindex, config, umode) {
            Err(Error::Bind { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) && attempt < BUSY_RETRIES =>
            {
                attempt += 1;
                std::thread::sleep(BUSY_RETRY_DELAY);
            }
            result => return result,
        }
    }
}

/// One attempt: socket, UMEM registration (or not), rings, bind. On error
/// everything made so far is closed and unmapped (by the drops).
fn open(
    umem: &Umem,
    ctx: &Ctx<'_>,
    ifindex: u32,
    config: &SocketConfig,
    umode: Umode,
) -> Result<Opened, Error> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            return Err(Error::XdpSocketsUnsupported {
                ifname: ctx.ifname.to_string(),
                queue: ctx.queue,
            });
        }
        return Err(Error::Socket {
            ifname: ctx.ifname.to_string(),
            queue: ctx.queue,
            source,
        });
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let fdr = fd.as_raw_fd();

    if let Umode::Register { .. } = umode {
        let (addr, len) = umem.area();
        let reg = XdpUmemReg {
            addr,
            len,
            chunk_size: umem.frame_size(),
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(fdr, SOL_XDP, XDP_UMEM_REG, &reg).map_err(|source| Error::UmemRegister {
            ifname: ctx.ifname.to_string(),
            queue: ctx.queue,
            bytes: len,
            source,
        })?;
    }
    // Every socket gets its own fill and completion rings, the sharing ones
    // included: that is what lets one UMEM serve several interfaces/queues,
    // and keeps each socket's TX completions its own.
    let uc = umem.config();
    setsockopt(fdr, SOL_XDP, XDP_UMEM_FILL_RING, &uc.fill_size)
        .map_err(ctx.setsockopt("XDP_UMEM_FILL_RING"))?;
    setsockopt(fdr, SOL_XDP, XDP_UMEM_COMPLETION_RING, &uc.comp_size)
        .map_err(ctx.setsockopt("XDP_UMEM_COMPLETION_RING"))?;
    setsockopt(fdr, SOL_XDP, XDP_RX_RING, &config.rx_size)
        .map_err(ctx.setsockopt("XDP_RX_RING"))?;
    setsockopt(fdr, SOL_XDP, XDP_TX_RING, &config.tx_size)
        .map_err(ctx.setsockopt("XDP_TX_RING"))?;
    if let Some(bp) = config.busy_poll {
        let as_int = |v: u32| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
        for (option, name, value) in [
            (SO_PREFER_BUSY_POLL, "SO_PREFER_BUSY_POLL", 1),
            (SO_BUSY_POLL, "SO_BUSY_POLL", as_int(bp.usecs)),
            (
                SO_BUSY_POLL_BUDGET,
                "SO_BUSY_POLL_BUDGET",
                as_int(bp.budget),
            ),
        ] {
            setsockopt(fdr, libc::SOL_SOCKET, option, &value).map_err(ctx.setsockopt(name))?;
        }
    }

    let off = mmap_offsets(fdr).map_err(ctx.getsockopt("XDP_MMAP_OFFSETS"))?;
    let fill = map_producer::<u64>(fdr, &off.fr, uc.fill_size, XDP_UMEM_PGOFF_FILL_RING)
        .map_err(ctx.mmap("fill"))?;
    let comp = map_consumer::<u64>(fdr, &off.cr, uc.comp_size, XDP_UMEM_PGOFF_COMPLETION_RING)
        .map_err(ctx.mmap("completion"))?;
    let rx = map_consumer::<XdpDesc>(fdr, &off.rx, config.rx_size, XDP_PGOFF_RX_RING)
        .map_err(ctx.mmap("RX"))?;
    let tx = map_producer::<XdpDesc>(fdr, &off.tx, config.tx_size, XDP_PGOFF_TX_RING)
        .map_err(ctx.mmap("TX"))?;

    // A sharing socket may pass no mode flags: it inherits the owner's.
    let (flags, shared_fd, flags_text) = match umode {
        Umode::Register {
            mode: BoundMode::Copy,
            need_wakeup,
        } => (XDP_COPY | wakeup_flag(need_wakeup), 0, "XDP_COPY"),
        Umode::Register {
            mode: BoundMode::ZeroCopy,
            need_wakeup,
        } => (XDP_ZEROCOPY | wakeup_flag(need_wakeup), 0, "XDP_ZEROCOPY"),
        Umode::Share(owner) => (XDP_SHARED_UMEM, owner.fd as u32, "XDP_SHARED_UMEM"),
    };
    let addr = SockaddrXdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: ctx.queue,
        sxdp_shared_umem_fd: shared_fd,
    };
    // SAFETY: `addr` is a valid sockaddr_xdp and its exact size is passed.
    let rc = unsafe {
        libc::bind(
            fdr,
            (&addr as *const SockaddrXdp).cast::<libc::sockaddr>(),
            std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::Bind {
            ifname: ctx.ifname.to_string(),
            queue: ctx.queue,
            flags: flags_text,
            source: io::Error::last_os_error(),
        });
    }

    // Ask the kernel how it bound, rather than assume (a sharing socket's
    // mode is the UMEM's).
    let mut options = XdpOptions::default();
    getsockopt(fdr, XDP_OPTIONS, &mut options).map_err(ctx.getsockopt("XDP_OPTIONS"))?;
    let bound = if options.flags & XDP_OPTIONS_ZEROCOPY != 0 {
        BoundMode::ZeroCopy
    } else {
        BoundMode::Copy
    };
    Ok(Opened {
        fd,
        rx,
        tx,
        fill,
        comp,
        bound,
    })
}

fn wakeup_flag(need_wakeup: bool) -> u16 {
    if need_wakeup {
        XDP_USE_NEED_WAKEUP
    } else {
        0
    }
}

/// setsockopt(2) with a plain-old-data value.
fn setsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live T of exactly the size passed; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// getsockopt(2) at SOL_XDP into a plain-old-data value (a kernel that
/// knows a shorter struct fills a prefix).
fn getsockopt<T: Copy>(fd: RawFd, option: libc::c_int, value: &mut T) -> io::Result<()> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes and the kernel writes at
    // most `len`; T is plain data for which any bytes are valid.
    let rc = unsafe { libc::getsockopt(fd, SOL_XDP, option, (value as *mut T).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
