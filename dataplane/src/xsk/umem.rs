//! The UMEM (the packet memory AF_XDP sockets share with the kernel) and
//! its free list.
//!
//! Ownership rule that makes the raw accesses sound: every frame (chunk) is
//! held by exactly one party at a time — the [`FramePool`], a kernel ring
//! (fill, RX, TX, completion), or the PMD thread between rings. Only the
//! holder reads or writes the chunk's bytes.

use std::os::fd::RawFd;
use std::sync::Mutex;

use super::Error;

/// Sizes of a UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    /// Bytes per frame (chunk): 2048 or 4096.
    pub frame_size: u32,
    /// Number of frames.
    pub frame_count: u32,
    /// Entries of each socket's fill ring (power of two).
    pub fill_size: u32,
    /// Entries of each socket's completion ring (power of two).
    pub comp_size: u32,
}

impl Default for UmemConfig {
    fn default() -> Self {
        UmemConfig {
            frame_size: 4096,
            frame_count: 4096,
            fill_size: 2048,
            comp_size: 2048,
        }
    }
}

impl UmemConfig {
    /// Refuses sizes the kernel would refuse, naming the bad value.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, value: u32, why: &'static str| {
            Err(Error::Config { field, value, why })
        };
        if !(self.frame_size == 2048 || self.frame_size == 4096) {
            return bad("frame_size", self.frame_size, "must be 2048 or 4096");
        }
        if self.frame_count == 0 || !self.frame_count.is_power_of_two() {
            return bad("frame_count", self.frame_count, "must be a power of two");
        }
        for (field, v) in [("fill_size", self.fill_size), ("comp_size", self.comp_size)] {
            if v == 0 || !v.is_power_of_two() {
                return bad(field, v, "must be a power of two");
            }
        }
        Ok(())
    }
}

/// The socket that registered a UMEM, and how it was bound: sockets that
/// share the UMEM inherit its mode (the kernel refuses mode flags on them).
#[derive(Debug, Clone, Copy)]
pub(super) struct UmemOwner {
    pub fd: RawFd,
    pub mode: super::BoundMode,
    pub need_wakeup: bool,
}

/// Packet memory registered with the kernel by the first socket bound on it.
pub struct Umem {
    area: *mut u8,
    len: usize,
    config: UmemConfig,
    /// The socket that registered this UMEM (XDP_UMEM_REG); later sockets
    /// bind with XDP_SHARED_UMEM pointing at it. That socket must stay open
    /// while others are being created.
    owner: Mutex<Option<UmemOwner>>,
}

// SAFETY: the area is plain memory; who may touch which chunk is governed by
// the ownership rule in the module docs, not by the thread that holds `Umem`.
unsafe impl Send for Umem {}
// SAFETY: as above; `owner` is behind a Mutex.
unsafe impl Sync for Umem {}

impl Umem {
    /// Allocates the area (anonymous, pre-faulted).
    pub fn new(config: UmemConfig) -> Result<Umem, Error> {
        config.validate()?;
        let len = config.frame_size as usize * config.frame_count as usize;
        // SAFETY: fresh anonymous mapping; checked below.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(Error::Mmap {
                what: "UMEM area",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Umem {
            area: area as *mut u8,
            len,
            config,
            owner: Mutex::new(None),
        })
    }

    /// The sizes it was made with.
    pub fn config(&self) -> &UmemConfig {
        &self.config
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u32 {
        self.config.frame_size
    }

    /// Start address and length, for XDP_UMEM_REG.
    pub(super) fn area(&self) -> (u64, u64) {
        (self.area as u64, self.len as u64)
    }

    pub(super) fn owner(&self) -> &Mutex<Option<UmemOwner>> {
        &self.owner
    }

    /// The bytes `[addr, addr + len)` of the UMEM.
    ///
    /// Panics if the range is outside the UMEM (a descriptor from a ring is
    /// checked by the kernel; one of ours would be a bug).
    pub fn frame(&self, addr: u64, len: usize) -> &[u8] {
        self.check(addr, len);
        // SAFETY: in bounds (checked); the caller holds the frame (module
        // rule), so nobody writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.area.add(addr as usize), len) }
    }

    /// The bytes `[addr, addr + len)`, writable.
    ///
    /// # Safety
    /// The caller must hold the frame containing the range (no ring and no
    /// other reference may use it while the slice lives).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn frame_mut(&self, addr: u64, len: usize) -> &mut [u8] {
        self.check(addr, len);
        std::slice::from_raw_parts_mut(self.area.add(addr as usize), len)
    }

    fn check(&self, addr: u64, len: usize) {
        let end = addr as usize + len;
        assert!(
            end <= self.len,
            "UMEM access [{addr}, {end}) beyond {} bytes",
            self.len
        );
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: area/len are exactly what mmap returned; sockets that used
        // it hold an Arc<Umem>, so none is left.
        unsafe { libc::munmap(self.area as *mut libc::c_void, self.len) };
    }
}

/// Free frames of one UMEM, by chunk address.
pub struct FramePool {
    free: Vec<u64>,
    frame_size: u64,
    capacity: usize,
    /// Debug builds track membership to catch double frees at once.
    #[cfg(debug_assertions)]
    in_pool: Vec<bool>,
}

impl FramePool {
    /// A pool holding every frame of `umem`.
    pub fn new(umem: &Umem) -> FramePool {
        let n = umem.config.frame_count as usize;
        let fs = umem.config.frame_size as u64;
        FramePool {
            // Pop from the end: hand out low addresses first.
            free: (0..n as u64).rev().map(|i| i * fs).collect(),
            frame_size: fs,
            capacity: n,
            #[cfg(debug_assertions)]
            in_pool: vec![true; n],
        }
    }

    /// Takes a free frame (its chunk address).
    pub fn alloc(&mut self) -> Option<u64> {
        let addr = self.free.pop()?;
        #[cfg(debug_assertions)]
        {
            self.in_pool[(addr / self.frame_size) as usize] = false;
        }
        Some(addr)
    }

    /// Returns the frame containing `addr` (any address inside the chunk:
    /// descriptors may point past headroom or a pushed tag).
    pub fn free(&mut self, addr: u64) {
        let chunk = addr & !(self.frame_size - 1);
        debug_assert!(
            ((chunk / self.frame_size) as usize) < self.capacity,
            "frame {addr:#x} is outside the UMEM"
        );
        #[cfg(debug_assertions)]
        {
            let i = (chunk / self.frame_size) as usize;
            assert!(!self.in_pool[i], "frame {chunk:#x} freed twice");
            self.in_pool[i] = true;
        }
        self.free.push(chunk);
    }

    /// Free frames.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// True when no frame is free.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Frames in the UMEM.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Umem {
        Umem::new(UmemConfig {
            frame_size: 2048,
            frame_count: 16,
            fill_size: 8,
            comp_size: 8,
        })
        .unwrap()
    }

    #[test]
    fn pool_accounts_for_every_frame() {
        let umem = small();
        let mut pool = FramePool::new(&umem);
        assert_eq!((pool.len(), pool.capacity()), (16, 16));
        let taken: Vec<u64> = (0..16).map(|_| pool.alloc().unwrap()).collect();
        assert!(pool.alloc().is_none());
        assert!(pool.is_empty());
        let mut sorted = taken.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 16, "distinct frames");
        assert!(sorted.iter().all(|a| a % 2048 == 0 && *a < 16 * 2048));
        // Descriptors come back pointing inside their chunk.
        for a in &taken {
            pool.free(a + 256);
        }
        assert_eq!(pool.len(), 16);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "freed twice")]
    fn double_free_is_caught() {
        let umem = small();
        let mut pool = FramePool::new(&umem);
        let a = pool.alloc().unwrap();
        pool.free(a);
        pool.free(a + 1);
    }

    #[test]
    fn frames_are_readable_and_writable() {
        let umem = small();
        // SAFETY: nothing else uses this UMEM.
        unsafe { umem.frame_mut(2048, 4) }.copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(umem.frame(2048, 4), &[1, 2, 3, 4]);
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn out_of_range_access_panics() {
        let umem = small();
        umem.frame(16 * 2048 - 2, 4);
    }

    #[test]
    fn bad_sizes_are_named() {
        let err = Umem::new(UmemConfig {
            frame_size: 1000,
            ..UmemConfig::default()
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("frame_size"), "{err}");
        let err = UmemConfig {
            fill_size: 3,
            ..UmemConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("fill_size"), "{err}");
    }
}
