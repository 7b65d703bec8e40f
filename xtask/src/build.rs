//! Building the XDP object and the binary that embeds it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::run::{checked, target_dir, workspace_root};
use crate::setup;

#[derive(Args, Default)]
pub struct EbpfOptions {}

#[derive(Args, Default)]
pub struct BuildOptions {
    /// Build the userspace binary with optimisations (benchmarks).
    #[arg(long)]
    pub release: bool,
}

/// Where `build_ebpf` leaves the object; `dataplane/build.rs` embeds it from here.
pub fn ebpf_object() -> PathBuf {
    target_dir().join("bpfel-unknown-none/release/dataplane-ebpf")
}

pub fn build_ebpf(_opts: &EbpfOptions) -> Result<()> {
    setup::ebpf_toolchain()?;
    eprintln!("[build-ebpf] building the XDP programs");
    checked(
        Command::new("cargo")
            .current_dir(workspace_root().join("dataplane-ebpf"))
            .args(["+nightly", "build", "--release", "--target-dir"])
            .arg(target_dir())
            // Host-side settings must not leak into the BPF build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )?;
    eprintln!("[build-ebpf] object: {}", ebpf_object().display());
    Ok(())
}

/// Builds the object, then the userspace binary; returns the binary's path.
pub fn build_all(opts: &BuildOptions) -> Result<PathBuf> {
    build_ebpf(&EbpfOptions::default())?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["build", "--package", "dataplane", "--bins"]);
    if opts.release {
        cmd.arg("--release");
    }
    checked(&mut cmd)?;
    let profile = if opts.release { "release" } else { "debug" };
    Ok(target_dir().join(profile).join("dataplane"))
}
