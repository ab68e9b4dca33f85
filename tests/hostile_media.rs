//! Hostile input on the media side costs the attacker, not the relay: a DTLS-record flood is
//! held to a fixed queue per session and ends the session that floods, idle ICE-TCP
//! connections cannot lock a client out of its session, a worker count the data plane cannot
//! hold is refused at start, and sessions that come and go leave no memory behind. Each attack
//! runs beside a live stream played by corecast's own client, which must lose nothing.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::live::LiveStream;
use common::{Relay, http, media_range};
use corecast::client::{self, Answer, Role, Transport};

/// An offer as a client makes it, with ICE credentials of its own and any fingerprint (these
/// attackers never finish DTLS).
fn offer(role: Role, ufrag: &str) -> String {
    let fingerprint = vec!["AB"; 32].join(":");
    client::write_offer(
        role,
        ufrag,
        "attackerpassword123456",
        &fingerprint,
        1,
        2,
        None,
    )
}

/// Creates a session by WHIP or WHEP and returns its answer and resource path.
fn create_session(relay: &Relay, path: &str, role: Role, ufrag: &str) -> (Answer, String) {
    let response = http(
        "POST",
        &relay.url(path),
        Some("application/sdp"),
        &offer(role, ufrag),
    );
    assert_eq!(response.status, 201, "{path}: {}", response.body);
    let answer = client::parse_answer(&response.body).expect("the relay's answer parses");
    let location = response.header("location").expect("Location").to_string();
    (answer, location)
}

fn candidate(answer: &Answer, transport: Transport) -> SocketAddr {
    answer
        .candidates
        .iter()
        .find(|(t, _)| *t == transport)
        .map(|(_, addr)| *addr)
        .unwrap_or_else(|| panic!("the answer has a {transport:?} candidate"))
}

fn stream_listed(relay: &Relay, stream: &str) -> bool {
    http("GET", &relay.url("/api/streams"), None, "")
        .body
        .contains(&format!("\"stream\":\"{stream}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dtls_record_flood_is_held_to_a_fixed_queue_and_ends_the_flooding_session() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(8)),
        ("CORECAST_MEDIA_PROTOCOL", "udp"),
    ]);
    let live = LiveStream::start(&relay, "live").await;
    let (answer, _) = create_session(&relay, "/whip/flood", Role::Publish, "flooder");
    let target = candidate(&answer, Transport::Udp);
    let rss_before = relay.rss_kib();

    let flood = tokio::task::spawn_blocking(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // A valid ICE check first: the relay passes DTLS on only from a checked address.
        let mut check = [0u8; 256];
        let len = client::binding_request(&answer, "flooder", 7, &mut check);
        socket.send_to(&check[..len], target).unwrap();
        let mut response = [0u8; 256];
        socket
            .recv_from(&mut response)
            .expect("the relay answers the ICE check");
        // Then 1 KB application-data records, as fast as one thread sends, for 3 s at most.
        let mut record = [0x5au8; 1024];
        record[..3].copy_from_slice(&[0x17, 0xfe, 0xfd]);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut sent = 0u64;
        while Instant::now() < deadline && sent < 500_000 {
            if socket.send_to(&record, target).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let sent = flood.await.unwrap();
    eprintln!("flood: {sent} records sent");
    assert!(sent > 10_000, "the flood sent only {sent} records");

    let dropped = relay.metric_all_workers("corecast_drop_dtls_flood_total");
    assert!(
        dropped > 0,
        "records beyond the queue were dropped and counted\n{}",
        relay.log()
    );
    assert!(
        common::eventually(Duration::from_secs(5), || !stream_listed(&relay, "flood")).await,
        "the flooding session ended\n{}",
        relay.log()
    );
    assert_eq!(
        relay.metric_all_workers("corecast_dtls_flood_sessions_total"),
        1
    );
    let rss_after = relay.rss_kib();
    eprintln!("flood: RSS {rss_before} KiB before, {rss_after} KiB after, {dropped} dropped");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "the flood of {sent} records grew the relay from {rss_before} KiB to {rss_after} KiB"
    );
    let delivery = live.finish().await;
    assert_eq!(
        delivery.received, delivery.sent,
        "the live stream lost nothing"
    );
}

/// One RFC 4571 frame.
fn framed(packet: &[u8]) -> Vec<u8> {
    let mut frame = (packet.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(packet);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_tcp_connections_cannot_lock_a_client_out_of_its_ice_tcp_session() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(8)),
        ("CORECAST_MEDIA_PROTOCOL", "all"),
    ]);
    let live = LiveStream::start(&relay, "live").await;
    let (answer, _) = create_session(&relay, "/whep/live", Role::Play, "victim1");
    let target = candidate(&answer, Transport::Tcp);

    let idle_connections = || -> Vec<TcpStream> {
        (0..8)
            .map(|_| TcpStream::connect(target).expect("the attacker connects"))
            .collect()
    };
    let assert_closed_by_relay = |connections: Vec<TcpStream>| {
        for mut connection in connections {
            connection
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut byte = [0u8; 1];
            assert!(
                matches!(connection.read(&mut byte), Ok(0) | Err(_)),
                "an idle connection is closed by the relay"
            );
        }
    };

    // Connections that never send a check are closed once the validation deadline passes.
    let idle = idle_connections();
    let closed = common::eventually(Duration::from_secs(6), || {
        relay.metric_all_workers("corecast_tcp_unvalidated_closed_total") >= 8
    })
    .await;
    assert!(closed, "idle connections were closed\n{}", relay.log());
    tokio::task::block_in_place(|| assert_closed_by_relay(idle));

    // The attacker fills every place the session has for connections again, and the
    // session's own client connects 100 ms later and checks the pair.
    let idle = idle_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = TcpStream::connect(target).expect("the client connects");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut check = [0u8; 256];
    let len = client::binding_request(&answer, "victim1", 9, &mut check);
    client.write_all(&framed(&check[..len])).unwrap();
    let mut prefix = [0u8; 2];
    client
        .read_exact(&mut prefix)
        .expect("the relay answers the client's check on its connection");
    let mut response = vec![0u8; u16::from_be_bytes(prefix) as usize];
    client.read_exact(&mut response).unwrap();
    assert_eq!(
        u16::from_be_bytes([response[0], response[1]]),
        0x0101,
        "a binding success"
    );
    assert_eq!(relay.metric_all_workers("corecast_tcp_evicted_total"), 1);
    // The client nominated its connection: the others go.
    tokio::task::block_in_place(|| assert_closed_by_relay(idle));
    // The validated connection stays.
    client.write_all(&framed(&check[..len])).unwrap();
    client
        .read_exact(&mut prefix)
        .expect("the validated connection stays open");

    let delivery = live.finish().await;
    assert_eq!(
        delivery.received, delivery.sent,
        "the live stream lost nothing"
    );
}

#[test]
fn a_worker_count_the_data_plane_cannot_hold_is_refused_at_start_with_the_arithmetic() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .env("CORECAST_WORKERS_COUNT", "1024")
        .env("CORECAST_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .expect("running corecast");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("workers.count")
            && stderr.contains("1024")
            && stderr.contains("queues")
            && stderr.contains("MiB"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_sessions_joining_and_leaving_leave_the_memory_where_it_was() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(64)),
        ("CORECAST_MEDIA_PROTOCOL", "all"),
    ]);
    let live = LiveStream::start(&relay, "live").await;
    // One cycle: a player joins (offer, answer, a valid ICE check over UDP: the relay nominates
    // the pair and waits for DTLS),
    // then leaves. The first two thousand cycles warm up the allocator and the tables
    // (measured: the relay's RSS rises in 2 MiB segments over the first two thousand, then
    // stays flat).
    let cycle = |i: usize| {
        let ufrag = format!("churn{i}");
        let (answer, location) = create_session(&relay, "/whep/live", Role::Play, &ufrag);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut check = [0u8; 256];
        let len = client::binding_request(&answer, &ufrag, i as u64, &mut check);
        socket
            .send_to(&check[..len], candidate(&answer, Transport::Udp))
            .unwrap();
        let deleted = http("DELETE", &relay.url(&location), None, "");
        assert_eq!(deleted.status, 200, "{}", deleted.body);
    };
    let churn = |range: std::ops::Range<usize>| {
        for i in range {
            cycle(i);
        }
    };
    tokio::task::block_in_place(|| churn(0..2000));
    let rss_start = relay.rss_kib();
    tokio::task::block_in_place(|| churn(2000..4000));
    let rss_end = relay.rss_kib();
    eprintln!("churn: RSS {rss_start} KiB after the warm-up, {rss_end} KiB after 2 000 more");
    assert!(
        rss_end <= rss_start + 4 * 1024,
        "2 000 joins and leaves grew the relay from {rss_start} KiB to {rss_end} KiB"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || relay
            .metric("corecast_ports_in_use")
            == 2)
        .await
    );
    let delivery = live.finish().await;
    assert_eq!(
        delivery.received, delivery.sent,
        "the live stream lost nothing"
    );
}
