//! Reception statistics for receiver reports (RFC 3550 §6.4.2), per incoming SSRC: sequence
//! tracking with wrap and restart detection (A.1), cumulative and interval loss (A.3),
//! interarrival jitter (A.8) on the stream's RTP clock, and the LSR/DLSR echo of the sender's
//! last SR — what a publisher's loss-based estimator and RTT measurement read.
//!
//! And the other direction, [`RttEstimator`]: remembers the SRs the relay sent and turns the
//! LSR/DLSR of the reports that come back into an RTT (RFC 3550 §6.4.1: RTT = A − LSR − DLSR,
//! with A the arrival time of the report; here A − LSR is measured on our monotonic clock, by
//! matching LSR to the SR it echoes).

use std::time::{Duration, Instant};

use crate::wire::rtcp_report::{
    ReportBlock, compact_from_duration, compact_ntp, duration_from_compact,
};

/// RFC 3550 A.1: a jump forward of at most this many is loss, not a restart.
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a step back of at most this many is reordering, not a restart.
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u32 = 1 << 16;

#[derive(Debug, Clone)]
pub struct ReceiveStats {
    ssrc: u32,
    clock_rate: u32,
    started: bool,
    max_seq: u16,
    /// Wraps seen, times 2^16.
    cycles: u32,
    base_seq: u32,
    /// A.1's bad_seq: the number that confirms a restart; > 0xffff when none.
    bad_seq: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    epoch: Option<Instant>,
    last_transit: Option<u32>,
    last_timestamp: Option<u32>,
    /// Jitter × 16, A.8's fixed point.
    jitter_q4: u32,
    /// Compact NTP of the last SR from the source, and when it arrived.
    last_sender_report: Option<(u32, Instant)>,
}

impl ReceiveStats {
    /// The source these statistics are about.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn new(ssrc: u32, clock_rate: u32) -> Self {
        ReceiveStats {
            ssrc,
            clock_rate: clock_rate.max(1),
            started: false,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: SEQ_MOD + 1,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            epoch: None,
            last_transit: None,
            last_timestamp: None,
            jitter_q4: 0,
            last_sender_report: None,
        }
    }

    /// Records a packet; `retransmitted` for one restored from RTX (it counts as received but
    /// says nothing of the path's jitter, and arriving late it must not look like a restart).
    /// Returns false for a packet A.1 sets aside (the first of a suspected restart).
    pub fn on_packet(
        &mut self,
        now: Instant,
        sequence: u16,
        rtp_timestamp: u32,
        retransmitted: bool,
    ) -> bool {
        if !self.started {
            self.started = true;
            self.restart(sequence);
            self.received = 1;
            self.update_jitter(now, rtp_timestamp);
            return true;
        }
        let forward = sequence.wrapping_sub(self.max_seq);
        if retransmitted {
            // Counted only if it is behind the highest, where a repair belongs.
            let behind = (forward as i16) < 0;
            self.received += u64::from(behind);
            return behind;
        }
        if forward != 0 && forward < MAX_DROPOUT {
            if sequence < self.max_seq {
                self.cycles = self.cycles.wrapping_add(SEQ_MOD);
            }
            self.max_seq = sequence;
            self.update_jitter(now, rtp_timestamp);
        } else if forward != 0 && u32::from(forward) <= SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(sequence) != self.bad_seq {
                self.bad_seq = (u32::from(sequence) + 1) & (SEQ_MOD - 1);
                return false;
            }
            // Two in sequence after a jump: the source restarted its numbering.
            self.restart(sequence);
            self.last_transit = None;
            self.update_jitter(now, rtp_timestamp);
        }
        // Otherwise a duplicate or a reordered packet: counted, no jitter (A.1, A.8 notes).
        self.received += 1;
        true
    }

    /// Records an SR from the source, to echo as LSR with the delay since (DLSR).
    pub fn on_sender_report(&mut self, now: Instant, ntp_timestamp: u64) {
        self.last_sender_report = Some((compact_ntp(ntp_timestamp), now));
    }

    /// Interarrival jitter in RTP timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Expected minus received since the start (negative with duplicates).
    pub fn cumulative_lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// The report block for the interval since the previous one (A.3); `None` before the
    /// first packet.
    pub fn report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        if !self.started {
            return None;
        }
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (last_sender_report, delay) = self.last_sender_report.map_or((0, 0), |(lsr, at)| {
            (
                lsr,
                compact_from_duration(now.saturating_duration_since(at)),
            )
        });
        Some(ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self
                .cumulative_lost()
                .clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            extended_highest_sequence: self.cycles.wrapping_add(u32::from(self.max_seq)),
            jitter: self.jitter(),
            last_sender_report,
            delay_since_last_sender_report: delay,
        })
    }

    fn expected(&self) -> u64 {
        let extended_max = u64::from(self.cycles) + u64::from(self.max_seq);
        (extended_max + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// A.1 init_seq.
    fn restart(&mut self, sequence: u16) {
        self.base_seq = u32::from(sequence);
        self.max_seq = sequence;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    /// A.8, for in-order packets only, and (as libwebrtc) only for a new RTP timestamp: the
    /// packets of one video frame share a timestamp but leave the sender spread out, which is
    /// pacing, not network jitter.
    fn update_jitter(&mut self, now: Instant, rtp_timestamp: u32) {
        if self.last_timestamp == Some(rtp_timestamp) {
            return;
        }
        self.last_timestamp = Some(rtp_timestamp);
        let epoch = *self.epoch.get_or_insert(now);
        let elapsed = now.saturating_duration_since(epoch).as_nanos();
        let arrival = (elapsed * u128::from(self.clock_rate) / 1_000_000_000) as u32;
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if let Some(last) = self.last_transit {
            let d = i64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            let jitter = i64::from(self.jitter_q4);
            self.jitter_q4 = (jitter + d - ((jitter + 8) >> 4)).clamp(0, u32::MAX as i64) as u32;
        }
        self.last_transit = Some(transit);
    }
}

/// How many recent SRs are remembered for matching; one a second makes this several seconds.
const SENDER_REPORTS_REMEMBERED: usize = 8;

/// RTT from receiver reports to the SRs we sent.
#[derive(Debug, Clone, Default)]
pub struct RttEstimator {
    sent: [Option<(u32, Instant)>; SENDER_REPORTS_REMEMBERED],
    next: usize,
    rtt: Option<Duration>,
}

impl RttEstimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an SR sent at `now` with this NTP timestamp.
    pub fn on_sender_report_sent(&mut self, now: Instant, ntp_timestamp: u64) {
        self.sent[self.next] = Some((compact_ntp(ntp_timestamp), now));
        self.next = (self.next + 1) % SENDER_REPORTS_REMEMBERED;
    }

    /// Takes a report block about our stream; returns the RTT it measures, if its LSR echoes
    /// an SR we remember (LSR 0 means the peer has none yet). Floored at 1 ms, as libwebrtc
    /// does, since a peer's delay rounding can make it come out at or below zero.
    pub fn on_report_block(&mut self, now: Instant, block: &ReportBlock) -> Option<Duration> {
        if block.last_sender_report == 0 {
            return None;
        }
        let (_, sent_at) = self
            .sent
            .iter()
            .flatten()
            .find(|(lsr, _)| *lsr == block.last_sender_report)?;
        let held = duration_from_compact(block.delay_since_last_sender_report);
        let rtt = now
            .saturating_duration_since(*sent_at)
            .saturating_sub(held)
            .max(Duration::from_millis(1));
        self.rtt = Some(rtt);
        Some(rtt)
    }

    /// The latest measurement.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Packets every 20 ms with matching 90 kHz timestamps, `skip` deciding which are lost.
    fn feed(
        s: &mut ReceiveStats,
        t0: Instant,
        seqs: std::ops::Range<u32>,
        skip: impl Fn(u32) -> bool,
    ) {
        for i in seqs {
            if !skip(i) {
                s.on_packet(t0 + ms(u64::from(i) * 20), i as u16, i * 1800, false);
            }
        }
    }

    #[test]
    fn a_clean_stream_reports_no_loss_and_no_jitter() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(0xabc, 90_000);
        assert_eq!(s.report_block(t0), None);
        feed(&mut s, t0, 0..100, |_| false);
        let b = s.report_block(t0 + ms(2000)).unwrap();
        assert_eq!((b.ssrc, b.fraction_lost, b.cumulative_lost), (0xabc, 0, 0));
        assert_eq!((b.extended_highest_sequence, b.jitter), (99, 0));
        assert_eq!(
            (b.last_sender_report, b.delay_since_last_sender_report),
            (0, 0)
        );
    }

    #[test]
    fn loss_is_reported_per_interval_and_cumulatively() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(1, 90_000);
        feed(&mut s, t0, 0..100, |i| i % 10 == 5);
        let b = s.report_block(t0).unwrap();
        assert_eq!(
            (b.fraction_lost, b.cumulative_lost),
            (25, 10),
            "10 of 100 is 25/256"
        );
        feed(&mut s, t0, 100..200, |_| false);
        let b = s.report_block(t0).unwrap();
        assert_eq!((b.fraction_lost, b.cumulative_lost), (0, 10));
        let b = s.report_block(t0).unwrap();
        assert_eq!(b.fraction_lost, 0, "an empty interval is no loss");
    }

    #[test]
    fn sequence_wrap_extends_the_highest() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(1, 90_000);
        for (i, seq) in (65530..=65535u32).chain(0..=10).enumerate() {
            s.on_packet(t0 + ms(i as u64 * 20), seq as u16, i as u32 * 1800, false);
        }
        let b = s.report_block(t0).unwrap();
        assert_eq!(
            (b.extended_highest_sequence, b.cumulative_lost),
            (65536 + 10, 0)
        );
    }

    #[test]
    fn jitter_follows_a8() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(1, 90_000);
        // Every other packet 10 ms late: each transit differs from the last by 900 units.
        for i in 0..400u32 {
            let late = if i % 2 == 1 { 10 } else { 0 };
            s.on_packet(t0 + ms(u64::from(i) * 20 + late), i as u16, i * 1800, false);
        }
        assert!((880..=900).contains(&s.jitter()), "jitter {}", s.jitter());
        // Packets of one frame (same timestamp) spread by pacing do not count.
        let mut paced = ReceiveStats::new(1, 90_000);
        for i in 0..100u32 {
            for k in 0..5u32 {
                let seq = (i * 5 + k) as u16;
                paced.on_packet(
                    t0 + ms(u64::from(i) * 33 + u64::from(k) * 3),
                    seq,
                    i * 3000 - i * 30,
                    false,
                );
            }
        }
        assert_eq!(paced.jitter(), 0);
    }

    #[test]
    fn retransmissions_count_as_received_even_far_behind() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(1, 90_000);
        feed(&mut s, t0, 0..500, |i| i == 100 || i == 450);
        assert_eq!(s.cumulative_lost(), 2);
        let jitter = s.jitter();
        // 400 behind: A.1 would take it for a restart's first packet; a repair is not.
        assert!(s.on_packet(t0 + ms(20_000), 100, 0, true));
        assert!(s.on_packet(t0 + ms(20_000), 450, 0, true));
        assert!(
            !s.on_packet(t0 + ms(20_000), 600, 0, true),
            "ahead of the highest"
        );
        assert_eq!((s.cumulative_lost(), s.jitter()), (0, jitter));
    }

    #[test]
    fn a_restarted_numbering_is_confirmed_by_two_packets_in_sequence() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(1, 90_000);
        feed(&mut s, t0, 0..50, |_| false);
        assert!(
            !s.on_packet(t0, 30_000, 0, false),
            "first after a jump: set aside"
        );
        assert!(s.on_packet(t0, 51, 0, false), "the old stream goes on");
        assert!(!s.on_packet(t0, 30_000, 0, false));
        assert!(s.on_packet(t0, 30_001, 0, false), "confirmed: restart");
        assert!(s.on_packet(t0, 30_002, 0, false));
        let b = s.report_block(t0).unwrap();
        assert_eq!(
            (b.extended_highest_sequence, b.cumulative_lost),
            (30_002, 0)
        );
    }

    #[test]
    fn lsr_and_dlsr_echo_the_last_sender_report() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(1, 48_000);
        s.on_packet(t0, 1, 0, false);
        s.on_sender_report(t0, 0x1122_3344_5566_7788);
        let b = s.report_block(t0 + ms(1500)).unwrap();
        assert_eq!(b.last_sender_report, 0x3344_5566);
        assert_eq!(
            b.delay_since_last_sender_report, 0x0001_8000,
            "1.5 s in 1/65536 s"
        );
    }

    #[test]
    fn rtt_from_a_report_that_echoes_our_sender_report() {
        let t0 = Instant::now();
        let mut r = RttEstimator::new();
        r.on_sender_report_sent(t0, 0x0000_1111_2222_0000);
        r.on_sender_report_sent(t0 + ms(1000), 0x0000_3333_4444_0000);
        let mut block = ReportBlock {
            last_sender_report: 0x1111_2222,
            delay_since_last_sender_report: compact_from_duration(ms(100)),
            ..ReportBlock::default()
        };
        let rtt = r.on_report_block(t0 + ms(300), &block).unwrap();
        assert!(rtt.abs_diff(ms(200)) < Duration::from_micros(20), "{rtt:?}");
        assert_eq!(r.rtt(), Some(rtt));
        block.last_sender_report = 0x5555_6666;
        assert_eq!(
            r.on_report_block(t0 + ms(300), &block),
            None,
            "not one of ours"
        );
        block.last_sender_report = 0;
        assert_eq!(
            r.on_report_block(t0 + ms(300), &block),
            None,
            "no SR received yet"
        );
        block.last_sender_report = 0x3333_4444;
        block.delay_since_last_sender_report = compact_from_duration(ms(900));
        assert_eq!(
            r.on_report_block(t0 + ms(1100), &block),
            Some(ms(1)),
            "floored"
        );
        for i in 0..8u64 {
            r.on_sender_report_sent(t0, (i + 1) << 16);
        }
        block.delay_since_last_sender_report = 0;
        assert_eq!(
            r.on_report_block(t0, &block),
            None,
            "forgotten after 8 newer ones"
        );
    }
}
