//! AF_XDP port: the netdev runs `steer`, which redirects the frames the
//! switch wants into one AF_XDP socket per configured rx queue.
//!
//! All sockets of all AF_XDP ports share the PMD thread's UMEM, so a frame
//! received here and sent out of another AF_XDP port is never copied in
//! userspace: only its descriptor moves from our RX ring to their TX ring.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane_common::checksum;
use thiserror::Error;

use super::{DropReason, Frames, HeldFrames, Port, PortCounters};
use crate::netdev;
use crate::steer::pins::PinRoot;
use crate::steer::{
    self, policy::PolicySpec, AttachOptions, AttachReport, Attachment, ModeRequest,
};
use crate::xsk::{self, BoundMode, SocketConfig, Umem, XdpDesc, XskSocket};

#[derive(Debug, Error)]
pub enum Error {
    #[error("AF_XDP port on {ifname}: {source}")]
    Interface {
        ifname: String,
        source: crate::netdev::Error,
    },
    #[error(
        "AF_XDP port on {ifname}: MTU {mtu} is larger than a {frame_size}-byte UMEM frame allows; \
         the largest allowed is {max} (`ip link set {ifname} mtu {max}`), or raise [umem] frame_size"
    )]
    MtuTooLarge {
        ifname: String,
        mtu: u32,
        max: u32,
        frame_size: u32,
    },
    #[error(
        "AF_XDP port on {ifname}: queue {queue} does not exist: {ifname} has {count} rx queue(s), \
         0-{last} (see `ethtool -l {ifname}`)", last = count - 1
    )]
    QueueOutOfRange {
        ifname: String,
        queue: u32,
        count: u32,
    },
    #[error("AF_XDP port on {ifname}: attaching steer: {source}")]
    Steer {
        ifname: String,
        // Boxed: steer errors are large and this one is rare.
        source: Box<steer::Error>,
    },
    #[error("AF_XDP port on {ifname} queue {queue}: {source}")]
    Socket {
        ifname: String,
        queue: u32,
        source: xsk::Error,
    },
}

/// How to open an AF_XDP port.
#[derive(Debug, Clone)]
pub struct AfxdpConfig {
    /// The netdev.
    pub ifname: String,
    /// Rx queues to open a socket on (veth: queue 0).
    pub queues: Vec<u32>,
    /// Socket options (ring sizes, copy/zero-copy, busy poll).
    pub socket: SocketConfig,
    /// How many frames to keep in each fill ring.
    pub fill_frames: u32,
    /// XDP attach mode if steer has to be attached.
    pub attach_mode: ModeRequest,
}

/// Bytes of a UMEM frame before the frame data: the kernel's XDP headroom.
const XDP_HEADROOM: u32 = 256;
/// Bytes of a frame beyond the MTU: Ethernet header and one 802.1Q tag the
/// switch may push.
const L2_OVERHEAD: u32 = 14 + 4;

/// The largest MTU a port on a UMEM of `frame_size`-byte frames can carry.
pub fn max_mtu(frame_size: u32) -> u32 {
    frame_size - XDP_HEADROOM - L2_OVERHEAD
}

/// Refuses an interface the port could not serve: missing, an MTU whose
/// frames do not fit a UMEM frame (they would be dropped by the kernel, one
/// by one, without a word), or a queue it does not have.
pub fn check_interface(ifname: &str, queues: &[u32], frame_size: u32) -> Result<(), Error> {
    let iface_err = |source| Error::Interface {
        ifname: ifname.to_string(),
        source,
    };
    let mtu = netdev::mtu(ifname).map_err(iface_err)?;
    let max = max_mtu(frame_size);
    if mtu > max {
        return Err(Error::MtuTooLarge {
            ifname: ifname.to_string(),
            mtu,
            max,
            frame_size,
        });
    }
    if let Some(count) = netdev::rx_queue_count(ifname).map_err(iface_err)? {
        if let Some(&queue) = queues.iter().find(|&&q| q >= count) {
            return Err(Error::QueueOutOfRange {
                ifname: ifname.to_string(),
                queue,
                count,
            });
        }
    }
    Ok(())
}

/// An open AF_XDP port.
pub struct AfxdpPort {
    name: String,
    ifname: String,
    sockets: Vec<XskSocket>,
    /// Frames handed to each socket's fill ring and not yet received back.
    in_fill: Vec<u64>,
    fill_frames: u32,
    /// Next socket to receive from (round robin over queues).
    next_rx: usize,
    counters: Arc<PortCounters>,
    attachment: Attachment,
    /// True if this port attached steer (and so detaches it on drop).
    attached_here: bool,
    pins: PinRoot,
    bound: BoundMode,
}

impl AfxdpPort {
    /// Attaches steer if needed (policy: everything to the switch), opens a
    /// socket per queue on `umem` and registers it in steer's XSKMAP.
    pub fn open(
        config: &AfxdpConfig,
        umem: &Arc<Umem>,
        pins: &PinRoot,
        counters: Arc<PortCounters>,
    ) -> Result<AfxdpPort, Error> {
        let ifname = config.ifname.clone();
        check_interface(&ifname, &config.queues, umem.frame_size())?;
        let steer_err = |source| Error::Steer {
            ifname: ifname.clone(),
            source: Box::new(source),
        };
        let attached_here = if pins.interface(&ifname).exist() {
            take_over_if_orphaned(pins, &ifname).map_err(steer_err)?
        } else {
            let report = steer::attach(
                pins,
                &AttachOptions {
                    ifname: ifname.clone(),
                    mode: config.attach_mode,
                    policy: PolicySpec::redirect_all(),
                    force: false,
                },
            )
            .map_err(steer_err)?;
            if let AttachReport::Attached { mode, .. } = report {
                tracing::info!(ifname, mode = mode.name(), "attached steer");
            }
            true
        };
        let mut attachment = Attachment::open(pins, &ifname).map_err(steer_err)?;
        if attached_here {
            // Mark it ours, so that if this process is killed the next run
            // knows the attachment was left behind, not made by a user.
            attachment
                .set_owner_pid(std::process::id())
                .map_err(steer_err)?;
        }
        let mut port = AfxdpPort {
            name: format!("afxdp:{ifname}"),
            ifname: ifname.clone(),
            sockets: Vec::new(),
            in_fill: Vec::new(),
            fill_frames: config.fill_frames,
            next_rx: 0,
            counters,
            attachment,
            attached_here,
            pins: pins.clone(),
            bound: BoundMode::Copy,
        };
        // From here, dropping `port` unregisters and detaches what was made.
        for &queue in &config.queues {
            let socket =
                XskSocket::new(umem, &ifname, queue, &config.socket).map_err(|source| {
                    Error::Socket {
                        ifname: ifname.clone(),
                        queue,
                        source,
                    }
                })?;
            port.bound = socket.bound_mode();
            port.attachment
                .register_socket(queue, socket.fd())
                .map_err(steer_err)?;
            port.sockets.push(socket);
            port.in_fill.push(0);
        }
        tracing::info!(
            port = port.name,
            queues = ?config.queues,
            mode = ?port.bound,
            "AF_XDP port open{}",
            if port.bound == BoundMode::Copy { " (copy mode: the driver has no zero-copy support)" } else { "" }
        );
        Ok(port)
    }

    /// Copy or zero-copy, as the kernel bound the sockets.
    pub fn bound_mode(&self) -> BoundMode {
        self.bound
    }
}

impl Port for AfxdpPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, frames: &mut Frames<'_>, out: &mut Vec<XdpDesc>, max: usize) -> usize {
        let n_sockets = self.sockets.len();
        let mut got = 0usize;
        for _ in 0..n_sockets {
            let i = self.next_rx;
            self.next_rx = (self.next_rx + 1) % n_sockets;
            let before = out.len();
            let n = self.sockets[i].recv(out, (max - got) as u32) as usize;
            self.in_fill[i] -= n as u64;
            let mut bytes = 0u64;
            for d in &out[before..] {
                bytes += d.len as u64;
                // XDP hands over bytes, not the skb's "checksum left to the
                // device" mark: finish such checksums here, once, so every
                // egress (another AF_XDP port, a TAP, a guest) gets a frame
                // its receiver accepts. See dataplane_common::checksum.
                // SAFETY: the descriptor was just taken off the RX ring, so
                // the engine is the frame's only holder.
                let frame = unsafe { frames.umem.frame_mut(d.addr, d.len as usize) };
                checksum::complete_partial(frame);
            }
            self.counters.add_rx(n as u64, bytes);
            got += n;
            if got >= max {
                break;
            }
        }
        got
    }

    fn tx_burst(&mut self, _frames: &mut Frames<'_>, batch: &mut Vec<XdpDesc>) {
        if batch.is_empty() {
            return;
        }
        // One TX socket per port: queue selection on TX does not matter for
        // veth and keeps completion handling in one place.
        let socket = &mut self.sockets[0];
        let n = socket.send(batch) as usize;
        let bytes: u64 = batch[..n].iter().map(|d| d.len as u64).sum();
        self.counters.add_tx(n as u64, bytes);
        batch.drain(..n);
        socket.kick_tx();
    }

    fn maintain(&mut self, frames: &mut Frames<'_>) {
        for (i, socket) in self.sockets.iter_mut().enumerate() {
            socket.complete(frames.pool, u32::MAX);
            // Copy mode sends at most a few dozen frames per kick: keep
            // kicking while frames wait in the TX ring.
            if socket.outstanding_tx() > 0 {
                socket.kick_tx();
            }
            let want = (self.fill_frames as u64).saturating_sub(self.in_fill[i]);
            if want >= 16 || self.in_fill[i] == 0 {
                let n = socket.fill(frames.pool, want as u32);
                self.in_fill[i] += n as u64;
            }
            if socket.fill_needs_wakeup() {
                socket.wakeup_rx();
            }
        }
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(|s| s.fd()).collect()
    }

    fn frames_held(&self) -> HeldFrames {
        HeldFrames {
            rx_side: self.in_fill.iter().sum(),
            tx_side: self.sockets.iter().map(|s| s.outstanding_tx() as u64).sum(),
        }
    }

    fn refresh_counters(&mut self) {
        let (mut rx_kernel, mut invalid) = (0, 0);
        for st in self.sockets.iter().filter_map(|s| s.statistics().ok()) {
            rx_kernel += st.rx_dropped + st.rx_ring_full;
            invalid += st.rx_invalid_descs + st.tx_invalid_descs;
        }
        self.counters
            .set_kernel_drops(DropReason::RxKernel, rx_kernel);
        self.counters
            .set_kernel_drops(DropReason::InvalidDescriptor, invalid);
    }

    fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }

    fn release_frames(&mut self, frames: &mut Frames<'_>) {
        // Out of the XSKMAP first: steer then passes this port's frames to
        // the kernel, so the fill and RX rings stop changing. The caller
        // unregisters earlier and waits a moment (a receive may be in flight
        // on another CPU): this PMD thread must not sleep.
        for socket in &self.sockets {
            let _ = self.attachment.unregister_socket(socket.queue_id());
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut received = Vec::with_capacity(64);
        for (i, socket) in self.sockets.iter_mut().enumerate() {
            loop {
                received.clear();
                let n = socket.recv(&mut received, 64);
                if n == 0 {
                    break;
                }
                for d in &received {
                    frames.pool.free(d.addr);
                }
                self.in_fill[i] = self.in_fill[i].saturating_sub(n as u64);
            }
            let n = socket.reclaim_fill(frames.pool);
            self.in_fill[i] = self.in_fill[i].saturating_sub(n as u64);
            // Copy-mode transmit completes as the peer frees each skb:
            // soon, but not necessarily already.
            while socket.outstanding_tx() > 0 && Instant::now() < deadline {
                socket.kick_tx();
                socket.complete(frames.pool, u32::MAX);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let held = self.frames_held();
        if held != HeldFrames::default() {
            tracing::warn!(
                port = self.name,
                rx_side = held.rx_side,
                tx_side = held.tx_side,
                "closing port still holds UMEM frames the kernel did not give back"
            );
        }
    }
}

impl Drop for AfxdpPort {
    fn drop(&mut self) {
        for socket in &self.sockets {
            if let Ok(st) = socket.statistics() {
                tracing::debug!(port = self.name, queue = socket.queue_id(), stats = ?st, "kernel AF_XDP statistics");
            }
        }
        for socket in &self.sockets {
            let _ = self.attachment.unregister_socket(socket.queue_id());
        }
        if self.attached_here {
            match steer::detach(&self.pins, &self.ifname) {
                Ok(()) => tracing::info!(ifname = self.ifname, "detached steer"),
                Err(e) => tracing::warn!(ifname = self.ifname, "detaching steer: {e}"),
            }
        }
    }
}

/// An attachment already exists on `ifname`. If a `dataplane run` that is no
/// longer alive made it (killed with SIGKILL, crashed), it is taken over
/// (fast path off, stale FDB gone) and this run will detach it on exit:
/// returns true. A user's attachment is used as is: false. Another running
/// switch: an error.
fn take_over_if_orphaned(pins: &PinRoot, ifname: &str) -> Result<bool, steer::Error> {
    let mut attachment = Attachment::open(pins, ifname)?;
    let owner = attachment.owner_pid()?;
    if owner == 0 {
        return Ok(false);
    }
    if owner != std::process::id() && process_alive(owner) {
        return Err(steer::Error::InUse {
            ifname: ifname.to_string(),
            pid: owner,
        });
    }
    tracing::warn!(
        ifname,
        pid = owner,
        "steer on {ifname} was left by a dataplane run (pid {owner}) that did not exit cleanly; taking it over"
    );
    attachment.disable_fast_path()?;
    Ok(true)
}

/// True if `pid` is a live dataplane process (not a reused pid).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == "dataplane")
}
