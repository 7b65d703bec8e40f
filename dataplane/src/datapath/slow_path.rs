//! The slow path: the one thread that writes the switch's state, so that
//! the PMDs only forward.
//!
//! It learns what the PMDs saw (their [`Sighting`]s, handed over through
//! one bounded queue per PMD: a PMD never waits, a full queue is counted),
//! and twice a second does the housekeeping: FDB ageing, the fast path's
//! lease, ageing and egress checks, its counters. After each round it
//! publishes the changes ([`SharedSwitch::publish`]): to the kernel's
//! fast-path maps and to every PMD's view. The control side changes the
//! switch under the same lock and publishes the same way; the PMDs never
//! take that lock. OVS splits its PMDs from its revalidator and handler
//! threads for the same reason: a syscall or a scan on a PMD stalls every
//! port it polls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::pmds::{EngineShared, SharedSwitch};
use crate::switch::Sighting;
use crate::sync::{LockOrRecover, RwLockOrRecover};

/// Sightings waiting per PMD, at most: a MAC flood fills it and the rest
/// are counted (`queue_full`), the established flows are not slowed.
const SIGHTINGS_PER_PMD: usize = 4096;
/// Housekeeping period.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);
/// After a round that learned something, the slow path waits this long
/// before the next one, so that a PMD wakes it (a futex call) at most a
/// few thousand times a second whatever the rate of new addresses.
const MIN_ROUND: Duration = Duration::from_micros(200);
/// While the FDB is full, each PMD reports at most one new address this
/// often (enough to learn one as soon as an entry expires), and counts the
/// rest as `table_full` itself: a MAC flood then costs the slow path next
/// to nothing, and it shares a CPU with other work.
pub(super) const NEW_WHILE_FULL_EVERY: Duration = Duration::from_millis(1);

/// How the PMDs reach the slow path.
pub(super) struct SlowPathLink {
    /// One queue per PMD: single producer, single consumer.
    queues: Vec<ArrayQueue<Sighting>>,
    /// Set when a sighting is queued and the slow path has not started a
    /// round since: only the PMD that sets it wakes the thread.
    pending: AtomicBool,
    /// The slow path's thread (set before any PMD starts).
    thread: OnceLock<Thread>,
    /// Sightings refused by a full queue, over all PMDs.
    queue_full: AtomicU64,
    /// The FDB is full (set by the slow path after each round).
    table_full: AtomicBool,
    /// New addresses the PMDs did not report while the table was full.
    not_reported: AtomicU64,
}

impl SlowPathLink {
    pub(super) fn new(pmds: usize) -> SlowPathLink {
        SlowPathLink {
            queues: (0..pmds)
                .map(|_| ArrayQueue::new(SIGHTINGS_PER_PMD))
                .collect(),
            pending: AtomicBool::new(false),
            thread: OnceLock::new(),
            queue_full: AtomicU64::new(0),
            table_full: AtomicBool::new(false),
            not_reported: AtomicU64::new(0),
        }
    }

    /// True while the FDB is full.
    pub(super) fn table_full(&self) -> bool {
        self.table_full.load(Ordering::Relaxed)
    }

    /// A PMD did not report `n` new addresses while the table was full.
    pub(super) fn count_not_reported(&self, n: u64) {
        self.not_reported.fetch_add(n, Ordering::Relaxed);
    }

    /// New addresses not reported while the table was full, so far.
    pub(super) fn not_reported(&self) -> u64 {
        self.not_reported.load(Ordering::Relaxed)
    }

    /// Hands PMD `pmd`'s sighting to the slow path; never blocks.
    pub(super) fn report(&self, pmd: usize, seen: Sighting) {
        if self.queues[pmd].push(seen).is_err() {
            self.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Sightings refused so far because a queue was full.
    pub(super) fn queue_full(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    /// Wakes the slow path (to see a stop request at once).
    pub(super) fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Starts the slow-path thread.
pub(super) fn start(
    link: Arc<SlowPathLink>,
    switch: Arc<Mutex<SharedSwitch>>,
    shared: Arc<EngineShared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let thread_link = link.clone();
    let handle = std::thread::Builder::new()
        .name("dataplane-slow".into())
        .spawn(move || run(&thread_link, &switch, &shared))?;
    let _ = link.thread.set(handle.thread().clone());
    Ok(handle)
}

fn run(link: &SlowPathLink, switch: &Mutex<SharedSwitch>, shared: &EngineShared) {
    let mut batch: Vec<Sighting> = Vec::with_capacity(SIGHTINGS_PER_PMD);
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
    while !shared.stop.load(Ordering::Relaxed) {
        // Cleared before draining: a sighting queued from here on wakes us
        // again, one queued before is drained now.
        link.pending.store(false, Ordering::SeqCst);
        batch.clear();
        let mut more = false;
        for queue in &link.queues {
            for _ in 0..SIGHTINGS_PER_PMD {
                match queue.pop() {
                    Some(seen) => batch.push(seen),
                    None => break,
                }
            }
            more |= !queue.is_empty();
        }
        let now = Instant::now();
        let due = now >= next_housekeeping;
        if !batch.is_empty() || due {
            let mut guard = switch.lock_or_recover();
            for seen in &batch {
                guard.switch.learn(seen);
            }
            if due {
                next_housekeeping = now + HOUSEKEEPING_EVERY;
                housekeeping(&mut guard, now, shared);
            }
            guard.publish();
            link.table_full
                .store(guard.switch.fdb_is_full(), Ordering::Relaxed);
        }
        if more {
            continue;
        }
        if !batch.is_empty() {
            std::thread::sleep(MIN_ROUND);
        }
        let until_due = next_housekeeping.saturating_duration_since(Instant::now());
        if !link.pending.load(Ordering::SeqCst) {
            std::thread::park_timeout(until_due);
        }
    }
}

/// Twice a second: ageing, and the fast path's upkeep and counters.
fn housekeeping(guard: &mut SharedSwitch, now: Instant, shared: &EngineShared) {
    let SharedSwitch {
        switch, fast_path, ..
    } = guard;
    if let Some(fp) = fast_path.as_mut() {
        fp.keep_alive();
        fp.refresh_tunnels(switch);
        fp.refresh_ageing(switch, now);
        fp.check_egress(switch);
        let ports = shared.ports.read_or_recover();
        for (port, n) in fp.forwarded().into_iter().enumerate() {
            if let (Some(n), Some(Some(p))) = (n, ports.get(port)) {
                p.counters.set_fast_path(n);
            }
        }
    }
    switch.expire(now);
}
