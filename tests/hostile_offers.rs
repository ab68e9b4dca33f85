//! Hostile SDP offers against a real relay process: an offer built to make the parser do
//! quadratic work, and ICE credentials no client would send, are refused at once with a 400
//! that names the limit, cost the relay no memory it keeps and no port, and a live stream
//! published and played by corecast's own client loses nothing meanwhile.
//!
//! The offers are the `sdp_offer` fuzz target's seeds (fuzz/seeds/sdp_offer), which the
//! sdp module's unit tests build and check.

mod common;

use std::time::{Duration, Instant};

use common::live::LiveStream;
use common::{CHROME_PLAY_OFFER, CHROME_PUBLISH_OFFER, Relay, Response, http, media_range};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Issue 17's offer: the video m-line lists payload type 96 twenty thousand times, with as
/// many `a=rtcp-fb:96` lines (416 KiB). The parser that kept duplicates copied every feedback
/// line into every duplicate: 2.7 GB and an abort.
const AMPLIFYING_OFFER: &str =
    include_str!("../fuzz/seeds/sdp_offer/amplifying_20000_duplicate_payload_types.sdp");
/// The same shape at exactly the largest size the parser accepts (64 KiB), about 3 000
/// duplicates: it is refused at the first.
const DUPLICATES_AT_THE_SIZE_CAP: &str =
    include_str!("../fuzz/seeds/sdp_offer/duplicate_payload_types_at_the_size_cap.sdp");

/// The one bound on time the issue sets: a refusal is an answer within 100 ms, not seconds of
/// parsing. Loose on purpose, for a debug build on a shared machine.
const QUICKLY: Duration = Duration::from_millis(100);
/// What the relay's resident memory may grow by while refusing the offers over HTTP: the
/// parser refuses them before allocating, and the bodies are freed (the old parser grew the
/// relay by gigabytes). Measured: 0, or one 2 MiB allocator segment when the 425 kB body
/// arrives while the allocator's current segments are full.
const RSS_GROWTH_FOR_WHIP_KIB: u64 = 4 * 1024;
/// "A few MB" across the whole attack, the WebSocket's part included: opening a WebSocket and
/// its first large message grow the allocator's working set by about 4 MiB (its buffers, the
/// message and its JSON decoding), once; the offers themselves add nothing.
const RSS_GROWTH_IN_ALL_KIB: u64 = 8 * 1024;

fn relay() -> Relay {
    Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &media_range(4)),
        ("CORECAST_MEDIA_PROTOCOL", "udp"),
    ])
}

/// POSTs an offer (blocking I/O, off the runtime's threads) and times the exchange.
async fn post_offer(relay: &Relay, path: &str, offer: String) -> (Response, Duration) {
    let url = relay.url(path);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let response = http("POST", &url, Some("application/sdp"), &offer);
        (response, started.elapsed())
    })
    .await
    .unwrap()
}

/// Lets the live stream send `packets` more (100 a second), so that it runs on each side of an
/// attack and not only through its few milliseconds.
async fn stream_on(live: &LiveStream, packets: u64) {
    let target = live.sent() + packets;
    let streaming = common::eventually(Duration::from_secs(5), || live.sent() >= target).await;
    assert!(streaming, "the live stream's sender stalled");
}

async fn assert_no_loss(live: LiveStream, relay: &Relay) {
    let delivery = live.finish().await;
    assert!(delivery.sent > 0, "the live stream sent nothing");
    assert_eq!(
        delivery.received,
        delivery.sent,
        "the live stream lost packets during the attack\n{}",
        relay.log()
    );
}

/// The WebSocket's publish command.
fn publish(id: u32, offer: &str) -> Value {
    json!({"type": "publish", "id": id, "stream": "attack", "sdp": offer})
}

/// The smallest WebSocket client (RFC 6455) these tests need: the opening handshake, one
/// masked frame per message out, the server's unmasked frames in.
struct WebSocket {
    stream: TcpStream,
}

/// What the relay answered a WebSocket message with.
#[derive(Debug)]
enum WsReply {
    Json(Value),
    /// A close frame: its code and reason.
    Close(u16, String),
    /// The connection ended without a frame: a close lost to the reset that follows when a
    /// server closes with the client's data unread.
    Reset,
}

impl WebSocket {
    async fn connect(relay: &Relay) -> WebSocket {
        let host = relay.http.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(host).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Byte by byte up to the blank line, so that no frame is taken for part of the head.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("the upgrade response"));
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut ws = WebSocket { stream };
        match ws.recv().await {
            WsReply::Json(hello) => assert_eq!(hello["status"], "ESTABLISHED"),
            other => panic!("the relay's greeting: {other:?}"),
        }
        ws
    }

    /// Sends `value` as one text frame and times the relay's answer to it.
    async fn request(&mut self, value: &Value) -> (WsReply, Duration) {
        let payload = value.to_string().into_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let started = Instant::now();
        // A relay that refuses a message by its header stops reading: the rest of the write
        // then fails, and the answer is what arrived before.
        let _ = self.stream.write_all(&frame).await;
        let reply = self.recv().await;
        (reply, started.elapsed())
    }

    async fn recv(&mut self) -> WsReply {
        let read = async {
            let first = self.stream.read_u8().await?;
            let len = match self.stream.read_u8().await? & 0x7f {
                126 => self.stream.read_u16().await? as usize,
                127 => self.stream.read_u64().await? as usize,
                n => n as usize,
            };
            let mut payload = vec![0; len];
            self.stream.read_exact(&mut payload).await?;
            std::io::Result::Ok((first & 0x0f, payload))
        };
        let frame = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an answer within 10 s");
        match frame {
            Ok((1, payload)) => WsReply::Json(serde_json::from_slice(&payload).unwrap()),
            Ok((8, payload)) if payload.len() >= 2 => WsReply::Close(
                u16::from_be_bytes([payload[0], payload[1]]),
                String::from_utf8_lossy(&payload[2..]).to_string(),
            ),
            Ok((opcode, payload)) => panic!("unexpected frame {opcode}: {payload:?}"),
            Err(_) => WsReply::Reset,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_twenty_thousand_duplicate_payload_types_is_refused_quickly() {
    let relay = relay();
    let live = LiveStream::start(&relay, "live").await;
    stream_on(&live, 20).await;
    let too_large = format!(
        "the offer is {} kB; at most 64 kB",
        AMPLIFYING_OFFER.len().div_ceil(1024)
    );
    // One refusal of each first: the HTTP path's first use (buffers, a runtime thread's
    // allocator arena) is the relay's own start-up, not the attack's cost; the threads in a
    // relay (workers, control, handshake pool) make that first step vary by a few MiB.
    for offer in [AMPLIFYING_OFFER, DUPLICATES_AT_THE_SIZE_CAP] {
        let (response, _) = post_offer(&relay, "/whip/attack", offer.to_string()).await;
        assert_eq!(response.status, 400, "{}", response.body);
    }
    let rss_before = relay.rss_kib();
    let first_duplicate =
        "the video section (m-line 2) lists payload type 96 twice, as formats 1 and 2";

    for _ in 0..3 {
        for (offer, reason) in [
            (AMPLIFYING_OFFER, too_large.as_str()),
            (DUPLICATES_AT_THE_SIZE_CAP, first_duplicate),
        ] {
            let (response, took) = post_offer(&relay, "/whip/attack", offer.to_string()).await;
            assert_eq!(response.status, 400, "{}", response.body);
            assert!(response.body.contains(reason), "{}", response.body);
            assert!(
                took < QUICKLY,
                "WHIP refused a {} B offer in {took:?}",
                offer.len()
            );
        }
    }

    let rss_after_whip = relay.rss_kib();
    assert!(
        rss_after_whip <= rss_before + RSS_GROWTH_FOR_WHIP_KIB,
        "refusing the offers over WHIP grew the relay from {rss_before} KiB to {rss_after_whip} KiB"
    );

    let mut ws = WebSocket::connect(&relay).await;
    for id in 1..=3 {
        let (reply, took) = ws.request(&publish(id, DUPLICATES_AT_THE_SIZE_CAP)).await;
        let WsReply::Json(reply) = reply else {
            panic!("an error message: {reply:?}");
        };
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["status"], 400, "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(first_duplicate),
            "{reply}"
        );
        assert!(
            took < QUICKLY,
            "the WebSocket refused the offer in {took:?}"
        );
    }
    // The amplifying offer is over the WebSocket's message cap: refused by its frame header,
    // before it is buffered, let alone parsed; the connection closes with 1009 (too big).
    // (A reset instead of the close frame is the race of a server closing on unread data; the
    // counter below says which refusal it was.)
    let (reply, took) = ws.request(&publish(4, AMPLIFYING_OFFER)).await;
    match reply {
        WsReply::Json(reply) => {
            assert_eq!(reply["status"], 400, "{reply}");
            assert!(reply["message"].as_str().unwrap().contains(&too_large));
        }
        WsReply::Close(code, reason) => assert_eq!(code, 1009, "{reason}"),
        WsReply::Reset => {}
    }
    assert!(
        took < QUICKLY,
        "the WebSocket refused the offer in {took:?}"
    );
    assert_eq!(relay.metric("corecast_ws_messages_too_large_total"), 1);

    // Two plus six refused over WHIP, three over the WebSocket; the oversized message is
    // counted above.
    assert_eq!(relay.metric("corecast_offers_rejected_total"), 11);
    let rss_after = relay.rss_kib();
    assert!(
        rss_after <= rss_before + RSS_GROWTH_IN_ALL_KIB,
        "the attack grew the relay from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(
        relay.metric("corecast_ports_in_use"),
        2,
        "only the live stream's"
    );
    stream_on(&live, 20).await;
    assert_no_loss(live, &relay).await;
}

/// `offer` with every `a=ice-ufrag` replaced by `ufrag`.
fn with_ufrag(offer: &str, ufrag: &str) -> String {
    offer
        .lines()
        .map(|line| match line.strip_prefix("a=ice-ufrag:") {
            Some(_) => format!("a=ice-ufrag:{ufrag}\r\n"),
            None => format!("{}\r\n", line.trim_end()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_ufrag_over_256_characters_is_refused() {
    let relay = relay();
    let live = LiveStream::start(&relay, "live").await;
    // The live stream's publisher and player hold a port each.
    assert_eq!(relay.metric("corecast_ports_in_use"), 2);
    let ufrag = "u".repeat(10_000);
    for (path, offer) in [
        ("/whip/other", CHROME_PUBLISH_OFFER),
        ("/whep/live", CHROME_PLAY_OFFER),
    ] {
        let (response, _) = post_offer(&relay, path, with_ufrag(offer, &ufrag)).await;
        assert_eq!(response.status, 400, "{path}: {}", response.body);
        assert!(
            response
                .body
                .contains("a=ice-ufrag is 10000 characters long; RFC 8839 allows 4 to 256"),
            "{path}: {}",
            response.body
        );
        assert_eq!(
            relay.metric("corecast_ports_in_use"),
            2,
            "{path}: the refused offer holds no port"
        );
    }
    // At the limit it is a client's ufrag like any other.
    let (response, _) = post_offer(
        &relay,
        "/whip/other",
        with_ufrag(CHROME_PUBLISH_OFFER, &"u".repeat(256)),
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(relay.metric("corecast_ports_in_use"), 3);
    stream_on(&live, 20).await;
    assert_no_loss(live, &relay).await;
}
