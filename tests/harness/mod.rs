//! Throwaway topologies for integration tests: network namespaces, veth
//! pairs, raw-frame senders, and the `dataplane` binary run inside them.
//!
//! Everything a [`Topology`] creates is removed when it is dropped, also when
//! the test panics: the namespaces (which takes their veths and XDP programs
//! with them) and any dataplane pins in bpffs that belong to them.
//!
//! By concern: [`topology`] (namespaces, veths), [`packets`] (raw frames in
//! and out), [`switch`] (the `dataplane run` process), [`probes`] (/proc),
//! [`tcp`] (a TCP transfer checked byte for byte), [`ovs`] (Open vSwitch as
//! a peer);
//! every item is re-exported here, so tests name it `harness::X`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Returns false (and records the skip) when the test cannot run without
/// root. Privileged tests call this first and return early on false.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skipped(
        test,
        "needs root (creates network namespaces, veth pairs and XDP programs); \
         run `sudo cargo xtask test`",
    );
    false
}

/// Environment variable naming the file where skipped tests are recorded.
/// libtest shows a test that returned early as `ok` and hides its output,
/// so `cargo xtask test` sets this, then counts the lines: it reports the
/// skips, and fails a run as root that skipped anything.
pub const SKIP_LOG_ENV: &str = "DATAPLANE_TEST_SKIP_LOG";

/// Records that `test` did not run, and why: on stderr, and as one line
/// in the skip log when [`SKIP_LOG_ENV`] names one.
pub fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        // One short write per line with O_APPEND: lines from parallel test
        // threads and test binaries do not interleave.
        let line = format!("{test}: {}\n", why.replace('\n', " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("recording the skip of {test} in {path:?}: {e}");
        }
    }
}

/// The bpffs mount the tests use (the default one).
pub const BPFFS: &str = "/sys/fs/bpf";

static COUNTER: AtomicU32 = AtomicU32::new(0);

mod ovs;
mod packets;
mod probes;
mod switch;
mod tcp;
mod topology;

pub use ovs::*;
pub use packets::*;
pub use probes::*;
pub use switch::*;
pub use tcp::*;
pub use topology::*;

/// Path of the `dataplane` binary cargo built for this test run.
pub fn dataplane_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dataplane"))
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
