//! The proof that WebRTC works: a real headless Chromium publishes its fake camera and
//! microphone through WHIP and plays through WHEP, with two workers so that the cross-worker
//! fanout path carries media. Needs Debian's `chromium` and `chromium-driver` (the README's
//! test command installs them).

mod common;

use std::time::{Duration, Instant};

use common::chromium::Chromium;
use common::{Relay, media_range, send_udp};
use serde_json::{Value, json};

/// The suite's Chromium (`common::chromium`), with this file's page helpers.
type Browser = Chromium;

impl Chromium {
    async fn start() -> Browser {
        Chromium::launch(&[]).await
    }

    async fn stats(&self, id: &Value) -> Value {
        self.call(
            "return await corecast.stats(arguments[0])",
            vec![id.clone()],
        )
        .await
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Polls `check` on the stats of `ids` until it holds for all or `timeout` passes.
async fn wait_for(
    browser: &Browser,
    ids: &[Value],
    timeout: Duration,
    what: &str,
    relay: &Relay,
    check: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = Vec::new();
        for id in ids {
            all.push(browser.stats(id).await);
        }
        if all.iter().all(&check) {
            return all;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: {all:#?}\nstreams: {}\nrelay log:\n{}",
                common::http("GET", &relay.url("/api/streams"), None, "").body,
                relay.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One browser at a time: each is a few hundred MB and two cores' worth of decoding.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_BROWSER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one browser test: one browser at a time, inside its own loopback-only network
/// namespace (see `common::in_private_network`), on a runtime of its own.
fn in_browser_network(test: &str, body: impl Future<Output = ()>) {
    let _one = exclusive();
    if common::in_private_network(test) {
        return;
    }
    runtime().block_on(body);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn streams(relay: &Relay) -> Value {
    serde_json::from_str(&common::http("GET", &relay.url("/api/streams"), None, "").body).unwrap()
}

/// Publishes `stream` and waits until the publisher's connection is up.
async fn publish(browser: &Browser, relay: &Relay, stream: &str, transport: Option<&str>) -> Value {
    let options = json!({ "transport": transport });
    let id = browser
        .call(
            "return await corecast.publish(arguments[0], arguments[1])",
            vec![json!(stream), options],
        )
        .await;
    wait_for(
        browser,
        std::slice::from_ref(&id),
        Duration::from_secs(30),
        "the publisher to connect",
        relay,
        |s| {
            s["error"].is_null()
                && s["connectionState"] == "connected"
                && num(s, "videoFramesSent") > 0
        },
    )
    .await;
    id
}

async fn play(browser: &Browser, stream: &str, transport: Option<&str>) -> Value {
    let options = json!({ "transport": transport });
    browser
        .call(
            "return await corecast.play(arguments[0], arguments[1])",
            vec![json!(stream), options],
        )
        .await
}

/// Waits until every player decoded more than 30 frames and received audio.
async fn wait_decoding(browser: &Browser, relay: &Relay, players: &[Value]) -> Vec<Value> {
    wait_for(
        browser,
        players,
        Duration::from_secs(45),
        "every player to decode",
        relay,
        |s| {
            s["error"].is_null()
                && num(s, "videoFramesDecoded") > 30
                && num(s, "audioPacketsReceived") > 0
        },
    )
    .await
}

fn assert_transport(stats: &Value, protocol: &str) {
    assert_eq!(stats["localProtocol"], protocol, "{stats:#?}");
    assert_eq!(stats["remoteProtocol"], protocol, "{stats:#?}");
}

/// A publisher and three players (one 5 s late) on a relay with two workers, over `protocol`.
async fn publisher_and_three_players(protocol: &str) {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(16)),
        ("CORECAST_MEDIA_PROTOCOL", protocol),
    ]);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&relay.url("/"))
        .await
        .expect("loading the page");

    let publisher = publish(&browser, &relay, "cam", None).await;
    let mut players = vec![
        play(&browser, "cam", None).await,
        play(&browser, "cam", None).await,
    ];
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The late joiner needs its keyframe request to reach the publisher to start decoding.
    players.push(play(&browser, "cam", None).await);

    let decoded = wait_decoding(&browser, &relay, &players).await;
    for s in &decoded {
        assert_transport(s, protocol);
    }
    assert_transport(&browser.stats(&publisher).await, protocol);

    // The players really are spread over both workers, so media crossed the mesh.
    let all = streams(&relay);
    let stream = &all[0];
    assert_eq!(stream["stream"], "cam");
    assert_eq!(stream["publisher"]["state"], "connected");
    let player_workers: Vec<u64> = stream["players"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(player_workers.len(), 3, "{all:#}");
    let publisher_worker = stream["publisher"]["worker"].as_u64().unwrap();
    assert!(
        player_workers.iter().any(|&w| w != publisher_worker),
        "{all:#}"
    );
    assert!(
        stream["players"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "connected"),
        "{all:#}"
    );
    // Each player's receiver reports echo the sender reports the relay sent it: its RTT and
    // loss reach /api/streams, and its transport is the one ICE nominated.
    let reported = common::eventually(Duration::from_secs(10), || {
        streams(&relay)[0]["players"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0) && p["loss"].is_number())
    })
    .await;
    let all = streams(&relay);
    assert!(reported, "players' RTT and loss reported: {all:#}");
    for p in all[0]["players"].as_array().unwrap() {
        assert_eq!(p["transport"], protocol, "{all:#}");
    }
    let metrics = common::http("GET", &relay.url("/metrics"), None, "").body;
    assert!(
        metrics.contains("corecast_player_rtt_seconds{stream=\"cam\"")
            && metrics.contains("corecast_stream_received_bytes_total{stream=\"cam\"}"),
        "{metrics}"
    );
    // The publisher hears how its path is doing: receiver reports and transport-wide feedback.
    assert!(relay.metric_all_workers("corecast_receiver_reports_sent_total") > 0);
    assert!(relay.metric_all_workers("corecast_transport_feedback_sent_total") > 0);
    if protocol == "tcp" {
        // One nominated connection per session stays open; extra ones were closed.
        assert_eq!(
            relay.metric_all_workers("corecast_worker_tcp_connections"),
            4
        );
    }

    // Garbage at the publisher's port is dropped and counted; the stream keeps flowing.
    let publisher_port = stream["publisher"]["port"].as_u64().unwrap() as u16;
    let frames_before: Vec<u64> = decoded
        .iter()
        .map(|s| num(s, "videoFramesDecoded"))
        .collect();
    if protocol == "udp" {
        let garbage_before = relay.metric_all_workers("corecast_drop_garbage_total");
        for _ in 0..20 {
            send_udp(publisher_port, b"\xffnot a media packet at all");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(relay.metric_all_workers("corecast_drop_garbage_total") >= garbage_before + 20);
    } else {
        // A connection that sends something other than STUN first is closed and counted.
        let closed_before = relay.metric_all_workers("corecast_drop_tcp_framing_total");
        let mut intruder = std::net::TcpStream::connect(("127.0.0.1", publisher_port)).unwrap();
        std::io::Write::write_all(&mut intruder, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 16];
        intruder
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = std::io::Read::read(&mut intruder, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the relay closes a connection that speaks no ICE");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(relay.metric_all_workers("corecast_drop_tcp_framing_total") > closed_before);
    }
    for (i, id) in players.iter().enumerate() {
        let s = browser.stats(id).await;
        assert!(
            num(&s, "videoFramesDecoded") > frames_before[i] + 10,
            "player {i} stalled: {s:#?}"
        );
    }
    assert!(relay.metric_all_workers("corecast_keyframe_requests_sent_total") >= 1);

    // The publisher leaves: the stream and its players' sessions end, and their ports are free.
    browser
        .call("return await corecast.stop(arguments[0])", vec![publisher])
        .await;
    let ports_free = || relay.metric("corecast_ports_in_use") == 0;
    assert!(
        common::eventually(Duration::from_secs(10), ports_free).await,
        "ports still in use after the publisher left:\n{}",
        relay.log()
    );
    assert_eq!(
        common::http("GET", &relay.url("/api/streams"), None, "").body,
        "[]"
    );
    browser.close().await;
}

#[test]
fn chromium_publisher_and_three_players_decode_over_udp_across_two_workers() {
    in_browser_network(
        "chromium_publisher_and_three_players_decode_over_udp_across_two_workers",
        publisher_and_three_players("udp"),
    );
}

#[test]
fn chromium_publisher_and_three_players_decode_over_ice_tcp_across_two_workers() {
    in_browser_network(
        "chromium_publisher_and_three_players_decode_over_ice_tcp_across_two_workers",
        publisher_and_three_players("tcp"),
    );
}

/// A port free for both UDP and TCP on `ip`, for a relay's shared media port.
/// Single-port mode: a publisher and three players on a relay with two workers, over
/// `protocol`, every session on the one port: all decode, every candidate the browser was
/// given and every selected path carries that port, and the players sit on both workers.
async fn single_port_publisher_and_three_players(protocol: &str) {
    let port = common::free_mux_port();
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_MUX_PORT", &port.to_string()),
        ("CORECAST_MEDIA_PROTOCOL", protocol),
    ]);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&relay.url("/"))
        .await
        .expect("loading the page");
    let publisher = publish(&browser, &relay, "cam", None).await;
    let mut players = Vec::new();
    for _ in 0..3 {
        players.push(play(&browser, "cam", None).await);
    }
    let decoded = wait_decoding(&browser, &relay, &players).await;
    let publisher_stats = browser.stats(&publisher).await;
    for s in decoded.iter().chain([&publisher_stats]) {
        assert_transport(s, protocol);
        assert_eq!(s["remotePort"], port, "{s:#?}");
        let ports = s["remoteCandidatePorts"].as_array().unwrap();
        assert!(
            !ports.is_empty() && ports.iter().all(|p| *p == port),
            "{s:#?}"
        );
    }
    let all = streams(&relay);
    let stream = &all[0];
    let mut workers: Vec<u64> = stream["players"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["port"], port, "{all:#}");
            assert_eq!(p["transport"], protocol, "{all:#}");
            p["worker"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(stream["publisher"]["port"], port, "{all:#}");
    workers.push(stream["publisher"]["worker"].as_u64().unwrap());
    workers.sort();
    workers.dedup();
    assert_eq!(workers, [0, 1], "sessions sit on both workers: {all:#}");
    // The kernel spreads remote addresses over the workers' sockets, not by session: some
    // packets (or connections) reached a worker that does not own their session.
    let moved = relay.metric_all_workers("corecast_mux_handoffs_total")
        + relay.metric_all_workers("corecast_mux_conn_handoffs_total");
    let local = relay.metric_all_workers("corecast_stun_answered_total");
    assert!(local > 0 && moved + local > 0, "{}", relay.log());
    // Garbage on the shared port is dropped and counted; the players keep decoding.
    let frames_before: Vec<u64> = decoded
        .iter()
        .map(|s| num(s, "videoFramesDecoded"))
        .collect();
    let unknown_before = relay.metric_all_workers("corecast_drop_unknown_path_total");
    if protocol == "udp" {
        for _ in 0..20 {
            send_udp(port, b"\xffnot a media packet at all");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            relay.metric_all_workers("corecast_drop_unknown_path_total") >= unknown_before + 20
        );
    } else {
        let mut intruder = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut intruder, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        intruder
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut intruder, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the relay closes a connection that speaks no ICE");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for (i, id) in players.iter().enumerate() {
        let s = browser.stats(id).await;
        assert!(
            num(&s, "videoFramesDecoded") > frames_before[i] + 10,
            "player {i} stalled: {s:#?}"
        );
    }
    browser
        .call("return await corecast.stop(arguments[0])", vec![publisher])
        .await;
    let gone = || {
        relay.metric("corecast_worker_sessions{worker=\"0\"}") == 0
            && relay.metric("corecast_worker_sessions{worker=\"1\"}") == 0
    };
    assert!(
        common::eventually(Duration::from_secs(10), gone).await,
        "{}",
        relay.log()
    );
    browser.close().await;
}

#[test]
fn chromium_single_port_publisher_and_three_players_decode_over_udp_on_two_workers() {
    in_browser_network(
        "chromium_single_port_publisher_and_three_players_decode_over_udp_on_two_workers",
        single_port_publisher_and_three_players("udp"),
    );
}

#[test]
fn chromium_single_port_publisher_and_three_players_decode_over_ice_tcp_on_two_workers() {
    in_browser_network(
        "chromium_single_port_publisher_and_three_players_decode_over_ice_tcp_on_two_workers",
        single_port_publisher_and_three_players("tcp"),
    );
}

/// The IPv6 address the IPv6 browser test gives its namespace (a unique local address on a
/// bridge with no ports: traffic to it never leaves the namespace).
const PRIVATE_V6: &str = "fd00:cc::1";

/// IPv6: Chromium publishes and plays over IPv6, the relay (single-port mode, two workers)
/// binding and announcing an IPv6 address. Chromium gathers no IPv6 loopback candidate
/// (`--allow-loopback-in-peer-connection` adds 127.0.0.1 alone), so the test's network
/// namespace gets a private IPv6 address on an empty bridge; `tests/single_port.rs` proves
/// `::1` itself with the library client.
#[test]
fn chromium_publishes_and_plays_over_ipv6() {
    let _one = exclusive();
    let setup = format!(
        "ip link add v6 type bridge && ip link set v6 up && ip addr add {PRIVATE_V6}/64 dev v6 nodad"
    );
    if common::in_private_network_set_up("chromium_publishes_and_plays_over_ipv6", &setup) {
        return;
    }
    if std::env::var_os("IN_TEST_NETNS_OF_CORECAST").is_none() {
        eprintln!("note: no network namespace here, so no private IPv6 address: skipped");
        return;
    }
    runtime().block_on(async {
        let port = common::free_mux_port_on(PRIVATE_V6);
        let relay = Relay::start(&[
            ("CORECAST_WORKERS_COUNT", "2"),
            ("CORECAST_MEDIA_BIND_IP", PRIVATE_V6),
            ("CORECAST_MEDIA_ANNOUNCED_IP", PRIVATE_V6),
            ("CORECAST_MEDIA_MUX_PORT", &port.to_string()),
            ("CORECAST_MEDIA_PROTOCOL", "udp"),
        ]);
        let browser = Browser::start().await;
        browser
            .client
            .goto(&relay.url("/"))
            .await
            .expect("loading the page");
        let publisher = publish(&browser, &relay, "six", None).await;
        let player = play(&browser, "six", None).await;
        let decoded = wait_decoding(&browser, &relay, std::slice::from_ref(&player)).await;
        for s in decoded.iter().chain([&browser.stats(&publisher).await]) {
            assert_eq!(s["remoteAddress"], PRIVATE_V6, "{s:#?}");
            assert_eq!(s["remotePort"], port, "{s:#?}");
        }
        let all = streams(&relay);
        let remote = all[0]["players"][0]["remote"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(remote.starts_with(&format!("[{PRIVATE_V6}]:")), "{all:#}");
        browser.close().await;
    });
}

#[test]
fn mixed_transports_in_one_stream_udp_to_tcp_and_tcp_to_udp() {
    in_browser_network(
        "mixed_transports_in_one_stream_udp_to_tcp_and_tcp_to_udp",
        async {
            let relay = Relay::start(&[
                ("CORECAST_WORKERS_COUNT", "2"),
                ("CORECAST_MEDIA_PORTS", &media_range(16)),
                ("CORECAST_MEDIA_PROTOCOL", "all"),
            ]);
            let browser = Browser::start().await;
            browser
                .client
                .goto(&relay.url("/"))
                .await
                .expect("loading the page");
            let udp_publisher = publish(&browser, &relay, "from-udp", Some("udp")).await;
            let tcp_publisher = publish(&browser, &relay, "from-tcp", Some("tcp")).await;
            let tcp_player = play(&browser, "from-udp", Some("tcp")).await;
            let udp_player = play(&browser, "from-tcp", Some("udp")).await;
            let decoded = wait_decoding(&browser, &relay, &[tcp_player, udp_player]).await;
            assert_transport(&browser.stats(&udp_publisher).await, "udp");
            assert_transport(&browser.stats(&tcp_publisher).await, "tcp");
            assert_transport(&decoded[0], "tcp");
            assert_transport(&decoded[1], "udp");
            browser.close().await;
        },
    );
}

/// Plays `stream` from another relay (its base URL) from the page of the first.
async fn play_from(browser: &Browser, server: &str, stream: &str) -> Value {
    let options = json!({ "server": server });
    browser
        .call(
            "return await corecast.play(arguments[0], arguments[1])",
            vec![json!(stream), options],
        )
        .await
}

fn two_relays(edge_origin: bool) -> (Relay, Relay) {
    let origin = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(16)),
    ]);
    let mut edge_env = vec![
        ("CORECAST_WORKERS_COUNT", "2".to_string()),
        ("CORECAST_MEDIA_PORTS", media_range(16)),
    ];
    if edge_origin {
        edge_env.push(("CORECAST_CASCADE_ORIGIN", origin.http.clone()));
    }
    let edge_env: Vec<(&str, &str)> = edge_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let edge = Relay::start(&edge_env);
    (origin, edge)
}

#[test]
fn chromium_publishes_on_an_origin_and_plays_from_an_edge_by_push_and_by_pull() {
    in_browser_network(
        "chromium_publishes_on_an_origin_and_plays_from_an_edge_by_push_and_by_pull",
        async {
            let (origin, edge) = two_relays(true);
            let browser = Browser::start().await;
            browser
                .client
                .goto(&origin.url("/"))
                .await
                .expect("loading the page");
            publish(&browser, &origin, "show", None).await;

            // Push: the origin republishes "show" to the edge as "show-pushed".
            let body = format!(
                r#"{{"uri":"{}","localStreamName":"show","remoteStreamName":"show-pushed"}}"#,
                edge.http
            );
            let r = common::http(
                "POST",
                &origin.url("/rest-api/pull/push"),
                Some("application/json"),
                &body,
            );
            assert_eq!(r.status, 200, "{}", r.body);
            let edge_has_pushed = || {
                common::http("GET", &edge.url("/api/streams"), None, "")
                    .body
                    .contains("show-pushed")
            };
            assert!(
                common::eventually(Duration::from_secs(15), edge_has_pushed).await,
                "the push did not arrive:\n{}",
                origin.log()
            );
            let pushed = play_from(&browser, &edge.http, "show-pushed").await;
            // Pull: a player asks the edge for "show", which it does not have: it pulls it.
            let pulled = play_from(&browser, &edge.http, "show").await;
            let decoded = wait_decoding(&browser, &edge, &[pushed.clone(), pulled.clone()]).await;
            for s in &decoded {
                assert_transport(s, "udp");
            }

            // Terminating the push removes the stream from the edge.
            let stop = format!(
                r#"{{"uri":"{}","remoteStreamName":"show-pushed"}}"#,
                edge.http
            );
            let r = common::http(
                "POST",
                &origin.url("/rest-api/pull/terminate"),
                Some("application/json"),
                &stop,
            );
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(
                common::eventually(Duration::from_secs(10), || !edge_has_pushed()).await,
                "the pushed stream stayed on the edge"
            );
            // The pulled stream plays on: it is a separate bridge.
            let before = num(&browser.stats(&pulled).await, "videoFramesDecoded");
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(num(&browser.stats(&pulled).await, "videoFramesDecoded") > before + 10);
            browser.close().await;
        },
    );
}

#[test]
fn websocket_publish_and_play_report_status_events_and_errors() {
    in_browser_network(
        "websocket_publish_and_play_report_status_events_and_errors",
        async {
            let relay = Relay::start(&[
                ("CORECAST_WORKERS_COUNT", "2"),
                ("CORECAST_MEDIA_PORTS", &media_range(16)),
            ]);
            let browser = Browser::start().await;
            browser
                .client
                .goto(&relay.url("/"))
                .await
                .expect("loading the page");
            let ws = json!({ "signaling": "ws" });
            let publisher = browser
                .call(
                    "return await corecast.publish('wscam', arguments[0])",
                    vec![ws.clone()],
                )
                .await;
            let player = browser
                .call(
                    "return await corecast.play('wscam', arguments[0])",
                    vec![ws.clone()],
                )
                .await;
            wait_decoding(&browser, &relay, std::slice::from_ref(&player)).await;

            // Bad commands get error events that say what is wrong.
            let unknown = browser
                .call("return await corecast.command({type: 'dance'})", vec![])
                .await;
            assert_eq!(unknown["type"], "error");
            assert!(
                unknown["message"]
                    .as_str()
                    .unwrap()
                    .contains("unknown command"),
                "{unknown}"
            );
            let malformed = browser
            .call(
                "return await corecast.command({type: 'play', stream: 'wscam', sdp: 'nonsense'})",
                vec![],
            )
            .await;
            assert_eq!(malformed["status"], 400, "{malformed}");
            let absent = browser
                .call(
                    "return await corecast.command({type: 'publish', stream: 'x'})",
                    vec![],
                )
                .await;
            assert!(
                absent["message"]
                    .as_str()
                    .unwrap()
                    .contains("needs `stream` and `sdp`"),
                "{absent}"
            );

            // Stopping the publisher: UNPUBLISHED for it, STOPPED for its player.
            browser
                .call("return await corecast.stop(arguments[0])", vec![publisher])
                .await;
            let deadline = Instant::now() + Duration::from_secs(10);
            let events = loop {
                let events = browser.call("return corecast.events", vec![]).await;
                let statuses: Vec<String> = events
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|e| e["status"].as_str().map(str::to_string))
                    .collect();
                if statuses.iter().any(|s| s == "STOPPED") || Instant::now() > deadline {
                    break statuses;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            for expected in [
                "ESTABLISHED",
                "PUBLISHING",
                "PLAYING",
                "UNPUBLISHED",
                "STOPPED",
            ] {
                assert!(
                    events.iter().any(|s| s == expected),
                    "no {expected} in {events:?}"
                );
            }
            browser.close().await;
        },
    );
}

// ---- ICE-TCP on the HTTP listener's port (`media.tcp_on_http`, issue 20) ----

/// An ICE binding request in an RFC 4571 frame, naming `username`.
fn framed_check(username: &[u8]) -> Vec<u8> {
    use corecast::wire::stun::{BINDING_REQUEST, StunWriter, short_term_key};
    let mut buf = vec![0u8; 256];
    let mut writer = StunWriter::new(&mut buf, BINDING_REQUEST, &[9; 12]).unwrap();
    writer.username(username).unwrap();
    writer.message_integrity(&short_term_key("wrong")).unwrap();
    let len = writer.fingerprint().unwrap();
    let mut framed = (len as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&buf[..len]);
    framed
}

/// Connects to `port`, sends `first` (nothing if empty) and says whether the relay closed the
/// connection within 5 s without a byte (a close with bytes unread is a reset).
fn closed_without_answer(port: u16, first: &[u8]) -> bool {
    let mut intruder = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    if !first.is_empty() {
        std::io::Write::write_all(&mut intruder, first).unwrap();
    }
    intruder
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    match std::io::Read::read(&mut intruder, &mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// `corecast_http_port_connections_total{kind}`, read by the page (over HTTPS when the relay
/// serves it).
async fn sniffed(browser: &Browser, kind: &str) -> u64 {
    let metrics = browser
        .call("return await (await fetch('/metrics')).text()", vec![])
        .await;
    let name = format!("corecast_http_port_connections_total{{kind=\"{kind}\"}} ");
    metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Everything through the one HTTP port: the page, WHIP/WHEP and ICE-TCP media. A publisher
/// and two players on two workers decode with every candidate and selected pair on the HTTP
/// listener's port; garbage, silence, a check for an unknown ufrag and a request that starts
/// like a frame are each closed and counted there while the stream plays, and HTTP is served.
/// With `tls`, signaling is HTTPS (a self-signed certificate) beside the media.
async fn ice_tcp_on_the_http_port(tls: bool) {
    let range = media_range(16);
    let mut env = vec![
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", range.as_str()),
        ("CORECAST_MEDIA_PROTOCOL", "tcp"),
        ("CORECAST_MEDIA_TCP_ON_HTTP", "true"),
    ];
    if tls {
        env.push(("CORECAST_HTTP_TLS", "self-signed"));
    }
    let relay = Relay::start(&env);
    let port: u16 = relay.http.rsplit(':').next().unwrap().parse().unwrap();
    let (browser, page) = match tls {
        true => (
            Chromium::launch(&["--ignore-certificate-errors"]).await,
            format!("https://127.0.0.1:{port}/"),
        ),
        false => (Browser::start().await, relay.url("/")),
    };
    browser.client.goto(&page).await.expect("loading the page");
    let publisher = publish(&browser, &relay, "cam", None).await;
    let players = vec![
        play(&browser, "cam", None).await,
        play(&browser, "cam", None).await,
    ];
    let decoded = wait_decoding(&browser, &relay, &players).await;
    let publisher_stats = browser.stats(&publisher).await;
    for s in decoded.iter().chain([&publisher_stats]) {
        assert_transport(s, "tcp");
        assert_eq!(s["remotePort"], port, "{s:#?}");
        let ports = s["remoteCandidatePorts"].as_array().unwrap();
        assert!(
            !ports.is_empty() && ports.iter().all(|p| *p == port),
            "{s:#?}"
        );
    }
    assert!(sniffed(&browser, "ice_tcp").await >= 3, "{}", relay.log());
    let signaling = if tls { "tls" } else { "http" };
    assert!(sniffed(&browser, signaling).await > 0);

    let frames_before: Vec<u64> = decoded
        .iter()
        .map(|s| num(s, "videoFramesDecoded"))
        .collect();
    let (unknown, timeout) = (
        sniffed(&browser, "closed_unknown").await,
        sniffed(&browser, "closed_timeout").await,
    );
    assert!(closed_without_answer(
        port,
        b"\xff\x00garbage, not a protocol"
    ));
    assert!(closed_without_answer(port, &framed_check(b"nosuchufrag:x")));
    assert!(closed_without_answer(
        port,
        b"\x00\x20GET / HTTP/1.1\r\n\r\n"
    ));
    assert!(closed_without_answer(port, b""), "silence is closed");
    assert!(sniffed(&browser, "closed_unknown").await >= unknown + 3);
    assert!(sniffed(&browser, "closed_timeout").await > timeout);
    // An ordinary request on the same port is still served.
    if !tls {
        let api = common::http("GET", &relay.url("/api/streams"), None, "");
        assert_eq!(api.status, 200, "{}", api.body);
        // A check naming a live session's ufrag without its password reaches that session's
        // worker, which finds the integrity wrong, never answers, and closes the connection.
        let answer = common::http(
            "POST",
            &relay.url("/whep/cam"),
            Some("application/sdp"),
            common::CHROME_PLAY_OFFER,
        );
        assert_eq!(answer.status, 201, "{}", answer.body);
        let candidates = common::answer_candidates(&answer.body);
        assert!(
            !candidates.is_empty() && candidates.iter().all(|(_, p)| *p == port),
            "{}",
            answer.body
        );
        let victim = common::sdp_attribute(&answer.body, "a=ice-ufrag:");
        let (invalid, unvalidated) = (
            relay.metric_all_workers("corecast_drop_stun_invalid_total"),
            relay.metric_all_workers("corecast_tcp_unvalidated_closed_total"),
        );
        let forged = framed_check(format!("{victim}:x").as_bytes());
        assert!(closed_without_answer(port, &forged));
        assert!(relay.metric_all_workers("corecast_drop_stun_invalid_total") > invalid);
        assert!(relay.metric_all_workers("corecast_tcp_unvalidated_closed_total") > unvalidated);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, id) in players.iter().enumerate() {
        let s = browser.stats(id).await;
        assert!(
            num(&s, "videoFramesDecoded") > frames_before[i] + 10,
            "player {i} stalled: {s:#?}"
        );
    }
    browser.close().await;
}

#[test]
fn chromium_publishes_and_plays_with_ice_tcp_on_the_http_port() {
    in_browser_network(
        "chromium_publishes_and_plays_with_ice_tcp_on_the_http_port",
        ice_tcp_on_the_http_port(false),
    );
}

#[test]
fn chromium_publishes_and_plays_with_ice_tcp_on_the_https_port() {
    in_browser_network(
        "chromium_publishes_and_plays_with_ice_tcp_on_the_https_port",
        ice_tcp_on_the_http_port(true),
    );
}
