//! A load run, top to bottom: publishers up, players joining at the ramp (`ramp`), progress
//! once a second until the run ends (`progress`), the relay read (`relay`), the report written
//! (`report`), everyone closed. The run's arguments and the state its tasks share live here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use corecast::client::http::{HttpClient, Trust};
use corecast::client::{self, ClientOptions, LinkLoss, Role, Session, Transport};
use corecast::util::lock;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use webrtc_dtls::crypto::Certificate;

use crate::join_seconds::JoinSeconds;
use crate::payload;
use crate::player::PlayerStats;
use crate::progress::Watch;
use crate::publisher::{KeyframeRequests, publish};
use crate::report::{self, Measured};
use crate::summary::{self, Summary};
use crate::{ramp, relay};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    Udp,
    Tcp,
    /// Alternate: even clients on UDP, odd ones on TCP.
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// Check the stamp and record latency on every packet.
    All,
    /// On every 16th packet; all packets are still counted, so loss stays exact.
    Sample,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// WHIP endpoint; `{stream}` is replaced by the stream name.
    #[arg(long, default_value = "http://127.0.0.1:8080/whip/{stream}")]
    pub whip: String,
    /// WHEP endpoint; `{stream}` is replaced by the stream name. Several (repeated, or
    /// separated by commas) drive a cluster: players join them in turn (round robin).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080/whep/{stream}"
    )]
    pub whep: Vec<String>,
    /// Streams, each with one publisher.
    #[arg(long, default_value_t = 1)]
    pub streams: u32,
    /// Players per stream.
    #[arg(long, default_value_t = 10)]
    pub players: u32,
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: TransportChoice,
    /// Video bitrate per publisher.
    #[arg(long, default_value_t = 1000)]
    pub video_kbps: u32,
    /// Video frames per second; each frame is a burst of packets, the marker bit on its last.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Bytes per video packet (RTP header included).
    #[arg(long, default_value_t = 1200)]
    pub packet_size: usize,
    /// Leave out the 50 packets/s audio track.
    #[arg(long)]
    pub no_audio: bool,
    /// Seconds of the run after the last player joined (or the run in all, with --find-max).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Players joining per second.
    #[arg(long, default_value_t = 50.0)]
    pub ramp: f64,
    #[arg(long, value_enum, default_value = "all")]
    pub verify: Verify,
    /// Keep adding players (at --ramp) until loss appears; report how many the server carried.
    #[arg(long)]
    pub find_max: bool,
    /// Where summary.json, latency.hgrm, join.hgrm and intervals.json go.
    #[arg(long, default_value = "loadgen-out")]
    pub out: PathBuf,
    /// Prefix of the stream names (`PREFIX-0`, `PREFIX-1`, ...).
    #[arg(long, default_value = "loadgen")]
    pub stream_prefix: String,
    /// Seconds to wait for each client's signaling, ICE and DTLS.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Print nothing but the final summary.
    #[arg(long)]
    pub quiet: bool,
    /// The relay's process id (on this machine): its CPU time over the steady phase is read
    /// from /proc to report CPU per forwarded packet. Any server's: without --relay-metrics
    /// the packets are those the players received.
    #[arg(long)]
    pub relay_pid: Option<u32>,
    /// The relay's Prometheus endpoint (corecast's /metrics), for its packet counters; its
    /// relay-latency HdrHistogram is read from `/api/relay-latency` beside it.
    #[arg(long)]
    pub relay_metrics: Option<String>,
    /// Bearer token sent with every WHIP, WHEP, DELETE and metrics request (or from
    /// LOADGEN_TOKEN, which other users of the machine cannot read in the process list).
    #[arg(long, env = "LOADGEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificates to trust for https:// (a CA, or the relay's self-signed certificate),
    /// besides the system's CAs.
    #[arg(long)]
    pub ca_file: Option<String>,
    /// Accept any certificate (a relay with `http.tls = "self-signed"`).
    #[arg(long)]
    pub insecure: bool,
    /// Drop this percentage of the SRTP/SRTCP packets that arrive, at random: at players (the
    /// media, before anything reads it) and at publishers (the relay's RTCP: its NACKs among
    /// it). Players NACK what is missing and publishers answer with RTX, as browsers do.
    #[arg(long, default_value_t = 0.0, value_parser = loss_percent)]
    pub loss: f64,
    /// Drop this percentage of the media publishers send, at random (a lossy uplink): the
    /// relay NACKs what it misses and publishers answer with RTX.
    #[arg(long, default_value_t = 0.0, value_parser = loss_percent)]
    pub publish_loss: f64,
    /// Seed for --loss and --publish-loss: the same seed drops the same packets of each
    /// client.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Offer no NACK or RTX: loss stays unrepaired (to measure what repair saves).
    #[arg(long)]
    pub no_repair: bool,
    /// Publish video as three simulcast encodings (RIDs l, m, h at 1/8, 1/3 and all of
    /// --video-kbps, VP8): the server gives each player the one its path carries, and players
    /// report the layers they got.
    #[arg(long)]
    pub simulcast: bool,
    /// Police each player's downlink to this many kbit/s: what exceeds it (token bucket, 100 ms
    /// burst) is dropped on arrival, as a policer on the path would.
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..))]
    pub rate_limit: Option<u32>,
    /// The percentage of players --rate-limit applies to, spread evenly over the ramp (the
    /// rest are not limited).
    #[arg(long, default_value_t = 100.0, value_parser = loss_percent)]
    pub rate_limit_share: f64,
    /// Threads that run the clients (their DTLS handshakes, SRTP, timers); default: one per
    /// core loadgen may run on (as `taskset` leaves it).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

fn loss_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err("a percentage from 0 to 100".into())
    }
}

impl RunArgs {
    /// The arrival loss of one client: its own seed from the run's, so clients drop different
    /// packets, and the same ones in every run with that seed.
    fn arrival_loss(&self, role: Role, index: u64) -> Option<LinkLoss> {
        let tag = match role {
            Role::Publish => 1u64 << 63,
            Role::Play => 0,
        };
        (self.loss > 0.0).then(|| LinkLoss {
            percent: self.loss,
            seed: self.seed ^ (tag | index).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        })
    }

    /// The rate limit of player `index`: every player's, or an even spread of
    /// `--rate-limit-share` percent of them (with 50, every second player).
    pub fn rate_limit_of(&self, index: u64) -> Option<u32> {
        let share = self.rate_limit_share / 100.0;
        let limited = ((index + 1) as f64 * share).floor() > (index as f64 * share).floor();
        self.rate_limit.filter(|_| limited)
    }

    /// The departure loss of publisher `index` (its seed apart from its arrival loss's).
    fn departure_loss(&self, index: u64) -> Option<LinkLoss> {
        (self.publish_loss > 0.0).then(|| LinkLoss {
            percent: self.publish_loss,
            seed: !self.seed ^ (index.wrapping_mul(0xd1b5_4a32_d192_ed03)),
        })
    }

    /// Video packets a publisher sends in a second: what it keeps for retransmission.
    fn video_packets_per_second(&self) -> usize {
        let fps = self.fps.max(1) as usize;
        let frame_bytes = (self.video_kbps as usize * 1000 / 8 / fps).max(1);
        let payload = self.packet_size.clamp(12 + payload::LEN, 1400) - 12;
        frame_bytes.div_ceil(payload) * fps
    }

    /// The one HTTP client of the run: its connections are reused across clients.
    fn http_client(&self) -> anyhow::Result<HttpClient> {
        let trust = Trust {
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
        };
        Ok(HttpClient::new(&trust)?.with_token(self.token.as_deref()))
    }

    /// Options for client `index` at `url`; a publisher also keeps a second of video for
    /// retransmission and drops what `--publish-loss` says on the way out.
    pub fn client_options(
        &self,
        http: &HttpClient,
        certificate: &Certificate,
        url: String,
        role: Role,
        transport: Transport,
        index: u64,
    ) -> ClientOptions {
        let mut options = ClientOptions {
            timeout: Duration::from_secs_f64(self.connect_timeout),
            http: http.clone(),
            repair: !self.no_repair,
            arrival_loss: self.arrival_loss(role, index),
            ..ClientOptions::new(url, role, transport, certificate)
        };
        if role == Role::Publish {
            // A second of video, with room for a burst.
            options.retransmit_packets = (self.video_packets_per_second() * 5 / 4).max(64);
            options.departure_loss = self.departure_loss(index);
            if self.simulcast {
                options.simulcast = crate::publisher::rids();
                // The relay finds keyframes in the VP8 payload descriptor loadgen writes.
                options.video_codec = Some("VP8".into());
            }
        } else {
            options.rate_limit_kbps = self.rate_limit_of(index);
        }
        options
    }
}

/// What the run's tasks (publishers, players, the ramp, the clock) share.
pub struct Shared {
    pub epoch: Instant,
    pub verify: Verify,
    pub stop: AtomicBool,
    pub stop_ramp: AtomicBool,
    pub sent_packets: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub late_frames: AtomicU64,
    pub publishers_up: AtomicU64,
    pub players_up: AtomicU64,
    pub failures: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    pub players: Mutex<Vec<Arc<Mutex<PlayerStats>>>>,
    pub join: Mutex<Histogram<u64>>,
    /// Joins by the second of the ramp they started in.
    pub join_seconds: Mutex<JoinSeconds>,
    /// Simulcast: keyframes publishers sent, by layer, and the requests that asked for them.
    pub keyframes_sent: [AtomicU64; 3],
    pub keyframe_requests: AtomicU64,
}

impl Shared {
    fn new(verify: Verify) -> Self {
        Self {
            epoch: Instant::now(),
            verify,
            stop: AtomicBool::new(false),
            stop_ramp: AtomicBool::new(false),
            sent_packets: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            late_frames: AtomicU64::new(0),
            publishers_up: AtomicU64::new(0),
            players_up: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            players: Mutex::new(Vec::new()),
            join: Mutex::new(summary::latency_histogram()),
            join_seconds: Mutex::new(JoinSeconds::default()),
            keyframes_sent: Default::default(),
            keyframe_requests: AtomicU64::new(0),
        }
    }

    /// Keeps the first 20 errors for the summary.
    pub fn error(&self, message: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < 20 {
            errors.push(message);
        }
    }
}

/// The WHEP endpoint of player `index`: the `--whep` URLs in turn.
pub fn whep_for(templates: &[String], index: u64) -> &str {
    match templates.len() {
        0 => "http://127.0.0.1:8080/whep/{stream}",
        n => &templates[(index % n as u64) as usize],
    }
}

pub fn url_for(template: &str, stream: &str) -> String {
    template.replace("{stream}", stream)
}

pub fn transport_of(choice: TransportChoice, index: u64) -> Transport {
    match choice {
        TransportChoice::Udp => Transport::Udp,
        TransportChoice::Tcp => Transport::Tcp,
        TransportChoice::Mixed if index.is_multiple_of(2) => Transport::Udp,
        TransportChoice::Mixed => Transport::Tcp,
    }
}

/// The run: publishers, then players at the ramp, progress until the run ends, the report
/// written, everyone closed.
pub async fn run(args: RunArgs) -> anyhow::Result<Summary> {
    let certificate = Certificate::generate_self_signed(vec!["loadgen".to_string()])
        .map_err(|e| anyhow::anyhow!("generating a DTLS certificate: {e}"))?;
    let shared = Arc::new(Shared::new(args.verify));
    let cpu_start = relay::cpu_seconds();
    let wall_start = Instant::now();
    let http = args.http_client()?;

    // Publishers first: players need streams to play.
    let publisher_tasks = start_publishers(&args, &shared, &http, &certificate).await?;
    let target: u64 = if args.find_max {
        u32::MAX as u64
    } else {
        args.streams as u64 * args.players as u64
    };
    let mut players = ramp::start(&args, &shared, &http, &certificate, target);
    let progress = Watch {
        args: &args,
        shared: &shared,
        http: &http,
        ramp: &players.task,
        target,
        wall_start,
    }
    .run()
    .await;
    // Before the publishers stop: a stream whose players hear nothing now has died.
    let media = report::media_at(&args, &shared, Instant::now());
    let (relay, relay_latency) =
        relay::finish(&http, &args, &shared, progress.relay_start.as_ref()).await;

    // Stop the publishers, let packets in flight arrive, then read the players.
    shared.stop.store(true, Ordering::Relaxed);
    let mut publishers = Vec::new();
    for task in publisher_tasks {
        if let Ok(session) = task.await {
            publishers.push(session);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let measured = Measured {
        target: if args.find_max { 0 } else { target },
        max_without_loss: progress.max_without_loss,
        relay,
        media,
        wall: wall_start.elapsed().as_secs_f64(),
        cpu: relay::cpu_seconds() - cpu_start,
    };
    let report = report::summarize(&args, &shared, &publishers, measured);
    report::write(
        &args.out,
        &report,
        relay_latency.as_ref(),
        &progress.intervals,
    )?;

    // Leave cleanly: players, then publishers (their DELETE ends the streams).
    let mut closing = Vec::new();
    players.sessions.close();
    while let Some(session) = players.sessions.recv().await {
        closing.push(tokio::spawn(session.close()));
    }
    for task in closing {
        let _ = task.await;
    }
    for session in publishers {
        session.close().await;
    }
    Ok(report.summary)
}

/// Connects one publisher a stream, in turn, and starts each sending.
async fn start_publishers(
    args: &RunArgs,
    shared: &Arc<Shared>,
    http: &HttpClient,
    certificate: &Certificate,
) -> anyhow::Result<Vec<JoinHandle<Session>>> {
    let mut tasks = Vec::new();
    for stream in 0..args.streams {
        let name = format!("{}-{stream}", args.stream_prefix);
        let index = stream as u64;
        let transport = transport_of(args.transport, index);
        let url = url_for(&args.whip, &name);
        let options = args.client_options(http, certificate, url, Role::Publish, transport, index);
        let keyframes = Arc::new(KeyframeRequests::default());
        let session = client::connect(&options, keyframes.handler(shared.clone()))
            .await
            .with_context(|| format!("publishing {name} over {transport}"))?;
        shared.publishers_up.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(publish(
            session,
            stream,
            args.clone(),
            shared.clone(),
            keyframes,
        )));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::whep_for;

    #[test]
    fn players_join_the_whep_urls_in_turn() {
        let urls = [
            "http://a/whep/{stream}".to_string(),
            "http://b/whep/{stream}".to_string(),
        ];
        let chosen: Vec<&str> = (0..4).map(|i| whep_for(&urls, i)).collect();
        assert_eq!(chosen, [urls[0].as_str(), &urls[1], &urls[0], &urls[1]]);
        assert_eq!(whep_for(&urls[..1], 7), urls[0]);
    }
}
