//! VXLAN port: one VNI of an overlay that joins this switch to other hosts'
//! switches (or Linux vxlan devices, or Open vSwitch) over an underlay
//! interface that stays the kernel's.
//!
//! ```text
//!   switch <-> [VxlanPort: decap / encap] <-> AF_XDP sockets on the underlay
//!                                              steer: UDP to local:4789 only
//! ```
//!
//! - **Receive**: `steer` on the underlay runs in `listed` mode with one
//!   match, UDP to this VTEP's address and port, so ssh, ARP and routing
//!   on the underlay stay the kernel's. A received frame must carry this
//!   port's VNI and come from a listed remote; else it is dropped and
//!   counted (`tunnel`). The outer headers are stripped by moving the
//!   frame's start (no copy) and the inner source is learned against its
//!   remote ([`vteps`]).
//! - **Transmit**: a frame for a MAC learned behind one remote goes to it;
//!   anything else (broadcast, multicast, unknown unicast) to every remote
//!   (head-end replication: one copy per remote). The outer headers are
//!   written into the frame's headroom; the outer destination MAC is the
//!   kernel's next hop toward the remote ([`next_hop`]). A frame larger
//!   than the underlay can carry whole is dropped (`too_big`): the switch
//!   never fragments, and sets DF.
//!
//! The switch's FDB learns MACs against this port as against any other;
//! VLANs work as on any port (the VNI is one more segment of the switch's
//! VLAN domains: an access port maps it to one VLAN).

mod next_hop;
mod vteps;

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane_common::checksum;
use dataplane_common::fastpath::{Tunnel, TunnelPort};
use dataplane_common::policy::MatchKey;
use dataplane_common::wire::build::UdpIpv4;
use dataplane_common::wire::vxlan::{self, VXLAN_IPV4_OVERHEAD};
use dataplane_common::wire::{parse_l2, Ipv4Hdr, UdpHdr, VxlanHdr, FRAME_HEADROOM};
use thiserror::Error;

use super::afxdp::{self, AfxdpConfig, AfxdpPort};
use super::{DropReason, Frames, HeldFrames, Port, PortCounters};
use crate::daemon::config::VxlanSpec;
use crate::steer::pins::PinRoot;
use crate::steer::policy::PolicySpec;
use crate::sys::netdev;
use crate::xsk::{Umem, XdpDesc};

pub use vteps::Row as RemoteMac;

/// A VXLAN port's learned remote MACs, as it last published them.
pub type RemoteMacs = Arc<Mutex<Vec<RemoteMac>>>;

/// What others need of an open VXLAN port: `show fdb` its remote table,
/// the fast path its parameters and where each remote sits.
#[derive(Clone, Debug)]
pub struct TunnelView {
    /// As the XDP fast path reads them (`TUNNELS`).
    pub params: TunnelPort,
    pub remotes: Vec<Ipv4Addr>,
    pub remote_macs: RemoteMacs,
    next_hops: Arc<[AtomicU64]>,
}

impl TunnelView {
    /// Where frames to (`vlan`, `mac`) go: its remote as last published
    /// (the inner frames carry `vlan` as a tag, or none) and the next hop
    /// toward it, all zero while not known.
    pub fn locate(&self, vlan: u16, mac: [u8; 6]) -> Option<Tunnel> {
        let table = self.remote_macs.lock().unwrap_or_else(|p| p.into_inner());
        let row = table
            .iter()
            .find(|r| r.mac == mac && (r.vlan == vlan || r.vlan == 0))?;
        let i = self.remotes.iter().position(|r| *r == row.remote)?;
        let next_hop = next_hop::decode(self.next_hops[i].load(Ordering::Relaxed));
        Some(Tunnel {
            remote: row.remote.octets(),
            next_hop: next_hop.unwrap_or([0; 6]),
        })
    }
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("vxlan port on {ifname}: {source}")]
    Interface {
        ifname: String,
        source: netdev::Error,
    },
    #[error(
        "vxlan port on {ifname}: MTU {mtu} leaves no room for VXLAN's {overhead} bytes; \
         raise the underlay's MTU (`ip link set {ifname} mtu 1550` carries 1500-byte frames)"
    )]
    MtuTooSmall {
        ifname: String,
        mtu: u32,
        overhead: usize,
    },
    #[error(transparent)]
    Underlay(#[from] afxdp::Error),
    #[error("vxlan port on {ifname}: starting its next-hop thread: {source}")]
    Thread {
        ifname: String,
        source: std::io::Error,
    },
}

/// How to open a VXLAN port.
pub struct VxlanConfig<'a> {
    pub tunnel: &'a VxlanSpec,
    /// The AF_XDP side on the underlay (its policy is set here).
    pub underlay: AfxdpConfig,
    /// How long a learned remote MAC stays (the switch's FDB ageing time).
    pub max_age: Duration,
    /// Most remote MACs remembered (the switch's FDB size).
    pub max_entries: usize,
}

/// Bytes of a tunnelled frame in front of the inner Ethernet header beyond
/// the IP packet: the outer IPv4, UDP and VXLAN headers. The underlay's MTU
/// bounds the outer IP packet, so the largest inner frame is `mtu - 36`
/// (a 1500-byte underlay carries inner IP packets of 1450 bytes).
const IP_OVERHEAD: u32 = (Ipv4Hdr::LEN + UdpHdr::LEN + VxlanHdr::LEN) as u32;

pub struct VxlanPort {
    name: String,
    underlay: AfxdpPort,
    vni: u32,
    udp_port: u16,
    local: [u8; 4],
    remotes: Vec<[u8; 4]>,
    /// The underlay's MAC: the outer source.
    src_mac: [u8; 6],
    /// The largest inner frame the underlay carries whole.
    max_inner: u32,
    next_hops: next_hop::NextHops,
    vteps: vteps::VtepTable,
    counters: Arc<PortCounters>,
    /// Encapsulated frames of the current transmit burst.
    out: Vec<XdpDesc>,
}

impl VxlanPort {
    pub fn open(
        config: VxlanConfig<'_>,
        umem: &Arc<Umem>,
        pins: &PinRoot,
        counters: Arc<PortCounters>,
    ) -> Result<VxlanPort, Error> {
        let t = config.tunnel;
        let ifname = config.underlay.ifname.clone();
        let iface_err = |source| Error::Interface {
            ifname: ifname.clone(),
            source,
        };
        let ifindex = netdev::ifindex(&ifname).map_err(iface_err)?;
        let mtu = netdev::mtu(&ifname).map_err(iface_err)?;
        let src_mac = netdev::mac(&ifname).map_err(iface_err)?;
        if mtu <= IP_OVERHEAD + 64 {
            return Err(Error::MtuTooSmall {
                ifname,
                mtu,
                overhead: VXLAN_IPV4_OVERHEAD,
            });
        }
        let mut underlay = config.underlay;
        if underlay.queues.is_empty() {
            // Every receive queue: the underlay's RSS spreads tunnelled
            // flows by their outer source port.
            let n = netdev::rx_queue_count(&ifname)
                .map_err(iface_err)?
                .unwrap_or(1);
            underlay.queues = (0..n.max(1)).collect();
        }
        underlay.policy = PolicySpec {
            mode: dataplane_common::policy::Mode::RedirectListed,
            matches: vec![MatchKey::udp_dst(t.local.octets(), t.udp_port)],
        };
        let underlay_port = AfxdpPort::open(&underlay, umem, pins, counters.clone())?;
        let next_hops =
            next_hop::NextHops::start(&ifname, ifindex, &t.remotes).map_err(|source| {
                Error::Thread {
                    ifname: ifname.clone(),
                    source,
                }
            })?;
        let max_inner = mtu - IP_OVERHEAD;
        tracing::info!(
            port = format!("vxlan:{ifname}"),
            vni = t.vni,
            local = %t.local,
            remotes = ?t.remotes,
            "vxlan port open: overlay MTU {} (underlay {mtu} less {VXLAN_IPV4_OVERHEAD}); \
             UDP to {}:{} on {ifname} comes to the switch, everything else stays the kernel's",
            mtu - VXLAN_IPV4_OVERHEAD as u32,
            t.local,
            t.udp_port
        );
        Ok(VxlanPort {
            name: format!("vxlan:{ifname}"),
            underlay: underlay_port,
            vni: t.vni,
            udp_port: t.udp_port,
            local: t.local.octets(),
            remotes: t.remotes.iter().map(Ipv4Addr::octets).collect(),
            src_mac,
            max_inner,
            next_hops,
            vteps: vteps::VtepTable::new(config.max_age, config.max_entries, &t.remotes),
            counters,
            out: Vec::new(),
        })
    }

    /// Checks a received frame's outer headers: where its inner frame
    /// starts and which remote sent it, if it is this port's.
    #[inline]
    fn accept(&self, frame: &[u8]) -> Option<(usize, u16)> {
        let o = vxlan::parse_outer(frame, frame.len()).ok()?;
        if o.vni != self.vni || o.dst_ip != self.local || o.dst_port != self.udp_port {
            return None;
        }
        let remote = self.remotes.iter().position(|r| *r == o.src_ip)?;
        Some((o.inner_offset, remote as u16))
    }

    /// Queues `d` (an inner frame) toward remote `r`: in place when
    /// `reuse` (the frame's headroom takes the outer headers), else as a
    /// copy in a fresh frame. A frame not queued is freed and counted.
    fn encapsulate_to(&mut self, frames: &mut Frames<'_>, d: XdpDesc, r: usize, reuse: bool) {
        let Some(next_hop) = self.next_hops.mac(r) else {
            if reuse {
                frames.pool.free(d.addr);
            }
            self.counters.add_drop(DropReason::NoNextHop, 1);
            return;
        };
        let frame_size = u64::from(frames.umem.frame_size());
        let room = d.addr % frame_size;
        let start = if reuse && room >= VXLAN_IPV4_OVERHEAD as u64 {
            d.addr - VXLAN_IPV4_OVERHEAD as u64
        } else {
            let Some(chunk) = frames.pool.alloc() else {
                if reuse {
                    frames.pool.free(d.addr);
                }
                self.counters.add_drop(DropReason::NoFreeFrame, 1);
                return;
            };
            let at = chunk + FRAME_HEADROOM as u64;
            // SAFETY: `chunk` was just taken from the pool, so this port is
            // its only holder, and it is another frame than `d`'s (which
            // the caller holds and only reads here).
            let copy = unsafe { frames.umem.frame_mut(at, d.len as usize) };
            copy.copy_from_slice(frames.umem.frame(d.addr, d.len as usize));
            if reuse {
                frames.pool.free(d.addr);
            }
            at - VXLAN_IPV4_OVERHEAD as u64
        };
        let len = d.len as usize + VXLAN_IPV4_OVERHEAD;
        // SAFETY: the range is one frame this port holds (the caller's,
        // handed over with `reuse`, or the copy's), and no other slice of
        // it is alive.
        let bytes = unsafe { frames.umem.frame_mut(start, len) };
        let r_ip = self.remotes[r];
        let outer = UdpIpv4 {
            src_mac: self.src_mac,
            dst_mac: next_hop,
            src_ip: self.local,
            dst_ip: r_ip,
            src_port: vxlan::entropy_port(&bytes[VXLAN_IPV4_OVERHEAD..]),
            dst_port: self.udp_port,
        };
        // Cannot fail: the frame holds an inner Ethernet header (checked
        // against max_inner's lower bound by the caller) and vni <= MAX_VNI.
        let _ = vxlan::encapsulate(bytes, &outer, self.vni, d.len as usize);
        self.out.push(XdpDesc {
            addr: start,
            len: len as u32,
            options: 0,
        });
    }
}

impl Port for VxlanPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, frames: &mut Frames<'_>, out: &mut Vec<XdpDesc>, max: usize) -> usize {
        let before = out.len();
        let n = self.underlay.rx_burst(frames, out, max);
        if n == 0 {
            return 0;
        }
        let now = Instant::now();
        let mut kept = before;
        let mut completed = 0u64;
        for i in before..before + n {
            let d = out[i];
            let accepted = self.accept(frames.umem.frame(d.addr, d.len as usize));
            let Some((offset, remote)) = accepted else {
                frames.pool.free(d.addr);
                self.counters.add_drop(DropReason::Tunnel, 1);
                continue;
            };
            let inner = XdpDesc {
                addr: d.addr + offset as u64,
                len: d.len - offset as u32,
                options: 0,
            };
            // SAFETY: just received, so the engine (through this call) is
            // the frame's only holder; no other slice of it is alive.
            let bytes = unsafe { frames.umem.frame_mut(inner.addr, inner.len as usize) };
            if let Ok(h) = parse_l2(&*bytes) {
                self.vteps.learn(h.vlan.unwrap_or(0), h.src, remote, now);
            }
            // The sender's kernel may have left the inner checksum to a
            // device that never saw the inner frame: finish it here, as
            // every AF_XDP port does for its own frames.
            completed += checksum::complete_partial(bytes) as u64;
            out[kept] = inner;
            kept += 1;
        }
        if completed > 0 {
            self.counters.add_checksums_completed(completed);
        }
        out.truncate(kept);
        kept - before
    }

    fn tx_burst(&mut self, frames: &mut Frames<'_>, batch: &mut Vec<XdpDesc>) {
        if batch.is_empty() {
            return;
        }
        let now = Instant::now();
        for d in std::mem::take(batch) {
            if d.len > self.max_inner {
                frames.pool.free(d.addr);
                self.counters.add_drop(DropReason::TooBig, 1);
                continue;
            }
            let target = match parse_l2(frames.umem.frame(d.addr, d.len as usize)) {
                Ok(h) if h.dst[0] & 1 == 0 => self.vteps.lookup(h.vlan.unwrap_or(0), h.dst, now),
                Ok(_) => None,
                Err(_) => {
                    frames.pool.free(d.addr);
                    self.counters.add_drop(DropReason::Malformed, 1);
                    continue;
                }
            };
            match target {
                Some(r) => self.encapsulate_to(frames, d, r as usize, true),
                None => {
                    // Head-end replication: copies for all but the last
                    // remote, which takes the frame itself.
                    let last = self.remotes.len() - 1;
                    for r in 0..=last {
                        self.encapsulate_to(frames, d, r, r == last);
                    }
                }
            }
        }
        let mut out = std::mem::take(&mut self.out);
        self.underlay.tx_burst(frames, &mut out);
        // What the underlay's ring did not take: this port made those
        // frames (or took them over), so it frees and counts them.
        for d in out.drain(..) {
            frames.pool.free(d.addr);
            self.counters.add_drop(DropReason::TxRingFull, 1);
        }
        self.out = out;
    }

    fn maintain(&mut self, frames: &mut Frames<'_>) {
        self.underlay.maintain(frames)
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        self.underlay.poll_fds()
    }

    fn frames_held(&self) -> HeldFrames {
        self.underlay.frames_held()
    }

    fn refresh_counters(&mut self) {
        self.underlay.refresh_counters();
        self.vteps.age(Instant::now());
    }

    fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }

    fn tunnel(&self) -> Option<TunnelView> {
        Some(TunnelView {
            params: TunnelPort {
                active: 1,
                vni: self.vni,
                local: self.local,
                src_mac: self.src_mac,
                udp_port: self.udp_port,
                max_inner: self.max_inner,
                pad: 0,
            },
            remotes: self.remotes.iter().map(|r| Ipv4Addr::from(*r)).collect(),
            remote_macs: self.vteps.published(),
            next_hops: self.next_hops.words(),
        })
    }

    fn release_frames(&mut self, frames: &mut Frames<'_>) {
        self.underlay.release_frames(frames)
    }

    fn close(self: Box<Self>) -> Vec<u64> {
        let VxlanPort {
            underlay,
            next_hops,
            ..
        } = *self;
        drop(next_hops);
        Box::new(underlay).close()
    }
}
