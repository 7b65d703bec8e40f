//! `cargo xtask fuzz`: the cargo-fuzz targets over the vhost-user code
//! (fuzz/), each for a bounded time. `cargo xtask test` runs them briefly
//! too, so a change that lets a hostile guest or frontend crash or hang
//! the switch is caught in CI, not only by whoever remembers to fuzz.

use std::process::Command;

use anyhow::{bail, Result};
use clap::Args;

use crate::run::{checked, workspace_root};
use crate::setup;

/// The targets (fuzz/fuzz_targets/*.rs), with their hand-made seeds if any.
pub const TARGETS: [(&str, Option<&str>); 4] = [
    // The chain walker, pop and push, on a static guest memory.
    ("virtq_chain", Some("seeds")),
    // The port's burst loops against a guest that rewrites its memory
    // between chains; queues up to 1024 entries.
    ("virtq_burst", None),
    // The vhost-user relay's decisions on arbitrary message streams.
    ("relay_gate", None),
    // Checksum completion and TSO segmentation on what a guest or a TAP's
    // namespace asks in its virtio-net header.
    ("offload_segments", Some("seeds/offload_segments")),
];

#[derive(Args)]
pub struct FuzzOptions {
    /// How long to fuzz each target, in seconds (after the build).
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
    /// Only this target (virtq_chain, virtq_burst, relay_gate, offload_segments).
    #[arg(long)]
    pub target: Option<String>,
}

pub fn run(opts: &FuzzOptions) -> Result<()> {
    setup::cargo_fuzz()?;
    if let Some(t) = &opts.target {
        if !TARGETS.iter().any(|(name, _)| name == t) {
            let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
            bail!("no fuzz target {t:?}; targets: {}", names.join(", "));
        }
    }
    let dir = workspace_root().join("fuzz");
    for (target, seeds) in TARGETS {
        if opts.target.as_deref().is_some_and(|t| t != target) {
            continue;
        }
        // libFuzzer needs its corpus directory to exist; what it finds is
        // kept there (ignored by git), and seeds/ is read as extra input.
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        eprintln!(
            "[fuzz] {target} for {} s (the first build takes about a minute)",
            opts.seconds
        );
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus);
        if let Some(seeds) = seeds {
            cmd.arg(seeds);
        }
        checked(
            cmd.arg("--")
                .arg(format!("-max_total_time={}", opts.seconds))
                // The libFuzzer banner per new coverage is noise in CI logs;
                // the final summary (executions, coverage) and any crash are
                // still printed.
                .arg("-print_final_stats=1")
                .arg("-verbosity=0"),
        )?;
    }
    Ok(())
}
