//! Container ports: the host end of a container's veth, with the
//! container's offloads kept.
//!
//! A container's stack sends TCP in segments of up to 64 KiB with the
//! checksum left to the device, as long as its veth keeps TSO. Native XDP
//! on the host end would take TSO away from the container (the kernel's
//! rule for veth), and an AF_XDP frame can carry neither a 64 KiB segment
//! nor the "checksum to be completed" mark. So a container port has no XDP
//! program at all: `steer_tc`, steer's twin at tc ingress, makes the same
//! decisions on the skb (as Cilium's veth datapath does), which leaves the
//! container's features alone and copies nothing, and sends:
//!
//! - learned unicast straight on in the kernel: the skb is redirected,
//!   offload state and all, into the other end of the destination veth
//!   (`bpf_redirect_peer`) or out of the destination device;
//! - every frame for the switch to the switch's **punt device**: a veth
//!   pair the switch owns (`dp-punt0` -> `dp-punt1`). The skb is redirected
//!   out of `dp-punt0`, whose transmit has no TSO and no checksum or VLAN
//!   offload, so the kernel segments the frame, completes its checksum and
//!   puts its VLAN tag back into the bytes there; the pieces arrive on
//!   `dp-punt1`'s rx queue numbered like the port's switch slot (the skb's
//!   `queue_mapping` picks it), where native `steer` gives them to the
//!   port's AF_XDP socket on that queue.
//!
//! Frames from the switch to the container leave through an AF_XDP socket
//! on the host end itself (transmit only).

use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

use super::afxdp::max_mtu;
use crate::steer::pins::PinRoot;
use crate::steer::{self, policy::PolicySpec, AttachOptions, Attachment, ModeRequest};
use crate::sys::netdev;

/// The punt device's transmit end (no TSO, no checksum or VLAN offload).
pub const PUNT_TX: &str = "dp-punt0";
/// The punt device's receive end (native `steer`, one AF_XDP socket per
/// container port, on the rx queue of the port's slot).
pub const PUNT_RX: &str = "dp-punt1";
/// The kernel lets native XDP onto a veth only while its peer's MTU leaves
/// a frame, its headroom and the skb's shared info within one 4 KiB page
/// (about 3 500 bytes).
const PUNT_XDP_MTU: u32 = 3500;

/// The MTU of the punt device for `frame_size`-byte UMEM frames: also the
/// largest a container port's interface may have (a longer unsegmented
/// frame would not pass the punt device).
pub fn punt_mtu(frame_size: u32) -> u32 {
    max_mtu(frame_size).min(PUNT_XDP_MTU)
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("creating the punt device {PUNT_TX}/{PUNT_RX}: `{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("punt device {PUNT_RX}: {source}")]
    Steer {
        // Boxed: steer errors are large and this one is rare.
        source: Box<steer::Error>,
    },
    #[error("punt device {PUNT_TX}: {0}")]
    Interface(#[from] netdev::Error),
}

/// The switch's punt device, shared by its container ports; removed when
/// the last of them (and the daemon) lets go.
pub struct Punt {
    tx_ifindex: u32,
    attachment: Mutex<Attachment>,
    pins: PinRoot,
}

impl Punt {
    /// Creates the pair in the current namespace (replacing one a killed
    /// switch left behind), sized for `frame_size`-byte UMEM frames, with
    /// a receive queue for each of `slots` switch port slots.
    pub fn create(pins: &PinRoot, frame_size: u32, slots: u32) -> Result<Punt, Error> {
        if netdev::ifindex(PUNT_TX).is_ok() {
            tracing::warn!("removing the punt device {PUNT_TX} a previous switch left behind");
            // Pins of the old steer on PUNT_RX go stale with it; steer's
            // attach removes stale pins.
            let _ = run(&["ip", "link", "del", PUNT_TX]);
        }
        let queues = slots.to_string();
        let mtu = punt_mtu(frame_size).to_string();
        run(&[
            "ip",
            "link",
            "add",
            PUNT_TX,
            "mtu",
            &mtu,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            PUNT_RX,
            "mtu",
            &mtu,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
        ])?;
        let punt = Self::set_up(pins, slots);
        if punt.is_err() {
            let _ = run(&["ip", "link", "del", PUNT_TX]);
        }
        punt
    }

    fn set_up(pins: &PinRoot, slots: u32) -> Result<Punt, Error> {
        // The kernel completes checksums and puts VLAN tags (802.1Q and
        // 802.1ad) back into the frame on transmit from a device that
        // offloads neither; TSO goes
        // by itself once the other end runs native XDP.
        run(&[
            "ethtool",
            "-K",
            PUNT_TX,
            "tx",
            "off",
            "txvlan",
            "off",
            "tx-vlan-stag-hw-insert",
            "off",
        ])?;
        for ifname in [PUNT_TX, PUNT_RX] {
            // No IPv6 link-local address: the device's own stack would
            // send neighbour discovery into queues no port owns.
            run(&["ip", "link", "set", ifname, "addrgenmode", "none"])?;
            run(&["ip", "link", "set", ifname, "up"])?;
        }
        let steer_err = |source| Error::Steer {
            source: Box::new(source),
        };
        steer::attach(
            pins,
            &AttachOptions {
                // The punt device's steer only hands frames to sockets,
                // one receive queue per port slot.
                fdb_entries: 1,
                queues: slots,
                ..AttachOptions::new(PUNT_RX, ModeRequest::Driver, PolicySpec::redirect_all())
            },
        )
        .map_err(steer_err)?;
        let mut attachment = Attachment::open(pins, PUNT_RX).map_err(steer_err)?;
        attachment
            .set_owner_pid(std::process::id())
            .map_err(steer_err)?;
        tracing::info!(
            "punt device {PUNT_TX} -> {PUNT_RX} up: frames container ports send to the switch are \
             segmented and checksummed there"
        );
        Ok(Punt {
            tx_ifindex: netdev::ifindex(PUNT_TX)?,
            attachment: Mutex::new(attachment),
            pins: pins.clone(),
        })
    }

    /// Ifindex of the transmit end: where `steer` on a container port
    /// sends frames for the switch.
    pub fn tx_ifindex(&self) -> u32 {
        self.tx_ifindex
    }

    /// The receive end's name.
    pub fn rx_ifname(&self) -> &str {
        PUNT_RX
    }

    /// The receive end's steer, where container ports register sockets.
    pub fn attachment(&self) -> MutexGuard<'_, Attachment> {
        // A panic while holding it left only map writes half done.
        self.attachment.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Punt {
    fn drop(&mut self) {
        if let Err(e) = steer::detach(&self.pins, PUNT_RX) {
            tracing::warn!("detaching steer from {PUNT_RX}: {e}");
        }
        match run(&["ip", "link", "del", PUNT_TX]) {
            Ok(()) => tracing::info!("punt device {PUNT_TX}/{PUNT_RX} removed"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// The punt device, made when the first container port needs it.
pub fn punt_for(
    punt: &mut Option<Arc<Punt>>,
    pins: &PinRoot,
    frame_size: u32,
    slots: u32,
) -> Result<Arc<Punt>, Error> {
    if let Some(p) = punt {
        return Ok(p.clone());
    }
    let p = Arc::new(Punt::create(pins, frame_size, slots)?);
    *punt = Some(p.clone());
    Ok(p)
}

fn run(args: &[&str]) -> Result<(), Error> {
    let failed = |detail: String| Error::Command {
        command: args.join(" "),
        detail,
    };
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| failed(format!("{e} (is {} installed?)", args[0])))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}
