//! Publisher packets of one loop turn, set aside so that each player then gets all of them
//! in a row (player-major fanout) rather than each packet going to every player in turn.
//!
//! Why: with packet-major fanout every player's frame burst stays open until the frame's last
//! packet has gone to every player, so a turn holds players × packets egress buffers at once,
//! megabytes, and each write into one is a cache miss. Player-major, a player's burst fills
//! and leaves before the next player's starts, and the few egress buffers it used come back
//! (still in cache) for the next. The copy here is one per packet and worker, not per player.

use std::time::Instant;

use crate::media::{MediaKind, StreamId};
use crate::wire::rtp::RtpHeader;
use crate::worker::mesh::{Forwarded, LayerTag};

/// Packets set aside before they must be fanned out.
pub(super) const CAPACITY: usize = 64;
/// Room per packet; larger ones are not relayed (see `media::MAX_PACKET`).
const SLOT: usize = 2048;

/// One packet set aside.
pub(super) struct StagedPacket {
    pub(super) stream: StreamId,
    pub(super) kind: MediaKind,
    /// Parsed once here for every player; `None` for an RTCP sender report.
    pub(super) header: Option<RtpHeader>,
    pub(super) tag: LayerTag,
    pub(super) received_at: Instant,
    len: usize,
}

pub(super) struct Staged {
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
    pub(super) fn is_full(&self) -> bool {
        self.entries.len() == CAPACITY
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Copies `packet` aside; the caller makes room first (`is_full`). Returns false, and
    /// keeps nothing, for a packet too large to relay or RTP shorter than its parsed header.
    pub(super) fn push(
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
        let (header, tag) = match what {
            Forwarded::Rtp(h, tag) if h.header_len <= packet.len() => (Some(h), tag),
            Forwarded::Rtp(..) => return false,
            Forwarded::SenderReport => (None, LayerTag::default()),
            // Never staged: single-port mode's hand-overs go to ingress.
            Forwarded::Handoff { .. } | Forwarded::Latch { .. } => return false,
        };
        let at = self.entries.len() * SLOT;
        self.data[at..at + packet.len()].copy_from_slice(packet);
        self.entries.push(StagedPacket {
            stream,
            kind,
            header,
            tag,
            received_at,
            len: packet.len(),
        });
        true
    }

    pub(super) fn entry(&self, index: usize) -> &StagedPacket {
        &self.entries[index]
    }

    pub(super) fn bytes(&self, index: usize) -> &[u8] {
        let at = index * SLOT;
        &self.data[at..at + self.entries[index].len]
    }

    /// The staged packets by stream, in the order each stream first appears, each stream's
    /// packets in arrival order: [`Groups::next_group`] gives one stream's indices at a time.
    /// Every packet is forgotten when the groups are dropped.
    pub(super) fn drain_by_stream(&mut self) -> Groups<'_> {
        Groups {
            staged: self,
            next: 0,
            done: [false; CAPACITY],
            group: [0; CAPACITY],
        }
    }
}

/// The staged packets, one stream at a time (see [`Staged::drain_by_stream`]).
pub(super) struct Groups<'s> {
    staged: &'s mut Staged,
    next: usize,
    done: [bool; CAPACITY],
    group: [u8; CAPACITY],
}

impl Groups<'_> {
    /// The next stream's packets: the staged packets, the stream and their indices.
    pub(super) fn next_group(&mut self) -> Option<(&Staged, StreamId, &[u8])> {
        let entries = &self.staged.entries;
        let first = (self.next..entries.len()).find(|&i| !self.done[i])?;
        let stream = entries[first].stream;
        let mut members = 0;
        for (i, entry) in entries.iter().enumerate().skip(first) {
            if !self.done[i] && entry.stream == stream {
                self.done[i] = true;
                self.group[members] = i as u8;
                members += 1;
            }
        }
        self.next = first + 1;
        Some((&*self.staged, stream, &self.group[..members]))
    }
}

impl Drop for Groups<'_> {
    fn drop(&mut self) {
        self.staged.entries.clear();
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

    fn parsed(packet: &[u8]) -> Forwarded {
        Forwarded::Rtp(RtpHeader::parse(packet).unwrap(), LayerTag::default())
    }

    fn drain(staged: &mut Staged) -> Vec<(StreamId, Vec<u8>)> {
        let mut seen = Vec::new();
        let mut groups = staged.drain_by_stream();
        while let Some((staged, stream, group)) = groups.next_group() {
            let seqs = group.iter().map(|&i| staged.bytes(i as usize)[3]).collect();
            seen.push((stream, seqs));
        }
        seen
    }

    #[test]
    fn packets_come_out_grouped_by_stream_in_arrival_order() {
        let mut staged = Staged::default();
        let now = Instant::now();
        for (stream, seq) in [(7, 1), (9, 2), (7, 3), (9, 4), (8, 5)] {
            let packet = rtp(seq);
            assert!(staged.push(stream, MediaKind::Video, parsed(&packet), &packet, now));
        }
        let seen = drain(&mut staged);
        assert_eq!(seen, vec![(7, vec![1, 3]), (9, vec![2, 4]), (8, vec![5])]);
        assert!(staged.is_empty());
    }

    #[test]
    fn truncated_rtp_and_oversized_packets_are_not_kept() {
        let mut staged = Staged::default();
        let now = Instant::now();
        let packet = rtp(1);
        let what = parsed(&packet);
        assert!(!staged.push(1, MediaKind::Video, what, &packet[..8], now));
        assert!(!staged.push(1, MediaKind::Video, what, &vec![0x80; SLOT + 1], now));
        assert!(staged.push(
            1,
            MediaKind::Video,
            Forwarded::SenderReport,
            &[0x80; 28],
            now
        ));
        assert!(staged.entry(0).header.is_none());
        let kept: usize = drain(&mut staged).iter().map(|(_, g)| g.len()).sum();
        assert_eq!(kept, 1);
    }
}
