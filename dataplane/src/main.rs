//! The `dataplane` command line.

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use dataplane::steer::pins::PinRoot;
use dataplane::steer::policy::PolicySpec;
use dataplane::steer::{self, AttachOptions, AttachReport};

use cli::args::{Cli, Command, FdbCommand, PortCommand, ShowCommand};
use cli::gen::run_gen;
use cli::run::run_switch;

fn main() -> ExitCode {
    let cli = Cli::parse();
    dataplane::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Error messages carry their cause already; the chain would repeat it.
            eprintln!("dataplane: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli
        .control
        .clone()
        .unwrap_or_else(|| dataplane::control::default_socket_path(cli.netns.as_deref()));
    // Control clients need neither the namespace nor bpffs.
    match cli.command {
        Command::Port(PortCommand::Add { spec }) => return cli::control::port_add(&socket, &spec),
        Command::Port(PortCommand::Del { name }) => return cli::control::port_del(&socket, &name),
        Command::Show(ShowCommand::Ports { json }) => {
            return cli::control::show_ports(&socket, json)
        }
        Command::Show(ShowCommand::Fdb { json }) => return cli::control::show_fdb(&socket, json),
        Command::Show(ShowCommand::Pmd { json }) => return cli::control::show_pmd(&socket, json),
        Command::Show(ShowCommand::Config) => return cli::control::show_config(&socket),
        Command::Stats { watch, json } => return cli::control::stats(&socket, watch, json),
        Command::Fdb(FdbCommand::Flush { port }) => return cli::control::fdb_flush(&socket, port),
        _ => {}
    }
    if let Some(ns) = &cli.netns {
        // Before any thread exists: threads inherit the namespace.
        dataplane::sys::netns::enter(ns)?;
    }
    let root = PinRoot::open(&cli.bpffs)?;
    match cli.command {
        Command::Attach {
            iface,
            mode,
            policy,
            matches,
            force,
        } => {
            let policy = PolicySpec::new(policy, &matches)?;
            let opts = AttachOptions {
                force,
                ..AttachOptions::new(&iface, mode.into(), policy.clone())
            };
            match steer::attach(&root, &opts)? {
                AttachReport::Attached {
                    mode,
                    fallback_reason,
                    replaced,
                } => {
                    for r in replaced {
                        println!("replaced XDP program {:?} (id {}) on {iface}", r.name, r.id);
                    }
                    if let Some(reason) = fallback_reason {
                        println!("driver mode unavailable on {iface} ({reason}); using skb mode");
                    }
                    println!(
                        "attached steer to {iface} in {} mode, policy {}",
                        mode.name(),
                        describe_policy(&policy)
                    );
                }
                AttachReport::PolicyUpdated { mode } => println!(
                    "steer already attached to {iface} ({} mode); policy now {}",
                    mode.map(|m| m.name()).unwrap_or("unknown"),
                    describe_policy(&policy)
                ),
            }
        }
        Command::Detach { iface } => {
            steer::detach(&root, &iface)?;
            println!("detached steer from {iface}");
        }
        Command::Status { watch, json } => match watch {
            Some(secs) => cli::status::watch(&root, secs)?,
            None => cli::status::print(&root, json)?,
        },
        Command::Run(args) => run_switch(&root, args, &socket)?,
        Command::Gen(args) => run_gen(args)?,
        Command::Forward { from, to, generic } => {
            dataplane::sys::privileges::require_admin()?;
            let mut fwd = dataplane::traffic::forward::Forward::load(&to)?;
            fwd.attach(&from, generic)?;
            let stop = cli::status::ctrl_c_flag()?;
            eprintln!("forwarding {from} -> {to} in XDP; Ctrl-C to stop");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let (ok, failed) = fwd.counts()?;
            println!("forwarded {ok} frames from {from} to {to} ({failed} failed)");
        }
        Command::Echo {
            iface,
            tap,
            mac,
            peer,
            generic,
            core,
        } => {
            dataplane::sys::privileges::require_admin()?;
            let stop = cli::status::ctrl_c_flag()?;
            if let (Some(tap), Some(guest)) = (tap, mac) {
                if let Some(cpu) = core {
                    dataplane::sys::netdev::pin_thread_to_cpu(cpu)
                        .with_context(|| format!("pinning the echo to CPU {cpu}"))?;
                }
                let echo = dataplane::traffic::tap_echo::TapEcho::open(&tap, guest, peer)?;
                eprintln!("echoing IPv4 frames for the guest on TAP {tap}; Ctrl-C to stop");
                let answered = echo.run(&stop);
                println!("answered {answered} frames on TAP {tap}");
                return Ok(());
            }
            let iface = iface.expect("clap requires --iface without --tap");
            let me = dataplane::sys::netdev::mac(&iface)?;
            let mut echo = dataplane::traffic::forward::Forward::load_echo(&iface, me, peer)?;
            echo.attach(&iface, generic)?;
            eprintln!(
                "echoing IPv4 frames for {iface} back towards the peer in XDP; Ctrl-C to stop"
            );
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let (ok, failed) = echo.counts()?;
            println!("answered {ok} frames on {iface} ({failed} failed)");
        }
        Command::Port(_) | Command::Show(_) | Command::Stats { .. } | Command::Fdb(_) => {
            unreachable!("control commands return above")
        }
        Command::Logs { iface } => {
            dataplane::sys::netdev::check_name(&iface)?;
            let stop = cli::status::ctrl_c_flag()?;
            eprintln!("following eBPF logs of {iface}; Ctrl-C to stop");
            steer::follow_logs(&root, &iface, || {
                stop.load(std::sync::atomic::Ordering::Relaxed)
            })?;
        }
    }
    Ok(())
}

fn describe_policy(p: &PolicySpec) -> String {
    if p.matches.is_empty() {
        p.mode.name().to_string()
    } else {
        format!("{} ({} matches)", p.mode.name(), p.matches.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::CommandFactory;

    /// Every command, nested ones included, with its path (`show ports`).
    fn all_commands(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name()).trim().to_string();
            out.push((p.clone(), sub.clone()));
            all_commands(sub, p, out);
        }
    }

    #[test]
    fn every_command_has_a_man_style_help_with_examples() {
        let mut cmds = Vec::new();
        all_commands(&Cli::command(), String::new(), &mut cmds);
        assert!(cmds.len() >= 17, "{} commands", cmds.len());
        for (path, mut cmd) in cmds {
            let help = cmd.render_long_help().to_string();
            assert!(help.contains("Usage:"), "{path}: {help}");
            assert!(
                help.contains("Example"),
                "`dataplane {path} --help` shows no example:\n{help}"
            );
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(about.len() > 10, "{path} has no description");
        }
    }

    #[test]
    fn the_systemd_unit_starts_a_valid_command_line() {
        let unit = include_str!("../../contrib/systemd/dataplane.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart in the unit");
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert!(args[0].ends_with("/dataplane"), "{exec}");
        let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{exec}: {e}"));
        assert!(matches!(cli.command, Command::Run(_)), "{exec}");
        assert!(unit.contains("KillSignal=SIGINT"), "stops like Ctrl-C");
    }
}
