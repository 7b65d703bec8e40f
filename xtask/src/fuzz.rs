//! `cargo xtask fuzz`: the cargo-fuzz target over the vhost-user virtqueue
//! code (fuzz/), for a bounded time. `cargo xtask test` runs it briefly too,
//! so a change that makes a hostile guest crash or hang the virtqueue code
//! is caught in CI, not only by whoever remembers to fuzz.

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::run::{checked, workspace_root};
use crate::setup;

/// The only target (fuzz/fuzz_targets/virtq_chain.rs).
const TARGET: &str = "virtq_chain";

#[derive(Args)]
pub struct FuzzOptions {
    /// How long to fuzz, in seconds (after the build).
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
}

pub fn run(opts: &FuzzOptions) -> Result<()> {
    setup::cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    // libFuzzer needs its corpus directory to exist; what it finds is kept
    // there (ignored by git), and seeds/ is read as extra input.
    let corpus = dir.join("corpus").join(TARGET);
    std::fs::create_dir_all(&corpus)?;
    eprintln!(
        "[fuzz] {TARGET} for {} s (the first build takes about a minute)",
        opts.seconds
    );
    checked(
        Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", TARGET])
            .arg(&corpus)
            .arg("seeds")
            .arg("--")
            .arg(format!("-max_total_time={}", opts.seconds))
            // The libFuzzer banner per new coverage is noise in CI logs;
            // the final summary and any crash are still printed.
            .arg("-print_final_stats=1")
            .arg("-verbosity=0"),
    )
}
