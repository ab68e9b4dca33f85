//! Loss detection and NACK scheduling for one incoming RTP stream (one publisher SSRC), in the
//! manner of libwebrtc's `NackRequester` (modules/video_coding/nack_requester.cc):
//!
//! - a gap in the sequence numbers makes each missing packet due for a NACK (RFC 4585 §6.2.1)
//!   at once;
//! - a packet still missing is asked for again every `max(RTT, 20 ms)` (an RTT of 100 ms is
//!   assumed until one is measured), at most `max_requests` times; one interval after the last
//!   request it is given up, and [`NackPoll::gave_up`] says so, so the caller can ask for a
//!   keyframe through its keyframe throttle;
//! - a missing packet that arrives (late, or repaired by RTX) leaves the list;
//! - at most `max_outstanding` packets are tracked: the oldest are given up to make room, and
//!   a jump over more than that many resets the tracker (a keyframe is the cheaper repair).
//!
//! Sequence numbers are extended to 64 bits so wrap-around at 65535 is invisible. The missing
//! list is a fixed ring, sorted by extended sequence number (gaps are always appended above the
//! highest), allocated once: nothing allocates per packet. Lookups of late packets are binary
//! searches; [`NackRequester::poll`] walks the outstanding entries, once per wake-up.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackConfig {
    /// Missing packets tracked at once; also the largest gap that is repaired rather than reset.
    pub max_outstanding: usize,
    /// NACKs per missing packet before it is given up.
    pub max_requests: u8,
    /// The floor of the retry interval, whatever the RTT.
    pub min_retry_interval: Duration,
    /// The RTT assumed until [`NackRequester::set_rtt`] is called.
    pub default_rtt: Duration,
}

impl Default for NackConfig {
    /// libwebrtc's values: kMaxNackPackets 1000, kMaxNackRetries 10, kDefaultRttMs 100, and
    /// its 20 ms process interval as the floor.
    fn default() -> Self {
        NackConfig {
            max_outstanding: 1000,
            max_requests: 10,
            min_retry_interval: Duration::from_millis(20),
            default_rtt: Duration::from_millis(100),
        }
    }
}

/// What a received packet meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketOutcome {
    /// The stream's first packet.
    First,
    /// The next one after the highest.
    InOrder,
    /// Above the highest, with this many missing in between (now due for a NACK).
    Gap { missing: u64 },
    /// A missing packet arrived; `requested` says whether a NACK had gone out for it (repair)
    /// or not (reordering).
    Recovered { requested: bool },
    /// Already received, given up, or too old to be tracked.
    Stale,
    /// Sequence numbers jumped too far to repair: the list was cleared. Ask for a keyframe.
    Reset,
}

/// What [`NackRequester::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NackPoll {
    /// How many sequence numbers it wrote into the caller's buffer, ascending (with wrap).
    pub requested: usize,
    /// Packets given up since the last poll (requests exhausted, or evicted for room).
    pub gave_up: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NackCounters {
    /// Sequence numbers requested, retries included.
    pub requested: u64,
    /// Missing packets that arrived after at least one NACK.
    pub recovered: u64,
    /// Missing packets that arrived before any NACK (reordering).
    pub reordered: u64,
    pub given_up: u64,
    pub resets: u64,
}

/// One entry of the missing list. The sequence number stays when the packet leaves the list
/// (`pending` becomes `None`), so the list stays sorted for binary search.
#[derive(Debug, Clone, Copy)]
struct Slot {
    sequence: u64,
    pending: Option<Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When it went missing while `requests` is 0, else when the last NACK went out.
    since: Instant,
    requests: u8,
}

const EMPTY: Slot = Slot {
    sequence: 0,
    pending: None,
};

/// Older packets than this many below the highest (RFC 3550 A.1's MAX_DROPOUT) are not late
/// arrivals but, twice in a row and in sequence, a restarted numbering.
const RESYNC_DISTANCE: u64 = 3000;
/// An extended number far from 0 in both directions, so going back never underflows.
const EXTENDED_START: u64 = 1 << 32;
/// Entries this far below the highest are given up whatever their requests (mediasoup's
/// kMaxPacketAge): well inside half the 16-bit space, so a late arrival never aliases.
const MAX_PACKET_AGE: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct NackRequester {
    config: NackConfig,
    rtt: Option<Duration>,
    highest: Option<u64>,
    /// The packet after a far-backwards one; if it comes next, the numbering restarted.
    resync_candidate: Option<u64>,
    /// Missing packets in ascending order of sequence from `head`.
    ring: Box<[Slot]>,
    head: usize,
    len: usize,
    alive: usize,
    next_due: Option<Instant>,
    gave_up_unreported: u64,
    counters: NackCounters,
    /// See [`Self::take_repair_delay`].
    last_repair_delay: Option<Duration>,
}

impl NackRequester {
    pub fn new(config: NackConfig) -> Self {
        let capacity = config.max_outstanding.max(1);
        NackRequester {
            config: NackConfig {
                max_outstanding: capacity,
                max_requests: config.max_requests.max(1),
                ..config
            },
            rtt: None,
            highest: None,
            resync_candidate: None,
            ring: vec![EMPTY; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
            alive: 0,
            next_due: None,
            gave_up_unreported: 0,
            counters: NackCounters::default(),
            last_repair_delay: None,
        }
    }

    /// The round-trip time to the publisher, which spaces the retries.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = Some(rtt);
        // A shorter interval may bring entries due sooner than the wake-up already planned.
        let interval = self.retry_interval();
        self.next_due = self.live().map(|p| due(p, interval)).min();
    }

    pub fn counters(&self) -> &NackCounters {
        &self.counters
    }

    /// Packets missing and not yet given up.
    pub fn outstanding(&self) -> usize {
        self.alive
    }

    /// Takes the delay between the last NACK for a packet and its arrival, when the last
    /// [`Self::on_packet`] was such a repair: a sample of the round trip to the sender.
    pub fn take_repair_delay(&mut self) -> Option<Duration> {
        self.last_repair_delay.take()
    }

    /// When [`Self::poll`] next has something to do; `None` while nothing is missing.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.next_due
    }

    /// Records a received packet (original, or restored from RTX).
    pub fn on_packet(&mut self, now: Instant, sequence: u16) -> PacketOutcome {
        let Some(highest) = self.highest else {
            self.highest = Some(EXTENDED_START + u64::from(sequence));
            return PacketOutcome::First;
        };
        let delta = i64::from(sequence.wrapping_sub(highest as u16) as i16);
        let extended = highest.saturating_add_signed(delta);
        if extended > highest {
            self.resync_candidate = None;
            let missing = extended - highest - 1;
            if missing > self.config.max_outstanding as u64 {
                self.reset(extended);
                return PacketOutcome::Reset;
            }
            for lost in highest + 1..extended {
                self.push(lost, now);
            }
            self.highest = Some(extended);
            if missing == 0 {
                return PacketOutcome::InOrder;
            }
            self.next_due = Some(self.next_due.map_or(now, |d| d.min(now)));
            return PacketOutcome::Gap { missing };
        }
        if highest - extended > RESYNC_DISTANCE {
            if self.resync_candidate == Some(extended) {
                self.reset(extended);
                return PacketOutcome::Reset;
            }
            self.resync_candidate = Some(extended + 1);
            return PacketOutcome::Stale;
        }
        self.resync_candidate = None;
        let Some(found) = self
            .find(extended)
            .and_then(|at| self.ring[at].pending.take())
        else {
            return PacketOutcome::Stale;
        };
        self.alive -= 1;
        if self.alive == 0 {
            self.next_due = None;
        }
        let requested = found.requests > 0;
        if requested {
            // The time since the last NACK for it is a round trip to the sender (or a little
            // less, if an earlier request's answer arrived): the link's RTT sample.
            self.last_repair_delay = Some(now.saturating_duration_since(found.since));
            self.counters.recovered += 1;
        } else {
            self.counters.reordered += 1;
        }
        PacketOutcome::Recovered { requested }
    }

    /// Writes the sequence numbers due for a NACK now into `out` (ascending, with wrap, ready
    /// for `wire::nack::write_nack`) and gives up packets whose requests are exhausted. What
    /// does not fit in `out` stays due, and [`Self::next_timeout`] says now.
    pub fn poll(&mut self, now: Instant, out: &mut [u16]) -> NackPoll {
        let interval = self.retry_interval();
        let max_requests = self.config.max_requests;
        let capacity = self.ring.len();
        let oldest_kept = self.highest.unwrap_or(0).saturating_sub(MAX_PACKET_AGE);
        let mut requested = 0;
        let mut next_due: Option<Instant> = None;
        for i in 0..self.len {
            let slot = &mut self.ring[(self.head + i) % capacity];
            let sequence = slot.sequence;
            let Some(missing) = &mut slot.pending else {
                continue;
            };
            let mut when = due(missing, interval);
            if when <= now || sequence < oldest_kept {
                if missing.requests >= max_requests || sequence < oldest_kept {
                    slot.pending = None;
                    self.alive -= 1;
                    self.gave_up_unreported += 1;
                    self.counters.given_up += 1;
                    continue;
                }
                if requested < out.len() {
                    out[requested] = sequence as u16;
                    requested += 1;
                    missing.requests += 1;
                    missing.since = now;
                    self.counters.requested += 1;
                    when = now + interval;
                }
            }
            next_due = Some(next_due.map_or(when, |d| d.min(when)));
        }
        self.next_due = next_due;
        self.drop_dead_head();
        NackPoll {
            requested,
            gave_up: std::mem::take(&mut self.gave_up_unreported),
        }
    }

    fn retry_interval(&self) -> Duration {
        self.rtt
            .unwrap_or(self.config.default_rtt)
            .max(self.config.min_retry_interval)
    }

    fn live(&self) -> impl Iterator<Item = &Pending> {
        (0..self.len).filter_map(|i| {
            self.ring[(self.head + i) % self.ring.len()]
                .pending
                .as_ref()
        })
    }

    fn reset(&mut self, extended: u64) {
        self.ring.fill(EMPTY);
        self.head = 0;
        self.len = 0;
        self.alive = 0;
        self.next_due = None;
        self.highest = Some(extended);
        self.resync_candidate = None;
        self.counters.resets += 1;
    }

    fn push(&mut self, sequence: u64, now: Instant) {
        let capacity = self.ring.len();
        if self.len == capacity {
            self.compact();
        }
        if self.len == capacity {
            // Still full of live entries: the oldest makes room.
            self.ring[self.head].pending = None;
            self.head = (self.head + 1) % capacity;
            self.len -= 1;
            self.alive -= 1;
            self.gave_up_unreported += 1;
            self.counters.given_up += 1;
        }
        self.ring[(self.head + self.len) % capacity] = Slot {
            sequence,
            pending: Some(Pending {
                since: now,
                requests: 0,
            }),
        };
        self.len += 1;
        self.alive += 1;
    }

    /// Closes the holes left by packets that arrived: O(capacity), only when the ring is full.
    fn compact(&mut self) {
        let capacity = self.ring.len();
        let mut kept = 0;
        for i in 0..self.len {
            let from = (self.head + i) % capacity;
            if self.ring[from].pending.is_some() {
                self.ring[(self.head + kept) % capacity] = self.ring[from];
                kept += 1;
            }
        }
        self.len = kept;
    }

    fn drop_dead_head(&mut self) {
        while self.len > 0 && self.ring[self.head].pending.is_none() {
            self.head = (self.head + 1) % self.ring.len();
            self.len -= 1;
        }
    }

    /// The ring index holding `sequence`, by binary search over the sorted list.
    fn find(&self, sequence: u64) -> Option<usize> {
        let capacity = self.ring.len();
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            let at = (self.head + mid) % capacity;
            match self.ring[at].sequence.cmp(&sequence) {
                std::cmp::Ordering::Equal => return Some(at),
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
            }
        }
        None
    }
}

fn due(missing: &Pending, interval: Duration) -> Instant {
    if missing.requests == 0 {
        missing.since
    } else {
        missing.since + interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn poll(n: &mut NackRequester, now: Instant) -> (Vec<u16>, u64) {
        let mut out = [0u16; 64];
        let p = n.poll(now, &mut out);
        (out[..p.requested].to_vec(), p.gave_up)
    }

    #[test]
    fn a_gap_is_nacked_at_once_then_again_after_each_rtt() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig::default());
        assert_eq!(n.on_packet(t0, 10), PacketOutcome::First);
        assert_eq!(n.on_packet(t0, 11), PacketOutcome::InOrder);
        assert_eq!(n.next_timeout(), None);
        assert_eq!(n.on_packet(t0, 14), PacketOutcome::Gap { missing: 2 });
        assert_eq!(n.next_timeout(), Some(t0));
        assert_eq!(poll(&mut n, t0), (vec![12, 13], 0));
        // Default RTT 100 ms until one is known.
        assert_eq!(n.next_timeout(), Some(t0 + ms(100)));
        assert_eq!(poll(&mut n, t0 + ms(99)), (vec![], 0));
        assert_eq!(poll(&mut n, t0 + ms(100)), (vec![12, 13], 0));
        n.set_rtt(ms(30));
        assert_eq!(
            n.next_timeout(),
            Some(t0 + ms(130)),
            "a shorter RTT brings retries sooner"
        );
        assert_eq!(poll(&mut n, t0 + ms(129)), (vec![], 0));
        assert_eq!(poll(&mut n, t0 + ms(130)), (vec![12, 13], 0));
        n.set_rtt(ms(5));
        assert_eq!(
            n.next_timeout(),
            Some(t0 + ms(150)),
            "never closer than 20 ms"
        );
        assert_eq!(n.counters().requested, 6);
    }

    #[test]
    fn a_packet_is_given_up_one_interval_after_its_last_request() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig::default());
        n.on_packet(t0, 1);
        n.on_packet(t0, 3);
        n.set_rtt(ms(50));
        let mut now = t0;
        for attempt in 0..10 {
            assert_eq!(poll(&mut n, now), (vec![2], 0), "request {attempt}");
            now += ms(50);
        }
        assert_eq!(n.outstanding(), 1);
        assert_eq!(poll(&mut n, now - ms(1)), (vec![], 0));
        assert_eq!(poll(&mut n, now), (vec![], 1), "given up, reported once");
        assert_eq!(poll(&mut n, now + ms(500)), (vec![], 0));
        assert_eq!((n.outstanding(), n.next_timeout()), (0, None));
        assert_eq!(n.counters().given_up, 1);
        assert_eq!(n.counters().requested, 10);
        assert_eq!(n.on_packet(now, 2), PacketOutcome::Stale, "too late now");
    }

    #[test]
    fn reordered_and_retransmitted_packets_leave_the_list() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig::default());
        n.on_packet(t0, 100);
        n.on_packet(t0, 104); // 101..=103 missing
        assert_eq!(
            n.on_packet(t0, 102),
            PacketOutcome::Recovered { requested: false },
            "reordered before any NACK"
        );
        assert_eq!(poll(&mut n, t0 + ms(1)), (vec![101, 103], 0));
        assert_eq!(
            n.on_packet(t0 + ms(40), 103),
            PacketOutcome::Recovered { requested: true },
            "repaired by a retransmission"
        );
        assert_eq!(
            n.on_packet(t0 + ms(41), 103),
            PacketOutcome::Stale,
            "duplicate"
        );
        assert_eq!(
            n.on_packet(t0 + ms(41), 104),
            PacketOutcome::Stale,
            "duplicate of the highest"
        );
        assert_eq!(poll(&mut n, t0 + ms(101)), (vec![101], 0));
        let c = n.counters();
        assert_eq!((c.reordered, c.recovered, c.requested), (1, 1, 3));
        assert_eq!(n.outstanding(), 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig::default());
        n.on_packet(t0, 65533);
        assert_eq!(n.on_packet(t0, 2), PacketOutcome::Gap { missing: 4 });
        assert_eq!(poll(&mut n, t0), (vec![65534, 65535, 0, 1], 0));
        assert_eq!(
            n.on_packet(t0, 65535),
            PacketOutcome::Recovered { requested: true }
        );
        assert_eq!(n.on_packet(t0, 3), PacketOutcome::InOrder);
        assert_eq!(poll(&mut n, t0 + ms(100)), (vec![65534, 0, 1], 0));
    }

    #[test]
    fn a_jump_larger_than_the_list_resets_instead_of_requesting_thousands() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig::default());
        n.on_packet(t0, 0);
        n.on_packet(t0, 5);
        assert_eq!(n.on_packet(t0, 5000), PacketOutcome::Reset);
        assert_eq!((n.outstanding(), n.next_timeout()), (0, None));
        assert_eq!(n.on_packet(t0, 5001), PacketOutcome::InOrder);
        assert_eq!(poll(&mut n, t0), (vec![], 0));
        assert_eq!(n.counters().resets, 1);
    }

    #[test]
    fn a_restarted_numbering_resyncs_after_two_packets_in_sequence() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig::default());
        n.on_packet(t0, 20_000);
        assert_eq!(
            n.on_packet(t0, 100),
            PacketOutcome::Stale,
            "one stray old packet"
        );
        assert_eq!(n.on_packet(t0, 20_001), PacketOutcome::InOrder);
        assert_eq!(n.on_packet(t0, 100), PacketOutcome::Stale);
        assert_eq!(n.on_packet(t0, 101), PacketOutcome::Reset);
        assert_eq!(n.on_packet(t0, 103), PacketOutcome::Gap { missing: 1 });
        assert_eq!(poll(&mut n, t0), (vec![102], 0));
    }

    #[test]
    fn a_full_list_gives_up_its_oldest_to_make_room() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig {
            max_outstanding: 4,
            ..NackConfig::default()
        });
        n.on_packet(t0, 0);
        n.on_packet(t0, 4); // 1, 2, 3
        n.on_packet(t0, 2);
        n.on_packet(t0, 7); // 5, 6: full with 1, 3, 5, 6 after compaction
        assert_eq!(n.outstanding(), 4);
        n.on_packet(t0, 9); // 8 pushes out 1
        assert_eq!(n.outstanding(), 4);
        assert_eq!(poll(&mut n, t0), (vec![3, 5, 6, 8], 1));
        assert_eq!(
            n.on_packet(t0, 5),
            PacketOutcome::Recovered { requested: true }
        );
        assert_eq!(n.on_packet(t0, 1), PacketOutcome::Stale);
        assert_eq!(n.on_packet(t0, 20), PacketOutcome::Reset, "11 missing > 4");
    }

    #[test]
    fn what_does_not_fit_the_buffer_stays_due() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig::default());
        n.on_packet(t0, 0);
        n.on_packet(t0, 6); // 1..=5
        let mut out = [0u16; 2];
        assert_eq!(n.poll(t0, &mut out).requested, 2);
        assert_eq!(out, [1, 2]);
        assert_eq!(n.next_timeout(), Some(t0));
        assert_eq!(n.poll(t0, &mut out).requested, 2);
        assert_eq!(out, [3, 4]);
        assert_eq!(n.poll(t0, &mut out).requested, 1);
        assert_eq!(out[0], 5);
        assert_eq!(n.next_timeout(), Some(t0 + ms(100)));
    }

    #[test]
    fn entries_far_below_the_highest_are_given_up() {
        let t0 = Instant::now();
        let mut n = NackRequester::new(NackConfig::default());
        n.on_packet(t0, 0);
        n.on_packet(t0, 2);
        assert_eq!(poll(&mut n, t0), (vec![1], 0));
        for s in 3..=10_002u16 {
            n.on_packet(t0, s);
        }
        assert_eq!(poll(&mut n, t0 + ms(1)), (vec![], 1));
    }
}
