//! Zero heap allocations per forwarded packet: a relay runs in this process under a counting
//! global allocator, a publisher feeds players on both workers (UDP and ICE-TCP, so the
//! cross-worker path and the TCP send queues are in play), and once traffic is steady the
//! workers forward thousands of packets without a single allocation. The same holds with loss
//! repair and feedback flowing: players that lose 3 % on arrival NACK and get retransmissions
//! from the relay's window, the relay NACKs a publisher that loses 3 % on departure and
//! restores its RTX, and repeats an operator's cap as REMB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corecast::client::{self, ClientOptions, Incoming, Role, Transport};
use webrtc_dtls::crypto::Certificate;

/// Counts allocations made on relay worker threads; everything else goes straight through.
struct CountingAllocator;

static WORKER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The counter is one for the process: the tests take turns, so that one's set-up never
/// counts in another's steady state.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// SAFETY: every call is forwarded unchanged to the system allocator; the counting is a relaxed
// atomic increment and a thread-local read, neither of which allocates.
#[allow(unsafe_code)] // a global allocator cannot be written without it
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if corecast::worker::is_worker_thread() {
            WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if corecast::worker::is_worker_thread() {
            WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for dealloc and alloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn start_relay(extra: &[(&str, &str)]) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = 47000 + (std::process::id() % 40) as u16 * 50;
    let config = corecast::config::Config::load(
        None,
        [
            (
                "CORECAST_HTTP_LISTEN".to_string(),
                format!("127.0.0.1:{port}"),
            ),
            (
                "CORECAST_MEDIA_PORTS".to_string(),
                format!("{base}-{}", base + 49),
            ),
            ("CORECAST_WORKERS_COUNT".to_string(), "2".to_string()),
            // The suite's second pass runs the workers on epoll (tests/run).
            (
                "CORECAST_WORKERS_BACKEND".to_string(),
                std::env::var("TEST_BACKEND_OF_CORECAST").unwrap_or_else(|_| "auto".to_string()),
            ),
            ("CORECAST_MEDIA_PROTOCOL".to_string(), "all".to_string()),
        ]
        .into_iter()
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
    )
    .unwrap();
    corecast::server::spawn(config).expect("relay starts");
    format!("http://127.0.0.1:{port}")
}

fn options(
    url: String,
    role: Role,
    transport: Transport,
    certificate: &Certificate,
) -> ClientOptions {
    ClientOptions::new(url, role, transport, certificate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_in_steady_state_allocates_nothing_on_the_workers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let relay = start_relay(&[]);
    let (allocations, repair) = forward_in_steady_state(&relay, None).await;
    assert_eq!(
        allocations, 0,
        "the workers allocated {allocations} times while forwarding 20000 packets"
    );
    assert_eq!(repair[2], 0, "no cap, no REMB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_repair_and_feedback_allocate_nothing_on_the_workers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let relay = start_relay(&[("CORECAST_MEDIA_MAX_PUBLISH_KBPS", "100000")]);
    let (allocations, [nacks_sent, retransmissions_sent, remb_sent]) =
        forward_in_steady_state(&relay, Some(3.0)).await;
    assert!(
        nacks_sent > 0 && retransmissions_sent > 0 && remb_sent > 0,
        "repair and feedback flowed: {nacks_sent} NACKs to the publisher, \
         {retransmissions_sent} retransmissions to players, {remb_sent} REMBs"
    );
    assert_eq!(
        allocations, 0,
        "the workers allocated {allocations} times while forwarding 20000 packets and \
         repairing {retransmissions_sent} of them"
    );
}

/// Single-port mode: the same steady forwarding, every session on one shared port, so each
/// packet is also looked up by 5-tuple and may cross to its session's worker (handed over
/// through the pooled cross-worker packets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_port_forwarding_allocates_nothing_on_the_workers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let port = loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let relay = start_relay(&[("CORECAST_MEDIA_MUX_PORT", &port.to_string())]);
    let (allocations, _) = forward_in_steady_state(&relay, None).await;
    let handoffs = worker_counter(&relay, "mux_handoffs");
    assert_eq!(
        allocations, 0,
        "the workers allocated {allocations} times while forwarding 20000 packets through one \
         port ({handoffs} packets handed to their session's worker)"
    );
}

/// The sum over workers of `corecast_<name>_total`.
fn worker_counter(relay: &str, name: &str) -> u64 {
    let prefix = format!("corecast_{name}_total{{");
    http_get(&format!("{relay}/metrics"))
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A publisher and four players (UDP and ICE-TCP, on both workers) in steady state; with
/// `loss`, that share of packets is lost on arrival at each player and on departure from the
/// publisher, and repaired. Returns the workers' allocations while 5 000 packets are
/// forwarded, and the NACKs the relay sent, the retransmissions it sent and the REMBs.
async fn forward_in_steady_state(relay: &str, loss: Option<f64>) -> (u64, [u64; 3]) {
    let certificate = Certificate::generate_self_signed(vec!["test".into()]).unwrap();
    let link_loss = |seed: u64| loss.map(|percent| client::LinkLoss { percent, seed });
    let mut publisher_options = options(
        format!("{relay}/whip/steady"),
        Role::Publish,
        Transport::Udp,
        &certificate,
    );
    publisher_options.departure_loss = link_loss(7);
    let mut publisher = client::connect(&publisher_options, Box::new(|_| {}))
        .await
        .unwrap();
    // Packets each player received.
    let mut received: Vec<Arc<AtomicU64>> = Vec::new();
    let mut players = Vec::new();
    for transport in [
        Transport::Udp,
        Transport::Udp,
        Transport::Tcp,
        Transport::Udp,
    ] {
        let counter = Arc::new(AtomicU64::new(0));
        received.push(counter.clone());
        let mut player_options = options(
            format!("{relay}/whep/steady"),
            Role::Play,
            transport,
            &certificate,
        );
        player_options.arrival_loss = link_loss(players.len() as u64 + 100);
        let player = client::connect(
            &player_options,
            Box::new(move |incoming| {
                if let Incoming::Rtp(_) = incoming {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }),
        )
        .await
        .unwrap();
        players.push(player);
    }
    let pt = publisher.negotiated.video_payload_type.unwrap();
    let ssrc = publisher.video_ssrc;
    let mut seq = 0u16;
    let mut send = async |count: u32, seq: &mut u16| {
        for i in 0..count {
            // Frames of five packets, the marker bit on the last: UDP players get GSO bursts.
            let marker = if i % 5 == 4 { 0x80 } else { 0 };
            let mut p = vec![0x80, pt | marker];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(*seq as u32 * 3000).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.resize(1200, 1);
            publisher.send_rtp(&p).await.unwrap();
            *seq = seq.wrapping_add(1);
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let total = || -> u64 { received.iter().map(|r| r.load(Ordering::Relaxed)).sum() };

    // A player's connect returns when DTLS ends on its side; the relay's worker gets its SRTP
    // keys a moment later. Send frames until every player has media, then count from there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.iter().any(|r| r.load(Ordering::Relaxed) == 0) {
        assert!(
            Instant::now() < deadline,
            "media did not reach every player: {received:?}"
        );
        send(5, &mut seq).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let primed = total();

    // Sends `count` packets and waits until the workers have forwarded every packet sent
    // since priming to the four players (the work whose allocations count) and the players
    // hold them. A loss is found from the packet after it, so a lost last packet would never be
    // repaired: with loss, a further frame goes out every 100 ms while waiting, and all but
    // that frame's own last packet are expected (the next frame would reveal that one). The
    // players are real clients in this process: on a loaded machine the kernel may drop some
    // of their datagrams, and repair gives up on a packet whose retransmissions were lost too.
    // So after 10 s the workers must have forwarded all (with loss, all but a two-hundredth,
    // for the publisher's repair), and the players must hold nine in ten; the loss tests
    // judge repair, this one counts allocations.
    let forwarded_at_priming = worker_counter(relay, "forwarded_packets");
    let mut sent: u64 = 0;
    let mut deliver = async |count: u32, seq: &mut u16, sent: &mut u64| {
        send(count, seq).await;
        *sent += u64::from(count);
        let mut expected = *sent;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_frame = Instant::now();
        loop {
            let forwarded = worker_counter(relay, "forwarded_packets") - forwarded_at_priming;
            let got = total() - primed;
            if forwarded >= 4 * expected && got >= 4 * expected {
                break;
            }
            if Instant::now() >= deadline {
                let tolerated = if loss.is_some() {
                    4 * expected / 200
                } else {
                    0
                };
                assert!(
                    forwarded + tolerated >= 4 * expected,
                    "the workers forwarded {forwarded} of {} packets",
                    4 * expected
                );
                assert!(
                    got >= 4 * expected * 9 / 10,
                    "players got {got} of {} packets (each, since the start: {received:?}; \
                     the third plays over ICE-TCP)",
                    4 * expected
                );
                break;
            }
            if loss.is_some() && last_frame.elapsed() >= Duration::from_millis(100) {
                send(5, seq).await;
                *sent += 5;
                expected = *sent - 1;
                last_frame = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    // Warm up: pools, queues and tables reach their working size.
    deliver(2000, &mut seq, &mut sent).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = WORKER_ALLOCATIONS.load(Ordering::Relaxed);
    deliver(5000, &mut seq, &mut sent).await;
    let allocations = WORKER_ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert!(
        WORKER_ALLOCATIONS.load(Ordering::Relaxed) > 0,
        "the counter sees worker threads at all"
    );
    if corecast::io::udp_gso_supported() {
        assert!(
            worker_counter(relay, "gso_segments") > 0,
            "the run went through GSO bursts"
        );
    }
    let repair =
        ["nacks_sent", "retransmissions_sent", "remb_sent"].map(|name| worker_counter(relay, name));
    drop(players);
    (allocations, repair)
}

fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/"), |(h, _)| (h, &url[7 + h.len()..]));
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
