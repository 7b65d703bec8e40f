//! One AF_XDP socket: bound to (interface, rx queue), with its own fill and
//! completion rings on a UMEM that it may share with other sockets.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::ring::{map_consumer, map_producer, ConsumerRing, ProducerRing};
use super::sys::*;
use super::umem::{FramePool, Umem, UmemOwner};
use super::{Error, XdpDesc};

/// How to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Zero-copy if the driver supports it, copy otherwise.
    #[default]
    Auto,
    /// Copy mode only.
    Copy,
    /// Zero-copy only (fails on drivers without support, e.g. veth).
    ZeroCopy,
}

/// How the kernel actually bound the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundMode {
    /// Frames are copied between the driver's buffers and the UMEM.
    Copy,
    /// The driver DMAs straight into the UMEM.
    ZeroCopy,
}

/// Busy-poll socket options (SO_PREFER_BUSY_POLL and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// SO_BUSY_POLL: microseconds to busy-poll in a blocking call.
    pub usecs: u32,
    /// SO_BUSY_POLL_BUDGET: packets per busy-poll round.
    pub budget: u32,
}

/// Socket settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketConfig {
    /// RX ring entries (power of two).
    pub rx_size: u32,
    /// TX ring entries (power of two).
    pub tx_size: u32,
    /// Copy / zero-copy choice.
    pub bind: BindMode,
    /// XDP_USE_NEED_WAKEUP: the kernel says when it needs a syscall, so an
    /// idle socket costs no syscalls.
    pub need_wakeup: bool,
    /// Busy-poll options, if wanted.
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

/// A bound AF_XDP socket.
pub struct XskSocket {
    // Rings first: they are unmapped before the fd is closed.
    rx: ConsumerRing<XdpDesc>,
    tx: ProducerRing<XdpDesc>,
    fill: ProducerRing<u64>,
    comp: ConsumerRing<u64>,
    fd: OwnedFd,
    ifname: String,
    queue: u32,
    bound: BoundMode,
    need_wakeup: bool,
    /// Frames submitted to TX and not yet seen on the completion ring.
    outstanding_tx: u32,
    _umem: Arc<Umem>,
}

impl XskSocket {
    /// Creates, configures and binds a socket on `ifname` rx queue `queue`.
    pub fn new(
        umem: &Arc<Umem>,
        ifname: &str,
        queue: u32,
        config: &SocketConfig,
    ) -> Result<XskSocket, Error> {
        let c = CString::new(ifname).map_err(|_| Error::NoSuchInterface {
            ifname: ifname.to_string(),
        })?;
        // SAFETY: c is NUL-terminated.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(Error::NoSuchInterface {
                ifname: ifname.to_string(),
            });
        }
        for (what, v) in [("rx_size", config.rx_size), ("tx_size", config.tx_size)] {
            if v == 0 || !v.is_power_of_two() {
                return Err(Error::Config {
                    field: what,
                    value: v,
                    why: "must be a power of two",
                });
            }
        }
        // A socket sharing the UMEM inherits the mode of the one that
        // registered it; the kernel refuses mode flags on sharing sockets.
        let inherited = umem.owner().lock().unwrap().map(|o| o.mode);
        if let Some(mode) = inherited {
            if config.bind == BindMode::ZeroCopy && mode == BoundMode::Copy {
                return Err(Error::Config {
                    field: "bind",
                    value: queue,
                    why: "zerocopy was asked, but the shared UMEM is bound in copy mode",
                });
            }
            return Self::create(umem, ifname, ifindex, queue, config, mode);
        }
        match config.bind {
            BindMode::Copy => Self::create(umem, ifname, ifindex, queue, config, BoundMode::Copy),
            BindMode::ZeroCopy => {
                Self::create(umem, ifname, ifindex, queue, config, BoundMode::ZeroCopy)
            }
            // A failed zero-copy bind consumes the socket's fill/completion
            // rings in the kernel, so the copy-mode retry needs a new socket.
            BindMode::Auto => {
                match Self::create(umem, ifname, ifindex, queue, config, BoundMode::ZeroCopy) {
                    Ok(s) => Ok(s),
                    Err(Error::Bind { .. }) => {
                        Self::create(umem, ifname, ifindex, queue, config, BoundMode::Copy)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn create(
        umem: &Arc<Umem>,
        ifname: &str,
        ifindex: u32,
        queue: u32,
        config: &SocketConfig,
        mode: BoundMode,
    ) -> Result<XskSocket, Error> {
        let sys = |call: &'static str| {
            let source = std::io::Error::last_os_error();
            Error::Syscall {
                call,
                ifname: ifname.to_string(),
                queue,
                source,
            }
        };
        // SAFETY: plain socket(2); owned right away.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                return Err(Error::XdpSocketsUnsupported);
            }
            return Err(Error::Syscall {
                call: "socket(AF_XDP)",
                ifname: ifname.to_string(),
                queue,
                source,
            });
        }
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let fdr = fd.as_raw_fd();

        // Hold the owner lock across bind so two sockets cannot both
        // register the UMEM.
        let mut owner = umem.owner().lock().unwrap();
        let shared_with = *owner;
        // Sharing sockets follow the owner's wakeup mode too.
        let need_wakeup = shared_with.map_or(config.need_wakeup, |o| o.need_wakeup);
        if shared_with.is_none() {
            let (addr, len) = umem.area();
            let reg = XdpUmemReg {
                addr,
                len,
                chunk_size: umem.frame_size(),
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            setsockopt(fdr, XDP_UMEM_REG, &reg).map_err(|_| sys("setsockopt(XDP_UMEM_REG)"))?;
        }
        let uc = umem.config();
        setsockopt(fdr, XDP_UMEM_FILL_RING, &uc.fill_size)
            .map_err(|_| sys("setsockopt(XDP_UMEM_FILL_RING)"))?;
        setsockopt(fdr, XDP_UMEM_COMPLETION_RING, &uc.comp_size)
            .map_err(|_| sys("setsockopt(XDP_UMEM_COMPLETION_RING)"))?;
        setsockopt(fdr, XDP_RX_RING, &config.rx_size)
            .map_err(|_| sys("setsockopt(XDP_RX_RING)"))?;
        setsockopt(fdr, XDP_TX_RING, &config.tx_size)
            .map_err(|_| sys("setsockopt(XDP_TX_RING)"))?;
        if let Some(bp) = config.busy_poll {
            let one: libc::c_int = 1;
            let usecs = bp.usecs as libc::c_int;
            let budget = bp.budget as libc::c_int;
            for (opt, val, call) in [
                (SO_PREFER_BUSY_POLL, &one, "setsockopt(SO_PREFER_BUSY_POLL)"),
                (SO_BUSY_POLL, &usecs, "setsockopt(SO_BUSY_POLL)"),
                (
                    SO_BUSY_POLL_BUDGET,
                    &budget,
                    "setsockopt(SO_BUSY_POLL_BUDGET)",
                ),
            ] {
                setsockopt_level(fdr, libc::SOL_SOCKET, opt, val).map_err(|_| sys(call))?;
            }
        }

        let mut off = XdpMmapOffsets::default();
        let mut optlen = std::mem::size_of::<XdpMmapOffsets>() as libc::socklen_t;
        // SAFETY: off is writable for optlen bytes.
        let rc = unsafe {
            libc::getsockopt(
                fdr,
                SOL_XDP,
                XDP_MMAP_OFFSETS,
                &mut off as *mut XdpMmapOffsets as *mut libc::c_void,
                &mut optlen,
            )
        };
        if rc != 0 {
            return Err(sys("getsockopt(XDP_MMAP_OFFSETS)"));
        }
        let map_err =
            |what: &'static str| move |source: std::io::Error| Error::Mmap { what, source };
        let fill = map_producer::<u64>(fdr, &off.fr, uc.fill_size, XDP_UMEM_PGOFF_FILL_RING)
            .map_err(map_err("fill ring"))?;
        let comp = map_consumer::<u64>(fdr, &off.cr, uc.comp_size, XDP_UMEM_PGOFF_COMPLETION_RING)
            .map_err(map_err("completion ring"))?;
        let rx = map_consumer::<XdpDesc>(fdr, &off.rx, config.rx_size, XDP_PGOFF_RX_RING)
            .map_err(map_err("RX ring"))?;
        let tx = map_producer::<XdpDesc>(fdr, &off.tx, config.tx_size, XDP_PGOFF_TX_RING)
            .map_err(map_err("TX ring"))?;

        let flags = if shared_with.is_some() {
            XDP_SHARED_UMEM
        } else {
            let mode_flag = match mode {
                BoundMode::Copy => XDP_COPY,
                BoundMode::ZeroCopy => XDP_ZEROCOPY,
            };
            mode_flag | if need_wakeup { XDP_USE_NEED_WAKEUP } else { 0 }
        };
        let addr = SockaddrXdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: shared_with.map_or(0, |o| o.fd) as u32,
        };
        // SAFETY: addr is a valid sockaddr_xdp and its size is passed.
        let rc = unsafe {
            libc::bind(
                fdr,
                &addr as *const SockaddrXdp as *const libc::sockaddr,
                std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::Bind {
                ifname: ifname.to_string(),
                queue,
                mode,
                source: std::io::Error::last_os_error(),
            });
        }
        if shared_with.is_none() {
            *owner = Some(UmemOwner {
                fd: fdr,
                mode,
                need_wakeup,
            });
        }
        drop(owner);
        Ok(XskSocket {
            rx,
            tx,
            fill,
            comp,
            fd,
            ifname: ifname.to_string(),
            queue,
            bound: mode,
            need_wakeup,
            outstanding_tx: 0,
            _umem: umem.clone(),
        })
    }

    /// The socket fd (to register in an XSKMAP, or to poll).
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

    /// Copy or zero-copy.
    pub fn bound_mode(&self) -> BoundMode {
        self.bound
    }

    /// Moves up to `max` free frames into the fill ring; returns how many.
    pub fn fill(&mut self, pool: &mut FramePool, max: u32) -> u32 {
        let n = self.fill.reserve(max.min(pool.len() as u32));
        for i in 0..n {
            let addr = pool.alloc().expect("reserved no more than the pool holds");
            self.fill.write(i, addr);
        }
        self.fill.submit(n);
        n
    }

    /// Appends up to `max` received descriptors to `out`; returns how many.
    pub fn recv(&mut self, out: &mut Vec<XdpDesc>, max: u32) -> u32 {
        let n = self.rx.peek(max);
        for i in 0..n {
            out.push(self.rx.read(i));
        }
        self.rx.release(n);
        n
    }

    /// Queues descriptors for transmission; returns how many fit.
    pub fn send(&mut self, descs: &[XdpDesc]) -> u32 {
        let n = self.tx.reserve(descs.len() as u32);
        for i in 0..n {
            self.tx.write(i, descs[i as usize]);
        }
        self.tx.submit(n);
        self.outstanding_tx += n;
        n
    }

    /// Tells the kernel to process the TX ring, if it needs telling.
    /// Transient refusals (busy, no buffers, device down) are not errors:
    /// the frames stay queued and the next kick retries.
    pub fn kick_tx(&mut self) {
        if self.need_wakeup && !self.tx.needs_wakeup() {
            return;
        }
        // SAFETY: zero-length sendto on our own socket; no buffers passed.
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
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => {}
                _ => tracing::debug!(ifname = self.ifname, queue = self.queue, "TX kick: {e}"),
            }
        }
    }

    /// Moves up to `max` completed TX frames back to the pool.
    pub fn complete(&mut self, pool: &mut FramePool, max: u32) -> u32 {
        let n = self.comp.peek(max);
        for i in 0..n {
            pool.free(self.comp.read(i));
        }
        self.comp.release(n);
        self.outstanding_tx -= n;
        n
    }

    /// Frames submitted for TX and not yet completed.
    pub fn outstanding_tx(&self) -> u32 {
        self.outstanding_tx
    }

    /// The kernel wants a syscall before it refills RX from the fill ring.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.need_wakeup && self.fill.needs_wakeup()
    }

    /// Wakes the kernel's RX processing (zero-copy drivers with need_wakeup).
    pub fn wakeup_rx(&self) {
        // SAFETY: zero-length non-blocking recvfrom on our own socket.
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

    /// The kernel's drop and error counters for this socket.
    pub fn statistics(&self) -> Result<XdpStatistics, Error> {
        let mut st = XdpStatistics::default();
        let mut len = std::mem::size_of::<XdpStatistics>() as libc::socklen_t;
        // SAFETY: st is writable for len bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_XDP,
                XDP_STATISTICS,
                &mut st as *mut XdpStatistics as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(Error::Syscall {
                call: "getsockopt(XDP_STATISTICS)",
                ifname: self.ifname.clone(),
                queue: self.queue,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(st)
    }
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, val: &T) -> std::io::Result<()> {
    setsockopt_level(fd, SOL_XDP, opt, val)
}

fn setsockopt_level<T>(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: &T,
) -> std::io::Result<()> {
    // SAFETY: val points at a T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
