//! The worker's one interface to the kernel: operations in (arm a receive, send, cancel),
//! typed [`Completion`]s out, whichever backend runs underneath ([`IoBackend`], chosen once
//! per worker: `uring` or `epoll`). The backend is an enum matched at each call, a branch that
//! always goes the same way, not a virtual call (not yet measured against the build before
//! it: BENCHMARKS.md, "io_uring or epoll").
//!
//! It owns every piece of memory an operation in flight points at, and the backend (the
//! kernel's ring, or the epoll set) is dropped before any of it.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use super::addr::RawAddr;
use super::backend::IoBackend;
use super::completion::{Completion, Pending, Token};
use super::egress::{EGRESS_HEADROOM, EgressPool};
use super::epoll::Epoll;
use super::gso::GsoSends;
use super::recv::{RecvBuffers, RecvMemory};
use super::tcp::TcpSends;
use super::uring::Uring;
use super::wake::WakeFd;

/// How large a worker's ring and its tables are.
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    /// Submission queue entries (the completion queue has four times as many).
    pub entries: u32,
    /// Receive buffers (a power of two).
    pub recv_buffers: u16,
    pub egress_buffers: u32,
    /// GSO sends that can be in flight at once (0 without GSO).
    pub gso_sends: usize,
}

enum Backend {
    Uring(Uring),
    Epoll(Epoll),
}

/// A worker's I/O (an io_uring, or an epoll set) and everything the kernel may read or write
/// for it.
pub struct Ring {
    // Field order is drop order: the backend goes first, then the memory it used.
    backend: Backend,
    pool: EgressPool,
    gso: GsoSends,
    tcp: TcpSends,
    /// Held, never read: keeps the receive buffers alive while the kernel may write them.
    _recv_memory: Rc<RecvMemory>,
    /// The backend and what it was granted, for the start-up log.
    pub description: String,
}

impl Ring {
    /// Builds the worker's I/O on `backend` with its receive buffers; returns it and the
    /// worker's side of the receive buffers.
    pub fn new(
        backend: IoBackend,
        sizes: RingSizes,
        wake: WakeFd,
    ) -> io::Result<(Ring, RecvBuffers)> {
        let recv_memory = Rc::new(RecvMemory::new(sizes.recv_buffers)?);
        let (backend, description) = match backend {
            IoBackend::IoUring => {
                let uring = Uring::new(sizes.entries, &recv_memory, wake)?;
                let description = format!("io_uring, {}", uring.granted);
                (Backend::Uring(uring), description)
            }
            IoBackend::Epoll => (
                Backend::Epoll(Epoll::new(recv_memory.clone(), wake)?),
                "epoll (recvmmsg, sendmmsg, sendmsg with UDP_SEGMENT)".to_string(),
            ),
        };
        let buffers = RecvBuffers::new(recv_memory.clone());
        let ring = Ring {
            backend,
            pool: EgressPool::new(sizes.egress_buffers),
            gso: GsoSends::new(sizes.gso_sends),
            tcp: TcpSends::default(),
            _recv_memory: recv_memory,
            description,
        };
        Ok((ring, buffers))
    }

    /// Hands the kernel what is queued without waiting (io_uring: submits; epoll: sends the
    /// batched datagrams).
    pub fn submit(&mut self) -> io::Result<()> {
        match &mut self.backend {
            Backend::Uring(u) => u.submit(),
            Backend::Epoll(e) => {
                e.flush(&mut self.pool);
                Ok(())
            }
        }
    }

    /// As [`Ring::submit`], and gathers what is ready without waiting (epoll asks its set;
    /// io_uring's completions arrive by themselves).
    pub fn submit_and_poll(&mut self) -> io::Result<()> {
        match &mut self.backend {
            Backend::Uring(u) => u.submit(),
            Backend::Epoll(e) => e.poll(&mut self.pool, &mut self.tcp, Duration::ZERO),
        }
    }

    /// Submits and waits for at least one completion or the timeout.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        match &mut self.backend {
            Backend::Uring(u) => u.submit_and_wait(timeout),
            Backend::Epoll(e) => e.poll(&mut self.pool, &mut self.tcp, timeout),
        }
    }

    /// Whether nothing queued still waits to be handed to the kernel (and so may still name
    /// a descriptor).
    pub fn backlog_is_empty(&self) -> bool {
        match &self.backend {
            Backend::Uring(u) => u.backlog_is_empty(),
            Backend::Epoll(e) => e.nothing_unsent(),
        }
    }

    pub fn has_completions(&mut self) -> bool {
        match &mut self.backend {
            Backend::Uring(u) => u.has_completions(),
            Backend::Epoll(e) => e.has_completions(),
        }
    }

    /// Moves up to `limit` completions into `out` (reused, so no allocation once it has
    /// grown), decoded; returns how many. Egress slots of finished sends are taken back here:
    /// a plain send's slot is free again, a GSO or TCP send's slots are the worker's again.
    pub fn completions(&mut self, out: &mut Vec<Completion>, limit: usize) -> usize {
        match &mut self.backend {
            Backend::Uring(u) => {
                u.completions(&mut self.pool, &mut self.gso, &mut self.tcp, out, limit)
            }
            Backend::Epoll(e) => e.completions(out, limit),
        }
    }

    /// A free egress slot, held by the caller until it sends or releases it.
    #[inline]
    pub fn alloc_egress(&mut self) -> Option<u32> {
        self.pool.alloc()
    }

    /// The whole buffer of a held egress slot; packets start at `EGRESS_HEADROOM`.
    #[inline]
    pub fn egress_buffer(&mut self, slot: u32) -> &mut [u8] {
        self.pool.buffer(slot)
    }

    /// Gives back a held egress slot that is not sent after all.
    #[inline]
    pub fn release_egress(&mut self, slot: u32) {
        self.pool.release(slot)
    }

    /// Queues a send of the `len`-byte packet at `EGRESS_HEADROOM` in egress `slot` to `to`
    /// on `fd`; the slot is free again once the send completes.
    pub fn send(&mut self, fd: RawFd, slot: u32, len: usize, to: &RawAddr) {
        let (bytes, addr) = self.pool.lend(slot, EGRESS_HEADROOM, len, Some(to));
        match &mut self.backend {
            Backend::Uring(u) => u.send(fd, slot, bytes, len, addr),
            Backend::Epoll(e) => e.send(&mut self.pool, fd, slot, bytes, len, addr),
        }
    }

    /// Queues one `sendmsg` of `segments` (egress slot, length; each packet at
    /// `EGRESS_HEADROOM`) to `to` on `fd`, which the kernel cuts every `segment_size` bytes;
    /// every segment but the last must be `segment_size` long. `index` (below
    /// `RingSizes::gso_sends`) names the send in its completion and must not be in flight.
    pub fn send_gso(
        &mut self,
        index: usize,
        fd: RawFd,
        to: &RawAddr,
        segment_size: usize,
        segments: impl Iterator<Item = (u32, usize)>,
    ) {
        let pool = &mut self.pool;
        let lent = segments.map(|(slot, len)| {
            let (bytes, _) = pool.lend(slot, EGRESS_HEADROOM, len, None);
            (slot, bytes, len)
        });
        let msghdr = self.gso.prepare(index, to, segment_size, lent);
        match &mut self.backend {
            Backend::Uring(u) => u.send_gso(index, fd, msghdr),
            Backend::Epoll(e) => e.send_gso(&mut self.pool, &mut self.gso, index, fd, msghdr),
        }
    }

    /// Sends `frames` (egress slot, offset, length) on connection `conn`'s socket `fd` in order
    /// as one gathered send; returns the bytes it carries. Its completion comes once all of
    /// them are written (or the connection failed), so frames are never torn. One send per
    /// connection at a time.
    pub fn send_tcp(
        &mut self,
        conn: Token,
        fd: RawFd,
        frames: impl Iterator<Item = (u32, usize, usize)>,
    ) -> usize {
        let pool = &mut self.pool;
        let lent = frames.map(|(slot, offset, len)| {
            let (bytes, _) = pool.lend(slot, offset, len, None);
            (slot, bytes, len)
        });
        let (msghdr, total) = self.tcp.prepare(conn.slot, lent);
        match &mut self.backend {
            Backend::Uring(u) => u.send_tcp(conn, fd, msghdr),
            Backend::Epoll(e) => e.send_tcp(&mut self.pool, &mut self.tcp, conn, fd, total),
        }
        total
    }

    /// Arms a datagram receive (with source addresses) on `fd` for `session`: it stays armed,
    /// each datagram a completion, until it ends (`more` false) or is cancelled.
    pub fn arm_recv(&mut self, fd: RawFd, session: Token) {
        match &mut self.backend {
            Backend::Uring(u) => u.arm_recv(fd, session),
            Backend::Epoll(e) => e.arm_recv(fd, session),
        }
    }

    /// Arms a receive on a connection's stream socket, as [`Ring::arm_recv`].
    pub fn arm_stream_recv(&mut self, fd: RawFd, conn: Token) {
        match &mut self.backend {
            Backend::Uring(u) => u.arm_stream_recv(fd, conn),
            Backend::Epoll(e) => e.arm_stream_recv(fd, conn),
        }
    }

    /// Arms accepting connections on a session's listener, as [`Ring::arm_recv`].
    pub fn arm_accept(&mut self, fd: RawFd, session: Token) {
        match &mut self.backend {
            Backend::Uring(u) => u.arm_accept(fd, session),
            Backend::Epoll(e) => e.arm_accept(fd, session),
        }
    }

    /// Arms the read on the wake-up eventfd (again after each [`Completion::Woken`]).
    pub fn arm_wake(&mut self) {
        match &mut self.backend {
            Backend::Uring(u) => u.arm_wake(),
            Backend::Epoll(e) => e.arm_wake(),
        }
    }

    /// Cancels an operation; it completes (cancelled) on its own.
    pub fn cancel(&mut self, pending: Pending) {
        match &mut self.backend {
            Backend::Uring(u) => u.cancel(pending),
            Backend::Epoll(e) => e.cancel(&mut self.pool, &mut self.tcp, pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::io::udp_gso_supported;

    fn ring(backend: IoBackend) -> Ring {
        let sizes = RingSizes {
            entries: 8,
            recv_buffers: 8,
            egress_buffers: 4,
            gso_sends: 1,
        };
        Ring::new(backend, sizes, WakeFd::new().unwrap()).unwrap().0
    }

    fn a_gso_send_arrives_as_one_datagram_per_segment(backend: IoBackend) {
        if !udp_gso_supported() {
            eprintln!("skipped: this kernel has no UDP_SEGMENT");
            return;
        }
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ring = ring(backend);
        let lens = [1000, 1000, 400];
        let slots: Vec<u32> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let slot = ring.alloc_egress().unwrap();
                ring.egress_buffer(slot)[EGRESS_HEADROOM..EGRESS_HEADROOM + len].fill(i as u8 + 1);
                slot
            })
            .collect();
        let to = RawAddr::new(receiver.local_addr().unwrap());
        let segments = slots.iter().copied().zip(lens);
        ring.send_gso(0, sender.as_raw_fd(), &to, 1000, segments);
        ring.submit_and_wait(Duration::from_secs(5)).unwrap();
        let mut completions = Vec::new();
        assert_eq!(ring.completions(&mut completions, usize::MAX), 1);
        assert!(matches!(
            completions[0],
            Completion::GsoSent {
                index: 0,
                result: 2400
            }
        ));
        // The slots are the caller's again.
        for slot in slots {
            ring.release_egress(slot);
        }
        let mut buf = [0u8; 2048];
        for (i, &len) in lens.iter().enumerate() {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(n, len, "datagram {i}");
            assert!(buf[..n].iter().all(|&b| b == i as u8 + 1), "datagram {i}");
        }
    }

    #[test]
    fn a_gso_send_arrives_as_one_datagram_per_segment_io_uring() {
        a_gso_send_arrives_as_one_datagram_per_segment(IoBackend::IoUring);
    }

    #[test]
    fn a_gso_send_arrives_as_one_datagram_per_segment_epoll() {
        a_gso_send_arrives_as_one_datagram_per_segment(IoBackend::Epoll);
    }

    /// Datagrams in, their source and bytes out; a send back; a cancel ends the receive.
    fn datagrams_round_trip(backend: IoBackend) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sizes = RingSizes {
            entries: 8,
            recv_buffers: 8,
            egress_buffers: 4,
            gso_sends: 0,
        };
        let (mut ring, mut buffers) = Ring::new(backend, sizes, WakeFd::new().unwrap()).unwrap();
        let session = Token {
            slot: 3,
            generation: 7,
        };
        ring.arm_recv(socket.as_raw_fd(), session);
        ring.submit().unwrap();
        for i in 0..3u8 {
            peer.send_to(&[i; 100], socket.local_addr().unwrap())
                .unwrap();
        }
        let mut got = Vec::new();
        let mut completions = Vec::new();
        for _ in 0..50 {
            ring.submit_and_wait(Duration::from_millis(100)).unwrap();
            ring.completions(&mut completions, usize::MAX);
            for completion in completions.drain(..) {
                let Completion::Datagram {
                    session: s,
                    received,
                } = completion
                else {
                    panic!("only datagrams expected");
                };
                assert_eq!(s, session);
                assert!(received.more);
                let buffer = received.buffer.expect("a buffer");
                let (from, data) = buffers.datagram(&buffer).expect("a datagram");
                assert_eq!(from, peer.local_addr().unwrap());
                got.push(data.to_vec());
                buffers.recycle(buffer);
            }
            if got.len() == 3 {
                break;
            }
        }
        assert_eq!(got, vec![vec![0u8; 100], vec![1; 100], vec![2; 100]]);
        let slot = ring.alloc_egress().unwrap();
        ring.egress_buffer(slot)[EGRESS_HEADROOM..EGRESS_HEADROOM + 5].copy_from_slice(b"hello");
        ring.send(
            socket.as_raw_fd(),
            slot,
            5,
            &RawAddr::new(peer.local_addr().unwrap()),
        );
        ring.cancel(Pending::Recv(session));
        let mut ended = false;
        for _ in 0..50 {
            ring.submit_and_wait(Duration::from_millis(100)).unwrap();
            ring.completions(&mut completions, usize::MAX);
            for completion in completions.drain(..) {
                if let Completion::Datagram { received, .. } = completion {
                    ended |= !received.more;
                }
            }
            if ended {
                break;
            }
        }
        assert!(ended, "the cancelled receive ends");
        let mut buf = [0u8; 16];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        // The sent slot is free again: all four can be held.
        let held: Vec<u32> = (0..4).filter_map(|_| ring.alloc_egress()).collect();
        assert_eq!(held.len(), 4);
    }

    #[test]
    fn datagrams_round_trip_io_uring() {
        datagrams_round_trip(IoBackend::IoUring);
    }

    #[test]
    fn datagrams_round_trip_epoll() {
        datagrams_round_trip(IoBackend::Epoll);
    }
}
