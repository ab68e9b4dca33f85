//! corecast's own WebRTC client (the one the load generator and republishing use) against a
//! real relay: media flows publisher to players over UDP and ICE-TCP, and a player on TCP that
//! stops reading loses whole frames only, costs the other players nothing, and makes the relay
//! ask the publisher for a keyframe.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    ClientOptions {
        url: relay.url(path),
        role,
        transport,
        certificate: certificate.clone(),
        timeout: Duration::from_secs(10),
        tcp_recv_buffer: None,
        video_codec: None,
    }
}

/// Counts the video packets a player receives and checks each is whole: it parses, carries the
/// player's payload type, and its payload holds the publisher's counter.
#[derive(Default)]
struct Received {
    packets: AtomicU64,
    malformed: AtomicU64,
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
    let mut publisher = client::connect(
        &options(
            &relay,
            "/whip/load",
            Role::Publish,
            Transport::Udp,
            &certificate,
        ),
        Box::new(|_| {}),
    )
    .await
    .expect("publisher connects");
    let video_pt = publisher.negotiated.video_payload_type.unwrap();

    let fast = Arc::new(Received::default());
    let slow = Arc::new(Received::default());
    let fast_player = client::connect(
        &options(
            &relay,
            "/whep/load",
            Role::Play,
            Transport::Udp,
            &certificate,
        ),
        counting_handler(fast.clone(), 96, None),
    )
    .await
    .expect("UDP player connects");
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

    // 3000 packets of 1200 bytes, in bursts of 30 (a frame) every 10 ms.
    let sent = 3000u64;
    for i in 0..sent {
        let packet = video_packet(video_pt, i as u16, publisher.video_ssrc);
        publisher.send_rtp(&packet).await.unwrap();
        if i % 30 == 29 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while fast.packets.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.metric("corecast_ports_in_use") > 0 {
        assert!(
            Instant::now() < deadline,
            "ports still in use\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
