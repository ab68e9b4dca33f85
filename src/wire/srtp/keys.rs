//! SRTP's keys and ciphers: session keys derived from the DTLS export (RFC 3711 §4.3), the
//! GCM nonce (RFC 7714) and the AES-CM IV and HMAC tag (RFC 3711).

use aws_lc_rs::aead::{self, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;

use super::{HMAC_KEY_LEN, MASTER_KEY_LEN, SrtpError, SrtpProfile};

// One per session and direction, kept inline: boxing the larger variant would add a pointer
// chase per packet to save memory that does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Cipher {
    Gcm {
        key: LessSafeKey,
        salt: GcmSalt,
    },
    Cm {
        key: EncryptingKey,
        auth: hmac::Key,
        salt: [u8; 14],
    },
}

impl Cipher {
    /// Derives session keys (RFC 3711 §4.3) for RTP (labels 0, 1, 2) or RTCP (3, 4, 5).
    pub(super) fn derive(
        profile: SrtpProfile,
        master_key: &[u8],
        master_salt: &[u8],
        first_label: u8,
    ) -> Result<Self, SrtpError> {
        let mut session_key = [0u8; MASTER_KEY_LEN];
        kdf(master_key, master_salt, first_label, &mut session_key)?;
        match profile {
            SrtpProfile::AeadAes128Gcm => {
                let mut salt = [0u8; 12];
                kdf(master_key, master_salt, first_label + 2, &mut salt)?;
                let key = UnboundKey::new(&aead::AES_128_GCM, &session_key)
                    .map_err(|_| SrtpError::BadKeyLength)?;
                Ok(Cipher::Gcm {
                    key: LessSafeKey::new(key),
                    salt: GcmSalt::new(&salt),
                })
            }
            SrtpProfile::Aes128CmHmacSha1_80 => {
                let mut auth = [0u8; HMAC_KEY_LEN];
                kdf(master_key, master_salt, first_label + 1, &mut auth)?;
                let mut salt = [0u8; 14];
                kdf(master_key, master_salt, first_label + 2, &mut salt)?;
                let key = UnboundCipherKey::new(&AES_128, &session_key)
                    .and_then(EncryptingKey::ctr)
                    .map_err(|_| SrtpError::BadKeyLength)?;
                Ok(Cipher::Cm {
                    key,
                    auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
                    salt,
                })
            }
        }
    }
}

/// The SRTP key derivation function with a key derivation rate of 0: AES-CM keystream over
/// `label` XORed into byte 7 of the (left-aligned) master salt.
pub(super) fn kdf(
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    let key = UnboundCipherKey::new(&AES_128, master_key)
        .and_then(EncryptingKey::ctr)
        .map_err(|_| SrtpError::BadKeyLength)?;
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(iv.into()))
        .map_err(|_| SrtpError::BadKeyLength)?;
    Ok(())
}

/// The AEAD_AES_128_GCM session salt as two big-endian words, taken apart once per session, so
/// that a packet's nonce is two XORs and two word stores. (Built from the salt's bytes per
/// packet, the compiler wrote the nonce with eight one-byte stores, which aws-lc's 8-byte read
/// of it cannot be forwarded from.)
#[derive(Clone, Copy)]
pub(super) struct GcmSalt {
    high: u64,
    low: u32,
}

impl GcmSalt {
    pub(super) fn new(salt: &[u8; 12]) -> Self {
        GcmSalt {
            high: u64::from_be_bytes(salt[..8].try_into().expect("8 bytes")),
            low: u32::from_be_bytes(salt[8..].try_into().expect("4 bytes")),
        }
    }

    /// RFC 7714 §8.1: salt XOR (0x0000 ‖ SSRC ‖ ROC ‖ SEQ).
    #[inline]
    pub(super) fn rtp_nonce(&self, ssrc: u32, roc: u32, sequence: u16) -> Nonce {
        let high = self.high ^ ((ssrc as u64) << 16 | (roc >> 16) as u64);
        let low = self.low ^ ((roc << 16) | sequence as u32);
        Self::nonce(high, low)
    }

    /// RFC 7714 §9.1: salt XOR (0x0000 ‖ SSRC ‖ 0x0000 ‖ SRTCP index).
    #[inline]
    pub(super) fn rtcp_nonce(&self, ssrc: u32, index: u32) -> Nonce {
        Self::nonce(self.high ^ ((ssrc as u64) << 16), self.low ^ index)
    }

    #[inline]
    fn nonce(high: u64, low: u32) -> Nonce {
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&high.to_be_bytes());
        iv[8..].copy_from_slice(&low.to_be_bytes());
        Nonce::assume_unique_for_key(iv)
    }
}

/// AES-CM IV: (salt · 2^16) XOR (SSRC · 2^64) XOR (index · 2^16).
#[inline]
pub(super) fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..8]) {
        *b ^= s;
    }
    iv
}

pub(super) fn hmac_tag(key: &hmac::Key, data: &[u8], roc: Option<u32>) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(data);
    if let Some(roc) = roc {
        ctx.update(&roc.to_be_bytes());
    }
    ctx.sign()
}

#[inline]
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
