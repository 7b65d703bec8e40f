//! A Linux guest whose init is the test binary itself, for the tests that
//! boot one on a vhost-user port (tests/qemu_guest.rs: QEMU by hand;
//! tests/libvirt.rs: a libvirt domain).
//!
//! The binary, run as PID 1 in the guest, loads the virtio-net modules,
//! brings eth0 up and echoes every test frame it receives back to where it
//! came from, until a frame numbered [`QUIT`]; then its kernel echoes one
//! TCP connection on [`GUEST_IP`]:[`TCP_PORT`] and it powers off. The host
//! side's helpers for both halves are here too, and the initramfs builder:
//! this binary as /init, the libraries `ldd` names, and the guest kernel's
//! modules from `cargo xtask setup` (target/guest-kernel).
#![allow(dead_code)] // each test binary uses a different part

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    self, test_frame, test_frame_seq, wait_for, NetNs, PacketSocket, TEST_ETHERTYPE,
};

/// The guest's MAC (QEMU's `mac=`).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xd0, 0x00, 0x01];
/// Sequence number of the frame that ends the guest's echo loop.
pub const QUIT: u32 = u32::MAX;
/// Line the guest prints once it echoes, and the one with its total.
pub const READY: &str = "guest: echoing on eth0";
pub const ECHOED: &str = "guest: echoed ";
/// Then the guest's kernel speaks TCP: address, port, and its lines.
pub const GUEST_IP: [u8; 4] = [10, 77, 7, 9];
pub const HOST_IP: &str = "10.77.7.1/24";
pub const TCP_PORT: u16 = 7000;
pub const TCP_READY: &str = "guest: tcp echo listening";
pub const TCP_ECHOED: &str = "guest: tcp echoed ";
/// Bytes a0's stack sends to the guest's and reads back.
pub const TCP_BYTES: usize = 256 << 10;

/// The `main` of a test binary that is also the guest's init: as PID 1 it
/// is the guest; with `QEMU_GUEST_WRITE_INITRAMFS=PATH` it writes the
/// guest's initramfs there (for booting it by hand) and stops; otherwise
/// it runs `test` on the host, honouring `cargo test -- FILTER` and
/// printing libtest's lines (these binaries have `harness = false`).
pub fn main(name: &str, test: fn()) {
    main_with(name, test, init::main, || {
        build_initramfs(Path::new(
            &std::env::var_os("QEMU_GUEST_WRITE_INITRAMFS").unwrap(),
        ))
    })
}

/// [`main`] with another guest: `guest` runs as PID 1, `write_initramfs`
/// writes its initramfs to `QEMU_GUEST_WRITE_INITRAMFS`.
pub fn main_with(name: &str, test: fn(), guest: fn() -> !, write_initramfs: fn()) {
    if std::process::id() == 1 {
        guest();
    }
    if std::env::var_os("QEMU_GUEST_WRITE_INITRAMFS").is_some() {
        write_initramfs();
        return;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("running 0 tests (filtered out)");
        return;
    }
    println!("running 1 test");
    match std::panic::catch_unwind(test) {
        Ok(()) => println!("test {name} ... ok"),
        Err(_) => {
            println!("test {name} ... FAILED");
            std::process::exit(101);
        }
    }
}

/// Where `cargo xtask setup` unpacks the guest kernel (see
/// xtask/src/setup.rs, `GUEST_KERNEL_DIR`).
pub fn guest_kernel_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("guest-kernel")
}

/// Sends `data` from a's stack to the guest's TCP echo and reads it back.
pub fn tcp_round_trip(a: &NetNs, data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    a.enter(|| {
        let addr = std::net::SocketAddr::from((GUEST_IP, TCP_PORT));
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(20))
            .expect("connect to the guest");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        // Write and read at once: the echo would stall on a full window.
        let mut reader = conn.try_clone().unwrap();
        let receiving = std::thread::spawn(move || {
            let mut back = Vec::new();
            let _ = reader.read_to_end(&mut back);
            back
        });
        conn.write_all(data).expect("send to the guest");
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        receiving.join().unwrap()
    })
}

/// Sends at about 4000 frames/s: an emulated guest echoes far slower than
/// the switch forwards, and the test is about every frame crossing, not
/// about speed (that is `cargo xtask bench pvp`).
pub fn send_slowly(ns: &NetNs, frames: impl Iterator<Item = Vec<u8>> + Send) {
    ns.enter(|| {
        let sock = PacketSocket::open("a0");
        for (i, f) in frames.enumerate() {
            sock.send(&f);
            if i % 4 == 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
}

pub fn send_one(ns: &NetNs, src: [u8; 6], seq: u32) {
    ns.enter(|| {
        PacketSocket::open("a0").send(&test_frame(GUEST_MAC, src, TEST_ETHERTYPE, seq, 64))
    });
}

/// Why QEMU cannot boot a guest from `kernel_dir` here, if it cannot: its
/// accelerator, QEMU itself, the kernel `cargo xtask setup` downloads.
pub fn qemu_missing(kernel_dir: &Path) -> Option<String> {
    // TCG (the default) needs no /dev/kvm.
    if accel() == "kvm"
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        return Some("DATAPLANE_QEMU_ACCEL=kvm but /dev/kvm cannot be opened".into());
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        return Some(
            "qemu-system-x86_64 is not installed (`cargo xtask setup` installs it)".into(),
        );
    }
    if !kernel_dir.join("modules.order").exists() {
        return Some(format!(
            "no guest kernel in {} (`cargo xtask setup` downloads it)",
            kernel_dir.display()
        ));
    }
    None
}

/// QEMU's accelerator: TCG unless `DATAPLANE_QEMU_ACCEL` says otherwise.
/// This machine's /dev/kvm opens, but a 64-bit guest kernel hangs right
/// after decompression under it; TCG boots the guest in about 3 s. One
/// host thread for all vCPUs: with two vCPUs on a loaded host, QEMU 7.2's
/// multi-threaded TCG let the 7.3 guest kernel trip over its own code
/// patching (an int3 Oops in sched_clock_cpu while booting, seen once).
pub fn accel() -> String {
    std::env::var("DATAPLANE_QEMU_ACCEL").unwrap_or_else(|_| "tcg,thread=single".into())
}

/// A guest under QEMU, in `ns` (QEMU touches no network of its own unless
/// a test gives it the namespace's TAPs), its serial console captured;
/// killed on drop.
pub struct Vm {
    child: std::process::Child,
    /// The serial console's input (the guest's /dev/console).
    console: Option<std::process::ChildStdin>,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Vm {
    /// Boots `kernel` with `initramfs`, console on the serial port; `args`
    /// add CPUs, memory, machine and devices.
    pub fn start(ns: &NetNs, kernel: &Path, initramfs: &Path, args: &[&str]) -> Vm {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "qemu-system-x86_64"])
            .args(["-accel", &accel()])
            .args(args)
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
            .args([
                "-nographic",
                "-nodefaults",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("start qemu-system-x86_64");
        let console = child.stdin.take();
        let (output, readers) = harness::capture_output(&mut child);
        Vm {
            child,
            console,
            output,
            readers,
        }
    }

    /// Types `line` on the guest's serial console (its init reads it from
    /// standard input).
    pub fn type_line(&mut self, line: &str) {
        let console = self.console.as_mut().expect("the console's input");
        console
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| console.flush())
            .expect("writing to the guest's console");
    }

    /// Everything QEMU and the guest printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits for QEMU to exit by itself; kills it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        let exited = loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.kill();
        (exited, self.output())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `/tmp/dataplane-TAG-PID`, mode 0755: libvirt's QEMU runs as
    /// another user and reads the guest's files from it.
    pub fn new(tag: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dataplane-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the guest's initramfs: this binary as /init, the shared
/// libraries it needs at the paths `ldd` gives, /dev/console, and the
/// virtio-net modules with their load order.
pub fn build_initramfs(path: &Path) {
    build_initramfs_with(path, &guest_kernel_dir(), &[]);
}

/// [`build_initramfs`] from the kernel in `kdir`, with `extra` programs
/// (name in the guest's /, file on the host) and their libraries.
pub fn build_initramfs_with(path: &Path, kdir: &Path, extra: &[(&str, &Path)]) {
    let exe = std::env::current_exe().unwrap();
    let mut cpio = Cpio::default();
    cpio.dir("dev");
    cpio.char_device("dev/console", 5, 1);
    for d in ["proc", "sys", "run", "tmp"] {
        cpio.dir(d);
    }
    cpio.file("init", 0o755, &std::fs::read(&exe).unwrap());
    add_libraries(&mut cpio, &exe);
    for (name, file) in extra {
        if let Some(parent) = Path::new(name)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            cpio.dir(parent.to_str().unwrap());
        }
        cpio.file(name, 0o755, &std::fs::read(file).unwrap());
        add_libraries(&mut cpio, file);
    }
    let order = std::fs::read_to_string(kdir.join("modules.order")).unwrap();
    cpio.file("modules.order", 0o644, order.as_bytes());
    cpio.dir("modules");
    for m in order.lines() {
        let data = std::fs::read(kdir.join("modules").join(m)).unwrap();
        cpio.file(&format!("modules/{m}"), 0o644, &data);
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&cpio.finish()).unwrap();
}

/// The shared libraries `ldd` names for `exe`, at the paths it gives.
fn add_libraries(cpio: &mut Cpio, exe: &Path) {
    let ldd = harness::run_ok(Command::new("ldd").arg(exe));
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
        let lib = match line.split("=>").nth(1) {
            Some(rest) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(lib) = lib.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let inner = lib.trim_start_matches('/');
        let mut parent = PathBuf::new();
        for part in Path::new(inner).parent().unwrap().components() {
            parent.push(part);
            cpio.dir(parent.to_str().unwrap());
        }
        // Copied under the name the loader asks for (symlinks resolved).
        cpio.file(inner, 0o755, &std::fs::read(lib).unwrap());
    }
}

/// A "newc" cpio archive, the format the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    /// Paths already in the archive (directories and files).
    names: std::collections::HashSet<String>,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        if self.names.insert(name.to_string()) {
            self.entry(name, 0o040_755, 0, 0, &[]);
        }
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, major, minor, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        // Two programs may need the same library: the first copy serves.
        if self.names.insert(name.to_string()) {
            self.entry(name, 0o100_000 | perm, 0, 0, data);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rmajor: u32, rminor: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rmajor,
            rminor,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for v in fields {
            self.out.extend_from_slice(format!("{v:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Header + name and data are each padded to 4 bytes.
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, 0, &[]);
        self.out
    }
}

/// The guest side: this binary as the guest's init.
pub mod init {
    use super::*;

    pub fn main() -> ! {
        match echo() {
            Ok(n) => {
                println!("{ECHOED}{n} frames");
                match tcp_echo() {
                    Ok(bytes) => println!("{TCP_ECHOED}{bytes} bytes"),
                    Err(e) => println!("guest: error: {e}"),
                }
            }
            Err(e) => println!("guest: error: {e}"),
        }
        power_off()
    }

    /// Flushes what the guest printed and powers it off (QEMU runs with
    /// -no-reboot and exits).
    pub fn power_off() -> ! {
        let _ = std::io::stdout().flush();
        // SAFETY: plain syscalls; powering off is the point.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn echo() -> Result<usize, String> {
        load_modules()?;
        let ifname = "eth0";
        wait_for(Duration::from_secs(10), || {
            let c = CString::new(ifname).unwrap();
            // SAFETY: c is NUL-terminated.
            (unsafe { libc::if_nametoindex(c.as_ptr()) } != 0).then_some(())
        })
        .ok_or("no eth0 within 10 s of loading virtio_net")?;
        let mac = link_up(ifname)?;
        let sock = PacketSocket::open(ifname);
        // Room for a whole burst while this loop catches up.
        sock.set_receive_buffer(8 << 20);
        println!("{READY} ({})", mac.map(|b| format!("{b:02x}")).join(":"));
        let mut echoed = 0usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let frames = sock.receive(64, Duration::from_millis(50), |f| {
                f[..6] == mac && test_frame_seq(f, TEST_ETHERTYPE).is_some()
            });
            for f in frames {
                if test_frame_seq(&f, TEST_ETHERTYPE) == Some(QUIT) {
                    return Ok(echoed);
                }
                let mut back = f.clone();
                back[..6].copy_from_slice(&f[6..12]);
                back[6..12].copy_from_slice(&mac);
                sock.send(&back);
                echoed += 1;
            }
        }
        Err(format!("no quit frame within 120 s ({echoed} echoed)"))
    }

    /// Gives eth0 GUEST_IP/24 and echoes one TCP connection until the
    /// other side closes; returns the bytes echoed.
    fn tcp_echo() -> Result<usize, String> {
        use std::io::Read;
        set_address("eth0", GUEST_IP, [255, 255, 255, 0])?;
        let listener = std::net::TcpListener::bind(("0.0.0.0", TCP_PORT))
            .map_err(|e| format!("listen: {e}"))?;
        println!("{TCP_READY} on {TCP_PORT}");
        let _ = std::io::stdout().flush();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no TCP connection within 60 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        conn.set_nonblocking(false).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 << 10];
        let mut echoed = 0;
        loop {
            let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                // The last echoed bytes may still sit in the send queue:
                // powering off now would lose them (seen under load, 192584
                // of 262144 bytes arrived). A lingering close returns only
                // once our data and FIN are acknowledged.
                close_after_ack(conn)?;
                return Ok(echoed);
            }
            conn.write_all(&buf[..n])
                .map_err(|e| format!("write: {e}"))?;
            echoed += n;
        }
    }

    /// Closes `conn` with SO_LINGER on: close(2) blocks until everything
    /// sent, FIN included, is acknowledged (or 30 s pass).
    fn close_after_ack(conn: std::net::TcpStream) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 30,
        };
        // SAFETY: setsockopt on a socket we own, with a pointer to a
        // `struct linger` and its size.
        let rc = unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!("SO_LINGER: {}", std::io::Error::last_os_error()));
        }
        drop(conn);
        Ok(())
    }

    /// SIOCSIFADDR and SIOCSIFNETMASK on `ifname`.
    fn set_address(ifname: &str, addr: [u8; 4], mask: [u8; 4]) -> Result<(), String> {
        // SAFETY: a plain socket for the interface ioctls, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut result = Ok(());
        for (request, value, what) in [
            (libc::SIOCSIFADDR, addr, "SIOCSIFADDR"),
            (libc::SIOCSIFNETMASK, mask, "SIOCSIFNETMASK"),
        ] {
            // SAFETY: ifreq is plain data with a sockaddr_in written into
            // its address union (same size as sockaddr); the name fits.
            let rc = unsafe {
                let mut req: libc::ifreq = std::mem::zeroed();
                for (i, b) in ifname.bytes().enumerate() {
                    req.ifr_name[i] = b as libc::c_char;
                }
                let sin =
                    &mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut libc::sockaddr_in;
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(value);
                libc::ioctl(fd, request, &mut req)
            };
            if rc != 0 {
                result = Err(format!("{what}: {}", std::io::Error::last_os_error()));
                break;
            }
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        result
    }

    /// finit_module(2) for each module, in the order setup wrote.
    pub fn load_modules() -> Result<(), String> {
        let order = std::fs::read_to_string("/modules.order").map_err(|e| e.to_string())?;
        for m in order.lines() {
            let f =
                std::fs::File::open(format!("/modules/{m}")).map_err(|e| format!("{m}: {e}"))?;
            let params = CString::new("").unwrap();
            // SAFETY: a valid fd and a NUL-terminated parameter string.
            let rc =
                unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
            let err = std::io::Error::last_os_error();
            if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("loading {m}: {err}"));
            }
        }
        Ok(())
    }

    /// Sets `ifname` up; returns its MAC.
    pub fn link_up(ifname: &str) -> Result<[u8; 6], String> {
        // SAFETY: a plain socket for the interface ioctls, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: ifreq is plain data; the name fits (checked by the caller's
        // constant), and each ioctl gets a live ifreq.
        let result = unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (i, b) in ifname.bytes().enumerate() {
                req.ifr_name[i] = b as libc::c_char;
            }
            let mut mac = [0u8; 6];
            if libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) != 0 {
                Err(format!(
                    "SIOCGIFHWADDR: {}",
                    std::io::Error::last_os_error()
                ))
            } else {
                for (i, m) in mac.iter_mut().enumerate() {
                    *m = req.ifr_ifru.ifru_hwaddr.sa_data[i] as u8;
                }
                req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                if libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req) != 0 {
                    Err(format!("SIOCSIFFLAGS: {}", std::io::Error::last_os_error()))
                } else {
                    Ok(mac)
                }
            }
        };
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        result
    }
}
