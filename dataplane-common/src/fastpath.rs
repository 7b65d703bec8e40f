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
/// port (the port takes redirects and sends this VLAN untagged). Entries
/// without it still serve to check that a source sits where it was learned.
pub const FDB_REDIRECT: u32 = 1;

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
}

/// What the fast path does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastPathDecision {
    /// Redirect to this switch port through the devmap.
    Redirect(u32),
    /// Let userspace decide (learning, flooding, VLANs, moves).
    SlowPath,
}

/// Decides for a frame that arrived on `my_port`, whose untagged frames
/// belong to `untagged_vlan`; `src` is the frame's source entry, looked up
/// by the caller (who also counts the hit on it).
///
/// Fast only when all of these hold, which is exactly when the userspace
/// switch would forward unchanged to one known port:
/// - the frame is untagged (no tag to classify, push or pop),
/// - the destination is unicast and known on another port that may be
///   redirected to ([`FDB_REDIRECT`]: userspace sets it only when that port
///   takes redirects and sends this VLAN untagged, so no tag is needed),
/// - the source is known on this very port (nothing to learn or move).
#[inline(always)]
pub fn decide(
    my_port: u32,
    untagged_vlan: u16,
    header: &L2Header,
    src: Option<&FdbValue>,
    lookup: impl Fn(&FdbKey) -> Option<FdbValue>,
) -> FastPathDecision {
    if header.vlan.is_some() || header.is_multicast() {
        return FastPathDecision::SlowPath;
    }
    match src {
        Some(v) if v.port == my_port => {}
        _ => return FastPathDecision::SlowPath,
    }
    let dst = FdbKey {
        mac: header.dst,
        vlan: untagged_vlan,
    };
    match lookup(&dst) {
        Some(v) if v.port != my_port && v.flags & FDB_REDIRECT != 0 => {
            FastPathDecision::Redirect(v.port)
        }
        _ => FastPathDecision::SlowPath,
    }
}

/// The key of a frame's source entry.
#[inline(always)]
pub fn source_key(untagged_vlan: u16, header: &L2Header) -> FdbKey {
    FdbKey {
        mac: header.src,
        vlan: untagged_vlan,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers and byte arrays only, no implicit padding
    // (FdbKey: 6 + 2 bytes; FdbValue: 4 + 4 + 8 bytes).
    unsafe impl aya::Pod for super::FdbKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FdbValue {}
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
        }
    }

    fn table(entries: &[([u8; 6], u16, u32)]) -> impl Fn(&FdbKey) -> Option<FdbValue> + '_ {
        move |k| {
            entries
                .iter()
                .find(|(m, v, _)| *m == k.mac && *v == k.vlan)
                .map(|(_, _, p)| FdbValue {
                    port: *p,
                    flags: FDB_REDIRECT,
                    hits: 0,
                })
        }
    }

    #[test]
    fn destinations_not_marked_for_redirect_go_slow() {
        let lookup = |k: &FdbKey| {
            Some(FdbValue {
                port: if k.mac == A { 0 } else { 1 },
                // B's port does not take redirects; A is only a source.
                flags: 0,
                hits: 0,
            })
        };
        assert_eq!(
            fast(0, 0, &hdr(A, B, None), lookup),
            FastPathDecision::SlowPath
        );
    }

    /// `decide` with the source looked up in the same table, as steer does.
    fn fast(
        port: u32,
        vlan: u16,
        h: &L2Header,
        lookup: impl Fn(&FdbKey) -> Option<FdbValue>,
    ) -> FastPathDecision {
        let src = lookup(&source_key(vlan, h));
        decide(port, vlan, h, src.as_ref(), lookup)
    }

    #[test]
    fn known_pair_goes_fast() {
        let t = [(A, 0, 0), (B, 0, 1)];
        assert_eq!(
            fast(0, 0, &hdr(A, B, None), table(&t)),
            FastPathDecision::Redirect(1)
        );
        assert_eq!(
            fast(1, 0, &hdr(B, A, None), table(&t)),
            FastPathDecision::Redirect(0)
        );
    }

    #[test]
    fn anything_to_learn_or_decide_goes_slow() {
        let t = [(A, 0, 0), (B, 0, 1)];
        // Unknown source, moved source, unknown destination, same port.
        assert_eq!(
            fast(2, 0, &hdr(A, B, None), table(&t)),
            FastPathDecision::SlowPath
        );
        assert_eq!(
            fast(0, 0, &hdr([2, 0, 0, 0, 0, 0xc], B, None), table(&t)),
            FastPathDecision::SlowPath
        );
        assert_eq!(
            fast(0, 0, &hdr(A, [2, 0, 0, 0, 0, 0xc], None), table(&t)),
            FastPathDecision::SlowPath
        );
        let same = [(A, 0, 0), (B, 0, 0)];
        assert_eq!(
            fast(0, 0, &hdr(A, B, None), table(&same)),
            FastPathDecision::SlowPath
        );
        // Broadcast, tagged.
        assert_eq!(
            fast(0, 0, &hdr(A, [0xff; 6], None), table(&t)),
            FastPathDecision::SlowPath
        );
        assert_eq!(
            fast(0, 0, &hdr(A, B, Some(0)), table(&t)),
            FastPathDecision::SlowPath
        );
    }

    #[test]
    fn vlans_are_separate() {
        let t = [(A, 10, 0), (B, 20, 1)];
        assert_eq!(
            fast(0, 10, &hdr(A, B, None), table(&t)),
            FastPathDecision::SlowPath
        );
        let t = [(A, 10, 0), (B, 10, 1)];
        assert_eq!(
            fast(0, 10, &hdr(A, B, None), table(&t)),
            FastPathDecision::Redirect(1)
        );
    }

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<FdbKey>(), 8);
        assert_eq!(core::mem::size_of::<FdbValue>(), 16);
    }
}
