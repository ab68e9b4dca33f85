//! corecast's own WebRTC client (the one the load generator and republishing use) against a
//! real relay: media flows publisher to players over UDP and ICE-TCP, and a player on TCP that
//! stops reading loses whole frames only, costs the other players nothing, and makes the relay
//! ask the publisher for a keyframe. Frames of every shape reach UDP players whole and in order
//! through GSO bursts, and the same with GSO off.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Relay, media_range};
use corecast::client::{self, ClientOptions, Incoming, Role, Transport};
use corecast::wire::rtp::RtpHeader;
use webrtc_dtls::crypto::Certificate;

fn options(
    relay: &Relay,
    path: &str,
    role: Role,
    transport: Transport,
    certificate: &Certificate,
) -> ClientOptions {
    ClientOptions::new(relay.url(path), role, transport, certificate)
}

/// Connects a client to `path` over UDP, or fails the test saying which client it was.
async fn connect_udp(
    relay: &Relay,
    path: &str,
    role: Role,
    certificate: &Certificate,
    handler: client::Handler,
) -> client::Session {
    client::connect(
        &options(relay, path, role, Transport::Udp, certificate),
        handler,
    )
    .await
    .unwrap_or_else(|e| panic!("{role:?} client on {path} connects: {e}"))
}

/// Counts the video packets a player receives and checks each is whole: it parses, carries the
/// player's payload type, and its payload holds the publisher's counter.
#[derive(Default)]
struct Received {
    packets: AtomicU64,
    malformed: AtomicU64,
    warm_ups: AtomicU64,
}

fn counting_handler(
    received: Arc<Received>,
    video_pt: u8,
    stall_first: Option<Duration>,
) -> client::Handler {
    let mut stalled = false;
    Box::new(move |incoming| {
        let Incoming::Rtp(packet) = incoming else {
            return;
        };
        match RtpHeader::parse(packet) {
            Ok(h)
                if h.payload_type == video_pt
                    && packet.len() == 1200
                    && packet[h.header_len..h.header_len + 4] == *b"CCLG" =>
            {
                received.packets.fetch_add(1, Ordering::Relaxed);
            }
            Ok(h) if packet[h.header_len..].starts_with(WARM_UP) => {
                received.warm_ups.fetch_add(1, Ordering::Relaxed);
            }
            Ok(h) if h.payload_type != video_pt => {}
            _ => {
                received.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(stall) = stall_first
            && !stalled
        {
            // A player that stops reading: its connection backs up into the relay.
            stalled = true;
            std::thread::sleep(stall);
        }
    })
}

/// The payload that marks a warm-up packet (see [`warm_up`]).
const WARM_UP: &[u8] = b"WARM";

/// Sends one-packet video frames marked [`WARM_UP`] every 10 ms until `all_warm` says every
/// player got one, and returns the first sequence number after them. A client's connect
/// returns when the DTLS handshake ends on its side; the relay's worker gets that session's
/// SRTP keys a moment later, and a packet sent in between reaches no one. Tests that check
/// every packet start counting after this.
async fn warm_up(
    publisher: &mut client::Session,
    video_pt: u8,
    all_warm: impl Fn() -> bool,
) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0u16;
    while !all_warm() {
        assert!(
            Instant::now() < deadline,
            "no warm-up packet reached every player"
        );
        let mut packet = video_packet(video_pt, seq, publisher.video_ssrc);
        packet[1] |= 0x80;
        packet[12..16].copy_from_slice(WARM_UP);
        publisher.send_rtp(&packet).await.unwrap();
        seq += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seq
}

fn video_packet(pt: u8, seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(b"CCLG");
    p.resize(1200, 0x33);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_tcp_player_drops_whole_frames_without_holding_back_others() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(8)),
        ("CORECAST_MEDIA_PROTOCOL", "all"),
        ("CORECAST_MEDIA_TCP_SEND_BUFFER", "4096"),
        ("CORECAST_MEDIA_TCP_SEND_QUEUE", "16"),
    ]);
    let certificate = Certificate::generate_self_signed(vec!["loadgen".into()]).unwrap();
    let mut publisher = connect_udp(
        &relay,
        "/whip/load",
        Role::Publish,
        &certificate,
        Box::new(|_| {}),
    )
    .await;
    let video_pt = publisher.negotiated.video_payload_type.unwrap();

    let fast = Arc::new(Received::default());
    let slow = Arc::new(Received::default());
    let fast_player = connect_udp(
        &relay,
        "/whep/load",
        Role::Play,
        &certificate,
        counting_handler(fast.clone(), 96, None),
    )
    .await;
    let mut slow_options = options(
        &relay,
        "/whep/load",
        Role::Play,
        Transport::Tcp,
        &certificate,
    );
    slow_options.tcp_recv_buffer = Some(4096);
    let slow_player = client::connect(
        &slow_options,
        counting_handler(slow.clone(), 96, Some(Duration::from_secs(3))),
    )
    .await
    .expect("TCP player connects");
    assert_eq!(fast_player.negotiated.video_payload_type, Some(96));

    // The slow player's stall begins at its first warm-up packet.
    let first = warm_up(&mut publisher, video_pt, || {
        fast.warm_ups.load(Ordering::Relaxed) > 0 && slow.warm_ups.load(Ordering::Relaxed) > 0
    })
    .await;
    // 3000 packets of 1200 bytes, in bursts of 30 (a frame) every 10 ms.
    let sent = 3000u64;
    for i in 0..sent {
        let packet = video_packet(video_pt, first.wrapping_add(i as u16), publisher.video_ssrc);
        publisher.send_rtp(&packet).await.unwrap();
        if i % 30 == 29 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    common::eventually(Duration::from_secs(15), || {
        fast.packets.load(Ordering::Relaxed) >= sent
    })
    .await;
    assert_eq!(
        fast.packets.load(Ordering::Relaxed),
        sent,
        "the UDP player lost nothing"
    );
    // Let the slow player drain what the relay kept for it.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let slow_received = slow.packets.load(Ordering::Relaxed);
    let dropped = relay.metric_all_workers("corecast_drop_slow_tcp_total");
    assert!(
        dropped > 0,
        "the slow player's queue overflowed\n{}",
        relay.log()
    );
    assert!(slow_received < sent, "{slow_received} of {sent}");
    assert!(
        slow_received + dropped >= sent,
        "every packet was either delivered or counted: {slow_received} + {dropped}"
    );
    assert_eq!(
        slow.malformed.load(Ordering::Relaxed),
        0,
        "no torn frame reached the player"
    );
    assert_eq!(slow_player.counters.srtp_errors.load(Ordering::Relaxed), 0);
    assert_eq!(
        relay.metric_all_workers("corecast_drop_tcp_framing_total"),
        0
    );
    assert!(
        publisher.counters.keyframe_requests.load(Ordering::Relaxed) > 0,
        "the relay asked the publisher for a keyframe after dropping video"
    );
    // The relay timed its forwarding: the latency histogram counts the packets it forwarded.
    let metrics = common::http("GET", &relay.url("/metrics"), None, "").body;
    assert!(
        metrics.contains("corecast_relay_latency_seconds_bucket{worker=\"0\",le=\"0.0001\"}"),
        "{metrics}"
    );
    assert!(
        relay.metric_all_workers("corecast_relay_latency_seconds_count") >= sent,
        "{metrics}"
    );
    assert!(
        metrics.contains("corecast_kernel_udp_rcvbuf_errors_total"),
        "{metrics}"
    );
    // The slow player is still connected and still served.
    assert_eq!(
        relay.metric_all_workers("corecast_worker_tcp_connections"),
        1
    );

    slow_player.close().await;
    fast_player.close().await;
    publisher.close().await;
    let ports_free = || relay.metric("corecast_ports_in_use") == 0;
    assert!(
        common::eventually(Duration::from_secs(10), ports_free).await,
        "ports still in use\n{}",
        relay.log()
    );
}

/// What one player received of the video: (RTP sequence, length, the publisher's counter)
/// for each counted packet, and how many warm-up packets came before them.
#[derive(Default)]
struct Delivered {
    packets: std::sync::Mutex<Vec<(u16, usize, u32)>>,
    warm_ups: AtomicU64,
}

impl Delivered {
    fn len(&self) -> usize {
        self.packets.lock().unwrap().len()
    }

    fn is_warm(&self) -> bool {
        self.warm_ups.load(Ordering::Relaxed) > 0
    }
}

fn recording_handler(delivered: Arc<Delivered>) -> client::Handler {
    Box::new(move |incoming| {
        let Incoming::Rtp(packet) = incoming else {
            return;
        };
        let Ok(h) = RtpHeader::parse(packet) else {
            return;
        };
        let payload = &packet[h.header_len..];
        if payload.starts_with(b"CCLG") {
            let counter = u32::from_be_bytes(payload[4..8].try_into().unwrap());
            delivered
                .packets
                .lock()
                .unwrap()
                .push((h.sequence, packet.len(), counter));
        } else if payload.starts_with(WARM_UP) {
            delivered.warm_ups.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Frames shaped to take every path of the burst logic: equal packets with a shorter last,
/// sizes that grow inside a frame (a burst cannot take a longer packet), frames whose marker
/// never comes (their hold runs out), and a frame larger than one GSO send may carry.
fn frame_shapes() -> Vec<(Vec<usize>, bool)> {
    let mut frames = Vec::new();
    for _ in 0..10 {
        frames.push((vec![1200, 1200, 1200, 1200, 1200, 700], true));
    }
    for _ in 0..5 {
        frames.push((vec![1000, 1100, 1200], true));
    }
    for _ in 0..3 {
        frames.push((vec![1200; 4], false));
    }
    frames.push((vec![1200; 60], true));
    frames.push((vec![200], true));
    frames
}

async fn forward_frame_shapes(gso: &str) {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(8)),
        ("CORECAST_MEDIA_PROTOCOL", "udp"),
        ("CORECAST_MEDIA_GSO", gso),
    ]);
    let certificate = Certificate::generate_self_signed(vec!["gso".into()]).unwrap();
    let mut publisher = connect_udp(
        &relay,
        "/whip/gso",
        Role::Publish,
        &certificate,
        Box::new(|_| {}),
    )
    .await;
    let video_pt = publisher.negotiated.video_payload_type.unwrap();
    let mut players = Vec::new();
    // Three players on two workers: the stream reaches some of them through the mesh.
    for _ in 0..3 {
        let delivered = Arc::new(Delivered::default());
        let player = connect_udp(
            &relay,
            "/whep/gso",
            Role::Play,
            &certificate,
            recording_handler(delivered.clone()),
        )
        .await;
        players.push((player, delivered));
    }
    let first = warm_up(&mut publisher, video_pt, || {
        players.iter().all(|(_, d)| d.is_warm())
    })
    .await;
    // The workers' gauges (refreshed every 100 ms) count the sessions and, of them, players.
    common::eventually(Duration::from_secs(2), || {
        relay.metric_all_workers("corecast_worker_players") == 3
    })
    .await;
    assert_eq!(relay.metric_all_workers("corecast_worker_players"), 3);
    assert_eq!(relay.metric_all_workers("corecast_worker_sessions"), 4);
    let mut expected = Vec::new();
    let mut counter = 0u32;
    for (sizes, marker) in frame_shapes() {
        let last = sizes.len() - 1;
        for (i, &len) in sizes.iter().enumerate() {
            let seq = first.wrapping_add(counter as u16);
            let mut packet = video_packet(video_pt, seq, publisher.video_ssrc);
            if marker && i == last {
                packet[1] |= 0x80;
            }
            packet[16..20].copy_from_slice(&counter.to_be_bytes());
            packet.truncate(len);
            publisher.send_rtp(&packet).await.unwrap();
            expected.push((len, counter));
            counter += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    common::eventually(Duration::from_secs(10), || {
        players.iter().all(|(_, d)| d.len() >= expected.len())
    })
    .await;
    for (n, (_, delivered)) in players.iter().enumerate() {
        let delivered = delivered.packets.lock().unwrap();
        // The SRTP trailer is gone: lengths are the publisher's. Order is the publisher's.
        let got: Vec<(usize, u32)> = delivered.iter().map(|&(_, l, c)| (l, c)).collect();
        assert_eq!(got, expected, "player {n} (gso = {gso})");
        for pair in delivered.windows(2) {
            assert_eq!(pair[1].0, pair[0].0.wrapping_add(1), "player {n}: sequence");
        }
    }
    check_relay_latency_counts_every_forwarded_packet(&relay).await;
    let segments = relay.metric_all_workers("corecast_gso_segments_total");
    if gso == "true" {
        assert!(segments > 0, "GSO carried packets\n{}", relay.log());
    } else {
        assert_eq!(segments, 0, "GSO off sends packet by packet");
    }
    assert_eq!(relay.metric_all_workers("corecast_gso_refused_total"), 0);
    for (player, _) in players {
        player.close().await;
    }
    publisher.close().await;
}

/// `GET /api/relay-latency` accounts for every packet the relay forwarded (workers fold their
/// recordings in at each 100 ms tick), per worker and in all, and its encoded histogram
/// decodes to the counts and percentiles it reports.
async fn check_relay_latency_counts_every_forwarded_packet(relay: &Relay) {
    let forwarded = relay.metric_all_workers("corecast_forwarded_packets_total");
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let body = common::http("GET", &relay.url("/api/relay-latency"), None, "").body;
        let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if report["all"]["count"] == forwarded || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["all"]["count"], forwarded, "{report:#}");
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let per_worker: u64 = workers.iter().map(|w| w["count"].as_u64().unwrap()).sum();
    assert_eq!(per_worker, forwarded);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(report["all"]["histogram"].as_str().unwrap())
        .expect("base64");
    let histogram: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .expect("an HdrHistogram V2 encoding");
    assert_eq!(histogram.len(), forwarded);
    let p99 = report["all"]["p99_us"].as_f64().unwrap();
    assert_eq!(p99, histogram.value_at_quantile(0.99) as f64 / 1e3);
    assert!(p99 > 0.0 && p99 <= report["all"]["max_us"].as_f64().unwrap());
    // The Prometheus histogram is drawn from the same counts.
    assert_eq!(
        relay.metric_all_workers("corecast_relay_latency_seconds_count"),
        forwarded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn udp_players_get_every_frame_whole_and_in_order_through_gso_bursts() {
    forward_frame_shapes("true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn players_get_the_same_packets_with_gso_off() {
    forward_frame_shapes("false").await;
}

/// Packets over the path MTU (here a loopback MTU of 1280) reach a player whole through GSO
/// bursts: the kernel either fragments each segment (6.x does) or refuses the send, and then
/// the relay sends the packets again one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_over_the_path_mtu_arrive_whole_through_gso() {
    if common::in_private_network_set_up(
        "frames_over_the_path_mtu_arrive_whole_through_gso",
        "ip link set lo mtu 1280",
    ) {
        return;
    }
    if std::env::var_os("IN_TEST_NETNS_OF_CORECAST").is_none() {
        eprintln!("skipped: needs a network namespace (root) for its small loopback MTU");
        return;
    }
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(4)),
        ("CORECAST_MEDIA_PROTOCOL", "udp"),
    ]);
    let certificate = Certificate::generate_self_signed(vec!["gso".into()]).unwrap();
    let mut publisher = connect_udp(
        &relay,
        "/whip/mtu",
        Role::Publish,
        &certificate,
        Box::new(|_| {}),
    )
    .await;
    let video_pt = publisher.negotiated.video_payload_type.unwrap();
    let delivered = Arc::new(Delivered::default());
    let player = connect_udp(
        &relay,
        "/whep/mtu",
        Role::Play,
        &certificate,
        recording_handler(delivered.clone()),
    )
    .await;
    let first = warm_up(&mut publisher, video_pt, || delivered.is_warm()).await;
    // Frames of four 1260-byte packets: with headers and the SRTP tag each is over the MTU.
    let frames = 30u32;
    for counter in 0..frames * 4 {
        let seq = first.wrapping_add(counter as u16);
        let mut packet = video_packet(video_pt, seq, publisher.video_ssrc);
        if counter % 4 == 3 {
            packet[1] |= 0x80;
        }
        packet[16..20].copy_from_slice(&counter.to_be_bytes());
        packet.truncate(1260);
        publisher.send_rtp(&packet).await.unwrap();
        if counter % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    common::eventually(Duration::from_secs(10), || {
        delivered.len() >= (frames * 4) as usize
    })
    .await;
    let counters: Vec<u32> = delivered
        .packets
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.2)
        .collect();
    assert_eq!(
        counters,
        (0..frames * 4).collect::<Vec<_>>(),
        "{}",
        relay.log()
    );
    assert!(
        relay.metric_all_workers("corecast_gso_sends_total") > 0,
        "the frames went through GSO bursts\n{}",
        relay.log()
    );
    player.close().await;
    publisher.close().await;
}
