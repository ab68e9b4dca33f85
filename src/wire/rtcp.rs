//! RTCP (RFC 3550 §6, RFC 4585, RFC 5104): walking a compound packet, spotting keyframe requests,
//! and building the few packets a relay sends (PLI, a sender report under another SSRC).

pub const SENDER_REPORT: u8 = 200;
pub const RECEIVER_REPORT: u8 = 201;
pub const SOURCE_DESCRIPTION: u8 = 202;
pub const GOODBYE: u8 = 203;
pub const TRANSPORT_FEEDBACK: u8 = 205;
pub const PAYLOAD_FEEDBACK: u8 = 206;
/// Payload-specific feedback formats: Picture Loss Indication and Full Intra Request.
pub const FMT_PLI: u8 = 1;
pub const FMT_FIR: u8 = 4;
/// The sender-info part of a sender report: header, SSRC, NTP, RTP timestamp, counts.
pub const SENDER_REPORT_LEN: usize = 28;

/// Why an RTCP packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("shorter than its header")]
    TooShort,
    #[error("version is not 2")]
    BadVersion,
    #[error("length field runs past the end")]
    BadLength,
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<'a> {
    pub packet_type: u8,
    /// Reception-report count, source count or feedback format, by packet type.
    pub count: u8,
    pub bytes: &'a [u8],
}

impl<'a> RtcpPacket<'a> {
    /// The SSRC of the sender of this packet, where the type has one.
    pub fn sender_ssrc(&self) -> Option<u32> {
        self.bytes
            .get(4..8)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    /// The media SSRC a feedback message is about.
    pub fn media_ssrc(&self) -> Option<u32> {
        self.bytes
            .get(8..12)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn is_keyframe_request(&self) -> bool {
        self.packet_type == PAYLOAD_FEEDBACK && (self.count == FMT_PLI || self.count == FMT_FIR)
    }
}

/// Iterates over the packets of a compound RTCP packet; stops after the first error.
pub struct CompoundIter<'a> {
    rest: &'a [u8],
}

pub fn compound(packet: &[u8]) -> CompoundIter<'_> {
    CompoundIter { rest: packet }
}

impl<'a> Iterator for CompoundIter<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        if rest.len() < 4 {
            self.rest = &[];
            return Some(Err(RtcpError::TooShort));
        }
        if rest[0] >> 6 != 2 {
            self.rest = &[];
            return Some(Err(RtcpError::BadVersion));
        }
        let len = 4 * (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1);
        if len > rest.len() {
            self.rest = &[];
            return Some(Err(RtcpError::BadLength));
        }
        self.rest = &rest[len..];
        Some(Ok(RtcpPacket {
            packet_type: rest[1],
            count: rest[0] & 0x1f,
            bytes: &rest[..len],
        }))
    }
}

/// Whether a compound packet asks for a keyframe (PLI or FIR) anywhere in it.
pub fn requests_keyframe(packet: &[u8]) -> bool {
    compound(packet)
        .map_while(Result::ok)
        .any(|p| p.is_keyframe_request())
}

/// Writes a Picture Loss Indication (RFC 4585 §6.3.1); returns its length (12).
pub fn write_pli(out: &mut [u8], sender_ssrc: u32, media_ssrc: u32) -> usize {
    out[0] = 0x80 | FMT_PLI;
    out[1] = PAYLOAD_FEEDBACK;
    out[2..4].copy_from_slice(&2u16.to_be_bytes());
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    out[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    12
}

/// Copies the sender info of a sender report under another SSRC, without report blocks (a
/// publisher's report blocks describe what it received, which means nothing to a player).
/// Returns `None` when `sr` is not a complete sender report.
pub fn write_sender_report(out: &mut [u8], sr: &RtcpPacket<'_>, ssrc: u32) -> Option<usize> {
    if sr.packet_type != SENDER_REPORT || sr.bytes.len() < SENDER_REPORT_LEN {
        return None;
    }
    out[..SENDER_REPORT_LEN].copy_from_slice(&sr.bytes[..SENDER_REPORT_LEN]);
    out[0] = 0x80; // no padding, no report blocks
    out[2..4].copy_from_slice(&((SENDER_REPORT_LEN / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    Some(SENDER_REPORT_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender_report(ssrc: u32) -> Vec<u8> {
        let mut sr = vec![0x81, SENDER_REPORT, 0, 12];
        sr.extend_from_slice(&ssrc.to_be_bytes());
        sr.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // NTP
        sr.extend_from_slice(&[0, 0, 0x10, 0]); // RTP ts
        sr.extend_from_slice(&[0, 0, 0, 10, 0, 0, 4, 0]); // counts
        sr.extend_from_slice(&[0u8; 24]); // one report block
        sr
    }

    #[test]
    fn walks_compound_and_finds_keyframe_requests() {
        let mut compound_packet = sender_report(0x1111);
        let mut pli = [0u8; 12];
        write_pli(&mut pli, 0x2222, 0x3333);
        compound_packet.extend_from_slice(&pli);
        let packets: Vec<_> = compound(&compound_packet)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].packet_type, SENDER_REPORT);
        assert_eq!(packets[0].sender_ssrc(), Some(0x1111));
        assert!(!packets[0].is_keyframe_request());
        assert!(packets[1].is_keyframe_request());
        assert_eq!(packets[1].sender_ssrc(), Some(0x2222));
        assert_eq!(packets[1].media_ssrc(), Some(0x3333));
    }

    #[test]
    fn sender_report_is_copied_under_new_ssrc_without_blocks() {
        let sr = sender_report(0x1111);
        let p = compound(&sr).next().unwrap().unwrap();
        let mut out = [0u8; 64];
        let n = write_sender_report(&mut out, &p, 0xabcd).unwrap();
        assert_eq!(n, 28);
        let q = compound(&out[..n]).next().unwrap().unwrap();
        assert_eq!(q.count, 0);
        assert_eq!(q.sender_ssrc(), Some(0xabcd));
        assert_eq!(&q.bytes[8..28], &sr[8..28]);
    }

    #[test]
    fn bad_lengths_end_iteration_with_an_error() {
        let mut sr = sender_report(1);
        sr[3] = 200;
        let mut it = compound(&sr);
        assert_eq!(it.next(), Some(Err(RtcpError::BadLength)));
        assert_eq!(it.next(), None);
        assert_eq!(
            compound(&[0x80, 200]).next(),
            Some(Err(RtcpError::TooShort))
        );
        assert_eq!(
            compound(&[0x00, 200, 0, 0]).next(),
            Some(Err(RtcpError::BadVersion))
        );
    }
}
