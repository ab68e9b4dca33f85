//! A live stream that a test keeps running through an attack: corecast's own client publishes
//! video packets at a steady rate over UDP, and a player counts what arrives. At the end the
//! test asks for the count; every packet sent after the warm-up must have arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corecast::client::{self, ClientOptions, Role, Transport};
use webrtc_dtls::crypto::Certificate;

use super::Relay;

/// The payload prefix of the counted packets; warm-up packets carry another.
const COUNTED: &[u8] = b"LIVE";
const WARM_UP: &[u8] = b"WARM";
/// One packet every `INTERVAL`: 100 packets/s, a light but steady stream.
const INTERVAL: Duration = Duration::from_millis(10);

pub struct LiveStream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    sender: tokio::task::JoinHandle<client::Session>,
    player: client::Session,
}

/// What a live stream delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub sent: u64,
    pub received: u64,
}

impl LiveStream {
    /// Publishes `stream` and plays it once, waits until media flows both ways, and keeps
    /// sending until [`LiveStream::finish`].
    pub async fn start(relay: &Relay, stream: &str) -> LiveStream {
        let certificate = Certificate::generate_self_signed(vec!["live".into()]).unwrap();
        let options = |path: String, role| {
            ClientOptions::new(relay.url(&path), role, Transport::Udp, &certificate)
        };
        let mut publisher = client::connect(
            &options(format!("/whip/{stream}"), Role::Publish),
            Box::new(|_| {}),
        )
        .await
        .unwrap_or_else(|e| panic!("the live stream's publisher connects: {e}"));
        let video_pt = publisher.negotiated.video_payload_type.unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let warm = Arc::new(AtomicBool::new(false));
        let (r, w) = (received.clone(), warm.clone());
        let player = client::connect(
            &options(format!("/whep/{stream}"), Role::Play),
            Box::new(move |incoming| {
                let Some(payload) = super::rtp_payload(incoming) else {
                    return;
                };
                if payload.starts_with(COUNTED) {
                    r.fetch_add(1, Ordering::Relaxed);
                } else if payload.starts_with(WARM_UP) {
                    w.store(true, Ordering::Relaxed);
                }
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("the live stream's player connects: {e}"));
        // The relay's worker gets the player's keys just after the client's DTLS ends: count
        // from the first packet after one has arrived.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seq = 0u16;
        while !warm.load(Ordering::Relaxed) {
            assert!(
                Instant::now() < deadline,
                "no warm-up packet reached the player"
            );
            publisher
                .send_rtp(&packet(video_pt, seq, publisher.video_ssrc, WARM_UP))
                .await
                .unwrap();
            seq = seq.wrapping_add(1);
            tokio::time::sleep(INTERVAL).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop_flag, sent_count) = (stop.clone(), sent.clone());
        let sender = tokio::spawn(async move {
            while !stop_flag.load(Ordering::Relaxed) {
                let p = packet(video_pt, seq, publisher.video_ssrc, COUNTED);
                publisher.send_rtp(&p).await.unwrap();
                sent_count.fetch_add(1, Ordering::Relaxed);
                seq = seq.wrapping_add(1);
                tokio::time::sleep(INTERVAL).await;
            }
            publisher
        });
        LiveStream {
            stop,
            sent,
            received,
            sender,
            player,
        }
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops sending, waits for the last packets to arrive (up to 2 s) and says what was
    /// delivered. The sessions are closed.
    pub async fn finish(self) -> Delivery {
        self.stop.store(true, Ordering::Relaxed);
        let publisher = self.sender.await.expect("the sender task ran to its end");
        let sent = self.sent.load(Ordering::Relaxed);
        let received = self.received.clone();
        super::eventually(Duration::from_secs(2), || {
            received.load(Ordering::Relaxed) >= sent
        })
        .await;
        let delivery = Delivery {
            sent,
            received: received.load(Ordering::Relaxed),
        };
        self.player.close().await;
        publisher.close().await;
        delivery
    }
}

fn packet(pt: u8, seq: u16, ssrc: u32, marker: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | 0x80];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(marker);
    p.resize(600, 0x5a);
    p
}
