//! Receiver side of transport-wide congestion control
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01): [`TwccRecorder`] records when each
//! transport-wide sequence number arrived and, every `interval` (or sooner when many are
//! pending), writes one feedback message with `wire::twcc`, so the publisher's congestion
//! controller (GCC) can estimate the path and ramp its encoder up. In the manner of libwebrtc's
//! RemoteEstimatorProxy: only a packet's first arrival counts; a packet arriving after its
//! number was reported moves the next feedback back to include it; a feedback that cannot
//! express everything (a delta over ~8 s, a full buffer) stops there and the next one, due at
//! once, continues.
//!
//! Also [`RembCap`]: REMB (draft-alvestrand-rmcat-remb) messages repeating an operator's cap.
//!
//! Arrivals live in a fixed ring indexed by extended sequence number: nothing allocates per
//! packet, and a feedback costs one pass over the packets it reports.

use std::time::{Duration, Instant};

use crate::wire::remb::{RembError, write_remb};
use crate::wire::twcc::{FeedbackHeader, TwccError, write_feedback};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwccConfig {
    /// Arrivals remembered; rounded up to a power of two. Unreported arrivals older than this
    /// many numbers below the highest are dropped unreported.
    pub capacity: usize,
    /// Feedback cadence (libwebrtc: 100 ms by default, 50–250 ms by bitrate).
    pub interval: Duration,
    /// Send before the interval ends once this many numbers are pending.
    pub max_pending: usize,
}

impl Default for TwccConfig {
    fn default() -> Self {
        TwccConfig {
            capacity: 2048,
            interval: Duration::from_millis(100),
            max_pending: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TwccCounters {
    pub feedback_sent: u64,
    /// Duplicates of an arrival already recorded.
    pub duplicates: u64,
    /// Arrivals too far below the highest to be recorded.
    pub too_old: u64,
    /// Numbers skipped unreported because the ring overflowed.
    pub dropped_unreported: u64,
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// Extended sequence number; `u64::MAX` for a slot never used.
    sequence: u64,
    /// Microseconds since the first arrival.
    at_us: i64,
}

const EMPTY: Arrival = Arrival {
    sequence: u64::MAX,
    at_us: 0,
};
/// An extended number far from 0, so going back never underflows.
const EXTENDED_START: u64 = 1 << 32;

#[derive(Debug, Clone)]
pub struct TwccRecorder {
    config: TwccConfig,
    ring: Box<[Arrival]>,
    mask: u64,
    epoch: Option<Instant>,
    highest: Option<u64>,
    /// The first number the next feedback reports.
    next_unreported: u64,
    last_sent: Option<Instant>,
    /// When the oldest pending arrival came, while some are pending.
    pending_since: Option<Instant>,
    /// Set when feedback should go out without waiting for the interval.
    urgent_since: Option<Instant>,
    feedback_count: u8,
    counters: TwccCounters,
}

impl TwccRecorder {
    pub fn new(config: TwccConfig) -> Self {
        let capacity = config.capacity.clamp(16, 1 << 15).next_power_of_two();
        TwccRecorder {
            config: TwccConfig { capacity, ..config },
            ring: vec![EMPTY; capacity].into_boxed_slice(),
            mask: capacity as u64 - 1,
            epoch: None,
            highest: None,
            next_unreported: 0,
            last_sent: None,
            pending_since: None,
            urgent_since: None,
            feedback_count: 0,
            counters: TwccCounters::default(),
        }
    }

    pub fn counters(&self) -> &TwccCounters {
        &self.counters
    }

    /// Records the arrival at `now` of the packet carrying transport-wide number `sequence`.
    pub fn record(&mut self, now: Instant, sequence: u16) {
        let epoch = *self.epoch.get_or_insert(now);
        let at_us = now.saturating_duration_since(epoch).as_micros() as i64;
        let extended = match self.highest {
            None => EXTENDED_START + u64::from(sequence),
            Some(h) => h.saturating_add_signed(i64::from(sequence.wrapping_sub(h as u16) as i16)),
        };
        let capacity = self.ring.len() as u64;
        match self.highest {
            None => {
                self.highest = Some(extended);
                self.next_unreported = extended;
            }
            Some(h) if extended > h => {
                self.highest = Some(extended);
                let oldest_kept = extended.saturating_sub(capacity - 1);
                if self.next_unreported < oldest_kept {
                    self.counters.dropped_unreported += oldest_kept - self.next_unreported;
                    self.next_unreported = oldest_kept;
                }
            }
            Some(h) => {
                if h - extended >= capacity {
                    self.counters.too_old += 1;
                    return;
                }
                if self.ring[(extended & self.mask) as usize].sequence == extended {
                    self.counters.duplicates += 1;
                    return;
                }
                // Reported as lost already: report it again, now received.
                self.next_unreported = self.next_unreported.min(extended);
            }
        }
        self.ring[(extended & self.mask) as usize] = Arrival {
            sequence: extended,
            at_us,
        };
        self.pending_since.get_or_insert(now);
        if self.pending() >= self.config.max_pending as u64 {
            self.urgent_since.get_or_insert(now);
        }
    }

    /// When [`Self::poll`] next has a feedback to write; `None` while nothing is pending.
    pub fn next_timeout(&self) -> Option<Instant> {
        let pending_since = self.pending_since?;
        let periodic = self
            .last_sent
            .map_or(pending_since + self.config.interval, |sent| {
                (sent + self.config.interval).max(pending_since)
            });
        Some(self.urgent_since.map_or(periodic, |u| u.min(periodic)))
    }

    /// Writes one feedback message into `out` if one is due; returns its length. Call again
    /// while [`Self::next_timeout`] is not after `now`: a large backlog takes several.
    pub fn poll(
        &mut self,
        now: Instant,
        out: &mut [u8],
        sender_ssrc: u32,
        media_ssrc: u32,
    ) -> Result<Option<usize>, TwccError> {
        let (Some(due), Some(highest)) = (self.next_timeout(), self.highest) else {
            return Ok(None);
        };
        if now < due {
            return Ok(None);
        }
        let base = self.next_unreported;
        let ring = &self.ring;
        let mask = self.mask;
        let arrivals = (base..=highest).map(|sequence| {
            let slot = ring[(sequence & mask) as usize];
            (slot.sequence == sequence).then_some(slot.at_us)
        });
        let header = FeedbackHeader {
            sender_ssrc,
            media_ssrc,
            base_sequence: base as u16,
            feedback_count: self.feedback_count,
        };
        let written = write_feedback(out, &header, arrivals)?;
        self.next_unreported = base + u64::from(written.packets);
        self.feedback_count = self.feedback_count.wrapping_add(1);
        self.counters.feedback_sent += 1;
        self.last_sent = Some(now);
        if self.next_unreported > highest {
            self.pending_since = None;
            self.urgent_since = None;
        } else {
            // Cut short: the rest goes out at once.
            self.pending_since = Some(now);
            self.urgent_since = Some(now);
        }
        Ok(Some(written.len))
    }

    fn pending(&self) -> u64 {
        self.highest
            .map_or(0, |h| h + 1 - self.next_unreported.min(h + 1))
    }
}

/// Repeats an operator's bitrate cap to a publisher as REMB, once per `interval` (REMB is a
/// standing limit, refreshed because RTCP is unreliable). A cap of 0 sends nothing.
#[derive(Debug, Clone)]
pub struct RembCap {
    bitrate_bps: u64,
    interval: Duration,
    last_sent: Option<Instant>,
}

impl RembCap {
    pub fn new(cap_kbps: u32, interval: Duration) -> Self {
        RembCap {
            bitrate_bps: u64::from(cap_kbps) * 1000,
            interval,
            last_sent: None,
        }
    }

    /// A new cap goes out at the next poll.
    pub fn set_cap(&mut self, cap_kbps: u32) {
        self.bitrate_bps = u64::from(cap_kbps) * 1000;
        self.last_sent = None;
    }

    /// `None` while there is no cap; a time not after now when one is due.
    pub fn next_timeout(&self, now: Instant) -> Option<Instant> {
        (self.bitrate_bps > 0).then(|| self.last_sent.map_or(now, |t| t + self.interval))
    }

    /// Writes a REMB for `ssrcs` into `out` if one is due; returns its length.
    pub fn poll(
        &mut self,
        now: Instant,
        out: &mut [u8],
        sender_ssrc: u32,
        ssrcs: &[u32],
    ) -> Result<Option<usize>, RembError> {
        match self.next_timeout(now) {
            Some(due) if due <= now => {
                let len = write_remb(out, sender_ssrc, self.bitrate_bps, ssrcs)?;
                self.last_sent = Some(now);
                Ok(Some(len))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::remb::Remb;
    use crate::wire::twcc::{DELTA_TICK_US, PacketStatus, REFERENCE_TICK_US, TransportFeedback};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// (sequence, arrival in µs since the feedback's reference time 0) of one feedback.
    fn decode(packet: &[u8]) -> (u8, Vec<(u16, Option<i64>)>) {
        let fb = TransportFeedback::parse(packet).unwrap();
        let mut time = i64::from(fb.reference_time) * REFERENCE_TICK_US;
        let packets = fb
            .packets()
            .map(|p| match p.status {
                PacketStatus::NotReceived => (p.sequence, None),
                PacketStatus::Received { delta_ticks } => {
                    time += i64::from(delta_ticks) * DELTA_TICK_US;
                    (p.sequence, Some(time))
                }
            })
            .collect();
        (fb.feedback_count, packets)
    }

    fn poll(r: &mut TwccRecorder, now: Instant) -> Option<Vec<u8>> {
        let mut out = [0u8; 1200];
        let n = r.poll(now, &mut out, 1, 2).unwrap()?;
        Some(out[..n].to_vec())
    }

    #[test]
    fn feedback_goes_out_each_interval_with_every_arrival_once() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(TwccConfig::default());
        assert_eq!(r.next_timeout(), None);
        for i in 0..10u16 {
            r.record(t0 + ms(i as u64 * 10), 100 + i);
        }
        assert_eq!(r.next_timeout(), Some(t0 + ms(100)));
        assert_eq!(poll(&mut r, t0 + ms(99)), None);
        let (count, packets) = decode(&poll(&mut r, t0 + ms(100)).unwrap());
        assert_eq!(count, 0);
        let want: Vec<_> = (0..10)
            .map(|i| (100 + i as u16, Some(i * 10_000)))
            .collect();
        assert_eq!(packets, want);
        assert_eq!(r.next_timeout(), None, "nothing pending");
        r.record(t0 + ms(150), 110);
        assert_eq!(r.next_timeout(), Some(t0 + ms(200)));
        let (count, packets) = decode(&poll(&mut r, t0 + ms(200)).unwrap());
        assert_eq!((count, packets), (1, vec![(110, Some(150_000))]));
        assert_eq!(r.counters().feedback_sent, 2);
    }

    #[test]
    fn losses_reordering_and_wrap() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(TwccConfig::default());
        r.record(t0, 65534);
        r.record(t0 + ms(1), 0); // 65535 missing so far
        r.record(t0 + ms(2), 2);
        r.record(t0 + ms(3), 1); // reordered
        r.record(t0 + ms(4), 1); // duplicate: the first arrival counts
        let (_, packets) = decode(&poll(&mut r, t0 + ms(100)).unwrap());
        assert_eq!(
            packets,
            vec![
                (65534, Some(0)),
                (65535, None),
                (0, Some(1000)),
                (1, Some(3000)),
                (2, Some(2000)),
            ]
        );
        assert_eq!(r.counters().duplicates, 1);
        // 65535 arrives after being reported lost: the next feedback starts back there.
        r.record(t0 + ms(120), 65535);
        r.record(t0 + ms(121), 3);
        let (_, packets) = decode(&poll(&mut r, t0 + ms(200)).unwrap());
        let seqs: Vec<u16> = packets.iter().map(|p| p.0).collect();
        assert_eq!(seqs, vec![65535, 0, 1, 2, 3]);
        assert_eq!(packets[0].1, Some(120_000));
        assert_eq!(packets[4].1, Some(121_000));
    }

    #[test]
    fn a_silence_longer_than_a_delta_splits_the_feedback() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(TwccConfig::default());
        r.record(t0, 1);
        r.record(t0 + ms(10_000), 2); // 10 s: more than a 16-bit delta of 250 µs holds
        let first = poll(&mut r, t0 + ms(10_000)).unwrap();
        assert_eq!(decode(&first).1, vec![(1, Some(0))]);
        assert_eq!(
            r.next_timeout(),
            Some(t0 + ms(10_000)),
            "the rest is due at once"
        );
        let second = poll(&mut r, t0 + ms(10_000)).unwrap();
        assert_eq!(decode(&second).1, vec![(2, Some(10_000_000))]);
        assert_eq!(r.next_timeout(), None);
    }

    #[test]
    fn many_pending_or_a_small_buffer_send_early_and_in_pieces() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(TwccConfig {
            max_pending: 50,
            ..TwccConfig::default()
        });
        for i in 0..49u16 {
            r.record(t0, i);
        }
        assert_eq!(r.next_timeout(), Some(t0 + ms(100)));
        r.record(t0 + ms(1), 49);
        assert_eq!(r.next_timeout(), Some(t0 + ms(1)));
        let mut small = [0u8; 40];
        let n = r.poll(t0 + ms(1), &mut small, 1, 2).unwrap().unwrap();
        let (_, first) = decode(&small[..n]);
        assert!(first.len() < 50);
        assert_eq!(r.next_timeout(), Some(t0 + ms(1)));
        let (_, rest) = decode(&poll(&mut r, t0 + ms(1)).unwrap());
        assert_eq!(rest[0].0 as usize, first.len());
        assert_eq!(first.len() + rest.len(), 50);
    }

    #[test]
    fn a_jump_past_the_ring_reports_only_what_it_holds() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(TwccConfig {
            capacity: 16,
            ..TwccConfig::default()
        });
        r.record(t0, 0);
        r.record(t0, 100);
        assert_eq!(r.counters().dropped_unreported, 85);
        let (_, packets) = decode(&poll(&mut r, t0 + ms(100)).unwrap());
        assert_eq!(packets.len(), 16);
        assert_eq!(packets[0], (85, None));
        assert_eq!(packets[15], (100, Some(0)));
        r.record(t0, 50);
        assert_eq!(r.counters().too_old, 1);
    }

    #[test]
    fn the_rtcp_crate_reads_the_feedback() {
        use rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(TwccConfig::default());
        for i in 0..200u16 {
            if i % 7 != 3 {
                r.record(
                    t0 + Duration::from_micros(u64::from(i) * 1_700),
                    i.wrapping_add(65500),
                );
            }
        }
        let p = poll(&mut r, t0 + ms(500)).unwrap();
        let parsed = rtcp::packet::unmarshal(&mut &p[..]).unwrap();
        let cc = parsed[0]
            .as_any()
            .downcast_ref::<TransportLayerCc>()
            .unwrap();
        assert_eq!(
            (cc.base_sequence_number, cc.packet_status_count),
            (65500, 199)
        );
        let (_, ours) = decode(&p);
        assert_eq!(
            cc.recv_deltas.len(),
            ours.iter().filter(|p| p.1.is_some()).count()
        );
    }

    #[test]
    fn remb_cap_repeats_each_interval_and_zero_disables_it() {
        let t0 = Instant::now();
        let mut cap = RembCap::new(0, Duration::from_secs(1));
        let mut out = [0u8; 64];
        assert_eq!(cap.next_timeout(t0), None);
        assert_eq!(cap.poll(t0, &mut out, 1, &[5]), Ok(None));
        cap.set_cap(500);
        assert_eq!(cap.next_timeout(t0), Some(t0));
        let n = cap.poll(t0, &mut out, 1, &[5, 6]).unwrap().unwrap();
        let remb = Remb::parse(&out[..n]).unwrap();
        assert!(remb.bitrate_bps <= 500_000 && remb.bitrate_bps > 499_000);
        assert_eq!(remb.ssrcs().collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(cap.poll(t0 + ms(999), &mut out, 1, &[5]), Ok(None));
        assert!(
            cap.poll(t0 + ms(1000), &mut out, 1, &[5])
                .unwrap()
                .is_some()
        );
        cap.set_cap(800);
        assert!(
            cap.poll(t0 + ms(1001), &mut out, 1, &[5])
                .unwrap()
                .is_some(),
            "new cap at once"
        );
    }
}
