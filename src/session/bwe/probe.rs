//! Probing upward with padding, in the manner of libwebrtc's ProbeController and
//! ProbeBitrateEstimator. An estimate only grows to 1.5 × what the player acknowledged, so a
//! player held on a low layer never learns that its path carries the next one; when the caller
//! wants more than the estimate and the estimate has been steady, a cluster of packets (media
//! plus padding) is sent for 600 ms at min(1.25 × wanted, 2 × estimate), and the rate at which
//! the player received the cluster's packets says what the path carries: the lower of the
//! whole cluster's rate and its second half's, since a policer's bucket passes the start of a
//! probe at any rate.
//!
//! A probe that does not raise the estimate backs off 5 s, then 8 s; so does a lift that heavy
//! loss undoes within 15 s (a policer's bucket let the probe through, not the sustained rate),
//! which also makes the next clusters 2.4 s long so that they outlast the bucket.
//! The initial estimate is on trial like a lift: a player that starts too high learns the same
//! way.
//!
//! The backoff stops at 8 s rather than libwebrtc-style minutes because the capacity behind a
//! policer can only be discovered by probing: a player whose limit is lifted should move up
//! within ~15 s. A failed probe costs about a feedback interval of loss above the policed rate
//! (its padding stops at the first loss reported) every 8 s; the cluster's packets are kept
//! out of the loss statistics, so it does not cut the estimate.

use super::history::PacketResult;

/// A cluster's length at first; after a lift is disproved, the longest.
const PROBE_DURATION_US: i64 = 600_000;
/// Long enough to drain an nftables byte limit's bucket (a second of the rate plus its burst)
/// at 1.25 × a layer 25 % above the limit.
const MAX_PROBE_DURATION_US: i64 = 2_400_000;
/// How long the estimate must go without overuse, underuse or loss before a probe.
pub(super) const PROBE_STEADY_US: i64 = 2_000_000;
const INITIAL_BACKOFF_US: i64 = 5_000_000;
const MAX_BACKOFF_US: i64 = 8_000_000;
/// Results of a cluster not complete this long after it ended are taken as they are.
const RESULT_TIMEOUT_US: i64 = 1_000_000;
/// Padding owed is sent at most this many µs of the probe rate at once (a late poll must not
/// dump a burst the path would queue).
const MAX_PADDING_BURST_US: u64 = 20_000;
const MIN_RECEIVED_PACKETS: u32 = 5;
/// A receive rate below this share of the send rate means the path was saturated.
const SATURATED_RATIO: f64 = 0.9;
const SATURATED_UTILIZATION: f64 = 0.95;
/// A receive rate above this multiple of the send rate is a measurement artefact.
const MAX_VALID_RATIO: f64 = 2.0;
/// A result must beat the estimate by this much to lift it.
const LIFT_MARGIN: f64 = 1.05;
/// A probe whose result reaches this share of its rate was carried by the path.
const CARRIED_SHARE: f64 = 0.8;
/// A cluster losing more than this share of its packets was not carried, whatever its
/// receive rate says (a policer's bucket lets a short burst through, then drops).
const MAX_CLUSTER_LOSS: f64 = 0.05;
/// Heavy loss this soon after a lift disproves it: the probe got through a policer's bucket,
/// the sustained rate did not. nftables byte limits hold a second of the rate, which a sender
/// 15 % above it takes ~7 s to drain; the trial outlasts that.
const LIFT_TRIAL_US: i64 = 15_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct ProbeCounters {
    pub(super) started: u64,
    pub(super) succeeded: u64,
    pub(super) failed: u64,
    /// Lifts followed by heavy loss within their 15 s trial.
    pub(super) disproved: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cluster {
    id: u16,
    target_bps: u64,
    start_us: i64,
    end_us: i64,
    sent_bytes: u64,
    sent_packets: u32,
    reported: u32,
    /// Every received packet of the cluster.
    whole: Span,
    /// The received packets sent in the cluster's second half: a policer's bucket lets the
    /// start of a probe through, so only the end shows what the path sustains.
    tail: Span,
}

impl Cluster {
    fn received(&self) -> u32 {
        self.whole.received
    }
}

/// Send and arrival times of a run of received packets, for the rate they crossed the path at.
#[derive(Debug, Clone, Copy)]
struct Span {
    received: u32,
    received_bytes: u64,
    /// (send time, size) of the last-sent packet; (arrival, size) of the first to arrive and
    /// the arrival of the last.
    first_send_us: i64,
    last_send: (i64, u32),
    first_arrival: (i64, u32),
    last_arrival_us: i64,
}

impl Span {
    const EMPTY: Span = Span {
        received: 0,
        received_bytes: 0,
        first_send_us: i64::MAX,
        last_send: (i64::MIN, 0),
        first_arrival: (i64::MAX, 0),
        last_arrival_us: i64::MIN,
    };

    fn on_received(&mut self, sent_us: i64, arrival_us: i64, size: u32) {
        self.received += 1;
        self.received_bytes += u64::from(size);
        self.first_send_us = self.first_send_us.min(sent_us);
        if sent_us >= self.last_send.0 {
            self.last_send = (sent_us, size);
        }
        if arrival_us < self.first_arrival.0 {
            self.first_arrival = (arrival_us, size);
        }
        self.last_arrival_us = self.last_arrival_us.max(arrival_us);
    }

    /// As libwebrtc's ProbeBitrateEstimator: send and receive rates over the packets (each
    /// interval excludes one end packet's size); the lower of the two, or 95 % of the receive
    /// rate when the path delivered clearly less than was sent.
    fn measured_bps(&self) -> Option<u64> {
        if self.received < MIN_RECEIVED_PACKETS {
            return None;
        }
        let send_us = self.last_send.0 - self.first_send_us;
        let receive_us = self.last_arrival_us - self.first_arrival.0;
        if send_us <= 0 || receive_us <= 0 {
            return None;
        }
        let send_bps =
            (self.received_bytes - u64::from(self.last_send.1)) as f64 * 8e6 / send_us as f64;
        let receive_bps = (self.received_bytes - u64::from(self.first_arrival.1)) as f64 * 8e6
            / receive_us as f64;
        if receive_bps > MAX_VALID_RATIO * send_bps {
            return None;
        }
        let bps = if receive_bps < SATURATED_RATIO * send_bps {
            SATURATED_UTILIZATION * receive_bps
        } else {
            send_bps.min(receive_bps)
        };
        Some(bps as u64)
    }
}

#[derive(Debug, Clone)]
pub(super) struct ProbeController {
    wanted_bps: u64,
    /// The most wanted since the backoff last started over: wanting the same again (after
    /// dropping a layer, say) is no new goal.
    goal_bps: u64,
    max_bps: u64,
    last_cluster_id: u16,
    cluster: Option<Cluster>,
    backoff_us: i64,
    next_allowed_us: i64,
    /// When a probe last lifted the estimate, while that lift is on trial (the initial
    /// estimate is on trial from the start).
    lifted_at_us: Option<i64>,
    /// How long the next cluster runs.
    duration_us: i64,
    counters: ProbeCounters,
}

impl ProbeController {
    pub(super) fn new(max_bps: u64) -> Self {
        ProbeController {
            wanted_bps: 0,
            goal_bps: 0,
            max_bps,
            last_cluster_id: 0,
            cluster: None,
            backoff_us: INITIAL_BACKOFF_US,
            next_allowed_us: 0,
            lifted_at_us: Some(0),
            duration_us: PROBE_DURATION_US,
            counters: ProbeCounters::default(),
        }
    }

    pub(super) fn counters(&self) -> &ProbeCounters {
        &self.counters
    }

    /// The rate the caller would like (the next layer's); 0 for none. Wanting more than ever
    /// since the backoff started over is a new goal: it starts over again.
    pub(super) fn set_wanted(&mut self, bps: u64) {
        let bps = bps.min(self.max_bps);
        if bps > self.goal_bps {
            self.goal_bps = bps;
            self.backoff_us = INITIAL_BACKOFF_US;
            self.next_allowed_us = 0;
        }
        self.wanted_bps = bps;
    }

    /// A lift that outlived its trial was right: probing may start over from the shortest
    /// backoff.
    fn settle_trial(&mut self, now_us: i64) {
        if let Some(lifted) = self.lifted_at_us
            && now_us - lifted > LIFT_TRIAL_US
        {
            self.lifted_at_us = None;
            self.backoff_us = INITIAL_BACKOFF_US;
            self.duration_us = PROBE_DURATION_US;
            self.goal_bps = self.wanted_bps;
        }
    }

    /// Starts a cluster if one is wanted and allowed; `steady_for_us` is how long the estimate
    /// has gone without overuse or loss.
    pub(super) fn maybe_start(
        &mut self,
        now_us: i64,
        estimate_bps: u64,
        steady_for_us: i64,
    ) -> bool {
        self.settle_trial(now_us);
        if self.cluster.is_some()
            || self.wanted_bps <= estimate_bps
            || steady_for_us < PROBE_STEADY_US
            || now_us < self.next_allowed_us
        {
            return false;
        }
        let target = (self.wanted_bps + self.wanted_bps / 4)
            .min(2 * estimate_bps)
            .min(self.max_bps);
        if target <= estimate_bps {
            return false;
        }
        self.last_cluster_id = self.last_cluster_id.checked_add(1).unwrap_or(1);
        self.cluster = Some(Cluster {
            id: self.last_cluster_id,
            target_bps: target,
            start_us: now_us,
            end_us: now_us + self.duration_us,
            sent_bytes: 0,
            sent_packets: 0,
            reported: 0,
            whole: Span::EMPTY,
            tail: Span::EMPTY,
        });
        self.counters.started += 1;
        true
    }

    /// The cluster a packet sent now belongs to (0 for none): the one sending, and for padding
    /// also one just ended (the last poll's bytes, sent late) while its results are pending.
    pub(super) fn cluster_for(&self, now_us: i64, is_padding: bool) -> u16 {
        match self.cluster {
            Some(c) if now_us < c.end_us || is_padding => c.id,
            _ => 0,
        }
    }

    pub(super) fn probing(&self) -> bool {
        self.cluster.is_some()
    }

    /// Records a packet sent as part of cluster `id` (from [`Self::cluster_for`]).
    pub(super) fn on_sent(&mut self, id: u16, size: usize) {
        if let Some(c) = self.cluster.as_mut()
            && id == c.id
        {
            c.sent_bytes += size as u64;
            c.sent_packets += 1;
        }
    }

    /// Padding bytes to send now so the cluster (media included) runs at its rate.
    pub(super) fn padding_due(&self, now_us: i64) -> usize {
        let Some(c) = self.cluster else {
            return 0;
        };
        // A packet of the cluster already reported lost: the path does not carry the rate (a
        // policer drops what exceeds it, media included), so the rest is not sent.
        if now_us >= c.end_us || now_us < c.start_us || c.reported > c.received() {
            return 0;
        }
        let elapsed = (now_us - c.start_us) as u64;
        let owed = c.target_bps * elapsed / 8_000_000;
        let burst = c.target_bps * MAX_PADDING_BURST_US / 8_000_000;
        owed.saturating_sub(c.sent_bytes).min(burst) as usize
    }

    /// A packet of the cluster reported by feedback.
    pub(super) fn on_result(&mut self, result: &PacketResult) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if result.probe_cluster != c.id {
            return;
        }
        c.reported += 1;
        let Some(arrival) = result.arrival_us else {
            return;
        };
        c.whole.on_received(result.sent_us, arrival, result.size);
        if result.sent_us >= c.start_us + (c.end_us - c.start_us) / 2 {
            c.tail.on_received(result.sent_us, arrival, result.size);
        }
    }

    /// After feedback: once the cluster is over and reported (or given up on), judges it.
    /// Returns the rate the probe proved when that is above the estimate, to lift it to.
    pub(super) fn evaluate(&mut self, now_us: i64, estimate_bps: u64) -> Option<u64> {
        let c = self.cluster?;
        let complete = now_us >= c.end_us && c.reported >= c.sent_packets;
        if !complete && now_us < c.end_us + RESULT_TIMEOUT_US {
            return None;
        }
        self.cluster = None;
        let lost = c.reported - c.received();
        // The lower of the whole cluster's rate and its second half's, when that half says
        // enough: a path that carried the start but not the end does not carry the rate.
        let measured = match (c.whole.measured_bps(), c.tail.measured_bps()) {
            (Some(whole), Some(tail)) => Some(whole.min(tail)),
            (whole, _) => whole,
        }
        .filter(|_| f64::from(lost) <= MAX_CLUSTER_LOSS * f64::from(c.reported));
        // Carried: the path delivered (nearly) the probe's rate, so there may be more; probe
        // again at once, as libwebrtc's further probing (the backoff itself starts over only
        // once the lift survives its trial). Otherwise back off, even when the result still
        // lifts the estimate a little.
        if measured.is_some_and(|bps| bps as f64 >= CARRIED_SHARE * c.target_bps as f64) {
            self.counters.succeeded += 1;
            self.next_allowed_us = now_us;
        } else {
            self.counters.failed += 1;
            self.back_off(now_us);
        }
        let lift = measured
            .filter(|&bps| bps as f64 > estimate_bps as f64 * LIFT_MARGIN)
            .map(|bps| bps.min(self.max_bps));
        if lift.is_some() {
            self.lifted_at_us = Some(now_us);
        }
        lift
    }

    /// The loss-based bound cut the estimate: if a probe lifted it within the trial, the lift
    /// was wrong, and probing backs off as after a failed probe.
    pub(super) fn on_loss_backoff(&mut self, now_us: i64) {
        if let Some(lifted) = self.lifted_at_us.take()
            && now_us - lifted <= LIFT_TRIAL_US
        {
            self.counters.disproved += 1;
            self.back_off(now_us);
            // A bucket outlasted the probe: the next ones must outlast the bucket.
            self.duration_us = MAX_PROBE_DURATION_US;
        }
    }

    fn back_off(&mut self, now_us: i64) {
        self.next_allowed_us = now_us + self.backoff_us;
        self.backoff_us = (2 * self.backoff_us).min(MAX_BACKOFF_US);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000;
    /// When a cluster sent from 0 is over and reported.
    const AFTER: i64 = PROBE_DURATION_US + 100 * MS;

    /// Sends the cluster through a path of `capacity_bps` (no loss): media of 1,000-byte
    /// packets at `media_bps` plus the padding asked for at 10 ms polls; returns the results.
    fn send_cluster(p: &mut ProbeController, start: i64, media_bps: u64, capacity_bps: u64) {
        let mut results = Vec::new();
        let mut link_free = 0i64;
        let mut media_owed = 0u64;
        let mut now = start;
        while p.cluster_for(now, false) != 0 {
            media_owed += media_bps * 10 / 8_000;
            let mut send = |p: &mut ProbeController, size: usize| {
                let id = p.cluster_for(now, false);
                p.on_sent(id, size);
                link_free = link_free.max(now) + (size as i64 * 8_000_000) / capacity_bps as i64;
                results.push(PacketResult {
                    sequence: 0,
                    sent_us: now,
                    arrival_us: Some(link_free + 20 * MS),
                    size: size as u32,
                    probe_cluster: id,
                    padding: false,
                });
            };
            while media_owed >= 1000 {
                media_owed -= 1000;
                send(p, 1000);
            }
            let mut padding = p.padding_due(now);
            while padding > 0 {
                let size = padding.min(1000);
                send(p, size);
                padding -= size;
            }
            now += 10 * MS;
        }
        for r in &results {
            p.on_result(r);
        }
    }

    #[test]
    fn starts_only_when_wanted_above_the_estimate_and_steady() {
        let mut p = ProbeController::new(10_000_000);
        assert!(!p.maybe_start(0, 1_000_000, 10_000_000), "nothing wanted");
        p.set_wanted(900_000);
        assert!(
            !p.maybe_start(0, 1_000_000, 10_000_000),
            "estimate suffices"
        );
        p.set_wanted(1_800_000);
        assert!(
            !p.maybe_start(0, 1_000_000, 1_000_000),
            "not steady for 2 s"
        );
        assert!(p.maybe_start(0, 1_000_000, 2_000_000));
        assert_eq!(p.cluster.unwrap().target_bps, 2_000_000, "2 × estimate");
        assert!(!p.maybe_start(1, 1_000_000, 2_000_000), "one at a time");
        assert_eq!(p.counters().started, 1);
    }

    #[test]
    fn padding_fills_the_cluster_up_to_its_rate_and_no_further() {
        let mut p = ProbeController::new(10_000_000);
        p.set_wanted(1_000_000);
        assert!(p.maybe_start(0, 800_000, 5_000_000));
        // 1.25 MB/s... 1,250,000 bit/s: 15,625 bytes in 100 ms.
        assert_eq!(p.padding_due(100 * MS), 3_125, "capped at a 20 ms burst");
        p.on_sent(p.cluster_for(100 * MS, false), 15_000);
        assert_eq!(p.padding_due(100 * MS), 625);
        assert_eq!(p.padding_due(PROBE_DURATION_US), 0, "over");
        assert_eq!(
            p.cluster_for(PROBE_DURATION_US - 1, false),
            p.cluster.unwrap().id
        );
        assert_eq!(
            p.cluster_for(PROBE_DURATION_US, false),
            0,
            "media after the end"
        );
        assert_eq!(
            p.cluster_for(PROBE_DURATION_US, true),
            p.cluster.unwrap().id,
            "late padding"
        );
    }

    #[test]
    fn a_probe_the_path_carries_lifts_the_estimate() {
        let mut p = ProbeController::new(10_000_000);
        p.set_wanted(1_800_000);
        assert!(p.maybe_start(0, 1_000_000, 5_000_000));
        send_cluster(&mut p, 0, 500_000, 5_000_000);
        let lifted = p.evaluate(AFTER, 1_000_000).expect("success");
        // Sent at 2 Mbit/s through a 5 Mbit/s path: the send rate is the result.
        assert!((1_850_000..=2_100_000).contains(&lifted), "{lifted}");
        assert_eq!(p.counters().succeeded, 1);
    }

    #[test]
    fn a_saturated_path_gives_95_percent_of_what_it_delivered() {
        let mut p = ProbeController::new(10_000_000);
        p.set_wanted(3_000_000);
        assert!(p.maybe_start(0, 1_000_000, 5_000_000));
        send_cluster(&mut p, 0, 500_000, 1_500_000);
        let lifted = p
            .evaluate(1_000 * MS, 1_000_000)
            .expect("1.4 Mbit/s beats 1 Mbit/s");
        assert!((1_350_000..=1_500_000).contains(&lifted), "{lifted}");
    }

    #[test]
    fn failed_probes_back_off_5_then_8_seconds_and_a_new_goal_resets() {
        let mut p = ProbeController::new(10_000_000);
        p.set_wanted(3_000_000);
        let mut now = 0;
        let mut starts = Vec::new();
        while now < 40_000 * MS {
            if p.maybe_start(now, 1_000_000, 5_000_000) {
                starts.push(now / MS);
                // The path carries no more than the estimate.
                send_cluster(&mut p, now, 500_000, 1_000_000);
            }
            p.evaluate(now, 1_000_000);
            now += 100 * MS;
        }
        // 5 s, then 8 s; the initial estimate's trial ends at 15 s without loss, so the backoff
        // starts over from 5 s after the probe then pending.
        assert_eq!(starts, vec![0, 5_600, 14_200, 22_800, 28_400, 37_000]);
        assert_eq!(p.counters().failed, 6);
        p.set_wanted(4_000_000);
        assert!(p.maybe_start(now, 1_000_000, 5_000_000));
    }

    #[test]
    fn a_cluster_that_lost_packets_was_not_carried_whatever_its_rate() {
        let mut p = ProbeController::new(10_000_000);
        p.set_wanted(3_000_000);
        assert!(p.maybe_start(0, 1_000_000, 5_000_000));
        let id = p.cluster_for(0, false);
        // 60 packets over 600 ms at 2 Mbit/s, every fourth lost (a policer past its bucket).
        for i in 0..60i64 {
            p.on_sent(id, 2500);
            p.on_result(&PacketResult {
                sequence: i as u64,
                sent_us: i * 10 * MS,
                arrival_us: (i % 4 != 3).then_some(20 * MS + i * 10 * MS),
                size: 2500,
                probe_cluster: id,
                padding: false,
            });
        }
        assert_eq!(p.evaluate(AFTER, 1_000_000), None);
        assert_eq!(p.counters().failed, 1);
    }

    #[test]
    fn a_cluster_carried_only_at_its_start_was_not_carried() {
        // A policer's bucket passes the first half at 2 Mbit/s; then padding stops (a loss
        // was reported) and only 500 kbit/s of media goes on. The whole cluster averages
        // above the estimate; its second half does not.
        let mut p = ProbeController::new(10_000_000);
        p.set_wanted(3_000_000);
        assert!(p.maybe_start(0, 1_000_000, 5_000_000));
        let mut sent_us = 0;
        while sent_us < PROBE_DURATION_US {
            let id = p.cluster_for(sent_us, false);
            p.on_sent(id, 1000);
            p.on_result(&PacketResult {
                sequence: 0,
                sent_us,
                arrival_us: Some(sent_us + 20 * MS),
                size: 1000,
                probe_cluster: id,
                padding: false,
            });
            sent_us += if sent_us < PROBE_DURATION_US / 2 {
                4 * MS
            } else {
                16 * MS
            };
        }
        assert_eq!(p.evaluate(AFTER, 1_000_000), None);
        assert_eq!(p.counters().failed, 1);
    }

    #[test]
    fn heavy_loss_soon_after_a_lift_disproves_it_and_backs_off() {
        let mut p = ProbeController::new(10_000_000);
        p.set_wanted(1_800_000);
        assert!(p.maybe_start(0, 1_000_000, 5_000_000));
        send_cluster(&mut p, 0, 500_000, 5_000_000);
        assert!(p.evaluate(AFTER, 1_000_000).is_some());
        assert_eq!(p.next_allowed_us, AFTER, "carried: probe again at once");
        p.on_loss_backoff(3_000 * MS);
        assert_eq!(p.counters().disproved, 1);
        assert_eq!(p.next_allowed_us, 8_000 * MS);
        // Only once per lift, and not long after it.
        p.on_loss_backoff(3_500 * MS);
        assert_eq!(p.counters().disproved, 1);
        // The next cluster outlasts a bucket like the one that fooled this probe.
        assert!(p.maybe_start(8_000 * MS, 1_000_000, 5_000_000));
        let c = p.cluster.unwrap();
        assert_eq!(c.end_us - c.start_us, MAX_PROBE_DURATION_US);
    }

    #[test]
    fn an_unreported_cluster_fails_after_the_timeout() {
        let mut p = ProbeController::new(10_000_000);
        p.set_wanted(3_000_000);
        assert!(p.maybe_start(0, 1_000_000, 5_000_000));
        p.on_sent(p.cluster_for(10 * MS, true), 1000);
        assert_eq!(p.evaluate(AFTER, 1_000_000), None);
        assert!(p.probing());
        assert_eq!(
            p.evaluate(PROBE_DURATION_US + RESULT_TIMEOUT_US, 1_000_000),
            None
        );
        assert!(!p.probing());
        assert_eq!(p.counters().failed, 1);
    }
}
