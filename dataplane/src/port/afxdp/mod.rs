//! AF_XDP port: the netdev runs `steer`, which redirects the frames the
//! switch wants into one AF_XDP socket per configured rx queue.
//!
//! In copy mode the sockets of all AF_XDP ports share the PMD thread's
//! UMEM, so a frame received here and sent out of another AF_XDP port is
//! never copied in userspace: only its descriptor moves from our RX ring to
//! their TX ring. A port bound zero-copy has a UMEM of its own, and frames
//! cross its edge by one copy ([`zero_copy`]).
//!
//! Opening the port (steer, sockets), its per-burst calls and its closing
//! all keep the same frame accounting, so they stay in this one file.

mod zero_copy;

use std::os::fd::RawFd;
use std::sync::Arc;

use dataplane_common::checksum;
use dataplane_common::wire::{ETH_HLEN, FRAME_HEADROOM, VLAN_HLEN};
use thiserror::Error;

use super::veth::{punt_mtu, Punt};
use super::{DropReason, Frames, HeldFrames, Port, PortCounters};
use crate::steer::pins::PinRoot;
use crate::steer::{
    self, policy::PolicySpec, AttachOptions, AttachReport, Attachment, ModeRequest,
};
use crate::sys::netdev::{self, ZeroCopyOutlook};
use crate::xsk::{self, BindMode, BoundMode, SocketConfig, Umem, UmemConfig, XdpDesc, XskSocket};
use zero_copy::ZeroCopyEdge;

#[derive(Debug, Error)]
pub enum Error {
    #[error("AF_XDP port on {ifname}: {source}")]
    Interface {
        ifname: String,
        source: crate::sys::netdev::Error,
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
    /// Entries of steer's fast-path FDB map if steer has to be attached.
    pub fdb_entries: u32,
    /// Another part of this port (its other queues, on another PMD) has
    /// attached steer: use that attachment, and leave detaching to it.
    pub join: bool,
    /// The switch's port slots (steer's port maps are sized from them).
    pub max_ports: u32,
    /// Which frames steer hands to the port: all of them, or (a VXLAN
    /// port's underlay) only those the match table lists, the rest staying
    /// the kernel's.
    pub policy: PolicySpec,
}

/// How to open a container port (see [`super::veth`]).
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The host end of the container's veth.
    pub ifname: String,
    /// The port's switch slot: its queue on the punt device.
    pub slot: u32,
    /// Socket options.
    pub socket: SocketConfig,
    /// How many frames to keep in the receive socket's fill ring.
    pub fill_frames: u32,
    /// Entries of steer's fast-path FDB map if steer has to be attached.
    pub fdb_entries: u32,
    /// The switch's port slots (steer's port maps are sized from them).
    pub max_ports: u32,
}

/// Bytes of a frame beyond the MTU: Ethernet header and one 802.1Q tag the
/// switch may push.
const L2_OVERHEAD: u32 = (ETH_HLEN + VLAN_HLEN) as u32;

/// The largest MTU a port on a UMEM of `frame_size`-byte frames can carry.
pub fn max_mtu(frame_size: u32) -> u32 {
    frame_size - FRAME_HEADROOM as u32 - L2_OVERHEAD
}

/// Refuses an interface the port could not serve: missing, an MTU whose
/// frames do not fit a UMEM frame (they would be dropped by the kernel, one
/// by one, without a word), or a queue it does not have.
pub fn check_interface(ifname: &str, queues: &[u32], frame_size: u32) -> Result<(), Error> {
    check_interface_mtu(ifname, queues, frame_size, max_mtu(frame_size))
}

fn check_interface_mtu(
    ifname: &str,
    queues: &[u32],
    frame_size: u32,
    max: u32,
) -> Result<(), Error> {
    let iface_err = |source| Error::Interface {
        ifname: ifname.to_string(),
        source,
    };
    let mtu = netdev::mtu(ifname).map_err(iface_err)?;
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
    /// Transmit goes through the first; receive round-robins over those
    /// that receive.
    sockets: Vec<PortSocket>,
    /// Next socket to receive from (round robin over queues).
    next_rx: usize,
    counters: Arc<PortCounters>,
    attachment: Attachment,
    /// A container port's receive side on the switch's punt device.
    punt: Option<Arc<Punt>>,
    /// True if this port attached steer (and so detaches it on drop).
    attached_here: bool,
    /// The kernel's drop totals of this port's sockets at the last look
    /// (rx dropped or ring full, invalid descriptors): the counters get
    /// the growth, so that the parts of one port add up.
    kernel_drops_seen: (u64, u64),
    pins: PinRoot,
    bound: BoundMode,
    /// A zero-copy port's own UMEM (its sockets' frames live there, not in
    /// the PMD's); `None` in copy mode.
    edge: Option<ZeroCopyEdge>,
    /// Keeps the interface promiscuous while the port takes all its frames
    /// (`None` for a tunnel's underlay and a container port).
    _promiscuous: Option<netdev::Promiscuous>,
}

/// Frames a receive socket's fill ring starts with (see
/// [`PortSocket::fill_frames`]).
const FILL_START: u32 = 64;

/// One AF_XDP socket of a port and what it is for.
struct PortSocket {
    socket: XskSocket,
    /// Frames handed to its fill ring and not yet received back.
    in_fill: u64,
    /// Frames to keep in its fill ring now; 0 for a transmit-only socket.
    /// Its full share (`fill_max`) while the PMD's free list holds more
    /// than half its frames; else it starts small and doubles, up to its
    /// share, each time traffic nearly empties the ring. So a PMD with
    /// many idle ports (a host's containers) does not lend all its frames
    /// to the first few, and the busy ones still get what they need.
    fill_frames: u32,
    /// Its share of the PMD's frames: the most `fill_frames` grows to.
    fill_max: u32,
    /// Where steer hands it frames: the XSKMAP index, in the port's own
    /// attachment or (container ports) the punt device's.
    rx: Option<RxSlot>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RxSlot {
    Own(u32),
    Punt(u32),
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
        let (attachment, attached_here) = if config.join {
            let attachment = Attachment::open(pins, &ifname).map_err(|source| Error::Steer {
                ifname: ifname.clone(),
                source: Box::new(source),
            })?;
            (attachment, false)
        } else {
            let sizes = SteerSizes {
                fdb_entries: config.fdb_entries,
                ports: config.max_ports,
                queues: config.queues.iter().max().map_or(0, |q| q + 1),
            };
            attach_steer(pins, &ifname, config.attach_mode, &sizes, &config.policy)?
        };
        if attached_here && netdev::is_veth_to_other_netns(&ifname).unwrap_or(false) {
            // The kernel's rule for veth, undone when steer is detached.
            if config.policy == PolicySpec::redirect_all() {
                tracing::info!(
                    ifname,
                    "native XDP on {ifname} turns TSO off on its other end until this port closes; \
                     for a container's veth, `veth:{ifname}` keeps the container's offloads"
                );
            } else {
                tracing::info!(
                    ifname,
                    "native XDP on {ifname} turns TSO off on its other end until this port closes"
                );
            }
        }
        let mut port = AfxdpPort::new(
            format!("afxdp:{ifname}"),
            &ifname,
            counters,
            (attachment, attached_here),
            None,
            pins,
        );
        // From here, dropping `port` unregisters and detaches what was made.
        if config.policy == PolicySpec::redirect_all() {
            // Frames for the MACs behind the port, not only the NIC's own.
            port._promiscuous =
                Some(
                    netdev::promiscuous(&ifname).map_err(|source| Error::Interface {
                        ifname: ifname.clone(),
                        source,
                    })?,
                );
        }
        let try_zero_copy = match (config.socket.bind, netdev::zero_copy_outlook(&ifname)) {
            (BindMode::Copy, _) | (BindMode::Auto, ZeroCopyOutlook::Absent) => false,
            (BindMode::Auto, ZeroCopyOutlook::Unsound(why)) => {
                tracing::info!(
                    port = port.name,
                    "not trying zero-copy on {ifname}, using copy mode: {why} \
                     (bind=zerocopy uses it anyway)"
                );
                false
            }
            (BindMode::ZeroCopy, ZeroCopyOutlook::Unsound(why)) => {
                tracing::warn!(port = port.name, "zero-copy on {ifname}, as asked: {why}");
                true
            }
            (BindMode::ZeroCopy, _) | (BindMode::Auto, ZeroCopyOutlook::Possible) => true,
        };
        if try_zero_copy {
            match port.open_zero_copy(config, umem) {
                Ok(()) => {}
                Err(e) if config.socket.bind == BindMode::Auto => {
                    tracing::info!(
                        port = port.name,
                        "zero-copy not available on {ifname}, using copy mode: {e}"
                    );
                    port.close_sockets();
                    port.edge = None;
                }
                Err(e) => return Err(e),
            }
        }
        if port.edge.is_none() {
            port.add_queue_sockets(umem, &config.queues, config)?;
        }
        port.counters.set_afxdp_mode(port.bound);
        tracing::info!(
            port = port.name,
            queues = ?config.queues,
            mode = %port.bound,
            "AF_XDP port open{}",
            match &port.edge {
                None => " (copy mode: the PMD's UMEM is shared by all its ports in copy mode)".to_string(),
                Some(edge) => format!(
                    " (zero-copy: a UMEM of its own, {} frames; frames are copied once to and from the PMD's)",
                    edge.frame_count()
                ),
            }
        );
        Ok(port)
    }

    /// Opens a container port (see [`super::veth`]): steer in generic mode
    /// on the host end, punting frames for the switch to `punt`, a socket
    /// on `punt`'s rx queue `slot` to receive them and one on the host end
    /// to transmit.
    pub fn open_container(
        config: &ContainerConfig,
        umem: &Arc<Umem>,
        pins: &PinRoot,
        punt: Arc<Punt>,
        counters: Arc<PortCounters>,
    ) -> Result<AfxdpPort, Error> {
        let ifname = config.ifname.clone();
        let frame_size = umem.frame_size();
        check_interface_mtu(&ifname, &[0], frame_size, punt_mtu(frame_size))?;
        let sizes = SteerSizes {
            fdb_entries: config.fdb_entries,
            ports: config.max_ports,
            queues: 1,
        };
        let (attachment, attached_here) = attach_steer(
            pins,
            &ifname,
            ModeRequest::Tc,
            &sizes,
            &PolicySpec::redirect_all(),
        )?;
        let mut port = AfxdpPort::new(
            format!("veth:{ifname}"),
            &ifname,
            counters,
            (attachment, attached_here),
            Some(punt.clone()),
            pins,
        );
        // From here, dropping `port` unregisters and detaches what was made.
        port.add_socket(umem, &ifname, 0, &config.socket, 0, None)?;
        port.add_socket(
            umem,
            punt.rx_ifname(),
            config.slot,
            &config.socket,
            config.fill_frames,
            Some(RxSlot::Punt(config.slot)),
        )?;
        // Only now that the socket is there to take them.
        port.attachment
            .set_punt(Some((punt.tx_ifindex(), config.slot)))
            .map_err(|source| Error::Steer {
                ifname: ifname.clone(),
                source: Box::new(source),
            })?;
        tracing::info!(
            port = port.name,
            punt_queue = config.slot,
            "container port open: the container keeps its offloads; frames for the switch \
             arrive through {} queue {}",
            punt.rx_ifname(),
            config.slot
        );
        Ok(port)
    }

    /// A port with no socket yet, on `attachment` (and whether this port
    /// made it, and so detaches it): sockets are added next, and dropping
    /// it undoes what was made.
    fn new(
        name: String,
        ifname: &str,
        counters: Arc<PortCounters>,
        (attachment, attached_here): (Attachment, bool),
        punt: Option<Arc<Punt>>,
        pins: &PinRoot,
    ) -> AfxdpPort {
        AfxdpPort {
            name,
            ifname: ifname.to_string(),
            sockets: Vec::new(),
            next_rx: 0,
            counters,
            attachment,
            punt,
            attached_here,
            kernel_drops_seen: (0, 0),
            pins: pins.clone(),
            bound: BoundMode::Copy,
            edge: None,
            _promiscuous: None,
        }
    }

    /// Binds the port's queues zero-copy, on a UMEM of the port's own
    /// (see [`zero_copy`]): the first queue's socket registers it, the
    /// others share it.
    fn open_zero_copy(&mut self, config: &AfxdpConfig, pmd_umem: &Umem) -> Result<(), Error> {
        let Some((&first, rest)) = config.queues.split_first() else {
            return Ok(());
        };
        // Every fill ring full, a full TX ring, and a burst in hand.
        let frame_count = config.fill_frames * config.queues.len() as u32
            + config.socket.tx_size
            + config.socket.rx_size.min(256);
        let umem_config = UmemConfig {
            frame_count,
            ..*pmd_umem.config()
        };
        let (edge, socket) = ZeroCopyEdge::open(umem_config, &self.ifname, first, &config.socket)
            .map_err(|source| Error::Socket {
            ifname: self.ifname.clone(),
            queue: first,
            source,
        })?;
        let umem = Arc::clone(edge.umem());
        self.edge = Some(edge);
        self.push_socket(socket, config.fill_frames, Some(RxSlot::Own(first)))?;
        self.add_queue_sockets(&umem, rest, config)
    }

    /// Opens and registers a receiving socket on each of `queues` of the
    /// port's interface, on `umem`.
    fn add_queue_sockets(
        &mut self,
        umem: &Arc<Umem>,
        queues: &[u32],
        config: &AfxdpConfig,
    ) -> Result<(), Error> {
        let ifname = self.ifname.clone();
        for &queue in queues {
            self.add_socket(
                umem,
                &ifname,
                queue,
                &config.socket,
                config.fill_frames,
                Some(RxSlot::Own(queue)),
            )?;
        }
        Ok(())
    }

    /// Opens a socket on `ifname` queue `queue` for this port and, if it
    /// receives, registers it where steer looks for it.
    fn add_socket(
        &mut self,
        umem: &Arc<Umem>,
        ifname: &str,
        queue: u32,
        config: &SocketConfig,
        fill_frames: u32,
        rx: Option<RxSlot>,
    ) -> Result<(), Error> {
        let socket =
            XskSocket::new(umem, ifname, queue, config).map_err(|source| Error::Socket {
                ifname: ifname.to_string(),
                queue,
                source,
            })?;
        self.push_socket(socket, fill_frames, rx)
    }

    /// Takes `socket` into the port and, if it receives, registers it where
    /// steer looks for it.
    fn push_socket(
        &mut self,
        socket: XskSocket,
        fill_frames: u32,
        rx: Option<RxSlot>,
    ) -> Result<(), Error> {
        if self.sockets.is_empty() {
            self.bound = socket.bound_mode();
        }
        let registered = match rx {
            Some(slot) => self.xskmap(slot, Some(socket.fd())),
            None => Ok(()),
        };
        // Pushed first, so that a failed registration is undone on drop.
        self.sockets.push(PortSocket {
            socket,
            in_fill: 0,
            // A zero-copy port's frames are its own: no need to start small.
            fill_frames: if self.edge.is_some() {
                fill_frames
            } else {
                fill_frames.min(FILL_START)
            },
            fill_max: fill_frames,
            rx,
        });
        registered
    }

    /// Registers (`Some(fd)`) or unregisters a socket in steer's XSKMAP.
    fn xskmap(&mut self, slot: RxSlot, fd: Option<RawFd>) -> Result<(), Error> {
        let (attachment, ifname, queue) = match (slot, &self.punt) {
            (RxSlot::Own(q), _) => (&mut self.attachment, self.ifname.as_str(), q),
            (RxSlot::Punt(q), Some(punt)) => {
                let mut guard = punt.attachment();
                let result = match fd {
                    Some(fd) => guard.register_socket(q, fd),
                    None => guard.unregister_socket(q),
                };
                return result.map_err(|source| Error::Steer {
                    ifname: punt.rx_ifname().to_string(),
                    source: Box::new(source),
                });
            }
            (RxSlot::Punt(_), None) => return Ok(()),
        };
        let result = match fd {
            Some(fd) => attachment.register_socket(queue, fd),
            None => attachment.unregister_socket(queue),
        };
        result.map_err(|source| Error::Steer {
            ifname: ifname.to_string(),
            source: Box::new(source),
        })
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
            let s = &mut self.sockets[i];
            if s.rx.is_none() {
                continue;
            }
            let before = out.len();
            let n = match self.edge.as_mut() {
                None => s.socket.recv(out, (max - got) as u32) as usize,
                Some(edge) => {
                    let r = edge.receive(&mut s.socket, frames, out, (max - got) as u32);
                    if r.no_free_frame > 0 {
                        self.counters
                            .add_drop(DropReason::NoFreeFrame, r.no_free_frame);
                    }
                    if r.too_big > 0 {
                        self.counters.add_drop(DropReason::TooBig, r.too_big);
                    }
                    r.taken as usize
                }
            };
            s.in_fill -= n as u64;
            if s.in_fill * 4 <= s.fill_frames as u64 && n > 0 {
                // Traffic took three quarters of the ring since the last
                // refill: give it more room.
                s.fill_frames = (s.fill_frames * 2).min(s.fill_max);
            }
            let mut bytes = 0u64;
            let mut completed = 0u64;
            // (A zero-copy port's frames were copied into PMD frames: the
            // same finishing applies to those.)
            for d in &out[before..] {
                bytes += d.len as u64;
                // XDP hands over bytes, not the skb's "checksum left to the
                // device" mark: finish such checksums here, once, so every
                // egress (another AF_XDP port, a TAP, a guest) gets a frame
                // its receiver accepts. See dataplane_common::checksum.
                // SAFETY: the descriptor was just taken off the RX ring, so
                // the engine is the frame's only holder.
                let frame = unsafe { frames.umem.frame_mut(d.addr, d.len as usize) };
                completed += checksum::complete_partial(frame) as u64;
            }
            self.counters.add_rx((out.len() - before) as u64, bytes);
            if completed > 0 {
                self.counters.add_checksums_completed(completed);
            }
            got += n;
            if got >= max {
                break;
            }
        }
        got
    }

    fn tx_burst(&mut self, frames: &mut Frames<'_>, batch: &mut Vec<XdpDesc>) {
        if batch.is_empty() {
            return;
        }
        // One TX socket per port: queue selection on TX does not matter for
        // veth and keeps completion handling in one place.
        let socket = &mut self.sockets[0].socket;
        let n = match self.edge.as_mut() {
            None => socket.send(batch) as usize,
            Some(edge) => edge.send(socket, frames, batch),
        };
        let bytes: u64 = batch[..n].iter().map(|d| d.len as u64).sum();
        self.counters.add_tx(n as u64, bytes);
        batch.drain(..n);
        socket.kick_tx();
    }

    fn maintain(&mut self, frames: &mut Frames<'_>) {
        for s in &mut self.sockets {
            let socket = &mut s.socket;
            // The frames the sockets lend and get back: the PMD's, or a
            // zero-copy port's own.
            let (pool, own) = match self.edge.as_mut() {
                None => (&mut *frames.pool, false),
                Some(edge) => (edge.pool(), true),
            };
            socket.complete(pool, u32::MAX);
            // Copy mode sends at most a few dozen frames per kick: keep
            // kicking while frames wait in the TX ring.
            if socket.outstanding_tx() > 0 {
                socket.kick_tx();
            }
            if s.rx.is_none() {
                continue;
            }
            if s.fill_frames < s.fill_max && (own || pool.len() > pool.capacity() / 2) {
                s.fill_frames = s.fill_max;
            }
            let want = (s.fill_frames as u64).saturating_sub(s.in_fill);
            if want >= 16 || s.in_fill == 0 {
                let n = socket.fill(pool, want as u32);
                s.in_fill += n as u64;
            }
            if socket.fill_needs_wakeup() {
                socket.wakeup_rx();
            }
        }
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        self.sockets
            .iter()
            .filter(|s| s.rx.is_some())
            .map(|s| s.socket.fd())
            .collect()
    }

    fn frames_held(&self) -> HeldFrames {
        if self.edge.is_some() {
            // Its sockets hold the port's own frames, none of the PMD's.
            return HeldFrames::default();
        }
        HeldFrames {
            rx_side: self.sockets.iter().map(|s| s.in_fill).sum(),
            tx_side: self
                .sockets
                .iter()
                .map(|s| s.socket.outstanding_tx() as u64)
                .sum(),
        }
    }

    fn refresh_counters(&mut self) {
        let (mut rx_kernel, mut invalid) = (0, 0);
        for st in self
            .sockets
            .iter()
            .filter_map(|s| s.socket.statistics().ok())
        {
            rx_kernel += st.rx_dropped + st.rx_ring_full;
            invalid += st.rx_invalid_descs + st.tx_invalid_descs;
        }
        let (seen_rx, seen_invalid) = self.kernel_drops_seen;
        self.counters
            .add_drop(DropReason::RxKernel, rx_kernel.saturating_sub(seen_rx));
        self.counters.add_drop(
            DropReason::InvalidDescriptor,
            invalid.saturating_sub(seen_invalid),
        );
        self.kernel_drops_seen = (rx_kernel.max(seen_rx), invalid.max(seen_invalid));
    }

    fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }

    fn release_frames(&mut self, frames: &mut Frames<'_>) {
        // Out of the XSKMAP first: steer then passes this port's frames to
        // the kernel, so nothing new lands in the RX rings. What is already
        // there, and what was sent and completed, is ours: take it back.
        // Frames still in the kernel's hands (fill ring, unsent, in flight)
        // stay lent until `close` unbinds the sockets: handing them to the
        // pool before that would give one frame two owners.
        self.unregister_all();
        let mut received = Vec::with_capacity(64);
        let pool = match self.edge.as_mut() {
            None => &mut *frames.pool,
            Some(edge) => edge.pool(),
        };
        for s in &mut self.sockets {
            loop {
                received.clear();
                let n = s.socket.recv(&mut received, 64);
                if n == 0 {
                    break;
                }
                for d in &received {
                    pool.free(d.addr);
                }
                s.in_fill = s.in_fill.saturating_sub(n as u64);
            }
            s.socket.complete(pool, u32::MAX);
        }
    }

    fn close(mut self: Box<Self>) -> Vec<u64> {
        let lent = self.close_sockets();
        drop(self);
        lent
    }
}

impl AfxdpPort {
    /// Unregisters and closes every socket (each close unbinds it and waits
    /// until the kernel is done with it); returns the PMD frames they had
    /// lent to the kernel, now free. Leaves the port with no sockets.
    fn close_sockets(&mut self) -> Vec<u64> {
        self.unregister_all();
        let had_sockets = !self.sockets.is_empty();
        let mut lent = Vec::new();
        for s in self.sockets.drain(..) {
            if let Ok(st) = s.socket.statistics() {
                tracing::debug!(port = self.name, queue = s.socket.queue_id(), stats = ?st, "kernel AF_XDP statistics");
            }
            lent.extend(s.socket.close());
        }
        let Some(edge) = self.edge.as_mut() else {
            return lent;
        };
        // A zero-copy port's sockets lent its own frames: back to its own
        // free list (its UMEM goes with the port, which unbinds its first
        // socket), none to the PMD. Checked once, when the sockets close.
        for addr in lent {
            edge.pool().free(addr);
        }
        if had_sockets {
            match edge.unaccounted() {
                0 => tracing::info!(
                    port = self.name,
                    "zero-copy UMEM: all {} frames accounted for",
                    edge.frame_count()
                ),
                lost => tracing::warn!(
                    port = self.name,
                    "zero-copy UMEM: {lost} of {} frames unaccounted",
                    edge.frame_count()
                ),
            }
        }
        Vec::new()
    }

    /// Takes every receiving socket out of steer's XSKMAP.
    fn unregister_all(&mut self) {
        let slots: Vec<RxSlot> = self.sockets.iter().filter_map(|s| s.rx).collect();
        for slot in slots {
            let _ = self.xskmap(slot, None);
        }
    }
}

impl Drop for AfxdpPort {
    fn drop(&mut self) {
        // Closed without `close` (the switch is stopping, the pool goes
        // too): the frames the kernel held need no home.
        self.close_sockets();
        // A zero-copy port's UMEM goes before steer: its release unbinds the
        // first socket and takes the pool off the driver's queue, the
        // reverse of opening (steer attached, then the pool bound).
        self.edge = None;
        if self.punt.is_some() && !self.attached_here {
            // A user's attachment: hand its frames back to its own sockets.
            let _ = self.attachment.set_punt(None);
        }
        if self.attached_here {
            match steer::detach(&self.pins, &self.ifname) {
                Ok(()) => tracing::info!(ifname = self.ifname, "detached steer"),
                Err(e) => tracing::warn!(ifname = self.ifname, "detaching steer: {e}"),
            }
        }
    }
}

/// Sizes of the maps of a steer this port attaches.
struct SteerSizes {
    fdb_entries: u32,
    ports: u32,
    /// The highest queue index it uses, plus one.
    queues: u32,
}

/// Attaches steer to `ifname` (everything to the switch) unless it is
/// there already (a user's, or one a killed run left, which is taken
/// over); returns the attachment and whether this port made or took it
/// (and so detaches it when it closes).
fn attach_steer(
    pins: &PinRoot,
    ifname: &str,
    mode: ModeRequest,
    sizes: &SteerSizes,
    policy: &PolicySpec,
) -> Result<(Attachment, bool), Error> {
    let steer_err = |source| Error::Steer {
        ifname: ifname.to_string(),
        source: Box::new(source),
    };
    // Pins whose program is no longer on the interface (it was re-created
    // since, e.g. a container restarted while no switch ran) are stale:
    // `attach` replaces them rather than taking them over.
    let attached_here = if steer::is_attached(pins, ifname).map_err(steer_err)? {
        take_over_if_orphaned(pins, ifname).map_err(steer_err)?
    } else {
        let report = steer::attach(
            pins,
            &AttachOptions {
                fdb_entries: sizes.fdb_entries,
                ports: sizes.ports,
                queues: sizes.queues.max(dataplane_common::MAX_QUEUES),
                ..AttachOptions::new(ifname, mode, policy.clone())
            },
        )
        .map_err(steer_err)?;
        if let AttachReport::Attached { mode, .. } = report {
            tracing::info!(ifname, mode = mode.name(), "attached steer");
        }
        true
    };
    let mut attachment = Attachment::open(pins, ifname).map_err(steer_err)?;
    if *policy != PolicySpec::redirect_all() {
        // Steer found attached (a user's, or a killed run's) may steer
        // everything: what is not listed must stay the kernel's.
        attachment.set_policy(policy).map_err(steer_err)?;
    }
    if attached_here {
        // Mark it ours, so that if this process is killed the next run
        // knows the attachment was left behind, not made by a user.
        attachment
            .set_owner_pid(std::process::id())
            .map_err(steer_err)?;
    }
    Ok((attachment, attached_here))
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
