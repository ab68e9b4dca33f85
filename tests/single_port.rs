//! Single-port mode (`media.mux_port`) with corecast's own WebRTC client against a real relay
//! of two workers: hundreds of sessions share the one port, over UDP and ICE-TCP, and none
//! ever gets another's packets; garbage and spoofed ICE checks on the port are dropped and
//! counted while a live stream keeps playing. With `media.tcp_on_http` beside it, UDP stays on
//! the shared port and ICE-TCP moves to the HTTP listener's.

mod common;

use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Relay, answer_candidates, http};
use corecast::client::{self, ClientOptions, Role, Transport};
use corecast::wire::stun::{BINDING_REQUEST, StunWriter, short_term_key};
use webrtc_dtls::crypto::Certificate;

fn single_port_relay(port: u16) -> Relay {
    Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_WORKERS_PIN", "false"),
        ("CORECAST_MEDIA_MUX_PORT", &port.to_string()),
        ("CORECAST_MEDIA_PROTOCOL", "all"),
        ("CORECAST_HTTP_RATE_LIMIT", "0"),
    ])
}

/// Marks a video packet as stream `stream`'s.
const MARK: &[u8; 4] = b"STRM";

fn marked_packet(pt: u8, seq: u16, ssrc: u32, stream: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x80 | pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(MARK);
    p.extend_from_slice(&stream.to_be_bytes());
    p.resize(200, 0x5a);
    p
}

/// What one player received: packets marked with its own stream, and with any other.
#[derive(Default)]
struct Tally {
    own: AtomicU64,
    foreign: AtomicU64,
}

fn tallying(stream: u32, tally: Arc<Tally>) -> client::Handler {
    Box::new(move |incoming| {
        let Some(payload) = common::rtp_payload(incoming) else {
            return;
        };
        if payload.len() >= 8 && &payload[..4] == MARK {
            let marked = u32::from_be_bytes(payload[4..8].try_into().unwrap());
            let counter = if marked == stream {
                &tally.own
            } else {
                &tally.foreign
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    })
}

async fn connect(
    relay_http: &str,
    path: String,
    role: Role,
    transport: Transport,
    certificate: &Certificate,
    handler: client::Handler,
) -> client::Session {
    let mut options =
        ClientOptions::new(format!("{relay_http}{path}"), role, transport, certificate);
    options.timeout = Duration::from_secs(30);
    client::connect(&options, handler)
        .await
        .unwrap_or_else(|e| panic!("{role:?} on {path} over {transport:?} connects: {e}"))
}

/// 250 streams with one player each (500 sessions, every fifth player on ICE-TCP) through one
/// port: every session's server candidate is that port, the sessions sit on both workers,
/// packets cross workers (the kernel's choice of socket is not the session's owner), and every
/// player gets its own stream's packets and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_sessions_share_one_port_and_none_crosses() {
    const STREAMS: u32 = 250;
    let port = common::free_mux_port();
    let relay = single_port_relay(port);
    let certificate = Certificate::generate_self_signed(vec!["single-port".into()]).unwrap();
    let mut publishers = Vec::new();
    let mut players = Vec::new();
    let mut tallies = Vec::new();
    // In batches, so the handshakes do not all time out together on a busy machine.
    for batch in (0..STREAMS).collect::<Vec<_>>().chunks(25) {
        let mut joins = Vec::new();
        for &stream in batch {
            let (http, certificate) = (relay.http.clone(), certificate.clone());
            let tally = Arc::new(Tally::default());
            tallies.push(tally.clone());
            joins.push(tokio::spawn(async move {
                let publisher = connect(
                    &http,
                    format!("/whip/s{stream}"),
                    Role::Publish,
                    Transport::Udp,
                    &certificate,
                    Box::new(|_| {}),
                )
                .await;
                let transport = if stream % 5 == 0 {
                    Transport::Tcp
                } else {
                    Transport::Udp
                };
                let player = connect(
                    &http,
                    format!("/whep/s{stream}"),
                    Role::Play,
                    transport,
                    &certificate,
                    tallying(stream, tally),
                )
                .await;
                (publisher, player)
            }));
        }
        for join in joins {
            let (publisher, player) = join.await.unwrap();
            publishers.push(publisher);
            players.push(player);
        }
    }
    for session in publishers.iter().chain(&players) {
        assert_eq!(
            session.negotiated.server.map(|s| s.port()),
            Some(port),
            "every session's path is the one port"
        );
    }
    let on_each: Vec<u64> = (0..2)
        .map(|w| relay.metric(&format!("corecast_worker_sessions{{worker=\"{w}\"}}")))
        .collect();
    assert!(
        on_each.iter().all(|&n| n > 100),
        "sessions sit on both workers: {on_each:?}"
    );

    // Each publisher sends marked packets until every player has some of its own.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seq = 0u16;
    while tallies.iter().any(|t| t.own.load(Ordering::Relaxed) < 3) {
        assert!(
            Instant::now() < deadline,
            "players still waiting for their stream: {}",
            tallies
                .iter()
                .filter(|t| t.own.load(Ordering::Relaxed) < 3)
                .count()
        );
        for (stream, publisher) in publishers.iter_mut().enumerate() {
            let pt = publisher.negotiated.video_payload_type.unwrap();
            let packet = marked_packet(pt, seq, publisher.video_ssrc, stream as u32);
            publisher.send_rtp(&packet).await.unwrap();
        }
        seq = seq.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let foreign: u64 = tallies
        .iter()
        .map(|t| t.foreign.load(Ordering::Relaxed))
        .sum();
    assert_eq!(foreign, 0, "a player received another stream's packets");
    let handoffs = relay.metric_all_workers("corecast_mux_handoffs_total");
    let conn_handoffs = relay.metric_all_workers("corecast_mux_conn_handoffs_total");
    assert!(
        handoffs > 0,
        "some packets reached the wrong worker's socket and were handed over"
    );
    assert!(
        conn_handoffs > 0,
        "some ICE-TCP connections were accepted by the wrong worker and moved"
    );
    assert_eq!(relay.metric_all_workers("corecast_drop_ring_full_total"), 0);
    drop((publishers, players));
}

/// A binding request for `ufrag`, signed with `password`.
fn binding_request(ufrag: &str, password: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let mut writer = StunWriter::new(&mut buf, BINDING_REQUEST, &rand_id()).unwrap();
    writer.username(format!("{ufrag}:peer").as_bytes()).unwrap();
    writer.message_integrity(&short_term_key(password)).unwrap();
    let len = writer.fingerprint().unwrap();
    buf.truncate(len);
    buf
}

fn rand_id() -> [u8; 12] {
    let nanos = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&nanos.to_be_bytes());
    id
}

/// Garbage, checks naming no session, and checks naming a real session with the wrong
/// password reach the shared port while a stream plays: each is dropped and counted, none is
/// answered, and the player keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_and_spoofed_checks_are_counted_and_the_stream_keeps_playing() {
    let port = common::free_mux_port();
    let relay = single_port_relay(port);
    let certificate = Certificate::generate_self_signed(vec!["single-port".into()]).unwrap();
    let mut publisher = connect(
        &relay.http,
        "/whip/live".into(),
        Role::Publish,
        Transport::Udp,
        &certificate,
        Box::new(|_| {}),
    )
    .await;
    let tally = Arc::new(Tally::default());
    let _player = connect(
        &relay.http,
        "/whep/live".into(),
        Role::Play,
        Transport::Udp,
        &certificate,
        tallying(0, tally.clone()),
    )
    .await;
    // A session nobody connects to: its ufrag is real, its password unknown to the attacker.
    let answer = http(
        "POST",
        &relay.url("/whep/live"),
        Some("application/sdp"),
        common::CHROME_PLAY_OFFER,
    );
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert!(
        answer_candidates(&answer.body)
            .iter()
            .all(|(_, p)| *p == port)
    );
    let victim = common::sdp_attribute(&answer.body, "a=ice-ufrag:");

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pt = publisher.negotiated.video_payload_type.unwrap();
    let before = tally.own.load(Ordering::Relaxed);
    for round in 0..50u16 {
        let target = ("127.0.0.1", port);
        attacker.send_to(&[0xff; 100], target).unwrap();
        attacker
            .send_to(&[0x80, 96, 0, 1, 0, 0, 0, 0], target)
            .unwrap();
        attacker
            .send_to(
                &binding_request("nosuchufrag", "whatever-password-12"),
                target,
            )
            .unwrap();
        attacker
            .send_to(&binding_request(&victim, "not-the-real-password"), target)
            .unwrap();
        // Fresh source ports too, so both workers' sockets see the flood.
        common::send_udp(port, &binding_request(&format!("x{round}"), "p"));
        let packet = marked_packet(pt, round, publisher.video_ssrc, 0);
        publisher.send_rtp(&packet).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reply = [0u8; 512];
    assert!(
        attacker.recv_from(&mut reply).is_err(),
        "nothing the attacker sent is answered"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || {
            tally.own.load(Ordering::Relaxed) >= before + 40
        })
        .await,
        "the stream kept playing: {} packets",
        tally.own.load(Ordering::Relaxed) - before
    );
    assert!(relay.metric_all_workers("corecast_drop_unknown_ufrag_total") >= 100);
    assert!(relay.metric_all_workers("corecast_drop_unknown_path_total") >= 100);
    assert!(relay.metric_all_workers("corecast_drop_stun_invalid_total") >= 50);
    assert_eq!(tally.foreign.load(Ordering::Relaxed), 0);
}

/// IPv6 over `::1`: a relay (two workers, single-port mode) binding and announcing `::1`
/// serves a publisher and players over UDP and ICE-TCP, each path on `[::1]` and the one
/// port, and the players get their stream. (Chromium gathers no IPv6 loopback candidate;
/// `tests/browser.rs` proves IPv6 with it on a namespace-private address.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_and_play_over_ipv6_loopback() {
    let port = common::free_mux_port_on("::1");
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_WORKERS_PIN", "false"),
        ("CORECAST_MEDIA_BIND_IP", "::1"),
        ("CORECAST_MEDIA_ANNOUNCED_IP", "::1"),
        ("CORECAST_MEDIA_MUX_PORT", &port.to_string()),
    ]);
    let certificate = Certificate::generate_self_signed(vec!["ipv6".into()]).unwrap();
    let mut publisher = connect(
        &relay.http,
        "/whip/six".into(),
        Role::Publish,
        Transport::Udp,
        &certificate,
        Box::new(|_| {}),
    )
    .await;
    let mut tallies = Vec::new();
    let mut players = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp, Transport::Udp] {
        let tally = Arc::new(Tally::default());
        tallies.push(tally.clone());
        players.push(
            connect(
                &relay.http,
                "/whep/six".into(),
                Role::Play,
                transport,
                &certificate,
                tallying(6, tally),
            )
            .await,
        );
    }
    for session in std::iter::once(&publisher).chain(&players) {
        let server = session.negotiated.server.unwrap();
        assert_eq!(server, SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
    }
    let pt = publisher.negotiated.video_payload_type.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 0u16;
    while tallies.iter().any(|t| t.own.load(Ordering::Relaxed) < 20) {
        assert!(Instant::now() < deadline, "players waiting over IPv6");
        let packet = marked_packet(pt, seq, publisher.video_ssrc, 6);
        publisher.send_rtp(&packet).await.unwrap();
        seq = seq.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let streams = http("GET", &relay.url("/api/streams"), None, "").body;
    assert!(streams.contains("[::1]:"), "{streams}");
}

/// Both one-port features at once, with `media.protocol = "all"`: answers carry UDP on the
/// shared media port and ICE-TCP on the HTTP listener's port (`media.tcp_on_http`), and a
/// publisher on UDP, a player on UDP and a player on ICE-TCP through the HTTP port all reach
/// their sessions on two workers; the TCP player's connection was sniffed by the HTTP listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn udp_on_the_shared_port_and_ice_tcp_on_the_http_port_together() {
    let port = common::free_mux_port();
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_WORKERS_PIN", "false"),
        ("CORECAST_MEDIA_MUX_PORT", &port.to_string()),
        ("CORECAST_MEDIA_PROTOCOL", "all"),
        ("CORECAST_MEDIA_TCP_ON_HTTP", "true"),
    ]);
    let certificate = Certificate::generate_self_signed(vec!["both".into()]).unwrap();
    let mut publisher = connect(
        &relay.http,
        "/whip/both".into(),
        Role::Publish,
        Transport::Udp,
        &certificate,
        Box::new(|_| {}),
    )
    .await;
    let http_port: u16 = relay.http.rsplit(':').next().unwrap().parse().unwrap();
    let answer = http(
        "POST",
        &relay.url("/whep/both"),
        Some("application/sdp"),
        common::CHROME_PLAY_OFFER,
    );
    assert_eq!(answer.status, 201, "{}", answer.body);
    // In each bundled section (audio, video): the same two candidates.
    assert_eq!(
        answer_candidates(&answer.body),
        [("udp", port), ("tcp", http_port)]
            .repeat(2)
            .into_iter()
            .map(|(t, p)| (t.to_string(), p))
            .collect::<Vec<_>>(),
        "{}",
        answer.body
    );
    let gone = http(
        "DELETE",
        &relay.url(answer.header("location").unwrap()),
        None,
        "",
    );
    assert_eq!(gone.status, 200, "{}", gone.body);

    let mut tallies = Vec::new();
    let mut players = Vec::new();
    for (transport, server_port) in [(Transport::Udp, port), (Transport::Tcp, http_port)] {
        let tally = Arc::new(Tally::default());
        tallies.push(tally.clone());
        let player = connect(
            &relay.http,
            "/whep/both".into(),
            Role::Play,
            transport,
            &certificate,
            tallying(2, tally),
        )
        .await;
        assert_eq!(player.negotiated.server.unwrap().port(), server_port);
        players.push(player);
    }
    assert_eq!(publisher.negotiated.server.unwrap().port(), port);
    let pt = publisher.negotiated.video_payload_type.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 0u16;
    while tallies.iter().any(|t| t.own.load(Ordering::Relaxed) < 20) {
        assert!(
            Instant::now() < deadline,
            "players waiting\n{}",
            relay.log()
        );
        let packet = marked_packet(pt, seq, publisher.video_ssrc, 2);
        publisher.send_rtp(&packet).await.unwrap();
        seq = seq.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        relay.metric("corecast_http_port_connections_total{kind=\"ice_tcp\"}"),
        1
    );
}

/// A second relay started on a shared port another one holds stops at start with a message
/// that names the port, instead of silently splitting the clients with the first (every
/// worker's socket there has `SO_REUSEPORT`). The first keeps serving.
#[test]
fn a_second_relay_on_the_same_shared_port_refuses_to_start() {
    let port = common::free_mux_port();
    let first = single_port_relay(port);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .env("CORECAST_HTTP_LISTEN", "127.0.0.1:0")
        .env("CORECAST_MEDIA_MUX_PORT", port.to_string())
        .env("CORECAST_MEDIA_PROTOCOL", "all")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the second corecast");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second relay started on a port the first holds");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("media.mux_port {port}")) && stderr.contains("in use"),
        "{stderr}"
    );
    let streams = http("GET", &first.url("/api/streams"), None, "");
    assert_eq!(streams.status, 200, "the first relay serves on");
}

/// A session's ICE-TCP places on the shared port cannot be held against its client: eight
/// connections naming its ufrag with a wrong password (anyone who saw a check knows the ufrag)
/// take them, and the client's own connection still gets in and is answered, the oldest
/// unvalidated one making room, as on a session's own listener.
#[test]
fn connections_holding_a_sessions_places_make_room_for_its_client() {
    use std::io::{Read, Write};
    let port = common::free_mux_port();
    let relay = single_port_relay(port);
    let publisher = http(
        "POST",
        &relay.url("/whip/crowded"),
        Some("application/sdp"),
        common::CHROME_PUBLISH_OFFER,
    );
    assert_eq!(publisher.status, 201, "{}", publisher.body);
    let ufrag = common::sdp_attribute(&publisher.body, "a=ice-ufrag:");
    let pwd = common::sdp_attribute(&publisher.body, "a=ice-pwd:");
    let client_ufrag = common::sdp_attribute(common::CHROME_PUBLISH_OFFER, "a=ice-ufrag:");
    let framed = |check: Vec<u8>| {
        let mut frame = (check.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&check);
        frame
    };
    let squatters: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let forged = common::ice_check(&ufrag, &client_ufrag, "not-the-password", true);
            s.write_all(&framed(forged)).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let check = common::ice_check(&ufrag, &client_ufrag, &pwd, true);
    client.write_all(&framed(check)).unwrap();
    let mut len = [0u8; 2];
    client
        .read_exact(&mut len)
        .unwrap_or_else(|e| panic!("the client's connection was refused: {e}\n{}", relay.log()));
    let mut response = vec![0u8; u16::from_be_bytes(len) as usize];
    client.read_exact(&mut response).unwrap();
    let response = corecast::wire::stun::StunMessage::parse(&response).unwrap();
    assert!(response.is_binding_success());
    assert!(relay.metric_all_workers("corecast_tcp_evicted_total") >= 1);
    drop(squatters);
}
