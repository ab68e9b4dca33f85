//! The relay-latency HdrHistograms (receive completion to send submission, per forwarded
//! packet) as users read them: Prometheus buckets and quantiles in `/metrics`, and
//! `GET /api/relay-latency` with each worker's percentiles and its histogram in HdrHistogram's
//! interchange encoding (V2, deflated, base64: what HdrHistogram logs and plotters read), so a
//! load generator can subtract two readings and see one run's distribution exactly.

use std::fmt::Write as _;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
use serde_json::{Value, json};

use crate::worker::WorkerHandle;
use crate::worker::stats::{LATENCY_BUCKETS_US, LATENCY_SIGNIFICANT_DIGITS, latency_histogram};

/// Quantiles `/metrics` reports from each histogram.
const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

/// Appends the relay-latency histogram (Prometheus buckets derived from the HdrHistogram) and
/// a summary with its quantiles, per worker.
pub fn write_prometheus(workers: &[WorkerHandle], out: &mut String) {
    let histograms: Vec<(usize, Histogram<u64>)> = workers
        .iter()
        .map(|w| (w.index, w.stats.relay_latency.snapshot()))
        .collect();
    let _ = writeln!(
        out,
        "# HELP corecast_relay_latency_seconds Receive completion to send submission, per forwarded packet (from an HdrHistogram, values to within 1 %).\n# TYPE corecast_relay_latency_seconds histogram"
    );
    for (worker, h) in &histograms {
        for bound in LATENCY_BUCKETS_US {
            let le = bound as f64 / 1e6;
            let cumulative = h.count_between(0, bound * 1000);
            let _ = writeln!(
                out,
                "corecast_relay_latency_seconds_bucket{{worker=\"{worker}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "corecast_relay_latency_seconds_bucket{{worker=\"{worker}\",le=\"+Inf\"}} {}\ncorecast_relay_latency_seconds_sum{{worker=\"{worker}\"}} {}\ncorecast_relay_latency_seconds_count{{worker=\"{worker}\"}} {}",
            h.len(),
            sum_seconds(h),
            h.len()
        );
    }
    let _ = writeln!(
        out,
        "# HELP corecast_relay_latency_summary_seconds Quantiles of the same relay-latency HdrHistogram.\n# TYPE corecast_relay_latency_summary_seconds summary"
    );
    for (worker, h) in &histograms {
        for q in QUANTILES {
            let _ = writeln!(
                out,
                "corecast_relay_latency_summary_seconds{{worker=\"{worker}\",quantile=\"{q}\"}} {}",
                h.value_at_quantile(q) as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "corecast_relay_latency_summary_seconds_sum{{worker=\"{worker}\"}} {}\ncorecast_relay_latency_summary_seconds_count{{worker=\"{worker}\"}} {}",
            sum_seconds(h),
            h.len()
        );
    }
}

/// `GET /api/relay-latency`: every worker's histogram and all of them together.
pub fn report(workers: &[WorkerHandle]) -> Value {
    let mut all = latency_histogram();
    let mut per_worker = Vec::new();
    for w in workers {
        let h = w.stats.relay_latency.snapshot();
        // Same bounds: the addition cannot fail.
        let _ = all.add(&h);
        let mut entry = describe(&h);
        entry["worker"] = json!(w.index);
        per_worker.push(entry);
    }
    json!({
        "unit": "ns",
        "measures": "receive completion to send submission, per forwarded packet, since the relay started",
        "significant_digits": LATENCY_SIGNIFICANT_DIGITS,
        "encoding": "HdrHistogram V2, deflated, base64",
        "all": describe(&all),
        "workers": per_worker,
    })
}

fn describe(h: &Histogram<u64>) -> Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    json!({
        "count": h.len(),
        "p50_us": us(0.5),
        "p90_us": us(0.9),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "p9999_us": us(0.9999),
        "max_us": h.max() as f64 / 1e3,
        "mean_us": if h.is_empty() { 0.0 } else { h.mean() / 1e3 },
        "histogram": encode(h),
    })
}

/// The histogram in HdrHistogram's interchange encoding.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec fails only on a counts array too large to encode, which the
    // fixed bounds rule out; an empty string then says "no histogram".
    if V2DeflateSerializer::new().serialize(h, &mut bytes).is_err() {
        return String::new();
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sum_seconds(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.mean() * h.len() as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn encoded_histogram_decodes_to_the_same_counts() {
        let mut h = latency_histogram();
        for ns in [800, 15_000, 15_100, 95_000, 2_000_000] {
            h.record(ns).unwrap();
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encode(&h))
            .unwrap();
        let back: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn description_reports_percentiles_in_microseconds() {
        let mut h = latency_histogram();
        for _ in 0..99 {
            h.record(10_000).unwrap();
        }
        h.record(5_000_000).unwrap();
        let d = describe(&h);
        assert_eq!(d["count"], 100);
        let p50 = d["p50_us"].as_f64().unwrap();
        assert!((9.9..=10.1).contains(&p50), "{p50}");
        let max = d["max_us"].as_f64().unwrap();
        assert!((4950.0..=5050.0).contains(&max), "{max}");
    }
}
