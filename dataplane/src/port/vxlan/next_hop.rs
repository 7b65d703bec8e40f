//! Where a VXLAN port's frames to each remote VTEP go on the underlay: the
//! next hop's MAC, from the kernel's routing and neighbour tables.
//!
//! A thread of the port keeps one word per remote: the MAC and a valid
//! bit, read by the PMD with one relaxed load per frame (no lock, no
//! syscall). It looks again whenever the kernel announces a route or
//! neighbour change, and at least once a second. A remote routed through
//! another interface than the underlay, or whose neighbour is not
//! resolved, has no next hop: its frames are dropped and counted
//! (`no_next_hop`), never sent to a wrong MAC. An unresolved neighbour is
//! resolved by the kernel itself: the thread sends one datagram toward the
//! remote through an ordinary socket (at most once a second), which makes
//! the kernel ARP for the next hop.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys::route;

/// Bit 63 of a next-hop word: the MAC in bits 0-47 is valid.
const VALID: u64 = 1 << 63;

/// How often the next hops are looked at without a change announced.
const REFRESH: Duration = Duration::from_secs(1);

/// The next hops of one port's remotes, kept by a thread until dropped.
pub struct NextHops {
    words: Arc<[AtomicU64]>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NextHops {
    /// Starts looking up `remotes` on the underlay `ifname` (`ifindex`),
    /// in the calling thread's network namespace.
    pub fn start(ifname: &str, ifindex: u32, remotes: &[Ipv4Addr]) -> std::io::Result<NextHops> {
        let words: Arc<[AtomicU64]> = remotes.iter().map(|_| AtomicU64::new(0)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut keeper = Keeper {
            ifname: ifname.to_string(),
            ifindex,
            remotes: remotes.to_vec(),
            words: words.clone(),
            states: vec![State::Unknown; remotes.len()],
            asked: vec![None; remotes.len()],
        };
        // Resolve once before the first frame; the thread keeps it fresh.
        keeper.refresh();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dataplane-vxlan".into())
            .spawn(move || keeper.run(&thread_stop))?;
        Ok(NextHops {
            words,
            stop,
            thread: Some(thread),
        })
    }

    /// The next hop's MAC toward remote `i`, if there is one.
    #[inline]
    pub fn mac(&self, i: usize) -> Option<[u8; 6]> {
        decode(self.words.get(i)?.load(Ordering::Relaxed))
    }

    /// The words themselves, for another reader (the fast path's upkeep).
    pub fn words(&self) -> Arc<[AtomicU64]> {
        self.words.clone()
    }
}

/// The MAC a next-hop word holds, if it is valid.
#[inline]
pub fn decode(w: u64) -> Option<[u8; 6]> {
    (w & VALID != 0).then(|| {
        let b = w.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    })
}

impl Drop for NextHops {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What was last found for a remote, for logging changes only.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Unknown,
    Resolved { via: Ipv4Addr, mac: [u8; 6] },
    Unresolved(String),
}

struct Keeper {
    ifname: String,
    ifindex: u32,
    remotes: Vec<Ipv4Addr>,
    words: Arc<[AtomicU64]>,
    states: Vec<State>,
    /// When the kernel was last asked to resolve each remote's next hop.
    asked: Vec<Option<Instant>>,
}

impl Keeper {
    fn run(mut self, stop: &AtomicBool) {
        let mut changes = match route::Changes::new() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    ifname = self.ifname,
                    "not told of route and neighbour changes ({e}); looking every second"
                );
                None
            }
        };
        while !stop.load(Ordering::Relaxed) {
            match &mut changes {
                // Short waits: a stop is seen within 200 ms.
                Some(c) => {
                    let deadline = Instant::now() + REFRESH;
                    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                        if c.wait(Duration::from_millis(200)) {
                            break;
                        }
                    }
                }
                None => std::thread::sleep(Duration::from_millis(200)),
            }
            self.refresh();
        }
    }

    fn refresh(&mut self) {
        for i in 0..self.remotes.len() {
            let remote = self.remotes[i];
            let state = match self.look_up(remote) {
                Ok((via, mac)) => State::Resolved { via, mac },
                Err(why) => {
                    self.ask_kernel(i);
                    State::Unresolved(why)
                }
            };
            let word = match &state {
                State::Resolved { mac, .. } => {
                    let mut b = [0u8; 8];
                    b[2..].copy_from_slice(mac);
                    u64::from_be_bytes(b) | VALID
                }
                _ => 0,
            };
            self.words[i].store(word, Ordering::Relaxed);
            if state != self.states[i] {
                match &state {
                    State::Resolved { via, mac } => tracing::info!(
                        remote = %remote,
                        ifname = self.ifname,
                        "remote VTEP {remote}: next hop {via} at {}",
                        crate::steer::policy::format_mac(mac)
                    ),
                    State::Unresolved(why) => tracing::warn!(
                        remote = %remote,
                        ifname = self.ifname,
                        "remote VTEP {remote}: no next hop ({why}); its frames are dropped and counted as no_next_hop"
                    ),
                    State::Unknown => {}
                }
                self.states[i] = state;
            }
        }
    }

    /// The next hop toward `remote` and its MAC, or why there is none.
    fn look_up(&self, remote: Ipv4Addr) -> Result<(Ipv4Addr, [u8; 6]), String> {
        let route = route::route_to(remote).map_err(|e| e.to_string())?;
        if route.oif != self.ifindex {
            let other = crate::sys::netdev::name_of(route.oif)
                .unwrap_or_else(|| format!("ifindex {}", route.oif));
            return Err(format!(
                "the kernel routes it through {other}, not the underlay {}",
                self.ifname
            ));
        }
        let via = route.next_hop(remote);
        match route::neighbour_mac(route.oif, via) {
            Ok(Some(mac)) => Ok((via, mac)),
            Ok(None) => Err(format!(
                "neighbour {via} on {} not resolved yet",
                self.ifname
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Makes the kernel resolve the next hop toward remote `i`, at most
    /// once a second.
    fn ask_kernel(&mut self, i: usize) {
        let now = Instant::now();
        if self.asked[i].is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        self.asked[i] = Some(now);
        if let Err(e) = route::request_resolution(self.remotes[i]) {
            tracing::debug!(remote = %self.remotes[i], "asking the kernel to resolve: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_holds_a_mac_and_whether_it_is_valid() {
        let words: Arc<[AtomicU64]> = [AtomicU64::new(0), AtomicU64::new(0)].into();
        let hops = NextHops {
            words: words.clone(),
            stop: Arc::new(AtomicBool::new(true)),
            thread: None,
        };
        assert_eq!(hops.mac(0), None);
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&mac);
        words[1].store(u64::from_be_bytes(b) | VALID, Ordering::Relaxed);
        assert_eq!(hops.mac(1), Some(mac));
        assert_eq!(hops.mac(2), None, "no such remote");
    }
}
