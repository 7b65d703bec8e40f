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

use thiserror::Error;

use crate::forward::{self, Forward};
use crate::netdev;

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
}

/// What one generated frame looks like.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    /// Frame size on the wire including the FCS, as benchmarks count it
    /// (64 = 60 bytes of data + 4 bytes FCS that veth never carries).
    pub size: usize,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

/// Builds an Ethernet/IPv4/UDP frame with a valid IPv4 header checksum (a
/// Linux bridge with br_netfilter drops bad ones) and no UDP checksum.
pub fn build_udp_frame(spec: &FrameSpec) -> Result<Vec<u8>, Error> {
    if !(64..=1518).contains(&spec.size) {
        return Err(Error::FrameSize(spec.size));
    }
    let len = spec.size - 4;
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&spec.dst_mac);
    f[6..12].copy_from_slice(&spec.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&spec.src_ip);
    ip[16..20].copy_from_slice(&spec.dst_ip);
    let csum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&spec.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&spec.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    Ok(f)
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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
    /// Loads `gen` (`forward` that rewrites the headers of every frame) with
    /// `ifname` as its target and prepares `frame`.
    pub fn new(ifname: &str, frame: Vec<u8>) -> Result<Generator, Error> {
        let forward = Forward::load_gen(ifname, &frame)?;
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
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: [10, 0, 0, 1],
            dst_ip: [10, 0, 0, 2],
            src_port: 9,
            dst_port: 9,
        }
    }

    #[test]
    fn frame_layout_and_checksum() {
        let f = build_udp_frame(&spec(64)).unwrap();
        assert_eq!(f.len(), 60);
        // A correct header sums to 0xffff (checksum of it is 0).
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26);
        let big = build_udp_frame(&spec(1518)).unwrap();
        assert_eq!(big.len(), 1514);
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
