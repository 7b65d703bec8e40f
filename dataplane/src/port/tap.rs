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

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use dataplane_common::flow;
use dataplane_common::wire::FRAME_HEADROOM;

use thiserror::Error;

use super::offload::{self, SpillBuffer, VnetHdr, MAX_SUPER_FRAME, VNET_HDR_LEN};
use super::{DropReason, Frames, HeldFrames, Port, PortCounters};
use crate::xsk::XdpDesc;

// linux/if_tun.h
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
/// What the netdev may hand the switch: partial checksums and TCP
/// super-frames (UDP segmentation is not offered: no stack sends it by
/// default).
const OFFLOADS: libc::c_uint = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;

#[derive(Debug, Error)]
pub enum Error {
    #[error("TAP {name:?}: name must be 1-15 bytes without '/' or spaces")]
    BadName { name: String },
    #[error("TAP {name}: opening /dev/net/tun: {source} (is the tun module loaded?)")]
    OpenTun {
        name: String,
        source: std::io::Error,
    },
    #[error("TAP {name}: {call}: {source}{hint}", hint = tap_hint(source))]
    Ioctl {
        name: String,
        call: &'static str,
        source: std::io::Error,
    },
}

fn tap_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBUSY) => " (another process has this TAP open)",
        Some(libc::EINVAL) => {
            " (a device of that name exists with other flags, e.g. not multi-queue, or is not a TAP)"
        }
        Some(libc::EPERM) => " (needs CAP_NET_ADMIN)",
        _ => "",
    }
}

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
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            return Err(Error::BadName {
                name: name.to_string(),
            });
        }
        let mut fds = Vec::new();
        for _ in 0..queues.max(1) {
            fds.push(open_queue(name, queues > 1)?);
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
        configure_netdev(name, TX_QUEUE_LEN);
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

fn open_queue(name: &str, multi_queue: bool) -> Result<OwnedFd, Error> {
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: open(2) with a NUL-terminated path; the fd is owned below.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(Error::OpenTun {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; zeroed is a valid start.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if multi_queue {
        flags |= IFF_MULTI_QUEUE;
    }
    req.ifr_ifru.ifru_flags = flags;
    let ioctl_err = |call| Error::Ioctl {
        name: name.to_string(),
        call,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: TUNSETIFF reads the ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(ioctl_err("TUNSETIFF"));
    }
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } != 0 {
        return Err(ioctl_err("TUNSETVNETHDRSZ"));
    }
    // SAFETY: TUNSETOFFLOAD takes the flags by value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, OFFLOADS) } != 0 {
        return Err(ioctl_err("TUNSETOFFLOAD"));
    }
    Ok(fd)
}

/// Frames the TAP queues toward the switch (tun's default is 500).
const TX_QUEUE_LEN: libc::c_int = 4096;

/// Sets the device's queue length and IFF_UP in the current namespace
/// (best effort: a persistent device may be configured by its owner).
fn configure_netdev(name: &str, tx_queue_len: libc::c_int) {
    const SIOCSIFTXQLEN: libc::c_ulong = 0x8943;
    // SAFETY: a datagram socket for the ioctls, closed at the end; ifreq is
    // plain data we own.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, c) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = c as libc::c_char;
        }
        // ifr_qlen shares the int slot of the union with ifr_ifindex.
        req.ifr_ifru.ifru_ifindex = tx_queue_len;
        libc::ioctl(s, SIOCSIFTXQLEN, &mut req);
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &mut req);
        }
        libc::close(s);
    }
}

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
                chunk,
                FRAME_HEADROOM as u64,
                len,
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
