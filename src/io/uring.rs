//! The ring: submissions (with a backlog for what does not fit the queue), waiting, and
//! completions decoded into [`Completion`]s. It owns every piece of memory an operation in
//! flight points at, and its kernel ring is dropped before any of it.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use super::addr::RawAddr;
use super::completion::{Completion, Op, Pending, Received, Token, decode, user_data};
use super::egress::{EGRESS_HEADROOM, EgressPool};
use super::gso::GsoSends;
use super::recv::{NAME_LEN, RecvBuffer, RecvBuffers, RecvMemory};
use super::tcp::{TcpSends, adopt_stream};
use super::wake::WakeFd;

/// The provided-buffer group all of a worker's receives draw from.
const RECV_GROUP: u16 = 0;

/// How large a worker's ring and its tables are.
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    /// Submission queue entries (the completion queue has four times as many).
    pub entries: u32,
    /// Provided receive buffers (a power of two).
    pub recv_buffers: u16,
    pub egress_buffers: u32,
    /// GSO sends that can be in flight at once (0 without GSO).
    pub gso_sends: usize,
}

/// A worker's io_uring and everything the kernel may read or write for it.
pub struct Ring {
    // Field order is drop order: the kernel's ring goes first, then the memory it used.
    ring: IoUring,
    backlog: VecDeque<squeue::Entry>,
    pool: EgressPool,
    gso: GsoSends,
    tcp: TcpSends,
    /// The template header for multishot recvmsg: where the source address goes.
    recv_msghdr: Box<libc::msghdr>,
    /// Held, never read: keeps the receive buffers alive while the kernel may write them.
    _recv_memory: Rc<RecvMemory>,
    wake: WakeFd,
    wake_buffer: Box<[u8; 8]>,
    /// Features the kernel granted, for the start-up log.
    pub description: String,
}

impl Ring {
    /// Builds a ring, asking for single-issuer mode and cooperative task running and falling
    /// back to a plain ring where the kernel refuses them, with its receive buffers
    /// registered; returns it and the worker's side of the receive buffers.
    pub fn new(sizes: RingSizes, wake: WakeFd) -> io::Result<(Ring, RecvBuffers)> {
        let entries = sizes.entries;
        let tuned = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(entries);
        let (ring, description) = match tuned {
            Ok(r) => (r, "single-issuer, cooperative task running"),
            Err(_) => (
                IoUring::builder()
                    .setup_cqsize(entries * 4)
                    .build(entries)?,
                "plain (single-issuer and cooperative task running refused by the kernel)",
            ),
        };
        let recv_memory = Rc::new(RecvMemory::new(sizes.recv_buffers)?);
        let buffers = RecvBuffers::new(recv_memory.clone());
        // SAFETY: `entries` is page-aligned memory for `count` entries that this ring keeps
        // (in `recv_memory`) until after the kernel's ring is dropped.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                recv_memory.entries as u64,
                recv_memory.count,
                RECV_GROUP,
                0,
            )
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the provided-buffer ring failed (kernel 5.19+ needed): {e}"),
            )
        })?;
        // SAFETY: all-zero is a valid msghdr; only the name length is set below.
        let mut recv_msghdr: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        recv_msghdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let ring = Ring {
            ring,
            backlog: VecDeque::new(),
            pool: EgressPool::new(sizes.egress_buffers),
            gso: GsoSends::new(sizes.gso_sends),
            tcp: TcpSends::default(),
            recv_msghdr,
            _recv_memory: recv_memory,
            wake,
            wake_buffer: Box::new([0; 8]),
            description: description.to_string(),
        };
        Ok((ring, buffers))
    }

    /// Queues a submission; when the queue is full it is submitted first, and what still does
    /// not fit waits in the backlog for the next turn.
    ///
    /// # Safety
    /// Every buffer and address the entry points to must stay valid and unwritten until its
    /// completion.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: the caller guarantees the entry's buffers outlive the operation.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.backlog.push_back(entry);
            }
        }
    }

    fn drain_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: entries in the backlog were pushed under `push`'s contract.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// Submits what is queued without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.drain_backlog();
        self.ring.submit()?;
        Ok(())
    }

    /// Submits and waits for at least one completion or the timeout.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.drain_backlog();
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn backlog_is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Moves up to `limit` completions into `out` (reused, so no allocation once it has
    /// grown), decoded; returns how many. Egress slots of finished sends are taken back here:
    /// a plain send's slot is free again, a GSO or TCP send's slots are the worker's again.
    pub fn completions(&mut self, out: &mut Vec<Completion>, limit: usize) -> usize {
        let Ring {
            ring,
            pool,
            gso,
            tcp,
            ..
        } = self;
        let mut taken = 0;
        for cqe in ring.completion().take(limit) {
            taken += 1;
            let (result, flags) = (cqe.result(), cqe.flags());
            let Some((op, slot, generation)) = decode(cqe.user_data()) else {
                continue;
            };
            let token = Token { slot, generation };
            let received = || Received {
                buffer: cqueue::buffer_select(flags).map(|id| RecvBuffer {
                    id,
                    len: result.max(0) as usize,
                }),
                result,
                more: cqueue::more(flags),
            };
            out.push(match op {
                Op::Recv => Completion::Datagram {
                    session: token,
                    received: received(),
                },
                Op::TcpRecv => Completion::TcpData {
                    conn: token,
                    received: received(),
                },
                Op::Send => {
                    pool.returned(slot as u32);
                    pool.release(slot as u32);
                    Completion::Sent { result }
                }
                Op::GsoSend => {
                    for &egress in gso.finish(slot) {
                        pool.returned(egress);
                    }
                    Completion::GsoSent {
                        index: slot,
                        result,
                    }
                }
                Op::TcpSend => {
                    for &egress in tcp.finish(slot) {
                        pool.returned(egress);
                    }
                    Completion::TcpSent {
                        conn: token,
                        result,
                    }
                }
                Op::Accept => Completion::Accepted {
                    session: token,
                    stream: (result >= 0).then(|| adopt_stream(result)),
                    more: cqueue::more(flags),
                },
                Op::Wake => Completion::Woken,
                Op::Cancel => Completion::Cancelled,
            });
        }
        taken
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
        // SAFETY: `addr` points into the pool's boxed address table, which does not move.
        let addr = unsafe { &*addr };
        let entry = opcode::Send::new(Fd(fd), bytes, len as u32)
            .dest_addr(&addr.storage as *const _ as *const libc::sockaddr)
            .dest_addr_len(addr.len)
            .build()
            .user_data(user_data(Op::Send, slot as usize, 0));
        // SAFETY: the slot's bytes and address are in flight (the pool refuses to hand them
        // out) until the completion returns the slot; the pool is this ring's.
        unsafe { self.push(entry) };
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
        let entry = opcode::SendMsg::new(Fd(fd), msghdr)
            .build()
            .user_data(user_data(Op::GsoSend, index, 0));
        // SAFETY: the message lives in this ring's boxed table and its slots are in flight
        // until the completion for `index` returns them.
        unsafe { self.push(entry) };
    }

    /// Sends `frames` (egress slot, offset, length) on connection `conn`'s socket `fd` in order
    /// with one `sendmsg`; returns the bytes it carries. MSG_WAITALL makes the kernel finish
    /// a short write itself, so frames are never torn. One send per connection at a time.
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
        let entry = opcode::SendMsg::new(Fd(fd), msghdr)
            .flags((libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32)
            .build()
            .user_data(user_data(Op::TcpSend, conn.slot, conn.generation));
        // SAFETY: the batch is boxed in this ring's table and its slots are in flight until
        // the completion returns them.
        unsafe { self.push(entry) };
        total
    }

    /// Arms a multishot datagram receive (with source addresses) on `fd` for `session`.
    pub fn arm_recv(&mut self, fd: RawFd, session: Token) {
        let entry = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_msghdr, RECV_GROUP)
            .build()
            .user_data(user_data(Op::Recv, session.slot, session.generation));
        // SAFETY: the msghdr template is boxed in this ring, and the buffers come from the
        // provided ring this ring keeps alive.
        unsafe { self.push(entry) };
    }

    /// Arms a multishot receive on a connection's stream socket.
    pub fn arm_stream_recv(&mut self, fd: RawFd, conn: Token) {
        let entry = opcode::RecvMulti::new(Fd(fd), RECV_GROUP)
            .build()
            .user_data(user_data(Op::TcpRecv, conn.slot, conn.generation));
        // SAFETY: the kernel picks buffers from the provided ring this ring keeps alive.
        unsafe { self.push(entry) };
    }

    /// Arms a multishot accept on a session's listener.
    pub fn arm_accept(&mut self, fd: RawFd, session: Token) {
        let entry = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, session.slot, session.generation));
        // SAFETY: accept points at no buffer of ours.
        unsafe { self.push(entry) };
    }

    /// Arms the read on the wake-up eventfd.
    pub fn arm_wake(&mut self) {
        let entry = opcode::Read::new(
            Fd(self.wake.fd.as_raw_fd()),
            self.wake_buffer.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(user_data(Op::Wake, 0, 0));
        // SAFETY: the 8-byte buffer is boxed in this ring; a second read armed before the
        // first completes writes the same 8 bytes, which nobody reads.
        unsafe { self.push(entry) };
    }

    /// Cancels an operation; it completes (cancelled) on its own.
    pub fn cancel(&mut self, pending: Pending) {
        let target = match pending {
            Pending::Recv(t) => user_data(Op::Recv, t.slot, t.generation),
            Pending::Accept(t) => user_data(Op::Accept, t.slot, t.generation),
            Pending::TcpRecv(t) => user_data(Op::TcpRecv, t.slot, t.generation),
            Pending::TcpSend(t) => user_data(Op::TcpSend, t.slot, t.generation),
        };
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(Op::Cancel, 0, 0));
        // SAFETY: a cancel points at no buffer.
        unsafe { self.push(entry) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::udp_gso_supported;

    #[test]
    fn a_gso_send_arrives_as_one_datagram_per_segment() {
        if !udp_gso_supported() {
            eprintln!("skipped: this kernel has no UDP_SEGMENT");
            return;
        }
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sizes = RingSizes {
            entries: 8,
            recv_buffers: 8,
            egress_buffers: 4,
            gso_sends: 1,
        };
        let (mut ring, _buffers) = Ring::new(sizes, WakeFd::new().unwrap()).unwrap();
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
}
