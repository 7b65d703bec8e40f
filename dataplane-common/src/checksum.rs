//! TCP and UDP checksums a sender left for "hardware" to finish.
//!
//! A veth (and most NICs) advertises transmit checksum offload, so a
//! container's stack sends TCP and UDP with the skb marked
//! `CHECKSUM_PARTIAL`: the L4 checksum field holds only the folded sum of
//! the pseudo-header (addresses, protocol, L4 length), and the device is to
//! add the segment's own bytes and store the complement. XDP and AF_XDP see
//! bytes, not the skb's marks, so a frame that leaves through them keeps the
//! half-done field and its receiver drops it.
//!
//! Such a frame is recognisable from its bytes: its checksum field equals
//! the pseudo-header sum. [`locate`] finds the field and that sum (IPv4
//! without fragmentation, IPv6 without extension headers), [`is_partial`]
//! compares them, and [`complete`] does what the hardware would have done.
//! A full checksum that happens to equal the pseudo-header sum (one frame in
//! 65 536) looks partial, and completing it writes the same value back (see
//! [`complete`]), so that case is safe too.
//!
//! `locate` and `is_partial` read through [`FrameBytes`], so the XDP program
//! uses them to keep such frames on a path that keeps the skb's state; the
//! completion itself runs in userspace on frames that cross it.

use core::mem::offset_of;

use crate::wire::{parse_l2, parse_l3, FrameBytes, TcpHdr, UdpHdr, IPPROTO_TCP, IPPROTO_UDP};

/// Where a frame's TCP or UDP checksum is, and what a partial one holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Checksum {
    /// Offset of the TCP/UDP header in the frame.
    pub l4_offset: usize,
    /// Bytes of TCP/UDP header and payload, as the IP header says (the
    /// frame may be longer: Ethernet padding).
    pub l4_len: usize,
    /// Offset of the 16-bit checksum field in the frame.
    pub field_offset: usize,
    /// Folded one's-complement sum of the pseudo-header, not complemented:
    /// what a sender that offloads the checksum leaves in the field.
    pub pseudo_sum: u16,
    /// UDP, where a computed 0 is sent as 0xffff (0 means "no checksum").
    pub udp: bool,
}

/// Finds the TCP/UDP checksum of a frame whose IP header starts at
/// `l3_offset` with EtherType `ethertype`; `None` for anything else
/// (not IP, fragments, IPv6 extension headers, truncated headers, an IP
/// length that runs past the frame).
#[inline(always)]
pub fn locate<F: FrameBytes + ?Sized>(
    frame: &F,
    l3_offset: usize,
    ethertype: u16,
    frame_len: usize,
) -> Option<L4Checksum> {
    let l3 = parse_l3(frame, l3_offset, ethertype)?;
    if l3.fragment {
        return None;
    }
    let (field, udp) = match l3.proto {
        IPPROTO_TCP => (offset_of!(TcpHdr, check), false),
        IPPROTO_UDP => (offset_of!(UdpHdr, check), true),
        _ => return None,
    };
    let (l4_offset, l4_len, proto) = (l3.l4_offset, l3.l4_len, l3.proto);
    if field + 2 > l4_len || l4_offset + l4_len > frame_len {
        return None;
    }
    let mut sum = l3.addr_sum;
    // The L4 length in the pseudo-header is 32 bits for IPv6 and 16 for
    // IPv4; both fit the low 16 bits here (an IP payload is < 64 KiB).
    sum += proto as u32 + l4_len as u32;
    Some(L4Checksum {
        l4_offset,
        l4_len,
        field_offset: l4_offset + field,
        pseudo_sum: fold(sum),
        udp,
    })
}

/// True when the checksum field holds the pseudo-header sum: the sender
/// left the rest to the device.
#[inline(always)]
pub fn is_partial<F: FrameBytes + ?Sized>(frame: &F, c: &L4Checksum) -> bool {
    let Some(field) = frame.bytes::<2>(c.field_offset) else {
        return false;
    };
    // 0x0000 and 0xffff are the same one's-complement number.
    same_ones_complement(u16::from_be_bytes(field), c.pseudo_sum)
}

/// Finishes the checksum of a frame whose field holds a partial sum: sums
/// the TCP/UDP header and payload (field included, which already carries
/// the pseudo-header) and stores the complement, as a device would.
///
/// On a frame whose field holds the pseudo-header sum *and* verifies (a
/// full checksum that happens to equal that sum) this writes the same value
/// back: a valid checksum makes the whole sum, pseudo-header included,
/// 0xffff, so the segment's own sum is the complement of the pseudo-header
/// sum and its complement is the field again.
pub fn complete(frame: &mut [u8], c: &L4Checksum) {
    let segment = &frame[c.l4_offset..c.l4_offset + c.l4_len];
    let mut check = !fold_wide(sum_be(segment));
    if c.udp && check == 0 {
        check = 0xffff;
    }
    frame[c.field_offset..c.field_offset + 2].copy_from_slice(&check.to_be_bytes());
}

/// Completes the TCP/UDP checksum of an Ethernet frame (untagged or with
/// one VLAN tag) if the sender left it partial; true if it did.
pub fn complete_partial(frame: &mut [u8]) -> bool {
    let Ok(l2) = parse_l2(&frame[..]) else {
        return false;
    };
    let Some(c) = locate(&frame[..], l2.header_len, l2.ethertype, frame.len()) else {
        return false;
    };
    if !is_partial(&frame[..], &c) {
        return false;
    }
    complete(frame, &c);
    true
}

/// True when a frame's TCP/UDP checksum verifies (pseudo-header included);
/// `None` for frames [`locate`] does not know.
pub fn verifies(frame: &[u8]) -> Option<bool> {
    let l2 = parse_l2(frame).ok()?;
    let c = locate(frame, l2.header_len, l2.ethertype, frame.len())?;
    let segment = &frame[c.l4_offset..c.l4_offset + c.l4_len];
    let field = u16::from_be_bytes([frame[c.field_offset], frame[c.field_offset + 1]]);
    if c.udp && field == 0 {
        return Some(true);
    }
    let total = sum_be(segment) + c.pseudo_sum as u64;
    Some(fold_wide(total) == 0xffff)
}

/// One's-complement sum of `bytes` as big-endian 16-bit words, not yet
/// folded (for code that builds a checksum from parts: each part but the
/// last must have an even length).
pub fn sum(bytes: &[u8]) -> u64 {
    sum_be(bytes)
}

/// Folds a [`sum`] (or a sum of several) to 16 bits, not complemented.
pub fn fold_sum(sum: u64) -> u16 {
    fold_wide(sum)
}

#[inline(always)]
fn same_ones_complement(a: u16, b: u16) -> bool {
    let norm = |x: u16| if x == 0xffff { 0 } else { x };
    norm(a) == norm(b)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

fn fold_wide(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// One's-complement sum of `bytes` as big-endian 16-bit words (an odd last
/// byte padded with zero), not yet folded. Summing 32-bit words into 64
/// bits gives the same folded result with half the additions.
fn sum_be(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        sum += u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u32::from_be_bytes(tail) as u64
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::wire::{ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6};

    /// Textbook RFC 1071 checksum over 16-bit words, independent of the
    /// code under test.
    fn reference(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum = 0u32;
        for pair in bytes.chunks(2) {
            let word = (pair[0] as u32) << 8 | *pair.get(1).unwrap_or(&0) as u32;
            sum += word;
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
        }
        !(sum as u16)
    }

    struct Built {
        frame: Vec<u8>,
        /// What a stack that computes the checksum itself would send.
        full: u16,
        field: usize,
    }

    /// An Ethernet frame with IPv4 or IPv6, TCP or UDP, `payload` bytes of
    /// payload, optionally tagged; the checksum field holds the partial sum.
    fn build(v6: bool, proto: u8, payload: usize, vlan: bool) -> Built {
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa]);
        if vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&[0, 10]);
        }
        let l4_hdr = if proto == IPPROTO_TCP { 20 } else { 8 };
        let l4_len = l4_hdr + payload;
        let pseudo: Vec<u8> = if v6 {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            let dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            let mut p = Vec::new();
            p.extend_from_slice(&src);
            p.extend_from_slice(&dst);
            p.extend_from_slice(&(l4_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
            p
        } else {
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            let (src, dst) = ([10, 77, 1, 1], [10, 77, 1, 2]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            let mut p = Vec::new();
            p.extend_from_slice(&src);
            p.extend_from_slice(&dst);
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(l4_len as u16).to_be_bytes());
            p
        };
        let l4 = f.len();
        let field = l4 + if proto == IPPROTO_TCP { 16 } else { 6 };
        let mut seg = std::vec![0u8; l4_len];
        seg[0..4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        if proto == IPPROTO_UDP {
            seg[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            seg[12] = 0x50;
        }
        for (i, b) in seg[l4_hdr..].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let mut full = reference(&[&pseudo, &seg]);
        if proto == IPPROTO_UDP && full == 0 {
            full = 0xffff;
        }
        // What the stack leaves for the device: the pseudo-header sum.
        let partial = !reference(&[&pseudo]);
        seg[field - l4..field - l4 + 2].copy_from_slice(&partial.to_be_bytes());
        f.extend_from_slice(&seg);
        Built {
            frame: f,
            full,
            field,
        }
    }

    fn field(f: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([f[at], f[at + 1]])
    }

    #[test]
    fn completes_every_kind_like_a_device_would() {
        for v6 in [false, true] {
            for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                for vlan in [false, true] {
                    for payload in [0, 1, 2, 3, 17, 1400, 1447] {
                        let mut b = build(v6, proto, payload, vlan);
                        let what =
                            std::format!("v6={v6} proto={proto} vlan={vlan} payload={payload}");
                        assert_eq!(verifies(&b.frame), Some(false), "{what}: partial");
                        assert!(complete_partial(&mut b.frame), "{what}");
                        assert_eq!(field(&b.frame, b.field), b.full, "{what}");
                        assert_eq!(verifies(&b.frame), Some(true), "{what}: completed");
                    }
                }
            }
        }
    }

    #[test]
    fn a_complete_checksum_is_left_alone() {
        for v6 in [false, true] {
            for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                let mut b = build(v6, proto, 100, false);
                complete_partial(&mut b.frame);
                let before = b.frame.clone();
                assert!(!complete_partial(&mut b.frame));
                assert_eq!(b.frame, before);
            }
        }
    }

    #[test]
    fn a_full_checksum_equal_to_the_pseudo_sum_survives_completion() {
        // The one-in-65536 case: a right checksum that equals the
        // pseudo-header sum looks partial and is "completed" again. Make
        // one by choosing the last payload word, then check it stays.
        let b = build(false, IPPROTO_TCP, 64, false);
        let last = b.frame.len() - 2;
        let mut hit = None;
        for x in 0..=u16::MAX {
            let mut f = b.frame.clone();
            f[last..].copy_from_slice(&x.to_be_bytes());
            if verifies(&f) == Some(true) {
                hit = Some(f);
                break;
            }
        }
        let mut f = hit.expect("some payload word makes the partial field a full checksum");
        let before = f.clone();
        assert!(complete_partial(&mut f), "it looks partial");
        assert_eq!(f, before, "and completing it changes nothing");
    }

    #[test]
    fn ethernet_padding_is_not_summed() {
        let mut b = build(false, IPPROTO_UDP, 2, false);
        let full = b.full;
        b.frame.resize(60, 0xee);
        assert!(complete_partial(&mut b.frame));
        assert_eq!(field(&b.frame, b.field), full);
    }

    #[test]
    fn fragments_and_other_protocols_are_not_touched() {
        let mut b = build(false, IPPROTO_UDP, 40, false);
        // More-fragments flag.
        b.frame[ETH_HLEN + 6] = 0x20;
        let before = b.frame.clone();
        assert!(!complete_partial(&mut b.frame));
        assert_eq!(b.frame, before);
        let mut icmp = build(false, IPPROTO_UDP, 40, false);
        icmp.frame[ETH_HLEN + 9] = 1;
        assert!(!complete_partial(&mut icmp.frame));
        let mut arp = build(false, IPPROTO_UDP, 40, false);
        arp.frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(!complete_partial(&mut arp.frame));
    }

    #[test]
    fn lengths_that_lie_are_refused_at_every_cut() {
        let b = build(true, IPPROTO_TCP, 30, true);
        for cut in 0..b.frame.len() {
            let mut f = b.frame[..cut].to_vec();
            assert!(!complete_partial(&mut f), "cut at {cut}");
        }
        // An IPv4 total length past the frame's end.
        let mut v4 = build(false, IPPROTO_TCP, 30, false);
        v4.frame[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&2000u16.to_be_bytes());
        assert!(!complete_partial(&mut v4.frame));
        // A header length below the minimum.
        let mut ihl = build(false, IPPROTO_TCP, 30, false);
        ihl.frame[ETH_HLEN] = 0x44;
        assert!(!complete_partial(&mut ihl.frame));
    }

    #[test]
    fn udp_result_zero_is_sent_as_all_ones() {
        // Search payload bytes until the full UDP checksum computes to 0.
        for x in 0..=u16::MAX {
            let mut b = build(false, IPPROTO_UDP, 2, false);
            let p = b.frame.len() - 2;
            b.frame[p..].copy_from_slice(&x.to_be_bytes());
            complete_partial(&mut b.frame);
            if field(&b.frame, b.field) == 0xffff {
                assert_eq!(verifies(&b.frame), Some(true));
                return;
            }
            assert_ne!(field(&b.frame, b.field), 0, "payload {x:#x}");
        }
        panic!("no payload gave a zero UDP checksum");
    }
}
