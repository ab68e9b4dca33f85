//! Cross-worker traffic: one bounded lock-free queue per ordered pair of workers, carrying
//! reference-counted packets (never copies per player), and a waker per worker that costs a
//! syscall only when the target is actually parked in its ring wait.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use crate::io::notify;
use crate::media::MediaKind;
use crate::wire::rtp::RtpHeader;

/// Re-exported from [`crate::media`], its home.
pub use crate::media::StreamId;

/// What a relayed packet is, so the receiving worker need not guess: RTP with its header as
/// the publisher's worker parsed it on receipt (no worker parses it again), or one sender
/// report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    Rtp(RtpHeader),
    SenderReport,
}

/// Largest packet handed between workers.
pub const SHARED_PACKET_SIZE: usize = 2048;

/// A publisher's packet as the workers share it: written once by the publisher's worker, read
/// by each worker with players of the stream.
pub struct SharedPacket {
    len: usize,
    /// When the packet's receive completed, for the relay-latency histogram.
    pub received_at: Instant,
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
            data: [0; SHARED_PACKET_SIZE],
        })
    }

    /// A shared packet holding `bytes` (at most `SHARED_PACKET_SIZE`).
    pub fn share(&mut self, bytes: &[u8], received_at: Instant) -> Arc<SharedPacket> {
        let len = bytes.len().min(SHARED_PACKET_SIZE);
        for _ in 0..POOL_PROBE.min(self.packets.len()) {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % self.packets.len();
            if let Some(p) = Arc::get_mut(&mut self.packets[i]) {
                p.len = len;
                p.received_at = received_at;
                p.data[..len].copy_from_slice(&bytes[..len]);
                return self.packets[i].clone();
            }
        }
        let mut p = Self::fresh();
        let fill = Arc::get_mut(&mut p).expect("a fresh Arc has one owner");
        fill.len = len;
        fill.received_at = received_at;
        fill.data[..len].copy_from_slice(&bytes[..len]);
        self.packets.push(p.clone());
        p
    }

    pub fn len(&self) -> usize {
        self.packets.len()
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
        what: Forwarded,
        packet: Arc<SharedPacket>,
    },
    /// A player on the sending worker wants a keyframe from the stream's publisher.
    KeyframeRequest { stream: StreamId },
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

/// The queues between every ordered pair of workers, and their wakers.
pub struct Mesh {
    workers: usize,
    queues: Vec<ArrayQueue<CrossMessage>>,
    pub wakers: Vec<Waker>,
}

impl Mesh {
    pub fn new(wakers: Vec<Waker>, capacity: usize) -> Mesh {
        let workers = wakers.len();
        Mesh {
            workers,
            queues: (0..workers * workers)
                .map(|_| ArrayQueue::new(capacity))
                .collect(),
            wakers,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    fn queue(&self, from: usize, to: usize) -> &ArrayQueue<CrossMessage> {
        &self.queues[from * self.workers + to]
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
            .map(|from| self.queue(from, to).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_reused_once_released_and_the_pool_grows_only_when_all_are_held() {
        let mut pool = SharedPool::new(2);
        let now = Instant::now();
        let a = pool.share(b"first", now);
        let b = pool.share(b"second", now);
        assert_eq!(a.bytes(), b"first");
        assert_eq!(pool.len(), 2);
        // Both held elsewhere: a third packet needs a new buffer.
        let c = pool.share(b"third", now);
        assert_eq!(pool.len(), 3);
        drop((a, b, c));
        for i in 0..100u8 {
            let p = pool.share(&[i; 10], now);
            assert_eq!(p.bytes(), &[i; 10]);
        }
        assert_eq!(pool.len(), 3, "released packets are reused");
    }
}
