//! [`Attachment`]: an existing attachment opened through its pins, the
//! handle the switch and `status` use (policy, sockets, counters, the
//! fast path's maps).

use std::os::fd::RawFd;

use aya::maps::{Array, DevMap, HashMap, Map, MapData, MapError, PerCpuArray, XskMap};
use dataplane_common::counters::Outcome;
use dataplane_common::fastpath::{FdbKey, FdbValue, Tunnel, TunnelPort};
use dataplane_common::map_names;
use dataplane_common::policy::{AttachMode, MatchKey, Mode, Policy};

use super::attach::lease_end;
use super::pins::PinRoot;
use super::policy::PolicySpec;
use super::Error;
use crate::sys::netdev;

/// Outcome counters of one interface, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters([u64; Outcome::COUNT as usize]);

impl Counters {
    /// Frames counted under `outcome`.
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome.index() as usize]
    }

    /// All frames the program saw.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `self - earlier`, per outcome (for rates).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = [0; Outcome::COUNT as usize];
        for (i, v) in d.iter_mut().enumerate() {
            *v = self.0[i].saturating_sub(earlier.0[i]);
        }
        Counters(d)
    }
}

/// An existing attachment, opened through its pins.
pub struct Attachment {
    ifname: String,
    policy: Array<MapData, Policy>,
    matches: HashMap<MapData, MatchKey, u8>,
    xsks: XskMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    fdb: HashMap<MapData, FdbKey, FdbValue>,
    ports: DevMap<MapData>,
    egress: Array<MapData, u32>,
    tunnels: Array<MapData, TunnelPort>,
    allowed: Array<MapData, u64>,
}

impl Attachment {
    /// Opens the pinned maps of `ifname`.
    pub fn open(root: &PinRoot, ifname: &str) -> Result<Attachment, Error> {
        netdev::check_name(ifname)?;
        let pins = root.interface(ifname);
        if !pins.exist() {
            return Err(Error::NotAttached {
                ifname: ifname.to_string(),
            });
        }
        let map = |name: &'static str| -> Result<Map, Error> {
            let data = MapData::from_pin(pins.map(name)).map_err(|source| Error::Map {
                ifname: ifname.to_string(),
                name,
                source,
            })?;
            Map::from_map_data(data).map_err(|source| Error::Map {
                ifname: ifname.to_string(),
                name,
                source,
            })
        };
        let typed = |name: &'static str, source: MapError| Error::Map {
            ifname: ifname.to_string(),
            name,
            source,
        };
        Ok(Attachment {
            ifname: ifname.to_string(),
            policy: map(map_names::POLICY)?
                .try_into()
                .map_err(|e| typed(map_names::POLICY, e))?,
            matches: map(map_names::MATCHES)?
                .try_into()
                .map_err(|e| typed(map_names::MATCHES, e))?,
            xsks: map(map_names::XSKS)?
                .try_into()
                .map_err(|e| typed(map_names::XSKS, e))?,
            counters: map(map_names::COUNTERS)?
                .try_into()
                .map_err(|e| typed(map_names::COUNTERS, e))?,
            fdb: map(map_names::FDB)?
                .try_into()
                .map_err(|e| typed(map_names::FDB, e))?,
            ports: map(map_names::PORTS)?
                .try_into()
                .map_err(|e| typed(map_names::PORTS, e))?,
            egress: map(map_names::EGRESS)?
                .try_into()
                .map_err(|e| typed(map_names::EGRESS, e))?,
            tunnels: map(map_names::TUNNELS)?
                .try_into()
                .map_err(|e| typed(map_names::TUNNELS, e))?,
            allowed: map(map_names::ALLOWED)?
                .try_into()
                .map_err(|e| typed(map_names::ALLOWED, e))?,
        })
    }

    /// The interface this attachment steers.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Sends frames of rx queue `queue` to the AF_XDP socket `fd`.
    pub fn register_socket(&mut self, queue: u32, fd: RawFd) -> Result<(), Error> {
        self.xsks
            .set(queue, fd, 0)
            .map_err(|source| self.map_error(map_names::XSKS, source))
    }

    /// Stops redirecting rx queue `queue` (its frames go to the kernel again).
    pub fn unregister_socket(&mut self, queue: u32) -> Result<(), Error> {
        self.xsks
            .unset(queue)
            .map_err(|source| self.map_error(map_names::XSKS, source))
    }

    /// Turns the in-kernel fast path on for this interface as switch port
    /// `port_id`: untagged frames belong to `untagged_vlan`, tagged ones are
    /// classified by `vlan_mode` (`fastpath::vlan_mode`) and, for a listed
    /// trunk, the `allowed` bitmap.
    pub fn enable_fast_path(
        &mut self,
        port_id: u32,
        untagged_vlan: u16,
        vlan_mode: u32,
        allowed: &[u64; 64],
    ) -> Result<(), Error> {
        for (i, word) in allowed.iter().enumerate() {
            self.allowed
                .set(i as u32, word, 0)
                .map_err(|source| self.map_error(map_names::ALLOWED, source))?;
        }
        self.update_policy(|p| {
            p.fast_path = 1;
            p.port_id = port_id;
            p.untagged_vlan = untagged_vlan as u32;
            p.vlan_mode = vlan_mode;
            p.fast_path_until = lease_end();
        })
    }

    /// Renews the fast path's lease (see `Policy::fast_path_until`).
    pub fn renew_fast_path(&mut self) -> Result<(), Error> {
        self.update_policy(|p| p.fast_path_until = lease_end())
    }

    /// The `dataplane run` that owns this attachment (0: none, a user's).
    pub fn owner_pid(&self) -> Result<u32, Error> {
        let p = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        Ok(p.owner_pid)
    }

    /// Records which `dataplane run` owns this attachment (0: none).
    pub fn set_owner_pid(&mut self, pid: u32) -> Result<(), Error> {
        self.update_policy(|p| p.owner_pid = pid)
    }

    /// Turns the fast path off and forgets its FDB entries and ports.
    /// Makes this a container port's steer: frames for the switch go to
    /// the punt device `ifindex` and arrive on its rx queue `queue` (see
    /// `Policy::punt_ifindex`); `None` sends them to this interface's own
    /// AF_XDP sockets again.
    pub fn set_punt(&mut self, punt: Option<(u32, u32)>) -> Result<(), Error> {
        self.update_policy(|p| {
            (p.punt_ifindex, p.punt_queue) = match punt {
                Some((ifindex, queue)) => (ifindex, queue + 1),
                None => (0, 0),
            };
        })
    }

    pub fn disable_fast_path(&mut self) -> Result<(), Error> {
        self.update_policy(|p| {
            p.fast_path = 0;
            p.fast_path_until = 0;
        })?;
        let keys: Vec<FdbKey> = self.fdb.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.fdb.remove(&k);
        }
        for port in 0..self.ports.len() {
            let _ = self.ports.set(port, 0, None, 0).ok();
            let _ = self.egress.set(port, 0, 0).ok();
            let _ = self.tunnels.set(port, TunnelPort::default(), 0).ok();
        }
        Ok(())
    }

    /// Makes switch port `port_id` a tunnel for the fast path (an all-zero
    /// `tunnel` makes it an ordinary port again).
    pub fn set_tunnel(&mut self, port_id: u32, tunnel: TunnelPort) -> Result<(), Error> {
        self.tunnels
            .set(port_id, tunnel, 0)
            .map_err(|e| self.map_error(map_names::TUNNELS, e))
    }

    /// Lets the fast path redirect to switch port `port_id` (device `ifindex`).
    pub fn set_fast_port(&mut self, port_id: u32, ifindex: u32) -> Result<(), Error> {
        let failed = |source| Error::FastPort {
            ifname: self.ifname.clone(),
            port_id,
            source,
        };
        self.ports.set(port_id, ifindex, None, 0).map_err(failed)?;
        self.egress
            .set(port_id, ifindex, 0)
            .map_err(|e| self.map_error(map_names::EGRESS, e))
    }

    /// Installs or moves a learned address for the fast path. `flags`:
    /// `FDB_REDIRECT` if frames to it may be redirected to `port` (else it
    /// only serves as a known source), `FDB_TAGGED` if `port` sends `vlan`
    /// tagged, `FDB_TUNNEL` if `port` is a tunnel and `remote` says where
    /// (a source behind a tunnel carries its remote without the flag too:
    /// decapsulation checks it).
    pub fn fdb_insert(
        &mut self,
        vlan: u16,
        mac: [u8; 6],
        port: u32,
        flags: u32,
        remote: Option<Tunnel>,
    ) -> Result<(), Error> {
        let key = FdbKey { mac, vlan };
        let mut value = FdbValue::new(port, flags);
        if let Some(t) = remote {
            value.remote = t.remote;
            value.next_hop = t.next_hop;
        }
        self.fdb
            .insert(key, value, 0)
            .map_err(|source| self.map_error(map_names::FDB, source))
    }

    /// Removes a learned address from the fast path (absent is fine).
    pub fn fdb_remove(&mut self, vlan: u16, mac: [u8; 6]) {
        let _ = self.fdb.remove(&FdbKey { mac, vlan });
    }

    /// Frames from this address the fast path forwarded (change = alive).
    pub fn fdb_hits(&self, vlan: u16, mac: [u8; 6]) -> Option<u64> {
        self.fdb.get(&FdbKey { mac, vlan }, 0).ok().map(|v| v.hits)
    }

    /// Entries in the fast-path FDB.
    pub fn fdb_len(&self) -> usize {
        self.fdb.keys().filter(Result::is_ok).count()
    }

    fn update_policy(&mut self, f: impl FnOnce(&mut Policy)) -> Result<(), Error> {
        let mut p = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        f(&mut p);
        self.policy
            .set(0, p, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))
    }

    /// Replaces the policy (mode and match table).
    pub fn set_policy(&mut self, spec: &PolicySpec) -> Result<(), Error> {
        let keys: Vec<MatchKey> = self.matches.keys().filter_map(Result::ok).collect();
        for key in keys.iter().filter(|k| !spec.matches.contains(k)) {
            let _ = self.matches.remove(key);
        }
        for key in &spec.matches {
            self.matches
                .insert(key, 1, 0)
                .map_err(|source| self.map_error(map_names::MATCHES, source))?;
        }
        let mut current = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        current.mode = spec.mode as u32;
        self.policy
            .set(0, current, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))
    }

    /// The current steering mode.
    pub fn mode(&self) -> Result<Mode, Error> {
        let p = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        Ok(Mode::from_raw(p.mode))
    }

    /// How the program was attached (recorded at attach time).
    pub fn attach_mode(&self) -> Result<Option<AttachMode>, Error> {
        let p = self
            .policy
            .get(&0, 0)
            .map_err(|source| self.map_error(map_names::POLICY, source))?;
        Ok(AttachMode::from_raw(p.attach_mode))
    }

    /// Number of entries in the match table.
    pub fn match_count(&self) -> usize {
        self.matches.keys().filter(Result::is_ok).count()
    }

    /// Outcome counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, Error> {
        let mut c = Counters::default();
        for outcome in Outcome::ALL {
            let per_cpu = self
                .counters
                .get(&outcome.index(), 0)
                .map_err(|source| self.map_error(map_names::COUNTERS, source))?;
            c.0[outcome.index() as usize] = per_cpu.iter().sum();
        }
        Ok(c)
    }

    fn map_error(&self, name: &'static str, source: MapError) -> Error {
        Error::Map {
            ifname: self.ifname.clone(),
            name,
            source,
        }
    }
}
