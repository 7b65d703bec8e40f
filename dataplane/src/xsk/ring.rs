//! The single-producer / single-consumer rings AF_XDP shares with the kernel.
//!
//! Each ring is a power-of-two array of entries plus a producer and a
//! consumer index (free-running u32s, wrapping) and a flags word. One side
//! only writes the producer index, the other only the consumer index. The
//! writer of entries publishes them with a Release store of its index; the
//! reader observes them after an Acquire load of that index. We keep cached
//! copies of both indices so that the shared cache lines are touched once
//! per burst, not once per entry.

use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys::{XdpRingOffset, XDP_RING_NEED_WAKEUP};

/// Raw pointers into one ring's memory.
struct RingPtrs<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    size: u32,
}

impl<T: Copy> RingPtrs<T> {
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: valid for the ring's lifetime (see the constructors).
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }

    fn flags(&self) -> u32 {
        // SAFETY: as above.
        unsafe { &*self.flags }.load(Ordering::Relaxed)
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: size is a power of two and `descs` has `size` entries, so
        // the masked index is in bounds.
        unsafe { self.descs.add((index & (self.size - 1)) as usize) }
    }
}

/// A ring this process produces into (fill, TX).
pub struct ProducerRing<T> {
    ptrs: RingPtrs<T>,
    cached_prod: u32,
    cached_cons: u32,
    _map: Option<Mapping>,
    _t: PhantomData<T>,
}

/// A ring this process consumes from (RX, completion).
pub struct ConsumerRing<T> {
    ptrs: RingPtrs<T>,
    cached_prod: u32,
    cached_cons: u32,
    _map: Option<Mapping>,
    _t: PhantomData<T>,
}

// SAFETY: the ring memory is only reached through &mut self (one thread at a
// time); the kernel side synchronises through the atomics.
unsafe impl<T: Send> Send for ProducerRing<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for ConsumerRing<T> {}

impl<T: Copy> ProducerRing<T> {
    /// A producer over arbitrary memory.
    ///
    /// # Safety
    /// The pointers must stay valid (and `descs` hold `size` entries, `size`
    /// a power of two) for the ring's lifetime, and only this ring may
    /// produce into it.
    pub unsafe fn from_raw_parts(
        producer: *const AtomicU32,
        consumer: *const AtomicU32,
        flags: *const AtomicU32,
        descs: *mut T,
        size: u32,
    ) -> Self {
        debug_assert!(size.is_power_of_two());
        let ptrs = RingPtrs {
            producer,
            consumer,
            flags,
            descs,
            size,
        };
        let cached_prod = ptrs.producer().load(Ordering::Relaxed);
        let cached_cons = ptrs.consumer().load(Ordering::Acquire);
        ProducerRing {
            ptrs,
            cached_prod,
            cached_cons,
            _map: None,
            _t: PhantomData,
        }
    }

    /// Free slots (up to `want`), refreshing the consumer index only when
    /// the cached view is not enough.
    pub fn reserve(&mut self, want: u32) -> u32 {
        let size = self.ptrs.size;
        let mut free = size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free < want {
            self.cached_cons = self.ptrs.consumer().load(Ordering::Acquire);
            free = size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        free.min(want)
    }

    /// Writes the `i`-th reserved entry (not visible until [`Self::submit`]).
    pub fn write(&mut self, i: u32, value: T) {
        // SAFETY: the slot is between our producer index and the consumer
        // index, so the consumer does not read it until we publish.
        unsafe {
            self.ptrs
                .slot(self.cached_prod.wrapping_add(i))
                .write(value)
        };
    }

    /// Publishes `n` written entries.
    pub fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.ptrs
            .producer()
            .store(self.cached_prod, Ordering::Release);
    }

    /// Entries produced and not yet consumed (as of the last refresh).
    pub fn pending(&mut self) -> u32 {
        self.cached_cons = self.ptrs.consumer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// The kernel asked for a wakeup syscall.
    pub fn needs_wakeup(&self) -> bool {
        self.ptrs.flags() & XDP_RING_NEED_WAKEUP != 0
    }
}

impl<T: Copy> ConsumerRing<T> {
    /// A consumer over arbitrary memory.
    ///
    /// # Safety
    /// As [`ProducerRing::from_raw_parts`], with only this ring consuming.
    pub unsafe fn from_raw_parts(
        producer: *const AtomicU32,
        consumer: *const AtomicU32,
        flags: *const AtomicU32,
        descs: *mut T,
        size: u32,
    ) -> Self {
        debug_assert!(size.is_power_of_two());
        let ptrs = RingPtrs {
            producer,
            consumer,
            flags,
            descs,
            size,
        };
        let cached_cons = ptrs.consumer().load(Ordering::Relaxed);
        let cached_prod = ptrs.producer().load(Ordering::Acquire);
        ConsumerRing {
            ptrs,
            cached_prod,
            cached_cons,
            _map: None,
            _t: PhantomData,
        }
    }

    /// Entries ready to read (up to `want`).
    pub fn peek(&mut self, want: u32) -> u32 {
        let mut ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if ready < want {
            self.cached_prod = self.ptrs.producer().load(Ordering::Acquire);
            ready = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        ready.min(want)
    }

    /// Reads the `i`-th ready entry.
    pub fn read(&self, i: u32) -> T {
        // SAFETY: the slot is between the consumer and the (acquired)
        // producer index: published by the producer, not yet released by us.
        unsafe { self.ptrs.slot(self.cached_cons.wrapping_add(i)).read() }
    }

    /// Gives `n` read entries back to the producer.
    pub fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.ptrs
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }
}

/// An mmap of a kernel ring, unmapped on drop.
pub struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Maps the ring at `pgoff` of socket `fd` with `size` entries of `T`.
fn map_ring<T>(
    fd: RawFd,
    off: &XdpRingOffset,
    size: u32,
    pgoff: libc::off_t,
) -> std::io::Result<(Mapping, RingPtrs<T>)> {
    let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
    // SAFETY: a fresh shared mapping of the socket's ring; checked below.
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
    let base = addr as *mut u8;
    // SAFETY: the kernel's offsets lie inside the mapping it sized for us.
    let ptrs = unsafe {
        RingPtrs {
            producer: base.add(off.producer as usize) as *const AtomicU32,
            consumer: base.add(off.consumer as usize) as *const AtomicU32,
            flags: base.add(off.flags as usize) as *const AtomicU32,
            descs: base.add(off.desc as usize) as *mut T,
            size,
        }
    };
    Ok((Mapping { addr, len }, ptrs))
}

/// Maps a ring the process produces into.
pub fn map_producer<T: Copy>(
    fd: RawFd,
    off: &XdpRingOffset,
    size: u32,
    pgoff: libc::off_t,
) -> std::io::Result<ProducerRing<T>> {
    let (map, ptrs) = map_ring::<T>(fd, off, size, pgoff)?;
    // SAFETY: the mapping lives as long as the ring (stored in it); the
    // kernel only consumes from this ring.
    let mut ring = unsafe {
        ProducerRing::from_raw_parts(ptrs.producer, ptrs.consumer, ptrs.flags, ptrs.descs, size)
    };
    ring._map = Some(map);
    Ok(ring)
}

/// Maps a ring the process consumes from.
pub fn map_consumer<T: Copy>(
    fd: RawFd,
    off: &XdpRingOffset,
    size: u32,
    pgoff: libc::off_t,
) -> std::io::Result<ConsumerRing<T>> {
    let (map, ptrs) = map_ring::<T>(fd, off, size, pgoff)?;
    // SAFETY: as in map_producer; the kernel only produces into this ring.
    let mut ring = unsafe {
        ConsumerRing::from_raw_parts(ptrs.producer, ptrs.consumer, ptrs.flags, ptrs.descs, size)
    };
    ring._map = Some(map);
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ring memory on the heap, shared by one producer and one consumer.
    struct FakeRing {
        producer: Box<AtomicU32>,
        consumer: Box<AtomicU32>,
        flags: Box<AtomicU32>,
        descs: Vec<u64>,
    }

    impl FakeRing {
        fn new(size: u32, start: u32) -> FakeRing {
            FakeRing {
                producer: Box::new(AtomicU32::new(start)),
                consumer: Box::new(AtomicU32::new(start)),
                flags: Box::new(AtomicU32::new(0)),
                descs: vec![0; size as usize],
            }
        }

        fn pair(&mut self) -> (ProducerRing<u64>, ConsumerRing<u64>) {
            let size = self.descs.len() as u32;
            let d = self.descs.as_mut_ptr();
            // SAFETY: FakeRing outlives both rings in every test below.
            unsafe {
                (
                    ProducerRing::from_raw_parts(
                        &*self.producer,
                        &*self.consumer,
                        &*self.flags,
                        d,
                        size,
                    ),
                    ConsumerRing::from_raw_parts(
                        &*self.producer,
                        &*self.consumer,
                        &*self.flags,
                        d,
                        size,
                    ),
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
    fn fifo_order_and_capacity() {
        let mut mem = FakeRing::new(8, 0);
        let (mut p, mut c) = mem.pair();
        assert_eq!(produce(&mut p, &[1, 2, 3]), 3);
        assert_eq!(consume(&mut c, 2), vec![1, 2]);
        assert_eq!(
            produce(&mut p, &[4, 5, 6, 7, 8, 9, 10, 11]),
            7,
            "one slot still used"
        );
        assert_eq!(p.reserve(1), 0, "full");
        assert_eq!(consume(&mut c, 100), vec![3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(consume(&mut c, 100), Vec::<u64>::new());
        assert_eq!(p.reserve(8), 8, "empty again");
    }

    #[test]
    fn indices_wrap_around_u32() {
        let mut mem = FakeRing::new(4, u32::MAX - 2);
        let (mut p, mut c) = mem.pair();
        let mut next = 0u64;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let batch: Vec<u64> = (next..next + 3).collect();
            let n = produce(&mut p, &batch);
            next += n as u64;
            seen.extend(consume(&mut c, 4));
        }
        assert_eq!(seen, (0..next).collect::<Vec<_>>());
        assert!(
            mem.producer.load(Ordering::Relaxed) < 100,
            "producer index wrapped"
        );
    }

    #[test]
    fn pending_counts_unconsumed() {
        let mut mem = FakeRing::new(8, 0);
        let (mut p, mut c) = mem.pair();
        produce(&mut p, &[1, 2, 3]);
        assert_eq!(p.pending(), 3);
        consume(&mut c, 1);
        assert_eq!(p.pending(), 2);
    }

    #[test]
    fn need_wakeup_flag() {
        let mut mem = FakeRing::new(8, 0);
        let (p, _c) = mem.pair();
        assert!(!p.needs_wakeup());
        mem.flags.store(XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
        assert!(p.needs_wakeup());
    }
}
