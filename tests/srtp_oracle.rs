//! corecast's in-place SRTP against webrtc-srtp as the oracle: byte-identical output, and each
//! side decrypts the other's packets.

use corecast::wire::srtp::{SrtpContext, SrtpProfile};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const MASTER_KEY: [u8; 16] = [
    0x0d, 0xcd, 0x21, 0x3e, 0x4c, 0xbc, 0xf2, 0x8f, 0x01, 0x7f, 0x69, 0x94, 0x40, 0x1e, 0x28, 0x89,
];
const MASTER_SALT: [u8; 14] = [
    0x62, 0x77, 0x60, 0x38, 0xc0, 0x6d, 0xc9, 0x41, 0x9f, 0x6d, 0xd9, 0x43, 0x3e, 0x7c,
];

fn profiles() -> [(SrtpProfile, ProtectionProfile); 2] {
    [
        (SrtpProfile::AeadAes128Gcm, ProtectionProfile::AeadAes128Gcm),
        (
            SrtpProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ),
    ]
}

fn contexts(ours: SrtpProfile, theirs: ProtectionProfile) -> (SrtpContext, Context) {
    let salt = &MASTER_SALT[..ours.master_salt_len()];
    (
        SrtpContext::new(ours, &MASTER_KEY, salt).unwrap(),
        Context::new(&MASTER_KEY, salt, theirs, None, None).unwrap(),
    )
}

fn rtp(ssrc: u32, seq: u16, with_extension: bool, payload_len: usize) -> Vec<u8> {
    let mut p = vec![if with_extension { 0x90 } else { 0x80 }, 0x60];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    if with_extension {
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
    }
    p.extend((0..payload_len).map(|i| (i * 7) as u8));
    p
}

#[test]
fn rtp_protect_is_byte_identical_to_webrtc_srtp_and_decrypts_there() {
    for (ours, theirs) in profiles() {
        let (mut tx, mut oracle_tx) = contexts(ours, theirs);
        let (_, mut oracle_rx) = contexts(ours, theirs);
        // Sequence numbers across a wrap exercise the rollover counter on both sides.
        for (i, seq) in [65530u16, 65531, 65535, 0, 1, 2].into_iter().enumerate() {
            let plain = rtp(0xcafe, seq, i % 2 == 0, 100 + i * 97);
            let expected = oracle_tx.encrypt_rtp(&plain).unwrap();
            let mut buf = plain.clone();
            buf.resize(plain.len() + ours.rtp_overhead(), 0);
            let n = tx.protect_rtp(&mut buf, plain.len()).unwrap();
            assert_eq!(&buf[..n], &expected[..], "{ours:?} seq {seq}");
            let decrypted = oracle_rx.decrypt_rtp(&buf[..n]).unwrap();
            assert_eq!(&decrypted[..], &plain[..]);
        }
    }
}

#[test]
fn rtp_from_webrtc_srtp_unprotects_in_place() {
    for (ours, theirs) in profiles() {
        let (mut rx, mut oracle_tx) = contexts(ours, theirs);
        for seq in [100u16, 101, 103, 102] {
            let plain = rtp(0xbeef, seq, seq % 2 == 1, 1100);
            let mut buf = oracle_tx.encrypt_rtp(&plain).unwrap().to_vec();
            let n = rx.unprotect_rtp(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..]);
        }
    }
}

#[test]
fn rtcp_protect_is_byte_identical_to_webrtc_srtp_and_both_directions_decrypt() {
    for (ours, theirs) in profiles() {
        let (mut tx, mut oracle_tx) = contexts(ours, theirs);
        let (mut rx, mut oracle_rx) = contexts(ours, theirs);
        // A PLI, then a sender report: real packets the relay sends and receives.
        let pli = vec![0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        let mut sr = vec![0x80, 200, 0, 6, 0, 0, 0, 1];
        sr.extend_from_slice(&[3u8; 20]);
        for plain in [pli, sr] {
            let expected = oracle_tx.encrypt_rtcp(&plain).unwrap();
            let mut buf = plain.clone();
            buf.resize(plain.len() + ours.rtcp_overhead(), 0);
            let n = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
            assert_eq!(&buf[..n], &expected[..], "{ours:?}");
            assert_eq!(&oracle_rx.decrypt_rtcp(&buf[..n]).unwrap()[..], &plain[..]);
            let mut theirs_buf = expected.to_vec();
            let m = rx.unprotect_rtcp(&mut theirs_buf).unwrap();
            assert_eq!(&theirs_buf[..m], &plain[..]);
        }
    }
}
