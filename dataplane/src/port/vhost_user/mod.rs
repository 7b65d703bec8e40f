//! vhost-user port: a VM (QEMU, or DPDK's virtio_user) connects to a unix
//! socket the switch listens on and shares its memory; the switch is the
//! virtio-net device. No kernel in the data path: frames are copied between
//! the guest's virtqueues and UMEM frames by the PMD thread.
//!
//! - `backend`: the socket and the vhost-user protocol (own thread).
//! - `relay`: holds back a SET_VRING_ENABLE that QEMU sends too early.
//! - `virtq`: virtqueue chains to frames and back, with the checks a
//!   hostile guest needs.
//! - this file: the [`Port`] the engine drives.
//!
//! The port is up while a frontend is connected and has enabled its rings;
//! otherwise frames toward it are dropped (counted as `port_down`) and
//! the switch carries on. A frontend that reconnects gets a fresh device.

pub mod backend;
mod relay;
mod relay_gate;
#[cfg(test)]
mod tests;
pub mod virtq;

use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane_common::wire::FRAME_HEADROOM;
use vhost_user_backend::{VringState, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryMmap, Permissions};

use self::backend::{Link, Server, RX_QUEUE, TX_QUEUE};
use self::virtq::{ChainError, RxPush, RxScratch, Segment, TxPop};
use super::offload::{self, SpillBuffer, VnetHdr};
use super::{DropReason, Frames, HeldFrames, Port, PortCounters, PortState};
use crate::sys::private_socket::SocketOwner;
use crate::xsk::XdpDesc;

pub use self::backend::Error;

/// An open vhost-user port.
pub struct VhostUserPort {
    /// `vhost-user:/path`.
    name: String,
    server: Server,
    /// The connection the PMD works with, re-read when the generation moves.
    link: Option<Link>,
    generation: u64,
    /// Whether the port was last seen up (for the up/down log lines).
    up: bool,
    segs: Vec<Segment>,
    rx_scratch: RxScratch,
    /// Where a guest's super-frames are read past their first UMEM frame.
    spill: SpillBuffer,
    /// The guest's transmit and receive rings, when their available index
    /// is broken (see [`virtq::pending`]).
    tx_stall: Stall,
    rx_stall: Stall,
    counters: Arc<PortCounters>,
}

impl VhostUserPort {
    /// Listens on `path` for a vhost-user frontend; `owner` may connect
    /// too (libvirt runs QEMU as its own user).
    pub fn open(
        path: &Path,
        owner: Option<&SocketOwner>,
        counters: Arc<PortCounters>,
    ) -> Result<VhostUserPort, Error> {
        let name = format!("vhost-user:{}", path.display());
        let server = Server::start(path, &name, owner)?;
        // Down until a frontend connects and enables its rings.
        counters.set_state(PortState::Down);
        tracing::info!(port = name, "vhost-user port listening");
        Ok(VhostUserPort {
            name,
            server,
            link: None,
            generation: u64::MAX,
            up: false,
            segs: Vec::new(),
            rx_scratch: RxScratch::default(),
            spill: SpillBuffer::default(),
            tx_stall: Stall::default(),
            rx_stall: Stall::default(),
            counters,
        })
    }

    /// The socket path.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.name.trim_start_matches("vhost-user:"))
    }

    /// Picks up a new or vanished connection. Costs one atomic load when
    /// nothing changed (no syscall per burst).
    fn refresh_link(&mut self) {
        let shared = self.server.shared();
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            // The wakeup was written before the generation moved: drained
            // here, it cannot stay readable and keep an idle PMD awake.
            let _ = shared.wake.read();
            self.generation = generation;
            self.link = shared.link();
        }
    }

    /// Whether mergeable receive buffers were negotiated; `None` when the
    /// frontend did not accept VIRTIO_F_VERSION_1: a legacy driver expects
    /// a 10-byte header, and the port does not serve it (stays down).
    fn negotiated(&self) -> Option<bool> {
        let acked = self.server.shared().acked.load(Ordering::Acquire);
        (acked & (1 << VIRTIO_F_VERSION_1) != 0)
            .then_some(acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0)
    }

    /// Whether the guest negotiated checksum offload (and with it, TSO):
    /// its transmit headers may then ask the switch to finish checksums
    /// and cut super-frames.
    fn guest_offloads(&self) -> bool {
        let acked = self.server.shared().acked.load(Ordering::Acquire);
        acked & (1 << VIRTIO_NET_F_CSUM) != 0
    }

    fn note_state(&mut self, up: bool) {
        if up != self.up {
            self.up = up;
            // `show ports`, `stats` and metrics say whether a guest is there.
            self.counters
                .set_state(if up { PortState::Up } else { PortState::Down });
            tracing::info!(
                port = self.name,
                "vhost-user port {}",
                if up { "up" } else { "down" }
            );
        }
    }
}

/// A vring the device may use now: started, enabled, and its rings inside
/// guest memory. Looked at under the same lock guard as the work that
/// follows: the protocol thread stops a ring (GET_VRING_BASE) under the
/// vring's lock, so a ring seen usable stays so until the guard drops.
fn usable(state: &VringState, mem: &GuestMemoryMmap) -> bool {
    let q = state.get_queue();
    let ok = state.is_enabled() && q.ready() && rings_in_memory(q, mem);
    if !ok {
        tracing::trace!(
            enabled = state.is_enabled(),
            ready = q.ready(),
            size = q.size(),
            desc = q.desc_table(),
            avail = q.avail_ring(),
            used = q.used_ring(),
            "vring not usable"
        );
    }
    ok
}

/// The three rings of a split queue lie inside guest memory (VIRTIO 1.2,
/// 2.7: 16 bytes per descriptor; avail 6 + 2 per entry; used 6 + 8 per
/// entry). `Queue::is_valid` checks the same, but logs an error each time
/// a frontend is caught halfway through setting a ring up.
fn rings_in_memory(q: &Queue, mem: &GuestMemoryMmap) -> bool {
    let n = usize::from(q.size());
    n > 0
        && [
            (q.desc_table(), 16 * n),
            (q.avail_ring(), 6 + 2 * n),
            (q.used_ring(), 6 + 8 * n),
        ]
        .iter()
        .all(|&(addr, len)| mem.check_range(GuestAddress(addr), len, Permissions::ReadWrite))
}

impl Port for VhostUserPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, frames: &mut Frames<'_>, out: &mut Vec<XdpDesc>, max: usize) -> usize {
        self.refresh_link();
        // Drain the passed-on kicks (one syscall per kick episode, not per
        // burst); the ring is read below in any case.
        let shared = self.server.shared();
        if shared.kick_pending.swap(false, Ordering::AcqRel) {
            let _ = shared.kicked.read();
        }
        let Some(link) = self.link.clone() else {
            self.note_state(false);
            return 0;
        };
        let mem = link.mem.memory();
        let negotiated = self.negotiated().is_some();
        let rx_usable = usable(&link.vrings[RX_QUEUE].get_ref(), mem.deref());
        let mut state = link.vrings[TX_QUEUE].get_mut();
        let tx_usable = negotiated && usable(&state, mem.deref());
        self.note_state(tx_usable && rx_usable);
        if !tx_usable {
            return 0;
        }
        let offloads = self.guest_offloads();
        let mut sink = PortTxSink {
            frame_room: frames.umem.frame_size() as usize - FRAME_HEADROOM,
            frames,
            out,
            chunk: None,
            offloads,
            spill: &mut self.spill,
            name: &self.name,
            counters: &self.counters,
            stall: &mut self.tx_stall,
            got: 0,
            bytes: 0,
            malformed: 0,
            invalid: 0,
        };
        let returned = virtq::tx_burst(
            state.get_queue_mut(),
            mem.deref(),
            &mut self.segs,
            max,
            &mut sink,
        );
        let PortTxSink {
            got,
            bytes,
            malformed,
            invalid,
            ..
        } = sink;
        if returned > 0 && state.needs_notification().unwrap_or(true) {
            let _ = state.signal_used_queue();
        }
        drop(state);
        self.counters.add_rx(got as u64, bytes);
        self.counters.add_drop(DropReason::Malformed, malformed);
        self.counters
            .add_drop(DropReason::InvalidDescriptor, invalid);
        got
    }

    fn tx_burst(&mut self, frames: &mut Frames<'_>, batch: &mut Vec<XdpDesc>) {
        self.refresh_link();
        let Some(link) = self.link.clone() else {
            // Down: the frames stay in `batch`, the engine drops and counts them.
            return;
        };
        let mem = link.mem.memory();
        let Some(mergeable) = self.negotiated() else {
            return;
        };
        let mut state = link.vrings[RX_QUEUE].get_mut();
        if !usable(&state, mem.deref()) {
            return;
        }
        let (mut done, mut sent, mut bytes, mut used) = (0usize, 0u64, 0u64, false);
        let (mut malformed, mut invalid) = (0u64, 0u64);
        for desc in batch.iter() {
            let data = frames.umem.frame(desc.addr, desc.len as usize);
            let o = virtq::push_rx_frame(
                state.get_queue_mut(),
                mem.deref(),
                data,
                mergeable,
                &mut self.rx_scratch,
            );
            if o.bad_chains > 0 {
                used = true;
                invalid += u64::from(o.bad_chains);
                if let Some(e) = o.last_error {
                    tracing::debug!(port = self.name, "guest receive chain refused: {e}");
                }
            }
            if !matches!(o.push, RxPush::Stalled(_)) {
                self.rx_stall.clear(&self.name, "receive");
            }
            match o.push {
                RxPush::NoBuffers => break,
                RxPush::Stalled(e) => {
                    invalid += self.rx_stall.enter(&self.name, "receive", &e);
                    break;
                }
                RxPush::Delivered { .. } => {
                    sent += 1;
                    bytes += u64::from(desc.len);
                }
                RxPush::Dropped(e) => count_refused(&self.name, &e, &mut malformed, &mut invalid),
            }
            used = true;
            // Copied (or dropped for good): the frame is free again at once.
            frames.pool.free(desc.addr);
            done += 1;
        }
        batch.drain(..done);
        if used && state.needs_notification().unwrap_or(true) {
            let _ = state.signal_used_queue();
        }
        drop(state);
        self.counters.add_tx(sent, bytes);
        self.counters.add_drop(DropReason::Malformed, malformed);
        self.counters
            .add_drop(DropReason::InvalidDescriptor, invalid);
    }

    fn maintain(&mut self, _frames: &mut Frames<'_>) {}

    fn poll_fds(&self) -> Vec<RawFd> {
        // Connection changes, and the guest's transmit kicks as passed on by
        // the protocol side (see `backend`): both stay readable until this
        // PMD drains them, so no kick is slept through.
        let shared = self.server.shared();
        vec![shared.wake.as_raw_fd(), shared.kicked.as_raw_fd()]
    }

    fn frames_held(&self) -> HeldFrames {
        // Copies are synchronous: a vhost-user port never holds frames.
        HeldFrames::default()
    }

    fn refresh_counters(&mut self) {}

    fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }
}

/// Whether a guest ring is stalled on a broken available index. The PMD
/// looks at the ring on every poll, so the fault is counted (one
/// `invalid_desc`) and logged when it starts, not on every look.
#[derive(Default)]
struct Stall {
    stalled: bool,
    /// When a stall was last logged; stalls are counted every time but
    /// logged at most once per [`STALL_LOG_EVERY`], so a guest toggling
    /// its avail index cannot flood the log from the PMD thread.
    last_logged: Option<Instant>,
    /// Stalls since the last logged one.
    unlogged: u64,
    /// The current stall was logged (so its end is too).
    logged: bool,
}

/// At most one stall line per ring this often.
const STALL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Stall {
    /// The ring is stalled by `e`; returns how many drops to count.
    fn enter(&mut self, port: &str, ring: &str, e: &ChainError) -> u64 {
        if std::mem::replace(&mut self.stalled, true) {
            return 0;
        }
        // Only on a transition, so the clock is read rarely.
        let now = Instant::now();
        self.logged = self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= STALL_LOG_EVERY);
        if self.logged {
            tracing::warn!(
                port,
                earlier = self.unlogged,
                "guest {ring} ring stalled: {e}; waiting for the guest to repair it{}",
                if self.unlogged > 0 {
                    format!(" ({} more stalls since the last report)", self.unlogged)
                } else {
                    String::new()
                }
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        1
    }

    /// The ring works again.
    fn clear(&mut self, port: &str, ring: &str) {
        if std::mem::replace(&mut self.stalled, false) && self.logged {
            tracing::info!(port, "guest {ring} ring works again");
        }
    }
}

/// The port's side of a transmit burst ([`virtq::tx_burst`]): UMEM frames
/// as buffers, frames to the engine, counts and stall state.
struct PortTxSink<'a, 'f> {
    frames: &'a mut Frames<'f>,
    out: &'a mut Vec<XdpDesc>,
    frame_room: usize,
    /// The frame handed out last, until its outcome is known.
    chunk: Option<u64>,
    /// The guest negotiated checksum offload and TSO (see `backend`).
    offloads: bool,
    spill: &'a mut SpillBuffer,
    name: &'a str,
    counters: &'a PortCounters,
    stall: &'a mut Stall,
    got: usize,
    bytes: u64,
    malformed: u64,
    invalid: u64,
}

impl virtq::TxSink for PortTxSink<'_, '_> {
    fn buffers(&mut self) -> Option<(&mut [u8], &mut [u8])> {
        let Some(chunk) = self.frames.pool.alloc() else {
            self.counters.add_drop(DropReason::NoFreeFrame, 1);
            return None;
        };
        self.chunk = Some(chunk);
        // SAFETY: `chunk` just came off the free list: this port is its
        // only holder until it hands the descriptor to the engine (or
        // frees it in `outcome`).
        let head = unsafe {
            self.frames
                .umem
                .frame_mut(chunk + FRAME_HEADROOM as u64, self.frame_room)
        };
        // A guest that negotiated TSO may send super-frames: their bytes
        // past the UMEM frame go here.
        let tail = match self.offloads {
            true => self.spill.tail(self.frame_room),
            false => &mut [],
        };
        Some((head, tail))
    }

    fn outcome(&mut self, popped: TxPop) {
        let Some(chunk) = self.chunk.take() else {
            return;
        };
        if !matches!(popped, TxPop::Stalled(_)) {
            self.stall.clear(self.name, "transmit");
        }
        match popped {
            TxPop::Frame(len, hdr) => {
                let hdr = VnetHdr::parse(&hdr);
                // Without negotiated offloads the header must say nothing;
                // a guest that asks anyway is refused, not obeyed.
                if !self.offloads && !hdr.is_plain() {
                    self.malformed += 1;
                    self.frames.pool.free(chunk);
                    return;
                }
                let d = offload::deliver(
                    self.frames,
                    offload::Written {
                        chunk,
                        headroom: FRAME_HEADROOM as u64,
                        len,
                    },
                    &hdr,
                    self.spill,
                    self.out,
                    self.counters,
                );
                self.got += d.frames;
                self.bytes += d.bytes;
                return;
            }
            TxPop::Refused(e) => {
                count_refused(self.name, &e, &mut self.malformed, &mut self.invalid);
            }
            TxPop::Stalled(e) => {
                self.invalid += self.stall.enter(self.name, "transmit", &e);
            }
            TxPop::Empty => {}
        }
        self.frames.pool.free(chunk);
    }
}

fn count_refused(name: &str, e: &ChainError, malformed: &mut u64, invalid: &mut u64) {
    if e.is_descriptor_error() {
        *invalid += 1;
    } else {
        *malformed += 1;
    }
    tracing::debug!(port = name, "guest chain refused: {e}");
}
