//! Network namespaces and veth pairs that remove themselves ([`Topology`],
//! [`NetNs`]), the star topology around a switch namespace, MACs, ping.

use super::*;

/// A set of namespaces and veths with names unique to this test run.
pub struct Topology {
    prefix: String,
    namespaces: Vec<NetNs>,
}

impl Topology {
    /// `tag` names the test in the namespace names (`dpt-<tag>-<pid>-<n>-...`).
    pub fn new(tag: &str) -> Topology {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Topology {
            prefix: format!("dpt-{tag}-{}-{n}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    /// Creates a namespace `<prefix>-<short>` with loopback up and IPv6 off
    /// (no router solicitations or DAD frames to disturb exact counts).
    pub fn netns(&mut self, short: &str) -> NetNs {
        let ns = NetNs {
            name: format!("{}-{short}", self.prefix),
        };
        run_ok(Command::new("ip").args(["netns", "add", &ns.name]));
        // Registered before anything else can fail, so drop removes it.
        self.namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"]);
        for key in ["all", "default"] {
            ns.exec_ok(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
            ]);
        }
        ns
    }

    /// Creates a veth pair `a.1` in `a.0` and `b.1` in `b.0`, both up.
    pub fn veth(&mut self, a: (&NetNs, &str), b: (&NetNs, &str)) {
        run_ok(Command::new("ip").args([
            "-n", &a.0.name, "link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns",
            &b.0.name,
        ]));
        a.0.ip(&["link", "set", a.1, "up"]);
        b.0.ip(&["link", "set", b.1, "up"]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Pins live in the host's bpffs, keyed by namespace inode: remove
            // ours before the namespace (and its inode) goes away.
            if let Ok(inode) = ns.inode() {
                remove_pin_dir(&PathBuf::from(BPFFS).join(format!("dataplane/ns{inode}")));
            }
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).status();
        }
        let _ = std::fs::remove_dir(PathBuf::from(BPFFS).join("dataplane"));
    }
}

fn remove_pin_dir(dir: &PathBuf) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_pin_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A network namespace of a [`Topology`].
#[derive(Clone, Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Full name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Inode of the namespace (what dataplane's pin paths are keyed by).
    pub fn inode(&self) -> std::io::Result<u64> {
        Ok(std::fs::metadata(format!("/var/run/netns/{}", self.name))?.ino())
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NS ARGS`, whatever its result.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// `ip netns exec NS ARGS`, which must succeed.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the freshly built `dataplane` binary with `--netns NS`.
    pub fn dataplane(&self, args: &[&str]) -> Output {
        Command::new(dataplane_bin())
            .args(["--netns", &self.name])
            .args(args)
            .output()
            .expect("run dataplane")
    }

    /// Like [`NetNs::dataplane`], but the command must succeed; returns stdout.
    pub fn dataplane_ok(&self, args: &[&str]) -> String {
        let out = self.dataplane(args);
        assert!(
            out.status.success(),
            "dataplane {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace (setns only
    /// changes the calling thread, so the test's own thread stays put).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).expect("open netns");
                // SAFETY: setns on an fd we own; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// The program id of the XDP program the kernel reports on `ifname`.
    pub fn xdp_prog_id(&self, ifname: &str) -> Option<u64> {
        let out = self.ip(&["-j", "-d", "link", "show", "dev", ifname]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        v[0]["xdp"]["prog"]["id"].as_u64()
    }

    /// Pin directory of `ifname` in this namespace.
    pub fn pin_dir(&self, ifname: &str) -> PathBuf {
        PathBuf::from(BPFFS).join(format!("dataplane/ns{}/{ifname}", self.inode().unwrap()))
    }
}

/// The MAC address of `ifname` in `ns`.
pub fn mac_of(ns: &NetNs, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v[0]["address"].as_str().expect("address");
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// A switch namespace with hosts around it: host `x` (a, b, c, ...) has
/// `x0` with 10.77.SUBNET.(i+1)/24, wired to port `sx` in `sw`.
pub struct Star {
    /// Owns the namespaces (removed on drop).
    pub topo: Topology,
    pub sw: NetNs,
    pub hosts: Vec<NetNs>,
}

/// Builds a [`Star`] of `n` hosts (at most 3). `gro`: GRO on the hosts'
/// veths, which a veth needs to accept XDP-redirected frames.
pub fn star(tag: &str, n: usize, subnet: u8, gro: bool) -> Star {
    let mut topo = Topology::new(tag);
    let sw = topo.netns("sw");
    let mut hosts = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().take(n).enumerate() {
        let h = topo.netns(name);
        let (hif, sif) = (format!("{name}0"), format!("s{name}"));
        topo.veth((&h, &hif), (&sw, &sif));
        h.ip(&[
            "addr",
            "add",
            &format!("10.77.{subnet}.{}/24", i + 1),
            "dev",
            &hif,
        ]);
        if gro {
            h.exec_ok(&["ethtool", "-K", &hif, "gro", "on"]);
        }
        hosts.push(h);
    }
    Star { topo, sw, hosts }
}

/// `ping -c N` from a namespace; true if every reply came.
pub fn ping(from: &NetNs, to: &str, n: u32) -> bool {
    from.exec(&[
        "ping",
        "-c",
        &n.to_string(),
        "-i",
        "0.05",
        "-W",
        "2",
        "-q",
        to,
    ])
    .status
    .success()
}
