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
//! - `tap_echo`: the VM of the bridge's PVP path, `dataplane echo --tap`,
//!   a process on a TAP's file descriptor.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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
fn attached(netns: &str, ifname: &str, child: Child) -> Result<Child> {
    ready(child, &format!("an XDP program on {ifname}"), || {
        let out = Command::new("ip")
            .args(["-n", netns, "-d", "link", "show", "dev", ifname])
            .output()
            .context("running ip")?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
    })
}

/// Polls `done` until it holds (returns the child) or 10 s pass (kills it);
/// if the child exits first, fails with what it said on stderr.
fn ready(mut child: Child, what: &str, done: impl Fn() -> Result<bool>) -> Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut said = String::new();
            if let Some(mut err) = child.stderr.take() {
                use std::io::Read;
                let _ = err.read_to_string(&mut said);
            }
            bail!("exited ({status}) before {what}: {}", said.trim());
        }
        if done()? {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no {what} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the VM of the PVP bridge path: `dataplane echo --tap`, a process
/// holding TAP `ifname` in `netns` (where QEMU/vhost-net would sit) that
/// answers what is addressed to `me` towards `peer`, like `echo` does,
/// pinned to CPU 1; returns once the TAP exists. The TAP goes away with the
/// process.
pub fn tap_echo(dp: &Dataplane, netns: &str, ifname: &str, me: &str, peer: &str) -> Result<Child> {
    let args = [
        "echo", "--tap", ifname, "--mac", me, "--peer", peer, "--core", "1",
    ];
    let child = dp.spawn(netns, &args)?;
    ready(child, &format!("TAP {ifname}"), || {
        let out = Command::new("ip")
            .args(["-n", netns, "link", "show", "dev", ifname])
            .output()
            .context("running ip")?;
        Ok(out.status.success())
    })
    .with_context(|| format!("echo on TAP {ifname} in {netns}"))
}
