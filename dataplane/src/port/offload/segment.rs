//! The virtio-net header's offload requests, honoured on bytes: finish a
//! checksum, cut a TCP super-frame into segments. Plain std code over
//! slices (no UMEM, no ports), so the fuzz target `offload_segments` runs
//! it as it is on hostile input.

use dataplane_common::checksum;
use dataplane_common::wire::{
    parse_l2, parse_l3, FrameBytes, FrameBytesMut, Ipv4Hdr, Ipv6Hdr, TcpHdr, IPPROTO_TCP,
};
use thiserror::Error;

/// Size of `struct virtio_net_hdr_v1` (VIRTIO_F_VERSION_1, as tun and
/// vhost-user use it): the 10-byte legacy header plus `num_buffers`.
pub const VNET_HDR_LEN: usize = 12;

/// `flags`: the checksum from `csum_start` to the end is left to the device.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values (linux/virtio_net.h).
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
/// Or-ed into `gso_type`: the sender set CWR on the super-frame (ECN).
const GSO_ECN: u8 = 0x80;

/// The most segments one super-frame may make. A stack's TSO frame of
/// 64 KiB at the smallest MSS a real path uses (536 bytes, IPv4's 576-byte
/// minimum MTU) makes 123; a sender asking for thousands of tiny segments
/// would drain the switch's frames with one write.
pub const MAX_SEGMENTS: usize = 128;

/// The fields of a virtio-net header the switch acts on (little-endian on
/// the wire: VIRTIO_F_VERSION_1, and tun's default on a little-endian host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header as tun or a virtio driver wrote it.
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        }
    }

    /// Nothing asked: the frame is complete as it is.
    pub fn is_plain(&self) -> bool {
        self.flags & F_NEEDS_CSUM == 0 && self.gso_type == GSO_NONE
    }

    /// A super-frame to be cut into segments.
    pub fn is_gso(&self) -> bool {
        self.gso_type != GSO_NONE
    }
}

/// Why a frame's offload request could not be honoured (the frame is
/// dropped and counted as malformed).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("checksum start {start} + offset {offset} is past the frame's {len} bytes")]
    ChecksumOutOfFrame { start: u16, offset: u16, len: usize },
    #[error("GSO type {0:#x} is not offered (only TCP over IPv4 and IPv6)")]
    UnsupportedGso(u8),
    #[error("GSO frame without an IPv4/IPv6 TCP header the switch can read")]
    NotTcp,
    #[error("GSO segment size {gso_size} does not fit a {room}-byte frame after {headers} bytes of headers")]
    SegmentTooLarge {
        gso_size: u16,
        headers: usize,
        room: usize,
    },
    #[error("GSO frame would make {0} segments (at most {MAX_SEGMENTS})")]
    TooManySegments(usize),
    #[error("GSO frame's IP length disagrees with its {len} bytes")]
    LengthMismatch { len: usize },
}

/// Finishes the checksum the header asks for, in place: sums from
/// `csum_start` to the end (the field already holds the pseudo-header sum,
/// as a device expects) and stores the complement at `csum_offset`.
pub fn complete_checksum(frame: &mut [u8], hdr: &VnetHdr) -> Result<(), Error> {
    let start = hdr.csum_start as usize;
    let field = start + hdr.csum_offset as usize;
    if field + 2 > frame.len() {
        return Err(Error::ChecksumOutOfFrame {
            start: hdr.csum_start,
            offset: hdr.csum_offset,
            len: frame.len(),
        });
    }
    let mut check = !checksum::fold_sum(checksum::sum(&frame[start..]));
    // 0 and 0xffff are the same one's-complement number; UDP reserves 0
    // for "no checksum", so a device always writes 0xffff.
    if check == 0 {
        check = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// Cuts a TCP super-frame into segments of at most `gso_size` payload
/// bytes, one output buffer at a time, as a NIC's TSO would: the same
/// Ethernet/IP/TCP headers on each, IP lengths and (IPv4) ids stepped,
/// sequence numbers advanced, FIN and PSH on the last segment only, CWR on
/// the first only, every checksum computed in full.
#[derive(Debug)]
pub struct TcpSegments<'a> {
    frame: &'a [u8],
    l3: usize,
    /// End of the TCP header: where payload starts.
    payload_start: usize,
    mss: usize,
    v6: bool,
    /// Payload bytes already emitted.
    done: usize,
    index: u16,
}

impl<'a> TcpSegments<'a> {
    /// Checks `frame` against `hdr` and prepares to cut it into segments
    /// that each fit `room` bytes.
    pub fn new(frame: &'a [u8], hdr: &VnetHdr, room: usize) -> Result<TcpSegments<'a>, Error> {
        let v6 = match hdr.gso_type & !GSO_ECN {
            GSO_TCPV4 => false,
            GSO_TCPV6 => true,
            other => return Err(Error::UnsupportedGso(other)),
        };
        let l2 = parse_l2(frame).map_err(|_| Error::NotTcp)?;
        let l3 = l2.header_len;
        // Extension headers are not cut through (parse_l3 does not follow
        // them): a stack that offloads TSO puts TCP right after the fixed
        // IPv6 header.
        let ip = parse_l3(frame, l3, l2.ethertype).ok_or(Error::NotTcp)?;
        if ip.v6 != v6 || ip.proto != IPPROTO_TCP || ip.fragment {
            return Err(Error::NotTcp);
        }
        let (l4, ip_len_end) = (ip.l4_offset, ip.l4_offset + ip.l4_len);
        let tcp: TcpHdr = frame.read(l4).ok_or(Error::NotTcp)?;
        let doff = tcp.doff() as usize;
        let payload_start = l4 + doff * 4;
        if doff < 5 || payload_start > frame.len() {
            return Err(Error::NotTcp);
        }
        // A stack writes the super-frame's real length into the IP header
        // (IPv4 may write 0 past 64 KiB with BIG TCP, which is not offered
        // here). Anything else is a lie about where the payload ends.
        if ip_len_end != frame.len() {
            return Err(Error::LengthMismatch { len: frame.len() });
        }
        let mss = hdr.gso_size as usize;
        if mss == 0 || payload_start + mss > room {
            return Err(Error::SegmentTooLarge {
                gso_size: hdr.gso_size,
                headers: payload_start,
                room,
            });
        }
        let segments = TcpSegments {
            frame,
            l3,
            payload_start,
            mss,
            v6,
            done: 0,
            index: 0,
        };
        match segments.count() {
            n if n > MAX_SEGMENTS => Err(Error::TooManySegments(n)),
            _ => Ok(segments),
        }
    }

    /// Bytes of Ethernet, IP and TCP header in front of every segment.
    pub fn header_len(&self) -> usize {
        self.payload_start
    }

    /// How many segments the frame makes (at least one).
    pub fn count(&self) -> usize {
        let payload = self.frame.len() - self.payload_start;
        payload.div_ceil(self.mss).max(1)
    }

    /// Writes the next segment into `out` (at least `room` bytes, as given
    /// to [`TcpSegments::new`]) and returns its length; `None` when all are out.
    pub fn write_next(&mut self, out: &mut [u8]) -> Option<usize> {
        let payload = &self.frame[self.payload_start..];
        if self.done >= payload.len() && !(payload.is_empty() && self.index == 0) {
            return None;
        }
        let chunk = (payload.len() - self.done).min(self.mss);
        let last = self.done + chunk == payload.len();
        let hlen = self.payload_start;
        let len = hlen + chunk;
        out[..hlen].copy_from_slice(&self.frame[..hlen]);
        out[hlen..len].copy_from_slice(&payload[self.done..self.done + chunk]);

        self.edit_headers(&mut out[..len], last)?;
        self.done += chunk;
        self.index = self.index.wrapping_add(1);
        Some(len)
    }

    /// Makes the copied headers of `seg` (one whole segment) its own: IP
    /// length, IPv4 id and header checksum, TCP sequence number, flags and
    /// checksum. `None` only if `seg` is shorter than its headers, which
    /// `new` rules out.
    fn edit_headers(&self, seg: &mut [u8], last: bool) -> Option<()> {
        let (l3, len) = (self.l3, seg.len());
        let (l4, addr_sum) = if self.v6 {
            let mut ip: Ipv6Hdr = seg.read(l3)?;
            ip.set_payload_len((len - l3 - Ipv6Hdr::LEN) as u16);
            seg.write(l3, &ip)?;
            (
                l3 + Ipv6Hdr::LEN,
                checksum::sum(&ip.src_addr) + checksum::sum(&ip.dst_addr),
            )
        } else {
            let mut ip: Ipv4Hdr = seg.read(l3)?;
            let ihl = ip.ihl() as usize;
            ip.set_tot_len((len - l3) as u16);
            ip.set_id(ip.id().wrapping_add(self.index));
            ip.set_checksum(0);
            seg.write(l3, &ip)?;
            let check = !checksum::fold_sum(checksum::sum(seg.get(l3..l3 + ihl)?));
            ip.set_checksum(check);
            seg.write(l3, &ip)?;
            (
                l3 + ihl,
                checksum::sum(&ip.src_addr) + checksum::sum(&ip.dst_addr),
            )
        };
        let mut tcp: TcpHdr = seg.read(l4)?;
        tcp.seq = u32::from_be_bytes(tcp.seq)
            .wrapping_add(self.done as u32)
            .to_be_bytes();
        if !last {
            tcp.set_fin(0);
            tcp.set_psh(0);
        }
        if self.index > 0 {
            tcp.set_cwr(0);
        }
        tcp.check = [0, 0];
        seg.write(l4, &tcp)?;
        let pseudo = addr_sum + IPPROTO_TCP as u64 + (len - l4) as u64;
        tcp.check = (!checksum::fold_sum(pseudo + checksum::sum(&seg[l4..]))).to_be_bytes();
        seg.write(l4, &tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // TCP flag bits in byte 13 of the header, written out independently of
    // the wire layer's accessors.
    const TCP_FIN: u8 = 0x01;
    const TCP_PSH: u8 = 0x08;
    const TCP_CWR: u8 = 0x80;

    /// Textbook RFC 1071 checksum, independent of the code under test.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for pair in bytes.chunks(2) {
            sum += (pair[0] as u32) << 8 | *pair.get(1).unwrap_or(&0) as u32;
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
        }
        !(sum as u16)
    }

    /// True when the TCP checksum of a complete segment verifies.
    fn tcp_verifies(f: &[u8], l3: usize, v6: bool) -> bool {
        let (l4, mut pseudo) = if v6 {
            (l3 + 40, f[l3 + 8..l3 + 40].to_vec())
        } else {
            let ihl = (f[l3] & 0x0f) as usize * 4;
            (l3 + ihl, f[l3 + 12..l3 + 20].to_vec())
        };
        let l4_len = f.len() - l4;
        pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        pseudo.extend_from_slice(&f[l4..]);
        reference(&pseudo) == 0
    }

    /// A TCP super-frame: Ethernet (optionally tagged), IPv4 or IPv6, a
    /// 32-byte TCP header (timestamps), `payload` patterned bytes, flags
    /// `flags`, seq 1000, IPv4 id 7.
    fn super_frame(v6: bool, vlan: bool, payload: usize, flags: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa];
        if vlan {
            f.extend_from_slice(&[0x81, 0, 0, 10]);
        }
        let tcp_len = 32 + payload;
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[IPPROTO_TCP, 64]);
            f.extend_from_slice(&[0xfd; 16]);
            f.extend_from_slice(&[0xfe; 16]);
        } else {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 7, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
            f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        }
        f.extend_from_slice(&[0x1f, 0x90, 0xc3, 0x50]); // ports
        f.extend_from_slice(&1000u32.to_be_bytes());
        f.extend_from_slice(&55u32.to_be_bytes());
        f.extend_from_slice(&[0x80, flags, 0xff, 0xff, 0xab, 0xcd, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]); // NOP NOP TS
        f.extend((0..payload).map(|i| (i * 7 % 251) as u8));
        f
    }

    fn gso_hdr(v6: bool, mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            gso_size: mss,
            csum_start: 0,
            csum_offset: 16,
        }
    }

    fn cut(frame: &[u8], hdr: &VnetHdr) -> Vec<Vec<u8>> {
        let mut segs = TcpSegments::new(frame, hdr, 3840).unwrap();
        let expected = segs.count();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 3840];
        while let Some(n) = segs.write_next(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        assert_eq!(out.len(), expected, "count() matches what was written");
        out
    }

    #[test]
    fn segments_carry_the_payload_in_order_with_valid_headers_and_checksums() {
        for (v6, vlan) in [(false, false), (false, true), (true, false), (true, true)] {
            let l3 = if vlan { 18 } else { 14 };
            let payload = 10_000;
            let frame = super_frame(v6, vlan, payload, 0x18 | TCP_FIN | TCP_CWR);
            let hlen = frame.len() - payload;
            let segs = cut(&frame, &gso_hdr(v6, 1448));
            assert_eq!(segs.len(), 7, "10000 bytes at 1448 per segment");
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(s.len() <= hlen + 1448);
                assert_eq!(&s[..l3], &frame[..l3], "L2 header copied");
                assert!(tcp_verifies(s, l3, v6), "segment {i} checksum");
                let l4 = if v6 {
                    let plen = u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]) as usize;
                    assert_eq!(plen, s.len() - l3 - 40);
                    l3 + 40
                } else {
                    let total = u16::from_be_bytes([s[l3 + 2], s[l3 + 3]]) as usize;
                    assert_eq!(total, s.len() - l3);
                    assert_eq!(reference(&s[l3..l3 + 20]), 0, "IPv4 header checksum");
                    assert_eq!(u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]), 7 + i as u16);
                    l3 + 20
                };
                let seq = u32::from_be_bytes(s[l4 + 4..l4 + 8].try_into().unwrap());
                assert_eq!(seq, 1000 + (i * 1448) as u32);
                let flags = s[l4 + 13];
                let last = i == segs.len() - 1;
                assert_eq!(flags & TCP_FIN != 0, last, "FIN on the last only");
                assert_eq!(flags & TCP_PSH != 0, last, "PSH on the last only");
                assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR on the first only");
                assert_eq!(flags & 0x10, 0x10, "ACK everywhere");
                assert_eq!(&s[l4 + 20..l4 + 32], &frame[l4 + 20..l4 + 32], "options");
                joined.extend_from_slice(&s[l4 + 32..]);
            }
            assert_eq!(joined, frame[hlen..], "payload, byte for byte");
        }
    }

    #[test]
    fn a_super_frame_of_one_segment_or_no_payload_is_one_frame() {
        for payload in [0, 1, 1448] {
            let frame = super_frame(false, false, payload, 0x10);
            let segs = cut(&frame, &gso_hdr(false, 1448));
            assert_eq!(segs.len(), 1, "{payload} bytes");
            assert_eq!(segs[0].len(), frame.len());
            assert!(tcp_verifies(&segs[0], 14, false));
        }
    }

    #[test]
    fn lies_in_the_header_or_the_frame_are_refused() {
        let frame = super_frame(false, false, 5000, 0x10);
        let room = 3840;
        let err = |f: &[u8], h: VnetHdr| TcpSegments::new(f, &h, room).unwrap_err();
        assert!(matches!(
            err(&frame, gso_hdr(false, 0)),
            Error::SegmentTooLarge { .. }
        ));
        assert!(matches!(
            err(&frame, gso_hdr(false, 4000)),
            Error::SegmentTooLarge { .. }
        ));
        assert_eq!(
            err(
                &frame,
                VnetHdr {
                    gso_type: 3,
                    ..gso_hdr(false, 1448)
                }
            ),
            Error::UnsupportedGso(3)
        );
        assert_eq!(
            err(&frame, gso_hdr(true, 1448)),
            Error::NotTcp,
            "v6 type on v4"
        );
        assert_eq!(
            err(&frame, gso_hdr(false, 10)),
            Error::TooManySegments(500),
            "one write must not drain the frame pool"
        );
        assert!(matches!(
            err(&frame[..frame.len() - 1], gso_hdr(false, 1448)),
            Error::LengthMismatch { .. }
        ));
        let mut udp = frame.clone();
        udp[14 + 9] = 17;
        assert_eq!(err(&udp, gso_hdr(false, 1448)), Error::NotTcp);
        let mut bad_doff = frame.clone();
        bad_doff[14 + 20 + 12] = 0x30;
        assert_eq!(err(&bad_doff, gso_hdr(false, 1448)), Error::NotTcp);
        for cut_at in [0, 10, 20, 40, 50] {
            assert!(TcpSegments::new(&frame[..cut_at], &gso_hdr(false, 1448), room).is_err());
        }
    }

    #[test]
    fn a_partial_checksum_is_completed_where_the_header_says() {
        let mut frame = super_frame(true, true, 700, 0x18);
        let l4 = 18 + 40;
        // What a stack that offloads leaves: the pseudo-header sum.
        let mut pseudo = frame[18 + 8..18 + 40].to_vec();
        pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, 0]);
        pseudo[34..36].copy_from_slice(&((frame.len() - l4) as u16).to_be_bytes());
        let partial = !reference(&pseudo);
        frame[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: l4 as u16,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        complete_checksum(&mut frame, &hdr).unwrap();
        assert!(tcp_verifies(&frame, 18, true));
        let past = VnetHdr {
            csum_start: (frame.len() - 1) as u16,
            ..hdr
        };
        assert!(complete_checksum(&mut frame, &past).is_err());
        let wrap = VnetHdr {
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..hdr
        };
        assert!(complete_checksum(&mut frame, &wrap).is_err());
    }

    #[test]
    fn header_fields_are_little_endian() {
        let b = [1, 0x81, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0];
        let h = VnetHdr::parse(&b);
        assert_eq!(h.gso_size, 1448);
        assert_eq!(h.csum_start, 34);
        assert_eq!(h.csum_offset, 16);
        assert!(h.is_gso() && !h.is_plain());
    }
}
