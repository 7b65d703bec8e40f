//! Round-trip latency through the path at low load: a UDP ping-pong between
//! the generator's namespace (a0, 10.200.0.1) and the sink's (b0,
//! 10.200.0.2), timestamps taken in this process, one request at a time at
//! about 2 kHz. `dataplane gen` is not used: it paces in 40 ms bursts.
//!
//! The request goes to the MAC the throughput frames go to (the sink, the
//! container or the VM: a static neighbour on a0), so it takes the same way
//! through the path; the reply goes from b0 straight back to a0 through the
//! switch (the guest echoes only frames addressed to it). Both ends use
//! their kernel stacks: the stack's share is the same for every path.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::topology::{in_netns, ip, Topology};
use super::traffic::Dataplane;

const PORT: u16 = 7077;
const WARMUP: usize = 50;

#[derive(Clone, Debug)]
pub struct Latency {
    pub rounds: usize,
    pub lost: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Measures `rounds` round trips with the path running; the sink passes
/// frames to b0's stack meanwhile, and goes back to dropping afterwards.
pub fn through_path(
    topo: &Topology,
    dp: &Dataplane,
    target_mac: &str,
    rounds: usize,
) -> Result<Latency> {
    ip(&[
        "-n",
        &topo.ns("a"),
        "neigh",
        "replace",
        "10.200.0.2",
        "lladdr",
        target_mac,
        "dev",
        "a0",
        "nud",
        "permanent",
    ])?;
    dp.sink_policy(topo, "pass")?;
    let result = ping_pong(&topo.ns("a"), &topo.ns("b"), rounds);
    dp.sink_policy(topo, "drop")?;
    result
}

fn ping_pong(client_ns: &str, server_ns: &str, rounds: usize) -> Result<Latency> {
    let done = AtomicBool::new(false);
    // Bound before the client starts, so no request finds a closed port.
    let server = in_netns(server_ns, || {
        let s = UdpSocket::bind(("10.200.0.2", PORT))
            .context("binding the latency reflector on 10.200.0.2")?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(s)
    })?;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], from);
                }
            }
        });
        let result = in_netns(client_ns, || {
            let c = UdpSocket::bind(("10.200.0.1", 0))?;
            c.connect(("10.200.0.2", PORT))?;
            c.set_read_timeout(Some(Duration::from_millis(20)))?;
            let mut rtts = Vec::with_capacity(rounds);
            let mut lost = 0;
            let mut warm_replies = 0;
            let mut buf = [0u8; 64];
            let interval = Duration::from_micros(500);
            for seq in 0..(WARMUP + rounds) as u64 {
                // 18 bytes of payload: the smallest (64-byte) frames.
                let mut msg = [0u8; 18];
                msg[..8].copy_from_slice(&seq.to_le_bytes());
                let t0 = Instant::now();
                c.send(&msg)?;
                let rtt = loop {
                    match c.recv(&mut buf) {
                        Ok(n) if n >= 8 && buf[..8] == msg[..8] => break Some(t0.elapsed()),
                        // A late reply to an earlier request: keep waiting.
                        Ok(_) => continue,
                        Err(_) => break None,
                    }
                };
                if (seq as usize) < WARMUP {
                    warm_replies += rtt.is_some() as usize;
                    if seq as usize == WARMUP - 1 && warm_replies == 0 {
                        bail!("no reply to {WARMUP} requests: the path does not carry UDP from a0 to b0 and back");
                    }
                } else {
                    match rtt {
                        Some(d) => rtts.push(d.as_secs_f64() * 1e6),
                        None => lost += 1,
                    }
                }
                if let Some(rest) = interval.checked_sub(t0.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            Ok((rtts, lost))
        });
        done.store(true, Ordering::Relaxed);
        let (mut rtts, lost) = result?;
        if rtts.is_empty() {
            bail!("no reply in {rounds} round trips: the path does not carry UDP from a0 to b0 and back");
        }
        rtts.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
        Ok(Latency {
            rounds,
            lost,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            max_us: rtts[rtts.len() - 1],
        })
    })
}
