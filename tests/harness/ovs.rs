//! Open vSwitch's userspace datapath as a test's peer: a private
//! ovsdb-server and an ovs-vswitchd running in the test's namespace, their
//! files in a scratch directory; stopped and removed on drop, also when
//! the test fails. Nothing touches the host's own OVS (if any).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{run_ok, wait_for, NetNs};

const VSWITCHD: &str = "/usr/lib/openvswitch-switch/ovs-vswitchd";
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

pub struct Ovs {
    root: PathBuf,
}

impl Ovs {
    /// Why OVS cannot run here, if it cannot.
    pub fn missing() -> Option<String> {
        [VSWITCHD, SCHEMA]
            .iter()
            .find(|p| !Path::new(p).exists())
            .map(|p| format!("{p} is missing (`cargo xtask setup` installs openvswitch-switch)"))
    }

    /// Starts the daemons, vswitchd inside `ns`.
    pub fn start(ns: &NetNs) -> Ovs {
        let root = std::env::temp_dir().join(format!(
            "dataplane-ovs-{}-{}",
            ns.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["run", "db", "log", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let ovs = Ovs { root };
        let db = ovs.root.join("db/conf.db");
        run_ok(ovs.command("ovsdb-tool").arg("create").arg(&db).arg(SCHEMA));
        run_ok(
            ovs.command("ovsdb-server")
                .arg(&db)
                .arg(format!("--remote=punix:{}", ovs.socket().display()))
                .arg(format!(
                    "--pidfile={}",
                    ovs.pidfile("ovsdb-server").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    ovs.root.join("log/ovsdb-server.log").display()
                ))
                .arg("--detach"),
        );
        ovs.vsctl(&["--no-wait", "init"]);
        run_ok(
            ovs.command("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name()))
                .arg(VSWITCHD)
                .arg(format!("unix:{}", ovs.socket().display()))
                .arg(format!(
                    "--pidfile={}",
                    ovs.pidfile("ovs-vswitchd").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    ovs.root.join("log/ovs-vswitchd.log").display()
                ))
                .args(["--detach", "-vconsole:off"]),
        );
        ovs
    }

    /// `ovs-vsctl ARGS`, which must succeed.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.socket().display());
        let out = run_ok(
            self.command("ovs-vsctl")
                .args([db.as_str(), "--timeout=20"])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ovs-appctl ARGS` to vswitchd, which must succeed.
    pub fn appctl(&self, args: &[&str]) -> String {
        let out = run_ok(
            self.command("ovs-appctl")
                .arg("-t")
                .arg(self.control())
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// vswitchd's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log/ovs-vswitchd.log")).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.root.join("run/db.sock")
    }

    fn pidfile(&self, daemon: &str) -> PathBuf {
        self.root.join(format!("run/{daemon}.pid"))
    }

    fn pid(&self, daemon: &str) -> Option<i32> {
        std::fs::read_to_string(self.pidfile(daemon))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn control(&self) -> PathBuf {
        let pid = self.pid("ovs-vswitchd").unwrap_or(0);
        self.root.join(format!("run/ovs-vswitchd.{pid}.ctl"))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("OVS_RUNDIR", self.root.join("run"))
            .env("OVS_DBDIR", self.root.join("db"))
            .env("OVS_LOGDIR", self.root.join("log"))
            .env("OVS_SYSCONFDIR", self.root.join("etc"));
        c
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // A clean exit removes its ports (and the taps of its bridges).
        let _ = self
            .command("ovs-appctl")
            .arg("-t")
            .arg(self.control())
            .args(["--timeout=10", "exit", "--cleanup"])
            .output();
        for daemon in ["ovs-vswitchd", "ovsdb-server"] {
            let Some(pid) = self.pid(daemon) else {
                continue;
            };
            // SAFETY: kill(2) with the pid the daemon wrote itself.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            // SAFETY: signal 0 only checks that the process exists.
            let gone = wait_for(Duration::from_secs(5), || {
                (unsafe { libc::kill(pid, 0) } != 0).then_some(())
            });
            if gone.is_none() {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
