//! What the relay (see `relay.rs`) does with each frontend message, apart
//! from its sockets: std only, so that fuzz/fuzz_targets/relay_gate.rs
//! compiles this very file and drives it with arbitrary message streams.
//!
//! Two decisions live here:
//! - a SET_VRING_ENABLE that arrives before VHOST_USER_F_PROTOCOL_FEATURES
//!   was acknowledged is held (the latest state per ring, at most
//!   [`MAX_RINGS`]) and replayed after the SET_FEATURES that acknowledges
//!   it; one for a ring a device does not have ends the connection;
//! - a memory region (SET_MEM_TABLE, ADD_MEM_REG) must lie inside the file
//!   it comes with, or the frontend is disconnected.

/// vhost-user message header: request, flags, payload size (u32 each, LE).
pub const HDR_LEN: usize = 12;
pub const SET_FEATURES: u32 = 2;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_ENABLE: u32 = 18;
pub const ADD_MEM_REG: u32 = 37;
/// One memory region on the wire: guest address, size, user address,
/// offset in the file (u64 each).
pub const REGION_LEN: usize = 32;
/// Rings a frontend may name (a device has two).
pub const MAX_RINGS: u32 = 2;
/// Flags: protocol version 1, "this is a reply", "reply wanted".
pub const FLAG_VERSION: u32 = 0x1;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Larger than any message a frontend sends (the memory table of 8 regions
/// is 8 + 8 * 32 bytes); anything bigger is refused.
pub const MAX_PAYLOAD: usize = 4096;
/// File descriptors one message may carry (8 memory regions at most).
pub const MAX_FDS: usize = 16;

/// A message's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    /// Reads a header; a payload over [`MAX_PAYLOAD`] is refused.
    pub fn parse(bytes: &[u8; HDR_LEN]) -> Result<Header, String> {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let h = Header {
            request: word(0),
            flags: word(4),
            size: word(8),
        };
        if h.size as usize > MAX_PAYLOAD {
            return Err(format!("message of {} bytes", h.size));
        }
        Ok(h)
    }
}

/// A message held back, to be forwarded later (without "reply wanted":
/// the relay answered it already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub hdr: [u8; HDR_LEN],
    pub payload: Vec<u8>,
}

/// What to do with one message from the frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on unchanged (descriptors included).
    Forward,
    /// Keep it; if `reply`, answer the frontend "done" now.
    Hold { reply: bool },
    /// Pass it on, then every held message ([`Gate::take_held`]).
    ForwardThenReplay,
    /// Disconnect the frontend, for this reason.
    Refuse(String),
}

/// The relay's state for one connection.
#[derive(Debug, Default)]
pub struct Gate {
    protocol_features: bool,
    held: Vec<Held>,
}

impl Gate {
    /// Judges one message: its header bytes, payload, and the sizes of the
    /// files that came with it (`Err`: the size could not be read).
    pub fn judge(
        &mut self,
        hdr: &[u8; HDR_LEN],
        payload: &[u8],
        file_sizes: &[Result<u64, String>],
    ) -> Verdict {
        let h = match Header::parse(hdr) {
            Ok(h) => h,
            Err(why) => return Verdict::Refuse(why),
        };
        match h.request {
            SET_MEM_TABLE | ADD_MEM_REG => {
                match regions_inside_their_files(h.request, payload, file_sizes) {
                    Ok(()) => Verdict::Forward,
                    Err(why) => Verdict::Refuse(format!("its memory table {why}")),
                }
            }
            SET_VRING_ENABLE if !self.protocol_features => {
                let ring = payload
                    .get(0..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let Some(ring) = ring.filter(|r| *r < MAX_RINGS) else {
                    return Verdict::Refuse(format!(
                        "SET_VRING_ENABLE for ring {ring:?}: a device has {MAX_RINGS}"
                    ));
                };
                self.held
                    .retain(|m| m.payload.get(0..4) != Some(&ring.to_le_bytes()[..]));
                self.held.push(Held {
                    hdr: without_need_reply(*hdr),
                    payload: payload.to_vec(),
                });
                Verdict::Hold {
                    reply: h.flags & FLAG_NEED_REPLY != 0,
                }
            }
            SET_FEATURES => {
                let features = payload
                    .get(0..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .unwrap_or(0);
                if features & PROTOCOL_FEATURES != 0 && !self.protocol_features {
                    self.protocol_features = true;
                    Verdict::ForwardThenReplay
                } else {
                    Verdict::Forward
                }
            }
            _ => Verdict::Forward,
        }
    }

    /// The held messages, oldest first, emptied: to replay after a
    /// [`Verdict::ForwardThenReplay`].
    pub fn take_held(&mut self) -> Vec<Held> {
        std::mem::take(&mut self.held)
    }

    /// Messages held now (at most one per ring). For the tests and the
    /// fuzz target's oracles.
    #[allow(dead_code)]
    pub fn held(&self) -> &[Held] {
        &self.held
    }

    /// Whether the frontend acknowledged PROTOCOL_FEATURES. For the tests
    /// and the fuzz target's oracles.
    #[allow(dead_code)]
    pub fn protocol_features(&self) -> bool {
        self.protocol_features
    }
}

/// The reply the relay sends for a held message that wanted one.
pub fn ack(request: u32) -> [u8; HDR_LEN + 8] {
    let mut reply = [0u8; HDR_LEN + 8];
    reply[0..4].copy_from_slice(&request.to_le_bytes());
    reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
    reply[8..12].copy_from_slice(&8u32.to_le_bytes());
    reply
}

/// Checks every region of a SET_MEM_TABLE (`u32 count, u32 padding,
/// regions`) or ADD_MEM_REG (`u64 padding, region`) against the size of
/// the file that comes with it: `offset + size` must not pass its end.
pub fn regions_inside_their_files(
    request: u32,
    payload: &[u8],
    file_sizes: &[Result<u64, String>],
) -> Result<(), String> {
    let count = if request == SET_MEM_TABLE {
        payload
            .get(0..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("is truncated")?
    } else {
        1
    };
    if file_sizes.len() != count {
        return Err(format!(
            "names {count} region(s) but brings {} file(s)",
            file_sizes.len()
        ));
    }
    for (i, file_len) in file_sizes.iter().enumerate() {
        let at = 8 + i * REGION_LEN;
        let field = |k: usize| -> Result<u64, String> {
            payload
                .get(at + 8 * k..at + 8 * k + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| format!("is truncated at region {i}"))
        };
        let (size, offset) = (field(1)?, field(3)?);
        let file_len = file_len.as_ref().map_err(|e| format!("region {i}: {e}"))?;
        let end = offset
            .checked_add(size)
            .ok_or_else(|| format!("region {i}: offset {offset} + size {size} overflows"))?;
        if size == 0 || end > *file_len {
            return Err(format!(
                "maps region {i} as bytes {offset}..{end} of a {file_len}-byte file"
            ));
        }
    }
    Ok(())
}

fn without_need_reply(mut hdr: [u8; HDR_LEN]) -> [u8; HDR_LEN] {
    let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) & !FLAG_NEED_REPLY;
    hdr[4..8].copy_from_slice(&flags.to_le_bytes());
    hdr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(request: u32, flags: u32, size: usize) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0..4].copy_from_slice(&request.to_le_bytes());
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        h[8..12].copy_from_slice(&(size as u32).to_le_bytes());
        h
    }

    fn enable(ring: u32, on: u32) -> Vec<u8> {
        [ring.to_le_bytes(), on.to_le_bytes()].concat()
    }

    #[test]
    fn premature_enables_are_held_per_ring_and_replayed_once() {
        let mut g = Gate::default();
        let e = |g: &mut Gate, ring, on, flags| {
            g.judge(&hdr(SET_VRING_ENABLE, flags, 8), &enable(ring, on), &[])
        };
        assert_eq!(e(&mut g, 0, 1, 1), Verdict::Hold { reply: false });
        assert_eq!(e(&mut g, 1, 0, 1), Verdict::Hold { reply: false });
        assert_eq!(
            e(&mut g, 1, 1, 1 | FLAG_NEED_REPLY),
            Verdict::Hold { reply: true }
        );
        assert!(matches!(e(&mut g, 7, 1, 1), Verdict::Refuse(_)));
        assert_eq!(g.held().len(), 2, "one per ring, the latest");
        let features = PROTOCOL_FEATURES.to_le_bytes();
        assert_eq!(
            g.judge(&hdr(SET_FEATURES, 1, 8), &features, &[]),
            Verdict::ForwardThenReplay
        );
        let held = g.take_held();
        assert_eq!(held[1].payload, enable(1, 1));
        assert_eq!(
            Header::parse(&held[1].hdr).unwrap().flags & FLAG_NEED_REPLY,
            0
        );
        assert!(g.protocol_features());
        assert_eq!(e(&mut g, 0, 0, 1), Verdict::Forward);
        assert_eq!(
            g.judge(&hdr(SET_FEATURES, 1, 8), &features, &[]),
            Verdict::Forward,
            "replayed once"
        );
    }

    #[test]
    fn a_region_past_its_file_is_refused() {
        let table = |size: u64, offset: u64| {
            let mut p = vec![0u8; 8 + REGION_LEN];
            p[0..4].copy_from_slice(&1u32.to_le_bytes());
            p[8 + 8..8 + 16].copy_from_slice(&size.to_le_bytes());
            p[8 + 24..8 + 32].copy_from_slice(&offset.to_le_bytes());
            p
        };
        let mut g = Gate::default();
        let h = hdr(SET_MEM_TABLE, 1, 8 + REGION_LEN);
        assert_eq!(g.judge(&h, &table(4096, 0), &[Ok(4096)]), Verdict::Forward);
        for (payload, files) in [
            (table(8192, 0), vec![Ok(4096)]),
            (table(4096, 1), vec![Ok(4096)]),
            (table(0, 0), vec![Ok(4096)]),
            (table(u64::MAX, 2), vec![Ok(u64::MAX)]),
            (table(4096, 0), vec![]),
            (table(4096, 0), vec![Err("fstat: EBADF".into())]),
            (table(4096, 0)[..20].to_vec(), vec![Ok(4096)]),
        ] {
            assert!(
                matches!(g.judge(&h, &payload, &files), Verdict::Refuse(_)),
                "{payload:?} {files:?}"
            );
        }
        assert!(matches!(
            g.judge(&hdr(1, 1, MAX_PAYLOAD + 1), &[], &[]),
            Verdict::Refuse(_)
        ));
    }
}
