//! Writing transport-wide feedback from arrival times, with libwebrtc's chunk encoding.

use super::{
    DELTA_TICK_US, FIXED_LEN, FMT_TRANSPORT_CC, LARGE_DELTA, MAX_RUN_LENGTH, NOT_RECEIVED,
    ONE_BIT_CAPACITY, REFERENCE_TICK_US, SMALL_DELTA, TRANSPORT_FEEDBACK, TWO_BIT_CAPACITY,
    TwccError, delta_size,
};

/// The fields of a feedback message that are not per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackHeader {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    /// The transport sequence number of the first arrival given to [`write_feedback`].
    pub base_sequence: u16,
    /// Counts feedback messages sent, wrapping, so the sender can spot lost feedback.
    pub feedback_count: u8,
}

/// What [`write_feedback`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenFeedback {
    pub len: usize,
    /// How many of the arrivals it covers (its packet status count); the rest, if any, start
    /// the next feedback message at `base_sequence + packets`.
    pub packets: u16,
}

/// Writes one feedback message for consecutive transport sequence numbers starting at
/// `header.base_sequence`: `arrivals` yields, in sequence order, each packet's arrival time in
/// microseconds on any monotonic clock, or `None` for a packet not received. The iterator is
/// walked twice (statuses first, then deltas, which follow all the chunks), hence `Clone`.
///
/// Stops early, and says so in [`WrittenFeedback::packets`], when `out` is full, when a
/// receive delta does not fit 16 bits (arrivals more than ~8 s apart), or at 65535 packets.
/// Fails when no packet among those it could cover was received (no reference time).
pub fn write_feedback<I>(
    out: &mut [u8],
    header: &FeedbackHeader,
    arrivals: I,
) -> Result<WrittenFeedback, TwccError>
where
    I: Iterator<Item = Option<i64>> + Clone,
{
    if out.len() < FIXED_LEN + 4 {
        return Err(TwccError::BufferTooSmall);
    }
    let mut encoder = ChunkEncoder::new();
    let mut chunks = 0;
    let mut delta_len = 0;
    let mut packets = 0u16;
    let mut clock = DeltaClock::default();
    for arrival in arrivals.clone() {
        if packets == u16::MAX {
            break;
        }
        let mut next_clock = clock;
        let symbol = match arrival {
            None => NOT_RECEIVED,
            Some(us) => match next_clock.advance(us) {
                Some(ticks) => symbol_for(ticks),
                None => break,
            },
        };
        let extra_chunk = usize::from(!encoder.can_add(symbol));
        // Chunks so far, maybe one emitted now, the pending one, and every delta.
        let len =
            padded(FIXED_LEN + 2 * (chunks + extra_chunk + 1) + delta_len + delta_size(symbol));
        if len > out.len() {
            break;
        }
        if extra_chunk == 1 {
            put_chunk(out, chunks, encoder.emit());
            chunks += 1;
        }
        encoder.add(symbol);
        delta_len += delta_size(symbol);
        clock = next_clock;
        packets += 1;
    }
    let Some(reference) = clock.reference else {
        return Err(TwccError::NothingReceived);
    };
    put_chunk(out, chunks, encoder.finish());
    chunks += 1;

    // Second pass: the same arrivals give the same deltas.
    let mut at = FIXED_LEN + 2 * chunks;
    let mut clock = DeltaClock::default();
    for us in arrivals.take(packets as usize).flatten() {
        let Some(ticks) = clock.advance(us) else {
            break;
        };
        if symbol_for(ticks) == SMALL_DELTA {
            out[at] = ticks as u8;
            at += 1;
        } else {
            out[at..at + 2].copy_from_slice(&ticks.to_be_bytes());
            at += 2;
        }
    }
    let len = padded(at);
    let padding = len - at;
    if padding > 0 {
        // RFC 3550 §6.4.1 padding, as libwebrtc writes it: zeros, then the count.
        out[at..len - 1].fill(0);
        out[len - 1] = padding as u8;
    }
    out[0] = 0x80 | if padding > 0 { 0x20 } else { 0 } | FMT_TRANSPORT_CC;
    out[1] = TRANSPORT_FEEDBACK;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&header.sender_ssrc.to_be_bytes());
    out[8..12].copy_from_slice(&header.media_ssrc.to_be_bytes());
    out[12..14].copy_from_slice(&header.base_sequence.to_be_bytes());
    out[14..16].copy_from_slice(&packets.to_be_bytes());
    let reference = reference.rem_euclid(1 << 24) as u32;
    out[16..19].copy_from_slice(&reference.to_be_bytes()[1..]);
    out[19] = header.feedback_count;
    Ok(WrittenFeedback { len, packets })
}

fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

fn put_chunk(out: &mut [u8], index: usize, chunk: u16) {
    out[FIXED_LEN + 2 * index..FIXED_LEN + 2 * index + 2].copy_from_slice(&chunk.to_be_bytes());
}

fn symbol_for(ticks: i16) -> u8 {
    if (0..=255).contains(&ticks) {
        SMALL_DELTA
    } else {
        LARGE_DELTA
    }
}

/// Turns arrival times into receive deltas the way libwebrtc does: the reference time is the
/// first arrival rounded down to 64 ms, each delta is rounded to the nearest 250 µs, and the
/// next delta is measured from the rounded time, so rounding errors never accumulate.
#[derive(Debug, Clone, Copy, Default)]
struct DeltaClock {
    reference: Option<i64>,
    last_us: i64,
}

impl DeltaClock {
    fn advance(&mut self, arrival_us: i64) -> Option<i16> {
        if self.reference.is_none() {
            let reference = arrival_us.div_euclid(REFERENCE_TICK_US);
            self.reference = Some(reference);
            self.last_us = reference * REFERENCE_TICK_US;
        }
        let elapsed = arrival_us.saturating_sub(self.last_us);
        let half = DELTA_TICK_US / 2;
        let rounded = if elapsed >= 0 {
            elapsed.saturating_add(half)
        } else {
            elapsed.saturating_sub(half)
        } / DELTA_TICK_US;
        let ticks = i16::try_from(rounded).ok()?;
        self.last_us += i64::from(ticks) * DELTA_TICK_US;
        Some(ticks)
    }
}

/// Packs status symbols into chunks as libwebrtc's encoder does: up to 7 symbols of any kind
/// fit a two-bit vector, up to 14 without large deltas a one-bit vector, and any number of
/// equal symbols (up to 8191) a run. A chunk is emitted only when the next symbol no longer
/// fits, so whatever is pending always fits exactly one final chunk.
#[derive(Debug, Clone)]
struct ChunkEncoder {
    /// The first symbols pending (a run keeps only its first).
    symbols: [u8; ONE_BIT_CAPACITY],
    size: usize,
    all_same: bool,
    has_large: bool,
}

impl ChunkEncoder {
    fn new() -> Self {
        ChunkEncoder {
            symbols: [0; ONE_BIT_CAPACITY],
            size: 0,
            all_same: true,
            has_large: false,
        }
    }

    fn can_add(&self, symbol: u8) -> bool {
        self.size < TWO_BIT_CAPACITY
            || (self.size < ONE_BIT_CAPACITY && !self.has_large && symbol != LARGE_DELTA)
            || (self.size < MAX_RUN_LENGTH && self.all_same && self.symbols[0] == symbol)
    }

    fn add(&mut self, symbol: u8) {
        if self.size < ONE_BIT_CAPACITY {
            self.symbols[self.size] = symbol;
        }
        self.all_same = self.all_same && self.symbols[0] == symbol;
        self.has_large |= symbol == LARGE_DELTA;
        self.size += 1;
    }

    /// Emits one full chunk, keeping what does not go in it.
    fn emit(&mut self) -> u16 {
        if self.all_same {
            let chunk = run_length(self.symbols[0], self.size);
            *self = ChunkEncoder::new();
            return chunk;
        }
        if self.size == ONE_BIT_CAPACITY {
            let chunk = one_bit_vector(&self.symbols);
            *self = ChunkEncoder::new();
            return chunk;
        }
        let chunk = two_bit_vector(&self.symbols[..TWO_BIT_CAPACITY]);
        self.symbols.copy_within(TWO_BIT_CAPACITY..self.size, 0);
        self.size -= TWO_BIT_CAPACITY;
        let kept = &self.symbols[..self.size];
        self.all_same = kept.iter().all(|&s| s == kept[0]);
        self.has_large = kept.contains(&LARGE_DELTA);
        chunk
    }

    /// The last chunk, for what is pending.
    fn finish(&self) -> u16 {
        if self.all_same {
            run_length(self.symbols[0], self.size)
        } else if self.size <= TWO_BIT_CAPACITY {
            two_bit_vector(&self.symbols[..self.size])
        } else {
            one_bit_vector(&self.symbols[..self.size])
        }
    }
}

fn run_length(symbol: u8, length: usize) -> u16 {
    (u16::from(symbol) << 13) | length as u16
}

/// Unused trailing symbols stay 0, "not received", beyond the status count.
fn one_bit_vector(symbols: &[u8]) -> u16 {
    symbols
        .iter()
        .enumerate()
        .fold(0x8000, |chunk, (i, &s)| chunk | (u16::from(s) << (13 - i)))
}

fn two_bit_vector(symbols: &[u8]) -> u16 {
    symbols.iter().enumerate().fold(0xc000, |chunk, (i, &s)| {
        chunk | (u16::from(s) << (12 - 2 * i))
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{HEADER, arrivals_of, theirs, write};
    use super::super::{PacketStatus, TransportFeedback};
    use super::*;

    #[test]
    fn round_trip_keeps_losses_wrap_and_times_within_rounding() {
        let t0 = 10_000_000_i64; // 156.25 reference ticks in: the first delta is not zero
        let arrivals: Vec<Option<i64>> = (0..40)
            .map(|i| (i % 5 != 3).then_some(t0 + i * 1_370))
            .collect();
        let (p, packets) = write(&arrivals);
        assert_eq!(packets, 40);
        assert_eq!(p.len() % 4, 0);
        let back = arrivals_of(&p);
        assert_eq!(back.len(), 40);
        for (i, ((seq, got), want)) in back.iter().zip(&arrivals).enumerate() {
            assert_eq!(*seq, 65530u16.wrapping_add(i as u16));
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!((g - w).abs() <= 125, "{i}: {g} vs {w}"),
                _ => panic!("status of {i} differs"),
            }
        }
        let fb = TransportFeedback::parse(&p).unwrap();
        assert_eq!((fb.sender_ssrc, fb.media_ssrc), (0x1111, 0x2222));
        assert_eq!(
            (fb.base_sequence, fb.status_count, fb.feedback_count),
            (65530, 40, 7)
        );
        assert_eq!(fb.reference_time, (t0 / REFERENCE_TICK_US) as u32);
    }

    #[test]
    fn chunk_kinds_follow_the_symbols() {
        // 20 small deltas in a row: one run-length chunk.
        let (p, _) = write(&(0..20).map(|i| Some(i * 1000)).collect::<Vec<_>>());
        assert_eq!(&p[20..22], &(0x2000u16 | 20).to_be_bytes());
        // Received and lost mixed, no large delta: one-bit vectors.
        let mixed: Vec<_> = (0..14).map(|i| (i % 2 == 0).then_some(i * 1000)).collect();
        let (p, _) = write(&mixed);
        assert_eq!(&p[20..22], &0b1010_1010_1010_1010u16.to_be_bytes());
        // A large delta among them: two-bit vectors.
        let (p, _) = write(&[Some(0), None, Some(100_000), Some(100_500)]);
        assert_eq!(&p[20..22], &0b1101_0010_0100_0000u16.to_be_bytes());
        assert_eq!(
            arrivals_of(&p),
            vec![
                (65530, Some(0)),
                (65531, None),
                (65532, Some(100_000)),
                (65533, Some(100_500))
            ]
        );
    }

    #[test]
    fn reordered_arrival_is_a_negative_large_delta() {
        let (p, _) = write(&[Some(64_000), Some(70_000), Some(66_000)]);
        let statuses: Vec<_> = TransportFeedback::parse(&p)
            .unwrap()
            .packets()
            .map(|p| p.status)
            .collect();
        assert_eq!(
            statuses,
            vec![
                PacketStatus::Received { delta_ticks: 0 },
                PacketStatus::Received { delta_ticks: 24 },
                PacketStatus::Received { delta_ticks: -16 },
            ]
        );
    }

    #[test]
    fn stops_where_a_delta_overflows_or_the_buffer_ends() {
        let (_, packets) = write(&[Some(0), None, Some(9_000_000), Some(9_000_100)]);
        assert_eq!(
            packets, 2,
            "9 s does not fit a 16-bit delta: the next feedback starts there"
        );
        let many: Vec<_> = (0..2000).map(|i| Some(i * 300_000 % 7_000_000)).collect();
        let mut out = [0u8; 64];
        let w = write_feedback(&mut out, &HEADER, many.iter().copied()).unwrap();
        assert!(w.len <= 64 && w.packets > 10);
        assert_eq!(arrivals_of(&out[..w.len]).len(), w.packets as usize);
        assert_eq!(
            write_feedback(&mut out, &HEADER, [None, None].into_iter()),
            Err(TwccError::NothingReceived)
        );
        assert_eq!(
            write_feedback(&mut [0u8; 23], &HEADER, many.iter().copied()),
            Err(TwccError::BufferTooSmall)
        );
    }

    #[test]
    fn the_rtcp_crate_reads_what_we_write() {
        let arrivals: Vec<Option<i64>> = (0..300)
            .map(|i: i64| match i {
                _ if i % 17 == 5 => None,
                100..=120 => None,
                _ if i % 29 == 0 => Some(1_000_000 + i * 2_000 + 90_000),
                _ => Some(1_000_000 + i * 2_000),
            })
            .collect();
        let (p, packets) = write(&arrivals);
        assert_eq!(packets, 300);
        let cc = theirs(&p);
        assert_eq!((cc.sender_ssrc, cc.media_ssrc), (0x1111, 0x2222));
        assert_eq!(
            (cc.base_sequence_number, cc.packet_status_count),
            (65530, 300)
        );
        // The first arrival, 1.09 s, is 17 whole 64 ms ticks.
        assert_eq!((cc.reference_time, cc.fb_pkt_count), (17, 7));
        let ours: Vec<i64> = TransportFeedback::parse(&p)
            .unwrap()
            .packets()
            .filter_map(|p| match p.status {
                PacketStatus::Received { delta_ticks } => Some(i64::from(delta_ticks) * 250),
                PacketStatus::NotReceived => None,
            })
            .collect();
        let their_deltas: Vec<i64> = cc.recv_deltas.iter().map(|d| d.delta).collect();
        assert_eq!(their_deltas, ours);
        assert_eq!(ours.len(), arrivals.iter().flatten().count());
    }
}
