//! The applications that run inside the "container" and the "VM" of PCP and
//! PVP, and inside the guest of the VF-style emulations: two XDP programs of
//! a few instructions, assembled here and attached with a BPF link that this
//! process holds (nothing is pinned: the link, and the program, go away when
//! the handle is dropped or the process dies, so a crashed run leaves none).
//!
//! - `echo`: what a container or VM that forwards traffic back does (an L2
//!   forwarder, a router): a frame addressed to the guest's MAC, IPv4, gets
//!   destination = the sink's MAC and source = the guest's MAC and leaves
//!   through the interface it came in on (a redirect to itself, XDP_TX in
//!   effect; see `echo_program` for why not XDP_TX). Anything else (ARP, the
//!   guest's own traffic) goes to the guest's stack. It is the cheapest
//!   echo a guest can do, so the numbers measure the switch, not the guest.
//! - `redirect`: every frame from one interface out of another (the guest
//!   of a VF emulation forwarding between its two "VFs").
//!
//! Hand-assembled rather than compiled so the benchmark needs no clang.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

use super::topology::in_netns;

/// An attached XDP program; detached when dropped.
pub struct XdpLink {
    _link: OwnedFd,
}

/// Attaches the echo program to `ifname` in `netns`.
pub fn echo(netns: &str, ifname: &str, me: [u8; 6], peer: [u8; 6]) -> Result<XdpLink> {
    attach(netns, ifname, |index| Ok(echo_program(me, peer, index)))
        .with_context(|| format!("echo program on {ifname} in {netns}"))
}

/// Attaches a program redirecting everything from `from` to `to` (both in
/// `netns`).
pub fn redirect(netns: &str, from: &str, to: &str) -> Result<XdpLink> {
    let target = to.to_string();
    attach(netns, from, move |_| {
        Ok(redirect_program(ifindex(&target)?))
    })
    .with_context(|| format!("redirect program {from} -> {to} in {netns}"))
}

fn attach(
    netns: &str,
    ifname: &str,
    program: impl FnOnce(u32) -> Result<Vec<u64>> + Send,
) -> Result<XdpLink> {
    let ifname_owned = ifname.to_string();
    let link = in_netns(netns, move || {
        let index = ifindex(&ifname_owned)?;
        let insns = program(index)?;
        let prog = prog_load(&insns)?;
        link_create(&prog, index)
    })?;
    Ok(XdpLink { _link: link })
}

fn ifindex(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {ifname} here");
    }
    Ok(i)
}

// BPF instruction encoding (linux/bpf.h): code, dst|src<<4, off, imm.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst as u64 | (src as u64) << 4) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const ST_B: u8 = 0x72; // BPF_ST | BPF_MEM | BPF_B
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const JGT_X: u8 = 0x2d;
const JNE_K: u8 = 0x55;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const XDP_PASS: i32 = 2;
const BPF_FUNC_REDIRECT: i32 = 23;

fn echo_program(me: [u8; 6], peer: [u8; 6], own_ifindex: u32) -> Vec<u64> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),   // r2 = ctx->data
        insn(LDX_W, 3, 1, 4, 0),   // r3 = ctx->data_end
        insn(MOV64_X, 4, 2, 0, 0), // r4 = r2
        insn(ADD64_K, 4, 0, 0, 14),
    ];
    // Jumps to the PASS tail, patched once its position is known.
    let mut to_pass = vec![p.len()];
    p.push(insn(JGT_X, 4, 3, 0, 0)); // if data + 14 > data_end: pass
    for (i, b) in me.iter().enumerate() {
        p.push(insn(LDX_B, 5, 2, i as i16, 0));
        to_pass.push(p.len());
        p.push(insn(JNE_K, 5, 0, 0, *b as i32));
    }
    // EtherType 0x0800 read as a little-endian u16.
    p.push(insn(LDX_H, 5, 2, 12, 0));
    to_pass.push(p.len());
    p.push(insn(JNE_K, 5, 0, 0, 0x0008));
    for (i, b) in peer.iter().chain(me.iter()).enumerate() {
        p.push(insn(ST_B, 2, 0, i as i16, *b as i32));
    }
    // Back out of the interface it came in on: XDP_TX in effect, but as a
    // redirect to the own ifindex. On a veth, XDP_TX only wakes the peer's
    // NAPI if the peer has an XDP program of its own (veth_xdp_flush), so
    // towards a bridge port with only GRO it stalls after one ring (256
    // frames); a redirect goes through ndo_xdp_xmit, which always does.
    p.extend(redirect_program(own_ifindex));
    let pass = p.len();
    p.push(insn(MOV64_K, 0, 0, 0, XDP_PASS));
    p.push(insn(EXIT, 0, 0, 0, 0));
    for j in to_pass {
        let off = (pass - j - 1) as u64;
        p[j] = (p[j] & !(0xffff << 16)) | (off << 16);
    }
    p
}

fn redirect_program(target_ifindex: u32) -> Vec<u64> {
    vec![
        insn(MOV64_K, 1, 0, 0, target_ifindex as i32),
        insn(MOV64_K, 2, 0, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: bpf(2) with a zero-initialised attr buffer of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

fn put_u32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

fn prog_load(insns: &[u64]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license,
    // log_level, log_size, log_buf, kern_version, prog_flags, prog_name[16],
    // prog_ifindex, expected_attach_type.
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1);
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    attr[48..48 + 12].copy_from_slice(b"dpbench_gst\0");
    put_u32(&mut attr, 68, BPF_XDP);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new fd the kernel returned to us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            bail!(
                "loading the XDP program: {e}; verifier: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            )
        }
    }
}

fn link_create(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut attr = [0u8; 128];
    // link_create: prog_fd, target_ifindex, attach_type, flags (0: driver
    // mode where the device has it, generic otherwise, e.g. macvlan).
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    let fd = bpf(BPF_LINK_CREATE, &mut attr).map_err(|e| {
        anyhow::anyhow!(
            "attaching the XDP program (BPF_LINK_CREATE): {e}{}",
            if e.raw_os_error() == Some(libc::EBUSY) {
                " (another XDP program is attached to the interface)"
            } else {
                ""
            }
        )
    })?;
    // SAFETY: a new fd the kernel returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The VM of the PVP bridge path: a process holding a TAP's file descriptor
/// (where QEMU/vhost-net would sit) whose netdev is a bridge port, echoing
/// what is addressed to the VM's MAC towards the sink, like `echo` does. One
/// thread pinned to CPU 1, a read and a write per frame, sleeping in poll(2)
/// when idle. Stops, and the TAP goes away with its fd, on drop.
pub struct TapRelay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TapRelay {
    /// Creates TAP `ifname` in `netns` and starts echoing.
    pub fn start(netns: &str, ifname: &str, me: [u8; 6], peer: [u8; 6]) -> Result<TapRelay> {
        let name = ifname.to_string();
        let fd = in_netns(netns, move || open_tap(&name))
            .with_context(|| format!("creating TAP {ifname} in {netns}"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || relay(fd, me, peer, &flag));
        Ok(TapRelay {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TapRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_tap(name: &str) -> Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    // SAFETY: open(2) of a path literal.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!(
            "opening /dev/net/tun: {} (is the tun module loaded?)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a new fd we own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: name[16], then ifr_flags.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which ifr is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn relay(fd: OwnedFd, me: [u8; 6], peer: [u8; 6], stop: &std::sync::atomic::AtomicBool) {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed cpu_set_t with CPU 1 set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let raw = fd.as_raw_fd();
    let mut buf = vec![0u8; 2048];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, 100 ms timeout (to see `stop`).
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        loop {
            // SAFETY: reading into our buffer of its length.
            let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let f = &mut buf[..n as usize];
            if f.len() >= 14 && f[..6] == me && f[12..14] == [0x08, 0x00] {
                f[..6].copy_from_slice(&peer);
                f[6..12].copy_from_slice(&me);
                // SAFETY: writing the frame we just read.
                unsafe { libc::write(raw, f.as_ptr().cast(), f.len()) };
            }
            // Non-blocking reads until the queue is empty, then poll again.
            // SAFETY: F_SETFL on our own fd.
            unsafe { libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_of_the_echo_program_land_on_the_pass_tail() {
        let p = echo_program([1; 6], [2; 6], 7);
        let pass = p.len() - 2;
        assert_eq!(p[pass] & 0xff, MOV64_K as u64);
        assert_eq!((p[pass] >> 32) as i32, XDP_PASS);
        for (i, ins) in p.iter().enumerate() {
            let code = (ins & 0xff) as u8;
            if code == JGT_X || code == JNE_K {
                let off = ((ins >> 16) & 0xffff) as i16 as isize;
                assert_eq!(i as isize + 1 + off, pass as isize, "jump at {i}");
            }
        }
    }
}
