//! Offloads a sender asked of the switch through a virtio-net header:
//! "finish this checksum" and "cut this super-frame into segments".
//!
//! A TAP whose netdev has checksum and TSO offload on (see `tap.rs`), like a
//! virtio NIC with those features, hands over TCP segments of up to 64 KiB
//! whose checksum is left to "the device", with a header saying so. The
//! sender saves its own per-segment work; the switch does it once, at the
//! edge, in software, as OVS-DPDK's userspace TSO does: every frame inside
//! the switch is then complete and at most one UMEM frame, whatever the
//! egress.
//!
//! The header comes from a party the switch does not trust (a guest, a
//! tenant's namespace), so every offset it gives is checked against the
//! frame, and segmentation reads the headers from the frame itself rather
//! than from the header's `hdr_len`.

mod segment;

pub use self::segment::{
    complete_checksum, Error, TcpSegments, VnetHdr, MAX_SEGMENTS, VNET_HDR_LEN,
};

use self::segment::F_NEEDS_CSUM;
use super::{DropReason, Frames, PortCounters};
use crate::xsk::XdpDesc;

/// The largest frame a sender can hand over with TSO: a 64 KiB IP packet
/// behind an Ethernet header with a VLAN tag.
pub const MAX_SUPER_FRAME: usize = 65_535 + 18;

/// Where a port reads frames that may be super-frames: the first `room`
/// bytes go into a UMEM frame (all of any ordinary frame: one copy), the
/// rest into [`SpillBuffer::tail`]; the room in front of the tail is where
/// a super-frame's head is copied to make it whole before it is cut.
#[derive(Default)]
pub struct SpillBuffer {
    buf: Vec<u8>,
    room: usize,
}

impl SpillBuffer {
    /// Sized for frames whose first `room` bytes fit a UMEM frame
    /// (allocated once, on first use, on the PMD thread that reads).
    pub fn tail(&mut self, room: usize) -> &mut [u8] {
        if self.room != room || self.buf.len() != room + MAX_SUPER_FRAME {
            self.buf = vec![0; room + MAX_SUPER_FRAME];
            self.room = room;
        }
        &mut self.buf[room..]
    }
}

/// What [`deliver`] handed to the switch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub frames: usize,
    pub bytes: u64,
}

/// Where a sender's frame was written: its first bytes in the UMEM frame
/// `chunk`, from `chunk + headroom` on, `len` bytes in all (those past the
/// UMEM frame's room in the spill buffer's tail).
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub chunk: u64,
    pub headroom: u64,
    pub len: usize,
}

/// Hands one frame a sender wrote behind a virtio-net header to the
/// switch, doing what the header asks: as it is, with its checksum
/// finished, or cut into segments. The frame's first `room` bytes are in
/// its UMEM frame, the rest (if any) in `spill`'s tail, where
/// [`SpillBuffer::tail`] put them. Descriptors go to `out`; frames that
/// cannot be honoured are dropped and counted.
pub fn deliver(
    frames: &mut Frames<'_>,
    written: Written,
    hdr: &VnetHdr,
    spill: &mut SpillBuffer,
    out: &mut Vec<XdpDesc>,
    counters: &PortCounters,
) -> Delivered {
    let Written {
        chunk,
        headroom,
        len,
    } = written;
    let room = frames.umem.frame_size() as usize - headroom as usize;
    let one = |out: &mut Vec<XdpDesc>| {
        out.push(XdpDesc {
            addr: chunk + headroom,
            len: len as u32,
            options: 0,
        });
        Delivered {
            frames: 1,
            bytes: len as u64,
        }
    };
    let refuse = |frames: &mut Frames<'_>| {
        frames.pool.free(chunk);
        counters.add_drop(DropReason::Malformed, 1);
        Delivered::default()
    };
    if !hdr.is_gso() {
        if len > room {
            // Not a super-frame, yet larger than a UMEM frame: the
            // sender's MTU is above what the switch carries.
            return refuse(frames);
        }
        if hdr.flags & F_NEEDS_CSUM != 0 {
            // SAFETY: the caller owns `chunk` until it is handed over.
            let buf = unsafe { frames.umem.frame_mut(chunk + headroom, len) };
            if complete_checksum(buf, hdr).is_err() {
                return refuse(frames);
            }
            counters.add_checksums_completed(1);
        }
        return one(out);
    }
    // A super-frame: gather it whole behind the head's room in `spill`,
    // then cut it into `chunk` and as many fresh frames as it needs.
    if len > room + MAX_SUPER_FRAME {
        return refuse(frames);
    }
    // Sized already if the frame's tail was read into it; if the whole
    // super-frame fit the UMEM frame, this is where it is gathered.
    spill.tail(room);
    let head = len.min(room);
    spill.buf[..head].copy_from_slice(frames.umem.frame(chunk + headroom, head));
    let Ok(mut segments) = TcpSegments::new(&spill.buf[..len], hdr, room) else {
        return refuse(frames);
    };
    let count = segments.count();
    let mut done = Delivered::default();
    for i in 0..count {
        let addr = match i {
            0 => chunk,
            _ => match frames.pool.alloc() {
                Some(addr) => addr,
                None => break,
            },
        };
        // SAFETY: `addr` is `chunk` (its bytes were copied out above) or
        // fresh off the free list: the caller's alone until handed over.
        let seg_buf = unsafe { frames.umem.frame_mut(addr + headroom, room) };
        let seg_len = segments
            .write_next(seg_buf)
            .expect("count() segments are there to write");
        out.push(XdpDesc {
            addr: addr + headroom,
            len: seg_len as u32,
            options: 0,
        });
        done.frames += 1;
        done.bytes += seg_len as u64;
    }
    if done.frames < count {
        // The pool ran dry mid-frame: the sender's TCP retransmits.
        counters.add_drop(DropReason::NoFreeFrame, (count - done.frames) as u64);
    }
    counters.add_gso_frame(done.frames as u64);
    done
}
