//! IPv4 and IPv6 up to the L4 header: [`parse_l3`], shared by checksum
//! completion (kernel and userspace) and TCP segmentation (userspace).

use super::{FrameBytes, Ipv4Hdr, Ipv6Hdr, ETH_P_IP, ETH_P_IPV6};

/// What the IP header says about the L4 header behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3Header {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Offset of the L4 header in the frame (after IPv4 options).
    pub l4_offset: usize,
    /// Bytes of L4 header and payload, as the IP header counts them.
    pub l4_len: usize,
    /// IPv4 protocol or IPv6 next header (extension headers are not
    /// followed: a segment behind one is not a TCP/UDP segment here).
    pub proto: u8,
    /// Source and destination addresses summed as big-endian 16-bit words,
    /// not folded: the address part of the L4 pseudo-header.
    pub addr_sum: u32,
    /// An IPv4 fragment (more-fragments flag or an offset): not a whole
    /// datagram, so its L4 header and checksum are not all there.
    pub fragment: bool,
}

/// Reads the IP header at `l3_offset` of a frame whose EtherType is
/// `ethertype`; `None` for anything but IPv4/IPv6, a version that
/// disagrees with the EtherType, an IPv4 header length under 20 or a total
/// length shorter than the header, and a truncated fixed header.
#[inline(always)]
pub fn parse_l3<F: FrameBytes + ?Sized>(
    frame: &F,
    l3_offset: usize,
    ethertype: u16,
) -> Option<L3Header> {
    match ethertype {
        ETH_P_IP => {
            let h: Ipv4Hdr = frame.read(l3_offset)?;
            let ihl = h.ihl() as usize;
            if h.version() != 4 || ihl < Ipv4Hdr::LEN {
                return None;
            }
            Some(L3Header {
                v6: false,
                l4_offset: l3_offset + ihl,
                l4_len: (h.tot_len() as usize).checked_sub(ihl)?,
                proto: h.proto,
                addr_sum: word_sum(&h.src_addr) + word_sum(&h.dst_addr),
                fragment: h.frag_flags() & 1 != 0 || h.frag_offset() != 0,
            })
        }
        ETH_P_IPV6 => {
            let h: Ipv6Hdr = frame.read(l3_offset)?;
            if h.version() != 6 {
                return None;
            }
            Some(L3Header {
                v6: true,
                l4_offset: l3_offset + Ipv6Hdr::LEN,
                l4_len: h.payload_len() as usize,
                proto: h.next_hdr,
                addr_sum: word_sum(&h.src_addr) + word_sum(&h.dst_addr),
                fragment: false,
            })
        }
        _ => None,
    }
}

/// Sum of `bytes` (an even count) as big-endian 16-bit words, unfolded.
#[inline(always)]
fn word_sum<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::super::{IPPROTO_TCP, IPPROTO_UDP};
    use super::*;

    fn ipv4(vihl: u8, total: u16, frags: u16, proto: u8) -> [u8; 24] {
        let mut h = [0u8; 24];
        h[0] = vihl;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[6..8].copy_from_slice(&frags.to_be_bytes());
        h[9] = proto;
        h[12..20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        h
    }

    #[test]
    fn ipv4_with_options_and_its_pseudo_header_addresses() {
        let h = ipv4(0x46, 124, 0x4000, IPPROTO_TCP);
        let l3 = parse_l3(&h[..], 0, ETH_P_IP).unwrap();
        assert_eq!(l3.l4_offset, 24);
        assert_eq!(l3.l4_len, 100);
        assert_eq!(l3.proto, IPPROTO_TCP);
        assert_eq!(l3.addr_sum, 0x0a00 + 0x0001 + 0x0a00 + 0x0002);
        assert!(!l3.fragment, "DF alone is not a fragment");
    }

    #[test]
    fn fragments_bad_versions_and_lengths_are_told_apart() {
        assert!(
            parse_l3(&ipv4(0x45, 40, 0x2000, 6)[..], 0, ETH_P_IP)
                .unwrap()
                .fragment
        );
        assert!(
            parse_l3(&ipv4(0x45, 40, 0x0001, 6)[..], 0, ETH_P_IP)
                .unwrap()
                .fragment
        );
        assert_eq!(parse_l3(&ipv4(0x65, 40, 0, 6)[..], 0, ETH_P_IP), None);
        assert_eq!(parse_l3(&ipv4(0x44, 40, 0, 6)[..], 0, ETH_P_IP), None);
        assert_eq!(parse_l3(&ipv4(0x45, 19, 0, 6)[..], 0, ETH_P_IP), None);
        assert_eq!(parse_l3(&ipv4(0x45, 40, 0, 6)[..19], 0, ETH_P_IP), None);
        assert_eq!(parse_l3(&ipv4(0x45, 40, 0, 6)[..], 0, 0x0806), None);
    }

    #[test]
    fn ipv6_fixed_header() {
        let mut h = [0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&8u16.to_be_bytes());
        h[6] = IPPROTO_UDP;
        h[8] = 0xfd;
        h[39] = 1;
        let l3 = parse_l3(&h[..], 0, ETH_P_IPV6).unwrap();
        assert!(l3.v6);
        assert_eq!((l3.l4_offset, l3.l4_len, l3.proto), (40, 8, IPPROTO_UDP));
        assert_eq!(l3.addr_sum, 0xfd00 + 1);
        assert_eq!(parse_l3(&h[..39], 0, ETH_P_IPV6), None);
        h[0] = 0x40;
        assert_eq!(parse_l3(&h[..], 0, ETH_P_IPV6), None);
    }
}
