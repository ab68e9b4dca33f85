//! Publisher packets of one loop turn, set aside so that each player then gets all of them
//! in a row (player-major fanout) rather than each packet going to every player in turn.
//!
//! Why: with packet-major fanout every player's frame burst stays open until the frame's last
//! packet has gone to every player, so a turn holds players × packets egress buffers at once,
//! megabytes, and each write into one is a cache miss. Player-major, a player's burst fills
//! and leaves before the next player's starts, and the few egress buffers it used come back
//! (still in cache) for the next. The copy here is one per packet and worker, not per player.

use std::time::Instant;

use crate::sdp::MediaKind;
use crate::wire::rtp::RtpHeader;
use crate::worker::mesh::{Forwarded, StreamId};

/// Packets set aside before they must be fanned out.
pub const CAPACITY: usize = 64;
/// Room per packet; larger ones are not relayed (see `io::MAX_PACKET`).
const SLOT: usize = 2048;

/// One packet set aside.
pub struct StagedPacket {
    pub stream: StreamId,
    pub kind: MediaKind,
    /// Parsed once here for every player; `None` for an RTCP sender report.
    pub header: Option<RtpHeader>,
    pub received_at: Instant,
    len: usize,
}

pub struct Staged {
    entries: Vec<StagedPacket>,
    data: Box<[u8]>,
}

impl Default for Staged {
    fn default() -> Self {
        Staged {
            entries: Vec::with_capacity(CAPACITY),
            data: vec![0u8; CAPACITY * SLOT].into_boxed_slice(),
        }
    }
}

impl Staged {
    pub fn is_full(&self) -> bool {
        self.entries.len() == CAPACITY
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Copies `packet` aside; the caller makes room first (`is_full`). Returns false, and
    /// keeps nothing, for a packet too large to relay or RTP that does not parse.
    pub fn push(
        &mut self,
        stream: StreamId,
        kind: MediaKind,
        what: Forwarded,
        packet: &[u8],
        received_at: Instant,
    ) -> bool {
        debug_assert!(!self.is_full());
        if packet.len() > SLOT || self.is_full() {
            return false;
        }
        let header = match what {
            Forwarded::Rtp => match RtpHeader::parse(packet) {
                Ok(h) => Some(h),
                Err(_) => return false,
            },
            Forwarded::SenderReport => None,
        };
        let at = self.entries.len() * SLOT;
        self.data[at..at + packet.len()].copy_from_slice(packet);
        self.entries.push(StagedPacket {
            stream,
            kind,
            header,
            received_at,
            len: packet.len(),
        });
        true
    }

    pub fn entry(&self, index: usize) -> &StagedPacket {
        &self.entries[index]
    }

    pub fn bytes(&self, index: usize) -> &[u8] {
        let at = index * SLOT;
        &self.data[at..at + self.entries[index].len]
    }

    /// The staged packets by stream, in the order each stream first appears, each stream's
    /// packets in arrival order: fills `group` with one stream's indices at a time and calls
    /// `each(stream, indices)`. Then forgets every packet.
    pub fn drain_by_stream(&mut self, mut each: impl FnMut(&Staged, StreamId, &[u8])) {
        let count = self.entries.len();
        let mut done = [false; CAPACITY];
        let mut group = [0u8; CAPACITY];
        for first in 0..count {
            if done[first] {
                continue;
            }
            let stream = self.entries[first].stream;
            let mut members = 0;
            for (i, entry) in self.entries.iter().enumerate().skip(first) {
                if !done[i] && entry.stream == stream {
                    done[i] = true;
                    group[members] = i as u8;
                    members += 1;
                }
            }
            each(self, stream, &group[..members]);
        }
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u8) -> Vec<u8> {
        let mut p = vec![0x80, 96, 0, seq, 0, 0, 0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&[seq; 100]);
        p
    }

    #[test]
    fn packets_come_out_grouped_by_stream_in_arrival_order() {
        let mut staged = Staged::default();
        let now = Instant::now();
        for (stream, seq) in [(7, 1), (9, 2), (7, 3), (9, 4), (8, 5)] {
            assert!(staged.push(stream, MediaKind::Video, Forwarded::Rtp, &rtp(seq), now));
        }
        let mut seen = Vec::new();
        staged.drain_by_stream(|staged, stream, group| {
            let seqs: Vec<u8> = group.iter().map(|&i| staged.bytes(i as usize)[3]).collect();
            seen.push((stream, seqs));
        });
        assert_eq!(seen, vec![(7, vec![1, 3]), (9, vec![2, 4]), (8, vec![5])]);
        assert!(staged.is_empty());
    }

    #[test]
    fn unparsable_rtp_and_oversized_packets_are_not_kept() {
        let mut staged = Staged::default();
        let now = Instant::now();
        assert!(!staged.push(1, MediaKind::Video, Forwarded::Rtp, &[0x80, 96], now));
        assert!(!staged.push(
            1,
            MediaKind::Video,
            Forwarded::Rtp,
            &vec![0x80; SLOT + 1],
            now
        ));
        assert!(staged.push(
            1,
            MediaKind::Video,
            Forwarded::SenderReport,
            &[0x80; 28],
            now
        ));
        assert!(staged.entry(0).header.is_none());
        let mut kept = 0;
        staged.drain_by_stream(|_, _, group| kept += group.len());
        assert_eq!(kept, 1);
    }
}
