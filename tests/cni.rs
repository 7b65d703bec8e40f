//! The CNI plugin as a container runtime calls it: the command and the
//! container in `CNI_*` variables, the network configuration on stdin,
//! `CNI_PATH` holding Debian's real host-local IPAM plugin
//! (containernetworking-plugins). A running switch takes the containers'
//! ports; the containers' interfaces keep the kernel's defaults.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use harness::{ping, privileged, skipped, star, NetNs, RunningSwitch};
use serde_json::{json, Value};

/// Where Debian's containernetworking-plugins put host-local.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// host-local's data directory for one test, removed on drop.
struct IpamDir(PathBuf);

impl IpamDir {
    fn new() -> IpamDir {
        let dir = std::env::temp_dir().join(format!(
            "dp-cni-ipam-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        IpamDir(dir)
    }

    /// Addresses host-local holds for the network (one file each).
    fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.0.join("dptest"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("10."))
            .collect()
    }
}

impl Drop for IpamDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The network configuration: the switch in `sw`, host-local on 10.99.0.0/24.
fn net_conf(sw: &NetNs, ipam: &IpamDir) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "dptest",
        "type": "dataplane-cni",
        "switch": {"netns": sw.name()},
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.99.0.0/24"}]],
            "dataDir": ipam.0,
        },
    })
    .to_string()
}

/// One plugin call as a runtime makes it: success and the JSON answer.
fn cni(command: &str, id: &str, container: Option<&NetNs>, conf: &str) -> (bool, Value) {
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_dataplane-cni"));
    let mut cmd = Command::new(&plugin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_BIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = container {
        cmd.env("CNI_NETNS", format!("/var/run/netns/{}", c.name()));
    }
    let mut child = cmd.spawn().expect("run dataplane-cni");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    };
    (out.status.success(), answer)
}

/// True if host-local is installed; else the test reports itself skipped.
fn host_local(test: &str) -> bool {
    if Path::new(CNI_BIN_DIR).join("host-local").is_file() {
        return true;
    }
    skipped(
        test,
        "needs the host-local IPAM plugin (apt install containernetworking-plugins; `cargo xtask setup` does)",
    );
    false
}

/// The switch's port names.
fn ports(sw: &NetNs) -> Vec<String> {
    let v: Value = serde_json::from_str(&sw.dataplane_ok(&["show", "ports", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// The plugin's host ends of veths left in the switch's namespace.
fn host_ends(sw: &NetNs) -> Vec<String> {
    let v: Value = serde_json::from_str(&sw.ip(&["-j", "link", "show"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("dp") && !n.starts_with("dp-punt"))
        .map(str::to_string)
        .collect()
}

fn address_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {result}"))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn containers_added_by_the_plugin_talk_and_del_is_idempotent() {
    let test = "containers_added_by_the_plugin_talk_and_del_is_idempotent";
    if !privileged(test) || !host_local(test) {
        return;
    }
    let mut h = star("cni", 1, 98, false);
    let (c1, c2) = (h.topo.netns("c1"), h.topo.netns("c2"));
    let ipam = IpamDir::new();
    let conf = net_conf(&h.sw, &ipam);

    // No switch yet: the error names the socket to look for.
    let (ok, err) = cni("ADD", "ctr1", Some(&c1), &conf);
    assert!(!ok);
    assert_eq!(err["code"], 100, "{err}");
    let socket = format!("/run/dataplane/{}.ctl", h.sw.name());
    assert!(err["msg"].as_str().unwrap().contains(&socket), "{err}");
    assert!(
        host_ends(&h.sw).is_empty() && ipam.leases().is_empty(),
        "nothing left"
    );

    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa"]);
    let (ok, r1) = cni("ADD", "ctr1", Some(&c1), &conf);
    assert!(ok, "{r1}");
    let (ok, r2) = cni("ADD", "ctr2", Some(&c2), &conf);
    assert!(ok, "{r2}");
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["ips"][0]["interface"], 1);
    let host1 = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(
        ports(&h.sw).contains(&format!("veth:{host1}")),
        "{:?}",
        ports(&h.sw)
    );
    assert_eq!(ipam.leases().len(), 2);
    // The containers' interfaces are at the kernel's defaults.
    let (a1, a2) = (address_of(&r1), address_of(&r2));
    assert_ne!(a1, a2);
    assert!(ping(&c1, &a2, 3), "c1 -> c2 through the switch");
    assert!(ping(&c2, &a1, 3), "c2 -> c1");
    let (ok, out) = cni("CHECK", "ctr1", Some(&c1), &conf);
    assert!(ok, "CHECK: {out}");

    // The runtime asks for eth0 again in the same container: refused.
    let (ok, err) = cni("ADD", "ctr1b", Some(&c1), &conf);
    assert!(!ok);
    assert_eq!(err["code"], 102, "{err}");
    assert_eq!(ipam.leases().len(), 2, "no address taken for it");

    // DEL, and DEL again.
    for round in 0..2 {
        let (ok, out) = cni("DEL", "ctr1", Some(&c1), &conf);
        assert!(ok, "DEL round {round}: {out}");
        assert!(!ports(&h.sw).contains(&format!("veth:{host1}")));
        assert!(!host_ends(&h.sw).contains(&host1));
        assert_eq!(ipam.leases().len(), 1);
    }
    let (ok, err) = cni("CHECK", "ctr1", Some(&c1), &conf);
    assert!(!ok, "CHECK of a deleted container: {err}");

    // The switch stops; a DEL then still cleans up what is not the switch's.
    sw.stop_accounted();
    let (ok, out) = cni("DEL", "ctr2", Some(&c2), &conf);
    assert!(ok, "DEL without a switch: {out}");
    assert!(host_ends(&h.sw).is_empty(), "{:?}", host_ends(&h.sw));
    assert!(ipam.leases().is_empty(), "{:?}", ipam.leases());
    // A DEL for a container whose namespace is gone succeeds too.
    let (ok, out) = cni("DEL", "ctr3", None, &conf);
    assert!(ok, "{out}");
    let (ok, v) = cni("VERSION", "", None, "");
    assert!(ok && v["supportedVersions"].as_array().is_some(), "{v}");
}

#[test]
fn twenty_adds_and_twenty_dels_in_parallel_leave_exactly_the_right_ports() {
    let test = "twenty_adds_and_twenty_dels_in_parallel_leave_exactly_the_right_ports";
    if !privileged(test) || !host_local(test) {
        return;
    }
    let mut h = star("cnipar", 1, 97, false);
    let containers: Vec<NetNs> = (0..20).map(|i| h.topo.netns(&format!("c{i}"))).collect();
    let ipam = IpamDir::new();
    let conf = net_conf(&h.sw, &ipam);
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa"]);
    let run_all = |command: &'static str| -> Vec<(bool, Value)> {
        std::thread::scope(|s| {
            let calls: Vec<_> = containers
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let conf = &conf;
                    s.spawn(move || cni(command, &format!("par{i}"), Some(c), conf))
                })
                .collect();
            calls.into_iter().map(|t| t.join().unwrap()).collect()
        })
    };
    let added = run_all("ADD");
    for (ok, out) in &added {
        assert!(ok, "ADD: {out}");
    }
    let addresses: Vec<String> = added.iter().map(|(_, r)| address_of(r)).collect();
    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "twenty distinct addresses");
    assert_eq!(ports(&h.sw).len(), 21, "{:?}", ports(&h.sw));
    assert_eq!(host_ends(&h.sw).len(), 20);
    // The first and the last container made reach each other.
    let reached = ping(&containers[0], &addresses[19], 3);
    if !reached {
        eprintln!("DEBUG fdb {}", h.sw.dataplane_ok(&["show", "fdb"]));
        eprintln!("DEBUG ports {}", h.sw.dataplane_ok(&["show", "ports"]));
        eprintln!("DEBUG c0 {}", containers[0].ip(&["addr"]));
        eprintln!("DEBUG c19 {}", containers[19].ip(&["addr"]));
        eprintln!("DEBUG c0 neigh {}", containers[0].ip(&["neigh"]));
    }
    assert!(reached, "c0 -> c19 ({})", addresses[19]);
    for (ok, out) in run_all("DEL") {
        assert!(ok, "DEL: {out}");
    }
    assert_eq!(ports(&h.sw), ["afxdp:sa"]);
    assert!(host_ends(&h.sw).is_empty(), "{:?}", host_ends(&h.sw));
    assert!(ipam.leases().is_empty(), "{:?}", ipam.leases());
    let (out, frames) = sw.stop_accounted();
    assert_eq!(frames.unaccounted, 0, "{out}");
}

/// What podman leaves outside its private directories whatever `--root`
/// says: its image blob cache and libcni's result cache. Each is removed
/// on drop if this test made it.
struct PodmanLeftovers {
    made: Vec<&'static str>,
}

const PODMAN_CACHES: [&str; 2] = ["/var/lib/containers", "/var/lib/cni"];

impl PodmanLeftovers {
    fn note() -> PodmanLeftovers {
        PodmanLeftovers {
            made: PODMAN_CACHES
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .collect(),
        }
    }
}

impl Drop for PodmanLeftovers {
    fn drop(&mut self) {
        for p in &self.made {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// A private podman: its own storage (vfs: no mounts to undo), run
/// directory, containers.conf (runc, rlimits this machine allows, the CNI
/// backend with a plugin directory holding dataplane-cni and host-local)
/// and network configuration directory. Everything under `dir`.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(sw: &NetNs, ipam: &IpamDir) -> Podman {
        let dir = ipam.0.with_extension("podman");
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["plugins", "net.d", "root", "runroot", "rootfs/bin"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let link = |from: &Path, name: &str| {
            std::os::unix::fs::symlink(from, dir.join("plugins").join(name)).unwrap()
        };
        link(
            Path::new(env!("CARGO_BIN_EXE_dataplane-cni")),
            "dataplane-cni",
        );
        link(&Path::new(CNI_BIN_DIR).join("host-local"), "host-local");
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
                dir.join("plugins").display(),
                dir.join("net.d").display()
            ),
        )
        .unwrap();
        // The network: the README's "Containers with podman" conflist.
        let plugin: Value = serde_json::from_str(&net_conf(sw, ipam)).unwrap();
        std::fs::write(
            dir.join("net.d/dptest.conflist"),
            json!({"cniVersion": "1.0.0", "name": "dptest", "plugins": [plugin]}).to_string(),
        )
        .unwrap();
        Podman { dir }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// An image made offline: a rootfs with Debian's busybox-static.
    fn import_busybox(&self) {
        let rootfs = self.dir.join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "ip", "ping"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs", "import", "-", "dptest-busybox"])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of the rootfs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.cmd(&["rmi", "-a", "-f"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Podman (Debian's 4.3, CNI backend) runs two containers on a dataplane
/// network: they get addresses from host-local, ping each other and move
/// TCP through the switch (iperf3 in their namespaces); `podman rm` takes
/// their ports off the switch again.
#[test]
fn podman_containers_on_a_dataplane_network_talk_through_the_switch() {
    let test = "podman_containers_on_a_dataplane_network_talk_through_the_switch";
    if !privileged(test) || !host_local(test) {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err()
        || !Path::new("/bin/busybox").exists()
    {
        skipped(
            test,
            "needs podman, runc and busybox-static (`cargo xtask setup` installs them)",
        );
        return;
    }
    let _leftovers = PodmanLeftovers::note();
    let h = star("pod", 1, 96, false);
    let ipam = IpamDir::new();
    let podman = Podman::new(&h.sw, &ipam);
    podman.import_busybox();
    let sw = RunningSwitch::start(&h.sw, &["--port", "afxdp:sa"]);
    for c in ["c1", "c2"] {
        podman.ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            "dptest",
            "dptest-busybox",
            "sleep",
            "600",
        ]);
    }
    assert_eq!(ports(&h.sw).len(), 3, "{:?}", ports(&h.sw));
    let address = |c: &str| -> String {
        let out = podman.ok(&["exec", c, "ip", "-4", "-o", "addr", "show", "eth0"]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address on {c}'s eth0: {out}"))
            .to_string()
    };
    let (a1, a2) = (address("c1"), address("c2"));
    assert!(
        a1.starts_with("10.99.0.") && a2.starts_with("10.99.0."),
        "{a1} {a2}"
    );
    podman.ok(&["exec", "c1", "ping", "-c", "3", "-W", "2", &a2]);
    // TCP at the containers' defaults: iperf3 inside their namespaces.
    let pid = |c: &str| podman.ok(&["inspect", "-f", "{{.State.Pid}}", c]);
    let server = Command::new("nsenter")
        .args(["-t", &pid("c2"), "-n", "iperf3", "-s", "-1", "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let client = Command::new("nsenter")
        .args(["-t", &pid("c1"), "-n", "iperf3", "-c", &a2, "-t", "2", "-J"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&client.stdout).unwrap_or(Value::Null);
    let _ = server.wait_with_output();
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        received > 10_000_000,
        "TCP moved {received} bytes: {report}"
    );
    assert!(received <= sent, "{report}");
    podman.ok(&["rm", "-f", "-t", "0", "c1", "c2"]);
    assert_eq!(ports(&h.sw), ["afxdp:sa"], "podman rm runs DEL");
    assert!(host_ends(&h.sw).is_empty(), "{:?}", host_ends(&h.sw));
    assert!(ipam.leases().is_empty(), "{:?}", ipam.leases());
    let (out, frames) = sw.stop_accounted();
    assert_eq!(frames.unaccounted, 0, "{out}");
}
