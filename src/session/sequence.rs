//! Per-player RTP sequence numbers: each player sees one continuous sequence from a random
//! start, whatever the publisher's numbers are, while real gaps (loss) stay gaps. A new source
//! SSRC (the publisher restarted its encoder) continues after the last number sent.

#[derive(Debug, Clone)]
pub struct SequenceMapper {
    initial: u16,
    source_ssrc: Option<u32>,
    offset: u16,
    highest_out: Option<u16>,
    /// The player's first number from the current source: numbers before it came from an
    /// earlier source (another simulcast encoding) and map back to nothing.
    source_start: u16,
}

impl SequenceMapper {
    pub fn new(initial: u16) -> Self {
        SequenceMapper {
            initial,
            source_ssrc: None,
            offset: 0,
            highest_out: None,
            source_start: initial,
        }
    }

    /// The player's sequence number for a packet `(ssrc, sequence)` from the publisher.
    pub fn map(&mut self, ssrc: u32, sequence: u16) -> u16 {
        if self.source_ssrc != Some(ssrc) {
            let next = self.highest_out.map_or(self.initial, |h| h.wrapping_add(1));
            self.offset = next.wrapping_sub(sequence);
            self.source_ssrc = Some(ssrc);
            self.source_start = next;
        }
        let out = sequence.wrapping_add(self.offset);
        let newer = self
            .highest_out
            .is_none_or(|h| (out.wrapping_sub(h) as i16) > 0);
        if newer {
            self.highest_out = Some(out);
        }
        out
    }

    /// The publisher's `(ssrc, sequence)` behind the player's number `out`, as the current
    /// source maps it (a player's NACK names its own numbers; the retransmission window keeps
    /// the publisher's).
    pub fn unmap(&self, out: u16) -> Option<(u32, u16)> {
        let ssrc = self.source_ssrc?;
        if (out.wrapping_sub(self.source_start) as i16) < 0 {
            return None; // sent from an earlier source
        }
        Some((ssrc, out.wrapping_sub(self.offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_players_number_maps_back_to_the_publishers() {
        let mut m = SequenceMapper::new(65_530);
        assert_eq!(m.unmap(1), None, "nothing mapped yet");
        assert_eq!(m.map(7, 100), 65_530);
        assert_eq!(m.map(7, 110), 4, "wraps");
        assert_eq!(m.unmap(4), Some((7, 110)));
        assert_eq!(m.unmap(65_531), Some((7, 101)));
    }

    #[test]
    fn numbers_from_an_earlier_source_map_back_to_nothing() {
        let mut m = SequenceMapper::new(100);
        m.map(1, 5000);
        m.map(1, 5001);
        assert_eq!(m.map(2, 9), 102, "a switch to another encoding");
        assert_eq!(m.unmap(102), Some((2, 9)));
        assert_eq!(
            m.unmap(101),
            None,
            "the old encoding's packet is not the new one's 8"
        );
    }

    #[test]
    fn starts_at_initial_and_keeps_gaps_and_reordering() {
        let mut m = SequenceMapper::new(1000);
        assert_eq!(m.map(1, 50_000), 1000);
        assert_eq!(m.map(1, 50_001), 1001);
        assert_eq!(m.map(1, 50_003), 1003, "loss stays visible");
        assert_eq!(m.map(1, 50_002), 1002, "reordering stays visible");
    }

    #[test]
    fn wraps_around() {
        let mut m = SequenceMapper::new(65534);
        assert_eq!(m.map(1, 10), 65534);
        assert_eq!(m.map(1, 11), 65535);
        assert_eq!(m.map(1, 12), 0);
    }

    #[test]
    fn new_source_continues_after_last_number() {
        let mut m = SequenceMapper::new(10);
        m.map(1, 500);
        m.map(1, 501);
        assert_eq!(m.map(2, 7), 12);
        assert_eq!(m.map(2, 8), 13);
    }
}
