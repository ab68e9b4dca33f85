//! A send-side bandwidth estimate per player, from the transport-wide feedback it sends
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01), in the manner of libwebrtc's GCC
//! (goog_cc) and str0m's port of it. Sans-IO: the caller says what it sent and what feedback
//! came, and asks for the estimate and for probe padding.
//!
//! The pieces, each in its own file and modeled on libwebrtc:
//! - `history`: sent packets by transport-wide number (TransportFeedbackAdapter): feedback
//!   becomes per-packet send time, arrival time or loss, and size.
//! - `delay`: 5 ms send-burst grouping, trendline filter (window 20, smoothing 0.9, gain 4)
//!   and adaptive threshold (InterArrivalDelta, TrendlineEstimator) → Normal / Overusing /
//!   Underusing.
//! - `rate`: AIMD on that signal (AimdRateControl, LinkCapacityEstimator), bounded by the
//!   `acknowledged` throughput (AcknowledgedBitrateEstimator): the delay-based rate.
//!   Backoffs go to 0.85 × everything acknowledged; increases stop at 1.5 × the media
//!   acknowledged (padding excluded), so only a probe's own result lifts above what is used.
//! - `loss`: the classic loss-based rule (SendSideBandwidthEstimation), which also caps the
//!   result at the delay-based rate: its output is the estimate.
//! - `probe`: padding clusters to prove capacity above the estimate, and their evaluation
//!   (ProbeController, ProbeBitrateEstimator). The estimate counts as steady from the start,
//!   so a caller wanting more than the initial estimate gets libwebrtc's exponential start-up
//!   probing (each carried probe allows the next at twice the estimate).
//!
//! Simplified, and why: no ALR detection and no pacer (the caller sends what its layer needs
//! and says what it wants next); no RTCP receiver reports (loss comes from the feedback
//! itself); packets are taken in feedback (sequence) order instead of sorted by arrival (the
//! grouping skips reordered ones), so a feedback costs one pass and no buffer; the
//! acknowledged rate is a plain 500 ms window; the RTT is the time from sending a feedback's
//! newest packet to receiving the feedback, smoothed. libwebrtc's newer loss-based v2 (a
//! likelihood model over loss and throughput) is left out: the classic rule is predictable
//! and enough to hold a policed link.
//!
//! Added for policed paths (a player limited by a policer drops packets without queueing, so
//! only loss tells): the loss-based bound, like AIMD, grows no further than 1.5 × the media
//! acknowledged, so a sender that dropped a layer after loss does not drift back into it; a
//! probe cluster's packets stay out of the loss statistics, and a cluster that lost over 10 %
//! was not carried; a probe lift undone by heavy loss within 15 s (a policer's bucket let the
//! short probe through) counts as disproved and backs probing off.
//!
//! Cost: [`BandwidthEstimator::on_packet_sent`] is O(1) (one ring write); everything else
//! happens per feedback, in one pass over its packets. Nothing allocates after `new`.

mod acknowledged;
mod delay;
mod history;
mod loss;
mod probe;
mod rate;

use std::time::Instant;

use crate::wire::twcc::TransportFeedback;

use acknowledged::AcknowledgedBitrate;
pub use delay::BandwidthUsage;
use delay::DelayDetector;
use history::{HISTORY_CAPACITY, SendHistory};
use loss::LossBasedBound;
use probe::{PROBE_STEADY_US, ProbeController};
use rate::AimdRateControl;

/// RTT assumed until feedback measures one (libwebrtc's default).
const DEFAULT_RTT_US: i64 = 200_000;
/// Loss at or above this (of non-probe packets in the last second) counts as unsteady.
const UNSTEADY_LOSS: f64 = 0.02;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EstimatorConfig {
    /// The estimate before any feedback.
    pub initial_bps: u64,
    pub min_bps: u64,
    pub max_bps: u64,
}

/// What the estimator thinks, for metrics and for choosing a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimatorState {
    /// min(delay-based, loss-based): what the player's path is believed to carry.
    pub estimate_bps: u64,
    pub delay_based_bps: u64,
    pub usage: BandwidthUsage,
    /// Throughput the player acknowledged over the last 500 ms, probe padding included; 0
    /// until known.
    pub acked_bps: u64,
    /// Of the non-probe packets reported in the last second.
    pub loss_fraction: f64,
    pub rtt_us: i64,
    pub probing: bool,
    pub probes_started: u64,
    pub probes_succeeded: u64,
    pub probes_failed: u64,
    /// Probe lifts undone by heavy loss within 15 s (a policer's bucket fooled the probe).
    pub probes_disproved: u64,
    /// Feedback messages that reported something new.
    pub feedback_used: u64,
    /// Feedback messages that reported nothing new (duplicate, stale, or for numbers never
    /// sent); their packets count in `unknown_statuses` or `duplicate_statuses`.
    pub feedback_ignored: u64,
    pub unknown_statuses: u64,
    pub duplicate_statuses: u64,
}

#[derive(Debug, Clone)]
pub struct BandwidthEstimator {
    config: EstimatorConfig,
    /// Sender-clock times are µs since this (the first call).
    epoch: Option<Instant>,
    history: SendHistory,
    delay: DelayDetector,
    /// Everything the player acknowledged: what the path delivered, the level to back off to.
    acked: AcknowledgedBitrate,
    /// Acknowledged media only (no probe padding): what the sender uses, the ceiling on
    /// increases.
    acked_media: AcknowledgedBitrate,
    rate: AimdRateControl,
    loss: LossBasedBound,
    probe: ProbeController,
    estimate_bps: u64,
    rtt_us: Option<i64>,
    /// Last overuse, underuse, loss or backoff: probes wait for 2 s without one.
    unsteady_at_us: i64,
    feedback_used: u64,
}

impl BandwidthEstimator {
    pub fn new(config: EstimatorConfig) -> Self {
        let max_bps = config.max_bps.max(config.min_bps);
        let config = EstimatorConfig { max_bps, ..config };
        let initial = config.initial_bps.clamp(config.min_bps, max_bps);
        BandwidthEstimator {
            config,
            epoch: None,
            history: SendHistory::new(HISTORY_CAPACITY),
            delay: DelayDetector::new(),
            acked: AcknowledgedBitrate::new(),
            acked_media: AcknowledgedBitrate::new(),
            rate: AimdRateControl::new(initial, config.min_bps, max_bps),
            loss: LossBasedBound::new(initial, config.min_bps, max_bps),
            probe: ProbeController::new(max_bps),
            estimate_bps: initial,
            rtt_us: None,
            // Steady from the start, so a caller wanting more than the initial estimate gets
            // probes at once: each carried probe allows the next at twice the estimate, which
            // is libwebrtc's exponential start-up probing.
            unsteady_at_us: -PROBE_STEADY_US,
            feedback_used: 0,
        }
    }

    pub fn config(&self) -> &EstimatorConfig {
        &self.config
    }

    /// A packet left for the player carrying transport-wide number `transport_sequence`;
    /// `size` counts what crossed the path (RTP header and payload at least, consistently).
    /// `is_probe`: padding sent because [`Self::poll_padding`] asked for it.
    pub fn on_packet_sent(
        &mut self,
        now: Instant,
        transport_sequence: u16,
        size: usize,
        is_probe: bool,
    ) {
        let now_us = self.micros(now);
        let cluster = self.probe.cluster_for(now_us, is_probe);
        self.probe.on_sent(cluster, size);
        self.history
            .on_sent(now_us, transport_sequence, size, cluster, is_probe);
    }

    /// The player's transport-wide feedback; returns how many packets it newly reported (0:
    /// ignored as duplicate, stale or not ours, and counted).
    pub fn on_feedback(&mut self, now: Instant, feedback: &TransportFeedback<'_>) -> usize {
        let now_us = self.micros(now);
        let mut newest_sent_us = None;
        let (delay, acked, acked_media, loss, probe) = (
            &mut self.delay,
            &mut self.acked,
            &mut self.acked_media,
            &mut self.loss,
            &mut self.probe,
        );
        let reported = self.history.on_feedback(feedback, |result| {
            newest_sent_us = newest_sent_us.max(Some(result.sent_us));
            if let Some(arrival_us) = result.arrival_us {
                delay.on_packet(result.sent_us, arrival_us);
                acked.on_received(arrival_us, result.size);
                // Padding is not what the sender sends of its own accord: it must not lift
                // the ceiling on increases (the probe's own result speaks for it).
                if !result.padding {
                    acked_media.on_received(arrival_us, result.size);
                }
            }
            // A probe overshoots on purpose; what it loses is the probe's verdict, not loss
            // to back off from.
            if result.probe_cluster == 0 {
                loss.on_packet(now_us, result.arrival_us.is_some());
            }
            probe.on_result(&result);
        });
        if reported == 0 {
            return 0;
        }
        self.feedback_used += 1;
        if let Some(sent_us) = newest_sent_us {
            let sample = (now_us - sent_us).clamp(1_000, 2_000_000);
            self.rtt_us = Some(self.rtt_us.map_or(sample, |rtt| (7 * rtt + sample) / 8));
        }
        let rtt_us = self.rtt_us.unwrap_or(DEFAULT_RTT_US);
        let usage = self.delay.usage();
        let acked = self.acked.bitrate_bps();
        let used = self.acked_media.bitrate_bps();
        let delay_based = self.rate.update(now_us, usage, acked, used, rtt_us);
        let previous = self.estimate_bps;
        self.estimate_bps = self.loss.update(now_us, delay_based, used, rtt_us);
        if self.loss.last_decrease_us() == Some(now_us) {
            self.probe.on_loss_backoff(now_us);
        }
        if usage != BandwidthUsage::Normal
            || self.loss.loss_fraction() >= UNSTEADY_LOSS
            || self.estimate_bps < previous
        {
            self.unsteady_at_us = now_us;
        }
        if let Some(proved) = self.probe.evaluate(now_us, self.estimate_bps) {
            self.rate.set_estimate(now_us, proved);
            self.loss.set_estimate(now_us, proved);
            self.estimate_bps = self.loss.bitrate_bps();
        }
        self.probe
            .maybe_start(now_us, self.estimate_bps, now_us - self.unsteady_at_us);
        reported
    }

    /// What the player's path is believed to carry, bits per second.
    pub fn estimate_bps(&self) -> u64 {
        self.estimate_bps
    }

    /// The rate the caller would like to send (the next layer's); 0 when it wants no more.
    /// While it is above the estimate and the estimate is steady, probes go out.
    pub fn set_wanted(&mut self, bps: u64) {
        self.probe.set_wanted(bps);
    }

    /// Padding bytes to send now (as padding packets, each reported with `is_probe`); call
    /// every ~10 ms. 0 while no probe runs.
    pub fn poll_padding(&mut self, now: Instant) -> usize {
        let now_us = self.micros(now);
        self.probe.padding_due(now_us)
    }

    pub fn state(&self) -> EstimatorState {
        let history = self.history.counters();
        let probes = self.probe.counters();
        EstimatorState {
            estimate_bps: self.estimate_bps,
            delay_based_bps: self.rate.bitrate_bps(),
            usage: self.delay.usage(),
            acked_bps: self.acked.bitrate_bps().unwrap_or(0),
            loss_fraction: self.loss.loss_fraction(),
            rtt_us: self.rtt_us.unwrap_or(DEFAULT_RTT_US),
            probing: self.probe.probing(),
            probes_started: probes.started,
            probes_succeeded: probes.succeeded,
            probes_failed: probes.failed,
            probes_disproved: probes.disproved,
            feedback_used: self.feedback_used,
            feedback_ignored: history.feedback_ignored,
            unknown_statuses: history.unknown,
            duplicate_statuses: history.duplicates,
        }
    }

    fn micros(&mut self, now: Instant) -> i64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_micros() as i64
    }
}

#[cfg(test)]
mod sim;
