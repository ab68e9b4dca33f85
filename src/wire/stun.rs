//! STUN (RFC 8489) as ICE uses it (RFC 8445): Binding requests and responses with USERNAME,
//! MESSAGE-INTEGRITY (HMAC-SHA1, short-term credentials), FINGERPRINT (CRC-32) and the ICE
//! attributes. Parsing borrows the datagram; building writes into a caller's buffer.

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::hmac;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;

const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_ICE_CONTROLLED: u16 = 0x8029;
const ATTR_ICE_CONTROLLING: u16 = 0x802A;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const INTEGRITY_LEN: usize = 20;

/// Why a STUN message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("not a STUN message (top bits or magic cookie)")]
    NotStun,
    #[error("length field disagrees with the datagram")]
    BadLength,
    #[error("an attribute runs past the end of the message")]
    AttributeOverrun,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
    #[error("MESSAGE-INTEGRITY missing")]
    MissingIntegrity,
    #[error("MESSAGE-INTEGRITY does not match")]
    BadIntegrity,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// A parsed STUN message; attributes borrow the datagram.
#[derive(Debug, Clone)]
pub struct StunMessage<'a> {
    pub message_type: u16,
    pub transaction_id: [u8; 12],
    pub username: Option<&'a [u8]>,
    pub priority: Option<u32>,
    pub use_candidate: bool,
    pub ice_controlling: Option<u64>,
    pub ice_controlled: Option<u64>,
    pub xor_mapped_address: Option<SocketAddr>,
    integrity_offset: Option<usize>,
    raw: &'a [u8],
}

impl<'a> StunMessage<'a> {
    /// Parses a STUN message and checks its FINGERPRINT when present. Attributes after
    /// MESSAGE-INTEGRITY other than FINGERPRINT are ignored, as RFC 8489 requires.
    pub fn parse(raw: &'a [u8]) -> Result<Self, StunError> {
        if raw.len() < HEADER_LEN {
            return Err(StunError::TooShort);
        }
        let message_type = u16::from_be_bytes([raw[0], raw[1]]);
        let length = u16::from_be_bytes([raw[2], raw[3]]) as usize;
        let cookie = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        if message_type & 0xC000 != 0 || cookie != MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        if !length.is_multiple_of(4) || HEADER_LEN + length != raw.len() {
            return Err(StunError::BadLength);
        }
        let mut msg = StunMessage {
            message_type,
            transaction_id: raw[8..20].try_into().expect("slice of 12 bytes"),
            username: None,
            priority: None,
            use_candidate: false,
            ice_controlling: None,
            ice_controlled: None,
            xor_mapped_address: None,
            integrity_offset: None,
            raw,
        };
        let mut offset = HEADER_LEN;
        while offset < raw.len() {
            if offset + 4 > raw.len() {
                return Err(StunError::AttributeOverrun);
            }
            let attr_type = u16::from_be_bytes([raw[offset], raw[offset + 1]]);
            let attr_len = u16::from_be_bytes([raw[offset + 2], raw[offset + 3]]) as usize;
            let value_start = offset + 4;
            let value_end = value_start + attr_len;
            if value_end > raw.len() {
                return Err(StunError::AttributeOverrun);
            }
            let value = &raw[value_start..value_end];
            if attr_type == ATTR_FINGERPRINT {
                if attr_len != 4 {
                    return Err(StunError::BadFingerprint);
                }
                let expected = fingerprint(raw, offset);
                if value != expected.to_be_bytes() {
                    return Err(StunError::BadFingerprint);
                }
                break;
            }
            if msg.integrity_offset.is_none() {
                match attr_type {
                    ATTR_USERNAME => msg.username = Some(value),
                    ATTR_PRIORITY if attr_len == 4 => {
                        msg.priority = Some(u32::from_be_bytes(value.try_into().expect("4 bytes")))
                    }
                    ATTR_USE_CANDIDATE => msg.use_candidate = true,
                    ATTR_ICE_CONTROLLING if attr_len == 8 => {
                        msg.ice_controlling =
                            Some(u64::from_be_bytes(value.try_into().expect("8 bytes")))
                    }
                    ATTR_ICE_CONTROLLED if attr_len == 8 => {
                        msg.ice_controlled =
                            Some(u64::from_be_bytes(value.try_into().expect("8 bytes")))
                    }
                    ATTR_XOR_MAPPED_ADDRESS => {
                        msg.xor_mapped_address = decode_xor_address(value, &msg.transaction_id)
                    }
                    ATTR_MESSAGE_INTEGRITY if attr_len == INTEGRITY_LEN => {
                        msg.integrity_offset = Some(offset)
                    }
                    _ => {}
                }
            }
            offset = value_end + padding(attr_len);
        }
        Ok(msg)
    }

    pub fn is_binding_request(&self) -> bool {
        self.message_type == BINDING_REQUEST
    }

    pub fn is_binding_success(&self) -> bool {
        self.message_type == BINDING_SUCCESS
    }

    /// Checks MESSAGE-INTEGRITY with the short-term key (the ICE password).
    pub fn verify_integrity(&self, key: &hmac::Key) -> Result<(), StunError> {
        let offset = self.integrity_offset.ok_or(StunError::MissingIntegrity)?;
        let expected = integrity(self.raw, offset, key);
        let got = &self.raw[offset + 4..offset + 4 + INTEGRITY_LEN];
        // Constant-time comparison: the tag protects the ICE password.
        let diff = expected
            .as_ref()
            .iter()
            .zip(got)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(StunError::BadIntegrity)
        }
    }
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// HMAC-SHA1 over the message up to `attr_offset`, with the header's length field covering the
/// MESSAGE-INTEGRITY attribute that starts there (RFC 8489 §14.5).
fn integrity(raw: &[u8], attr_offset: usize, key: &hmac::Key) -> hmac::Tag {
    let covered_len = (attr_offset + 4 + INTEGRITY_LEN - HEADER_LEN) as u16;
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&raw[0..2]);
    ctx.update(&covered_len.to_be_bytes());
    ctx.update(&raw[4..attr_offset]);
    ctx.sign()
}

/// CRC-32 of the message up to `attr_offset` XOR 0x5354554e, with the length field covering the
/// FINGERPRINT attribute that starts there (RFC 8489 §14.7).
fn fingerprint(raw: &[u8], attr_offset: usize) -> u32 {
    let covered_len = (attr_offset + 8 - HEADER_LEN) as u16;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&raw[0..2]);
    hasher.update(&covered_len.to_be_bytes());
    hasher.update(&raw[4..attr_offset]);
    hasher.finalize() ^ FINGERPRINT_XOR
}

fn decode_xor_address(value: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (value[1], value.len()) {
        (1, 8) => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        (2, 20) => {
            let mut ip = [0u8; 16];
            for i in 0..16 {
                let mask = if i < 4 { cookie[i] } else { txid[i - 4] };
                ip[i] = value[4 + i] ^ mask;
            }
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

/// Writes a STUN message attribute by attribute into a caller's buffer.
pub struct StunWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> StunWriter<'b> {
    pub fn new(
        buf: &'b mut [u8],
        message_type: u16,
        transaction_id: &[u8; 12],
    ) -> Result<Self, StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::BufferTooSmall);
        }
        buf[0..2].copy_from_slice(&message_type.to_be_bytes());
        buf[2..4].copy_from_slice(&0u16.to_be_bytes());
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..20].copy_from_slice(transaction_id);
        Ok(StunWriter {
            buf,
            len: HEADER_LEN,
        })
    }

    fn attribute(&mut self, attr_type: u16, value: &[u8]) -> Result<&mut Self, StunError> {
        let padded = value.len() + padding(value.len());
        if self.len + 4 + padded > self.buf.len() {
            return Err(StunError::BufferTooSmall);
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&attr_type.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf[at + 4..at + 4 + value.len()].copy_from_slice(value);
        self.buf[at + 4 + value.len()..at + 4 + padded].fill(0);
        self.len += 4 + padded;
        self.set_length_field();
        Ok(self)
    }

    fn set_length_field(&mut self) {
        let body = (self.len - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&body.to_be_bytes());
    }

    pub fn username(&mut self, username: &[u8]) -> Result<&mut Self, StunError> {
        self.attribute(ATTR_USERNAME, username)
    }

    pub fn priority(&mut self, priority: u32) -> Result<&mut Self, StunError> {
        self.attribute(ATTR_PRIORITY, &priority.to_be_bytes())
    }

    pub fn use_candidate(&mut self) -> Result<&mut Self, StunError> {
        self.attribute(ATTR_USE_CANDIDATE, &[])
    }

    pub fn ice_controlling(&mut self, tie_breaker: u64) -> Result<&mut Self, StunError> {
        self.attribute(ATTR_ICE_CONTROLLING, &tie_breaker.to_be_bytes())
    }

    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> Result<&mut Self, StunError> {
        let txid: [u8; 12] = self.buf[8..20].try_into().expect("header written");
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut value = [0u8; 20];
        value[2..4].copy_from_slice(&port.to_be_bytes());
        let len = match addr.ip() {
            IpAddr::V4(ip) => {
                value[1] = 1;
                for (i, b) in ip.octets().iter().enumerate() {
                    value[4 + i] = b ^ cookie[i];
                }
                8
            }
            IpAddr::V6(ip) => {
                value[1] = 2;
                for (i, b) in ip.octets().iter().enumerate() {
                    let mask = if i < 4 { cookie[i] } else { txid[i - 4] };
                    value[4 + i] = b ^ mask;
                }
                20
            }
        };
        self.attribute(ATTR_XOR_MAPPED_ADDRESS, &value[..len])
    }

    /// Appends MESSAGE-INTEGRITY computed with `key` over everything written so far.
    pub fn message_integrity(&mut self, key: &hmac::Key) -> Result<&mut Self, StunError> {
        let at = self.len;
        self.attribute(ATTR_MESSAGE_INTEGRITY, &[0u8; INTEGRITY_LEN])?;
        let tag = integrity(self.buf, at, key);
        self.buf[at + 4..at + 4 + INTEGRITY_LEN].copy_from_slice(tag.as_ref());
        Ok(self)
    }

    /// Appends FINGERPRINT and returns the finished message's length.
    pub fn fingerprint(mut self) -> Result<usize, StunError> {
        let at = self.len;
        self.attribute(ATTR_FINGERPRINT, &[0u8; 4])?;
        let crc = fingerprint(self.buf, at);
        self.buf[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        Ok(self.len)
    }
}

/// The key for MESSAGE-INTEGRITY with short-term credentials: the password itself.
pub fn short_term_key(password: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes())
}

/// Writes the Binding success response an ICE-lite agent sends back.
pub fn write_binding_success(
    out: &mut [u8],
    transaction_id: &[u8; 12],
    mapped: SocketAddr,
    key: &hmac::Key,
) -> Result<usize, StunError> {
    let mut w = StunWriter::new(out, BINDING_SUCCESS, transaction_id)?;
    w.xor_mapped_address(mapped)?.message_integrity(key)?;
    w.fingerprint()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.1: sample request with short-term authentication.
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    #[test]
    fn rfc5769_sample_request_parses_and_verifies() {
        let msg = StunMessage::parse(&RFC5769_REQUEST).unwrap();
        assert!(msg.is_binding_request());
        assert_eq!(msg.username, Some(&b"evtj:h6vY"[..]));
        assert_eq!(msg.priority, Some(0x6e0001ff));
        assert_eq!(msg.ice_controlled, Some(0x932ff9b151263b36));
        let key = short_term_key("VOkJxbRl1RmTxUk/WvJxBt");
        msg.verify_integrity(&key).unwrap();
        let wrong = short_term_key("not-the-password");
        assert_eq!(msg.verify_integrity(&wrong), Err(StunError::BadIntegrity));
    }

    #[test]
    fn flipped_bit_fails_fingerprint() {
        let mut tampered = RFC5769_REQUEST;
        tampered[30] ^= 1;
        assert_eq!(
            StunMessage::parse(&tampered).unwrap_err(),
            StunError::BadFingerprint
        );
    }

    #[test]
    fn built_request_and_response_round_trip() {
        let key = short_term_key("server-password");
        let txid = [7u8; 12];
        let mut buf = [0u8; 256];
        let mut w = StunWriter::new(&mut buf, BINDING_REQUEST, &txid).unwrap();
        w.username(b"srv:cli")
            .unwrap()
            .priority(12345)
            .unwrap()
            .ice_controlling(99)
            .unwrap()
            .use_candidate()
            .unwrap()
            .message_integrity(&key)
            .unwrap();
        let len = w.fingerprint().unwrap();
        let req = StunMessage::parse(&buf[..len]).unwrap();
        assert!(req.use_candidate);
        assert_eq!(req.ice_controlling, Some(99));
        assert_eq!(req.username, Some(&b"srv:cli"[..]));
        req.verify_integrity(&key).unwrap();

        for mapped in ["127.0.0.1:5000", "[::1]:6000"] {
            let mapped: SocketAddr = mapped.parse().unwrap();
            let mut out = [0u8; 128];
            let n = write_binding_success(&mut out, &txid, mapped, &key).unwrap();
            let resp = StunMessage::parse(&out[..n]).unwrap();
            assert!(resp.is_binding_success());
            assert_eq!(resp.xor_mapped_address, Some(mapped));
            resp.verify_integrity(&key).unwrap();
        }
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(
            StunMessage::parse(&[0; 10]).unwrap_err(),
            StunError::TooShort
        );
        let mut bad_cookie = RFC5769_REQUEST;
        bad_cookie[4] = 0;
        assert_eq!(
            StunMessage::parse(&bad_cookie).unwrap_err(),
            StunError::NotStun
        );
        assert_eq!(
            StunMessage::parse(&RFC5769_REQUEST[..100]).unwrap_err(),
            StunError::BadLength
        );
        // An attribute that claims more bytes than remain.
        let mut overrun = [0u8; 24];
        overrun[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
        overrun[2..4].copy_from_slice(&4u16.to_be_bytes());
        overrun[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        overrun[20..22].copy_from_slice(&ATTR_USERNAME.to_be_bytes());
        overrun[22..24].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            StunMessage::parse(&overrun).unwrap_err(),
            StunError::AttributeOverrun
        );
    }
}
