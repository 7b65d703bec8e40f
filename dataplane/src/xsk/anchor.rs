//! The UMEM's anchor: the socket that holds its registration, bound to `lo`
//! in a network namespace nothing else uses.
//!
//! libxdp (under xsk-rs) makes the UMEM's first socket on the very fd that
//! registered the UMEM, and does not close that fd when the socket is
//! deleted (`xsk_socket__delete` skips `umem->fd`): the socket stays bound
//! until the whole UMEM goes. Were the first socket a port, that port's
//! (interface, queue) could never be bound again after `port del` (the
//! kernel answers EINVAL), while every later port could. The anchor takes
//! that role instead and is never a port:
//!
//! - it is bound to `lo` of a fresh network namespace, made by a short-lived
//!   thread that leaves it at once, so no interface of the host's is used
//!   and nothing outlives the process (the namespace goes with the socket);
//! - it is bound in copy mode with need_wakeup, which every socket sharing
//!   the UMEM inherits (the kernel decides sharing sockets' mode from the
//!   first one); no frame is ever given to its fill ring, so it holds none.

use std::num::NonZeroU32;

use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue};

use super::config::UmemConfig;
use super::Error;
use crate::sys::netns;

/// Ring entries of the anchor's own RX and TX rings: it never carries a
/// frame, but the kernel wants at least one ring to bind.
const ANCHOR_RING: u32 = 64;

/// The anchor's rings; dropping them deletes the socket (last, after every
/// port socket: [`super::Umem`] drops it before the UMEM itself).
pub(super) struct Anchor {
    _tx: TxQueue,
    _rx: RxQueue,
    _rings: Option<(FillQueue, CompQueue)>,
}

/// Makes the UMEM (registering `frame_count * frame_size` bytes with the
/// kernel) and its anchor socket, in a network namespace of their own.
pub(super) fn register(
    config: &UmemConfig,
) -> Result<(xsk_rs::Umem, Vec<FrameDesc>, Anchor), Error> {
    let socket_config = SocketConfig::builder()
        .rx_queue_size(queue_size("anchor ring", ANCHOR_RING)?)
        .tx_queue_size(queue_size("anchor ring", ANCHOR_RING)?)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    // A thread of its own, because the namespace change is per thread and
    // this one must stay where the ports are.
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                netns::enter_private().map_err(|source| Error::AnchorNamespace { source })?;
                let (umem, descs) = create(config)?;
                let lo: Interface = "lo".parse().expect("no NUL in \"lo\"");
                // SAFETY: xsk-rs's contract for Socket::new: the UMEM outlives
                // the socket (every queue holds a handle on it) and the fill
                // and completion queues returned are used only with frames of
                // this UMEM (none ever are: the anchor never carries frames).
                let (tx, rx, rings) = unsafe { Socket::new(socket_config, &umem, &lo, 0) }
                    .map_err(|e| Error::Anchor {
                        reason: e.to_string(),
                        source: os_error(&e),
                    })?;
                Ok((
                    umem,
                    descs,
                    Anchor {
                        _tx: tx,
                        _rx: rx,
                        _rings: rings,
                    },
                ))
            })
            .join()
            .expect("the UMEM anchor thread panicked")
    })
}

/// Maps and registers a UMEM of `config`'s sizes, with no socket bound on
/// it yet: xsk-rs returns every frame's descriptor.
pub(super) fn create(config: &UmemConfig) -> Result<(xsk_rs::Umem, Vec<FrameDesc>), Error> {
    let xsk_config = xsk_rs::config::UmemConfig::builder()
        .frame_size(FrameSize::new(config.frame_size).map_err(|_| invalid_size(config))?)
        .fill_queue_size(queue_size("umem fill_size", config.fill_size)?)
        .comp_queue_size(queue_size("umem comp_size", config.comp_size)?)
        .frame_headroom(0)
        .build()
        .map_err(|_| invalid_size(config))?;
    let frames = NonZeroU32::new(config.frame_count).ok_or(Error::InvalidConfig {
        field: "umem frame_count",
        value: 0,
        expected: "at least 1",
    })?;
    xsk_rs::Umem::new(xsk_config, frames, false).map_err(|e| Error::Umem {
        frame_count: config.frame_count,
        frame_size: config.frame_size,
        reason: e.to_string(),
        source: os_error(&e),
    })
}

/// The OS error under an xsk-rs error, if it carries one.
pub(super) fn os_error(e: &dyn std::error::Error) -> Option<std::io::Error> {
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|s| s.raw_os_error())
        .map(std::io::Error::from_raw_os_error)
}

fn queue_size(field: &'static str, value: u32) -> Result<QueueSize, Error> {
    QueueSize::new(value).map_err(|_| Error::InvalidConfig {
        field,
        value,
        expected: "a power of two",
    })
}

fn invalid_size(config: &UmemConfig) -> Error {
    Error::InvalidConfig {
        field: "umem frame_size",
        value: config.frame_size,
        expected: "2048 or 4096",
    }
}
