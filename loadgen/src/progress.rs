//! The run's clock: once a second a progress line (kept for intervals.json), the end of the
//! ramp (or of find-max) noticed, the relay read as the steady phase begins, and the run
//! ended `duration` after.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use corecast::client::http::HttpClient;
use corecast::util::lock;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use crate::relay::{self, RelaySample};
use crate::run::{RunArgs, Shared};
use crate::summary;

/// Loss in a second above which find-max counts the second as lossy.
const LOSS_THRESHOLD_PERCENT: f64 = 0.1;

/// One second's worth of progress, kept for intervals.json.
#[derive(serde::Serialize)]
pub struct Interval {
    second: u64,
    players: u64,
    publish_pps: u64,
    receive_pps: u64,
    receive_mbps: f64,
    loss_percent: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Simulcast: the players on each layer (lowest first) at the second's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<[u64; 3]>,
}

/// The players' counters summed at one moment.
#[derive(Default, Clone, Copy)]
struct Snapshot {
    received_packets: u64,
    received_bytes: u64,
    expected: u64,
    received_counted: u64,
    sent_packets: u64,
    layers: [u64; 3],
}

/// Sums the players' counters, and moves their latencies since the last snapshot into
/// `interval`.
fn snapshot(shared: &Shared, interval: &mut Histogram<u64>) -> Snapshot {
    let mut s = Snapshot {
        sent_packets: shared.sent_packets.load(Ordering::Relaxed),
        ..Default::default()
    };
    for player in lock(&shared.players).iter() {
        let mut p = lock(player);
        s.received_packets += p.received_packets;
        s.received_bytes += p.received_bytes;
        for t in &p.tracks {
            s.expected += t.expected();
            s.received_counted += t.received();
        }
        if let Some(layer) = p.layers.current() {
            s.layers[usize::from(layer).min(2)] += 1;
        }
        let _ = interval.add(&p.interval);
        p.interval.reset();
    }
    s
}

/// What the seconds of the run left behind.
pub struct Progress {
    pub intervals: Vec<Interval>,
    /// With find-max: the players carried without loss.
    pub max_without_loss: Option<u64>,
    /// The relay as the steady phase began (with `--relay-metrics`).
    pub relay_start: Option<RelaySample>,
}

/// When the ramp (or find-max's search) ended, and find-max's count of lossy seconds.
#[derive(Default)]
struct RampEnd {
    at: Option<Instant>,
    lossy_seconds: u32,
    last_clean_players: u64,
    max_without_loss: Option<u64>,
}

impl RampEnd {
    /// Notes one second: find-max ends at two lossy seconds in a row, a failed player or
    /// `duration`; a plain ramp once every player has joined or failed.
    fn update(&mut self, run: &Watch<'_>, loss: f64, players: u64) {
        if self.at.is_some() {
            return;
        }
        let shared = run.shared;
        if run.args.find_max {
            if loss > LOSS_THRESHOLD_PERCENT {
                self.lossy_seconds += 1;
            } else {
                self.lossy_seconds = 0;
                self.last_clean_players = players;
            }
            let failing = shared.failures.load(Ordering::Relaxed) > 0;
            let elapsed = run.wall_start.elapsed().as_secs_f64();
            if self.lossy_seconds >= 2 || failing || elapsed > run.args.duration {
                self.max_without_loss = Some(self.last_clean_players);
                shared.stop_ramp.store(true, Ordering::Relaxed);
                self.at = Some(Instant::now());
            }
        } else if run.ramp.is_finished() {
            let settled = players + shared.failures.load(Ordering::Relaxed) >= run.target;
            if settled {
                self.at = Some(Instant::now());
            }
        }
    }
}

/// What the clock watches.
pub struct Watch<'a> {
    pub args: &'a RunArgs,
    pub shared: &'a Shared,
    pub http: &'a HttpClient,
    /// The ramp's task (finished once the last player was started).
    pub ramp: &'a JoinHandle<()>,
    /// Players the ramp starts.
    pub target: u64,
    pub wall_start: Instant,
}

impl Watch<'_> {
    /// Runs the clock until the run ends: `duration` after the ramp finished (a second after
    /// find-max's search).
    pub async fn run(&self) -> Progress {
        let mut intervals = Vec::new();
        let mut previous = Snapshot::default();
        let mut ramp_end = RampEnd::default();
        let mut relay_start = None;
        let linger = if self.args.find_max {
            Duration::from_secs(1)
        } else {
            Duration::from_secs_f64(self.args.duration)
        };
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (record, now) = self.second(intervals.len() as u64 + 1, &previous);
            previous = now;
            self.print(&record);
            ramp_end.update(self, record.loss_percent, record.players);
            intervals.push(record);
            if ramp_end.at.is_some() && relay_start.is_none() {
                relay_start = relay::sample(self.http, self.args, self.shared).await;
            }
            if ramp_end.at.is_some_and(|t| t.elapsed() >= linger) {
                break;
            }
        }
        Progress {
            intervals,
            max_without_loss: ramp_end.max_without_loss,
            relay_start,
        }
    }

    /// Second `second`: what changed since `previous`.
    fn second(&self, second: u64, previous: &Snapshot) -> (Interval, Snapshot) {
        let mut interval_hist = summary::latency_histogram();
        let now = snapshot(self.shared, &mut interval_hist);
        let expected = now.expected.saturating_sub(previous.expected);
        let got = now
            .received_counted
            .saturating_sub(previous.received_counted);
        let loss = if expected > 0 {
            100.0 * expected.saturating_sub(got) as f64 / expected as f64
        } else {
            0.0
        };
        let record = Interval {
            second,
            players: self.shared.players_up.load(Ordering::Relaxed),
            publish_pps: now.sent_packets - previous.sent_packets,
            receive_pps: now.received_packets - previous.received_packets,
            receive_mbps: (now.received_bytes - previous.received_bytes) as f64 * 8.0 / 1e6,
            loss_percent: loss,
            p50_ms: interval_hist.value_at_quantile(0.5) as f64 / 1e6,
            p99_ms: interval_hist.value_at_quantile(0.99) as f64 / 1e6,
            layers: self.args.simulcast.then_some(now.layers),
        };
        (record, now)
    }

    /// The progress line, unless `--quiet`.
    fn print(&self, record: &Interval) {
        if self.args.quiet {
            return;
        }
        let args = self.args;
        let layers = record.layers.map_or(String::new(), |[l, m, h]| {
            format!("  layers l/m/h {l}/{m}/{h}")
        });
        println!(
            "[{:>4}s] clients {:>5}/{:<5} pub {:>8} pkt/s  recv {:>9} pkt/s {:>8.1} Mbit/s  loss {:>7.3}%  p50 {:>7.3} ms  p99 {:>7.3} ms{layers}",
            record.second,
            record.players + self.shared.publishers_up.load(Ordering::Relaxed),
            if args.find_max {
                "max".to_string()
            } else {
                (self.target + args.streams as u64).to_string()
            },
            record.publish_pps,
            record.receive_pps,
            record.receive_mbps,
            record.loss_percent,
            record.p50_ms,
            record.p99_ms
        );
    }
}
