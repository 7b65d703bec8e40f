//! Which flow a frame belongs to, as a hash: frames of one flow (same MAC
//! addresses, IP addresses, protocol and TCP/UDP ports) hash alike, so a
//! multi-queue egress that picks its queue by this hash keeps each flow in
//! order, as the kernel's own flow hashing does.

use crate::wire::{
    parse_l2, FrameBytes, Ipv4Hdr, Ipv6Hdr, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// FNV-1a over the flow's fields; 0 for frames too short to parse (they all
/// share one queue, which keeps them in order too).
pub fn flow_hash(frame: &[u8]) -> u32 {
    let Ok(l2) = parse_l2(frame) else {
        return 0;
    };
    let mut h = Fnv::new();
    h.add(&l2.dst);
    h.add(&l2.src);
    h.add(&l2.ethertype.to_be_bytes());
    let l3 = l2.header_len;
    let has_ports = |proto: u8| proto == IPPROTO_TCP || proto == IPPROTO_UDP;
    let l4 = match l2.ethertype {
        ETH_P_IP => frame.read::<Ipv4Hdr>(l3).and_then(|ip| {
            h.add(&ip.src_addr);
            h.add(&ip.dst_addr);
            h.add(&[ip.proto]);
            // Only a first (or only) fragment carries the ports.
            (has_ports(ip.proto) && ip.frag_offset() == 0).then_some(l3 + ip.ihl() as usize)
        }),
        ETH_P_IPV6 => frame.read::<Ipv6Hdr>(l3).and_then(|ip| {
            h.add(&ip.src_addr);
            h.add(&ip.dst_addr);
            h.add(&[ip.next_hdr]);
            has_ports(ip.next_hdr).then_some(l3 + Ipv6Hdr::LEN)
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
