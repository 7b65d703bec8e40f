//! XDP programs of dataplane.
//!
//! `steer` runs on every interface the switch owns. It parses L2, asks the
//! interface's policy whether the switch wants the frame, and either hands it
//! to the AF_XDP socket of the frame's rx queue or lets the kernel stack have
//! it. Every frame is counted under exactly one outcome. While a switch runs
//! with its fast path on, learned unicast between its ports is redirected
//! here, in the kernel, straight to the egress device (`FDB` + `PORTS`).
//!
//! `forward` redirects every frame to the device in slot 0 of its devmap. It
//! is the bare in-kernel XDP redirect (the ceiling the benchmarks compare
//! against) and, driven by BPF_PROG_RUN in live-frame mode, the traffic
//! generator of `dataplane gen`.
#![no_std]
#![no_main]

use aya_ebpf::helpers::{
    bpf_ktime_get_coarse_ns, bpf_redirect, bpf_redirect_peer, bpf_skb_vlan_pop, bpf_skb_vlan_push,
    bpf_xdp_adjust_head, bpf_xdp_adjust_meta,
};
use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map, xdp},
    maps::{Array, DevMap, HashMap, PerCpuArray, XskMap},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use dataplane_common::{
    checksum,
    counters::Outcome,
    fastpath::{
        self, Egress, FastPathDecision, FdbKey, FdbValue, PortVlans, Rewrite, TcHandoff, Tunnel,
        TunnelPort, TC_HANDOFF_MAGIC, TC_HANDOFF_PEER,
    },
    policy::{decide, udp_dst_key, MatchKey, Mode, Policy, Verdict},
    wire::{
        self,
        build::UdpIpv4,
        parse_l2,
        vxlan::{self, VXLAN_IPV4_OVERHEAD},
        EthHdr, FrameBytes, FrameBytesMut, L2Header, Plain, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q,
        ETH_P_IP, VLAN_HLEN,
    },
    GEN_HEADER_LEN, MAX_FDB, MAX_MATCHES, MAX_PORTS, MAX_QUEUES,
};

#[map]
static POLICY: Array<Policy> = Array::with_max_entries(1, 0);

#[map]
static MATCHES: HashMap<MatchKey, u8> = HashMap::with_max_entries(MAX_MATCHES, 0);

#[map]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Outcome::COUNT, 0);

#[map]
static FDB: HashMap<FdbKey, FdbValue> = HashMap::with_max_entries(MAX_FDB, 0);

#[map]
static PORTS: DevMap = DevMap::with_max_entries(MAX_PORTS, 0);

/// `PORTS` as plain ifindexes, for tc programs and hand-offs (a devmap can
/// be read by XDP programs only).
#[map]
static EGRESS: Array<u32> = Array::with_max_entries(MAX_PORTS, 0);

/// The largest inner frame a tunnel's fast path takes (a jumbo underlay's).
const MAX_TUNNEL_FRAME: usize = 9000;

/// Switch port id -> its tunnel (VXLAN) parameters; all zero for other
/// ports. Encapsulation reads the egress port's, decapsulation on an
/// underlay the entry of its own port (`Policy::port_id`).
#[map]
static TUNNELS: Array<TunnelPort> = Array::with_max_entries(MAX_PORTS, 0);

/// The VLANs this port allows when it is a listed trunk, as 4096 bits.
#[map]
static ALLOWED: Array<u64> = Array::with_max_entries(64, 0);

#[map]
static FWD_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// Frames `forward` handed to the devmap (index 0) or could not (index 1).
#[map]
static FWD_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// `echo`'s guest MAC, then the sink's MAC.
#[map]
static ECHO_MACS: Array<[u8; 12]> = Array::with_max_entries(1, 0);

/// The generator's frame headers, one entry per flow, written into every
/// frame by `gen` round robin (the loader sets the number of entries).
#[map]
static GEN_HEADER: Array<[u8; GEN_HEADER_LEN]> = Array::with_max_entries(1, 0);

/// How many entries of `GEN_HEADER` are flows (one entry).
#[map]
static GEN_FLOWS: Array<u32> = Array::with_max_entries(1, 0);

/// The flow the next frame takes. One counter, not one per CPU: a
/// generator's successive BPF_PROG_RUN calls may run on different CPUs and
/// must go on where the last one stopped; its calls never overlap (one
/// thread), so a plain read and write suffice.
#[map]
static GEN_NEXT: Array<u32> = Array::with_max_entries(1, 0);

/// Packet memory `[start, end)` of an XDP or tc context as [`FrameBytes`]:
/// every read is checked against `end` in a form the verifier can follow.
/// Made afresh after anything that moves the packet (a tag push or pop).
struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    fn of_xdp(ctx: &XdpContext) -> Packet {
        Packet {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    #[inline(always)]
    fn of_skb(ctx: &TcContext) -> Packet {
        Packet {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }
}

impl FrameBytes for Packet {
    #[inline(always)]
    fn read<T: Plain>(&self, offset: usize) -> Option<T> {
        if self.start + offset + core::mem::size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: [start + offset, start + offset + size_of::<T>()) was just
        // checked to lie inside the packet; `T: Plain` accepts any bytes;
        // `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned((self.start + offset) as *const T) })
    }
}

impl FrameBytesMut for Packet {
    #[inline(always)]
    fn write<T: Plain>(&mut self, offset: usize, value: &T) -> Option<()> {
        if self.start + offset + core::mem::size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: [start + offset, start + offset + size_of::<T>()) was just
        // checked to lie inside the packet, which the program may write
        // (XDP, and tc after the helpers that made it writable); `T: Plain`
        // has no padding; `write_unaligned` needs no alignment.
        unsafe { core::ptr::write_unaligned((self.start + offset) as *mut T, *value) };
        Some(())
    }
}

/// CLOCK_MONOTONIC for the fast path's lease, from the coarse clock: it
/// lags by at most a tick (ms), nothing next to a lease of seconds, and
/// it reads the timekeeper's last value where `bpf_ktime_get_ns` reads
/// the clocksource through an indirect call on every frame.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn count(outcome: Outcome) {
    if let Some(counter) = COUNTERS.get_ptr_mut(outcome.index()) {
        // SAFETY: per-CPU slot, and XDP programs are not preempted on their
        // CPU, so nothing else writes it concurrently.
        unsafe { *counter += 1 };
    }
}

#[xdp]
pub fn steer(ctx: XdpContext) -> u32 {
    let (action, outcome) = steer_frame(&ctx);
    count(outcome);
    action
}

#[inline(always)]
fn steer_frame(ctx: &XdpContext) -> (u32, Outcome) {
    let header = match parse_l2(&Packet::of_xdp(ctx)) {
        Ok(h) => h,
        Err(_) => {
            debug!(
                ctx,
                "malformed frame of {} bytes",
                ctx.data_end() - ctx.data()
            );
            return (xdp_action::XDP_PASS, Outcome::Malformed);
        }
    };
    let Some(policy) = POLICY.get(0) else {
        return (xdp_action::XDP_PASS, Outcome::Passed);
    };
    let mode = Mode::from_raw(policy.mode);
    // SAFETY: the lookup copies nothing out; we only test for presence.
    let listed = |key: &MatchKey| unsafe { MATCHES.get(key).is_some() };
    // The IPv4 and UDP headers are read only when a match may name them.
    let udp = match mode {
        Mode::RedirectListed => udp_dst_key(&Packet::of_xdp(ctx), &header),
        _ => None,
    };
    match decide(mode, &header, udp, listed) {
        Verdict::Pass => (xdp_action::XDP_PASS, Outcome::Passed),
        Verdict::Drop => (xdp_action::XDP_DROP, Outcome::Dropped),
        Verdict::Redirect => {
            if policy.fast_path_live(now_ns()) {
                // An underlay's steer takes only its tunnel's UDP: try to
                // decapsulate learned unicast to a local port first.
                if let Some(result) = fast_path_decap(ctx, policy) {
                    return result;
                }
                if let Some(result) = fast_path(ctx, policy, &header) {
                    return result;
                }
            }
            if policy.punt_ifindex != 0 {
                // A container port: the frame may be a 64 KiB segment with
                // its checksum left to the device, which no AF_XDP frame
                // can carry. The punt device's transmit segments it and
                // completes the checksum; its other end hands the result
                // to this port's socket there.
                let punt = TcHandoff::punt(policy.punt_ifindex, policy.punt_queue);
                if !write_handoff(ctx, punt) {
                    return (xdp_action::XDP_DROP, Outcome::Dropped);
                }
                return (xdp_action::XDP_PASS, Outcome::Punted);
            }
            // SAFETY: ctx.ctx points at the xdp_md the kernel handed us.
            let queue = unsafe { (*ctx.ctx).rx_queue_index };
            // With XDP_PASS in the flags the helper returns XDP_PASS instead of
            // redirecting when the slot has no socket: those frames reach the
            // kernel stack rather than being dropped.
            match XSKS.redirect(queue, xdp_action::XDP_PASS as u64) {
                Ok(action) => (action, Outcome::Redirected),
                Err(action) => (action, Outcome::NoSocket),
            }
        }
    }
}

/// Where learned unicast goes: the egress port, the tag change, how it
/// may be delivered, and the source's FDB entry (whose hit the caller
/// counts once the frame is on its way); `None` leaves it to userspace.
struct FastRoute {
    port: u32,
    rewrite: Rewrite,
    egress: Egress,
    tunnel: Option<Tunnel>,
    src: Option<*mut FdbValue>,
}

/// The fast-path decision for a frame of this port, shared by `steer`
/// and `steer_tc` (see `dataplane_common::fastpath`).
#[inline(always)]
fn fast_route(policy: &Policy, header: &L2Header) -> Option<FastRoute> {
    let port = PortVlans {
        mode: policy.vlan_mode,
        untagged_vlan: policy.untagged_vlan as u16,
    };
    let allowed = |vid: u16| {
        ALLOWED
            .get((vid / 64) as u32)
            .is_some_and(|word| word & (1u64 << (vid % 64)) != 0)
    };
    let vlan = fastpath::classify(port, header.vlan, allowed)?;
    // One lookup of the source: checked by `decide`, then its hit counted
    // through the same pointer (no second hash).
    let src = FDB.get_ptr_mut(&fastpath::source_key(vlan, header));
    // SAFETY: the pointer, if any, points at a live map value.
    let src_ref = src.map(|p| unsafe { &*p });
    // SAFETY: lookups copy the value out; the map outlives the program run.
    let lookup = |k: &FdbKey| unsafe { FDB.get(k).copied() };
    match fastpath::decide(policy.port_id, vlan, header, src_ref, lookup) {
        FastPathDecision::Redirect {
            port,
            rewrite,
            egress,
            tunnel,
        } => Some(FastRoute {
            port,
            rewrite,
            egress,
            tunnel,
            src,
        }),
        FastPathDecision::SlowPath => None,
    }
}

/// Counts a fast-forwarded frame on its source's FDB entry.
#[inline(always)]
fn count_hit(src: Option<*mut FdbValue>) {
    if let Some(entry) = src {
        // SAFETY: points into the map value; concurrent increments from
        // other CPUs may be lost, which only matters if *all* of them are.
        unsafe { (*entry).hits = (*entry).hits.wrapping_add(1) };
    }
}

/// Redirects learned unicast to its egress port (rewriting the VLAN tag as
/// the egress sends that VLAN, encapsulating it toward its remote VTEP when
/// the egress is a tunnel), or `None` to leave the frame to userspace.
#[inline(always)]
fn fast_path(ctx: &XdpContext, policy: &Policy, header: &L2Header) -> Option<(u32, Outcome)> {
    let route = fast_route(policy, header)?;
    send(ctx, route, header)
}

/// Decapsulates a VXLAN frame on a tunnel port's underlay whose inner frame
/// is learned unicast to a local port, and sends the inner frame there;
/// `None` (the frame untouched) leaves it to userspace: another VNI or
/// address, IPv4 options, a source not learned behind this very remote,
/// a destination behind a tunnel again.
#[inline(always)]
fn fast_path_decap(ctx: &XdpContext, policy: &Policy) -> Option<(u32, Outcome)> {
    let t = TUNNELS.get(policy.port_id)?;
    if t.active == 0 {
        return None;
    }
    let outer = vxlan::parse_outer_plain(&Packet::of_xdp(ctx)).ok()?;
    if outer.vni != t.vni
        || outer.dst_ip != t.local
        || outer.dst_port != t.udp_port
    {
        return None;
    }
    let inner = Packet {
        start: ctx.data() + VXLAN_IPV4_OVERHEAD,
        end: ctx.data_end(),
    };
    let header = parse_l2(&inner).ok()?;
    let route = fast_route(policy, &header)?;
    // SAFETY: the pointer, if any, points at a live map value.
    let src_remote = route.src.map(|p| unsafe { (*p).remote })?;
    if src_remote != outer.src_ip || route.tunnel.is_some() {
        return None;
    }
    // SAFETY: shrinking the head by the outer headers, which the frame has
    // (parse_outer read them); the helper fails rather than overrun.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, VXLAN_IPV4_OVERHEAD as i32) } != 0 {
        return Some((xdp_action::XDP_DROP, Outcome::Dropped));
    }
    // A checksum the sender left to the device arrives as bare bytes:
    // there is no skb state a hand-off could keep, so userspace finishes
    // it. Checked here, where the verifier follows the reads: the head
    // moves back over the outer headers, whose bytes are still there.
    if checksum_left_to_device(ctx, &header) {
        // SAFETY: grows the head by what it just shrank it by.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(VXLAN_IPV4_OVERHEAD as i32)) } != 0 {
            return Some((xdp_action::XDP_DROP, Outcome::Dropped));
        }
        return None;
    }
    send(ctx, route, &header)
}

/// Sends a frame as `route` says: its tag rewritten, encapsulated when the
/// egress is a tunnel, by XDP redirect or the tc hand-off.
#[inline(always)]
fn send(ctx: &XdpContext, route: FastRoute, header: &L2Header) -> Option<(u32, Outcome)> {
    let FastRoute {
        port,
        rewrite,
        egress,
        tunnel,
        src,
    } = route;
    // An XDP redirect hands the egress bare bytes. A frame whose checksum
    // the sender left to the device (read before any tag moves the
    // headers), or an egress that drops redirected frames, takes the tc
    // hand-off instead: the skb keeps its offload state. Such a frame is
    // not tunnelled here: userspace finishes its checksum first.
    let partial = checksum_left_to_device(ctx, header);
    let tunnel = match tunnel {
        Some(to) => {
            let t = TUNNELS.get(port).copied().filter(|t| t.active != 0)?;
            // A tag push adds 4 bytes: the frame must fit the overlay after
            // it. Compared as packet pointers (the verifier refuses
            // arithmetic on the packet's end), the limit clamped to a
            // bounded value.
            let grows = if matches!(rewrite, Rewrite::Push(_)) { VLAN_HLEN } else { 0 };
            let room = (t.max_inner as usize).min(MAX_TUNNEL_FRAME) - grows;
            if partial || ctx.data() + room < ctx.data_end() {
                return None;
            }
            Some((t, to))
        }
        None => None,
    };
    let handoff = !egress.takes_xdp_frames || partial;
    // Look the egress up before touching the frame: a frame that falls back
    // to userspace must arrive there as it came.
    let (action, outcome) = if handoff {
        let ifindex = EGRESS.get(port).copied().filter(|&i| i != 0)?;
        (ifindex, Outcome::FastPathTc)
    } else {
        (PORTS.redirect(port, 0).ok()?, Outcome::FastPath)
    };
    let rewritten = match rewrite {
        Rewrite::None => true,
        Rewrite::Push(vid) => push_tag(ctx, vid),
        Rewrite::Pop => pop_tag(ctx),
    };
    let encapsulated = match tunnel {
        Some((t, to)) => encapsulate(ctx, &t, to),
        None => true,
    };
    if !rewritten || !encapsulated || (handoff && !write_handoff(ctx, egress.handoff(action))) {
        return Some((xdp_action::XDP_DROP, Outcome::Dropped));
    }
    count_hit(src);
    if handoff {
        return Some((xdp_action::XDP_PASS, outcome));
    }
    Some((action, outcome))
}

/// Puts VXLAN's outer headers in front of the frame: toward `to.remote`
/// through the underlay next hop `to.next_hop`, the outer UDP source port
/// hashed from the inner flow (see `wire::vxlan`).
#[inline(always)]
fn encapsulate(ctx: &XdpContext, t: &TunnelPort, to: Tunnel) -> bool {
    let src_port = vxlan::entropy_port(&Packet::of_xdp(ctx));
    let inner_len = ctx.data_end() - ctx.data();
    // SAFETY: grows the head into the headroom (XDP_PACKET_HEADROOM, 256
    // bytes); the helper fails (nonzero) rather than leave the buffer.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(VXLAN_IPV4_OVERHEAD as i32)) } != 0 {
        return false;
    }
    let outer = UdpIpv4 {
        src_mac: t.src_mac,
        dst_mac: to.next_hop,
        src_ip: t.local,
        dst_ip: to.remote,
        src_port,
        dst_port: t.udp_port,
    };
    vxlan::encapsulate(&mut Packet::of_xdp(ctx), &outer, t.vni, inner_len).is_some()
}

/// True for a TCP/UDP frame whose checksum field holds only the
/// pseudo-header sum (see `dataplane_common::checksum`).
#[inline(always)]
fn checksum_left_to_device(ctx: &XdpContext, header: &L2Header) -> bool {
    let packet = Packet::of_xdp(ctx);
    let len = ctx.data_end() - ctx.data();
    match checksum::locate(&packet, header.header_len, header.ethertype, len) {
        Some(c) => checksum::is_partial(&packet, &c),
        None => false,
    }
}

/// Puts `handoff` in the metadata area in front of the frame, where the tc
/// program `deliver` finds it once the kernel has made the frame an skb.
#[inline(always)]
fn write_handoff(ctx: &XdpContext, handoff: TcHandoff) -> bool {
    const LEN: usize = core::mem::size_of::<TcHandoff>();
    // SAFETY: grows the metadata area into the headroom; the helper fails
    // (nonzero) rather than overlap the frame or leave the buffer.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(LEN as i32)) } != 0 {
        return false;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + LEN > data {
        return false;
    }
    // SAFETY: [meta, meta + LEN) lies inside the metadata area (checked
    // above); unaligned writes of plain integers.
    unsafe { core::ptr::write_unaligned(meta as *mut TcHandoff, handoff) };
    true
}

/// The tc half of the fast path, on the same interfaces as `steer`: an skb
/// whose metadata carries a [`TcHandoff`] is redirected where it says,
/// into the other end of a veth (`bpf_redirect_peer`: straight into the
/// container's namespace, no second pass through a backlog queue) or out
/// of a device. The skb keeps its checksum-offload and GSO state, so a
/// container's TSO segments and "checksum left to the device" survive.
/// Everything else goes on to the kernel stack untouched.
#[classifier]
pub fn deliver(ctx: TcContext) -> i32 {
    const LEN: usize = core::mem::size_of::<TcHandoff>();
    // SAFETY: ctx.skb.skb points at the __sk_buff the kernel handed us.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    if meta + LEN > ctx.data() {
        return TC_ACT_OK as i32;
    }
    // SAFETY: [meta, meta + LEN) lies inside the metadata area (checked
    // above); unaligned reads of plain integers.
    let handoff = unsafe { core::ptr::read_unaligned(meta as *const TcHandoff) };
    if handoff.magic != TC_HANDOFF_MAGIC {
        return TC_ACT_OK as i32;
    }
    let ifindex = handoff.target & !TC_HANDOFF_PEER;
    if handoff.queue != 0 {
        // SAFETY: queue_mapping is a field tc programs may write.
        unsafe { (*ctx.skb.skb).queue_mapping = handoff.queue };
    }
    let egress = Egress {
        takes_xdp_frames: false,
        veth_peer: handoff.target & TC_HANDOFF_PEER != 0,
    };
    redirect_skb(egress, ifindex)
}

/// Inserts an 802.1Q tag with `vid` after the MAC addresses.
#[inline(always)]
fn push_tag(ctx: &XdpContext, vid: u16) -> bool {
    // SAFETY: growing the head by 4 bytes of headroom the driver reserved;
    // the helper fails (nonzero) rather than overrun.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(VLAN_HLEN as i32)) } != 0 {
        return false;
    }
    wire::vlan::write_pushed_tag(&mut Packet::of_xdp(ctx), vid).is_some()
}

/// Removes the outer VLAN tag.
#[inline(always)]
fn pop_tag(ctx: &XdpContext) -> bool {
    if wire::vlan::lift_macs_over_tag(&mut Packet::of_xdp(ctx)).is_none() {
        return false;
    }
    // SAFETY: shrinking the head by 4 bytes of a frame that has them.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) == 0 }
}

/// `steer` for container ports, at tc ingress of the host end of a
/// container's veth, with no XDP program there at all: the container keeps
/// TSO and checksum offload, and no skb is copied for XDP. The decision is
/// `steer`'s; the actions are the skb's own: learned unicast is
/// redirected (into the other end of a veth where that is a container),
/// frames for the switch are redirected to the switch's punt device with
/// the port's queue (see `Policy::punt_ifindex`), the rest goes on to the
/// stack. Every frame is counted under exactly one outcome, as in `steer`.
#[classifier]
pub fn steer_tc(ctx: TcContext) -> i32 {
    let (action, outcome) = steer_skb(&ctx);
    count(outcome);
    action
}

#[inline(always)]
fn steer_skb(ctx: &TcContext) -> (i32, Outcome) {
    let skb = ctx.skb.skb;
    let packet = Packet::of_skb(ctx);
    let Ok(mut header) = parse_l2(&packet) else {
        return (TC_ACT_OK as i32, Outcome::Malformed);
    };
    // SAFETY: reads of the __sk_buff the kernel handed us.
    let (tagged, tci, tpid) = unsafe { ((*skb).vlan_present, (*skb).vlan_tci, (*skb).vlan_proto) };
    if tagged != 0 {
        // Before tc ingress the kernel moves the outer tag out of the frame
        // into the skb: that is the frame's outer tag, and what follows the
        // MAC addresses in the data is what follows that tag.
        let Some(ethertype) = packet.bytes::<2>(12) else {
            return (TC_ACT_OK as i32, Outcome::Malformed);
        };
        header.vlan = Some((tci & 0x0fff) as u16);
        header.ethertype = u16::from_be_bytes(ethertype);
        header.header_len = ETH_HLEN;
        // `vlan_proto` is in network byte order.
        header.s_tag = tpid == ETH_P_8021AD.to_be() as u32;
    }
    let Some(policy) = POLICY.get(0) else {
        return (TC_ACT_OK as i32, Outcome::Passed);
    };
    // SAFETY: the lookup copies nothing out; we only test for presence.
    let listed = |key: &MatchKey| unsafe { MATCHES.get(key).is_some() };
    // No UDP matches at tc: steer_tc serves container ports, which take
    // every frame (`listed` is for interfaces steered with XDP).
    match decide(Mode::from_raw(policy.mode), &header, None, listed) {
        Verdict::Pass => (TC_ACT_OK as i32, Outcome::Passed),
        Verdict::Drop => (TC_ACT_SHOT as i32, Outcome::Dropped),
        Verdict::Redirect => {
            if policy.fast_path_live(now_ns()) {
                if let Some(result) = fast_path_skb(skb, policy, &header) {
                    return result;
                }
            }
            if policy.punt_ifindex == 0 {
                // No punt device: this attachment cannot reach a switch.
                return (TC_ACT_OK as i32, Outcome::NoSocket);
            }
            // SAFETY: queue_mapping is a field tc programs may write; the
            // helper redirects the current skb.
            let action = unsafe {
                (*skb).queue_mapping = policy.punt_queue;
                bpf_redirect(policy.punt_ifindex, 0)
            };
            (action as i32, Outcome::Punted)
        }
    }
}

/// `fast_path` for skbs: the tag is changed in the skb's metadata, and the
/// skb is redirected as it is.
#[inline(always)]
fn fast_path_skb(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    policy: &Policy,
    header: &L2Header,
) -> Option<(i32, Outcome)> {
    let route = fast_route(policy, header)?;
    // Tunnels are encapsulated in XDP only: a container port's frames to
    // a tunnel take the slow path.
    if route.tunnel.is_some() {
        return None;
    }
    let ifindex = EGRESS.get(route.port).copied().filter(|&i| i != 0)?;
    // SAFETY: helper calls on the current skb.
    let rewritten = unsafe {
        match route.rewrite {
            Rewrite::None => 0,
            Rewrite::Push(vid) => bpf_skb_vlan_push(skb, ETH_P_8021Q.to_be(), vid),
            Rewrite::Pop => bpf_skb_vlan_pop(skb),
        }
    };
    if rewritten != 0 {
        return Some((TC_ACT_SHOT as i32, Outcome::Dropped));
    }
    count_hit(route.src);
    Some((redirect_skb(route.egress, ifindex), Outcome::FastPathTc))
}

/// Redirects the current skb to `ifindex`: into the other end of a veth
/// (`bpf_redirect_peer`) or out of the device.
#[inline(always)]
fn redirect_skb(egress: Egress, ifindex: u32) -> i32 {
    // SAFETY: plain helper calls on the current skb. Both answer
    // TC_ACT_REDIRECT; a target that has vanished meanwhile makes the
    // redirect drop the skb (counted by the kernel as a tx drop).
    (unsafe {
        if egress.veth_peer {
            bpf_redirect_peer(ifindex, 0)
        } else {
            bpf_redirect(ifindex, 0)
        }
    }) as i32
}

#[xdp]
pub fn forward(_ctx: XdpContext) -> u32 {
    redirect_to_fwd_port()
}

#[inline(always)]
fn redirect_to_fwd_port() -> u32 {
    let (action, slot) = match FWD_PORT.redirect(0, 0) {
        Ok(action) => (action, 0),
        Err(action) => (action, 1),
    };
    if let Some(counter) = FWD_COUNT.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; XDP programs are not preempted on their CPU.
        unsafe { *counter += 1 };
    }
    action
}

/// The benchmarks' guest that sends traffic back (an L2 forwarder, a
/// router in a container or VM): an IPv4 frame addressed to the guest's MAC
/// gets destination = the sink's MAC and source = the guest's, and leaves
/// through `FWD_PORT`, which the loader sets to the interface the program
/// is attached to. Anything else (ARP, the guest's own traffic) goes to the
/// guest's stack. A redirect rather than XDP_TX: on a veth, XDP_TX only
/// wakes the peer's NAPI if the peer has an XDP program of its own
/// (veth_xdp_flush), so towards a bridge port with only GRO it stalls after
/// one ring (256 frames); a redirect goes through ndo_xdp_xmit, which
/// always does.
#[xdp]
pub fn echo(ctx: XdpContext) -> u32 {
    let Some(macs) = ECHO_MACS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let mut packet = Packet::of_xdp(&ctx);
    let Some(eth) = packet.read::<EthHdr>(0) else {
        return xdp_action::XDP_PASS;
    };
    let guest: [u8; 6] = [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]];
    let sink: [u8; 6] = [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]];
    if !same_mac(&eth.dst_addr, &guest) || eth.ether_type != ETH_P_IP.to_be() {
        return xdp_action::XDP_PASS;
    }
    let answer = EthHdr {
        dst_addr: sink,
        src_addr: guest,
        ether_type: eth.ether_type,
    };
    if packet.write(0, &answer).is_none() {
        return xdp_action::XDP_PASS;
    }
    redirect_to_fwd_port()
}

/// MAC equality without a `bcmp` call, which BPF has no way to make.
#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])
        == 0
}

/// `forward` for the generator. BPF_PROG_RUN in live-frame mode recycles its
/// pages without copying the frame into them again, and redirected frames
/// travel by reference: whatever a hop downstream wrote into a frame (a
/// guest's MAC rewrite, a VLAN push) would come back in later frames sent
/// from the same page. So the headers are written afresh every time.
/// With several flows, frame k of the generator takes flow k mod flows.
#[xdp]
pub fn gen(ctx: XdpContext) -> u32 {
    let flows = GEN_FLOWS.get(0).copied().unwrap_or(1);
    let mut flow = 0;
    if let Some(next) = GEN_NEXT.get_ptr_mut(0) {
        // SAFETY: a valid map value pointer; only one generator call runs
        // the program at a time (see GEN_NEXT), so nothing races on it.
        unsafe {
            flow = if *next >= flows { 0 } else { *next };
            *next = flow + 1;
        }
    }
    if let Some(header) = GEN_HEADER.get(flow) {
        // A frame shorter than the headers is sent as it is.
        let _ = Packet::of_xdp(&ctx).write(0, header);
    }
    redirect_to_fwd_port()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
