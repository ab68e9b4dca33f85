//! RTP retransmission payload format (RFC 4588 §4): a retransmission goes out on its own SSRC,
//! payload type and sequence numbers, and its payload starts with the original sequence number
//! (OSN), then the original payload. The RTP header is otherwise the original's: timestamp,
//! marker, CSRCs and header extensions carry over unchanged.
//!
//! Padding (RFC 4588 §4: "padding MUST be removed" from the original before it is wrapped): a
//! built RTX packet carries none, and a restored original carries none either. Chrome sends
//! padding-only RTX packets (no OSN) to probe bandwidth; restoring one is an error the caller
//! counts and drops.

use std::ops::Range;

use super::rtp::{RtpError, RtpHeader};

/// The original sequence number in front of the original payload.
const OSN_LEN: usize = 2;
const PADDING_BIT: u8 = 0x20;

/// Why an RTX packet could not be built or restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtxError {
    #[error("malformed RTP: {0}")]
    Rtp(#[from] RtpError),
    #[error("padding length runs past the payload")]
    BadPadding,
    #[error("no original sequence number (a padding-only probe)")]
    NoOriginalSequence,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// The retransmission stream's identity for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxStream {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
}

/// The original stream an RTX stream repairs (from the `apt=` of the RTX payload type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalStream {
    pub ssrc: u32,
    pub payload_type: u8,
}

/// Where the payload of an RTP packet is, without its padding.
pub fn payload_range(packet: &[u8], header: &RtpHeader) -> Result<Range<usize>, RtxError> {
    let mut end = packet.len();
    if packet[0] & PADDING_BIT != 0 {
        let padding = *packet.last().ok_or(RtxError::BadPadding)? as usize;
        if padding == 0 || padding > end - header.header_len {
            return Err(RtxError::BadPadding);
        }
        end -= padding;
    }
    Ok(header.header_len..end)
}

/// Builds the RTX packet for `original` into `out`; returns its length.
pub fn build_rtx(original: &[u8], rtx: &RtxStream, out: &mut [u8]) -> Result<usize, RtxError> {
    let header = RtpHeader::parse(original)?;
    let payload = payload_range(original, &header)?;
    let len = header.header_len + OSN_LEN + payload.len();
    if out.len() < len {
        return Err(RtxError::BufferTooSmall);
    }
    let h = header.header_len;
    out[..h].copy_from_slice(&original[..h]);
    out[0] &= !PADDING_BIT;
    out[1] = (original[1] & 0x80) | (rtx.payload_type & 0x7f);
    out[2..4].copy_from_slice(&rtx.sequence.to_be_bytes());
    out[8..12].copy_from_slice(&rtx.ssrc.to_be_bytes());
    out[h..h + OSN_LEN].copy_from_slice(&header.sequence.to_be_bytes());
    out[h + OSN_LEN..len].copy_from_slice(&original[payload]);
    Ok(len)
}

/// The original sequence number an RTX packet repairs, without restoring it: what the NACK
/// scheduler needs to know which gap closed.
pub fn original_sequence(rtx_packet: &[u8]) -> Result<u16, RtxError> {
    let header = RtpHeader::parse(rtx_packet)?;
    let payload = payload_range(rtx_packet, &header)?;
    if payload.len() < OSN_LEN {
        return Err(RtxError::NoOriginalSequence);
    }
    Ok(u16::from_be_bytes([
        rtx_packet[payload.start],
        rtx_packet[payload.start + 1],
    ]))
}

/// Restores the original packet into `out`; returns its length.
pub fn restore_into(
    rtx_packet: &[u8],
    original: &OriginalStream,
    out: &mut [u8],
) -> Result<usize, RtxError> {
    let (header_len, payload) = locate(rtx_packet)?;
    let len = header_len + payload.len() - OSN_LEN;
    if out.len() < len {
        return Err(RtxError::BufferTooSmall);
    }
    out[..header_len].copy_from_slice(&rtx_packet[..header_len]);
    let osn = [rtx_packet[payload.start], rtx_packet[payload.start + 1]];
    out[header_len..len].copy_from_slice(&rtx_packet[payload.start + OSN_LEN..payload.end]);
    fix_header(&mut out[..header_len], original, osn);
    Ok(len)
}

/// Restores the original packet inside the RTX packet's own buffer, moving the header (a few
/// dozen bytes) over the OSN rather than the payload (a thousand) back by two. Returns where
/// the original packet now lies in `packet`.
pub fn restore_in_place(
    packet: &mut [u8],
    original: &OriginalStream,
) -> Result<Range<usize>, RtxError> {
    let (header_len, payload) = locate(packet)?;
    let osn = [packet[payload.start], packet[payload.start + 1]];
    packet.copy_within(..header_len, OSN_LEN);
    fix_header(&mut packet[OSN_LEN..OSN_LEN + header_len], original, osn);
    Ok(OSN_LEN..payload.end)
}

/// Header length and payload range (OSN included, padding excluded) of an RTX packet.
fn locate(rtx_packet: &[u8]) -> Result<(usize, Range<usize>), RtxError> {
    let header = RtpHeader::parse(rtx_packet)?;
    let payload = payload_range(rtx_packet, &header)?;
    if payload.len() < OSN_LEN {
        return Err(RtxError::NoOriginalSequence);
    }
    Ok((header.header_len, payload))
}

fn fix_header(header: &mut [u8], original: &OriginalStream, osn: [u8; 2]) {
    header[0] &= !PADDING_BIT;
    header[1] = (header[1] & 0x80) | (original.payload_type & 0x7f);
    header[2..4].copy_from_slice(&osn);
    header[8..12].copy_from_slice(&original.ssrc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// V=2, P as asked, X=1, CC=2; M=1, PT 96; seq 0xfffe; ts; SSRC 0xaaaa; two CSRCs; a
    /// one-byte extension block; payload; padding.
    fn original(padding: usize) -> Vec<u8> {
        let mut p = vec![0x92, 0xe0, 0xff, 0xfe, 0, 0, 0x30, 0x39, 0, 0, 0xaa, 0xaa];
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x31, 0x12, 0x34, 0]);
        p.extend_from_slice(b"media payload");
        if padding > 0 {
            p[0] |= PADDING_BIT;
            p.extend(std::iter::repeat_n(0, padding - 1));
            p.push(padding as u8);
        }
        p
    }

    const RTX: RtxStream = RtxStream {
        ssrc: 0xbbbb,
        payload_type: 97,
        sequence: 5,
    };
    const ORIGINAL: OriginalStream = OriginalStream {
        ssrc: 0xaaaa,
        payload_type: 96,
    };

    #[test]
    fn rtx_carries_osn_then_payload_and_keeps_csrcs_extensions_marker_timestamp() {
        let o = original(0);
        let mut out = [0u8; 128];
        let n = build_rtx(&o, &RTX, &mut out).unwrap();
        let h = RtpHeader::parse(&out[..n]).unwrap();
        let oh = RtpHeader::parse(&o).unwrap();
        assert_eq!((h.ssrc, h.payload_type, h.sequence), (0xbbbb, 97, 5));
        assert_eq!((h.marker, h.timestamp), (true, oh.timestamp));
        assert_eq!(h.header_len, oh.header_len);
        assert_eq!(
            &out[12..h.header_len],
            &o[12..oh.header_len],
            "CSRCs and extensions"
        );
        assert_eq!(&out[h.header_len..h.header_len + 2], &[0xff, 0xfe]);
        assert_eq!(&out[h.header_len + 2..n], b"media payload");
        assert_eq!(original_sequence(&out[..n]), Ok(0xfffe));
    }

    #[test]
    fn round_trip_restores_the_original_without_padding() {
        for padding in [0, 3] {
            let o = original(padding);
            let mut rtx = [0u8; 128];
            let n = build_rtx(&o, &RTX, &mut rtx).unwrap();
            assert_eq!(
                rtx[0] & PADDING_BIT,
                0,
                "padding is stripped before wrapping"
            );
            let mut restored = [0u8; 128];
            let m = restore_into(&rtx[..n], &ORIGINAL, &mut restored).unwrap();
            assert_eq!(&restored[..m], &original(0)[..]);

            let mut in_place = rtx[..n].to_vec();
            let range = restore_in_place(&mut in_place, &ORIGINAL).unwrap();
            assert_eq!(&in_place[range], &original(0)[..]);
        }
    }

    #[test]
    fn a_padded_rtx_packet_restores_and_a_padding_only_one_is_refused() {
        let mut rtx = [0u8; 128];
        let n = build_rtx(&original(0), &RTX, &mut rtx).unwrap();
        let mut padded = rtx[..n].to_vec();
        padded[0] |= PADDING_BIT;
        padded.extend_from_slice(&[0, 0, 0, 4]);
        let mut restored = [0u8; 128];
        let m = restore_into(&padded, &ORIGINAL, &mut restored).unwrap();
        assert_eq!(&restored[..m], &original(0)[..]);

        // Chrome's bandwidth probes: RTX packets whose payload is only padding.
        let h = RtpHeader::parse(&rtx[..n]).unwrap().header_len;
        let mut probe = rtx[..h].to_vec();
        probe[0] |= PADDING_BIT;
        probe.extend_from_slice(&[0; 199]);
        probe.push(200); // 200 bytes of padding and nothing else
        let mut zero_count = probe.clone();
        *zero_count.last_mut().unwrap() = 0;
        assert_eq!(original_sequence(&zero_count), Err(RtxError::BadPadding));
        assert_eq!(original_sequence(&probe), Err(RtxError::NoOriginalSequence));
        assert_eq!(
            restore_into(&probe, &ORIGINAL, &mut restored),
            Err(RtxError::NoOriginalSequence)
        );
        assert_eq!(
            restore_in_place(&mut probe, &ORIGINAL),
            Err(RtxError::NoOriginalSequence)
        );
    }

    #[test]
    fn bad_input_and_small_buffers_are_errors() {
        let o = original(0);
        let mut small = [0u8; 20];
        assert_eq!(
            build_rtx(&o, &RTX, &mut small),
            Err(RtxError::BufferTooSmall)
        );
        assert_eq!(
            build_rtx(&o[..5], &RTX, &mut small),
            Err(RtxError::Rtp(RtpError::TooShort))
        );
        let mut rtx = [0u8; 128];
        let n = build_rtx(&o, &RTX, &mut rtx).unwrap();
        assert_eq!(
            restore_into(&rtx[..n], &ORIGINAL, &mut small),
            Err(RtxError::BufferTooSmall)
        );
        let mut bad = original(0);
        bad[0] |= PADDING_BIT;
        *bad.last_mut().unwrap() = 200; // more padding than payload
        assert_eq!(build_rtx(&bad, &RTX, &mut rtx), Err(RtxError::BadPadding));
    }
}
