//! TCP between namespaces through their kernels' stacks, checked byte for
//! byte.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::NetNs;

/// A TCP transfer of `len` patterned bytes from `from` to `to_addr`:7000
/// in `to`; returns what the receiver read.
pub fn tcp_transfer(from: &NetNs, to: &NetNs, to_addr: &str, len: usize) -> Vec<u8> {
    let data = pattern(len);
    let (listening_tx, listening_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            to.enter(|| {
                let listener = TcpListener::bind("0.0.0.0:7000").expect("bind 7000");
                listening_tx.send(()).unwrap();
                // A sender that fails must not leave this thread in
                // accept() forever: the scope would never end.
                listener.set_nonblocking(true).unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                let mut conn = loop {
                    match listener.accept() {
                        Ok((conn, _)) => break conn,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            assert!(
                                std::time::Instant::now() < deadline,
                                "no connection in 20 s"
                            );
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got)
                    .expect("read until the sender closes");
                got
            })
        });
        listening_rx.recv().unwrap();
        from.enter(|| {
            let addr = format!("{to_addr}:7000").parse().unwrap();
            let mut conn =
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            conn.set_write_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            conn.write_all(&data).expect("send everything");
        });
        receiver.join().unwrap()
    })
}

/// Bytes whose every 4 KiB block differs from its neighbours, so a lost,
/// repeated or reordered segment shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

/// `len` patterned bytes from `a` to `b` and back again, each compared
/// byte for byte with what was sent.
pub fn tcp_transfer_both_ways(
    a: &NetNs,
    a_addr: &str,
    b: &NetNs,
    b_addr: &str,
    len: usize,
    what: &str,
) {
    let want = pattern(len);
    let got = tcp_transfer(a, b, b_addr, len);
    assert!(
        got == want,
        "{what}: {} of {len} bytes arrived, or they differ",
        got.len()
    );
    let back = tcp_transfer(b, a, a_addr, len);
    assert!(
        back == want,
        "{what}: the way back: {} of {len} bytes",
        back.len()
    );
}
