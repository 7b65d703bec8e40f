//! The `dataplane` command line.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use dataplane::steer::pins::{PinRoot, DEFAULT_BPFFS};
use dataplane::steer::policy::{MatchArg, ModeArg, PolicySpec};
use dataplane::steer::{self, AttachOptions, AttachReport, ModeRequest};
use dataplane::sync::LockOrRecover;

/// A virtual switch on XDP and AF_XDP.
///
/// An XDP program (`steer`) on each interface hands the frames the switch
/// wants to AF_XDP sockets and passes everything else to the kernel, so ip,
/// ping, ssh and tcpdump keep working on the same interface.
#[derive(Parser)]
#[command(name = "dataplane", version, max_term_width = 100)]
#[command(after_help = "Examples:\n  \
    dataplane -n sw run --port afxdp:sa --port afxdp:sb     # a switch of two veths\n  \
    dataplane -n sw stats --watch                           # its live counters\n  \
    dataplane -n sw port add afxdp:sc,vlan=10               # a port more, while it runs\n\n\
    Files:\n  \
    BPFFS/dataplane/ns<netns inode>/<interface>/   pinned attachments (BPFFS: --bpffs)\n  \
    /run/dataplane/<netns>.ctl                      control socket of `run` (--control)\n\n\
    Environment: RUST_LOG sets the log level (e.g. RUST_LOG=debug).\n\
    Exit status: 0 on success, 1 on any error (one line on stderr, with the fix).")]
struct Cli {
    /// Run in the named network namespace (like `ip -n NAME`). Unlike
    /// `ip netns exec`, this keeps the host's bpffs, so pins stay visible.
    #[arg(short = 'n', long, global = true, value_name = "NAME")]
    netns: Option<String>,

    /// The bpffs mount that holds the pins.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,

    /// The running switch's control socket [default: /run/dataplane/NS.ctl
    /// with -n NS, else /run/dataplane/dataplane.ctl].
    #[arg(long, global = true, value_name = "PATH")]
    control: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the steer XDP program to an interface (or change its policy).
    ///
    /// The attachment is pinned in bpffs and stays after this command exits.
    /// Frames the policy selects go to the AF_XDP socket registered for their
    /// rx queue; without a socket they go to the kernel stack.
    #[command(after_help = "Examples:\n  \
        dataplane attach --iface veth0                      # every frame to the switch\n  \
        dataplane attach --iface veth0 --policy pass        # count only\n  \
        dataplane attach --iface veth0 --match ethertype=0x88b5 --match vlan=100\n  \
        dataplane -n sw attach --iface veth0 --mode skb")]
    Attach {
        /// Interface to attach to.
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
        /// XDP mode: driver (native), skb (generic), or auto (driver, then skb).
        #[arg(long, value_enum, default_value_t = ModeArgCli::Auto)]
        mode: ModeArgCli,
        /// What to do with frames: all (to the switch), pass (to the kernel),
        /// drop (count and drop), listed (only frames matching --match).
        /// Default: all, or listed when --match is given.
        #[arg(long, value_name = "POLICY")]
        policy: Option<ModeArg>,
        /// Select frames by destination MAC, VLAN id or EtherType:
        /// mac=02:00:00:00:00:0b, vlan=100, ethertype=0x88b5|ipv4|ipv6|arp.
        /// Repeatable; a frame matching any entry is selected.
        #[arg(long = "match", value_name = "KIND=VALUE")]
        matches: Vec<MatchArg>,
        /// Replace an XDP program that something else attached.
        #[arg(long)]
        force: bool,
    },
    /// Detach steer from an interface and remove every pin it made.
    ///
    /// The interface is left as it was before `attach`: no XDP program, no
    /// pins. A running switch that uses the interface loses it.
    #[command(after_help = "Example:\n  dataplane -n sw detach --iface sa")]
    Detach {
        /// Interface to detach from.
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
    },
    /// Show attached interfaces, their mode, policy and counters.
    ///
    /// Reads the pinned maps directly: works without a running switch.
    /// Counters are the steer program's outcomes: redirected (to an AF_XDP
    /// socket), passed (to the kernel), dropped, malformed, no_socket
    /// (selected, but no socket on that queue: passed), fast_path.
    #[command(after_help = "Examples:\n  \
        dataplane -n sw status\n  \
        dataplane -n sw status --watch 0.5\n  \
        dataplane -n sw status --json | jq '.[].counters'")]
    Status {
        /// Refresh every SECS seconds with per-second rates, until Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1", value_parser = parse_interval)]
        watch: Option<f64>,
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
    },
    /// Run the switch: AF_XDP, container, TAP and vhost-user ports, until Ctrl-C.
    ///
    /// Attaches steer (everything to the switch) to each AF_XDP port's
    /// interface unless it is already attached, opens an AF_XDP socket per
    /// queue on a shared UMEM, opens TAP devices, and forwards between the
    /// ports; learned unicast between AF_XDP and container ports is
    /// forwarded in the kernel (fast path) unless --no-fast-path. A
    /// container port (veth:) is the host end of a container's veth: the
    /// container keeps TSO and checksum offload. Ctrl-C, SIGTERM or SIGHUP stops
    /// it, unregisters the sockets and detaches what it attached. SIGUSR1
    /// prints port statistics and the FDB.
    #[command(after_help = "Examples:\n  \
        dataplane -n dp-sw run --port afxdp:sa --port afxdp:sb\n  \
        dataplane -n dp-sw run --port veth:sa --port veth:sb        (containers behind sa, sb)\n  \
        dataplane -n dp-sw run --port afxdp:sa --port afxdp:sb --metrics 127.0.0.1:9464\n  \
        dataplane -n dp-sw run --port afxdp:sa,vlan=10 --port afxdp:sb,trunk=10+20 --stats-interval 1\n  \
        dataplane -n dp-sw run --xconnect --busy-poll --core 1 --port afxdp:sa --port afxdp:sb\n  \
        dataplane -n dp-sw run --config switch.toml\n\n\
        Port specs:\n  \
        afxdp:IFACE[,queues=0+1][,vlan=N | ,trunk=N+M[,native=N]][,bind=auto|copy|zerocopy]\n  \
          (AF_XDP sockets share their PMD's UMEM in copy mode: bind=zerocopy is refused)\n  \
        veth:IFACE[,vlan=N | ,trunk=N+M[,native=N]]   (host end of a container's veth)\n  \
        tap:NAME[,queues=N][,vlan=N | ,trunk=N+M[,native=N]]   (creates or opens a TAP device)\n  \
        vhost-user:/PATH.sock[,vlan=N | ,trunk=N+M[,native=N]]   (a VM's virtio-net)\n\n\
        Signals: SIGINT/SIGTERM/SIGHUP/SIGQUIT stop it cleanly (exit 0); SIGUSR1 prints statistics and the FDB.\n\
        A run killed with SIGKILL is cleaned up by the next run, which says so.\n\n\
        Files: /run/dataplane/<netns>.ctl, the control socket (mode 0600; --control PATH,\n\
        --no-control); its protocol is in docs/CONTROL.md. A systemd unit example is in\n\
        contrib/systemd/dataplane.service.")]
    Run(RunArgs),
    /// Send UDP frames out of an interface as fast as the kernel can (or at --rate).
    ///
    /// Frames are injected as xdp_frames by an XDP program run through
    /// BPF_PROG_RUN in live-frame mode (no skb per frame), from the CPU this
    /// command runs on: pin it (--cpu) away from the switch.
    #[command(after_help = "Example:\n  \
        dataplane -n dp-a gen --iface a0 --dst-mac 02:00:00:00:00:0b --size 64 --duration 10 --cpu 0\n\n\
        The receiving side of the veth needs an XDP program (e.g. steer) or GRO\n\
        enabled, or the kernel drops redirected frames (they show as `failed`).")]
    Gen(GenArgs),
    /// Redirect every frame arriving on one interface straight to another in
    /// XDP (no switching): the in-kernel baseline benchmarks compare against.
    ///
    /// Runs until Ctrl-C, then detaches and prints how many frames it moved.
    #[command(after_help = "Example:\n  dataplane -n sw forward --from sa --to sb")]
    Forward {
        /// Interface whose received frames are redirected.
        #[arg(long, value_name = "IF")]
        from: String,
        /// Interface they are sent out of.
        #[arg(long, value_name = "IF")]
        to: String,
        /// Attach in skb (generic) mode instead of driver (native) mode, for
        /// devices without native XDP (macvlan).
        #[arg(long)]
        generic: bool,
    },
    /// Answer IPv4 frames addressed to this interface's MAC back out of it,
    /// towards PEER, in XDP (MACs rewritten): the application of the
    /// benchmarks' container and VM guests (an L2 forwarder or router at
    /// its cheapest). Everything else goes to the interface's stack.
    ///
    /// With --tap, the same echo as a process on a TAP's file descriptor
    /// (where QEMU would sit): the VM behind a Linux bridge's TAP port.
    ///
    /// Runs until Ctrl-C, then detaches and prints how many frames it answered.
    #[command(after_help = "Examples:\n  \
        dataplane -n guest echo --iface c0 --peer 02:00:00:00:00:0b\n  \
        dataplane -n sw echo --tap vmtap --mac 02:00:00:00:00:0e --peer 02:00:00:00:00:0b --core 1")]
    Echo {
        /// Interface to answer on (the guest's NIC).
        #[arg(
            long,
            value_name = "IF",
            required_unless_present = "tap",
            conflicts_with = "tap"
        )]
        iface: Option<String>,
        /// Create TAP device IF and answer on its file descriptor instead.
        #[arg(long, value_name = "IF", requires = "mac")]
        tap: Option<String>,
        /// With --tap: the guest's MAC (the frames it answers are addressed to it).
        #[arg(long, value_name = "MAC", value_parser = parse_mac_arg)]
        mac: Option<[u8; 6]>,
        /// Where answers go: the destination MAC written into them.
        #[arg(long, value_name = "MAC", value_parser = parse_mac_arg)]
        peer: [u8; 6],
        /// Attach in skb (generic) mode instead of driver (native) mode.
        #[arg(long, conflicts_with = "tap")]
        generic: bool,
        /// With --tap: pin the echo to this CPU.
        #[arg(long, value_name = "CPU", requires = "tap")]
        core: Option<usize>,
    },
    /// Add or remove ports of a running switch (through its control socket).
    ///
    /// Traffic between the other ports goes on, without loss.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  \
        dataplane -n sw port add afxdp:sc,vlan=10\n  \
        dataplane -n sw port del afxdp:sc")]
    Port(PortCommand),
    /// Show a running switch's ports, learned addresses or configuration.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  \
        dataplane -n sw show ports\n  \
        dataplane -n sw show fdb --json\n  \
        dataplane -n sw show config > switch.toml   # restart later with run --config")]
    Show(ShowCommand),
    /// Per-port rates and drops of a running switch; --watch for a live view.
    ///
    /// Rates (packets and megabits per second, fast path included) are
    /// computed between two reads of the switch's counters; drops are
    /// totals by reason: no_free_frame, tx_ring_full, rx_kernel (ring full
    /// or no receive buffer), invalid_desc, policy (VLAN, no egress),
    /// malformed, port_down (toward a port that is down).
    #[command(after_help = "Examples:\n  \
        dataplane -n sw stats --watch          # redrawn every second, Ctrl-C to stop\n  \
        dataplane -n sw stats --json\n\n\
        Prometheus: start the switch with --metrics 127.0.0.1:9464 and scrape /metrics.")]
    Stats {
        /// Redraw every SECS seconds (default 1) until Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1", value_parser = parse_interval)]
        watch: Option<f64>,
        /// Print the raw counters as JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
    },
    /// Change a running switch's learning table.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  \
        dataplane -n sw fdb flush\n  \
        dataplane -n sw fdb flush --port afxdp:sb")]
    Fdb(FdbCommand),
    /// Print the steer program's own log records (aya-log) until Ctrl-C.
    ///
    /// Records at or above the level RUST_LOG allowed when the program was
    /// attached are produced (e.g. `RUST_LOG=debug dataplane attach ...`
    /// logs every malformed frame).
    #[command(after_help = "Example:\n  \
        RUST_LOG=debug dataplane -n sw attach --iface sa && dataplane -n sw logs --iface sa")]
    Logs {
        /// Interface whose program to follow.
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
    },
}

#[derive(Subcommand)]
enum PortCommand {
    /// Add a port while traffic flows on the others.
    ///
    /// The port is opened on the least busy PMD thread, learned addresses
    /// and the fast path include it at once. Refused with the reason (and
    /// nothing changed) if the interface is missing, its MTU is too large
    /// for a UMEM frame, a queue does not exist, or the name is taken.
    #[command(after_help = "Examples:\n  \
        dataplane -n sw port add afxdp:sc\n  \
        dataplane -n sw port add afxdp:sd,trunk=10+20,native=1\n  \
        dataplane -n sw port add tap:vm1,queues=2")]
    Add {
        /// The port, as `run --port` takes it (e.g. afxdp:veth2,vlan=10).
        #[arg(value_name = "SPEC")]
        spec: String,
    },
    /// Remove a port; traffic between the other ports goes on.
    ///
    /// Its addresses are forgotten and it leaves the fast path first, then
    /// its sockets close and steer is detached from its interface (if the
    /// switch attached it). Prints its lifetime counters.
    #[command(after_help = "Example:\n  dataplane -n sw port del afxdp:sc")]
    Del {
        /// The port's name, as `show ports` lists it (e.g. afxdp:veth2).
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Subcommand)]
enum ShowCommand {
    /// Ports with their id, state, PMD and counters.
    ///
    /// State is `up`, or `down` while its link is down or its interface is
    /// gone (it comes back by itself when the interface returns).
    #[command(after_help = "Example:\n  dataplane -n sw show ports --json")]
    Ports {
        #[arg(long)]
        json: bool,
    },
    /// Learned addresses: VLAN, MAC, port.
    #[command(after_help = "Example:\n  dataplane -n sw show fdb")]
    Fdb {
        #[arg(long)]
        json: bool,
    },
    /// The running configuration as a TOML file (`run --config` reads it).
    ///
    /// Ports added at runtime are included, removed ones are not.
    #[command(
        after_help = "Example:\n  dataplane -n sw show config > /etc/dataplane/dataplane.toml"
    )]
    Config,
}

#[derive(Subcommand)]
enum FdbCommand {
    /// Forget learned addresses (all, or one port's); they are relearned
    /// from the next frames.
    ///
    /// Until then their frames are flooded; the fast path forgets them too.
    #[command(after_help = "Examples:\n  \
        dataplane -n sw fdb flush\n  \
        dataplane -n sw fdb flush --port afxdp:sb")]
    Flush {
        /// Only the addresses learned on this port.
        #[arg(long, value_name = "NAME")]
        port: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration (see the README); excludes the port flags.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with_all = ["ports", "xconnect", "no_fast_path", "core", "cores"])]
    config: Option<PathBuf>,
    /// A port: KIND:IFACE[,options] (repeatable).
    #[arg(long = "port", short = 'p', value_name = "SPEC")]
    ports: Vec<String>,
    /// Cross-connect ports pairwise (1st<->2nd, 3rd<->4th) instead of switching.
    #[arg(long)]
    xconnect: bool,
    /// Spin even when idle (lowest latency, a full core).
    #[arg(long)]
    busy_poll: bool,
    /// Set SO_PREFER_BUSY_POLL and SO_BUSY_POLL (USECS) on the AF_XDP
    /// sockets: for NIC drivers that poll in the syscall.
    #[arg(long, value_name = "USECS")]
    socket_busy_poll: Option<u32>,
    /// Keep every frame on the AF_XDP path: no in-kernel redirect of learned
    /// unicast between ports (for comparisons).
    #[arg(long)]
    no_fast_path: bool,
    /// CPU for the poll-mode thread (one PMD).
    #[arg(long, value_name = "CPU", conflicts_with = "cores")]
    core: Option<usize>,
    /// CPUs for several poll-mode threads, one each (e.g. 0,1); ports are
    /// spread over them round robin.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cores: Vec<usize>,
    /// Frames per receive burst.
    #[arg(long, default_value_t = dataplane::daemon::config::DEFAULT_BURST)]
    burst: usize,
    /// Print port statistics every SECS seconds.
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u64>,
    /// Serve Prometheus metrics over HTTP on ADDR (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Do not serve the control socket.
    #[arg(long)]
    no_control: bool,
}

#[derive(clap::Args)]
struct GenArgs {
    /// Interface to send out of.
    #[arg(long, short = 'i', value_name = "IF")]
    iface: String,
    /// Destination MAC (default: broadcast).
    #[arg(long, value_name = "MAC", value_parser = parse_mac_arg, default_value = "ff:ff:ff:ff:ff:ff")]
    dst_mac: [u8; 6],
    /// Source MAC (default: the interface's own).
    #[arg(long, value_name = "MAC", value_parser = parse_mac_arg)]
    src_mac: Option<[u8; 6]>,
    /// Source IPv4 address.
    #[arg(long, default_value = "10.200.0.1")]
    src_ip: std::net::Ipv4Addr,
    /// Destination IPv4 address.
    #[arg(long, default_value = "10.200.0.2")]
    dst_ip: std::net::Ipv4Addr,
    /// Frame size in bytes including the FCS (64..=1518).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = parse_duration_secs)]
    duration: f64,
    /// Stop after this many frames.
    #[arg(long)]
    count: Option<u64>,
    /// Limit the rate, in frames per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A refresh interval in seconds: 0.1 to 3600 (a panic on `inf` or NaN
/// before, deep in Duration).
fn parse_interval(s: &str) -> Result<f64, String> {
    seconds_in(s, 0.1, 3600.0)
}

/// A run length in seconds: up to a year.
fn parse_duration_secs(s: &str) -> Result<f64, String> {
    seconds_in(s, 0.0, 365.0 * 86_400.0)
}

fn seconds_in(s: &str, min: f64, max: f64) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{s} seconds is out of range: {min} to {max}"));
    }
    Ok(v)
}

fn parse_mac_arg(s: &str) -> Result<[u8; 6], String> {
    dataplane::steer::policy::parse_mac(s).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArgCli {
    Auto,
    Driver,
    Skb,
}

impl From<ModeArgCli> for ModeRequest {
    fn from(m: ModeArgCli) -> ModeRequest {
        match m {
            ModeArgCli::Auto => ModeRequest::Auto,
            ModeArgCli::Driver => ModeRequest::Driver,
            ModeArgCli::Skb => ModeRequest::Skb,
        }
    }
}

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
                ifname: iface.clone(),
                mode: mode.into(),
                policy: policy.clone(),
                force,
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

fn run_gen(args: GenArgs) -> anyhow::Result<()> {
    use dataplane::traffic::gen::{build_udp_frame, FrameSpec, Generator};
    use std::io::{IsTerminal, Write};
    use std::sync::atomic::Ordering;

    dataplane::sys::privileges::require_admin()?;
    if let Some(cpu) = args.cpu {
        dataplane::sys::netdev::pin_thread_to_cpu(cpu)
            .map_err(|e| anyhow::anyhow!("pinning the generator to CPU {cpu}: {e}"))?;
    }
    let src_mac = match args.src_mac {
        Some(m) => m,
        None => dataplane::sys::netdev::mac(&args.iface)?,
    };
    let frame = build_udp_frame(&FrameSpec {
        size: args.size,
        headers: dataplane_common::wire::build::UdpIpv4 {
            src_mac,
            dst_mac: args.dst_mac,
            src_ip: args.src_ip.octets(),
            dst_ip: args.dst_ip.octets(),
            src_port: 9,
            dst_port: 9,
        },
    })?;
    let generator = Generator::new(&args.iface, frame)?;
    let stop = cli::status::ctrl_c_flag()?;
    let tty = std::io::stderr().is_terminal();
    let report = generator.run_for(
        std::time::Duration::from_secs_f64(args.duration),
        args.count,
        args.rate,
        &|| stop.load(Ordering::Relaxed),
        &mut |r| {
            let line = format!(
                "gen {}: {:.3} Mpps, {} sent, {} failed, {:.0}s",
                args.iface,
                r.pps() / 1e6,
                r.sent,
                r.failed,
                r.elapsed.as_secs_f64()
            );
            if tty {
                eprint!("\r{line}   ");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
        },
    )?;
    if tty {
        eprintln!();
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "interface": args.iface,
                "size": args.size,
                "sent": report.sent,
                "failed": report.failed,
                "seconds": report.elapsed.as_secs_f64(),
                "pps": report.pps(),
            })
        );
    } else {
        println!(
            "sent {} frames of {} bytes out of {} in {:.2}s: {:.3} Mpps offered ({} failed)",
            report.sent,
            args.size,
            args.iface,
            report.elapsed.as_secs_f64(),
            report.pps() / 1e6,
            report.failed
        );
    }
    if report.failed > 0 && report.sent == 0 {
        anyhow::bail!(
            "every redirect out of {} failed: the peer of a veth needs an XDP program or GRO \
             (`ethtool -K PEER gro on`), and both ends must be up",
            args.iface
        );
    }
    Ok(())
}

fn run_switch(root: &PinRoot, args: RunArgs, socket: &std::path::Path) -> anyhow::Result<()> {
    use dataplane::daemon::config::{ForwardingMode, RunConfig, RunFlags};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let mut config = match &args.config {
        Some(path) => RunConfig::from_file(path)?,
        None => RunConfig::from_flags(
            &args.ports,
            RunFlags {
                mode: if args.xconnect {
                    ForwardingMode::Xconnect
                } else {
                    ForwardingMode::Switch
                },
                fast_path: !args.no_fast_path,
                busy_poll: args.busy_poll,
                cores: match args.core {
                    Some(c) => vec![c],
                    None => args.cores.clone(),
                },
                burst: args.burst,
                stats_interval: args
                    .stats_interval
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
            },
        )?,
    };
    if let Some(us) = args.socket_busy_poll {
        config.socket_busy_poll = Some(us);
    }
    let stop = cli::status::ctrl_c_flag()?;
    let dump = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, dump.clone())?;

    let mut last: Option<(Instant, Vec<(String, dataplane::port::PortSnapshot)>)> = None;
    let mut next_stats = config.stats_interval.map(|i| Instant::now() + i);
    // Before any thread starts: they inherit it, and a PMD re-pins itself.
    match dataplane::sys::netdev::keep_off_cpus(&config.cores) {
        Ok(Some(left)) => {
            tracing::info!("threads other than the PMDs run on CPU(s) {left:?}, off the PMDs' CPUs")
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("could not keep other threads off the PMDs' CPUs: {e}"),
    }
    let daemon = Arc::new(Mutex::new(dataplane::daemon::run::Daemon::start(
        &config, root,
    )?));
    let handler = Arc::new(dataplane::daemon::run::ControlHandler(daemon.clone()));
    let server = match dataplane::control::Server::start(
        (!args.no_control).then_some(socket),
        args.metrics,
        handler,
    ) {
        Ok(server) => server,
        Err(e) => {
            // Release the ports before reporting.
            let _ = daemon.lock_or_recover().stop();
            return Err(e.into());
        }
    };
    if !args.no_control {
        tracing::info!(socket = %socket.display(), "control socket ready (dataplane show ports, port add, stats --watch)");
    }
    if let Some(addr) = args.metrics {
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let summary = dataplane::daemon::run::run_until(&daemon, &stop, &mut |d| {
        let now = Instant::now();
        let periodic = next_stats.is_some_and(|t| now >= t);
        let on_demand = dump.swap(false, Ordering::Relaxed);
        if !periodic && !on_demand {
            return;
        }
        if let (Some(t), Some(i)) = (next_stats.as_mut(), config.stats_interval) {
            if periodic {
                *t = now + i;
            }
        }
        let snap = dataplane::daemon::run::snapshot(d);
        let prev = last
            .as_ref()
            .map(|(t, p)| (p.as_slice(), now.duration_since(*t).as_secs_f64()));
        print!("{}", dataplane::daemon::run::stats_table(&snap, prev));
        if on_demand {
            print_fdb(&d.fdb_rows());
        }
        last = Some((now, snap));
    });
    drop(server);
    let summary = summary?;
    println!("final port statistics:");
    print!(
        "{}",
        dataplane::daemon::run::stats_table(&summary.ports, None)
    );
    let polling = (summary.busy_cycles + summary.idle_cycles).max(1);
    println!(
        "PMD: {:.1}% of polling cycles forwarded frames ({} busy, {} idle cycles; time asleep not counted); longest iteration {} us",
        summary.busy_cycles as f64 * 100.0 / polling as f64,
        summary.busy_cycles,
        summary.idle_cycles,
        summary.longest_iteration_ns / 1000
    );
    let a = summary.accounting;
    println!(
        "frames: {} total, {} free, {} in fill/RX rings, {} in TX/completion rings, {} unaccounted, {} refused frees",
        a.total,
        a.free,
        a.in_rx_rings,
        a.in_tx_rings,
        a.unaccounted(),
        a.refused_frees
    );
    Ok(())
}

fn print_fdb(fdb: &[dataplane::control::FdbRow]) {
    println!("FDB ({} entries):", fdb.len());
    println!("{:>5}  {:<17}  PORT", "VLAN", "MAC");
    for r in fdb {
        println!("{:>5}  {:<17}  {}", r.vlan, r.mac, r.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_durations_are_range_checked() {
        assert!(parse_interval("inf").is_err(), "a panic in Duration before");
        assert!(parse_interval("NaN").is_err());
        assert!(parse_interval("0.01").is_err());
        assert_eq!(parse_interval("0.5"), Ok(0.5));
        assert!(parse_duration_secs("-1").is_err());
        assert!(parse_duration_secs("1e300").is_err());
        assert_eq!(parse_duration_secs("10"), Ok(10.0));
    }
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
