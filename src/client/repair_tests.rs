//! The player's NACKs and the publisher's retransmissions, driven with a fake clock.

use super::*;

const VIDEO_PT: u8 = 96;
const RTX_PT: u8 = 97;
const MEDIA_SSRC: u32 = 0x1111;
const RTX_SSRC: u32 = 0x2222;
const OURS: u32 = 0x3333;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn packet(pt: u8, sequence: u16, ssrc: u32, marker: bool) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&sequence.to_be_bytes());
    p.extend_from_slice(&(sequence as u32 * 3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(format!("payload {sequence}").as_bytes());
    p
}

fn rtx_of(original: &[u8], rtx_sequence: u16) -> Vec<u8> {
    let mut out = [0u8; 256];
    let stream = RtxStream {
        ssrc: RTX_SSRC,
        payload_type: RTX_PT,
        sequence: rtx_sequence,
    };
    let n = rtx::build_rtx(original, &stream, &mut out).unwrap();
    out[..n].to_vec()
}

fn nacked(repair: &mut PlayRepair, now: Instant) -> Vec<Vec<u16>> {
    let mut out = [0u8; NACK_BUFFER_LEN];
    let mut nacks = Vec::new();
    while let Some(n) = repair.poll_nack(now, &mut out) {
        let nack = Nack::parse(&out[..n]).unwrap();
        assert_eq!((nack.sender_ssrc, nack.media_ssrc), (OURS, MEDIA_SSRC));
        nacks.push(nack.lost().collect());
    }
    nacks
}

#[test]
fn a_gap_is_nacked_at_once_and_again_after_the_default_rtt_until_repaired() {
    let t0 = Instant::now();
    let mut r = PlayRepair::new(VIDEO_PT, Some(RTX_PT), None, OURS);
    for seq in [100, 101, 104] {
        let p = packet(VIDEO_PT, seq, MEDIA_SSRC, false);
        assert_eq!(r.on_rtp(t0, &p), Some(&p[..]), "originals pass through");
    }
    assert_eq!(r.next_timeout(), Some(t0));
    assert_eq!(nacked(&mut r, t0), vec![vec![102, 103]]);
    assert_eq!(nacked(&mut r, t0 + ms(99)), Vec::<Vec<u16>>::new());
    assert_eq!(r.next_timeout(), Some(t0 + ms(100)));
    // 102 comes back as RTX: the application gets the original, byte for byte.
    let original = packet(VIDEO_PT, 102, MEDIA_SSRC, true);
    let rtx = rtx_of(&original, 7);
    assert_eq!(r.on_rtp(t0 + ms(50), &rtx), Some(&original[..]));
    // A second copy of it is a duplicate, not delivered twice.
    assert_eq!(r.on_rtp(t0 + ms(60), &rtx_of(&original, 8)), None);
    assert_eq!(nacked(&mut r, t0 + ms(100)), vec![vec![103]]);
    let c = *r.counters();
    assert_eq!((c.nacks_sent, c.nacked_packets), (2, 3));
    assert_eq!((c.rtx_received, c.repaired, c.rtx_duplicates), (2, 1, 1));
    assert_eq!(c.rtx_received_bytes, 2 * rtx.len() as u64);
    assert_eq!(r.outstanding(), 1);
}

#[test]
fn a_missing_packet_is_given_up_after_ten_requests() {
    let t0 = Instant::now();
    let mut r = PlayRepair::new(VIDEO_PT, Some(RTX_PT), Some(MEDIA_SSRC), OURS);
    r.on_rtp(t0, &packet(VIDEO_PT, 1, MEDIA_SSRC, false));
    r.on_rtp(t0, &packet(VIDEO_PT, 3, MEDIA_SSRC, false));
    let mut now = t0;
    let mut requests = 0;
    while let Some(next) = r.next_timeout() {
        now = next;
        requests += nacked(&mut r, now).len();
    }
    assert_eq!(requests, 10);
    assert_eq!(now, t0 + ms(1000), "the last request, then one interval");
    assert_eq!(r.counters().given_up, 1);
    assert_eq!(r.outstanding(), 0);
}

#[test]
fn without_rtx_a_late_original_counts_as_repaired_and_other_media_pass_untouched() {
    let t0 = Instant::now();
    let mut r = PlayRepair::new(VIDEO_PT, None, None, OURS);
    r.on_rtp(t0, &packet(VIDEO_PT, 10, MEDIA_SSRC, false));
    r.on_rtp(t0, &packet(VIDEO_PT, 12, MEDIA_SSRC, false));
    assert_eq!(nacked(&mut r, t0), vec![vec![11]]);
    let resent = packet(VIDEO_PT, 11, MEDIA_SSRC, false);
    assert_eq!(r.on_rtp(t0 + ms(5), &resent), Some(&resent[..]));
    assert_eq!(r.counters().repaired, 1);
    // Audio, and a payload type that would be RTX had it been negotiated, go through.
    let audio = packet(111, 500, 0x9999, false);
    assert_eq!(r.on_rtp(t0, &audio), Some(&audio[..]));
    let other = packet(RTX_PT, 13, 0x9999, false);
    assert_eq!(r.on_rtp(t0, &other), Some(&other[..]));
    assert_eq!(r.outstanding(), 0);
    assert_eq!(r.next_timeout(), None);
}

#[test]
fn rtx_before_any_video_or_as_a_padding_probe_is_counted_and_dropped() {
    let t0 = Instant::now();
    let mut r = PlayRepair::new(VIDEO_PT, Some(RTX_PT), None, OURS);
    let rtx = rtx_of(&packet(VIDEO_PT, 5, MEDIA_SSRC, false), 1);
    assert_eq!(r.on_rtp(t0, &rtx), None, "no video SSRC to restore to yet");
    let mut probe = rtx[..12].to_vec();
    probe[0] |= 0x20;
    probe.extend_from_slice(&[0, 0, 0, 4]);
    r.on_rtp(t0, &packet(VIDEO_PT, 1, MEDIA_SSRC, false));
    assert_eq!(r.on_rtp(t0, &probe), None);
    let c = r.counters();
    assert_eq!((c.rtx_unrestorable, c.rtx_received), (1, 1));
    assert_eq!((c.probes_received, c.probe_bytes_received), (1, 16));
}

#[test]
fn a_new_video_ssrc_starts_afresh() {
    let t0 = Instant::now();
    let mut r = PlayRepair::new(VIDEO_PT, Some(RTX_PT), Some(MEDIA_SSRC), OURS);
    r.on_rtp(t0, &packet(VIDEO_PT, 100, MEDIA_SSRC, false));
    r.on_rtp(t0, &packet(VIDEO_PT, 103, MEDIA_SSRC, false));
    // A new source whose numbering happens to run just above the old one's: the old
    // gap is forgotten, and the new numbers are no gap either.
    r.on_rtp(t0, &packet(VIDEO_PT, 110, 0x5555, false));
    r.on_rtp(t0, &packet(VIDEO_PT, 111, 0x5555, false));
    assert_eq!((r.outstanding(), r.next_timeout()), (0, None));
    r.on_rtp(t0, &packet(VIDEO_PT, 113, 0x5555, false));
    let mut out = [0u8; NACK_BUFFER_LEN];
    let n = r.poll_nack(t0, &mut out).unwrap();
    let nack = Nack::parse(&out[..n]).unwrap();
    assert_eq!(nack.media_ssrc, 0x5555);
    assert_eq!(nack.lost().collect::<Vec<_>>(), vec![112]);
}

#[test]
fn wrapping_sequence_numbers_are_nacked_in_wire_order() {
    let t0 = Instant::now();
    let mut r = PlayRepair::new(VIDEO_PT, Some(RTX_PT), Some(MEDIA_SSRC), OURS);
    r.on_rtp(t0, &packet(VIDEO_PT, 65533, MEDIA_SSRC, false));
    r.on_rtp(t0, &packet(VIDEO_PT, 1, MEDIA_SSRC, false));
    assert_eq!(nacked(&mut r, t0), vec![vec![65534, 65535, 0]]);
}

#[test]
fn a_long_gap_goes_in_several_nacks() {
    let t0 = Instant::now();
    let mut r = PlayRepair::new(VIDEO_PT, Some(RTX_PT), Some(MEDIA_SSRC), OURS);
    r.on_rtp(t0, &packet(VIDEO_PT, 0, MEDIA_SSRC, false));
    // Every other packet of 200 lost: 100 numbers, more than one batch.
    for seq in (1..200).step_by(2) {
        r.on_rtp(t0, &packet(VIDEO_PT, seq, MEDIA_SSRC, false));
    }
    let nacks = nacked(&mut r, t0);
    assert_eq!(nacks.len(), 2);
    assert_eq!(nacks[0].len() + nacks[1].len(), 99);
    assert_eq!(r.counters().nacked_packets, 99);
}

fn nack_packet(media_ssrc: u32, lost: &[u16]) -> Vec<u8> {
    let mut out = [0u8; 512];
    let (n, _) = write_nack(&mut out, 0x4444, media_ssrc, lost).unwrap();
    // In a compound packet behind a receiver report, as relays send them.
    let mut compound = vec![0x80, rtcp::RECEIVER_REPORT, 0, 1, 0, 0, 0x44, 0x44];
    compound.extend_from_slice(&out[..n]);
    compound
}

fn resent(p: &mut PublishRepair, now: Instant) -> Vec<Vec<u8>> {
    let mut out = [0u8; RETRANSMISSION_BUFFER_LEN];
    let mut sent = Vec::new();
    while let Some(n) = p.next_retransmission(now, &mut out) {
        sent.push(out[..n].to_vec());
    }
    sent
}

#[test]
fn a_nack_is_answered_with_rtx_carrying_the_original() {
    let t0 = Instant::now();
    let mut p = PublishRepair::new(MEDIA_SSRC, Some((RTX_PT, RTX_SSRC)), 65535, 64, ms(1000));
    let originals: Vec<Vec<u8>> = (0..10u16)
        .map(|i| packet(VIDEO_PT, 65530u16.wrapping_add(i), MEDIA_SSRC, i == 9))
        .collect();
    for o in &originals {
        p.on_sent(t0, o);
    }
    p.on_sent(t0, &packet(111, 3, 0x9999, false)); // audio is not kept
    assert!(p.on_rtcp(t0 + ms(5), &nack_packet(MEDIA_SSRC, &[65531, 0, 2])));
    assert!(p.has_pending());
    let sent = resent(&mut p, t0 + ms(5));
    assert_eq!(sent.len(), 3);
    let original = OriginalStream {
        ssrc: MEDIA_SSRC,
        payload_type: VIDEO_PT,
    };
    for (rtx, (want, rtx_seq)) in sent.iter().zip([(1, 65535u16), (6, 0), (8, 1)]) {
        let h = RtpHeader::parse(rtx).unwrap();
        assert_eq!(
            (h.ssrc, h.payload_type, h.sequence),
            (RTX_SSRC, RTX_PT, rtx_seq)
        );
        let mut restored = [0u8; 256];
        let n = rtx::restore_into(rtx, &original, &mut restored).unwrap();
        assert_eq!(&restored[..n], &originals[want][..]);
    }
    let c = *p.counters();
    assert_eq!(
        (c.nacks_received, c.nacked_packets, c.retransmitted),
        (1, 3, 3)
    );
    assert_eq!(
        c.retransmitted_bytes,
        sent.iter().map(|s| s.len() as u64).sum::<u64>()
    );
}

#[test]
fn without_rtx_the_original_goes_again_and_misses_repeats_and_strangers_are_counted() {
    let t0 = Instant::now();
    let mut p = PublishRepair::new(MEDIA_SSRC, None, 0, 16, ms(1000));
    for seq in 0..40u16 {
        p.on_sent(
            t0 + ms(seq as u64 * 10),
            &packet(VIDEO_PT, seq, MEDIA_SSRC, false),
        );
    }
    let now = t0 + ms(400);
    // 39 is kept; 10 was overwritten by 26 (16 slots); 41 was never sent; 39 twice.
    p.on_rtcp(now, &nack_packet(MEDIA_SSRC, &[10, 39, 41]));
    p.on_rtcp(now, &nack_packet(MEDIA_SSRC, &[39]));
    assert!(
        !p.on_rtcp(now, &nack_packet(0x7777, &[39])),
        "another SSRC's NACK"
    );
    assert_eq!(
        resent(&mut p, now),
        vec![packet(VIDEO_PT, 39, MEDIA_SSRC, false)]
    );
    let c = *p.counters();
    assert_eq!((c.missed, c.suppressed, c.retransmitted), (2, 1, 1));
    // After the guard interval the same number is resent; after max_age it is gone.
    p.on_rtcp(now + ms(10), &nack_packet(MEDIA_SSRC, &[39]));
    assert_eq!(resent(&mut p, now + ms(10)).len(), 1);
    p.on_rtcp(t0 + ms(1391), &nack_packet(MEDIA_SSRC, &[39]));
    assert_eq!(resent(&mut p, t0 + ms(1391)).len(), 0);
    assert_eq!(p.counters().missed, 3);
}

#[test]
fn a_packet_too_large_to_keep_is_sent_but_not_repaired() {
    let t0 = Instant::now();
    let mut p = PublishRepair::new(MEDIA_SSRC, None, 0, 16, ms(1000));
    let mut big = packet(VIDEO_PT, 1, MEDIA_SSRC, false);
    big.resize(RETRANSMIT_SLOT_LEN + 1, 0);
    p.on_sent(t0, &big);
    p.on_rtcp(t0, &nack_packet(MEDIA_SSRC, &[1]));
    assert!(resent(&mut p, t0).is_empty());
    assert_eq!(p.counters().missed, 1);
}

#[test]
fn the_pending_queue_is_bounded() {
    let t0 = Instant::now();
    let mut p = PublishRepair::new(MEDIA_SSRC, None, 0, 1024, ms(1000));
    let lost: Vec<u16> = (0..600).collect();
    p.on_rtcp(t0, &nack_packet(MEDIA_SSRC, &lost));
    assert_eq!(p.counters().overflowed, 600 - PENDING_CAPACITY as u64);
    assert_eq!(resent(&mut p, t0).len(), 0, "nothing was sent: all missed");
    assert_eq!(p.counters().missed, PENDING_CAPACITY as u64);
}

#[test]
fn the_loss_gate_drops_its_share_the_same_way_for_the_same_seed() {
    let run = |percent: f64, seed: u64| {
        let mut g = LossGate::new(percent, seed);
        let drops: Vec<bool> = (0..100_000).map(|_| g.drop_next()).collect();
        assert_eq!(g.seen(), 100_000);
        assert_eq!(g.dropped(), drops.iter().filter(|d| **d).count() as u64);
        drops
    };
    let a = run(3.0, 7);
    assert_eq!(a, run(3.0, 7), "deterministic");
    assert_ne!(a, run(3.0, 8), "seeded");
    let share = a.iter().filter(|d| **d).count() as f64 / 1000.0;
    assert!((2.8..3.2).contains(&share), "{share}% dropped");
    assert!(run(0.0, 1).iter().all(|d| !d));
    assert!(run(100.0, 1).iter().all(|d| *d));
}
