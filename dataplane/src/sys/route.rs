//! The kernel's IPv4 routing and neighbour tables, read over rtnetlink: the
//! interface and next hop a packet to an address leaves by, and the MAC
//! of that next hop. A VXLAN port sends its frames where the kernel would
//! send a packet to the remote VTEP, so the underlay stays the kernel's
//! (its routes, its ARP).
//!
//! Messages are encoded and parsed by netlink-packet-route; each query is
//! one blocking request on its own socket. [`Changes`] is a socket joined
//! to the route and neighbour multicast groups, to refresh on change.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("rtnetlink: {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("rtnetlink: {what}: {detail}")]
    Protocol { what: &'static str, detail: String },
    #[error("no route to {dst} in this network namespace (`ip route get {dst}`)")]
    NoRoute { dst: Ipv4Addr },
}

/// Where the kernel sends a packet to some address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The outgoing interface.
    pub oif: u32,
    /// The gateway, for an address that is not on a link of ours.
    pub gateway: Option<Ipv4Addr>,
    /// The source address the kernel would pick.
    pub source: Option<Ipv4Addr>,
}

impl Route {
    /// The neighbour whose MAC a frame to `dst` is sent to.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        self.gateway.unwrap_or(dst)
    }
}

/// The route to `dst` (`ip route get`).
pub fn route_to(dst: Ipv4Addr) -> Result<Route, Error> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = 32;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    let mut found = None;
    let result = request(
        RouteNetlinkMessage::GetRoute(msg),
        NLM_F_REQUEST,
        "route get",
        |reply| {
            if let RouteNetlinkMessage::NewRoute(r) = reply {
                let mut route = Route {
                    oif: 0,
                    gateway: None,
                    source: None,
                };
                for a in r.attributes {
                    match a {
                        RouteAttribute::Oif(i) => route.oif = i,
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(g),
                        RouteAttribute::PrefSource(RouteAddress::Inet(s)) => route.source = Some(s),
                        _ => {}
                    }
                }
                found = Some(route);
            }
        },
    );
    match result {
        // ENETUNREACH / EHOSTUNREACH: the kernel has no route.
        Err(Error::Io { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
            ) =>
        {
            Err(Error::NoRoute { dst })
        }
        Err(e) => Err(e),
        Ok(()) => found.filter(|r| r.oif != 0).ok_or(Error::NoRoute { dst }),
    }
}

/// The MAC of neighbour `ip` on interface `ifindex`, if the kernel has a
/// usable one (reachable, stale, being confirmed, or static): stale is
/// fine, the kernel's own sends confirm it in the background.
pub fn neighbour_mac(ifindex: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, Error> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = ifindex;
    let mut mac = None;
    request(
        RouteNetlinkMessage::GetNeighbour(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
        "neighbour dump",
        |reply| {
            let RouteNetlinkMessage::NewNeighbour(n) = reply else {
                return;
            };
            let usable = matches!(
                n.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            );
            if n.header.ifindex != ifindex || !usable {
                return;
            }
            let mut dst = None;
            let mut lladdr = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
                    NeighbourAttribute::LinkLocalAddress(l) if l.len() == 6 => {
                        lladdr = Some([l[0], l[1], l[2], l[3], l[4], l[5]])
                    }
                    _ => {}
                }
            }
            if dst == Some(ip) && lladdr.is_some() {
                mac = lladdr;
            }
        },
    )?;
    Ok(mac)
}

/// Asks the kernel to resolve the next hop toward `dst` the way any program
/// would make it: one empty UDP datagram to `dst`'s discard port (9) through
/// an ordinary socket. The kernel queues it while it sends ARP requests and
/// sends it once it has the answer; the remote drops it.
pub fn request_resolution(dst: Ipv4Addr) -> Result<(), Error> {
    let socket =
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|source| Error::Io {
            what: "udp socket for neighbour resolution",
            source,
        })?;
    socket
        .send_to(&[], (dst, 9))
        .map(|_| ())
        .map_err(|source| Error::Io {
            what: "udp send for neighbour resolution",
            source,
        })
}

/// A socket joined to the kernel's IPv4 route and neighbour change groups:
/// [`wait`](Self::wait) returns when something changed (or on timeout).
pub struct Changes {
    socket: Socket,
    buf: Vec<u8>,
}

/// RTMGRP_NEIGH and RTMGRP_IPV4_ROUTE (linux/rtnetlink.h): the legacy
/// group bits of a netlink bind address.
const GROUPS: u32 = 0x4 | 0x40;

impl Changes {
    pub fn new() -> Result<Changes, Error> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|source| Error::Io {
            what: "socket",
            source,
        })?;
        socket
            .bind(&SocketAddr::new(0, GROUPS))
            .map_err(|source| Error::Io {
                what: "bind to route and neighbour groups",
                source,
            })?;
        socket.set_non_blocking(true).map_err(|source| Error::Io {
            what: "non-blocking",
            source,
        })?;
        Ok(Changes {
            socket,
            buf: vec![0; 16 << 10],
        })
    }

    /// Waits up to `timeout` for a change; true if one came. Everything
    /// queued is read, so one call answers for a burst of changes.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if ready <= 0 {
            return false;
        }
        let mut changed = false;
        // Non-blocking: read until the queue is empty (an overrun, ENOBUFS,
        // also means "something changed").
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => break,
                Ok(_) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    changed = true;
                    break;
                }
            }
        }
        changed
    }
}

/// Sends `msg` with `flags` and hands each reply message to `each` until
/// the kernel is done (the end of a dump, or the one answer of a request).
fn request(
    msg: RouteNetlinkMessage,
    flags: u16,
    what: &'static str,
    mut each: impl FnMut(RouteNetlinkMessage),
) -> Result<(), Error> {
    let io = |source| Error::Io { what, source };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    req.finalize();
    let mut out = vec![0; req.header.length as usize];
    req.serialize(&mut out[..]);
    socket.send(&out, 0).map_err(io)?;
    let dump = flags & NLM_F_DUMP != 0;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0).map_err(io)?;
        let mut offset = 0;
        while offset < size {
            let msg: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&buf[offset..size]).map_err(|e| Error::Protocol {
                    what,
                    detail: e.to_string(),
                })?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        // An acknowledgement: code 0.
                        None => Ok(()),
                        Some(code) => Err(io(std::io::Error::from_raw_os_error(-code.get()))),
                    };
                }
                NetlinkPayload::InnerMessage(m) => {
                    each(m);
                    if !dump {
                        return Ok(());
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback route exists in every namespace: no root needed.
    #[test]
    fn the_route_to_loopback_leaves_by_lo() {
        let route = route_to(Ipv4Addr::LOCALHOST).unwrap();
        let lo = crate::sys::netdev::ifindex("lo").unwrap();
        assert_eq!(route.oif, lo);
        assert_eq!(route.next_hop(Ipv4Addr::LOCALHOST), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn a_neighbour_that_does_not_exist_has_no_mac() {
        let lo = crate::sys::netdev::ifindex("lo").unwrap();
        assert_eq!(
            neighbour_mac(lo, Ipv4Addr::new(192, 0, 2, 77)).unwrap(),
            None
        );
    }
}
