//! Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01):
//! the RTP header extension that numbers every packet of a transport (§2), and the feedback
//! message (RTPFB, PT 205, FMT 15, §3.1) that tells the sender when each one arrived, so its
//! congestion controller (GCC in browsers) can estimate the path.
//!
//! Feedback layout after the 8-byte feedback header: base sequence, packet status count,
//! 24-bit reference time (64 ms units), feedback packet count, then 16-bit status chunks
//! (run-length, or vectors of 14 one-bit / 7 two-bit symbols), then one receive delta per
//! received packet in 250 µs units (one byte when 0..=255, else two bytes signed).
//! Parsing and writing work in place, without allocation. This file parses; `write` builds
//! feedback from arrival times; `extension` reads and writes the header extension.

use super::rtcp::TRANSPORT_FEEDBACK;

mod extension;
mod write;

pub use extension::{find_extension, read_transport_sequence, write_transport_sequence};
pub use write::{FeedbackHeader, WrittenFeedback, write_feedback};

/// Feedback message type of transport-wide feedback within transport-layer feedback.
pub const FMT_TRANSPORT_CC: u8 = 15;
/// Receive deltas count in these.
pub const DELTA_TICK_US: i64 = 250;
/// The reference time counts in these.
pub const REFERENCE_TICK_US: i64 = 64_000;
/// RTCP header, two SSRCs, base sequence, status count, reference time and feedback count.
const FIXED_LEN: usize = 20;
const NOT_RECEIVED: u8 = 0;
const SMALL_DELTA: u8 = 1;
const LARGE_DELTA: u8 = 2;
const MAX_RUN_LENGTH: usize = 0x1fff;
const ONE_BIT_CAPACITY: usize = 14;
const TWO_BIT_CAPACITY: usize = 7;

/// Why a feedback packet or extension was refused or could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TwccError {
    #[error("shorter than its fixed part")]
    TooShort,
    #[error("version is not 2")]
    BadVersion,
    #[error("not transport-wide feedback (PT 205, FMT 15)")]
    WrongType,
    #[error("length field or padding disagrees with the packet size")]
    BadLength,
    #[error("status chunks or receive deltas run past the end")]
    Truncated,
    #[error("reserved packet status symbol")]
    ReservedSymbol,
    #[error("no received packet to take the reference time from")]
    NothingReceived,
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("the packet has no transport-wide sequence number element")]
    NoExtension,
}

/// What the feedback says of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketStatus {
    NotReceived,
    /// Arrival relative to the previous received packet (the first: to the reference time),
    /// in [`DELTA_TICK_US`] units.
    Received {
        delta_ticks: i16,
    },
}

/// One packet of a feedback message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketFeedback {
    pub sequence: u16,
    pub status: PacketStatus,
}

/// A transport-wide feedback message, borrowed from the packet it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportFeedback<'a> {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    pub base_sequence: u16,
    pub status_count: u16,
    /// 24 bits in [`REFERENCE_TICK_US`] units, on the feedback sender's clock; compare two
    /// of them modulo 2^24.
    pub reference_time: u32,
    pub feedback_count: u8,
    chunks: &'a [u8],
    deltas: &'a [u8],
}

impl<'a> TransportFeedback<'a> {
    /// Parses one RTCP packet and checks that every status and delta it announces is there,
    /// so iterating [`Self::packets`] afterwards cannot run short.
    pub fn parse(packet: &'a [u8]) -> Result<Self, TwccError> {
        if packet.len() < FIXED_LEN {
            return Err(TwccError::TooShort);
        }
        if packet[0] >> 6 != 2 {
            return Err(TwccError::BadVersion);
        }
        if packet[1] != TRANSPORT_FEEDBACK || packet[0] & 0x1f != FMT_TRANSPORT_CC {
            return Err(TwccError::WrongType);
        }
        let declared = 4 * (u16::from_be_bytes([packet[2], packet[3]]) as usize + 1);
        if declared > packet.len() || declared < FIXED_LEN {
            return Err(TwccError::BadLength);
        }
        let mut end = declared;
        if packet[0] & 0x20 != 0 {
            let padding = packet[declared - 1] as usize;
            if padding == 0 || padding > declared - FIXED_LEN {
                return Err(TwccError::BadLength);
            }
            end -= padding;
        }
        let status_count = u16::from_be_bytes([packet[14], packet[15]]);
        let body = &packet[FIXED_LEN..end];
        let (chunk_len, delta_len) = measure_chunks(body, status_count)?;
        if chunk_len + delta_len > body.len() {
            return Err(TwccError::Truncated);
        }
        Ok(TransportFeedback {
            sender_ssrc: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            media_ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            base_sequence: u16::from_be_bytes([packet[12], packet[13]]),
            status_count,
            reference_time: u32::from_be_bytes([0, packet[16], packet[17], packet[18]]),
            feedback_count: packet[19],
            chunks: &body[..chunk_len],
            deltas: &body[chunk_len..chunk_len + delta_len],
        })
    }

    /// Every packet the feedback covers, from the base sequence on, in order.
    pub fn packets(&self) -> FeedbackPackets<'a> {
        FeedbackPackets {
            symbols: Symbols::new(self.chunks, self.status_count),
            deltas: self.deltas,
            sequence: self.base_sequence,
        }
    }
}

/// Iterator over the packets of a [`TransportFeedback`].
#[derive(Debug, Clone)]
pub struct FeedbackPackets<'a> {
    symbols: Symbols<'a>,
    deltas: &'a [u8],
    sequence: u16,
}

impl Iterator for FeedbackPackets<'_> {
    type Item = PacketFeedback;

    fn next(&mut self) -> Option<PacketFeedback> {
        // Parse checked chunks and deltas, so errors cannot occur here; end quietly if so.
        let symbol = self.symbols.next_symbol().ok()??;
        let status = match symbol {
            SMALL_DELTA => {
                let (&b, rest) = self.deltas.split_first()?;
                self.deltas = rest;
                PacketStatus::Received {
                    delta_ticks: b as i16,
                }
            }
            LARGE_DELTA => {
                let (b, rest) = self.deltas.split_at_checked(2)?;
                self.deltas = rest;
                PacketStatus::Received {
                    delta_ticks: i16::from_be_bytes([b[0], b[1]]),
                }
            }
            _ => PacketStatus::NotReceived,
        };
        let sequence = self.sequence;
        self.sequence = sequence.wrapping_add(1);
        Some(PacketFeedback { sequence, status })
    }
}

/// Walks status chunks symbol by symbol, stopping after `remaining` symbols.
#[derive(Debug, Clone)]
struct Symbols<'a> {
    chunks: &'a [u8],
    chunks_consumed: usize,
    remaining: u16,
    chunk: u16,
    /// Symbols of `chunk` not yet yielded, and the index of the next one.
    left_in_chunk: usize,
    index: usize,
}

impl<'a> Symbols<'a> {
    fn new(chunks: &'a [u8], remaining: u16) -> Self {
        Symbols {
            chunks,
            chunks_consumed: 0,
            remaining,
            chunk: 0,
            left_in_chunk: 0,
            index: 0,
        }
    }

    fn next_symbol(&mut self) -> Result<Option<u8>, TwccError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        // A run of length zero carries nothing: skip to the next chunk (a loop, not
        // recursion, so a packet full of empty runs cannot exhaust the stack).
        while self.left_in_chunk == 0 {
            let at = 2 * self.chunks_consumed;
            let Some(bytes) = self.chunks.get(at..at + 2) else {
                return Err(TwccError::Truncated);
            };
            self.chunk = u16::from_be_bytes([bytes[0], bytes[1]]);
            self.chunks_consumed += 1;
            self.index = 0;
            self.left_in_chunk = match self.chunk >> 14 {
                0b00 | 0b01 => (self.chunk & 0x1fff) as usize,
                0b10 => ONE_BIT_CAPACITY,
                _ => TWO_BIT_CAPACITY,
            };
        }
        let symbol = match self.chunk >> 14 {
            0b00 | 0b01 => ((self.chunk >> 13) & 0b11) as u8,
            0b10 => ((self.chunk >> (13 - self.index)) & 1) as u8,
            _ => ((self.chunk >> (12 - 2 * self.index)) & 0b11) as u8,
        };
        if symbol == 3 {
            return Err(TwccError::ReservedSymbol);
        }
        self.index += 1;
        self.left_in_chunk -= 1;
        self.remaining -= 1;
        Ok(Some(symbol))
    }
}

/// Bytes of status chunks and of receive deltas that `status_count` statuses take, chunk by
/// chunk: a run counts at once, so the cost follows the packet's size, not the (up to 65535)
/// statuses a few run-length chunks can claim.
fn measure_chunks(body: &[u8], status_count: u16) -> Result<(usize, usize), TwccError> {
    let mut remaining = status_count as usize;
    let mut chunk_len = 0;
    let mut delta_len = 0;
    while remaining > 0 {
        let bytes = body
            .get(chunk_len..chunk_len + 2)
            .ok_or(TwccError::Truncated)?;
        let chunk = u16::from_be_bytes([bytes[0], bytes[1]]);
        chunk_len += 2;
        let (count, bits) = match chunk >> 14 {
            0b00 | 0b01 => {
                let run = ((chunk & 0x1fff) as usize).min(remaining);
                let symbol = ((chunk >> 13) & 0b11) as u8;
                if run > 0 && symbol == 3 {
                    return Err(TwccError::ReservedSymbol);
                }
                remaining -= run;
                delta_len += run * delta_size(symbol);
                continue;
            }
            0b10 => (ONE_BIT_CAPACITY.min(remaining), 1),
            _ => (TWO_BIT_CAPACITY.min(remaining), 2),
        };
        for i in 0..count {
            let shift = 14 - bits * (i + 1);
            let symbol = ((chunk >> shift) & ((1 << bits) - 1)) as u8;
            if symbol == 3 {
                return Err(TwccError::ReservedSymbol);
            }
            delta_len += delta_size(symbol);
        }
        remaining -= count;
    }
    Ok((chunk_len, delta_len))
}

fn delta_size(symbol: u8) -> usize {
    match symbol {
        SMALL_DELTA => 1,
        LARGE_DELTA => 2,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcp::packet::Packet;
    use rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk,
        SymbolSizeTypeTcc, SymbolTypeTcc, TransportLayerCc,
    };

    pub(super) const HEADER: FeedbackHeader = FeedbackHeader {
        sender_ssrc: 0x1111,
        media_ssrc: 0x2222,
        base_sequence: 65530,
        feedback_count: 7,
    };

    pub(super) fn write(arrivals: &[Option<i64>]) -> (Vec<u8>, u16) {
        let mut out = [0u8; 1500];
        let w = write_feedback(&mut out, &HEADER, arrivals.iter().copied()).unwrap();
        (out[..w.len].to_vec(), w.packets)
    }

    /// Arrival times back from a feedback: reference time plus the running sum of deltas.
    pub(super) fn arrivals_of(packet: &[u8]) -> Vec<(u16, Option<i64>)> {
        let fb = TransportFeedback::parse(packet).unwrap();
        let mut time = i64::from(fb.reference_time) * REFERENCE_TICK_US;
        fb.packets()
            .map(|p| match p.status {
                PacketStatus::NotReceived => (p.sequence, None),
                PacketStatus::Received { delta_ticks } => {
                    time += i64::from(delta_ticks) * DELTA_TICK_US;
                    (p.sequence, Some(time))
                }
            })
            .collect()
    }

    pub(super) fn theirs(packet: &[u8]) -> TransportLayerCc {
        let parsed = rtcp::packet::unmarshal(&mut &packet[..]).unwrap();
        parsed[0]
            .as_any()
            .downcast_ref::<TransportLayerCc>()
            .unwrap()
            .clone()
    }

    #[test]
    fn we_read_what_the_rtcp_crate_writes() {
        let cc = TransportLayerCc {
            sender_ssrc: 5,
            media_ssrc: 6,
            base_sequence_number: 65535,
            packet_status_count: 10,
            reference_time: 0xabcdef,
            fb_pkt_count: 200,
            packet_chunks: vec![
                PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                    type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                    symbol_size: SymbolSizeTypeTcc::TwoBit,
                    symbol_list: vec![
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                        SymbolTypeTcc::PacketNotReceived,
                        SymbolTypeTcc::PacketReceivedLargeDelta,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                        SymbolTypeTcc::PacketNotReceived,
                        SymbolTypeTcc::PacketNotReceived,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                    ],
                }),
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                    run_length: 3,
                }),
            ],
            recv_deltas: [
                (1, 250),
                (2, -1000),
                (1, 63_750),
                (1, 0),
                (1, 500),
                (1, 750),
                (1, 1000),
            ]
            .iter()
            .map(|&(kind, delta)| RecvDelta {
                type_tcc_packet: if kind == 1 {
                    SymbolTypeTcc::PacketReceivedSmallDelta
                } else {
                    SymbolTypeTcc::PacketReceivedLargeDelta
                },
                delta,
            })
            .collect(),
        };
        let boxed: Box<dyn Packet + Send + Sync> = Box::new(cc);
        let bytes = rtcp::packet::marshal(&[boxed]).unwrap();
        let fb = TransportFeedback::parse(&bytes).unwrap();
        assert_eq!(
            (fb.sender_ssrc, fb.media_ssrc, fb.base_sequence),
            (5, 6, 65535)
        );
        assert_eq!((fb.reference_time, fb.feedback_count), (0xabcdef, 200));
        let got: Vec<(u16, Option<i16>)> = fb
            .packets()
            .map(|p| match p.status {
                PacketStatus::Received { delta_ticks } => (p.sequence, Some(delta_ticks)),
                PacketStatus::NotReceived => (p.sequence, None),
            })
            .collect();
        let r = |t| Some(t);
        assert_eq!(
            got,
            vec![
                (65535, r(1)),
                (0, None),
                (1, r(-4)),
                (2, r(255)),
                (3, None),
                (4, None),
                (5, r(0)),
                (6, r(2)),
                (7, r(3)),
                (8, r(4)),
            ]
        );
    }

    #[test]
    fn a_captured_chrome_feedback_parses_as_the_rtcp_crate_reads_it() {
        // From the rtcp crate's tests: a two-bit vector, then a run longer than the count.
        let p = [
            0xaf, 0xcd, 0x0, 0x7, 0x9b, 0x74, 0xf6, 0x1f, 0x93, 0x71, 0xdc, 0xbc, 0x85, 0x3c, 0x0,
            0x9, 0x63, 0xf9, 0x16, 0xb3, 0xd5, 0x52, 0x0, 0x30, 0x9b, 0xaa, 0x6a, 0xaa, 0x7b, 0x1,
            0x9, 0x1,
        ];
        let cc = theirs(&p);
        let fb = TransportFeedback::parse(&p).unwrap();
        assert_eq!((fb.base_sequence, fb.status_count), (34108, 9));
        assert_eq!(fb.reference_time, cc.reference_time);
        let ours: Vec<i64> = fb
            .packets()
            .filter_map(|p| match p.status {
                PacketStatus::Received { delta_ticks } => Some(i64::from(delta_ticks) * 250),
                PacketStatus::NotReceived => None,
            })
            .collect();
        assert_eq!(
            ours,
            cc.recv_deltas.iter().map(|d| d.delta).collect::<Vec<_>>()
        );
        assert_eq!(fb.packets().count(), 9);
    }

    #[test]
    fn malformed_feedback_is_an_error() {
        let (p, _) = write(&[Some(0), Some(300_000), None, Some(301_000)]);
        assert_eq!(TransportFeedback::parse(&p[..19]), Err(TwccError::TooShort));
        let mut bad = p.clone();
        bad[0] &= 0x3f;
        assert_eq!(TransportFeedback::parse(&bad), Err(TwccError::BadVersion));
        let mut bad = p.clone();
        bad[0] = (bad[0] & 0xe0) | 1;
        assert_eq!(TransportFeedback::parse(&bad), Err(TwccError::WrongType));
        let mut bad = p.clone();
        bad[3] += 1;
        assert_eq!(TransportFeedback::parse(&bad), Err(TwccError::BadLength));
        let mut bad = p.clone();
        bad[15] = 200; // more statuses than chunks
        assert_eq!(TransportFeedback::parse(&bad), Err(TwccError::Truncated));
        let mut bad = p.clone();
        bad[20] = 0x60; // run of symbol 3
        assert_eq!(
            TransportFeedback::parse(&bad),
            Err(TwccError::ReservedSymbol)
        );
        // Empty runs are skipped without recursion, however many there are.
        let mut empty_runs = vec![0x8f, 205, 0x01, 0x00];
        empty_runs.extend_from_slice(&[0; 10]); // SSRCs, base sequence
        empty_runs.extend_from_slice(&[0, 1, 0, 0, 0, 0]); // one status, reference, count
        empty_runs.resize(1028, 0);
        assert_eq!(
            TransportFeedback::parse(&empty_runs),
            Err(TwccError::Truncated)
        );
    }
}
