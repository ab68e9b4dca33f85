//! The measurement payload a publisher writes into every RTP packet and players read back:
//! `"CCLG"`, stream index (u32), media kind (u8), one byte reserved, the packet's index within
//! its video frame (u16: with the marker bit it tells a player how many packets the frame
//! has), sequence (u64, per stream and kind) and send time (u64 nanoseconds since the run's
//! epoch), big-endian; the rest of the payload is filler up to the packet size.

pub const MAGIC: &[u8; 4] = b"CCLG";
pub const LEN: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub stream: u32,
    /// 0 audio, 1 video.
    pub kind: u8,
    /// The packet's place in its video frame, from 0 (0 for audio).
    pub index: u16,
    pub sequence: u64,
    pub sent_ns: u64,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(MAGIC);
        out[4..8].copy_from_slice(&self.stream.to_be_bytes());
        out[8..10].copy_from_slice(&[self.kind, 0]);
        out[10..12].copy_from_slice(&self.index.to_be_bytes());
        out[12..20].copy_from_slice(&self.sequence.to_be_bytes());
        out[20..28].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a stamp; `None` if the payload is not one (too short, wrong magic).
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        if payload.len() < LEN || &payload[0..4] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        Some(Stamp {
            stream: u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes")),
            kind: payload[8],
            index: u16::from_be_bytes([payload[10], payload[11]]),
            sequence: u64_at(12),
            sent_ns: u64_at(20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_garbage_is_refused() {
        let stamp = Stamp {
            stream: 7,
            kind: 1,
            index: 513,
            sequence: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut buf = [0u8; 40];
        stamp.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(stamp));
        assert_eq!(Stamp::read(&buf[..27]), None);
        buf[0] = b'X';
        assert_eq!(Stamp::read(&buf), None);
    }
}
