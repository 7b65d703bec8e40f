//! `cargo xtask setup`: make a fresh machine ready, idempotently.
//!
//! Each step checks first and only acts when something is missing, printing
//! what it found and what it did (the facts it relies on are in docs/DESIGN-NOTES.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::run::{checked, is_root, output, succeeds, target_dir};

/// Debian packages the build, the tests and the demo use.
pub const BASE_PACKAGES: &[&str] = &[
    "iproute2",                    // ip netns / ip link: topologies
    "iputils-ping",                // ping through the attached interfaces
    "ethtool",                     // offloads and channel counts on veths
    "bpftool",                     // inspecting programs and pins (tests check cleanup)
    "procps",                      // ps/sysctl
    "dpdk-dev", // dpdk-testpmd: the vhost-user frontend (virtio_user) of tests/vhost_user.rs
    "qemu-system-x86", // a real Linux guest on a vhost-user port (tests/qemu_guest.rs)
    "iperf3",   // real TCP/UDP between namespaces (tests/tcp.rs, the demo)
    "containernetworking-plugins", // host-local IPAM for the CNI plugin's tests (tests/cni.rs)
    "podman",   // a real container runtime on the CNI plugin (tests/cni.rs)
    "runc",     // podman's runtime here (crun 1.8 refuses hybrid cgroups)
    "busybox-static", // the containers' offline image (tests/cni.rs)
    "libvirt-daemon-system", // libvirtd defines and starts a VM on a vhost-user port (tests/libvirt.rs)
    "libvirt-clients",       // virsh
    "tcpdump", // a capture of the VXLAN encapsulation on the underlay (tests/vxlan.rs)
    "openvswitch-switch", // Open vSwitch as a VXLAN peer (tests/vxlan.rs) and in the benchmarks
    "xz-utils", // unpacks the zero-copy guest kernel's modules (tests/zero_copy.rs)
    "binutils", // strip: a debug switch binary small enough for a guest's initramfs
];

/// Debian packages the build itself needs: xsk-rs builds libxdp and libbpf
/// from their C source (bindgen needs libclang, which clang brings).
pub const BUILD_PACKAGES: &[&str] = &[
    "clang",
    "llvm",
    "m4",
    "libelf-dev",
    "zlib1g-dev",
    "pkg-config",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run() -> Result<()> {
    eprintln!("[setup] making this machine ready for dataplane");
    packages(BUILD_PACKAGES)?;
    packages(BASE_PACKAGES)?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    guest_kernel()?;
    zero_copy_guest_kernel()?;
    eprintln!("[setup] done");
    Ok(())
}

/// The steps the eBPF build needs (no packages, no bpffs).
pub fn ebpf_toolchain() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

/// Installs the Debian packages of `wanted` that are missing.
pub fn packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("[setup] packages: all {} present", wanted.len());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "packages {} are missing and installing them needs root: run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    eprintln!("[setup] packages: installing {}", missing.join(" "));
    if apt_lists_stale() {
        checked(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            // Progress belongs with the other [setup] lines: a bench's
            // stdout is its report.
            .stdout(std::process::Stdio::from(std::io::stderr())),
    )
}

fn package_installed(name: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// The apt lists need an update when they are missing or older than a day.
fn apt_lists_stale() -> bool {
    let lists = Path::new("/var/lib/apt/lists");
    let newest = std::fs::read_dir(lists)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("Packages"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    match newest {
        None => true,
        Some(t) => SystemTime::now()
            .duration_since(t)
            .map(|age| age > Duration::from_secs(24 * 3600))
            .unwrap_or(false),
    }
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("`rustup` not found or has no nightly toolchain")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("[setup] rust-src for nightly: present");
        return Ok(());
    }
    eprintln!("[setup] rust-src for nightly: installing");
    checked(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpf_linker() -> Result<()> {
    let bin = cargo_home().join("bin/bpf-linker");
    if succeeds(Command::new(&bin).arg("--version")) {
        eprintln!("[setup] bpf-linker: present ({})", bin.display());
        return Ok(());
    }
    eprintln!("[setup] bpf-linker {BPF_LINKER_VERSION}: building against the nightly's libLLVM (about a minute)");
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed: is the nightly toolchain installed?")?;
    let llvm_dir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&llvm_dir)
        .with_context(|| format!("reading {}", llvm_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", llvm_dir.display()))?;
    let major = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM version from the libLLVM file name")?
        .to_string();

    // bpf-linker's build looks for $LLVM_PREFIX/lib/libLLVM.so; the installed
    // binary's rpath resolves the versioned name from the same directory.
    let prefix = cargo_home().join("dataplane-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let versioned = lib.join(libllvm.file_name().expect("has a file name"));
    for link in [lib.join("libLLVM.so"), versioned] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    checked(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !succeeds(Command::new(&bin).arg("--version")) {
        bail!(
            "bpf-linker was installed but `{} --version` fails",
            bin.display()
        );
    }
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz` (and the short fuzz run of
/// `cargo xtask test`).
pub fn cargo_fuzz() -> Result<()> {
    if succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        eprintln!("[setup] cargo-fuzz: present");
        return Ok(());
    }
    eprintln!("[setup] cargo-fuzz {CARGO_FUZZ_VERSION}: installing (about a minute)");
    checked(Command::new("cargo").args([
        "+nightly",
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// The guest kernel of tests/qemu_guest.rs, under the target dir: Debian's
/// cloud kernel (`vmlinuz`) and the virtio-net modules it needs, in load
/// order (`modules/`, listed in `modules.order`). The test reads the same
/// path; keep the two in step.
pub const GUEST_KERNEL_DIR: &str = "guest-kernel";
/// Debian's metapackage of the newest cloud kernel (small, virtio drivers).
const GUEST_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// The modules a virtio-net PCI device needs, dependencies first (from
/// each module's `depends=`): the cloud kernel builds them as modules.
const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// Downloads and unpacks the guest kernel (the package is unpacked in a
/// scratch directory, never installed: the host's own kernel and boot
/// files are not touched).
pub fn guest_kernel() -> Result<()> {
    let dir = target_dir().join(GUEST_KERNEL_DIR);
    if dir.join("modules.order").exists() {
        eprintln!("[setup] guest kernel: present ({})", dir.display());
        return Ok(());
    }
    if !is_root() {
        eprintln!("[setup] guest kernel: skipped (downloading it with apt needs root)");
        return Ok(());
    }
    // The metapackage names the versioned image package.
    let ask = || {
        output(Command::new("apt-cache").args(["depends", GUEST_KERNEL_PACKAGE]))
            .unwrap_or_default()
    };
    let mut depends = ask();
    if !depends.contains("Depends: linux-image-") {
        // Missing or old apt lists: refresh once.
        checked(Command::new("apt-get").args(["update", "-qq"]))?;
        depends = ask();
    }
    let image = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| {
            format!("`apt-cache depends {GUEST_KERNEL_PACKAGE}` names no linux-image package (is the Debian archive in the apt sources?)")
        })?
        .trim()
        .to_string();
    eprintln!(
        "[setup] guest kernel: downloading {image} (about 27 MB) into {}",
        dir.display()
    );
    let scratch = target_dir().join(format!("{GUEST_KERNEL_DIR}.download"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = unpack_guest_kernel(&image, &scratch, &dir);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn unpack_guest_kernel(image: &str, scratch: &Path, dir: &Path) -> Result<()> {
    checked(
        Command::new("apt-get")
            .current_dir(scratch)
            // apt's download user cannot write into the target dir.
            .args(["-qq", "-o", "APT::Sandbox::User=root", "download", image]),
    )?;
    let deb = std::fs::read_dir(scratch)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let root = scratch.join("root");
    checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let find = |sub: &str, prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(root.join(sub))
            .with_context(|| format!("{image} has no {sub}/"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .with_context(|| format!("{image} has no {sub}/{prefix}*"))
    };
    let vmlinuz = find("boot", "vmlinuz-")?;
    let modules = find("lib/modules", "")?.join("kernel");
    stage_guest_kernel(image, &vmlinuz, &modules, GUEST_MODULES, scratch, dir)?;
    eprintln!("[setup] guest kernel: {image} in {}", dir.display());
    Ok(())
}

/// Puts `vmlinuz` and `modules` (paths under the package's `kernel/`
/// directory `modules_root`, plain or xz-compressed) into `dir`, the
/// layout the guest tests read: `vmlinuz`, `modules/NAME.ko` (always
/// uncompressed: the guests' init loads them with finit_module and no
/// flags), `modules.order` and `PACKAGE`. Staged in `scratch` and moved
/// in whole: `dir` is complete or absent.
fn stage_guest_kernel(
    image: &str,
    vmlinuz: &Path,
    modules_root: &Path,
    modules: &[&str],
    scratch: &Path,
    dir: &Path,
) -> Result<()> {
    let staged = scratch.join("staged");
    std::fs::create_dir_all(staged.join("modules"))?;
    std::fs::copy(vmlinuz, staged.join("vmlinuz"))?;
    let mut order = String::new();
    for m in modules {
        let plain = modules_root.join(m);
        let name = Path::new(m).file_name().expect("a file name");
        let to = staged.join("modules").join(name);
        if plain.exists() {
            std::fs::copy(&plain, &to).with_context(|| format!("{image}: {}", plain.display()))?;
        } else {
            let xz = PathBuf::from(format!("{}.xz", plain.display()));
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .with_context(|| format!("running xz on {}", xz.display()))?;
            if !out.status.success() {
                bail!(
                    "{image}: xz -dc {}: {}",
                    xz.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::fs::write(&to, out.stdout)?;
        }
        order.push_str(&name.to_string_lossy());
        order.push('\n');
    }
    std::fs::write(staged.join("modules.order"), order)?;
    std::fs::write(staged.join("PACKAGE"), format!("{image}\n"))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staged, dir).with_context(|| format!("moving into {}", dir.display()))
}

/// The guest kernel of tests/zero_copy.rs, under the target dir: a
/// kernel whose virtio-net binds AF_XDP zero-copy (it advertises it from
/// 6.13 on; bookworm's cloud kernels are 6.1 and 6.12), with the same
/// layout as [`GUEST_KERNEL_DIR`]. The test reads the same path.
pub const ZERO_COPY_GUEST_KERNEL_DIR: &str = "guest-kernel-zc";
/// Where the newest Debian cloud kernel is found: trixie's backports.
const ZERO_COPY_GUEST_SUITE: &str = "trixie-backports";
/// Its virtio-net modules, dependencies first (virtio and virtio_pci are
/// built in there).
const ZERO_COPY_GUEST_MODULES: &[&str] = &[
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// Downloads and unpacks the zero-copy test's guest kernel with apt, from
/// [`ZERO_COPY_GUEST_SUITE`] through a source list and package lists of
/// its own under the target dir: the machine's apt sources are not
/// touched and nothing is installed.
pub fn zero_copy_guest_kernel() -> Result<()> {
    let dir = target_dir().join(ZERO_COPY_GUEST_KERNEL_DIR);
    if dir.join("modules.order").exists() {
        eprintln!(
            "[setup] zero-copy guest kernel: present ({})",
            dir.display()
        );
        return Ok(());
    }
    if !is_root() {
        eprintln!("[setup] zero-copy guest kernel: skipped (downloading it with apt needs root)");
        return Ok(());
    }
    let scratch = target_dir().join(format!("{ZERO_COPY_GUEST_KERNEL_DIR}.download"));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = fetch_zero_copy_guest_kernel(&scratch, &dir);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn fetch_zero_copy_guest_kernel(scratch: &Path, dir: &Path) -> Result<()> {
    let apt = scratch.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(apt.join(sub))
            .with_context(|| format!("creating {}", apt.join(sub).display()))?;
    }
    let sources = apt.join("sources.list");
    std::fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian {ZERO_COPY_GUEST_SUITE} main\n"
        ),
    )?;
    let options: Vec<String> = [
        ("Dir::Etc::SourceList", sources.clone()),
        ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
        ("Dir::State::Lists", apt.join("lists")),
        ("Dir::Cache", apt.join("cache")),
    ]
    .iter()
    .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={}", v.display())])
    .collect();
    eprintln!("[setup] zero-copy guest kernel: reading {ZERO_COPY_GUEST_SUITE}'s package lists");
    checked(
        Command::new("apt-get")
            .args(&options)
            .args(["update", "-qq"]),
    )?;
    let depends = |package: &str| -> Vec<String> {
        output(
            Command::new("apt-cache")
                .args(&options)
                .args(["depends", package]),
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim().to_string())
        .collect()
    };
    let image = depends(GUEST_KERNEL_PACKAGE)
        .into_iter()
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| {
            format!(
                "{ZERO_COPY_GUEST_SUITE} names no linux-image package for {GUEST_KERNEL_PACKAGE}"
            )
        })?;
    // Newer kernels split the image into a binary and a modules package.
    let mut debs = vec![image.clone()];
    debs.extend(
        depends(&image)
            .into_iter()
            .filter(|p| p.starts_with("linux-binary-") || p.starts_with("linux-modules-")),
    );
    eprintln!(
        "[setup] zero-copy guest kernel: downloading {} (about 40 MB)",
        debs.join(", ")
    );
    checked(
        Command::new("apt-get")
            .current_dir(apt.join("debs"))
            .args(&options)
            .args(["-qq", "-o", "APT::Sandbox::User=root", "download"])
            .args(&debs),
    )?;
    let root = scratch.join("root");
    for deb in std::fs::read_dir(apt.join("debs"))?.flatten() {
        checked(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb.path())
                .arg(&root),
        )?;
    }
    // vmlinuz and modules under /boot and /lib/modules, or (newer) both
    // under /usr/lib/modules/VERSION.
    let version_dir = ["usr/lib/modules", "lib/modules"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .find(|p| p.join("kernel").is_dir())
        .with_context(|| format!("{image}: no lib/modules/VERSION/kernel"))?;
    let vmlinuz = std::iter::once(version_dir.join("vmlinuz"))
        .chain(
            std::fs::read_dir(root.join("boot"))
                .into_iter()
                .flat_map(|e| e.flatten().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().contains("vmlinuz-")),
        )
        .find(|p| p.is_file())
        .with_context(|| format!("{image}: no vmlinuz"))?;
    stage_guest_kernel(
        &image,
        &vmlinuz,
        &version_dir.join("kernel"),
        ZERO_COPY_GUEST_MODULES,
        scratch,
        dir,
    )?;
    eprintln!(
        "[setup] zero-copy guest kernel: {image} in {}",
        dir.display()
    );
    Ok(())
}

/// Mounts bpffs on /sys/fs/bpf if it is not mounted.
pub fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        eprintln!("[setup] bpffs on /sys/fs/bpf: mounted");
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted on /sys/fs/bpf and mounting it needs root: run `sudo cargo xtask setup`");
    }
    eprintln!("[setup] bpffs on /sys/fs/bpf: mounting");
    checked(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
