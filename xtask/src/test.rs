//! `cargo xtask test`: the whole suite, as CI runs it.

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::build;
use crate::fuzz;
use crate::run::{checked, is_root, workspace_root};
use crate::setup;

#[derive(Args)]
pub struct TestOptions {
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    pub no_lint: bool,
    /// Seconds of fuzzing after the tests, split across the fuzz targets
    /// (0: none).
    #[arg(long, default_value_t = 40)]
    pub fuzz_seconds: u32,
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

pub fn run(opts: &TestOptions) -> Result<()> {
    if is_root() {
        setup::run()?;
    } else {
        eprintln!("[test] not root: skipping machine setup; privileged tests will report themselves skipped");
    }
    build::build_ebpf(&build::EbpfOptions::default())?;
    let root = workspace_root();
    if !opts.no_lint {
        eprintln!("[test] formatting and lints");
        checked(
            Command::new("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--", "--check"]),
        )?;
        checked(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    eprintln!("[test] unit and integration tests");
    checked(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--workspace"])
            .args(&opts.cargo_args),
    )?;
    if opts.fuzz_seconds > 0 && opts.cargo_args.is_empty() {
        fuzz::run(&fuzz::FuzzOptions {
            seconds: (opts.fuzz_seconds / fuzz::TARGETS.len() as u32).max(1),
            target: None,
        })?;
    }
    Ok(())
}
