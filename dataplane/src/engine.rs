//! The poll-mode forwarding thread.
//!
//! One PMD thread owns the UMEM, its free list, every port and the switch.
//! Each iteration runs to completion: receive a burst from each port, decide
//! per frame, transmit per egress port, then let the ports reclaim and
//! refill. Nothing on this path allocates, locks or logs per frame.
//!
//! Adaptive polling (default): after [`IDLE_SPINS`] empty iterations the
//! thread sleeps in poll(2) on the ports' sockets, so an idle switch costs
//! nearly nothing; `busy_poll` spins forever (benchmarks).
//!
//! One PMD thread today: every port shares one UMEM, so forwarding never
//! copies between AF_XDP ports. Several threads would each need their own
//! UMEM and a copy to cross between them.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane_common::wire::parse_l2;

use crate::fastpath::FastPath;
use crate::port::{DropReason, Frames, Port, PortCounters};
use crate::switch::{self, Decision, EgressTag, Switch};
use crate::xsk::{FramePool, Umem, XdpDesc};

/// Empty iterations before an adaptive PMD goes to sleep.
pub const IDLE_SPINS: u32 = 2000;
/// Iterations between two reads of the clock for housekeeping.
const CLOCK_EVERY: u32 = 1024;
/// Longest sleep in poll(2): bounds how late a stop request is seen.
const POLL_TIMEOUT_MS: i32 = 100;
/// Headroom kept before frame data in copied frames, as the kernel does for
/// received ones (XDP_PACKET_HEADROOM), so a VLAN tag can be pushed.
const COPY_HEADROOM: u64 = 256;

/// How the PMD thread runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Frames received per port per iteration.
    pub burst: usize,
    /// Spin even when idle.
    pub busy_poll: bool,
    /// CPU to pin the PMD thread to.
    pub cpu: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            burst: 64,
            busy_poll: false,
            cpu: None,
        }
    }
}

/// Where every UMEM frame is, for the exact-accounting check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameAccounting {
    /// Frames in the UMEM.
    pub total: u64,
    /// Frames on the free list.
    pub free: u64,
    /// Receive buffers the ports handed to the kernel (fill and RX rings).
    pub in_rx_rings: u64,
    /// Frames queued for transmit (TX and completion rings).
    pub in_tx_rings: u64,
}

impl FrameAccounting {
    /// Frames that are nowhere they should be (lost or double-counted).
    /// Between iterations nothing is in flight, so this must be zero.
    pub fn unaccounted(&self) -> i64 {
        self.total as i64 - self.free as i64 - self.in_rx_rings as i64 - self.in_tx_rings as i64
    }
}

/// State shared between the PMD thread and the outside world.
pub struct EngineShared {
    stop: AtomicBool,
    /// CPU cycles (TSC) the PMD spent in iterations that found frames, and
    /// in iterations that found none (sleep time in poll(2) not included).
    pub busy_cycles: AtomicU64,
    pub idle_cycles: AtomicU64,
    accounting: Mutex<FrameAccounting>,
    /// Per-port counters, by port index.
    pub ports: Vec<(String, Arc<PortCounters>)>,
    /// A copy of the FDB for `show fdb`, refreshed about once a second.
    fdb: Mutex<Vec<(u16, [u8; 6], String)>>,
    /// Learning counters (learned, moved, table full).
    pub learning: Mutex<switch::LearningStats>,
}

impl EngineShared {
    /// Asks the PMD thread to stop after its current iteration.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Frame accounting as of the last iteration boundary it was taken at.
    pub fn accounting(&self) -> FrameAccounting {
        *self.accounting.lock().unwrap()
    }

    /// (VLAN, MAC, port name) of every learned address.
    pub fn fdb(&self) -> Vec<(u16, [u8; 6], String)> {
        self.fdb.lock().unwrap().clone()
    }
}

/// The PMD thread's world.
pub struct Engine {
    config: EngineConfig,
    /// Declared before `ports` so it is dropped (turned off) first.
    fast_path: Option<FastPath>,
    umem: Arc<Umem>,
    pool: FramePool,
    ports: Vec<Box<dyn Port>>,
    switch: Switch,
    shared: Arc<EngineShared>,
    /// Per-egress-port transmit batches, reused every iteration.
    tx: Vec<Vec<XdpDesc>>,
    rx: Vec<XdpDesc>,
    /// Scratch list of flood targets, reused.
    targets: Vec<(usize, EgressTag)>,
    /// Per-port drop counts gathered during one iteration.
    drops: Vec<[u64; DropReason::ALL.len()]>,
}

impl Engine {
    /// Builds the engine; `ports[i]` is switch port `i`.
    pub fn new(
        config: EngineConfig,
        umem: Arc<Umem>,
        pool: FramePool,
        ports: Vec<Box<dyn Port>>,
        mut switch: Switch,
        fast_path: Option<FastPath>,
    ) -> Engine {
        if fast_path.is_some() {
            switch.fdb_mut().record_changes();
        }
        let n = ports.len();
        let shared = Arc::new(EngineShared {
            stop: AtomicBool::new(false),
            busy_cycles: AtomicU64::new(0),
            idle_cycles: AtomicU64::new(0),
            accounting: Mutex::new(FrameAccounting::default()),
            ports: ports
                .iter()
                .map(|p| (p.name().to_string(), p.counters().clone()))
                .collect(),
            fdb: Mutex::new(Vec::new()),
            learning: Mutex::new(Default::default()),
        });
        let burst = config.burst;
        Engine {
            config,
            fast_path,
            umem,
            pool,
            ports,
            switch,
            shared,
            tx: (0..n).map(|_| Vec::with_capacity(burst * 4)).collect(),
            rx: Vec::with_capacity(burst),
            targets: Vec::with_capacity(n),
            drops: vec![[0; DropReason::ALL.len()]; n],
        }
    }

    /// The handle to stop the engine and read its state.
    pub fn shared(&self) -> Arc<EngineShared> {
        self.shared.clone()
    }

    /// Runs until [`EngineShared::request_stop`]. Returns the final
    /// accounting (taken after the ports had a last chance to reclaim).
    pub fn run(mut self) -> FrameAccounting {
        if let Some(cpu) = self.config.cpu {
            if let Err(e) = crate::netdev::pin_thread_to_cpu(cpu) {
                tracing::warn!("could not pin the PMD thread to CPU {cpu}: {e}");
            }
        }
        // Prime the fill rings before the first frame arrives.
        self.maintain_ports();
        let mut idle_spins = 0u32;
        let mut next_housekeeping = Instant::now();
        let mut busy = 0u64;
        let mut idle = 0u64;
        let mut since_clock = 0u32;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let start = cycles();
            let moved = self.iteration();
            self.maintain_ports();
            let spent = cycles().wrapping_sub(start);
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
                    self.housekeeping(now, &mut busy, &mut idle);
                }
            }
        }
        // Give the kernel a moment to complete what is in flight, then account.
        for _ in 0..20 {
            self.maintain_ports();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.housekeeping(Instant::now(), &mut busy, &mut idle);
        // Tear down in order: the fast path off first (nothing may be
        // redirected to a port being closed), then the ports last-opened
        // first, so the socket that registered the shared UMEM closes last.
        drop(self.fast_path.take());
        while let Some(port) = self.ports.pop() {
            drop(port);
        }
        self.shared.accounting()
    }

    /// One pass over every port; returns frames received.
    fn iteration(&mut self) -> usize {
        let mut moved = 0;
        // Read lazily: only when a burst arrived (FDB timestamps).
        let mut now: Option<Instant> = None;
        let burst = self.config.burst;
        for in_port in 0..self.ports.len() {
            self.rx.clear();
            let mut frames = Frames {
                umem: &self.umem,
                pool: &mut self.pool,
            };
            let n = self.ports[in_port].rx_burst(&mut frames, &mut self.rx, burst);
            if n == 0 {
                continue;
            }
            moved += n;
            let now = *now.get_or_insert_with(Instant::now);
            for i in 0..n {
                let desc = self.rx[i];
                self.switch_frame(in_port, desc, now);
            }
            // Transmit after each ingress burst so TX rings drain steadily.
            self.flush_tx();
        }
        if moved > 0 {
            self.publish_drops();
            self.mirror_fdb();
        }
        moved
    }

    /// Applies what this iteration learned to the in-kernel fast path.
    fn mirror_fdb(&mut self) {
        if let Some(fp) = self.fast_path.as_mut() {
            if self.switch.fdb().has_changes() {
                let changes = self.switch.fdb_mut().take_changes();
                fp.apply(&changes, &self.switch);
            }
        }
    }

    fn switch_frame(&mut self, in_port: usize, desc: XdpDesc, now: Instant) {
        let data = self.umem.frame(desc.addr, desc.len as usize);
        let header = match parse_l2(data) {
            Ok(h) => h,
            Err(_) => return self.drop_frame(in_port, desc, DropReason::Malformed),
        };
        match self.switch.decide(in_port, &header, now) {
            Decision::Drop(_) => self.drop_frame(in_port, desc, DropReason::Policy),
            Decision::Pass { out } => self.tx[out].push(desc),
            Decision::Forward { out, tag, .. } => match self.retag(desc, header.vlan, tag) {
                Some(d) => self.tx[out].push(d),
                None => self.drop_frame(in_port, desc, DropReason::Policy),
            },
            Decision::Flood { vlan } => {
                self.targets.clear();
                self.targets
                    .extend(self.switch.flood_targets(in_port, vlan));
                let Some((&(last, last_tag), rest)) = self.targets.split_last() else {
                    return self.drop_frame(in_port, desc, DropReason::Policy);
                };
                // Every target but the last gets a copy; the last gets the
                // original (no copy at all for two-port flooding).
                for i in 0..rest.len() {
                    let (out, tag) = self.targets[i];
                    match self.copy_frame(desc) {
                        Some(copy) => match self.retag(copy, header.vlan, tag) {
                            Some(d) => self.tx[out].push(d),
                            None => self.drop_frame(in_port, copy, DropReason::Policy),
                        },
                        None => self.drops[out][DropReason::NoFreeFrame as usize] += 1,
                    }
                }
                match self.retag(desc, header.vlan, last_tag) {
                    Some(d) => self.tx[last].push(d),
                    None => self.drop_frame(in_port, desc, DropReason::Policy),
                }
            }
        }
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
        let dst = unsafe { self.umem.frame_mut(chunk + COPY_HEADROOM, len) };
        dst.copy_from_slice(src);
        Some(XdpDesc {
            addr: chunk + COPY_HEADROOM,
            len: len as u32,
            options: 0,
        })
    }

    fn chunk_base(&self, addr: u64) -> u64 {
        addr & !(self.umem.frame_size() as u64 - 1)
    }

    fn drop_frame(&mut self, port: usize, desc: XdpDesc, reason: DropReason) {
        self.drops[port][reason as usize] += 1;
        let chunk = self.chunk_base(desc.addr);
        self.pool.free(chunk);
    }

    fn flush_tx(&mut self) {
        for out in 0..self.ports.len() {
            if self.tx[out].is_empty() {
                continue;
            }
            let mut frames = Frames {
                umem: &self.umem,
                pool: &mut self.pool,
            };
            self.ports[out].tx_burst(&mut frames, &mut self.tx[out]);
            // What did not fit is dropped: holding it would stall the
            // ingress side behind one slow port.
            let left = self.tx[out].len();
            if left > 0 {
                self.drops[out][DropReason::TxRingFull as usize] += left as u64;
                for i in 0..left {
                    let chunk = self.tx[out][i].addr & !(self.umem.frame_size() as u64 - 1);
                    self.pool.free(chunk);
                }
                self.tx[out].clear();
            }
        }
    }

    fn publish_drops(&mut self) {
        for (port, drops) in self.drops.iter_mut().enumerate() {
            for reason in DropReason::ALL {
                let n = std::mem::take(&mut drops[reason as usize]);
                if n > 0 {
                    self.ports[port].counters().add_drop(reason, n);
                }
            }
        }
    }

    fn maintain_ports(&mut self) {
        let mut frames = Frames {
            umem: &self.umem,
            pool: &mut self.pool,
        };
        for port in &mut self.ports {
            port.maintain(&mut frames);
        }
    }

    /// Blocks in poll(2) until a port has frames (or the timeout passes).
    fn sleep_until_traffic(&mut self) {
        let mut fds: Vec<libc::pollfd> = self
            .ports
            .iter()
            .flat_map(|p| p.poll_fds())
            .map(|fd: RawFd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of fds.len() pollfd entries.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_TIMEOUT_MS) };
    }

    /// Once or twice a second: ageing, kernel statistics, shared copies.
    fn housekeeping(&mut self, now: Instant, busy: &mut u64, idle: &mut u64) {
        if let Some(fp) = self.fast_path.as_mut() {
            fp.refresh_ageing(&mut self.switch, now);
            fp.check_egress(&self.switch);
            for (port, n) in fp.forwarded().into_iter().enumerate() {
                if let Some(n) = n {
                    self.ports[port].counters().set_fast_path(n);
                }
            }
        }
        self.switch.expire(now);
        self.mirror_fdb();
        for port in &mut self.ports {
            port.refresh_counters();
        }
        self.shared
            .busy_cycles
            .fetch_add(std::mem::take(busy), Ordering::Relaxed);
        self.shared
            .idle_cycles
            .fetch_add(std::mem::take(idle), Ordering::Relaxed);
        let (mut in_rx_rings, mut in_tx_rings) = (0, 0);
        for held in self.ports.iter().map(|p| p.frames_held()) {
            in_rx_rings += held.rx_side;
            in_tx_rings += held.tx_side;
        }
        *self.shared.accounting.lock().unwrap() = FrameAccounting {
            total: self.pool.capacity() as u64,
            free: self.pool.len() as u64,
            in_rx_rings,
            in_tx_rings,
        };
        let names: Vec<&str> = self.ports.iter().map(|p| p.name()).collect();
        *self.shared.fdb.lock().unwrap() = self
            .switch
            .fdb()
            .entries()
            .into_iter()
            .filter(|(_, _, e)| e.port < names.len())
            .map(|(vlan, mac, e)| (vlan, mac, names[e.port].to_string()))
            .collect();
        *self.shared.learning.lock().unwrap() = self.switch.learning_stats();
    }
}

/// A cheap cycle counter for busy/idle accounting: the TSC on x86_64
/// (~20 cycles to read, vs. a vDSO clock call), nanoseconds elsewhere.
#[inline(always)]
fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86_64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}
