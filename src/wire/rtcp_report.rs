//! Sender and receiver reports (RFC 3550 §6.4): the sender info of an SR (NTP and RTP
//! timestamps, counts) and the report blocks of SRs and RRs (§6.4.1: fraction lost, cumulative
//! lost as 24-bit signed, extended highest sequence, interarrival jitter, LSR, DLSR), parsed in
//! place and written into the caller's buffer. Also the NTP helpers that LSR/DLSR need: LSR is
//! the middle 32 bits of an SR's NTP timestamp, DLSR counts 1/65536 s.

use std::time::Duration;

use super::rtcp::{RECEIVER_REPORT, SENDER_REPORT};

pub const REPORT_BLOCK_LEN: usize = 24;
/// Header and sender SSRC.
const RR_FIXED_LEN: usize = 8;
/// Header, sender SSRC, NTP, RTP timestamp, packet and octet counts.
const SR_FIXED_LEN: usize = 28;
/// The report count field has five bits.
pub const MAX_REPORT_BLOCKS: usize = 31;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
const CUMULATIVE_LOST_MAX: i32 = 0x7f_ffff;
const CUMULATIVE_LOST_MIN: i32 = -0x80_0000;

/// Why a report was refused or could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("shorter than its fixed part")]
    TooShort,
    #[error("version is not 2")]
    BadVersion,
    #[error("not a sender or receiver report")]
    WrongType,
    #[error("length field disagrees with the packet size or the report count")]
    BadLength,
    #[error("more than 31 report blocks")]
    TooManyBlocks,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Lost share since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Expected minus received since the start; negative with duplicates. 24 bits on the wire.
    pub cumulative_lost: i32,
    pub extended_highest_sequence: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from the source, 0 if none.
    pub last_sender_report: u32,
    /// Time since that SR was received, in 1/65536 s.
    pub delay_since_last_sender_report: u32,
}

impl ReportBlock {
    /// Parses the first 24 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        let b = bytes.get(..REPORT_BLOCK_LEN).ok_or(ReportError::TooShort)?;
        let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        // Sign-extend the 24-bit count: shift it to the top, then arithmetically back.
        let cumulative_lost = (i32::from_be_bytes([b[5], b[6], b[7], 0])) >> 8;
        Ok(ReportBlock {
            ssrc: word(0),
            fraction_lost: b[4],
            cumulative_lost,
            extended_highest_sequence: word(8),
            jitter: word(12),
            last_sender_report: word(16),
            delay_since_last_sender_report: word(20),
        })
    }

    /// Writes the block into the first 24 bytes of `out`; a cumulative loss beyond 24 bits is
    /// clamped, as RFC 3550 §6.4.1 asks.
    pub fn write(&self, out: &mut [u8]) -> Result<(), ReportError> {
        let out = out
            .get_mut(..REPORT_BLOCK_LEN)
            .ok_or(ReportError::BufferTooSmall)?;
        out[..4].copy_from_slice(&self.ssrc.to_be_bytes());
        let lost = self
            .cumulative_lost
            .clamp(CUMULATIVE_LOST_MIN, CUMULATIVE_LOST_MAX);
        out[4] = self.fraction_lost;
        out[5..8].copy_from_slice(&lost.to_be_bytes()[1..]);
        out[8..12].copy_from_slice(&self.extended_highest_sequence.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.last_sender_report.to_be_bytes());
        out[20..24].copy_from_slice(&self.delay_since_last_sender_report.to_be_bytes());
        Ok(())
    }
}

/// The sender info of a sender report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ssrc: u32,
    /// 64-bit NTP timestamp: seconds since 1900 in the high half, fraction in the low.
    pub ntp_timestamp: u64,
    /// The same instant on the RTP clock of the stream.
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

impl SenderInfo {
    /// Parses the sender info of one RTCP packet, which must be a sender report.
    pub fn parse(packet: &[u8]) -> Result<Self, ReportError> {
        let (blocks, _) = ReportBlocks::parse(packet)?;
        if blocks.packet_type != SENDER_REPORT {
            return Err(ReportError::WrongType);
        }
        let word = |at: usize| {
            u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]])
        };
        Ok(SenderInfo {
            ssrc: word(4),
            ntp_timestamp: u64::from(word(8)) << 32 | u64::from(word(12)),
            rtp_timestamp: word(16),
            packet_count: word(20),
            octet_count: word(24),
        })
    }

    /// What a receiver will echo back as LSR.
    pub fn compact_ntp(&self) -> u32 {
        compact_ntp(self.ntp_timestamp)
    }
}

/// The report blocks of a sender or receiver report.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    /// Who sent the report.
    pub sender_ssrc: u32,
    pub packet_type: u8,
    blocks: &'a [u8],
}

impl<'a> ReportBlocks<'a> {
    /// Parses one RTCP packet, SR or RR. Returns the blocks and the declared packet length;
    /// profile-specific extensions after the blocks are ignored.
    fn parse(packet: &'a [u8]) -> Result<(Self, usize), ReportError> {
        if packet.len() < RR_FIXED_LEN {
            return Err(ReportError::TooShort);
        }
        if packet[0] >> 6 != 2 {
            return Err(ReportError::BadVersion);
        }
        let fixed = match packet[1] {
            SENDER_REPORT => SR_FIXED_LEN,
            RECEIVER_REPORT => RR_FIXED_LEN,
            _ => return Err(ReportError::WrongType),
        };
        let declared = 4 * (u16::from_be_bytes([packet[2], packet[3]]) as usize + 1);
        let blocks_len = REPORT_BLOCK_LEN * (packet[0] & 0x1f) as usize;
        if declared > packet.len() || fixed + blocks_len > declared {
            return Err(ReportError::BadLength);
        }
        let blocks = ReportBlocks {
            sender_ssrc: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            packet_type: packet[1],
            blocks: &packet[fixed..fixed + blocks_len],
        };
        Ok((blocks, declared))
    }
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        let (block, rest) = self.blocks.split_at_checked(REPORT_BLOCK_LEN)?;
        self.blocks = rest;
        ReportBlock::parse(block).ok()
    }
}

/// The report blocks of one RTCP packet, SR or RR (browsers put their reception reports in
/// their SRs once they send media themselves).
pub fn report_blocks(packet: &[u8]) -> Result<ReportBlocks<'_>, ReportError> {
    ReportBlocks::parse(packet).map(|(blocks, _)| blocks)
}

/// Writes a receiver report; returns its length.
pub fn write_receiver_report(
    out: &mut [u8],
    sender_ssrc: u32,
    blocks: &[ReportBlock],
) -> Result<usize, ReportError> {
    let len = write_blocks(out, RR_FIXED_LEN, blocks)?;
    out[0] = 0x80 | blocks.len() as u8;
    out[1] = RECEIVER_REPORT;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    Ok(len)
}

/// Writes a sender report with report blocks; returns its length. (`wire::rtcp` copies a
/// publisher's SR; this one is built from the relay's own numbers.)
pub fn write_sender_report(
    out: &mut [u8],
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, ReportError> {
    let len = write_blocks(out, SR_FIXED_LEN, blocks)?;
    out[0] = 0x80 | blocks.len() as u8;
    out[1] = SENDER_REPORT;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&info.ssrc.to_be_bytes());
    out[8..16].copy_from_slice(&info.ntp_timestamp.to_be_bytes());
    out[16..20].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
    out[20..24].copy_from_slice(&info.packet_count.to_be_bytes());
    out[24..28].copy_from_slice(&info.octet_count.to_be_bytes());
    Ok(len)
}

fn write_blocks(
    out: &mut [u8],
    fixed: usize,
    blocks: &[ReportBlock],
) -> Result<usize, ReportError> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return Err(ReportError::TooManyBlocks);
    }
    let len = fixed + REPORT_BLOCK_LEN * blocks.len();
    if out.len() < len {
        return Err(ReportError::BufferTooSmall);
    }
    for (block, slot) in blocks
        .iter()
        .zip(out[fixed..len].chunks_exact_mut(REPORT_BLOCK_LEN))
    {
        block.write(slot)?;
    }
    Ok(len)
}

/// The middle 32 bits of an NTP timestamp (16.16 fixed point seconds), as LSR carries it.
pub fn compact_ntp(ntp_timestamp: u64) -> u32 {
    (ntp_timestamp >> 16) as u32
}

/// The NTP timestamp of a wall-clock time given as time since the Unix epoch.
pub fn ntp_from_unix(since_unix_epoch: Duration) -> u64 {
    let seconds = since_unix_epoch.as_secs() + NTP_UNIX_OFFSET_SECS;
    let fraction = (u64::from(since_unix_epoch.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// A duration in 1/65536 s (DLSR, and differences of compact NTP times).
pub fn duration_from_compact(units: u32) -> Duration {
    Duration::from_nanos((u64::from(units) * 1_000_000_000) >> 16)
}

/// The other way round, saturating at about 18 hours.
pub fn compact_from_duration(duration: Duration) -> u32 {
    let units = (duration.as_nanos() << 16) / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcp::packet::Packet;
    use rtcp::receiver_report::ReceiverReport;
    use rtcp::reception_report::ReceptionReport;
    use rtcp::sender_report::SenderReport;

    fn block(ssrc: u32, cumulative_lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost,
            extended_highest_sequence: 0x0001_0005,
            jitter: 321,
            last_sender_report: 0xdead_beef,
            delay_since_last_sender_report: 65536 / 2,
        }
    }

    #[test]
    fn receiver_report_round_trip_with_negative_and_clamped_loss() {
        let mut out = [0u8; 128];
        let blocks = [block(1, 42), block(2, -3), block(3, 1 << 30)];
        let n = write_receiver_report(&mut out, 0x99, &blocks).unwrap();
        assert_eq!(n, 8 + 3 * 24);
        let parsed = report_blocks(&out[..n]).unwrap();
        assert_eq!(
            (parsed.sender_ssrc, parsed.packet_type),
            (0x99, RECEIVER_REPORT)
        );
        let got: Vec<_> = parsed.collect();
        assert_eq!(got[..2], blocks[..2]);
        assert_eq!(got[2].cumulative_lost, CUMULATIVE_LOST_MAX);
        assert_eq!(
            write_receiver_report(&mut out[..50], 1, &blocks),
            Err(ReportError::BufferTooSmall)
        );
        assert_eq!(
            write_receiver_report(&mut [0u8; 1024], 1, &[block(1, 0); 32]),
            Err(ReportError::TooManyBlocks)
        );
    }

    #[test]
    fn sender_report_round_trip() {
        let info = SenderInfo {
            ssrc: 7,
            ntp_timestamp: 0x1122_3344_5566_7788,
            rtp_timestamp: 90_000,
            packet_count: 10,
            octet_count: 12_000,
        };
        let mut out = [0u8; 64];
        let n = write_sender_report(&mut out, &info, &[block(5, 0)]).unwrap();
        assert_eq!(n, 52);
        assert_eq!(SenderInfo::parse(&out[..n]), Ok(info));
        assert_eq!(info.compact_ntp(), 0x3344_5566);
        assert_eq!(
            report_blocks(&out[..n]).unwrap().collect::<Vec<_>>(),
            vec![block(5, 0)]
        );
        let rr = write_receiver_report(&mut out, 1, &[]).unwrap();
        assert_eq!(SenderInfo::parse(&out[..rr]), Err(ReportError::WrongType));
    }

    #[test]
    fn malformed_reports_are_errors() {
        let mut out = [0u8; 64];
        let n = write_receiver_report(&mut out, 1, &[block(1, 0)]).unwrap();
        assert_eq!(report_blocks(&out[..7]).err(), Some(ReportError::TooShort));
        let mut p = out;
        p[0] = 0x01;
        assert_eq!(report_blocks(&p[..n]).err(), Some(ReportError::BadVersion));
        let mut p = out;
        p[1] = 205;
        assert_eq!(report_blocks(&p[..n]).err(), Some(ReportError::WrongType));
        let mut p = out;
        p[0] = 0x82; // two blocks claimed, one present
        assert_eq!(report_blocks(&p[..n]).err(), Some(ReportError::BadLength));
        let mut p = out;
        p[1] = SENDER_REPORT; // an SR needs 20 more bytes than this RR has
        assert_eq!(SenderInfo::parse(&p[..n]), Err(ReportError::BadLength));
        assert_eq!(ReportBlock::parse(&out[..23]), Err(ReportError::TooShort));
    }

    #[test]
    fn ntp_helpers() {
        let ntp = ntp_from_unix(Duration::new(1, 500_000_000));
        assert_eq!(ntp >> 32, NTP_UNIX_OFFSET_SECS + 1);
        assert_eq!(ntp as u32, 1 << 31);
        assert_eq!(
            compact_from_duration(Duration::from_millis(1500)),
            0x0001_8000
        );
        assert_eq!(
            duration_from_compact(0x0001_8000),
            Duration::from_millis(1500)
        );
        assert_eq!(
            compact_from_duration(Duration::from_secs(1 << 20)),
            u32::MAX
        );
    }

    fn reception_report(b: &ReportBlock) -> ReceptionReport {
        ReceptionReport {
            ssrc: b.ssrc,
            fraction_lost: b.fraction_lost,
            total_lost: (b.cumulative_lost as u32) & 0xff_ffff,
            last_sequence_number: b.extended_highest_sequence,
            jitter: b.jitter,
            last_sender_report: b.last_sender_report,
            delay: b.delay_since_last_sender_report,
        }
    }

    #[test]
    fn the_rtcp_crate_reads_what_we_write() {
        let blocks = [block(1, 42), block(2, -3)];
        let mut out = [0u8; 128];
        let n = write_receiver_report(&mut out, 0x99, &blocks).unwrap();
        let parsed = rtcp::packet::unmarshal(&mut &out[..n]).unwrap();
        let rr = parsed[0].as_any().downcast_ref::<ReceiverReport>().unwrap();
        assert_eq!(rr.ssrc, 0x99);
        let want: Vec<_> = blocks.iter().map(reception_report).collect();
        assert_eq!(rr.reports, want);
        assert_eq!(rr.reports[1].total_lost, 0xff_fffd, "-3 in 24 bits");

        let info = SenderInfo {
            ssrc: 3,
            ntp_timestamp: 0xaaaa_bbbb_cccc_dddd,
            rtp_timestamp: 4,
            packet_count: 5,
            octet_count: 6,
        };
        let n = write_sender_report(&mut out, &info, &blocks[..1]).unwrap();
        let parsed = rtcp::packet::unmarshal(&mut &out[..n]).unwrap();
        let sr = parsed[0].as_any().downcast_ref::<SenderReport>().unwrap();
        assert_eq!(
            (sr.ssrc, sr.ntp_time, sr.rtp_time),
            (3, 0xaaaa_bbbb_cccc_dddd, 4)
        );
        assert_eq!((sr.packet_count, sr.octet_count), (5, 6));
        assert_eq!(sr.reports, want[..1]);
    }

    #[test]
    fn we_read_what_the_rtcp_crate_writes() {
        let blocks = [block(8, -1), block(9, 77)];
        let sr = SenderReport {
            ssrc: 11,
            ntp_time: 0x0102_0304_0506_0708,
            rtp_time: 12,
            packet_count: 13,
            octet_count: 14,
            reports: blocks.iter().map(reception_report).collect(),
            profile_extensions: Default::default(),
        };
        let boxed: Box<dyn Packet + Send + Sync> = Box::new(sr);
        let bytes = rtcp::packet::marshal(&[boxed]).unwrap();
        let info = SenderInfo::parse(&bytes).unwrap();
        assert_eq!(
            (info.ssrc, info.ntp_timestamp, info.rtp_timestamp),
            (11, 0x0102_0304_0506_0708, 12)
        );
        assert_eq!((info.packet_count, info.octet_count), (13, 14));
        assert_eq!(report_blocks(&bytes).unwrap().collect::<Vec<_>>(), blocks);
    }
}
