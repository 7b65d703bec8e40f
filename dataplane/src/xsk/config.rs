//! What a UMEM and a socket are made with: sizes, bind mode, busy polling,
//! each checked before any syscall with an error that names the value.

use std::fmt;

use super::Error;

/// Sizes of a UMEM and of the fill/completion rings of each socket on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    /// Bytes per frame: a power of two in 2048..=4096 (default 4096).
    pub frame_size: u32,
    /// Number of frames, at least 1 (default 4096).
    pub frame_count: u32,
    /// Entries of each socket's fill ring: a power of two (default 2048).
    pub fill_size: u32,
    /// Entries of each socket's completion ring: a power of two (default 2048).
    pub comp_size: u32,
}

impl Default for UmemConfig {
    fn default() -> Self {
        UmemConfig {
            frame_size: 4096,
            frame_count: 4096,
            fill_size: 2048,
            comp_size: 2048,
        }
    }
}

impl UmemConfig {
    /// Refuses sizes the kernel (or this module) would refuse, naming the
    /// field and its bad value.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, value: u32, expected: &'static str| {
            Err(Error::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if !(2048..=4096).contains(&self.frame_size) || !self.frame_size.is_power_of_two() {
            return bad("umem frame_size", self.frame_size, "2048 or 4096");
        }
        if self.frame_count == 0 {
            return bad("umem frame_count", self.frame_count, "at least 1");
        }
        for (field, v) in [
            ("umem fill_size", self.fill_size),
            ("umem comp_size", self.comp_size),
        ] {
            if !v.is_power_of_two() {
                return bad(field, v, "a power of two");
            }
        }
        Ok(())
    }
}

/// How to bind a socket: the requested mode.
///
/// Every socket on a UMEM has the mode of the UMEM's first socket. A PMD's
/// shared UMEM is anchored in copy mode ([`super::anchor`]), so a zero-copy
/// port has a UMEM of its own ([`super::Umem::new_zero_copy`]); a socket
/// whose request differs from its UMEM's mode is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// The UMEM's mode (an AF_XDP port tries zero-copy first where the
    /// driver may have it, then copy mode).
    #[default]
    Auto,
    /// Copy mode: works on every driver (veth included).
    Copy,
    /// Zero-copy only: fails where the driver has none (veth, TAP).
    ZeroCopy,
}

/// How the kernel actually bound a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundMode {
    /// The kernel copies frames between skbs/driver buffers and the UMEM.
    Copy,
    /// The driver DMAs straight to and from the UMEM.
    ZeroCopy,
}

impl fmt::Display for BindMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindMode::Auto => "auto",
            BindMode::Copy => "copy",
            BindMode::ZeroCopy => "zero-copy",
        })
    }
}

impl fmt::Display for BoundMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BoundMode::Copy => "copy",
            BoundMode::ZeroCopy => "zero-copy",
        })
    }
}

/// Busy-poll socket options: `SO_PREFER_BUSY_POLL` = 1, plus these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: microseconds to busy-poll the device queue.
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets per busy-poll round.
    pub budget: u32,
}

/// Settings of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketConfig {
    /// RX ring entries: a power of two (default 2048).
    pub rx_size: u32,
    /// TX ring entries: a power of two (default 2048).
    pub tx_size: u32,
    /// Copy / zero-copy (see [`BindMode`]).
    pub bind: BindMode,
    /// Busy-poll options, if any (default none).
    pub busy_poll: Option<BusyPoll>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            rx_size: 2048,
            tx_size: 2048,
            bind: BindMode::Auto,
            busy_poll: None,
        }
    }
}

impl SocketConfig {
    /// Refuses ring sizes the kernel would refuse, naming the bad value.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("socket rx_size", self.rx_size),
            ("socket tx_size", self.tx_size),
        ] {
            if !value.is_power_of_two() {
                return Err(Error::InvalidConfig {
                    field,
                    value,
                    expected: "a power of two",
                });
            }
        }
        Ok(())
    }
}
