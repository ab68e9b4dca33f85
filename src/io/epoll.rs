//! The epoll backend, for kernels and containers that refuse io_uring: readiness in one
//! epoll set per worker (sockets, listeners, connections, the wake-up eventfd), the I/O done
//! here with non-blocking batched syscalls, and its results queued as the same
//! [`Completion`]s the io_uring backend makes, so the worker cannot tell them apart.
//!
//! - Datagrams: `recvmmsg` fills up to `RECV_BATCH` buffers taken from the provided-buffer
//!   ring (the worker offers them as it does to io_uring), each written with io_uring's
//!   `recvmsg_out` header so the worker reads both alike.
//! - Sends: plain datagrams collect into one `sendmmsg` per socket (sent when the socket
//!   changes, the batch fills or the worker submits); a GSO burst is one `sendmsg` with
//!   `UDP_SEGMENT`; an ICE-TCP connection's gathered `sendmsg` that the socket cannot take at
//!   once waits for `EPOLLOUT` and goes on where it stopped, completing only when whole.
//! - Arming registers a descriptor, cancelling removes it and completes the operation as
//!   cancelled at once: the worker closes a descriptor only after that.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use super::addr::RawAddr;
use super::completion::{Completion, Op, Pending, Received, Token, decode, user_data};
use super::egress::EgressPool;
use super::gso::GsoSends;
use super::recv::{
    NAME_LEN, PAYLOAD_OFFSET, RECV_BUFFER_SIZE, RECVMSG_OUT_LEN, RecvBuffer, RecvMemory,
};
use super::tcp::{TcpSends, adopt_stream};
use super::wake::WakeFd;

/// Ready descriptors taken per wait.
const MAX_EVENTS: usize = 256;
/// Datagrams one `recvmmsg` takes.
const RECV_BATCH: usize = 32;
/// Datagrams one `sendmmsg` carries.
const SEND_BATCH: usize = 64;
/// Stream reads per ready connection per wait (level-triggered: the rest comes next time).
const TCP_READS_PER_EVENT: usize = 4;
/// Connections accepted per ready listener per wait.
const ACCEPTS_PER_EVENT: usize = 16;
/// Completions queued before the worker takes them; grows past this only in a burst.
const READY_CAPACITY: usize = MAX_EVENTS * RECV_BATCH * 2;

/// A descriptor registered for one operation of one object (`generation` tells a stale
/// record from the current one).
struct Registration {
    fd: RawFd,
    generation: u32,
}

/// An ICE-TCP connection: its receive and its send share the descriptor's registration.
struct ConnIo {
    fd: RawFd,
    generation: u32,
    recv_armed: bool,
    sending: Option<TcpSending>,
    /// The events the descriptor is registered for now (0: not registered).
    interest: u32,
}

struct TcpSending {
    total: usize,
    written: usize,
    /// The socket took less than all: waiting for `EPOLLOUT`.
    blocked: bool,
}

/// Plain datagrams waiting to go in one `sendmmsg` on `fd`. Boxed: the headers point at the
/// iovecs.
struct SendBatch {
    fd: RawFd,
    count: usize,
    headers: Box<[libc::mmsghdr]>,
    iovecs: Box<[libc::iovec]>,
    slots: Box<[u32]>,
}

/// The headers of one `recvmmsg`, and which receive buffers they point into.
struct RecvBatch {
    headers: Box<[libc::mmsghdr]>,
    iovecs: Box<[libc::iovec]>,
    ids: [u16; RECV_BATCH],
}

pub(super) struct Epoll {
    epoll: OwnedFd,
    events: Box<[libc::epoll_event]>,
    /// Completions made and not yet taken by the worker.
    ready: VecDeque<Completion>,
    sends: SendBatch,
    recvs: RecvBatch,
    recv_memory: Rc<RecvMemory>,
    /// Where this backend takes the next offered receive buffer from.
    recv_head: u16,
    /// By session slot.
    udp: Vec<Option<Registration>>,
    /// By session slot.
    listeners: Vec<Option<Registration>>,
    /// By connection slot.
    conns: Vec<Option<ConnIo>>,
    wake: WakeFd,
    wake_registered: bool,
    /// `epoll_pwait2` (5.11+) waits to the microsecond a burst's hold needs; else
    /// `epoll_wait`, to the millisecond, rounded up.
    fine_wait: bool,
}

/// All-zero headers: valid (null pointers, zero lengths); every field used is set before use.
fn zeroed_headers(count: usize) -> Box<[libc::mmsghdr]> {
    // SAFETY: all-zero is a valid mmsghdr.
    (0..count).map(|_| unsafe { mem::zeroed() }).collect()
}

fn zeroed_iovecs(count: usize) -> Box<[libc::iovec]> {
    (0..count)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        })
        .collect()
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the caller owns; a bad descriptor only returns an error.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

impl Epoll {
    pub(super) fn new(recv_memory: Rc<RecvMemory>, wake: WakeFd) -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll {
            epoll,
            events: (0..MAX_EVENTS)
                .map(|_| libc::epoll_event { events: 0, u64: 0 })
                .collect(),
            ready: VecDeque::with_capacity(READY_CAPACITY),
            sends: SendBatch {
                fd: -1,
                count: 0,
                headers: zeroed_headers(SEND_BATCH),
                iovecs: zeroed_iovecs(SEND_BATCH),
                slots: vec![0; SEND_BATCH].into_boxed_slice(),
            },
            recvs: RecvBatch {
                headers: zeroed_headers(RECV_BATCH),
                iovecs: zeroed_iovecs(RECV_BATCH),
                ids: [0; RECV_BATCH],
            },
            recv_memory,
            recv_head: 0,
            udp: Vec::new(),
            listeners: Vec::new(),
            conns: Vec::new(),
            wake,
            wake_registered: false,
            fine_wait: true,
        })
    }

    /// Sets the events `fd` is registered for from `was` to `now` (0: not registered),
    /// recovering where the kernel's view differs (a descriptor closed and its number
    /// reused drops out of the set by itself).
    fn set_interest(&self, fd: RawFd, was: u32, now: u32, data: u64) -> i32 {
        let control = |op, events| {
            let mut event = libc::epoll_event { events, u64: data };
            // SAFETY: epoll_ctl reads the event we pass; both descriptors are plain integers
            // the kernel checks.
            let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
            if rc < 0 { errno() } else { 0 }
        };
        if now == 0 {
            if was != 0 {
                control(libc::EPOLL_CTL_DEL, 0);
            }
            return 0;
        }
        let (first, second) = if was == 0 {
            (libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD)
        } else {
            (libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_ADD)
        };
        match control(first, now) {
            libc::EEXIST | libc::ENOENT => control(second, now),
            result => result,
        }
    }

    /// Sends the batched datagrams; their slots are free again, failures complete as sends
    /// with the error.
    pub(super) fn flush(&mut self, pool: &mut EgressPool) {
        let batch = &mut self.sends;
        let count = batch.count;
        if count == 0 {
            return;
        }
        let mut i = 0;
        while i < count {
            // SAFETY: headers `i..count` point at iovecs in this batch and at egress slots and
            // addresses in flight (lent from `pool`, which refuses to hand them out).
            let sent = unsafe {
                libc::sendmmsg(
                    batch.fd,
                    batch.headers[i..count].as_mut_ptr(),
                    (count - i) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent > 0 {
                i += sent as usize;
                continue;
            }
            let error = errno();
            if error == libc::EINTR {
                continue;
            }
            // Datagram `i` failed (a full socket buffer drops it, as a full queue would).
            self.ready.push_back(Completion::Sent { result: -error });
            i += 1;
        }
        for &slot in &batch.slots[..count] {
            pool.returned(slot);
            pool.release(slot);
        }
        batch.count = 0;
    }

    pub(super) fn nothing_unsent(&self) -> bool {
        self.sends.count == 0
    }

    pub(super) fn send(
        &mut self,
        pool: &mut EgressPool,
        fd: RawFd,
        slot: u32,
        bytes: *const u8,
        len: usize,
        addr: *const RawAddr,
    ) {
        if self.sends.count > 0 && self.sends.fd != fd {
            self.flush(pool);
        }
        let batch = &mut self.sends;
        let i = batch.count;
        batch.iovecs[i] = libc::iovec {
            iov_base: bytes as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `addr` points into the pool's boxed address table, which does not move.
        let (name, name_len) = unsafe { (&raw const (*addr).storage, (*addr).len) };
        let header = &mut batch.headers[i];
        header.msg_hdr.msg_name = name as *mut libc::c_void;
        header.msg_hdr.msg_namelen = name_len;
        header.msg_hdr.msg_iov = &mut batch.iovecs[i];
        header.msg_hdr.msg_iovlen = 1;
        header.msg_len = 0;
        batch.slots[i] = slot;
        batch.fd = fd;
        batch.count += 1;
        if batch.count == SEND_BATCH {
            self.flush(pool);
        }
    }

    /// Sends GSO message `index` at once (after the datagrams batched before it, to keep the
    /// order) and completes it.
    pub(super) fn send_gso(
        &mut self,
        pool: &mut EgressPool,
        gso: &mut GsoSends,
        index: usize,
        fd: RawFd,
        msghdr: *const libc::msghdr,
    ) {
        self.flush(pool);
        let result = loop {
            // SAFETY: the message and the slots it points at are in flight until `finish`.
            let sent = unsafe { libc::sendmsg(fd, msghdr, libc::MSG_DONTWAIT) };
            if sent >= 0 {
                break sent as i32;
            }
            match errno() {
                libc::EINTR => continue,
                error => break -error,
            }
        };
        for &egress in gso.finish(index) {
            pool.returned(egress);
        }
        self.ready.push_back(Completion::GsoSent { index, result });
    }

    /// Starts connection `conn`'s gathered send (prepared in `tcp`) of `total` bytes.
    pub(super) fn send_tcp(
        &mut self,
        pool: &mut EgressPool,
        tcp: &mut TcpSends,
        conn: Token,
        fd: RawFd,
        total: usize,
    ) {
        let io = self.conn_io(conn, fd);
        io.sending = Some(TcpSending {
            total,
            written: 0,
            blocked: false,
        });
        self.continue_tcp_send(pool, tcp, conn.slot);
    }

    /// The record of connection `conn` on `fd`, made afresh for a new generation.
    fn conn_io(&mut self, conn: Token, fd: RawFd) -> &mut ConnIo {
        if self.conns.len() <= conn.slot {
            self.conns.resize_with(conn.slot + 1, || None);
        }
        let entry = &mut self.conns[conn.slot];
        if !entry
            .as_ref()
            .is_some_and(|c| c.generation == conn.generation && c.fd == fd)
        {
            *entry = Some(ConnIo {
                fd,
                generation: conn.generation,
                recv_armed: false,
                sending: None,
                interest: 0,
            });
        }
        entry.as_mut().expect("just set")
    }

    /// Writes what the socket takes of connection `slot`'s send; completes it when whole or
    /// failed, else waits for `EPOLLOUT`.
    fn continue_tcp_send(&mut self, pool: &mut EgressPool, tcp: &mut TcpSends, slot: usize) {
        let Some(io) = self.conns[slot].as_mut() else {
            return;
        };
        let Some(sending) = io.sending.as_mut() else {
            return;
        };
        let mut msghdr = tcp.header(slot);
        let result = loop {
            // SAFETY: the batch's header and iovecs are boxed in `tcp` and its slots in flight
            // until `finish`.
            let sent =
                unsafe { libc::sendmsg(io.fd, msghdr, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if sent > 0 {
                sending.written += sent as usize;
                if sending.written >= sending.total {
                    break sending.total as i32;
                }
                msghdr = tcp.advance(slot, sent as usize);
                continue;
            }
            let error = if sent == 0 { libc::EAGAIN } else { errno() };
            match error {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    sending.blocked = true;
                    self.update_conn_interest(slot);
                    return;
                }
                error => break -error,
            }
        };
        self.finish_tcp_send(pool, tcp, slot, result);
    }

    fn finish_tcp_send(
        &mut self,
        pool: &mut EgressPool,
        tcp: &mut TcpSends,
        slot: usize,
        result: i32,
    ) {
        let Some(io) = self.conns[slot].as_mut() else {
            return;
        };
        io.sending = None;
        let conn = Token {
            slot,
            generation: io.generation,
        };
        for &egress in tcp.finish(slot) {
            pool.returned(egress);
        }
        self.update_conn_interest(slot);
        self.ready.push_back(Completion::TcpSent { conn, result });
    }

    fn update_conn_interest(&mut self, slot: usize) {
        let Some(io) = self.conns[slot].as_ref() else {
            return;
        };
        let mut now = 0;
        if io.recv_armed {
            now |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if io.sending.as_ref().is_some_and(|s| s.blocked) {
            now |= libc::EPOLLOUT as u32;
        }
        if now == io.interest {
            return;
        }
        let data = user_data(Op::TcpRecv, slot, io.generation);
        let (fd, was) = (io.fd, io.interest);
        self.set_interest(fd, was, now, data);
        if let Some(io) = self.conns[slot].as_mut() {
            io.interest = now;
        }
    }

    pub(super) fn arm_recv(&mut self, fd: RawFd, session: Token) {
        set_nonblocking(fd);
        let data = user_data(Op::Recv, session.slot, session.generation);
        let error = self.set_interest(fd, 0, libc::EPOLLIN as u32, data);
        if self.udp.len() <= session.slot {
            self.udp.resize_with(session.slot + 1, || None);
        }
        self.udp[session.slot] = Some(Registration {
            fd,
            generation: session.generation,
        });
        if error != 0 {
            self.ready.push_back(Completion::Datagram {
                session,
                received: Received {
                    buffer: None,
                    result: -error,
                    more: true,
                },
            });
        }
    }

    pub(super) fn arm_accept(&mut self, fd: RawFd, session: Token) {
        set_nonblocking(fd);
        let data = user_data(Op::Accept, session.slot, session.generation);
        let error = self.set_interest(fd, 0, libc::EPOLLIN as u32, data);
        if self.listeners.len() <= session.slot {
            self.listeners.resize_with(session.slot + 1, || None);
        }
        if error != 0 {
            // Re-armed by the worker's next tick.
            self.listeners[session.slot] = None;
            self.ready.push_back(Completion::Accepted {
                session,
                stream: None,
                more: false,
            });
            return;
        }
        self.listeners[session.slot] = Some(Registration {
            fd,
            generation: session.generation,
        });
    }

    pub(super) fn arm_stream_recv(&mut self, fd: RawFd, conn: Token) {
        set_nonblocking(fd);
        self.conn_io(conn, fd).recv_armed = true;
        self.update_conn_interest(conn.slot);
    }

    pub(super) fn arm_wake(&mut self) {
        if !self.wake_registered {
            let fd = self.wake.fd.as_raw_fd();
            let data = user_data(Op::Wake, 0, 0);
            self.wake_registered = self.set_interest(fd, 0, libc::EPOLLIN as u32, data) == 0;
        }
    }

    pub(super) fn cancel(&mut self, pool: &mut EgressPool, tcp: &mut TcpSends, pending: Pending) {
        let cancelled = -libc::ECANCELED;
        match pending {
            Pending::Recv(t) => {
                let Some(r) = take_registration(&mut self.udp, t) else {
                    return;
                };
                self.set_interest(r.fd, libc::EPOLLIN as u32, 0, 0);
                self.ready.push_back(Completion::Datagram {
                    session: t,
                    received: Received {
                        buffer: None,
                        result: cancelled,
                        more: false,
                    },
                });
            }
            Pending::Accept(t) => {
                let Some(r) = take_registration(&mut self.listeners, t) else {
                    return;
                };
                self.set_interest(r.fd, libc::EPOLLIN as u32, 0, 0);
                self.ready.push_back(Completion::Accepted {
                    session: t,
                    stream: None,
                    more: false,
                });
            }
            Pending::TcpRecv(t) => {
                let Some(io) = self.conn_of(t) else {
                    return;
                };
                if !io.recv_armed {
                    return;
                }
                io.recv_armed = false;
                self.update_conn_interest(t.slot);
                self.ready.push_back(Completion::TcpData {
                    conn: t,
                    received: Received {
                        buffer: None,
                        result: cancelled,
                        more: false,
                    },
                });
            }
            Pending::TcpSend(t) => {
                if self.conn_of(t).is_some_and(|io| io.sending.is_some()) {
                    self.finish_tcp_send(pool, tcp, t.slot, cancelled);
                }
            }
        }
    }

    fn conn_of(&mut self, conn: Token) -> Option<&mut ConnIo> {
        self.conns
            .get_mut(conn.slot)
            .and_then(Option::as_mut)
            .filter(|io| io.generation == conn.generation)
    }

    pub(super) fn has_completions(&self) -> bool {
        !self.ready.is_empty()
    }

    pub(super) fn completions(&mut self, out: &mut Vec<Completion>, limit: usize) -> usize {
        let taken = self.ready.len().min(limit);
        out.extend(self.ready.drain(..taken));
        taken
    }

    /// Sends what is batched, waits up to `timeout` for readiness (not at all when
    /// completions are waiting) and does the reads it reports, queueing their completions.
    pub(super) fn poll(
        &mut self,
        pool: &mut EgressPool,
        tcp: &mut TcpSends,
        timeout: Duration,
    ) -> io::Result<()> {
        self.flush(pool);
        let timeout = if self.ready.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        let ready = self.wait(timeout)?;
        for i in 0..ready {
            let (events, data) = (self.events[i].events, self.events[i].u64);
            let Some((op, slot, generation)) = decode(data) else {
                continue;
            };
            let token = Token { slot, generation };
            match op {
                Op::Recv => self.receive_datagrams(token),
                Op::Accept => self.accept(token),
                Op::TcpRecv => self.connection_ready(pool, tcp, token, events),
                Op::Wake => self.woken(),
                _ => {}
            }
        }
        Ok(())
    }

    /// Waits for readiness; returns how many events are in `self.events`.
    fn wait(&mut self, timeout: Duration) -> io::Result<usize> {
        let epfd = self.epoll.as_raw_fd();
        let events = self.events.as_mut_ptr();
        let max = MAX_EVENTS as libc::c_int;
        let n = if self.fine_wait && !timeout.is_zero() {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: the kernel writes at most `max` events into `events`, which holds
            // `MAX_EVENTS`; it reads the timespec; no signal mask.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    epfd,
                    events,
                    max,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n < 0 && errno() == libc::ENOSYS {
                self.fine_wait = false;
                return self.wait(timeout);
            }
            n as libc::c_int
        } else {
            let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            // SAFETY: as above, with a millisecond timeout.
            unsafe { libc::epoll_wait(epfd, events, max, ms) }
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(error);
        }
        Ok(n as usize)
    }

    fn woken(&mut self) {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from the non-blocking eventfd.
        unsafe {
            libc::read(
                self.wake.fd.as_raw_fd(),
                &mut counter as *mut u64 as *mut libc::c_void,
                8,
            );
        }
        self.ready.push_back(Completion::Woken);
    }

    /// Takes what a session's socket holds, up to `RECV_BATCH` datagrams, into offered
    /// receive buffers.
    fn receive_datagrams(&mut self, session: Token) {
        let Some(fd) = registered_fd(&self.udp, session) else {
            return;
        };
        let offered = self.recv_memory.offered(self.recv_head) as usize;
        if offered == 0 {
            self.ready.push_back(Completion::Datagram {
                session,
                received: Received {
                    buffer: None,
                    result: -libc::ENOBUFS,
                    more: true,
                },
            });
            return;
        }
        let count = offered.min(RECV_BATCH);
        let batch = &mut self.recvs;
        for i in 0..count {
            let id = self
                .recv_memory
                .offered_id(self.recv_head.wrapping_add(i as u16));
            let start = self.recv_memory.buffer_start(id);
            batch.ids[i] = id;
            batch.iovecs[i] = libc::iovec {
                // SAFETY: PAYLOAD_OFFSET is inside the RECV_BUFFER_SIZE-byte buffer.
                iov_base: unsafe { start.add(PAYLOAD_OFFSET) } as *mut libc::c_void,
                iov_len: RECV_BUFFER_SIZE - PAYLOAD_OFFSET,
            };
            let header = &mut batch.headers[i].msg_hdr;
            // SAFETY: the name goes after the header, inside the buffer (NAME_LEN bytes).
            header.msg_name = unsafe { start.add(RECVMSG_OUT_LEN) } as *mut libc::c_void;
            header.msg_namelen = NAME_LEN as libc::socklen_t;
            header.msg_iov = &mut batch.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        // SAFETY: each header points at an offered buffer past `recv_head`, which the worker
        // does not touch until a completion hands it over, and at this batch's iovecs.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                batch.headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            let error = errno();
            if error != libc::EAGAIN && error != libc::EINTR {
                self.ready.push_back(Completion::Datagram {
                    session,
                    received: Received {
                        buffer: None,
                        result: -error,
                        more: true,
                    },
                });
            }
            return;
        }
        for i in 0..received as usize {
            let header = &batch.headers[i];
            let payload = header.msg_len as usize;
            let words = [
                header.msg_hdr.msg_namelen,
                0,
                payload as u32,
                header.msg_hdr.msg_flags as u32,
            ];
            let id = batch.ids[i];
            let start = self.recv_memory.buffer_start(id);
            for (w, word) in words.iter().enumerate() {
                // SAFETY: the first RECVMSG_OUT_LEN (16) bytes of the buffer this backend
                // took; unaligned writes, as the worker reads them as bytes.
                unsafe { (start.add(w * 4) as *mut u32).write_unaligned(*word) };
            }
            let len = PAYLOAD_OFFSET + payload;
            self.ready.push_back(Completion::Datagram {
                session,
                received: Received {
                    buffer: Some(RecvBuffer { id, len }),
                    result: len as i32,
                    more: true,
                },
            });
        }
        self.recv_head = self.recv_head.wrapping_add(received as u16);
    }

    fn accept(&mut self, session: Token) {
        let Some(fd) = registered_fd(&self.listeners, session) else {
            return;
        };
        for _ in 0..ACCEPTS_PER_EVENT {
            // SAFETY: accept4 with no address buffers; the result is checked before use.
            let accepted = unsafe {
                libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if accepted >= 0 {
                self.ready.push_back(Completion::Accepted {
                    session,
                    stream: Some(adopt_stream(accepted)),
                    more: true,
                });
                continue;
            }
            match errno() {
                libc::EAGAIN | libc::EINTR | libc::ECONNABORTED => return,
                _ => {
                    // Such as EMFILE: stop, so a listener that stays ready does not spin the
                    // loop; the worker re-arms it on its next tick.
                    if let Some(r) = take_registration(&mut self.listeners, session) {
                        self.set_interest(r.fd, libc::EPOLLIN as u32, 0, 0);
                    }
                    self.ready.push_back(Completion::Accepted {
                        session,
                        stream: None,
                        more: false,
                    });
                    return;
                }
            }
        }
    }

    fn connection_ready(
        &mut self,
        pool: &mut EgressPool,
        tcp: &mut TcpSends,
        conn: Token,
        events: u32,
    ) {
        let Some(io) = self.conn_of(conn) else {
            return;
        };
        let failed = events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        let writable = failed || events & libc::EPOLLOUT as u32 != 0;
        if writable && io.sending.as_ref().is_some_and(|s| s.blocked) {
            if let Some(sending) = io.sending.as_mut() {
                sending.blocked = false;
            }
            self.continue_tcp_send(pool, tcp, conn.slot);
        }
        let readable = failed || events & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0;
        if readable && self.conn_of(conn).is_some_and(|io| io.recv_armed) {
            self.read_stream(conn);
        }
    }

    /// Reads what a connection holds into offered buffers; the end of the stream or an error
    /// ends the receive.
    fn read_stream(&mut self, conn: Token) {
        let Some(fd) = self.conn_of(conn).map(|io| io.fd) else {
            return;
        };
        for _ in 0..TCP_READS_PER_EVENT {
            if self.recv_memory.offered(self.recv_head) == 0 {
                self.ready.push_back(Completion::TcpData {
                    conn,
                    received: Received {
                        buffer: None,
                        result: -libc::ENOBUFS,
                        more: true,
                    },
                });
                return;
            }
            let id = self.recv_memory.offered_id(self.recv_head);
            let start = self.recv_memory.buffer_start(id);
            // SAFETY: the buffer is offered past `recv_head`, untouched by the worker until a
            // completion hands it over; RECV_BUFFER_SIZE bytes long.
            let read = unsafe {
                libc::recv(
                    fd,
                    start as *mut libc::c_void,
                    RECV_BUFFER_SIZE,
                    libc::MSG_DONTWAIT,
                )
            };
            if read > 0 {
                self.recv_head = self.recv_head.wrapping_add(1);
                let len = read as usize;
                self.ready.push_back(Completion::TcpData {
                    conn,
                    received: Received {
                        buffer: Some(RecvBuffer { id, len }),
                        result: read as i32,
                        more: true,
                    },
                });
                if len < RECV_BUFFER_SIZE {
                    return;
                }
                continue;
            }
            let result = if read == 0 { 0 } else { -errno() };
            if result == -libc::EAGAIN || result == -libc::EINTR {
                return;
            }
            if let Some(io) = self.conn_of(conn) {
                io.recv_armed = false;
            }
            self.update_conn_interest(conn.slot);
            self.ready.push_back(Completion::TcpData {
                conn,
                received: Received {
                    buffer: None,
                    result,
                    more: false,
                },
            });
            return;
        }
    }
}

fn registered_fd(table: &[Option<Registration>], token: Token) -> Option<RawFd> {
    table
        .get(token.slot)
        .and_then(Option::as_ref)
        .filter(|r| r.generation == token.generation)
        .map(|r| r.fd)
}

fn take_registration(table: &mut [Option<Registration>], token: Token) -> Option<Registration> {
    let entry = table.get_mut(token.slot)?;
    if entry.as_ref()?.generation != token.generation {
        return None;
    }
    entry.take()
}
