//! The delay-based rate as libwebrtc's AimdRateControl: while the delay detector says Normal
//! the rate grows, multiplicatively (8 % a second) while no capacity is known and additively
//! (about a packet per response time) near the level of the last backoff; on Overusing it backs
//! off to 0.85 × the acknowledged throughput (what the path delivered, not what was sent);
//! Underusing holds, letting the queue drain. Increases never lift the rate above 1.5 × the
//! acknowledged throughput + 10 kbit/s: a sender that does not use its rate learns nothing about
//! the path, so only a probe may prove more ([`AimdRateControl::set_estimate`]).

use super::delay::BandwidthUsage;

const BETA: f64 = 0.85;
const MULTIPLICATIVE_PER_SECOND: f64 = 1.08;
const MIN_INCREASE_BPS: f64 = 1_000.0;
const MIN_ADDITIVE_BPS_PER_SECOND: f64 = 4_000.0;
const THROUGHPUT_HEADROOM: f64 = 1.5;
const THROUGHPUT_SLACK_BPS: f64 = 10_000.0;
const PACKET_BITS: f64 = 1200.0 * 8.0;
const FRAME_RATE: f64 = 30.0;
/// Smoothing of the capacity seen at each backoff.
const CAPACITY_ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateState {
    Hold,
    Increase,
    Decrease,
}

/// The link capacity as the acknowledged throughput at each overuse, averaged, with its spread
/// (libwebrtc's LinkCapacityEstimator): near it the rate grows additively.
#[derive(Debug, Clone, Copy)]
struct LinkCapacity {
    estimate_kbps: Option<f64>,
    deviation: f64,
}

impl LinkCapacity {
    fn new() -> Self {
        LinkCapacity {
            estimate_kbps: None,
            deviation: 0.4,
        }
    }

    fn on_overuse(&mut self, acked_bps: f64) {
        let sample = acked_bps / 1000.0;
        let estimate = self.estimate_kbps.map_or(sample, |e| {
            (1.0 - CAPACITY_ALPHA) * e + CAPACITY_ALPHA * sample
        });
        let norm = estimate.max(1.0);
        let error = estimate - sample;
        self.deviation = ((1.0 - CAPACITY_ALPHA) * self.deviation
            + CAPACITY_ALPHA * error * error / norm)
            .clamp(0.4, 2.5);
        self.estimate_kbps = Some(estimate);
    }

    fn spread_kbps(&self, estimate: f64) -> f64 {
        3.0 * (self.deviation * estimate.max(1.0)).sqrt()
    }

    fn upper_bps(&self) -> Option<f64> {
        self.estimate_kbps
            .map(|e| (e + self.spread_kbps(e)) * 1000.0)
    }

    fn lower_bps(&self) -> Option<f64> {
        self.estimate_kbps
            .map(|e| (e - self.spread_kbps(e)).max(0.0) * 1000.0)
    }
}

#[derive(Debug, Clone)]
pub(super) struct AimdRateControl {
    bitrate_bps: f64,
    min_bps: f64,
    max_bps: f64,
    state: RateState,
    last_change_us: Option<i64>,
    last_decrease_us: Option<i64>,
    capacity: LinkCapacity,
}

impl AimdRateControl {
    pub(super) fn new(initial_bps: u64, min_bps: u64, max_bps: u64) -> Self {
        AimdRateControl {
            bitrate_bps: initial_bps.clamp(min_bps, max_bps) as f64,
            min_bps: min_bps as f64,
            max_bps: max_bps as f64,
            state: RateState::Hold,
            last_change_us: None,
            last_decrease_us: None,
            capacity: LinkCapacity::new(),
        }
    }

    pub(super) fn bitrate_bps(&self) -> u64 {
        self.bitrate_bps as u64
    }

    /// A probe proved the path carries `bps`.
    pub(super) fn set_estimate(&mut self, now_us: i64, bps: u64) {
        self.bitrate_bps = (bps as f64).clamp(self.min_bps, self.max_bps);
        self.last_change_us = Some(now_us);
    }

    /// One step per feedback: `acked_bps` is the acknowledged throughput when known (the level
    /// to back off to), `used_bps` the part of it the sender sent of its own accord, without
    /// probe padding (the base of the ceiling on increases); `rtt_us` the round-trip estimate.
    pub(super) fn update(
        &mut self,
        now_us: i64,
        usage: BandwidthUsage,
        acked_bps: Option<u64>,
        used_bps: Option<u64>,
        rtt_us: i64,
    ) -> u64 {
        self.state = match (usage, self.state) {
            (BandwidthUsage::Normal, RateState::Hold) => {
                self.last_change_us = Some(now_us);
                RateState::Increase
            }
            (BandwidthUsage::Normal, state) => state,
            (BandwidthUsage::Overusing, _) => RateState::Decrease,
            (BandwidthUsage::Underusing, _) => RateState::Hold,
        };
        let acked = acked_bps.map(|b| b as f64);
        match self.state {
            RateState::Hold => {}
            RateState::Increase => self.increase(now_us, acked, used_bps.map(|b| b as f64), rtt_us),
            RateState::Decrease => self.decrease(now_us, acked, rtt_us),
        }
        self.bitrate_bps = self.bitrate_bps.clamp(self.min_bps, self.max_bps);
        self.bitrate_bps()
    }

    fn increase(&mut self, now_us: i64, acked: Option<f64>, used: Option<f64>, rtt_us: i64) {
        if let (Some(acked), Some(upper)) = (acked, self.capacity.upper_bps())
            && acked > upper
        {
            // The path now carries more than the capacity we learned: forget it.
            self.capacity = LinkCapacity::new();
        }
        let limit = used.map_or(f64::INFINITY, |a| {
            THROUGHPUT_HEADROOM * a + THROUGHPUT_SLACK_BPS
        });
        let elapsed_s = self
            .last_change_us
            .map_or(0.0, |t| ((now_us - t) as f64 / 1e6).clamp(0.0, 1.0));
        if self.bitrate_bps < limit {
            let increase = if self.capacity.estimate_kbps.is_some() {
                elapsed_s * self.near_capacity_increase_per_second(rtt_us)
            } else {
                let factor = MULTIPLICATIVE_PER_SECOND.powf(elapsed_s) - 1.0;
                (self.bitrate_bps * factor).max(MIN_INCREASE_BPS)
            };
            self.bitrate_bps = (self.bitrate_bps + increase).min(limit);
        }
        self.last_change_us = Some(now_us);
    }

    /// About one average packet per response time (an RTT plus 100 ms, doubled), as libwebrtc.
    fn near_capacity_increase_per_second(&self, rtt_us: i64) -> f64 {
        let frame_bits = self.bitrate_bps / FRAME_RATE;
        let packets_per_frame = (frame_bits / PACKET_BITS).ceil().max(1.0);
        let packet_bits = frame_bits / packets_per_frame;
        let response_s = 2.0 * (rtt_us as f64 / 1e6 + 0.1);
        (packet_bits / response_s).max(MIN_ADDITIVE_BPS_PER_SECOND)
    }

    fn decrease(&mut self, now_us: i64, acked: Option<f64>, rtt_us: i64) {
        // One backoff per round trip: the feedback after a backoff still shows the old queue.
        if let Some(last) = self.last_decrease_us
            && now_us - last < rtt_us.clamp(10_000, 200_000)
        {
            self.state = RateState::Hold;
            return;
        }
        let mut target = acked.map_or(BETA * self.bitrate_bps, |a| BETA * a);
        if target > self.bitrate_bps
            && let Some(capacity_kbps) = self.capacity.estimate_kbps
        {
            target = BETA * capacity_kbps * 1000.0;
        }
        self.bitrate_bps = self.bitrate_bps.min(target);
        if let (Some(acked), Some(lower)) = (acked, self.capacity.lower_bps())
            && acked < lower
        {
            // Far below what we learned: the path changed, start learning afresh.
            self.capacity = LinkCapacity::new();
        }
        if let Some(acked) = acked {
            self.capacity.on_overuse(acked);
        }
        self.state = RateState::Hold;
        self.last_change_us = Some(now_us);
        self.last_decrease_us = Some(now_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: i64 = 100_000;

    /// Runs `seconds` of feedback every 100 ms with this usage and throughput.
    fn run(
        aimd: &mut AimdRateControl,
        from_us: i64,
        seconds: i64,
        usage: BandwidthUsage,
        acked: Option<u64>,
    ) -> i64 {
        let mut now = from_us;
        for _ in 0..seconds * 10 {
            now += 100_000;
            aimd.update(now, usage, acked, acked, RTT);
        }
        now
    }

    #[test]
    fn grows_about_8_percent_a_second_while_no_capacity_is_known() {
        let mut aimd = AimdRateControl::new(1_000_000, 10_000, 100_000_000);
        run(&mut aimd, 0, 5, BandwidthUsage::Normal, Some(10_000_000));
        let expected = 1_000_000.0 * 1.08f64.powf(4.9);
        let got = aimd.bitrate_bps() as f64;
        assert!((got / expected - 1.0).abs() < 0.03, "{got} vs {expected}");
    }

    #[test]
    fn never_grows_past_one_and_a_half_times_the_acknowledged_throughput() {
        let mut aimd = AimdRateControl::new(500_000, 10_000, 100_000_000);
        run(&mut aimd, 0, 30, BandwidthUsage::Normal, Some(400_000));
        assert_eq!(aimd.bitrate_bps(), 610_000);
        // Probe padding acknowledged on top of the media lifts nothing.
        aimd.update(
            30_000_000,
            BandwidthUsage::Normal,
            Some(3_000_000),
            Some(400_000),
            RTT,
        );
        assert_eq!(aimd.bitrate_bps(), 610_000);
        // Unless a probe proved more; then it is not pulled down either.
        aimd.set_estimate(30_000_000, 2_000_000);
        run(
            &mut aimd,
            30_000_000,
            2,
            BandwidthUsage::Normal,
            Some(400_000),
        );
        assert_eq!(aimd.bitrate_bps(), 2_000_000);
    }

    #[test]
    fn overuse_backs_off_to_085_of_acknowledged_once_per_round_trip() {
        let mut aimd = AimdRateControl::new(2_000_000, 10_000, 100_000_000);
        let now = run(&mut aimd, 0, 1, BandwidthUsage::Normal, Some(1_500_000));
        // Backs off from everything acknowledged, padding included.
        aimd.update(
            now + 10_000,
            BandwidthUsage::Overusing,
            Some(1_000_000),
            Some(600_000),
            RTT,
        );
        assert_eq!(aimd.bitrate_bps(), 850_000);
        // Still overusing 20 ms later: the queue of before the backoff, no second cut.
        aimd.update(
            now + 30_000,
            BandwidthUsage::Overusing,
            Some(800_000),
            Some(800_000),
            RTT,
        );
        assert_eq!(aimd.bitrate_bps(), 850_000);
        aimd.update(
            now + 200_000,
            BandwidthUsage::Overusing,
            Some(800_000),
            Some(800_000),
            RTT,
        );
        assert_eq!(aimd.bitrate_bps(), 680_000);
    }

    #[test]
    fn near_the_learned_capacity_growth_is_additive_and_slow() {
        let mut aimd = AimdRateControl::new(1_000_000, 10_000, 100_000_000);
        let now = run(&mut aimd, 0, 1, BandwidthUsage::Normal, Some(1_000_000));
        aimd.update(
            now,
            BandwidthUsage::Overusing,
            Some(1_000_000),
            Some(1_000_000),
            RTT,
        );
        let after_backoff = aimd.bitrate_bps();
        assert_eq!(after_backoff, 850_000);
        let now = run(&mut aimd, now, 1, BandwidthUsage::Underusing, Some(850_000));
        run(&mut aimd, now, 5, BandwidthUsage::Normal, Some(850_000));
        let gained = aimd.bitrate_bps() - after_backoff;
        // ~1,180-byte packets per 0.4 s response time: ~24 kbit/s a second, where 8 % a second
        // would have gained ~400 kbit/s in 5 s.
        assert!((80_000..=150_000).contains(&gained), "{gained}");
    }

    #[test]
    fn underuse_holds() {
        let mut aimd = AimdRateControl::new(1_000_000, 10_000, 100_000_000);
        run(&mut aimd, 0, 3, BandwidthUsage::Underusing, Some(1_000_000));
        assert_eq!(aimd.bitrate_bps(), 1_000_000);
    }
}
