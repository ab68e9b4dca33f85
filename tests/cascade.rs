//! Relay-to-relay republishing between two real relay processes, driven by the library's
//! WebRTC client: push by REST, pull on demand from an edge, keyframe requests across the
//! hop, and the error paths (duplicate push, unreachable target, nothing to terminate).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Relay, http, media_range};
use corecast::client::{self, ClientOptions, Incoming, Role, SessionCounters, Transport};
use serde_json::Value;
use webrtc_dtls::crypto::Certificate;

fn options(url: String, role: Role, certificate: &Certificate) -> ClientOptions {
    ClientOptions::new(url, role, Transport::Udp, certificate)
}

/// Publishes `stream` and sends a 30 fps video packet train from a task (which owns the
/// session); returns the session's counters and the task.
async fn publish(
    relay: &Relay,
    stream: &str,
    certificate: &Certificate,
) -> (Arc<SessionCounters>, tokio::task::JoinHandle<()>) {
    let mut session = client::connect(
        &options(
            relay.url(&format!("/whip/{stream}")),
            Role::Publish,
            certificate,
        ),
        Box::new(|_| {}),
    )
    .await
    .expect("publisher connects");
    let counters = session.counters.clone();
    let pt = session
        .negotiated
        .video_payload_type
        .expect("video negotiated");
    let ssrc = session.video_ssrc;
    let task = tokio::spawn(async move {
        let mut seq = 0u16;
        loop {
            let mut p = vec![0x80, pt | 0x80];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(seq as u32 * 3000).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.resize(500, 7);
            let _ = session.send_rtp(&p).await;
            seq = seq.wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(33)).await;
        }
    });
    (counters, task)
}

/// Plays `url` and counts the RTP packets that arrive.
async fn play(url: String, certificate: &Certificate) -> (client::Session, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let session = client::connect(
        &options(url, Role::Play, certificate),
        Box::new(move |incoming| {
            if let Incoming::Rtp(_) = incoming {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }),
    )
    .await
    .expect("player connects");
    (session, received)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

async fn wait_until(what: &str, done: impl FnMut() -> bool) {
    assert!(
        common::eventually(Duration::from_secs(15), done).await,
        "timed out waiting for {what}"
    );
}

fn relay(extra: &[(&str, &str)]) -> Relay {
    let range = media_range(16);
    let mut env = vec![
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", range.as_str()),
    ];
    env.extend_from_slice(extra);
    Relay::start(&env)
}

fn streams(relay: &Relay) -> Value {
    json(&http("GET", &relay.url("/api/streams"), None, "").body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_republishes_to_another_relay_with_keyframes_across_the_hop() {
    let origin = relay(&[]);
    let edge = relay(&[]);
    let certificate = Certificate::generate_self_signed(vec!["test".into()]).unwrap();
    let (publisher, _sending) = publish(&origin, "cam", &certificate).await;
    let json_type = Some("application/json");

    let body = format!(
        r#"{{"uri":"{}","localStreamName":"cam","remoteStreamName":"cam-edge"}}"#,
        edge.http
    );
    let r = http("POST", &origin.url("/rest-api/pull/push"), json_type, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r.body)["status"], "NEW");
    wait_until("the push to publish", || {
        let all = json(
            &http(
                "POST",
                &origin.url("/rest-api/pull/find_all"),
                json_type,
                "",
            )
            .body,
        );
        all[0]["status"] == "PUBLISHING"
    })
    .await;
    wait_until("the edge to have the stream", || {
        streams(&edge)[0]["stream"] == "cam-edge"
    })
    .await;

    // The same stream to the same target again is a conflict.
    let again = http("POST", &origin.url("/rest-api/pull/push"), json_type, &body);
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("already pushed"), "{}", again.body);

    // A player on the edge receives media and its keyframe request reaches the publisher.
    tokio::time::sleep(Duration::from_millis(700)).await; // past the PLI throttle
    let before = publisher.keyframe_requests.load(Ordering::Relaxed);
    let (player, received) = play(edge.url("/whep/cam-edge"), &certificate).await;
    wait_until("media on the edge", || {
        received.load(Ordering::Relaxed) > 30
    })
    .await;
    wait_until(
        "the edge player's keyframe request to reach the publisher",
        || publisher.keyframe_requests.load(Ordering::Relaxed) > before,
    )
    .await;

    // An unreachable target fails with a reason; nothing else is affected.
    let dead =
        r#"{"uri":"http://127.0.0.1:1","localStreamName":"cam","remoteStreamName":"nowhere"}"#;
    assert_eq!(
        http("POST", &origin.url("/rest-api/pull/push"), json_type, dead).status,
        200
    );
    wait_until("the unreachable push to fail", || {
        let all = json(
            &http(
                "POST",
                &origin.url("/rest-api/pull/find_all"),
                json_type,
                "",
            )
            .body,
        );
        all.as_array().unwrap().iter().any(|b| {
            b["remoteStreamName"] == "nowhere"
                && b["status"] == "FAILED"
                && b["reason"].as_str().unwrap_or("").contains("127.0.0.1:1")
        })
    })
    .await;
    let count = received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        received.load(Ordering::Relaxed) > count,
        "the edge player kept receiving"
    );

    // Pushing a stream that is not here is a 404.
    let missing = r#"{"uri":"http://127.0.0.1:1","localStreamName":"none"}"#;
    assert_eq!(
        http(
            "POST",
            &origin.url("/rest-api/pull/push"),
            json_type,
            missing
        )
        .status,
        404
    );

    // Terminate: the edge no longer has the stream.
    let stop = format!(r#"{{"uri":"{}","remoteStreamName":"cam-edge"}}"#, edge.http);
    let r = http(
        "POST",
        &origin.url("/rest-api/pull/terminate"),
        json_type,
        &stop,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until("the edge to drop the stream", || {
        streams(&edge) == Value::Array(vec![])
    })
    .await;
    assert_eq!(
        http(
            "POST",
            &origin.url("/rest-api/pull/terminate"),
            json_type,
            &stop
        )
        .status,
        404
    );
    player.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_pulls_a_stream_on_demand_and_stops_when_the_last_player_leaves() {
    let origin = relay(&[]);
    let edge = relay(&[("CORECAST_CASCADE_ORIGIN", origin.http.as_str())]);
    let certificate = Certificate::generate_self_signed(vec!["test".into()]).unwrap();
    let (_publisher, _sending) = publish(&origin, "live", &certificate).await;

    let (first, received) = play(edge.url("/whep/live"), &certificate).await;
    wait_until("media pulled to the edge", || {
        received.load(Ordering::Relaxed) > 30
    })
    .await;
    let (second, received_too) = play(edge.url("/whep/live"), &certificate).await;
    wait_until("a second edge player", || {
        received_too.load(Ordering::Relaxed) > 30
    })
    .await;
    // One pull serves both: the origin sees one player, the edge two.
    assert_eq!(streams(&origin)[0]["players"].as_array().unwrap().len(), 1);
    assert_eq!(streams(&edge)[0]["players"].as_array().unwrap().len(), 2);

    first.close().await;
    second.close().await;
    wait_until("the pull to stop", || {
        streams(&edge) == Value::Array(vec![])
            && streams(&origin)[0]["players"]
                .as_array()
                .is_some_and(|p| p.is_empty())
    })
    .await;

    // A stream the origin does not have: the edge says so.
    let offer = client::write_offer(
        Role::Play,
        "abcd",
        "abcdefghijklmnopqrstuvwx",
        &client::fingerprint_of(&certificate),
        1,
        2,
        None,
    );
    let r = http(
        "POST",
        &edge.url("/whep/absent"),
        Some("application/sdp"),
        &offer,
    );
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body.contains("pulling it from the origin failed") && r.body.contains("404"),
        "{}",
        r.body
    );
}
