//! WHIP/WHEP and the stream API against a real relay process: error statuses with messages
//! that say what is wrong, port reuse and exhaustion, and session lifecycle without leaks.

mod common;

use std::time::{Duration, Instant};

use common::{
    CHROME_PLAY_OFFER, CHROME_PUBLISH_OFFER, Relay, answer_candidates, answer_port, http,
    media_range, send_udp,
};

const SDP: Option<&str> = Some("application/sdp");

fn wait_until(what: &str, relay: &Relay, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_requests_get_4xx_with_a_message_that_says_what_is_wrong() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(4)),
    ]);

    let r = http(
        "POST",
        &relay.url("/whip/cam"),
        SDP,
        "v=0\r\nthis is not sdp\r\n",
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("malformed SDP"), "{}", r.body);

    let r = http("POST", &relay.url("/whip/cam"), SDP, "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("empty"), "{}", r.body);

    let r = http(
        "POST",
        &relay.url("/whip/cam"),
        Some("text/plain"),
        CHROME_PUBLISH_OFFER,
    );
    assert_eq!(r.status, 415);
    assert!(r.body.contains("application/sdp"), "{}", r.body);

    let no_fingerprint = CHROME_PUBLISH_OFFER.replace("a=fingerprint", "a=x-fingerprint");
    let r = http("POST", &relay.url("/whip/cam"), SDP, &no_fingerprint);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("a=fingerprint"), "{}", r.body);

    let r = http(
        "POST",
        &relay.url("/whip/bad%20name"),
        SDP,
        CHROME_PUBLISH_OFFER,
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("stream name"), "{}", r.body);

    let r = http("POST", &relay.url("/whep/nobody"), SDP, CHROME_PLAY_OFFER);
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("`nobody` is not being published"),
        "{}",
        r.body
    );

    let r = http("POST", &relay.url("/whip/cam"), SDP, CHROME_PUBLISH_OFFER);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    let location = r.header("location").expect("Location header").to_string();
    assert!(location.starts_with("/session/"));

    let r = http("POST", &relay.url("/whip/cam"), SDP, CHROME_PUBLISH_OFFER);
    assert_eq!(r.status, 409);
    assert!(r.body.contains("already has a publisher"), "{}", r.body);

    // A player that can only take a codec the stream does not send.
    let vp9_only: String = CHROME_PLAY_OFFER
        .lines()
        .filter(|l| !l.starts_with("a=rtpmap:") || l.contains("VP9"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let r = http("POST", &relay.url("/whep/cam"), SDP, &vp9_only);
    assert_eq!(r.status, 406, "{}", r.body);
    assert!(r.body.contains("no codec in common"), "{}", r.body);

    let r = http("POST", &relay.url("/whep/cam"), SDP, CHROME_PLAY_OFFER);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.contains("a=sendonly"));

    let r = http("DELETE", &relay.url("/session/999999"), None, "");
    assert_eq!(r.status, 404);
    let r = http("DELETE", &relay.url("/session/abc"), None, "");
    assert_eq!(r.status, 400);

    assert_eq!(http("DELETE", &relay.url(&location), None, "").status, 200);
    // The publisher's players end with it.
    wait_until("the stream to end", &relay, || {
        http("GET", &relay.url("/api/streams"), None, "").body == "[]"
    });
    assert!(relay.metric("corecast_offers_rejected_total") >= 8);
}

#[test]
fn deleted_sessions_free_their_ports_and_a_full_range_answers_503() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(2)),
    ]);
    // Many more sessions in sequence than the range has ports.
    for i in 0..12 {
        let r = http(
            "POST",
            &relay.url(&format!("/whip/s{i}")),
            SDP,
            CHROME_PUBLISH_OFFER,
        );
        assert_eq!(r.status, 201, "session {i}: {}\n{}", r.body, relay.log());
        let location = r.header("location").unwrap().to_string();
        assert_eq!(http("DELETE", &relay.url(&location), None, "").status, 200);
    }
    assert_eq!(relay.metric("corecast_ports_in_use"), 0);

    let a = http("POST", &relay.url("/whip/a"), SDP, CHROME_PUBLISH_OFFER);
    let b = http("POST", &relay.url("/whip/b"), SDP, CHROME_PUBLISH_OFFER);
    assert_eq!((a.status, b.status), (201, 201));
    let c = http("POST", &relay.url("/whip/c"), SDP, CHROME_PUBLISH_OFFER);
    assert_eq!(c.status, 503, "{}", c.body);
    assert!(c.body.contains("exhausted"), "{}", c.body);
    assert_eq!(
        relay.metric("corecast_ports_exhausted_total"),
        1,
        "{}",
        http("GET", &relay.url("/metrics"), None, "").body
    );
    // Freeing one makes room again.
    assert_eq!(
        http(
            "DELETE",
            &relay.url(a.header("location").unwrap()),
            None,
            ""
        )
        .status,
        200
    );
    assert_eq!(
        http("POST", &relay.url("/whip/c"), SDP, CHROME_PUBLISH_OFFER).status,
        201
    );
}

#[test]
fn advertised_candidates_follow_media_protocol_and_lie_inside_the_media_range() {
    for (protocol, expected) in [
        ("udp", vec!["udp"]),
        ("tcp", vec!["tcp"]),
        ("all", vec!["udp", "tcp"]),
    ] {
        let range = media_range(3);
        let (first, last) = range.split_once('-').unwrap();
        let (first, last): (u16, u16) = (first.parse().unwrap(), last.parse().unwrap());
        let relay = Relay::start(&[
            ("CORECAST_WORKERS_COUNT", "1"),
            ("CORECAST_MEDIA_PORTS", &range),
            ("CORECAST_MEDIA_PROTOCOL", protocol),
        ]);
        for i in 0..3 {
            let r = http(
                "POST",
                &relay.url(&format!("/whip/p{i}")),
                SDP,
                CHROME_PUBLISH_OFFER,
            );
            assert_eq!(r.status, 201);
            // Two m-sections, each with the same candidates.
            let candidates = answer_candidates(&r.body);
            let transports: Vec<&str> = candidates
                .iter()
                .take(expected.len())
                .map(|(t, _)| t.as_str())
                .collect();
            assert_eq!(transports, expected, "{protocol}: {}", r.body);
            for (transport, port) in &candidates {
                assert!(
                    (first..=last).contains(port),
                    "{transport} port {port} outside {range}"
                );
            }
            if protocol != "udp" {
                assert!(r.body.contains("tcptype passive"), "{}", r.body);
            }
        }
    }
}

#[test]
fn session_without_ice_times_out_and_frees_its_port() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(2)),
        ("CORECAST_MEDIA_ICE_TIMEOUT", "1"),
    ]);
    let r = http("POST", &relay.url("/whip/idle"), SDP, CHROME_PUBLISH_OFFER);
    assert_eq!(r.status, 201);
    // Garbage and unauthenticated STUN do not keep a session alive; they are counted.
    let port = answer_port(&r.body);
    send_udp(port, b"\x00\x01\x00\x00garbage-that-is-not-stun");
    send_udp(port, &[0xde; 40]);
    wait_until("the ICE timeout", &relay, || {
        relay.metric("corecast_ports_in_use") == 0
            && http("GET", &relay.url("/api/streams"), None, "").body == "[]"
    });
    assert!(relay.log().contains("ICE timeout"), "{}", relay.log());
    assert!(
        relay.metric_all_workers("corecast_drop_garbage_total")
            + relay.metric_all_workers("corecast_drop_stun_invalid_total")
            >= 2
    );
}

#[test]
fn thousands_of_sessions_leave_nothing_behind() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(8)),
    ]);
    let publisher = http("POST", &relay.url("/whip/big"), SDP, CHROME_PUBLISH_OFFER);
    assert_eq!(publisher.status, 201);
    for i in 0..1000 {
        let r = http("POST", &relay.url("/whep/big"), SDP, CHROME_PLAY_OFFER);
        assert_eq!(r.status, 201, "player {i}: {}\n{}", r.body, relay.log());
        assert_eq!(
            http(
                "DELETE",
                &relay.url(r.header("location").unwrap()),
                None,
                ""
            )
            .status,
            200
        );
    }
    assert_eq!(
        http(
            "DELETE",
            &relay.url(publisher.header("location").unwrap()),
            None,
            ""
        )
        .status,
        200
    );
    wait_until("every worker to drop its sessions", &relay, || {
        relay.metric("corecast_ports_in_use") == 0
            && relay.metric_all_workers("corecast_worker_sessions") == 0
    });
    assert_eq!(relay.metric("corecast_sessions_created_total"), 1001);
    assert_eq!(relay.metric("corecast_sessions_ended_total"), 1001);
    assert_eq!(http("GET", &relay.url("/api/streams"), None, "").body, "[]");
}

/// Chromium's publish offer with the lines it adds for three simulcast encodings.
fn simulcast_publish_offer() -> String {
    let layers = "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
                  a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
                  a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n";
    format!("{}{layers}", CHROME_PUBLISH_OFFER.trim_end())
}

fn session_id(location: &str) -> &str {
    location.rsplit('/').next().expect("a session id")
}

#[test]
fn simulcast_players_pin_or_cap_their_layer_and_bad_requests_say_why() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(8)),
    ]);
    const JSON: Option<&str> = Some("application/json");
    let r = http(
        "POST",
        &relay.url("/whip/sim"),
        SDP,
        &simulcast_publish_offer(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.contains("a=simulcast:recv q;h;f"), "{}", r.body);
    let publisher = r.header("location").unwrap().to_string();

    for (query, needle) in [
        ("?layer=x", "h, m, l"),
        ("?rid=zz", "q, h, f"),
        ("?layer=h&rid=q", "not both"),
        ("?bogus=1", "layer, rid, max_kbps and node"),
        ("?max_kbps=lots", "max_kbps"),
    ] {
        let r = http(
            "POST",
            &relay.url(&format!("/whep/sim{query}")),
            SDP,
            CHROME_PLAY_OFFER,
        );
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(r.body.contains(needle), "{query}: {}", r.body);
    }
    let r = http(
        "POST",
        &relay.url("/whep/sim?layer=l&max_kbps=500"),
        SDP,
        CHROME_PLAY_OFFER,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.body.contains("transport-cc"),
        "players of simulcast give feedback: {}",
        r.body
    );
    let player = r.header("location").unwrap().to_string();
    let patch = |id: &str, content_type, body: &str| {
        http(
            "PATCH",
            &relay.url(&format!("/api/sessions/{id}")),
            content_type,
            body,
        )
    };
    let r = patch(session_id(&player), JSON, r#"{"rid": "f", "max_kbps": 0}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let applied: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(applied["pinned"], "layer(2)", "{}", r.body);
    assert!(applied["max_kbps"].is_null());
    let r = patch(session_id(&player), Some("text/plain"), r#"{"layer": "h"}"#);
    assert_eq!(r.status, 415, "{}", r.body);
    let r = patch(session_id(&player), JSON, "{not json");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = patch("999999", JSON, r#"{"layer": "h"}"#);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = patch(session_id(&publisher), JSON, r#"{"layer": "h"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("only a player"), "{}", r.body);

    // A stream of one encoding: nothing to choose.
    let r = http("POST", &relay.url("/whip/plain"), SDP, CHROME_PUBLISH_OFFER);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = http("POST", &relay.url("/whep/plain"), SDP, CHROME_PLAY_OFFER);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(!r.body.contains("transport-cc"), "{}", r.body);
    let r = patch(
        session_id(r.header("location").unwrap()),
        JSON,
        r#"{"layer": "h"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not simulcast"), "{}", r.body);
    // Joining it with a layer request: nothing to choose, the player plays the one encoding
    // (a page that always asks for a cap works with every stream).
    let players = |relay: &Relay| {
        let streams: serde_json::Value =
            serde_json::from_str(&http("GET", &relay.url("/api/streams/plain"), None, "").body)
                .unwrap();
        streams["players"].as_array().map_or(0, Vec::len)
    };
    let before = players(&relay);
    let r = http(
        "POST",
        &relay.url("/whep/plain?max_kbps=500"),
        SDP,
        CHROME_PLAY_OFFER,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(players(&relay), before + 1);
}
