//! A player's media state, sans-IO: per kind, the track it negotiated (its SSRC, payload type
//! and header-extension ids) and the continuous sequence numbers it sees; and what its RTCP
//! asks for. The worker hands it the publisher's parsed packet and an egress buffer, and
//! protects and sends what it writes.

use crate::media::MediaKind;
use crate::session::sequence::SequenceMapper;
use crate::wire::rtcp;
use crate::wire::rtp::{ExtensionIdMap, Rewrite, RtpHeader, rewrite_header_into};

/// One negotiated track of a player.
pub struct PlayerTrack {
    publisher_payload_type: u8,
    payload_type: u8,
    ssrc: u32,
    extension_ids: ExtensionIdMap,
    sequence: SequenceMapper,
}

/// A packet header written for the player: its length (the payload goes after it) and the
/// SSRC and sequence number it carries, which SRTP needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub header_len: usize,
    pub ssrc: u32,
    pub sequence: u16,
}

impl PlayerTrack {
    /// A track that plays the publisher's `publisher_payload_type` as `payload_type` under
    /// `ssrc`, numbering packets from `first_sequence`.
    pub fn new(
        publisher_payload_type: u8,
        payload_type: u8,
        ssrc: u32,
        extension_ids: ExtensionIdMap,
        first_sequence: u16,
    ) -> PlayerTrack {
        PlayerTrack {
            publisher_payload_type,
            payload_type,
            ssrc,
            extension_ids,
            sequence: SequenceMapper::new(first_sequence),
        }
    }

    /// Writes the player's header for the publisher's RTP `packet` (parsed as `header`) into
    /// `out`; the payload is not copied. `None` for a payload type this track does not play
    /// (the player gets nothing) or no room.
    pub fn rewrite_rtp(
        &mut self,
        packet: &[u8],
        header: &RtpHeader,
        out: &mut [u8],
    ) -> Option<Rewritten> {
        if header.payload_type != self.publisher_payload_type {
            return None;
        }
        let sequence = self.sequence.map(header.ssrc, header.sequence);
        let rewrite = Rewrite {
            ssrc: self.ssrc,
            payload_type: self.payload_type,
            sequence,
            extension_ids: &self.extension_ids,
        };
        let header_len = rewrite_header_into(packet, header, &rewrite, out).ok()?;
        Some(Rewritten {
            header_len,
            ssrc: self.ssrc,
            sequence,
        })
    }

    /// Writes the first sender report of the publisher's compound RTCP `packet` into `out`
    /// under this track's SSRC; returns its length.
    pub fn rewrite_sender_report(&self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        let report = rtcp::compound(packet).next()?.ok()?;
        rtcp::write_sender_report(out, &report, self.ssrc)
    }
}

/// A player: its tracks by kind.
pub struct Player {
    tracks: [Option<Box<PlayerTrack>>; 2],
}

impl Player {
    pub fn new(tracks: impl IntoIterator<Item = (MediaKind, PlayerTrack)>) -> Player {
        let mut by_kind: [Option<Box<PlayerTrack>>; 2] = [None, None];
        for (kind, track) in tracks {
            by_kind[kind.index()] = Some(Box::new(track));
        }
        Player { tracks: by_kind }
    }

    /// The track that plays `kind`, if the player negotiated one.
    #[inline]
    pub fn track(&mut self, kind: MediaKind) -> Option<&mut PlayerTrack> {
        self.tracks[kind.index()].as_deref_mut()
    }

    /// The player's RTCP arrived: whether it asks the publisher for a keyframe (PLI or FIR).
    /// Its other RTCP (receiver reports) ends here.
    pub fn wants_keyframe(rtcp: &[u8]) -> bool {
        rtcp::requests_keyframe(rtcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(payload_type: u8, ssrc: u32, sequence: u16) -> Vec<u8> {
        let mut p = vec![0x80, payload_type];
        p.extend_from_slice(&sequence.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 9]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(b"payload");
        p
    }

    #[test]
    fn the_player_sees_its_own_ssrc_payload_type_and_continuous_sequence() {
        let mut track = PlayerTrack::new(96, 102, 0x1234, ExtensionIdMap::default(), 500);
        let mut out = [0u8; 64];
        let mut sequences = Vec::new();
        // The publisher restarts with a new SSRC: the player's numbering carries on.
        for (ssrc, seq) in [(1, 10), (1, 11), (2, 7000), (2, 7001)] {
            let packet = rtp(96, ssrc, seq);
            let header = RtpHeader::parse(&packet).unwrap();
            let written = track.rewrite_rtp(&packet, &header, &mut out).unwrap();
            assert_eq!(written.header_len, 12);
            assert_eq!(written.ssrc, 0x1234);
            assert_eq!(out[1] & 0x7f, 102);
            assert_eq!(&out[8..12], &0x1234u32.to_be_bytes());
            assert_eq!(u16::from_be_bytes([out[2], out[3]]), written.sequence);
            sequences.push(written.sequence);
        }
        assert_eq!(sequences, vec![500, 501, 502, 503]);
    }

    #[test]
    fn another_payload_type_is_not_played() {
        let mut track = PlayerTrack::new(96, 102, 1, ExtensionIdMap::default(), 0);
        let packet = rtp(97, 1, 1);
        let header = RtpHeader::parse(&packet).unwrap();
        assert_eq!(track.rewrite_rtp(&packet, &header, &mut [0u8; 64]), None);
    }

    #[test]
    fn keyframe_requests_are_recognised() {
        let mut pli = [0u8; 12];
        rtcp::write_pli(&mut pli, 1, 2);
        assert!(Player::wants_keyframe(&pli));
        let receiver_report = [0x80, rtcp::RECEIVER_REPORT, 0, 1, 0, 0, 0, 1];
        assert!(!Player::wants_keyframe(&receiver_report));
    }
}
