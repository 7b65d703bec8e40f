//! TAP port: what a VM's virtio NIC sits behind on a KVM host (libvirt's
//! vnetX). The switch owns the file descriptor; the netdev can be moved
//! into another network namespace (the tests use one to play the VM), and
//! the device goes away with the switch unless it was made persistent.
//!
//! Frames are read into and written from UMEM frames directly (one copy
//! each way, done by the kernel), behind a `virtio_net_hdr` as QEMU and
//! vhost-net use it. The netdev offers checksum offload and TSO (IPv4,
//! IPv6, ECN) to whatever sends through it, as a virtio NIC with those
//! features does: the sender's stack hands over TCP super-frames of up to
//! 64 KiB with the checksum left undone, and the switch finishes the
//! checksum and cuts the segments once, here (`offload/`), instead of the
//! sender doing it per segment and the switch reading each with its own
//! system call. Frames written toward the netdev are complete: the header
//! is all zeroes that way.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use dataplane_common::flow;
use dataplane_common::wire::FRAME_HEADROOM;

use super::offload::{self, SpillBuffer, VnetHdr, MAX_SUPER_FRAME, VNET_HDR_LEN};
use super::{DropReason, Frames, HeldFrames, Port, PortCounters};
use crate::sys::tun;
use crate::xsk::XdpDesc;

pub use crate::sys::tun::Error;

/// What the netdev may hand the switch: partial checksums and TCP
/// super-frames (UDP segmentation is not offered: no stack sends it by
/// default).
const OFFLOADS: u32 = tun::TUN_F_CSUM | tun::TUN_F_TSO4 | tun::TUN_F_TSO6 | tun::TUN_F_TSO_ECN;

/// An open TAP port (one fd per queue).
pub struct TapPort {
    /// The TAP device.
    ifname: String,
    /// The port, as statistics name it (`tap:IFNAME`).
    name: String,
    queues: Vec<OwnedFd>,
    next_rx: usize,
    counters: Arc<PortCounters>,
    /// Where a super-frame's bytes past its first UMEM frame are read.
    spill: SpillBuffer,
}

impl TapPort {
    /// Creates the TAP device `name` (or attaches to an existing persistent
    /// one) with `queues` queues, non-blocking, virtio-net header on.
    pub fn open(name: &str, queues: usize, counters: Arc<PortCounters>) -> Result<TapPort, Error> {
        tun::check_name(name)?;
        let mut fds = Vec::new();
        for _ in 0..queues.max(1) {
            fds.push(tun::open(
                name,
                &tun::TapOptions {
                    multi_queue: queues > 1,
                    vnet_hdr: Some((VNET_HDR_LEN as i32, OFFLOADS)),
                },
            )?);
        }
        let port = TapPort {
            ifname: name.to_string(),
            name: format!("tap:{name}"),
            queues: fds,
            next_rx: 0,
            counters,
            spill: SpillBuffer::default(),
        };
        // Up in the switch's namespace, as libvirt does for vnetX; once the
        // device is moved elsewhere, whoever owns that namespace decides.
        // A longer queue toward the switch than tun's 500 absorbs bursts
        // while an adaptive PMD wakes up (the guest cannot tell).
        tun::set_queue_len_and_up(name, TX_QUEUE_LEN);
        tracing::info!(
            port = port.name,
            queues = port.queues.len(),
            "TAP port open"
        );
        Ok(port)
    }

    /// The TAP device's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// Frames the TAP queues toward the switch (tun's default is 500).
const TX_QUEUE_LEN: i32 = 4096;

impl Port for TapPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, frames: &mut Frames<'_>, out: &mut Vec<XdpDesc>, max: usize) -> usize {
        let room = frames.umem.frame_size() as usize - FRAME_HEADROOM;
        let mut hdr = [0u8; VNET_HDR_LEN];
        let (mut got, mut bytes) = (0usize, 0u64);
        let mut idle_queues = 0;
        // Round robin over queues until `max` frames or every queue is empty.
        while got < max && idle_queues < self.queues.len() {
            let q = self.next_rx;
            self.next_rx = (self.next_rx + 1) % self.queues.len();
            let Some(chunk) = frames.pool.alloc() else {
                self.counters.add_drop(DropReason::NoFreeFrame, 1);
                break;
            };
            // SAFETY: `chunk` just came off the free list: this port is its
            // only holder until it hands the descriptor to the engine.
            let buf = unsafe { frames.umem.frame_mut(chunk + FRAME_HEADROOM as u64, room) };
            let tail = self.spill.tail(room);
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: VNET_HDR_LEN,
                },
                libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: room,
                },
                libc::iovec {
                    iov_base: tail.as_mut_ptr().cast(),
                    iov_len: MAX_SUPER_FRAME,
                },
            ];
            // SAFETY: the iovecs point at live, writable buffers of the
            // lengths given, none overlapping.
            let n = unsafe { libc::readv(self.queues[q].as_raw_fd(), iov.as_ptr(), 3) };
            if n <= VNET_HDR_LEN as isize {
                frames.pool.free(chunk);
                idle_queues += 1;
                continue;
            }
            idle_queues = 0;
            let len = n as usize - VNET_HDR_LEN;
            let d = offload::deliver(
                frames,
                offload::Written {
                    chunk,
                    headroom: FRAME_HEADROOM as u64,
                    len,
                },
                &VnetHdr::parse(&hdr),
                &mut self.spill,
                out,
                &self.counters,
            );
            got += d.frames;
            bytes += d.bytes;
        }
        self.counters.add_rx(got as u64, bytes);
        got
    }

    fn tx_burst(&mut self, frames: &mut Frames<'_>, batch: &mut Vec<XdpDesc>) {
        let hdr = [0u8; VNET_HDR_LEN];
        let mut sent = 0usize;
        let mut bytes = 0u64;
        for desc in batch.iter() {
            let data = frames.umem.frame(desc.addr, desc.len as usize);
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_ptr() as *mut libc::c_void,
                    iov_len: VNET_HDR_LEN,
                },
                libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                },
            ];
            // One queue per flow, as the kernel's flow hashing would pick:
            // frames of one flow on several queues could be read out of
            // order by the guest.
            let q = match self.queues.len() {
                1 => 0,
                n => flow::flow_hash(data) as usize % n,
            };
            // SAFETY: both iovecs point at live buffers, read only.
            let n = unsafe { libc::writev(self.queues[q].as_raw_fd(), iov.as_ptr(), 2) };
            if n < 0 {
                // EAGAIN (queue full), or EIO while the device is down: the
                // rest stays in `batch` for the engine to drop and count.
                break;
            }
            // The kernel copied it: the frame is free again at once.
            frames.pool.free(desc.addr);
            sent += 1;
            bytes += desc.len as u64;
        }
        batch.drain(..sent);
        self.counters.add_tx(sent as u64, bytes);
    }

    fn maintain(&mut self, _frames: &mut Frames<'_>) {}

    fn poll_fds(&self) -> Vec<RawFd> {
        self.queues.iter().map(|q| q.as_raw_fd()).collect()
    }

    fn frames_held(&self) -> HeldFrames {
        // Reads and writes copy synchronously: a TAP port never holds frames.
        HeldFrames::default()
    }

    fn refresh_counters(&mut self) {}

    fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }
}
