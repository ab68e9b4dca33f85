//! A publisher's media state, sans-IO: which payload types carry which kind, the SSRC of each
//! source (its audio, and each simulcast encoding of its video, told apart by the RID header
//! extension), which of its RTCP the players need, and when each encoding is asked for a
//! keyframe. The worker feeds it parsed packets and the time, and sends what it says to send.

use std::time::Instant;

use crate::media::{MAX_LAYERS, MediaKind, SOURCES, Source};
use crate::session::keyframe::{DEFAULT_KEYFRAME_INTERVAL, KeyframeThrottle};
use crate::session::publisher_link::{LinkSettings, PublisherLink};
use crate::session::simulcast::LayerRates;
use crate::wire::keyframe::{FrameStart, VideoCodec, frame_start};
use crate::wire::rtcp::{self, SENDER_REPORT};
use crate::wire::rtp::RtpHeader;
use crate::wire::twcc::find_extension;

/// A publisher's sender reports, one per source at most, that its players get under their
/// SSRCs.
pub type SenderReports<'a> = [Option<(Source, &'a [u8])>; SOURCES];

/// What the publisher's video negotiated beyond its payload types.
#[derive(Debug, Clone, Default)]
pub struct VideoSettings {
    pub codec: Option<VideoCodec>,
    /// The RTX payload type, when negotiated.
    pub rtx_payload_type: Option<u8>,
    /// The simulcast encodings by RID (empty: one encoding), and the ids of the RID and
    /// repaired-RID header extensions that name them.
    pub rids: Vec<String>,
    pub rid_ids: Option<(u8, Option<u8>)>,
}

pub struct Publisher {
    kind_by_payload_type: [Option<MediaKind>; 128],
    /// The SSRC of each source, by [`Source::index`].
    ssrcs: [Option<u32>; SOURCES],
    /// The RTX SSRC of each video encoding (simulcast: learnt from the repaired-RID).
    rtx_ssrcs: [Option<u32>; MAX_LAYERS],
    video: VideoSettings,
    /// A keyframe throttle per video encoding.
    keyframes: [KeyframeThrottle; MAX_LAYERS],
    /// Each encoding's bitrate.
    pub rates: LayerRates,
    /// The last picture size each encoding's keyframes carried.
    sizes: [Option<(u16, u16)>; MAX_LAYERS],
    /// The sender SSRC of the relay's RTCP towards this publisher.
    rtcp_ssrc: u32,
    /// Feedback and loss repair on the path from the publisher.
    pub link: PublisherLink,
}

impl Publisher {
    /// A publisher that negotiated `payload_types`; the relay's RTCP to it goes out under
    /// `rtcp_ssrc`.
    pub fn new(
        payload_types: &[(u8, MediaKind)],
        video: VideoSettings,
        link: LinkSettings,
        rtcp_ssrc: u32,
    ) -> Publisher {
        let mut kind_by_payload_type = [None; 128];
        for &(pt, kind) in payload_types {
            kind_by_payload_type[(pt & 0x7f) as usize] = Some(kind);
        }
        Publisher {
            kind_by_payload_type,
            ssrcs: [None; SOURCES],
            rtx_ssrcs: [None; MAX_LAYERS],
            video,
            keyframes: std::array::from_fn(|_| KeyframeThrottle::new(DEFAULT_KEYFRAME_INTERVAL)),
            rates: LayerRates::default(),
            sizes: [None; MAX_LAYERS],
            rtcp_ssrc,
            link: PublisherLink::new(link),
        }
    }

    /// The SSRC of each source, by [`Source::index`].
    pub fn ssrcs(&self) -> [Option<u32>; SOURCES] {
        self.ssrcs
    }

    /// The video encodings: 1 without simulcast.
    pub fn video_layers(&self) -> usize {
        self.video.rids.len().clamp(1, MAX_LAYERS)
    }

    /// The last picture size of each encoding, when its keyframes carry it.
    pub fn sizes(&self) -> [Option<(u16, u16)>; MAX_LAYERS] {
        self.sizes
    }

    /// The sender SSRC of the relay's RTCP towards this publisher.
    pub fn rtcp_ssrc(&self) -> u32 {
        self.rtcp_ssrc
    }

    /// Whether `header` is a retransmission (RTX) of the publisher's video.
    #[inline]
    pub fn is_rtx(&self, header: &RtpHeader) -> bool {
        self.video.rtx_payload_type == Some(header.payload_type)
    }

    /// For an RTX packet: the SSRC of the encoding it repairs, once known. With simulcast an
    /// RTX SSRC is learnt from the repaired-RID extension its first packets carry.
    pub fn repaired_ssrc(&mut self, packet: &[u8], header: &RtpHeader) -> Option<u32> {
        let Some((_, Some(repaired_id))) = self.video.rid_ids else {
            return self.ssrcs[Source::video(0).index()];
        };
        let layer = match self.rtx_ssrcs.iter().position(|s| *s == Some(header.ssrc)) {
            Some(layer) => layer,
            None => {
                let layer = self.layer_named(packet, header, repaired_id)?;
                self.rtx_ssrcs[layer] = Some(header.ssrc);
                layer
            }
        };
        self.ssrcs[Source::video(layer as u8).index()]
    }

    /// An RTP packet arrived (restored, for a retransmission): the source it belongs to, or
    /// `None` for a payload type the publisher did not negotiate or a simulcast packet of an
    /// SSRC no RID has named yet (the packet is dropped). Remembers its SSRC.
    #[inline]
    pub fn on_rtp(&mut self, packet: &[u8], header: &RtpHeader) -> Option<Source> {
        let kind = self.kind_by_payload_type[(header.payload_type & 0x7f) as usize]?;
        let source = match (kind, self.video.rid_ids) {
            (MediaKind::Audio, _) => Source::AUDIO,
            (MediaKind::Video, None) => Source::video(0),
            (MediaKind::Video, Some((rid_id, _))) => {
                let known = self.ssrcs[1..].iter().position(|s| *s == Some(header.ssrc));
                match known {
                    Some(layer) => Source::video(layer as u8),
                    None => Source::video(self.layer_named(packet, header, rid_id)? as u8),
                }
            }
        };
        self.ssrcs[source.index()] = Some(header.ssrc);
        Some(source)
    }

    /// The encoding whose RID the packet's extension `id` carries.
    fn layer_named(&self, packet: &[u8], header: &RtpHeader, id: u8) -> Option<usize> {
        let rid = packet.get(find_extension(packet, header, id)?)?;
        self.video
            .rids
            .iter()
            .take(MAX_LAYERS)
            .position(|r| r.as_bytes() == rid)
    }

    /// A video packet of encoding `layer`: whether it starts a keyframe (where a player may
    /// switch to the encoding). Notes the picture size keyframes carry.
    #[inline]
    pub fn on_video(&mut self, layer: u8, packet: &[u8], header: &RtpHeader) -> bool {
        let Some(codec) = self.video.codec else {
            return false;
        };
        let payload = packet.get(header.header_len..).unwrap_or_default();
        match frame_start(codec, payload) {
            FrameStart::Keyframe { size } => {
                if let (Some(size), Some(slot)) = (size, self.sizes.get_mut(layer as usize)) {
                    *slot = Some(size);
                }
                true
            }
            FrameStart::Other => false,
        }
    }

    /// An RTCP compound packet arrived: the sender reports in it for the SSRCs the publisher
    /// sends media with. Receiver reports and the rest are consumed.
    pub fn sender_reports<'a>(&self, packet: &'a [u8]) -> SenderReports<'a> {
        let mut reports: SenderReports<'a> = [None; SOURCES];
        for p in rtcp::compound(packet).map_while(Result::ok) {
            if p.packet_type != SENDER_REPORT {
                continue;
            }
            if let Some(index) = self.ssrcs.iter().position(|s| *s == p.sender_ssrc()) {
                reports[index] = Some((Source::from_index(index), p.bytes));
            }
        }
        reports
    }

    /// A player asked for a keyframe of encoding `layer`: whether to send a PLI now (at most
    /// one per interval per encoding; a request inside it is kept for [`Publisher::poll`]).
    pub fn keyframe_requested(&mut self, now: Instant, layer: u8) -> bool {
        self.keyframes
            .get_mut(layer as usize)
            .is_some_and(|k| k.request(now))
    }

    /// A timer tick: the encodings whose deferred keyframe request is due now, a bit each.
    pub fn poll(&mut self, now: Instant) -> u8 {
        let mut due = 0;
        for (layer, throttle) in self.keyframes.iter_mut().enumerate() {
            if throttle.poll(now) {
                due |= 1 << layer;
            }
        }
        due
    }

    /// Whether the SSRC of video encoding `layer` is known: a PLI can name it.
    pub fn knows_video(&self, layer: u8) -> bool {
        self.ssrcs
            .get(Source::video(layer).index())
            .is_some_and(Option::is_some)
    }

    /// Writes a PLI for the publisher's video encoding `layer` into `out`; `None` before its
    /// SSRC is known (there is nothing to ask for yet).
    pub fn write_pli(&self, layer: u8, out: &mut [u8]) -> Option<usize> {
        let media_ssrc = (*self.ssrcs.get(Source::video(layer).index())?)?;
        Some(rtcp::write_pli(out, self.rtcp_ssrc, media_ssrc))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn packet(payload_type: u8, ssrc: u32, rid: Option<(u8, &str)>) -> Vec<u8> {
        let mut p = vec![0x80, payload_type, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&ssrc.to_be_bytes());
        if let Some((id, rid)) = rid {
            p[0] |= 0x10;
            let mut elements = vec![(id << 4) | (rid.len() as u8 - 1)];
            elements.extend_from_slice(rid.as_bytes());
            while elements.len() % 4 != 0 {
                elements.push(0);
            }
            p.extend_from_slice(&[0xbe, 0xde, 0, (elements.len() / 4) as u8]);
            p.extend_from_slice(&elements);
        }
        p.extend_from_slice(b"payload");
        p
    }

    fn rtp(payload_type: u8, ssrc: u32) -> (Vec<u8>, RtpHeader) {
        let p = packet(payload_type, ssrc, None);
        let h = RtpHeader::parse(&p).unwrap();
        (p, h)
    }

    fn sender_report(ssrc: u32) -> Vec<u8> {
        let mut sr = vec![0x80, SENDER_REPORT, 0, 6];
        sr.extend_from_slice(&ssrc.to_be_bytes());
        sr.extend_from_slice(&[0u8; 20]);
        sr
    }

    fn publisher(video: VideoSettings) -> Publisher {
        Publisher::new(
            &[
                (111, MediaKind::Audio),
                (96, MediaKind::Video),
                (97, MediaKind::Video),
            ],
            video,
            LinkSettings::default(),
            7,
        )
    }

    #[test]
    fn media_is_classified_by_negotiated_payload_type() {
        let mut p = publisher(VideoSettings::default());
        let (v, vh) = rtp(96, 0xaa);
        let (a, ah) = rtp(111, 0xbb);
        let (x, xh) = rtp(100, 0xcc);
        assert_eq!(p.on_rtp(&v, &vh), Some(Source::video(0)));
        assert_eq!(p.on_rtp(&a, &ah), Some(Source::AUDIO));
        assert_eq!(p.on_rtp(&x, &xh), None);
    }

    #[test]
    fn simulcast_encodings_are_told_apart_by_rid_then_by_ssrc() {
        let mut p = publisher(VideoSettings {
            codec: Some(VideoCodec::Vp8),
            rtx_payload_type: Some(97),
            rids: vec!["q".into(), "h".into(), "f".into()],
            rid_ids: Some((10, Some(11))),
        });
        assert_eq!(p.video_layers(), 3);
        let named = |ssrc, rid| {
            let pk = packet(96, ssrc, Some((10, rid)));
            let h = RtpHeader::parse(&pk).unwrap();
            (pk, h)
        };
        let (f, fh) = named(0xf, "f");
        assert_eq!(p.on_rtp(&f, &fh), Some(Source::video(2)));
        let (q, qh) = named(0x1, "q");
        assert_eq!(p.on_rtp(&q, &qh), Some(Source::video(0)));
        // Later packets without the extension: by SSRC.
        let (bare, bh) = rtp(96, 0xf);
        assert_eq!(p.on_rtp(&bare, &bh), Some(Source::video(2)));
        // An SSRC no RID named yet, and an unknown RID: dropped.
        let (u, uh) = rtp(96, 0x99);
        assert_eq!(p.on_rtp(&u, &uh), None);
        let (x, xh) = named(0x98, "x");
        assert_eq!(p.on_rtp(&x, &xh), None);
        assert_eq!(p.ssrcs(), [None, Some(0x1), None, Some(0xf)]);
        // RTX by its repaired-RID, then by its SSRC.
        let rtx = packet(97, 0x2f, Some((11, "f")));
        let rh = RtpHeader::parse(&rtx).unwrap();
        assert!(p.is_rtx(&rh));
        assert_eq!(p.repaired_ssrc(&rtx, &rh), Some(0xf));
        let (bare_rtx, brh) = rtp(97, 0x2f);
        assert_eq!(p.repaired_ssrc(&bare_rtx, &brh), Some(0xf));
        let (other_rtx, orh) = rtp(97, 0x3f);
        assert_eq!(p.repaired_ssrc(&other_rtx, &orh), None);
        // PLIs name the encoding's SSRC.
        let mut pli = [0u8; 12];
        assert_eq!(p.write_pli(1, &mut pli), None, "h not seen yet");
        assert_eq!(p.write_pli(2, &mut pli), Some(12));
        assert_eq!(&pli[8..12], &0xfu32.to_be_bytes());
    }

    #[test]
    fn keyframes_are_recognised_and_their_size_noted() {
        let mut p = publisher(VideoSettings {
            codec: Some(VideoCodec::Vp8),
            ..VideoSettings::default()
        });
        let mut keyframe = packet(96, 1, None);
        keyframe.truncate(12);
        keyframe.extend_from_slice(&[0x10, 0x50, 0, 0, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
        let h = RtpHeader::parse(&keyframe).unwrap();
        assert!(p.on_video(0, &keyframe, &h));
        assert_eq!(p.sizes()[0], Some((640, 480)));
        let (delta, dh) = rtp(96, 1);
        assert!(!p.on_video(0, &delta, &dh));
    }

    #[test]
    fn only_sender_reports_for_known_ssrcs_reach_players() {
        let mut p = publisher(VideoSettings::default());
        let mut compound = sender_report(0xaa);
        compound.extend(sender_report(0xdd));
        assert_eq!(p.sender_reports(&compound), [None; SOURCES]);
        let (v, vh) = rtp(96, 0xaa);
        p.on_rtp(&v, &vh);
        let reports = p.sender_reports(&compound);
        assert_eq!(reports[0], None);
        assert_eq!(reports[1], Some((Source::video(0), &compound[..28])));
    }

    #[test]
    fn keyframe_requests_are_throttled_per_encoding_and_a_deferred_one_follows() {
        let t0 = Instant::now();
        let mut p = publisher(VideoSettings::default());
        let mut pli = [0u8; 12];
        assert_eq!(p.write_pli(0, &mut pli), None, "no video SSRC yet");
        let (v, vh) = rtp(96, 0xaa);
        p.on_rtp(&v, &vh);
        assert!(p.keyframe_requested(t0, 0));
        assert!(
            p.keyframe_requested(t0, 1),
            "another encoding has its own throttle"
        );
        assert!(!p.keyframe_requested(t0 + Duration::from_millis(100), 0));
        assert_eq!(p.poll(t0 + Duration::from_millis(400)), 0);
        assert_eq!(p.poll(t0 + Duration::from_millis(500)), 0b1);
        assert_eq!(p.poll(t0 + Duration::from_millis(600)), 0);
        assert_eq!(p.write_pli(0, &mut pli), Some(12));
        assert_eq!(&pli[4..8], &7u32.to_be_bytes());
        assert_eq!(&pli[8..12], &0xaau32.to_be_bytes());
    }
}
