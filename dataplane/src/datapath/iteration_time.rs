//! How long PMD iterations take: the longest, split into phases, published
//! to the statistics and logged when a port had to wait too long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where one PMD iteration spent its cycles.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IterationPhases {
    /// Port attach/detach commands and view updates.
    pub(super) commands: u64,
    /// Receiving, switching and sending...
    pub(super) ports: u64,
    /// ... of which handing frames to the ports, kicks and refills.
    pub(super) transmit: u64,
    /// Port counters and frame accounting (every 500 ms).
    pub(super) housekeeping: u64,
}

/// An iteration longer than this is logged (at most every 10 s), with its
/// phases: a port waited that long to be served.
const SLOW_ITERATION: Duration = Duration::from_millis(10);

/// The longest PMD iteration, kept in cycles on the hot path (one compare)
/// and turned into nanoseconds at housekeeping, with the cycle rate
/// measured against the monotonic clock since the thread started.
pub(super) struct LongestIteration {
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
    pub(super) fn new() -> LongestIteration {
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
    pub(super) fn note(&mut self, cycles: u64, phases: IterationPhases) {
        self.own_cycles = self.own_cycles.max(cycles.saturating_sub(phases.transmit));
        if cycles > self.cycles {
            self.cycles = cycles;
            self.phases = phases;
        }
    }

    /// Raises `into` (nanoseconds, shared by the PMDs) to the longest
    /// iteration since the last call, once the clock has run long enough
    /// (10 ms) to give the cycle rate; warns about a slow one.
    pub(super) fn publish(
        &mut self,
        now: Instant,
        pmd: usize,
        into: &AtomicU64,
        own_into: &AtomicU64,
    ) {
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
                "slow PMD iteration: {:.1} ms (commands {:.1} ms, ports {:.1} ms of which {:.1} ms transmitting and refilling, housekeeping {:.1} ms); its ports waited that long; the kernel preempted this PMD {preemptions} times in the last 0.5 s (other work on its CPU: give it a CPU of its own with --core; time in transmit calls includes the kernel delivering frames into receivers on this CPU)",
                longest as f64 / 1e6,
                ms(self.phases.commands),
                ms(self.phases.ports),
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
pub(super) fn cycles() -> u64 {
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
