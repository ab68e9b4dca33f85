//! A ring of receive buffers the kernel picks from (IORING_REGISTER_PBUF_RING): one group for
//! all of a worker's sockets, so memory does not grow with the number of sessions.
//!
//! The memory lives in a [`RecvMemory`] that both the worker's [`RecvBuffers`] and the ring
//! hold, so it outlives every receive in flight whichever of them goes first.
//!
//! The epoll backend uses the same ring without registering it: the worker offers buffers
//! exactly as it does to the kernel, and the backend takes them from the ring's head as it
//! fills them with `recvmmsg`.

use std::alloc::Layout;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use super::addr::sockaddr_from_bytes;

pub const RECV_BUFFER_SIZE: usize = 2048;
/// `struct io_uring_recvmsg_out`: name length, control length, payload length, flags.
/// A backend that fills buffers itself (epoll) writes the same header, so both read alike.
pub(super) const RECVMSG_OUT_LEN: usize = 16;
pub(super) const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();
pub(super) const PAYLOAD_OFFSET: usize = RECVMSG_OUT_LEN + NAME_LEN;

/// The buffer ring's entries and the buffers themselves, allocated once.
pub(super) struct RecvMemory {
    pub(super) entries: *mut BufRingEntry,
    entries_layout: Layout,
    data: *mut u8,
    data_layout: Layout,
    pub(super) count: u16,
}

impl RecvMemory {
    pub(super) fn new(count: u16) -> io::Result<RecvMemory> {
        assert!(
            count.is_power_of_two(),
            "buffer ring size must be a power of two"
        );
        let entries_layout =
            Layout::from_size_align(count as usize * size_of::<BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        let data_layout = Layout::from_size_align(count as usize * RECV_BUFFER_SIZE, 64)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count > 0).
        let (entries, data) = unsafe {
            (
                std::alloc::alloc_zeroed(entries_layout) as *mut BufRingEntry,
                std::alloc::alloc_zeroed(data_layout),
            )
        };
        let memory = RecvMemory {
            entries,
            entries_layout,
            data,
            data_layout,
            count,
        };
        if entries.is_null() || data.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(memory)
    }
}

impl RecvMemory {
    /// Buffers offered past `head` (the consumer's position) and not yet taken.
    pub(super) fn offered(&self, head: u16) -> u16 {
        self.tail().wrapping_sub(head)
    }

    /// The id of the buffer offered at ring position `position` (below the tail).
    pub(super) fn offered_id(&self, position: u16) -> u16 {
        let mask = self.count - 1;
        // SAFETY: the index is masked into the ring's `count` entries; the worker wrote the
        // entry before publishing the tail that passed it (read with acquire in `offered`).
        let entry = unsafe { &*self.entries.add((position & mask) as usize) };
        entry.bid()
    }

    /// Where buffer `id` starts: `RECV_BUFFER_SIZE` bytes that only the consumer that took it
    /// from the ring writes, until its `RecvBuffer` is handed to the worker.
    pub(super) fn buffer_start(&self, id: u16) -> *mut u8 {
        assert!(id < self.count, "receive buffer {id} out of range");
        // SAFETY: in bounds of the data allocation (id < count).
        unsafe { self.data.add(id as usize * RECV_BUFFER_SIZE) }
    }

    fn tail(&self) -> u16 {
        // SAFETY: the tail is a u16 inside the first entry, per the kernel's buf_ring layout;
        // the acquire load orders the entry reads after it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).load(Ordering::Acquire)
        }
    }
}

impl Drop for RecvMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts (a null one was never allocated); the
        // ring holds this memory until after its kernel ring is gone, so nothing uses it.
        unsafe {
            if !self.entries.is_null() {
                std::alloc::dealloc(self.entries as *mut u8, self.entries_layout);
            }
            if !self.data.is_null() {
                std::alloc::dealloc(self.data, self.data_layout);
            }
        }
    }
}

/// A buffer the kernel filled and handed to the worker; give it back with
/// [`RecvBuffers::recycle`]. Only a completion makes one, so it names a buffer the kernel is
/// not using.
#[derive(Debug)]
pub struct RecvBuffer {
    pub(super) id: u16,
    pub(super) len: usize,
}

/// The worker's side of the receive buffers: reading what arrived, giving buffers back.
pub struct RecvBuffers {
    memory: Rc<RecvMemory>,
    tail: u16,
}

impl RecvBuffers {
    /// Offers every buffer to the kernel (the ring registers them).
    pub(super) fn new(memory: Rc<RecvMemory>) -> RecvBuffers {
        let mut buffers = RecvBuffers { memory, tail: 0 };
        for id in 0..buffers.memory.count {
            buffers.offer(id);
        }
        buffers.publish();
        buffers
    }

    fn bytes(&mut self, id: u16) -> &mut [u8] {
        assert!(id < self.memory.count, "receive buffer {id} out of range");
        // SAFETY: in bounds of the data allocation; only this struct dereferences it, under
        // `&mut self`, and the kernel does not write buffer `id` between the completion that
        // made its `RecvBuffer` and `recycle`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.memory.data.add(id as usize * RECV_BUFFER_SIZE),
                RECV_BUFFER_SIZE,
            )
        }
    }

    /// The source address and payload of a received datagram; `None` when it was truncated or
    /// the address is not IP.
    pub fn datagram(&mut self, buffer: &RecvBuffer) -> Option<(SocketAddr, &mut [u8])> {
        let len = buffer.len;
        if !(PAYLOAD_OFFSET..=RECV_BUFFER_SIZE).contains(&len) {
            return None;
        }
        let buf = self.bytes(buffer.id);
        let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let (name_len, payload_len, flags) = (word(0) as usize, word(8) as usize, word(12));
        if flags & libc::MSG_TRUNC as u32 != 0 || PAYLOAD_OFFSET + payload_len > len {
            return None;
        }
        let from =
            sockaddr_from_bytes(&buf[RECVMSG_OUT_LEN..RECVMSG_OUT_LEN + name_len.min(NAME_LEN)])?;
        Some((from, &mut buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload_len]))
    }

    /// The bytes a stream receive (plain multishot recv) put into the buffer.
    pub fn stream_data(&mut self, buffer: &RecvBuffer) -> &mut [u8] {
        let len = buffer.len.min(RECV_BUFFER_SIZE);
        &mut self.bytes(buffer.id)[..len]
    }

    /// Gives a buffer back to the kernel.
    pub fn recycle(&mut self, buffer: RecvBuffer) {
        self.offer(buffer.id);
        self.publish();
    }

    fn offer(&mut self, id: u16) {
        let mask = self.memory.count - 1;
        // SAFETY: the index is masked into the ring's `count` entries, and the kernel reads an
        // entry only once the tail published below passes it.
        let entry = unsafe { &mut *self.memory.entries.add((self.tail & mask) as usize) };
        // SAFETY: in bounds of the data allocation (id < count).
        let address = unsafe { self.memory.data.add(id as usize * RECV_BUFFER_SIZE) };
        entry.set_addr(address as u64);
        entry.set_len(RECV_BUFFER_SIZE as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes offered buffers to the kernel.
    fn publish(&mut self) {
        // SAFETY: the tail is a u16 inside the first entry, per the kernel's buf_ring layout;
        // the release store orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.memory.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}
