//! The simulcast part of the report: players grouped by their rate limit (`limited`,
//! `unlimited`), and for each group the layers received (the last one, the time on each),
//! the switches, and loss and freezes after repair.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use corecast::util::lock;

use crate::layers::LAYERS;
use crate::player::PlayerStats;
use crate::publisher::{encoding_kbps, rids};
use crate::run::{RunArgs, Shared};
use crate::summary::{LayerGroup, PlayerLayers, Simulcast, percent};

/// The simulcast summary at `end` (the players' frames already finished).
pub fn summarize(
    args: &RunArgs,
    shared: &Shared,
    players: &[Arc<Mutex<PlayerStats>>],
    end: Instant,
) -> Simulcast {
    let rids = rids();
    let mut groups: Vec<LayerGroup> = Vec::new();
    // Time on each layer (seconds) and received bits·players, per group, for the shares.
    let mut group_time: Vec<[f64; LAYERS]> = Vec::new();
    let mut group_kbps: Vec<f64> = Vec::new();
    let mut per_player = Vec::new();
    for player in players {
        let p = lock(player);
        let name = if p.rate_limit_kbps.is_some() {
            "limited"
        } else {
            "unlimited"
        };
        let at = match groups.iter().position(|g| g.name == name) {
            Some(at) => at,
            None => {
                groups.push(LayerGroup {
                    name: name.to_string(),
                    rate_limit_kbps: p.rate_limit_kbps,
                    final_layer_players: vec![0; LAYERS],
                    ..LayerGroup::default()
                });
                group_time.push([0.0; LAYERS]);
                group_kbps.push(0.0);
                groups.len() - 1
            }
        };
        let g = &mut groups[at];
        g.players += 1;
        let final_layer = p.layers.current();
        if let Some(layer) = final_layer {
            g.final_layer_players[usize::from(layer).min(LAYERS - 1)] += 1;
        }
        let time = p.layers.time_on(end).map(|d| d.as_secs_f64());
        for (sum, t) in group_time[at].iter_mut().zip(time) {
            *sum += t;
        }
        let played: f64 = time.iter().sum();
        g.switches += p.layers.switches();
        if let Some(last) = p.layers.kept_switches().last() {
            g.last_switch_s = Some(g.last_switch_s.map_or(last.at_s, |s| s.max(last.at_s)));
        }
        let video = &p.tracks[1];
        g.video_expected_packets += video.expected();
        g.video_lost_packets += video.lost();
        let (expected_then, lost_then) = p.video_at_last_switch;
        g.settled_video_expected_packets += video.expected().saturating_sub(expected_then);
        g.settled_video_lost_packets += video.lost().saturating_sub(lost_then);
        g.frames += p.frames.frames();
        g.frozen_frames += p.frames.frozen();
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let (dropped, feedback) = p.counters.as_ref().map_or((0, 0), |c| {
            (
                read(&c.dropped_by_rate_limit),
                read(&c.transport_feedback_sent),
            )
        });
        g.dropped_by_rate_limit += dropped;
        if let Some(c) = &p.counters {
            g.probes_received += read(&c.probes_received);
            g.probe_bytes_received += read(&c.probe_bytes_received);
        }
        if let Some(first) = p.first_arrival {
            let seconds = end
                .saturating_duration_since(first)
                .as_secs_f64()
                .max(0.001);
            group_kbps[at] += p.received_bytes as f64 * 8.0 / 1000.0 / seconds;
        }
        let rid_of = |layer: u8| rids[usize::from(layer).min(LAYERS - 1)].clone();
        per_player.push(PlayerLayers {
            group: name.to_string(),
            final_layer: final_layer.map(rid_of),
            switches: p.layers.switches(),
            switched: p
                .layers
                .kept_switches()
                .iter()
                .map(|s| (round(s.at_s, 3), rid_of(s.from), rid_of(s.to)))
                .collect(),
            time_share_percent: time
                .iter()
                .map(|t| round(100.0 * t / played.max(1e-9), 1))
                .collect(),
            video_loss_percent: percent(video.lost(), video.expected()),
            transport_feedback_sent: feedback,
        });
    }
    for ((g, time), kbps) in groups.iter_mut().zip(&group_time).zip(&group_kbps) {
        let total: f64 = time.iter().sum();
        g.time_share_percent = time
            .iter()
            .map(|t| round(100.0 * t / total.max(1e-9), 1))
            .collect();
        g.video_loss_percent = percent(g.video_lost_packets, g.video_expected_packets);
        g.settled_video_loss_percent = percent(
            g.settled_video_lost_packets,
            g.settled_video_expected_packets,
        );
        g.received_kbps_per_player = round(kbps / g.players.max(1) as f64, 1);
    }
    // Unlimited first, as a reader compares the limited ones to them.
    groups.sort_by_key(|g| g.rate_limit_kbps.is_some());
    Simulcast {
        rids,
        layer_kbps: encoding_kbps(args.video_kbps),
        keyframes_sent: shared
            .keyframes_sent
            .iter()
            .map(|k| k.load(Ordering::Relaxed))
            .collect(),
        keyframe_requests: shared.keyframe_requests.load(Ordering::Relaxed),
        groups,
        players: per_player,
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}
