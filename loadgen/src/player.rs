//! A player: what it measures of each packet that arrives (loss and order by the stamp's
//! sequence, frames, latency and jitter by the stamp's send time; with simulcast, the layer
//! the stamp names, its switches, and each layer's sequence made continuous).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use corecast::client::{self, Incoming, SessionCounters};
use corecast::util::lock;
use corecast::wire::rtp::RtpHeader;
use hdrhistogram::Histogram;

use crate::layers::LayerLog;
use crate::liveness::Liveness;
use crate::payload::Stamp;
use crate::quality::{Arrival, Frames, Track};
use crate::run::{Shared, Verify};
use crate::summary;

/// What one player measured, read by the progress lines and the report.
pub struct PlayerStats {
    /// The stream's index (`PREFIX-<stream>`).
    pub stream: u32,
    join_started: Instant,
    /// The second of the ramp it started joining in.
    ramp_second: usize,
    /// Gaps in the media, and whether it still comes.
    pub liveness: Liveness,
    joined: bool,
    /// Audio and video, by the stamp's kind.
    pub tracks: [Track; 2],
    pub frames: Frames,
    /// The session's own counters (NACKs, repairs), once connected.
    pub counters: Option<Arc<SessionCounters>>,
    pub latency: Histogram<u64>,
    pub interval: Histogram<u64>,
    pub received_packets: u64,
    pub received_bytes: u64,
    pub malformed: u64,
    /// RFC 3550 interarrival jitter, in nanoseconds.
    pub jitter_ns: f64,
    last_transit_ns: Option<i64>,
    sampled: u64,
    /// Simulcast: the layers received.
    pub layers: LayerLog,
    /// The `--rate-limit` this player's downlink is policed to, if it is.
    pub rate_limit_kbps: Option<u32>,
    /// When its first packet arrived.
    pub first_arrival: Option<Instant>,
    /// The video track's (expected, lost) at the last layer switch: what came after is the
    /// loss once settled.
    pub video_at_last_switch: (u64, u64),
}

impl PlayerStats {
    /// A player of `stream` that starts joining now, in `ramp_second` of the ramp, its
    /// downlink policed to `rate_limit_kbps`.
    pub fn new(stream: u32, rate_limit_kbps: Option<u32>, ramp_second: usize) -> Self {
        let now = Instant::now();
        Self {
            stream,
            join_started: now,
            ramp_second,
            liveness: Liveness::new(now),
            joined: false,
            tracks: [Track::default(), Track::default()],
            frames: Frames::default(),
            counters: None,
            latency: summary::latency_histogram(),
            interval: summary::latency_histogram(),
            received_packets: 0,
            received_bytes: 0,
            malformed: 0,
            jitter_ns: 0.0,
            last_transit_ns: None,
            sampled: 0,
            layers: LayerLog::default(),
            rate_limit_kbps,
            first_arrival: None,
            video_at_last_switch: (0, 0),
        }
    }
}

/// The player's packet handler: each RTP packet into its stats.
pub fn handler(shared: Arc<Shared>, stats: Arc<Mutex<PlayerStats>>) -> client::Handler {
    Box::new(move |incoming| {
        let Incoming::Rtp(packet) = incoming else {
            return;
        };
        let now = Instant::now();
        let mut s = lock(&stats);
        s.received_packets += 1;
        s.received_bytes += packet.len() as u64;
        s.liveness.on_packet(now);
        let Some((header, stamp)) = RtpHeader::parse(packet)
            .ok()
            .and_then(|h| Some((h, Stamp::read(&packet[h.header_len..])?)))
        else {
            s.malformed += 1;
            return;
        };
        if !s.joined {
            s.joined = true;
            s.first_arrival = Some(now);
            let join = now.duration_since(s.join_started).as_nanos() as u64;
            let _ = lock(&shared.join).record(join.max(1_000));
            lock(&shared.join_seconds).joined(s.ramp_second, join);
        }
        let video = stamp.kind & 1 == 1;
        let sequence = if video && stamp.layer > 0 {
            let at_s = now.duration_since(shared.epoch).as_secs_f64();
            let switches = s.layers.switches();
            let sequence = s
                .layers
                .on_video(now, at_s, stamp.layer - 1, stamp.sequence);
            if s.layers.switches() != switches {
                let video = &s.tracks[1];
                s.video_at_last_switch = (video.expected(), video.lost());
            }
            sequence
        } else {
            stamp.sequence
        };
        match s.tracks[usize::from(video)].on_packet(sequence) {
            Arrival::New { .. } if video => {
                s.frames
                    .on_packet(now, header.timestamp, header.marker, stamp.index)
            }
            Arrival::New { .. } => {}
            // A second copy says nothing new about latency or frames.
            Arrival::Duplicate | Arrival::Ignored => return,
        }
        s.sampled += 1;
        if shared.verify == Verify::Sample && !s.sampled.is_multiple_of(16) {
            return;
        }
        let received_ns = now.duration_since(shared.epoch).as_nanos() as i64;
        let transit = received_ns - stamp.sent_ns as i64;
        if let Some(last) = s.last_transit_ns {
            let d = (transit - last).abs() as f64;
            s.jitter_ns += (d - s.jitter_ns) / 16.0;
        }
        s.last_transit_ns = Some(transit);
        let latency = (transit.max(1_000)) as u64;
        let _ = s.latency.record(latency);
        let _ = s.interval.record(latency);
    })
}
