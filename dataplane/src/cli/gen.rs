//! `dataplane gen`: send UDP frames out of an interface, with live counters.

use super::args::GenArgs;

pub fn run_gen(args: GenArgs) -> anyhow::Result<()> {
    use dataplane::traffic::gen::{build_udp_frame, flow_headers, FrameSpec, Generator};
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
    let spec = FrameSpec {
        size: args.size,
        headers: dataplane_common::wire::build::UdpIpv4 {
            src_mac,
            dst_mac: args.dst_mac,
            src_ip: args.src_ip.octets(),
            dst_ip: args.dst_ip.octets(),
            src_port: 9,
            dst_port: 9,
        },
    };
    let frame = build_udp_frame(&spec)?;
    let headers = flow_headers(&spec, args.flows, args.vary)?;
    let generator = Generator::new(&args.iface, frame, &headers)?;
    let stop = super::status::ctrl_c_flag()?;
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
                "flows": args.flows,
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
