//! DPDK testpmd as a path (io-fwd between vdevs) or as a guest, and the
//! hugepages DPDK's vhost-user PMDs need.
//!
//! testpmd runs under `nsenter --net` rather than `ip netns exec`: only the
//! network namespace changes, so libxdp (under net_af_xdp) still finds the
//! host's bpffs. Its files carry the prefix `dpbench` (`--file-prefix`).

use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

pub const FILE_PREFIX: &str = "dpbench";
/// The prefix of the testpmd that plays a VM (PVP over vhost-user).
pub const VM_FILE_PREFIX: &str = "dpbench-vm";

/// A testpmd invocation.
pub struct Testpmd<'a> {
    pub netns: &'a str,
    pub vdevs: Vec<String>,
    /// testpmd options after `--` (forward mode, topology, peers).
    pub app_args: Vec<String>,
    /// Use hugepages (net_vhost, virtio_user); otherwise `--no-huge`.
    pub huge: bool,
    /// `--file-prefix`: distinct per concurrent testpmd.
    pub prefix: &'a str,
    /// EAL `--lcores` map: the main lcore and one forwarding lcore
    /// (e.g. "0,1", or "0@0,1@0" for both on CPU 0).
    pub lcores: &'a str,
}

impl Testpmd<'_> {
    /// Starts testpmd with its lcores as `lcores` says (the main lcore only
    /// sleeps in interactive mode; the other forwards).
    pub fn spawn(&self) -> Result<Child> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("dpdk-testpmd");
        if self.huge {
            // One memory region per file: vhost-user takes at most 8, and
            // 2 MB pages in separate files exceed that ("Too many memory
            // regions").
            cmd.args(["-m", "512", "--single-file-segments"]);
        } else {
            cmd.args(["--no-huge", "-m", "1024"]);
        }
        cmd.args([
            "--lcores",
            self.lcores,
            "--no-pci",
            "--file-prefix",
            self.prefix,
        ])
        .args(["--log-level", "*:error"]);
        for v in &self.vdevs {
            cmd.args(["--vdev", v]);
        }
        cmd.args(["--", "--auto-start", "--nb-cores=1"])
            .args(&self.app_args)
            // stdin open: testpmd's interactive prompt would exit on EOF.
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.spawn()
            .context("starting dpdk-testpmd (package dpdk; `cargo xtask bench` installs it)")
    }
}

/// Removes the runtime files testpmd leaves (`/dev/hugepages/<prefix>map_*`,
/// `/var/run/dpdk/<prefix>`).
pub fn remove_files() {
    if let Ok(dir) = std::fs::read_dir("/dev/hugepages") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if [FILE_PREFIX, VM_FILE_PREFIX]
                .iter()
                .any(|p| name.starts_with(&format!("{p}map_")))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for p in [FILE_PREFIX, VM_FILE_PREFIX] {
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{p}"));
    }
}

/// 2 MB hugepages reserved for DPDK; the previous count is restored (and
/// DPDK's map files removed) on drop. The previous count is also written to
/// a state file, so a run killed with SIGKILL is repaired by the next one.
pub struct Hugepages {
    previous: u64,
    /// What this guard set the count to, if it raised it.
    set_to: Option<u64>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const STATE: &str = "/run/dpbench-hugepages";

impl Hugepages {
    pub fn reserve(pages: u64) -> Result<Hugepages> {
        let previous: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .with_context(|| format!("reading {NR_HUGEPAGES}"))?
            .trim()
            .parse()?;
        std::fs::write(STATE, previous.to_string()).with_context(|| format!("writing {STATE}"))?;
        let mut guard = Hugepages {
            previous,
            set_to: None,
        };
        if previous < pages {
            std::fs::write(NR_HUGEPAGES, pages.to_string())
                .with_context(|| format!("writing {NR_HUGEPAGES}"))?;
            let got: u64 = std::fs::read_to_string(NR_HUGEPAGES)?.trim().parse()?;
            guard.set_to = Some(got);
            std::fs::write(STATE, format!("{previous} {got}"))
                .with_context(|| format!("writing {STATE}"))?;
            if got < pages {
                bail!("asked the kernel for {pages} 2 MB hugepages, got {got}: free memory is fragmented or short");
            }
        }
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        if !mounts
            .lines()
            .any(|l| l.contains(" /dev/hugepages hugetlbfs"))
        {
            std::fs::create_dir_all("/dev/hugepages")?;
            let st = Command::new("mount")
                .args(["-t", "hugetlbfs", "nodev", "/dev/hugepages"])
                .status()?;
            if !st.success() {
                bail!("mounting hugetlbfs on /dev/hugepages failed");
            }
        }
        Ok(guard)
    }

    /// Restores the count a killed run left reserved.
    pub fn restore_leftovers() {
        // "PREVIOUS [SET_TO]", as `reserve` wrote it.
        if let Ok(state) = std::fs::read_to_string(STATE) {
            let mut fields = state.split_whitespace().map(|f| f.parse::<u64>().ok());
            if let Some(Some(previous)) = fields.next() {
                drop(Hugepages {
                    previous,
                    set_to: fields.next().flatten(),
                });
            }
        }
        remove_files();
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        remove_files();
        // Give back only what this run took: if someone else changed the
        // count meanwhile (another DPDK user on the machine), theirs stands.
        let now = std::fs::read_to_string(NR_HUGEPAGES)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if self.set_to.is_none() || now == self.set_to {
            let _ = std::fs::write(NR_HUGEPAGES, self.previous.to_string());
        }
        let _ = std::fs::remove_file(STATE);
    }
}
