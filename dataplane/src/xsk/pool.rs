//! [`FramePool`]: the free list of one UMEM's frames, exact and checked
//! (a frame given back twice is refused and counted).

use super::config::UmemConfig;
use super::umem::Umem;

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

    /// A pool of 16 frames of 2048 bytes.
    fn small() -> FramePool {
        FramePool::for_config(&UmemConfig {
            frame_size: 2048,
            frame_count: 16,
            fill_size: 8,
            comp_size: 8,
        })
    }

    #[test]
    fn pool_accounts_for_every_frame() {
        let mut pool = small();
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
        let mut pool = small();
        assert_eq!(pool.alloc(), Some(0));
        assert_eq!(pool.alloc(), Some(2048));
    }

    #[test]
    fn double_free_is_refused_and_counted() {
        let mut pool = small();
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
        let mut pool = small();
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.free(b + 256);
        pool.free(a + 2047);
        assert_eq!(pool.len(), pool.capacity());
        assert_eq!((pool.alloc(), pool.alloc()), (Some(a), Some(b)));
    }

    #[test]
    fn double_free_through_an_inner_address_is_refused() {
        let mut pool = small();
        let a = pool.alloc().unwrap();
        pool.free(a + 256);
        pool.free(a);
        assert_eq!((pool.refused_frees(), pool.len()), (1, 16));
    }

    #[test]
    fn foreign_free_is_refused() {
        let mut pool = small();
        pool.alloc().unwrap();
        pool.free(16 * 2048);
        pool.free(u64::MAX);
        assert_eq!((pool.refused_frees(), pool.len()), (2, 15));
    }

    #[test]
    fn cold_frames_are_handed_out_last() {
        let mut pool = small();
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
}
