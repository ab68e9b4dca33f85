//! loadgen: real WebRTC publishers and players against any WHIP/WHEP server, end-to-end latency
//! into HdrHistogram files, and comparisons of runs.

mod compare;
mod hgrm;
mod join_seconds;
mod layer_report;
mod layers;
mod liveness;
mod payload;
mod player;
mod progress;
mod publisher;
mod quality;
mod ramp;
mod relay;
mod report;
mod run;
mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::summary::{Frames, Media, RelayCost, Repair, Simulcast, Summary};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a load scenario (the default when no subcommand is given).
    Run(Box<run::RunArgs>),
    /// Show runs side by side: percentiles with ratios to the first run.
    Compare {
        /// Output directories of earlier runs.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Also draw latency by percentile for all runs into this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Some(Command::Compare { dirs, plot }) => match compare::compare(&dirs, plot.as_deref()) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::Run(args)) => run_scenario(*args),
        None => run_scenario(cli.run),
    }
}

fn run_scenario(args: run::RunArgs) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The clients' DTLS and SRTP run on these threads: with more than one, loadgen's own
    // handshakes are not what limits a ramp.
    if let Some(threads) = args.threads {
        builder.worker_threads(usize::from(threads));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let out = args.out.clone();
    match runtime.block_on(run::run(args)) {
        Ok(summary) => {
            print_summary(&summary, &out);
            let media_stopped =
                !summary.media.stopped_streams.is_empty() || summary.media.silent_players > 0;
            // find-max pushes the server until it fails: media that stops there is its answer
            // (reported above), not a failed run.
            if !media_stopped || summary.scenario.find_max {
                ExitCode::SUCCESS
            } else {
                eprintln!("loadgen: media stopped during the run (see above)");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The run's closing lines: clients, loss and latency; the relay; repair; notes and errors.
fn print_summary(summary: &Summary, out: &Path) {
    let l = &summary.latency_ms;
    let j = &summary.join_ms;
    println!(
        "players {}/{} joined ({} failed); loss {:.3}% ({} of {}); latency p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms; join p50 {:.1} p99 {:.1} ms; loadgen CPU {:.0}%",
        summary.players.joined,
        summary.players.target,
        summary.players.failed,
        summary.totals.loss_percent,
        summary.totals.lost_packets,
        summary.totals.expected_packets,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        j.p50,
        j.p99,
        summary.loadgen.cpu_percent
    );
    if let Some(relay) = &summary.relay {
        print_relay(relay);
    }
    if !summary.join_by_second.is_empty() {
        print!("{}", join_seconds::table(&summary.join_by_second));
    }
    print_media(&summary.media);
    let repair = &summary.repair;
    if repair.injected_loss_percent > 0.0
        || repair.injected_publish_loss_percent > 0.0
        || repair.nacks_sent > 0
    {
        print_repair(repair, &summary.frames);
    }
    if let Some(simulcast) = &summary.simulcast {
        print_simulcast(simulcast);
    }
    if let Some(max) = summary.players.max_without_loss {
        println!("find-max: the server carried {max} players without loss");
    }
    if let Some(note) = &summary.loadgen.bottleneck {
        println!("note: {note}");
    }
    for e in summary.errors.iter().take(5) {
        println!("error: {e}");
    }
    println!(
        "wrote {}/summary.json, latency.hgrm, join.hgrm, intervals.json (and relay-latency.hgrm with --relay-metrics)",
        out.display()
    );
}

fn print_relay(r: &RelayCost) {
    let latency = match (
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_p999_us,
        r.latency_max_us,
    ) {
        (Some(p50), Some(p99), Some(p999), Some(max)) => format!(
            "relay latency p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us, max {max:.1} us"
        ),
        _ => "relay latency not served (no /api/relay-latency beside the metrics)".to_string(),
    };
    if r.packets_from == "players" {
        // A server without corecast's counters: its CPU over what the players received.
        println!(
            "relay: {:.0} packets/s received by players, {:.0} ns CPU per packet ({:.2} CPU seconds over {:.1} s)",
            r.forwarded_pps, r.cpu_ns_per_forwarded_packet, r.cpu_seconds, r.seconds,
        );
        return;
    }
    println!(
        "relay: {:.0} forwarded packets/s on {} worker(s), {:.0} ns CPU per forwarded packet, {latency}",
        r.forwarded_pps, r.workers, r.cpu_ns_per_forwarded_packet,
    );
}

/// Gaps in the media and streams that stopped: silent unless there were some.
fn print_media(media: &Media) {
    if media.gaps > 0 {
        println!(
            "media gaps: {} longer than {:.0} ms at {} player(s), the longest {:.0} ms",
            media.gaps, media.gap_after_ms, media.players_with_gaps, media.longest_gap_ms
        );
    }
    for stopped in &media.stopped_streams {
        println!(
            "error: stream {} stopped: none of its {} player(s) received media after {:.1} s into the run",
            stopped.stream, stopped.players, stopped.last_media_s
        );
    }
    if media.silent_players > 0 {
        println!(
            "error: {} player(s) of streams that still played received no media for over {:.0} ms at the end",
            media.silent_players, media.gap_after_ms
        );
    }
}

fn print_repair(repair: &Repair, frames: &Frames) {
    println!(
        "repair: {:.1}% dropped on arrival, {:.1}% on publishing; video loss after repair {:.3}% ({} of {}), {} repaired, {} NACKs, retransmission overhead {:.2}% at players, {} resent by publishers; audio loss {:.3}% (not repaired); frozen frames {:.2}% ({} of {}, not complete within {:.0} ms)",
        repair.injected_loss_percent,
        repair.injected_publish_loss_percent,
        repair.video_residual_loss_percent,
        repair.video_lost_packets,
        repair.video_expected_packets,
        repair.repaired_packets,
        repair.nacks_sent,
        repair.retransmission_overhead_percent,
        repair.publisher_retransmitted_packets,
        repair.audio_loss_percent,
        frames.frozen_percent,
        frames.frozen_frames,
        frames.frames,
        frames.freeze_ms,
    );
}

/// A line per group of players: the layers they ended on and spent their time on, switches,
/// loss after repair, what they received.
fn print_simulcast(s: &Simulcast) {
    let layers: Vec<String> = s
        .rids
        .iter()
        .zip(&s.layer_kbps)
        .map(|(rid, kbps)| format!("{rid} {kbps}"))
        .collect();
    println!(
        "simulcast: layers {} kbit/s; keyframes sent {:?} after {} requests",
        layers.join(", "),
        s.keyframes_sent,
        s.keyframe_requests
    );
    for g in &s.groups {
        let name = match g.rate_limit_kbps {
            Some(kbps) => format!("limited to {kbps} kbit/s"),
            None => "unlimited".to_string(),
        };
        let ended: Vec<String> = s
            .rids
            .iter()
            .zip(&g.final_layer_players)
            .map(|(rid, n)| format!("{rid} {n}"))
            .collect();
        let share: Vec<String> = g
            .time_share_percent
            .iter()
            .map(|p| format!("{p:.0}"))
            .collect();
        println!(
            "  {} players {name}: ended on {}; time on {} {}%; {} switches (last at {}); video loss after repair {:.3}% ({} of {}), {:.3}% after the last switch; frozen frames {} of {}; {:.0} kbit/s received each; {} packets dropped by the rate limit",
            g.players,
            ended.join(", "),
            s.rids.join("/"),
            share.join("/"),
            g.switches,
            g.last_switch_s
                .map_or("-".to_string(), |t| format!("{t:.1} s")),
            g.video_loss_percent,
            g.video_lost_packets,
            g.video_expected_packets,
            g.settled_video_loss_percent,
            g.frozen_frames,
            g.frames,
            g.received_kbps_per_player,
            g.dropped_by_rate_limit,
        );
    }
}
