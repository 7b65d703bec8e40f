//! The UMEM (the packet memory AF_XDP sockets share with the kernel) and
//! its free list, [`FramePool`].
//!
//! # Ownership of frames
//!
//! The UMEM is cut into `frame_count` frames (chunks) of `frame_size` bytes,
//! named by their offset from the start of the area (the "address"). The
//! rule that makes the raw accesses sound, and the frame accounting exact:
//! **every frame is held by exactly one party at a time**: the
//! [`FramePool`], a kernel ring (fill, RX, TX, completion) of one socket, or
//! the code between rings that took it from one of those. Only the holder
//! reads or writes the frame's bytes; handing a frame on (to a ring, or back
//! to the pool) ends the right to touch it.
//!
//! # Registration
//!
//! xsk-rs maps the area and registers it with the kernel when the UMEM is
//! made, together with its anchor socket ([`super::anchor`]); every port's
//! socket then shares it (`XDP_SHARED_UMEM`), in any order.

use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use dataplane_common::wire::FRAME_HEADROOM;
use xsk_rs::FrameDesc;

use super::anchor::{self, Anchor};
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

/// What the kernel knows of a UMEM: xsk-rs's handle, the descriptor it made
/// for each frame, and the anchor. Field order is drop order: the anchor
/// socket goes before the UMEM it registered.
pub(super) struct Registered {
    _anchor: Anchor,
    /// Frame `i`'s descriptor from `xsk_rs::Umem::new`: its address is
    /// `i * frame_size + FRAME_HEADROOM`, where copy-mode RX puts a frame.
    canonical: Vec<FrameDesc>,
    pub(super) umem: xsk_rs::Umem,
}

impl Registered {
    /// The canonical descriptor of frame `index`, to give to a fill ring
    /// (the kernel reads only its address there).
    #[inline]
    pub(super) fn fill_descriptor(&self, index: usize) -> FrameDesc {
        self.canonical[index]
    }
}

/// Packet memory shared with the kernel: `frame_count * frame_size` bytes
/// in one mapping. Share it as `Arc<Umem>`; every socket keeps a clone, so
/// the memory outlives all of them.
pub struct Umem {
    /// Start of the area; see [`Umem::new`] for where it comes from.
    area: NonNull<u8>,
    len: usize,
    config: UmemConfig,
    /// `None` for test memory (`Umem::unregistered`, tests only).
    kernel: Option<Registered>,
    /// The (ifindex, queue) of each port socket on this UMEM: one socket per
    /// interface queue (a second would share the first's fill ring, which
    /// the frame accounting does not support).
    bound: Mutex<Vec<(u32, u32)>>,
    /// Backing of test memory.
    _test_area: Option<Box<[u8]>>,
}

// SAFETY: the area is plain memory whose frames are accessed according to
// the ownership rule in the module docs (by whichever thread holds the
// frame), not according to which thread holds the `Umem`; xsk-rs's handle
// is Send + Sync, and the binding list is behind a Mutex.
unsafe impl Send for Umem {}
// SAFETY: as above: `&Umem` only gives out frame slices under that rule.
unsafe impl Sync for Umem {}

impl Umem {
    /// Validates `config`, maps the area and registers it with the kernel
    /// through its anchor socket. Needs root (CAP_NET_RAW for AF_XDP,
    /// CAP_SYS_ADMIN for the anchor's namespace) and RLIMIT_MEMLOCK room for
    /// the area.
    pub fn new(config: UmemConfig) -> Result<Umem, Error> {
        config.validate()?;
        let (umem, canonical, anchor) = anchor::register(&config)?;
        let len = config.frame_size as usize * config.frame_count as usize;
        assert_eq!(
            canonical.first().map(|d| d.addr()),
            Some(FRAME_HEADROOM),
            "xsk-rs puts frame 0's data past the kernel's XDP headroom"
        );
        // xsk-rs 0.11 gives no access to its mapping's start, only to each
        // frame's data from its descriptor on; the switch addresses frames
        // by offset (RX headroom, a pushed VLAN tag), so the start is taken
        // back from frame 0's data pointer. xsk-rs maps the area as one
        // anonymous mapping of exactly `len` bytes (frame_count frames of
        // frame_size), so every offset below `len` is inside it.
        let mut frame0 = canonical[0];
        // SAFETY: nobody holds frame 0 yet (no socket has a frame of this
        // UMEM); the slice is used only for its address.
        let data0 = unsafe { umem.data_mut(&mut frame0) }
            .contents_mut()
            .as_mut_ptr();
        let area = NonNull::new(data0.wrapping_sub(FRAME_HEADROOM)).expect("mmap at address 0");
        Ok(Umem {
            area,
            len,
            config,
            kernel: Some(Registered {
                _anchor: anchor,
                canonical,
                umem,
            }),
            bound: Mutex::new(Vec::new()),
            _test_area: None,
        })
    }

    /// Frame memory with the same layout that the kernel does not know:
    /// for unit tests of code that only reads and writes frames (no root
    /// needed). Sockets refuse it.
    #[cfg(test)]
    pub fn unregistered(config: UmemConfig) -> Result<Umem, Error> {
        config.validate()?;
        let len = config.frame_size as usize * config.frame_count as usize;
        let mut memory = vec![0u8; len].into_boxed_slice();
        let area = NonNull::new(memory.as_mut_ptr()).expect("Box is never null");
        Ok(Umem {
            area,
            len,
            config,
            kernel: None,
            bound: Mutex::new(Vec::new()),
            _test_area: Some(memory),
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

    /// xsk-rs's side, `None` for test memory.
    pub(super) fn kernel(&self) -> Option<&Registered> {
        self.kernel.as_ref()
    }

    /// The (ifindex, queue) pairs port sockets are bound to.
    pub(super) fn bound(&self) -> MutexGuard<'_, Vec<(u32, u32)>> {
        // Each critical section is one push or retain: poison is moot.
        self.bound
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

    /// Frame `desc`'s xsk-rs descriptor, to hand to a ring: its chunk's
    /// canonical descriptor with the length set, after moving the frame's
    /// bytes to the canonical start if a VLAN push or pop moved them.
    /// `None` if the frame cannot sit at the canonical start (longer than
    /// the room past the headroom: never for frames within the MTU).
    ///
    /// The caller must hold the frame (module docs).
    #[inline]
    pub(super) fn descriptor(&self, kernel: &Registered, addr: u64, len: u32) -> Option<FrameDesc> {
        let chunk = addr & !(u64::from(self.config.frame_size) - 1);
        let mut desc = *kernel
            .canonical
            .get((chunk / u64::from(self.config.frame_size)) as usize)?;
        let start = desc.addr() as u64;
        if u64::from(len) > chunk + u64::from(self.config.frame_size) - start {
            return None;
        }
        if addr != start {
            self.check(addr, len as usize);
            // SAFETY: both ranges lie inside the one frame the caller holds
            // (checked above and just before); `copy` allows the overlap.
            unsafe {
                std::ptr::copy(
                    self.area.as_ptr().add(addr as usize),
                    self.area.as_ptr().add(start as usize),
                    len as usize,
                );
            }
        }
        // SAFETY: the caller holds the frame, and no slice of it is alive
        // (the engine handed it over to be sent).
        unsafe { kernel.umem.data_mut(&mut desc) }
            .cursor()
            .set_pos(len as usize);
        Some(desc)
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
        FramePool::for_config(umem.config())
    }

    /// A pool holding every frame of a UMEM made with `config`.
    pub fn for_config(config: &UmemConfig) -> FramePool {
        let n = config.frame_count as usize;
        let frame_size = config.frame_size as u64;
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
        Umem::unregistered(UmemConfig {
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
            let err = Umem::unregistered(config)
                .err()
                .expect("invalid config accepted");
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
