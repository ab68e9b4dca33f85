//! The operator's dashboard: `GET /dashboard`, one self-contained page (no build step, nothing
//! loaded from elsewhere), and `GET /api/dashboard`, the JSON it polls every second and scripts
//! read too (its shape is in the README's "Dashboard" section). It assembles what the control
//! thread and the workers' counters already hold; counters are totals since the relay started,
//! and a reader computes rates from two readings and their `uptime_ms`.
//!
//! Polling, not a server-sent event stream: one short request a second passes the HTTP
//! connection loop's idle timeout and connection cap like any other request, a script or curl
//! reads it as it is, and a page that goes away leaves nothing open.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::cascade::BridgeView;
use super::{Control, SessionFacts, SessionView, TrackView};
use crate::media::SessionId;
use crate::worker::stats::latency_histogram;

const DASHBOARD_HTML: &str = include_str!("../web/dashboard.html");

/// The span the latency panel's recent percentiles cover.
const RECENT: Duration = Duration::from_secs(60);
/// How often the latency history keeps a reading: the recent window is `RECENT` to
/// `RECENT + SAMPLE_EVERY` long while the dashboard is polled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Points per halving of the distance to 100 % in a percentile curve, as HdrHistogram's
/// percentile output (and `loadgen`'s `.hgrm` files) have them.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// `GET /dashboard` and `GET /api/dashboard`, with the latency history they keep.
pub fn routes() -> Router<Arc<Control>> {
    let dashboard = Arc::new(Dashboard {
        started: Instant::now(),
        history: Mutex::new(LatencyHistory::new(Instant::now())),
    });
    Router::new()
        .route("/dashboard", get(|| async { Html(DASHBOARD_HTML) }))
        .route(
            "/api/dashboard",
            get(move |State(control): State<Arc<Control>>| async move {
                Json(dashboard.view(&control, Instant::now()))
            }),
        )
}

struct Dashboard {
    /// Made with the router, before any session: the workers' counters and histograms are
    /// counted from (about) here.
    started: Instant,
    history: Mutex<LatencyHistory>,
}

/// `GET /api/dashboard`.
#[derive(Serialize)]
pub struct DashboardView {
    /// Milliseconds since the relay started, when the counters below were read.
    pub uptime_ms: u64,
    pub totals: Totals,
    pub streams: Vec<StreamRow>,
    pub workers: Vec<WorkerRow>,
    pub latency: LatencyView,
    /// The cascade's republished streams, as `/rest-api/pull/find_all` lists them.
    pub cascade: Vec<BridgeView>,
}

/// The control thread's gauges and counters (since the relay started).
#[derive(Serialize)]
pub struct Totals {
    pub streams: usize,
    pub ports_in_use: usize,
    pub ports_capacity: usize,
    pub sessions_created: u64,
    pub sessions_ended: u64,
    pub offers_rejected: u64,
    pub ports_exhausted: u64,
    pub sessions_refused_per_ip: u64,
}

#[derive(Serialize)]
pub struct StreamRow {
    pub stream: String,
    /// Seconds since its publisher's session was created.
    pub age_s: f64,
    pub tracks: Vec<TrackView>,
    pub publisher: SessionRow,
    pub players: Vec<SessionRow>,
    /// What the publisher has sent since it started (RTP after repair); the page makes a
    /// bitrate of two readings.
    pub packets_in: u64,
    pub bytes_in: u64,
}

#[derive(Serialize)]
pub struct SessionRow {
    #[serde(flatten)]
    pub view: SessionView,
    pub age_s: f64,
    /// The transport ICE nominated (`["udp"]` or `["tcp"]`); before that, what the answer
    /// offered, one or both.
    pub offered_transports: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct WorkerRow {
    pub worker: usize,
    /// Packets waiting in the cross-worker queues towards this worker, now.
    pub ring_occupancy: usize,
    /// Every counter of the worker's stats (`/metrics` shows the same): totals since start,
    /// except the gauges `sessions`, `players` and `tcp_connections`.
    pub counters: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
pub struct LatencyView {
    pub unit: &'static str,
    pub measures: &'static str,
    /// All workers' histograms together, since the relay started.
    pub since_start: Distribution,
    /// The same, over the last `window_s` seconds only: the difference of two readings.
    pub recent: Option<RecentDistribution>,
}

#[derive(Serialize)]
pub struct RecentDistribution {
    /// 60 to 65 while the dashboard is polled; shorter during the relay's first minute, longer
    /// when nothing asked for a while.
    pub window_s: f64,
    #[serde(flatten)]
    pub distribution: Distribution,
}

#[derive(Serialize)]
pub struct Distribution {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// `[percentile (0 to 1), latency µs]` points, HdrHistogram's percentile distribution.
    pub curve: Vec<[f64; 2]>,
}

impl Dashboard {
    fn view(&self, control: &Control, now: Instant) -> DashboardView {
        let workers = control.workers();
        // Read the counters first and `uptime_ms` with them, so rates divide by the right time.
        let uptime_ms = now.saturating_duration_since(self.started).as_millis() as u64;
        let worker_rows = workers
            .iter()
            .map(|w| WorkerRow {
                worker: w.index,
                ring_occupancy: w.ring_occupancy(),
                counters: w.stats.snapshot().into_iter().collect(),
            })
            .collect();
        let mut all = latency_histogram();
        for w in workers {
            // Same bounds: the addition cannot fail.
            let _ = all.add(w.stats.relay_latency.snapshot());
        }
        let recent = self
            .history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .recent(now, &all);
        let (in_use, capacity) = control.ports_in_use();
        let counters = &control.counters;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        DashboardView {
            uptime_ms,
            totals: Totals {
                streams: control.stream_count(),
                ports_in_use: in_use,
                ports_capacity: capacity,
                sessions_created: load(&counters.sessions_created),
                sessions_ended: load(&counters.sessions_ended),
                offers_rejected: load(&counters.offers_rejected),
                ports_exhausted: load(&counters.ports_exhausted),
                sessions_refused_per_ip: load(&counters.sessions_refused_per_ip),
            },
            streams: stream_rows(control, now),
            workers: worker_rows,
            latency: LatencyView {
                unit: "us",
                measures: "receive completion to send submission, per forwarded packet, all workers",
                since_start: describe(&all),
                recent: recent.map(|(window, h)| RecentDistribution {
                    window_s: window.as_secs_f64(),
                    distribution: describe(&h),
                }),
            },
            cascade: control.cascade.find_all(),
        }
    }
}

fn stream_rows(control: &Control, now: Instant) -> Vec<StreamRow> {
    let facts = control.session_facts(now);
    let row = |view: SessionView| session_row(view, &facts);
    control
        .streams()
        .into_iter()
        .map(|s| {
            let publisher = row(s.publisher);
            StreamRow {
                stream: s.stream,
                age_s: publisher.age_s,
                tracks: s.tracks,
                publisher,
                players: s.players.into_iter().map(row).collect(),
                packets_in: s.packets_in,
                bytes_in: s.bytes_in,
            }
        })
        .collect()
}

fn session_row(view: SessionView, facts: &HashMap<SessionId, SessionFacts>) -> SessionRow {
    // `streams()` and `session_facts()` take the registry lock one after the other: a session
    // that ended in between has no facts, and shows age 0 and no transport until next time.
    // Once ICE has nominated a path, its transport is the one shown.
    let (age_s, offered_transports) = match facts.get(&view.session) {
        Some(f) if view.transport.is_some() => {
            (f.age.as_secs_f64(), view.transport.into_iter().collect())
        }
        Some(f) => {
            let offered = [(f.offers_udp, "udp"), (f.offers_tcp, "tcp")];
            let offered = offered.iter().filter(|(o, _)| *o).map(|(_, t)| *t);
            (f.age.as_secs_f64(), offered.collect())
        }
        None => (0.0, Vec::new()),
    };
    SessionRow {
        view,
        age_s,
        offered_transports,
    }
}

fn describe(h: &Histogram<u64>) -> Distribution {
    let us = |ns: u64| ns as f64 / 1e3;
    let curve = h
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|v| [v.quantile_iterated_to(), us(v.value_iterated_to())])
        .collect();
    Distribution {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        max_us: us(h.max()),
        curve,
    }
}

/// Readings of the cumulative relay-latency histogram, one per `SAMPLE_EVERY`, so that the
/// dashboard can subtract the one from about `RECENT` ago and show that span alone. Sans-IO:
/// it takes the time and the reading.
struct LatencyHistory {
    /// Oldest first. The first is the relay's start, when the histogram was empty.
    readings: VecDeque<(Instant, Histogram<u64>)>,
}

impl LatencyHistory {
    fn new(started: Instant) -> LatencyHistory {
        LatencyHistory {
            readings: VecDeque::from([(started, latency_histogram())]),
        }
    }

    /// Keeps `now`'s reading `cumulative` if the last kept one is `SAMPLE_EVERY` old, and
    /// returns what was recorded since the newest reading at least `RECENT` old (or since the
    /// oldest there is), with the length of that span. `None` if the subtraction fails, which
    /// only a histogram that lost counts could make it do.
    fn recent(
        &mut self,
        now: Instant,
        cumulative: &Histogram<u64>,
    ) -> Option<(Duration, Histogram<u64>)> {
        let age = |at: Instant| now.saturating_duration_since(at);
        // Readings older than the newest one old enough are never the base again.
        while self.readings.len() > 1 && age(self.readings[1].0) >= RECENT {
            self.readings.pop_front();
        }
        let (base_at, base) = self.readings.front()?;
        let mut recent = cumulative.clone();
        recent.subtract(base).ok()?;
        let window = age(*base_at);
        if self
            .readings
            .back()
            .is_some_and(|(at, _)| age(*at) >= SAMPLE_EVERY)
        {
            self.readings.push_back((now, cumulative.clone()));
        }
        Some((window, recent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(values_ns: &[u64]) -> Histogram<u64> {
        let mut h = latency_histogram();
        for &v in values_ns {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn recent_window_is_since_start_in_the_first_minute() {
        let start = Instant::now();
        let mut history = LatencyHistory::new(start);
        let now = start + Duration::from_secs(10);
        let (window, h) = history.recent(now, &recorded(&[1_000, 2_000])).unwrap();
        assert_eq!(window, Duration::from_secs(10));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn recent_window_subtracts_the_reading_of_a_minute_ago() {
        let start = Instant::now();
        let mut history = LatencyHistory::new(start);
        // Polled every second for 90 s; 10 fast packets a second for the first 30 s, then 10
        // slow ones a second.
        let mut cumulative = latency_histogram();
        let mut last = None;
        for second in 1..=90u64 {
            let ns = if second <= 30 { 5_000 } else { 800_000 };
            cumulative.record_n(ns, 10).unwrap();
            last = history.recent(start + Duration::from_secs(second), &cumulative);
        }
        let (window, h) = last.unwrap();
        assert!(
            window >= RECENT && window < RECENT + SAMPLE_EVERY,
            "{window:?}"
        );
        // Exactly the packets recorded after the base reading: 10 per second of the window.
        assert_eq!(h.len(), 10 * window.as_secs());
        // The fast first half minute is out of the window.
        assert!(h.value_at_quantile(0.0) >= 790_000, "{}", h.min());
        // Kept readings span the window and one sample step, no more.
        assert!(history.readings.len() <= 14, "{}", history.readings.len());
    }

    #[test]
    fn recent_window_stretches_when_nobody_asked_for_a_while() {
        let start = Instant::now();
        let mut history = LatencyHistory::new(start);
        history.recent(start + Duration::from_secs(5), &recorded(&[1_000]));
        let (window, h) = history
            .recent(start + Duration::from_secs(300), &recorded(&[1_000, 3_000]))
            .unwrap();
        // The only reading before is 295 s old: the window says so rather than claim a minute.
        assert_eq!(window, Duration::from_secs(295));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn distribution_curve_rises_to_the_maximum_on_the_percentile_axis() {
        let mut h = latency_histogram();
        for i in 1..=1000u64 {
            h.record(i * 1_000).unwrap();
        }
        let d = describe(&h);
        assert_eq!(d.count, 1000);
        assert!((d.p50_us - 500.0).abs() <= 5.0, "{}", d.p50_us);
        assert!((d.p99_us - 990.0).abs() <= 10.0, "{}", d.p99_us);
        assert!(d.curve.len() > 20, "{}", d.curve.len());
        assert!(
            d.curve
                .windows(2)
                .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1])
        );
        let last = d.curve.last().unwrap();
        assert_eq!(last[0], 1.0);
        assert!((last[1] - d.max_us).abs() < 1e-9);
        assert!(describe(&latency_histogram()).curve.is_empty());
    }
}
