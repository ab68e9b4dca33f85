//! ICE-TCP: gathered sends (one `sendmsg` per connection in flight) and adopting accepted
//! connections.

use std::mem;
use std::net::TcpStream;
use std::os::fd::FromRawFd;

/// Most frames gathered into one `sendmsg` on a TCP connection.
pub const MAX_SEND_BATCH: usize = 64;

/// The iovecs and header of one connection's send in flight, and the egress slots it carries.
/// Boxed, so they stay put while the kernel reads them, however the table grows.
struct SendBatch {
    iovecs: [libc::iovec; MAX_SEND_BATCH],
    msghdr: libc::msghdr,
    slots: [u32; MAX_SEND_BATCH],
    count: usize,
    /// The first iovec not yet written (the epoll backend writes a batch in several goes).
    next: usize,
    in_flight: bool,
}

/// The gathered sends of a worker's connections, by connection slot; owned by the ring.
#[derive(Default)]
pub(super) struct TcpSends {
    batches: Vec<Option<Box<SendBatch>>>,
}

impl TcpSends {
    /// Fills connection `conn`'s batch with `frames` (slot, bytes, length) in order; returns
    /// the header the kernel reads and the bytes it carries. Panics when the connection's
    /// previous send is still in flight.
    pub(super) fn prepare(
        &mut self,
        conn: usize,
        frames: impl Iterator<Item = (u32, *const u8, usize)>,
    ) -> (*const libc::msghdr, usize) {
        if self.batches.len() <= conn {
            self.batches.resize_with(conn + 1, || None);
        }
        let batch = self.batches[conn].get_or_insert_with(|| {
            Box::new(SendBatch {
                // SAFETY: all-zero iovecs and msghdr are valid (null pointers, zero lengths).
                iovecs: unsafe { mem::zeroed() },
                // SAFETY: as above.
                msghdr: unsafe { mem::zeroed() },
                slots: [0; MAX_SEND_BATCH],
                count: 0,
                next: 0,
                in_flight: false,
            })
        });
        assert!(!batch.in_flight, "TCP send {conn} reused while in flight");
        batch.in_flight = true;
        let mut count = 0;
        let mut total = 0;
        for (slot, bytes, len) in frames.take(MAX_SEND_BATCH) {
            batch.iovecs[count] = libc::iovec {
                iov_base: bytes as *mut libc::c_void,
                iov_len: len,
            };
            batch.slots[count] = slot;
            count += 1;
            total += len;
        }
        batch.count = count;
        batch.next = 0;
        batch.msghdr.msg_iov = batch.iovecs.as_mut_ptr();
        batch.msghdr.msg_iovlen = count as _;
        (&batch.msghdr, total)
    }

    /// Connection `conn`'s send in flight, after `written` more of its bytes went out (a short
    /// write of a non-blocking socket): returns the header of what is left.
    pub(super) fn advance(&mut self, conn: usize, mut written: usize) -> *const libc::msghdr {
        let batch = self.batches[conn]
            .as_mut()
            .expect("advancing a TCP send that was never prepared");
        while written > 0 && batch.next < batch.count {
            let iovec = &mut batch.iovecs[batch.next];
            if written >= iovec.iov_len {
                written -= iovec.iov_len;
                batch.next += 1;
            } else {
                // SAFETY: `written` is below the iovec's length, so the pointer stays inside
                // the egress buffer it points into.
                iovec.iov_base = unsafe { (iovec.iov_base as *mut u8).add(written) } as *mut _;
                iovec.iov_len -= written;
                written = 0;
            }
        }
        batch.msghdr.msg_iov = batch.iovecs[batch.next..].as_mut_ptr();
        batch.msghdr.msg_iovlen = (batch.count - batch.next) as _;
        &batch.msghdr
    }

    /// The header of connection `conn`'s send in flight.
    pub(super) fn header(&self, conn: usize) -> *const libc::msghdr {
        let batch = self.batches[conn]
            .as_ref()
            .expect("a TCP send that was never prepared");
        &batch.msghdr
    }

    /// Connection `conn`'s send completed: its slots, for the pool to take back.
    pub(super) fn finish(&mut self, conn: usize) -> &[u32] {
        match self.batches.get_mut(conn).and_then(Option::as_mut) {
            Some(batch) if batch.in_flight => {
                batch.in_flight = false;
                &batch.slots[..batch.count]
            }
            _ => &[],
        }
    }
}

/// Takes ownership of the descriptor a successful accept completion returned.
pub(super) fn adopt_stream(fd: i32) -> TcpStream {
    // SAFETY: a successful accept completion hands us a fresh descriptor nobody else owns.
    unsafe { TcpStream::from_raw_fd(fd) }
}
