//! A player's media state, sans-IO: per kind, the track it negotiated (its SSRC, payload type
//! and header-extension ids) and the continuous sequence numbers it sees; for a simulcast
//! stream, which encoding it gets ([`LayerSelector`]), its continuous timestamps, the
//! transport-wide numbers the relay stamps on what it sends and the estimate of its path
//! made from its feedback; and what its RTCP asks for. The worker hands it the publisher's
//! parsed packet and an egress buffer, and protects and sends what it writes.

use std::time::Instant;

use crate::media::MediaKind;
use crate::session::bwe::BandwidthEstimator;
use crate::session::receive_stats::RttEstimator;
use crate::session::retransmit::RetransmitBudget;
use crate::session::sequence::SequenceMapper;
use crate::session::simulcast::{
    Encodings, LayerPreference, LayerSelector, LayerVerdict, TimestampMapper,
};
use crate::wire::rtcp::{self, RECEIVER_REPORT, SENDER_REPORT, TRANSPORT_FEEDBACK};
use crate::wire::rtcp_report::report_blocks;
use crate::wire::rtp::{ExtensionIdMap, Rewrite, RtpHeader, rewrite_header_into, write_padding};
use crate::wire::twcc::{FMT_TRANSPORT_CC, TransportFeedback};

/// What one player may take in retransmissions: a player on a terrible link asks for much, and
/// must not take the worker's time from the others (bytes per second, and a burst).
const RETRANSMIT_BYTES_PER_SECOND: u64 = 256 * 1024;
const RETRANSMIT_BURST_BYTES: u64 = 64 * 1024;

/// How a track's lost packets are resent, when the player asked for repair (generic NACK).
pub struct Repair {
    /// `(payload type, SSRC)` of RTX (RFC 4588) when negotiated; else the original again.
    rtx: Option<(u8, u32)>,
    rtx_sequence: u16,
    budget: RetransmitBudget,
}

impl Repair {
    pub fn new(rtx: Option<(u8, u32)>, first_rtx_sequence: u16) -> Repair {
        Repair {
            rtx,
            rtx_sequence: first_rtx_sequence,
            budget: RetransmitBudget::new(RETRANSMIT_BYTES_PER_SECOND, RETRANSMIT_BURST_BYTES),
        }
    }
}

/// One negotiated track of a player.
pub struct PlayerTrack {
    publisher_payload_type: u8,
    payload_type: u8,
    ssrc: u32,
    extension_ids: ExtensionIdMap,
    sequence: SequenceMapper,
    /// Present when the player negotiated NACK for this track.
    repair: Option<Repair>,
    /// The sender reports sent to the player, for the RTT its reports echo.
    rtt: RttEstimator,
    /// The player's id of the transport-wide sequence number (simulcast streams).
    transport_cc_id: Option<u8>,
}

/// What a player's receiver report says of its path (for its video, or else its audio).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reception {
    /// The round trip, when the report echoes a sender report the relay sent.
    pub rtt: Option<std::time::Duration>,
    /// Lost between its last two reports, in 1/256.
    pub fraction_lost: u8,
    /// Lost since the start (after repair), as the player counts.
    pub cumulative_lost: i32,
}

/// Why a player's NACK for one packet was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetransmitRefusal {
    /// The track did not negotiate NACK, or the number is not one the player was sent.
    NotRepairable,
    /// The player used up its retransmission budget.
    OverBudget,
    /// No room in the buffer.
    NoRoom,
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
            repair: None,
            rtt: RttEstimator::new(),
            transport_cc_id: None,
        }
    }

    /// The relay stamps its transport-wide sequence number at `id` on what it sends.
    pub fn with_transport_cc(mut self, id: Option<u8>) -> PlayerTrack {
        self.transport_cc_id = id;
        self
    }

    /// The track answers the player's NACKs as `repair` says.
    pub fn with_repair(mut self, repair: Repair) -> PlayerTrack {
        self.repair = Some(repair);
        self
    }

    /// Whether the player asked for repair (negotiated NACK) on this track.
    pub fn repairs(&self) -> bool {
        self.repair.is_some()
    }

    /// The publisher's `(ssrc, sequence)` behind the player's `sequence`, for a track that
    /// repairs; `None` otherwise.
    pub fn publisher_sequence(&self, sequence: u16) -> Option<(u32, u16)> {
        self.repair.as_ref()?;
        self.sequence.unmap(sequence)
    }

    /// Writes the plain (unprotected) retransmission of the publisher's `packet` (parsed as
    /// `header`) that the player knew as `sequence`, into `out`: as RTX (its own SSRC and
    /// numbers, the original number first in the payload) when negotiated, else the packet
    /// again under its number. Spends the player's budget. Returns the length.
    pub fn write_retransmission(
        &mut self,
        now: Instant,
        packet: &[u8],
        header: &RtpHeader,
        sequence: u16,
        timestamp: u32,
        out: &mut [u8],
    ) -> Result<usize, RetransmitRefusal> {
        let repair = self
            .repair
            .as_mut()
            .ok_or(RetransmitRefusal::NotRepairable)?;
        if header.payload_type != self.publisher_payload_type {
            return Err(RetransmitRefusal::NotRepairable);
        }
        let payload = &packet[header.header_len..];
        let osn_len = if repair.rtx.is_some() { 2 } else { 0 };
        if !repair
            .budget
            .try_spend(now, header.header_len + osn_len + payload.len())
        {
            return Err(RetransmitRefusal::OverBudget);
        }
        let (ssrc, payload_type, number) = match repair.rtx {
            Some((rtx_payload_type, rtx_ssrc)) => {
                repair.rtx_sequence = repair.rtx_sequence.wrapping_add(1);
                (rtx_ssrc, rtx_payload_type, repair.rtx_sequence)
            }
            None => (self.ssrc, self.payload_type, sequence),
        };
        let rewrite = Rewrite {
            ssrc,
            payload_type,
            sequence: number,
            timestamp,
            extension_ids: &self.extension_ids,
            transport_sequence: None,
        };
        let header_len = rewrite_header_into(packet, header, &rewrite, out)
            .map_err(|_| RetransmitRefusal::NoRoom)?;
        let len = header_len + osn_len + payload.len();
        if out.len() < len {
            return Err(RetransmitRefusal::NoRoom);
        }
        if osn_len > 0 {
            out[header_len..header_len + 2].copy_from_slice(&sequence.to_be_bytes());
        }
        out[header_len + osn_len..len].copy_from_slice(payload);
        Ok(len)
    }

    /// Writes the player's header for the publisher's RTP `packet` (parsed as `header`) into
    /// `out`, with `timestamp` and, when given, the transport-wide number; the payload is not
    /// copied. `None` for a payload type this track does not play (the player gets nothing)
    /// or no room.
    pub fn rewrite_rtp(
        &mut self,
        packet: &[u8],
        header: &RtpHeader,
        timestamp: u32,
        transport_sequence: Option<u16>,
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
            timestamp,
            extension_ids: &self.extension_ids,
            transport_sequence: self.transport_cc_id.zip(transport_sequence),
        };
        let header_len = rewrite_header_into(packet, header, &rewrite, out).ok()?;
        Some(Rewritten {
            header_len,
            ssrc: self.ssrc,
            sequence,
        })
    }

    /// Writes the first sender report of the publisher's compound RTCP `packet` into `out`
    /// under this track's SSRC, its RTP time moved by `timestamp_offset`, sent at `now`;
    /// returns its length. The player's reports echo its NTP time, which makes the RTT.
    pub fn rewrite_sender_report(
        &mut self,
        now: Instant,
        packet: &[u8],
        timestamp_offset: u32,
        out: &mut [u8],
    ) -> Option<usize> {
        let report = rtcp::compound(packet).next()?.ok()?;
        let len = rtcp::write_sender_report(out, &report, self.ssrc)?;
        if timestamp_offset != 0
            && let Some(rtp_time) = out.get_mut(16..20)
        {
            let moved = u32::from_be_bytes((&*rtp_time).try_into().expect("4 bytes"))
                .wrapping_add(timestamp_offset);
            rtp_time.copy_from_slice(&moved.to_be_bytes());
        }
        if let Some(ntp) = out.get(8..16) {
            let ntp = u64::from_be_bytes(ntp.try_into().expect("8 bytes"));
            self.rtt.on_sender_report_sent(now, ntp);
        }
        Some(len)
    }
}

/// A player of a simulcast stream: which encoding it gets, and what picks it.
pub struct PlayerLayers {
    pub selector: LayerSelector,
    /// The estimate of the player's path, when it sends transport-wide feedback.
    pub estimator: Option<BandwidthEstimator>,
    timestamps: TimestampMapper,
    /// The relay's transport-wide numbering towards this player.
    transport_sequence: u16,
    last_timestamp: u32,
}

/// Bytes of padding in one probe packet (RFC 3550 padding counts in one byte).
const PADDING_PER_PACKET: usize = 255;

/// A player: its tracks by kind.
pub struct Player {
    tracks: [Option<Box<PlayerTrack>>; 2],
    /// Present for a simulcast stream.
    layers: Option<Box<PlayerLayers>>,
}

impl Player {
    pub fn new(tracks: impl IntoIterator<Item = (MediaKind, PlayerTrack)>) -> Player {
        let mut by_kind: [Option<Box<PlayerTrack>>; 2] = [None, None];
        for (kind, track) in tracks {
            by_kind[kind.index()] = Some(Box::new(track));
        }
        Player {
            tracks: by_kind,
            layers: None,
        }
    }

    /// The player of a stream with `layers` simulcast encodings of video at `clock_rate`;
    /// `estimator` when it sends transport-wide feedback.
    pub fn with_layers(
        mut self,
        layers: u8,
        clock_rate: u32,
        estimator: Option<BandwidthEstimator>,
    ) -> Player {
        self.layers = Some(Box::new(PlayerLayers {
            selector: LayerSelector::new(layers),
            estimator,
            timestamps: TimestampMapper::new(clock_rate),
            transport_sequence: rand::random(),
            last_timestamp: 0,
        }));
        self
    }

    /// The track that plays `kind`, if the player negotiated one.
    #[inline]
    pub fn track(&mut self, kind: MediaKind) -> Option<&mut PlayerTrack> {
        self.tracks[kind.index()].as_deref_mut()
    }

    /// Whether the player plays a simulcast stream.
    pub fn has_layers(&self) -> bool {
        self.layers.is_some()
    }

    /// The video encoding a keyframe request of this player is for: the one it gets (or waits
    /// for); 0 without simulcast.
    pub fn keyframe_layer(&self) -> u8 {
        self.layers
            .as_ref()
            .and_then(|l| l.selector.current().or(l.selector.target()))
            .unwrap_or(0)
    }

    /// Padding bytes the player's probe wants sent now.
    pub fn probe_padding_due(&mut self, now: Instant) -> usize {
        self.layers
            .as_deref_mut()
            .and_then(|l| l.estimator.as_mut())
            .map_or(0, |e| e.poll_padding(now))
    }

    /// Simulcast: the encoding, the estimate and what picks them.
    pub fn layers(&mut self) -> Option<&mut PlayerLayers> {
        self.layers.as_deref_mut()
    }

    /// Writes the player's header for the publisher's RTP `packet` of `kind` (video encoding
    /// `layer`, `keyframe` when it starts one) into `out`. `None`: not for this player (a
    /// payload type it does not play, another encoding than its own) or no room.
    #[inline]
    pub fn rewrite_rtp(
        &mut self,
        now: Instant,
        kind: MediaKind,
        (layer, keyframe): (u8, bool),
        packet: &[u8],
        header: &RtpHeader,
        out: &mut [u8],
    ) -> Option<Rewritten> {
        let track = self.tracks[kind.index()].as_deref_mut()?;
        let Some(layers) = self.layers.as_deref_mut() else {
            return track.rewrite_rtp(packet, header, header.timestamp, None, out);
        };
        if header.payload_type != track.publisher_payload_type {
            return None;
        }
        let mut timestamp = header.timestamp;
        if kind == MediaKind::Video {
            if layers.selector.on_packet(layer, keyframe) == LayerVerdict::Drop {
                return None;
            }
            timestamp = layers.timestamps.map(now, header.ssrc, header.timestamp);
            layers.last_timestamp = timestamp;
        }
        let number = layers.transport_sequence;
        let written = track.rewrite_rtp(packet, header, timestamp, Some(number), out)?;
        if track.transport_cc_id.is_some() {
            layers.transport_sequence = number.wrapping_add(1);
            if let Some(estimator) = layers.estimator.as_mut() {
                let size = written.header_len + packet.len() - header.header_len;
                estimator.on_packet_sent(now, number, size, false);
            }
        }
        Some(written)
    }

    /// The RTP time offset a sender report of the publisher's `ssrc` of `kind` takes for this
    /// player; `None` when the player does not get that source (another encoding).
    pub fn sender_report_offset(&self, kind: MediaKind, ssrc: u32) -> Option<u32> {
        match (&self.layers, kind) {
            (Some(layers), MediaKind::Video) => layers.timestamps.offset_for(ssrc),
            _ => Some(0),
        }
    }

    /// The RTP time the player's video retransmission of the publisher's `ssrc` carries.
    pub fn retransmission_timestamp(&self, ssrc: u32, timestamp: u32) -> u32 {
        match &self.layers {
            Some(layers) => timestamp.wrapping_add(layers.timestamps.offset_for(ssrc).unwrap_or(0)),
            None => timestamp,
        }
    }

    /// Writes one padding packet (a probe of the player's path) into `out`, on the video's
    /// RTX stream with the next transport-wide number: `(length, ssrc, sequence)` for SRTP.
    /// `None` without RTX or transport-wide numbering.
    pub fn write_probe_padding(
        &mut self,
        now: Instant,
        out: &mut [u8],
    ) -> Option<(usize, u32, u16)> {
        let layers = self.layers.as_deref_mut()?;
        let track = self.tracks[MediaKind::Video.index()].as_deref_mut()?;
        let id = track.transport_cc_id?;
        let repair = track.repair.as_mut()?;
        let (rtx_payload_type, rtx_ssrc) = repair.rtx?;
        let number = layers.transport_sequence;
        // The RTX stream's numbers, shared with the track's retransmissions.
        let sequence = repair.rtx_sequence.wrapping_add(1);
        let len = write_padding(
            out,
            rtx_payload_type,
            sequence,
            layers.last_timestamp,
            rtx_ssrc,
            (id, number),
            PADDING_PER_PACKET,
        )?;
        layers.transport_sequence = number.wrapping_add(1);
        repair.rtx_sequence = sequence;
        if let Some(estimator) = layers.estimator.as_mut() {
            estimator.on_packet_sent(now, number, len, true);
        }
        Some((len, rtx_ssrc, sequence))
    }

    /// The player's transport-wide feedback in its RTCP, read into its estimate; returns how
    /// many feedback messages it held.
    pub fn on_transport_feedback(&mut self, now: Instant, rtcp: &[u8]) -> u64 {
        let Some(estimator) = self
            .layers
            .as_deref_mut()
            .and_then(|l| l.estimator.as_mut())
        else {
            return 0;
        };
        let mut read = 0;
        for packet in rtcp::compound(rtcp).map_while(Result::ok) {
            if packet.packet_type == TRANSPORT_FEEDBACK
                && packet
                    .bytes
                    .first()
                    .is_some_and(|b| b & 0x1f == FMT_TRANSPORT_CC)
                && let Ok(feedback) = TransportFeedback::parse(packet.bytes)
            {
                estimator.on_feedback(now, &feedback);
                read += 1;
            }
        }
        read
    }

    /// Picks the player's encoding from its estimate and the encodings' `rates`; returns the
    /// encoding to ask a keyframe of, when it waits for one. Per timer tick.
    pub fn choose_layer(&mut self, now: Instant, encodings: &Encodings) -> Option<u8> {
        let layers = self.layers.as_deref_mut()?;
        let estimate = layers
            .estimator
            .as_ref()
            .map(BandwidthEstimator::estimate_bps);
        let keyframe = layers.selector.update(now, estimate, encodings);
        if let Some(estimator) = layers.estimator.as_mut() {
            estimator.set_wanted(layers.selector.next_up_bps(encodings).unwrap_or(0));
        }
        keyframe
    }

    /// The player asked for its encodings: pinned, or capped.
    pub fn set_layer_preference(&mut self, preference: LayerPreference) {
        if let Some(layers) = self.layers.as_deref_mut() {
            layers.selector.set_preference(preference);
        }
    }

    /// Whether the player repairs video loss (negotiated NACK): its stream keeps a window.
    pub fn repairs_video(&self) -> bool {
        self.tracks[MediaKind::Video.index()]
            .as_deref()
            .is_some_and(PlayerTrack::repairs)
    }

    /// The player's RTCP arrived at `now`: what its reception reports about the relay's video
    /// (else audio) say, if it carries any.
    pub fn on_receiver_report(&mut self, now: Instant, rtcp: &[u8]) -> Option<Reception> {
        let mut reception = None;
        let reports = rtcp::compound(rtcp)
            .map_while(Result::ok)
            .filter(|p| p.packet_type == RECEIVER_REPORT || p.packet_type == SENDER_REPORT);
        for report in reports {
            let Ok(blocks) = report_blocks(report.bytes) else {
                continue;
            };
            for block in blocks {
                for kind in [MediaKind::Audio, MediaKind::Video] {
                    let Some(track) = self.tracks[kind.index()].as_deref_mut() else {
                        continue;
                    };
                    if track.ssrc != block.ssrc {
                        continue;
                    }
                    let rtt = track.rtt.on_report_block(now, &block);
                    // Video's report wins over audio's: it is the stream that loses most.
                    if reception.is_none() || kind == MediaKind::Video {
                        reception = Some(Reception {
                            rtt,
                            fraction_lost: block.fraction_lost,
                            cumulative_lost: block.cumulative_lost,
                        });
                    }
                }
            }
        }
        reception
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
            let written = track
                .rewrite_rtp(&packet, &header, header.timestamp, None, &mut out)
                .unwrap();
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
        assert_eq!(
            track.rewrite_rtp(&packet, &header, header.timestamp, None, &mut [0u8; 64]),
            None
        );
    }

    #[test]
    fn a_nacked_packet_goes_again_as_rtx_or_as_itself_within_the_budget() {
        let now = Instant::now();
        let packet = rtp(96, 1, 10);
        let header = RtpHeader::parse(&packet).unwrap();
        let mut out = [0u8; 64];

        let mut plain = PlayerTrack::new(96, 102, 0x1234, ExtensionIdMap::default(), 500);
        let written = plain
            .rewrite_rtp(&packet, &header, header.timestamp, None, &mut out)
            .unwrap();
        assert_eq!(
            plain.publisher_sequence(written.sequence),
            None,
            "no NACK negotiated"
        );

        let mut track = PlayerTrack::new(96, 102, 0x1234, ExtensionIdMap::default(), 500)
            .with_repair(Repair::new(Some((103, 0x5678)), 900));
        let sent = track
            .rewrite_rtp(&packet, &header, header.timestamp, None, &mut out)
            .unwrap()
            .sequence;
        assert_eq!(track.publisher_sequence(sent), Some((1, 10)));
        let len = track
            .write_retransmission(now, &packet, &header, sent, 9, &mut out)
            .unwrap();
        let rtx = RtpHeader::parse(&out[..len]).unwrap();
        assert_eq!(
            (rtx.payload_type, rtx.ssrc, rtx.sequence),
            (103, 0x5678, 901)
        );
        assert_eq!(
            &out[12..14],
            &sent.to_be_bytes(),
            "the original number leads"
        );
        assert_eq!(&out[14..len], b"payload");

        let mut again = PlayerTrack::new(96, 102, 0x1234, ExtensionIdMap::default(), 500)
            .with_repair(Repair::new(None, 0));
        let sent = again
            .rewrite_rtp(&packet, &header, header.timestamp, None, &mut out)
            .unwrap()
            .sequence;
        let len = again
            .write_retransmission(now, &packet, &header, sent, 9, &mut out)
            .unwrap();
        let original = RtpHeader::parse(&out[..len]).unwrap();
        assert_eq!((original.payload_type, original.sequence), (102, sent));
        assert_eq!(&out[12..len], b"payload");

        // The budget: a burst's worth, then refusals until it refills.
        let refused = (0..10_000)
            .map(|_| again.write_retransmission(now, &packet, &header, sent, 9, &mut out))
            .find(|r| r.is_err());
        assert_eq!(refused, Some(Err(RetransmitRefusal::OverBudget)));
        let later = now + std::time::Duration::from_millis(100);
        assert!(
            again
                .write_retransmission(later, &packet, &header, sent, 9, &mut out)
                .is_ok()
        );
    }

    #[test]
    fn keyframe_requests_are_recognised() {
        let mut pli = [0u8; 12];
        rtcp::write_pli(&mut pli, 1, 2);
        assert!(Player::wants_keyframe(&pli));
        let receiver_report = [0x80, RECEIVER_REPORT, 0, 1, 0, 0, 0, 1];
        assert!(!Player::wants_keyframe(&receiver_report));
    }
}
