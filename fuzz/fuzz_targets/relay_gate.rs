//! The vhost-user relay's decisions, fuzzed with arbitrary message streams
//! from a hostile frontend: headers, payloads and the sizes of the files
//! a message brings are all the input's.
//!
//! Oracles, besides "no panic":
//! - at most one held SET_VRING_ENABLE per ring, for rings a device has,
//!   never one that still asks for a reply, and none once the frontend
//!   acknowledged PROTOCOL_FEATURES;
//! - the held messages are replayed once, after the first SET_FEATURES
//!   that acknowledges PROTOCOL_FEATURES;
//! - a memory table is forwarded only if every region lies inside its file
//!   (checked again here, independently, in 128-bit arithmetic).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../dataplane/src/port/vhost_user/relay_gate.rs"]
#[allow(dead_code)]
mod relay_gate;

use relay_gate::*;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
}

/// The region check, written the plain way.
fn regions_fit(request: u32, payload: &[u8], files: &[Result<u64, String>]) -> bool {
    let le = |b: &[u8]| {
        let mut x = [0u8; 8];
        x[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(x)
    };
    let count = if request == SET_MEM_TABLE {
        match payload.get(0..4) {
            Some(b) => le(b) as usize,
            None => return false,
        }
    } else {
        1
    };
    count == files.len()
        && files.iter().enumerate().all(|(i, f)| {
            let at = 8 + i * REGION_LEN;
            let (Some(size), Some(offset), Ok(len)) = (
                payload.get(at + 8..at + 16),
                payload.get(at + 24..at + 32),
                f,
            ) else {
                return false;
            };
            let (size, offset) = (le(size) as u128, le(offset) as u128);
            size > 0 && offset + size <= *len as u128 && offset + size <= u64::MAX as u128
        })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut gate = Gate::default();
    let mut replayed = false;
    while !input.0.is_empty() {
        let mut hdr = [0u8; HDR_LEN];
        hdr.copy_from_slice(&{
            let mut h = input.take(HDR_LEN).to_vec();
            h.resize(HDR_LEN, 0);
            h
        });
        // Steer the request toward the ones the gate looks at.
        let request = match hdr[0] % 6 {
            0 => SET_FEATURES,
            1 => SET_MEM_TABLE,
            2 => SET_VRING_ENABLE,
            3 => ADD_MEM_REG,
            _ => u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]),
        };
        hdr[0..4].copy_from_slice(&request.to_le_bytes());
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        let payload = input.take(size % (MAX_PAYLOAD + 64)).to_vec();
        let nfiles = usize::from(input.byte()) % (MAX_FDS + 1);
        let files: Vec<Result<u64, String>> = (0..nfiles)
            .map(|_| {
                let b = input.take(8);
                let mut x = [0u8; 8];
                x[..b.len()].copy_from_slice(b);
                match x[7] {
                    0xff => Err("fstat failed".to_string()),
                    _ => Ok(u64::from_le_bytes(x) >> (x[0] % 64)),
                }
            })
            .collect();
        let features_before = gate.protocol_features();
        let verdict = gate.judge(&hdr, &payload, &files);
        match &verdict {
            Verdict::Forward => {
                if matches!(request, SET_MEM_TABLE | ADD_MEM_REG) {
                    assert!(
                        regions_fit(request, &payload, &files),
                        "forwarded a table past its files"
                    );
                }
            }
            Verdict::Hold { .. } => {
                assert_eq!(request, SET_VRING_ENABLE);
                assert!(!features_before);
            }
            Verdict::ForwardThenReplay => {
                assert!(!replayed, "replayed twice");
                assert_eq!(request, SET_FEATURES);
                replayed = true;
                let held = gate.take_held();
                assert!(held.len() <= MAX_RINGS as usize);
            }
            Verdict::Refuse(_) => return,
        }
        let held = gate.held();
        assert!(held.len() <= MAX_RINGS as usize, "{} held", held.len());
        let mut rings: Vec<&[u8]> = held.iter().map(|h| &h.payload[0..4]).collect();
        rings.sort();
        rings.dedup();
        assert_eq!(rings.len(), held.len(), "two held for one ring");
        for h in held {
            let flags = u32::from_le_bytes([h.hdr[4], h.hdr[5], h.hdr[6], h.hdr[7]]);
            assert_eq!(flags & FLAG_NEED_REPLY, 0);
        }
        if gate.protocol_features() {
            assert!(held.is_empty(), "held after PROTOCOL_FEATURES");
        }
    }
});
