//! Cross-worker traffic: one bounded lock-free queue per ordered pair of workers, carrying
//! reference-counted packets (never copies per player), and a waker per worker that costs a
//! syscall only when the target is actually parked in its ring wait.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use crossbeam_queue::ArrayQueue;

use crate::negotiation::MediaKind;
use crate::worker::io::notify;

pub type StreamId = u32;

/// What a relayed packet is, so the receiving worker need not guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    Rtp,
    SenderReport,
}

pub enum CrossMessage {
    /// A publisher's packet (plain RTP, or one sender report) for the target's players.
    Media {
        stream: StreamId,
        kind: MediaKind,
        what: Forwarded,
        packet: Arc<[u8]>,
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
