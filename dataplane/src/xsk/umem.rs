//! The UMEM (the packet memory AF_XDP sockets share with the kernel) and
//! its free list, [`FramePool`].
//!
//! # Ownership of frames
//!
//! The UMEM is cut into `frame_count` frames (chunks) of `frame_size` bytes,
//! named by their offset from the start of the area (the "address"). The
//! rule that makes the raw accesses sound, and the frame accounting exact:
//! **every frame is held by exactly one party at a time** — the
//! [`FramePool`], a kernel ring (fill, RX, TX, completion) of one socket, or
//! the code between rings that took it from one of those. Only the holder
//! reads or writes the frame's bytes; handing a frame on (to a ring, or back
//! to the pool) ends the right to touch it.
//!
//! # Registration
//!
//! The UMEM is registered with the kernel (`XDP_UMEM_REG`) by the first
//! socket created on it; later sockets bind with `XDP_SHARED_UMEM` naming
//! the fd of *any* socket still bound to it (the kernel takes the UMEM
//! from whichever it is given; see [`super::XskSocket::new`]). So sockets
//! may close in any order: a port removed first does not keep later ports
//! from joining. Once every socket is closed the kernel lets go of the
//! UMEM, and the next socket registers it afresh.

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use super::socket::BoundMode;
use super::Error;

/// Sizes of a UMEM and of the fill/completion rings of each socket on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    /// Bytes per frame: a power of two in 2048..=4096 (default 4096).
    pub frame_size: u32,
    /// Number of frames, at least 1 (default 4096).
    pub frame_count: u32,
    /// Entries of each socket's fill ring: a power of two (default 2048).
    pub fill_size: u32,
    /// Entries of each socket's completion ring: a power of two (default 2048).
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
    /// Refuses sizes the kernel (or this module) would refuse, naming the
    /// field and its bad value.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, value: u32, expected: &'static str| {
            Err(Error::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if !(2048..=4096).contains(&self.frame_size) || !self.frame_size.is_power_of_two() {
            return bad("umem frame_size", self.frame_size, "2048 or 4096");
        }
        if self.frame_count == 0 {
            return bad("umem frame_count", self.frame_count, "at least 1");
        }
        for (field, v) in [
            ("umem fill_size", self.fill_size),
            ("umem comp_size", self.comp_size),
        ] {
            if !v.is_power_of_two() {
                return bad(field, v, "a power of two");
            }
        }
        Ok(())
    }
}

/// A socket bound to the UMEM, as later sockets need one: they bind with
/// `XDP_SHARED_UMEM` + its fd, and inherit the UMEM's mode (the kernel
/// refuses mode flags on sharing sockets; every member has the same).
#[derive(Debug, Clone, Copy)]
pub(super) struct UmemMember {
    /// Its fd number (borrowed: the socket owns and closes it, and leaves
    /// the registration first, under its lock).
    pub fd: RawFd,
    /// Where it is bound; a second socket on the same interface queue would
    /// share its rings, which this module does not support.
    pub ifindex: u32,
    pub queue: u32,
    /// Copy or zero-copy: decided for the whole UMEM by this socket.
    pub mode: BoundMode,
    /// Whether it bound with `XDP_USE_NEED_WAKEUP` (inherited as well).
    pub need_wakeup: bool,
}

/// Who uses the UMEM in the kernel: guarded by a mutex because sockets are
/// created and closed rarely, possibly from several threads.
#[derive(Debug, Default)]
pub(super) struct Registration {
    /// The open sockets on this UMEM, in no particular order; empty: the
    /// next socket registers it.
    pub members: Vec<UmemMember>,
}

/// Packet memory shared with the kernel: one anonymous mapping of
/// `frame_count * frame_size` bytes, registered by the first socket bound
/// on it. Share it as `Arc<Umem>`; every socket keeps a clone, so the memory
/// outlives all of them.
pub struct Umem {
    area: NonNull<u8>,
    len: usize,
    config: UmemConfig,
    registration: Mutex<Registration>,
}

// SAFETY: the area is plain memory whose frames are accessed according to
// the ownership rule in the module docs (by whichever thread holds the
// frame), not according to which thread holds the `Umem`; the registration
// state is behind a Mutex.
unsafe impl Send for Umem {}
// SAFETY: as above: `&Umem` only gives out frame slices under that rule.
unsafe impl Sync for Umem {}

impl Umem {
    /// Validates `config` and maps the area (anonymous, private, pre-faulted
    /// so the kernel's pinning at registration does not fault it in).
    pub fn new(config: UmemConfig) -> Result<Umem, Error> {
        config.validate()?;
        let len = config.frame_size as usize * config.frame_count as usize;
        // SAFETY: asks for a fresh anonymous mapping; touches no existing
        // memory; the result is checked below.
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
            return Err(Error::UmemMmap {
                bytes: len,
                frame_count: config.frame_count,
                frame_size: config.frame_size,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Umem {
            area: NonNull::new(area.cast()).expect("mmap returned NULL"),
            len,
            config,
            registration: Mutex::new(Registration::default()),
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

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.config.frame_count
    }

    /// Size of the area in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    /// Start address and length, for `XDP_UMEM_REG`.
    pub(super) fn area(&self) -> (u64, u64) {
        (self.area.as_ptr() as u64, self.len as u64)
    }

    /// The registration state (see the module docs).
    pub(super) fn registration(&self) -> MutexGuard<'_, Registration> {
        // A panic while holding it cannot leave it half-updated (each
        // critical section is a couple of assignments), so poison is moot.
        self.registration
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bytes `[addr, addr + len)` of the UMEM, which must lie inside one
    /// frame.
    ///
    /// The caller must hold that frame (module docs): reading a frame the
    /// kernel holds races with its writes.
    ///
    /// # Panics
    /// If the range leaves the frame or the UMEM: descriptors from the
    /// kernel never do, so this is a bug in the caller.
    #[inline]
    pub fn frame(&self, addr: u64, len: usize) -> &[u8] {
        self.check(addr, len);
        // SAFETY: `check` proved the range is inside the mapping, which lives
        // as long as `self`; by the ownership rule nobody writes the frame
        // while its holder reads it.
        unsafe { std::slice::from_raw_parts(self.area.as_ptr().add(addr as usize), len) }
    }

    /// The bytes `[addr, addr + len)`, writable; the range must lie inside
    /// one frame.
    ///
    /// # Safety
    /// The caller must hold the frame containing the range (module docs),
    /// and no other slice of that frame (from [`frame`](Self::frame) or
    /// `frame_mut`) may be alive while the returned one is.
    ///
    /// # Panics
    /// As [`frame`](Self::frame).
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn frame_mut(&self, addr: u64, len: usize) -> &mut [u8] {
        self.check(addr, len);
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.area.as_ptr().add(addr as usize), len) }
    }

    /// Panics unless `[addr, addr + len)` lies inside one frame of the area.
    #[inline]
    fn check(&self, addr: u64, len: usize) {
        let frame_size = self.config.frame_size as u64;
        let offset = addr & (frame_size - 1);
        assert!(
            addr < self.len as u64 && offset + len as u64 <= frame_size,
            "UMEM access [{addr:#x}, +{len}) leaves its {frame_size}-byte frame or the {}-byte UMEM",
            self.len
        );
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: area/len are exactly what mmap returned. Every socket that
        // registered or shared the area holds an Arc<Umem>, so none is left,
        // and `frame` slices borrow `self`.
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
    }
}

/// The free list of one UMEM's frames, by frame (chunk) base address.
///
/// Not shared: one pool per PMD thread, passed `&mut` to the socket calls
/// that move frames ([`XskSocket::fill`](super::XskSocket::fill),
/// [`XskSocket::complete`](super::XskSocket::complete)). Never allocates
/// after [`new`](Self::new): the stack has room for every frame.
pub struct FramePool {
    free: Vec<u64>,
    frame_size: u64,
    capacity: usize,
    /// Whether each frame is in `free`: a frame given back twice, or an
    /// address outside the UMEM, is refused rather than stacked twice (two
    /// later holders of one frame would read each other's packets).
    /// Checked in every build: one byte per frame, one load per free.
    in_pool: Vec<bool>,
    /// Frees refused by that check: a bug somewhere, reported in the
    /// engine's statistics (`refused_frees`) and logged once.
    refused: u64,
}

impl FramePool {
    /// A pool holding every frame of `umem`.
    pub fn new(umem: &Umem) -> FramePool {
        let n = umem.config.frame_count as usize;
        let frame_size = umem.config.frame_size as u64;
        FramePool {
            // Popped from the end: low addresses are handed out first.
            free: (0..n as u64).rev().map(|i| i * frame_size).collect(),
            frame_size,
            capacity: n,
            in_pool: vec![true; n],
            refused: 0,
        }
    }

    /// Takes a free frame: its base address, now held by the caller.
    #[inline]
    pub fn alloc(&mut self) -> Option<u64> {
        let addr = self.free.pop()?;
        self.in_pool[(addr / self.frame_size) as usize] = false;
        Some(addr)
    }

    /// Gives back the frame containing `addr`: its base address, or any
    /// address inside it (a descriptor's `addr` points past RX headroom or a
    /// pushed tag), so callers need not mask. A frame already in the pool,
    /// or an address past the UMEM, is refused and counted
    /// ([`refused_frees`](Self::refused_frees)).
    #[inline]
    pub fn free(&mut self, addr: u64) {
        if let Some(base) = self.take_in(addr) {
            self.free.push(base);
        }
    }

    /// Gives back frames the kernel may have touched a moment ago (a socket
    /// just closed): they go to the far end of the free list, so every other
    /// free frame is handed out before them. Same checks as [`free`](Self::free).
    pub fn free_cold(&mut self, addrs: &[u64]) {
        let bases: Vec<u64> = addrs.iter().filter_map(|&a| self.take_in(a)).collect();
        self.free.splice(0..0, bases);
    }

    /// Marks the frame holding `addr` as in the pool; `None` if it may not
    /// be (already there, or not a frame of this UMEM).
    #[inline]
    fn take_in(&mut self, addr: u64) -> Option<u64> {
        let base = addr & !(self.frame_size - 1);
        let i = (base / self.frame_size) as usize;
        match self.in_pool.get_mut(i) {
            Some(slot) if !*slot => {
                *slot = true;
                Some(base)
            }
            other => {
                self.refused += 1;
                if self.refused == 1 {
                    let why = if other.is_some() {
                        "already in the pool (freed twice)"
                    } else {
                        "outside the UMEM"
                    };
                    tracing::error!(
                        addr = format_args!("{addr:#x}"),
                        frames = self.capacity,
                        "frame pool refused a free: {why}; this is a bug, please report it (further refusals are only counted)"
                    );
                }
                None
            }
        }
    }

    /// Frees refused because the frame was already free or not in the UMEM.
    pub fn refused_frees(&self) -> u64 {
        self.refused
    }

    /// Free frames.
    #[inline]
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// True when no frame is free.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Frames in the UMEM: `len()` once every frame is back.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u32 {
        self.frame_size as u32
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
        assert!(pool.alloc().is_none(), "exactly 16 frames");
        assert!(pool.is_empty());
        let mut sorted = taken.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, (0..16).map(|i| i * 2048).collect::<Vec<_>>());
        // Partial return, then the rest, in a scrambled order.
        for a in taken.iter().step_by(2) {
            pool.free(*a);
        }
        assert_eq!(pool.len(), 8);
        for a in taken.iter().skip(1).step_by(2).rev() {
            pool.free(*a);
        }
        assert_eq!(pool.len(), pool.capacity());
        // And every frame can be taken again, each once.
        let mut again: Vec<u64> = std::iter::from_fn(|| pool.alloc()).collect();
        again.sort();
        assert_eq!(again, sorted);
    }

    #[test]
    fn pool_hands_out_low_addresses_first() {
        let umem = small();
        let mut pool = FramePool::new(&umem);
        assert_eq!(pool.alloc(), Some(0));
        assert_eq!(pool.alloc(), Some(2048));
    }

    #[test]
    fn double_free_is_refused_and_counted() {
        let umem = small();
        let mut pool = FramePool::new(&umem);
        let a = pool.alloc().unwrap();
        pool.free(a);
        pool.free(a);
        assert_eq!(pool.refused_frees(), 1);
        assert_eq!(pool.len(), pool.capacity(), "the frame is in the pool once");
        let mut all: Vec<u64> = std::iter::from_fn(|| pool.alloc()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 16, "no frame handed out twice");
    }

    #[test]
    fn freeing_an_address_inside_a_frame_frees_that_frame() {
        let umem = small();
        let mut pool = FramePool::new(&umem);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.free(b + 256);
        pool.free(a + 2047);
        assert_eq!(pool.len(), pool.capacity());
        assert_eq!((pool.alloc(), pool.alloc()), (Some(a), Some(b)));
    }

    #[test]
    fn double_free_through_an_inner_address_is_refused() {
        let umem = small();
        let mut pool = FramePool::new(&umem);
        let a = pool.alloc().unwrap();
        pool.free(a + 256);
        pool.free(a);
        assert_eq!((pool.refused_frees(), pool.len()), (1, 16));
    }

    #[test]
    fn foreign_free_is_refused() {
        let umem = small();
        let mut pool = FramePool::new(&umem);
        pool.alloc().unwrap();
        pool.free(16 * 2048);
        pool.free(u64::MAX);
        assert_eq!((pool.refused_frees(), pool.len()), (2, 15));
    }

    #[test]
    fn cold_frames_are_handed_out_last() {
        let umem = small();
        let mut pool = FramePool::new(&umem);
        let taken: Vec<u64> = (0..4).map(|_| pool.alloc().unwrap()).collect();
        // The first two come back cold (a socket closed), the rest warm.
        pool.free_cold(&[taken[0] + 64, taken[1]]);
        pool.free(taken[2]);
        pool.free(taken[3]);
        pool.free_cold(&[taken[0]]);
        assert_eq!((pool.refused_frees(), pool.len()), (1, 16));
        let order: Vec<u64> = std::iter::from_fn(|| pool.alloc()).collect();
        assert_eq!(&order[14..], &[taken[1], taken[0]], "cold frames last");
    }

    #[test]
    fn frames_are_readable_and_writable() {
        let umem = small();
        // SAFETY: this test is the only holder of every frame of `umem`.
        unsafe { umem.frame_mut(2048 + 256, 4) }.copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(umem.frame(2048 + 256, 4), &[1, 2, 3, 4]);
        assert_eq!(umem.frame(15 * 2048, 2048).len(), 2048, "last full frame");
        assert_eq!(umem.len_bytes(), 16 * 2048);
    }

    #[test]
    #[should_panic(expected = "leaves its 2048-byte frame")]
    fn access_past_the_umem_panics() {
        let umem = small();
        umem.frame(16 * 2048, 1);
    }

    #[test]
    #[should_panic(expected = "leaves its 2048-byte frame")]
    fn access_across_frames_panics() {
        let umem = small();
        umem.frame(2048 - 2, 4);
    }

    #[test]
    fn config_errors_name_the_bad_value() {
        let cases = [
            (
                UmemConfig {
                    frame_size: 1000,
                    ..UmemConfig::default()
                },
                "umem frame_size = 1000",
            ),
            (
                UmemConfig {
                    frame_size: 8192,
                    ..UmemConfig::default()
                },
                "umem frame_size = 8192",
            ),
            (
                UmemConfig {
                    frame_size: 3072,
                    ..UmemConfig::default()
                },
                "umem frame_size = 3072",
            ),
            (
                UmemConfig {
                    frame_count: 0,
                    ..UmemConfig::default()
                },
                "umem frame_count = 0",
            ),
            (
                UmemConfig {
                    fill_size: 3,
                    ..UmemConfig::default()
                },
                "umem fill_size = 3",
            ),
            (
                UmemConfig {
                    comp_size: 0,
                    ..UmemConfig::default()
                },
                "umem comp_size = 0",
            ),
        ];
        for (config, expected) in cases {
            let err = Umem::new(config).err().expect("invalid config accepted");
            assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
            assert!(
                err.to_string().contains(expected),
                "{err} lacks {expected:?}"
            );
        }
        assert!(UmemConfig::default().validate().is_ok());
        let ok = UmemConfig {
            frame_size: 2048,
            frame_count: 3,
            ..UmemConfig::default()
        };
        assert!(
            ok.validate().is_ok(),
            "frame_count need not be a power of two"
        );
    }
}
