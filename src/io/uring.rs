//! The io_uring backend: submissions (with a backlog for what does not fit the queue),
//! waiting, and completions decoded into [`Completion`]s. Receives are multishot, drawing from
//! the provided-buffer ring; sends point into the egress pool until their completion.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use super::addr::RawAddr;
use super::completion::{Completion, Op, Pending, Received, Token, decode, user_data};
use super::egress::EgressPool;
use super::gso::GsoSends;
use super::recv::{NAME_LEN, RecvBuffer, RecvMemory};
use super::tcp::{TcpSends, adopt_stream};
use super::wake::WakeFd;

/// The provided-buffer group all of a worker's receives draw from.
const RECV_GROUP: u16 = 0;

/// A worker's io_uring. The memory its operations point at is the enclosing
/// [`super::Ring`]'s, dropped after this.
pub(super) struct Uring {
    // Field order is drop order: the kernel's ring goes first.
    ring: IoUring,
    backlog: VecDeque<squeue::Entry>,
    /// The template header for multishot recvmsg: where the source address goes.
    recv_msghdr: Box<libc::msghdr>,
    wake: WakeFd,
    wake_buffer: Box<[u8; 8]>,
    /// The set-up features the kernel granted, for the start-up log.
    pub(super) granted: &'static str,
}

impl Uring {
    /// Builds a ring of `entries`, asking for single-issuer mode and cooperative task running
    /// and falling back to a plain ring where the kernel refuses them, with `recv_memory`
    /// registered as its provided buffers (the caller keeps the memory alive past the ring).
    pub(super) fn new(entries: u32, recv_memory: &RecvMemory, wake: WakeFd) -> io::Result<Uring> {
        let tuned = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(entries);
        let (ring, granted) = match tuned {
            Ok(r) => (r, "single-issuer, cooperative task running"),
            Err(_) => (
                IoUring::builder()
                    .setup_cqsize(entries * 4)
                    .build(entries)?,
                "plain (single-issuer and cooperative task running refused by the kernel)",
            ),
        };
        // SAFETY: `entries` is page-aligned memory for `count` entries that the enclosing
        // `Ring` keeps until after this ring is dropped.
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
        Ok(Uring {
            ring,
            backlog: VecDeque::new(),
            recv_msghdr,
            wake,
            wake_buffer: Box::new([0; 8]),
            granted,
        })
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

    pub(super) fn submit(&mut self) -> io::Result<()> {
        self.drain_backlog();
        self.ring.submit()?;
        Ok(())
    }

    pub(super) fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.drain_backlog();
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn backlog_is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    pub(super) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Moves up to `limit` completions into `out`, decoded, taking the egress slots of
    /// finished sends back into `pool`; returns how many.
    pub(super) fn completions(
        &mut self,
        pool: &mut EgressPool,
        gso: &mut GsoSends,
        tcp: &mut TcpSends,
        out: &mut Vec<Completion>,
        limit: usize,
    ) -> usize {
        let mut taken = 0;
        for cqe in self.ring.completion().take(limit) {
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

    /// Queues a send of `len` bytes at `bytes` (egress `slot`, lent) to `addr`.
    pub(super) fn send(
        &mut self,
        fd: RawFd,
        slot: u32,
        bytes: *const u8,
        len: usize,
        addr: *const RawAddr,
    ) {
        // SAFETY: `addr` points into the pool's boxed address table, which does not move.
        let addr = unsafe { &*addr };
        let entry = opcode::Send::new(Fd(fd), bytes, len as u32)
            .dest_addr(&addr.storage as *const _ as *const libc::sockaddr)
            .dest_addr_len(addr.len)
            .build()
            .user_data(user_data(Op::Send, slot as usize, 0));
        // SAFETY: the slot's bytes and address are in flight (the pool refuses to hand them
        // out) until the completion returns the slot; the pool outlives this ring.
        unsafe { self.push(entry) };
    }

    /// Queues GSO send `index`, whose message `msghdr` the GSO table holds.
    pub(super) fn send_gso(&mut self, index: usize, fd: RawFd, msghdr: *const libc::msghdr) {
        let entry = opcode::SendMsg::new(Fd(fd), msghdr)
            .build()
            .user_data(user_data(Op::GsoSend, index, 0));
        // SAFETY: the message lives in the boxed GSO table and its slots are in flight until
        // the completion for `index` returns them.
        unsafe { self.push(entry) };
    }

    /// Queues connection `conn`'s gathered send. MSG_WAITALL makes the kernel finish a short
    /// write itself, so frames are never torn.
    pub(super) fn send_tcp(&mut self, conn: Token, fd: RawFd, msghdr: *const libc::msghdr) {
        let entry = opcode::SendMsg::new(Fd(fd), msghdr)
            .flags((libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32)
            .build()
            .user_data(user_data(Op::TcpSend, conn.slot, conn.generation));
        // SAFETY: the batch is boxed in the TCP send table and its slots are in flight until
        // the completion returns them.
        unsafe { self.push(entry) };
    }

    pub(super) fn arm_recv(&mut self, fd: RawFd, session: Token) {
        let entry = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_msghdr, RECV_GROUP)
            .build()
            .user_data(user_data(Op::Recv, session.slot, session.generation));
        // SAFETY: the msghdr template is boxed in this ring, and the buffers come from the
        // provided ring the enclosing `Ring` keeps alive.
        unsafe { self.push(entry) };
    }

    pub(super) fn arm_stream_recv(&mut self, fd: RawFd, conn: Token) {
        let entry = opcode::RecvMulti::new(Fd(fd), RECV_GROUP)
            .build()
            .user_data(user_data(Op::TcpRecv, conn.slot, conn.generation));
        // SAFETY: the kernel picks buffers from the provided ring kept alive as above.
        unsafe { self.push(entry) };
    }

    pub(super) fn arm_accept(&mut self, fd: RawFd, session: Token) {
        let entry = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, session.slot, session.generation));
        // SAFETY: accept points at no buffer of ours.
        unsafe { self.push(entry) };
    }

    pub(super) fn arm_wake(&mut self) {
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

    pub(super) fn cancel(&mut self, pending: Pending) {
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
