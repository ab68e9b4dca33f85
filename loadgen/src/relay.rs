//! What the relay says about itself: its packet counters from `/metrics`, its CPU time from
//! /proc, its relay-latency histogram; and the cost of the run's steady phase from two such
//! readings. Any WHIP/WHEP server's CPU can be read with `--relay-pid` alone: its packets are
//! then those the players received, which is what it forwarded to them less any loss.

use std::time::{Duration, Instant};

use base64::Engine as _;
use corecast::client::http::HttpClient;
use hdrhistogram::Histogram;

use crate::run::{RunArgs, Shared};
use crate::summary::RelayCost;

/// What the relay says about itself at one moment.
#[derive(Clone, Default)]
pub struct RelaySample {
    at: Option<Instant>,
    cpu_seconds: f64,
    /// From corecast's `/metrics`, when read.
    forwarded: Option<u64>,
    workers: usize,
    /// Packets the players received so far.
    received_by_players: u64,
    /// The relay-latency histogram of all workers (ns), when the relay serves one.
    latency: Option<Histogram<u64>>,
}

/// Where corecast serves its relay-latency HdrHistogram, beside its `/metrics`.
fn relay_latency_url(metrics: &str) -> Option<String> {
    metrics
        .strip_suffix("/metrics")
        .map(|base| format!("{base}/api/relay-latency"))
}

/// Reads corecast's relay-latency histogram: all workers together, decoded from
/// HdrHistogram's interchange encoding.
async fn fetch_relay_latency(http: &HttpClient, url: &str) -> Option<Histogram<u64>> {
    let body = http
        .request("GET", url, None, "", Duration::from_secs(5))
        .await
        .ok()?
        .body;
    let report: serde_json::Value = serde_json::from_str(&body).ok()?;
    let encoded = report["all"]["histogram"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .ok()
}

/// Reads the relay now: `None` without `--relay-metrics` or `--relay-pid`, or when the
/// given `/metrics` does not answer.
pub async fn sample(http: &HttpClient, args: &RunArgs, shared: &Shared) -> Option<RelaySample> {
    if args.relay_metrics.is_none() && args.relay_pid.is_none() {
        return None;
    }
    let mut sample = RelaySample {
        at: Some(Instant::now()),
        received_by_players: crate::report::received_by_players(shared),
        ..Default::default()
    };
    if let Some(metrics) = args.relay_metrics.as_deref() {
        let body = http
            .request("GET", metrics, None, "", Duration::from_secs(5))
            .await
            .ok()?
            .body;
        let mut forwarded = 0;
        for line in body.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if name.starts_with("corecast_forwarded_packets_total{") {
                forwarded += value.parse::<u64>().unwrap_or(0);
                sample.workers += 1;
            }
        }
        sample.forwarded = Some(forwarded);
        if let Some(url) = relay_latency_url(metrics) {
            sample.latency = fetch_relay_latency(http, &url).await;
        }
    }
    if let Some(pid) = args.relay_pid {
        sample.cpu_seconds = process_cpu_seconds(&format!("/proc/{pid}/stat"));
    }
    Some(sample)
}

/// Reads the relay again at the end of the steady phase that began with `start`: its cost
/// over that time and its relay-latency histogram (each absent when not read).
pub async fn finish(
    http: &HttpClient,
    args: &RunArgs,
    shared: &Shared,
    start: Option<&RelaySample>,
) -> (Option<RelayCost>, Option<Histogram<u64>>) {
    let Some(start) = start else {
        return (None, None);
    };
    match sample(http, args, shared).await {
        Some(end) => {
            let (cost, latency) = relay_cost(start, &end);
            (Some(cost), latency)
        }
        None => (None, None),
    }
}

/// The relay's cost between two samples, and its relay-latency histogram over that time.
fn relay_cost(start: &RelaySample, end: &RelaySample) -> (RelayCost, Option<Histogram<u64>>) {
    let seconds = match (start.at, end.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let (forwarded, packets_from) = match (start.forwarded, end.forwarded) {
        (Some(before), Some(after)) => (after.saturating_sub(before), "relay"),
        _ => (
            end.received_by_players
                .saturating_sub(start.received_by_players),
            "players",
        ),
    };
    let cpu = (end.cpu_seconds - start.cpu_seconds).max(0.0);
    // The relay's histogram only grows: the later reading less the earlier is this run.
    let latency = match (&start.latency, &end.latency) {
        (Some(before), Some(after)) => {
            let mut run = after.clone();
            run.subtract(before).ok().map(|_| run)
        }
        _ => None,
    };
    let us = |q: f64| {
        latency
            .as_ref()
            .map(|h| h.value_at_quantile(q) as f64 / 1e3)
    };
    let cost = RelayCost {
        seconds,
        cpu_seconds: cpu,
        forwarded_packets: forwarded,
        forwarded_pps: forwarded as f64 / seconds.max(0.001),
        cpu_ns_per_forwarded_packet: if forwarded > 0 {
            cpu * 1e9 / forwarded as f64
        } else {
            0.0
        },
        workers: end.workers,
        packets_from: packets_from.to_string(),
        latency_p50_us: us(0.5),
        latency_p99_us: us(0.99),
        latency_p999_us: us(0.999),
        latency_max_us: latency.as_ref().map(|h| h.max() as f64 / 1e3),
    };
    (cost, latency)
}

/// CPU time this process used so far, from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    process_cpu_seconds("/proc/self/stat")
}

/// User and system CPU time of a process, from its /proc stat file.
fn process_cpu_seconds(stat_file: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_file) else {
        return 0.0;
    };
    let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = corecast::io::sys::clock_ticks_per_second() as f64;
    (ticks(11) + ticks(12)) / hz
}
