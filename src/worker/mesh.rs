//! Cross-worker traffic: one bounded lock-free queue per ordered pair of workers, carrying
//! reference-counted packets (never copies per player), and a waker per worker that costs a
//! syscall only when the target is actually parked in its ring wait.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use crate::io::notify;
use crate::media::{MediaKind, SessionId};
use crate::wire::rtp::RtpHeader;
use std::net::SocketAddr;

/// Re-exported from [`crate::media`], its home.
use crate::media::StreamId;

/// What a relayed packet is, so the receiving worker need not guess: RTP with its header as
/// the publisher's worker parsed it on receipt (no worker parses it again) and its encoding,
/// or one sender report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    Rtp(RtpHeader, LayerTag),
    SenderReport,
    /// Single-port mode: a packet the kernel gave another worker's shared socket, from
    /// `from`, for `session` here.
    Handoff {
        session: SessionId,
        from: SocketAddr,
    },
    /// Single-port mode: `session` (on the sending worker) passed an ICE check from `from`:
    /// the receiving worker's shared socket, where that path's packets arrive, latches it.
    Latch {
        session: SessionId,
        from: SocketAddr,
    },
}

/// A video packet's simulcast encoding (0 without simulcast, and for audio) and whether it
/// starts a keyframe (where a player may switch encodings), read once on the publisher's
/// worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerTag {
    pub layer: u8,
    pub keyframe: bool,
}

/// Largest packet handed between workers.
pub const SHARED_PACKET_SIZE: usize = 2048;

/// A publisher's packet as the workers share it: written once by the publisher's worker, read
/// by each worker with players of the stream.
pub struct SharedPacket {
    len: usize,
    /// When the packet's receive completed, for the relay-latency histogram.
    pub received_at: Instant,
    /// What the packet is, with its RTP header as ingress parsed it. Kept here rather than in
    /// the queue message so that each queue slot stays small (the mesh's memory is slots).
    pub what: Forwarded,
    data: [u8; SHARED_PACKET_SIZE],
}

impl SharedPacket {
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// A worker's reusable shared packets. A packet is rewritten only when `Arc::get_mut` proves no
/// other worker still holds it; the pool grows only when every packet is in flight, so a steady
/// stream allocates nothing.
pub struct SharedPool {
    packets: Vec<Arc<SharedPacket>>,
    cursor: usize,
}

/// Packets looked at before the pool grows: they come back roughly in the order they left.
const POOL_PROBE: usize = 8;

impl SharedPool {
    pub fn new(initial: usize) -> SharedPool {
        SharedPool {
            packets: (0..initial).map(|_| Self::fresh()).collect(),
            cursor: 0,
        }
    }

    fn fresh() -> Arc<SharedPacket> {
        Arc::new(SharedPacket {
            len: 0,
            received_at: Instant::now(),
            what: Forwarded::SenderReport,
            data: [0; SHARED_PACKET_SIZE],
        })
    }

    /// A shared packet holding `bytes` (at most `SHARED_PACKET_SIZE`).
    pub fn share(
        &mut self,
        bytes: &[u8],
        what: Forwarded,
        received_at: Instant,
    ) -> Arc<SharedPacket> {
        let len = bytes.len().min(SHARED_PACKET_SIZE);
        for _ in 0..POOL_PROBE.min(self.packets.len()) {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % self.packets.len();
            if let Some(p) = Arc::get_mut(&mut self.packets[i]) {
                p.len = len;
                p.received_at = received_at;
                p.what = what;
                p.data[..len].copy_from_slice(&bytes[..len]);
                return self.packets[i].clone();
            }
        }
        let mut p = Self::fresh();
        let fill = Arc::get_mut(&mut p).expect("a fresh Arc has one owner");
        fill.len = len;
        fill.received_at = received_at;
        fill.what = what;
        fill.data[..len].copy_from_slice(&bytes[..len]);
        self.packets.push(p.clone());
        p
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Grows the pool to at least `count` packets now, off the packet path, so that a known
    /// need (a retransmission window holding a second of packets) is met without allocating
    /// per packet later.
    pub fn ensure(&mut self, count: usize) {
        if self.packets.len() < count {
            self.packets.reserve(count - self.packets.len());
            self.packets
                .extend((self.packets.len()..count).map(|_| Self::fresh()));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

pub enum CrossMessage {
    /// A publisher's packet (plain RTP, or one sender report) for the target's players.
    Media {
        stream: StreamId,
        kind: MediaKind,
        packet: Arc<SharedPacket>,
    },
    /// A player on the sending worker wants a keyframe from the stream's publisher.
    KeyframeRequest { stream: StreamId, layer: u8 },
    /// Single-port mode: a packet for a session here, or a path to latch
    /// (`Forwarded::Handoff`, `Forwarded::Latch`).
    Demux { packet: Arc<SharedPacket> },
    /// Single-port mode: an ICE-TCP connection accepted by the sending worker for a session
    /// here, with what it has read of it.
    Connection(Box<super::mux::ConnHandover>),
}

/// Wakes a worker that may be parked in its ring wait.
pub struct Waker {
    parked: AtomicBool,
    fd: OwnedFd,
}

impl Waker {
    pub fn new(fd: OwnedFd) -> Waker {
        Waker {
            parked: AtomicBool::new(false),
            fd,
        }
    }

    /// Call after publishing work for the worker.
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.parked.swap(false, Ordering::SeqCst) {
            notify(&self.fd);
        }
    }

    /// The worker calls this before it re-checks its inputs and waits.
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }
}

/// Slots of one cross-worker queue, at most: enough for a loop turn's packets of many HD
/// streams between two workers.
pub const QUEUE_CAPACITY_MAX: usize = 8192;
/// Slots of one cross-worker queue, at least, however many workers share the budget.
pub const QUEUE_CAPACITY_MIN: usize = 256;
/// Slots of all the queues together. The queues grow with the square of the worker count, so
/// each pair's queue shrinks as workers are added, keeping the mesh near this many slots
/// (about 100 MB) until every queue is at its minimum.
const MESH_SLOT_BUDGET: usize = 4 << 20;
/// Bytes one queue slot takes: the message and the queue's sequence stamp.
pub const QUEUE_SLOT_BYTES: usize = size_of::<CrossMessage>() + size_of::<usize>();

/// Slots of each queue of a mesh of `workers`: the budget shared by the ordered pairs, as a
/// power of two within the bounds.
pub fn queue_capacity(workers: usize) -> usize {
    let pairs = workers * workers.saturating_sub(1);
    if pairs == 0 {
        return 0;
    }
    let share = (MESH_SLOT_BUDGET / pairs).clamp(QUEUE_CAPACITY_MIN, QUEUE_CAPACITY_MAX);
    // Round down to a power of two (the bounds are powers of two, so it stays within them).
    1 << share.ilog2()
}

/// Bytes the queues of a mesh of `workers` hold, allocated at start.
pub fn memory_bytes(workers: usize) -> usize {
    workers * workers.saturating_sub(1) * queue_capacity(workers) * QUEUE_SLOT_BYTES
}

/// The queues between every ordered pair of distinct workers, and their wakers.
pub struct Mesh {
    workers: usize,
    /// `workers × (workers − 1)` queues: a worker never queues to itself.
    queues: Vec<ArrayQueue<CrossMessage>>,
    pub wakers: Vec<Waker>,
}

impl Mesh {
    pub fn new(wakers: Vec<Waker>) -> Mesh {
        let workers = wakers.len();
        let capacity = queue_capacity(workers);
        Mesh {
            workers,
            queues: (0..workers * workers.saturating_sub(1))
                .map(|_| ArrayQueue::new(capacity))
                .collect(),
            wakers,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    fn queue(&self, from: usize, to: usize) -> &ArrayQueue<CrossMessage> {
        debug_assert_ne!(from, to, "a worker has no queue to itself");
        // Row `from` skips its own column.
        let column = if to > from { to - 1 } else { to };
        &self.queues[from * (self.workers - 1) + column]
    }

    /// Queues a message; a full queue gives it back (the caller counts the drop).
    pub fn push(&self, from: usize, to: usize, message: CrossMessage) -> Result<(), CrossMessage> {
        self.queue(from, to).push(message)
    }

    pub fn pop(&self, from: usize, to: usize) -> Option<CrossMessage> {
        self.queue(from, to).pop()
    }

    /// Whether any queue into `to` holds something.
    pub fn has_incoming(&self, to: usize) -> bool {
        (0..self.workers).any(|from| from != to && !self.queue(from, to).is_empty())
    }

    /// Messages queued towards `to`, for the occupancy metric.
    pub fn occupancy(&self, to: usize) -> usize {
        (0..self.workers)
            .filter(|&from| from != to)
            .map(|from| self.queue(from, to).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_memory_stays_bounded_as_workers_grow() {
        assert_eq!(queue_capacity(1), 0);
        assert_eq!(queue_capacity(2), QUEUE_CAPACITY_MAX);
        assert_eq!(queue_capacity(16), QUEUE_CAPACITY_MAX);
        // 16 workers: 240 queues of 8192 slots.
        assert!(memory_bytes(16) < 100 << 20, "{}", memory_bytes(16));
        // 128 workers: 16 256 queues, each at the minimum; well under 1 GB.
        assert_eq!(queue_capacity(128), QUEUE_CAPACITY_MIN);
        assert!(memory_bytes(128) < 256 << 20, "{}", memory_bytes(128));
        for w in 1..300 {
            assert!(queue_capacity(w) == 0 || queue_capacity(w).is_power_of_two());
        }
    }

    #[test]
    fn every_ordered_pair_of_distinct_workers_has_its_own_queue() {
        let wakers = (0..3)
            .map(|_| Waker::new(std::fs::File::open("/dev/null").unwrap().into()))
            .collect();
        let mesh = Mesh::new(wakers);
        for from in 0..3 {
            for to in (0..3).filter(|&t| t != from) {
                let message = CrossMessage::KeyframeRequest {
                    stream: (from * 10 + to) as StreamId,
                    layer: 0,
                };
                assert!(mesh.push(from, to, message).is_ok());
            }
        }
        for from in 0..3 {
            for to in (0..3).filter(|&t| t != from) {
                match mesh.pop(from, to) {
                    Some(CrossMessage::KeyframeRequest { stream, .. }) => {
                        assert_eq!(stream, (from * 10 + to) as StreamId)
                    }
                    _ => panic!("queue {from}->{to} lost its message"),
                }
                assert!(mesh.pop(from, to).is_none());
            }
        }
    }

    #[test]
    fn packets_are_reused_once_released_and_the_pool_grows_only_when_all_are_held() {
        let mut pool = SharedPool::new(2);
        let now = Instant::now();
        let a = pool.share(b"first", Forwarded::SenderReport, now);
        let b = pool.share(b"second", Forwarded::SenderReport, now);
        assert_eq!(a.bytes(), b"first");
        assert_eq!(pool.len(), 2);
        // Both held elsewhere: a third packet needs a new buffer.
        let c = pool.share(b"third", Forwarded::SenderReport, now);
        assert_eq!(pool.len(), 3);
        drop((a, b, c));
        for i in 0..100u8 {
            let p = pool.share(&[i; 10], Forwarded::SenderReport, now);
            assert_eq!(p.bytes(), &[i; 10]);
        }
        assert_eq!(pool.len(), 3, "released packets are reused");
    }
}
