//! The closing report: the players' and publishers' counters summed into `summary.json`,
//! latency histograms into `.hgrm` files, the seconds into `intervals.json`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use corecast::client::Session;
use corecast::util::lock;
use hdrhistogram::Histogram;

use crate::liveness::GAP_AFTER;
use crate::player::PlayerStats;
use crate::progress::Interval;
use crate::quality;
use crate::run::{RunArgs, Shared};
use crate::summary::{
    self, Cost, Media, Percentiles, Players, RelayCost, Repair, Scenario, StoppedStream, Summary,
    Totals, percent,
};

/// What the run itself measured, beside the clients' counters.
pub struct Measured {
    /// Players the ramp was to start (0 with find-max).
    pub target: u64,
    pub max_without_loss: Option<u64>,
    pub relay: Option<RelayCost>,
    /// The players' media as the steady phase ended.
    pub media: Media,
    /// The load generator's CPU and wall time over the run.
    pub cpu: f64,
    pub wall: f64,
}

/// The summary, and the histograms that go into files beside it.
pub struct Report {
    pub summary: Summary,
    /// End-to-end latency of all players (ns).
    pub latency: Histogram<u64>,
    /// Join times (ns).
    pub join: Histogram<u64>,
}

/// Sums what the players and publishers counted into the run's summary.
pub fn summarize(
    args: &RunArgs,
    shared: &Shared,
    publishers: &[Session],
    measured: Measured,
) -> Report {
    let mut totals = Totals {
        sent_packets: shared.sent_packets.load(Ordering::Relaxed),
        sent_bytes: shared.sent_bytes.load(Ordering::Relaxed),
        ..Default::default()
    };
    let mut repair = Repair {
        injected_loss_percent: args.loss,
        injected_publish_loss_percent: args.publish_loss,
        repair_offered: !args.no_repair,
        ..Default::default()
    };
    let mut frames = summary::Frames {
        freeze_ms: quality::FREEZE_AFTER.as_secs_f64() * 1e3,
        ..Default::default()
    };
    let players = lock(&shared.players).clone();
    let (latency, jitter_sum) = tally_players(&players, &mut totals, &mut repair, &mut frames);
    let simulcast = args
        .simulcast
        .then(|| crate::layer_report::summarize(args, shared, &players, Instant::now()));
    tally_publishers(publishers, &mut repair);
    totals.loss_percent = percent(totals.lost_packets, totals.expected_packets);
    repair.video_residual_loss_percent =
        percent(repair.video_lost_packets, repair.video_expected_packets);
    repair.audio_loss_percent = percent(repair.audio_lost_packets, repair.audio_expected_packets);
    repair.retransmission_overhead_percent =
        percent(repair.retransmitted_bytes_received, totals.received_bytes);
    repair.publisher_retransmission_overhead_percent =
        percent(repair.publisher_retransmitted_bytes, totals.sent_bytes);
    frames.frozen_percent = percent(frames.frozen_frames, frames.frames);
    let join = lock(&shared.join).clone();
    let summary = Summary {
        scenario: scenario(args),
        players: Players {
            target: measured.target,
            joined: shared.players_up.load(Ordering::Relaxed),
            failed: shared.failures.load(Ordering::Relaxed),
            publishers_joined: shared.publishers_up.load(Ordering::Relaxed),
            max_without_loss: measured.max_without_loss,
        },
        totals,
        latency_ms: Percentiles::from_ns(&latency),
        join_ms: Percentiles::from_ns(&join),
        join_by_second: lock(&shared.join_seconds).rows(),
        jitter_ms_mean: if players.is_empty() {
            0.0
        } else {
            jitter_sum / players.len() as f64 / 1e6
        },
        loadgen: loadgen_cost(args, shared, measured.cpu, measured.wall),
        relay: measured.relay,
        repair,
        frames,
        media: measured.media,
        simulcast,
        errors: lock(&shared.errors).clone(),
    };
    Report {
        summary,
        latency,
        join,
    }
}

/// Packets all players received so far.
pub fn received_by_players(shared: &Shared) -> u64 {
    lock(&shared.players)
        .iter()
        .map(|p| lock(p).received_packets)
        .sum()
}

/// The players' media at `now` (the end of the steady phase, publishers still sending): gaps,
/// and streams none of whose players have received anything for over [`GAP_AFTER`].
pub fn media_at(args: &RunArgs, shared: &Shared, now: Instant) -> Media {
    let mut media = Media {
        gap_after_ms: GAP_AFTER.as_secs_f64() * 1e3,
        ..Default::default()
    };
    // Per stream: players, silent players, the latest media any of them received.
    let mut streams: Vec<(u64, u64, Option<Instant>)> = vec![(0, 0, None); args.streams as usize];
    for player in lock(&shared.players).iter() {
        let p = lock(player);
        let gaps = p.liveness.gaps(now);
        media.gaps += gaps;
        media.players_with_gaps += u64::from(gaps > 0);
        media.longest_gap_ms = media
            .longest_gap_ms
            .max(p.liveness.longest_gap(now).as_secs_f64() * 1e3);
        let Some(stream) = streams.get_mut(p.stream as usize) else {
            continue;
        };
        stream.0 += 1;
        let silent_since = p.liveness.silent_since(now);
        stream.1 += u64::from(silent_since.is_some());
        let last = silent_since.unwrap_or(now);
        stream.2 = Some(stream.2.map_or(last, |l: Instant| l.max(last)));
    }
    for (index, (players, silent, last)) in streams.into_iter().enumerate() {
        if players > 0 && silent == players {
            media.stopped_streams.push(StoppedStream {
                stream: format!("{}-{index}", args.stream_prefix),
                players,
                last_media_s: last.map_or(0.0, |l| {
                    l.saturating_duration_since(shared.epoch).as_secs_f64()
                }),
            });
        } else {
            media.silent_players += silent;
        }
    }
    media
}

/// Adds the players' counts into `totals`, `repair` and `frames` (ending their frames now);
/// returns their latencies together and the sum of their jitters (ns).
fn tally_players(
    players: &[Arc<Mutex<PlayerStats>>],
    totals: &mut Totals,
    repair: &mut Repair,
    frames: &mut summary::Frames,
) -> (Histogram<u64>, f64) {
    let mut latency = summary::latency_histogram();
    let mut jitter_sum = 0.0;
    let end = Instant::now();
    for player in players {
        let mut p = lock(player);
        let _ = latency.add(&p.latency);
        totals.received_packets += p.received_packets;
        totals.received_bytes += p.received_bytes;
        totals.malformed_packets += p.malformed;
        for t in &p.tracks {
            totals.expected_packets += t.expected();
            totals.lost_packets += t.lost();
            totals.reordered_packets += t.late();
            repair.duplicate_packets += t.duplicates();
        }
        let [audio, video] = &p.tracks;
        repair.audio_expected_packets += audio.expected();
        repair.audio_lost_packets += audio.lost();
        repair.video_expected_packets += video.expected();
        repair.video_lost_packets += video.lost();
        p.frames.finish(end);
        frames.frames += p.frames.frames();
        frames.frozen_frames += p.frames.frozen();
        if let Some(c) = &p.counters {
            let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
            repair.dropped_at_players += read(&c.dropped_on_arrival);
            repair.repaired_packets += read(&c.repaired);
            repair.nacks_sent += read(&c.nacks_sent);
            repair.nacked_packets += read(&c.nacked_packets);
            repair.given_up_packets += read(&c.given_up);
            repair.retransmissions_received += read(&c.rtx_received);
            repair.retransmitted_bytes_received += read(&c.rtx_received_bytes);
        }
        jitter_sum += p.jitter_ns;
    }
    (latency, jitter_sum)
}

/// Adds the publishers' loss and retransmission counts into `repair`.
fn tally_publishers(publishers: &[Session], repair: &mut Repair) {
    for session in publishers {
        let c = &session.counters;
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        repair.dropped_at_publishers += read(&c.dropped_on_arrival);
        repair.dropped_by_publishers += read(&c.dropped_on_departure);
        repair.publisher_nacks_received += read(&c.nacks_received);
        repair.publisher_retransmitted_packets += read(&c.retransmitted);
        repair.publisher_retransmitted_bytes += read(&c.retransmitted_bytes);
        repair.publisher_retransmit_misses += read(&c.retransmit_misses);
    }
}

/// The load generator's own cost, and a note where it may have limited the run.
fn loadgen_cost(args: &RunArgs, shared: &Shared, cpu: f64, wall: f64) -> Cost {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let late_frames = shared.late_frames.load(Ordering::Relaxed);
    let cpu_percent = 100.0 * cpu / wall.max(0.001);
    let frames = (args.fps as f64 * wall * args.streams as f64).max(1.0);
    let bottleneck = if cpu_percent > 90.0 * cores as f64 {
        Some(format!(
            "the load generator used {cpu_percent:.0}% CPU of {cores} cores: it may have limited the run"
        ))
    } else if late_frames as f64 > 0.01 * frames {
        Some(format!(
            "publishers sent {late_frames} frames late: the load generator fell behind its schedule"
        ))
    } else {
        None
    };
    Cost {
        cpu_seconds: cpu,
        cpu_percent,
        cores,
        late_frames,
        bottleneck,
    }
}

fn scenario(args: &RunArgs) -> Scenario {
    Scenario {
        whip: args.whip.clone(),
        whep: args.whep.join(","),
        streams: args.streams,
        players_per_stream: args.players,
        transport: format!("{:?}", args.transport).to_lowercase(),
        video_kbps: args.video_kbps,
        fps: args.fps,
        packet_size: args.packet_size,
        audio: !args.no_audio,
        duration_s: args.duration,
        ramp_per_s: args.ramp,
        verify: format!("{:?}", args.verify).to_lowercase(),
        find_max: args.find_max,
        simulcast: args.simulcast,
        rate_limit_kbps: args.rate_limit,
        rate_limit_share_percent: args.rate_limit.map(|_| args.rate_limit_share),
    }
}

/// Writes summary.json, latency.hgrm, join.hgrm, relay-latency.hgrm (when read) and
/// intervals.json into `out`.
pub fn write(
    out: &Path,
    report: &Report,
    relay_latency: Option<&Histogram<u64>>,
    intervals: &[Interval],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(
        "summary.json",
        serde_json::to_string_pretty(&report.summary)?,
    )?;
    write("latency.hgrm", crate::hgrm::write(&report.latency, 1e6))?;
    write("join.hgrm", crate::hgrm::write(&report.join, 1e6))?;
    if let Some(relay_latency) = relay_latency {
        // Microseconds: the relay's share is far below the end-to-end milliseconds.
        write("relay-latency.hgrm", crate::hgrm::write(relay_latency, 1e3))?;
    }
    write("intervals.json", serde_json::to_string_pretty(intervals)?)?;
    Ok(())
}
