//! Delay-based overuse detection as libwebrtc's GCC: packets are grouped into send bursts
//! (InterArrivalDelta: 5 ms of send time), the growth of one-way delay between consecutive
//! groups is accumulated, smoothed and fitted with a line over the last 20 groups
//! (TrendlineEstimator), and the slope, scaled, is compared with a threshold that adapts to
//! the path's own jitter; a slope above it for more than 10 ms means a queue is building.

/// What the delay trend says about the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BandwidthUsage {
    #[default]
    Normal,
    /// Queueing delay is growing: the sender exceeds the bottleneck.
    Overusing,
    /// Queueing delay is shrinking: a queue is draining.
    Underusing,
}

/// Packets sent within this long of a group's first packet form one group.
const SEND_GROUP_US: i64 = 5_000;
/// A packet arriving within this long of the previous one, earlier than its send spacing
/// predicts, belongs to the same burst (a queue released it together with the others).
const BURST_DELTA_US: i64 = 5_000;
const MAX_BURST_US: i64 = 100_000;
/// A jump of the arrival clock beyond the send clock by this much restarts the grouping.
const ARRIVAL_OFFSET_RESET_US: i64 = 3_000_000;
const REORDERED_RESET: u32 = 3;

const WINDOW: usize = 20;
const SMOOTHING: f64 = 0.9;
const THRESHOLD_GAIN: f64 = 4.0;
const MIN_DELTAS_SCALE: u32 = 60;
const OVERUSING_TIME_MS: f64 = 10.0;
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
const MAX_ADAPT_OFFSET_MS: f64 = 15.0;
const INITIAL_THRESHOLD_MS: f64 = 12.5;

#[derive(Debug, Clone, Copy)]
struct Group {
    first_send_us: i64,
    last_send_us: i64,
    first_arrival_us: i64,
    /// The latest arrival of the group.
    complete_us: i64,
}

/// Timing of one group relative to the group before it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GroupDeltas {
    send_delta_us: i64,
    arrival_delta_us: i64,
    arrival_us: i64,
}

/// Splits packets into send groups and yields the deltas between consecutive groups.
#[derive(Debug, Clone, Default)]
struct InterArrival {
    current: Option<Group>,
    previous: Option<Group>,
    reordered: u32,
}

impl InterArrival {
    fn on_packet(&mut self, sent_us: i64, arrival_us: i64) -> Option<GroupDeltas> {
        let Some(mut current) = self.current else {
            self.current = Some(Group {
                first_send_us: sent_us,
                last_send_us: sent_us,
                first_arrival_us: arrival_us,
                complete_us: arrival_us,
            });
            return None;
        };
        if sent_us < current.first_send_us {
            // Sent before the group it arrived in: reordered, tells nothing.
            return None;
        }
        let mut deltas = None;
        if self.starts_new_group(&current, sent_us, arrival_us) {
            if let Some(previous) = self.previous {
                let send_delta_us = current.last_send_us - previous.last_send_us;
                let arrival_delta_us = current.complete_us - previous.complete_us;
                if arrival_delta_us - send_delta_us >= ARRIVAL_OFFSET_RESET_US {
                    *self = InterArrival::default();
                    return None;
                }
                if arrival_delta_us < 0 {
                    self.reordered += 1;
                    if self.reordered >= REORDERED_RESET {
                        *self = InterArrival::default();
                    }
                    return None;
                }
                self.reordered = 0;
                deltas = Some(GroupDeltas {
                    send_delta_us,
                    arrival_delta_us,
                    arrival_us: current.complete_us,
                });
            }
            self.previous = Some(current);
            current = Group {
                first_send_us: sent_us,
                last_send_us: sent_us,
                first_arrival_us: arrival_us,
                complete_us: arrival_us,
            };
        } else {
            current.last_send_us = current.last_send_us.max(sent_us);
            current.complete_us = current.complete_us.max(arrival_us);
        }
        self.current = Some(current);
        deltas
    }

    fn starts_new_group(&self, current: &Group, sent_us: i64, arrival_us: i64) -> bool {
        let arrival_delta = arrival_us - current.complete_us;
        let send_delta = sent_us - current.last_send_us;
        let in_burst = send_delta == 0
            || (arrival_delta - send_delta < 0
                && arrival_delta <= BURST_DELTA_US
                && arrival_us - current.first_arrival_us < MAX_BURST_US);
        !in_burst && sent_us - current.first_send_us > SEND_GROUP_US
    }
}

/// Fits the smoothed accumulated delay over the last [`WINDOW`] groups and detects overuse.
#[derive(Debug, Clone)]
struct Trendline {
    /// (arrival since the first group, smoothed accumulated delay), ms, oldest first from
    /// `start` in a ring.
    points: [(f64, f64); WINDOW],
    len: usize,
    start: usize,
    first_arrival_us: Option<i64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    deltas: u32,
    previous_trend: f64,
    threshold_ms: f64,
    last_threshold_update_ms: Option<f64>,
    time_over_using_ms: Option<f64>,
    overuse_count: u32,
    usage: BandwidthUsage,
}

impl Trendline {
    fn new() -> Self {
        Trendline {
            points: [(0.0, 0.0); WINDOW],
            len: 0,
            start: 0,
            first_arrival_us: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            deltas: 0,
            previous_trend: 0.0,
            threshold_ms: INITIAL_THRESHOLD_MS,
            last_threshold_update_ms: None,
            time_over_using_ms: None,
            overuse_count: 0,
            usage: BandwidthUsage::Normal,
        }
    }

    fn update(&mut self, d: GroupDeltas) {
        let delay_ms = (d.arrival_delta_us - d.send_delta_us) as f64 / 1000.0;
        self.deltas = (self.deltas + 1).min(1000);
        let first = *self.first_arrival_us.get_or_insert(d.arrival_us);
        self.accumulated_ms += delay_ms;
        self.smoothed_ms = SMOOTHING * self.smoothed_ms + (1.0 - SMOOTHING) * self.accumulated_ms;
        let x_ms = (d.arrival_us - first) as f64 / 1000.0;
        if self.len < WINDOW {
            self.points[(self.start + self.len) % WINDOW] = (x_ms, self.smoothed_ms);
            self.len += 1;
        } else {
            self.points[self.start] = (x_ms, self.smoothed_ms);
            self.start = (self.start + 1) % WINDOW;
        }
        let trend = if self.len == WINDOW {
            self.slope().unwrap_or(self.previous_trend)
        } else {
            self.previous_trend
        };
        self.detect(trend, d.send_delta_us as f64 / 1000.0, x_ms);
    }

    fn slope(&self) -> Option<f64> {
        let n = self.len as f64;
        let (sum_x, sum_y) = self
            .points
            .iter()
            .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y));
        let (mean_x, mean_y) = (sum_x / n, sum_y / n);
        let (num, den) = self.points.iter().fold((0.0, 0.0), |(num, den), &(x, y)| {
            (
                num + (x - mean_x) * (y - mean_y),
                den + (x - mean_x) * (x - mean_x),
            )
        });
        (den != 0.0).then(|| num / den)
    }

    fn detect(&mut self, trend: f64, send_delta_ms: f64, now_ms: f64) {
        if self.deltas < 2 {
            self.usage = BandwidthUsage::Normal;
            return;
        }
        let modified = f64::from(self.deltas.min(MIN_DELTAS_SCALE)) * trend * THRESHOLD_GAIN;
        if modified > self.threshold_ms {
            let over = match self.time_over_using_ms {
                None => send_delta_ms / 2.0,
                Some(t) => t + send_delta_ms,
            };
            self.time_over_using_ms = Some(over);
            self.overuse_count += 1;
            if over > OVERUSING_TIME_MS && self.overuse_count > 1 && trend >= self.previous_trend {
                self.time_over_using_ms = Some(0.0);
                self.overuse_count = 0;
                self.usage = BandwidthUsage::Overusing;
            }
        } else {
            self.time_over_using_ms = None;
            self.overuse_count = 0;
            self.usage = if modified < -self.threshold_ms {
                BandwidthUsage::Underusing
            } else {
                BandwidthUsage::Normal
            };
        }
        self.previous_trend = trend;
        self.adapt_threshold(modified, now_ms);
    }

    /// The threshold follows |modified trend| slowly upwards and faster downwards, so jitter
    /// the path always has does not read as overuse, yet a real queue still stands out.
    /// Spikes far above it (a real queue) do not drag it up.
    fn adapt_threshold(&mut self, modified: f64, now_ms: f64) {
        let last = *self.last_threshold_update_ms.get_or_insert(now_ms);
        self.last_threshold_update_ms = Some(now_ms);
        let magnitude = modified.abs();
        if magnitude > self.threshold_ms + MAX_ADAPT_OFFSET_MS {
            return;
        }
        let k = if magnitude < self.threshold_ms {
            K_DOWN
        } else {
            K_UP
        };
        let elapsed_ms = (now_ms - last).clamp(0.0, 100.0);
        self.threshold_ms += k * (magnitude - self.threshold_ms) * elapsed_ms;
        self.threshold_ms = self.threshold_ms.clamp(6.0, 600.0);
    }
}

/// Feeds received packets, in the order the feedback reports them, through the grouping and
/// the trendline.
#[derive(Debug, Clone)]
pub(super) struct DelayDetector {
    inter_arrival: InterArrival,
    trendline: Trendline,
}

impl DelayDetector {
    pub(super) fn new() -> Self {
        DelayDetector {
            inter_arrival: InterArrival::default(),
            trendline: Trendline::new(),
        }
    }

    pub(super) fn on_packet(&mut self, sent_us: i64, arrival_us: i64) {
        if let Some(deltas) = self.inter_arrival.on_packet(sent_us, arrival_us) {
            self.trendline.update(deltas);
        }
    }

    pub(super) fn usage(&self) -> BandwidthUsage {
        self.trendline.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets every `spacing_us` whose one-way delay grows by `growth_us` per packet.
    fn run(detector: &mut DelayDetector, from: i64, count: i64, spacing_us: i64, growth_us: i64) {
        for i in from..from + count {
            let sent = i * spacing_us;
            detector.on_packet(sent, 50_000 + sent + i * growth_us);
        }
    }

    #[test]
    fn packets_sent_within_5_ms_form_one_group() {
        let mut ia = InterArrival::default();
        let mut deltas = Vec::new();
        // Groups at 0, 10 and 20 ms of three packets 1 ms apart; arrivals 2 ms apart.
        for group in 0..3 {
            for i in 0..3 {
                let sent = group * 10_000 + i * 1_000;
                deltas.extend(ia.on_packet(sent, 40_000 + group * 12_000 + i * 2_000));
            }
        }
        deltas.extend(ia.on_packet(30_000, 80_000));
        // Group 1 against group 0, group 2 against group 1: last send, last arrival each.
        let expected = GroupDeltas {
            send_delta_us: 10_000,
            arrival_delta_us: 12_000,
            arrival_us: 40_000 + 12_000 + 4_000,
        };
        assert_eq!(deltas.len(), 2);
        assert_eq!(deltas[0], expected);
        assert_eq!(deltas[1].arrival_us, 40_000 + 24_000 + 4_000);
    }

    #[test]
    fn a_reordered_packet_is_skipped() {
        let mut ia = InterArrival::default();
        assert!(ia.on_packet(0, 100).is_none());
        assert!(ia.on_packet(10_000, 10_100).is_none());
        // Sent before the current group started.
        assert!(ia.on_packet(5_000, 10_200).is_none());
        assert_eq!(ia.current.unwrap().first_send_us, 10_000);
        assert!(ia.on_packet(20_000, 20_100).is_some());
    }

    #[test]
    fn constant_delay_is_normal() {
        let mut d = DelayDetector::new();
        run(&mut d, 0, 500, 10_000, 0);
        assert_eq!(d.usage(), BandwidthUsage::Normal);
    }

    #[test]
    fn growing_delay_is_overuse_and_shrinking_delay_underuse() {
        let mut d = DelayDetector::new();
        run(&mut d, 0, 100, 10_000, 0);
        // 1 ms more queueing per 10 ms group: a sender 10 % above the bottleneck.
        let mut first_overuse = None;
        for i in 100..200 {
            run(&mut d, i, 1, 10_000, 1_000);
            if d.usage() == BandwidthUsage::Overusing {
                first_overuse.get_or_insert(i);
            }
        }
        let at = first_overuse.expect("overuse detected");
        assert!(at < 130, "detected after {} groups", at - 100);
        // The queue drains.
        let mut d2 = DelayDetector::new();
        for i in 0..100 {
            d2.on_packet(i * 10_000, 400_000 + i * 10_000 - i * 2_000);
        }
        assert_eq!(d2.usage(), BandwidthUsage::Underusing);
    }

    #[test]
    fn the_threshold_falls_on_a_quiet_path_and_rises_with_a_persistent_trend() {
        let mut d = DelayDetector::new();
        run(&mut d, 0, 300, 10_000, 0);
        assert_eq!(d.trendline.threshold_ms, 6.0, "down to the floor");
        // 0.4 ms more delay per 10 ms group: a modified trend of ~9.6, within reach (15 ms)
        // of the threshold, which follows it up.
        for i in 300..1300i64 {
            let sent = i * 10_000;
            d.on_packet(sent, 50_000 + sent + (i - 300) * 400);
        }
        let threshold = d.trendline.threshold_ms;
        assert!((9.0..9.7).contains(&threshold), "{threshold}");
    }

    #[test]
    fn steady_jitter_does_not_read_as_overuse() {
        let mut d = DelayDetector::new();
        // ±4 ms of alternating jitter on every other group.
        for i in 0..3000i64 {
            let sent = i * 10_000;
            let jitter = if (i / 7) % 2 == 0 { 0 } else { 4_000 };
            d.on_packet(sent, 50_000 + sent + jitter);
        }
        let t = &d.trendline;
        assert!(t.threshold_ms >= 6.0 && t.threshold_ms <= 600.0);
        let overuses_late = (3000..3500i64)
            .filter(|&i| {
                let sent = i * 10_000;
                let jitter = if (i / 7) % 2 == 0 { 0 } else { 4_000 };
                d.on_packet(sent, 50_000 + sent + jitter);
                d.usage() == BandwidthUsage::Overusing
            })
            .count();
        assert_eq!(overuses_late, 0);
    }
}
