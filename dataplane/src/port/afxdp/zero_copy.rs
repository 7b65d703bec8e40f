//! A zero-copy AF_XDP port's own UMEM, and the copy at its edge.
//!
//! The kernel gives every socket on a UMEM the mode of its first socket,
//! and a PMD's UMEM is anchored in copy mode so that ports can come and go
//! in any order (`xsk::anchor`). A port bound zero-copy therefore has a
//! UMEM of its own ([`Umem::new_zero_copy`]): the driver receives into and
//! sends from its frames, with no kernel copy and no skb. Frames cross
//! between that UMEM and the PMD's by one copy here, as they do at a TAP or
//! vhost-user port, so the engine, the other ports and the PMD's exact
//! frame accounting see only PMD frames. The port's frames are counted on
//! their own, in this edge's free list, and leave with the port.

use std::sync::Arc;

use dataplane_common::wire::FRAME_HEADROOM;

use crate::port::Frames;
use crate::xsk::{self, FramePool, SocketConfig, Umem, UmemConfig, XdpDesc, XskSocket};

/// The port's UMEM, its free list and a burst's worth of descriptors.
pub(super) struct ZeroCopyEdge {
    umem: Arc<Umem>,
    pool: FramePool,
    /// Descriptors of one burst in the port's UMEM (sized once).
    scratch: Vec<XdpDesc>,
}

/// What one receive moved.
pub(super) struct Received {
    /// Frames taken off the socket's RX ring.
    pub taken: u32,
    /// Of those, frames dropped for want of a PMD frame to copy into.
    pub no_free_frame: u64,
    /// Of those, frames too long for a PMD frame's room past its headroom.
    pub too_big: u64,
}

impl ZeroCopyEdge {
    /// Makes the port's UMEM (`config`'s sizes) and binds its first socket
    /// zero-copy on `ifname` queue `queue`.
    pub(super) fn open(
        config: UmemConfig,
        ifname: &str,
        queue: u32,
        socket: &SocketConfig,
    ) -> Result<(ZeroCopyEdge, XskSocket), xsk::Error> {
        let (umem, first) = Umem::new_zero_copy(config, ifname, queue, socket)?;
        let pool = FramePool::new(&umem);
        let burst = socket.rx_size.max(socket.tx_size) as usize;
        Ok((
            ZeroCopyEdge {
                umem,
                pool,
                scratch: Vec::with_capacity(burst),
            },
            first,
        ))
    }

    /// The port's UMEM, for its other queues' sockets.
    pub(super) fn umem(&self) -> &Arc<Umem> {
        &self.umem
    }

    /// The port's free list: what its sockets' fill rings take from and
    /// their completions go back to.
    pub(super) fn pool(&mut self) -> &mut FramePool {
        &mut self.pool
    }

    /// Takes up to `max` frames off `socket`'s RX ring, copies each into a
    /// PMD frame (at the PMD frame's usual RX start) appended to `out`, and
    /// gives the port's frame back to its free list.
    pub(super) fn receive(
        &mut self,
        socket: &mut XskSocket,
        frames: &mut Frames<'_>,
        out: &mut Vec<XdpDesc>,
        max: u32,
    ) -> Received {
        self.scratch.clear();
        let taken = socket.recv(&mut self.scratch, max);
        let room = u64::from(frames.umem.frame_size()) - FRAME_HEADROOM as u64;
        let mut received = Received {
            taken,
            no_free_frame: 0,
            too_big: 0,
        };
        for d in &self.scratch {
            if u64::from(d.len) > room {
                received.too_big += 1;
            } else if let Some(chunk) = frames.pool.alloc() {
                let addr = chunk + FRAME_HEADROOM as u64;
                // SAFETY: `chunk` was just taken from the PMD's free list, so
                // this code is its only holder; the source frame came off our
                // RX ring and is ours until freed below.
                unsafe { frames.umem.frame_mut(addr, d.len as usize) }
                    .copy_from_slice(self.umem.frame(d.addr, d.len as usize));
                out.push(XdpDesc {
                    addr,
                    len: d.len,
                    options: 0,
                });
            } else {
                received.no_free_frame += 1;
            }
            self.pool.free(d.addr);
        }
        received
    }

    /// Copies frames from the front of `batch` into the port's frames and
    /// queues them on `socket`'s TX ring, as many as the ring and the
    /// port's free list take; frees the PMD frames of those sent and
    /// returns how many. The rest of `batch` stays the caller's.
    pub(super) fn send(
        &mut self,
        socket: &mut XskSocket,
        frames: &mut Frames<'_>,
        batch: &[XdpDesc],
    ) -> usize {
        let room = u64::from(self.umem.frame_size()) - FRAME_HEADROOM as u64;
        let fit = (socket.tx_room() as usize)
            .min(self.pool.len())
            .min(batch.len());
        self.scratch.clear();
        for d in &batch[..fit] {
            if u64::from(d.len) > room {
                // Never for a frame within the port's MTU (`max_mtu`); it
                // stops the burst, and the caller drops and counts it.
                break;
            }
            let chunk = self.pool.alloc().expect("fit <= the free frames");
            let addr = chunk + FRAME_HEADROOM as u64;
            // SAFETY: `chunk` was just taken from the port's free list (this
            // code is its only holder); the PMD frame was handed to this
            // port to send and is held by the caller until freed below.
            unsafe { self.umem.frame_mut(addr, d.len as usize) }
                .copy_from_slice(frames.umem.frame(d.addr, d.len as usize));
            self.scratch.push(XdpDesc {
                addr,
                len: d.len,
                options: 0,
            });
        }
        let sent = socket.send(&self.scratch) as usize;
        for d in &self.scratch[sent..] {
            self.pool.free(d.addr);
        }
        for d in &batch[..sent] {
            frames.pool.free(d.addr);
        }
        sent
    }

    /// Frames of the port's UMEM not in its free list: once its sockets
    /// are closed and what they lent is back, 0 unless a frame was lost.
    pub(super) fn unaccounted(&self) -> usize {
        (self.umem.frame_count() as usize).saturating_sub(self.pool.len())
    }

    /// Frames in the port's UMEM.
    pub(super) fn frame_count(&self) -> u32 {
        self.umem.frame_count()
    }
}
