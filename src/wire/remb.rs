//! Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb-03): a payload-specific
//! feedback message (PT 206, FMT 15, identifier "REMB") that caps what a sender may send, for
//! the SSRCs it lists. The bitrate is an 18-bit mantissa shifted by a 6-bit exponent.
//! Parsed in place and written into the caller's buffer, without allocation.

use super::rtcp::PAYLOAD_FEEDBACK;

/// Feedback message type of application-layer feedback, which REMB is.
pub const FMT_REMB: u8 = 15;
const IDENTIFIER: &[u8; 4] = b"REMB";
/// Header, sender SSRC, media SSRC (always 0), identifier, count + exponent + mantissa.
const FIXED_LEN: usize = 20;
const MANTISSA_BITS: u32 = 18;
const MAX_EXPONENT: u32 = 63;

/// Why a REMB was refused or could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RembError {
    #[error("shorter than its fixed part")]
    TooShort,
    #[error("version is not 2")]
    BadVersion,
    #[error("not application-layer feedback (PT 206, FMT 15)")]
    WrongType,
    #[error("application-layer feedback, but not REMB")]
    NotRemb,
    #[error("length field disagrees with the packet size or the SSRC count")]
    BadLength,
    #[error("more than 255 SSRCs")]
    TooManySsrcs,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// A REMB, borrowed from the packet it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remb<'a> {
    pub sender_ssrc: u32,
    /// Bits per second; saturates at `u64::MAX` for exponents that would overflow.
    pub bitrate_bps: u64,
    ssrcs: &'a [u8],
}

impl<'a> Remb<'a> {
    /// Parses one RTCP packet. The media SSRC "MUST be 0" but is not checked: it carries
    /// nothing, and refusing it would only drop a usable estimate.
    pub fn parse(packet: &'a [u8]) -> Result<Self, RembError> {
        if packet.len() < FIXED_LEN {
            return Err(RembError::TooShort);
        }
        if packet[0] >> 6 != 2 {
            return Err(RembError::BadVersion);
        }
        if packet[1] != PAYLOAD_FEEDBACK || packet[0] & 0x1f != FMT_REMB {
            return Err(RembError::WrongType);
        }
        if &packet[12..16] != IDENTIFIER {
            return Err(RembError::NotRemb);
        }
        let declared = 4 * (u16::from_be_bytes([packet[2], packet[3]]) as usize + 1);
        let ssrc_len = 4 * packet[16] as usize;
        if declared > packet.len() || FIXED_LEN + ssrc_len > declared {
            return Err(RembError::BadLength);
        }
        let exponent = u32::from(packet[17] >> 2);
        let mantissa = u64::from(u32::from_be_bytes([
            0,
            packet[17] & 0x03,
            packet[18],
            packet[19],
        ]));
        let bitrate_bps = u64::try_from(u128::from(mantissa) << exponent).unwrap_or(u64::MAX);
        Ok(Remb {
            sender_ssrc: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            bitrate_bps,
            ssrcs: &packet[FIXED_LEN..FIXED_LEN + ssrc_len],
        })
    }

    /// The media SSRCs the estimate applies to.
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.ssrcs
            .chunks_exact(4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Splits a bitrate into (exponent, mantissa), rounding down so that the cap written never
/// exceeds the cap meant.
pub fn encode_bitrate(bitrate_bps: u64) -> (u8, u32) {
    let significant = u64::BITS - bitrate_bps.leading_zeros();
    let exponent = significant.saturating_sub(MANTISSA_BITS).min(MAX_EXPONENT);
    (exponent as u8, (bitrate_bps >> exponent) as u32)
}

/// Writes a REMB capping `ssrcs` at `bitrate_bps`; returns its length (20 + 4 per SSRC).
pub fn write_remb(
    out: &mut [u8],
    sender_ssrc: u32,
    bitrate_bps: u64,
    ssrcs: &[u32],
) -> Result<usize, RembError> {
    if ssrcs.len() > u8::MAX as usize {
        return Err(RembError::TooManySsrcs);
    }
    let len = FIXED_LEN + 4 * ssrcs.len();
    if out.len() < len {
        return Err(RembError::BufferTooSmall);
    }
    let (exponent, mantissa) = encode_bitrate(bitrate_bps);
    out[0] = 0x80 | FMT_REMB;
    out[1] = PAYLOAD_FEEDBACK;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    out[8..12].fill(0);
    out[12..16].copy_from_slice(IDENTIFIER);
    out[16] = ssrcs.len() as u8;
    out[17] = (exponent << 2) | (mantissa >> 16) as u8;
    out[18..20].copy_from_slice(&(mantissa as u16).to_be_bytes());
    for (slot, ssrc) in out[FIXED_LEN..len].chunks_exact_mut(4).zip(ssrcs) {
        slot.copy_from_slice(&ssrc.to_be_bytes());
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcp::packet::Packet;
    use rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;

    #[test]
    fn bitrate_rounds_down_to_18_significant_bits() {
        assert_eq!(encode_bitrate(0), (0, 0));
        assert_eq!(encode_bitrate(262_143), (0, 262_143));
        assert_eq!(encode_bitrate(262_144), (1, 131_072));
        let (e, m) = encode_bitrate(1_234_567);
        assert_eq!((e, m), (3, 154_320));
        assert!(u64::from(m) << e <= 1_234_567 && u64::from(m + 1) << e > 1_234_567);
        assert_eq!(encode_bitrate(u64::MAX), (46, 0x3ffff));
    }

    #[test]
    fn round_trip() {
        let mut out = [0u8; 64];
        let n = write_remb(&mut out, 9, 500_000, &[1, 0xdead_beef]).unwrap();
        assert_eq!(n, 28);
        let r = Remb::parse(&out[..n]).unwrap();
        assert_eq!(r.sender_ssrc, 9);
        assert_eq!(r.bitrate_bps, 500_000 >> 1 << 1);
        assert_eq!(r.ssrcs().collect::<Vec<_>>(), vec![1, 0xdead_beef]);
        let n = write_remb(&mut out, 9, 0, &[]).unwrap();
        assert_eq!(Remb::parse(&out[..n]).unwrap().bitrate_bps, 0);
        assert_eq!(
            write_remb(&mut out[..27], 9, 1, &[1, 2]),
            Err(RembError::BufferTooSmall)
        );
        assert_eq!(
            write_remb(&mut [0u8; 2048], 9, 1, &[0; 256]),
            Err(RembError::TooManySsrcs)
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        let mut good = [0u8; 24];
        let n = write_remb(&mut good, 9, 1_000_000, &[5]).unwrap();
        assert_eq!(Remb::parse(&good[..19]), Err(RembError::TooShort));
        let mut p = good;
        p[0] = 0x0f;
        assert_eq!(Remb::parse(&p[..n]), Err(RembError::BadVersion));
        let mut p = good;
        p[0] = 0x81; // PLI
        assert_eq!(Remb::parse(&p[..n]), Err(RembError::WrongType));
        let mut p = good;
        p[12] = b'X';
        assert_eq!(Remb::parse(&p[..n]), Err(RembError::NotRemb));
        let mut p = good;
        p[16] = 2; // two SSRCs claimed, one present
        assert_eq!(Remb::parse(&p[..n]), Err(RembError::BadLength));
        let mut p = good;
        p[17] = 0xff; // exponent 63: saturates instead of overflowing
        assert_eq!(Remb::parse(&p[..n]).unwrap().bitrate_bps, u64::MAX);
    }

    #[test]
    fn the_rtcp_crate_reads_what_we_write() {
        // Values an f32 holds exactly, so the oracle's float arithmetic is not in question.
        // Not 0: the oracle decodes a zero mantissa as 2^23 (it adds IEEE 754's implicit bit).
        for bitrate in [1, 262_143, 500_000, 8_388_608, 1_000_000_000] {
            let mut out = [0u8; 64];
            let n = write_remb(&mut out, 0x1234, bitrate, &[7, 8, 9]).unwrap();
            let parsed = rtcp::packet::unmarshal(&mut &out[..n]).unwrap();
            let theirs = parsed[0]
                .as_any()
                .downcast_ref::<ReceiverEstimatedMaximumBitrate>()
                .unwrap();
            assert_eq!(theirs.sender_ssrc, 0x1234);
            assert_eq!(theirs.ssrcs, vec![7, 8, 9]);
            let (e, m) = encode_bitrate(bitrate);
            assert_eq!(theirs.bitrate as u64, u64::from(m) << e, "{bitrate}");
        }
    }

    #[test]
    fn we_read_what_the_rtcp_crate_writes() {
        for bitrate in [0.0f32, 1.0, 300_000.0, 2_500_000.0, 1.0e9] {
            let theirs = ReceiverEstimatedMaximumBitrate {
                sender_ssrc: 77,
                bitrate,
                ssrcs: vec![0xabc, 0xdef],
            };
            let boxed: Box<dyn Packet + Send + Sync> = Box::new(theirs);
            let bytes = rtcp::packet::marshal(&[boxed]).unwrap();
            let ours = Remb::parse(&bytes).unwrap();
            assert_eq!(ours.sender_ssrc, 77);
            assert_eq!(ours.ssrcs().collect::<Vec<_>>(), vec![0xabc, 0xdef]);
            let (e, m) = encode_bitrate(bitrate as u64);
            assert_eq!(ours.bitrate_bps, u64::from(m) << e, "{bitrate}");
        }
    }
}
