//! What the kernel says about a network interface.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("interface {ifname:?} does not exist in this network namespace (see `ip link`; use --netns NAME for another namespace)")]
    NoSuchInterface { ifname: String },
    #[error("interface name {ifname:?} is invalid: {why}")]
    BadName { ifname: String, why: &'static str },
    #[error("querying interface {ifname}: {detail}")]
    Query { ifname: String, detail: String },
}

/// Refuses what cannot be an interface name (the kernel's own rules:
/// 1-15 bytes, not `.` or `..`, no `/`, `:` or white space), and control
/// characters. Names also become directory names under bpffs, so this is
/// what keeps `detach --iface ../..` inside it.
pub fn check_name(ifname: &str) -> Result<(), Error> {
    let bad = |why| {
        Err(Error::BadName {
            ifname: ifname.to_string(),
            why,
        })
    };
    if ifname.is_empty() || ifname.len() > 15 {
        return bad("interface names are 1-15 bytes");
    }
    if ifname == "." || ifname == ".." {
        return bad("`.` and `..` are not interface names");
    }
    if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("interface names contain no '/', ':', white space or control characters");
    }
    Ok(())
}

/// The kernel's index of `ifname` in the current network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, Error> {
    check_name(ifname)?;
    let c = CString::new(ifname).map_err(|_| Error::BadName {
        ifname: ifname.to_string(),
        why: "it contains a NUL byte",
    })?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        let e = std::io::Error::last_os_error();
        // Only ENODEV means "no such interface": if_nametoindex opens a
        // socket, and EMFILE (out of descriptors) must not read as "the
        // interface is gone", which closes its port.
        if e.raw_os_error() == Some(libc::ENODEV) {
            return Err(Error::NoSuchInterface {
                ifname: ifname.to_string(),
            });
        }
        return Err(Error::Query {
            ifname: ifname.to_string(),
            detail: format!("if_nametoindex: {e}"),
        });
    }
    Ok(index)
}

/// The name of interface `ifindex` in the current network namespace.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname(3) may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// An XDP program the kernel reports attached to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedXdp {
    /// Kernel program id.
    pub id: u32,
    /// Program name as loaded (may be truncated to 15 bytes by the kernel).
    pub name: String,
    /// "driver", "skb" or "hw".
    pub mode: &'static str,
}

/// The XDP programs attached to `ifname`, as `ip -d link` reports them.
pub fn attached_xdp(ifname: &str) -> Result<Vec<AttachedXdp>, Error> {
    Ok(parse_xdp_json(&link_details(ifname)?))
}

/// True if `ifname` is a veth whose other end lives in another network
/// namespace (a container's interface): the fast path can then deliver
/// into that end directly (`bpf_redirect_peer`).
pub fn is_veth_to_other_netns(ifname: &str) -> Result<bool, Error> {
    Ok(parse_veth_elsewhere(&link_details(ifname)?))
}

/// `ifname` in promiscuous mode for as long as this lives: a switch port
/// must receive frames for every MAC behind it, and a NIC (or a guest's
/// virtio-net, whose device filters by MAC) drops them otherwise, before
/// XDP sees them. Held as an AF_PACKET socket's `PACKET_MR_PROMISC`
/// membership, as tcpdump does: the kernel counts it with everyone
/// else's, and takes it back when the socket closes, after a crash too.
#[derive(Debug)]
pub struct Promiscuous {
    _socket: std::os::fd::OwnedFd,
}

/// Puts `ifname` in promiscuous mode until the returned guard drops.
pub fn promiscuous(ifname: &str) -> Result<Promiscuous, Error> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let index = ifindex(ifname)?;
    let fail = |what: &str| Error::Query {
        ifname: ifname.to_string(),
        detail: format!(
            "promiscuous mode ({what}): {}",
            std::io::Error::last_os_error()
        ),
    };
    // Protocol 0: the socket receives no frames; it only holds the mode.
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail("socket(AF_PACKET)"));
    }
    // SAFETY: `raw` is a new fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let mreq = libc::packet_mreq {
        mr_ifindex: index as libc::c_int,
        mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    // SAFETY: `mreq` is a live packet_mreq and its exact size is passed;
    // the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(fail("PACKET_ADD_MEMBERSHIP"));
    }
    Ok(Promiscuous { _socket: socket })
}

/// What can be known of `ifname`'s AF_XDP zero-copy before binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroCopyOutlook {
    /// A software device (veth, TAP, bridge, dummy, ...): none. ethtool
    /// shows such devices with no bus (`ethtool -i`: empty `bus-info`, or
    /// "tap"/"tun" for TUN devices); every zero-copy driver sits on one.
    Absent,
    /// The driver binds zero-copy but is known to send wrong frames in
    /// that mode: why, to tell the user.
    Unsound(&'static str),
    /// Maybe, also when the driver does not say: binding decides.
    Possible,
}

/// Why a zero-copy port on a virtio-net that is a loadable module is not
/// chosen on its own (measured on Linux 7.3, see docs/DESIGN-NOTES.md).
const VIRTIO_NET_MODULE_ZERO_COPY: &str =
    "virtio_net is a loadable module here, and its zero-copy transmit hands \
     the device a virtio-net header at a wrong address (the driver maps a \
     static of its module's memory for DMA, which resolves to another \
     physical page, in a small guest past the end of its RAM), so the host \
     reads a garbage header with every frame and may drop them all";

/// What is known of `ifname`'s zero-copy before binding (see
/// [`ZeroCopyOutlook`]).
pub fn zero_copy_outlook(ifname: &str) -> ZeroCopyOutlook {
    let Some(info) = ethtool_get(ifname, EthtoolGet::DriverInfo) else {
        return ZeroCopyOutlook::Possible;
    };
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
    // struct ethtool_drvinfo: cmd, then 32-byte strings driver, version,
    // fw_version, bus_info.
    let field = |index: usize| -> &[u8] {
        let s = &bytes[4 + index * 32..4 + (index + 1) * 32];
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    };
    // A loadable module has a `coresize` in sysfs; a built-in driver's
    // static lies in the kernel image, where the address is right.
    let is_module = |module: &str| {
        Path::new("/sys/module")
            .join(module)
            .join("coresize")
            .exists()
    };
    outlook_of(field(0), field(3), is_module)
}

/// [`zero_copy_outlook`] from ethtool's driver name and bus, and whether a
/// kernel module is loaded (not built in).
fn outlook_of(driver: &[u8], bus: &[u8], is_module: impl Fn(&str) -> bool) -> ZeroCopyOutlook {
    if bus.is_empty() || bus == b"tap" || bus == b"tun" {
        ZeroCopyOutlook::Absent
    } else if driver == b"virtio_net" && is_module("virtio_net") {
        ZeroCopyOutlook::Unsound(VIRTIO_NET_MODULE_ZERO_COPY)
    } else {
        ZeroCopyOutlook::Possible
    }
}

/// `ip -j -d link show dev IFNAME`, parsed.
fn link_details(ifname: &str) -> Result<Value, Error> {
    ifindex(ifname)?;
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", ifname])
        .output()
        .map_err(|e| Error::Query {
            ifname: ifname.to_string(),
            detail: format!("`ip -j -d link show`: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Query {
            ifname: ifname.to_string(),
            detail: format!(
                "`ip -j -d link show` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::Query {
        ifname: ifname.to_string(),
        detail: e.to_string(),
    })
}

/// A veth (`linkinfo.info_kind`) whose peer is in another namespace
/// (`link_netnsid` is present only then).
fn parse_veth_elsewhere(json: &Value) -> bool {
    let Some(link) = json.get(0) else {
        return false;
    };
    let kind = link
        .get("linkinfo")
        .and_then(|l| l.get("info_kind"))
        .and_then(Value::as_str);
    kind == Some("veth") && link.get("link_netnsid").is_some()
}

/// Reads the `xdp` object of `ip -j -d link show` output: either one
/// program (`xdp.prog`) or several (`xdp.attached[]`).
fn parse_xdp_json(json: &Value) -> Vec<AttachedXdp> {
    let Some(xdp) = json.get(0).and_then(|link| link.get("xdp")) else {
        return Vec::new();
    };
    let one = |entry: &Value| -> Option<AttachedXdp> {
        let prog = entry.get("prog")?;
        Some(AttachedXdp {
            id: prog.get("id")?.as_u64()? as u32,
            name: prog
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            mode: mode_name(entry.get("mode").and_then(Value::as_u64).unwrap_or(0)),
        })
    };
    match xdp.get("attached").and_then(Value::as_array) {
        Some(list) => list.iter().filter_map(one).collect(),
        None => one(xdp).into_iter().collect(),
    }
}

/// XDP_ATTACHED_* values from linux/if_link.h.
fn mode_name(mode: u64) -> &'static str {
    match mode {
        1 => "driver",
        2 => "skb",
        3 => "hw",
        _ => "unknown",
    }
}

/// The hardware address of `ifname`, asked through an ioctl on a socket of
/// the current network namespace (/sys/class/net shows the namespace /sys
/// was mounted in, which `--netns` does not change).
pub fn mac(ifname: &str) -> Result<[u8; 6], Error> {
    let req = ifreq_ioctl(ifname, libc::SIOCGIFHWADDR, "SIOCGIFHWADDR")?;
    // SAFETY: the kernel filled ifr_hwaddr for a successful SIOCGIFHWADDR.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut out = [0u8; 6];
    for (o, d) in out.iter_mut().zip(data.iter()) {
        *o = *d as u8;
    }
    Ok(out)
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call
    // applies to the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Keeps the calling thread, and every thread it starts from now on, off
/// `cpus` (the PMDs' CPUs) as long as some other allowed CPU remains: the
/// supervisor, the control socket and the vhost-user threads then never
/// take a PMD's CPU away from it (a PMD pins itself to its CPU afterwards,
/// outside this mask). Returns the CPUs the other threads keep, or `None`
/// when nothing was changed (no PMD CPU given, or no CPU would be left).
pub fn keep_off_cpus(cpus: &[usize]) -> std::io::Result<Option<Vec<usize>>> {
    if cpus.is_empty() {
        return Ok(None);
    }
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the
    // calling thread (pid 0); CPU_ISSET/CPU_CLR stay inside it for indexes
    // below CPU_SETSIZE, which the loop bounds.
    unsafe {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let max = libc::CPU_SETSIZE as usize;
        for &c in cpus.iter().filter(|&&c| c < max) {
            libc::CPU_CLR(c, &mut set);
        }
        let left: Vec<usize> = (0..max).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
        if left.is_empty() {
            return Ok(None);
        }
        if libc::sched_setaffinity(0, size, &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(left))
    }
}

/// The driver statistics `ethtool -S IFNAME` shows, as (name, value).
pub fn ethtool_stats(ifname: &str) -> Result<Vec<(String, u64)>, Error> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GSSET_INFO: u32 = 0x37;
    const ETHTOOL_GSTRINGS: u32 = 0x1b;
    const ETHTOOL_GSTATS: u32 = 0x1d;
    const ETH_SS_STATS: u32 = 1;
    const ETH_GSTRING_LEN: usize = 32;
    let fail = |what: &str| Error::Query {
        ifname: ifname.to_string(),
        detail: format!("{what}: {}", std::io::Error::last_os_error()),
    };
    ifindex(ifname)?;
    let fd = ioctl_socket().map_err(|_| fail("socket"))?;
    let ioctl = |data: *mut u8| -> bool {
        // SAFETY: ifreq is plain data; ifr_data points at a buffer laid out
        // for the command in its first u32, valid for the whole call.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
                *d = s as libc::c_char;
            }
            req.ifr_ifru.ifru_data = data as *mut libc::c_char;
            libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), SIOCETHTOOL, &mut req) == 0
        }
    };
    // struct ethtool_sset_info { u32 cmd; u32 reserved; u64 sset_mask; u32 data[] }
    let mut sset = [0u32; 6];
    sset[0] = ETHTOOL_GSSET_INFO;
    sset[2] = 1 << ETH_SS_STATS;
    if !ioctl(sset.as_mut_ptr() as *mut u8) {
        return Err(fail("ETHTOOL_GSSET_INFO"));
    }
    let count = if sset[2] & (1 << ETH_SS_STATS) != 0 {
        sset[4] as usize
    } else {
        0
    };
    if count == 0 {
        return Ok(Vec::new());
    }
    // struct ethtool_gstrings { u32 cmd; u32 string_set; u32 len; u8 data[] }
    let mut strings = vec![0u8; 12 + count * ETH_GSTRING_LEN];
    strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    strings[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
    strings[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
    if !ioctl(strings.as_mut_ptr()) {
        return Err(fail("ETHTOOL_GSTRINGS"));
    }
    // struct ethtool_stats { u32 cmd; u32 n_stats; u64 data[] }
    let mut stats = vec![0u64; 1 + count];
    stats[0] = ETHTOOL_GSTATS as u64 | ((count as u64) << 32);
    if !ioctl(stats.as_mut_ptr() as *mut u8) {
        return Err(fail("ETHTOOL_GSTATS"));
    }
    Ok((0..count)
        .map(|i| {
            let raw = &strings[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            (
                String::from_utf8_lossy(&raw[..end]).into_owned(),
                stats[1 + i],
            )
        })
        .collect())
}

/// Frames XDP-redirected to `ifname` that it transmitted, summed over its
/// queues (veth: `tx_queue_N_xdp_xmit`), or `None` if the driver does not
/// report it. A veth whose peer has neither an XDP program nor GRO drops
/// redirected frames without counting an error anywhere; this counter not
/// growing is the only sign.
pub fn xdp_xmit_count(ifname: &str) -> Result<Option<u64>, Error> {
    let stats = ethtool_stats(ifname)?;
    let mut found = false;
    let mut total = 0;
    for (name, v) in &stats {
        if name.ends_with("_xdp_xmit") {
            found = true;
            total += v;
        }
    }
    Ok(found.then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_copy_is_tried_on_bus_devices_except_a_virtio_net_module() {
        let module = |_: &str| true;
        let built_in = |_: &str| false;
        // veth: no bus; a TAP or TUN device: "tap" / "tun".
        assert_eq!(outlook_of(b"veth", b"", module), ZeroCopyOutlook::Absent);
        assert_eq!(outlook_of(b"tun", b"tap", module), ZeroCopyOutlook::Absent);
        assert_eq!(
            outlook_of(b"tun", b"tun", built_in),
            ZeroCopyOutlook::Absent
        );
        assert_eq!(
            outlook_of(b"ixgbe", b"0000:03:00.0", module),
            ZeroCopyOutlook::Possible
        );
        assert_eq!(
            outlook_of(b"virtio_net", b"0000:00:02.0", built_in),
            ZeroCopyOutlook::Possible
        );
        assert_eq!(
            outlook_of(b"virtio_net", b"0000:00:02.0", |m: &str| m == "virtio_net"),
            ZeroCopyOutlook::Unsound(VIRTIO_NET_MODULE_ZERO_COPY)
        );
    }

    #[test]
    fn other_threads_are_kept_off_the_pmd_cpus_unless_none_would_be_left() {
        // On a thread of its own: affinity is per thread, and inherited.
        std::thread::spawn(|| {
            assert_eq!(keep_off_cpus(&[]).unwrap(), None);
            let all: Vec<usize> = (0..4096).collect();
            assert_eq!(keep_off_cpus(&all).unwrap(), None, "no CPU would be left");
            // None: a one-CPU machine (or a mask holding only CPU 0).
            if let Some(left) = keep_off_cpus(&[0]).unwrap() {
                assert!(!left.contains(&0), "{left:?}");
                // A thread started now inherits the mask.
                let child = std::thread::spawn(|| {
                    // SAFETY: as in keep_off_cpus: plain data, this thread.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set);
                        libc::CPU_ISSET(0, &set)
                    }
                });
                assert!(!child.join().unwrap(), "a new thread runs off CPU 0");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn veth_with_its_peer_elsewhere() {
        let there: Value = serde_json::from_str(
            r#"[{"ifname":"sa","link_netnsid":0,"linkinfo":{"info_kind":"veth"}}]"#,
        )
        .unwrap();
        assert!(parse_veth_elsewhere(&there));
        let here: Value =
            serde_json::from_str(r#"[{"ifname":"sa","linkinfo":{"info_kind":"veth"}}]"#).unwrap();
        assert!(!parse_veth_elsewhere(&here));
        let tap: Value = serde_json::from_str(
            r#"[{"ifname":"t0","link_netnsid":0,"linkinfo":{"info_kind":"tun"}}]"#,
        )
        .unwrap();
        assert!(!parse_veth_elsewhere(&tap));
    }

    #[test]
    fn single_program() {
        let j: Value = serde_json::from_str(
            r#"[{"ifname":"v0","xdp":{"mode":1,"prog":{"id":42,"name":"steer","tag":"ab"}}}]"#,
        )
        .unwrap();
        assert_eq!(
            parse_xdp_json(&j),
            vec![AttachedXdp {
                id: 42,
                name: "steer".into(),
                mode: "driver"
            }]
        );
    }

    #[test]
    fn multiple_programs_and_none() {
        let j: Value = serde_json::from_str(
            r#"[{"xdp":{"mode":4,"attached":[{"mode":2,"prog":{"id":7,"name":"a"}},{"mode":1,"prog":{"id":8,"name":"b"}}]}}]"#,
        )
        .unwrap();
        let got = parse_xdp_json(&j);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id, got[0].mode), (7, "skb"));
        assert_eq!((got[1].id, got[1].mode), (8, "driver"));
        let none: Value = serde_json::from_str(r#"[{"ifname":"v0"}]"#).unwrap();
        assert!(parse_xdp_json(&none).is_empty());
    }

    #[test]
    fn loopback_has_no_driver_statistics_and_missing_is_an_error() {
        // lo has no ethtool string set: an empty list, not an error.
        assert!(ethtool_stats("lo").map(|v| v.is_empty()).unwrap_or(true));
        assert!(ethtool_stats("dp-no-such-if").is_err());
    }

    #[test]
    fn missing_interface_is_named() {
        let err = ifindex("dp-no-such-if").unwrap_err();
        assert!(err.to_string().contains("dp-no-such-if"));
    }
}

/// A datagram socket of the current network namespace: what interface
/// ioctls are issued on (it is never bound and carries nothing).
fn ioctl_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Runs one `SIOC*` ioctl on `ifname` through a socket of the current
/// network namespace; returns the filled request.
fn ifreq_ioctl(ifname: &str, request: libc::c_ulong, what: &str) -> Result<libc::ifreq, Error> {
    ifindex(ifname)?;
    let fail = |detail: String| Error::Query {
        ifname: ifname.to_string(),
        detail: format!("{what}: {detail}"),
    };
    let fd = ioctl_socket().map_err(|e| fail(e.to_string()))?;
    // SAFETY: ifreq is plain data; zeroed is a valid start.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: the SIOCGIF* requests used here read ifr_name and write one
    // field of the ifreq union, all inside `req`.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), request, &mut req) };
    if rc != 0 {
        return Err(fail(std::io::Error::last_os_error().to_string()));
    }
    Ok(req)
}

/// The MTU of `ifname`.
pub fn mtu(ifname: &str) -> Result<u32, Error> {
    let req = ifreq_ioctl(ifname, libc::SIOCGIFMTU, "SIOCGIFMTU")?;
    // SAFETY: SIOCGIFMTU filled ifru_mtu.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// Whether `ifname` is administratively up and has its link (a veth whose
/// peer is down, or a NIC without carrier, is up but not running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub admin_up: bool,
    pub running: bool,
}

impl LinkState {
    /// Frames can pass.
    pub fn carries(&self) -> bool {
        self.admin_up && self.running
    }
}

/// The link state of `ifname`.
pub fn link_state(ifname: &str) -> Result<LinkState, Error> {
    let req = ifreq_ioctl(ifname, libc::SIOCGIFFLAGS, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled ifru_flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as libc::c_int;
    Ok(LinkState {
        admin_up: flags & libc::IFF_UP != 0,
        running: flags & libc::IFF_RUNNING != 0,
    })
}

/// An ethtool query that fills a fixed-size struct of u32 words.
#[derive(Clone, Copy)]
enum EthtoolGet {
    /// ETHTOOL_GDRVINFO, struct ethtool_drvinfo: cmd, driver[32],
    /// version[32], fw_version[32], bus_info[32], erom_version[32],
    /// reserved2[12] and five u32 counts: 196 bytes.
    DriverInfo,
    /// ETHTOOL_GCHANNELS, struct ethtool_channels: cmd, max_rx, max_tx,
    /// max_other, max_combined, rx_count, tx_count, other_count,
    /// combined_count.
    Channels,
}

/// Runs `query` on `ifname` (SIOCETHTOOL); its struct as u32 words, or
/// `None` if the driver does not answer.
fn ethtool_get(ifname: &str, query: EthtoolGet) -> Option<Vec<u32>> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let (cmd, words) = match query {
        EthtoolGet::DriverInfo => (0x3, 49),
        EthtoolGet::Channels => (0x3c, 9),
    };
    let mut data = vec![0u32; words];
    data[0] = cmd;
    let fd = ioctl_socket().ok()?;
    // SAFETY: ifreq is plain data; ifr_data points at `data`, sized above
    // for the struct this command fills and valid for the whole call.
    let ok = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_data = data.as_mut_ptr() as *mut libc::c_char;
        libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), SIOCETHTOOL, &mut req) == 0
    };
    ok.then_some(data)
}

/// The number of receive queues (channels) of `ifname`, as `ethtool -l`
/// reports them; `None` if the driver does not say.
pub fn rx_queue_count(ifname: &str) -> Result<Option<u32>, Error> {
    ifindex(ifname)?;
    let Some(channels) = ethtool_get(ifname, EthtoolGet::Channels) else {
        return Ok(None);
    };
    let (rx, combined) = (channels[5], channels[8]);
    Ok(Some(rx.max(combined)).filter(|n| *n > 0))
}
