//! A hostile guest that changes its memory while the device works, fuzzed
//! against the same burst code the vhost-user port runs.
//!
//! The input is a program for the guest: write bytes anywhere in its
//! memory, offer well-formed chains, move its available index, then let
//! the device run a transmit burst (`virtq::tx_burst`, the port's loop) or
//! deliver frames (`virtq::push_rx_frame`). During a transmit burst the
//! guest also rewrites memory between two chains (each time the device
//! asks for a buffer). Queue sizes go up to 1024.
//!
//! Oracles, besides "no panic, no hang":
//! - a burst takes at most `max` chains, and asks for at most `max + 2`
//!   buffers (the two extra: looks at an empty queue);
//! - every chain taken is given back once: the used index moves by at most
//!   the chains taken, and the device's next-available index by exactly
//!   that many;
//! - a delivered frame writes only inside device-writable buffers and the
//!   used ring, never the descriptor table or the available ring;
//! - the used entries a delivery adds are exactly the chains it consumed,
//!   in order: no head given back twice, none forgotten.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[path = "../../dataplane/src/port/vhost_user/virtq.rs"]
#[allow(dead_code)]
mod virtq;

use virtq::{RxPush, RxScratch, TxPop, TxSink};

// Guest memory: the rings for up to 1024 entries, buffers, a hole, and a
// second region, so chains can straddle the hole or run off either end.
const DESC: u64 = 0x0000; // 16 KiB of descriptors
const AVAIL: u64 = 0x4000; // 6 + 2 * 1024
const USED: u64 = 0x5000; // 6 + 8 * 1024
const BUFS: u64 = 0x8000;
const LOW_END: u64 = 0x10000;
const HIGH: (u64, u64) = (0x11000, 0x13000);

/// Reads input bytes, 0 when exhausted.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn addr(&mut self) -> u64 {
        let raw = u32::from_le_bytes([self.byte(), self.byte(), self.byte(), 0]) as u64;
        raw % HIGH.1
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// One guest write: where, and the bytes.
fn guest_write(mem: &GuestMemoryMmap, input: &mut Input) {
    let at = input.addr();
    let len = 1 + usize::from(input.byte() % 32);
    let bytes: Vec<u8> = (0..len).map(|_| input.byte()).collect();
    // Writes into the hole or past the end are the guest's own loss.
    let _ = mem.write_slice(&bytes, GuestAddress(at));
}

/// A well-formed offer: `n` one-descriptor chains starting at descriptor
/// `first`, buffers in BUFS, `write` for receive buffers.
fn offer(mem: &GuestMemoryMmap, size: u16, first: u16, n: u16, write: bool, len: u32) {
    let avail_idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap_or(0);
    for k in 0..n.min(size) {
        let d = (first.wrapping_add(k)) % size;
        let buf = BUFS + (u64::from(d) * 256) % (LOW_END - BUFS - 4096);
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&buf.to_le_bytes());
        desc[8..12].copy_from_slice(&len.to_le_bytes());
        desc[12..14].copy_from_slice(&(if write { 2u16 } else { 0 }).to_le_bytes());
        let _ = mem.write_slice(&desc, GuestAddress(DESC + 16 * u64::from(d)));
        let slot = avail_idx.wrapping_add(k) % size;
        let _ = mem.write_obj(d, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)));
    }
    let _ = mem.write_obj(avail_idx.wrapping_add(n.min(size)), GuestAddress(AVAIL + 2));
}

/// The device side of a transmit burst, with a guest that rewrites its
/// memory each time the device asks for a buffer.
struct MutatingSink<'a, 'i> {
    mem: &'a GuestMemoryMmap,
    input: &'a mut Input<'i>,
    buf: Vec<u8>,
    /// Where a frame longer than `buf` goes on (a super-frame's tail).
    tail: Vec<u8>,
    asked: usize,
    outcomes: Vec<TxPop>,
}

impl TxSink for MutatingSink<'_, '_> {
    fn buffers(&mut self) -> Option<(&mut [u8], &mut [u8])> {
        self.asked += 1;
        if self.input.byte() & 1 != 0 {
            guest_write(self.mem, self.input);
        }
        Some((&mut self.buf, &mut self.tail))
    }
    fn outcome(&mut self, popped: TxPop) {
        if let TxPop::Frame(len, _) = popped {
            assert!(len >= virtq::MIN_FRAME && len <= self.buf.len() + self.tail.len());
        }
        self.outcomes.push(popped);
    }
}

/// Device-writable buffers named by the descriptor table (and by indirect
/// tables it points to): where a delivery may write.
fn writable_ranges(mem: &GuestMemoryMmap, size: u16) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut tables = vec![(DESC, u64::from(size))];
    let mut depth = 0;
    while let Some((table, n)) = tables.pop() {
        for i in 0..n.min(1024) {
            let mut d = [0u8; 16];
            // The guest names the indirect table's address: any u64.
            let Some(at) = table.checked_add(16 * i) else {
                continue;
            };
            if mem.read_slice(&mut d, GuestAddress(at)).is_err() {
                continue;
            }
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u64::from(u32::from_le_bytes(d[8..12].try_into().unwrap()));
            let flags = u16::from_le_bytes([d[12], d[13]]);
            if flags & 4 != 0 && depth == 0 {
                tables.push((addr, len / 16));
            } else if flags & 2 != 0 {
                out.push((addr, addr.saturating_add(len)));
            }
        }
        depth += 1;
    }
    out
}

fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut low = vec![0u8; LOW_END as usize];
    mem.read_slice(&mut low, GuestAddress(0)).unwrap();
    let mut high = vec![0u8; (HIGH.1 - HIGH.0) as usize];
    mem.read_slice(&mut high, GuestAddress(HIGH.0)).unwrap();
    low.extend(high);
    low
}

/// Guest address of byte `i` of a snapshot.
fn address_of(i: usize) -> u64 {
    if (i as u64) < LOW_END {
        i as u64
    } else {
        HIGH.0 + (i as u64 - LOW_END)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let size = 1u16 << (input.byte() % 11); // 1 ..= 1024
    let flags = input.byte();
    let mergeable = flags & 1 != 0;
    let event_idx = flags & 2 != 0;
    let frame_room = 64 + usize::from(input.byte()) * 8;

    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH.0), (HIGH.1 - HIGH.0) as usize),
    ])
    .unwrap();
    let mut q = Queue::new(1024).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);

    let mut segs = Vec::new();
    let mut scratch = RxScratch::default();
    let mut steps = 0;
    while !input.done() && steps < 64 {
        steps += 1;
        match input.byte() % 6 {
            0 => guest_write(&mem, &mut input),
            1 => {
                let idx = input.u16();
                let _ = mem.write_obj(idx, GuestAddress(AVAIL + 2));
            }
            2 | 3 => {
                let first = input.u16();
                let n = 1 + u16::from(input.byte());
                let len = 1 + u32::from(input.u16() % 2048);
                offer(&mem, size, first, n, input.byte() & 1 != 0, len);
            }
            4 => {
                let max = 1 + usize::from(input.byte() % 64);
                // The device's own counters: the guest may scribble on the
                // used ring's index in memory at any time.
                let (avail0, used0) = (q.next_avail(), q.next_used());
                // Some sinks have no room for a super-frame's tail, some do.
                let tail_len = frame_room * (usize::from(input.byte()) % 3);
                let mut sink = MutatingSink {
                    mem: &mem,
                    input: &mut input,
                    buf: vec![0u8; frame_room],
                    tail: vec![0u8; tail_len],
                    asked: 0,
                    outcomes: Vec::new(),
                };
                let taken = virtq::tx_burst(&mut q, &mem, &mut segs, max, &mut sink);
                assert!(taken <= max, "{taken} chains taken, burst of {max}");
                assert!(sink.asked <= max + 2, "{} buffers asked for", sink.asked);
                let counted = sink
                    .outcomes
                    .iter()
                    .filter(|o| matches!(o, TxPop::Frame(..) | TxPop::Refused(_)))
                    .count();
                assert_eq!(counted, taken);
                assert_eq!(q.next_avail().wrapping_sub(avail0) as usize, taken);
                let returned = q.next_used().wrapping_sub(used0) as usize;
                assert!(
                    returned <= taken,
                    "{returned} used entries for {taken} chains"
                );
            }
            _ => {
                let frames = 1 + input.byte() % 8;
                let frame_len = 14 + usize::from(input.u16() % 9000);
                for _ in 0..frames {
                    let frame: Vec<u8> = (0..frame_len).map(|i| (i % 251) as u8 ^ 0x5a).collect();
                    let before = snapshot(&mem);
                    let writable = writable_ranges(&mem, size);
                    // The device's own counters: the guest may scribble on the
                    // used ring's index in memory at any time.
                    let (avail0, used0) = (q.next_avail(), q.next_used());
                    let o = virtq::push_rx_frame(&mut q, &mem, &frame, mergeable, &mut scratch);
                    let after = snapshot(&mem);
                    let used_end = USED + 6 + 8 * u64::from(size);
                    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                        if b == a {
                            continue;
                        }
                        let at = address_of(i);
                        let in_used = (USED..used_end).contains(&at);
                        let in_buffer = writable.iter().any(|&(s, e)| (s..e).contains(&at));
                        assert!(
                            in_used || in_buffer,
                            "delivery wrote guest byte {at:#x}, outside the used ring and every writable buffer"
                        );
                    }
                    // Every chain this delivery took is given back once, in
                    // the order taken: the used entries added are the
                    // available entries consumed (heads the guest can
                    // recognise, that is inside the queue).
                    let added = q.next_used().wrapping_sub(used0);
                    let consumed = q.next_avail().wrapping_sub(avail0);
                    let expected: Vec<u32> = (0..consumed)
                        .filter_map(|k| {
                            let slot = avail0.wrapping_add(k) % size;
                            let head: u16 = mem
                                .read_obj(GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
                                .unwrap();
                            (head < size).then_some(u32::from(head))
                        })
                        .collect();
                    let given: Vec<u32> = (0..added)
                        .map(|k| {
                            let slot = used0.wrapping_add(k) % size;
                            mem.read_obj(GuestAddress(USED + 4 + 8 * u64::from(slot)))
                                .unwrap()
                        })
                        .collect();
                    assert_eq!(given, expected, "used entries vs chains taken");
                    match o.push {
                        RxPush::Delivered { buffers } => {
                            assert!(buffers >= 1 && (mergeable || buffers == 1));
                            assert!(buffers <= size);
                        }
                        RxPush::NoBuffers | RxPush::Stalled(_) => break,
                        RxPush::Dropped(_) => {}
                    }
                }
            }
        }
    }
});
