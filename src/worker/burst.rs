//! Frame bursts for UDP generic segmentation offload (GSO, `UDP_SEGMENT`): a player's video
//! packets of one frame are held in their egress buffers and leave in one `sendmsg`, which the
//! kernel cuts into datagrams. One send instead of one per packet is what makes the kernel's
//! per-send cost (most of a relay's CPU) shrink with the frame's size.
//!
//! The kernel cuts a GSO send every `segment_size` bytes, so every packet of a burst but the
//! last must have the same size; a smaller one may end it. A burst leaves when the frame's
//! marker bit arrives, when a packet does not fit, when it is full, or when its hold deadline
//! (counted from the first packet's receive time) passes. The marker packet is never held, so
//! holding costs a frame nothing: a player decodes it only once its last packet is in.
//!
//! This module is bookkeeping only (which packets, which destination, when due); the worker's
//! `Output` does the sends.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Most datagrams one GSO send carries (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = crate::io::MAX_GSO_SEGMENTS;
/// Most bytes one GSO send carries: one UDP datagram's payload limit (65 535 less the IPv6
/// and UDP headers), rounded down.
pub const MAX_BYTES: usize = 65_000;

/// Identifies a burst while it is open or its send is in flight.
pub type BurstId = u16;

/// The session a burst belongs to: its slot and generation in the worker's session table.
pub type Owner = (usize, u32);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Free,
    /// Collecting packets.
    Open,
    /// Handed to the kernel; its egress slots are released when the send completes.
    InFlight,
}

/// One held frame burst.
pub struct Burst {
    state: State,
    pub owner: Owner,
    pub fd: RawFd,
    pub to: SocketAddr,
    /// The size of every packet but the last.
    pub segment_size: usize,
    /// Egress slots, in send order.
    slots: [u32; MAX_SEGMENTS],
    /// When the first packet was received; the others as nanoseconds after it, for the
    /// relay-latency histogram.
    first_received_at: Instant,
    received_after_ns: [u32; MAX_SEGMENTS],
    count: usize,
    last_len: usize,
    /// A shorter packet was taken; nothing may follow it.
    ended: bool,
    deadline: Instant,
}

impl Burst {
    fn new(now: Instant) -> Burst {
        Burst {
            state: State::Free,
            owner: (usize::MAX, 0),
            fd: -1,
            to: SocketAddr::from(([0, 0, 0, 0], 0)),
            segment_size: 0,
            slots: [0; MAX_SEGMENTS],
            first_received_at: now,
            received_after_ns: [0; MAX_SEGMENTS],
            count: 0,
            last_len: 0,
            ended: false,
            deadline: now,
        }
    }

    /// The egress slots and their lengths, in send order.
    pub fn segments(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        let (count, size, last) = (self.count, self.segment_size, self.last_len);
        self.slots[..count]
            .iter()
            .enumerate()
            .map(move |(i, &slot)| (slot, if i + 1 == count { last } else { size }))
    }

    pub fn slots(&self) -> &[u32] {
        &self.slots[..self.count]
    }

    /// Receive times of the packets, for the latency histogram.
    pub fn received_at(&self) -> impl Iterator<Item = Instant> + '_ {
        let first = self.first_received_at;
        self.received_after_ns[..self.count]
            .iter()
            .map(move |&ns| first + Duration::from_nanos(ns as u64))
    }

    /// Packets held.
    pub fn packets(&self) -> usize {
        self.count
    }

    fn bytes(&self) -> usize {
        match self.count {
            0 => 0,
            n => (n - 1) * self.segment_size + self.last_len,
        }
    }

    /// Whether no further packet could join, whatever its size.
    fn is_full(&self) -> bool {
        self.ended || self.count == MAX_SEGMENTS || self.bytes() + self.segment_size > MAX_BYTES
    }
}

/// What became of a packet offered to a player's open burst.
#[derive(Debug, PartialEq, Eq)]
pub enum Append {
    /// Held; the burst can take more.
    Held,
    /// Held, and the burst can take no more: send it now.
    HeldAndFull,
    /// Not taken (another size, destination or socket): send the burst, then start another.
    DoesNotFit,
}

/// A worker's bursts: a fixed table, so nothing is allocated per frame.
pub struct Bursts {
    table: Vec<Burst>,
    free: Vec<BurstId>,
    open: usize,
    /// No open burst is due before this.
    next_due: Option<Instant>,
    hold: Duration,
}

impl Bursts {
    pub fn new(count: usize, hold: Duration, now: Instant) -> Bursts {
        let count = count.min(BurstId::MAX as usize);
        Bursts {
            table: (0..count).map(|_| Burst::new(now)).collect(),
            free: (0..count as BurstId).rev().collect(),
            open: 0,
            next_due: None,
            hold,
        }
    }

    pub fn get(&self, id: BurstId) -> &Burst {
        &self.table[id as usize]
    }

    /// Starts a burst for the session `owner` with its first packet; `None` when every burst
    /// is in use (the packet then goes on its own).
    pub fn open(
        &mut self,
        owner: Owner,
        fd: RawFd,
        to: SocketAddr,
        slot: u32,
        len: usize,
        received_at: Instant,
    ) -> Option<BurstId> {
        let id = self.free.pop()?;
        let deadline = received_at + self.hold;
        let burst = &mut self.table[id as usize];
        burst.state = State::Open;
        burst.owner = owner;
        burst.fd = fd;
        burst.to = to;
        burst.segment_size = len;
        burst.slots[0] = slot;
        burst.first_received_at = received_at;
        burst.received_after_ns[0] = 0;
        burst.count = 1;
        burst.last_len = len;
        burst.ended = false;
        burst.deadline = deadline;
        self.open += 1;
        self.next_due = Some(self.next_due.map_or(deadline, |d| d.min(deadline)));
        Some(id)
    }

    /// Offers a packet to the open burst `id` of the session `owner`.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        id: BurstId,
        owner: Owner,
        fd: RawFd,
        to: SocketAddr,
        slot: u32,
        len: usize,
        received_at: Instant,
    ) -> Append {
        let burst = &mut self.table[id as usize];
        let fits = burst.state == State::Open
            && burst.owner == owner
            && burst.fd == fd
            && burst.to == to
            && !burst.is_full()
            && len <= burst.segment_size
            && burst.bytes() + len <= MAX_BYTES;
        if !fits {
            return Append::DoesNotFit;
        }
        burst.slots[burst.count] = slot;
        burst.received_after_ns[burst.count] = received_at
            .saturating_duration_since(burst.first_received_at)
            .as_nanos()
            .min(u32::MAX as u128) as u32;
        burst.count += 1;
        burst.last_len = len;
        burst.ended = len < burst.segment_size;
        if burst.is_full() {
            Append::HeldAndFull
        } else {
            Append::Held
        }
    }

    /// Marks an open burst as handed to the kernel.
    pub fn sent(&mut self, id: BurstId) {
        let burst = &mut self.table[id as usize];
        debug_assert_eq!(burst.state, State::Open);
        burst.state = State::InFlight;
        self.open -= 1;
        if self.open == 0 {
            self.next_due = None;
        }
    }

    /// Returns a burst whose send completed (or that was never sent) to the free list.
    pub fn release(&mut self, id: BurstId) {
        let burst = &mut self.table[id as usize];
        if burst.state == State::Open {
            self.open -= 1;
            if self.open == 0 {
                self.next_due = None;
            }
        }
        if burst.state != State::Free {
            burst.state = State::Free;
            burst.count = 0;
            self.free.push(id);
        }
    }

    /// The earliest moment an open burst may be due, for the worker's wait.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    /// Puts the open bursts whose deadline passed into `due` as (burst, owner), and notes when
    /// the next one falls due. Scans the table only once `next_due` has passed.
    pub fn take_due(&mut self, now: Instant, due: &mut Vec<(BurstId, Owner)>) {
        if self.next_due.is_none_or(|d| d > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        for (id, burst) in self.table.iter().enumerate() {
            if burst.state == State::Open {
                if burst.deadline <= now {
                    due.push((id as BurstId, burst.owner));
                } else {
                    next = Some(next.map_or(burst.deadline, |d| d.min(burst.deadline)));
                }
            }
        }
        self.next_due = next;
    }

    pub fn open_count(&self) -> usize {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn bursts(hold_us: u64, now: Instant) -> Bursts {
        Bursts::new(4, Duration::from_micros(hold_us), now)
    }

    #[test]
    fn equal_packets_join_and_a_shorter_one_ends_the_burst() {
        let now = Instant::now();
        let mut b = bursts(1000, now);
        let id = b.open((7, 0), 3, addr(1), 10, 1200, now).unwrap();
        assert_eq!(
            b.append(id, (7, 0), 3, addr(1), 11, 1200, now),
            Append::Held
        );
        assert_eq!(
            b.append(id, (7, 0), 3, addr(1), 12, 500, now),
            Append::HeldAndFull
        );
        assert_eq!(
            b.get(id).segments().collect::<Vec<_>>(),
            vec![(10, 1200), (11, 1200), (12, 500)]
        );
        assert_eq!(b.get(id).segment_size, 1200);
    }

    #[test]
    fn a_longer_packet_or_another_destination_does_not_fit() {
        let now = Instant::now();
        let mut b = bursts(1000, now);
        let id = b.open((7, 0), 3, addr(1), 10, 1000, now).unwrap();
        assert_eq!(
            b.append(id, (7, 0), 3, addr(1), 11, 1001, now),
            Append::DoesNotFit
        );
        assert_eq!(
            b.append(id, (7, 0), 3, addr(2), 11, 1000, now),
            Append::DoesNotFit
        );
        assert_eq!(
            b.append(id, (7, 0), 4, addr(1), 11, 1000, now),
            Append::DoesNotFit
        );
        assert_eq!(
            b.append(id, (8, 0), 3, addr(1), 11, 1000, now),
            Append::DoesNotFit
        );
        assert_eq!(b.get(id).packets(), 1);
    }

    #[test]
    fn a_burst_is_full_at_the_segment_or_byte_limit() {
        let now = Instant::now();
        let mut b = bursts(1000, now);
        let id = b.open((0, 0), 3, addr(1), 0, 100, now).unwrap();
        for slot in 1..MAX_SEGMENTS as u32 - 1 {
            assert_eq!(
                b.append(id, (0, 0), 3, addr(1), slot, 100, now),
                Append::Held
            );
        }
        assert_eq!(
            b.append(id, (0, 0), 3, addr(1), 63, 100, now),
            Append::HeldAndFull
        );

        let big = b.open((1, 0), 3, addr(1), 0, 1400, now).unwrap();
        let mut taken = 1;
        while b.append(big, (1, 0), 3, addr(1), taken, 1400, now) == Append::Held {
            taken += 1;
        }
        assert_eq!(b.get(big).packets(), MAX_BYTES / 1400);
        assert!(b.get(big).bytes() <= MAX_BYTES);
    }

    #[test]
    fn bursts_fall_due_at_their_hold_deadline_only() {
        let t0 = Instant::now();
        let mut b = bursts(500, t0);
        let first = b.open((1, 0), 3, addr(1), 0, 1200, t0).unwrap();
        let second = b
            .open((2, 0), 3, addr(2), 1, 1200, t0 + Duration::from_micros(300))
            .unwrap();
        assert_eq!(b.next_due(), Some(t0 + Duration::from_micros(500)));
        let mut due = Vec::new();
        b.take_due(t0 + Duration::from_micros(499), &mut due);
        assert!(due.is_empty());
        b.take_due(t0 + Duration::from_micros(500), &mut due);
        assert_eq!(due, vec![(first, (1, 0))]);
        assert_eq!(b.next_due(), Some(t0 + Duration::from_micros(800)));
        b.sent(first);
        due.clear();
        b.take_due(t0 + Duration::from_micros(900), &mut due);
        assert_eq!(due, vec![(second, (2, 0))]);
        b.sent(second);
        assert_eq!(b.next_due(), None);
        assert_eq!(b.open_count(), 0);
    }

    #[test]
    fn released_bursts_are_reused_and_the_table_never_grows() {
        let now = Instant::now();
        let mut b = bursts(0, now);
        let ids: Vec<_> = (0..4)
            .map(|i| b.open((i, 0), 3, addr(1), i as u32, 100, now).unwrap())
            .collect();
        assert!(b.open((9, 0), 3, addr(1), 9, 100, now).is_none());
        b.sent(ids[2]);
        b.release(ids[2]);
        assert_eq!(b.open((9, 0), 3, addr(1), 9, 100, now), Some(ids[2]));
        // Releasing an open burst (a session closing before its send) closes it too.
        b.release(ids[0]);
        assert_eq!(b.open_count(), 3);
    }
}
