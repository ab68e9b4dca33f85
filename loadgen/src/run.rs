//! A load run: publishers, players joining at a ramp, live progress once a second, and the
//! output files at the end.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use corecast::client::http::{HttpClient, Trust};
use corecast::client::{
    self, ClientOptions, Incoming, LinkLoss, Role, Session, SessionCounters, Transport,
};
use corecast::util::lock;
use corecast::wire::rtp::RtpHeader;
use hdrhistogram::Histogram;
use webrtc_dtls::crypto::Certificate;

use crate::payload::{self, Stamp};
use crate::quality::{self, Arrival, Frames, Track};
use crate::summary::{
    self, Cost, Percentiles, Players, RelayCost, Repair, Scenario, Summary, Totals, percent,
};

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
    /// WHEP endpoint; `{stream}` is replaced by the stream name.
    #[arg(long, default_value = "http://127.0.0.1:8080/whep/{stream}")]
    pub whep: String,
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
    /// from /proc to report CPU per forwarded packet.
    #[arg(long, requires = "relay_metrics")]
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
    /// The one HTTP client of the run: its connections are reused across clients.
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

    fn http_client(&self) -> anyhow::Result<HttpClient> {
        let trust = Trust {
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
        };
        Ok(HttpClient::new(&trust)?.with_token(self.token.as_deref()))
    }
}

/// What the relay says about itself at one moment.
#[derive(Clone, Default)]
struct RelaySample {
    at: Option<Instant>,
    cpu_seconds: f64,
    forwarded: u64,
    workers: usize,
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

async fn sample_relay(http: &HttpClient, pid: Option<u32>, metrics: &str) -> Option<RelaySample> {
    let body = http
        .request("GET", metrics, None, "", Duration::from_secs(5))
        .await
        .ok()?
        .body;
    let mut sample = RelaySample {
        at: Some(Instant::now()),
        ..Default::default()
    };
    for line in body.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name.starts_with("corecast_forwarded_packets_total{") {
            sample.forwarded += value.parse::<u64>().unwrap_or(0);
            sample.workers += 1;
        }
    }
    if let Some(url) = relay_latency_url(metrics) {
        sample.latency = fetch_relay_latency(http, &url).await;
    }
    if let Some(pid) = pid {
        sample.cpu_seconds = process_cpu_seconds(&format!("/proc/{pid}/stat"));
    }
    Some(sample)
}

/// The relay's cost between two samples, and its relay-latency histogram over that time.
fn relay_cost(start: &RelaySample, end: &RelaySample) -> (RelayCost, Option<Histogram<u64>>) {
    let seconds = match (start.at, end.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let forwarded = end.forwarded.saturating_sub(start.forwarded);
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
        latency_p50_us: us(0.5),
        latency_p99_us: us(0.99),
        latency_p999_us: us(0.999),
        latency_max_us: latency.as_ref().map(|h| h.max() as f64 / 1e3),
    };
    (cost, latency)
}

const LOSS_THRESHOLD_PERCENT: f64 = 0.1;

struct PlayerStats {
    join_started: Instant,
    joined: bool,
    /// Audio and video, by the stamp's kind.
    tracks: [Track; 2],
    frames: Frames,
    /// The session's own counters (NACKs, repairs), once connected.
    counters: Option<Arc<SessionCounters>>,
    latency: Histogram<u64>,
    interval: Histogram<u64>,
    received_packets: u64,
    received_bytes: u64,
    malformed: u64,
    /// RFC 3550 interarrival jitter, in nanoseconds.
    jitter_ns: f64,
    last_transit_ns: Option<i64>,
    sampled: u64,
}

struct Shared {
    epoch: Instant,
    verify: Verify,
    stop: AtomicBool,
    stop_ramp: AtomicBool,
    sent_packets: AtomicU64,
    sent_bytes: AtomicU64,
    late_frames: AtomicU64,
    publishers_up: AtomicU64,
    players_up: AtomicU64,
    failures: AtomicU64,
    errors: Mutex<Vec<String>>,
    players: Mutex<Vec<Arc<Mutex<PlayerStats>>>>,
    join: Mutex<Histogram<u64>>,
}

impl Shared {
    fn error(&self, message: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < 20 {
            errors.push(message);
        }
    }
}

fn url_for(template: &str, stream: &str) -> String {
    template.replace("{stream}", stream)
}

fn transport_of(choice: TransportChoice, index: u64) -> Transport {
    match choice {
        TransportChoice::Udp => Transport::Udp,
        TransportChoice::Tcp => Transport::Tcp,
        TransportChoice::Mixed if index.is_multiple_of(2) => Transport::Udp,
        TransportChoice::Mixed => Transport::Tcp,
    }
}

fn player_handler(shared: Arc<Shared>, stats: Arc<Mutex<PlayerStats>>) -> client::Handler {
    Box::new(move |incoming| {
        let Incoming::Rtp(packet) = incoming else {
            return;
        };
        let now = Instant::now();
        let mut s = lock(&stats);
        s.received_packets += 1;
        s.received_bytes += packet.len() as u64;
        let Some((header, stamp)) = RtpHeader::parse(packet)
            .ok()
            .and_then(|h| Some((h, Stamp::read(&packet[h.header_len..])?)))
        else {
            s.malformed += 1;
            return;
        };
        if !s.joined {
            s.joined = true;
            let join = now.duration_since(s.join_started).as_nanos() as u64;
            let _ = lock(&shared.join).record(join.max(1_000));
        }
        let video = stamp.kind & 1 == 1;
        match s.tracks[usize::from(video)].on_packet(stamp.sequence) {
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

/// One publisher: video frames as bursts at `fps`, audio every 20 ms, until told to stop.
async fn publish(mut session: Session, stream: u32, args: RunArgs, shared: Arc<Shared>) -> Session {
    let video_pt = session.negotiated.video_payload_type;
    let audio_pt = session
        .negotiated
        .audio_payload_type
        .filter(|_| !args.no_audio);
    let frame_interval = Duration::from_secs_f64(1.0 / args.fps.max(1) as f64);
    let frame_bytes = (args.video_kbps as usize * 1000 / 8 / args.fps.max(1) as usize).max(1);
    let packet_size = args.packet_size.clamp(12 + payload::LEN, 1400);
    let mut buf = vec![0u8; packet_size];
    let (mut video_rtp_seq, mut audio_rtp_seq) = (rand_u16(), rand_u16());
    let (mut video_ts, mut audio_ts) = (rand_u32(), rand_u32());
    let (mut video_seq, mut audio_seq) = (0u64, 0u64);
    let mut next_video = Instant::now();
    let mut next_audio = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let next = if audio_pt.is_some() {
            next_video.min(next_audio)
        } else {
            next_video
        };
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if let Some(pt) = video_pt
            && now >= next_video
        {
            if now.duration_since(next_video) > frame_interval {
                shared.late_frames.fetch_add(1, Ordering::Relaxed);
            }
            let mut remaining = frame_bytes;
            let mut index = 0u16;
            while remaining > 0 {
                let payload_len = remaining.min(packet_size - 12).max(payload::LEN);
                remaining = remaining.saturating_sub(packet_size - 12);
                let len = 12 + payload_len;
                let marker = remaining == 0;
                write_header(
                    &mut buf,
                    pt,
                    marker,
                    video_rtp_seq,
                    video_ts,
                    session.video_ssrc,
                );
                let sent_ns = shared.epoch.elapsed().as_nanos() as u64;
                Stamp {
                    stream,
                    kind: 1,
                    index,
                    sequence: video_seq,
                    sent_ns,
                }
                .write(&mut buf[12..]);
                index = index.wrapping_add(1);
                if let Err(e) = session.send_rtp(&buf[..len]).await {
                    shared.error(format!("publisher {stream}: {e}"));
                }
                video_rtp_seq = video_rtp_seq.wrapping_add(1);
                video_seq += 1;
                shared.sent_packets.fetch_add(1, Ordering::Relaxed);
                shared.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            video_ts = video_ts.wrapping_add(90_000 / args.fps.max(1));
            next_video += frame_interval;
        }
        if let Some(pt) = audio_pt
            && now >= next_audio
        {
            let len = 12 + 100;
            write_header(
                &mut buf,
                pt,
                false,
                audio_rtp_seq,
                audio_ts,
                session.audio_ssrc,
            );
            let sent_ns = shared.epoch.elapsed().as_nanos() as u64;
            Stamp {
                stream,
                kind: 0,
                index: 0,
                sequence: audio_seq,
                sent_ns,
            }
            .write(&mut buf[12..]);
            if session.send_rtp(&buf[..len]).await.is_ok() {
                shared.sent_packets.fetch_add(1, Ordering::Relaxed);
                shared.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            audio_rtp_seq = audio_rtp_seq.wrapping_add(1);
            audio_seq += 1;
            audio_ts = audio_ts.wrapping_add(960);
            next_audio += Duration::from_millis(20);
        }
    }
    session
}

fn write_header(buf: &mut [u8], pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32) {
    buf[0] = 0x80;
    buf[1] = (pt & 0x7f) | if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos())
        & 0x7fff) as u16
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos())
}

/// CPU time this process used so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
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

/// One second's worth of progress, kept for intervals.json.
#[derive(serde::Serialize)]
struct Interval {
    second: u64,
    players: u64,
    publish_pps: u64,
    receive_pps: u64,
    receive_mbps: f64,
    loss_percent: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Default, Clone, Copy)]
struct Snapshot {
    received_packets: u64,
    received_bytes: u64,
    expected: u64,
    received_counted: u64,
    sent_packets: u64,
}

fn snapshot(shared: &Shared, interval: &mut Histogram<u64>) -> Snapshot {
    let mut s = Snapshot {
        sent_packets: shared.sent_packets.load(Ordering::Relaxed),
        ..Default::default()
    };
    for player in lock(&shared.players).iter() {
        let mut p = lock(player);
        s.received_packets += p.received_packets;
        s.received_bytes += p.received_bytes;
        for t in &p.tracks {
            s.expected += t.expected();
            s.received_counted += t.received();
        }
        let _ = interval.add(&p.interval);
        p.interval.reset();
    }
    s
}

pub async fn run(args: RunArgs) -> anyhow::Result<Summary> {
    let certificate = Certificate::generate_self_signed(vec!["loadgen".to_string()])
        .map_err(|e| anyhow::anyhow!("generating a DTLS certificate: {e}"))?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        verify: args.verify,
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
    });
    let cpu_start = cpu_seconds();
    let wall_start = Instant::now();
    let timeout = Duration::from_secs_f64(args.connect_timeout);
    let http = args.http_client()?;
    let options = |url: String, role: Role, transport: Transport, index: u64| ClientOptions {
        timeout,
        http: http.clone(),
        repair: !args.no_repair,
        // A second of video, with room for a burst.
        retransmit_packets: (args.video_packets_per_second() * 5 / 4).max(64),
        arrival_loss: args.arrival_loss(role, index),
        departure_loss: args.departure_loss(index),
        ..ClientOptions::new(url, role, transport, &certificate)
    };

    // Publishers first: players need streams to play.
    let mut publisher_tasks = Vec::new();
    for stream in 0..args.streams {
        let name = format!("{}-{stream}", args.stream_prefix);
        let transport = transport_of(args.transport, stream as u64);
        let session = client::connect(
            &options(
                url_for(&args.whip, &name),
                Role::Publish,
                transport,
                stream as u64,
            ),
            Box::new(|_| {}),
        )
        .await
        .with_context(|| format!("publishing {name} over {transport}"))?;
        shared.publishers_up.fetch_add(1, Ordering::Relaxed);
        publisher_tasks.push(tokio::spawn(publish(
            session,
            stream,
            args.clone(),
            shared.clone(),
        )));
    }

    // Players join at the ramp, round-robin over the streams.
    let target: u64 = if args.find_max {
        u32::MAX as u64
    } else {
        args.streams as u64 * args.players as u64
    };
    let (sessions_tx, mut sessions_rx) = tokio::sync::mpsc::unbounded_channel::<Session>();
    let joiner = {
        let shared = shared.clone();
        let args = args.clone();
        let certificate = certificate.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let gap = Duration::from_secs_f64(1.0 / args.ramp.max(0.001));
            let mut next = Instant::now();
            for index in 0..target {
                if shared.stop.load(Ordering::Relaxed) || shared.stop_ramp.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
                next += gap;
                let stream = (index % args.streams.max(1) as u64) as u32;
                let name = format!("{}-{stream}", args.stream_prefix);
                let transport = transport_of(args.transport, index + 1);
                let stats = Arc::new(Mutex::new(PlayerStats {
                    join_started: Instant::now(),
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
                }));
                let handler = player_handler(shared.clone(), stats.clone());
                let options = ClientOptions {
                    timeout: Duration::from_secs_f64(args.connect_timeout),
                    http: http.clone(),
                    repair: !args.no_repair,
                    arrival_loss: args.arrival_loss(Role::Play, index),
                    ..ClientOptions::new(
                        url_for(&args.whep, &name),
                        Role::Play,
                        transport,
                        &certificate,
                    )
                };
                let shared = shared.clone();
                let sessions_tx = sessions_tx.clone();
                tokio::spawn(async move {
                    match client::connect(&options, handler).await {
                        Ok(session) => {
                            lock(&stats).counters = Some(session.counters.clone());
                            lock(&shared.players).push(stats);
                            shared.players_up.fetch_add(1, Ordering::Relaxed);
                            let _ = sessions_tx.send(session);
                        }
                        Err(e) => {
                            shared.failures.fetch_add(1, Ordering::Relaxed);
                            shared.error(format!("player of {name} over {transport}: {e}"));
                        }
                    }
                });
            }
        })
    };

    // Progress once a second; the run ends `duration` after the ramp (or find-max) finished.
    let mut intervals = Vec::new();
    let mut previous = Snapshot::default();
    let mut second = 0u64;
    let mut ramp_done_at: Option<Instant> = None;
    let mut max_without_loss = None;
    let mut lossy_seconds = 0;
    let mut last_clean_players = 0;
    let mut relay_start: Option<RelaySample> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        second += 1;
        let mut interval_hist = summary::latency_histogram();
        let now = snapshot(&shared, &mut interval_hist);
        let players = shared.players_up.load(Ordering::Relaxed);
        let expected = now.expected.saturating_sub(previous.expected);
        let got = now
            .received_counted
            .saturating_sub(previous.received_counted);
        let loss = if expected > 0 {
            100.0 * expected.saturating_sub(got) as f64 / expected as f64
        } else {
            0.0
        };
        let record = Interval {
            second,
            players,
            publish_pps: now.sent_packets - previous.sent_packets,
            receive_pps: now.received_packets - previous.received_packets,
            receive_mbps: (now.received_bytes - previous.received_bytes) as f64 * 8.0 / 1e6,
            loss_percent: loss,
            p50_ms: interval_hist.value_at_quantile(0.5) as f64 / 1e6,
            p99_ms: interval_hist.value_at_quantile(0.99) as f64 / 1e6,
        };
        if !args.quiet {
            println!(
                "[{:>4}s] clients {:>5}/{:<5} pub {:>8} pkt/s  recv {:>9} pkt/s {:>8.1} Mbit/s  loss {:>7.3}%  p50 {:>7.3} ms  p99 {:>7.3} ms",
                second,
                players + shared.publishers_up.load(Ordering::Relaxed),
                if args.find_max {
                    "max".to_string()
                } else {
                    (target + args.streams as u64).to_string()
                },
                record.publish_pps,
                record.receive_pps,
                record.receive_mbps,
                record.loss_percent,
                record.p50_ms,
                record.p99_ms
            );
        }
        intervals.push(record);
        previous = now;
        if args.find_max && ramp_done_at.is_none() {
            if loss > LOSS_THRESHOLD_PERCENT {
                lossy_seconds += 1;
            } else {
                lossy_seconds = 0;
                last_clean_players = players;
            }
            let failing = shared.failures.load(Ordering::Relaxed) > 0;
            if lossy_seconds >= 2 || failing || wall_start.elapsed().as_secs_f64() > args.duration {
                max_without_loss = Some(last_clean_players);
                shared.stop_ramp.store(true, Ordering::Relaxed);
                ramp_done_at = Some(Instant::now());
            }
        } else if ramp_done_at.is_none() && joiner.is_finished() {
            let settled = players + shared.failures.load(Ordering::Relaxed) >= target;
            if settled {
                ramp_done_at = Some(Instant::now());
            }
        }
        if ramp_done_at.is_some()
            && relay_start.is_none()
            && let Some(metrics) = &args.relay_metrics
        {
            relay_start = sample_relay(&http, args.relay_pid, metrics).await;
        }
        let linger = if args.find_max {
            Duration::from_secs(1)
        } else {
            Duration::from_secs_f64(args.duration)
        };
        if ramp_done_at.is_some_and(|t| t.elapsed() >= linger) {
            break;
        }
    }

    let (relay, relay_latency) = match (&relay_start, &args.relay_metrics) {
        (Some(start), Some(metrics)) => match sample_relay(&http, args.relay_pid, metrics).await {
            Some(end) => {
                let (cost, latency) = relay_cost(start, &end);
                (Some(cost), latency)
            }
            None => (None, None),
        },
        _ => (None, None),
    };
    // Stop the publishers, let packets in flight arrive, then read the players.
    shared.stop.store(true, Ordering::Relaxed);
    let mut publishers = Vec::new();
    for task in publisher_tasks {
        if let Ok(session) = task.await {
            publishers.push(session);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wall = wall_start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;

    let mut latency = summary::latency_histogram();
    let mut totals = Totals {
        sent_packets: shared.sent_packets.load(Ordering::Relaxed),
        sent_bytes: shared.sent_bytes.load(Ordering::Relaxed),
        ..Default::default()
    };
    let mut jitter_sum = 0.0;
    let players = lock(&shared.players).clone();
    let mut repair = Repair {
        injected_loss_percent: args.loss,
        injected_publish_loss_percent: args.publish_loss,
        repair_offered: !args.no_repair,
        ..Default::default()
    };
    let mut frame_figures = summary::Frames {
        freeze_ms: quality::FREEZE_AFTER.as_secs_f64() * 1e3,
        ..Default::default()
    };
    let end = Instant::now();
    for player in &players {
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
        frame_figures.frames += p.frames.frames();
        frame_figures.frozen_frames += p.frames.frozen();
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
    for session in &publishers {
        let c = &session.counters;
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        repair.dropped_at_publishers += read(&c.dropped_on_arrival);
        repair.dropped_by_publishers += read(&c.dropped_on_departure);
        repair.publisher_nacks_received += read(&c.nacks_received);
        repair.publisher_retransmitted_packets += read(&c.retransmitted);
        repair.publisher_retransmitted_bytes += read(&c.retransmitted_bytes);
        repair.publisher_retransmit_misses += read(&c.retransmit_misses);
    }
    totals.loss_percent = percent(totals.lost_packets, totals.expected_packets);
    repair.video_residual_loss_percent =
        percent(repair.video_lost_packets, repair.video_expected_packets);
    repair.audio_loss_percent = percent(repair.audio_lost_packets, repair.audio_expected_packets);
    repair.retransmission_overhead_percent =
        percent(repair.retransmitted_bytes_received, totals.received_bytes);
    repair.publisher_retransmission_overhead_percent =
        percent(repair.publisher_retransmitted_bytes, totals.sent_bytes);
    frame_figures.frozen_percent = percent(frame_figures.frozen_frames, frame_figures.frames);
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
    let join = lock(&shared.join).clone();
    let summary = Summary {
        scenario: Scenario {
            whip: args.whip.clone(),
            whep: args.whep.clone(),
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
        },
        players: Players {
            target: if args.find_max { 0 } else { target },
            joined: shared.players_up.load(Ordering::Relaxed),
            failed: shared.failures.load(Ordering::Relaxed),
            publishers_joined: shared.publishers_up.load(Ordering::Relaxed),
            max_without_loss,
        },
        totals,
        latency_ms: Percentiles::from_ns(&latency),
        join_ms: Percentiles::from_ns(&join),
        jitter_ms_mean: if players.is_empty() {
            0.0
        } else {
            jitter_sum / players.len() as f64 / 1e6
        },
        loadgen: Cost {
            cpu_seconds: cpu,
            cpu_percent,
            cores,
            late_frames,
            bottleneck,
        },
        relay,
        repair,
        frames: frame_figures,
        errors: lock(&shared.errors).clone(),
    };

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let write = |name: &str, text: String| {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("summary.json", serde_json::to_string_pretty(&summary)?)?;
    write("latency.hgrm", crate::hgrm::write(&latency, 1e6))?;
    write("join.hgrm", crate::hgrm::write(&join, 1e6))?;
    if let Some(relay_latency) = &relay_latency {
        // Microseconds: the relay's share is far below the end-to-end milliseconds.
        write("relay-latency.hgrm", crate::hgrm::write(relay_latency, 1e3))?;
    }
    write("intervals.json", serde_json::to_string_pretty(&intervals)?)?;

    // Leave cleanly: players, then publishers (their DELETE ends the streams).
    let mut closing = Vec::new();
    sessions_rx.close();
    while let Some(session) = sessions_rx.recv().await {
        closing.push(tokio::spawn(session.close()));
    }
    for task in closing {
        let _ = task.await;
    }
    for session in publishers {
        session.close().await;
    }
    Ok(summary)
}
