//! Admission under a flash crowd, against a real relay process: with one place in handshake
//! and one in the queue, a player that never finishes its handshake holds the place, the next
//! join waits, and a storm of joins past them is shed at once with `503` and `Retry-After`,
//! counted in `/metrics`, while a player already playing receives every packet. Freeing the
//! place (DELETE) lets the waiting join through. Deterministic: the bounds, not timing, decide.
//! And a join whose client never reaches it by ICE gives its place to the next one after
//! `admission.ice_wait_ms`, not after `media.ice_timeout`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{CHROME_PLAY_OFFER, Relay, http, media_range};
use corecast::client::{self, ClientOptions, Role, Transport};
use webrtc_dtls::crypto::Certificate;

/// Joins in the storm, all past the queue.
const STORM: usize = 120;

fn whep(relay: &Relay) -> common::Response {
    http(
        "POST",
        &relay.url("/whep/crowd"),
        Some("application/sdp"),
        CHROME_PLAY_OFFER,
    )
}

/// A one-packet video frame whose payload carries `MARK` and the publisher's `count`.
fn video_packet(pt: u8, count: u32, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, pt | 0x80];
    p.extend_from_slice(&(count as u16).to_be_bytes());
    p.extend_from_slice(&count.wrapping_mul(3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(MARK);
    p.extend_from_slice(&count.to_be_bytes());
    p.resize(1000, 0x5a);
    p
}

const MARK: &[u8] = b"CROWD";

/// What the playing viewer got: the first count it saw and how many distinct packets since.
#[derive(Default)]
struct Received {
    first: AtomicU64,
    packets: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_past_the_queue_is_shed_with_retry_after_and_the_playing_viewer_loses_nothing() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(16)),
        ("CORECAST_MEDIA_PROTOCOL", "udp"),
        ("CORECAST_ADMISSION_HANDSHAKE_THREADS", "2"),
        ("CORECAST_ADMISSION_MAX_HANDSHAKES", "1"),
        ("CORECAST_ADMISSION_QUEUE", "1"),
        // Long enough that the waiting join is let through by the DELETE, not by time.
        ("CORECAST_ADMISSION_QUEUE_WAIT_MS", "60000"),
        // The join that never does ICE keeps its place until its session ends.
        ("CORECAST_ADMISSION_ICE_WAIT_MS", "0"),
    ]);
    let certificate = Certificate::generate_self_signed(vec!["crowd".into()]).unwrap();
    let options =
        |path: &str, role| ClientOptions::new(relay.url(path), role, Transport::Udp, &certificate);
    let mut publisher = client::connect(&options("/whip/crowd", Role::Publish), Box::new(|_| {}))
        .await
        .expect("the publisher connects (publishers are not queued)");
    let video_pt = publisher.negotiated.video_payload_type.unwrap();

    // The viewer already playing: counts the numbered packets it gets.
    let received = Arc::new(Received::default());
    let counted = received.clone();
    let playing = client::connect(
        &options("/whep/crowd", Role::Play),
        Box::new(move |incoming| {
            let Some(payload) = common::rtp_payload(incoming) else {
                return;
            };
            if let Some(count) = payload.strip_prefix(MARK).and_then(|c| c.get(..4)) {
                let count = u32::from_be_bytes(count.try_into().unwrap());
                if counted.packets.fetch_add(1, Ordering::Relaxed) == 0 {
                    counted.first.store(u64::from(count), Ordering::Relaxed);
                }
            }
        }),
    )
    .await
    .expect("the first viewer joins");
    assert!(
        common::eventually(Duration::from_secs(5), || {
            relay.metric("corecast_joins_in_handshake") == 0
        })
        .await,
        "the playing viewer's place in handshake came free once its DTLS was done"
    );

    // The publisher sends all along: a packet every 4 ms until told to stop. The viewer's
    // keys reach its worker a moment after its own handshake ends, so the count starts once
    // packets arrive.
    let stop = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut count = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let packet = video_packet(video_pt, count, publisher.video_ssrc);
                publisher.send_rtp(&packet).await.unwrap();
                count += 1;
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            (publisher, count)
        }
    });
    assert!(
        common::eventually(Duration::from_secs(5), || {
            received.packets.load(Ordering::Relaxed) > 0
        })
        .await,
        "the playing viewer receives"
    );
    let before_storm = received.packets.load(Ordering::Relaxed);

    // A join that never does ICE or DTLS holds the one place in handshake.
    let stuck = whep(&relay);
    assert_eq!(stuck.status, 201, "{}", stuck.body);
    let stuck_session = stuck.header("location").unwrap().to_string();
    // The next one waits in the queue.
    let url = relay.url("/whep/crowd");
    let waiting =
        std::thread::spawn(move || http("POST", &url, Some("application/sdp"), CHROME_PLAY_OFFER));
    assert!(
        common::eventually(Duration::from_secs(5), || relay
            .metric("corecast_joins_waiting")
            == 1)
        .await,
        "the second join waits\n{}",
        relay.log()
    );

    // The storm: every join past the queue is shed at once.
    let storm: Vec<_> = (0..8)
        .map(|_| {
            let url = relay.url("/whep/crowd");
            std::thread::spawn(move || {
                (0..STORM / 8)
                    .map(|_| http("POST", &url, Some("application/sdp"), CHROME_PLAY_OFFER))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for thread in storm {
        for shed in thread.join().unwrap() {
            assert_eq!(shed.status, 503, "{}", shed.body);
            let retry_after: u64 = shed
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .expect("a 503 says when to come back");
            assert!((1..=30).contains(&retry_after), "{retry_after}");
            assert!(shed.body.contains("admission.queue"), "{}", shed.body);
        }
    }
    let storm_count = STORM as u64;
    assert_eq!(
        relay.metric("corecast_joins_shed_total{reason=\"queue_full\"}"),
        storm_count
    );
    assert_eq!(relay.metric("corecast_joins_queued_total"), 1);
    assert_eq!(relay.metric("corecast_joins_admitted_total"), 2);
    assert_eq!(relay.metric("corecast_joins_in_handshake"), 1);

    // Freeing the place lets the waiting join through.
    let deleted = http("DELETE", &relay.url(&stuck_session), None, "");
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let admitted = waiting.join().unwrap();
    assert_eq!(admitted.status, 201, "{}", admitted.body);
    assert_eq!(relay.metric("corecast_joins_admitted_total"), 3);
    assert_eq!(relay.metric("corecast_joins_waiting"), 0);
    let later = http(
        "DELETE",
        &relay.url(admitted.header("location").unwrap()),
        None,
        "",
    );
    assert_eq!(later.status, 200, "{}", later.body);

    // The viewer that was playing got every packet sent from its first on: none lost.
    stop.store(true, Ordering::Relaxed);
    let (publisher, sent) = sending.await.unwrap();
    let expected = u64::from(sent) - received.first.load(Ordering::Relaxed);
    common::eventually(Duration::from_secs(5), || {
        received.packets.load(Ordering::Relaxed) >= expected
    })
    .await;
    let got = received.packets.load(Ordering::Relaxed);
    assert_eq!(
        got, expected,
        "the playing viewer lost packets during the storm"
    );
    assert!(got > before_storm, "it kept receiving through the storm");
    let handshakes = relay.metric("corecast_dtls_handshake_seconds_count");
    assert!(
        handshakes >= 2,
        "the publisher's and the viewer's: {handshakes}"
    );
    playing.close().await;
    publisher.close().await;
}

/// Offers posted and never followed by ICE (a client that gave up, or someone filling the
/// places on purpose) hold their places for `admission.ice_wait_ms` only: the join waiting
/// behind them is let through then, without anyone deleting them, and joins normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offers_that_never_connect_give_their_places_up_after_the_ice_wait() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(16)),
        ("CORECAST_MEDIA_PROTOCOL", "udp"),
        ("CORECAST_ADMISSION_MAX_HANDSHAKES", "2"),
        ("CORECAST_ADMISSION_QUEUE", "1"),
        ("CORECAST_ADMISSION_QUEUE_WAIT_MS", "60000"),
        ("CORECAST_ADMISSION_ICE_WAIT_MS", "700"),
        // The sessions themselves live on: only their places are given up.
        ("CORECAST_MEDIA_ICE_TIMEOUT", "60"),
    ]);
    let certificate = Certificate::generate_self_signed(vec!["crowd".into()]).unwrap();
    let options =
        |path: &str, role| ClientOptions::new(relay.url(path), role, Transport::Udp, &certificate);
    let publisher = client::connect(&options("/whip/crowd", Role::Publish), Box::new(|_| {}))
        .await
        .expect("the publisher connects");
    // Both places taken by offers whose clients never come.
    let stuck: Vec<_> = (0..2).map(|_| whep(&relay)).collect();
    for response in &stuck {
        assert_eq!(response.status, 201, "{}", response.body);
    }
    assert_eq!(relay.metric("corecast_joins_in_handshake"), 2);
    // A real viewer arrives: it waits, then gets a place the stuck ones gave up, and plays.
    let started = std::time::Instant::now();
    let viewer = client::connect(&options("/whep/crowd", Role::Play), Box::new(|_| {}))
        .await
        .expect("the viewer joins once a stuck offer gave its place up");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "it had to wait for a place: {waited:?}"
    );
    assert_eq!(relay.metric("corecast_joins_queued_total"), 1);
    assert_eq!(
        relay.metric("corecast_joins_released_total{reason=\"no_ice\"}"),
        2,
        "{}",
        relay.log()
    );
    // The stuck sessions still exist (their clients could still come): only their places went.
    for response in &stuck {
        let session = response.header("location").unwrap();
        let deleted = http("DELETE", &relay.url(session), None, "");
        assert_eq!(deleted.status, 200, "{}", deleted.body);
    }
    viewer.close().await;
    publisher.close().await;
}

/// A join whose client does ICE and keeps it alive but never starts DTLS holds its place for
/// the handshake's time limit (20 s) after `admission.ice_wait_ms`, not for ever: then the
/// place goes to the next join (`reason="no_dtls"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_that_does_ice_but_never_dtls_gives_its_place_up_after_the_handshake_limit() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(16)),
        ("CORECAST_MEDIA_PROTOCOL", "udp"),
        ("CORECAST_ADMISSION_MAX_HANDSHAKES", "1"),
        ("CORECAST_ADMISSION_QUEUE", "0"),
        ("CORECAST_ADMISSION_ICE_WAIT_MS", "500"),
    ]);
    let certificate = Certificate::generate_self_signed(vec!["crowd".into()]).unwrap();
    let options = ClientOptions::new(
        relay.url("/whip/crowd"),
        Role::Publish,
        Transport::Udp,
        &certificate,
    );
    let publisher = client::connect(&options, Box::new(|_| {}))
        .await
        .expect("the publisher connects");

    let stuck = whep(&relay);
    assert_eq!(stuck.status, 201, "{}", stuck.body);
    let port = common::answer_port(&stuck.body);
    let relay_ufrag = common::sdp_attribute(&stuck.body, "a=ice-ufrag:");
    let relay_pwd = common::sdp_attribute(&stuck.body, "a=ice-pwd:");
    let client_ufrag = common::sdp_attribute(CHROME_PLAY_OFFER, "a=ice-ufrag:");
    // Its client nominates a pair and keeps checking it, as a live client would, and sends
    // no DTLS at all.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let checking = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                let check = common::ice_check(&relay_ufrag, &client_ufrag, &relay_pwd, true);
                socket.send_to(&check, ("127.0.0.1", port)).unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    });
    let started = std::time::Instant::now();
    // Past ice_wait, the place is still held (ICE did connect) and the next join is shed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        relay.metric("corecast_joins_in_handshake"),
        1,
        "{}",
        relay.log()
    );
    assert_eq!(whep(&relay).status, 503);
    // Then the handshake's limit passes, and the place goes.
    assert!(
        common::eventually(Duration::from_secs(30), || {
            relay.metric("corecast_joins_released_total{reason=\"no_dtls\"}") == 1
        })
        .await,
        "the place was not given up\n{}",
        relay.log()
    );
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert_eq!(relay.metric("corecast_joins_in_handshake"), 0);
    assert_eq!(
        relay.metric("corecast_joins_released_total{reason=\"no_ice\"}"),
        0
    );
    let next = whep(&relay);
    assert_eq!(next.status, 201, "{}", next.body);
    stop.store(true, Ordering::Relaxed);
    checking.join().unwrap();
    publisher.close().await;
}
