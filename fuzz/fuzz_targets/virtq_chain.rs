//! A hostile guest's virtqueue, fuzzed: the input is the guest's memory
//! (descriptor table, rings, buffers) and a few knobs; the target pops
//! transmit chains into a frame buffer and pushes frames into receive
//! chains, as the vhost-user port does. Nothing may panic, and every
//! result must respect its bounds. vm-memory refuses any access outside
//! the two guest regions, so a stray access shows up as an error result,
//! and AddressSanitizer catches anything that goes around it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// The port's own code, as it is compiled into dataplane.
#[path = "../../dataplane/src/port/vhost_user/virtq.rs"]
#[allow(dead_code)]
mod virtq;

use virtq::{RxPush, RxScratch, TxPop, VNET_HDR_LEN};

/// Two regions with a hole between them: chains may straddle the hole or
/// run off either end.
const LOW: (u64, usize) = (0, 0x4000);
const HIGH: (u64, usize) = (0x5000, 0x2000);
// Rings packed at the start, so that short inputs reach them: at most 16
// entries (descriptors 0x000-0x0ff, avail 0x100-0x125, used 0x180-0x205).
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x180;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (knobs, image) = data.split_at(4);
    let size = 1u16 << (knobs[0] % 5); // 1 ..= 16
    let mergeable = knobs[1] & 1 != 0;
    let frame_room = 64 + usize::from(knobs[2]) * 8;
    let frame_len = 14 + usize::from(knobs[3]) * 7;

    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(LOW.0), LOW.1),
        (GuestAddress(HIGH.0), HIGH.1),
    ])
    .unwrap();
    let low = image.len().min(LOW.1);
    mem.write_slice(&image[..low], GuestAddress(LOW.0)).unwrap();
    let high = (image.len() - low).min(HIGH.1);
    mem.write_slice(&image[low..low + high], GuestAddress(HIGH.0))
        .unwrap();

    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(knobs[1] & 2 != 0);
    q.set_ready(true);

    // Transmit side.
    let mut segs = Vec::new();
    let mut out = vec![0u8; frame_room];
    // A tail for super-frames on every other input: with and without.
    let mut tail = vec![0u8; if knobs[1] & 4 != 0 { 2048 } else { 0 }];
    for _ in 0..2 * u32::from(size) + 2 {
        match virtq::pop_tx_frame(&mut q, &mem, &mut segs, &mut out, &mut tail) {
            TxPop::Empty => {
                // Empty means nothing is offered: a caller that asks for
                // a kick and looks again cannot be told "more" for ever.
                assert_eq!(virtq::pending(&q, &mem), Ok(0));
                break;
            }
            TxPop::Stalled(_) => break,
            TxPop::Frame(len, _) => {
                assert!(len >= virtq::MIN_FRAME && len <= frame_room + tail.len())
            }
            TxPop::Refused(_) => {}
        }
        assert!(segs.len() <= usize::from(size));
    }
    let _ = q.needs_notification(&mem);

    // Receive side, on the same rings (the guest's memory is all garbage
    // anyway).
    q.set_next_avail(0);
    let frame: Vec<u8> = (0..frame_len).map(|i| i as u8).collect();
    let mut scratch = RxScratch::default();
    for _ in 0..2 * u32::from(size) + 2 {
        let o = virtq::push_rx_frame(&mut q, &mem, &frame, mergeable, &mut scratch);
        match o.push {
            RxPush::NoBuffers | RxPush::Stalled(_) => break,
            RxPush::Delivered { buffers } => {
                assert!(buffers >= 1 && (mergeable || buffers == 1));
                assert!(usize::from(buffers) <= usize::from(size));
            }
            RxPush::Dropped(_) => {}
        }
        let _ = VNET_HDR_LEN;
    }
});
