//! The in-kernel fast path: learned unicast between XDP-capable ports is
//! redirected by `steer` straight to the egress device, without a trip
//! through userspace.
//!
//! Userspace learns; the kernel only follows what userspace learned. The
//! decision here is deliberately narrower than the userspace switch's, so
//! that it can only ever pick the port the userspace switch would pick.

use crate::wire::L2Header;

/// Key of the `FDB` map: (MAC, VLAN), 8 bytes, no padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FdbKey {
    pub mac: [u8; 6],
    /// The switch's VLAN (0: untagged domain).
    pub vlan: u16,
}

/// [`FdbValue::flags`]: frames *to* this address may be redirected to its
/// port (the port takes redirects). Entries without it still serve to check
/// that a source sits where it was learned.
pub const FDB_REDIRECT: u32 = 1;
/// [`FdbValue::flags`]: the entry's port sends this VLAN tagged (else untagged).
pub const FDB_TAGGED: u32 = 2;
/// [`FdbValue::flags`]: the entry's port drops XDP-redirected frames (a
/// veth whose peer, a container's interface at its defaults, has neither
/// an XDP program nor GRO): frames to it go through the tc hand-off.
pub const FDB_TC_ONLY: u32 = 4;
/// [`FdbValue::flags`]: the entry's port is a veth whose other end is in
/// another namespace: the tc hand-off delivers straight into that end
/// (`bpf_redirect_peer`) instead of transmitting on the port.
pub const FDB_VETH_PEER: u32 = 8;
/// [`FdbValue::flags`]: the entry's port is a tunnel (VXLAN): frames to it
/// are encapsulated toward [`FdbValue::remote`], sent to the underlay's
/// next hop [`FdbValue::next_hop`], with the port's [`TunnelPort`].
pub const FDB_TUNNEL: u32 = 16;

/// What `steer` puts in the XDP metadata area of a fast-path frame that it
/// passes to the kernel instead of redirecting it: the tc program
/// `deliver` on the same interface reads it and redirects the skb, which
/// keeps the skb's checksum-offload and segmentation state (an XDP
/// redirect turns the frame into bare bytes and loses both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct TcHandoff {
    /// [`TC_HANDOFF_MAGIC`]: anything else in front of a frame is not ours.
    pub magic: u32,
    /// Egress ifindex, with [`TC_HANDOFF_PEER`] set to deliver into the
    /// veth's other end.
    pub target: u32,
    /// Nonzero: the skb's `queue_mapping` to set before redirecting. A
    /// punted frame carries its ingress port this way: the punt device's
    /// transmit picks queue `queue - 1`, and the frame arrives on that rx
    /// queue of the other end, where the port's AF_XDP socket sits.
    pub queue: u32,
    /// Always zero.
    pub pad: u32,
}

impl TcHandoff {
    /// A frame for the switch, sent through the punt device at `ifindex`
    /// so that the kernel segments it and completes its checksum; it
    /// arrives on the punt device's rx queue `queue_mapping - 1`.
    #[inline(always)]
    pub fn punt(ifindex: u32, queue_mapping: u32) -> TcHandoff {
        TcHandoff {
            magic: TC_HANDOFF_MAGIC,
            target: ifindex,
            queue: queue_mapping,
            pad: 0,
        }
    }
}

/// [`TcHandoff::magic`].
pub const TC_HANDOFF_MAGIC: u32 = 0x6470_6668;
/// [`TcHandoff::target`] flag: `bpf_redirect_peer` rather than `bpf_redirect`.
pub const TC_HANDOFF_PEER: u32 = 1 << 31;

/// How a fast-path frame reaches its egress port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Egress {
    /// The port accepts XDP-redirected frames (else: tc hand-off only).
    pub takes_xdp_frames: bool,
    /// A veth whose other end is elsewhere: the hand-off delivers there.
    pub veth_peer: bool,
}

impl Egress {
    fn from_flags(flags: u32) -> Egress {
        Egress {
            takes_xdp_frames: flags & FDB_TC_ONLY == 0,
            veth_peer: flags & FDB_VETH_PEER != 0,
        }
    }

    /// The hand-off for this egress at `ifindex`.
    #[inline(always)]
    pub fn handoff(self, ifindex: u32) -> TcHandoff {
        let peer = if self.veth_peer { TC_HANDOFF_PEER } else { 0 };
        TcHandoff {
            magic: TC_HANDOFF_MAGIC,
            target: ifindex | peer,
            queue: 0,
            pad: 0,
        }
    }
}

/// [`crate::policy::Policy::vlan_mode`] values: how a port classifies
/// received frames, as the userspace switch's `VlanMode` does.
pub mod vlan_mode {
    /// Every VLAN tagged, untagged frames in the port's untagged VLAN.
    pub const TRUNK_ALL: u32 = 0;
    /// Untagged frames only (tagged ones are the slow path's to drop).
    pub const ACCESS: u32 = 1;
    /// Tagged frames of the allowed VLANs (`ALLOWED` bitmap), untagged
    /// frames in the native VLAN.
    pub const TRUNK_LISTED: u32 = 2;
}

/// Value of the `FDB` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct FdbValue {
    /// Switch port id (index into the `PORTS` devmap).
    pub port: u32,
    /// [`FDB_REDIRECT`] or 0.
    pub flags: u32,
    /// Frames *from* this address the fast path forwarded (racy increments
    /// from several CPUs: only "did it change" matters). Userspace ageing,
    /// which never sees those frames, treats a change as "seen".
    pub hits: u64,
    /// On a tunnel port: the remote VTEP the address sits behind (frames to
    /// it go there; frames from it must come from there).
    pub remote: [u8; 4],
    /// With [`FDB_TUNNEL`]: the underlay next hop's MAC toward `remote`.
    pub next_hop: [u8; 6],
    /// Always zero.
    pub pad: [u8; 6],
}

impl FdbValue {
    /// An entry on `port` with `flags`, no hits, no tunnel.
    pub const fn new(port: u32, flags: u32) -> FdbValue {
        FdbValue {
            port,
            flags,
            hits: 0,
            remote: [0; 4],
            next_hop: [0; 6],
            pad: [0; 6],
        }
    }
}

/// A tunnel port's parameters (VXLAN over IPv4), in `TUNNELS` at the
/// port's id: what the fast path writes in front of a frame it
/// encapsulates, and checks in one it decapsulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct TunnelPort {
    /// Nonzero: the port is a tunnel (an all-zero entry is none).
    pub active: u32,
    pub vni: u32,
    /// This host's VTEP address.
    pub local: [u8; 4],
    /// The underlay interface's MAC: the outer source.
    pub src_mac: [u8; 6],
    /// The UDP port both ends use (host order).
    pub udp_port: u16,
    /// The largest inner frame the underlay carries whole: larger ones go
    /// to userspace, which drops and counts them.
    pub max_inner: u32,
    /// Always zero.
    pub pad: u32,
}

/// Where a tunnelled frame goes: the remote VTEP and the next hop's MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    pub remote: [u8; 4],
    pub next_hop: [u8; 6],
}

/// How the frame's tag changes on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Leaves as it came (untagged -> untagged, or same tag).
    None,
    /// Untagged in, tagged out: push an 802.1Q tag with this VID.
    Push(u16),
    /// Tagged in, untagged out: pop the tag.
    Pop,
}

/// What the fast path does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastPathDecision {
    /// Forward to this switch port, rewriting the tag, by XDP redirect or
    /// the tc hand-off as `egress` allows; encapsulated when the port is a
    /// tunnel.
    Redirect {
        port: u32,
        rewrite: Rewrite,
        egress: Egress,
        tunnel: Option<Tunnel>,
    },
    /// Let userspace decide (learning, flooding, VLAN policy, moves).
    SlowPath,
}

/// The port settings the fast path classifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortVlans {
    /// A [`vlan_mode`] value.
    pub mode: u32,
    /// VLAN of untagged frames (access VLAN, or native VLAN of a trunk).
    pub untagged_vlan: u16,
}

/// The switch VLAN of a frame received on a port, or `None` when the fast
/// path leaves it to userspace. `allowed` answers trunk membership.
#[inline(always)]
pub fn classify(port: PortVlans, tag: Option<u16>, allowed: impl Fn(u16) -> bool) -> Option<u16> {
    match tag {
        None => Some(port.untagged_vlan),
        // Priority tags and tags on access ports: userspace's rules.
        Some(0) => None,
        Some(_) if port.mode == vlan_mode::ACCESS => None,
        Some(vid) if vid == port.untagged_vlan => Some(vid),
        Some(vid) if port.mode == vlan_mode::TRUNK_ALL || allowed(vid) => Some(vid),
        Some(_) => None,
    }
}

/// Decides for a frame that arrived on `my_port` and was classified into
/// `vlan` (see [`classify`]); `src` is the frame's source entry, looked up by
/// the caller (who also counts the hit on it).
///
/// Fast only when all of these hold, which is exactly when the userspace
/// switch would forward to one known port:
/// - the destination is unicast and known on another port that may be
///   redirected to ([`FDB_REDIRECT`]),
/// - the source is known on this very port (nothing to learn or move).
///
/// The tag then changes as the egress port sends that VLAN ([`FDB_TAGGED`]).
#[inline(always)]
pub fn decide(
    my_port: u32,
    vlan: u16,
    header: &L2Header,
    src: Option<&FdbValue>,
    lookup: impl Fn(&FdbKey) -> Option<FdbValue>,
) -> FastPathDecision {
    // Multicast floods; S-tagged and priority-over-tag frames are refused:
    // userspace decides (and counts) all of them.
    if header.is_multicast() || header.s_tag || header.is_priority_tag_over_a_tag() {
        return FastPathDecision::SlowPath;
    }
    match src {
        Some(v) if v.port == my_port => {}
        _ => return FastPathDecision::SlowPath,
    }
    let dst = FdbKey {
        mac: header.dst,
        vlan,
    };
    let Some(v) = lookup(&dst) else {
        return FastPathDecision::SlowPath;
    };
    if v.port == my_port || v.flags & FDB_REDIRECT == 0 {
        return FastPathDecision::SlowPath;
    }
    let rewrite = match (header.vlan.is_some(), v.flags & FDB_TAGGED != 0) {
        (false, false) | (true, true) => Rewrite::None,
        (false, true) => Rewrite::Push(vlan),
        (true, false) => Rewrite::Pop,
    };
    FastPathDecision::Redirect {
        port: v.port,
        rewrite,
        egress: Egress::from_flags(v.flags),
        tunnel: (v.flags & FDB_TUNNEL != 0).then_some(Tunnel {
            remote: v.remote,
            next_hop: v.next_hop,
        }),
    }
}

/// The key of a frame's source entry in `vlan`.
#[inline(always)]
pub fn source_key(vlan: u16, header: &L2Header) -> FdbKey {
    FdbKey {
        mac: header.src,
        vlan,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers and byte arrays only, no implicit padding
    // (FdbKey: 6 + 2 bytes; FdbValue: 4 + 4 + 8 + 4 + 6 + 6 bytes;
    // TunnelPort: 4 + 4 + 4 + 6 + 2 + 4 + 4 bytes; checked in the tests).
    unsafe impl aya::Pod for super::FdbKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FdbValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TunnelPort {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ETH_HLEN;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn hdr(src: [u8; 6], dst: [u8; 6], vlan: Option<u16>) -> L2Header {
        L2Header {
            dst,
            src,
            vlan,
            ethertype: 0x0800,
            header_len: ETH_HLEN,
            s_tag: false,
        }
    }

    /// (mac, vlan, port, flags)
    type Entry = ([u8; 6], u16, u32, u32);

    fn table(entries: &[Entry]) -> impl Fn(&FdbKey) -> Option<FdbValue> + '_ {
        move |k| {
            entries
                .iter()
                .find(|(m, v, _, _)| *m == k.mac && *v == k.vlan)
                .map(|(_, _, port, flags)| FdbValue::new(*port, *flags))
        }
    }

    /// `decide` with the source looked up in the same table, as steer does.
    fn fast(
        port: u32,
        vlan: u16,
        h: &L2Header,
        t: impl Fn(&FdbKey) -> Option<FdbValue>,
    ) -> FastPathDecision {
        let src = t(&source_key(vlan, h));
        decide(port, vlan, h, src.as_ref(), t)
    }

    const R: u32 = FDB_REDIRECT;
    const RT: u32 = FDB_REDIRECT | FDB_TAGGED;

    fn redirect(port: u32, rewrite: Rewrite) -> FastPathDecision {
        FastPathDecision::Redirect {
            port,
            rewrite,
            egress: Egress {
                takes_xdp_frames: true,
                veth_peer: false,
            },
            tunnel: None,
        }
    }

    #[test]
    fn egress_flags_choose_the_delivery() {
        let h = hdr(A, B, None);
        let t = [(A, 0, 1, R), (B, 0, 2, R | FDB_TC_ONLY | FDB_VETH_PEER)];
        let FastPathDecision::Redirect { port, egress, .. } = fast(1, 0, &h, table(&t)) else {
            panic!("a known pair goes fast");
        };
        assert_eq!(port, 2);
        assert!(!egress.takes_xdp_frames && egress.veth_peer);
        let handoff = egress.handoff(7);
        assert_eq!(handoff.magic, TC_HANDOFF_MAGIC);
        assert_eq!(handoff.target, 7 | TC_HANDOFF_PEER);
        let plain = Egress::from_flags(R).handoff(7);
        assert_eq!(plain.target, 7);
    }

    #[test]
    fn known_pair_goes_fast() {
        let t = [(A, 0, 0, R), (B, 0, 1, R)];
        assert_eq!(
            fast(0, 0, &hdr(A, B, None), table(&t)),
            redirect(1, Rewrite::None)
        );
        assert_eq!(
            fast(1, 0, &hdr(B, A, None), table(&t)),
            redirect(0, Rewrite::None)
        );
    }

    #[test]
    fn anything_to_learn_or_decide_goes_slow() {
        let t = [(A, 0, 0, R), (B, 0, 1, R)];
        let c = [2, 0, 0, 0, 0, 0xc];
        // Unknown source, moved source, unknown destination, same port.
        assert_eq!(
            fast(2, 0, &hdr(A, B, None), table(&t)),
            FastPathDecision::SlowPath
        );
        assert_eq!(
            fast(0, 0, &hdr(c, B, None), table(&t)),
            FastPathDecision::SlowPath
        );
        assert_eq!(
            fast(0, 0, &hdr(A, c, None), table(&t)),
            FastPathDecision::SlowPath
        );
        let same = [(A, 0, 0, R), (B, 0, 0, R)];
        assert_eq!(
            fast(0, 0, &hdr(A, B, None), table(&same)),
            FastPathDecision::SlowPath
        );
        // Broadcast.
        assert_eq!(
            fast(0, 0, &hdr(A, [0xff; 6], None), table(&t)),
            FastPathDecision::SlowPath
        );
    }

    #[test]
    fn destinations_not_marked_for_redirect_go_slow() {
        let t = [(A, 0, 0, 0), (B, 0, 1, 0)];
        assert_eq!(
            fast(0, 0, &hdr(A, B, None), table(&t)),
            FastPathDecision::SlowPath
        );
    }

    #[test]
    fn tags_are_pushed_popped_or_kept_as_the_egress_sends_the_vlan() {
        // A on an access port (untagged), B on a trunk (tagged) in VLAN 10.
        let t = [(A, 10, 0, R), (B, 10, 1, RT)];
        assert_eq!(
            fast(0, 10, &hdr(A, B, None), table(&t)),
            redirect(1, Rewrite::Push(10))
        );
        assert_eq!(
            fast(1, 10, &hdr(B, A, Some(10)), table(&t)),
            redirect(0, Rewrite::Pop)
        );
        // Trunk to trunk: the tag stays.
        let t = [(A, 10, 0, RT), (B, 10, 1, RT)];
        assert_eq!(
            fast(0, 10, &hdr(A, B, Some(10)), table(&t)),
            redirect(1, Rewrite::None)
        );
    }

    #[test]
    fn vlans_are_separate() {
        let t = [(A, 10, 0, R), (B, 20, 1, R)];
        assert_eq!(
            fast(0, 10, &hdr(A, B, None), table(&t)),
            FastPathDecision::SlowPath
        );
    }

    #[test]
    fn classification_follows_the_port_mode() {
        let none = |_: u16| false;
        let only20 = |v: u16| v == 20;
        let access = PortVlans {
            mode: vlan_mode::ACCESS,
            untagged_vlan: 10,
        };
        assert_eq!(classify(access, None, none), Some(10));
        assert_eq!(
            classify(access, Some(10), none),
            None,
            "tagged on access: slow path"
        );
        let trunk = PortVlans {
            mode: vlan_mode::TRUNK_LISTED,
            untagged_vlan: 5,
        };
        assert_eq!(classify(trunk, None, only20), Some(5));
        assert_eq!(classify(trunk, Some(20), only20), Some(20));
        assert_eq!(
            classify(trunk, Some(5), only20),
            Some(5),
            "native VLAN tagged"
        );
        assert_eq!(classify(trunk, Some(30), only20), None);
        let all = PortVlans {
            mode: vlan_mode::TRUNK_ALL,
            untagged_vlan: 0,
        };
        assert_eq!(classify(all, Some(4000), none), Some(4000));
        assert_eq!(
            classify(all, Some(0), none),
            None,
            "priority tag: slow path"
        );
    }

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<FdbKey>(), 8);
        assert_eq!(core::mem::size_of::<FdbValue>(), 32);
        assert_eq!(core::mem::size_of::<TunnelPort>(), 28);
    }

    #[test]
    fn a_destination_behind_a_tunnel_is_encapsulated_toward_its_remote() {
        let h = hdr(A, B, None);
        let remote_entry = |k: &FdbKey| {
            let mut v = match k.mac {
                A => FdbValue::new(1, R),
                B => FdbValue::new(3, R | FDB_TUNNEL),
                _ => return None,
            };
            if k.mac == B {
                v.remote = [10, 99, 0, 2];
                v.next_hop = [2, 0, 0, 0, 9, 9];
            }
            Some(v)
        };
        let FastPathDecision::Redirect { port, tunnel, .. } = fast(1, 0, &h, remote_entry) else {
            panic!("a known pair goes fast");
        };
        assert_eq!(port, 3);
        assert_eq!(
            tunnel,
            Some(Tunnel {
                remote: [10, 99, 0, 2],
                next_hop: [2, 0, 0, 0, 9, 9]
            })
        );
        // Without the flag the port is an ordinary one.
        let t = [(A, 0, 1, R), (B, 0, 2, R)];
        let FastPathDecision::Redirect { tunnel, .. } = fast(1, 0, &h, table(&t)) else {
            panic!("a known pair goes fast");
        };
        assert_eq!(tunnel, None);
    }
}
