//! Port VLAN membership (access / trunk): which VLAN a frame belongs to on
//! ingress and which tag it leaves with (the tag edit is the wire layer's).

use dataplane_common::wire::vlan::set_outer_tag;

/// VLAN id used internally for untagged frames of a trunk without an
/// explicit native VLAN (as Open vSwitch does: VLAN 0 is "untagged").
pub const UNTAGGED: u16 = 0;

/// How a port treats VLANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VlanMode {
    /// Untagged port in one VLAN: frames arrive and leave without a tag.
    /// Tagged frames arriving on it are dropped (priority tags, VID 0, are accepted).
    Access(u16),
    /// Tagged port: carries the allowed VLANs tagged; untagged frames belong
    /// to the native VLAN and leave untagged.
    Trunk {
        /// Allowed VLAN ids; `None` allows every VLAN.
        allowed: Option<VlanSet>,
        /// VLAN of untagged frames.
        native: u16,
    },
}

impl Default for VlanMode {
    /// Like an Open vSwitch port without `tag` or `trunks`: every VLAN passes
    /// tagged, untagged frames form their own domain. Makes a plain
    /// learning switch of ports nobody configured.
    fn default() -> Self {
        VlanMode::Trunk {
            allowed: None,
            native: UNTAGGED,
        }
    }
}

/// What a frame's tag must become on egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressTag {
    /// Leaves without a tag.
    Untagged,
    /// Leaves tagged with this VLAN id.
    Tagged(u16),
}

impl VlanMode {
    /// The VLAN a frame received with `tag` belongs to, or `None` when the
    /// port does not accept it (the frame is dropped and counted).
    pub fn ingress(&self, tag: Option<u16>) -> Option<u16> {
        match (self, tag) {
            (VlanMode::Access(vid), None | Some(0)) => Some(*vid),
            (VlanMode::Access(_), Some(_)) => None,
            (VlanMode::Trunk { native, .. }, None | Some(0)) => Some(*native),
            (VlanMode::Trunk { allowed, native }, Some(vid)) => {
                (vid == *native || allowed.as_ref().is_none_or(|s| s.contains(vid))).then_some(vid)
            }
        }
    }

    /// How a frame of `vlan` leaves this port, or `None` if the port is not
    /// a member of that VLAN.
    pub fn egress(&self, vlan: u16) -> Option<EgressTag> {
        match self {
            VlanMode::Access(vid) => (*vid == vlan).then_some(EgressTag::Untagged),
            VlanMode::Trunk { allowed, native } => {
                if vlan == *native {
                    Some(EgressTag::Untagged)
                } else if allowed.as_ref().is_none_or(|s| s.contains(vlan)) {
                    Some(EgressTag::Tagged(vlan))
                } else {
                    None
                }
            }
        }
    }
}

/// A set of VLAN ids (0-4095) as a bitmap.
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet(Box<[u64; 64]>);

impl VlanSet {
    /// The set of `vids`.
    pub fn new(vids: impl IntoIterator<Item = u16>) -> VlanSet {
        let mut bits = Box::new([0u64; 64]);
        for v in vids {
            let v = (v & 0x0fff) as usize;
            bits[v / 64] |= 1 << (v % 64);
        }
        VlanSet(bits)
    }

    /// Membership test.
    pub fn contains(&self, vid: u16) -> bool {
        let v = (vid & 0x0fff) as usize;
        self.0[v / 64] & (1 << (v % 64)) != 0
    }

    /// The bitmap as 64 words (VLAN v is bit v % 64 of word v / 64), the
    /// layout of the fast path's `ALLOWED` map.
    pub fn words(&self) -> [u64; 64] {
        *self.0
    }

    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0u16..4096).filter(|v| self.contains(*v))
    }
}

impl std::fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Makes the tag of the frame at `buf[start..start + len]` match `want`
/// (the edit itself is the wire layer's [`set_outer_tag`]). Returns the new
/// `(start, len)`, or `None` when a push has no headroom.
///
/// `have` is the frame's current outer VID (`None`: untagged).
pub fn retag(
    buf: &mut [u8],
    start: usize,
    len: usize,
    have: Option<u16>,
    want: EgressTag,
) -> Option<(usize, usize)> {
    let want = match want {
        EgressTag::Untagged => None,
        EgressTag::Tagged(vid) => Some(vid),
    };
    set_outer_tag(buf, start, len, have, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_port() {
        let p = VlanMode::Access(10);
        assert_eq!(p.ingress(None), Some(10));
        assert_eq!(p.ingress(Some(0)), Some(10));
        assert_eq!(p.ingress(Some(10)), None);
        assert_eq!(p.egress(10), Some(EgressTag::Untagged));
        assert_eq!(p.egress(11), None);
    }

    #[test]
    fn trunk_port() {
        let p = VlanMode::Trunk {
            allowed: Some(VlanSet::new([10, 20])),
            native: 5,
        };
        assert_eq!(p.ingress(None), Some(5));
        assert_eq!(p.ingress(Some(20)), Some(20));
        assert_eq!(p.ingress(Some(30)), None);
        assert_eq!(p.egress(5), Some(EgressTag::Untagged));
        assert_eq!(p.egress(10), Some(EgressTag::Tagged(10)));
        assert_eq!(p.egress(30), None);
    }

    #[test]
    fn default_port_passes_everything() {
        let p = VlanMode::default();
        assert_eq!(p.ingress(None), Some(UNTAGGED));
        assert_eq!(p.ingress(Some(4000)), Some(4000));
        assert_eq!(p.egress(4000), Some(EgressTag::Tagged(4000)));
        assert_eq!(p.egress(UNTAGGED), Some(EgressTag::Untagged));
    }
}
