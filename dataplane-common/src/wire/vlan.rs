//! VLAN tag edits: push, pop, and VID rewrite.
//!
//! A push or pop moves the frame's start by one tag's length instead of
//! moving the payload: only the 12 MAC bytes are copied. That is why every
//! frame the switch handles starts [`super::FRAME_HEADROOM`] bytes into
//! its buffer. The byte edits, [`write_pushed_tag`] and [`lift_macs_over_tag`],
//! run on any [`FrameBytesMut`]: the XDP program calls them on a packet
//! around `bpf_xdp_adjust_head` (the tc program uses the skb's own
//! `bpf_skb_vlan_push/pop`), userspace through [`set_outer_tag`] on a
//! buffer.

use super::{FrameBytes, FrameBytesMut, VlanHdr, ETH_HLEN, ETH_P_8021Q, VLAN_HLEN};

/// Bytes of the two MAC addresses, which move when a tag comes or goes.
const MACS: usize = 12;

/// Completes a push on a frame whose start was just moved one tag's length
/// back: moves the MACs from behind the new room into it and writes an
/// 802.1Q tag with `vid` (PCP 0) after them. The old EtherType is now the
/// tag's inner one. `None` if the frame is too short, nothing written then.
#[inline(always)]
pub fn write_pushed_tag<F: FrameBytesMut + ?Sized>(frame: &mut F, vid: u16) -> Option<()> {
    // A frame of at least 16 bytes (this read) takes all three writes.
    let macs: [u8; MACS] = frame.read(VLAN_HLEN)?;
    frame.write(0, &macs)?;
    frame.write(MACS, &ETH_P_8021Q.to_be_bytes())?;
    frame.write(ETH_HLEN, &(vid & 0x0fff).to_be_bytes())
}

/// First half of a pop: copies the MACs over the outer tag, after which the
/// frame starts one tag's length later. `None` if the frame is too short
/// for a tag, nothing written then.
#[inline(always)]
pub fn lift_macs_over_tag<F: FrameBytesMut + ?Sized>(frame: &mut F) -> Option<()> {
    frame.read::<[u8; ETH_HLEN + VLAN_HLEN]>(0)?;
    let macs: [u8; MACS] = frame.read(0)?;
    frame.write(VLAN_HLEN, &macs)
}

/// Makes the outer tag of the frame at `buf[start..start + len]` carry
/// `want` (`None`: no tag), given the VID it has now (`have`). Returns the
/// frame's new `(start, len)`, or `None`, with nothing changed, when a push
/// has no headroom or the frame is too short for its tag.
///
/// A rewrite keeps the tag's PCP and DEI bits; a push writes PCP 0.
pub fn set_outer_tag(
    buf: &mut [u8],
    start: usize,
    len: usize,
    have: Option<u16>,
    want: Option<u16>,
) -> Option<(usize, usize)> {
    if buf.len() < start.checked_add(len)? {
        return None;
    }
    match (have, want) {
        (None, None) => Some((start, len)),
        (Some(_), Some(vid)) => {
            if len < ETH_HLEN + VLAN_HLEN {
                return None;
            }
            let mut tag: VlanHdr = buf.read(start + ETH_HLEN)?;
            let old = u16::from_be_bytes(tag.tci);
            tag.tci = ((old & 0xf000) | (vid & 0x0fff)).to_be_bytes();
            buf.write(start + ETH_HLEN, &tag)?;
            Some((start, len))
        }
        (Some(_), None) => {
            lift_macs_over_tag(&mut buf[start..start + len])?;
            Some((start + VLAN_HLEN, len - VLAN_HLEN))
        }
        (None, Some(vid)) => {
            if len < MACS {
                return None;
            }
            let new_start = start.checked_sub(VLAN_HLEN)?;
            write_pushed_tag(&mut buf[new_start..start + len], vid)?;
            Some((new_start, len + VLAN_HLEN))
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::super::parse_l2;
    use super::*;

    fn untagged_frame_at(start: usize) -> Vec<u8> {
        let mut buf = vec![0u8; start + 64];
        buf[start..start + 6].copy_from_slice(&[2, 0, 0, 0, 0, 0xb]);
        buf[start + 6..start + 12].copy_from_slice(&[2, 0, 0, 0, 0, 0xa]);
        buf[start + 12..start + 14].copy_from_slice(&0x0800u16.to_be_bytes());
        buf[start + 14] = 0x45;
        buf
    }

    #[test]
    fn push_then_pop_restores_the_frame() {
        let mut buf = untagged_frame_at(8);
        let orig = buf[8..72].to_vec();
        let (s, l) = set_outer_tag(&mut buf, 8, 64, None, Some(100)).unwrap();
        assert_eq!((s, l), (4, 68));
        let h = parse_l2(&buf[s..s + l]).unwrap();
        assert_eq!(h.vlan, Some(100));
        assert_eq!(h.ethertype, 0x0800);
        assert_eq!(h.src, [2, 0, 0, 0, 0, 0xa]);
        assert_eq!(buf[s + 18], 0x45, "payload follows the tag");
        let (s2, l2) = set_outer_tag(&mut buf, s, l, Some(100), None).unwrap();
        assert_eq!((s2, l2), (8, 64));
        assert_eq!(&buf[8..72], &orig[..]);
    }

    #[test]
    fn push_without_headroom_fails_and_changes_nothing() {
        let mut buf = untagged_frame_at(2);
        let orig = buf.clone();
        assert_eq!(set_outer_tag(&mut buf, 2, 64, None, Some(1)), None);
        assert_eq!(buf, orig);
    }

    #[test]
    fn rewrite_keeps_priority() {
        let mut buf = untagged_frame_at(8);
        let (s, l) = set_outer_tag(&mut buf, 8, 64, None, Some(100)).unwrap();
        buf[s + 14] |= 0xa0; // PCP 5
        set_outer_tag(&mut buf, s, l, Some(100), Some(200)).unwrap();
        let tci = u16::from_be_bytes([buf[s + 14], buf[s + 15]]);
        assert_eq!(tci >> 13, 5);
        assert_eq!(tci & 0xfff, 200);
    }

    #[test]
    fn frames_too_short_for_their_tag_or_buffer_are_refused() {
        let mut buf = untagged_frame_at(8);
        assert_eq!(set_outer_tag(&mut buf, 8, 17, Some(5), None), None);
        assert_eq!(set_outer_tag(&mut buf, 8, 17, Some(5), Some(6)), None);
        assert_eq!(set_outer_tag(&mut buf, 8, 11, None, Some(6)), None);
        assert_eq!(set_outer_tag(&mut buf, 8, 65, None, Some(6)), None);
        assert_eq!(set_outer_tag(&mut buf, usize::MAX, 2, None, None), None);
    }
}
