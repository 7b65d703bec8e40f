//! Frames in and out of a guest's split virtqueues, with the guest treated
//! as hostile.
//!
//! The guest writes the descriptor tables and rings at any time, so every
//! descriptor is copied out of guest memory once, checked, and only then
//! used; every access goes through `vm-memory`, which refuses any byte
//! outside the regions the frontend shared. A chain that fails a check is
//! given back to the guest with length 0 (when its head index is one the
//! guest can recognise) and reported as a [`ChainError`]; the queue keeps
//! working.
//!
//! Chains are walked here rather than with `virtio_queue::DescriptorChain`
//! because its iterator ends a chain silently on a bad descriptor, which
//! would turn a malformed chain into a short, apparently valid frame.
//!
//! This file depends only on `vm-memory`, `virtio-queue` and `thiserror`,
//! so the fuzz targets (`fuzz/`) include it as it is: that is why it stays
//! one file of about 1,000 lines, its unit tests included.

use std::sync::atomic::Ordering;

use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// `struct virtio_net_hdr_v1` (VIRTIO_F_VERSION_1): 12 bytes, the last two
/// being `num_buffers`, in front of every frame in both directions.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// A frame shorter than an Ethernet header carries nothing to switch.
pub const MIN_FRAME: usize = 14;

// VIRTIO 1.2, 2.7.5: descriptor flags.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// Size of one split-ring descriptor in guest memory.
const DESC_SIZE: u64 = 16;

/// Why a chain was refused. Every variant is the guest's doing.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    #[error("head descriptor {index} is outside the {size}-entry queue")]
    HeadOutOfRange { index: u16, size: u16 },
    #[error("next descriptor {index} is outside its {size}-entry table")]
    NextOutOfRange { index: u16, size: u16 },
    #[error("chain longer than {max} descriptors (a loop, or longer than the queue)")]
    TooLong { max: u32 },
    #[error("descriptor table entry at guest address {addr:#x} is outside guest memory")]
    TableOutsideMemory { addr: u64 },
    #[error("buffer [{addr:#x}, +{len}) is outside guest memory")]
    BufferOutsideMemory { addr: u64, len: u32 },
    #[error("zero-length buffer")]
    ZeroLength,
    #[error("a device-writable buffer in a transmit chain")]
    WritableInTx,
    #[error("a device-readable buffer in a receive chain")]
    ReadableInRx,
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    #[error("indirect table of {len} bytes (must be a non-zero multiple of 16)")]
    BadIndirectLen { len: u32 },
    #[error("chain of {len} bytes holds no frame (header {VNET_HDR_LEN} + at least {MIN_FRAME})")]
    TooShort { len: u64 },
    #[error("frame of {len} bytes is larger than the {max} bytes a switch frame holds")]
    Oversized { len: u64, max: usize },
    #[error("receive chain of {cap} bytes cannot hold {need} bytes and mergeable buffers are off")]
    RxChainTooSmall { cap: u64, need: usize },
    #[error(
        "available index {avail} is ahead of the device's {next} by more than the {size}-entry queue holds"
    )]
    AvailIndexAhead { avail: u16, next: u16, size: u16 },
}

impl ChainError {
    /// True when the descriptors themselves are invalid; false when they
    /// are valid but carry a frame the switch cannot take.
    pub fn is_descriptor_error(&self) -> bool {
        !matches!(
            self,
            ChainError::TooShort { .. }
                | ChainError::Oversized { .. }
                | ChainError::RxChainTooSmall { .. }
        )
    }
}

/// One guest buffer of a checked chain: inside guest memory, non-empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
}

/// Which way the buffers of a chain must point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Driver to device (the guest's transmit queue): read-only buffers.
    ToDevice,
    /// Device to driver (the guest's receive queue): write-only buffers.
    FromDevice,
}

/// Walks the chain starting at `head` of a `queue_size`-entry descriptor
/// table, checks every descriptor and appends its buffer to `segs`
/// (cleared first). Returns the chain's total length.
///
/// Checks: indices inside their table; at most `queue_size` descriptors in
/// all (catches loops and overlong chains, VIRTIO 1.2, 2.7.5.2); every
/// descriptor and buffer inside guest memory; no zero-length buffer; the
/// direction matching the queue; at most one indirect table, not chained,
/// its length a non-zero multiple of 16.
pub fn walk_chain<M: GuestMemory>(
    mem: &M,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
    dir: Direction,
    segs: &mut Vec<Segment>,
) -> Result<u64, ChainError> {
    segs.clear();
    if head >= queue_size {
        return Err(ChainError::HeadOutOfRange {
            index: head,
            size: queue_size,
        });
    }
    let max = u32::from(queue_size);
    let (mut table, mut table_size, mut index) = (desc_table, queue_size, head);
    let mut indirect = false;
    let (mut total, mut count) = (0u64, 0u32);
    loop {
        count += 1;
        if count > max {
            return Err(ChainError::TooLong { max });
        }
        let at = table
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(ChainError::TableOutsideMemory { addr: table.0 })?;
        // A copy: the guest may rewrite the entry, the checks below hold
        // for what is used.
        let desc: Descriptor = mem
            .read_obj(at)
            .map_err(|_| ChainError::TableOutsideMemory { addr: at.0 })?;
        let flags = desc.flags();
        let len = desc.len();
        if flags & DESC_F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::NestedIndirect);
            }
            if flags & DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            let entries = u64::from(len) / DESC_SIZE;
            if len == 0 || u64::from(len) % DESC_SIZE != 0 || entries > u64::from(u16::MAX) {
                return Err(ChainError::BadIndirectLen { len });
            }
            if !mem.check_range(desc.addr(), len as usize, Permissions::Read) {
                return Err(ChainError::BufferOutsideMemory {
                    addr: desc.addr().0,
                    len,
                });
            }
            (table, table_size, index) = (desc.addr(), entries as u16, 0);
            indirect = true;
            // The indirect descriptor is no buffer: do not count it
            // against the chain length (only one is allowed anyway).
            count -= 1;
            continue;
        }
        if len == 0 {
            return Err(ChainError::ZeroLength);
        }
        match (dir, flags & DESC_F_WRITE != 0) {
            (Direction::ToDevice, true) => return Err(ChainError::WritableInTx),
            (Direction::FromDevice, false) => return Err(ChainError::ReadableInRx),
            _ => {}
        }
        let access = match dir {
            Direction::ToDevice => Permissions::Read,
            Direction::FromDevice => Permissions::Write,
        };
        if !mem.check_range(desc.addr(), len as usize, access) {
            return Err(ChainError::BufferOutsideMemory {
                addr: desc.addr().0,
                len,
            });
        }
        total += u64::from(len);
        segs.push(Segment {
            addr: desc.addr().0,
            len,
        });
        if flags & DESC_F_NEXT == 0 {
            return Ok(total);
        }
        index = desc.next();
        if index >= table_size {
            return Err(ChainError::NextOutOfRange {
                index,
                size: table_size,
            });
        }
    }
}

/// Copies the frame a checked transmit chain carries into `out` and, past
/// `out.len()` bytes, into `tail` (empty unless the device takes
/// super-frames); returns its length and the virtio-net header in front of
/// it, which says what the guest left to the device (offloads).
pub fn read_frame<M: GuestMemory>(
    mem: &M,
    segs: &[Segment],
    out: &mut [u8],
    tail: &mut [u8],
) -> Result<(usize, [u8; VNET_HDR_LEN]), ChainError> {
    let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    if total < (VNET_HDR_LEN + MIN_FRAME) as u64 {
        return Err(ChainError::TooShort { len: total });
    }
    let frame_len = total - VNET_HDR_LEN as u64;
    let max = out.len() + tail.len();
    if frame_len > max as u64 {
        return Err(ChainError::Oversized {
            len: frame_len,
            max,
        });
    }
    let mut hdr = [0u8; VNET_HDR_LEN];
    // Position in header + frame, as one stream over the chain's buffers.
    let mut pos = 0usize;
    for s in segs {
        let (mut addr, mut len) = (s.addr, s.len as usize);
        while len > 0 {
            // The header, then `out`, then `tail`: copy up to the next
            // boundary of whichever this position falls in.
            let (dst, at) = if pos < VNET_HDR_LEN {
                (&mut hdr[..], pos)
            } else if pos - VNET_HDR_LEN < out.len() {
                (&mut out[..], pos - VNET_HDR_LEN)
            } else {
                (&mut tail[..], pos - VNET_HDR_LEN - out.len())
            };
            let k = len.min(dst.len() - at);
            mem.read_slice(&mut dst[at..at + k], GuestAddress(addr))
                .map_err(|_| ChainError::BufferOutsideMemory {
                    addr,
                    len: k as u32,
                })?;
            pos += k;
            addr += k as u64;
            len -= k;
        }
    }
    Ok((pos - VNET_HDR_LEN, hdr))
}

/// How many chains the guest offers on `queue` that the device has not
/// taken yet. A queue that is not ready (stopped by GET_VRING_BASE, or not
/// set up) or whose avail ring cannot be read offers none. An available
/// index further ahead than the queue holds is the driver's error, and
/// nothing can be taken from the queue until the driver fixes it: popping
/// would fail on every call (virtio-queue refuses such an index), so the
/// caller must stop, not retry.
pub fn pending<M: GuestMemory>(queue: &Queue, mem: &M) -> Result<u16, ChainError> {
    if !queue.ready() {
        return Ok(0);
    }
    let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
        return Ok(0);
    };
    let next = queue.next_avail();
    let ahead = avail.0.wrapping_sub(next);
    if ahead > queue.size() {
        return Err(ChainError::AvailIndexAhead {
            avail: avail.0,
            next,
            size: queue.size(),
        });
    }
    Ok(ahead)
}

/// What [`pop_tx_frame`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPop {
    /// No chain available.
    Empty,
    /// The queue's available index is broken ([`pending`]): nothing was
    /// taken, and nothing can be until the guest repairs it.
    Stalled(ChainError),
    /// A frame of this length is in `out` (and `tail`), behind this
    /// virtio-net header.
    Frame(usize, [u8; VNET_HDR_LEN]),
    /// The chain was refused (and given back, if it could be).
    Refused(ChainError),
}

/// Takes the next chain of the guest's transmit queue, copies its frame
/// into `out` and `tail` (see [`read_frame`]), and gives the chain back
/// with length 0 (the device writes nothing into a transmit buffer).
pub fn pop_tx_frame<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    segs: &mut Vec<Segment>,
    out: &mut [u8],
    tail: &mut [u8],
) -> TxPop {
    match pending(queue, mem) {
        Ok(0) => return TxPop::Empty,
        Ok(_) => {}
        Err(e) => return TxPop::Stalled(e),
    }
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        return TxPop::Empty;
    };
    let head = chain.head_index();
    let result = walk_chain(
        mem,
        GuestAddress(queue.desc_table()),
        queue.size(),
        head,
        Direction::ToDevice,
        segs,
    )
    .and_then(|_| read_frame(mem, segs, out, tail));
    give_back(queue, mem, head, 0);
    match result {
        Ok((len, hdr)) => TxPop::Frame(len, hdr),
        Err(e) => TxPop::Refused(e),
    }
}

/// Where [`tx_burst`] puts what it takes from the guest's transmit queue.
pub trait TxSink {
    /// Buffers for the next frame: its first bytes, and where the rest of
    /// a larger one goes (empty if the sink takes no super-frames); `None`
    /// ends the burst (no free frame).
    fn buffers(&mut self) -> Option<(&mut [u8], &mut [u8])>;
    /// What came of the buffer handed out last (a [`TxPop::Frame`] is in it;
    /// for anything else it is unused).
    fn outcome(&mut self, popped: TxPop);
}

/// One transmit burst: takes chains from the guest's transmit queue into
/// `sink` until `max` chains were taken, the queue is empty or stalled, or
/// the sink has no buffer. Returns the chains taken.
///
/// Every chain taken counts against `max`, refused ones too: a guest that
/// keeps offering bad chains (and moving its available index on) must not
/// keep the caller here. When the queue is empty, the guest is asked for a
/// kick on its next frame; if a chain slipped in before that took effect,
/// the queue is looked at again, but only after progress, so a ring that
/// keeps saying "more" but yields nothing cannot hold the caller either.
pub fn tx_burst<M: GuestMemory, S: TxSink>(
    queue: &mut Queue,
    mem: &M,
    segs: &mut Vec<Segment>,
    max: usize,
    sink: &mut S,
) -> usize {
    let mut taken = 0usize;
    // Whether a chain was taken since the queue was last found empty.
    let mut progress = true;
    while taken < max {
        let Some((buf, tail)) = sink.buffers() else {
            break;
        };
        let popped = pop_tx_frame(queue, mem, segs, buf, tail);
        sink.outcome(popped);
        match popped {
            TxPop::Frame(..) | TxPop::Refused(_) => {
                taken += 1;
                progress = true;
            }
            TxPop::Empty => {
                let more = matches!(queue.enable_notification(mem), Ok(true));
                if more && progress {
                    progress = false;
                    continue;
                }
                break;
            }
            TxPop::Stalled(_) => break,
        }
    }
    taken
}

/// Puts `head` on the used ring with `len` bytes written. A head outside
/// the queue cannot be given back (the guest would not recognise it), and
/// a used ring outside guest memory cannot be written: both only cost the
/// guest its own buffers.
fn give_back<M: GuestMemory>(queue: &mut Queue, mem: &M, head: u16, len: u32) {
    if head < queue.size() {
        let _ = queue.add_used(mem, head, len);
    }
}

/// A chain popped from the receive queue for the frame being delivered.
#[derive(Debug, Clone, Copy)]
struct RxChain {
    head: u16,
    /// Its buffers: `segs[first..end]` of [`RxScratch`].
    first: usize,
    end: usize,
}

/// Reusable buffers for [`push_rx_frame`] (no allocation per frame).
#[derive(Debug, Default)]
pub struct RxScratch {
    one: Vec<Segment>,
    segs: Vec<Segment>,
    chains: Vec<RxChain>,
}

/// What [`push_rx_frame`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxPush {
    /// Written into this many guest buffers (chains).
    Delivered { buffers: u16 },
    /// Not enough receive buffers: nothing was consumed, the frame is still
    /// the caller's.
    NoBuffers,
    /// The frame was dropped; the chains it took were given back with 0.
    Dropped(ChainError),
    /// The queue's available index is broken ([`pending`]): nothing was
    /// consumed, the frame is still the caller's.
    Stalled(ChainError),
}

/// Result of [`push_rx_frame`]: the outcome for the frame, and how many bad
/// chains were met (and given back with length 0) on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxOutcome {
    pub push: RxPush,
    pub bad_chains: u32,
    pub last_error: Option<ChainError>,
}

/// Writes `frame`, behind a virtio-net header, into the guest's receive
/// queue: one chain, or as many as it takes when `mergeable`
/// (VIRTIO_NET_F_MRG_RXBUF; `num_buffers` says how many). The used entries
/// of one frame are added together, in order, after the data is written.
pub fn push_rx_frame<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    frame: &[u8],
    mergeable: bool,
    scratch: &mut RxScratch,
) -> RxOutcome {
    let need = VNET_HDR_LEN + frame.len();
    let mut outcome = RxOutcome {
        push: RxPush::NoBuffers,
        bad_chains: 0,
        last_error: None,
    };
    match pending(queue, mem) {
        Ok(0) => return outcome,
        Ok(_) => {}
        Err(e) => {
            outcome.push = RxPush::Stalled(e);
            return outcome;
        }
    }
    scratch.segs.clear();
    scratch.chains.clear();
    let desc_table = GuestAddress(queue.desc_table());
    let size = queue.size();
    let mut start = queue.next_avail();
    let mut cap = 0u64;
    // Chains taken for this frame, bad ones included: at most one queue's
    // worth, whatever the guest keeps offering (it can refill the ring as
    // fast as bad chains are given back).
    let mut taken = 0u32;
    while cap < need as u64 {
        if taken >= size as u32 {
            for c in &scratch.chains {
                give_back(queue, mem, c.head, 0);
            }
            let e = outcome
                .last_error
                .unwrap_or(ChainError::TooLong { max: size as u32 });
            outcome.push = RxPush::Dropped(e);
            return outcome;
        }
        taken += 1;
        if !mergeable && !scratch.chains.is_empty() {
            // The one chain a frame may take is too small.
            for c in &scratch.chains {
                give_back(queue, mem, c.head, 0);
            }
            let e = ChainError::RxChainTooSmall { cap, need };
            outcome.push = RxPush::Dropped(e);
            return outcome;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Out of buffers: un-pop what this frame took, it stays ours.
            queue.set_next_avail(start);
            return outcome;
        };
        let head = chain.head_index();
        match walk_chain(
            mem,
            desc_table,
            size,
            head,
            Direction::FromDevice,
            &mut scratch.one,
        ) {
            Ok(len) => {
                let first = scratch.segs.len();
                scratch.segs.extend_from_slice(&scratch.one);
                scratch.chains.push(RxChain {
                    head,
                    first,
                    end: scratch.segs.len(),
                });
                cap += len;
            }
            Err(e) => {
                // Used entries of one frame must be adjacent: give back what
                // this frame took so far with the bad chain, all with 0, and
                // start the frame again after it.
                for c in &scratch.chains {
                    give_back(queue, mem, c.head, 0);
                }
                give_back(queue, mem, head, 0);
                scratch.chains.clear();
                scratch.segs.clear();
                cap = 0;
                start = queue.next_avail();
                outcome.bad_chains += 1;
                outcome.last_error = Some(e);
            }
        }
    }
    let buffers = scratch.chains.len() as u16;
    let mut hdr = [0u8; VNET_HDR_LEN];
    // VIRTIO 1.2, 5.1.6.4: num_buffers is 1 without mergeable buffers.
    hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&buffers.to_le_bytes());
    let mut pos = 0usize;
    let mut failed = None;
    for c in &scratch.chains {
        let mut used = 0u32;
        for s in &scratch.segs[c.first..c.end] {
            if pos == need || failed.is_some() {
                break;
            }
            let n = (s.len as usize).min(need - pos);
            match write_span(mem, s.addr, &hdr, frame, pos, n) {
                Ok(()) => {
                    pos += n;
                    used += n as u32;
                }
                Err(e) => failed = Some(e),
            }
        }
        give_back(queue, mem, c.head, if failed.is_some() { 0 } else { used });
    }
    outcome.push = match failed {
        None => RxPush::Delivered { buffers },
        Some(e) => RxPush::Dropped(e),
    };
    outcome
}

/// Writes bytes `[pos, pos + n)` of header-then-frame at guest `addr`.
fn write_span<M: GuestMemory>(
    mem: &M,
    addr: u64,
    hdr: &[u8; VNET_HDR_LEN],
    frame: &[u8],
    pos: usize,
    n: usize,
) -> Result<(), ChainError> {
    let err = || ChainError::BufferOutsideMemory {
        addr,
        len: n as u32,
    };
    let (mut at, mut pos, end) = (addr, pos, pos + n);
    if pos < VNET_HDR_LEN {
        let k = end.min(VNET_HDR_LEN) - pos;
        mem.write_slice(&hdr[pos..pos + k], GuestAddress(at))
            .map_err(|_| err())?;
        at += k as u64;
        pos += k;
    }
    if pos < end {
        let (a, b) = (pos - VNET_HDR_LEN, end - VNET_HDR_LEN);
        mem.write_slice(&frame[a..b], GuestAddress(at))
            .map_err(|_| err())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    // A fake guest: 64 KiB of anonymous memory at guest address 0x10000,
    // rings at fixed places, written by hand as a driver would.
    const BASE: u64 = 0x1_0000;
    const MEM: usize = 0x1_0000;
    const QSIZE: u16 = 8;
    const DESC: u64 = BASE;
    const AVAIL: u64 = BASE + 0x1000;
    const USED: u64 = BASE + 0x2000;
    const BUF: u64 = BASE + 0x4000;
    const INDIRECT: u64 = BASE + 0x3000;

    struct Guest {
        mem: GuestMemoryMmap,
        queue: Queue,
        avail_idx: u16,
    }

    impl Guest {
        fn new() -> Guest {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), MEM)]).unwrap();
            let mut queue = Queue::new(QSIZE).unwrap();
            queue.set_size(QSIZE);
            queue.set_desc_table_address(Some(DESC as u32), Some(0));
            queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
            queue.set_used_ring_address(Some(USED as u32), Some(0));
            queue.set_ready(true);
            assert!(queue.is_valid(&mem));
            Guest {
                mem,
                queue,
                avail_idx: 0,
            }
        }

        fn desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let d = table + u64::from(i) * 16;
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }

        fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            self.desc_at(DESC, i, addr, len, flags, next);
        }

        /// Makes chain `head` available.
        fn offer(&mut self, head: u16) {
            let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
                .unwrap();
        }

        fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
        }

        /// (id, len) of used entry `n`.
        fn used(&self, n: u16) -> (u32, u32) {
            let e = USED + 4 + 8 * u64::from(n % QSIZE);
            (
                self.mem.read_obj(GuestAddress(e)).unwrap(),
                self.mem.read_obj(GuestAddress(e + 4)).unwrap(),
            )
        }

        /// A transmit chain of one buffer: header then `frame`.
        fn tx_one(&mut self, head: u16, frame: &[u8]) {
            let addr = BUF + u64::from(head) * 0x400;
            self.mem
                .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(addr))
                .unwrap();
            self.mem
                .write_slice(frame, GuestAddress(addr + VNET_HDR_LEN as u64))
                .unwrap();
            self.desc(head, addr, (VNET_HDR_LEN + frame.len()) as u32, 0, 0);
            self.offer(head);
        }

        fn pop(&mut self, out: &mut [u8]) -> TxPop {
            let mut segs = Vec::new();
            pop_tx_frame(&mut self.queue, &self.mem, &mut segs, out, &mut [])
        }
    }

    fn frame(n: usize) -> Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    #[test]
    fn tx_frame_split_over_header_and_data_descriptors() {
        let mut g = Guest::new();
        let f = frame(60);
        // Header alone in descriptor 0, the frame in 2 pieces (1 -> 2).
        g.desc(0, BUF, VNET_HDR_LEN as u32, DESC_F_NEXT, 1);
        g.desc(1, BUF + 0x100, 20, DESC_F_NEXT, 2);
        g.desc(2, BUF + 0x200, 40, 0, 0);
        g.mem
            .write_slice(&f[..20], GuestAddress(BUF + 0x100))
            .unwrap();
        g.mem
            .write_slice(&f[20..], GuestAddress(BUF + 0x200))
            .unwrap();
        g.offer(0);
        let mut out = [0u8; 256];
        assert_eq!(g.pop(&mut out), TxPop::Frame(60, NO_HDR));
        assert_eq!(&out[..60], &f[..]);
        assert_eq!(g.used_idx(), 1);
        assert_eq!(g.used(0), (0, 0));
        assert_eq!(g.pop(&mut out), TxPop::Empty);
    }

    /// The header of a frame the guest left nothing to the device for.
    const NO_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

    #[test]
    fn tx_header_is_returned_and_a_large_frame_spills_into_the_tail() {
        let mut g = Guest::new();
        let f = frame(300);
        let hdr: [u8; VNET_HDR_LEN] = [1, 1, 66, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
        // Header and frame head in one descriptor, the rest in another,
        // each crossing the out/tail boundary somewhere else.
        g.desc(0, BUF, (VNET_HDR_LEN + 100) as u32, DESC_F_NEXT, 1);
        g.desc(1, BUF + 0x400, 200, 0, 0);
        g.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
        g.mem
            .write_slice(&f[..100], GuestAddress(BUF + VNET_HDR_LEN as u64))
            .unwrap();
        g.mem
            .write_slice(&f[100..], GuestAddress(BUF + 0x400))
            .unwrap();
        g.offer(0);
        let (mut out, mut tail) = ([0u8; 128], [0u8; 256]);
        let mut segs = Vec::new();
        let popped = pop_tx_frame(&mut g.queue, &g.mem, &mut segs, &mut out, &mut tail);
        assert_eq!(popped, TxPop::Frame(300, hdr));
        assert_eq!(&out[..], &f[..128]);
        assert_eq!(&tail[..172], &f[128..]);
        // Without a tail the same frame is too large.
        g.desc(2, BUF, (VNET_HDR_LEN + 300) as u32, 0, 0);
        g.offer(2);
        assert!(matches!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::Oversized { len: 300, max: 128 })
        ));
    }

    #[test]
    fn tx_buffer_outside_guest_memory() {
        let mut g = Guest::new();
        // Past the end of the region, and straddling its end.
        g.desc(0, BASE + MEM as u64 + 0x1000, 100, 0, 0);
        g.offer(0);
        g.desc(1, BASE + MEM as u64 - 50, 100, 0, 0);
        g.offer(1);
        // Below the region (guest address 0 is not guest memory here).
        g.desc(2, 0x100, 100, 0, 0);
        g.offer(2);
        let mut out = [0u8; 256];
        for _ in 0..3 {
            assert!(matches!(
                g.pop(&mut out),
                TxPop::Refused(ChainError::BufferOutsideMemory { .. })
            ));
        }
        // Given back, and the queue still works.
        assert_eq!(g.used_idx(), 3);
        assert_eq!(g.used(1), (1, 0));
        g.tx_one(3, &frame(64));
        assert_eq!(g.pop(&mut out), TxPop::Frame(64, NO_HDR));
    }

    #[test]
    fn tx_descriptor_loop_and_overlong_chain() {
        let mut g = Guest::new();
        // 0 -> 1 -> 0 -> ...
        g.desc(0, BUF, 64, DESC_F_NEXT, 1);
        g.desc(1, BUF, 64, DESC_F_NEXT, 0);
        g.offer(0);
        let mut out = [0u8; 4096];
        assert_eq!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::TooLong { max: 8 })
        );
        // A self-loop.
        g.desc(2, BUF, 64, DESC_F_NEXT, 2);
        g.offer(2);
        assert!(matches!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::TooLong { .. })
        ));
        assert_eq!(g.used_idx(), 2);
    }

    #[test]
    fn tx_bad_indices() {
        let mut g = Guest::new();
        g.desc(0, BUF, 64, DESC_F_NEXT, 200);
        g.offer(0);
        g.offer(9); // head outside the queue
        let mut out = [0u8; 256];
        assert_eq!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::NextOutOfRange {
                index: 200,
                size: 8
            })
        );
        assert_eq!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::HeadOutOfRange { index: 9, size: 8 })
        );
        // The bad head could not be given back; the valid one was.
        assert_eq!(g.used_idx(), 1);
    }

    #[test]
    fn tx_zero_length_wrong_direction_short_and_oversized() {
        let mut g = Guest::new();
        let mut out = [0u8; 100];
        g.desc(0, BUF, 0, 0, 0);
        g.offer(0);
        assert_eq!(g.pop(&mut out), TxPop::Refused(ChainError::ZeroLength));
        g.desc(1, BUF, 64, DESC_F_WRITE, 0);
        g.offer(1);
        assert_eq!(g.pop(&mut out), TxPop::Refused(ChainError::WritableInTx));
        g.desc(2, BUF, (VNET_HDR_LEN + 10) as u32, 0, 0);
        g.offer(2);
        assert!(matches!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::TooShort { .. })
        ));
        g.tx_one(3, &frame(101));
        assert_eq!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::Oversized { len: 101, max: 100 })
        );
        g.tx_one(4, &frame(100));
        assert_eq!(g.pop(&mut out), TxPop::Frame(100, NO_HDR));
        assert!(!ChainError::Oversized { len: 1, max: 0 }.is_descriptor_error());
        assert!(ChainError::ZeroLength.is_descriptor_error());
    }

    #[test]
    fn tx_indirect_tables() {
        let mut g = Guest::new();
        let f = frame(80);
        let mut out = [0u8; 256];
        // A good one: header + frame in a 2-entry indirect table.
        g.desc_at(INDIRECT, 0, BUF, VNET_HDR_LEN as u32, DESC_F_NEXT, 1);
        g.desc_at(INDIRECT, 1, BUF + 0x100, 80, 0, 0);
        g.mem.write_slice(&f, GuestAddress(BUF + 0x100)).unwrap();
        g.desc(0, INDIRECT, 32, DESC_F_INDIRECT, 0);
        g.offer(0);
        assert_eq!(g.pop(&mut out), TxPop::Frame(80, NO_HDR));
        assert_eq!(&out[..80], &f[..]);
        // Length not a multiple of 16, zero, outside memory, with NEXT,
        // nested, and a next index past the table.
        g.desc(1, INDIRECT, 24, DESC_F_INDIRECT, 0);
        g.offer(1);
        assert_eq!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::BadIndirectLen { len: 24 })
        );
        g.desc(2, INDIRECT, 0, DESC_F_INDIRECT, 0);
        g.offer(2);
        assert_eq!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::BadIndirectLen { len: 0 })
        );
        g.desc(3, BASE + MEM as u64 - 16, 32, DESC_F_INDIRECT, 0);
        g.offer(3);
        assert!(matches!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::BufferOutsideMemory { .. })
        ));
        g.desc(4, INDIRECT, 32, DESC_F_INDIRECT | DESC_F_NEXT, 5);
        g.offer(4);
        assert_eq!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::IndirectWithNext)
        );
        g.desc_at(INDIRECT + 0x100, 0, INDIRECT, 32, DESC_F_INDIRECT, 0);
        g.desc(5, INDIRECT + 0x100, 16, DESC_F_INDIRECT, 0);
        g.offer(5);
        assert_eq!(g.pop(&mut out), TxPop::Refused(ChainError::NestedIndirect));
        g.desc_at(INDIRECT + 0x200, 0, BUF, 64, DESC_F_NEXT, 7);
        g.desc(6, INDIRECT + 0x200, 32, DESC_F_INDIRECT, 0);
        g.offer(6);
        assert_eq!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::NextOutOfRange { index: 7, size: 2 })
        );
        // An indirect loop: 0 -> 1 -> 0 in a 2-entry table.
        g.desc_at(INDIRECT + 0x300, 0, BUF, 64, DESC_F_NEXT, 1);
        g.desc_at(INDIRECT + 0x300, 1, BUF, 64, DESC_F_NEXT, 0);
        g.desc(7, INDIRECT + 0x300, 32, DESC_F_INDIRECT, 0);
        g.offer(7);
        assert!(matches!(
            g.pop(&mut out),
            TxPop::Refused(ChainError::TooLong { .. })
        ));
        assert_eq!(g.used_idx(), 8);
    }

    /// Posts a receive chain of one write-only buffer of `len` at slot `i`.
    fn rx_buffer(g: &mut Guest, i: u16, len: u32) {
        g.desc(i, BUF + u64::from(i) * 0x400, len, DESC_F_WRITE, 0);
        g.offer(i);
    }

    fn read_rx(g: &Guest, i: u16, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        g.mem
            .read_slice(&mut v, GuestAddress(BUF + u64::from(i) * 0x400))
            .unwrap();
        v
    }

    #[test]
    fn rx_mergeable_spreads_a_frame_over_buffers() {
        let mut g = Guest::new();
        for i in 0..3 {
            rx_buffer(&mut g, i, 64);
        }
        let f = frame(100); // 112 bytes with the header: two buffers
        let mut s = RxScratch::default();
        let o = push_rx_frame(&mut g.queue, &g.mem, &f, true, &mut s);
        assert_eq!(o.push, RxPush::Delivered { buffers: 2 });
        assert_eq!(o.bad_chains, 0);
        assert_eq!(g.used_idx(), 2);
        assert_eq!(g.used(0), (0, 64));
        assert_eq!(g.used(1), (1, 48));
        let b0 = read_rx(&g, 0, 64);
        assert_eq!(u16::from_le_bytes([b0[10], b0[11]]), 2, "num_buffers");
        assert_eq!(&b0[12..], &f[..52]);
        assert_eq!(read_rx(&g, 1, 48), f[52..]);
        // Not enough room left for another: nothing is consumed.
        let o = push_rx_frame(&mut g.queue, &g.mem, &f, true, &mut s);
        assert_eq!(o.push, RxPush::NoBuffers);
        assert_eq!(g.used_idx(), 2);
        rx_buffer(&mut g, 3, 200);
        let o = push_rx_frame(&mut g.queue, &g.mem, &f, true, &mut s);
        assert_eq!(o.push, RxPush::Delivered { buffers: 2 });
        assert_eq!(g.used(2), (2, 64));
        assert_eq!(g.used(3), (3, 48));
    }

    #[test]
    fn rx_without_mergeable_needs_one_big_enough_chain() {
        let mut g = Guest::new();
        rx_buffer(&mut g, 0, 64);
        rx_buffer(&mut g, 1, 2048);
        let f = frame(100);
        let mut s = RxScratch::default();
        let o = push_rx_frame(&mut g.queue, &g.mem, &f, false, &mut s);
        assert!(matches!(
            o.push,
            RxPush::Dropped(ChainError::RxChainTooSmall { .. })
        ));
        assert_eq!(g.used(0), (0, 0));
        let o = push_rx_frame(&mut g.queue, &g.mem, &f, false, &mut s);
        assert_eq!(o.push, RxPush::Delivered { buffers: 1 });
        assert_eq!(g.used(1), (1, 112));
        let b = read_rx(&g, 1, 112);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1);
        assert_eq!(&b[12..], &f[..]);
    }

    #[test]
    fn rx_bad_chains_are_given_back_and_skipped() {
        let mut g = Guest::new();
        // Read-only buffer in the receive queue, outside memory, zero length,
        // then a good one.
        g.desc(0, BUF, 256, 0, 0);
        g.offer(0);
        g.desc(1, BASE + 2 * MEM as u64, 256, DESC_F_WRITE, 0);
        g.offer(1);
        g.desc(2, BUF, 0, DESC_F_WRITE, 0);
        g.offer(2);
        rx_buffer(&mut g, 3, 256);
        let f = frame(60);
        let mut s = RxScratch::default();
        let o = push_rx_frame(&mut g.queue, &g.mem, &f, true, &mut s);
        assert_eq!(o.push, RxPush::Delivered { buffers: 1 });
        assert_eq!(o.bad_chains, 3);
        assert_eq!(g.used_idx(), 4);
        for i in 0..3 {
            assert_eq!(g.used(i), (u32::from(i), 0));
        }
        assert_eq!(g.used(3), (3, 72));
        // Nothing was written outside the good buffer.
        assert_eq!(read_rx(&g, 0, 256), vec![0u8; 256]);
    }

    #[test]
    fn an_avail_index_past_the_queue_stalls_both_directions_until_repaired() {
        let mut g = Guest::new();
        g.tx_one(0, &frame(60));
        // The driver claims 1 + QSIZE + 3 chains: more than the ring holds.
        let bogus = QSIZE + 4;
        g.mem.write_obj(bogus, GuestAddress(AVAIL + 2)).unwrap();
        let mut out = [0u8; 256];
        let stalled = ChainError::AvailIndexAhead {
            avail: bogus,
            next: 0,
            size: QSIZE,
        };
        // Reported every time, never popped: a caller that retried on it
        // would spin for ever.
        for _ in 0..3 {
            assert_eq!(g.pop(&mut out), TxPop::Stalled(stalled));
        }
        let mut s = RxScratch::default();
        let o = push_rx_frame(&mut g.queue, &g.mem, &frame(60), true, &mut s);
        assert_eq!(o.push, RxPush::Stalled(stalled));
        assert!(stalled.is_descriptor_error());
        assert_eq!(g.used_idx(), 0);
        assert_eq!(g.queue.next_avail(), 0);
        // Repaired: the chain that was there is taken.
        g.mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(g.pop(&mut out), TxPop::Frame(60, NO_HDR));
    }

    #[test]
    fn a_stopped_queue_offers_nothing() {
        let mut g = Guest::new();
        g.tx_one(0, &frame(60));
        // GET_VRING_BASE stops the ring with chains still offered.
        g.queue.set_ready(false);
        let mut out = [0u8; 256];
        assert_eq!(g.pop(&mut out), TxPop::Empty);
        assert_eq!(pending(&g.queue, &g.mem), Ok(0));
        assert_eq!(g.queue.next_avail(), 0);
        g.queue.set_ready(true);
        assert_eq!(pending(&g.queue, &g.mem), Ok(1));
        assert_eq!(g.pop(&mut out), TxPop::Frame(60, NO_HDR));
    }

    #[test]
    fn rings_outside_memory_are_empty_not_fatal() {
        let mut g = Guest::new();
        g.queue
            .set_avail_ring_address(Some((BASE + 2 * MEM as u64) as u32), Some(0));
        let mut out = [0u8; 64];
        assert_eq!(g.pop(&mut out), TxPop::Empty);
        let mut s = RxScratch::default();
        let o = push_rx_frame(&mut g.queue, &g.mem, &frame(60), true, &mut s);
        assert_eq!(o.push, RxPush::NoBuffers);
    }
}
