//! Egress buffers: each slot holds a packet and its destination until its send completes.
//! A slot is free, held by the worker (which may write it), or in flight (which nobody may
//! touch until its completion hands it back); the pool checks this on every use, so a slot the
//! kernel is reading is never written or reused.

use super::addr::RawAddr;

/// Bytes before a packet in an egress buffer: room for an RFC 4571 length prefix, so a
/// packet bound for a TCP player is framed without a copy.
pub const EGRESS_HEADROOM: usize = 2;
/// One egress buffer: headroom, the largest packet relayed, the SRTCP trailer.
pub const EGRESS_BUFFER_SIZE: usize = 2048;
/// Room behind a packet for the SRTCP trailer (index and tag) that protecting adds.
const TRAILER_ROOM: usize = 32;
const _: () =
    assert!(EGRESS_HEADROOM + crate::media::MAX_PACKET + TRAILER_ROOM == EGRESS_BUFFER_SIZE);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SlotState {
    Free,
    Held,
    InFlight,
}

pub(super) struct EgressPool {
    data: Box<[u8]>,
    addrs: Box<[RawAddr]>,
    state: Box<[SlotState]>,
    free: Vec<u32>,
}

impl EgressPool {
    pub(super) fn new(count: u32) -> EgressPool {
        EgressPool {
            data: vec![0u8; count as usize * EGRESS_BUFFER_SIZE].into_boxed_slice(),
            addrs: vec![RawAddr::unspecified(); count as usize].into_boxed_slice(),
            state: vec![SlotState::Free; count as usize].into_boxed_slice(),
            free: (0..count).rev().collect(),
        }
    }

    #[inline]
    pub(super) fn alloc(&mut self) -> Option<u32> {
        let slot = self.free.pop()?;
        self.state[slot as usize] = SlotState::Held;
        Some(slot)
    }

    /// Gives a held slot back. Panics for a slot in flight or already free: that is a bug in
    /// the caller's bookkeeping, and going on would let the kernel read a reused buffer.
    #[inline]
    pub(super) fn release(&mut self, slot: u32) {
        self.expect_held(slot);
        self.state[slot as usize] = SlotState::Free;
        self.free.push(slot);
    }

    /// The whole buffer of a held slot; packets start at `EGRESS_HEADROOM`.
    #[inline]
    pub(super) fn buffer(&mut self, slot: u32) -> &mut [u8] {
        self.expect_held(slot);
        let start = slot as usize * EGRESS_BUFFER_SIZE;
        &mut self.data[start..start + EGRESS_BUFFER_SIZE]
    }

    /// Marks a held slot in flight, storing its destination (`to`, for a datagram) in the
    /// slot; returns where the kernel reads its bytes from and the stored destination.
    #[inline]
    pub(super) fn lend(
        &mut self,
        slot: u32,
        offset: usize,
        len: usize,
        to: Option<&RawAddr>,
    ) -> (*const u8, *const RawAddr) {
        self.expect_held(slot);
        assert!(
            offset + len <= EGRESS_BUFFER_SIZE,
            "a send past its egress buffer"
        );
        self.state[slot as usize] = SlotState::InFlight;
        if let Some(to) = to {
            self.addrs[slot as usize] = *to;
        }
        let start = slot as usize * EGRESS_BUFFER_SIZE + offset;
        (self.data[start..].as_ptr(), &self.addrs[slot as usize])
    }

    /// The kernel is done with a slot: it is held by the worker again.
    #[inline]
    pub(super) fn returned(&mut self, slot: u32) {
        debug_assert_eq!(self.state[slot as usize], SlotState::InFlight);
        self.state[slot as usize] = SlotState::Held;
    }

    #[inline]
    fn expect_held(&self, slot: u32) {
        let state = self.state[slot as usize];
        assert!(
            state == SlotState::Held,
            "egress slot {slot} used while {state:?}"
        );
    }

    #[cfg(test)]
    pub(super) fn in_use(&self) -> usize {
        self.state.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_slots_are_reused() {
        let mut pool = EgressPool::new(2);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_ne!(a, b);
        assert!(pool.alloc().is_none());
        assert_eq!(pool.in_use(), 2);
        pool.release(a);
        assert_eq!(pool.alloc(), Some(a));
    }

    #[test]
    #[should_panic(expected = "InFlight")]
    fn a_slot_in_flight_cannot_be_written() {
        let mut pool = EgressPool::new(1);
        let a = pool.alloc().unwrap();
        let _ = pool.lend(a, EGRESS_HEADROOM, 10, None);
        pool.buffer(a);
    }
}
