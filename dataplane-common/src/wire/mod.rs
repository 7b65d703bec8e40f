//! The wire layer: every place the project reads, builds or edits frame
//! bytes goes through here.
//!
//! Header layouts are network-types' (`EthHdr`, `VlanHdr`, `Ipv4Hdr`,
//! `Ipv6Hdr`, `TcpHdr`, `UdpHdr`, `VxlanHdr`), read and written as whole
//! values at an offset through [`FrameBytes`]. The XDP programs read packet
//! memory through pointers the verifier must see checked against
//! `data_end`; userspace reads slices. Both implement [`FrameBytes`], so the
//! parsers here are one function each, unit-tested on slices without root
//! and run in the kernel on packets.
//!
//! - [`l2`]: Ethernet and the outer VLAN tag ([`parse_l2`]).
//! - [`l3`]: IPv4/IPv6 up to the L4 header ([`parse_l3`]).
//! - [`vlan`]: tag push, pop and VID rewrite, on a packet or a buffer.
//! - [`build`]: the frames the project makes itself (the generator's).
//! - [`vxlan`]: VXLAN's outer headers over IPv4, written and read.
//! - checksums live in [`crate::checksum`] and read through the same views.

pub mod build;
pub mod l2;
pub mod l3;
pub mod vlan;
pub mod vxlan;

pub use l2::{parse_l2, L2Header, ParseError};
pub use l3::{parse_l3, L3Header};
pub use network_types::eth::EthHdr;
pub use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
pub use network_types::tcp::TcpHdr;
pub use network_types::udp::UdpHdr;
pub use network_types::vlan::VlanHdr;
pub use network_types::vxlan::VxlanHdr;

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q (C-tag) header.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (S-tag) header.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Length of an untagged Ethernet header.
pub const ETH_HLEN: usize = EthHdr::LEN;
/// Length of one VLAN tag (TCI + inner EtherType).
pub const VLAN_HLEN: usize = VlanHdr::LEN;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Bytes in front of a frame's data in every UMEM chunk the switch fills
/// or receives into: the kernel's `XDP_PACKET_HEADROOM`, the room a
/// received frame has before it. Frames the switch writes itself (TAP,
/// vhost-user, copies) start at the same place, so a VLAN tag can be
/// pushed by moving the start back on every path alike.
pub const FRAME_HEADROOM: usize = 256;

/// Types that may be read from, and written as, any bytes: `#[repr(C)]`
/// values made only of integers and byte arrays, without padding.
///
/// # Safety
///
/// Every bit pattern of `size_of::<Self>()` bytes must be a valid `Self`,
/// and `Self` must have no padding bytes (a write copies all of them).
pub unsafe trait Plain: Copy {}

// SAFETY: byte arrays accept any bytes and have no padding.
unsafe impl<const N: usize> Plain for [u8; N] {}
// SAFETY (each of the network-types headers below): `#[repr(C)]`, made of
// u8, u16 and byte-array fields laid out without padding (their `LEN` is
// the sum of the fields, checked in this module's tests).
unsafe impl Plain for EthHdr {}
// SAFETY: as above.
unsafe impl Plain for VlanHdr {}
// SAFETY: as above.
unsafe impl Plain for Ipv4Hdr {}
// SAFETY: as above.
unsafe impl Plain for Ipv6Hdr {}
// SAFETY: as above.
unsafe impl Plain for TcpHdr {}
// SAFETY: as above.
unsafe impl Plain for UdpHdr {}
// SAFETY: as above.
unsafe impl Plain for VxlanHdr {}

/// Bounds-checked reads of a frame.
pub trait FrameBytes {
    /// The value of type `T` stored at `offset`, or `None` if the frame is
    /// shorter than `offset + size_of::<T>()`. No alignment is needed.
    fn read<T: Plain>(&self, offset: usize) -> Option<T>;

    /// The `N` bytes at `offset`, or `None` if the frame is shorter.
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.read::<[u8; N]>(offset)
    }
}

impl FrameBytes for [u8] {
    #[inline(always)]
    fn read<T: Plain>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let src = self.get(offset..end)?;
        // SAFETY: `src` holds exactly size_of::<T>() bytes; `T: Plain`
        // accepts any bytes; `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(src.as_ptr() as *const T) })
    }
}

/// Bounds-checked writes into a frame.
pub trait FrameBytesMut: FrameBytes {
    /// Stores `value` at `offset`; `None`, with nothing written, if the
    /// frame is shorter than `offset + size_of::<T>()`.
    fn write<T: Plain>(&mut self, offset: usize, value: &T) -> Option<()>;
}

impl FrameBytesMut for [u8] {
    #[inline(always)]
    fn write<T: Plain>(&mut self, offset: usize, value: &T) -> Option<()> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let dst = self.get_mut(offset..end)?;
        // SAFETY: `dst` holds exactly size_of::<T>() bytes; `T: Plain` has
        // no padding, so every byte copied is initialised; no alignment
        // needed.
        unsafe { core::ptr::write_unaligned(dst.as_mut_ptr() as *mut T, *value) };
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_are_the_wire_sizes_without_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<EthHdr>(), 6 + 6 + 2);
        assert_eq!(size_of::<VlanHdr>(), 2 + 2);
        assert_eq!(size_of::<Ipv4Hdr>(), 20);
        assert_eq!(size_of::<Ipv6Hdr>(), 40);
        assert_eq!(size_of::<TcpHdr>(), 20);
        assert_eq!(size_of::<UdpHdr>(), 8);
        assert_eq!(size_of::<VxlanHdr>(), 8);
    }

    #[test]
    fn reads_at_any_offset_and_refuses_past_the_end() {
        let f = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0xaa];
        // Odd offset: EthHdr has alignment 2, the read must not care.
        let e: EthHdr = f[1..].read(0).unwrap();
        assert_eq!(e.dst_addr, [1, 2, 3, 4, 5, 6]);
        assert_eq!(u16::from_be(e.ether_type), 0x00aa);
        assert!(f[..].read::<EthHdr>(1).is_some());
        assert!(f[..].read::<EthHdr>(2).is_none());
        assert!(f[..].read::<EthHdr>(usize::MAX).is_none());
        assert_eq!(f[..].bytes::<2>(12), Some([0x08, 0x00]));
    }

    #[test]
    fn a_write_round_trips_and_never_writes_past_the_end() {
        let mut f = [0u8; 10];
        let mut u: UdpHdr = f[..].read(1).unwrap();
        u.set_src_port(4789);
        u.set_len(8);
        f.write(1, &u).unwrap();
        assert_eq!(&f[1..3], &4789u16.to_be_bytes());
        assert_eq!(f[..].read::<UdpHdr>(1).unwrap().len(), 8);
        assert!(f.write(3, &u).is_none());
        assert_eq!(f[9], 0);
    }
}
