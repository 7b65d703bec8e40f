//! `cargo xtask test`: the whole suite, as CI runs it.

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::build;
use crate::fuzz;
use crate::run::{checked, is_root, target_dir, workspace_root};
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
        // Without these the build fails deep inside libxdp-sys: say so first.
        setup::packages(setup::BUILD_PACKAGES)?;
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
    // Where tests that cannot run here record themselves (the harness's
    // SKIP_LOG_ENV): libtest would show them as `ok`.
    let skip_log = target_dir().join("test-skips.log");
    std::fs::create_dir_all(target_dir())?;
    std::fs::write(&skip_log, "").with_context(|| format!("creating {}", skip_log.display()))?;
    let tests = checked(
        Command::new("cargo")
            .current_dir(&root)
            .env(SKIP_LOG_ENV, &skip_log)
            .args(["test", "--workspace"])
            .args(&opts.cargo_args),
    );
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skips: Vec<&str> = skips.lines().collect();
    tests?;
    report_skips(&skips, is_root())?;
    if opts.fuzz_seconds > 0 && opts.cargo_args.is_empty() {
        fuzz::run(&fuzz::FuzzOptions {
            seconds: (opts.fuzz_seconds / fuzz::TARGETS.len() as u32).max(1),
            target: None,
        })?;
    }
    Ok(())
}

/// Must match `SKIP_LOG_ENV` in tests/harness/mod.rs.
const SKIP_LOG_ENV: &str = "DATAPLANE_TEST_SKIP_LOG";

/// Says how many tests did not run and why; as root, where every test
/// can run (setup installed what they need), a skip fails the run.
fn report_skips(skips: &[&str], root: bool) -> Result<()> {
    if skips.is_empty() {
        eprintln!("[test] every test ran (0 skipped)");
        return Ok(());
    }
    let list = skips
        .iter()
        .map(|s| format!("  {s}"))
        .collect::<Vec<_>>()
        .join("\n");
    if root {
        bail!(
            "{} test(s) skipped although running as root:\n{list}",
            skips.len()
        );
    }
    eprintln!(
        "[test] {} privileged test(s) SKIPPED, shown as `ok` above (not root):\n{list}\n\
         [test] run `sudo cargo xtask test` to run them",
        skips.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_reported_and_fail_a_root_run() {
        assert!(report_skips(&[], true).is_ok());
        assert!(report_skips(&["a: needs root"], false).is_ok());
        let err = report_skips(&["qemu_guest: no guest kernel"], true).unwrap_err();
        assert!(err.to_string().contains("1 test(s) skipped"), "{err}");
        assert!(
            err.to_string().contains("qemu_guest: no guest kernel"),
            "{err}"
        );
    }
}
