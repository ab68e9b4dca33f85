//! `summary.json`: what a run did and measured, written by `run` and read by `compare`.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub players: Players,
    pub totals: Totals,
    /// End-to-end latency: publisher's send call to the player's receive.
    pub latency_ms: Percentiles,
    /// Join time: offer sent to the first media packet.
    pub join_ms: Percentiles,
    pub jitter_ms_mean: f64,
    pub loadgen: Cost,
    /// The relay's own cost over the steady phase, with `--relay-pid` and `--relay-metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayCost>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayCost {
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Packets the relay forwarded to players (its `corecast_forwarded_packets_total`).
    pub forwarded_packets: u64,
    pub forwarded_pps: f64,
    /// Relay CPU time over forwarded packets.
    pub cpu_ns_per_forwarded_packet: f64,
    pub workers: usize,
    /// Relay-added latency (receive completion to send submission) over the steady phase:
    /// the difference of two readings of corecast's HdrHistogram (`/api/relay-latency`),
    /// to within 1 %; absent where the relay serves no such histogram. Summaries written
    /// before it was exact hold bucket bounds here.
    #[serde(default, alias = "latency_p50_us_at_most")]
    pub latency_p50_us: Option<f64>,
    #[serde(default, alias = "latency_p99_us_at_most")]
    pub latency_p99_us: Option<f64>,
    #[serde(default, alias = "latency_p999_us_at_most")]
    pub latency_p999_us: Option<f64>,
    #[serde(default)]
    pub latency_max_us: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub whip: String,
    pub whep: String,
    pub streams: u32,
    pub players_per_stream: u32,
    pub transport: String,
    pub video_kbps: u32,
    pub fps: u32,
    pub packet_size: usize,
    pub audio: bool,
    pub duration_s: f64,
    pub ramp_per_s: f64,
    pub verify: String,
    pub find_max: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Players {
    pub target: u64,
    pub joined: u64,
    pub failed: u64,
    pub publishers_joined: u64,
    /// With `--find-max`: the most players the server carried before loss appeared.
    pub max_without_loss: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
    /// Packets players should have seen, from the first to the highest sequence each saw.
    pub expected_packets: u64,
    pub lost_packets: u64,
    pub loss_percent: f64,
    pub reordered_packets: u64,
    pub malformed_packets: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Percentiles {
    /// From a histogram of nanoseconds, in milliseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / 1e6;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
            count: h.len(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cost {
    pub cpu_seconds: f64,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    pub cores: usize,
    /// Video frames a publisher sent later than one frame interval after their time.
    pub late_frames: u64,
    /// Set when the load generator itself may have limited the run.
    pub bottleneck: Option<String>,
}

/// A histogram for latencies in nanoseconds, 1 µs to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds")
}
