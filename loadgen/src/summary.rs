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
    /// Joins by the second of the ramp they started in (empty in summaries written before
    /// loadgen kept them).
    #[serde(default)]
    pub join_by_second: Vec<crate::join_seconds::JoinSecond>,
    pub jitter_ms_mean: f64,
    pub loadgen: Cost,
    /// The relay's own cost over the steady phase, with `--relay-pid` or `--relay-metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayCost>,
    /// Loss, its repair and what it cost (zeros in summaries written before loadgen measured
    /// them).
    #[serde(default)]
    pub repair: Repair,
    /// Video frames that froze.
    #[serde(default)]
    pub frames: Frames,
    /// Gaps in the media at players, and streams that stopped (the run fails on those).
    #[serde(default)]
    pub media: Media,
    /// With `--simulcast`: the layers players received, by group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulcast: Option<Simulcast>,
    pub errors: Vec<String>,
}

/// A simulcast run: the encodings published, and what each group of players (policed by
/// `--rate-limit`, or not) received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Simulcast {
    /// The encodings, lowest first, and their configured bitrates.
    pub rids: Vec<String>,
    pub layer_kbps: Vec<u32>,
    /// Keyframes publishers sent, by layer (one at the start, then one per request), and the
    /// keyframe requests (PLI, FIR) the relay sent them.
    pub keyframes_sent: Vec<u64>,
    pub keyframe_requests: u64,
    pub groups: Vec<LayerGroup>,
    pub players: Vec<PlayerLayers>,
}

/// The players of one group together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LayerGroup {
    /// `limited` or `unlimited`.
    pub name: String,
    pub rate_limit_kbps: Option<u32>,
    pub players: u64,
    /// Players whose last layer was each layer (by `rids`); players that got no video are
    /// counted nowhere.
    pub final_layer_players: Vec<u64>,
    /// The share of the group's playing time spent on each layer, in percent.
    pub time_share_percent: Vec<f64>,
    pub switches: u64,
    /// The latest switch of any of the group's players, in seconds since the run began: when
    /// the group had settled.
    pub last_switch_s: Option<f64>,
    /// Video after repair (each layer's packets counted by its own stamp sequence).
    pub video_expected_packets: u64,
    pub video_lost_packets: u64,
    pub video_loss_percent: f64,
    /// The same from each player's last switch on: the loss once the group had settled.
    pub settled_video_expected_packets: u64,
    pub settled_video_lost_packets: u64,
    pub settled_video_loss_percent: f64,
    pub frozen_frames: u64,
    pub frames: u64,
    /// What the rate limit dropped on arrival (media, retransmissions and RTCP).
    pub dropped_by_rate_limit: u64,
    /// The relay's padding probes of the players' paths that arrived, and their bytes.
    pub probes_received: u64,
    pub probe_bytes_received: u64,
    /// Mean bitrate a player of the group received (after the policer), first packet to end.
    pub received_kbps_per_player: f64,
}

/// One player's layers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlayerLayers {
    pub group: String,
    pub final_layer: Option<String>,
    pub switches: u64,
    /// Its first switches: seconds since the run began, from and to (RIDs).
    pub switched: Vec<(f64, String, String)>,
    pub time_share_percent: Vec<f64>,
    pub video_loss_percent: f64,
    pub transport_feedback_sent: u64,
}

/// Loss and its repair. Players count packets by the stamp's sequence number, each once: a
/// packet that arrives late (repaired) is received; what never arrives is lost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Repair {
    /// `--loss`: the share of SRTP/SRTCP arrivals dropped at players and publishers.
    pub injected_loss_percent: f64,
    /// `--publish-loss`: the share of publishers' media dropped before it left.
    #[serde(default)]
    pub injected_publish_loss_percent: f64,
    /// Whether the clients offered NACK and RTX (`--no-repair` turns them off).
    pub repair_offered: bool,
    /// Packets dropped by `--loss`: at players (media and RTCP), at publishers (the relay's
    /// RTCP: NACKs, keyframe requests, reports, feedback).
    pub dropped_at_players: u64,
    pub dropped_at_publishers: u64,
    /// Packets dropped by `--publish-loss` on their way out of publishers.
    #[serde(default)]
    pub dropped_by_publishers: u64,
    /// Video after repair: packets from each player's first to its highest, those never
    /// received, and their share (the residual loss).
    pub video_expected_packets: u64,
    pub video_lost_packets: u64,
    pub video_residual_loss_percent: f64,
    /// Audio is not repaired (no NACK for audio, as browsers do): its loss is what the path
    /// took.
    pub audio_expected_packets: u64,
    pub audio_lost_packets: u64,
    pub audio_loss_percent: f64,
    /// Missing packets that players got after a NACK.
    pub repaired_packets: u64,
    /// NACK packets players sent, the sequence numbers they asked for (retries included), and
    /// the missing packets they gave up on.
    pub nacks_sent: u64,
    pub nacked_packets: u64,
    pub given_up_packets: u64,
    /// Retransmissions that reached players (RTX packets, duplicates included) and their
    /// bytes; packets players got twice.
    pub retransmissions_received: u64,
    pub retransmitted_bytes_received: u64,
    pub duplicate_packets: u64,
    /// Retransmitted bytes over media bytes delivered to players, in percent.
    pub retransmission_overhead_percent: f64,
    /// Publishers: NACKs from the relay, packets resent, their bytes, and the share of their
    /// media bytes that was resent; packets asked for that were no longer kept.
    pub publisher_nacks_received: u64,
    pub publisher_retransmitted_packets: u64,
    pub publisher_retransmitted_bytes: u64,
    pub publisher_retransmission_overhead_percent: f64,
    pub publisher_retransmit_misses: u64,
}

/// Video frames (packets sharing an RTP timestamp, the marker bit on the last) counted at
/// players from the first frame each saw begin; frozen: not complete within `freeze_ms` of
/// their first packet's arrival.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Frames {
    pub freeze_ms: f64,
    pub frames: u64,
    pub frozen_frames: u64,
    pub frozen_percent: f64,
}

/// Whether the media kept coming: gaps longer than `gap_after_ms` between a player's packets,
/// and, at the end of the steady phase, players that had received nothing for that long.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Media {
    pub gap_after_ms: f64,
    /// Gaps at all players, a silence under way at the end among them.
    pub gaps: u64,
    pub players_with_gaps: u64,
    pub longest_gap_ms: f64,
    /// Streams none of whose players received media at the end: the stream died.
    pub stopped_streams: Vec<StoppedStream>,
    /// Silent players of streams that still played to others.
    pub silent_players: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoppedStream {
    pub stream: String,
    pub players: u64,
    /// When the last of its players' media arrived, in seconds since the run began.
    pub last_media_s: f64,
}

/// Summaries written before `--relay-pid` worked alone counted the relay's packets.
fn relay_counted() -> String {
    "relay".to_string()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayCost {
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Packets the relay forwarded to players: its `corecast_forwarded_packets_total`
    /// (`packets_from` "relay"), or, for a server without it, those the players received
    /// ("players").
    pub forwarded_packets: u64,
    pub forwarded_pps: f64,
    /// Relay CPU time over forwarded packets.
    pub cpu_ns_per_forwarded_packet: f64,
    pub workers: usize,
    #[serde(default = "relay_counted")]
    pub packets_from: String,
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
    /// `--simulcast`, `--rate-limit` and `--rate-limit-share` (absent in older summaries).
    #[serde(default)]
    pub simulcast: bool,
    #[serde(default)]
    pub rate_limit_kbps: Option<u32>,
    #[serde(default)]
    pub rate_limit_share_percent: Option<f64>,
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
    /// Never received, each packet counted once whatever its retransmissions: the loss after
    /// any repair.
    pub lost_packets: u64,
    pub loss_percent: f64,
    /// New packets that arrived below the highest already received: reordered, or repaired.
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

/// `part` over `whole` in percent; 0 when there is no whole.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// A histogram for latencies in nanoseconds, 1 µs to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds")
}
