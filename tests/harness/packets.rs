//! Raw frames: an AF_PACKET socket, numbered test frames, VLAN tags, paced
//! senders and background collectors.

use super::*;

/// A raw AF_PACKET socket bound to one interface of the current thread's
/// namespace: sends and receives whole Ethernet frames.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Opens and binds to `ifname` (call inside [`NetNs::enter`]).
    pub fn open(ifname: &str) -> PacketSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = CString::new(ifname).unwrap();
        // SAFETY: c is NUL-terminated.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        // The kernel strips received VLAN tags into metadata before packet
        // sockets see the frame; ask for it, to put the tag back (as
        // libpcap does) so tests see frames as they were on the wire.
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "PACKET_AUXDATA: {}", std::io::Error::last_os_error());
        PacketSocket { fd, ifindex }
    }

    /// Sets SO_RCVBUFFORCE (for sinks read only after a burst was sent).
    pub fn set_receive_buffer(&self, bytes: i32) {
        // SAFETY: `bytes` is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    }

    /// Sends one frame; panics if the kernel refuses it.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: frame is a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Receives frames for up to `timeout`, keeping those `keep` accepts,
    /// and stops early once `want` were kept.
    pub fn receive(
        &self,
        want: usize,
        timeout: Duration,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(100) as i32) };
            if ready <= 0 {
                continue;
            }
            match self.recv_one(&mut buf) {
                Some(frame) if keep(&frame) => got.push(frame),
                _ => {}
            }
        }
        got
    }

    /// One arrived frame (not one this host sent), with its VLAN tag put
    /// back if the kernel had stripped it; `None` if none is waiting.
    fn recv_one(&self, buf: &mut [u8]) -> Option<Vec<u8>> {
        // SAFETY: plain data structures, zeroed, then filled by recvmsg.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all pointers set below are live.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: msg describes live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            return None;
        }
        let mut frame = buf[..n as usize].to_vec();
        // SAFETY: walking the control messages recvmsg wrote into `control`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET
                    && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                {
                    let aux = &*(libc::CMSG_DATA(cmsg) as *const libc::tpacket_auxdata);
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12 {
                        let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                            aux.tp_vlan_tpid
                        } else {
                            0x8100
                        };
                        let mut tag = tpid.to_be_bytes().to_vec();
                        tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                        frame.splice(12..12, tag);
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Some(frame)
    }

    /// The interface index this socket is bound to.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }
}

/// Test EtherType (IEEE local experimental 1).
pub const TEST_ETHERTYPE: u16 = 0x88b5;

/// A frame of `len` bytes (at least 18): Ethernet header, then `seq` as a
/// big-endian u32, then zero padding.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(18)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

/// The sequence number [`test_frame`] wrote, if `frame` has `ethertype`.
pub fn test_frame_seq(frame: &[u8], ethertype: u16) -> Option<u32> {
    if frame.len() < 18 || frame[12..14] != ethertype.to_be_bytes() {
        return None;
    }
    Some(u32::from_be_bytes(frame[14..18].try_into().unwrap()))
}

/// Receives test frames (ethertype [`TEST_ETHERTYPE`], untagged) in `ns`
/// on `ifname` on a background thread until `expect` arrived or `timeout`
/// passed; join the handle for the sequence numbers seen. Wait on the
/// receiver before sending: it fires once the socket is listening.
pub fn collect_test_frames(
    ns: &NetNs,
    ifname: &str,
    expect: usize,
    timeout: Duration,
) -> (
    std::thread::JoinHandle<Vec<u32>>,
    std::sync::mpsc::Receiver<()>,
) {
    let (frames, ready) = collect_frames(ns, ifname, expect, timeout, |f| {
        test_frame_seq(f, TEST_ETHERTYPE).is_some()
    });
    let seqs = std::thread::spawn(move || {
        frames
            .join()
            .expect("collector thread")
            .iter()
            .filter_map(|f| test_frame_seq(f, TEST_ETHERTYPE))
            .collect()
    });
    (seqs, ready)
}

/// Like [`collect_test_frames`], but returns whole frames `keep` accepts.
pub fn collect_frames(
    ns: &NetNs,
    ifname: &str,
    expect: usize,
    timeout: Duration,
    keep: fn(&[u8]) -> bool,
) -> (
    std::thread::JoinHandle<Vec<Vec<u8>>>,
    std::sync::mpsc::Receiver<()>,
) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = format!("/var/run/netns/{}", ns.name());
    let ifname = ifname.to_string();
    let handle = std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: setns on an fd we own; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let sock = PacketSocket::open(&ifname);
        sock.set_receive_buffer(32 << 20);
        let _ = ready_tx.send(());
        sock.receive(expect, timeout, keep)
    });
    (handle, ready_rx)
}

/// `frame` with an 802.1Q tag for `vid` inserted after the MACs.
pub fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let mut tag = 0x8100u16.to_be_bytes().to_vec();
    tag.extend_from_slice(&vid.to_be_bytes());
    f.splice(12..12, tag);
    f
}

/// Sends `frames` out of `ifname` in `ns`, in bursts of 32 with a pause in
/// between: a moderate rate (~50 kpps) that tests expect no loss at.
pub fn send_paced(ns: &NetNs, ifname: &str, frames: impl IntoIterator<Item = Vec<u8>> + Send) {
    ns.enter(|| {
        let sock = PacketSocket::open(ifname);
        for (i, f) in frames.into_iter().enumerate() {
            sock.send(&f);
            if i % 32 == 31 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    });
}

/// `n` test frames of `len` bytes from `ifname`'s own MAC to `dst`,
/// numbered from 0, paced as [`send_paced`].
pub fn send_test_stream(ns: &NetNs, ifname: &str, dst: [u8; 6], n: u32, len: usize) {
    let src = mac_of(ns, ifname);
    send_paced(
        ns,
        ifname,
        (0..n).map(move |seq| test_frame(dst, src, TEST_ETHERTYPE, seq, len)),
    );
}

/// Sorted, without duplicates.
pub fn distinct(mut seqs: Vec<u32>) -> Vec<u32> {
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}
