//! Generic NACK (RFC 4585 §6.2.1): a transport-layer feedback message (PT 205, FMT 1) that lists
//! lost RTP sequence numbers as (PID, BLP) pairs — PID is one lost packet, bit `i` of BLP says
//! that `PID + i + 1` is lost too. Parsed in place and written into the caller's buffer, with no
//! allocation: a relay reads these from every player and writes them to every publisher.

use super::rtcp::TRANSPORT_FEEDBACK;

/// Feedback message type of a generic NACK within transport-layer feedback.
pub const FMT_NACK: u8 = 1;
/// Header, sender SSRC and media SSRC: what precedes the first (PID, BLP) pair.
const FIXED_LEN: usize = 12;
const PAIR_LEN: usize = 4;
/// A BLP covers the 16 sequence numbers after its PID.
const BLP_SPAN: u16 = 16;

/// Why a NACK was refused or could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NackError {
    #[error("shorter than a NACK with one (PID, BLP) pair")]
    TooShort,
    #[error("version is not 2")]
    BadVersion,
    #[error("not a generic NACK (PT 205, FMT 1)")]
    WrongType,
    #[error("length field or padding disagrees with the packet size")]
    BadLength,
    #[error("no sequence numbers to request")]
    Empty,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// A generic NACK, borrowed from the packet it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack<'a> {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    /// The (PID, BLP) pairs, a multiple of 4 bytes, never empty.
    pairs: &'a [u8],
}

impl<'a> Nack<'a> {
    /// Parses one RTCP packet (as [`super::rtcp::compound`] yields it, or a lone packet).
    /// Bytes after the length the header declares are ignored, as in a compound packet.
    pub fn parse(packet: &'a [u8]) -> Result<Self, NackError> {
        if packet.len() < FIXED_LEN + PAIR_LEN {
            return Err(NackError::TooShort);
        }
        if packet[0] >> 6 != 2 {
            return Err(NackError::BadVersion);
        }
        if packet[1] != TRANSPORT_FEEDBACK || packet[0] & 0x1f != FMT_NACK {
            return Err(NackError::WrongType);
        }
        let declared = 4 * (u16::from_be_bytes([packet[2], packet[3]]) as usize + 1);
        if declared > packet.len() || declared < FIXED_LEN + PAIR_LEN {
            return Err(NackError::BadLength);
        }
        let mut end = declared;
        if packet[0] & 0x20 != 0 {
            // RFC 3550 §6.4.1: the last octet counts the padding, itself included.
            let padding = packet[declared - 1] as usize;
            if padding == 0 || padding > declared - FIXED_LEN {
                return Err(NackError::BadLength);
            }
            end -= padding;
        }
        let pairs = &packet[FIXED_LEN..end];
        if pairs.is_empty() || !pairs.len().is_multiple_of(PAIR_LEN) {
            return Err(NackError::BadLength);
        }
        Ok(Nack {
            sender_ssrc: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            media_ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            pairs,
        })
    }

    /// The (PID, BLP) pairs as they are on the wire.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.pairs.chunks_exact(PAIR_LEN).map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        })
    }

    /// Every sequence number the NACK reports lost, pair by pair, in wire order. A sender that
    /// repeats a number across pairs gets it repeated here; the retransmission side's
    /// anti-repeat rule absorbs that.
    pub fn lost(&self) -> LostSequences<'a> {
        LostSequences {
            pairs: self.pairs,
            pid: 0,
            blp: 0,
            pid_pending: false,
        }
    }
}

/// Iterator over the lost sequence numbers of a [`Nack`].
#[derive(Debug, Clone)]
pub struct LostSequences<'a> {
    pairs: &'a [u8],
    pid: u16,
    /// Bits of the current BLP not yet yielded.
    blp: u16,
    pid_pending: bool,
}

impl Iterator for LostSequences<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        loop {
            if self.pid_pending {
                self.pid_pending = false;
                return Some(self.pid);
            }
            if self.blp != 0 {
                let bit = self.blp.trailing_zeros() as u16;
                self.blp &= self.blp - 1;
                return Some(self.pid.wrapping_add(bit + 1));
            }
            let (pair, rest) = self.pairs.split_at_checked(PAIR_LEN)?;
            self.pairs = rest;
            self.pid = u16::from_be_bytes([pair[0], pair[1]]);
            self.blp = u16::from_be_bytes([pair[2], pair[3]]);
            self.pid_pending = true;
        }
    }
}

/// Writes a generic NACK for `lost`, which must be in ascending order modulo 2^16 (as the NACK
/// scheduler yields them: 65534, 65535, 0, 1 is ascending). Numbers within 16 of a pair's PID
/// share its BLP; a repeated number is skipped. Writes as many pairs as fit in `out` and
/// returns `(bytes written, how many of lost were covered)`, so a caller with a small buffer
/// sends the rest in another packet.
pub fn write_nack(
    out: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
    lost: &[u16],
) -> Result<(usize, usize), NackError> {
    let Some(&first) = lost.first() else {
        return Err(NackError::Empty);
    };
    if out.len() < FIXED_LEN + PAIR_LEN {
        return Err(NackError::BufferTooSmall);
    }
    // The RTCP length field counts 32-bit words minus one in 16 bits.
    let max_pairs = ((out.len() - FIXED_LEN) / PAIR_LEN).min(u16::MAX as usize - 2);
    let mut pairs = 0;
    let mut pid = first;
    let mut blp = 0u16;
    let mut covered = 1;
    for &seq in &lost[1..] {
        let distance = seq.wrapping_sub(pid);
        if distance == 0 {
            covered += 1;
            continue;
        }
        if (1..=BLP_SPAN).contains(&distance) {
            blp |= 1 << (distance - 1);
            covered += 1;
            continue;
        }
        put_pair(out, pairs, pid, blp);
        pairs += 1;
        if pairs == max_pairs {
            return Ok((finish(out, sender_ssrc, media_ssrc, pairs), covered));
        }
        pid = seq;
        blp = 0;
        covered += 1;
    }
    put_pair(out, pairs, pid, blp);
    pairs += 1;
    Ok((finish(out, sender_ssrc, media_ssrc, pairs), covered))
}

fn put_pair(out: &mut [u8], index: usize, pid: u16, blp: u16) {
    let at = FIXED_LEN + index * PAIR_LEN;
    out[at..at + 2].copy_from_slice(&pid.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&blp.to_be_bytes());
}

fn finish(out: &mut [u8], sender_ssrc: u32, media_ssrc: u32, pairs: usize) -> usize {
    let len = FIXED_LEN + pairs * PAIR_LEN;
    out[0] = 0x80 | FMT_NACK;
    out[1] = TRANSPORT_FEEDBACK;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    out[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcp::packet::Packet;
    use rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

    fn written(lost: &[u16]) -> Vec<u8> {
        let mut out = [0u8; 256];
        let (n, covered) = write_nack(&mut out, 0x1111, 0x2222, lost).unwrap();
        assert_eq!(covered, lost.len());
        out[..n].to_vec()
    }

    fn lost_of(packet: &[u8]) -> Vec<u16> {
        Nack::parse(packet).unwrap().lost().collect()
    }

    #[test]
    fn packs_neighbours_into_one_pair_and_far_ones_into_new_pairs() {
        let p = written(&[100, 101, 105, 116, 117, 300]);
        let nack = Nack::parse(&p).unwrap();
        assert_eq!((nack.sender_ssrc, nack.media_ssrc), (0x1111, 0x2222));
        let pairs: Vec<_> = nack.pairs().collect();
        // 117 is 17 after 100: one past the BLP, so it starts a pair.
        assert_eq!(pairs, vec![(100, 1 | 1 << 4 | 1 << 15), (117, 0), (300, 0)]);
        assert_eq!(lost_of(&p), vec![100, 101, 105, 116, 117, 300]);
    }

    #[test]
    fn wraps_around_sequence_zero() {
        let p = written(&[65534, 65535, 0, 3]);
        let nack = Nack::parse(&p).unwrap();
        assert_eq!(nack.pairs().collect::<Vec<_>>(), vec![(65534, 0b10011)]);
        assert_eq!(lost_of(&p), vec![65534, 65535, 0, 3]);
    }

    #[test]
    fn a_small_buffer_gets_the_first_pairs_and_says_how_many_were_covered() {
        let mut out = [0u8; 20]; // room for two pairs
        let lost = [1, 2, 40, 80, 81];
        let (n, covered) = write_nack(&mut out, 1, 2, &lost).unwrap();
        assert_eq!((n, covered), (20, 3));
        assert_eq!(lost_of(&out[..n]), vec![1, 2, 40]);
        let (n, covered) = write_nack(&mut out, 1, 2, &lost[covered..]).unwrap();
        assert_eq!((n, covered), (16, 2));
        assert_eq!(lost_of(&out[..n]), vec![80, 81]);
        assert_eq!(
            write_nack(&mut [0u8; 15], 1, 2, &lost),
            Err(NackError::BufferTooSmall)
        );
        assert_eq!(write_nack(&mut out, 1, 2, &[]), Err(NackError::Empty));
    }

    #[test]
    fn duplicates_are_written_once() {
        assert_eq!(lost_of(&written(&[7, 7, 8, 8])), vec![7, 8]);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let good = written(&[5, 6]);
        assert_eq!(Nack::parse(&good[..15]), Err(NackError::TooShort));
        let mut p = good.clone();
        p[0] = 0x41;
        assert_eq!(Nack::parse(&p), Err(NackError::BadVersion));
        let mut p = good.clone();
        p[0] = 0x80 | 15;
        assert_eq!(Nack::parse(&p), Err(NackError::WrongType));
        let mut p = good.clone();
        p[3] = 9;
        assert_eq!(Nack::parse(&p), Err(NackError::BadLength));
        let mut p = good.clone();
        p[3] = 0; // declares 4 bytes: shorter than the header it follows (found by fuzzing)
        assert_eq!(Nack::parse(&p), Err(NackError::BadLength));
        let mut p = good.clone();
        p[0] |= 0x20; // padding bit, last octet 6 eats into the pair
        assert_eq!(Nack::parse(&p), Err(NackError::BadLength));
        let mut p = good.clone();
        p.extend_from_slice(&[0, 0, 0, 4]);
        p[3] += 1;
        p[0] |= 0x20; // a proper 4-byte padding is stripped
        assert_eq!(lost_of(&p), vec![5, 6]);
    }

    #[test]
    fn the_rtcp_crate_reads_what_we_write() {
        let lost = [10, 11, 26, 27, 65535, 0, 1];
        let p = written(&lost);
        let parsed = rtcp::packet::unmarshal(&mut &p[..]).unwrap();
        let theirs = parsed[0]
            .as_any()
            .downcast_ref::<TransportLayerNack>()
            .unwrap();
        assert_eq!((theirs.sender_ssrc, theirs.media_ssrc), (0x1111, 0x2222));
        let seqs: Vec<u16> = theirs.nacks.iter().flat_map(|p| p.packet_list()).collect();
        // Not ascending in u16 terms: the oracle is given our wrap-aware order.
        assert_eq!(seqs, lost);
    }

    #[test]
    fn we_read_what_the_rtcp_crate_writes() {
        let theirs = TransportLayerNack {
            sender_ssrc: 0xdead,
            media_ssrc: 0xbeef,
            nacks: vec![
                NackPair {
                    packet_id: 65530,
                    lost_packets: 0b1000_0000_0100_0001,
                },
                NackPair {
                    packet_id: 500,
                    lost_packets: 0,
                },
            ],
        };
        let boxed: Box<dyn Packet + Send + Sync> = Box::new(theirs.clone());
        let bytes = rtcp::packet::marshal(&[boxed]).unwrap();
        let ours = Nack::parse(&bytes).unwrap();
        assert_eq!((ours.sender_ssrc, ours.media_ssrc), (0xdead, 0xbeef));
        let expected: Vec<u16> = theirs.nacks.iter().flat_map(|p| p.packet_list()).collect();
        assert_eq!(ours.lost().collect::<Vec<_>>(), expected);
        assert_eq!(expected, vec![65530, 65531, 1, 10, 500]);
    }
}
