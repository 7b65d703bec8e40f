//! The command line's shape: every subcommand, option and `--help` text
//! (clap), and the parsers of option values.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use dataplane::steer::pins::DEFAULT_BPFFS;
use dataplane::steer::policy::{MatchArg, ModeArg};
use dataplane::steer::ModeRequest;

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
pub struct Cli {
    /// Run in the named network namespace (like `ip -n NAME`). Unlike
    /// `ip netns exec`, this keeps the host's bpffs, so pins stay visible.
    #[arg(short = 'n', long, global = true, value_name = "NAME")]
    pub netns: Option<String>,

    /// The bpffs mount that holds the pins.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,

    /// The running switch's control socket [default: /run/dataplane/NS.ctl
    /// with -n NS, else /run/dataplane/dataplane.ctl].
    #[arg(long, global = true, value_name = "PATH")]
    pub control: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Select frames by destination MAC, VLAN id, EtherType or IPv4 UDP
        /// destination: mac=02:00:00:00:00:0b, vlan=100,
        /// ethertype=0x88b5|ipv4|ipv6|arp, udp=10.99.0.1:4789.
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
        afxdp:IFACE[,queues=0+1[,pmds=1+0]][,vlan=N | ,trunk=N+M[,native=N]][,bind=auto|copy|zerocopy]\n  \
          (queues go round robin over the PMDs of --cores, or as pmds= pins them;\n  \
          bind=auto takes zero-copy where the driver offers it (a UMEM of the port's own, one copy\n  \
          to and from the PMD's), copy mode elsewhere (veth: the PMD's shared UMEM, no copy; a\n  \
          virtio_net module, whose zero-copy transmit is broken: bind=zerocopy still takes it))\n  \
        veth:IFACE[,vlan=N | ,trunk=N+M[,native=N]]   (host end of a container's veth)\n  \
        tap:NAME[,queues=N][,vlan=N | ,trunk=N+M[,native=N]]   (creates or opens a TAP device)\n  \
        vhost-user:/PATH.sock[,vlan=N | ,trunk=N+M[,native=N]][,owner=USER[:GROUP]]   (a VM's virtio-net;\n  \
          the socket is 0600 root's; owner=libvirt-qemu gives it to libvirt's QEMU, :GROUP makes it 0660)\n  \
        vxlan:vni=N,local=IP,remote=IP[+IP...],dev=UNDERLAY[,port=4789][,queues=0+1][,vlan=N | ,trunk=...]\n  \
          (a VXLAN tunnel to other hosts' switches; only UDP to local:port on UNDERLAY reaches the switch,\n  \
          the rest stays the kernel's; overlay MTU = UNDERLAY's MTU - 50; also vxlan:UNDERLAY,vni=N,...)\n  \
        Every kind also takes ,max_macs=N: at most N source MACs learned on the port (port security)\n\n\
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
    /// Show a running switch's ports, learned addresses, PMD threads or configuration.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  \
        dataplane -n sw show ports\n  \
        dataplane -n sw show fdb --json\n  \
        dataplane -n sw show pmd\n  \
        dataplane -n sw show config > switch.toml   # restart later with run --config")]
    Show(ShowCommand),
    /// Per-port rates and drops of a running switch; --watch for a live view.
    ///
    /// Rates (packets and megabits per second, fast path included) are
    /// computed between two reads of the switch's counters; drops are
    /// totals by reason: no_free_frame, tx_ring_full, rx_kernel (ring full
    /// or no receive buffer), invalid_desc, policy (VLAN, no egress),
    /// malformed, port_down (toward a port that is down), tunnel (a VXLAN
    /// frame for another VNI or from an unlisted VTEP), no_next_hop (the
    /// remote VTEP's ARP unanswered), too_big (over a tunnel's MTU).
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
pub enum PortCommand {
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
pub enum ShowCommand {
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
    /// The PMD threads: CPU, busy share, and which ports and receive
    /// queues each polls with its part of the PMD's work ("usage").
    ///
    /// Busy share: cycles in iterations that moved frames over all polling
    /// cycles since the start (time asleep in poll(2) is not counted).
    #[command(after_help = "Example:\n  dataplane -n sw show pmd")]
    Pmd {
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
pub enum FdbCommand {
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
pub struct RunArgs {
    /// TOML configuration (see the README); excludes the port flags.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with_all = ["ports", "xconnect", "no_fast_path", "core", "cores", "fdb_max_entries", "max_ports"])]
    pub config: Option<PathBuf>,
    /// A port: KIND:IFACE[,options] (repeatable).
    #[arg(long = "port", short = 'p', value_name = "SPEC")]
    pub ports: Vec<String>,
    /// Cross-connect ports pairwise (1st<->2nd, 3rd<->4th) instead of switching.
    #[arg(long)]
    pub xconnect: bool,
    /// Spin even when idle (lowest latency, a full core).
    #[arg(long)]
    pub busy_poll: bool,
    /// Set SO_PREFER_BUSY_POLL and SO_BUSY_POLL (USECS) on the AF_XDP
    /// sockets: for NIC drivers that poll in the syscall.
    #[arg(long, value_name = "USECS")]
    pub socket_busy_poll: Option<u32>,
    /// Keep every frame on the AF_XDP path: no in-kernel redirect of learned
    /// unicast between ports (for comparisons).
    #[arg(long)]
    pub no_fast_path: bool,
    /// CPU for the poll-mode thread (one PMD).
    #[arg(long, value_name = "CPU", conflicts_with = "cores")]
    pub core: Option<usize>,
    /// CPUs for several poll-mode threads, one each (e.g. 0,1); ports are
    /// spread over them round robin.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Frames per receive burst.
    #[arg(long, default_value_t = dataplane::daemon::config::DEFAULT_BURST)]
    pub burst: usize,
    /// Most addresses the switch learns (the FDB, and each port's fast-path
    /// map in the kernel, are sized from it); 1 to 1048576.
    #[arg(long, value_name = "N", default_value_t = dataplane::daemon::config::DEFAULT_FDB_ENTRIES)]
    pub fdb_max_entries: usize,
    /// Port slots: the most ports at once, those added later included
    /// (each port's kernel maps are sized from it); 2 to 1024.
    #[arg(long, value_name = "N", default_value_t = dataplane::daemon::config::DEFAULT_MAX_PORTS)]
    pub max_ports: usize,
    /// Print port statistics every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Serve Prometheus metrics over HTTP on ADDR (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Do not serve the control socket.
    #[arg(long)]
    pub no_control: bool,
    /// At a clean exit, write the final frame accounting and every port's
    /// counters to FILE as JSON: the numbers of the last lines printed, for
    /// scripts and tests.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct GenArgs {
    /// Interface to send out of.
    #[arg(long, short = 'i', value_name = "IF")]
    pub iface: String,
    /// Destination MAC (default: broadcast).
    #[arg(long, value_name = "MAC", value_parser = parse_mac_arg, default_value = "ff:ff:ff:ff:ff:ff")]
    pub dst_mac: [u8; 6],
    /// Source MAC (default: the interface's own).
    #[arg(long, value_name = "MAC", value_parser = parse_mac_arg)]
    pub src_mac: Option<[u8; 6]>,
    /// Source IPv4 address.
    #[arg(long, default_value = "10.200.0.1")]
    pub src_ip: std::net::Ipv4Addr,
    /// Destination IPv4 address.
    #[arg(long, default_value = "10.200.0.2")]
    pub dst_ip: std::net::Ipv4Addr,
    /// Frame size in bytes including the FCS (64..=1518).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Send N flows, round robin: flow i comes from the source MAC plus i
    /// and goes to the destination MAC plus i (see --vary; a broadcast
    /// destination stays broadcast). Up to 1048576.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub flows: u32,
    /// Which MACs change from one flow to the next: both (N hosts to N
    /// hosts), src (N hosts to one: with many flows, a MAC flood) or dst.
    #[arg(long, value_enum, default_value_t = dataplane::traffic::gen::Vary::Both)]
    pub vary: dataplane::traffic::gen::Vary,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = parse_duration_secs)]
    pub duration: f64,
    /// Stop after this many frames.
    #[arg(long)]
    pub count: Option<u64>,
    /// Limit the rate, in frames per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Pin the generator to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A refresh interval in seconds: 0.1 to 3600 (a panic on `inf` or NaN
/// before, deep in Duration).
pub fn parse_interval(s: &str) -> Result<f64, String> {
    seconds_in(s, 0.1, 3600.0)
}

/// A run length in seconds: up to a year.
pub fn parse_duration_secs(s: &str) -> Result<f64, String> {
    seconds_in(s, 0.0, 365.0 * 86_400.0)
}

pub fn seconds_in(s: &str, min: f64, max: f64) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{s} seconds is out of range: {min} to {max}"));
    }
    Ok(v)
}

pub fn parse_mac_arg(s: &str) -> Result<[u8; 6], String> {
    dataplane::steer::policy::parse_mac(s).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArgCli {
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
}
