//! Trickle ICE, ICE restart (PATCH on the session, RFC 9725 §4.3) and transport migration
//! against a real relay process over real sockets. The test is the controlling ICE agent
//! with hand-made connectivity checks (the relay is ICE-lite): a nomination on another UDP
//! 5-tuple or on an ICE-TCP connection moves the session's media path; the old TCP connection
//! stays a standby pair while the client checks it and closes when it stops; a check that fails MESSAGE-INTEGRITY never moves it; after a restart the old
//! credentials are answered until a pair is nominated with the new ones. And every PATCH the
//! relay refuses gets its status (400, 404, 412, 415, 428) with a message. (Media over a
//! migrated path, with DTLS and SRTP kept, is the Chromium test's: tests/migration.rs.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{CHROME_PUBLISH_OFFER, Relay, answer_port, http, http_with_headers, media_range};
use corecast::wire::stun::{StunMessage, short_term_key};
use serde_json::Value;

const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
/// The fixture offer's credentials.
const CLIENT_UFRAG: &str = "Cg87";
const CLIENT_PWD: &str = "WL016jBBraVUG46YgscGVymt";

/// The relay's side of a session, from its 201.
struct Created {
    location: String,
    etag: String,
    port: u16,
    ufrag: String,
    pwd: String,
}

fn attribute(sdp: &str, name: &str) -> String {
    common::sdp_attribute(sdp, name)
}

fn publish(relay: &Relay, stream: &str) -> Created {
    let r = http(
        "POST",
        &relay.url(&format!("/whip/{stream}")),
        Some("application/sdp"),
        CHROME_PUBLISH_OFFER,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    Created {
        location: r.header("location").expect("Location").to_string(),
        etag: r
            .header("etag")
            .expect("the 201 carries an ETag")
            .to_string(),
        port: answer_port(&r.body),
        ufrag: attribute(&r.body, "a=ice-ufrag:"),
        pwd: attribute(&r.body, "a=ice-pwd:"),
    }
}

fn patch(relay: &Relay, location: &str, headers: &[(&str, &str)], body: &str) -> common::Response {
    http_with_headers("PATCH", &relay.url(location), headers, body)
}

fn check(relay_ufrag: &str, client_ufrag: &str, pwd: &str, nominate: bool) -> Vec<u8> {
    common::ice_check(relay_ufrag, client_ufrag, pwd, nominate)
}

/// Sends a check from `socket`; the relay's answer, verified with `pwd`, if one comes.
fn udp_check(socket: &UdpSocket, port: u16, request: &[u8], pwd: &str) -> bool {
    socket.send_to(request, ("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 1500];
    match socket.recv_from(&mut buf) {
        Ok((n, _)) => {
            let response = StunMessage::parse(&buf[..n]).expect("a STUN response");
            assert!(response.is_binding_success());
            response
                .verify_integrity(&short_term_key(pwd))
                .expect("signed with the relay's password");
            true
        }
        Err(_) => false,
    }
}

/// Sends a check as one RFC 4571 frame; the relay's framed answer, if one comes.
fn tcp_check(stream: &mut TcpStream, request: &[u8]) -> bool {
    let mut framed = (request.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(request);
    stream.write_all(&framed).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut len = [0u8; 2];
    if stream.read_exact(&mut len).is_err() {
        return false;
    }
    let mut response = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut response).is_ok()
        && StunMessage::parse(&response).is_ok_and(|m| m.is_binding_success())
}

/// The publisher's entry in `/api/streams`.
fn publisher(relay: &Relay) -> Value {
    let body = http("GET", &relay.url("/api/streams"), None, "").body;
    let streams: Value = serde_json::from_str(&body).expect("JSON");
    streams[0]["publisher"].clone()
}

/// Waits until the publisher's path is `remote` over `transport`.
fn wait_for_path(relay: &Relay, remote: SocketAddr, transport: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = publisher(relay);
        if p["remote"] == remote.to_string() && p["transport"] == transport {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the path did not become {transport} {remote}: {p}\n{}",
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A per-worker counter summed, once it reaches `expected` (a worker applies a restart when
/// it takes the command, a moment after the answer) or after 5 s.
fn worker_metric(relay: &Relay, name: &str, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = relay.metric_all_workers(name);
        if value >= expected || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bound() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

#[test]
fn patch_refusals_say_what_is_wrong() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(2)),
    ]);
    let s = publish(&relay, "cam");
    let ct = ("Content-Type", SDPFRAG);
    let trickle = format!(
        "a=ice-ufrag:{CLIENT_UFRAG}\r\na=ice-pwd:{CLIENT_PWD}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
         a=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n"
    );
    let restart = "a=ice-ufrag:Nw01\r\na=ice-pwd:newpassword0123456789xyz\r\n";

    let r = patch(
        &relay,
        &s.location,
        &[("Content-Type", "application/sdp")],
        &trickle,
    );
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(r.body.contains(SDPFRAG), "{}", r.body);

    for unknown in ["/session/999999", "/session/abc"] {
        let r = patch(&relay, unknown, &[ct], &trickle);
        assert_eq!(r.status, 404, "{unknown}: {}", r.body);
        assert!(r.body.contains("does not exist"), "{}", r.body);
    }

    for (body, says) in [
        ("hello", "not an SDP line"),
        ("", "empty"),
        ("a=ice-ufrag:Nw01\r\n", "without a=ice-pwd"),
        ("a=candidate:1 1 udp 1 127.0.0.1 99999 typ host\r\n", "port"),
        ("v=0\r\n", "does not belong"),
    ] {
        let r = patch(&relay, &s.location, &[ct, ("If-Match", &s.etag)], body);
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        assert!(
            r.body.contains(says),
            "{body:?}: `{}` should say {says}",
            r.body
        );
    }

    // Trickle: with the ETag, with `*`, or with nothing (the relay is ICE-lite: it takes them).
    for if_match in [Some(s.etag.as_str()), Some("*"), None] {
        let headers: Vec<(&str, &str)> = std::iter::once(ct)
            .chain(if_match.map(|m| ("If-Match", m)))
            .collect();
        let r = patch(&relay, &s.location, &headers, &trickle);
        assert_eq!(r.status, 204, "{if_match:?}: {}", r.body);
    }
    // A trickle naming a stale ETag is refused too.
    let r = patch(
        &relay,
        &s.location,
        &[ct, ("If-Match", "\"stale\"")],
        &trickle,
    );
    assert_eq!(r.status, 412, "{}", r.body);

    let r = patch(&relay, &s.location, &[ct], restart);
    assert_eq!(r.status, 428, "{}", r.body);
    assert!(r.body.contains("If-Match"), "{}", r.body);
    let r = patch(
        &relay,
        &s.location,
        &[ct, ("If-Match", "\"stale\"")],
        restart,
    );
    assert_eq!(r.status, 412, "{}", r.body);
    assert!(r.body.contains("restarted"), "{}", r.body);

    let pwd_only = format!("a=ice-ufrag:{CLIENT_UFRAG}\r\na=ice-pwd:anotherpassword0123456789\r\n");
    let r = patch(&relay, &s.location, &[ct, ("If-Match", &s.etag)], &pwd_only);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("changes both"), "{}", r.body);

    // The resource URL is the client's capability: the session's id without its key, or with
    // another key, reaches nothing, not even with `If-Match: *` (which a restart may carry).
    let (id, key) = s
        .location
        .strip_prefix("/session/")
        .and_then(|segment| segment.split_once('-'))
        .expect("Location is /session/ID-KEY");
    assert!(
        key.len() >= 20,
        "the key is long enough not to be guessed: {key}"
    );
    let wrong_key = format!("/session/{id}-{}", "A".repeat(key.len()));
    for guessed in [format!("/session/{id}"), wrong_key] {
        let r = patch(&relay, &guessed, &[ct, ("If-Match", "*")], restart);
        assert_eq!(r.status, 404, "{guessed}: {}", r.body);
        let r = http("DELETE", &relay.url(&guessed), None, "");
        assert_eq!(r.status, 404, "{guessed}: {}", r.body);
    }
    // The operator's API takes a bare id (under `[auth]`, with `admin`), but a key it is given
    // must be the session's.
    let r = http_with_headers(
        "PATCH",
        &relay.url(&format!("/api/sessions/{id}-{}", "A".repeat(key.len()))),
        &[("Content-Type", "application/json")],
        r#"{"layer":"l"}"#,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        publisher(&relay)["state"],
        "connecting",
        "the session lives on"
    );

    // Nothing of that restarted anything.
    assert_eq!(relay.metric_all_workers("corecast_ice_restarts_total"), 0);
}

#[test]
fn nominations_move_the_path_between_udp_tuples_and_tcp_and_restarts_keep_the_session() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(2)),
        ("CORECAST_MEDIA_PROTOCOL", "all"),
        ("CORECAST_MEDIA_ICE_TIMEOUT", "4"),
    ]);
    let s = publish(&relay, "cam");
    let nominate = |pwd: &str| check(&s.ufrag, CLIENT_UFRAG, pwd, true);

    // The first nomination selects the path.
    let a = bound();
    assert!(udp_check(&a, s.port, &nominate(&s.pwd), &s.pwd));
    let view = wait_for_path(&relay, a.local_addr().unwrap(), "udp");
    assert_eq!(view["migrations"], 0);
    assert_eq!(view["local"], format!("127.0.0.1:{}", s.port));

    // Another 5-tuple nominates: the session moves.
    let b = bound();
    let b_nomination = nominate(&s.pwd);
    assert!(udp_check(&b, s.port, &b_nomination, &s.pwd));
    assert_eq!(
        wait_for_path(&relay, b.local_addr().unwrap(), "udp")["migrations"],
        1
    );

    // The same nomination, captured and sent again from elsewhere, passes MESSAGE-INTEGRITY
    // (it covers the bytes, not the address) but moves nothing: its transaction ID came on
    // another path. Counted.
    let replayer = bound();
    udp_check(&replayer, s.port, &b_nomination, &s.pwd);
    assert_eq!(
        worker_metric(&relay, "corecast_drop_replayed_nomination_total", 1),
        1
    );
    let view = publisher(&relay);
    assert_eq!(
        view["remote"],
        b.local_addr().unwrap().to_string(),
        "{view}"
    );
    // The client's own retransmission of it, from its own address, is no replay.
    assert!(udp_check(&b, s.port, &b_nomination, &s.pwd));
    assert_eq!(publisher(&relay)["migrations"], 1);

    // A nomination that fails MESSAGE-INTEGRITY is not answered and moves nothing.
    let intruder = bound();
    let forged = check(&s.ufrag, CLIENT_UFRAG, "guessed-password-000000", true);
    assert!(!udp_check(&intruder, s.port, &forged, &s.pwd));
    std::thread::sleep(Duration::from_millis(200));
    let view = publisher(&relay);
    assert_eq!(
        view["remote"],
        b.local_addr().unwrap().to_string(),
        "{view}"
    );
    assert_eq!(view["migrations"], 1);

    // UDP "blocked": an ICE-TCP connection checks without nominating (a standby pair), then
    // nominates, and the media path is the connection.
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    assert!(tcp_check(
        &mut tcp,
        &check(&s.ufrag, CLIENT_UFRAG, &s.pwd, false)
    ));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(publisher(&relay)["transport"], "udp");
    assert!(tcp_check(&mut tcp, &nominate(&s.pwd)));
    assert_eq!(
        wait_for_path(&relay, tcp.local_addr().unwrap(), "tcp")["migrations"],
        2
    );

    // Back to UDP: the old path's connection stays as a standby pair while the client checks
    // it (it answers, and carries nothing else)...
    assert!(udp_check(&a, s.port, &nominate(&s.pwd), &s.pwd));
    assert_eq!(
        wait_for_path(&relay, a.local_addr().unwrap(), "udp")["migrations"],
        3
    );
    assert!(tcp_check(
        &mut tcp,
        &check(&s.ufrag, CLIENT_UFRAG, &s.pwd, false)
    ));
    // ... and closes once the client stops checking it for media.ice_timeout (4 s here),
    // while the session, checked on UDP, lives on.
    let stopped = Instant::now();
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let closed = loop {
        assert!(udp_check(
            &a,
            s.port,
            &check(&s.ufrag, CLIENT_UFRAG, &s.pwd, false),
            &s.pwd
        ));
        match tcp.read(&mut byte) {
            Ok(0) => break stopped.elapsed(),
            Ok(_) => panic!("a standby connection carries nothing unasked"),
            Err(_) if stopped.elapsed() < Duration::from_secs(8) => continue,
            Err(e) => panic!("the standby connection is still open: {e}\n{}", relay.log()),
        }
    };
    assert!(closed >= Duration::from_secs(3), "closed after {closed:?}");
    assert_eq!(
        relay.metric_all_workers("corecast_tcp_standby_closed_total"),
        1
    );

    // An ICE restart: the relay's new credentials and candidates, a new ETag.
    let fragment = "a=ice-ufrag:Nw01\r\na=ice-pwd:newpassword0123456789xyz\r\n\
                    m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n";
    let r = patch(
        &relay,
        &s.location,
        &[("Content-Type", SDPFRAG), ("If-Match", &s.etag)],
        fragment,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some(SDPFRAG));
    let new_etag = r.header("etag").expect("a new ETag").to_string();
    assert_ne!(new_etag, s.etag);
    let (new_ufrag, new_pwd) = (
        attribute(&r.body, "a=ice-ufrag:"),
        attribute(&r.body, "a=ice-pwd:"),
    );
    assert_ne!(new_ufrag, s.ufrag);
    assert!(r.body.contains("a=ice-lite"), "{}", r.body);
    assert_eq!(
        common::answer_candidates(&r.body),
        vec![("udp".to_string(), s.port), ("tcp".to_string(), s.port)],
        "{}",
        r.body
    );
    // The old ETag is stale now.
    let r = patch(
        &relay,
        &s.location,
        &[("Content-Type", SDPFRAG), ("If-Match", &s.etag)],
        fragment,
    );
    assert_eq!(r.status, 412, "{}", r.body);

    // (The worker takes the new credentials a moment after the answer.)
    assert_eq!(worker_metric(&relay, "corecast_ice_restarts_total", 1), 1);
    // Until the client nominates with the new credentials, the old ones are answered (its
    // old pair keeps consent); the new ones nominate from another tuple, and the old lapse.
    let old = check(&s.ufrag, CLIENT_UFRAG, &s.pwd, false);
    assert!(udp_check(&a, s.port, &old, &s.pwd));
    let d = bound();
    assert!(udp_check(
        &d,
        s.port,
        &check(&new_ufrag, "Nw01", &new_pwd, true),
        &new_pwd
    ));
    let view = wait_for_path(&relay, d.local_addr().unwrap(), "udp");
    assert_eq!(
        (view["migrations"].as_u64(), view["ice_restarts"].as_u64()),
        (Some(4), Some(1))
    );
    assert!(
        !udp_check(&a, s.port, &old, &s.pwd),
        "old credentials lapse"
    );

    // `If-Match: *` restarts too.
    let r = patch(
        &relay,
        &s.location,
        &[("Content-Type", SDPFRAG), ("If-Match", "*")],
        "a=ice-ufrag:Nw02\r\na=ice-pwd:newpassword0123456789abc\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body);

    assert_eq!(worker_metric(&relay, "corecast_ice_restarts_total", 2), 2);
    assert_eq!(
        relay.metric_all_workers("corecast_path_migrations_total"),
        4
    );
    assert_eq!(publisher(&relay)["state"], "ice-connected");
}

/// The WebSocket's next reply that is not a status event.
#[test]
fn a_restart_in_single_port_mode_reaches_the_session_by_its_new_ufrag() {
    // Two workers on one shared port: the new ufrag must be known to every worker's table,
    // whichever the kernel hands the first check with it to.
    let port = common::free_mux_port();
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_MUX_PORT", &port.to_string()),
    ]);
    let s = publish(&relay, "cam");
    assert_eq!(s.port, port);
    let a = bound();
    assert!(udp_check(
        &a,
        port,
        &check(&s.ufrag, CLIENT_UFRAG, &s.pwd, true),
        &s.pwd
    ));
    wait_for_path(&relay, a.local_addr().unwrap(), "udp");

    let restart = |etag: &str, client: &str| {
        let r = patch(
            &relay,
            &s.location,
            &[("Content-Type", SDPFRAG), ("If-Match", etag)],
            &format!("a=ice-ufrag:{client}\r\na=ice-pwd:newpassword0123456789xyz\r\n"),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        (
            attribute(&r.body, "a=ice-ufrag:"),
            attribute(&r.body, "a=ice-pwd:"),
            r.header("etag").unwrap().to_string(),
        )
    };
    let (ufrag2, pwd2, etag2) = restart(&s.etag, "Nw01");
    assert_eq!(worker_metric(&relay, "corecast_ice_restarts_total", 1), 1);
    // Sockets of their own: each new tuple may land on either worker.
    let mut moved_to = None;
    for _ in 0..4 {
        let d = bound();
        assert!(
            udp_check(&d, port, &check(&ufrag2, "Nw01", &pwd2, true), &pwd2),
            "a check with the new ufrag is answered\n{}",
            relay.log()
        );
        moved_to = Some(d);
    }
    let d = moved_to.unwrap();
    wait_for_path(&relay, d.local_addr().unwrap(), "udp");

    // A second restart: the first ufrag names nothing any more (a session keeps its current
    // and previous one only), so restarts never pile up entries in the workers' tables.
    let (ufrag3, pwd3, _) = restart(&etag2, "Nw02");
    assert_eq!(worker_metric(&relay, "corecast_ice_restarts_total", 2), 2);
    assert!(udp_check(
        &bound(),
        port,
        &check(&ufrag3, "Nw02", &pwd3, false),
        &pwd3
    ));
    let before = relay.metric_all_workers("corecast_drop_unknown_ufrag_total");
    assert!(!udp_check(
        &bound(),
        port,
        &check(&s.ufrag, CLIENT_UFRAG, &s.pwd, false),
        &s.pwd
    ));
    assert_eq!(
        relay.metric_all_workers("corecast_drop_unknown_ufrag_total"),
        before + 1
    );
}

fn ws_reply(ws: &mut tungstenite::WebSocket<TcpStream>) -> Value {
    loop {
        let message = ws.read().expect("a WebSocket message");
        if let tungstenite::Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] != "status" {
                return value;
            }
        }
    }
}

fn ws_send(ws: &mut tungstenite::WebSocket<TcpStream>, value: Value) -> Value {
    ws.send(tungstenite::Message::Text(value.to_string().into()))
        .unwrap();
    ws_reply(ws)
}

#[test]
fn the_websocket_ice_command_trickles_and_restarts_like_patch() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(2)),
    ]);
    let stream = TcpStream::connect(relay.url("").trim_start_matches("http://")).unwrap();
    let url = relay.url("/ws").replace("http://", "ws://");
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("WebSocket handshake");
    assert_eq!(ws_reply(&mut ws)["status"], "ESTABLISHED");
    let answer = ws_send(
        &mut ws,
        serde_json::json!({"type": "publish", "id": 1, "stream": "cam", "sdp": CHROME_PUBLISH_OFFER}),
    );
    assert_eq!(answer["type"], "answer", "{answer}");
    let session = answer["session"].clone();
    let etag = answer["etag"]
        .as_str()
        .expect("the answer's etag")
        .to_string();

    let trickle = "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n";
    let r = ws_send(
        &mut ws,
        serde_json::json!({"type": "ice", "id": 2, "session": session, "sdp": trickle}),
    );
    assert_eq!(
        (r["type"].as_str(), r["restarted"].as_bool()),
        (Some("ice"), Some(false)),
        "{r}"
    );

    let restart = "a=ice-ufrag:Nw01\r\na=ice-pwd:newpassword0123456789xyz\r\n";
    for (etag, status) in [(None, 428), (Some("\"stale\""), 412)] {
        let mut command =
            serde_json::json!({"type": "ice", "id": 3, "session": session, "sdp": restart});
        if let Some(etag) = etag {
            command["etag"] = etag.into();
        }
        let r = ws_send(&mut ws, command);
        assert_eq!(
            (r["type"].as_str(), r["status"].as_u64()),
            (Some("error"), Some(status)),
            "{r}"
        );
    }
    let r = ws_send(
        &mut ws,
        serde_json::json!({"type": "ice", "id": 4, "session": session, "sdp": restart, "etag": etag}),
    );
    assert_eq!(r["restarted"], true, "{r}");
    assert_ne!(r["etag"].as_str(), Some(etag.as_str()));
    assert!(
        r["sdp"].as_str().unwrap_or("").contains("a=ice-ufrag:"),
        "{r}"
    );

    let r = ws_send(
        &mut ws,
        serde_json::json!({"type": "ice", "id": 5, "session": 999, "sdp": trickle}),
    );
    assert_eq!(r["status"], 404, "{r}");
    let r = ws_send(
        &mut ws,
        serde_json::json!({"type": "ice", "id": 6, "session": session}),
    );
    assert_eq!(r["status"], 400, "{r}");
    let r = ws_send(
        &mut ws,
        serde_json::json!({"type": "ice", "id": 7, "session": session, "sdp": "nonsense"}),
    );
    assert_eq!(r["status"], 400, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap_or("")
            .contains("not an SDP line"),
        "{r}"
    );
    assert_eq!(
        worker_metric(&relay, "corecast_ice_restarts_total", 1),
        1,
        "{}\n{}",
        http("GET", &relay.url("/api/streams"), None, "").body,
        relay.log()
    );
}
