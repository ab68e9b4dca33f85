//! The loss-based bound as libwebrtc's classic SendSideBandwidthEstimation: over the packets
//! reported in the last second, loss under 2 % lets the rate grow to 1.08 × its lowest value of
//! the last second (+1 kbit/s), 2–10 % holds it, and more than 10 % cuts it by half the loss
//! fraction, at most once per 300 ms + RTT. The result never exceeds the delay-based rate, so
//! this is also the final estimate. It is what holds a policed link (drops above a rate, no
//! queueing delay for the delay detector to see) near the police rate.
//!
//! Simplified from libwebrtc: loss counts come from the transport-wide feedback alone (no RTCP
//! receiver reports), over a 1 s window of feedback time instead of per-report fractions; after
//! a cut the window starts afresh so the same losses do not cut twice.

const BUCKET_US: i64 = 100_000;
const BUCKETS: usize = 10;
/// Fewer packets than this in the window say too little about loss to act on.
const MIN_PACKETS: u32 = 20;
const LOW_LOSS: f64 = 0.02;
const HIGH_LOSS: f64 = 0.10;
const INCREASE_FACTOR: f64 = 1.08;
const INCREASE_SLACK_BPS: f64 = 1_000.0;
const DECREASE_INTERVAL_US: i64 = 300_000;
const THROUGHPUT_HEADROOM: f64 = 1.5;
const THROUGHPUT_SLACK_BPS: f64 = 10_000.0;

/// Ring of per-100 ms values over the last second, indexed by time.
#[derive(Debug, Clone)]
struct Window<T: Copy> {
    values: [T; BUCKETS],
    newest: Option<i64>,
    empty: T,
}

impl<T: Copy> Window<T> {
    fn new(empty: T) -> Self {
        Window {
            values: [empty; BUCKETS],
            newest: None,
            empty,
        }
    }

    /// The bucket for `now_us`, clearing those skipped since the last call.
    fn at(&mut self, now_us: i64) -> &mut T {
        let index = now_us.div_euclid(BUCKET_US);
        let newest = self.newest.unwrap_or(index - BUCKETS as i64);
        for skipped in (newest + 1)..=index.min(newest + BUCKETS as i64) {
            self.values[skipped.rem_euclid(BUCKETS as i64) as usize] = self.empty;
        }
        let newest = newest.max(index);
        self.newest = Some(newest);
        &mut self.values[newest.rem_euclid(BUCKETS as i64) as usize]
    }

    fn clear(&mut self) {
        self.values = [self.empty; BUCKETS];
    }
}

#[derive(Debug, Clone)]
pub(super) struct LossBasedBound {
    bitrate_bps: f64,
    min_bps: f64,
    max_bps: f64,
    /// (received, lost) per bucket of feedback time.
    reported: Window<(u32, u32)>,
    /// The lowest rate in each bucket, for "1.08 × the lowest of the last second".
    lowest: Window<f64>,
    /// The fraction last acted on; `None` after a cut until enough new packets are reported.
    fraction: Option<f64>,
    last_decrease_us: Option<i64>,
}

impl LossBasedBound {
    pub(super) fn new(initial_bps: u64, min_bps: u64, max_bps: u64) -> Self {
        LossBasedBound {
            bitrate_bps: initial_bps.clamp(min_bps, max_bps) as f64,
            min_bps: min_bps as f64,
            max_bps: max_bps as f64,
            reported: Window::new((0, 0)),
            lowest: Window::new(f64::INFINITY),
            // Until told otherwise the path is assumed clean, as libwebrtc starts.
            fraction: Some(0.0),
            last_decrease_us: None,
        }
    }

    pub(super) fn bitrate_bps(&self) -> u64 {
        self.bitrate_bps as u64
    }

    /// When heavy loss last cut the bound.
    pub(super) fn last_decrease_us(&self) -> Option<i64> {
        self.last_decrease_us
    }

    /// The loss fraction of the last second's reported packets (0 while too few).
    pub(super) fn loss_fraction(&self) -> f64 {
        let (received, lost) = self.totals();
        if received + lost < MIN_PACKETS {
            0.0
        } else {
            f64::from(lost) / f64::from(received + lost)
        }
    }

    pub(super) fn on_packet(&mut self, now_us: i64, received: bool) {
        let bucket = self.reported.at(now_us);
        if received {
            bucket.0 += 1;
        } else {
            bucket.1 += 1;
        }
    }

    /// A probe proved the path carries `bps`.
    pub(super) fn set_estimate(&mut self, now_us: i64, bps: u64) {
        self.bitrate_bps = (bps as f64).clamp(self.min_bps, self.max_bps);
        self.lowest.clear();
        *self.lowest.at(now_us) = self.bitrate_bps;
    }

    /// One step per feedback; returns the estimate: this bound, never above `delay_based_bps`.
    /// Like the delay-based rate it grows only to 1.5 × the acknowledged throughput
    /// (`acked_bps`) + 10 kbit/s: a sender that backed off after loss learns nothing about the
    /// path by sending less, and growing back regardless would walk it into the same loss.
    pub(super) fn update(
        &mut self,
        now_us: i64,
        delay_based_bps: u64,
        acked_bps: Option<u64>,
        rtt_us: i64,
    ) -> u64 {
        let (received, lost) = self.totals();
        if received + lost >= MIN_PACKETS {
            self.fraction = Some(f64::from(lost) / f64::from(received + lost));
        }
        // The lowest rate of the last second, this bucket included, before changing it.
        let current = self.bitrate_bps;
        let slot = self.lowest.at(now_us);
        *slot = slot.min(current);
        let lowest = self.lowest.values.iter().copied().fold(current, f64::min);
        let mut target = current;
        match self.fraction {
            Some(f) if f <= LOW_LOSS => {
                let used = acked_bps.map_or(f64::INFINITY, |a| {
                    THROUGHPUT_HEADROOM * a as f64 + THROUGHPUT_SLACK_BPS
                });
                target = (lowest * INCREASE_FACTOR + INCREASE_SLACK_BPS).min(used.max(current));
            }
            Some(f) if f > HIGH_LOSS => {
                let due = self
                    .last_decrease_us
                    .is_none_or(|t| now_us - t >= DECREASE_INTERVAL_US + rtt_us.max(0));
                if due {
                    // Nor above what got through: a policer passes its rate and drops the
                    // rest, and halving the loss fraction off a rate far above it would
                    // take many cuts to get there (libwebrtc's loss-based v2 bounds by the
                    // acknowledged rate the same way).
                    let delivered = acked_bps.map_or(f64::INFINITY, |a| a as f64);
                    target = (current * (1.0 - 0.5 * f)).min(delivered.max(self.min_bps));
                    self.last_decrease_us = Some(now_us);
                    self.fraction = None;
                    self.reported.clear();
                }
            }
            _ => {}
        }
        self.bitrate_bps = target
            .min(delay_based_bps as f64)
            .clamp(self.min_bps, self.max_bps);
        let slot = self.lowest.at(now_us);
        *slot = slot.min(self.bitrate_bps);
        self.bitrate_bps()
    }

    fn totals(&self) -> (u32, u32) {
        self.reported
            .values
            .iter()
            .fold((0, 0), |(r, l), &(br, bl)| (r + br, l + bl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: i64 = 100_000;

    /// `seconds` of feedback every 100 ms, each reporting 20 packets of which `lost` are lost.
    fn run(bound: &mut LossBasedBound, from_us: i64, seconds: i64, lost: u32, delay: u64) -> i64 {
        let mut now = from_us;
        for _ in 0..seconds * 10 {
            now += 100_000;
            for i in 0..20 {
                bound.on_packet(now, i >= lost);
            }
            bound.update(now, delay, None, RTT);
        }
        now
    }

    #[test]
    fn low_loss_grows_about_8_percent_a_second_up_to_the_delay_based_rate() {
        let mut b = LossBasedBound::new(1_000_000, 10_000, 100_000_000);
        run(&mut b, 0, 3, 0, 10_000_000);
        let got = b.bitrate_bps() as f64;
        // 1.08 over the lowest of the last second, compounding once a second.
        assert!((1_200_000.0..1_350_000.0).contains(&got), "{got}");
        run(&mut b, 3_000_000, 30, 0, 1_500_000);
        assert_eq!(b.bitrate_bps(), 1_500_000);
    }

    #[test]
    fn moderate_loss_holds() {
        let mut b = LossBasedBound::new(1_000_000, 10_000, 100_000_000);
        run(&mut b, 0, 5, 1, 10_000_000); // 5 %
        assert_eq!(b.bitrate_bps(), 1_000_000);
        assert!((b.loss_fraction() - 0.05).abs() < 1e-9);
    }

    #[test]
    fn heavy_loss_cuts_by_half_the_loss_at_most_once_per_interval() {
        let mut b = LossBasedBound::new(1_000_000, 10_000, 100_000_000);
        // 20 % loss for 2 s: a 10 % cut each 400 ms (300 ms + RTT), each on fresh reports:
        // at 0.1, 0.5, 0.9, 1.3 and 1.7 s.
        run(&mut b, 0, 2, 4, 10_000_000);
        let expected = 1_000_000.0 * 0.9f64.powi(5);
        assert!(
            (b.bitrate_bps() as f64 - expected).abs() < 2.0,
            "{}",
            b.bitrate_bps()
        );
    }

    #[test]
    fn it_does_not_grow_past_what_the_sender_uses() {
        let mut b = LossBasedBound::new(1_000_000, 10_000, 100_000_000);
        b.update(0, 10_000_000, Some(300_000), RTT);
        assert_eq!(
            b.bitrate_bps(),
            1_000_000,
            "above 1.5 × 300k + 10k: held, not cut"
        );
        let mut b = LossBasedBound::new(400_000, 10_000, 100_000_000);
        for i in 1..=50 {
            b.update(i * 100_000, 10_000_000, Some(300_000), RTT);
        }
        assert_eq!(b.bitrate_bps(), 460_000);
    }

    #[test]
    fn the_delay_based_rate_caps_it_and_a_probe_lifts_it() {
        let mut b = LossBasedBound::new(1_000_000, 10_000, 100_000_000);
        assert_eq!(b.update(0, 600_000, None, RTT), 600_000);
        b.set_estimate(100_000, 3_000_000);
        assert_eq!(b.bitrate_bps(), 3_000_000);
        // Grows from the probed rate, not from the old lowest.
        assert!(b.update(200_000, 10_000_000, None, RTT) > 3_000_000);
    }
}
