//! The poll-mode forwarding threads: one PMD's loop. Starting and stopping
//! them, and handing them ports, is [`super::pmds`].
//!
//! Each PMD thread owns a UMEM, its free list, a set of ports and its own
//! view of the switch ([`SwitchView`]: the port table and a copy of the
//! FDB), so it decides without any lock; what it learns goes to the slow
//! path as sightings, and the slow path's changes come back through the
//! inbox (`super::slow_path`). Each iteration runs to completion: apply
//! commands and view updates, take frames handed over by other PMDs,
//! receive a burst from each own port, decide per frame, transmit per
//! egress port, let the ports reclaim and refill. Nothing on this path
//! allocates, logs or makes a syscall per frame, and no FDB upkeep,
//! interface polling or fast-path work runs here.
//!
//! Frames between ports of one PMD move by descriptor (one UMEM, no copy).
//! A frame whose egress port belongs to another PMD is copied into one of
//! that PMD's handoff slots, and from there into its UMEM (`super::inbox`):
//! each UMEM has exactly one owner thread, which keeps the frame
//! accounting exact.
//!
//! Adaptive polling (default): after [`IDLE_SPINS`] empty iterations a PMD
//! sleeps in poll(2) on its ports and its handoff eventfd, so an idle switch
//! costs nearly nothing; `busy_poll` spins forever (benchmarks).
//!
//! One file of about 600 lines on purpose: the loop and every per-frame
//! step it calls (receive, decide, retag, copy, emit, flush) read top to
//! bottom as one iteration runs; what is not per iteration lives next door.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane_common::wire::{parse_l2, FRAME_HEADROOM};

use super::inbox::{Handoff, Inbox, PmdCommand};
use super::iteration_time::{cycles, IterationPhases, LongestIteration};
use super::pmds::{
    EngineConfig, EngineShared, FrameAccounting, OwnedPorts, PmdParts, NO_OWNER, PANIC_AFTER_ENV,
};
use super::slow_path::{SlowPathLink, NEW_WHILE_FULL_EVERY};
use crate::port::{DropReason, Frames, Port, PortState};
use crate::switch::{self, Decision, EgressTag, Sighting, SwitchView};
use crate::sync::{LockOrRecover, RwLockOrRecover};
use crate::xsk::{FramePool, Umem, XdpDesc};

/// Empty iterations before an adaptive PMD goes to sleep.
pub const IDLE_SPINS: u32 = 2000;
/// Iterations between two reads of the clock for housekeeping.
const CLOCK_EVERY: u32 = 1024;
/// Longest sleep in poll(2): bounds how late a stop request is seen.
const POLL_TIMEOUT_MS: i32 = 100;

/// One PMD thread's world.
pub struct Engine {
    id: usize,
    config: EngineConfig,
    umem: Arc<Umem>,
    pool: FramePool,
    /// What this PMD keeps per switch port, by port id (every id: a PMD
    /// counts drops for ports it does not serve too).
    slots: Vec<PortSlot>,
    /// Ids of the ports this PMD serves (a part of).
    own: Vec<usize>,
    /// PMD serving each port slot ([`NO_OWNER`] if none); a PMD sets its
    /// own entries as it attaches and detaches ports.
    owner: Arc<Vec<AtomicUsize>>,
    /// What this PMD decides with (its own: no lock).
    view: SwitchView,
    /// Where what it learns goes.
    slow_path: Arc<SlowPathLink>,
    inboxes: Arc<Vec<Inbox>>,
    shared: Arc<EngineShared>,
    rx: Vec<XdpDesc>,
    /// Scratch list of flood targets, reused.
    targets: Vec<(usize, EgressTag)>,
    /// Fault injection for the tests of a PMD panic (see [`PANIC_AFTER_ENV`]):
    /// frames left before this PMD panics.
    panic_after: Option<u64>,
    /// While the FDB is full: when the next new address may be reported,
    /// and how many were not (see [`NEW_WHILE_FULL_EVERY`]).
    next_new_while_full: Instant,
    not_reported: u64,
    /// Cycles the current iteration spent handing frames to the ports
    /// (for AF_XDP in copy mode the kernel transmits, and often delivers
    /// into the receiver's stack, inside that call).
    transmit: u64,
}

/// One switch port as a PMD sees it.
struct PortSlot {
    /// The port, or this PMD's part of it; `None` if another PMD serves it.
    port: Option<Box<dyn Port>>,
    /// Frames to transmit on it, gathered during one burst.
    tx: Vec<XdpDesc>,
    /// Its drops by reason, gathered during one iteration.
    drops: [u64; DropReason::ALL.len()],
    /// Cycles spent on its bursts since the last housekeeping.
    cycles: u64,
}

/// What a PMD shares with the control side and the other PMDs.
pub(super) struct EngineLinks {
    /// PMD serving each port slot.
    pub owner: Arc<Vec<AtomicUsize>>,
    /// This PMD's view of the switch as it starts.
    pub view: SwitchView,
    pub slow_path: Arc<SlowPathLink>,
    /// Every PMD's inbox, by PMD id.
    pub inboxes: Arc<Vec<Inbox>>,
    pub shared: Arc<EngineShared>,
}

impl Engine {
    /// PMD `id`'s world, with the ports it starts with (global port ids,
    /// below `config.max_ports`).
    pub(super) fn new(
        id: usize,
        config: EngineConfig,
        parts: PmdParts,
        links: EngineLinks,
    ) -> Engine {
        let n_ports = config.max_ports;
        let burst = config.burst;
        let mut slots: Vec<PortSlot> = (0..n_ports)
            .map(|_| PortSlot {
                port: None,
                tx: Vec::with_capacity(burst * 4),
                drops: [0; DropReason::ALL.len()],
                cycles: 0,
            })
            .collect();
        let own: Vec<usize> = parts.ports.iter().map(|p| p.id).collect();
        for part in parts.ports {
            slots[part.id].port = Some(part.port);
        }
        Engine {
            id,
            config,
            umem: parts.umem,
            pool: parts.pool,
            slots,
            own,
            owner: links.owner,
            view: links.view,
            slow_path: links.slow_path,
            inboxes: links.inboxes,
            shared: links.shared,
            rx: Vec::with_capacity(burst),
            targets: Vec::with_capacity(n_ports),
            panic_after: (id == 0)
                .then(|| std::env::var(PANIC_AFTER_ENV).ok()?.parse().ok())
                .flatten(),
            transmit: 0,
            next_new_while_full: Instant::now(),
            not_reported: 0,
        }
    }

    /// Runs until [`EngineShared::request_stop`]; returns its ports, so the
    /// caller closes them after the fast path is off.
    pub(super) fn run(mut self) -> OwnedPorts {
        if let Some(cpu) = self.config.cpu {
            if let Err(e) = crate::sys::netdev::pin_thread_to_cpu(cpu) {
                tracing::warn!("could not pin PMD {} to CPU {cpu}: {e}", self.id);
            }
        }
        // Prime the fill rings before the first frame arrives.
        self.maintain_ports();
        let mut idle_spins = 0u32;
        let mut next_housekeeping = Instant::now();
        let mut busy = 0u64;
        let mut idle = 0u64;
        let mut since_clock = 0u32;
        let mut longest = LongestIteration::new();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let top = cycles();
            if self.inboxes[self.id].has_commands.load(Ordering::Relaxed) {
                self.run_commands();
            }
            let start = cycles();
            self.transmit = 0;
            let moved = self.iteration();
            let maintaining = cycles();
            self.maintain_ports();
            self.transmit += cycles().wrapping_sub(maintaining);
            let end = cycles();
            let spent = end.wrapping_sub(start);
            // Sleep is not work: the iteration ends here, or after the
            // housekeeping below if it runs.
            let mut worked = end.wrapping_sub(top);
            let mut phases = IterationPhases {
                commands: start.wrapping_sub(top),
                ports: spent,
                transmit: self.transmit,
                housekeeping: 0,
            };
            since_clock += 1;
            if moved > 0 {
                busy += spent;
                idle_spins = 0;
            } else {
                idle += spent;
                idle_spins += 1;
                if !self.config.busy_poll && idle_spins >= IDLE_SPINS {
                    self.sleep_until_traffic();
                    idle_spins = 0;
                    // After a sleep the clock is due whatever the count.
                    since_clock = CLOCK_EVERY;
                }
            }
            // The clock is read every CLOCK_EVERY iterations, not each one
            // (clock_gettime showed up at 6% of a busy PMD's profile).
            if since_clock >= CLOCK_EVERY {
                since_clock = 0;
                let now = Instant::now();
                if now >= next_housekeeping {
                    next_housekeeping = now + Duration::from_millis(500);
                    let hk = cycles();
                    self.housekeeping(&mut busy, &mut idle);
                    phases.housekeeping = cycles().wrapping_sub(hk);
                    worked += phases.housekeeping;
                    longest.note(worked, phases);
                    longest.publish(
                        now,
                        self.id,
                        &self.shared.longest_iteration_ns,
                        &self.shared.longest_own_iteration_ns,
                    );
                    continue;
                }
            }
            longest.note(worked, phases);
        }
        // Give the kernel a moment to complete what is in flight, then account.
        for _ in 0..20 {
            self.maintain_ports();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.housekeeping(&mut busy, &mut idle);
        let own = std::mem::take(&mut self.own);
        own.into_iter()
            .filter_map(|id| self.slots[id].port.take().map(|p| (id, p)))
            .collect()
    }

    /// Applies queued port changes (between iterations: no frame of this
    /// PMD is in flight except in the ports' rings).
    fn run_commands(&mut self) {
        let inbox = &self.inboxes[self.id];
        inbox.has_commands.store(false, Ordering::SeqCst);
        let commands = std::mem::take(&mut *inbox.commands.lock_or_recover());
        for command in commands {
            match command {
                PmdCommand::Attach {
                    id,
                    mut port,
                    primary,
                    done,
                } => {
                    let mut frames = Frames {
                        umem: &self.umem,
                        pool: &mut self.pool,
                    };
                    // Prime its fill ring before frames arrive.
                    port.maintain(&mut frames);
                    self.slots[id].port = Some(port);
                    self.own.push(id);
                    if primary {
                        self.owner[id].store(self.id, Ordering::SeqCst);
                    }
                    let _ = done.send(());
                }
                PmdCommand::Detach { id, done } => {
                    // Only the primary part's PMD is the port's owner.
                    let _ = self.owner[id].compare_exchange(
                        self.id,
                        NO_OWNER,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    self.own.retain(|&p| p != id);
                    self.slots[id].cycles = 0;
                    for d in std::mem::take(&mut self.slots[id].tx) {
                        self.pool.free(d.addr);
                    }
                    let Some(mut port) = self.slots[id].port.take() else {
                        continue;
                    };
                    let mut frames = Frames {
                        umem: &self.umem,
                        pool: &mut self.pool,
                    };
                    port.release_frames(&mut frames);
                    if let Err(mpsc::SendError(port)) = done.send(port) {
                        // Nobody waits any more: close it here.
                        let lent = port.close();
                        self.pool.free_cold(&lent);
                    }
                }
                PmdCommand::Reclaim { frames, done } => {
                    self.pool.free_cold(&frames);
                    let _ = done.send(());
                }
                PmdCommand::View { ports, fdb } => {
                    if let Some(ports) = ports {
                        self.view.set_ports(ports);
                    }
                    self.view.apply(&fdb, Instant::now());
                }
            }
        }
    }

    /// One pass: frames handed over by other PMDs, then every own port;
    /// returns frames received.
    fn iteration(&mut self) -> usize {
        let mut moved = self.take_handoffs();
        // Read lazily: only when a burst arrived (FDB timestamps).
        let mut now: Option<Instant> = None;
        let burst = self.config.burst;
        for k in 0..self.own.len() {
            let in_port = self.own[k];
            let polled = cycles();
            self.rx.clear();
            let mut frames = Frames {
                umem: &self.umem,
                pool: &mut self.pool,
            };
            let port = self.slots[in_port].port.as_mut().expect("own port");
            let n = port.rx_burst(&mut frames, &mut self.rx, burst);
            if n == 0 {
                continue;
            }
            moved += n;
            let now = *now.get_or_insert_with(Instant::now);
            if let Some(left) = self.panic_after.as_mut() {
                *left = left.saturating_sub(n as u64);
                assert!(*left > 0, "{PANIC_AFTER_ENV}: injected PMD panic");
            }
            for i in 0..n {
                let desc = self.rx[i];
                self.switch_frame(in_port, desc, now);
            }
            // Transmit after each ingress burst so TX rings drain steadily.
            let sending = cycles();
            self.flush_tx();
            let done = cycles();
            self.transmit += done.wrapping_sub(sending);
            self.slots[in_port].cycles += done.wrapping_sub(polled);
        }
        if moved > 0 {
            self.publish_drops();
        }
        moved
    }

    /// Frames other PMDs routed to this PMD's ports: copied into own frames.
    fn take_handoffs(&mut self) -> usize {
        let inbox = &self.inboxes[self.id];
        let mut n = 0;
        while n < self.config.burst * 2 {
            let Some(h) = inbox.queue.pop() else { break };
            n += 1;
            let out = h.port as usize;
            let len = h.len as usize;
            let frame_size = self.umem.frame_size() as usize;
            if self.slots[out].port.is_none() || len > frame_size {
                // Detached while the frame was on its way (or a frame no
                // port of this switch could have received).
                inbox.slots.give_back(h.slot);
                self.slots[out].drops[DropReason::Policy as usize] += 1;
                continue;
            }
            let Some(chunk) = self.pool.alloc() else {
                inbox.slots.give_back(h.slot);
                self.slots[out].drops[DropReason::NoFreeFrame as usize] += 1;
                continue;
            };
            // The usual headroom, less for a frame that grew into it (a
            // pushed tag): it must end inside its chunk.
            let offset = FRAME_HEADROOM.min(frame_size - len) as u64;
            // SAFETY: `chunk` was just taken off the free list: this PMD is
            // its only holder until it is queued for TX.
            let into = unsafe { self.umem.frame_mut(chunk + offset, len) };
            inbox.slots.drain(h.slot, len, into);
            self.slots[out].tx.push(XdpDesc {
                addr: chunk + offset,
                len: len as u32,
                options: 0,
            });
        }
        if n > 0 {
            let sending = cycles();
            self.flush_tx();
            self.transmit += cycles().wrapping_sub(sending);
        }
        n
    }

    /// Queues a frame for `out`: on its TX batch if this PMD serves (a
    /// part of) the port, else copied into the owner's handoff queue (and
    /// freed here).
    fn emit(&mut self, out: usize, desc: XdpDesc) {
        if self.slots[out].port.is_some() {
            self.slots[out].tx.push(desc);
            return;
        }
        let owner = self.owner[out].load(Ordering::Relaxed);
        if owner == NO_OWNER {
            // Being removed: the switch will stop choosing it shortly.
            return self.drop_frame(out, desc, DropReason::Policy);
        }
        let len = desc.len as usize;
        let inbox = &self.inboxes[owner];
        match inbox.slots.fill(self.umem.frame(desc.addr, len)) {
            Some(slot) => {
                let h = Handoff {
                    port: out as u16,
                    len: len as u16,
                    slot,
                };
                if let Err(h) = inbox.queue.push(h) {
                    inbox.slots.give_back(h.slot);
                    self.slots[out].drops[DropReason::TxRingFull as usize] += 1;
                } else if inbox.sleeping.load(Ordering::SeqCst) {
                    inbox.wake();
                }
            }
            // Larger than a UMEM frame: no port could have received it.
            None if len > inbox.slots.slot_size() => {
                self.slots[out].drops[DropReason::Policy as usize] += 1
            }
            // Every slot in flight: the receiver is behind, as with a full ring.
            None => self.slots[out].drops[DropReason::TxRingFull as usize] += 1,
        }
        self.pool.free(desc.addr);
    }

    fn switch_frame(&mut self, in_port: usize, desc: XdpDesc, now: Instant) {
        let data = self.umem.frame(desc.addr, desc.len as usize);
        let header = match parse_l2(data) {
            Ok(h) => h,
            Err(_) => return self.drop_frame(in_port, desc, DropReason::Malformed),
        };
        let (decision, seen) = self.view.decide(in_port, &header, now);
        if let Some(seen) = seen {
            self.report(seen, now);
        }
        match decision {
            Decision::Drop(_) => self.drop_frame(in_port, desc, DropReason::Policy),
            Decision::Pass { out } => self.emit(out, desc),
            Decision::Forward { out, tag, .. } => match self.retag(desc, header.vlan, tag) {
                Some(d) => self.emit(out, d),
                None => self.drop_frame(in_port, desc, DropReason::Policy),
            },
            Decision::Flood { vlan } => {
                self.targets.clear();
                self.targets.extend(self.view.flood_targets(in_port, vlan));
                let Some((&(last, last_tag), rest)) = self.targets.split_last() else {
                    return self.drop_frame(in_port, desc, DropReason::Policy);
                };
                // Every target but the last gets a copy; the last gets the
                // original (no copy at all for two-port flooding).
                for i in 0..rest.len() {
                    let (out, tag) = self.targets[i];
                    match self.copy_frame(desc) {
                        Some(copy) => match self.retag(copy, header.vlan, tag) {
                            Some(d) => self.emit(out, d),
                            None => self.drop_frame(in_port, copy, DropReason::Policy),
                        },
                        None => self.slots[out].drops[DropReason::NoFreeFrame as usize] += 1,
                    }
                }
                match self.retag(desc, header.vlan, last_tag) {
                    Some(d) => self.emit(last, d),
                    None => self.drop_frame(in_port, desc, DropReason::Policy),
                }
            }
        }
    }

    /// Hands a sighting to the slow path; while the FDB is full, only a
    /// few new addresses go (the rest could not be learned anyway).
    fn report(&mut self, seen: Sighting, now: Instant) {
        if seen.new && self.slow_path.table_full() {
            if now < self.next_new_while_full {
                self.not_reported += 1;
                return;
            }
            self.next_new_while_full = now + NEW_WHILE_FULL_EVERY;
        }
        self.slow_path.report(self.id, seen);
    }

    /// Rewrites the frame's tag for its egress port; `None` if a tag cannot
    /// be pushed for lack of headroom.
    fn retag(&mut self, desc: XdpDesc, have: Option<u16>, want: EgressTag) -> Option<XdpDesc> {
        let unchanged = matches!((have, want), (None, EgressTag::Untagged));
        if unchanged {
            return Some(desc);
        }
        let chunk = self.chunk_base(desc.addr);
        let offset = (desc.addr - chunk) as usize;
        let frame_size = self.umem.frame_size() as usize;
        // SAFETY: the engine owns `desc` (received or allocated, not yet
        // handed to a ring), so nothing else reads or writes its chunk.
        let buf = unsafe { self.umem.frame_mut(chunk, frame_size) };
        let (start, len) = switch::vlan::retag(buf, offset, desc.len as usize, have, want)?;
        Some(XdpDesc {
            addr: chunk + start as u64,
            len: len as u32,
            options: 0,
        })
    }

    /// A copy of `desc` in a fresh frame, with headroom for a tag push.
    fn copy_frame(&mut self, desc: XdpDesc) -> Option<XdpDesc> {
        let chunk = self.pool.alloc()?;
        let len = desc.len as usize;
        let src = self.umem.frame(desc.addr, len);
        // SAFETY: `chunk` was just taken off the free list, so this engine is
        // its only holder; it does not overlap `desc`'s chunk.
        let dst = unsafe { self.umem.frame_mut(chunk + FRAME_HEADROOM as u64, len) };
        dst.copy_from_slice(src);
        Some(XdpDesc {
            addr: chunk + FRAME_HEADROOM as u64,
            len: len as u32,
            options: 0,
        })
    }

    fn chunk_base(&self, addr: u64) -> u64 {
        addr & !(self.umem.frame_size() as u64 - 1)
    }

    fn drop_frame(&mut self, port: usize, desc: XdpDesc, reason: DropReason) {
        self.slots[port].drops[reason as usize] += 1;
        let chunk = self.chunk_base(desc.addr);
        self.pool.free(chunk);
    }

    fn flush_tx(&mut self) {
        for k in 0..self.own.len() {
            let out = self.own[k];
            let slot = &mut self.slots[out];
            if slot.tx.is_empty() {
                continue;
            }
            let mut frames = Frames {
                umem: &self.umem,
                pool: &mut self.pool,
            };
            let port = slot.port.as_mut().expect("own port");
            port.tx_burst(&mut frames, &mut slot.tx);
            // What did not fit is dropped: holding it would stall the
            // ingress side behind one slow port.
            let left = slot.tx.len();
            if left > 0 {
                // A down port takes nothing; say so rather than blame its ring.
                let reason = match port.counters().state() {
                    PortState::Down => DropReason::PortDown,
                    PortState::Up => DropReason::TxRingFull,
                };
                slot.drops[reason as usize] += left as u64;
                for i in 0..left {
                    let chunk = slot.tx[i].addr & !(self.umem.frame_size() as u64 - 1);
                    self.pool.free(chunk);
                }
                slot.tx.clear();
            }
        }
    }

    fn publish_drops(&mut self) {
        if self.slots.iter().all(|s| s.drops.iter().all(|&n| n == 0)) {
            return;
        }
        // Any PMD may drop for any port: the counters are shared.
        let ports = self.shared.ports.read_or_recover();
        for (port, drops) in self.slots.iter_mut().map(|s| &mut s.drops).enumerate() {
            for reason in DropReason::ALL {
                let n = std::mem::take(&mut drops[reason as usize]);
                if let (true, Some(Some(p))) = (n > 0, ports.get(port)) {
                    p.counters.add_drop(reason, n);
                }
            }
        }
    }

    fn maintain_ports(&mut self) {
        let mut frames = Frames {
            umem: &self.umem,
            pool: &mut self.pool,
        };
        for port in self.slots.iter_mut().filter_map(|s| s.port.as_mut()) {
            port.maintain(&mut frames);
        }
    }

    /// Blocks in poll(2) until a port has frames, another PMD hands some
    /// over, or the timeout passes.
    fn sleep_until_traffic(&mut self) {
        let inbox = &self.inboxes[self.id];
        let mut fds: Vec<libc::pollfd> = self
            .slots
            .iter()
            .filter_map(|s| s.port.as_ref())
            .flat_map(|p| p.poll_fds())
            .chain(std::iter::once(inbox.wake.as_raw_fd()))
            .map(|fd: RawFd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Announce the sleep, then look once more: a sender that pushed
        // before seeing the flag is caught here, one after it wakes us.
        inbox.sleeping.store(true, Ordering::SeqCst);
        if inbox.queue.is_empty() {
            // SAFETY: fds is a valid array of fds.len() pollfd entries.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_TIMEOUT_MS) };
        }
        inbox.sleeping.store(false, Ordering::SeqCst);
        inbox.clear_wake();
    }

    /// Twice a second: the counters and frame accounting of own ports
    /// (the switch's upkeep is the slow path's).
    fn housekeeping(&mut self, busy: &mut u64, idle: &mut u64) {
        self.slow_path
            .count_not_reported(std::mem::take(&mut self.not_reported));
        for port in self.slots.iter_mut().filter_map(|s| s.port.as_mut()) {
            port.refresh_counters();
        }
        let (busy, idle) = (std::mem::take(busy), std::mem::take(idle));
        self.shared.busy_cycles.fetch_add(busy, Ordering::Relaxed);
        self.shared.idle_cycles.fetch_add(idle, Ordering::Relaxed);
        let mine = &self.shared.pmds[self.id];
        mine.busy.fetch_add(busy, Ordering::Relaxed);
        mine.idle.fetch_add(idle, Ordering::Relaxed);
        for &id in &self.own {
            let spent = std::mem::take(&mut self.slots[id].cycles);
            self.shared.rxq_cycles[self.id][id].fetch_add(spent, Ordering::Relaxed);
        }
        let (mut in_rx_rings, mut in_tx_rings) = (0, 0);
        for held in self
            .slots
            .iter()
            .filter_map(|s| s.port.as_ref())
            .map(|p| p.frames_held())
        {
            in_rx_rings += held.rx_side;
            in_tx_rings += held.tx_side;
        }
        self.shared.accounting.lock_or_recover()[self.id] = FrameAccounting {
            total: self.pool.capacity() as u64,
            free: self.pool.len() as u64,
            in_rx_rings,
            in_tx_rings,
            refused_frees: self.pool.refused_frees(),
        };
    }
}
