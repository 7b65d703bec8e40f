//! Steering policy: which frames of an interface go to the AF_XDP socket.

use crate::wire::{FrameBytes, Ipv4Hdr, L2Header, UdpHdr, ETH_P_IP, IPPROTO_UDP};

/// How `steer` treats the frames of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    /// Every frame goes to the kernel stack (counting only).
    Pass = 0,
    /// Every frame goes to the AF_XDP socket of its rx queue.
    RedirectAll = 1,
    /// Frames whose destination MAC, VLAN, EtherType or IPv4 UDP destination
    /// is listed in the match table go to the socket; the rest to the
    /// kernel stack.
    RedirectListed = 2,
    /// Every frame is dropped and counted: a sink for benchmarks.
    Drop = 3,
}

impl Mode {
    /// Decodes the raw value stored in the map; unknown values mean `Pass`
    /// so that a corrupt or zeroed map never blackholes an interface.
    pub const fn from_raw(raw: u32) -> Mode {
        match raw {
            1 => Mode::RedirectAll,
            2 => Mode::RedirectListed,
            3 => Mode::Drop,
            _ => Mode::Pass,
        }
    }

    /// Name as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Pass => "pass",
            Mode::RedirectAll => "all",
            Mode::RedirectListed => "listed",
            Mode::Drop => "drop",
        }
    }
}

/// The single entry of the `POLICY` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Policy {
    /// A [`Mode`] as `u32`.
    pub mode: u32,
    /// How the program was attached (an [`AttachMode`] as `u32`); the kernel
    /// side ignores it, `dataplane status` reports it.
    pub attach_mode: u32,
    /// Nonzero: redirect learned unicast in the kernel (see `fastpath`).
    /// Set by a running switch, cleared when it stops.
    pub fast_path: u32,
    /// This interface's switch port id (meaningful with `fast_path`).
    pub port_id: u32,
    /// The switch VLAN of untagged frames received here.
    pub untagged_vlan: u32,
    /// How this port classifies tagged frames (`fastpath::vlan_mode`).
    pub vlan_mode: u32,
    /// Process id of the `dataplane run` that attached this program (0: a
    /// user's `dataplane attach`); lets the next run recognise what a
    /// killed run left behind.
    pub owner_pid: u32,
    /// Nonzero on a container port: frames for the switch (not taken by the
    /// fast path) go to the kernel with a tc hand-off to this device, the
    /// switch's punt device, instead of to an AF_XDP socket here (see
    /// `fastpath::TcHandoff`).
    pub punt_ifindex: u32,
    /// With `punt_ifindex`: the punt device's queue for this port, plus one
    /// (an skb's `queue_mapping` encoding of a recorded rx queue).
    pub punt_queue: u32,
    /// Always zero.
    pub pad: u32,
    /// The fast path is on until this CLOCK_MONOTONIC time (ns; the
    /// programs read it with `bpf_ktime_get_coarse_ns`). The running switch renews it every half
    /// second; a switch killed without cleaning up stops forwarding in the
    /// kernel (no ageing, no VLAN or port changes any more) within
    /// [`FAST_PATH_LEASE_NS`].
    pub fast_path_until: u64,
}

/// How far ahead a running switch renews [`Policy::fast_path_until`].
pub const FAST_PATH_LEASE_NS: u64 = 3_000_000_000;

impl Policy {
    /// Whether learned unicast may be forwarded in the kernel at `now_ns`.
    #[inline(always)]
    pub fn fast_path_live(&self, now_ns: u64) -> bool {
        self.fast_path != 0 && now_ns < self.fast_path_until
    }
}

/// How the XDP program is attached to the device, recorded for `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachMode {
    /// Native XDP in the driver.
    Driver = 1,
    /// Generic XDP on the skb path.
    Skb = 2,
    /// No XDP: `steer_tc` at the interface's tc ingress (container ports).
    Tc = 3,
}

impl AttachMode {
    /// Decodes the value stored in [`Policy::attach_mode`].
    pub const fn from_raw(raw: u32) -> Option<AttachMode> {
        match raw {
            1 => Some(AttachMode::Driver),
            2 => Some(AttachMode::Skb),
            3 => Some(AttachMode::Tc),
            _ => None,
        }
    }

    /// Name as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
            AttachMode::Tc => "tc",
        }
    }
}

/// What a match-table entry compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MatchKind {
    /// Destination MAC address.
    DstMac = 1,
    /// VLAN id of the outer tag.
    Vlan = 2,
    /// EtherType (after the outer VLAN tag, if any).
    EtherType = 3,
    /// IPv4 destination address and UDP destination port of a whole
    /// (unfragmented) datagram: a tunnel endpoint's, such as VXLAN's.
    UdpDst = 4,
}

/// Key of the `MATCHES` hash map: 8 bytes, no implicit padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct MatchKey {
    /// A [`MatchKind`] as `u8`.
    pub kind: u8,
    /// Always zero; keeps the key free of uninitialised padding.
    pub pad: u8,
    /// MAC bytes, a VLAN id / EtherType big-endian in the first two bytes,
    /// or an IPv4 address and a UDP port (big-endian).
    pub value: [u8; 6],
}

impl MatchKey {
    /// Matches frames sent to `mac`.
    pub const fn dst_mac(mac: [u8; 6]) -> MatchKey {
        MatchKey {
            kind: MatchKind::DstMac as u8,
            pad: 0,
            value: mac,
        }
    }

    /// Matches frames tagged with VLAN id `vid`.
    pub const fn vlan(vid: u16) -> MatchKey {
        Self::u16_key(MatchKind::Vlan, vid)
    }

    /// Matches frames of EtherType `ethertype`.
    pub const fn ethertype(ethertype: u16) -> MatchKey {
        Self::u16_key(MatchKind::EtherType, ethertype)
    }

    /// Matches IPv4 UDP datagrams to `ip`:`port`.
    pub const fn udp_dst(ip: [u8; 4], port: u16) -> MatchKey {
        let p = port.to_be_bytes();
        MatchKey {
            kind: MatchKind::UdpDst as u8,
            pad: 0,
            value: [ip[0], ip[1], ip[2], ip[3], p[0], p[1]],
        }
    }

    const fn u16_key(kind: MatchKind, v: u16) -> MatchKey {
        let b = v.to_be_bytes();
        MatchKey {
            kind: kind as u8,
            pad: 0,
            value: [b[0], b[1], 0, 0, 0, 0],
        }
    }
}

/// What `steer` does with a parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// To the AF_XDP socket of the rx queue (if one is registered).
    Redirect,
    /// To the kernel stack.
    Pass,
    /// Dropped.
    Drop,
}

/// The [`MatchKind::UdpDst`] key of an IPv4 UDP datagram that is not a
/// fragment; `None` for anything else. Only [`Mode::RedirectListed`] needs
/// it, so callers read it only then.
#[inline(always)]
pub fn udp_dst_key<F: FrameBytes + ?Sized>(frame: &F, header: &L2Header) -> Option<MatchKey> {
    if header.ethertype != ETH_P_IP {
        return None;
    }
    let ip: Ipv4Hdr = frame.read(header.header_len)?;
    let ihl = ip.ihl() as usize;
    let whole = ip.frag_flags() & 1 == 0 && ip.frag_offset() == 0;
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || ip.proto != IPPROTO_UDP || !whole {
        return None;
    }
    let udp: UdpHdr = frame.read(header.header_len + ihl)?;
    Some(MatchKey::udp_dst(ip.dst_addr, udp.dst_port()))
}

/// The steering decision for one frame. `listed` answers whether a key is in
/// the match table; it is only consulted in [`Mode::RedirectListed`], as is
/// `udp`, the frame's [`udp_dst_key`].
#[inline(always)]
pub fn decide(
    mode: Mode,
    header: &L2Header,
    udp: Option<MatchKey>,
    listed: impl Fn(&MatchKey) -> bool,
) -> Verdict {
    match mode {
        Mode::Pass => Verdict::Pass,
        Mode::Drop => Verdict::Drop,
        Mode::RedirectAll => Verdict::Redirect,
        Mode::RedirectListed => {
            let selected = listed(&MatchKey::dst_mac(header.dst))
                || matches!(header.vlan, Some(vid) if listed(&MatchKey::vlan(vid)))
                || listed(&MatchKey::ethertype(header.ethertype))
                || matches!(udp, Some(key) if listed(&key));
            if selected {
                Verdict::Redirect
            } else {
                Verdict::Pass
            }
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)], made only of integers and byte arrays,
    // with no implicit padding (Policy: 10 x u32 + u64; MatchKey: 1 + 1 + 6 bytes),
    // so every bit pattern is a valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::Policy {}
    unsafe impl aya::Pod for super::MatchKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ETH_HLEN;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn header(dst: [u8; 6], vlan: Option<u16>, ethertype: u16) -> L2Header {
        L2Header {
            s_tag: false,
            dst,
            src: MAC_B,
            vlan,
            ethertype,
            header_len: ETH_HLEN,
        }
    }

    fn table(keys: &[MatchKey]) -> impl Fn(&MatchKey) -> bool + '_ {
        move |k| keys.contains(k)
    }

    #[test]
    fn fixed_modes_ignore_the_table() {
        let h = header(MAC_A, None, 0x0800);
        let all = [MatchKey::dst_mac(MAC_A)];
        assert_eq!(decide(Mode::Pass, &h, None, table(&all)), Verdict::Pass);
        assert_eq!(decide(Mode::Drop, &h, None, table(&all)), Verdict::Drop);
        assert_eq!(
            decide(Mode::RedirectAll, &h, None, table(&[])),
            Verdict::Redirect
        );
    }

    #[test]
    fn listed_selects_by_mac_vlan_or_ethertype() {
        let keys = [
            MatchKey::dst_mac(MAC_A),
            MatchKey::vlan(100),
            MatchKey::ethertype(0x88b5),
        ];
        let t = table(&keys);
        let m = Mode::RedirectListed;
        assert_eq!(
            decide(m, &header(MAC_A, None, 0x0800), None, &t),
            Verdict::Redirect
        );
        assert_eq!(
            decide(m, &header(MAC_B, Some(100), 0x0800), None, &t),
            Verdict::Redirect
        );
        assert_eq!(
            decide(m, &header(MAC_B, None, 0x88b5), None, &t),
            Verdict::Redirect
        );
        assert_eq!(
            decide(m, &header(MAC_B, Some(101), 0x0800), None, &t),
            Verdict::Pass
        );
        assert_eq!(
            decide(m, &header(MAC_B, None, 0x0806), None, &t),
            Verdict::Pass
        );
    }

    #[test]
    fn listed_selects_a_udp_destination_and_nothing_else_of_ipv4() {
        extern crate std;
        use crate::wire::build::{write_udp_ipv4, UdpIpv4};
        let mut f = [0u8; 64];
        let udp = |f: &mut [u8; 64], dst_ip: [u8; 4], dst_port: u16| {
            write_udp_ipv4(
                f,
                &UdpIpv4 {
                    src_mac: MAC_B,
                    dst_mac: MAC_A,
                    src_ip: [10, 0, 0, 2],
                    dst_ip,
                    src_port: 50000,
                    dst_port,
                },
            )
            .unwrap();
        };
        let keys = [MatchKey::udp_dst([10, 0, 0, 1], 4789)];
        let h = header(MAC_A, None, 0x0800);
        let verdict = |f: &[u8; 64]| {
            decide(
                Mode::RedirectListed,
                &h,
                udp_dst_key(f.as_slice(), &h),
                table(&keys),
            )
        };
        udp(&mut f, [10, 0, 0, 1], 4789);
        assert_eq!(verdict(&f), Verdict::Redirect);
        udp(&mut f, [10, 0, 0, 1], 4790);
        assert_eq!(verdict(&f), Verdict::Pass, "another port");
        udp(&mut f, [10, 0, 0, 3], 4789);
        assert_eq!(verdict(&f), Verdict::Pass, "another address");
        udp(&mut f, [10, 0, 0, 1], 4789);
        f[20] |= 0x20; // a fragment: the kernel reassembles it
        assert_eq!(verdict(&f), Verdict::Pass);
        udp(&mut f, [10, 0, 0, 1], 4789);
        f[23] = 6; // TCP to the same port
        assert_eq!(verdict(&f), Verdict::Pass);
        let arp = header(MAC_A, None, 0x0806);
        assert_eq!(udp_dst_key(f.as_slice(), &arp), None);
    }

    #[test]
    fn vlan_key_does_not_collide_with_ethertype_key() {
        // VLAN 0x0800 does not exist (12 bits) but the keys must differ anyway.
        assert_ne!(MatchKey::vlan(0x800), MatchKey::ethertype(0x800));
        let keys = [MatchKey::vlan(0x800 & 0xfff)];
        let h = header(MAC_B, None, 0x0800);
        assert_eq!(
            decide(Mode::RedirectListed, &h, None, table(&keys)),
            Verdict::Pass
        );
    }

    #[test]
    fn unknown_raw_mode_is_pass() {
        assert_eq!(Mode::from_raw(0), Mode::Pass);
        assert_eq!(Mode::from_raw(77), Mode::Pass);
        assert_eq!(Mode::from_raw(3), Mode::Drop);
    }

    #[test]
    fn map_values_have_no_padding() {
        assert_eq!(core::mem::size_of::<MatchKey>(), 8);
        assert_eq!(core::mem::size_of::<Policy>(), 48);
    }
}
