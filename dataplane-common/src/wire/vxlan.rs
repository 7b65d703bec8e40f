//! VXLAN over IPv4 (RFC 7348): the 50 bytes in front of a tunnelled frame.
//!
//! ```text
//!  outer Ethernet (14) | IPv4 (20) | UDP (8) | VXLAN (8) | inner frame
//! ```
//!
//! [`encapsulate`] writes them in front of an inner frame (the switch keeps
//! [`super::FRAME_HEADROOM`] bytes free before every frame, so the outer
//! header goes there and nothing is copied); [`parse_outer`] reads them and
//! says where the inner frame starts. Both read and write through the same
//! views as the rest of the wire layer, so the XDP programs can use them.

use super::build::{UdpIpv4, UDP_IPV4_HEADERS};
use super::{
    EthHdr, FrameBytes, FrameBytesMut, Ipv4Hdr, UdpHdr, VxlanHdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6,
    IPPROTO_TCP, IPPROTO_UDP,
};

/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN over IPv4 adds in front of a frame (no IPv4 options).
pub const VXLAN_IPV4_OVERHEAD: usize = UDP_IPV4_HEADERS + VxlanHdr::LEN;
/// Bytes of the outer IPv4 packet besides the inner frame: IPv4 (no
/// options), UDP and VXLAN headers. An underlay of MTU `m` carries inner
/// frames of up to `m - 36` bytes.
pub const VXLAN_IP_OVERHEAD: usize = Ipv4Hdr::LEN + UdpHdr::LEN + VxlanHdr::LEN;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Outer UDP source ports carry the inner flow's hash in this range
/// (RFC 7348 section 5 recommends the dynamic range 49152-65535).
pub const ENTROPY_PORT_BASE: u16 = 49152;

/// What a received VXLAN frame's outer headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    pub src_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub dst_port: u16,
    pub vni: u32,
    /// Where the inner Ethernet frame starts.
    pub inner_offset: usize,
}

/// Why a frame is not a VXLAN frame the switch can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotVxlan {
    /// Not IPv4/UDP: the frame should not have been steered here.
    NotUdpIpv4,
    /// An IPv4 fragment: the kernel reassembles those, the switch does not.
    Fragment,
    /// The VXLAN header lacks the I flag (RFC 7348: no valid VNI).
    NoVni,
    /// Shorter than its headers and an inner Ethernet header.
    Truncated,
}

/// Reads the outer headers of a frame `len` bytes long.
#[inline(always)]
pub fn parse_outer<F: FrameBytes + ?Sized>(frame: &F, len: usize) -> Result<Outer, NotVxlan> {
    let eth: EthHdr = frame.read(0).ok_or(NotVxlan::Truncated)?;
    if u16::from_be(eth.ether_type) != ETH_P_IP {
        return Err(NotVxlan::NotUdpIpv4);
    }
    let ip: Ipv4Hdr = frame.read(ETH_HLEN).ok_or(NotVxlan::Truncated)?;
    let ihl = ip.ihl() as usize;
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || ip.proto != IPPROTO_UDP {
        return Err(NotVxlan::NotUdpIpv4);
    }
    if ip.frag_flags() & 1 != 0 || ip.frag_offset() != 0 {
        return Err(NotVxlan::Fragment);
    }
    let udp_offset = ETH_HLEN + ihl;
    let udp: UdpHdr = frame.read(udp_offset).ok_or(NotVxlan::Truncated)?;
    let vxlan: VxlanHdr = frame
        .read(udp_offset + UdpHdr::LEN)
        .ok_or(NotVxlan::Truncated)?;
    if !vxlan.vni_present() {
        return Err(NotVxlan::NoVni);
    }
    let inner_offset = udp_offset + UdpHdr::LEN + VxlanHdr::LEN;
    if len < inner_offset + ETH_HLEN {
        return Err(NotVxlan::Truncated);
    }
    Ok(Outer {
        src_mac: eth.src_addr,
        src_ip: ip.src_addr,
        dst_ip: ip.dst_addr,
        dst_port: udp.dst_port(),
        vni: vxlan.vni(),
        inner_offset,
    })
}

/// [`parse_outer`] for a frame whose IPv4 header has no options (what every
/// VTEP sends), reading only at constant offsets, as the XDP fast path
/// needs; a header with options is [`NotVxlan::NotUdpIpv4`] here.
#[inline(always)]
pub fn parse_outer_plain<F: FrameBytes + ?Sized>(frame: &F) -> Result<Outer, NotVxlan> {
    let eth: EthHdr = frame.read(0).ok_or(NotVxlan::Truncated)?;
    if u16::from_be(eth.ether_type) != ETH_P_IP {
        return Err(NotVxlan::NotUdpIpv4);
    }
    let ip: Ipv4Hdr = frame.read(ETH_HLEN).ok_or(NotVxlan::Truncated)?;
    if ip.vihl != 0x45 || ip.proto != IPPROTO_UDP {
        return Err(NotVxlan::NotUdpIpv4);
    }
    if ip.frag_flags() & 1 != 0 || ip.frag_offset() != 0 {
        return Err(NotVxlan::Fragment);
    }
    let udp: UdpHdr = frame
        .read(ETH_HLEN + Ipv4Hdr::LEN)
        .ok_or(NotVxlan::Truncated)?;
    let vxlan: VxlanHdr = frame.read(UDP_IPV4_HEADERS).ok_or(NotVxlan::Truncated)?;
    if !vxlan.vni_present() {
        return Err(NotVxlan::NoVni);
    }
    // A read, not a length comparison: the verifier follows reads.
    frame
        .read::<EthHdr>(VXLAN_IPV4_OVERHEAD)
        .ok_or(NotVxlan::Truncated)?;
    Ok(Outer {
        src_mac: eth.src_addr,
        src_ip: ip.src_addr,
        dst_ip: ip.dst_addr,
        dst_port: udp.dst_port(),
        vni: vxlan.vni(),
        inner_offset: VXLAN_IPV4_OVERHEAD,
    })
}

/// Writes the outer headers into the first [`VXLAN_IPV4_OVERHEAD`] bytes
/// of `frame`, whose rest is the inner frame of `inner_len` bytes: IPv4
/// with DF (the switch never sends a fragment: a frame too large for the
/// underlay is dropped before this), TTL 64 and its checksum, UDP without
/// a checksum (allowed over IPv4, what the Linux vxlan device sends by
/// default), the VNI with the I flag. `None`, with nothing written, if
/// `frame` holds no inner Ethernet header or the VNI is out of range. The
/// same code runs on a slice and, in the XDP fast path, on a packet.
#[inline(always)]
pub fn encapsulate<F: FrameBytesMut + ?Sized>(
    frame: &mut F,
    outer: &UdpIpv4,
    vni: u32,
    inner_len: usize,
) -> Option<()> {
    if inner_len < ETH_HLEN || vni > MAX_VNI {
        return None;
    }
    frame.read::<EthHdr>(VXLAN_IPV4_OVERHEAD)?;
    let ip_len = u16::try_from(inner_len + VXLAN_IP_OVERHEAD).ok()?;
    let eth = EthHdr {
        dst_addr: outer.dst_mac,
        src_addr: outer.src_mac,
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
        src_addr: outer.src_ip,
        dst_addr: outer.dst_ip,
    };
    ip.set_vihl(4, Ipv4Hdr::LEN as u8);
    ip.set_tot_len(ip_len);
    ip.set_frags(0b010, 0); // don't fragment
    ip.set_checksum(ipv4_header_checksum(&ip));
    let mut udp = UdpHdr {
        src: [0; 2],
        dst: [0; 2],
        len: [0; 2],
        check: [0; 2],
    };
    udp.set_src_port(outer.src_port);
    udp.set_dst_port(outer.dst_port);
    udp.set_len(ip_len - Ipv4Hdr::LEN as u16);
    frame.write(0, &eth)?;
    frame.write(ETH_HLEN, &ip)?;
    frame.write(ETH_HLEN + Ipv4Hdr::LEN, &udp)?;
    frame.write(UDP_IPV4_HEADERS, &VxlanHdr::new(vni))
}

/// The checksum of an IPv4 header without options, from its fields (the
/// `check` field counts as zero).
#[inline(always)]
fn ipv4_header_checksum(h: &Ipv4Hdr) -> u16 {
    let w = |a: u8, b: u8| u16::from_be_bytes([a, b]) as u32;
    let sum = w(h.vihl, h.tos)
        + w(h.tot_len[0], h.tot_len[1])
        + w(h.id[0], h.id[1])
        + w(h.frags[0], h.frags[1])
        + w(h.ttl, h.proto)
        + w(h.src_addr[0], h.src_addr[1])
        + w(h.src_addr[2], h.src_addr[3])
        + w(h.dst_addr[0], h.dst_addr[1])
        + w(h.dst_addr[2], h.dst_addr[3]);
    let folded = (sum & 0xffff) + (sum >> 16);
    !(((folded & 0xffff) + (folded >> 16)) as u16)
}

/// The outer UDP source port for an inner frame: a hash of its flow
/// (addresses and, for TCP and UDP, ports; else the MACs and EtherType),
/// so that the underlay's ECMP and RSS spread tunnelled flows as they
/// would spread the flows themselves.
#[inline(always)]
pub fn entropy_port<F: FrameBytes + ?Sized>(inner: &F) -> u16 {
    let mut h = Fnv::new();
    let ethertype = match inner.read::<EthHdr>(0) {
        Some(eth) => u16::from_be(eth.ether_type),
        None => return ENTROPY_PORT_BASE,
    };
    let l4 = match ethertype {
        ETH_P_IP => inner.read::<Ipv4Hdr>(ETH_HLEN).and_then(|ip| {
            h.bytes(&ip.src_addr);
            h.bytes(&ip.dst_addr);
            let whole = ip.frag_flags() & 1 == 0 && ip.frag_offset() == 0;
            (whole && matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP))
                .then_some(ETH_HLEN + ip.ihl() as usize)
        }),
        ETH_P_IPV6 => inner.read::<super::Ipv6Hdr>(ETH_HLEN).and_then(|ip| {
            h.bytes(&ip.src_addr);
            h.bytes(&ip.dst_addr);
            matches!(ip.next_hdr, IPPROTO_TCP | IPPROTO_UDP)
                .then_some(ETH_HLEN + super::Ipv6Hdr::LEN)
        }),
        _ => None,
    };
    match l4 {
        // Source and destination port: the first four bytes of TCP and UDP.
        Some(offset) => {
            if let Some(ports) = inner.bytes::<4>(offset) {
                h.bytes(&ports);
            }
        }
        None => {
            if let Some(macs) = inner.bytes::<14>(0) {
                h.bytes(&macs);
            }
        }
    }
    ENTROPY_PORT_BASE | (h.finish() & 0x3fff) as u16
}

/// FNV-1a, 32 bits: small, no tables, and the verifier accepts its loop
/// over a fixed-size array.
struct Fnv(u32);

impl Fnv {
    #[inline(always)]
    const fn new() -> Fnv {
        Fnv(0x811c_9dc5)
    }

    #[inline(always)]
    fn bytes<const N: usize>(&mut self, b: &[u8; N]) {
        let mut i = 0;
        while i < N {
            self.0 = (self.0 ^ b[i] as u32).wrapping_mul(0x0100_0193);
            i += 1;
        }
    }

    #[inline(always)]
    fn finish(&self) -> u32 {
        // Fold the high half in: the port keeps only the low 14 bits.
        self.0 ^ (self.0 >> 16)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::checksum;
    use crate::wire::build::write_udp_ipv4;

    const OUTER: UdpIpv4 = UdpIpv4 {
        src_mac: [2, 0, 0, 0, 1, 1],
        dst_mac: [2, 0, 0, 0, 2, 2],
        src_ip: [10, 99, 0, 1],
        dst_ip: [10, 99, 0, 2],
        src_port: 50000,
        dst_port: VXLAN_PORT,
    };

    fn inner_udp(src_port: u16, len: usize) -> Vec<u8> {
        let mut f = vec![0xabu8; len];
        write_udp_ipv4(
            &mut f,
            &UdpIpv4 {
                src_mac: [2, 0, 0, 0, 0, 0xa],
                dst_mac: [2, 0, 0, 0, 0, 0xb],
                src_ip: [10, 0, 0, 1],
                dst_ip: [10, 0, 0, 2],
                src_port,
                dst_port: 9,
            },
        )
        .unwrap();
        f
    }

    fn tunnelled(inner: &[u8], vni: u32) -> Vec<u8> {
        let mut f = vec![0u8; VXLAN_IPV4_OVERHEAD];
        f.extend_from_slice(inner);
        encapsulate(f.as_mut_slice(), &OUTER, vni, inner.len()).unwrap();
        f
    }

    #[test]
    fn encapsulation_is_rfc_7348_over_ipv4() {
        let inner = inner_udp(1000, 100);
        let f = tunnelled(&inner, 0x12_3456);
        assert_eq!(f.len(), 150);
        // Outer Ethernet, IPv4 with DF, TTL 64, protocol UDP.
        assert_eq!(&f[0..6], &OUTER.dst_mac);
        assert_eq!(&f[6..12], &OUTER.src_mac);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 136, "IPv4 total length");
        assert_eq!(f[20] & 0x40, 0x40, "DF");
        assert_eq!((f[22], f[23]), (64, 17), "TTL and protocol");
        assert_eq!(
            checksum::fold_sum(checksum::sum(&f[14..34])),
            0xffff,
            "IPv4 checksum"
        );
        assert_eq!(&f[26..30], &OUTER.src_ip);
        assert_eq!(&f[30..34], &OUTER.dst_ip);
        // UDP: ports, length, no checksum.
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 50000);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 4789);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 116, "UDP length");
        assert_eq!(&f[40..42], &[0, 0]);
        // VXLAN: I flag, reserved zero, VNI, reserved zero.
        assert_eq!(&f[42..50], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(&f[50..], &inner[..], "the inner frame untouched");
    }

    #[test]
    fn parse_reads_back_what_encapsulate_wrote() {
        let inner = inner_udp(1000, 64);
        let f = tunnelled(&inner, 100);
        let o = parse_outer(f.as_slice(), f.len()).unwrap();
        assert_eq!(
            parse_outer_plain(f.as_slice()),
            Ok(o),
            "the same without options"
        );
        assert_eq!(
            o,
            Outer {
                src_mac: OUTER.src_mac,
                src_ip: OUTER.src_ip,
                dst_ip: OUTER.dst_ip,
                dst_port: VXLAN_PORT,
                vni: 100,
                inner_offset: VXLAN_IPV4_OVERHEAD,
            }
        );
        assert_eq!(&f[o.inner_offset..], &inner[..]);
    }

    #[test]
    fn parse_refuses_what_is_not_a_whole_vxlan_frame() {
        let f = tunnelled(&inner_udp(1, 64), 100);
        let mut no_i = f.clone();
        no_i[42] = 0;
        assert_eq!(
            parse_outer(no_i.as_slice(), no_i.len()),
            Err(NotVxlan::NoVni)
        );
        let mut tcp = f.clone();
        tcp[23] = 6;
        assert_eq!(
            parse_outer(tcp.as_slice(), tcp.len()),
            Err(NotVxlan::NotUdpIpv4)
        );
        let mut frag = f.clone();
        frag[20] |= 0x20; // more fragments
        assert_eq!(
            parse_outer(frag.as_slice(), frag.len()),
            Err(NotVxlan::Fragment)
        );
        let short = &f[..VXLAN_IPV4_OVERHEAD + 10];
        assert_eq!(parse_outer(short, short.len()), Err(NotVxlan::Truncated));
        let arp = {
            let mut a = f.clone();
            a[12..14].copy_from_slice(&[0x08, 0x06]);
            a
        };
        assert_eq!(
            parse_outer(arp.as_slice(), arp.len()),
            Err(NotVxlan::NotUdpIpv4)
        );
        // IPv4 options move the UDP header; the inner frame follows it.
        let mut opts: Vec<u8> = vec![0u8; VXLAN_IPV4_OVERHEAD + 4];
        opts[..14].copy_from_slice(&f[..14]);
        opts[14..34].copy_from_slice(&f[14..34]);
        opts[14] = 0x46;
        opts[38..54].copy_from_slice(&f[34..50]);
        opts.extend_from_slice(&f[50..]);
        let o = parse_outer(opts.as_slice(), opts.len()).unwrap();
        assert_eq!(o.inner_offset, VXLAN_IPV4_OVERHEAD + 4);
        assert_eq!(
            parse_outer_plain(opts.as_slice()),
            Err(NotVxlan::NotUdpIpv4),
            "options: not for the fast path"
        );
        assert_eq!(o.vni, 100);
    }

    #[test]
    fn encapsulate_refuses_a_frame_without_room_or_a_vni_too_large() {
        let mut f = vec![0u8; VXLAN_IPV4_OVERHEAD + 13];
        assert_eq!(encapsulate(f.as_mut_slice(), &OUTER, 1, 13), None);
        let mut f = vec![0u8; VXLAN_IPV4_OVERHEAD + 64];
        assert_eq!(encapsulate(f.as_mut_slice(), &OUTER, MAX_VNI + 1, 64), None);
        assert!(f.iter().all(|&b| b == 0), "nothing written");
    }

    #[test]
    fn entropy_follows_the_flow_and_stays_in_the_dynamic_range() {
        let a = entropy_port(inner_udp(1000, 64).as_slice());
        assert_eq!(
            a,
            entropy_port(inner_udp(1000, 200).as_slice()),
            "same flow, same port"
        );
        let ports: std::collections::HashSet<u16> = (0..64)
            .map(|p| entropy_port(inner_udp(1000 + p, 64).as_slice()))
            .collect();
        assert!(
            ports.len() > 32,
            "flows spread: {} ports of 64 flows",
            ports.len()
        );
        assert!(ports.iter().all(|&p| p >= ENTROPY_PORT_BASE));
        // Not IP: the MACs and EtherType decide.
        let mut arp = inner_udp(1, 64);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(entropy_port(arp.as_slice()) >= ENTROPY_PORT_BASE);
    }
}
