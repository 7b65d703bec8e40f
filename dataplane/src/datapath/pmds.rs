//! The PMD threads seen from the control side: start them, hand a port to
//! one and take it back, read what they share (ports, counters, frame
//! accounting), stop them. The threads' own loop is [`super::engine`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::Duration;

use super::engine::{Engine, EngineLinks};
use super::fastpath::FastPath;
use super::inbox::{Inbox, PmdCommand};
use super::slow_path::{self, SlowPathLink};
use crate::port::{Port, PortCounters};
use crate::switch::{self, PortTable, Switch};
use crate::sync::{LockOrRecover, RwLockOrRecover};
use crate::xsk::{FramePool, Umem};

/// `owner` value of a slot no PMD serves.
pub(super) const NO_OWNER: usize = usize::MAX;
/// How long the control side waits for a PMD to take or give back a port.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a port could not be attached to or detached from a PMD.
#[derive(Debug, thiserror::Error)]
pub enum PortChangeError {
    #[error("no free port slot: this switch has {0} (run it with a larger --max-ports)")]
    NoSlot(usize),
    #[error("port {0} is not served by any PMD")]
    NotServed(usize),
    #[error("PMD {0} did not answer within {COMMAND_TIMEOUT:?} (stopped or stuck)")]
    NoAnswer(usize),
}

/// The switch and its mirrors: the in-kernel fast path and the PMDs'
/// views. The slow path and the control side change it under its lock and
/// then [`SharedSwitch::publish`]; the PMDs never lock it.
pub struct SharedSwitch {
    pub switch: Switch,
    /// Taken out (and so turned off) before any port closes.
    pub fast_path: Option<FastPath>,
    /// Every PMD's inbox, where view updates go.
    inboxes: Arc<Vec<Inbox>>,
    /// The port table the PMDs were last given.
    published: Arc<PortTable>,
}

impl SharedSwitch {
    /// Sends what changed since the last call to the fast path's maps and
    /// to every PMD's view. Call after every change, before unlocking.
    pub fn publish(&mut self) {
        let changes = self.switch.fdb_mut().take_changes();
        if !changes.is_empty() {
            if let Some(fp) = self.fast_path.as_mut() {
                fp.apply(&changes, &self.switch);
            }
        }
        let ports = (!Arc::ptr_eq(self.switch.port_table(), &self.published))
            .then(|| self.switch.port_table().clone());
        if changes.is_empty() && ports.is_none() {
            return;
        }
        if let Some(p) = &ports {
            self.published = p.clone();
        }
        let fdb: Arc<[switch::FdbChange]> = changes.into();
        for inbox in self.inboxes.iter() {
            inbox.post(PmdCommand::View {
                ports: ports.clone(),
                fdb: fdb.clone(),
            });
        }
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
    /// Port slots: switch port ids are below it.
    pub max_ports: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            burst: 64,
            busy_poll: false,
            cpu: None,
            max_ports: dataplane_common::MAX_PORTS as usize,
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
    pub(super) stop: AtomicBool,
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
    pub(super) accounting: Mutex<Vec<FrameAccounting>>,
    /// The ports, by switch port id (slot); `None` for a free slot.
    pub(super) ports: RwLock<Vec<Option<PortEntry>>>,
    /// Port slots.
    pub max_ports: usize,
    /// Per PMD thread: its CPU and its own busy and idle cycles (the sums
    /// are `busy_cycles` and `idle_cycles`).
    pub pmds: Vec<PmdCycles>,
    /// Per PMD thread, per port id: cycles spent on the bursts it received
    /// from its part of that port (receiving, deciding, transmitting).
    pub rxq_cycles: Vec<Vec<AtomicU64>>,
}

/// One PMD thread's CPU and cycles.
pub struct PmdCycles {
    pub cpu: Option<usize>,
    pub busy: AtomicU64,
    pub idle: AtomicU64,
}

/// A port as the outside world sees it.
#[derive(Clone)]
pub struct PortEntry {
    pub name: String,
    pub counters: Arc<PortCounters>,
    /// The PMD thread of its primary part: frames other PMDs send to the
    /// port go through it.
    pub pmd: usize,
    /// (PMD, receive queues) of each part, primary first; empty while the
    /// port is closed (its interface is gone) but keeps its slot.
    pub parts: Vec<(usize, Vec<u32>)>,
}

/// A port, or the part of one a PMD serves: some of its receive queues,
/// opened on that PMD's UMEM.
pub struct PortPart {
    /// Switch port id.
    pub id: usize,
    pub port: Box<dyn Port>,
    pub queues: Vec<u32>,
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

/// Environment variable for a test: PMD 0 panics once it has switched
/// this many frames. It exists so that the suite can
/// check that a PMD panic stops the whole switch cleanly (ports closed,
/// steer detached, an error naming the cause); nothing else reads it.
pub const PANIC_AFTER_ENV: &str = "DATAPLANE_TEST_PMD_PANIC_AFTER";

/// What one PMD thread starts with.
pub struct PmdParts {
    /// CPU to pin it to.
    pub cpu: Option<usize>,
    pub umem: Arc<Umem>,
    pub pool: FramePool,
    /// The ports (or parts of ports) it serves, opened on `umem`.
    pub ports: Vec<PortPart>,
}

/// Ports with their global ids, as a PMD thread hands them back.
pub(super) type OwnedPorts = Vec<(usize, Box<dyn Port>)>;

/// A PMD thread panicked (its ports were released as it unwound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmdPanicked;

/// Running PMD threads.
pub struct Running {
    pub shared: Arc<EngineShared>,
    switch: Arc<Mutex<SharedSwitch>>,
    threads: Vec<std::thread::JoinHandle<OwnedPorts>>,
    slow_path: std::thread::JoinHandle<()>,
    slow_link: Arc<SlowPathLink>,
    inboxes: Arc<Vec<Inbox>>,
    /// Each PMD's UMEM: ports added at runtime are opened on it.
    umems: Vec<Arc<Umem>>,
}

impl Running {
    /// True once any PMD thread has ended (it only ends when asked, or on a panic).
    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished()) || self.slow_path.is_finished()
    }

    /// The switch and its fast path, written by the slow path and the
    /// control side (publish after a change).
    pub fn switch(&self) -> &Arc<Mutex<SharedSwitch>> {
        &self.switch
    }

    /// Learning counters, with the sightings the PMDs could not hand over.
    pub fn learning_stats(&self) -> switch::LearningStats {
        let mut stats = self.switch.lock_or_recover().switch.learning_stats();
        stats.queue_full = self.slow_link.queue_full();
        stats.table_full += self.slow_link.not_reported();
        stats
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
        (0..self.shared.max_ports)
            .find(|&id| ports.get(id).is_none_or(Option::is_none))
            .ok_or(PortChangeError::NoSlot(self.shared.max_ports))
    }

    /// Receive queues PMD `pmd` polls.
    pub fn queues_polled_by(&self, pmd: usize) -> usize {
        self.shared
            .ports
            .read_or_recover()
            .iter()
            .flatten()
            .flat_map(|p| p.parts.iter())
            .filter(|(p, _)| *p == pmd)
            .map(|(_, queues)| queues.len())
            .sum()
    }

    /// The PMD polling the fewest receive queues (where a new port's
    /// first queue goes).
    pub fn least_loaded_pmd(&self) -> usize {
        (0..self.pmd_count())
            .min_by_key(|&pmd| self.queues_polled_by(pmd))
            .unwrap_or(0)
    }

    /// Hands `port` (switch port `id`, or its part on `queues`), opened on
    /// PMD `pmd`'s UMEM, to that PMD and waits until it serves it. The first
    /// part attached is the primary. The switch learns of the port only
    /// after every part is attached (the caller adds it), so no frame is
    /// sent to a port nobody serves.
    pub fn attach_port(
        &self,
        pmd: usize,
        id: usize,
        port: Box<dyn Port>,
        queues: Vec<u32>,
    ) -> Result<(), PortChangeError> {
        let primary = {
            let mut ports = self.shared.ports.write_or_recover();
            if ports.len() <= id {
                ports.resize(id + 1, None);
            }
            match ports[id].as_mut() {
                Some(entry) if !entry.parts.is_empty() => {
                    entry.parts.push((pmd, queues));
                    false
                }
                _ => {
                    ports[id] = Some(PortEntry {
                        name: port.name().to_string(),
                        counters: port.counters().clone(),
                        pmd,
                        parts: vec![(pmd, queues)],
                    });
                    true
                }
            }
        };
        let (done, answer) = mpsc::channel();
        self.inboxes[pmd].command(PmdCommand::Attach {
            id,
            port,
            primary,
            done,
        });
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
        let parts: Vec<usize> = self
            .shared
            .ports
            .write_or_recover()
            .get_mut(id)
            .and_then(Option::as_mut)
            .map(|e| {
                std::mem::take(&mut e.parts)
                    .into_iter()
                    .map(|(pmd, _)| pmd)
                    .collect()
            })
            .unwrap_or_default();
        if parts.is_empty() {
            return Err(PortChangeError::NotServed(id));
        }
        // The primary last: until then the other PMDs still hand it the
        // port's frames.
        for &pmd in parts.iter().rev() {
            self.detach_part(pmd, id)?;
        }
        Ok(())
    }

    /// Takes PMD `pmd`'s part of port `id` away and closes it.
    fn detach_part(&self, pmd: usize, id: usize) -> Result<(), PortChangeError> {
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
    /// last-opened first.
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
        self.slow_link.wake();
        if self.slow_path.join().is_err() {
            panicked = true;
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
/// (switch port ids, below `config.max_ports`).
pub fn start(
    config: EngineConfig,
    pmds: Vec<PmdParts>,
    switch: Switch,
    fast_path: Option<FastPath>,
) -> std::io::Result<Running> {
    let n_ports = config.max_ports;
    let shared = Arc::new(EngineShared {
        stop: AtomicBool::new(false),
        busy_cycles: AtomicU64::new(0),
        idle_cycles: AtomicU64::new(0),
        longest_iteration_ns: AtomicU64::new(0),
        longest_own_iteration_ns: AtomicU64::new(0),
        accounting: Mutex::new(vec![FrameAccounting::default(); pmds.len()]),
        ports: RwLock::new(vec![None; n_ports]),
        max_ports: n_ports,
        rxq_cycles: pmds
            .iter()
            .map(|_| (0..n_ports).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        pmds: pmds
            .iter()
            .map(|p| PmdCycles {
                cpu: p.cpu,
                busy: AtomicU64::new(0),
                idle: AtomicU64::new(0),
            })
            .collect(),
    });
    let owner: Arc<Vec<AtomicUsize>> =
        Arc::new((0..n_ports).map(|_| AtomicUsize::new(NO_OWNER)).collect());
    {
        let mut entries = shared.ports.write_or_recover();
        for (pmd, parts) in pmds.iter().enumerate() {
            for part in &parts.ports {
                // The part on the lowest PMD is the primary.
                let entry = entries[part.id].get_or_insert_with(|| {
                    owner[part.id].store(pmd, Ordering::Relaxed);
                    PortEntry {
                        name: part.port.name().to_string(),
                        counters: part.port.counters().clone(),
                        pmd,
                        parts: Vec::new(),
                    }
                });
                entry.parts.push((pmd, part.queues.clone()));
            }
        }
    }
    let umems: Vec<Arc<Umem>> = pmds.iter().map(|p| p.umem.clone()).collect();
    let inboxes = Arc::new(
        pmds.iter()
            .map(|p| Inbox::new(p.umem.frame_size() as usize))
            .collect::<std::io::Result<Vec<_>>>()?,
    );
    let views: Vec<_> = pmds.iter().map(|_| switch.view()).collect();
    let switch = Arc::new(Mutex::new(SharedSwitch {
        published: switch.port_table().clone(),
        switch,
        fast_path,
        inboxes: inboxes.clone(),
    }));
    let slow_link = Arc::new(SlowPathLink::new(pmds.len()));
    let slow_path = slow_path::start(slow_link.clone(), switch.clone(), shared.clone())?;
    let mut threads = Vec::new();
    for ((id, parts), view) in pmds.into_iter().enumerate().zip(views) {
        let engine = Engine::new(
            id,
            EngineConfig {
                cpu: parts.cpu,
                ..config.clone()
            },
            parts,
            EngineLinks {
                owner: owner.clone(),
                view,
                slow_path: slow_link.clone(),
                inboxes: inboxes.clone(),
                shared: shared.clone(),
            },
        );
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
        slow_path,
        slow_link,
        inboxes,
        umems,
    })
}
