//! The control socket's wire format (docs/CONTROL.md describes it for
//! other clients).
//!
//! One request per connection line: a JSON object, newline-terminated, at
//! most [`MAX_REQUEST_BYTES`]. One JSON line answers it:
//! `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. A client may
//! send several requests on one connection, one after another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest request line accepted (the answer to a longer one is an error,
/// and the connection is closed: the rest of the line is not read).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Every port with its state and counters.
    ShowPorts,
    /// The learned addresses.
    ShowFdb,
    /// The running configuration, as a TOML file.
    ShowConfig,
    /// Counters for a live view: ports, PMD cycles, a timestamp.
    Stats,
    /// Each PMD thread: its CPU, busy share and the ports (with their
    /// receive queues) it polls, each with its part of the PMD's work.
    ShowPmd,
    /// Forget learned addresses: all, or those of one port.
    FdbFlush {
        #[serde(default)]
        port: Option<String>,
    },
    /// Add a port: `spec` as `run --port` takes it (`afxdp:veth2,vlan=10`).
    PortAdd { spec: String },
    /// Remove a port by name (`afxdp:veth2`).
    PortDel { name: String },
}

/// The answer, as sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A successful answer carrying `result`.
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::error(format!("encoding the answer: {e}")),
        }
    }

    /// A refusal, with the reason.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }

    /// The JSON line (with its newline) to send.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a Response always encodes");
        s.push('\n');
        s
    }
}

/// One port in `show-ports` and `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    /// Switch port id (slot).
    pub id: usize,
    pub name: String,
    /// "up" or "down".
    pub state: String,
    /// PMD thread serving it.
    pub pmd: usize,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the in-kernel fast path forwarded from this port.
    pub fast_path: u64,
    /// Received frames whose checksum the sender left to the device and
    /// the switch finished.
    #[serde(default)]
    pub checksums_completed: u64,
    /// Received super-frames (TSO) the switch cut into segments, and the
    /// segments made of them.
    #[serde(default)]
    pub gso_frames: u64,
    #[serde(default)]
    pub gso_segments: u64,
    /// Drops by reason (`no_free_frame`, `tx_ring_full`, ...).
    pub drops: BTreeMap<String, u64>,
    /// An AF_XDP port's bind mode, as the kernel bound it: "copy" or
    /// "zero-copy"; absent for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afxdp_mode: Option<String>,
    /// What this port does to the other end of its interface, if anything
    /// (e.g. native XDP on a veth turns the container's TSO off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_effect: Option<String>,
}

/// One PMD thread in `show-pmd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PmdStatus {
    pub pmd: usize,
    /// The CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// Cycles in iterations that moved frames, and that did not (time
    /// asleep in poll(2) is neither).
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    /// busy / (busy + idle), 0..=1.
    pub busy_share: f64,
    /// The ports it polls.
    pub rxqs: Vec<RxqStatus>,
}

/// One port's receive queues as a PMD polls them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RxqStatus {
    pub port: String,
    pub queues: Vec<u32>,
    /// Cycles the PMD spent on this port's bursts.
    pub busy_cycles: u64,
    /// Its part of the PMD's busy cycles, 0..=1 (OVS's "pmd usage").
    pub usage: f64,
}

/// The `stats` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Seconds since the switch started (rates are differences over this).
    pub uptime: f64,
    pub ports: Vec<PortStatus>,
    /// PMD cycles in iterations that moved frames, and that did not.
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    /// The longest single PMD iteration since the start, in microseconds:
    /// the longest any port waited to be served while its PMD was awake.
    #[serde(default)]
    pub longest_iteration_us: f64,
    /// The same without the time inside the kernel's transmit and refill
    /// calls (in AF_XDP copy mode the kernel transmits, and often runs the
    /// receiving stack, inside them): the PMD's own work.
    #[serde(default)]
    pub longest_own_iteration_us: f64,
    /// Learning counters: learned, moved, refused because the table was
    /// full or the port at its `max_macs`.
    #[serde(default)]
    pub learning: crate::switch::LearningStats,
}

/// One learned address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbRow {
    pub vlan: u16,
    pub mac: String,
    pub port: String,
    /// On a tunnel port: the remote VTEP the address sits behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

impl FdbRow {
    /// The table `show fdb` and SIGUSR1 print.
    pub fn table(rows: &[FdbRow]) -> String {
        let mut out = format!("{:>5}  {:<17}  {:<24}  REMOTE\n", "VLAN", "MAC", "PORT");
        for r in rows {
            out.push_str(&format!(
                "{:>5}  {:<17}  {:<24}  {}\n",
                r.vlan,
                r.mac,
                r.port,
                r.remote.as_deref().unwrap_or("-")
            ));
        }
        out
    }
}

/// Parses one request line; the error is what the client is told.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty request: send one JSON object per line".into());
    }
    serde_json::from_str(text).map_err(|e| {
        format!(
            "bad request: {e}; expected e.g. {{\"command\":\"show-ports\"}} \
             (commands: show-ports, show-fdb, show-config, stats, fdb-flush, port-add, port-del)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::ShowPorts,
            Request::ShowFdb,
            Request::ShowConfig,
            Request::Stats,
            Request::FdbFlush { port: None },
            Request::FdbFlush {
                port: Some("afxdp:v0".into()),
            },
            Request::PortAdd {
                spec: "afxdp:v2,vlan=10".into(),
            },
            Request::PortDel {
                name: "afxdp:v2".into(),
            },
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(line.as_bytes()).unwrap(), r);
        }
    }

    #[test]
    fn documented_form_parses() {
        assert_eq!(
            parse_request(br#"{"command":"port-add","spec":"tap:vm0"}"#).unwrap(),
            Request::PortAdd {
                spec: "tap:vm0".into()
            }
        );
        assert_eq!(
            parse_request(b"{\"command\":\"fdb-flush\"}\n").unwrap(),
            Request::FdbFlush { port: None }
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        for bad in [
            &b""[..],
            b"   ",
            b"not json",
            b"{\"command\":\"reboot\"}",
            b"{\"command\":\"port-add\"}",
            b"{\"command\":\"port-del\",\"name\":\"x\",\"force\":true}",
            b"{\"command\":\"port-add\",\"spec\":7}",
            b"[1,2,3]",
            b"\xff\xfe",
        ] {
            let e = parse_request(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(!e.is_empty());
        }
    }

    #[test]
    fn responses_are_one_line() {
        let line = Response::error("a\nb").to_line();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let ok = Response::ok(vec![1, 2]).to_line();
        let back: Response = serde_json::from_str(&ok).unwrap();
        assert!(back.ok);
        assert_eq!(back.result.unwrap(), serde_json::json!([1, 2]));
    }
}
