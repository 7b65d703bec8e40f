//! A sender's offload requests on arbitrary bytes: a virtio-net header (as
//! a guest or a TAP's namespace writes it), a UMEM frame size, and the
//! frame. Oracles: finishing a checksum changes at most the two bytes the
//! header names, or nothing when refused; a super-frame accepted for
//! cutting makes `count()` segments (1 to MAX_SEGMENTS), each fitting the
//! frame size and starting with the same headers, whose payloads add up
//! to the super-frame's, and whose TCP checksum verifies wherever the
//! switch's own parser can locate it.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../dataplane/src/port/offload/segment.rs"]
#[allow(dead_code)]
mod segment;

use segment::{complete_checksum, TcpSegments, VnetHdr, MAX_SEGMENTS, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < VNET_HDR_LEN + 1 {
        return;
    }
    let (hdr, rest) = data.split_at(VNET_HDR_LEN);
    let hdr = VnetHdr::parse(hdr.try_into().unwrap());
    let room = 64 + usize::from(rest[0]) * 16;
    let frame = &rest[1..];

    let mut finished = frame.to_vec();
    match complete_checksum(&mut finished, &hdr) {
        Ok(()) => {
            let field = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
            for (i, (a, b)) in frame.iter().zip(&finished).enumerate() {
                assert!(a == b || i == field || i == field + 1, "byte {i} changed");
            }
        }
        Err(_) => assert_eq!(finished, frame, "a refused request changes nothing"),
    }

    let Ok(mut segments) = TcpSegments::new(frame, &hdr, room) else {
        return;
    };
    let count = segments.count();
    assert!((1..=MAX_SEGMENTS).contains(&count));
    let headers = segments.header_len();
    let mut buf = vec![0u8; room];
    let (mut made, mut payload) = (0usize, 0usize);
    while let Some(len) = segments.write_next(&mut buf) {
        assert!(len >= headers && len <= room, "segment of {len} bytes");
        // Addresses and ports stay; lengths, ids and checksums may change.
        assert_eq!(buf[..12], frame[..12], "MAC addresses");
        if let Some(ok) = dataplane_common::checksum::verifies(&buf[..len]) {
            assert!(ok, "segment {made} has a wrong TCP checksum");
        }
        payload += len - headers;
        made += 1;
        assert!(made <= count, "more segments than count() said");
    }
    assert_eq!(made, count);
    assert_eq!(payload, frame.len() - headers, "every payload byte, once");
});
