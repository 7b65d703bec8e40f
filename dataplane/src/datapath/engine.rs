//! The poll-mode forwarding threads.
//!
//! Each PMD thread owns a UMEM, its free list and a set of ports; the switch
//! (FDB, VLANs, fast-path mirror) is shared and locked once per received
//! burst, never per frame. Each iteration runs to completion: take frames
//! handed over by other PMDs, receive a burst from each own port, decide per
//! frame, transmit per egress port, let the ports reclaim and refill.
//! Nothing on this path allocates or logs per frame.
//!
//! Frames between ports of one PMD move by descriptor (one UMEM, no copy).
//! A frame whose egress port belongs to another PMD is copied into that
//! PMD's bounded handoff queue, and from there into its UMEM: each UMEM has
//! exactly one owner thread, which keeps the frame accounting exact.
//!
//! Adaptive polling (default): after [`IDLE_SPINS`] empty iterations a PMD
//! sleeps in poll(2) on its ports and its handoff eventfd, so an idle switch
//! costs nearly nothing; `busy_poll` spins forever (benchmarks).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use dataplane_common::wire::{parse_l2, FRAME_HEADROOM};

use crate::datapath::fastpath::FastPath;
use crate::port::{DropReason, Frames, Port, PortCounters, PortState};
use crate::switch::{self, Decision, EgressTag, Switch};
use crate::sync::{LockOrRecover, RwLockOrRecover};
use crate::xsk::{FramePool, Umem, XdpDesc};

/// Empty iterations before an adaptive PMD goes to sleep.
pub const IDLE_SPINS: u32 = 2000;
/// Iterations between two reads of the clock for housekeeping.
const CLOCK_EVERY: u32 = 1024;
/// Longest sleep in poll(2): bounds how late a stop request is seen.
const POLL_TIMEOUT_MS: i32 = 100;
/// Largest frame that can cross between PMD threads (standard MTU frames
/// with two tags fit).
const HANDOFF_MAX: usize = 2048;
/// Frames waiting in one PMD's handoff queue, at most.
const HANDOFF_QUEUE: usize = 1024;
/// Port slots: switch port ids are 0..MAX_PORTS (the fast path's devmap size).
pub const MAX_PORTS: usize = dataplane_common::MAX_PORTS as usize;
/// `owner` value of a slot no PMD serves.
const NO_OWNER: usize = usize::MAX;
/// How long the control side waits for a PMD to take or give back a port.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A change to a PMD's set of ports, applied between two iterations.
enum PmdCommand {
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
}

/// Why a port could not be attached to or detached from a PMD.
#[derive(Debug, thiserror::Error)]
pub enum PortChangeError {
    #[error("no free port slot: at most {MAX_PORTS} ports")]
    NoSlot,
    #[error("port {0} is not served by any PMD")]
    NotServed(usize),
    #[error("PMD {0} did not answer within {COMMAND_TIMEOUT:?} (stopped or stuck)")]
    NoAnswer(usize),
}

/// The switch and its in-kernel mirror, shared by the PMD threads.
pub struct SharedSwitch {
    pub switch: Switch,
    /// Taken out (and so turned off) before any port closes.
    pub fast_path: Option<FastPath>,
}

/// A frame crossing from one PMD to the one that owns its egress port.
struct Handoff {
    port: u16,
    len: u16,
    data: [u8; HANDOFF_MAX],
}

/// What crosses into one PMD: a queue, and a way to wake it when it sleeps.
struct Inbox {
    queue: ArrayQueue<Handoff>,
    /// Set while the owner sleeps in poll(2); senders then write `wake`.
    sleeping: AtomicBool,
    /// An eventfd in the owner's poll set.
    wake: OwnedFd,
    /// Port changes for the owner; `has_commands` spares it the lock on
    /// every iteration.
    commands: Mutex<Vec<PmdCommand>>,
    has_commands: AtomicBool,
}

impl Inbox {
    fn new() -> std::io::Result<Inbox> {
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

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Queues a command for the owner and wakes it if it sleeps.
    fn command(&self, command: PmdCommand) {
        self.commands.lock_or_recover().push(command);
        self.has_commands.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn clear_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 (nonblocking).
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

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
    /// Frees the pool refused (a frame given back twice, or not of the
    /// UMEM): must stay 0; see `FramePool::refused_frees`.
    pub refused_frees: u64,
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
    /// The longest single PMD iteration since the start (commands, every
    /// port's burst, housekeeping), in nanoseconds, over all PMDs: how long
    /// a port can wait to be served. Updated at housekeeping.
    pub longest_iteration_ns: AtomicU64,
    /// The same without the time spent inside the kernel's transmit and
    /// refill calls (AF_XDP copy mode transmits, and often runs the
    /// receiver's stack, inside them): the PMD's own work.
    pub longest_own_iteration_ns: AtomicU64,
    /// Per PMD thread.
    accounting: Mutex<Vec<FrameAccounting>>,
    /// The ports, by switch port id (slot); `None` for a free slot.
    ports: RwLock<Vec<Option<PortEntry>>>,
    /// Learning counters (learned, moved, table full).
    pub learning: Mutex<switch::LearningStats>,
}

/// A port as the outside world sees it.
#[derive(Clone)]
pub struct PortEntry {
    pub name: String,
    pub counters: Arc<PortCounters>,
    /// The PMD thread serving it.
    pub pmd: usize,
}

impl EngineShared {
    /// (switch port id, entry) of every port, by id.
    pub fn ports(&self) -> Vec<(usize, PortEntry)> {
        self.ports
            .read()
            .unwrap()
            .iter()
            .enumerate()
            .filter_map(|(id, p)| p.clone().map(|p| (id, p)))
            .collect()
    }

    /// The port in slot `id`.
    pub fn port(&self, id: usize) -> Option<PortEntry> {
        self.ports.read_or_recover().get(id).cloned().flatten()
    }

    /// Asks the PMD thread to stop after its current iteration.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Frame accounting over every PMD's UMEM, as of their last housekeeping.
    pub fn accounting(&self) -> FrameAccounting {
        let all = self.accounting.lock_or_recover();
        let mut sum = FrameAccounting::default();
        for a in all.iter() {
            sum.total += a.total;
            sum.free += a.free;
            sum.in_rx_rings += a.in_rx_rings;
            sum.in_tx_rings += a.in_tx_rings;
            sum.refused_frees += a.refused_frees;
        }
        sum
    }
}

/// One PMD thread's world.
pub struct Engine {
    id: usize,
    config: EngineConfig,
    umem: Arc<Umem>,
    pool: FramePool,
    /// By global port id; `None` for ports another PMD owns.
    ports: Vec<Option<Box<dyn Port>>>,
    /// Global ids of the ports this PMD owns.
    own: Vec<usize>,
    /// PMD serving each port slot ([`NO_OWNER`] if none); a PMD sets its
    /// own entries as it attaches and detaches ports.
    owner: Arc<Vec<AtomicUsize>>,
    switch: Arc<Mutex<SharedSwitch>>,
    inboxes: Arc<Vec<Inbox>>,
    shared: Arc<EngineShared>,
    /// Per-egress-port transmit batches (own ports), reused every iteration.
    tx: Vec<Vec<XdpDesc>>,
    rx: Vec<XdpDesc>,
    /// Scratch list of flood targets, reused.
    targets: Vec<(usize, EgressTag)>,
    /// Per-port drop counts gathered during one iteration.
    drops: Vec<[u64; DropReason::ALL.len()]>,
    /// Fault injection for the tests of a PMD panic (see [`PANIC_AFTER_ENV`]):
    /// frames left before this PMD panics while holding the switch lock.
    panic_after: Option<u64>,
    /// Cycles the current iteration waited for the switch lock (held by
    /// another PMD or by a control operation).
    lock_wait: u64,
    /// Cycles the current iteration spent handing frames to the ports
    /// (for AF_XDP in copy mode the kernel transmits, and often delivers
    /// into the receiver's stack, inside that call).
    transmit: u64,
}

/// Environment variable for a test: PMD 0 panics, holding the switch lock,
/// once it has switched this many frames. It exists so that the suite can
/// check that a PMD panic stops the whole switch cleanly (ports closed,
/// steer detached, an error naming the cause); nothing else reads it.
pub const PANIC_AFTER_ENV: &str = "DATAPLANE_TEST_PMD_PANIC_AFTER";

/// What one PMD thread starts with.
pub struct PmdParts {
    /// CPU to pin it to.
    pub cpu: Option<usize>,
    pub umem: Arc<Umem>,
    pub pool: FramePool,
    /// (global port id, port) of the ports it owns, opened on `umem`.
    pub ports: Vec<(usize, Box<dyn Port>)>,
}

/// Ports with their global ids, as a PMD thread hands them back.
type OwnedPorts = Vec<(usize, Box<dyn Port>)>;

/// A PMD thread panicked (its ports were released as it unwound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmdPanicked;

/// Running PMD threads.
pub struct Running {
    pub shared: Arc<EngineShared>,
    switch: Arc<Mutex<SharedSwitch>>,
    threads: Vec<std::thread::JoinHandle<OwnedPorts>>,
    inboxes: Arc<Vec<Inbox>>,
    owner: Arc<Vec<AtomicUsize>>,
    /// Each PMD's UMEM: ports added at runtime are opened on it.
    umems: Vec<Arc<Umem>>,
}

impl Running {
    /// True once any PMD thread has ended (it only ends when asked, or on a panic).
    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished())
    }

    /// The switch and its fast path, shared with the PMDs.
    pub fn switch(&self) -> &Arc<Mutex<SharedSwitch>> {
        &self.switch
    }

    /// Number of PMD threads.
    pub fn pmd_count(&self) -> usize {
        self.umems.len()
    }

    /// The UMEM of PMD `pmd` (a port to attach there is opened on it).
    pub fn umem(&self, pmd: usize) -> &Arc<Umem> {
        &self.umems[pmd]
    }

    /// A free port slot.
    pub fn free_slot(&self) -> Result<usize, PortChangeError> {
        let ports = self.shared.ports.read_or_recover();
        (0..MAX_PORTS)
            .find(|&id| ports.get(id).is_none_or(Option::is_none))
            .ok_or(PortChangeError::NoSlot)
    }

    /// The PMD serving the fewest ports (where a new port goes).
    pub fn least_loaded_pmd(&self) -> usize {
        let ports = self.shared.ports.read_or_recover();
        (0..self.pmd_count())
            .min_by_key(|&pmd| ports.iter().flatten().filter(|p| p.pmd == pmd).count())
            .unwrap_or(0)
    }

    /// Hands `port`, opened on PMD `pmd`'s UMEM, to that PMD as switch port
    /// `id` and waits until it serves it. The switch learns of the port
    /// only after this (the caller adds it), so no frame is sent to a port
    /// nobody serves.
    pub fn attach_port(
        &self,
        pmd: usize,
        id: usize,
        port: Box<dyn Port>,
    ) -> Result<(), PortChangeError> {
        {
            let mut ports = self.shared.ports.write_or_recover();
            if ports.len() <= id {
                ports.resize(id + 1, None);
            }
            ports[id] = Some(PortEntry {
                name: port.name().to_string(),
                counters: port.counters().clone(),
                pmd,
            });
        }
        let (done, answer) = mpsc::channel();
        self.inboxes[pmd].command(PmdCommand::Attach { id, port, done });
        answer
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| PortChangeError::NoAnswer(pmd))
    }

    /// Takes port `id` away from its PMD and closes it: the PMD takes back
    /// what the kernel returned, this thread closes the port (closing
    /// unbinds its sockets, which may wait for the kernel: not on a PMD),
    /// then the PMD takes back the frames the sockets had lent. Remove it
    /// from the switch (and the fast path) first, so nothing is still being
    /// sent to it. The slot stays taken until [`Running::forget_port`].
    pub fn detach_port(&self, id: usize) -> Result<(), PortChangeError> {
        let pmd = self
            .owner
            .get(id)
            .map(|o| o.load(Ordering::SeqCst))
            .filter(|&o| o != NO_OWNER)
            .ok_or(PortChangeError::NotServed(id))?;
        let (done, answer) = mpsc::channel();
        self.inboxes[pmd].command(PmdCommand::Detach { id, done });
        let port = answer
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| PortChangeError::NoAnswer(pmd))?;
        let frames = port.close();
        if frames.is_empty() {
            return Ok(());
        }
        let (done, answer) = mpsc::channel();
        self.inboxes[pmd].command(PmdCommand::Reclaim { frames, done });
        answer
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| PortChangeError::NoAnswer(pmd))
    }

    /// Frees slot `id` for reuse, once its port is detached for good (a
    /// port waiting for its interface keeps its slot and its PMD).
    pub fn forget_port(&self, id: usize) {
        if let Some(slot) = self.shared.ports.write_or_recover().get_mut(id) {
            *slot = None;
        }
    }

    /// Stops the PMDs, turns the fast path off, then closes every port,
    /// last-opened first (the socket that registered a UMEM closes last).
    /// Returns the final accounting.
    pub fn stop(self) -> Result<FrameAccounting, PmdPanicked> {
        self.shared.request_stop();
        let mut ports = Vec::new();
        let mut panicked = false;
        for t in self.threads {
            match t.join() {
                Ok(p) => ports.extend(p),
                Err(_) => panicked = true,
            }
        }
        let accounting = self.shared.accounting();
        drop(self.switch.lock().map(|mut s| s.fast_path.take()));
        ports.sort_by_key(|(id, _)| *id);
        while let Some((_, port)) = ports.pop() {
            drop(port);
        }
        if panicked {
            return Err(PmdPanicked);
        }
        Ok(accounting)
    }
}

/// Starts one PMD thread per element of `pmds`; port ids are global
/// (switch port ids, below [`MAX_PORTS`]).
pub fn start(
    config: EngineConfig,
    pmds: Vec<PmdParts>,
    mut switch: Switch,
    fast_path: Option<FastPath>,
) -> std::io::Result<Running> {
    let n_ports = MAX_PORTS;
    if fast_path.is_some() {
        switch.fdb_mut().record_changes();
    }
    let shared = Arc::new(EngineShared {
        stop: AtomicBool::new(false),
        busy_cycles: AtomicU64::new(0),
        idle_cycles: AtomicU64::new(0),
        longest_iteration_ns: AtomicU64::new(0),
        longest_own_iteration_ns: AtomicU64::new(0),
        accounting: Mutex::new(vec![FrameAccounting::default(); pmds.len()]),
        ports: RwLock::new(vec![None; n_ports]),
        learning: Mutex::new(Default::default()),
    });
    let owner: Arc<Vec<AtomicUsize>> =
        Arc::new((0..n_ports).map(|_| AtomicUsize::new(NO_OWNER)).collect());
    {
        let mut entries = shared.ports.write_or_recover();
        for (pmd, parts) in pmds.iter().enumerate() {
            for (id, port) in &parts.ports {
                owner[*id].store(pmd, Ordering::Relaxed);
                entries[*id] = Some(PortEntry {
                    name: port.name().to_string(),
                    counters: port.counters().clone(),
                    pmd,
                });
            }
        }
    }
    let umems: Vec<Arc<Umem>> = pmds.iter().map(|p| p.umem.clone()).collect();
    let switch = Arc::new(Mutex::new(SharedSwitch { switch, fast_path }));
    let inboxes = Arc::new(
        (0..pmds.len())
            .map(|_| Inbox::new())
            .collect::<std::io::Result<Vec<_>>>()?,
    );
    let mut threads = Vec::new();
    for (id, parts) in pmds.into_iter().enumerate() {
        let burst = config.burst;
        let mut ports: Vec<Option<Box<dyn Port>>> = (0..n_ports).map(|_| None).collect();
        let own: Vec<usize> = parts.ports.iter().map(|(i, _)| *i).collect();
        for (i, p) in parts.ports {
            ports[i] = Some(p);
        }
        let engine = Engine {
            id,
            config: EngineConfig {
                cpu: parts.cpu,
                ..config.clone()
            },
            umem: parts.umem,
            pool: parts.pool,
            ports,
            own,
            owner: owner.clone(),
            switch: switch.clone(),
            inboxes: inboxes.clone(),
            shared: shared.clone(),
            tx: (0..n_ports)
                .map(|_| Vec::with_capacity(burst * 4))
                .collect(),
            rx: Vec::with_capacity(burst),
            targets: Vec::with_capacity(n_ports),
            drops: vec![[0; DropReason::ALL.len()]; n_ports],
            panic_after: (id == 0)
                .then(|| std::env::var(PANIC_AFTER_ENV).ok()?.parse().ok())
                .flatten(),
            lock_wait: 0,
            transmit: 0,
        };
        let name = format!("dataplane-pmd{id}");
        threads.push(
            std::thread::Builder::new()
                .name(if id == 0 {
                    "dataplane-pmd".into()
                } else {
                    name
                })
                .spawn(move || engine.run())?,
        );
    }
    Ok(Running {
        shared,
        switch,
        threads,
        inboxes,
        owner,
        umems,
    })
}

impl Engine {
    /// Runs until [`EngineShared::request_stop`]; returns its ports, so the
    /// caller closes them after the fast path is off.
    fn run(mut self) -> OwnedPorts {
        if let Some(cpu) = self.config.cpu {
            if let Err(e) = crate::sys::netdev::pin_thread_to_cpu(cpu) {
                tracing::warn!("could not pin PMD {} to CPU {cpu}: {e}", self.id);
            }
        }
        // Prime the fill rings before the first frame arrives.
        self.maintain_ports();
        // One handle for the loop: cloning the Arc per iteration would
        // bounce its reference count between the PMDs' cores.
        let switch = self.switch.clone();
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
            self.lock_wait = 0;
            self.transmit = 0;
            let moved = self.iteration(&switch);
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
                lock_wait: self.lock_wait,
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
                    self.housekeeping(now, &mut busy, &mut idle);
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
        self.housekeeping(Instant::now(), &mut busy, &mut idle);
        let own = std::mem::take(&mut self.own);
        own.into_iter()
            .filter_map(|id| self.ports[id].take().map(|p| (id, p)))
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
                PmdCommand::Attach { id, mut port, done } => {
                    let mut frames = Frames {
                        umem: &self.umem,
                        pool: &mut self.pool,
                    };
                    // Prime its fill ring before frames arrive.
                    port.maintain(&mut frames);
                    self.ports[id] = Some(port);
                    self.own.push(id);
                    self.owner[id].store(self.id, Ordering::SeqCst);
                    let _ = done.send(());
                }
                PmdCommand::Detach { id, done } => {
                    self.owner[id].store(NO_OWNER, Ordering::SeqCst);
                    self.own.retain(|&p| p != id);
                    for d in std::mem::take(&mut self.tx[id]) {
                        self.pool.free(d.addr);
                    }
                    let Some(mut port) = self.ports[id].take() else {
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
            }
        }
    }

    /// One pass: frames handed over by other PMDs, then every own port;
    /// returns frames received.
    fn iteration(&mut self, switch: &Mutex<SharedSwitch>) -> usize {
        let mut moved = self.take_handoffs();
        // Read lazily: only when a burst arrived (FDB timestamps).
        let mut now: Option<Instant> = None;
        let burst = self.config.burst;
        for k in 0..self.own.len() {
            let in_port = self.own[k];
            self.rx.clear();
            let mut frames = Frames {
                umem: &self.umem,
                pool: &mut self.pool,
            };
            let port = self.ports[in_port].as_mut().expect("own port");
            let n = port.rx_burst(&mut frames, &mut self.rx, burst);
            if n == 0 {
                continue;
            }
            moved += n;
            let now = *now.get_or_insert_with(Instant::now);
            {
                // One lock per burst; nothing below blocks or makes syscalls
                // except the rare fast-path mirror of what was learned.
                let asked = cycles();
                let mut shared = switch.lock_or_recover();
                self.lock_wait += cycles().wrapping_sub(asked);
                if let Some(left) = self.panic_after.as_mut() {
                    *left = left.saturating_sub(n as u64);
                    assert!(*left > 0, "{PANIC_AFTER_ENV}: injected PMD panic");
                }
                for i in 0..n {
                    let desc = self.rx[i];
                    self.switch_frame(&mut shared.switch, in_port, desc, now);
                }
                mirror_fdb(&mut shared);
            }
            // Transmit after each ingress burst so TX rings drain steadily.
            let sending = cycles();
            self.flush_tx();
            self.transmit += cycles().wrapping_sub(sending);
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
            if self.ports[out].is_none() {
                // Detached while the frame was on its way.
                self.drops[out][DropReason::Policy as usize] += 1;
                continue;
            }
            let Some(chunk) = self.pool.alloc() else {
                self.drops[out][DropReason::NoFreeFrame as usize] += 1;
                continue;
            };
            let len = h.len as usize;
            // SAFETY: `chunk` was just taken off the free list: this PMD is
            // its only holder until it is queued for TX.
            unsafe { self.umem.frame_mut(chunk + FRAME_HEADROOM as u64, len) }
                .copy_from_slice(&h.data[..len]);
            self.tx[out].push(XdpDesc {
                addr: chunk + FRAME_HEADROOM as u64,
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

    /// Queues a frame for `out`: on its TX batch if this PMD owns the port,
    /// else copied into the owner's handoff queue (and freed here).
    fn emit(&mut self, out: usize, desc: XdpDesc) {
        let owner = self.owner[out].load(Ordering::Relaxed);
        if owner == self.id {
            self.tx[out].push(desc);
            return;
        }
        if owner == NO_OWNER {
            // Being removed: the switch will stop choosing it shortly.
            return self.drop_frame(out, desc, DropReason::Policy);
        }
        let len = desc.len as usize;
        if len > HANDOFF_MAX {
            // Beyond standard MTU frames: the PMDs do not share memory.
            self.drops[out][DropReason::Policy as usize] += 1;
        } else {
            let mut h = Handoff {
                port: out as u16,
                len: len as u16,
                data: [0; HANDOFF_MAX],
            };
            h.data[..len].copy_from_slice(self.umem.frame(desc.addr, len));
            let inbox = &self.inboxes[owner];
            if inbox.queue.push(h).is_err() {
                self.drops[out][DropReason::TxRingFull as usize] += 1;
            } else if inbox.sleeping.load(Ordering::SeqCst) {
                inbox.wake();
            }
        }
        self.pool.free(desc.addr);
    }

    fn switch_frame(&mut self, sw: &mut Switch, in_port: usize, desc: XdpDesc, now: Instant) {
        let data = self.umem.frame(desc.addr, desc.len as usize);
        let header = match parse_l2(data) {
            Ok(h) => h,
            Err(_) => return self.drop_frame(in_port, desc, DropReason::Malformed),
        };
        match sw.decide(in_port, &header, now) {
            Decision::Drop(_) => self.drop_frame(in_port, desc, DropReason::Policy),
            Decision::Pass { out } => self.emit(out, desc),
            Decision::Forward { out, tag, .. } => match self.retag(desc, header.vlan, tag) {
                Some(d) => self.emit(out, d),
                None => self.drop_frame(in_port, desc, DropReason::Policy),
            },
            Decision::Flood { vlan } => {
                self.targets.clear();
                self.targets.extend(sw.flood_targets(in_port, vlan));
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
                        None => self.drops[out][DropReason::NoFreeFrame as usize] += 1,
                    }
                }
                match self.retag(desc, header.vlan, last_tag) {
                    Some(d) => self.emit(last, d),
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
        self.drops[port][reason as usize] += 1;
        let chunk = self.chunk_base(desc.addr);
        self.pool.free(chunk);
    }

    fn flush_tx(&mut self) {
        for k in 0..self.own.len() {
            let out = self.own[k];
            if self.tx[out].is_empty() {
                continue;
            }
            let mut frames = Frames {
                umem: &self.umem,
                pool: &mut self.pool,
            };
            let port = self.ports[out].as_mut().expect("own port");
            port.tx_burst(&mut frames, &mut self.tx[out]);
            // What did not fit is dropped: holding it would stall the
            // ingress side behind one slow port.
            let left = self.tx[out].len();
            if left > 0 {
                // A down port takes nothing; say so rather than blame its ring.
                let reason = match port.counters().state() {
                    PortState::Down => DropReason::PortDown,
                    PortState::Up => DropReason::TxRingFull,
                };
                self.drops[out][reason as usize] += left as u64;
                for i in 0..left {
                    let chunk = self.tx[out][i].addr & !(self.umem.frame_size() as u64 - 1);
                    self.pool.free(chunk);
                }
                self.tx[out].clear();
            }
        }
    }

    fn publish_drops(&mut self) {
        if self.drops.iter().all(|d| d.iter().all(|&n| n == 0)) {
            return;
        }
        // Any PMD may drop for any port: the counters are shared.
        let ports = self.shared.ports.read_or_recover();
        for (port, drops) in self.drops.iter_mut().enumerate() {
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
        for port in self.ports.iter_mut().flatten() {
            port.maintain(&mut frames);
        }
    }

    /// Blocks in poll(2) until a port has frames, another PMD hands some
    /// over, or the timeout passes.
    fn sleep_until_traffic(&mut self) {
        let inbox = &self.inboxes[self.id];
        let mut fds: Vec<libc::pollfd> = self
            .ports
            .iter()
            .flatten()
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

    /// Once or twice a second: kernel statistics and accounting of own
    /// ports; PMD 0 also does the switch's ageing and shared copies.
    fn housekeeping(&mut self, now: Instant, busy: &mut u64, idle: &mut u64) {
        if self.id == 0 {
            self.switch_housekeeping(now);
        }
        for port in self.ports.iter_mut().flatten() {
            port.refresh_counters();
        }
        self.shared
            .busy_cycles
            .fetch_add(std::mem::take(busy), Ordering::Relaxed);
        self.shared
            .idle_cycles
            .fetch_add(std::mem::take(idle), Ordering::Relaxed);
        let (mut in_rx_rings, mut in_tx_rings) = (0, 0);
        for held in self.ports.iter().flatten().map(|p| p.frames_held()) {
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

    fn switch_housekeeping(&mut self, now: Instant) {
        let mut shared = self.switch.lock_or_recover();
        let SharedSwitch { switch, fast_path } = &mut *shared;
        if let Some(fp) = fast_path.as_mut() {
            fp.keep_alive();
            fp.refresh_ageing(switch, now);
            fp.check_egress(switch);
            let ports = self.shared.ports.read_or_recover();
            for (port, n) in fp.forwarded().into_iter().enumerate() {
                if let (Some(n), Some(Some(p))) = (n, ports.get(port)) {
                    p.counters.set_fast_path(n);
                }
            }
        }
        switch.expire(now);
        mirror_fdb(&mut shared);
        *self.shared.learning.lock_or_recover() = shared.switch.learning_stats();
    }
}

/// Applies what the switch learned to the in-kernel fast path.
pub fn mirror_fdb(shared: &mut SharedSwitch) {
    if let Some(fp) = shared.fast_path.as_mut() {
        if shared.switch.fdb().has_changes() {
            let changes = shared.switch.fdb_mut().take_changes();
            fp.apply(&changes, &shared.switch);
        }
    }
}

/// Where one PMD iteration spent its cycles.
#[derive(Debug, Clone, Copy, Default)]
struct IterationPhases {
    /// Port attach/detach commands from the control thread.
    commands: u64,
    /// Receiving, switching and sending...
    ports: u64,
    /// ... of which waiting for the switch lock ...
    lock_wait: u64,
    /// ... and handing frames to the ports, kicks and refills included.
    transmit: u64,
    /// Counters, FDB ageing, the fast-path lease (every 500 ms).
    housekeeping: u64,
}

/// An iteration longer than this is logged (at most every 10 s), with its
/// phases: a port waited that long to be served.
const SLOW_ITERATION: Duration = Duration::from_millis(10);

/// The longest PMD iteration, kept in cycles on the hot path (one compare)
/// and turned into nanoseconds at housekeeping, with the cycle rate
/// measured against the monotonic clock since the thread started.
struct LongestIteration {
    since: Instant,
    since_cycles: u64,
    cycles: u64,
    /// The longest without the transmit phase.
    own_cycles: u64,
    phases: IterationPhases,
    last_warning: Option<Instant>,
    /// The thread's involuntary context switches at the last publish.
    preempted: u64,
}

/// Involuntary context switches of the calling thread so far (the kernel
/// took the CPU away from it): tells a slow iteration caused by other
/// work on the CPU from one the PMD caused itself.
fn involuntary_switches() -> u64 {
    // SAFETY: getrusage writes one rusage struct we own.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) != 0 {
            return 0;
        }
        usage.ru_nivcsw as u64
    }
}

impl LongestIteration {
    fn new() -> LongestIteration {
        LongestIteration {
            since: Instant::now(),
            since_cycles: cycles(),
            cycles: 0,
            own_cycles: 0,
            phases: IterationPhases::default(),
            last_warning: None,
            preempted: involuntary_switches(),
        }
    }

    #[inline]
    fn note(&mut self, cycles: u64, phases: IterationPhases) {
        self.own_cycles = self.own_cycles.max(cycles.saturating_sub(phases.transmit));
        if cycles > self.cycles {
            self.cycles = cycles;
            self.phases = phases;
        }
    }

    /// Raises `into` (nanoseconds, shared by the PMDs) to the longest
    /// iteration since the last call, once the clock has run long enough
    /// (10 ms) to give the cycle rate; warns about a slow one.
    fn publish(&mut self, now: Instant, pmd: usize, into: &AtomicU64, own_into: &AtomicU64) {
        let ns = now.duration_since(self.since).as_nanos();
        let cyc = cycles().wrapping_sub(self.since_cycles) as u128;
        if ns < 10_000_000 || cyc == 0 {
            return;
        }
        let to_ns = |c: u64| u64::try_from(c as u128 * ns / cyc).unwrap_or(u64::MAX);
        let longest = to_ns(self.cycles);
        into.fetch_max(longest, Ordering::Relaxed);
        own_into.fetch_max(to_ns(self.own_cycles), Ordering::Relaxed);
        let quiet = self
            .last_warning
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10));
        let preempted = involuntary_switches();
        let preemptions = preempted.saturating_sub(self.preempted);
        self.preempted = preempted;
        if longest > SLOW_ITERATION.as_nanos() as u64 && !quiet {
            self.last_warning = Some(now);
            let ms = |c: u64| to_ns(c) as f64 / 1e6;
            tracing::warn!(
                pmd,
                "slow PMD iteration: {:.1} ms (commands {:.1} ms, ports {:.1} ms of which {:.1} ms waiting for the switch lock and {:.1} ms transmitting and refilling, housekeeping {:.1} ms); its ports waited that long; the kernel preempted this PMD {preemptions} times in the last 0.5 s (other work on its CPU: give it a CPU of its own with --core; time in transmit calls includes the kernel delivering frames into receivers on this CPU)",
                longest as f64 / 1e6,
                ms(self.phases.commands),
                ms(self.phases.ports),
                ms(self.phases.lock_wait),
                ms(self.phases.transmit),
                ms(self.phases.housekeeping),
            );
        }
        self.cycles = 0;
        self.own_cycles = 0;
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
