//! What the relay tells a publisher about the path its media takes, sans-IO: transport-wide
//! feedback for every packet that carries a transport-wide sequence number (the publisher's
//! own congestion control, GCC, estimates the path from it), generic NACKs for lost video
//! (RFC 4585) with the retransmissions coming back as RTX (RFC 4588) and restored to the
//! original stream, receiver reports with the loss and jitter it measured (RFC 3550 §6.4.2,
//! which the publisher's loss-based estimate and RTT read), and an operator's cap as REMB.
//!
//! The worker hands each RTP packet to [`PublisherLink::on_rtp`] before it classifies it, and
//! asks [`PublisherLink::poll`] for RTCP to send whenever [`PublisherLink::next_timeout`] has
//! come. Nothing here allocates after construction; the cost is per packet a few array writes,
//! and per feedback interval one packet written.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::media::{SOURCES, Source};
use crate::session::nack::{NackConfig, NackRequester, PacketOutcome};
use crate::session::receive_stats::ReceiveStats;
use crate::session::twcc::{RembCap, TwccConfig, TwccRecorder};
use crate::wire::nack::write_nack;
use crate::wire::rtcp_report::write_receiver_report;
use crate::wire::rtp::RtpHeader;
use crate::wire::rtx::{OriginalStream, restore_in_place};
use crate::wire::twcc::read_transport_sequence;

/// How often the operator's cap is repeated (libwebrtc sends REMB about once a second).
const REMB_INTERVAL: Duration = Duration::from_secs(1);
/// Sequence numbers one NACK poll may name (one RTCP packet holds many more PID/BLP pairs).
const NACK_BATCH: usize = 64;
/// How often the publisher gets a receiver report (RFC 3550 suggests about every 5 s for small
/// sessions; browsers send theirs about once a second, and so does the relay).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// What the answer negotiated with the publisher that this link acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkSettings {
    /// The transport-wide sequence number extension's id.
    pub transport_cc_id: Option<u8>,
    /// The publisher's video negotiated generic NACK: it retransmits what the relay asks for
    /// (as RTX when negotiated, else the original packet again).
    pub nack: bool,
    /// `(RTX payload type, the video payload type it repairs)`.
    pub rtx: Option<(u8, u8)>,
    /// The operator's cap on what the publisher sends (`media.max_publish_kbps`); 0 for none.
    pub max_kbps: u32,
    /// The RTP clock rates of the audio and video tracks (by
    /// [`crate::media::MediaKind::index`]), for the jitter in receiver reports; 0 for a kind
    /// not negotiated.
    pub clock_rates: [u32; 2],
    /// The video's simulcast encodings (1 without simulcast): each is repaired on its own.
    pub video_layers: usize,
}

/// What the link did, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Sequence numbers named in NACKs sent (retries included).
    pub nacked: u64,
    /// Lost packets that came back as retransmissions.
    pub repaired: u64,
    /// Lost packets given up after every retry (a keyframe request follows).
    pub given_up: u64,
    /// Retransmissions that repaired nothing (duplicates, probes): dropped.
    pub needless_retransmissions: u64,
    /// Transport-wide feedback packets written.
    pub feedback_sent: u64,
    /// Receiver reports written.
    pub reports_sent: u64,
}

/// A packet as the link passed it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// Forward `packet[range]`, whose header is `header` (restored, for a retransmission).
    Forward {
        range: Range<usize>,
        header: RtpHeader,
        retransmitted: bool,
    },
    /// Nothing to forward: a padding-only probe, or a retransmission nobody needs.
    Consumed,
}

/// RTCP the link wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRtcp {
    TransportFeedback,
    Nack,
    Remb,
    ReceiverReport,
}

pub struct PublisherLink {
    settings: LinkSettings,
    twcc: TwccRecorder,
    /// Gaps per video encoding (each has its own sequence numbers).
    nack: Box<[NackRequester]>,
    /// The encoding whose NACKs the next poll writes first, so that none starves the others.
    next_nack_layer: usize,
    remb: RembCap,
    /// Reception statistics per source ([`Source::index`]), from the first packet of its SSRC.
    reception: [Option<ReceiveStats>; SOURCES],
    next_report: Option<Instant>,
    /// Smoothed round trip to the publisher, from NACK-to-retransmission delays.
    rtt: Option<Duration>,
    /// Video encodings (a bit each) that want a keyframe: losses were given up, or a jump
    /// reset repair.
    keyframe_wanted: u8,
    counters: LinkCounters,
}

impl PublisherLink {
    pub fn new(settings: LinkSettings) -> PublisherLink {
        PublisherLink {
            settings,
            twcc: TwccRecorder::new(TwccConfig::default()),
            nack: (0..settings.video_layers.clamp(1, SOURCES - 1))
                .map(|_| NackRequester::new(NackConfig::default()))
                .collect(),
            next_nack_layer: 0,
            remb: RembCap::new(settings.max_kbps, REMB_INTERVAL),
            reception: std::array::from_fn(|_| None),
            next_report: None,
            rtt: None,
            keyframe_wanted: 0,
            counters: LinkCounters::default(),
        }
    }

    pub fn counters(&self) -> LinkCounters {
        self.counters
    }

    /// Whether the link repairs video loss: the publisher negotiated NACK.
    pub fn repairs_loss(&self) -> bool {
        self.settings.nack
    }

    /// An RTP packet from the publisher, decrypted, with its parsed header. `repaired_ssrc` is,
    /// for an RTX packet, the SSRC of the video encoding it repairs, once known (it restores
    /// to it).
    pub fn on_rtp(
        &mut self,
        now: Instant,
        packet: &mut [u8],
        header: RtpHeader,
        repaired_ssrc: Option<u32>,
    ) -> Arrival {
        // Every packet with a transport-wide number counts for the publisher's estimate,
        // padding probes included: that is what probes are for.
        if let Some(id) = self.settings.transport_cc_id
            && let Some(sequence) = read_transport_sequence(packet, &header, id)
        {
            self.twcc.record(now, sequence);
        }
        let Some((rtx_payload_type, video_payload_type)) = self.settings.rtx else {
            return Arrival::Forward {
                range: 0..packet.len(),
                header,
                retransmitted: false,
            };
        };
        if header.payload_type != rtx_payload_type {
            return Arrival::Forward {
                range: 0..packet.len(),
                header,
                retransmitted: false,
            };
        }
        let Some(ssrc) = repaired_ssrc else {
            return Arrival::Consumed;
        };
        let original = OriginalStream {
            ssrc,
            payload_type: video_payload_type,
        };
        match restore_in_place(packet, &original) {
            Ok(range) => match RtpHeader::parse(&packet[range.clone()]) {
                Ok(header) => Arrival::Forward {
                    range,
                    header,
                    retransmitted: true,
                },
                Err(_) => Arrival::Consumed,
            },
            // A padding-only probe (`RtxError::NoOriginalSequence`), or a malformed packet:
            // nothing to forward.
            Err(_) => Arrival::Consumed,
        }
    }

    /// A video packet's sequence number, once it is known to be the publisher's video of
    /// encoding `layer`: tracks gaps for NACKs. Returns whether to forward it (a
    /// retransmission of a packet that was not missing is dropped: the players have it).
    pub fn on_video(
        &mut self,
        now: Instant,
        layer: u8,
        sequence: u16,
        retransmitted: bool,
    ) -> bool {
        if !self.repairs_loss() {
            return true;
        }
        let Some(nack) = self.nack.get_mut(layer as usize) else {
            return true;
        };
        match nack.on_packet(now, sequence) {
            PacketOutcome::Recovered { requested: true } => {
                self.counters.repaired += 1;
                if let Some(sample) = nack.take_repair_delay() {
                    self.observe_rtt(sample);
                }
                true
            }
            PacketOutcome::Reset => {
                self.keyframe_wanted |= 1 << layer;
                true
            }
            PacketOutcome::Stale if retransmitted => {
                self.counters.needless_retransmissions += 1;
                false
            }
            _ => true,
        }
    }

    /// A media packet of `source` (restored, for a retransmission) counts in the reception
    /// statistics its receiver reports carry. A new SSRC for the source starts them afresh.
    pub fn on_media(
        &mut self,
        now: Instant,
        source: Source,
        header: &RtpHeader,
        retransmitted: bool,
    ) {
        let clock_rate = self.settings.clock_rates[source.kind.index()];
        let stats = &mut self.reception[source.index()];
        if stats.as_ref().is_none_or(|s| s.ssrc() != header.ssrc) {
            *stats = Some(ReceiveStats::new(header.ssrc, clock_rate.max(1)));
            self.next_report.get_or_insert(now + REPORT_INTERVAL);
        }
        if let Some(stats) = stats {
            stats.on_packet(now, header.sequence, header.timestamp, retransmitted);
        }
    }

    /// A sender report from the publisher for `ssrc` with its NTP time: the next receiver
    /// reports echo it (LSR, DLSR), so the publisher measures its RTT to the relay.
    pub fn on_sender_report(&mut self, now: Instant, ssrc: u32, ntp_timestamp: u64) {
        for stats in self.reception.iter_mut().flatten() {
            if stats.ssrc() == ssrc {
                stats.on_sender_report(now, ntp_timestamp);
            }
        }
    }

    /// A round-trip sample (NACK to retransmission): smoothed as TCP does (7/8 old, 1/8 new),
    /// it spaces the NACK retries, as libwebrtc spaces them by its RTT.
    fn observe_rtt(&mut self, sample: Duration) {
        let smoothed = match self.rtt {
            Some(rtt) => (rtt * 7 + sample) / 8,
            None => sample,
        };
        self.rtt = Some(smoothed);
        for nack in self.nack.iter_mut() {
            nack.set_rtt(smoothed);
        }
    }

    /// The round trip to the publisher, from its repairs; `None` before the first.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Takes the wishes for a keyframe that losses given up (or a reset) left: a bit per
    /// video encoding.
    pub fn take_keyframe_wishes(&mut self) -> u8 {
        std::mem::take(&mut self.keyframe_wanted)
    }

    /// The earliest time [`PublisherLink::poll`] has something to write.
    pub fn next_timeout(&self, now: Instant) -> Option<Instant> {
        [
            self.twcc.next_timeout(),
            self.repairs_loss()
                .then(|| {
                    self.nack
                        .iter()
                        .filter_map(NackRequester::next_timeout)
                        .min()
                })
                .flatten(),
            self.remb.next_timeout(now),
            self.next_report,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Writes the next RTCP packet due at `now` into `out` (sent under `rtcp_ssrc`, about the
    /// publisher's `ssrcs` by [`Source::index`]), or `None` when nothing is due. Call until
    /// `None`.
    pub fn poll(
        &mut self,
        now: Instant,
        out: &mut [u8],
        rtcp_ssrc: u32,
        ssrcs: [Option<u32>; SOURCES],
    ) -> Option<(usize, LinkRtcp)> {
        let media_ssrc = ssrcs[1..].iter().chain(&ssrcs[..1]).flatten().next();
        if let Ok(Some(len)) = self
            .twcc
            .poll(now, out, rtcp_ssrc, media_ssrc.copied().unwrap_or(0))
        {
            self.counters.feedback_sent += 1;
            return Some((len, LinkRtcp::TransportFeedback));
        }
        if self.repairs_loss() {
            let layers = self.nack.len();
            for step in 0..layers {
                let layer = (self.next_nack_layer + step) % layers;
                let Some(video_ssrc) = ssrcs[Source::video(layer as u8).index()] else {
                    continue;
                };
                let mut lost = [0u16; NACK_BATCH];
                let polled = self.nack[layer].poll(now, &mut lost);
                if polled.gave_up > 0 {
                    self.counters.given_up += polled.gave_up;
                    self.keyframe_wanted |= 1 << layer;
                }
                if polled.requested > 0
                    && let Ok((len, covered)) =
                        write_nack(out, rtcp_ssrc, video_ssrc, &lost[..polled.requested])
                {
                    // What did not fit is asked again at the next retry.
                    self.counters.nacked += covered as u64;
                    self.next_nack_layer = (layer + 1) % layers;
                    return Some((len, LinkRtcp::Nack));
                }
            }
        }
        let mut known = [0u32; SOURCES];
        let mut count = 0;
        for ssrc in ssrcs.iter().flatten() {
            known[count] = *ssrc;
            count += 1;
        }
        if count > 0
            && let Ok(Some(len)) = self.remb.poll(now, out, rtcp_ssrc, &known[..count])
        {
            return Some((len, LinkRtcp::Remb));
        }
        if self.next_report.is_some_and(|due| due <= now) {
            self.next_report = Some(now + REPORT_INTERVAL);
            let mut blocks = [None; SOURCES];
            let mut count = 0;
            for stats in self.reception.iter_mut().flatten() {
                if let Some(block) = stats.report_block(now) {
                    blocks[count] = Some(block);
                    count += 1;
                }
            }
            if count == 0 {
                return None;
            }
            let blocks = blocks.map(|b| b.unwrap_or_default());
            let written = write_receiver_report(out, rtcp_ssrc, &blocks[..count]);
            if let Ok(len) = written {
                self.counters.reports_sent += 1;
                return Some((len, LinkRtcp::ReceiverReport));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::nack::Nack;
    use crate::wire::remb::Remb;
    use crate::wire::rtx::{RtxStream, build_rtx};
    use crate::wire::twcc::{TransportFeedback, write_transport_sequence};

    const VIDEO_SSRC: u32 = 0xabc;
    const TWCC_ID: u8 = 3;

    /// A video packet with a transport-wide sequence number in a one-byte extension.
    fn video(seq: u16, transport_seq: u16) -> Vec<u8> {
        let mut p = vec![0x90, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(&VIDEO_SSRC.to_be_bytes());
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, TWCC_ID << 4 | 1, 0, 0, 0]);
        p.extend_from_slice(&[7u8; 100]);
        let header = RtpHeader::parse(&p).unwrap();
        write_transport_sequence(&mut p, &header, TWCC_ID, transport_seq).unwrap();
        p
    }

    fn new_link(max_kbps: u32) -> PublisherLink {
        PublisherLink::new(LinkSettings {
            transport_cc_id: Some(TWCC_ID),
            nack: true,
            rtx: Some((97, 96)),
            max_kbps,
            clock_rates: [48_000, 90_000],
            video_layers: 1,
        })
    }

    fn arrive(link: &mut PublisherLink, now: Instant, mut packet: Vec<u8>) -> Option<u16> {
        let header = RtpHeader::parse(&packet).unwrap();
        match link.on_rtp(now, &mut packet, header, Some(VIDEO_SSRC)) {
            Arrival::Forward {
                header,
                retransmitted,
                ..
            } => link
                .on_video(now, 0, header.sequence, retransmitted)
                .then_some(header.sequence),
            Arrival::Consumed => None,
        }
    }

    fn drain(link: &mut PublisherLink, now: Instant) -> Vec<(LinkRtcp, Vec<u8>)> {
        let mut sent = Vec::new();
        let mut out = [0u8; 1500];
        while let Some((len, kind)) = link.poll(
            now,
            &mut out,
            1,
            [Some(0x111), Some(VIDEO_SSRC), None, None],
        ) {
            sent.push((kind, out[..len].to_vec()));
        }
        sent
    }

    #[test]
    fn a_lost_packet_is_nacked_and_its_retransmission_restored_and_forwarded_once() {
        let t0 = Instant::now();
        let mut link = new_link(0);
        for seq in [10u16, 11, 13] {
            assert_eq!(arrive(&mut link, t0, video(seq, seq)), Some(seq));
        }
        let sent = drain(&mut link, t0);
        let nacks: Vec<Vec<u16>> = sent
            .iter()
            .filter(|(k, _)| *k == LinkRtcp::Nack)
            .map(|(_, p)| Nack::parse(p).unwrap().lost().collect())
            .collect();
        assert_eq!(nacks, [vec![12]]);

        // The retransmission comes as RTX: restored to sequence 12 on the video SSRC.
        let original = video(12, 0);
        let mut rtx = vec![0u8; 1500];
        let stream = RtxStream {
            ssrc: 0xdef,
            payload_type: 97,
            sequence: 500,
        };
        let len = build_rtx(&original, &stream, &mut rtx).unwrap();
        rtx.truncate(len);
        let later = t0 + Duration::from_millis(30);
        assert_eq!(arrive(&mut link, later, rtx.clone()), Some(12));
        assert_eq!(link.counters().repaired, 1);
        assert_eq!(
            link.rtt(),
            Some(Duration::from_millis(30)),
            "the repair's delay is the first RTT sample"
        );
        // A second copy repairs nothing and is dropped.
        assert_eq!(arrive(&mut link, later, rtx), None);
        assert_eq!(link.counters().needless_retransmissions, 1);
    }

    #[test]
    fn transport_wide_feedback_reports_every_numbered_packet() {
        let t0 = Instant::now();
        let mut link = new_link(0);
        for (i, transport_seq) in [100u16, 101, 103].into_iter().enumerate() {
            let at = t0 + Duration::from_millis(i as u64 * 5);
            arrive(&mut link, at, video(i as u16, transport_seq));
        }
        let sent = drain(&mut link, t0 + Duration::from_millis(200));
        let (_, feedback) = sent
            .iter()
            .find(|(k, _)| *k == LinkRtcp::TransportFeedback)
            .expect("feedback is due after the interval");
        let parsed = TransportFeedback::parse(feedback).unwrap();
        let statuses: Vec<(u16, bool)> = parsed
            .packets()
            .map(|p| {
                (
                    p.sequence,
                    p.status != crate::wire::twcc::PacketStatus::NotReceived,
                )
            })
            .collect();
        assert_eq!(
            statuses,
            [(100, true), (101, true), (102, false), (103, true)]
        );
        assert_eq!(link.counters().feedback_sent, 1);
    }

    #[test]
    fn an_operator_cap_goes_out_as_remb_about_once_a_second() {
        let t0 = Instant::now();
        let mut link = new_link(500);
        arrive(&mut link, t0, video(1, 1));
        let remb_at = |link: &mut PublisherLink, at| {
            drain(link, at)
                .into_iter()
                .filter(|(k, _)| *k == LinkRtcp::Remb)
                .map(|(_, p)| Remb::parse(&p).unwrap().bitrate_bps)
                .collect::<Vec<_>>()
        };
        assert_eq!(remb_at(&mut link, t0), [500_000]);
        assert!(remb_at(&mut link, t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(
            remb_at(&mut link, t0 + Duration::from_millis(1000)),
            [500_000]
        );
        assert!(remb_at(&mut new_link(0), t0).is_empty(), "no cap, no REMB");
    }

    #[test]
    fn receiver_reports_carry_the_loss_and_echo_the_publishers_sender_report() {
        use crate::wire::rtcp_report::report_blocks;
        let t0 = Instant::now();
        let mut link = new_link(0);
        let mut lost = 0;
        for seq in 0u16..100 {
            if seq % 10 == 5 {
                lost += 1;
                continue;
            }
            let at = t0 + Duration::from_millis(u64::from(seq) * 5);
            let packet = video(seq, seq);
            let header = RtpHeader::parse(&packet).unwrap();
            link.on_media(at, Source::video(0), &header, false);
        }
        let ntp = 0x1122_3344_5566_7788u64;
        link.on_sender_report(t0 + Duration::from_millis(500), VIDEO_SSRC, ntp);
        let reports: Vec<Vec<u8>> = drain(&mut link, t0 + Duration::from_millis(1000))
            .into_iter()
            .filter(|(k, _)| *k == LinkRtcp::ReceiverReport)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(reports.len(), 1, "one report a second");
        let blocks: Vec<_> = report_blocks(&reports[0]).unwrap().collect();
        assert_eq!(blocks.len(), 1, "video only: no audio arrived");
        assert_eq!(blocks[0].ssrc, VIDEO_SSRC);
        assert_eq!(blocks[0].cumulative_lost, lost);
        assert!(blocks[0].fraction_lost > 0);
        assert_eq!(blocks[0].last_sender_report, (ntp >> 16) as u32);
        assert!(
            drain(&mut link, t0 + Duration::from_millis(1500))
                .iter()
                .all(|(k, _)| *k != LinkRtcp::ReceiverReport),
            "not again before a second has passed"
        );
        assert_eq!(link.counters().reports_sent, 1);
    }

    #[test]
    fn without_nack_nothing_is_nacked_and_every_packet_is_forwarded() {
        let t0 = Instant::now();
        let mut link = PublisherLink::new(LinkSettings {
            transport_cc_id: Some(TWCC_ID),
            nack: false,
            rtx: None,
            max_kbps: 0,
            clock_rates: [48_000, 90_000],
            video_layers: 1,
        });
        for seq in [1u16, 5, 5] {
            assert_eq!(arrive(&mut link, t0, video(seq, seq)), Some(seq));
        }
        assert!(
            drain(&mut link, t0)
                .iter()
                .all(|(k, _)| *k != LinkRtcp::Nack)
        );
    }
}
