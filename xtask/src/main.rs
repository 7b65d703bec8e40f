//! `cargo xtask`: everything a fresh machine needs, as one entry point.
//!
//! Each subcommand runs the steps it depends on first (all idempotent), so
//! `cargo xtask demo` and `cargo xtask test` work from a fresh clone.

mod bench;
mod build;
mod demo;
mod fuzz;
mod run;
mod setup;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test and demo automation for dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make this machine ready: Debian packages, rust-src, bpf-linker, bpffs.
    Setup,
    /// Build the XDP object (dataplane-ebpf) for bpfel-unknown-none.
    BuildEbpf(build::EbpfOptions),
    /// Build the XDP object and the `dataplane` binary that embeds it.
    Build(build::BuildOptions),
    /// Run the whole test suite: fmt, clippy, unit and privileged integration tests.
    Test(test::TestOptions),
    /// Build everything, make a veth topology, attach, show live counters, clean up.
    Demo(demo::DemoOptions),
    /// Benchmark the switch against the Linux bridge, DPDK testpmd and XDP redirect.
    Bench(bench::BenchOptions),
    /// Fuzz the vhost-user virtqueues and relay (installs cargo-fuzz if missing).
    Fuzz(fuzz::FuzzOptions),
    /// Minutes of routine churn under traffic (ports, interfaces, kills); not in CI.
    Soak(soak::SoakOptions),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf(opts) => build::build_ebpf(&opts),
        Command::Build(opts) => build::build_all(&opts).map(|_| ()),
        Command::Test(opts) => test::run(&opts),
        Command::Demo(opts) => demo::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
        Command::Soak(opts) => soak::run(&opts),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
