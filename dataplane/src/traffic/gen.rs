//! A traffic generator that can out-run the switch on this kind of machine.
//!
//! trafgen and AF_PACKET reach ~0.5 Mpps here, and AF_XDP TX in copy mode
//! builds an skb per frame. Instead the `gen` XDP program (`forward`'s
//! redirect to the devmap slot 0 device, after writing the frame's headers
//! afresh: live-frame pages are recycled without being re-initialised, so a
//! hop downstream that rewrites a frame would otherwise change later frames
//! too) is run by the kernel itself through
//! BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: each run injects `repeat`
//! copies of one frame as xdp_frames out of the chosen interface, which is
//! how a real NIC's XDP_TX/redirect would feed the peer (no skb on the way).
//!
//! The frames are sent from the CPU that calls [`Generator::run`]; pin the
//! calling thread away from the switch's PMD core.

use std::time::{Duration, Instant};

use dataplane_common::wire::build::{write_udp_ipv4, UdpIpv4};
use dataplane_common::GEN_HEADER_LEN;
use thiserror::Error;

use crate::sys::netdev;
use crate::traffic::forward::{self, Forward};

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Netdev(#[from] netdev::Error),
    #[error(transparent)]
    Forward(#[from] forward::Error),
    #[error(
        "BPF_PROG_RUN in live-frame mode on {ifname} failed: {source} \
         (needs kernel >= 5.18 and root)"
    )]
    Run {
        ifname: String,
        source: std::io::Error,
    },
    #[error("frame size {0} is out of range: 64..=1518 bytes (including the 4-byte FCS)")]
    FrameSize(usize),
    #[error("{0} flows is out of range: 1..={MAX_FLOWS}")]
    Flows(u32),
}

/// Most flows one generator sends (a map of 42 bytes a flow: 42 MiB).
pub const MAX_FLOWS: u32 = 1 << 20;

/// Which addresses change from one flow to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Vary {
    /// Source and destination MAC: N hosts talking to N hosts.
    #[default]
    Both,
    /// Source MAC only: N hosts talking to one (a MAC flood, with many).
    Src,
    /// Destination MAC only: one host talking to N.
    Dst,
}

/// `mac` plus `i`, counted in its last five bytes (the first, with the
/// group and locally-administered bits, is kept); a group address (a
/// broadcast destination) is returned as it is.
pub fn mac_plus(mac: [u8; 6], i: u32) -> [u8; 6] {
    if mac[0] & 1 == 1 {
        return mac;
    }
    let low = u64::from_be_bytes([0, 0, 0, mac[1], mac[2], mac[3], mac[4], mac[5]]);
    let [_, _, _, b1, b2, b3, b4, b5] = (low.wrapping_add(i as u64) & 0xff_ffff_ffff).to_be_bytes();
    [mac[0], b1, b2, b3, b4, b5]
}

/// The headers of `flows` flows of frames like `spec`'s (flow 0 is
/// `spec` itself), for [`Generator::new`].
pub fn flow_headers(
    spec: &FrameSpec,
    flows: u32,
    vary: Vary,
) -> Result<Vec<[u8; GEN_HEADER_LEN]>, Error> {
    if !(1..=MAX_FLOWS).contains(&flows) {
        return Err(Error::Flows(flows));
    }
    let mut frame = build_udp_frame(spec)?;
    (0..flows)
        .map(|i| {
            let mut h = spec.headers;
            if vary != Vary::Dst {
                h.src_mac = mac_plus(h.src_mac, i);
            }
            if vary != Vary::Src {
                h.dst_mac = mac_plus(h.dst_mac, i);
            }
            write_udp_ipv4(&mut frame, &h).ok_or(Error::FrameSize(spec.size))?;
            let mut header = [0u8; GEN_HEADER_LEN];
            header.copy_from_slice(&frame[..GEN_HEADER_LEN]);
            Ok(header)
        })
        .collect()
}

/// What one generated frame looks like.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    /// Frame size on the wire including the FCS, as benchmarks count it
    /// (64 = 60 bytes of data + 4 bytes FCS that veth never carries).
    pub size: usize,
    /// Addresses and ports.
    pub headers: UdpIpv4,
}

/// Builds an Ethernet/IPv4/UDP frame of `spec.size` bytes on the wire
/// (the wire layer writes the headers; the payload is zeros).
pub fn build_udp_frame(spec: &FrameSpec) -> Result<Vec<u8>, Error> {
    if !(64..=1518).contains(&spec.size) {
        return Err(Error::FrameSize(spec.size));
    }
    let mut f = vec![0u8; spec.size - 4];
    // 60..=1514 bytes always hold the headers and fit IPv4's length.
    write_udp_ipv4(&mut f, &spec.headers).ok_or(Error::FrameSize(spec.size))?;
    Ok(f)
}

/// The loaded generator for one interface.
pub struct Generator {
    ifname: String,
    ifindex: u32,
    frame: Vec<u8>,
    forward: Forward,
}

/// Totals of a generator run.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenReport {
    /// Frames the kernel accepted for transmission.
    pub sent: u64,
    /// Frames the redirect failed for (device down, peer without XDP/GRO).
    pub failed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl GenReport {
    /// Offered load in packets per second.
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Generator {
    /// Loads `gen` (`forward` that rewrites the headers of every frame,
    /// taking `headers` in turn) with `ifname` as its target and prepares
    /// `frame`.
    pub fn new(
        ifname: &str,
        frame: Vec<u8>,
        headers: &[[u8; GEN_HEADER_LEN]],
    ) -> Result<Generator, Error> {
        let forward = Forward::load_gen(ifname, headers)?;
        Ok(Generator {
            ifname: ifname.to_string(),
            ifindex: netdev::ifindex(ifname)?,
            frame,
            forward,
        })
    }

    /// Sends `repeat` frames in one BPF_PROG_RUN (blocks until done).
    pub fn run(&self, repeat: u32) -> Result<(), Error> {
        self.forward
            .run_live(&self.frame, self.ifindex, repeat)
            .map_err(|source| Error::Run {
                ifname: self.ifname.clone(),
                source,
            })
    }

    /// Frames forwarded and failed so far (summed over CPUs).
    pub fn counts(&self) -> Result<(u64, u64), Error> {
        Ok(self.forward.counts()?)
    }

    /// Sends for `duration` (or until `count` frames, or `stop`), at most
    /// `rate` pps if given, calling `progress` about once a second.
    pub fn run_for(
        &self,
        duration: Duration,
        count: Option<u64>,
        rate: Option<u64>,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(&GenReport),
    ) -> Result<GenReport, Error> {
        let start = Instant::now();
        let (base_sent, base_failed) = self.counts()?;
        // Every BPF_PROG_RUN call costs ~20 ms of setup whatever its size,
        // so chunks are large: 1 Mi frames flat out (~70 ms here), or 40 ms
        // worth at a requested rate (paced, but in bursts of that size).
        let chunk = rate.map(|r| (r / 25).clamp(1, 1 << 20)).unwrap_or(1 << 20) as u32;
        let mut next_progress = start + Duration::from_secs(1);
        let mut issued: u64 = 0;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= duration || stop() || count.is_some_and(|c| issued >= c) {
                break;
            }
            let n = count.map_or(chunk as u64, |c| (c - issued).min(chunk as u64)) as u32;
            if let Some(r) = rate {
                // Pace: don't get ahead of rate * elapsed.
                let due = Duration::from_secs_f64(issued as f64 / r as f64);
                if due > elapsed {
                    std::thread::sleep((due - elapsed).min(Duration::from_millis(10)));
                    continue;
                }
            }
            let t = Instant::now();
            match self.run(n) {
                // A signal landed in the syscall: Ctrl-C ends the run
                // like a finished duration does; anything else retries.
                Err(Error::Run { source, .. })
                    if source.kind() == std::io::ErrorKind::Interrupted =>
                {
                    continue;
                }
                result => result?,
            }
            tracing::trace!(
                frames = n,
                took_us = t.elapsed().as_micros() as u64,
                "prog run"
            );
            issued += n as u64;
            if Instant::now() >= next_progress {
                next_progress += Duration::from_secs(1);
                let (s, f) = self.counts()?;
                progress(&GenReport {
                    sent: s - base_sent,
                    failed: f - base_failed,
                    elapsed: start.elapsed(),
                });
            }
        }
        let (s, f) = self.counts()?;
        Ok(GenReport {
            sent: s - base_sent,
            failed: f - base_failed,
            elapsed: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: usize) -> FrameSpec {
        FrameSpec {
            size,
            headers: UdpIpv4 {
                src_mac: [2, 0, 0, 0, 0, 1],
                dst_mac: [2, 0, 0, 0, 0, 2],
                src_ip: [10, 0, 0, 1],
                dst_ip: [10, 0, 0, 2],
                src_port: 9,
                dst_port: 9,
            },
        }
    }

    #[test]
    fn frame_sizes_count_the_fcs() {
        let f = build_udp_frame(&spec(64)).unwrap();
        assert_eq!(f.len(), 60);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46, "IPv4 total length");
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26, "UDP length");
        let big = build_udp_frame(&spec(1518)).unwrap();
        assert_eq!(big.len(), 1514);
    }

    #[test]
    fn flows_step_the_chosen_addresses_and_keep_the_rest() {
        let s = spec(128);
        let both = flow_headers(&s, 3, Vary::Both).unwrap();
        assert_eq!(both.len(), 3);
        assert_eq!(
            &both[0][..],
            &build_udp_frame(&s).unwrap()[..GEN_HEADER_LEN]
        );
        assert_eq!(&both[2][0..6], &[2, 0, 0, 0, 0, 4], "dst + 2");
        assert_eq!(&both[2][6..12], &[2, 0, 0, 0, 0, 3], "src + 2");
        assert_eq!(&both[2][12..], &both[0][12..], "IP and UDP as flow 0");
        let src = flow_headers(&s, 2, Vary::Src).unwrap();
        assert_eq!(
            (&src[1][0..6], &src[1][6..12]),
            (&[2, 0, 0, 0, 0, 2][..], &[2, 0, 0, 0, 0, 2][..])
        );
        assert!(matches!(
            flow_headers(&s, 0, Vary::Both),
            Err(Error::Flows(0))
        ));
        assert!(matches!(
            flow_headers(&s, MAX_FLOWS + 1, Vary::Both),
            Err(Error::Flows(_))
        ));
    }

    #[test]
    fn mac_steps_carry_and_keep_the_first_byte() {
        assert_eq!(mac_plus([2, 0, 0, 0, 0, 0xff], 1), [2, 0, 0, 0, 1, 0]);
        assert_eq!(
            mac_plus([2, 0xff, 0xff, 0xff, 0xff, 0xff], 1),
            [2, 0, 0, 0, 0, 0]
        );
        assert_eq!(mac_plus([0xff; 6], 7), [0xff; 6], "broadcast stays");
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(matches!(
            build_udp_frame(&spec(63)),
            Err(Error::FrameSize(63))
        ));
        assert!(matches!(
            build_udp_frame(&spec(1519)),
            Err(Error::FrameSize(1519))
        ));
    }
}
