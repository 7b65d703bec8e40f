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

/// vhost-user message header: request, flags, payload size (u32 each, LE).
const HDR_LEN: usize = 12;
const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_ENABLE: u32 = 18;
const ADD_MEM_REG: u32 = 37;
/// One memory region on the wire: guest address, size, user address,
/// offset in the file (u64 each).
const REGION_LEN: usize = 32;
/// Rings a frontend may name (a device has two): a premature
/// SET_VRING_ENABLE for another index is not held, it ends the connection.
const MAX_RINGS: u32 = 2;
/// Flags: protocol version 1, "this is a reply", "reply wanted".
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Larger than any message a frontend sends (the memory table of 8 regions
/// is 8 + 8 * 32 bytes); anything bigger is refused.
const MAX_PAYLOAD: usize = 4096;
/// File descriptors one message may carry (8 memory regions at most).
const MAX_FDS: usize = 16;

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

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes(self.hdr[0..4].try_into().unwrap())
    }
    fn flags(&self) -> u32 {
        u32::from_le_bytes(self.hdr[4..8].try_into().unwrap())
    }
}

fn to_daemon(front: &UnixStream, back: &UnixStream) -> io::Result<()> {
    let mut protocol_features = false;
    // The latest premature SET_VRING_ENABLE per ring, to replay.
    let mut held: Vec<Message> = Vec::new();
    loop {
        let msg = receive(front)?;
        match msg.request() {
            SET_MEM_TABLE | ADD_MEM_REG => {
                if let Err(why) = regions_inside_their_files(&msg) {
                    tracing::warn!("vhost-user frontend disconnected: its memory table {why}");
                    return Err(io::Error::other(why));
                }
                send(back, &msg)?;
            }
            SET_VRING_ENABLE if !protocol_features => {
                let ring = msg
                    .payload
                    .get(0..4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
                if ring.is_none_or(|r| r >= MAX_RINGS) {
                    return Err(io::Error::other(format!(
                        "SET_VRING_ENABLE for ring {ring:?}: a device has {MAX_RINGS}"
                    )));
                }
                if msg.flags() & FLAG_NEED_REPLY != 0 {
                    // Acknowledge it ourselves (0: success).
                    let mut reply = [0u8; HDR_LEN + 8];
                    reply[0..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                    reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                    reply[8..12].copy_from_slice(&8u32.to_le_bytes());
                    (&mut &*front).write_all(&reply)?;
                }
                let index = msg.payload.get(0..4);
                held.retain(|h| h.payload.get(0..4) != index);
                held.push(Message {
                    hdr: without_need_reply(msg.hdr),
                    payload: msg.payload,
                    fds: Vec::new(),
                });
            }
            SET_FEATURES => {
                let features = msg
                    .payload
                    .get(0..8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                send(back, &msg)?;
                if features & PROTOCOL_FEATURES != 0 && !protocol_features {
                    protocol_features = true;
                    for h in held.drain(..) {
                        send(back, &h)?;
                    }
                }
            }
            _ => send(back, &msg)?,
        }
    }
}

/// Checks every region of a SET_MEM_TABLE (`u32 count, u32 padding,
/// regions`) or ADD_MEM_REG (`u64 padding, region`) against the size of
/// the file that comes with it: `offset + size` must not pass its end.
fn regions_inside_their_files(msg: &Message) -> Result<(), String> {
    let (count, first) = if msg.request() == SET_MEM_TABLE {
        let count = msg
            .payload
            .get(0..4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
            .ok_or("is truncated")?;
        (count, 8)
    } else {
        (1, 8)
    };
    if msg.fds.len() != count {
        return Err(format!(
            "names {count} region(s) but brings {} file(s)",
            msg.fds.len()
        ));
    }
    for (i, fd) in msg.fds.iter().enumerate() {
        let at = first + i * REGION_LEN;
        let field = |k: usize| -> Result<u64, String> {
            msg.payload
                .get(at + 8 * k..at + 8 * k + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .ok_or_else(|| format!("is truncated at region {i}"))
        };
        let (size, offset) = (field(1)?, field(3)?);
        // SAFETY: fstat(2) on a descriptor we own, into a struct we own.
        let file_len = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(format!("region {i}: fstat: {}", io::Error::last_os_error()));
            }
            st.st_size as u64
        };
        let end = offset
            .checked_add(size)
            .ok_or_else(|| format!("region {i}: offset {offset} + size {size} overflows"))?;
        if size == 0 || end > file_len {
            return Err(format!(
                "maps region {i} as bytes {offset}..{end} of a {file_len}-byte file"
            ));
        }
    }
    Ok(())
}

fn without_need_reply(mut hdr: [u8; HDR_LEN]) -> [u8; HDR_LEN] {
    let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) & !FLAG_NEED_REPLY;
    hdr[4..8].copy_from_slice(&flags.to_le_bytes());
    hdr
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
    let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::other(format!("message of {size} bytes")));
    }
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
    use super::*;

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
