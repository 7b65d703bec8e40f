//! The benchmark's TAP guest: a process holding a TAP's file descriptor,
//! where QEMU/vhost-net would sit, answering what is addressed to the
//! guest's MAC towards a peer, as the XDP `echo` program does for a veth
//! (destination = peer, source = the guest, IPv4 only; the rest is read and
//! dropped, as a guest's stack would ignore it). A read and a write per
//! frame, sleeping in poll(2) when idle: the cheapest a userspace VM can be,
//! so the benchmark measures the bridge in front of it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use dataplane_common::wire::ETH_P_IP;

use crate::sys::tun::{self, TapOptions};

/// An open TAP and the two addresses of the echo.
pub struct TapEcho {
    fd: OwnedFd,
    guest: [u8; 6],
    peer: [u8; 6],
}

impl TapEcho {
    /// Creates (or opens) TAP `name` without a virtio-net header: frames
    /// in, frames out, as a guest without offloads sees them.
    pub fn open(name: &str, guest: [u8; 6], peer: [u8; 6]) -> Result<TapEcho, tun::Error> {
        let fd = tun::open(name, &TapOptions::default())?;
        Ok(TapEcho { fd, guest, peer })
    }

    /// Echoes until `stop` is set (checked at least every 100 ms); returns
    /// how many frames were answered.
    pub fn run(&self, stop: &AtomicBool) -> u64 {
        let raw = self.fd.as_raw_fd();
        let mut buf = vec![0u8; 2048];
        let mut answered = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own; 100 ms so that `stop` is seen.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            // The fd is non-blocking: read until the queue is empty.
            loop {
                // SAFETY: reading into our own buffer, at most its length.
                let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                let frame = &mut buf[..n as usize];
                if answer(frame, self.guest, self.peer) {
                    // SAFETY: writing the bytes we just read, at their length.
                    if unsafe { libc::write(raw, frame.as_ptr().cast(), frame.len()) } > 0 {
                        answered += 1;
                    }
                }
            }
        }
        answered
    }
}

/// Rewrites `frame` into the echo's answer if it is IPv4 addressed to
/// `guest`; says whether it did.
fn answer(frame: &mut [u8], guest: [u8; 6], peer: [u8; 6]) -> bool {
    if frame.len() < 14 || frame[..6] != guest || frame[12..14] != ETH_P_IP.to_be_bytes() {
        return false;
    }
    frame[..6].copy_from_slice(&peer);
    frame[6..12].copy_from_slice(&guest);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 0x20];
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 0x30];

    fn frame(dst: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&OTHER);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&[0xab; 46]);
        f
    }

    #[test]
    fn ipv4_for_the_guest_goes_back_to_the_peer_from_the_guest() {
        let mut f = frame(GUEST, ETH_P_IP);
        assert!(answer(&mut f, GUEST, PEER));
        assert_eq!(f[..6], PEER);
        assert_eq!(f[6..12], GUEST);
        assert_eq!(f[14..], [0xab; 46]);
    }

    #[test]
    fn other_destinations_arp_and_runts_are_not_answered() {
        let mut other = frame(OTHER, ETH_P_IP);
        let mut arp = frame(GUEST, 0x0806);
        let mut runt = GUEST.to_vec();
        assert!(!answer(&mut other, GUEST, PEER));
        assert!(!answer(&mut arp, GUEST, PEER));
        assert!(!answer(&mut runt, GUEST, PEER));
        assert_eq!(
            other,
            frame(OTHER, ETH_P_IP),
            "a frame not answered is left as it was"
        );
    }
}
