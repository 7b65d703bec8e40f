//! A VM made by libvirt on a vhost-user port: Debian's libvirtd defines and
//! starts contrib/libvirt/dataplane-vm1.xml (a TCG domain with shared memfd
//! memory and `<interface type='vhostuser'>`, QEMU as the client of the
//! switch's socket), the guest of tests/qemu_guest.rs boots in it, and
//! frames and TCP cross the switch between it and a host namespace.
//!
//! ```text
//!  a: a0 ── sa [sw: dataplane run] vhost-user SOCK (owner=libvirt-qemu)
//!                                        ^
//!                 libvirtd -> QEMU (as libvirt-qemu) -> guest eth0: echo
//! ```
//!
//! Then the VM's life as an operator lives it, with the switch running on:
//! `virsh destroy` (the port goes down), `virsh start` (the same socket, a
//! fresh device, frames cross again), and a guest that powers off by itself
//! (the domain shuts off, the port goes down).
//!
//! libvirtd is used if it runs; otherwise the test starts `virtlogd -d` and
//! `libvirtd -d` (no systemd here) and stops them at the end, with the
//! domain undefined and its log removed, also when the test fails.
//! Without libvirt, QEMU or the guest kernel the test says it is skipped.
//!
//! Not a libtest harness (`harness = false` in Cargo.toml): the same `main`
//! is the guest's init (see tests/guest).

mod guest;
mod harness;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guest::{
    build_initramfs, guest_kernel_dir, send_one, send_slowly, tcp_round_trip, Scratch, ECHOED,
    GUEST_MAC, HOST_IP, QUIT, READY, TCP_BYTES, TCP_ECHOED, TCP_READY,
};
use harness::{
    collect_test_frames, mac_of, privileged, test_frame, wait_for, RunningSwitch, Topology,
    TEST_ETHERTYPE,
};

const TEST: &str = "libvirt_domain_on_a_vhost_user_port_restarts_without_the_switch";
/// The domain the test defines: contrib's file, paths and name replaced.
const DOMAIN_XML: &str = include_str!("../contrib/libvirt/dataplane-vm1.xml");
/// The user Debian's libvirt runs QEMU as (qemu.conf's default `user`).
const QEMU_USER: &str = "libvirt-qemu";
/// Frames sent through the guest and back in each of its two lives.
const FRAMES: u32 = 300;
const URI: &str = "qemu:///system";

fn main() {
    guest::main(TEST, host_test);
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    for (program, arg) in [("libvirtd", "--version"), ("virsh", "--version")] {
        if !runs(Command::new(program).arg(arg)) {
            return Some(format!(
                "{program} is not installed (`cargo xtask setup` installs libvirt-daemon-system)"
            ));
        }
    }
    if !runs(Command::new("qemu-system-x86_64").arg("--version")) {
        return Some(
            "qemu-system-x86_64 is not installed (`cargo xtask setup` installs it)".into(),
        );
    }
    if !guest_kernel_dir().join("modules.order").exists() {
        return Some(format!(
            "no guest kernel in {} (`cargo xtask setup` downloads it)",
            guest_kernel_dir().display()
        ));
    }
    if user_id(QEMU_USER).is_none() {
        return Some(format!(
            "no user {QEMU_USER} (libvirt-daemon-system makes it)"
        ));
    }
    None
}

fn host_test() {
    if !privileged(TEST) {
        return;
    }
    if let Some(why) = missing_prerequisite() {
        harness::skipped(TEST, &why);
        return;
    }
    // The guest's files where QEMU, running as libvirt-qemu, can read them.
    let scratch = Scratch::new("libvirt");
    let kernel = scratch.0.join("vmlinuz");
    let initramfs = scratch.0.join("initramfs.cpio");
    let console = scratch.0.join("console.log");
    std::fs::copy(guest_kernel_dir().join("vmlinuz"), &kernel).unwrap();
    build_initramfs(&initramfs);
    let sock = scratch.0.join("vm.sock");
    let port_name = format!("vhost-user:{}", sock.display());
    let port = format!("{port_name},owner={QEMU_USER}");

    let mut topo = Topology::new("lv");
    let sw_ns = topo.netns("sw");
    let a = topo.netns("a");
    topo.veth((&a, "a0"), (&sw_ns, "sa"));
    a.ip(&["addr", "add", HOST_IP, "dev", "a0"]);
    let sw = RunningSwitch::start(&sw_ns, &["--port", "afxdp:sa", "--port", &port]);
    wait_for(Duration::from_secs(5), || sock.exists().then_some(()))
        .expect("the switch's vhost-user socket");
    // The socket is QEMU's user's, and still nobody else's.
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (user_id(QEMU_USER).unwrap(), 0o600),
        "owner={QEMU_USER} gives the socket to that user only"
    );

    let _libvirt = Libvirt::ensure();
    let name = format!("dataplane-test-{}", std::process::id());
    let xml = DOMAIN_XML
        .replace("dataplane-vm1</name>", &format!("{name}</name>"))
        .replace("/var/lib/dataplane/guest/vmlinuz", path(&kernel))
        .replace("/var/lib/dataplane/guest/initramfs.cpio", path(&initramfs))
        .replace("/run/dataplane/vm1.sock", path(&sock))
        .replace("/var/log/dataplane-vm1.console", path(&console));
    let xml_file = scratch.0.join("domain.xml");
    std::fs::write(&xml_file, xml).unwrap();
    let domain = Domain::define(&name, &xml_file);

    let port_state = || -> String {
        let ports: serde_json::Value =
            serde_json::from_str(&sw_ns.dataplane_ok(&["show", "ports", "--json"])).unwrap();
        ports
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == port_name.as_str()))
            .and_then(|p| p["state"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();
    // Waits for the guest's nth "echoing" line (the console is appended to
    // across starts) and the port up.
    let wait_echoing = |nth: usize| {
        let up = wait_for(Duration::from_secs(90), || {
            let out = console_text();
            if out.contains("Kernel panic") || out.contains("guest: error") {
                panic!("the guest failed:\n{out}");
            }
            (out.matches(READY).count() >= nth && port_state() == "up").then_some(())
        });
        assert!(
            up.is_some(),
            "guest {nth} not echoing or port not up within 90 s\nconsole:\n{}\nswitch:\n{}\nlibvirt:\n{}",
            console_text(),
            sw.output(),
            domain.log()
        );
    };
    let a_mac = mac_of(&a, "a0");
    // FRAMES test frames from `first` on, a0 -> switch -> guest -> a0.
    let echo_round = |first: u32| {
        let (echoes, ready) =
            collect_test_frames(&a, "a0", FRAMES as usize, Duration::from_secs(30));
        ready.recv().unwrap();
        let frames = (first..first + FRAMES)
            .map(|seq| test_frame(GUEST_MAC, a_mac, TEST_ETHERTYPE, seq, 64));
        send_slowly(&a, frames);
        let mut seqs = echoes.join().unwrap();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (first..first + FRAMES).collect::<Vec<_>>(),
            "every frame echoed exactly once\nconsole:\n{}\nswitch:\n{}",
            console_text(),
            sw.output()
        );
    };
    let wait_port_down = |why: &str| {
        let down = wait_for(Duration::from_secs(10), || {
            (port_state() == "down").then_some(())
        });
        assert!(
            down.is_some(),
            "port not down after {why}:\n{}",
            sw.output()
        );
    };

    // First life: started by libvirt, frames cross.
    domain.virsh(&["start"]);
    wait_echoing(1);
    echo_round(0);

    // `virsh destroy`: QEMU is killed, the port goes down, the switch runs on.
    domain.virsh(&["destroy"]);
    assert_eq!(domain.state(), "shut off");
    wait_port_down("virsh destroy");

    // `virsh start` again on the same socket: a fresh device, frames cross.
    domain.virsh(&["start"]);
    wait_echoing(2);
    echo_round(1000);

    // The guest ends its echo, its kernel echoes TCP, it powers off, and
    // libvirt shuts the domain off (on_poweroff destroy).
    send_one(&a, a_mac, QUIT);
    let listening = wait_for(Duration::from_secs(30), || {
        console_text().contains(TCP_READY).then_some(())
    });
    assert!(
        listening.is_some(),
        "no TCP echo in the guest:\n{}",
        console_text()
    );
    let sent = harness::pattern(TCP_BYTES);
    let back = tcp_round_trip(&a, &sent);
    assert!(
        back == sent,
        "TCP through the switch to the guest's kernel and back: {} of {} bytes, or they differ\nconsole:\n{}",
        back.len(),
        sent.len(),
        console_text()
    );
    let off = wait_for(Duration::from_secs(30), || {
        (domain.state() == "shut off").then_some(())
    });
    assert!(
        off.is_some(),
        "the domain did not shut off after the guest powered off"
    );
    wait_port_down("the guest powered off");
    let out = console_text();
    let counted = |marker: &str| {
        out.lines()
            .find_map(|l| l.split(marker).nth(1))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
    };
    assert_eq!(
        counted(ECHOED),
        Some(FRAMES as usize),
        "the second guest's own count:\n{out}"
    );
    assert_eq!(
        counted(TCP_ECHOED),
        Some(TCP_BYTES),
        "the guest's TCP count:\n{out}"
    );

    drop(domain);
    let (_, accounting) = sw.stop_accounted();
    assert!(!sock.exists(), "socket left behind");
    println!(
        "libvirt: domain started, destroyed and started again under libvirtd on one running switch; \
         {FRAMES} frames echoed in each life, {TCP_BYTES} bytes of TCP echoed by the guest's kernel; \
         accounting: {accounting:?}"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

fn runs(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn user_id(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .expect("run virsh")
}

/// libvirtd for the test: the running one, or one the test starts (with
/// virtlogd, which it needs for QEMU's log) and stops on drop, taking away
/// what a daemon's first start makes (its runtime directory, its
/// capability cache, empty state directories).
struct Libvirt {
    /// The daemons the test started, by their pid files, in stop order.
    started: Vec<&'static str>,
    /// Paths that were not there before the daemons started.
    made: Vec<PathBuf>,
}

const DAEMONS: [(&str, &str); 2] = [
    ("virtlogd", "/run/virtlogd.pid"),
    ("libvirtd", "/run/libvirtd.pid"),
];
/// Where libvirtd makes things on its first start: the directory itself,
/// or (for the package's own directories) the entries in it.
const RUNTIME_DIR: &str = "/run/libvirt";
const STATE_DIRS: [&str; 2] = ["/var/lib/libvirt/qemu", "/var/cache/libvirt/qemu"];

fn entries(dir: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

impl Libvirt {
    fn ensure() -> Libvirt {
        let runtime_before = Path::new(RUNTIME_DIR).exists();
        let state_before: Vec<PathBuf> = STATE_DIRS.iter().flat_map(|d| entries(d)).collect();
        let mut guard = Libvirt {
            started: Vec::new(),
            made: Vec::new(),
        };
        for (daemon, pid_file) in DAEMONS {
            if alive(pid_file).is_some() {
                continue;
            }
            harness::run_ok(Command::new(daemon).arg("-d"));
            guard.started.insert(0, pid_file);
        }
        let ready = wait_for(Duration::from_secs(30), || {
            virsh(&["version"]).status.success().then_some(())
        });
        if !guard.started.is_empty() {
            if !runtime_before {
                guard.made.push(RUNTIME_DIR.into());
            }
            guard.made.extend(
                STATE_DIRS
                    .iter()
                    .flat_map(|d| entries(d))
                    .filter(|p| !state_before.contains(p)),
            );
        }
        assert!(
            ready.is_some(),
            "libvirtd does not answer on {URI} within 30 s: {}",
            String::from_utf8_lossy(&virsh(&["version"]).stderr)
        );
        guard
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        for pid_file in &self.started {
            let Some(pid) = alive(pid_file) else { continue };
            // SAFETY: kill(2) on the daemon's pid from its own pid file.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let gone = wait_for(Duration::from_secs(10), || {
                alive(pid_file).is_none().then_some(())
            });
            if gone.is_none() {
                eprintln!("{pid_file}: daemon {pid} still running after SIGTERM; killing it");
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for p in &self.made {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// The pid in `pid_file`, if that process is alive (and not a zombie).
fn alive(pid_file: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

/// A persistent domain, destroyed and undefined on drop, its log removed.
struct Domain {
    name: String,
}

impl Domain {
    fn define(name: &str, xml: &Path) -> Domain {
        let out = virsh(&["define", path(xml)]);
        assert!(
            out.status.success(),
            "virsh define {}: {}",
            xml.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Domain { name: name.into() }
    }

    /// `virsh CMD NAME`, which must succeed.
    fn virsh(&self, cmd: &[&str]) {
        let mut args = cmd.to_vec();
        args.push(&self.name);
        let out = virsh(&args);
        assert!(
            out.status.success(),
            "virsh {}: {}\nlibvirt:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn state(&self) -> String {
        String::from_utf8_lossy(&virsh(&["domstate", &self.name]).stdout)
            .trim()
            .to_string()
    }

    fn log_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/log/libvirt/qemu/{}.log", self.name))
    }

    /// QEMU's log as libvirt keeps it (its command line and stderr).
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
        let _ = std::fs::remove_file(self.log_path());
    }
}
