//! The UMEM (the packet memory AF_XDP sockets share with the kernel) and
//! its free list, [`FramePool`](super::FramePool).
//!
//! # Ownership of frames
//!
//! The UMEM is cut into `frame_count` frames (chunks) of `frame_size` bytes,
//! named by their offset from the start of the area (the "address"). The
//! rule that makes the raw accesses sound, and the frame accounting exact:
//! **every frame is held by exactly one party at a time**: the
//! [`FramePool`](super::FramePool), a kernel ring (fill, RX, TX, completion) of one socket, or
//! the code between rings that took it from one of those. Only the holder
//! reads or writes the frame's bytes; handing a frame on (to a ring, or back
//! to the pool) ends the right to touch it.
//!
//! # Registration
//!
//! xsk-rs maps the area and registers it with the kernel when the UMEM is
//! made. A PMD's UMEM is made together with its anchor socket
//! ([`super::anchor`]), in copy mode; every port's socket then shares it
//! (`XDP_SHARED_UMEM`), in any order. A zero-copy UMEM
//! ([`Umem::new_zero_copy`]) belongs to one AF_XDP port instead: its first
//! socket is the port's own, bound zero-copy, and its other queues share it;
//! all of them come and go with the port, so no anchor is needed.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use dataplane_common::wire::FRAME_HEADROOM;
use xsk_rs::FrameDesc;

use super::anchor::{self, Anchor};
use super::config::{BoundMode, SocketConfig, UmemConfig};
use super::{Error, XskSocket};

/// What the kernel knows of a UMEM: xsk-rs's handle, the descriptor it made
/// for each frame, and the anchor (none for a zero-copy UMEM). Field order
/// is drop order: the anchor socket goes before the UMEM it registered.
pub(super) struct Registered {
    _anchor: Option<Anchor>,
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
    /// The mode every socket on it is bound in (the first socket's).
    mode: BoundMode,
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
        Umem::registered(config, umem, canonical, Some(anchor), BoundMode::Copy)
    }

    /// A UMEM of one AF_XDP port, bound zero-copy: registers the area and
    /// binds its first socket to `ifname` queue `queue` with
    /// `XDP_ZEROCOPY`, so the driver receives into and sends from these
    /// frames. Further sockets on it ([`XskSocket::new`], the port's other
    /// queues) inherit zero-copy. Fails, with the kernel's reason, where the
    /// driver has no zero-copy (veth, TAP: EOPNOTSUPP).
    ///
    /// Why a UMEM of its own: the kernel gives every socket on a UMEM the
    /// first socket's mode, and a PMD's shared UMEM is anchored in copy
    /// mode (see [`super::anchor`]). Frames cross between the two UMEMs by
    /// a copy in the port ([`crate::port::afxdp`]).
    pub fn new_zero_copy(
        config: UmemConfig,
        ifname: &str,
        queue: u32,
        socket: &SocketConfig,
    ) -> Result<(Arc<Umem>, XskSocket), Error> {
        config.validate()?;
        let (umem, canonical) = anchor::create(&config)?;
        let umem = Arc::new(Umem::registered(
            config,
            umem,
            canonical,
            None,
            BoundMode::ZeroCopy,
        )?);
        let socket = XskSocket::new(&umem, ifname, queue, socket)?;
        Ok((umem, socket))
    }

    fn registered(
        config: UmemConfig,
        umem: xsk_rs::Umem,
        canonical: Vec<FrameDesc>,
        anchor: Option<Anchor>,
        mode: BoundMode,
    ) -> Result<Umem, Error> {
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
            mode,
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
            mode: BoundMode::Copy,
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

    /// Copy or zero-copy: the mode of every socket on this UMEM.
    pub fn mode(&self) -> BoundMode {
        self.mode
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
