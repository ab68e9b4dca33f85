//! The worker's I/O layer: one io_uring, a ring of provided receive buffers shared by all the
//! worker's sockets (multishot `recvmsg`), a pool of egress buffers whose slots stay put until
//! their send completes, and the eventfd other threads wake the worker with. This is the only
//! module with `unsafe`; each block says why it holds.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

/// `user_data` tags: the top byte says what completed.
pub const OP_RECV: u64 = 1 << 56;
pub const OP_SEND: u64 = 2 << 56;
pub const OP_WAKE: u64 = 3 << 56;
pub const OP_CANCEL: u64 = 4 << 56;
pub const OP_ACCEPT: u64 = 5 << 56;
pub const OP_TCP_RECV: u64 = 6 << 56;
pub const OP_TCP_SEND: u64 = 7 << 56;
pub const OP_GSO_SEND: u64 = 8 << 56;
pub const OP_MASK: u64 = 0xff << 56;

/// Bytes before a packet in an egress buffer: room for an RFC 4571 length prefix, so a
/// packet bound for a TCP player is framed without a copy.
pub const EGRESS_HEADROOM: usize = 2;
/// One egress buffer: headroom, the largest packet relayed, the SRTCP trailer.
pub const EGRESS_BUFFER_SIZE: usize = 2048;
/// Largest packet accepted from the receive side for relaying.
pub const MAX_PACKET: usize = EGRESS_BUFFER_SIZE - EGRESS_HEADROOM - 32;

pub const RECV_BUFFER_SIZE: usize = 2048;
/// `struct io_uring_recvmsg_out`: name length, control length, payload length, flags.
const RECVMSG_OUT_LEN: usize = 16;
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_in6>();
const PAYLOAD_OFFSET: usize = RECVMSG_OUT_LEN + NAME_LEN;

/// The ring and the submissions that did not fit in its queue yet.
pub struct Ring {
    ring: IoUring,
    backlog: VecDeque<squeue::Entry>,
    /// Features the kernel granted, for the start-up log.
    pub description: String,
}

impl Ring {
    /// Builds a ring, asking for single-issuer mode and cooperative task running, and falling
    /// back to a plain ring where the kernel refuses them.
    pub fn new(entries: u32) -> io::Result<Ring> {
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
        Ok(Ring {
            ring,
            backlog: VecDeque::new(),
            description: description.to_string(),
        })
    }

    /// Queues a submission; when the queue is full it is submitted first, and what still does
    /// not fit waits in the backlog for the next turn.
    ///
    /// # Safety
    /// Every buffer and address the entry points to must stay valid until its completion.
    pub unsafe fn push(&mut self, entry: squeue::Entry) {
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

    /// Moves completions into `out` (reused, so no allocation once it has grown).
    pub fn completions(&mut self, out: &mut Vec<cqueue::Entry>) {
        out.extend(self.ring.completion());
    }

    pub fn backlog_is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }
}

/// A ring of receive buffers the kernel picks from (IORING_REGISTER_PBUF_RING): one group for
/// all of a worker's sockets, so memory does not grow with the number of sessions.
pub struct ProvidedBuffers {
    entries: *mut BufRingEntry,
    entries_layout: std::alloc::Layout,
    count: u16,
    group: u16,
    tail: u16,
    data: Box<[u8]>,
    /// The template header for multishot recvmsg: where the source address goes.
    msghdr: Box<libc::msghdr>,
}

impl ProvidedBuffers {
    pub fn new(ring: &Ring, count: u16, group: u16) -> io::Result<ProvidedBuffers> {
        assert!(
            count.is_power_of_two(),
            "buffer ring size must be a power of two"
        );
        let entries_layout = std::alloc::Layout::from_size_align(
            count as usize * mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size (count > 0).
        let entries = unsafe { std::alloc::alloc_zeroed(entries_layout) } as *mut BufRingEntry;
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // SAFETY: all-zero is a valid msghdr; only the name length is set below.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        msghdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let mut buffers = ProvidedBuffers {
            entries,
            entries_layout,
            count,
            group,
            tail: 0,
            data: vec![0u8; count as usize * RECV_BUFFER_SIZE].into_boxed_slice(),
            msghdr,
        };
        for bid in 0..count {
            buffers.recycle(bid);
        }
        buffers.publish();
        // SAFETY: `entries` is page-aligned memory for `count` entries that lives as long as
        // this struct, which the worker drops only after its ring.
        unsafe {
            ring.ring
                .submitter()
                .register_buf_ring_with_flags(entries as u64, count, group, 0)?;
        }
        Ok(buffers)
    }

    /// What arming a multishot receive from this group takes.
    pub fn recv_op(&self) -> RecvOp {
        RecvOp {
            msghdr: &*self.msghdr as *const libc::msghdr,
            group: self.group,
        }
    }

    /// The source address and payload of a completed receive in buffer `bid` with `len`
    /// bytes; `None` when the datagram was truncated or the address is not IP.
    pub fn datagram(&mut self, bid: u16, len: usize) -> Option<(SocketAddr, &mut [u8])> {
        if !(PAYLOAD_OFFSET..=RECV_BUFFER_SIZE).contains(&len) {
            return None;
        }
        let start = bid as usize * RECV_BUFFER_SIZE;
        let buf = &mut self.data[start..start + RECV_BUFFER_SIZE];
        let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let (name_len, payload_len, flags) = (word(0) as usize, word(8) as usize, word(12));
        if flags & libc::MSG_TRUNC as u32 != 0 || PAYLOAD_OFFSET + payload_len > len {
            return None;
        }
        let from =
            sockaddr_from_bytes(&buf[RECVMSG_OUT_LEN..RECVMSG_OUT_LEN + name_len.min(NAME_LEN)])?;
        Some((from, &mut buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload_len]))
    }

    /// The bytes a stream receive (plain multishot recv) put into buffer `bid`.
    pub fn stream_data(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let start = bid as usize * RECV_BUFFER_SIZE;
        &mut self.data[start..start + len.min(RECV_BUFFER_SIZE)]
    }

    /// Gives buffer `bid` back to the kernel (visible after `publish`).
    pub fn recycle(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: the index is masked into the ring's `count` entries.
        let entry = unsafe { &mut *self.entries.add((self.tail & mask) as usize) };
        let start = bid as usize * RECV_BUFFER_SIZE;
        entry.set_addr(self.data[start..].as_ptr() as u64);
        entry.set_len(RECV_BUFFER_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes recycled buffers to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: the tail is a u16 inside the first entry, per the kernel's buf_ring layout;
        // the release store orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring using it is already gone.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.entries_layout) };
    }
}

/// A socket address in the form the kernel takes, stored where a send can point at it.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_in6,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut storage: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in fits inside sockaddr_in6 and both are plain data.
                unsafe {
                    std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin);
                }
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                storage.sin6_port = v6.port().to_be();
                storage.sin6_addr.s6_addr = v6.ip().octets();
                storage.sin6_flowinfo = v6.flowinfo();
                storage.sin6_scope_id = v6.scope_id();
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

fn sockaddr_from_bytes(name: &[u8]) -> Option<SocketAddr> {
    if name.len() < 2 {
        return None;
    }
    let family = u16::from_ne_bytes([name[0], name[1]]) as i32;
    match family {
        libc::AF_INET if name.len() >= 8 => {
            let port = u16::from_be_bytes([name[2], name[3]]);
            let ip = Ipv4Addr::new(name[4], name[5], name[6], name[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if name.len() >= 24 => {
            let port = u16::from_be_bytes([name[2], name[3]]);
            let octets: [u8; 16] = name[8..24].try_into().expect("16 bytes");
            let ip = Ipv6Addr::from(octets);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
            })
        }
        _ => None,
    }
}

/// Egress buffers: each slot holds a packet and its destination until the send completes;
/// the slot index is the send's `user_data`.
pub struct EgressPool {
    data: Box<[u8]>,
    addrs: Vec<RawAddr>,
    free: Vec<u32>,
}

impl EgressPool {
    pub fn new(count: u32) -> EgressPool {
        EgressPool {
            data: vec![0u8; count as usize * EGRESS_BUFFER_SIZE].into_boxed_slice(),
            addrs: vec![RawAddr::new(SocketAddr::from(([0, 0, 0, 0], 0))); count as usize],
            free: (0..count).rev().collect(),
        }
    }

    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    pub fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Where the bytes of `slot` start, for a gathered send.
    fn address_of(&self, slot: u32, offset: usize) -> *const u8 {
        self.data[slot as usize * EGRESS_BUFFER_SIZE + offset..].as_ptr()
    }

    pub fn in_flight(&self) -> usize {
        self.addrs.len() - self.free.len()
    }

    /// The whole buffer of `slot`; packets start at `EGRESS_HEADROOM`.
    pub fn buffer(&mut self, slot: u32) -> &mut [u8] {
        let start = slot as usize * EGRESS_BUFFER_SIZE;
        &mut self.data[start..start + EGRESS_BUFFER_SIZE]
    }

    /// Queues a send of `buffer(slot)[offset..offset + len]` to `to` on `fd`.
    pub fn send(
        &mut self,
        ring: &mut Ring,
        fd: RawFd,
        slot: u32,
        offset: usize,
        len: usize,
        to: &RawAddr,
    ) {
        self.addrs[slot as usize] = *to;
        let addr = &self.addrs[slot as usize];
        let start = slot as usize * EGRESS_BUFFER_SIZE + offset;
        let entry = opcode::Send::new(Fd(fd), self.data[start..].as_ptr(), len as u32)
            .dest_addr(&addr.storage as *const _ as *const libc::sockaddr)
            .dest_addr_len(addr.len)
            .build()
            .user_data(OP_SEND | slot as u64);
        // SAFETY: the slot's bytes and address stay untouched until the send's completion
        // releases the slot; the pool lives as long as the worker's ring.
        unsafe { ring.push(entry) };
    }
}

/// Whether the kernel knows UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18+):
/// asked of a throwaway socket, as a start-up probe.
pub fn udp_gso_supported() -> bool {
    let Ok(socket) = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live `value`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    rc == 0
}

/// The control message of a GSO send: `UDP_SEGMENT` and the segment size, laid out as
/// `CMSG_SPACE(sizeof(u16))` bytes.
#[repr(C)]
struct SegmentControl {
    header: libc::cmsghdr,
    segment_size: u16,
    _padding: [u8; 6],
}

/// What the kernel reads during one GSO send: the header, the iovecs (one per egress slot)
/// and the control message. These live in a boxed table that never moves.
struct GsoMessage {
    msghdr: libc::msghdr,
    iovecs: [libc::iovec; crate::worker::burst::MAX_SEGMENTS],
    control: SegmentControl,
    to: RawAddr,
}

/// The GSO sends of one worker, indexed like its bursts.
pub struct GsoSends {
    messages: Box<[GsoMessage]>,
}

impl GsoSends {
    pub fn new(count: usize) -> GsoSends {
        let messages = (0..count)
            .map(|_| GsoMessage {
                // SAFETY: all-zero msghdr, iovecs and cmsghdr are valid (null pointers, zero
                // lengths); every field used is set before a send.
                msghdr: unsafe { mem::zeroed() },
                iovecs: unsafe { mem::zeroed() },
                control: SegmentControl {
                    header: unsafe { mem::zeroed() },
                    segment_size: 0,
                    _padding: [0; 6],
                },
                to: RawAddr::new(SocketAddr::from(([0, 0, 0, 0], 0))),
            })
            .collect();
        GsoSends { messages }
    }

    /// Queues one `sendmsg` of `segments` (egress slot, length; the packet at
    /// `EGRESS_HEADROOM`) to `to` on `fd`, which the kernel cuts every `segment_size` bytes.
    /// Every segment but the last must be `segment_size` long.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        index: usize,
        ring: &mut Ring,
        pool: &EgressPool,
        fd: RawFd,
        to: &RawAddr,
        segment_size: usize,
        segments: impl Iterator<Item = (u32, usize)>,
        user_data: u64,
    ) {
        let message = &mut self.messages[index];
        let mut count = 0;
        for (slot, len) in segments.take(crate::worker::burst::MAX_SEGMENTS) {
            message.iovecs[count] = libc::iovec {
                iov_base: pool.address_of(slot, EGRESS_HEADROOM) as *mut libc::c_void,
                iov_len: len,
            };
            count += 1;
        }
        message.to = *to;
        message.control.header.cmsg_len =
            (mem::offset_of!(SegmentControl, segment_size) + mem::size_of::<u16>()) as _;
        message.control.header.cmsg_level = libc::SOL_UDP;
        message.control.header.cmsg_type = libc::UDP_SEGMENT;
        message.control.segment_size = segment_size as u16;
        let msghdr = &mut message.msghdr;
        msghdr.msg_name = &mut message.to.storage as *mut libc::sockaddr_in6 as *mut libc::c_void;
        msghdr.msg_namelen = message.to.len;
        msghdr.msg_iov = message.iovecs.as_mut_ptr();
        msghdr.msg_iovlen = count as _;
        msghdr.msg_control = &mut message.control as *mut SegmentControl as *mut libc::c_void;
        msghdr.msg_controllen = mem::size_of::<SegmentControl>() as _;
        let entry = opcode::SendMsg::new(Fd(fd), &message.msghdr as *const libc::msghdr)
            .build()
            .user_data(user_data);
        // SAFETY: the message lives in a boxed table that outlives the ring, and the caller
        // keeps the egress slots and this index unused until the completion for `user_data`.
        unsafe { ring.push(entry) };
    }
}

/// Most frames gathered into one `sendmsg` on a TCP connection.
pub const MAX_SEND_BATCH: usize = 64;

/// The iovecs and header of a TCP connection's one send in flight. Boxed, so they stay put
/// while the kernel reads them, however the connection table moves.
pub struct SendBatch {
    iovecs: Box<[libc::iovec; MAX_SEND_BATCH]>,
    msghdr: Box<libc::msghdr>,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            // SAFETY: all-zero iovecs and msghdr are valid (null pointers, zero lengths).
            iovecs: Box::new(unsafe { mem::zeroed() }),
            msghdr: Box::new(unsafe { mem::zeroed() }),
        }
    }
}

impl SendBatch {
    /// Sends `frames` (egress slot, offset, length) in order with one `sendmsg`. MSG_WAITALL
    /// makes the kernel finish a short write itself, so frames are never torn.
    pub fn submit(
        &mut self,
        ring: &mut Ring,
        pool: &EgressPool,
        fd: RawFd,
        frames: impl Iterator<Item = (u32, usize, usize)>,
        user_data: u64,
    ) -> usize {
        let mut count = 0;
        let mut total = 0;
        for (slot, offset, len) in frames.take(MAX_SEND_BATCH) {
            self.iovecs[count] = libc::iovec {
                iov_base: pool.address_of(slot, offset) as *mut libc::c_void,
                iov_len: len,
            };
            count += 1;
            total += len;
        }
        self.msghdr.msg_iov = self.iovecs.as_mut_ptr();
        self.msghdr.msg_iovlen = count as _;
        let entry = opcode::SendMsg::new(Fd(fd), &*self.msghdr as *const libc::msghdr)
            .flags((libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32)
            .build()
            .user_data(user_data);
        // SAFETY: the iovecs and header are boxed in this batch, and the egress slots they
        // point to stay allocated, until the completion for `user_data` arrives; the caller
        // keeps the batch and the slots until then.
        unsafe { ring.push(entry) };
        total
    }
}

/// Arms a multishot accept on a listener.
pub fn arm_accept(ring: &mut Ring, fd: RawFd, user_data: u64) {
    let entry = opcode::AcceptMulti::new(Fd(fd))
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(user_data);
    // SAFETY: accept points at no buffer of ours.
    unsafe { ring.push(entry) };
}

/// Arms a multishot receive on a stream socket, drawing from the provided buffers.
pub fn arm_stream_recv(ring: &mut Ring, op: RecvOp, fd: RawFd, user_data: u64) {
    let entry = opcode::RecvMulti::new(Fd(fd), op.group)
        .build()
        .user_data(user_data);
    // SAFETY: the kernel picks buffers from the provided ring, which outlives the ring.
    unsafe { ring.push(entry) };
}

/// Takes ownership of a descriptor an accept completion returned.
pub fn adopt_stream(fd: i32) -> std::net::TcpStream {
    // SAFETY: a successful accept completion hands us a fresh descriptor nobody else owns.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}

/// An eventfd the worker keeps a read armed on, so other threads can wake it from a wait.
pub struct WakeFd {
    fd: OwnedFd,
    buf: Box<[u8; 8]>,
}

impl WakeFd {
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(WakeFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            buf: Box::new([0; 8]),
        })
    }

    /// A handle other threads write to.
    pub fn notifier(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    pub fn arm(&mut self, ring: &mut Ring) {
        let entry = opcode::Read::new(Fd(self.fd.as_raw_fd()), self.buf.as_mut_ptr(), 8)
            .build()
            .user_data(OP_WAKE);
        // SAFETY: the 8-byte buffer is boxed and lives as long as the worker.
        unsafe { ring.push(entry) };
    }
}

/// Writes to a worker's eventfd.
pub fn notify(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd; failure (counter full) still wakes.
    unsafe {
        libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8);
    }
}

/// Cancels the operation with `user_data`.
pub fn cancel(ring: &mut Ring, user_data: u64) {
    let entry = opcode::AsyncCancel::new(user_data)
        .build()
        .user_data(OP_CANCEL);
    // SAFETY: a cancel points at no buffer.
    unsafe { ring.push(entry) };
}

/// The template a multishot receive needs: the boxed msghdr of a [`ProvidedBuffers`] and its
/// group id. Valid as long as those buffers, which the worker keeps for its whole life.
#[derive(Clone, Copy)]
pub struct RecvOp {
    msghdr: *const libc::msghdr,
    group: u16,
}

/// Arms a multishot receive on `fd`.
pub fn arm_recv(ring: &mut Ring, op: RecvOp, fd: RawFd, user_data: u64) {
    let entry = opcode::RecvMsgMulti::new(Fd(fd), op.msghdr, op.group)
        .build()
        .user_data(user_data);
    // SAFETY: the msghdr template is boxed inside the worker's ProvidedBuffers, which outlive
    // every operation on the worker's ring.
    unsafe { ring.push(entry) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses_round_trip() {
        for s in ["127.0.0.1:31000", "[::1]:4000"] {
            let addr: SocketAddr = s.parse().unwrap();
            let raw = RawAddr::new(addr);
            // SAFETY: reading the plain-data storage as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(&raw.storage as *const _ as *const u8, raw.len as usize)
            };
            assert_eq!(sockaddr_from_bytes(bytes), Some(addr));
        }
    }

    #[test]
    fn the_segment_control_message_has_the_kernels_layout() {
        let data = mem::size_of::<u16>() as u32;
        // SAFETY: CMSG_LEN and CMSG_SPACE are arithmetic on their argument.
        let (len, space) = unsafe { (libc::CMSG_LEN(data), libc::CMSG_SPACE(data)) };
        assert_eq!(
            mem::offset_of!(SegmentControl, segment_size) + mem::size_of::<u16>(),
            len as usize
        );
        assert_eq!(mem::size_of::<SegmentControl>(), space as usize);
    }

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
        let mut ring = Ring::new(8).unwrap();
        let mut pool = EgressPool::new(4);
        let mut gso = GsoSends::new(1);
        let lens = [1000, 1000, 400];
        let slots: Vec<u32> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let slot = pool.alloc().unwrap();
                pool.buffer(slot)[EGRESS_HEADROOM..EGRESS_HEADROOM + len].fill(i as u8 + 1);
                slot
            })
            .collect();
        let to = RawAddr::new(receiver.local_addr().unwrap());
        let segments = slots.iter().copied().zip(lens);
        gso.submit(
            0,
            &mut ring,
            &pool,
            sender.as_raw_fd(),
            &to,
            1000,
            segments,
            42,
        );
        ring.submit_and_wait(Duration::from_secs(5)).unwrap();
        let mut completions = Vec::new();
        ring.completions(&mut completions);
        assert_eq!(completions.len(), 1);
        assert_eq!(
            (completions[0].user_data(), completions[0].result()),
            (42, 2400)
        );
        let mut buf = [0u8; 2048];
        for (i, &len) in lens.iter().enumerate() {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(n, len, "datagram {i}");
            assert!(buf[..n].iter().all(|&b| b == i as u8 + 1), "datagram {i}");
        }
    }

    #[test]
    fn egress_slots_are_reused() {
        let mut pool = EgressPool::new(2);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_ne!(a, b);
        assert!(pool.alloc().is_none());
        assert_eq!(pool.in_flight(), 2);
        pool.release(a);
        assert_eq!(pool.alloc(), Some(a));
    }
}
