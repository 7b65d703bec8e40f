//! Frames the project makes itself: the generator's Ethernet/IPv4/UDP
//! frame (the benchmarks' offered load, and the header the `gen` XDP
//! program stamps on every frame it sends).

use super::{EthHdr, FrameBytesMut, Ipv4Hdr, UdpHdr, ETH_HLEN, ETH_P_IP, IPPROTO_UDP};
use crate::checksum;

/// Bytes of Ethernet, IPv4 and UDP header in front of a generated frame's
/// payload.
pub const UDP_IPV4_HEADERS: usize = ETH_HLEN + Ipv4Hdr::LEN + UdpHdr::LEN;

/// Addresses and ports of an Ethernet/IPv4/UDP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpIpv4 {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

/// Writes the Ethernet, IPv4 and UDP headers of a frame that fills all of
/// `frame`, leaving its payload as it is: IPv4 with DF and TTL 64 and a
/// valid header checksum (a Linux bridge with br_netfilter drops bad ones),
/// UDP without a checksum (0, allowed over IPv4). `None`, with nothing
/// written, if `frame` is shorter than the headers or longer than IPv4 can
/// say.
pub fn write_udp_ipv4(frame: &mut [u8], h: &UdpIpv4) -> Option<()> {
    let ip_len = u16::try_from(frame.len().checked_sub(ETH_HLEN)?).ok()?;
    if frame.len() < UDP_IPV4_HEADERS {
        return None;
    }
    let eth = EthHdr {
        dst_addr: h.dst_mac,
        src_addr: h.src_mac,
        ether_type: ETH_P_IP.to_be(),
    };
    let mut ip = Ipv4Hdr {
        vihl: 0,
        tos: 0,
        tot_len: [0; 2],
        id: [0; 2],
        frags: [0; 2],
        ttl: 64,
        proto: IPPROTO_UDP,
        check: [0; 2],
        src_addr: h.src_ip,
        dst_addr: h.dst_ip,
    };
    ip.set_vihl(4, Ipv4Hdr::LEN as u8);
    ip.set_tot_len(ip_len);
    ip.set_frags(0b010, 0); // don't fragment
    frame.write(0, &eth)?;
    frame.write(ETH_HLEN, &ip)?;
    let header = &frame[ETH_HLEN..ETH_HLEN + Ipv4Hdr::LEN];
    ip.set_checksum(!checksum::fold_sum(checksum::sum(header)));
    frame.write(ETH_HLEN, &ip)?;
    let mut udp = UdpHdr {
        src: [0; 2],
        dst: [0; 2],
        len: [0; 2],
        check: [0; 2],
    };
    udp.set_src_port(h.src_port);
    udp.set_dst_port(h.dst_port);
    udp.set_len(ip_len - Ipv4Hdr::LEN as u16);
    frame.write(ETH_HLEN + Ipv4Hdr::LEN, &udp)
}

#[cfg(test)]
mod tests {
    use super::super::{parse_l2, parse_l3};
    use super::*;

    const H: UdpIpv4 = UdpIpv4 {
        src_mac: [2, 0, 0, 0, 0, 0xa],
        dst_mac: [2, 0, 0, 0, 0, 0xb],
        src_ip: [10, 0, 0, 1],
        dst_ip: [10, 0, 0, 2],
        src_port: 9,
        dst_port: 4000,
    };

    /// RFC 1071 over 16-bit words, independent of the code under test.
    fn reference_sum(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for w in bytes.chunks(2) {
            sum += u16::from_be_bytes([w[0], w[1]]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn a_60_byte_frame_reads_back_as_written() {
        let mut f = [0xeeu8; 60];
        write_udp_ipv4(&mut f, &H).unwrap();
        assert_eq!(
            &f[..14],
            &[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00]
        );
        assert_eq!(
            &f[14..34],
            &[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, f[24], f[25], 10, 0, 0, 1, 10, 0, 0, 2]
        );
        assert_eq!(reference_sum(&f[14..34]), 0xffff, "IPv4 header checksum");
        assert_eq!(&f[34..42], &[0, 9, 0x0f, 0xa0, 0, 26, 0, 0]);
        assert_eq!(f[42], 0xee, "payload untouched");
        let l2 = parse_l2(&f[..]).unwrap();
        let l3 = parse_l3(&f[..], l2.header_len, l2.ethertype).unwrap();
        assert_eq!((l3.l4_offset, l3.l4_len, l3.proto), (34, 26, IPPROTO_UDP));
    }

    #[test]
    fn frames_too_short_or_too_long_are_refused_untouched() {
        let mut short = [0u8; UDP_IPV4_HEADERS - 1];
        assert_eq!(write_udp_ipv4(&mut short, &H), None);
        assert!(short.iter().all(|b| *b == 0));
        let mut exact = [0u8; UDP_IPV4_HEADERS];
        assert!(write_udp_ipv4(&mut exact, &H).is_some());
    }
}
