//! The single-producer / single-consumer rings AF_XDP shares with the kernel.
//!
//! A ring is a power-of-two array of entries, a producer index, a consumer
//! index and a flags word. The indices are free-running u32s (they wrap at
//! 2^32; an entry's slot is `index & (size - 1)`). Each side writes only its
//! own index: the producer publishes entries with a Release store of the
//! producer index, and the consumer sees them after an Acquire load of it;
//! symmetrically, the consumer hands slots back with a Release store of the
//! consumer index, which the producer Acquire-loads before overwriting them.
//!
//! Both sides keep cached copies of the two indices, so the shared cache
//! lines are touched once per burst, not once per entry: the other side's
//! index is re-read only when the cached view cannot satisfy a request.
//!
//! The rings work over any memory ([`ProducerRing::from_raw_parts`]), which
//! is how the unit tests drive them without a kernel; [`map_producer`] and
//! [`map_consumer`] map a socket's kernel ring and tie the mapping's lifetime
//! to the ring.

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys::{XdpMmapOffsets, XdpRingOffset, SOL_XDP, XDP_MMAP_OFFSETS, XDP_RING_NEED_WAKEUP};

/// One frame in the UMEM: `struct xdp_desc`, the entry of the RX and TX rings.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XdpDesc {
    /// Offset of the frame's first byte from the start of the UMEM (it may
    /// point past the chunk's start: RX headroom, a pushed tag).
    pub addr: u64,
    /// Frame length in bytes.
    pub len: u32,
    /// Option flags (multi-buffer continuation); 0 here.
    pub options: u32,
}

/// Raw pointers into one ring's memory.
struct RingPtrs<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    /// Entries; a power of two.
    size: u32,
}

impl<T> RingPtrs<T> {
    /// Bundles the pointers of one ring (both constructors' contract applies).
    fn new(
        producer: *const AtomicU32,
        consumer: *const AtomicU32,
        flags: *const AtomicU32,
        descs: *mut T,
        size: u32,
    ) -> Self {
        assert!(
            size.is_power_of_two(),
            "ring size {size} is not a power of two"
        );
        RingPtrs {
            producer,
            consumer,
            flags,
            descs,
            size,
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: the constructors' contract: the pointer is valid and
        // aligned for as long as the ring (and so `self`) lives.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { &*self.consumer }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { &*self.flags }
    }

    /// The slot of free-running index `index`.
    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `descs` holds `size` entries and `size` is a power of two,
        // so the masked index is in bounds of that allocation.
        unsafe { self.descs.add((index & (self.size - 1)) as usize) }
    }
}

/// A ring this process produces into: fill (`u64` frame addresses) and TX
/// ([`XdpDesc`]).
///
/// Usage per burst: `n = reserve(want)`, `write(0..n)`, `submit(n)`.
pub struct ProducerRing<T> {
    ptrs: RingPtrs<T>,
    /// Our producer index (the shared one lags until `submit`).
    cached_prod: u32,
    /// The consumer index as last read.
    cached_cons: u32,
    /// Slots granted by the last `reserve`, for debug checks.
    reserved: u32,
    /// The kernel mapping the pointers point into, if any; unmapped when
    /// the ring is dropped, so the pointers never dangle.
    _map: Option<RingMap>,
}

/// A ring this process consumes from: RX ([`XdpDesc`]) and completion
/// (`u64` frame addresses).
///
/// Usage per burst: `n = peek(max)`, `read(0..n)`, `release(n)`.
pub struct ConsumerRing<T> {
    ptrs: RingPtrs<T>,
    /// The producer index as last read.
    cached_prod: u32,
    /// Our consumer index (the shared one lags until `release`).
    cached_cons: u32,
    _map: Option<RingMap>,
}

// SAFETY: a ring is a unique handle on its side of the ring memory (the
// constructors' contract); every mutation goes through `&mut self`, and the
// other side synchronises through the atomic indices. Moving the handle to
// another thread does not change that.
unsafe impl<T: Send> Send for ProducerRing<T> {}
// SAFETY: as for ProducerRing.
unsafe impl<T: Send> Send for ConsumerRing<T> {}

impl<T: Copy> ProducerRing<T> {
    /// A producer over arbitrary ring memory whose indices may already be
    /// anywhere (e.g. near `u32::MAX`).
    ///
    /// # Safety
    /// - `producer`, `consumer` and `flags` point to aligned `AtomicU32`s and
    ///   `descs` to `size` writable entries of `T`, all valid for as long as
    ///   the returned ring lives;
    /// - `size` is a power of two;
    /// - nobody else produces into this memory (the consumer side may be
    ///   anyone: the kernel, or a [`ConsumerRing`] in a test).
    pub unsafe fn from_raw_parts(
        producer: *const AtomicU32,
        consumer: *const AtomicU32,
        flags: *const AtomicU32,
        descs: *mut T,
        size: u32,
    ) -> Self {
        let ptrs = RingPtrs::new(producer, consumer, flags, descs, size);
        ProducerRing {
            cached_prod: ptrs.producer().load(Ordering::Relaxed),
            cached_cons: ptrs.consumer().load(Ordering::Acquire),
            ptrs,
            reserved: 0,
            _map: None,
        }
    }

    /// Entries in the ring.
    pub fn size(&self) -> u32 {
        self.ptrs.size
    }

    /// How many slots (up to `want`) are free to [`write`](Self::write).
    /// Re-reads the consumer index only when the cached view has fewer
    /// than `want`. Calling it again without submitting re-grants the same
    /// slots.
    pub fn reserve(&mut self, want: u32) -> u32 {
        let size = self.ptrs.size;
        let mut free = size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free < want {
            // Acquire: the consumer's reads of these slots happened before
            // it published the index, so we may overwrite them.
            self.cached_cons = self.ptrs.consumer().load(Ordering::Acquire);
            free = size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        self.reserved = free.min(want);
        self.reserved
    }

    /// Writes the `i`-th reserved slot; invisible to the consumer until
    /// [`submit`](Self::submit).
    #[inline]
    pub fn write(&mut self, i: u32, value: T) {
        debug_assert!(
            i < self.reserved,
            "write({i}) beyond {} reserved",
            self.reserved
        );
        // SAFETY: slot `cached_prod + i` lies between the published producer
        // index and the consumer index plus size (it was reserved), so the
        // consumer does not read it until we publish it.
        unsafe {
            self.ptrs
                .slot(self.cached_prod.wrapping_add(i))
                .write(value)
        };
    }

    /// Publishes the first `n` written slots (`n` <= reserved; the rest are
    /// simply not published).
    pub fn submit(&mut self, n: u32) {
        debug_assert!(
            n <= self.reserved,
            "submit({n}) beyond {} reserved",
            self.reserved
        );
        if n == 0 {
            return;
        }
        self.reserved -= n;
        self.cached_prod = self.cached_prod.wrapping_add(n);
        // Release: the entry writes above become visible before the index.
        self.ptrs
            .producer()
            .store(self.cached_prod, Ordering::Release);
    }

    /// Entries published and not yet consumed (reads the consumer index).
    pub fn pending(&self) -> u32 {
        self.cached_prod
            .wrapping_sub(self.ptrs.consumer().load(Ordering::Acquire))
    }

    /// True if the consumer (the kernel) set `XDP_RING_NEED_WAKEUP`: it will
    /// not look at this ring again until a syscall wakes it.
    pub fn needs_wakeup(&self) -> bool {
        // Relaxed: a hint; a stale value costs at most one extra or one
        // delayed syscall, as in libxdp.
        self.ptrs.flags().load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

impl<T: Copy> ConsumerRing<T> {
    /// A consumer over arbitrary ring memory whose indices may already be
    /// anywhere (e.g. near `u32::MAX`).
    ///
    /// # Safety
    /// As [`ProducerRing::from_raw_parts`], with "nobody else consumes from
    /// this memory" (`descs` need only be readable).
    pub unsafe fn from_raw_parts(
        producer: *const AtomicU32,
        consumer: *const AtomicU32,
        flags: *const AtomicU32,
        descs: *mut T,
        size: u32,
    ) -> Self {
        let ptrs = RingPtrs::new(producer, consumer, flags, descs, size);
        ConsumerRing {
            cached_cons: ptrs.consumer().load(Ordering::Relaxed),
            cached_prod: ptrs.producer().load(Ordering::Acquire),
            ptrs,
            _map: None,
        }
    }

    /// Entries in the ring.
    pub fn size(&self) -> u32 {
        self.ptrs.size
    }

    /// How many entries (up to `want`) are ready to [`read`](Self::read).
    /// Re-reads the producer index only when the cached view has fewer
    /// than `want`.
    pub fn peek(&mut self, want: u32) -> u32 {
        let mut ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if ready < want {
            // Acquire: the producer's entry writes happened before it
            // published the index, so reading them now is ordered.
            self.cached_prod = self.ptrs.producer().load(Ordering::Acquire);
            ready = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        ready.min(want)
    }

    /// Reads the `i`-th ready entry (`i` < what [`peek`](Self::peek) returned).
    #[inline]
    pub fn read(&self, i: u32) -> T {
        debug_assert!(
            i < self.cached_prod.wrapping_sub(self.cached_cons),
            "read({i}) beyond the peeked entries"
        );
        // SAFETY: slot `cached_cons + i` lies between our consumer index and
        // the producer index we Acquire-loaded: published by the producer
        // and not yet handed back, so the producer does not write it.
        unsafe { self.ptrs.slot(self.cached_cons.wrapping_add(i)).read() }
    }

    /// Hands the first `n` read entries back to the producer.
    pub fn release(&mut self, n: u32) {
        debug_assert!(
            n <= self.cached_prod.wrapping_sub(self.cached_cons),
            "release({n}) beyond the peeked entries"
        );
        if n == 0 {
            return;
        }
        self.cached_cons = self.cached_cons.wrapping_add(n);
        // Release: our reads of the entries complete before the producer
        // may reuse their slots.
        self.ptrs
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }

    /// True if the producer set `XDP_RING_NEED_WAKEUP` (not used by the
    /// kernel on RX/completion today; here for symmetry).
    pub fn needs_wakeup(&self) -> bool {
        self.ptrs.flags().load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

/// An mmap of one kernel ring; unmapped on drop. Owned by the ring whose
/// pointers point into it.
struct RingMap {
    addr: NonNull<libc::c_void>,
    len: usize,
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned, and the only
        // pointers into the mapping belong to the ring being dropped.
        unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// Reads where the kernel placed the indices, flags and entries of the
/// socket's four rings (`getsockopt(XDP_MMAP_OFFSETS)`).
pub fn mmap_offsets(fd: RawFd) -> std::io::Result<XdpMmapOffsets> {
    let mut off = XdpMmapOffsets::default();
    let mut len = std::mem::size_of::<XdpMmapOffsets>() as libc::socklen_t;
    // SAFETY: `off` is writable for `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_MMAP_OFFSETS,
            (&mut off as *mut XdpMmapOffsets).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<XdpMmapOffsets>() {
        // Kernels before 5.4 have no flags word, so no need_wakeup.
        return Err(std::io::Error::other(format!(
            "the kernel returned a {len}-byte xdp_mmap_offsets (no ring flags): kernel >= 5.4 needed"
        )));
    }
    Ok(off)
}

/// Maps the ring at page offset `pgoff` of socket `fd` (entries of `T`),
/// returning the mapping and the pointers into it.
fn map_ring<T>(
    fd: RawFd,
    off: &XdpRingOffset,
    size: u32,
    pgoff: libc::off_t,
) -> std::io::Result<(RingMap, RingPtrs<T>)> {
    if !size.is_power_of_two() {
        return Err(std::io::Error::other(format!(
            "ring size {size} is not a power of two"
        )));
    }
    let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
    // SAFETY: asks for a fresh shared mapping of the socket's ring; no
    // existing memory is affected; the result is checked below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            pgoff,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let map = RingMap {
        addr: NonNull::new(addr).expect("mmap returned NULL"),
        len,
    };
    let base = addr.cast::<u8>();
    // SAFETY: the kernel sized the ring's mapping to hold its indices and
    // flags (at these offsets, in front of `desc`) and `size` entries from
    // `desc` on: every pointer stays inside the `len` bytes just mapped.
    let ptrs = unsafe {
        RingPtrs::new(
            base.add(off.producer as usize).cast::<AtomicU32>(),
            base.add(off.consumer as usize).cast::<AtomicU32>(),
            base.add(off.flags as usize).cast::<AtomicU32>(),
            base.add(off.desc as usize).cast::<T>(),
            size,
        )
    };
    debug_assert!(ptrs.descs.is_aligned() && ptrs.producer.is_aligned());
    Ok((map, ptrs))
}

/// Maps a kernel ring this process produces into (fill at
/// `XDP_UMEM_PGOFF_FILL_RING`, TX at `XDP_PGOFF_TX_RING`); the ring owns
/// the mapping.
pub fn map_producer<T: Copy>(
    fd: RawFd,
    off: &XdpRingOffset,
    size: u32,
    pgoff: libc::off_t,
) -> std::io::Result<ProducerRing<T>> {
    let (map, p) = map_ring::<T>(fd, off, size, pgoff)?;
    // SAFETY: the pointers are valid for as long as `map`, which the ring
    // owns; the kernel only consumes from this ring, and this is the only
    // producer handle on it (one call per socket and ring).
    let mut ring =
        unsafe { ProducerRing::from_raw_parts(p.producer, p.consumer, p.flags, p.descs, size) };
    ring._map = Some(map);
    Ok(ring)
}

/// Maps a kernel ring this process consumes from (RX at
/// `XDP_PGOFF_RX_RING`, completion at `XDP_UMEM_PGOFF_COMPLETION_RING`);
/// the ring owns the mapping.
pub fn map_consumer<T: Copy>(
    fd: RawFd,
    off: &XdpRingOffset,
    size: u32,
    pgoff: libc::off_t,
) -> std::io::Result<ConsumerRing<T>> {
    let (map, p) = map_ring::<T>(fd, off, size, pgoff)?;
    // SAFETY: as in `map_producer`, with the kernel the only producer and
    // this handle the only consumer.
    let mut ring =
        unsafe { ConsumerRing::from_raw_parts(p.producer, p.consumer, p.flags, p.descs, size) };
    ring._map = Some(map);
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ring memory on the heap, driven by one producer and one consumer
    /// handle (one of which plays the kernel).
    struct FakeRing<T> {
        producer: Box<AtomicU32>,
        consumer: Box<AtomicU32>,
        flags: Box<AtomicU32>,
        descs: Vec<T>,
    }

    impl<T: Copy + Default> FakeRing<T> {
        fn new(size: u32, start: u32) -> FakeRing<T> {
            FakeRing {
                producer: Box::new(AtomicU32::new(start)),
                consumer: Box::new(AtomicU32::new(start)),
                flags: Box::new(AtomicU32::new(0)),
                descs: vec![T::default(); size as usize],
            }
        }

        fn pair(&mut self) -> (ProducerRing<T>, ConsumerRing<T>) {
            let size = self.descs.len() as u32;
            let d = self.descs.as_mut_ptr();
            let (p, c, f): (*const AtomicU32, *const AtomicU32, *const AtomicU32) =
                (&*self.producer, &*self.consumer, &*self.flags);
            // SAFETY: the boxes and the Vec are never moved or resized while
            // the rings live (each test keeps `self` alive and untouched
            // except through atomics); one producer and one consumer handle.
            unsafe {
                (
                    ProducerRing::from_raw_parts(p, c, f, d, size),
                    ConsumerRing::from_raw_parts(p, c, f, d, size),
                )
            }
        }
    }

    fn produce(p: &mut ProducerRing<u64>, values: &[u64]) -> u32 {
        let n = p.reserve(values.len() as u32);
        for i in 0..n {
            p.write(i, values[i as usize]);
        }
        p.submit(n);
        n
    }

    fn consume(c: &mut ConsumerRing<u64>, max: u32) -> Vec<u64> {
        let n = c.peek(max);
        let out = (0..n).map(|i| c.read(i)).collect();
        c.release(n);
        out
    }

    #[test]
    fn reserve_submit_peek_release_in_order() {
        let mut mem = FakeRing::<u64>::new(8, 0);
        let (mut p, mut c) = mem.pair();
        assert_eq!(c.peek(4), 0, "empty");
        assert_eq!(produce(&mut p, &[1, 2, 3]), 3);
        assert_eq!(mem.producer.load(Ordering::Relaxed), 3, "published");
        assert_eq!(c.peek(2), 2, "capped by want");
        assert_eq!((c.read(0), c.read(1)), (1, 2));
        c.release(1);
        assert_eq!(mem.consumer.load(Ordering::Relaxed), 1);
        assert_eq!(consume(&mut c, 10), vec![2, 3]);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn unsubmitted_writes_are_invisible() {
        let mut mem = FakeRing::<u64>::new(8, 0);
        let (mut p, mut c) = mem.pair();
        assert_eq!(p.reserve(4), 4);
        for i in 0..4 {
            p.write(i, 10 + i as u64);
        }
        assert_eq!(c.peek(8), 0, "nothing published yet");
        p.submit(2);
        assert_eq!(consume(&mut c, 8), vec![10, 11]);
        // Reserving again re-grants from the first unsubmitted slot.
        assert_eq!(produce(&mut p, &[20]), 1);
        assert_eq!(consume(&mut c, 8), vec![20]);
    }

    #[test]
    fn full_ring_grants_nothing_until_released() {
        let mut mem = FakeRing::<u64>::new(8, 0);
        let (mut p, mut c) = mem.pair();
        let values: Vec<u64> = (0..12).collect();
        assert_eq!(produce(&mut p, &values), 8, "capped by size");
        assert_eq!(p.reserve(1), 0, "full");
        assert_eq!(p.pending(), 8);
        assert_eq!(consume(&mut c, 3), vec![0, 1, 2]);
        assert_eq!(p.reserve(8), 3, "exactly the released slots");
        assert_eq!(produce(&mut p, &[100, 101, 102, 103]), 3);
        assert_eq!(consume(&mut c, 100), vec![3, 4, 5, 6, 7, 100, 101, 102]);
        assert_eq!(p.reserve(8), 8, "empty again");
    }

    #[test]
    fn indices_wrap_around_u32_max() {
        for start in [u32::MAX, u32::MAX - 1, u32::MAX - 5] {
            let mut mem = FakeRing::<u64>::new(4, start);
            let (mut p, mut c) = mem.pair();
            let (mut next, mut seen) = (0u64, Vec::new());
            for round in 0..20 {
                // Uneven batches so that reserve/peek straddle the wrap.
                let batch: Vec<u64> = (next..next + 1 + round % 4).collect();
                next += produce(&mut p, &batch) as u64;
                seen.extend(consume(&mut c, 1 + (round as u32 % 3)));
            }
            seen.extend(consume(&mut c, 4));
            assert_eq!(seen, (0..next).collect::<Vec<_>>(), "start {start}");
            let prod = mem.producer.load(Ordering::Relaxed);
            assert!(prod < 100, "producer index wrapped: {prod}");
            assert_eq!(prod, start.wrapping_add(next as u32));
            assert_eq!(mem.consumer.load(Ordering::Relaxed), prod);
        }
    }

    #[test]
    fn full_ring_across_the_wrap() {
        let mut mem = FakeRing::<u64>::new(4, u32::MAX - 1);
        let (mut p, mut c) = mem.pair();
        assert_eq!(produce(&mut p, &[1, 2, 3, 4, 5]), 4);
        assert_eq!(
            p.reserve(1),
            0,
            "full while producer index is past the wrap"
        );
        assert_eq!(c.peek(10), 4);
        assert_eq!(consume(&mut c, 10), vec![1, 2, 3, 4]);
        assert_eq!(p.reserve(10), 4);
    }

    #[test]
    fn descriptors_round_trip() {
        let mut mem = FakeRing::<XdpDesc>::new(16, u32::MAX - 3);
        let (mut p, mut c) = mem.pair();
        let d = |i: u64| XdpDesc {
            addr: i * 4096 + 256,
            len: 60 + i as u32,
            options: 0,
        };
        assert_eq!(p.reserve(10), 10);
        for i in 0..10 {
            p.write(i, d(i as u64));
        }
        p.submit(10);
        assert_eq!(c.peek(16), 10);
        for i in 0..10 {
            assert_eq!(c.read(i), d(i as u64));
        }
        c.release(10);
    }

    #[test]
    fn need_wakeup_flag() {
        let mut mem = FakeRing::<u64>::new(8, 0);
        let (p, c) = mem.pair();
        assert!(!p.needs_wakeup() && !c.needs_wakeup());
        mem.flags.store(XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
        assert!(p.needs_wakeup() && c.needs_wakeup());
    }

    #[test]
    fn producer_and_consumer_on_two_threads() {
        // Exercises the Acquire/Release pairing (under Miri or TSan this is
        // the test that would flag a missing ordering).
        let mut mem = FakeRing::<u64>::new(64, u32::MAX - 1000);
        let (mut p, mut c) = mem.pair();
        const N: u64 = 200_000;
        let consumer = std::thread::spawn(move || {
            let mut expect = 0u64;
            while expect < N {
                let n = c.peek(32);
                for i in 0..n {
                    assert_eq!(c.read(i), expect);
                    expect += 1;
                }
                c.release(n);
            }
        });
        let mut next = 0u64;
        while next < N {
            let n = p.reserve(32.min((N - next) as u32));
            for i in 0..n {
                p.write(i, next + i as u64);
            }
            p.submit(n);
            next += n as u64;
        }
        consumer.join().unwrap();
        drop(p);
        drop(mem);
    }
}
