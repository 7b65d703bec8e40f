//! A message relay between the frontend and the vhost-user daemon, for one
//! ordering problem: QEMU's virtio-net sends SET_VRING_ENABLE as soon as the
//! device exists, before SET_FEATURES, while the `vhost` crate's dispatcher
//! refuses SET_VRING_ENABLE until VHOST_USER_F_PROTOCOL_FEATURES has been
//! acknowledged by SET_FEATURES, and drops the connection. DPDK's
//! virtio_user, on the other hand, needs PROTOCOL_FEATURES (it sends
//! SET_VRING_ENABLE after SET_FEATURES, and always).
//!
//! The relay forwards every message unchanged (file descriptors included),
//! except a SET_VRING_ENABLE that arrives before PROTOCOL_FEATURES was
//! acknowledged: that one is held (the latest state per ring) and replayed
//! right after the SET_FEATURES that acknowledges it. Replies flow back
//! untouched.
//!
//! It also checks what the mapping code below it does not: a memory region
//! (SET_MEM_TABLE, ADD_MEM_REG) must lie inside the file it comes with.
//! A frontend announcing a region larger than its memfd or hugetlbfs file
//! would otherwise be mapped as announced, and the first access past the
//! file's end would kill the switch with SIGBUS. Such a frontend is
//! disconnected, and the port stays down.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use super::relay_gate::{self, Gate, Header, Verdict, HDR_LEN, MAX_FDS};

/// Starts relaying between `front` (the frontend's connection) and `back`
/// (the daemon's) on two threads; both end when either side closes.
pub fn spawn(front: UnixStream, back: UnixStream) -> io::Result<[JoinHandle<()>; 2]> {
    let (front2, back2) = (front.try_clone()?, back.try_clone()?);
    let down = std::thread::Builder::new()
        .name("vhost-user-relay".into())
        .spawn(move || {
            let _ = to_daemon(&front, &back);
            let _ = front.shutdown(std::net::Shutdown::Both);
            let _ = back.shutdown(std::net::Shutdown::Both);
        })?;
    let up = std::thread::Builder::new()
        .name("vhost-user-relay".into())
        .spawn(move || {
            // Replies carry no descriptors for the features offered.
            let _ = io::copy(&mut &back2, &mut &front2);
            let _ = front2.shutdown(std::net::Shutdown::Both);
            let _ = back2.shutdown(std::net::Shutdown::Both);
        })?;
    Ok([down, up])
}

/// One message as received.
struct Message {
    hdr: [u8; HDR_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

fn to_daemon(front: &UnixStream, back: &UnixStream) -> io::Result<()> {
    let mut gate = Gate::default();
    loop {
        let msg = receive(front)?;
        let sizes: Vec<Result<u64, String>> = msg.fds.iter().map(file_size).collect();
        match gate.judge(&msg.hdr, &msg.payload, &sizes) {
            Verdict::Forward => send(back, &msg)?,
            Verdict::Hold { reply } => {
                if reply {
                    // Acknowledge it ourselves (0: success).
                    let request = Header::parse(&msg.hdr).map_or(0, |h| h.request);
                    (&mut &*front).write_all(&relay_gate::ack(request))?;
                }
            }
            Verdict::ForwardThenReplay => {
                send(back, &msg)?;
                for h in gate.take_held() {
                    send(
                        back,
                        &Message {
                            hdr: h.hdr,
                            payload: h.payload,
                            fds: Vec::new(),
                        },
                    )?;
                }
            }
            Verdict::Refuse(why) => {
                tracing::warn!("vhost-user frontend disconnected: {why}");
                return Err(io::Error::other(why));
            }
        }
    }
}

/// The size of a file a frontend sent (its memory), by fstat(2).
fn file_size(fd: &OwnedFd) -> Result<u64, String> {
    // SAFETY: fstat(2) on a descriptor we own, into a struct we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(format!("fstat: {}", io::Error::last_os_error()));
        }
        Ok(st.st_size as u64)
    }
}

/// Receives one message: the header with any descriptors attached to it,
/// then the payload.
fn receive(sock: &UnixStream) -> io::Result<Message> {
    let mut hdr = [0u8; HDR_LEN];
    // Room for MAX_FDS descriptors in one SCM_RIGHTS control message.
    let mut control = [0u64; 2 + MAX_FDS / 2 + 2];
    let mut iov = libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: HDR_LEN,
    };
    // SAFETY: msghdr is plain data; every pointer set below refers to a live
    // buffer of the stated size for the duration of the call.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `mh` describes live buffers (above); MSG_CMSG_CLOEXEC keeps
    // received descriptors from leaking into children.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut mh, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages recvmsg wrote into `control`;
    // each SCM_RIGHTS descriptor is new and ours to own.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    if mh.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("too many file descriptors in one message"));
    }
    (&mut &*sock).read_exact(&mut hdr[n as usize..])?;
    let size = Header::parse(&hdr).map_err(io::Error::other)?.size as usize;
    let mut payload = vec![0u8; size];
    (&mut &*sock).read_exact(&mut payload)?;
    Ok(Message { hdr, payload, fds })
}

/// Sends one message, its descriptors attached to the header.
fn send(sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(HDR_LEN + msg.payload.len());
    bytes.extend_from_slice(&msg.hdr);
    bytes.extend_from_slice(&msg.payload);
    let raw: Vec<RawFd> = msg.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut control = [0u64; 2 + MAX_FDS / 2 + 2];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: as in `receive`: plain data, pointers to live buffers.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    if !raw.is_empty() {
        let data_len = std::mem::size_of_val(raw.as_slice()) as u32;
        // SAFETY: CMSG_SPACE is arithmetic.
        mh.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        mh.msg_control = control.as_mut_ptr().cast();
        // SAFETY: `control` holds CMSG_SPACE(MAX_FDS descriptors) bytes, at
        // least what msg_controllen says; the first header is inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                raw.len(),
            );
        }
    }
    // SAFETY: `mh` describes live buffers; the descriptors stay open (owned
    // by `msg`) until the call returns.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // The descriptors went with the first byte; the rest is plain data.
    (&mut &*sock).write_all(&bytes[n as usize..])
}

#[cfg(test)]
mod tests {
    use super::relay_gate::*;
    use super::*;

    impl Message {
        fn request(&self) -> u32 {
            u32::from_le_bytes(self.hdr[0..4].try_into().unwrap())
        }
    }

    fn message(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn read_message(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
        let mut hdr = [0u8; HDR_LEN];
        s.read_exact(&mut hdr).unwrap();
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut p = vec![0u8; size];
        s.read_exact(&mut p).unwrap();
        (
            u32::from_le_bytes(hdr[0..4].try_into().unwrap()),
            u32::from_le_bytes(hdr[4..8].try_into().unwrap()),
            p,
        )
    }

    #[test]
    fn early_vring_enable_is_held_until_protocol_features_and_fds_pass() {
        let (mut frontend, front) = UnixStream::pair().unwrap();
        let (back, mut daemon) = UnixStream::pair().unwrap();
        let threads = spawn(front, back).unwrap();
        let enable = |i: u32, on: u32, flags: u32| {
            let mut p = i.to_le_bytes().to_vec();
            p.extend_from_slice(&on.to_le_bytes());
            message(SET_VRING_ENABLE, flags, &p)
        };
        // Premature: held; one asks for a reply and gets it from the relay.
        frontend.write_all(&enable(0, 1, 1)).unwrap();
        frontend.write_all(&enable(1, 0, 1)).unwrap();
        frontend
            .write_all(&enable(1, 1, FLAG_VERSION | FLAG_NEED_REPLY))
            .unwrap();
        let (req, flags, p) = read_message(&mut frontend);
        assert_eq!(
            (req, flags & FLAG_REPLY, p),
            (SET_VRING_ENABLE, FLAG_REPLY, vec![0; 8])
        );
        // A message with a descriptor goes through with it.
        let file = std::fs::File::open("/dev/null").unwrap();
        let call = Message {
            hdr: message(13, 1, &[0u8; 8])[..HDR_LEN].try_into().unwrap(),
            payload: vec![0u8; 8],
            fds: vec![OwnedFd::from(file)],
        };
        send(&frontend, &call).unwrap();
        let got = receive(&daemon).unwrap();
        assert_eq!((got.request(), got.fds.len()), (13, 1));
        // SET_FEATURES with PROTOCOL_FEATURES, then the held ones, latest
        // state per ring, no reply asked.
        let features = (PROTOCOL_FEATURES | 1 << 32).to_le_bytes();
        frontend
            .write_all(&message(SET_FEATURES, 1, &features))
            .unwrap();
        assert_eq!(read_message(&mut daemon).0, SET_FEATURES);
        let a = read_message(&mut daemon);
        let b = read_message(&mut daemon);
        assert_eq!(
            (a.0, &a.2[..]),
            (SET_VRING_ENABLE, &[0, 0, 0, 0, 1, 0, 0, 0][..])
        );
        assert_eq!(
            (b.0, &b.2[..]),
            (SET_VRING_ENABLE, &[1, 0, 0, 0, 1, 0, 0, 0][..])
        );
        assert_eq!(b.1 & FLAG_NEED_REPLY, 0);
        // From now on SET_VRING_ENABLE passes straight through; replies too.
        frontend.write_all(&enable(0, 0, 1)).unwrap();
        assert_eq!(read_message(&mut daemon).0, SET_VRING_ENABLE);
        daemon
            .write_all(&message(1, FLAG_REPLY | 1, &[7; 8]))
            .unwrap();
        assert_eq!(read_message(&mut frontend).2, vec![7; 8]);
        // The frontend leaves: the daemon's side closes too.
        drop(frontend);
        let mut rest = Vec::new();
        daemon.read_to_end(&mut rest).unwrap();
        drop(daemon);
        for t in threads {
            t.join().unwrap();
        }
    }
}
