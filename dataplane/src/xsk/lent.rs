//! Which frames one socket has lent to the kernel: what it may still read
//! or write, and what comes back when the socket closes.

use super::umem::Umem;

/// One bit per UMEM frame: set while the frame is lent to the kernel
/// through this socket. Kept per socket (not in the pool) because only the
/// socket knows which frames its rings hold, including the ones the kernel
/// consumed from the fill ring and keeps (copy mode caches them; a
/// zero-copy driver posts them to the NIC) and which no ring shows.
pub(super) struct LentFrames {
    bits: Vec<u64>,
    /// log2 of the frame size: address -> frame index.
    shift: u32,
    pub(super) count: u32,
}

impl LentFrames {
    pub(super) fn new(umem: &Umem) -> LentFrames {
        let frames = umem.frame_count() as usize;
        LentFrames {
            bits: vec![0; frames.div_ceil(64)],
            shift: umem.frame_size().trailing_zeros(),
            count: 0,
        }
    }

    /// Marks the frame holding `addr` lent. Addresses come from the pool or
    /// the kernel's rings, which only name frames of this UMEM; an address
    /// past it is ignored (the ring code refuses such descriptors anyway).
    #[inline]
    pub(super) fn lend(&mut self, addr: u64) {
        let i = (addr >> self.shift) as usize;
        if let Some(word) = self.bits.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            self.count += u32::from(*word & bit == 0);
            *word |= bit;
        }
    }

    /// The kernel gave the frame holding `addr` back.
    #[inline]
    pub(super) fn take_back(&mut self, addr: u64) {
        let i = (addr >> self.shift) as usize;
        if let Some(word) = self.bits.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            self.count -= u32::from(*word & bit != 0);
            *word &= !bit;
        }
    }

    /// Base addresses of the lent frames, lowest first.
    pub(super) fn addresses(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.count as usize);
        for (w, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let bit = word.trailing_zeros() as usize;
                out.push(((w * 64 + bit) as u64) << self.shift);
                word &= word - 1;
            }
        }
        out
    }
}
