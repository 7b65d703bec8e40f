//! Which flow a frame belongs to, as a hash: frames of one flow (same MAC
//! addresses, IP addresses, protocol and TCP/UDP ports) hash alike, so a
//! multi-queue egress that picks its queue by this hash keeps each flow in
//! order, as the kernel's own flow hashing does.

use crate::checksum::{ETH_P_IP, ETH_P_IPV6};
use crate::wire::{parse_l2, FrameBytes};

/// FNV-1a over the flow's fields; 0 for frames too short to parse (they all
/// share one queue, which keeps them in order too).
pub fn flow_hash(frame: &[u8]) -> u32 {
    let Ok(l2) = parse_l2(frame) else {
        return 0;
    };
    let mut h = Fnv::new();
    h.add(&frame[..12]);
    h.add(&l2.ethertype.to_be_bytes());
    let l3 = l2.header_len;
    let l4 = match l2.ethertype {
        ETH_P_IP => frame.bytes::<20>(l3).and_then(|ip| {
            h.add(&ip[12..20]);
            h.add(&[ip[9]]);
            // Only a first (or only) fragment carries the ports.
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
            let ports = matches!(ip[9], 6 | 17) && !fragment;
            ports.then_some(l3 + ((ip[0] & 0x0f) as usize) * 4)
        }),
        ETH_P_IPV6 => frame.bytes::<40>(l3).and_then(|ip| {
            h.add(&ip[8..40]);
            h.add(&[ip[6]]);
            matches!(ip[6], 6 | 17).then_some(l3 + 40)
        }),
        _ => None,
    };
    if let Some(ports) = l4.and_then(|at| frame.bytes::<4>(at)) {
        h.add(&ports);
    }
    h.0
}

struct Fnv(u32);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0x811c_9dc5)
    }

    fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u32).wrapping_mul(0x0100_0193);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn udp4(sport: u16, payload: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 30, 0, payload, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&[0x13, 0x88, 0, 10, 0, 0, payload, payload]);
        f
    }

    #[test]
    fn one_flow_hashes_alike_whatever_its_payload_and_ip_id() {
        assert_eq!(flow_hash(&udp4(1000, 1)), flow_hash(&udp4(1000, 2)));
    }

    #[test]
    fn flows_that_differ_in_a_port_spread() {
        let hashes: std::collections::BTreeSet<u32> =
            (1000..1064).map(|p| flow_hash(&udp4(p, 0)) % 4).collect();
        assert_eq!(hashes.len(), 4, "64 flows over 4 queues use all 4");
    }

    #[test]
    fn short_frames_hash_to_zero_and_do_not_panic() {
        let f = udp4(1, 1);
        for cut in 0..f.len() {
            let _ = flow_hash(&f[..cut]);
        }
        assert_eq!(flow_hash(&f[..10]), 0);
    }
}
