//! A publisher's media state, sans-IO: which payload types carry which kind, the SSRC seen
//! for each kind, which of its RTCP the players need, and when it is asked for a keyframe.
//! The worker feeds it parsed packets and the time, and sends what it says to send.

use std::time::Instant;

use crate::media::MediaKind;
use crate::session::keyframe::{DEFAULT_KEYFRAME_INTERVAL, KeyframeThrottle};
use crate::session::publisher_link::{LinkSettings, PublisherLink};
use crate::wire::rtcp::{self, SENDER_REPORT};
use crate::wire::rtp::RtpHeader;

/// A publisher's sender reports, one per kind at most, that its players get under their SSRCs.
pub type SenderReports<'a> = [Option<(MediaKind, &'a [u8])>; 2];

pub struct Publisher {
    kind_by_payload_type: [Option<MediaKind>; 128],
    ssrc_by_kind: [Option<u32>; 2],
    keyframes: KeyframeThrottle,
    /// The sender SSRC of the relay's RTCP towards this publisher.
    rtcp_ssrc: u32,
    /// Feedback and loss repair on the path from the publisher.
    pub link: PublisherLink,
}

impl Publisher {
    /// A publisher that negotiated `payload_types`; the relay's RTCP to it goes out under
    /// `rtcp_ssrc`.
    pub fn new(payload_types: &[(u8, MediaKind)], link: LinkSettings, rtcp_ssrc: u32) -> Publisher {
        let mut kind_by_payload_type = [None; 128];
        for &(pt, kind) in payload_types {
            kind_by_payload_type[(pt & 0x7f) as usize] = Some(kind);
        }
        Publisher {
            kind_by_payload_type,
            ssrc_by_kind: [None; 2],
            keyframes: KeyframeThrottle::new(DEFAULT_KEYFRAME_INTERVAL),
            rtcp_ssrc,
            link: PublisherLink::new(link),
        }
    }

    /// The SSRCs seen for audio and video, by [`MediaKind::index`].
    pub fn ssrcs(&self) -> [Option<u32>; 2] {
        self.ssrc_by_kind
    }

    /// The sender SSRC of the relay's RTCP towards this publisher.
    pub fn rtcp_ssrc(&self) -> u32 {
        self.rtcp_ssrc
    }

    /// An RTP packet arrived: the kind it carries, or `None` for a payload type the publisher
    /// did not negotiate (the packet is dropped). Remembers its SSRC for RTCP.
    #[inline]
    pub fn on_rtp(&mut self, header: &RtpHeader) -> Option<MediaKind> {
        let kind = self.kind_by_payload_type[(header.payload_type & 0x7f) as usize]?;
        self.ssrc_by_kind[kind.index()] = Some(header.ssrc);
        Some(kind)
    }

    /// An RTCP compound packet arrived: the sender reports in it for the SSRCs the publisher
    /// sends media with (the last one per kind). Receiver reports and the rest are consumed.
    pub fn sender_reports<'a>(&self, packet: &'a [u8]) -> SenderReports<'a> {
        let mut reports: SenderReports<'a> = [None, None];
        for p in rtcp::compound(packet).map_while(Result::ok) {
            if p.packet_type != SENDER_REPORT {
                continue;
            }
            let kind = [MediaKind::Audio, MediaKind::Video]
                .into_iter()
                .find(|k| self.ssrc_by_kind[k.index()] == p.sender_ssrc());
            if let Some(kind) = kind {
                reports[kind.index()] = Some((kind, p.bytes));
            }
        }
        reports
    }

    /// A player asked for a keyframe: whether to send a PLI now (at most one per interval; a
    /// request inside it is kept for [`Publisher::poll`]).
    pub fn keyframe_requested(&mut self, now: Instant) -> bool {
        self.keyframes.request(now)
    }

    /// A timer tick: whether a deferred keyframe request is due now.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.keyframes.poll(now)
    }

    /// Whether the publisher's video SSRC is known: a PLI can name it.
    pub fn knows_video(&self) -> bool {
        self.ssrc_by_kind[MediaKind::Video.index()].is_some()
    }

    /// Writes a PLI for the publisher's video into `out`; `None` before its video SSRC is
    /// known (there is nothing to ask for yet).
    pub fn write_pli(&self, out: &mut [u8]) -> Option<usize> {
        let media_ssrc = self.ssrc_by_kind[MediaKind::Video.index()]?;
        Some(rtcp::write_pli(out, self.rtcp_ssrc, media_ssrc))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rtp(payload_type: u8, ssrc: u32) -> RtpHeader {
        let mut p = vec![0x80, payload_type, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&ssrc.to_be_bytes());
        RtpHeader::parse(&p).unwrap()
    }

    fn sender_report(ssrc: u32) -> Vec<u8> {
        let mut sr = vec![0x80, SENDER_REPORT, 0, 6];
        sr.extend_from_slice(&ssrc.to_be_bytes());
        sr.extend_from_slice(&[0u8; 20]);
        sr
    }

    #[test]
    fn media_is_classified_by_negotiated_payload_type() {
        let mut p = Publisher::new(
            &[(111, MediaKind::Audio), (96, MediaKind::Video)],
            LinkSettings::default(),
            7,
        );
        assert_eq!(p.on_rtp(&rtp(96, 0xaa)), Some(MediaKind::Video));
        assert_eq!(p.on_rtp(&rtp(111, 0xbb)), Some(MediaKind::Audio));
        assert_eq!(p.on_rtp(&rtp(100, 0xcc)), None);
    }

    #[test]
    fn only_sender_reports_for_known_ssrcs_reach_players() {
        let mut p = Publisher::new(&[(96, MediaKind::Video)], LinkSettings::default(), 7);
        let mut compound = sender_report(0xaa);
        compound.extend(sender_report(0xdd));
        assert_eq!(p.sender_reports(&compound), [None, None]);
        p.on_rtp(&rtp(96, 0xaa));
        let reports = p.sender_reports(&compound);
        assert_eq!(reports[0], None);
        assert_eq!(reports[1], Some((MediaKind::Video, &compound[..28])));
    }

    #[test]
    fn keyframe_requests_are_throttled_and_a_deferred_one_follows() {
        let t0 = Instant::now();
        let mut p = Publisher::new(&[(96, MediaKind::Video)], LinkSettings::default(), 7);
        let mut pli = [0u8; 12];
        assert_eq!(p.write_pli(&mut pli), None, "no video SSRC yet");
        p.on_rtp(&rtp(96, 0xaa));
        assert!(p.keyframe_requested(t0));
        assert!(!p.keyframe_requested(t0 + Duration::from_millis(100)));
        assert!(!p.poll(t0 + Duration::from_millis(400)));
        assert!(p.poll(t0 + Duration::from_millis(500)));
        assert!(!p.poll(t0 + Duration::from_millis(600)));
        assert_eq!(p.write_pli(&mut pli), Some(12));
        assert_eq!(&pli[4..8], &7u32.to_be_bytes());
        assert_eq!(&pli[8..12], &0xaau32.to_be_bytes());
    }
}
