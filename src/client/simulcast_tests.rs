//! The client's simulcast publishing and transport-wide feedback against the relay's own
//! negotiation and publisher state, and a player's reader task policing what arrives and
//! sending feedback, with a fake clock and SRTP on both ends.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::*;
use crate::client::feedback::{self, PlayFeedback, TRANSPORT_CC_ID};
use crate::client::ice::{IceProgress, Responder};
use crate::client::link::{Demux, Media, OUTGOING_LEN, Outbound};
use crate::client::policer::Policer;
use crate::client::{Answer, Incoming, Role, SessionCounters, parse_answer, write_offer_with};
use crate::media::{MediaKind, Source};
use crate::sdp::{AnswerTransport, Offer, TRANSPORT_CC_URI, negotiate_play, negotiate_publish};
use crate::session::publisher::{Publisher, VideoSettings};
use crate::session::publisher_link::LinkSettings;
use crate::wire::keyframe::VideoCodec;
use crate::wire::rtx::{OriginalStream, restore_into};
use crate::wire::srtp::{SrtpContext, SrtpProfile};
use crate::wire::twcc::{PacketStatus, TransportFeedback};

fn rids() -> Vec<String> {
    ["l", "m", "h"].iter().map(|r| r.to_string()).collect()
}

fn answer_of(offer: &Offer, sections: &[crate::sdp::AnswerSection]) -> Answer {
    let fingerprint = vec!["AB"; 32].join(":");
    let transport = AnswerTransport {
        ice_ufrag: "relay",
        ice_pwd: "relay-password-relay-pw",
        fingerprint: &fingerprint,
        ips: &[std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
        port: 31000,
        tcp_port: 31000,
        udp: true,
        tcp: false,
    };
    parse_answer(&crate::sdp::write_answer(offer, sections, &transport)).unwrap()
}

fn base_offer(role: Role) -> String {
    let fp = vec!["AB"; 32].join(":");
    write_offer_with(
        role,
        "ufrag",
        "pwpwpwpwpwpwpwpwpwpwpwpw",
        &fp,
        1,
        2,
        Some("VP8"),
        true,
    )
}

#[test]
fn the_relay_receives_the_encodings_by_rid_and_its_players_negotiate_feedback() {
    let offer = amend_offer(&base_offer(Role::Publish), "", &offer_lines(&rids()), true);
    let video_section = offer.split("m=video").nth(1).unwrap();
    assert!(!video_section.contains("a=ssrc"), "{offer}");
    let publish = Offer::parse(&offer).unwrap();
    let (tracks, sections) = negotiate_publish(&publish).unwrap();
    let video = tracks.iter().find(|t| t.kind == MediaKind::Video).unwrap();
    assert_eq!(video.rids, rids());
    assert_eq!(video.rid_ids, Some((RID_ID, Some(REPAIRED_RID_ID))));
    let answer = answer_of(&publish, &sections);
    assert!(answer.simulcast);
    let simulcast = Simulcast::from_answer(&rids(), &answer).unwrap();
    assert_eq!(simulcast.rid_id, RID_ID);
    assert_eq!(simulcast.repaired_rid_id, Some(REPAIRED_RID_ID));
    let ssrcs: Vec<u32> = simulcast.encodings.iter().map(|e| e.ssrc).collect();
    assert!(ssrcs[0] != ssrcs[1] && ssrcs[1] != ssrcs[2]);

    // The relay's publisher state tells the encodings apart by the RID each packet names,
    // and learns each RTX SSRC from the repaired RID its retransmissions carry.
    let mut relay = Publisher::new(
        &[
            (111, MediaKind::Audio),
            (96, MediaKind::Video),
            (97, MediaKind::Video),
        ],
        VideoSettings {
            codec: Some(VideoCodec::Vp8),
            rtx_payload_type: Some(97),
            rids: video.rids.clone(),
            rid_ids: video.rid_ids,
        },
        LinkSettings::default(),
        7,
    );
    let mut buf = [0u8; 64];
    for layer in [2usize, 0, 1] {
        let len = simulcast
            .write_header(layer, &mut buf, 96, true, 100, 3000)
            .unwrap();
        buf[len..len + 8].copy_from_slice(b"payload!");
        let packet = &buf[..len + 8];
        let header = RtpHeader::parse(packet).unwrap();
        assert_eq!(
            relay.on_rtp(packet, &header),
            Some(Source::video(layer as u8))
        );
    }
    let mut repairs = simulcast.repairs(Some(97), 64, Duration::from_secs(1));
    let t0 = Instant::now();
    let len = simulcast
        .write_header(2, &mut buf, 96, false, 100, 3000)
        .unwrap();
    buf[len..len + 8].copy_from_slice(b"payload!");
    let original = buf[..len + 8].to_vec();
    repairs[2].on_sent(t0, &original);
    let mut nack = [0u8; 64];
    let (n, _) = crate::wire::nack::write_nack(&mut nack, 9, ssrcs[2], &[100]).unwrap();
    assert!(repairs[2].on_rtcp(t0, &nack[..n]));
    assert!(
        !repairs[0].on_rtcp(t0, &nack[..n]),
        "another encoding's NACK"
    );
    let mut rtx = [0u8; 1600];
    let n = repairs[2].next_retransmission(t0, &mut rtx).unwrap();
    let header = RtpHeader::parse(&rtx[..n]).unwrap();
    assert_eq!(header.ssrc, simulcast.encodings[2].rtx_ssrc);
    assert!(relay.is_rtx(&header));
    assert_eq!(relay.repaired_ssrc(&rtx[..n], &header), Some(ssrcs[2]));
    // Restored, the original comes back whole (its RID element under the repaired id).
    let mut restored = [0u8; 1600];
    let original_stream = OriginalStream {
        ssrc: ssrcs[2],
        payload_type: 96,
    };
    let m = restore_into(&rtx[..n], &original_stream, &mut restored).unwrap();
    assert_eq!(&restored[len..m], b"payload!");

    // A player of the stream offers transport-wide feedback and gets it answered.
    let play_offer = amend_offer(
        &base_offer(Role::Play),
        &feedback::offer_lines(),
        &feedback::offer_lines(),
        false,
    );
    let play = Offer::parse(&play_offer).unwrap();
    let (_, sections) = negotiate_play(&play, &tracks, "cam", |k| 5000 + k.index() as u32).unwrap();
    let answer = answer_of(&play, &sections);
    assert!(
        answer
            .extensions
            .contains(&(TRANSPORT_CC_ID, TRANSPORT_CC_URI.to_string())),
        "{:?}",
        answer.extensions
    );

    // A stream without simulcast answers no feedback: the player sends none.
    let plain = Offer::parse(&base_offer(Role::Publish)).unwrap();
    let (plain_tracks, _) = negotiate_publish(&plain).unwrap();
    let (_, sections) = negotiate_play(&play, &plain_tracks, "cam", |_| 5).unwrap();
    let extensions = answer_of(&play, &sections).extensions;
    assert!(
        !extensions.iter().any(|(_, uri)| uri == TRANSPORT_CC_URI),
        "{extensions:?}"
    );
    let (_, plain_sections) = negotiate_publish(&plain).unwrap();
    let err = Simulcast::from_answer(&rids(), &answer_of(&plain, &plain_sections)).unwrap_err();
    assert!(err.to_string().contains("simulcast"), "{err}");
}

/// A video packet of `len` bytes from the relay with transport-wide number `number`.
fn numbered(sequence: u16, number: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0x90, 96];
    p.extend_from_slice(&sequence.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x11, 0x11]);
    let n = number.to_be_bytes();
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, (TRANSPORT_CC_ID << 4) | 1, n[0], n[1], 0]);
    p.resize(len, 7);
    p
}

#[test]
fn a_policed_player_drops_beyond_its_rate_and_reports_only_what_passed() {
    let t0 = Instant::now();
    let make = |k: u8| SrtpContext::new(SrtpProfile::AeadAes128Gcm, &[k; 16], &[k; 12]).unwrap();
    let (mut relay_out, ours_in, ours_out, mut relay_in) = (make(1), make(1), make(2), make(2));
    let delivered = Arc::new(SyncMutex::new(0u64));
    let sink = delivered.clone();
    let media = Media {
        srtp_in: ours_in,
        handler: Box::new(move |incoming| {
            if let Incoming::Rtp(_) = incoming {
                *sink.lock().unwrap() += 1;
            }
        }),
        outbound: Arc::new(SyncMutex::new(Outbound {
            srtp: ours_out,
            publish: Vec::new(),
        })),
        play: None,
        feedback: Some(PlayFeedback::new(TRANSPORT_CC_ID, 0x3333, 0x1111)),
    };
    let counters = Arc::new(SessionCounters::default());
    let (ice, _) = watch::channel(IceProgress::default());
    let (dtls, _) = mpsc::channel(1);
    let mut demux = Demux {
        ice,
        responder: Responder::new(
            "ours",
            "our-password-our-password",
            "server-password-server",
        ),
        ice_reply: None,
        dtls,
        keys: None,
        media: Some(media),
        counters: counters.clone(),
        loss: None,
        // 80 kbit/s: 10 000 bytes/s, a 3000-byte burst.
        policer: Some(Policer::new(80)),
    };
    // 1000-byte packets every 50 ms for a second: 20 000 bytes/s offered.
    let mut out = vec![0u8; OUTGOING_LEN];
    let mut feedback = Vec::new();
    for i in 0..20u16 {
        let now = t0 + Duration::from_millis(50) * u32::from(i);
        let plain = numbered(i, 1000 + i, 1000);
        let mut p = plain.clone();
        p.resize(plain.len() + 64, 0);
        let n = relay_out.protect_rtp(&mut p, plain.len()).unwrap();
        demux.packet(now, "127.0.0.1:9".parse().unwrap(), &mut p[..n]);
        while let Some(n) = demux.next_outgoing(now, &mut out) {
            let mut packet = out[..n].to_vec();
            let n = relay_in.unprotect_rtcp(&mut packet).unwrap();
            feedback.push(packet[..n].to_vec());
        }
    }
    let dropped = counters.dropped_by_rate_limit.load(Relaxed);
    let passed = *delivered.lock().unwrap();
    assert_eq!(dropped + passed, 20);
    // About half passes: the burst, then the rate (SRTP adds 16 bytes to each packet).
    assert!((10..=13).contains(&passed), "{passed} passed");
    // Feedback went out each 100 ms, and covers exactly the numbers that passed.
    assert!(feedback.len() >= 8, "{} feedback messages", feedback.len());
    assert_eq!(
        counters.transport_feedback_sent.load(Relaxed),
        feedback.len() as u64
    );
    let mut received = 0;
    for f in &feedback {
        let fb = TransportFeedback::parse(f).unwrap();
        received += fb
            .packets()
            .filter(|p| !matches!(p.status, PacketStatus::NotReceived))
            .count() as u64;
    }
    // The last interval's arrivals are not due yet.
    assert!(
        received <= passed && received + 2 >= passed,
        "{received} of {passed}"
    );
}
