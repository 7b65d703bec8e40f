//! Ethernet and the outer VLAN tag: [`parse_l2`], the one L2 parser the
//! XDP programs, the tc programs and the userspace switch share.

use super::{EthHdr, FrameBytes, VlanHdr, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, VLAN_HLEN};

/// The layer-2 facts steering and switching decide on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Header {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// VLAN id (12 bits) of the outer 802.1Q/802.1ad tag, if tagged.
    pub vlan: Option<u16>,
    /// EtherType after the outer tag (host byte order).
    pub ethertype: u16,
    /// Bytes of L2 header (14, or 18 when tagged).
    pub header_len: usize,
    /// The outer tag is an 802.1ad S-tag (TPID 0x88a8), not an 802.1Q
    /// C-tag. The switch carries 802.1Q VLANs only and refuses these.
    pub s_tag: bool,
}

impl L2Header {
    /// A priority tag (VID 0) wrapping another VLAN tag: double tagging
    /// that, taken as "untagged with priority", would let a port send
    /// into the inner tag's VLAN once the outer one is popped. Refused.
    pub fn is_priority_tag_over_a_tag(&self) -> bool {
        self.vlan == Some(0) && (self.ethertype == ETH_P_8021Q || self.ethertype == ETH_P_8021AD)
    }
}

impl L2Header {
    /// True for broadcast and multicast destinations (I/G bit set).
    pub fn is_multicast(&self) -> bool {
        self.dst[0] & 1 == 1
    }
}

/// Why a frame could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// Announces a VLAN tag but ends inside it.
    TruncatedVlan,
}

/// Parses the Ethernet header and, if present, the outer VLAN tag.
#[inline(always)]
pub fn parse_l2<F: FrameBytes + ?Sized>(frame: &F) -> Result<L2Header, ParseError> {
    let eth: EthHdr = frame.read(0).ok_or(ParseError::TruncatedEthernet)?;
    let ethertype = u16::from_be(eth.ether_type);
    if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
        return Ok(L2Header {
            dst: eth.dst_addr,
            src: eth.src_addr,
            vlan: None,
            ethertype,
            header_len: ETH_HLEN,
            s_tag: false,
        });
    }
    let tag: VlanHdr = frame.read(ETH_HLEN).ok_or(ParseError::TruncatedVlan)?;
    Ok(L2Header {
        dst: eth.dst_addr,
        src: eth.src_addr,
        vlan: Some(tag.vid()),
        ethertype: u16::from_be(tag.ether_type),
        header_len: ETH_HLEN + VLAN_HLEN,
        s_tag: ethertype == ETH_P_8021AD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    fn frame(ethertype: u16, rest: &[u8]) -> [u8; 64] {
        let mut f = [0u8; 64];
        f[..6].copy_from_slice(&DST);
        f[6..12].copy_from_slice(&SRC);
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[14..14 + rest.len()].copy_from_slice(rest);
        f
    }

    #[test]
    fn untagged_ipv4() {
        let f = frame(0x0800, &[]);
        let h = parse_l2(&f[..]).unwrap();
        assert_eq!(h.dst, DST);
        assert_eq!(h.src, SRC);
        assert_eq!(h.vlan, None);
        assert_eq!(h.ethertype, 0x0800);
        assert_eq!(h.header_len, 14);
        assert!(!h.is_multicast());
    }

    #[test]
    fn tagged_takes_vid_and_inner_ethertype() {
        // PCP 5, DEI 1, VID 0x123; inner ARP.
        let f = frame(ETH_P_8021Q, &[0xb1, 0x23, 0x08, 0x06]);
        let h = parse_l2(&f[..]).unwrap();
        assert_eq!(h.vlan, Some(0x123));
        assert_eq!(h.ethertype, 0x0806);
        assert_eq!(h.header_len, 18);
    }

    #[test]
    fn qinq_outer_tag_is_used() {
        let f = frame(ETH_P_8021AD, &[0x00, 0x64, 0x81, 0x00]);
        let h = parse_l2(&f[..]).unwrap();
        assert_eq!(h.vlan, Some(100));
        assert_eq!(h.ethertype, ETH_P_8021Q);
        assert!(h.s_tag);
        let c = frame(ETH_P_8021Q, &[0x00, 0x00, 0x81, 0x00]);
        let h = parse_l2(&c[..]).unwrap();
        assert!(!h.s_tag && h.is_priority_tag_over_a_tag());
    }

    #[test]
    fn every_truncation_is_reported() {
        let f = frame(0x0800, &[]);
        for len in 0..14 {
            assert_eq!(
                parse_l2(&f[..len]),
                Err(ParseError::TruncatedEthernet),
                "len {len}"
            );
        }
        let t = frame(ETH_P_8021Q, &[0, 1, 8, 0]);
        for len in 14..18 {
            assert_eq!(
                parse_l2(&t[..len]),
                Err(ParseError::TruncatedVlan),
                "len {len}"
            );
        }
        assert!(parse_l2(&t[..18]).is_ok());
    }

    #[test]
    fn broadcast_is_multicast() {
        let mut f = frame(0x0806, &[]);
        f[..6].copy_from_slice(&[0xff; 6]);
        assert!(parse_l2(&f[..]).unwrap().is_multicast());
    }
}
