//! What the relay sent a player, by transport-wide sequence number, so a feedback message can
//! be turned into per-packet results (send time, arrival time or lost, size). In the manner of
//! libwebrtc's TransportFeedbackAdapter: 16-bit numbers and the 24-bit reference time are
//! unwrapped across feedbacks; a packet reported lost stays in the history because a later
//! feedback may report it received; a packet reported received is never reported again.
//! Feedback for numbers never sent, overwritten or already reported is counted and ignored, so
//! duplicated, stale or forged feedback cannot move the estimate.

use crate::wire::twcc::{DELTA_TICK_US, PacketStatus, REFERENCE_TICK_US, TransportFeedback};

/// Slots in the ring: at 1,000 packets a second (about 10 Mbit/s, four times a 720p
/// encoding) that is 1 s of packets, ten times the feedback interval; 32 KiB per player.
pub(super) const HISTORY_CAPACITY: usize = 1024;
/// An extended number far from 0, so going back never underflows.
const EXTENDED_START: u64 = 1 << 32;
const REFERENCE_MODULUS: i64 = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Unreported,
    Lost,
    Received,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Extended sequence number; `u64::MAX` for a slot never used.
    sequence: u64,
    sent_us: i64,
    size: u32,
    probe_cluster: u16,
    padding: bool,
    report: Report,
}

const EMPTY: Slot = Slot {
    sequence: u64::MAX,
    sent_us: 0,
    size: 0,
    probe_cluster: 0,
    padding: false,
    report: Report::Unreported,
};

/// One packet newly reported by a feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PacketResult {
    pub(super) sequence: u64,
    /// On the sender's clock, µs.
    pub(super) sent_us: i64,
    /// On the receiver's clock (only differences mean anything), µs; `None` when lost.
    pub(super) arrival_us: Option<i64>,
    pub(super) size: u32,
    /// The probe cluster the packet belonged to; 0 for none.
    pub(super) probe_cluster: u16,
    /// Sent as probe padding, not media.
    pub(super) padding: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct HistoryCounters {
    /// Feedback that reported nothing new (duplicate, stale, or for numbers never sent).
    pub(super) feedback_ignored: u64,
    /// Statuses for numbers never sent or no longer in the ring.
    pub(super) unknown: u64,
    /// Statuses already reported (received twice, or lost twice).
    pub(super) duplicates: u64,
}

#[derive(Debug, Clone)]
pub(super) struct SendHistory {
    ring: Box<[Slot]>,
    mask: u64,
    highest: Option<u64>,
    /// The raw and the extended reference time of the last feedback that reported something.
    reference: Option<(u32, i64)>,
    counters: HistoryCounters,
}

impl SendHistory {
    /// `capacity` is rounded up to a power of two.
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(16, 1 << 15).next_power_of_two();
        SendHistory {
            ring: vec![EMPTY; capacity].into_boxed_slice(),
            mask: capacity as u64 - 1,
            highest: None,
            reference: None,
            counters: HistoryCounters::default(),
        }
    }

    pub(super) fn counters(&self) -> &HistoryCounters {
        &self.counters
    }

    /// Records a packet sent at `now_us` carrying transport-wide number `sequence`.
    pub(super) fn on_sent(
        &mut self,
        now_us: i64,
        sequence: u16,
        size: usize,
        probe_cluster: u16,
        padding: bool,
    ) {
        let extended = match self.highest {
            None => EXTENDED_START + u64::from(sequence),
            Some(h) => h.saturating_add_signed(i64::from(sequence.wrapping_sub(h as u16) as i16)),
        };
        self.highest = Some(self.highest.map_or(extended, |h| h.max(extended)));
        self.ring[(extended & self.mask) as usize] = Slot {
            sequence: extended,
            sent_us: now_us,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            probe_cluster,
            padding,
            report: Report::Unreported,
        };
    }

    /// Calls `each` for every packet this feedback reports for the first time (or reports
    /// received after an earlier one said lost), in sequence order; returns how many.
    pub(super) fn on_feedback(
        &mut self,
        feedback: &TransportFeedback<'_>,
        mut each: impl FnMut(PacketResult),
    ) -> usize {
        let Some(highest) = self.highest else {
            self.counters.feedback_ignored += 1;
            return 0;
        };
        let raw_reference = feedback.reference_time & 0x00ff_ffff;
        let extended_reference = match self.reference {
            None => i64::from(raw_reference),
            Some((raw, extended)) => {
                let diff =
                    (i64::from(raw_reference) - i64::from(raw)).rem_euclid(REFERENCE_MODULUS);
                let signed = if diff >= REFERENCE_MODULUS / 2 {
                    diff - REFERENCE_MODULUS
                } else {
                    diff
                };
                extended + signed
            }
        };
        let base = highest.saturating_add_signed(i64::from(
            feedback.base_sequence.wrapping_sub(highest as u16) as i16,
        ));
        let oldest_kept = highest.saturating_sub(self.mask);
        let mut arrival_us = extended_reference * REFERENCE_TICK_US;
        let mut reported = 0;
        let mut covered = 0u64;
        for packet in feedback.packets() {
            let sequence = base + covered;
            covered += 1;
            if sequence > highest {
                // Numbers never sent: the rest of the message cannot be ours either.
                self.counters.unknown += u64::from(feedback.status_count) - (covered - 1);
                break;
            }
            let arrival = match packet.status {
                PacketStatus::NotReceived => None,
                PacketStatus::Received { delta_ticks } => {
                    arrival_us += i64::from(delta_ticks) * DELTA_TICK_US;
                    Some(arrival_us)
                }
            };
            let slot = &mut self.ring[(sequence & self.mask) as usize];
            if sequence < oldest_kept || slot.sequence != sequence {
                self.counters.unknown += 1;
                continue;
            }
            let report = match (slot.report, arrival) {
                (Report::Received, _) | (Report::Lost, None) => {
                    self.counters.duplicates += 1;
                    continue;
                }
                (_, None) => Report::Lost,
                (_, Some(_)) => Report::Received,
            };
            slot.report = report;
            reported += 1;
            each(PacketResult {
                sequence,
                sent_us: slot.sent_us,
                arrival_us: arrival,
                size: slot.size,
                probe_cluster: slot.probe_cluster,
                padding: slot.padding,
            });
        }
        if reported == 0 {
            self.counters.feedback_ignored += 1;
        } else {
            // Only a feedback that matched something we sent may move the reference clock, so
            // garbage cannot shift it.
            self.reference = Some((raw_reference, extended_reference));
        }
        reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::twcc::{FeedbackHeader, write_feedback};

    /// A feedback for numbers from `base` with these arrival times (µs on the receiver clock).
    fn feedback(base: u16, count: u8, arrivals: &[Option<i64>]) -> Vec<u8> {
        let mut out = [0u8; 1500];
        let header = FeedbackHeader {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_sequence: base,
            feedback_count: count,
        };
        let written = write_feedback(&mut out, &header, arrivals.iter().copied()).unwrap();
        assert_eq!(written.packets as usize, arrivals.len());
        out[..written.len].to_vec()
    }

    fn results(history: &mut SendHistory, packet: &[u8]) -> Vec<PacketResult> {
        let fb = TransportFeedback::parse(packet).unwrap();
        let mut got = Vec::new();
        let n = history.on_feedback(&fb, |r| got.push(r));
        assert_eq!(n, got.len());
        got
    }

    #[test]
    fn feedback_gives_send_and_arrival_times_across_the_sequence_wrap() {
        let mut h = SendHistory::new(64);
        for (i, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            h.on_sent(i as i64 * 1000, seq, 1000 + i, 0, false);
        }
        let got = results(
            &mut h,
            &feedback(
                65534,
                0,
                &[Some(5_000_000), None, Some(5_002_000), Some(5_002_500)],
            ),
        );
        let seen: Vec<_> = got
            .iter()
            .map(|r| (r.sent_us, r.arrival_us, r.size))
            .collect();
        // The first feedback's reference time starts the receiver clock at its raw value, so
        // arrivals on a 250 µs grid come back exactly.
        let at = Some;
        assert_eq!(
            seen,
            vec![
                (0, at(5_000_000), 1000),
                (1000, None, 1001),
                (2000, at(5_002_000), 1002),
                (3000, at(5_002_500), 1003),
            ]
        );
        assert_eq!(got[3].sequence, got[0].sequence + 3);
    }

    #[test]
    fn reference_time_unwraps_across_its_24_bit_wrap() {
        let mut h = SendHistory::new(64);
        h.on_sent(0, 10, 100, 0, false);
        h.on_sent(1, 11, 100, 0, false);
        // Just below the wrap, then just after it: arrivals must stay 128 ms apart.
        let wrap_us = REFERENCE_MODULUS * REFERENCE_TICK_US;
        let first = results(
            &mut h,
            &feedback(10, 0, &[Some(wrap_us - REFERENCE_TICK_US)]),
        );
        let second = results(
            &mut h,
            &feedback(11, 1, &[Some(wrap_us + REFERENCE_TICK_US)]),
        );
        let gap = second[0].arrival_us.unwrap() - first[0].arrival_us.unwrap();
        assert_eq!(gap, 2 * REFERENCE_TICK_US);
    }

    #[test]
    fn a_packet_reported_lost_can_later_be_reported_received_but_nothing_twice() {
        let mut h = SendHistory::new(64);
        for seq in 0..3u16 {
            h.on_sent(i64::from(seq), seq, 500, 0, false);
        }
        let first = feedback(0, 0, &[Some(1_000), None, Some(3_000)]);
        assert_eq!(results(&mut h, &first).len(), 3);
        // The same message again: nothing new, counted, and ignored as a whole.
        assert!(results(&mut h, &first).is_empty());
        assert_eq!(h.counters().duplicates, 3);
        assert_eq!(h.counters().feedback_ignored, 1);
        // The receiver saw 1 late and reports it again.
        let late = results(&mut h, &feedback(1, 1, &[Some(4_000)]));
        assert_eq!(late.len(), 1);
        assert_eq!((late[0].sent_us, late[0].arrival_us.is_some()), (1, true));
    }

    #[test]
    fn feedback_for_numbers_never_sent_or_long_gone_is_ignored() {
        let mut h = SendHistory::new(16);
        let fb = feedback(0, 0, &[Some(1_000)]);
        assert!(results(&mut h, &fb).is_empty(), "nothing sent yet");
        for seq in 0..40u16 {
            h.on_sent(i64::from(seq), seq, 500, 0, false);
        }
        // 0 was overwritten by 32; 100..102 were never sent.
        assert!(results(&mut h, &fb).is_empty());
        assert!(results(&mut h, &feedback(100, 1, &[Some(1), Some(2), None])).is_empty());
        assert_eq!(h.counters().unknown, 4);
        assert_eq!(h.counters().feedback_ignored, 3);
        // The ring still answers for what it holds.
        assert_eq!(results(&mut h, &feedback(39, 2, &[Some(9_000)])).len(), 1);
    }

    #[test]
    fn a_feedback_running_past_the_highest_sent_stops_there() {
        let mut h = SendHistory::new(64);
        h.on_sent(0, 7, 500, 3, false);
        let got = results(
            &mut h,
            &feedback(7, 0, &[Some(1_000), Some(2_000), Some(3_000)]),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].probe_cluster, 3);
        assert_eq!(h.counters().unknown, 2);
    }
}
