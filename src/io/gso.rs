//! UDP generic segmentation offload sends: one `sendmsg` carrying several egress slots, which
//! the kernel cuts into one datagram per segment.

use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use super::addr::RawAddr;

/// Most datagrams one GSO send carries (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Whether the kernel knows UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18+):
/// asked of a throwaway socket, as a start-up probe.
pub fn udp_gso_supported() -> bool {
    let Ok(socket) = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
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
/// and the control message, and which egress slots those are.
struct GsoMessage {
    msghdr: libc::msghdr,
    iovecs: [libc::iovec; MAX_GSO_SEGMENTS],
    control: SegmentControl,
    to: RawAddr,
    slots: [u32; MAX_GSO_SEGMENTS],
    count: usize,
    in_flight: bool,
}

/// The GSO sends of one worker, each index usable by one send at a time. A boxed table that
/// never moves or shrinks, owned by the ring.
pub(super) struct GsoSends {
    messages: Box<[GsoMessage]>,
}

impl GsoSends {
    pub(super) fn new(count: usize) -> GsoSends {
        let messages = (0..count)
            .map(|_| GsoMessage {
                // SAFETY: all-zero msghdr, iovecs and cmsghdr are valid (null pointers, zero
                // lengths); every field used is set before a send.
                msghdr: unsafe { mem::zeroed() },
                // SAFETY: as above.
                iovecs: unsafe { mem::zeroed() },
                control: SegmentControl {
                    // SAFETY: as above.
                    header: unsafe { mem::zeroed() },
                    segment_size: 0,
                    _padding: [0; 6],
                },
                to: RawAddr::unspecified(),
                slots: [0; MAX_GSO_SEGMENTS],
                count: 0,
                in_flight: false,
            })
            .collect();
        GsoSends { messages }
    }

    /// Fills message `index` for a send of `segments` (the bytes of each, from the egress
    /// pool's `lend`, and its slot) to `to`, cut every `segment_size` bytes; returns the
    /// header the kernel reads. Panics when the index's previous send is still in flight.
    pub(super) fn prepare(
        &mut self,
        index: usize,
        to: &RawAddr,
        segment_size: usize,
        segments: impl Iterator<Item = (u32, *const u8, usize)>,
    ) -> *const libc::msghdr {
        let message = &mut self.messages[index];
        assert!(
            !message.in_flight,
            "GSO send {index} reused while in flight"
        );
        message.in_flight = true;
        let mut count = 0;
        for (slot, bytes, len) in segments.take(MAX_GSO_SEGMENTS) {
            message.iovecs[count] = libc::iovec {
                iov_base: bytes as *mut libc::c_void,
                iov_len: len,
            };
            message.slots[count] = slot;
            count += 1;
        }
        message.count = count;
        message.to = *to;
        message.control.header.cmsg_len =
            (mem::offset_of!(SegmentControl, segment_size) + size_of::<u16>()) as _;
        message.control.header.cmsg_level = libc::SOL_UDP;
        message.control.header.cmsg_type = libc::UDP_SEGMENT;
        message.control.segment_size = segment_size as u16;
        let msghdr = &mut message.msghdr;
        msghdr.msg_name = &mut message.to.storage as *mut libc::sockaddr_in6 as *mut libc::c_void;
        msghdr.msg_namelen = message.to.len;
        msghdr.msg_iov = message.iovecs.as_mut_ptr();
        msghdr.msg_iovlen = count as _;
        msghdr.msg_control = &mut message.control as *mut SegmentControl as *mut libc::c_void;
        msghdr.msg_controllen = size_of::<SegmentControl>() as _;
        &message.msghdr
    }

    /// The send of `index` completed: its slots, for the pool to take back.
    pub(super) fn finish(&mut self, index: usize) -> &[u32] {
        let message = &mut self.messages[index];
        message.in_flight = false;
        &message.slots[..message.count]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_control_message_has_the_kernels_layout() {
        let data = size_of::<u16>() as u32;
        // SAFETY: CMSG_LEN and CMSG_SPACE are arithmetic on their argument.
        let (len, space) = unsafe { (libc::CMSG_LEN(data), libc::CMSG_SPACE(data)) };
        assert_eq!(
            mem::offset_of!(SegmentControl, segment_size) + size_of::<u16>(),
            len as usize
        );
        assert_eq!(size_of::<SegmentControl>(), space as usize);
    }
}
