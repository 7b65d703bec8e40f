//! The applications that run inside the "container" and the "VM" of PCP and
//! PVP, and inside the guest of the VF-style emulations. The XDP ones are
//! the project's own programs, run by the project's own binary in the
//! guest's namespace (`dataplane echo`, `dataplane forward`: aya loads them
//! from the same object as the switch's); each is a child process that
//! detaches its program when interrupted, so a crashed run leaves none.
//!
//! - `echo`: what a container or VM that forwards traffic back does (an L2
//!   forwarder, a router): a frame addressed to the guest's MAC, IPv4, gets
//!   destination = the sink's MAC and source = the guest's MAC and leaves
//!   through the interface it came in on. Anything else (ARP, the guest's
//!   own traffic) goes to the guest's stack. It is the cheapest echo a
//!   guest can do, so the numbers measure the switch, not the guest.
//! - `redirect`: every frame from one interface out of another (the guest
//!   of a VF emulation forwarding between its two "VFs").
//! - [`TapRelay`]: the VM of the bridge's PVP path, a process on a TAP fd.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::topology::in_netns;
use super::traffic::Dataplane;

/// Starts `dataplane echo` on `ifname` in `netns`, answering towards
/// `peer`; returns once its program is attached.
pub fn echo(dp: &Dataplane, netns: &str, ifname: &str, peer: &str) -> Result<Child> {
    let child = dp.spawn(netns, &["echo", "--iface", ifname, "--peer", peer])?;
    attached(netns, ifname, child).with_context(|| format!("echo on {ifname} in {netns}"))
}

/// Starts `dataplane forward` from `from` to `to` (both in `netns`), in
/// generic XDP where `generic` says so (macvlan has no native XDP);
/// returns once its program is attached.
pub fn redirect(dp: &Dataplane, netns: &str, from: &str, to: &str, generic: bool) -> Result<Child> {
    let mut args = vec!["forward", "--from", from, "--to", to];
    if generic {
        args.push("--generic");
    }
    let child = dp.spawn(netns, &args)?;
    attached(netns, from, child).with_context(|| format!("redirect {from} -> {to} in {netns}"))
}

/// Waits until `ifname` in `netns` has an XDP program (the child's), or
/// fails with what the child said if it exits first.
fn attached(netns: &str, ifname: &str, mut child: Child) -> Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut said = String::new();
            if let Some(mut err) = child.stderr.take() {
                use std::io::Read;
                let _ = err.read_to_string(&mut said);
            }
            bail!("exited ({status}) before attaching: {}", said.trim());
        }
        let out = Command::new("ip")
            .args(["-n", netns, "-d", "link", "show", "dev", ifname])
            .output()
            .context("running ip")?;
        if String::from_utf8_lossy(&out.stdout).contains("prog/xdp") {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no XDP program on {ifname} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
