//! The client's offer and answer against the relay's own negotiation, and its reader task's
//! loss repair driven packet by packet with a fake clock and SRTP on both ends.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::ice::{IceEvent, IceProgress, Responder};
use super::link::{Demux, OUTGOING_LEN};
use super::repair::{PlayRepair, PublishRepair};
use super::*;
use crate::sdp::{AnswerTransport, Offer, negotiate_play, negotiate_publish, write_answer};
use crate::wire::nack::{Nack, write_nack};
use crate::wire::rtp::RtpHeader;
use crate::wire::rtx::{OriginalStream, RtxStream, build_rtx, restore_into};
use crate::wire::srtp::{SrtpContext, SrtpProfile};

const OUR_PWD: &str = "our-password-our-password";
const SERVER_PWD: &str = "server-password-server-pw";
const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5000);

fn fingerprint() -> String {
    vec!["AB"; 32].join(":")
}

fn offer(role: Role, repair: bool) -> String {
    write_offer_with(
        role,
        "ufrag",
        "passwordpasswordpassword",
        &fingerprint(),
        0x0a0a,
        0x0b0b,
        None,
        repair,
    )
}

fn answer_of(offer: &Offer, sections: &[crate::sdp::AnswerSection]) -> Answer {
    let fingerprint = fingerprint();
    let transport = AnswerTransport {
        ice_ufrag: "relay",
        ice_pwd: "relay-password-relay-pw",
        fingerprint: &fingerprint,
        ips: &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        port: 31000,
        tcp_port: 31000,
        udp: true,
        tcp: false,
    };
    parse_answer(&write_answer(offer, sections, &transport)).unwrap()
}

#[test]
fn the_offer_carries_rtx_and_nack_for_every_video_codec_and_the_publishers_fid_group() {
    let sdp = offer(Role::Publish, true);
    assert!(sdp.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 98 99 45 46\r\n"));
    for (pt, rtx) in [(96, 97), (102, 103), (98, 99), (45, 46)] {
        assert!(sdp.contains(&format!("a=rtcp-fb:{pt} nack\r\n")), "{sdp}");
        assert!(sdp.contains(&format!(
            "a=rtpmap:{rtx} rtx/90000\r\na=fmtp:{rtx} apt={pt}\r\n"
        )));
    }
    let rtx_ssrc = rtx_ssrc_of(0x0b0b);
    assert!(sdp.contains(&format!("a=ssrc-group:FID {} {rtx_ssrc}\r\n", 0x0b0b)));
    assert!(sdp.contains(&format!("a=ssrc:{rtx_ssrc} cname:loadgen\r\n")));
    assert!(!sdp.contains("a=rtcp-fb:111 nack"), "no NACK for audio");
    // The relay's parser takes it whole (each payload type once, within its caps).
    Offer::parse(&sdp).unwrap();

    let player = offer(Role::Play, true);
    assert!(player.contains("a=fmtp:97 apt=96") && !player.contains("a=ssrc"));
    Offer::parse(&player).unwrap();

    let plain = offer(Role::Publish, false);
    assert!(plain.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 102 98 45\r\n"));
    assert!(!plain.contains("rtx") && !plain.contains("nack\r\n") && !plain.contains("FID"));
    assert!(plain.contains("a=rtcp-fb:96 nack pli\r\n"));

    let vp9 = write_offer_with(Role::Play, "u", "p", "f", 1, 2, Some("vp9"), true);
    assert!(
        vp9.contains("m=video 9 UDP/TLS/RTP/SAVPF 98 99\r\n"),
        "{vp9}"
    );
}

#[test]
fn the_relays_answers_give_rtx_and_nack_back_to_publisher_and_player() {
    let publish = Offer::parse(&offer(Role::Publish, true)).unwrap();
    let (tracks, sections) = negotiate_publish(&publish).unwrap();
    let answer = answer_of(&publish, &sections);
    assert_eq!(answer.video_payload_type, Some(96));
    assert!(answer.video_nack, "the relay keeps generic NACK");
    assert_eq!(answer.video_rtx_payload_type, Some(97));
    assert_eq!(answer.video_codec, "VP8/90000");

    let play = Offer::parse(&offer(Role::Play, true)).unwrap();
    let (_, sections) = negotiate_play(&play, &tracks, "cam", |k| 5000 + k.index() as u32).unwrap();
    let answer = answer_of(&play, &sections);
    assert_eq!(answer.video_payload_type, Some(96));
    assert!(answer.video_nack);
    assert_eq!(answer.video_rtx_payload_type, Some(97));
    let (video, rtx) = (answer.video_ssrc.unwrap(), answer.video_rtx_ssrc.unwrap());
    assert_eq!(video, 5001);
    assert_ne!(rtx, video);

    // Without repair offered, none is answered.
    let publish = Offer::parse(&offer(Role::Publish, false)).unwrap();
    let (_, sections) = negotiate_publish(&publish).unwrap();
    let answer = answer_of(&publish, &sections);
    assert!(!answer.video_nack);
    assert_eq!(answer.video_rtx_payload_type, None);
}

#[test]
fn answers_are_read_in_any_order_and_only_rtx_for_the_chosen_codec_counts() {
    let fp = fingerprint();
    let answer = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 nack\r\n\
         a=ssrc:77 cname:x\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 102 103 97\r\na=ice-ufrag:u\r\na=ice-pwd:pwpwpwpwpwpwpwpwpwpwpwpw\r\n\
         a=fingerprint:sha-256 {fp}\r\n\
         a=fmtp:97 apt=96\r\na=fmtp:103 x-google-whatever=1; apt=102\r\n\
         a=rtpmap:102 H264/90000\r\na=rtcp-fb:102 nack pli\r\na=rtcp-fb:102 nack\r\n\
         a=rtpmap:103 RTX/90000\r\na=rtpmap:97 rtx/90000\r\n\
         a=ssrc:9 cname:x\r\na=ssrc-group:FID 8 9\r\na=ssrc:8 cname:x\r\n"
    );
    let a = parse_answer(&answer).unwrap();
    assert_eq!(a.video_codec, "H264/90000");
    assert_eq!(a.video_rtx_payload_type, Some(103));
    assert!(a.video_nack);
    assert_eq!((a.video_ssrc, a.video_rtx_ssrc), (Some(8), Some(9)));

    // `nack pli` alone is a keyframe request, not loss repair.
    let a = parse_answer(&answer.replace("a=rtcp-fb:102 nack\r\n", "")).unwrap();
    assert!(!a.video_nack);
    // No FID group: the first announced SSRC, no RTX SSRC.
    let a = parse_answer(&answer.replace("a=ssrc-group:FID 8 9\r\n", "")).unwrap();
    assert_eq!((a.video_ssrc, a.video_rtx_ssrc), (Some(9), None));
}

#[test]
fn the_rtx_ssrc_is_never_the_video_ssrc() {
    for ssrc in [0, 1, u32::MAX, 0x5254_5831, 0x5831_5254, 0x1234_5678] {
        assert_ne!(rtx_ssrc_of(ssrc), ssrc);
    }
    for _ in 0..10_000 {
        let ssrc = rand::random::<u32>();
        assert_ne!(rtx_ssrc_of(ssrc), ssrc);
    }
}

const VIDEO_PT: u8 = 96;
const RTX_PT: u8 = 97;
const RELAY_VIDEO_SSRC: u32 = 0x1111;
const RELAY_RTX_SSRC: u32 = 0x2222;
const OURS: u32 = 0x3333;

/// Two SRTP directions, each end holding the same keys: (relay's out, our in), (our out,
/// relay's in).
fn srtp_pairs() -> ((SrtpContext, SrtpContext), (SrtpContext, SrtpContext)) {
    let p = SrtpProfile::AeadAes128Gcm;
    let make = |k: u8| SrtpContext::new(p, &[k; 16], &[k; 12]).unwrap();
    ((make(1), make(1)), (make(2), make(2)))
}

type Delivered = Arc<SyncMutex<Vec<Vec<u8>>>>;

fn demux(media: Media, loss: Option<LossGate>) -> (Demux, Arc<SessionCounters>) {
    let counters = Arc::new(SessionCounters::default());
    let (ice, _) = watch::channel(IceProgress::default());
    let (dtls, _) = mpsc::channel(1);
    let demux = Demux {
        ice,
        responder: Responder::new("ours", OUR_PWD, SERVER_PWD),
        ice_reply: None,
        dtls,
        keys: None,
        media: Some(media),
        counters: counters.clone(),
        loss,
        policer: None,
    };
    (demux, counters)
}

fn recording() -> (Handler, Delivered) {
    let delivered: Delivered = Arc::default();
    let sink = delivered.clone();
    let handler: Handler = Box::new(move |incoming| {
        if let Incoming::Rtp(p) = incoming {
            sink.lock().unwrap().push(p.to_vec());
        }
    });
    (handler, delivered)
}

fn rtp(pt: u8, sequence: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&sequence.to_be_bytes());
    p.extend_from_slice(&(sequence as u32 / 4 * 3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[sequence as u8; 100]);
    p
}

fn protected_rtp(srtp: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + 64, 0);
    let n = srtp.protect_rtp(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

fn protected_rtcp(srtp: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + 64, 0);
    let n = srtp.protect_rtcp(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

fn outgoing(demux: &mut Demux, now: Instant) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; OUTGOING_LEN];
    let mut sent = Vec::new();
    while let Some(n) = demux.next_outgoing(now, &mut out) {
        sent.push(out[..n].to_vec());
    }
    sent
}

#[test]
fn a_player_nacks_a_gap_over_srtcp_and_hands_the_restored_rtx_packet_on() {
    let t0 = Instant::now();
    let ((mut relay_out, ours_in), (ours_out, mut relay_in)) = srtp_pairs();
    let (handler, delivered) = recording();
    let media = Media {
        srtp_in: ours_in,
        handler,
        outbound: Arc::new(SyncMutex::new(Outbound {
            srtp: ours_out,
            publish: Vec::new(),
        })),
        play: Some(PlayRepair::new(VIDEO_PT, Some(RTX_PT), None, OURS)),
        feedback: None,
    };
    let (mut demux, counters) = demux(media, None);
    for seq in [10, 11, 14] {
        let mut p = protected_rtp(&mut relay_out, &rtp(VIDEO_PT, seq, RELAY_VIDEO_SSRC));
        demux.packet(t0, SERVER, &mut p);
    }
    assert_eq!(demux.next_timeout(), Some(t0), "due at once");
    let sent = outgoing(&mut demux, t0);
    assert_eq!(sent.len(), 1);
    let mut nack = sent[0].clone();
    let n = relay_in.unprotect_rtcp(&mut nack).unwrap();
    let nack = Nack::parse(&nack[..n]).unwrap();
    assert_eq!(
        (nack.sender_ssrc, nack.media_ssrc),
        (OURS, RELAY_VIDEO_SSRC)
    );
    assert_eq!(nack.lost().collect::<Vec<_>>(), vec![12, 13]);
    assert_eq!(demux.next_timeout(), Some(t0 + Duration::from_millis(100)));
    assert!(outgoing(&mut demux, t0 + Duration::from_millis(99)).is_empty());

    // The relay answers 12 with RTX; the handler sees the original 12.
    let stream = RtxStream {
        ssrc: RELAY_RTX_SSRC,
        payload_type: RTX_PT,
        sequence: 500,
    };
    let mut rtx = [0u8; 256];
    let len = build_rtx(&rtp(VIDEO_PT, 12, RELAY_VIDEO_SSRC), &stream, &mut rtx).unwrap();
    let mut p = protected_rtp(&mut relay_out, &rtx[..len]);
    demux.packet(t0 + Duration::from_millis(3), SERVER, &mut p);
    let got = delivered.lock().unwrap().clone();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3], rtp(VIDEO_PT, 12, RELAY_VIDEO_SSRC));
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counters.repaired.load(Relaxed), 1);
    assert_eq!(counters.rtx_received.load(Relaxed), 1);
    assert_eq!(counters.nacks_sent.load(Relaxed), 1);
    assert_eq!(counters.nacked_packets.load(Relaxed), 2);

    // 13 is asked for again one RTT later, alone.
    let sent = outgoing(&mut demux, t0 + Duration::from_millis(100));
    let mut nack = sent[0].clone();
    let n = relay_in.unprotect_rtcp(&mut nack).unwrap();
    assert_eq!(
        Nack::parse(&nack[..n]).unwrap().lost().collect::<Vec<_>>(),
        vec![13]
    );
}

#[test]
fn a_publisher_answers_the_relays_nack_with_protected_rtx() {
    let t0 = Instant::now();
    let ((mut relay_out, ours_in), (ours_out, mut relay_in)) = srtp_pairs();
    let rtx_ssrc = rtx_ssrc_of(OURS);
    let outbound = Arc::new(SyncMutex::new(Outbound {
        srtp: ours_out,
        publish: vec![PublishRepair::new(
            OURS,
            Some((RTX_PT, rtx_ssrc)),
            7,
            128,
            RETRANSMIT_AGE,
        )],
    }));
    let (handler, _) = recording();
    let media = Media {
        srtp_in: ours_in,
        handler,
        outbound: outbound.clone(),
        play: None,
        feedback: None,
    };
    let (mut demux, counters) = demux(media, None);
    // What Session::send_rtp does for each packet: keep it, then protect and send it.
    for seq in 0..20u16 {
        let plain = rtp(VIDEO_PT, seq, OURS);
        let mut o = outbound.lock().unwrap();
        o.publish[0].on_sent(t0, &plain);
        let sent = protected_rtp(&mut o.srtp, &plain);
        drop(o);
        relay_in.unprotect_rtp(&mut sent.clone()).unwrap();
    }
    let mut nack = [0u8; 64];
    let (n, _) = write_nack(&mut nack, 0x4444, OURS, &[3, 5]).unwrap();
    let mut p = protected_rtcp(&mut relay_out, &nack[..n]);
    demux.packet(t0 + Duration::from_millis(20), SERVER, &mut p);
    let sent = outgoing(&mut demux, t0 + Duration::from_millis(20));
    assert_eq!(sent.len(), 2);
    let original = OriginalStream {
        ssrc: OURS,
        payload_type: VIDEO_PT,
    };
    for (packet, (seq, rtx_seq)) in sent.iter().zip([(3u16, 7u16), (5, 8)]) {
        let mut packet = packet.clone();
        let n = relay_in.unprotect_rtp(&mut packet).unwrap();
        let h = RtpHeader::parse(&packet[..n]).unwrap();
        assert_eq!(
            (h.ssrc, h.payload_type, h.sequence),
            (rtx_ssrc, RTX_PT, rtx_seq)
        );
        let mut restored = [0u8; 256];
        let m = restore_into(&packet[..n], &original, &mut restored).unwrap();
        assert_eq!(&restored[..m], &rtp(VIDEO_PT, seq, OURS)[..]);
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counters.nacks_received.load(Relaxed), 1);
    assert_eq!(counters.retransmitted.load(Relaxed), 2);
    assert!(counters.retransmitted_bytes.load(Relaxed) > 200);
    assert_eq!(
        demux.next_timeout(),
        None,
        "a publisher has nothing to wake for"
    );
}

#[test]
fn arrival_loss_drops_media_before_decryption() {
    let t0 = Instant::now();
    let ((mut relay_out, ours_in), (ours_out, _)) = srtp_pairs();
    let (handler, delivered) = recording();
    let media = Media {
        srtp_in: ours_in,
        handler,
        outbound: Arc::new(SyncMutex::new(Outbound {
            srtp: ours_out,
            publish: Vec::new(),
        })),
        play: None,
        feedback: None,
    };
    let (mut demux, counters) = demux(media, Some(LossGate::new(50.0, 3)));
    for seq in 0..1000u16 {
        let mut p = protected_rtp(&mut relay_out, &rtp(VIDEO_PT, seq, RELAY_VIDEO_SSRC));
        demux.packet(t0, SERVER, &mut p);
    }
    use std::sync::atomic::Ordering::Relaxed;
    let dropped = counters.dropped_on_arrival.load(Relaxed);
    assert!((400..600).contains(&dropped), "{dropped}");
    assert_eq!(delivered.lock().unwrap().len() as u64, 1000 - dropped);
    assert_eq!(counters.srtp_errors.load(Relaxed), 0);
}

/// A full ICE server's check towards us (`username` `ours:server`), signed with `password`.
fn server_check(username: &str, password: &str) -> Vec<u8> {
    use crate::wire::stun::{BINDING_REQUEST, StunWriter, short_term_key};
    let mut out = vec![0u8; 256];
    let mut w = StunWriter::new(&mut out, BINDING_REQUEST, &[7; 12]).unwrap();
    w.username(username.as_bytes())
        .unwrap()
        .priority(1)
        .unwrap()
        .message_integrity(&short_term_key(password))
        .unwrap();
    let n = w.fingerprint().unwrap();
    out.truncate(n);
    out
}

fn success_signed_with(password: &str) -> Vec<u8> {
    let mut out = vec![0u8; 256];
    let n = crate::wire::stun::write_binding_success(
        &mut out,
        &[9; 12],
        "127.0.0.1:6000".parse().unwrap(),
        &crate::wire::stun::short_term_key(password),
    )
    .unwrap();
    out.truncate(n);
    out
}

#[test]
fn a_full_servers_check_is_answered_with_our_credentials_and_its_own_address() {
    use crate::wire::stun::{StunMessage, short_term_key};
    let responder = Responder::new("ours", OUR_PWD, SERVER_PWD);
    let IceEvent::Reply(reply) = responder.on_stun(&server_check("ours:server", OUR_PWD), SERVER)
    else {
        panic!("a valid check is answered");
    };
    let reply = StunMessage::parse(&reply).expect("a STUN message with a valid FINGERPRINT");
    assert!(reply.is_binding_success());
    assert_eq!(reply.transaction_id, [7; 12]);
    assert_eq!(reply.xor_mapped_address, Some(SERVER));
    reply.verify_integrity(&short_term_key(OUR_PWD)).unwrap();

    // Not ours, or not signed with our password: nothing goes back.
    for bad in [
        server_check("theirs:server", OUR_PWD),
        server_check("ours:server", SERVER_PWD),
    ] {
        assert_eq!(responder.on_stun(&bad, SERVER), IceEvent::Ignored);
    }
    // An answer to our check counts only when signed with the server's password.
    assert_eq!(
        responder.on_stun(&success_signed_with(SERVER_PWD), SERVER),
        IceEvent::Answered
    );
    assert_eq!(
        responder.on_stun(&success_signed_with(OUR_PWD), SERVER),
        IceEvent::Ignored
    );
}

#[test]
fn the_reader_task_answers_the_servers_check_and_notes_the_answers_after_it() {
    let ((_, ours_in), (ours_out, _)) = srtp_pairs();
    let media = Media {
        srtp_in: ours_in,
        handler: Box::new(|_| {}),
        outbound: Arc::new(SyncMutex::new(Outbound {
            srtp: ours_out,
            publish: Vec::new(),
        })),
        play: None,
        feedback: None,
    };
    let (mut demux, _) = demux(media, None);
    let progress = demux.ice.subscribe();
    let t0 = Instant::now();
    demux.packet(t0, SERVER, &mut success_signed_with(SERVER_PWD));
    assert_eq!(progress.borrow().answered, 1);
    assert_eq!(progress.borrow().answered_by, Some(SERVER));
    assert_eq!(progress.borrow().answered_after_our_answer, 0);

    demux.packet(t0, SERVER, &mut server_check("ours:server", OUR_PWD));
    let (_, to) = demux.ice_reply.take().expect("an answer to send");
    assert_eq!(to, SERVER);
    demux.packet(t0, SERVER, &mut success_signed_with(SERVER_PWD));
    let seen = *progress.borrow();
    assert_eq!(
        (
            seen.checks_answered,
            seen.answered,
            seen.answered_after_our_answer
        ),
        (1, 2, 1)
    );
}

#[test]
fn the_answer_says_the_dtls_role_ice_lite_and_bundle_only_sections_are_accepted() {
    let fp = fingerprint();
    let answer = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:{SERVER_PWD}\r\n\
         a=fingerprint:sha-256 {fp}\r\na=setup:active\r\na=rtpmap:111 opus/48000/2\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n\
         m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=bundle-only\r\na=rtpmap:96 VP8/90000\r\n"
    );
    let parsed = parse_answer(&answer).unwrap();
    assert!(parsed.server_is_dtls_client);
    assert!(!parsed.ice_lite);
    assert_eq!(parsed.audio_payload_type, Some(111));
    assert_eq!(parsed.video_payload_type, Some(96));
    assert_eq!(parsed.video_codec, "VP8/90000");

    let lite = answer
        .replace("a=setup:active", "a=setup:passive")
        .replace("a=group:BUNDLE", "a=ice-lite\r\na=group:BUNDLE")
        .replace("a=bundle-only\r\n", "");
    let parsed = parse_answer(&lite).unwrap();
    assert!(!parsed.server_is_dtls_client);
    assert!(parsed.ice_lite);
    assert_eq!(parsed.video_payload_type, None, "port 0 alone is rejected");
}
