//! The `--policy` / `--match` command-line language.
//!
//! ```text
//! --policy all                       every frame to the AF_XDP socket
//! --policy pass                      every frame to the kernel (count only)
//! --policy drop                      drop and count (a benchmark sink)
//! --match mac=02:00:00:00:00:0b      only listed frames to the socket
//! --match vlan=100 --match ethertype=0x88b5
//! --match udp=10.99.0.1:4789          IPv4 UDP to that address and port
//! ```
//! Giving `--match` implies `--policy listed`.

use std::str::FromStr;

use dataplane_common::policy::{MatchKey, Mode};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("unknown policy {0:?}: expected all, pass, drop or listed")]
    UnknownMode(String),
    #[error(
        "match {0:?} is not KIND=VALUE (e.g. mac=02:00:00:00:00:0b, vlan=100, ethertype=0x0800, udp=10.0.0.1:4789)"
    )]
    NotKeyValue(String),
    #[error("unknown match kind {0:?}: expected mac, vlan, ethertype or udp")]
    UnknownKind(String),
    #[error("{0:?} is not a MAC address (six hex bytes separated by ':')")]
    BadMac(String),
    #[error("{0:?} is not a VLAN id (1-4094)")]
    BadVlan(String),
    #[error("{0:?} is not an EtherType (0x0600-0xffff, or ipv4, ipv6, arp, vlan)")]
    BadEtherType(String),
    #[error("{0:?} is not an IPv4 address and UDP port (10.0.0.1:4789)")]
    BadUdp(String),
    #[error("policy {mode} takes no --match (matches only apply to `listed`)")]
    MatchesWithoutListed { mode: &'static str },
    #[error("policy listed needs at least one --match")]
    ListedWithoutMatches,
    #[error("too many matches: {given} given, the table holds {max}")]
    TooMany { given: usize, max: u32 },
}

/// A parsed `--policy` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeArg(pub Mode);

impl FromStr for ModeArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(ModeArg(match s {
            "all" => Mode::RedirectAll,
            "pass" => Mode::Pass,
            "drop" => Mode::Drop,
            "listed" => Mode::RedirectListed,
            other => return Err(Error::UnknownMode(other.to_string())),
        }))
    }
}

/// A parsed `--match` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchArg(pub MatchKey);

impl FromStr for MatchArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (kind, value) = s
            .split_once('=')
            .ok_or_else(|| Error::NotKeyValue(s.to_string()))?;
        let key = match kind.trim() {
            "mac" => MatchKey::dst_mac(parse_mac(value.trim())?),
            "vlan" => MatchKey::vlan(parse_vlan(value.trim())?),
            "ethertype" => MatchKey::ethertype(parse_ethertype(value.trim())?),
            "udp" => {
                let v = value.trim();
                let addr: std::net::SocketAddrV4 =
                    v.parse().map_err(|_| Error::BadUdp(v.to_string()))?;
                MatchKey::udp_dst(addr.ip().octets(), addr.port())
            }
            other => return Err(Error::UnknownKind(other.to_string())),
        };
        Ok(MatchArg(key))
    }
}

/// The full steering policy of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// What happens to frames.
    pub mode: Mode,
    /// The match table for [`Mode::RedirectListed`].
    pub matches: Vec<MatchKey>,
}

impl PolicySpec {
    /// Combines `--policy` and `--match` into a consistent policy.
    pub fn new(mode: Option<ModeArg>, matches: &[MatchArg]) -> Result<PolicySpec, Error> {
        let mode = match (mode, matches.is_empty()) {
            (Some(ModeArg(m)), _) => m,
            (None, false) => Mode::RedirectListed,
            (None, true) => Mode::RedirectAll,
        };
        if mode == Mode::RedirectListed && matches.is_empty() {
            return Err(Error::ListedWithoutMatches);
        }
        if mode != Mode::RedirectListed && !matches.is_empty() {
            return Err(Error::MatchesWithoutListed { mode: mode.name() });
        }
        if matches.len() > dataplane_common::MAX_MATCHES as usize {
            return Err(Error::TooMany {
                given: matches.len(),
                max: dataplane_common::MAX_MATCHES,
            });
        }
        Ok(PolicySpec {
            mode,
            matches: matches.iter().map(|m| m.0).collect(),
        })
    }

    /// Everything to the AF_XDP sockets.
    pub fn redirect_all() -> PolicySpec {
        PolicySpec {
            mode: Mode::RedirectAll,
            matches: Vec::new(),
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], Error> {
    let bad = || Error::BadMac(s.to_string());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or_else(bad)?;
        if part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Formats a MAC the way `ip link` does.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let m = mac;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn parse_vlan(s: &str) -> Result<u16, Error> {
    match s.parse::<u16>() {
        Ok(v) if (1..=4094).contains(&v) => Ok(v),
        _ => Err(Error::BadVlan(s.to_string())),
    }
}

fn parse_ethertype(s: &str) -> Result<u16, Error> {
    let named = match s {
        "ipv4" => Some(0x0800),
        "arp" => Some(0x0806),
        "ipv6" => Some(0x86dd),
        "vlan" => Some(0x8100),
        _ => None,
    };
    let value = named.or_else(|| match s.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => s.parse::<u16>().ok(),
    });
    match value {
        // Values below 0x0600 are 802.3 lengths, not EtherTypes.
        Some(v) if v >= 0x0600 => Ok(v),
        _ => Err(Error::BadEtherType(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MatchArg {
        s.parse().unwrap()
    }

    #[test]
    fn matches_parse() {
        assert_eq!(
            m("mac=02:00:00:00:00:0B").0,
            MatchKey::dst_mac([2, 0, 0, 0, 0, 0xb])
        );
        assert_eq!(m("vlan=100").0, MatchKey::vlan(100));
        assert_eq!(m("ethertype=0x88b5").0, MatchKey::ethertype(0x88b5));
        assert_eq!(m("ethertype=arp").0, MatchKey::ethertype(0x0806));
        assert_eq!(m("ethertype=2048").0, MatchKey::ethertype(0x0800));
        assert_eq!(
            m("udp=10.99.0.1:4789").0,
            MatchKey::udp_dst([10, 99, 0, 1], 4789)
        );
    }

    #[test]
    fn bad_matches_name_the_input() {
        for (input, want) in [
            ("mac", Error::NotKeyValue("mac".into())),
            ("port=1", Error::UnknownKind("port".into())),
            ("mac=02:00:00:00:00", Error::BadMac("02:00:00:00:00".into())),
            (
                "mac=02:00:00:00:00:00:01",
                Error::BadMac("02:00:00:00:00:00:01".into()),
            ),
            (
                "mac=zz:00:00:00:00:00",
                Error::BadMac("zz:00:00:00:00:00".into()),
            ),
            ("vlan=0", Error::BadVlan("0".into())),
            ("vlan=4095", Error::BadVlan("4095".into())),
            ("ethertype=0x05dc", Error::BadEtherType("0x05dc".into())),
            ("udp=10.0.0.1", Error::BadUdp("10.0.0.1".into())),
        ] {
            assert_eq!(input.parse::<MatchArg>().unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn policy_combinations() {
        let all = PolicySpec::new(None, &[]).unwrap();
        assert_eq!(all.mode, Mode::RedirectAll);
        let listed = PolicySpec::new(None, &[m("vlan=5")]).unwrap();
        assert_eq!(listed.mode, Mode::RedirectListed);
        assert_eq!(listed.matches, vec![MatchKey::vlan(5)]);
        assert_eq!(
            PolicySpec::new(Some(ModeArg(Mode::RedirectListed)), &[]),
            Err(Error::ListedWithoutMatches)
        );
        assert_eq!(
            PolicySpec::new(Some(ModeArg(Mode::Pass)), &[m("vlan=5")]),
            Err(Error::MatchesWithoutListed { mode: "pass" })
        );
        assert!("bogus".parse::<ModeArg>().is_err());
    }

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("de:ad:be:ef:00:01").unwrap();
        assert_eq!(format_mac(&mac), "de:ad:be:ef:00:01");
    }
}
