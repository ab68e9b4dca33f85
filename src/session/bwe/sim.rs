//! The estimator against a simulated path, on a fake clock: a sender sending what the estimate
//! allows (up to its layer's rate) plus the padding probes ask for, a bottleneck with a FIFO
//! queue, optional random loss and an optional policer, and the relay's own receive-side
//! recorder ([`TwccRecorder`]) writing real feedback that travels back and is parsed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{BandwidthEstimator, EstimatorConfig};
use crate::session::twcc::{TwccConfig, TwccRecorder};
use crate::wire::twcc::TransportFeedback;

const MS: i64 = 1_000;
const SECOND: i64 = 1_000_000;
const PACKET: usize = 1_200;

/// Where the path is now; tests change it mid-run.
#[derive(Debug, Clone, Copy)]
struct Path {
    capacity_bps: u64,
    one_way_us: i64,
    /// Queueing delay above which the bottleneck drops (tail drop).
    queue_limit_us: i64,
    /// Random loss probability.
    loss: f64,
    /// A token-bucket policer (rate, bucket bytes): drops above the rate, no queueing.
    police: Option<(u64, f64)>,
}

impl Path {
    fn clean(capacity_bps: u64) -> Self {
        Path {
            capacity_bps,
            one_way_us: 25 * MS,
            queue_limit_us: 400 * MS,
            loss: 0.0,
            police: None,
        }
    }
}

/// What a test does to the feedback before the estimator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedbackAbuse {
    None,
    /// Every feedback twice, plus one for numbers never sent and one replaying an old one.
    DuplicateAndGarbage,
}

struct Sim {
    t0: Instant,
    now_us: i64,
    estimator: BandwidthEstimator,
    path: Path,
    /// The rate the sender's current layer needs; it sends min(this, estimate).
    layer_bps: u64,
    abuse: FeedbackAbuse,
    sequence: u16,
    media_credit: f64,
    bottleneck_free_us: i64,
    tokens: f64,
    tokens_at_us: i64,
    rng: u64,
    in_flight: VecDeque<(i64, u16)>,
    recorder: TwccRecorder,
    feedback_in_flight: VecDeque<(i64, Vec<u8>)>,
    old_feedback: Option<Vec<u8>>,
    /// (time, estimate) every 100 ms.
    estimates: Vec<(i64, u64)>,
    sent_bytes: u64,
    delivered_bytes: u64,
}

impl Sim {
    fn new(path: Path, layer_bps: u64) -> Self {
        Sim {
            t0: Instant::now(),
            now_us: 0,
            estimator: BandwidthEstimator::new(EstimatorConfig {
                initial_bps: 300_000,
                min_bps: 50_000,
                max_bps: 20_000_000,
            }),
            path,
            layer_bps,
            abuse: FeedbackAbuse::None,
            sequence: 65_000,
            media_credit: 0.0,
            bottleneck_free_us: 0,
            tokens: 0.0,
            tokens_at_us: 0,
            rng: 0x2545_f491_4f6c_dd1d,
            in_flight: VecDeque::new(),
            recorder: TwccRecorder::new(TwccConfig::default()),
            feedback_in_flight: VecDeque::new(),
            old_feedback: None,
            estimates: Vec::new(),
            sent_bytes: 0,
            delivered_bytes: 0,
        }
    }

    fn at(&self, us: i64) -> Instant {
        self.t0 + Duration::from_micros(us as u64)
    }

    fn random(&mut self) -> f64 {
        // xorshift64: deterministic runs, so two runs can be compared exactly.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Runs until `until_us` in 1 ms steps.
    fn run_until(&mut self, until_us: i64) {
        while self.now_us < until_us {
            self.now_us += MS;
            self.step();
        }
    }

    fn step(&mut self) {
        let now = self.at(self.now_us);
        let rate = self.layer_bps.min(self.estimator.estimate_bps());
        self.media_credit += rate as f64 / 8.0 / 1000.0;
        while self.media_credit >= PACKET as f64 {
            self.media_credit -= PACKET as f64;
            self.send(PACKET, false);
        }
        if self.now_us % (10 * MS) == 0 {
            let mut padding = self.estimator.poll_padding(now);
            while padding > 0 {
                let size = padding.min(PACKET);
                self.send(size, true);
                padding -= size;
            }
        }
        while let Some(&(arrival_us, sequence)) = self.in_flight.front() {
            if arrival_us > self.now_us {
                break;
            }
            self.in_flight.pop_front();
            self.recorder.record(self.at(arrival_us), sequence);
        }
        let mut out = [0u8; 1500];
        while let Some(len) = self.recorder.poll(now, &mut out, 1, 2).unwrap() {
            let back = self.now_us + self.path.one_way_us;
            self.feedback_in_flight
                .push_back((back, out[..len].to_vec()));
        }
        while let Some((due, _)) = self.feedback_in_flight.front() {
            if *due > self.now_us {
                break;
            }
            let (_, packet) = self.feedback_in_flight.pop_front().unwrap();
            self.deliver(&packet);
        }
        if self.now_us % (100 * MS) == 0 {
            self.estimates
                .push((self.now_us, self.estimator.estimate_bps()));
        }
    }

    fn deliver(&mut self, packet: &[u8]) {
        let now = self.at(self.now_us);
        let feedback = TransportFeedback::parse(packet).unwrap();
        let fresh = self.estimator.on_feedback(now, &feedback);
        if self.abuse == FeedbackAbuse::None {
            return;
        }
        assert!(fresh > 0, "the recorder reports each packet once");
        assert_eq!(self.estimator.on_feedback(now, &feedback), 0);
        let mut forged = packet.to_vec();
        // Base sequence 30,000 numbers away: never sent.
        let base = u16::from_be_bytes([forged[12], forged[13]]).wrapping_add(30_000);
        forged[12..14].copy_from_slice(&base.to_be_bytes());
        let forged = TransportFeedback::parse(&forged).unwrap();
        assert_eq!(self.estimator.on_feedback(now, &forged), 0);
        if let Some(old) = self.old_feedback.replace(packet.to_vec()) {
            let old = TransportFeedback::parse(&old).unwrap();
            assert_eq!(self.estimator.on_feedback(now, &old), 0);
        }
    }

    fn send(&mut self, size: usize, is_probe: bool) {
        let now = self.at(self.now_us);
        let sequence = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        self.estimator.on_packet_sent(now, sequence, size, is_probe);
        self.sent_bytes += size as u64;
        if let Some((rate_bps, bucket)) = self.path.police {
            let elapsed_s = (self.now_us - self.tokens_at_us) as f64 / 1e6;
            self.tokens = (self.tokens + rate_bps as f64 / 8.0 * elapsed_s).min(bucket);
            self.tokens_at_us = self.now_us;
            if self.tokens < size as f64 {
                return;
            }
            self.tokens -= size as f64;
        }
        if self.path.loss > 0.0 && self.random() < self.path.loss {
            return;
        }
        let start_us = self.bottleneck_free_us.max(self.now_us);
        if start_us - self.now_us > self.path.queue_limit_us {
            return;
        }
        self.bottleneck_free_us =
            start_us + (size as u64 * 8 * 1_000_000 / self.path.capacity_bps) as i64;
        self.delivered_bytes += size as u64;
        self.in_flight
            .push_back((self.bottleneck_free_us + self.path.one_way_us, sequence));
    }

    /// Estimates between two times.
    fn estimates_between(&self, from_us: i64, to_us: i64) -> impl Iterator<Item = u64> + '_ {
        self.estimates
            .iter()
            .filter(move |(t, _)| (from_us..to_us).contains(t))
            .map(|&(_, e)| e)
    }

    fn mean(&self, from_us: i64, to_us: i64) -> u64 {
        let (sum, n) = self
            .estimates_between(from_us, to_us)
            .fold((0, 0), |(s, n), e| (s + e, n + 1));
        sum / n.max(1)
    }

    fn min(&self, from_us: i64, to_us: i64) -> u64 {
        self.estimates_between(from_us, to_us).min().unwrap_or(0)
    }

    fn max(&self, from_us: i64, to_us: i64) -> u64 {
        self.estimates_between(from_us, to_us).max().unwrap_or(0)
    }

    fn estimate_at(&self, at_us: i64) -> u64 {
        self.estimates
            .iter()
            .rev()
            .find(|(t, _)| *t <= at_us)
            .map_or(0, |&(_, e)| e)
    }

    /// The estimate once a second and the final state, for failure messages.
    fn trace(&self) -> String {
        let series = self
            .estimates
            .iter()
            .filter(|(t, _)| t % SECOND == 0)
            .map(|(t, e)| format!("{}s:{}k", t / SECOND, e / 1000))
            .collect::<Vec<_>>()
            .join(" ");
        format!("{series}\n{:?}", self.estimator.state())
    }
}

#[test]
fn steady_link_converges_near_capacity_and_does_not_collapse() {
    let mut sim = Sim::new(Path::clean(2_000_000), 10_000_000);
    sim.estimator.set_wanted(10_000_000);
    sim.run_until(60 * SECOND);
    let trace = sim.trace();
    let mean = sim.mean(30 * SECOND, 60 * SECOND);
    assert!(
        (1_500_000..=2_300_000).contains(&mean),
        "mean {mean}: {trace}"
    );
    let low = sim.min(30 * SECOND, 60 * SECOND);
    assert!(low >= 1_000_000, "dipped to {low}: {trace}");
    let state = sim.estimator.state();
    assert!(state.feedback_used > 500, "{state:?}");
    assert_eq!(state.feedback_ignored, 0);
}

#[test]
fn estimate_follows_the_capacity_when_it_halves() {
    let mut sim = Sim::new(Path::clean(2_000_000), 10_000_000);
    sim.run_until(30 * SECOND);
    let before = sim.mean(20 * SECOND, 30 * SECOND);
    sim.path.capacity_bps = 1_000_000;
    sim.run_until(50 * SECOND);
    let trace = sim.trace();
    assert!(before > 1_400_000, "before {before}: {trace}");
    let after = sim.max(33 * SECOND, 50 * SECOND);
    assert!(after <= 1_250_000, "within 3 s: max after {after}: {trace}");
    let mean = sim.mean(35 * SECOND, 50 * SECOND);
    assert!(
        (650_000..=1_150_000).contains(&mean),
        "mean {mean}: {trace}"
    );
}

#[test]
fn a_probe_lifts_the_estimate_when_the_capacity_doubles_and_more_is_wanted() {
    // The sender's layer needs 800 kbit/s and it wants the next, 1.8 Mbit/s, all along:
    // probes into the 1 Mbit/s path fail and back off; once the path carries 2 Mbit/s one
    // succeeds.
    let mut sim = Sim::new(Path::clean(1_000_000), 800_000);
    sim.estimator.set_wanted(1_800_000);
    sim.run_until(20 * SECOND);
    let trace = sim.trace();
    assert!(sim.max(5 * SECOND, 20 * SECOND) < 1_500_000, "{trace}");
    let failed = sim.estimator.state().probes_failed;
    assert!(failed >= 1, "{:?}", sim.estimator.state());
    sim.path.capacity_bps = 2_000_000;
    let mut lifted_at = None;
    while sim.now_us < 40 * SECOND {
        sim.run_until(sim.now_us + 100 * MS);
        if sim.estimator.estimate_bps() >= 1_800_000 {
            // The caller moves up a layer.
            sim.layer_bps = 1_800_000;
            sim.estimator.set_wanted(0);
            lifted_at.get_or_insert(sim.now_us);
        }
    }
    let trace = sim.trace();
    let lifted_at = lifted_at.unwrap_or_else(|| panic!("never lifted: {trace}"));
    assert!(lifted_at <= 32 * SECOND, "lifted at {lifted_at}: {trace}");
    assert!(sim.estimator.state().probes_succeeded >= 1);
    // And it stays up while the layer is sent.
    assert!(
        sim.min(lifted_at + 2 * SECOND, 40 * SECOND) >= 1_500_000,
        "{trace}"
    );
}

#[test]
fn a_loss_burst_lowers_the_estimate_which_then_recovers() {
    let mut sim = Sim::new(Path::clean(3_000_000), 1_500_000);
    sim.estimator.set_wanted(1_500_000);
    sim.run_until(20 * SECOND);
    let before = sim.estimate_at(20 * SECOND);
    sim.path.loss = 0.15;
    sim.run_until(22 * SECOND);
    sim.path.loss = 0.0;
    let during = sim.estimate_at(22 * SECOND + 500 * MS);
    sim.run_until(40 * SECOND);
    let trace = sim.trace();
    assert!(before >= 1_500_000, "before {before}: {trace}");
    assert!(
        (during as f64) < 0.85 * before as f64,
        "{before} → {during}: {trace}"
    );
    let after = sim.estimate_at(40 * SECOND);
    assert!(
        after as f64 >= 0.9 * before as f64,
        "{before} → {after}: {trace}"
    );
}

#[test]
fn a_policed_link_holds_the_estimate_near_the_police_rate() {
    // 600 kbit/s policer with a 10 kB bucket on a 10 Mbit/s path: drops, no queueing delay.
    let mut path = Path::clean(10_000_000);
    path.police = Some((600_000, 10_000.0));
    let mut sim = Sim::new(path, 2_500_000);
    sim.estimator.set_wanted(2_500_000);
    sim.run_until(60 * SECOND);
    let trace = sim.trace();
    let mean = sim.mean(20 * SECOND, 60 * SECOND);
    assert!((480_000..=780_000).contains(&mean), "mean {mean}: {trace}");
    assert!(sim.max(20 * SECOND, 60 * SECOND) <= 1_000_000, "{trace}");
    // What the sender put through is mostly delivered: the loss stays moderate.
    let delivered = sim.delivered_bytes as f64 / sim.sent_bytes as f64;
    assert!(delivered > 0.85, "delivered {delivered}: {trace}");
}

#[test]
fn duplicate_stale_and_forged_feedback_changes_nothing() {
    let run = |abuse| {
        let mut sim = Sim::new(Path::clean(2_000_000), 10_000_000);
        sim.estimator.set_wanted(10_000_000);
        sim.abuse = abuse;
        sim.run_until(20 * SECOND);
        (sim.estimates, sim.estimator.state())
    };
    let (clean, clean_state) = run(FeedbackAbuse::None);
    let (abused, abused_state) = run(FeedbackAbuse::DuplicateAndGarbage);
    assert_eq!(clean, abused);
    assert_eq!(clean_state.feedback_used, abused_state.feedback_used);
    assert!(abused_state.feedback_ignored >= 3 * clean_state.feedback_used - 1);
    assert!(abused_state.duplicate_statuses > 0 && abused_state.unknown_statuses > 0);
}

/// A caller choosing the highest of `layers` that fits the estimate every 100 ms (with the
/// selector's 15 % headroom to go up) and wanting the next one up; returns the times it
/// switched up.
fn run_with_layers(sim: &mut Sim, layers: &[u64], until_us: i64) -> Vec<i64> {
    let mut ups = Vec::new();
    while sim.now_us < until_us {
        let estimate = sim.estimator.estimate_bps();
        let fits = layers
            .iter()
            .rposition(|&l| l <= sim.layer_bps && l <= estimate || l * 115 / 100 <= estimate)
            .unwrap_or(0);
        if layers[fits] > sim.layer_bps {
            ups.push(sim.now_us);
        }
        sim.layer_bps = layers[fits];
        sim.estimator
            .set_wanted(layers.get(fits + 1).map_or(0, |l| l * 115 / 100));
        sim.run_until(sim.now_us + 100 * MS);
    }
    ups
}

/// A player on a 300 kbit/s layer behind a 600 kbit/s policer, wanting the 700 kbit/s layer,
/// for 40 s; then the limit goes. Returns the switches up before and the time of the first
/// after.
fn police_then_lift(bucket_bytes: f64) -> (Vec<i64>, Option<i64>, String) {
    let layers = [300_000, 700_000];
    let mut path = Path::clean(10_000_000);
    path.police = Some((600_000, bucket_bytes));
    let mut sim = Sim::new(path, layers[0]);
    let policed = run_with_layers(&mut sim, &layers, 40 * SECOND);
    sim.path.police = None;
    // A probe that the bucket let through may have the player up when the limit goes.
    let up_at_lift = (sim.layer_bps == layers[1]).then_some(sim.now_us);
    let lifted = run_with_layers(&mut sim, &layers, 60 * SECOND);
    (policed, up_at_lift.or(lifted.first().copied()), sim.trace())
}

#[test]
fn a_strict_policer_fails_probes_and_a_lifted_limit_is_found_within_15_s() {
    // Three packets of bucket: a probe's excess is dropped at once.
    let (policed, lifted, trace) = police_then_lift(3_600.0);
    assert!(policed.is_empty(), "switched up at {policed:?}: {trace}");
    let lifted = lifted.unwrap_or_else(|| panic!("never moved up: {trace}"));
    assert!(lifted <= 55 * SECOND, "moved up at {lifted}: {trace}");
}

#[test]
fn a_policer_with_a_one_second_bucket_fools_probes_but_not_for_long() {
    // nftables byte limits hold a second of the rate: a 600 ms probe gets through whole, so
    // the caller moves up until the loss-based bound brings it down; each such lift is
    // disproved and backs probing off.
    let (policed, lifted, trace) = police_then_lift(75_000.0);
    assert!(policed.len() <= 4, "switched up at {policed:?}: {trace}");
    let lifted = lifted.unwrap_or_else(|| panic!("never moved up: {trace}"));
    assert!(lifted <= 55 * SECOND, "moved up at {lifted}: {trace}");
}

#[test]
fn a_policer_between_two_layers_holds_the_lower_one() {
    // tests/simulcast.rs's player B: Chromium's three encodings of the fake camera (about 150,
    // 550 and 1 300 kbit/s) behind an nftables policer of 450 kbit/s with 11 250 bytes of
    // burst, whose bucket holds a second of the rate plus the burst. A probe fits in that
    // bucket, and so does a second or two of the middle layer: the player may be fooled once,
    // then its probes outlast the bucket.
    let layers = [153_000, 568_000, 1_279_000];
    let mut path = Path::clean(10_000_000);
    path.police = Some((450_000, 56_250.0 + 11_250.0));
    let mut sim = Sim::new(path, layers[0]);
    let policed = run_with_layers(&mut sim, &layers, 45 * SECOND);
    let trace = sim.trace();
    assert!(policed.len() <= 1, "switched up at {policed:?}: {trace}");
    assert!(
        policed.iter().all(|&t| t < 20 * SECOND),
        "switched up late, at {policed:?}: {trace}"
    );
    sim.path.police = None;
    let lifted = run_with_layers(&mut sim, &layers, 70 * SECOND);
    let first = lifted.first().copied();
    let first = first.unwrap_or_else(|| panic!("never moved up: {}", sim.trace()));
    assert!(first <= 58 * SECOND, "moved up at {first}: {}", sim.trace());
}
