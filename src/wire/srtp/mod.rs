//! SRTP and SRTCP (RFC 3711, RFC 7714), protected and unprotected in place.
//!
//! The packet path calls `protect_*` on an egress buffer that has room for the trailer and
//! `unprotect_*` on the receive buffer itself: no allocation and no copy per packet. Replay
//! protection is a 64-packet sliding window per SSRC (RFC 3711 §3.3.2). Keys come from DTLS
//! (RFC 5764) through [`SrtpContext::from_dtls_export`].

mod index;
mod keys;

use aws_lc_rs::aead::Aad;
use aws_lc_rs::cipher::EncryptionContext;

use crate::wire::rtp::RtpHeader;
use index::{SsrcTable, estimate_index, outbound_rtp_index};
use keys::{Cipher, cm_iv, constant_time_eq, hmac_tag};

/// The protection profiles negotiated in DTLS's use_srtp extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpProfile {
    /// SRTP_AEAD_AES_128_GCM (RFC 7714): preferred, one pass for encryption and authentication.
    AeadAes128Gcm,
    /// SRTP_AES128_CM_HMAC_SHA1_80 (RFC 3711's default).
    Aes128CmHmacSha1_80,
}

const MASTER_KEY_LEN: usize = 16;
const GCM_TAG_LEN: usize = 16;
const HMAC_TAG_LEN: usize = 10;
const HMAC_KEY_LEN: usize = 20;
const SRTCP_INDEX_LEN: usize = 4;
const SRTCP_E_BIT: u32 = 0x8000_0000;

impl SrtpProfile {
    pub fn master_salt_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => 12,
            SrtpProfile::Aes128CmHmacSha1_80 => 14,
        }
    }

    /// Bytes `protect_rtp` adds to a packet.
    pub fn rtp_overhead(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => GCM_TAG_LEN,
            SrtpProfile::Aes128CmHmacSha1_80 => HMAC_TAG_LEN,
        }
    }

    /// Bytes `protect_rtcp` adds to a packet.
    pub fn rtcp_overhead(self) -> usize {
        self.rtp_overhead() + SRTCP_INDEX_LEN
    }

    /// Length of the DTLS keying material export (RFC 5764 §4.2): two keys and two salts.
    pub fn keying_material_len(self) -> usize {
        2 * (MASTER_KEY_LEN + self.master_salt_len())
    }
}

/// Why a packet could not be protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("packet too short")]
    TooShort,
    #[error("malformed RTP header")]
    BadHeader,
    #[error("authentication failed")]
    AuthFailed,
    #[error("replayed packet")]
    Replayed,
    #[error("packet older than the replay window")]
    TooOld,
    #[error("buffer has no room for the SRTP trailer")]
    BufferTooSmall,
    #[error("unencrypted SRTCP is not accepted")]
    Unencrypted,
    #[error("bad key material length")]
    BadKeyLength,
}

/// One direction of SRTP and SRTCP for one DTLS association.
pub struct SrtpContext {
    profile: SrtpProfile,
    rtp: Cipher,
    rtcp: Cipher,
    rtp_ssrcs: SsrcTable,
    rtcp_ssrcs: SsrcTable,
}

impl SrtpContext {
    pub fn new(
        profile: SrtpProfile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<Self, SrtpError> {
        if master_key.len() != MASTER_KEY_LEN || master_salt.len() != profile.master_salt_len() {
            return Err(SrtpError::BadKeyLength);
        }
        Ok(SrtpContext {
            profile,
            rtp: Cipher::derive(profile, master_key, master_salt, 0)?,
            rtcp: Cipher::derive(profile, master_key, master_salt, 3)?,
            rtp_ssrcs: SsrcTable::new(),
            rtcp_ssrcs: SsrcTable::new(),
        })
    }

    /// Splits DTLS-exported keying material (client key, server key, client salt, server salt)
    /// into `(outbound, inbound)` contexts for the side that `is_client` says.
    pub fn from_dtls_export(
        profile: SrtpProfile,
        material: &[u8],
        is_client: bool,
    ) -> Result<(SrtpContext, SrtpContext), SrtpError> {
        if material.len() != profile.keying_material_len() {
            return Err(SrtpError::BadKeyLength);
        }
        let salt_len = profile.master_salt_len();
        let (client_key, rest) = material.split_at(MASTER_KEY_LEN);
        let (server_key, rest) = rest.split_at(MASTER_KEY_LEN);
        let (client_salt, server_salt) = rest.split_at(salt_len);
        let client = SrtpContext::new(profile, client_key, client_salt)?;
        let server = SrtpContext::new(profile, server_key, server_salt)?;
        Ok(if is_client {
            (client, server)
        } else {
            (server, client)
        })
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Encrypts and authenticates the RTP packet in `buf[..len]`; the tag goes after it, so
    /// `buf` needs `profile().rtp_overhead()` spare bytes. Returns the protected length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let header = RtpHeader::parse(&buf[..len]).map_err(|_| SrtpError::BadHeader)?;
        if buf.len() < len + self.profile.rtp_overhead() {
            return Err(SrtpError::BufferTooSmall);
        }
        let state = self.rtp_ssrcs.get(header.ssrc);
        let index = outbound_rtp_index(state, header.sequence);
        let roc = (index >> 16) as u32;
        let hdr_len = header.header_len;
        match &self.rtp {
            Cipher::Gcm { key, salt } => {
                let nonce = salt.rtp_nonce(header.ssrc, roc, header.sequence);
                let (aad, rest) = buf.split_at_mut(hdr_len);
                let payload_len = len - hdr_len;
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*aad), &mut rest[..payload_len])
                    .map_err(|_| SrtpError::BufferTooSmall)?;
                rest[payload_len..payload_len + GCM_TAG_LEN].copy_from_slice(tag.as_ref());
                Ok(len + GCM_TAG_LEN)
            }
            Cipher::Cm { key, auth, salt } => {
                let iv = cm_iv(salt, header.ssrc, index);
                key.less_safe_encrypt(&mut buf[hdr_len..len], EncryptionContext::Iv128(iv.into()))
                    .map_err(|_| SrtpError::BufferTooSmall)?;
                let tag = hmac_tag(auth, &buf[..len], Some(roc));
                buf[len..len + HMAC_TAG_LEN].copy_from_slice(&tag.as_ref()[..HMAC_TAG_LEN]);
                Ok(len + HMAC_TAG_LEN)
            }
        }
    }

    /// Protects an RTP packet given as its header, already written at the start of `buf`
    /// (`header_len` bytes), and its payload, still elsewhere. With AEAD_AES_128_GCM the
    /// payload is encrypted straight from `payload` into `buf` after the header: one pass over
    /// it, where copying it in and then encrypting in place is two. With AES-CM it is copied
    /// in, then protected in place. `buf` needs room for header, payload and the SRTP
    /// overhead; returns the protected length.
    pub fn protect_rtp_from(
        &mut self,
        buf: &mut [u8],
        header_len: usize,
        payload: &[u8],
    ) -> Result<usize, SrtpError> {
        let header = RtpHeader::parse(&buf[..header_len]).map_err(|_| SrtpError::BadHeader)?;
        if header.header_len != header_len {
            return Err(SrtpError::BadHeader);
        }
        self.protect_rtp_written(buf, header_len, header.ssrc, header.sequence, payload)
    }

    /// [`Self::protect_rtp_from`] for a header its caller has just written, so knows: its
    /// SSRC and sequence number are given rather than parsed again (the per-player path of the
    /// fanout, where the header was parsed once on receipt).
    pub fn protect_rtp_written(
        &mut self,
        buf: &mut [u8],
        header_len: usize,
        ssrc: u32,
        sequence: u16,
        payload: &[u8],
    ) -> Result<usize, SrtpError> {
        let len = header_len + payload.len();
        if buf.len() < len + self.profile.rtp_overhead() {
            return Err(SrtpError::BufferTooSmall);
        }
        let Cipher::Gcm { key, salt } = &self.rtp else {
            buf[header_len..len].copy_from_slice(payload);
            return self.protect_rtp(buf, len);
        };
        let index = outbound_rtp_index(self.rtp_ssrcs.get(ssrc), sequence);
        let nonce = salt.rtp_nonce(ssrc, (index >> 16) as u32, sequence);
        let (aad, rest) = buf.split_at_mut(header_len);
        let (ciphertext, tail) = rest.split_at_mut(payload.len());
        key.seal_out_of_place_scatter(
            nonce,
            Aad::from(&*aad),
            payload,
            ciphertext,
            &[],
            &mut tail[..GCM_TAG_LEN],
        )
        .map_err(|_| SrtpError::BufferTooSmall)?;
        Ok(len + GCM_TAG_LEN)
    }

    /// Authenticates and decrypts the SRTP packet in `buf` in place; returns the RTP length.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        self.unprotect_rtp_parsed(buf).map(|(len, _)| len)
    }

    /// [`Self::unprotect_rtp`], also returning the RTP header it parsed (the header is not
    /// encrypted, so it is the plain packet's), so the packet path parses it once.
    pub fn unprotect_rtp_parsed(
        &mut self,
        buf: &mut [u8],
    ) -> Result<(usize, RtpHeader), SrtpError> {
        let overhead = self.profile.rtp_overhead();
        if buf.len() < overhead + crate::wire::rtp::FIXED_HEADER_LEN {
            return Err(SrtpError::TooShort);
        }
        let header =
            RtpHeader::parse(&buf[..buf.len() - overhead]).map_err(|_| SrtpError::BadHeader)?;
        let state = self.rtp_ssrcs.get(header.ssrc);
        let index = estimate_index(&state.replay, header.sequence);
        state.replay.check(index)?;
        let roc = (index >> 16) as u32;
        let hdr_len = header.header_len;
        let plain_len = buf.len() - overhead;
        match &self.rtp {
            Cipher::Gcm { key, salt } => {
                let nonce = salt.rtp_nonce(header.ssrc, roc, header.sequence);
                let (aad, rest) = buf.split_at_mut(hdr_len);
                key.open_in_place(nonce, Aad::from(&*aad), rest)
                    .map_err(|_| SrtpError::AuthFailed)?;
            }
            Cipher::Cm { key, auth, salt } => {
                let tag = hmac_tag(auth, &buf[..plain_len], Some(roc));
                if !constant_time_eq(&tag.as_ref()[..HMAC_TAG_LEN], &buf[plain_len..]) {
                    return Err(SrtpError::AuthFailed);
                }
                let iv = cm_iv(salt, header.ssrc, index);
                key.less_safe_encrypt(
                    &mut buf[hdr_len..plain_len],
                    EncryptionContext::Iv128(iv.into()),
                )
                .map_err(|_| SrtpError::AuthFailed)?;
            }
        }
        self.rtp_ssrcs.get(header.ssrc).replay.accept(index);
        Ok((plain_len, header))
    }

    /// Unprotects an SRTP packet (`rtcp` false) or an SRTCP packet (`rtcp` true) in place.
    pub fn unprotect(&mut self, buf: &mut [u8], rtcp: bool) -> Result<usize, SrtpError> {
        if rtcp {
            self.unprotect_rtcp(buf)
        } else {
            self.unprotect_rtp(buf)
        }
    }

    /// Encrypts and authenticates the compound RTCP packet in `buf[..len]`, appending the
    /// SRTCP index and tag (`profile().rtcp_overhead()` bytes). Returns the protected length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < 8 {
            return Err(SrtpError::TooShort);
        }
        if buf.len() < len + self.profile.rtcp_overhead() {
            return Err(SrtpError::BufferTooSmall);
        }
        let ssrc = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
        let state = self.rtcp_ssrcs.get(ssrc);
        // The first SRTCP index is 1, as libsrtp and webrtc-srtp number them.
        state.sent = (state.sent + 1) & 0x7fff_ffff;
        let index = state.sent as u32;
        let e_index = (SRTCP_E_BIT | index).to_be_bytes();
        match &self.rtcp {
            Cipher::Gcm { key, salt } => {
                let nonce = salt.rtcp_nonce(ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&e_index);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut buf[8..len])
                    .map_err(|_| SrtpError::BufferTooSmall)?;
                buf[len..len + GCM_TAG_LEN].copy_from_slice(tag.as_ref());
                buf[len + GCM_TAG_LEN..len + GCM_TAG_LEN + 4].copy_from_slice(&e_index);
                Ok(len + GCM_TAG_LEN + 4)
            }
            Cipher::Cm { key, auth, salt } => {
                let iv = cm_iv(salt, ssrc, index as u64);
                key.less_safe_encrypt(&mut buf[8..len], EncryptionContext::Iv128(iv.into()))
                    .map_err(|_| SrtpError::BufferTooSmall)?;
                buf[len..len + 4].copy_from_slice(&e_index);
                let tag = hmac_tag(auth, &buf[..len + 4], None);
                buf[len + 4..len + 4 + HMAC_TAG_LEN].copy_from_slice(&tag.as_ref()[..HMAC_TAG_LEN]);
                Ok(len + 4 + HMAC_TAG_LEN)
            }
        }
    }

    /// Authenticates and decrypts the SRTCP packet in `buf` in place; returns the RTCP length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let overhead = self.profile.rtcp_overhead();
        if buf.len() < 8 + overhead {
            return Err(SrtpError::TooShort);
        }
        let ssrc = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
        let plain_len = buf.len() - overhead;
        let index_at = match self.profile {
            SrtpProfile::AeadAes128Gcm => buf.len() - 4,
            SrtpProfile::Aes128CmHmacSha1_80 => buf.len() - HMAC_TAG_LEN - 4,
        };
        let e_index = u32::from_be_bytes(buf[index_at..index_at + 4].try_into().expect("4"));
        if e_index & SRTCP_E_BIT == 0 {
            return Err(SrtpError::Unencrypted);
        }
        let index = e_index & !SRTCP_E_BIT;
        self.rtcp_ssrcs.get(ssrc).replay.check(index as u64)?;
        match &self.rtcp {
            Cipher::Gcm { key, salt } => {
                let nonce = salt.rtcp_nonce(ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&e_index.to_be_bytes());
                key.open_in_place(nonce, Aad::from(aad), &mut buf[8..index_at])
                    .map_err(|_| SrtpError::AuthFailed)?;
            }
            Cipher::Cm { key, auth, salt } => {
                let tag = hmac_tag(auth, &buf[..index_at + 4], None);
                if !constant_time_eq(&tag.as_ref()[..HMAC_TAG_LEN], &buf[index_at + 4..]) {
                    return Err(SrtpError::AuthFailed);
                }
                let iv = cm_iv(salt, ssrc, index as u64);
                key.less_safe_encrypt(&mut buf[8..plain_len], EncryptionContext::Iv128(iv.into()))
                    .map_err(|_| SrtpError::AuthFailed)?;
            }
        }
        self.rtcp_ssrcs.get(ssrc).replay.accept(index as u64);
        Ok(plain_len)
    }
}

#[cfg(test)]
mod tests {
    use super::index::ReplayWindow;
    use super::*;

    fn rtp_packet(ssrc: u32, seq: u16, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1234u32.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend((0..payload_len).map(|i| i as u8));
        p
    }

    fn pair(profile: SrtpProfile) -> (SrtpContext, SrtpContext) {
        let key = [0x11u8; 16];
        let salt = vec![0x22u8; profile.master_salt_len()];
        (
            SrtpContext::new(profile, &key, &salt).unwrap(),
            SrtpContext::new(profile, &key, &salt).unwrap(),
        )
    }

    const PROFILES: [SrtpProfile; 2] =
        [SrtpProfile::AeadAes128Gcm, SrtpProfile::Aes128CmHmacSha1_80];

    #[test]
    fn rtp_round_trips_and_replays_are_refused() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let plain = rtp_packet(42, 100, 200);
            let mut buf = plain.clone();
            buf.resize(plain.len() + profile.rtp_overhead(), 0);
            let n = tx.protect_rtp(&mut buf, plain.len()).unwrap();
            assert_eq!(n, buf.len());
            assert_ne!(&buf[12..plain.len()], &plain[12..]);
            let mut replay = buf.clone();
            let m = rx.unprotect_rtp(&mut buf).unwrap();
            assert_eq!(&buf[..m], &plain[..]);
            assert_eq!(rx.unprotect_rtp(&mut replay), Err(SrtpError::Replayed));
        }
    }

    #[test]
    fn protecting_from_a_separate_payload_matches_protecting_in_place() {
        for profile in PROFILES {
            let (mut in_place, mut from) = pair(profile);
            for seq in [65535u16, 0, 1] {
                let plain = rtp_packet(42, seq, 300);
                let mut a = plain.clone();
                a.resize(plain.len() + profile.rtp_overhead(), 0);
                let n = in_place.protect_rtp(&mut a, plain.len()).unwrap();
                let mut b = vec![0u8; a.len()];
                b[..12].copy_from_slice(&plain[..12]);
                assert_eq!(from.protect_rtp_from(&mut b, 12, &plain[12..]), Ok(n));
                assert_eq!(a, b, "{profile:?} seq {seq}");
            }
            let plain = rtp_packet(42, 2, 300);
            let mut short = plain[..12].to_vec();
            short.resize(plain.len(), 0);
            assert_eq!(
                from.protect_rtp_from(&mut short, 12, &plain[12..]),
                Err(SrtpError::BufferTooSmall),
                "no room for the tag"
            );
            let mut garbage = vec![0u8; 400];
            assert_eq!(
                from.protect_rtp_from(&mut garbage, 12, &plain[12..]),
                Err(SrtpError::BadHeader)
            );
        }
    }

    #[test]
    fn tampered_rtp_fails_authentication() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let plain = rtp_packet(42, 1, 50);
            let mut buf = plain.clone();
            buf.resize(plain.len() + profile.rtp_overhead(), 0);
            tx.protect_rtp(&mut buf, plain.len()).unwrap();
            buf[20] ^= 0x01;
            assert_eq!(rx.unprotect_rtp(&mut buf), Err(SrtpError::AuthFailed));
        }
    }

    #[test]
    fn rollover_counter_follows_sequence_wrap() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            for seq in [65534u16, 65535, 0, 1, 65533, 2] {
                let plain = rtp_packet(7, seq, 20);
                let mut buf = plain.clone();
                buf.resize(plain.len() + profile.rtp_overhead(), 0);
                tx.protect_rtp(&mut buf, plain.len()).unwrap();
                let n = rx.unprotect_rtp(&mut buf).unwrap();
                assert_eq!(&buf[..n], &plain[..], "seq {seq}");
            }
        }
    }

    #[test]
    fn packets_older_than_the_window_are_refused() {
        let mut w = ReplayWindow::default();
        w.accept(1000);
        assert_eq!(w.check(1000), Err(SrtpError::Replayed));
        assert_eq!(w.check(1000 - 64), Err(SrtpError::TooOld));
        assert_eq!(w.check(999), Ok(()));
        w.accept(999);
        assert_eq!(w.check(999), Err(SrtpError::Replayed));
        w.accept(2000);
        assert_eq!(w.check(1999), Ok(()));
        assert_eq!(w.check(1000), Err(SrtpError::TooOld));
    }

    #[test]
    fn rtcp_round_trips_and_tamper_fails() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut plain = vec![0x81, 200, 0, 6];
            plain.extend_from_slice(&99u32.to_be_bytes());
            plain.extend_from_slice(&[9u8; 20]);
            let mut buf = plain.clone();
            buf.resize(plain.len() + profile.rtcp_overhead(), 0);
            tx.protect_rtcp(&mut buf, plain.len()).unwrap();
            let mut tampered = buf.clone();
            tampered[10] ^= 4;
            assert_eq!(rx.unprotect_rtcp(&mut tampered), Err(SrtpError::AuthFailed));
            let mut replay = buf.clone();
            let n = rx.unprotect_rtcp(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..]);
            assert_eq!(rx.unprotect_rtcp(&mut replay), Err(SrtpError::Replayed));
        }
    }

    #[test]
    fn short_and_garbage_input_is_an_error() {
        for profile in PROFILES {
            let (_, mut rx) = pair(profile);
            assert_eq!(rx.unprotect_rtp(&mut [0x80; 10]), Err(SrtpError::TooShort));
            let mut garbage = rtp_packet(1, 1, 40);
            assert_eq!(rx.unprotect_rtp(&mut garbage), Err(SrtpError::AuthFailed));
            assert_eq!(rx.unprotect_rtcp(&mut [0x80; 12]), Err(SrtpError::TooShort));
        }
    }
}
