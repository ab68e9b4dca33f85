//! The measurement payload a publisher writes into every RTP packet and players read back:
//! `"CCLG"`, stream index (u32), media kind (u8), simulcast layer (u8: 0 without simulcast,
//! else the encoding's place plus one), the packet's index within its video frame (u16: with
//! the marker bit it tells a player how many packets the frame has), sequence (u64, per
//! stream, kind and layer) and send time (u64 nanoseconds since the run's epoch), big-endian;
//! the rest of the payload is filler up to the packet size.
//!
//! Simulcast video puts a [`VP8_PREFIX_LEN`]-byte VP8 prefix before the stamp: the payload
//! descriptor and, at a frame's first packet, the frame header (RFC 7741, RFC 6386 §9.1), so
//! the relay sees where keyframes start (it switches a player's layer only there) and their
//! picture size.

pub const MAGIC: &[u8; 4] = b"CCLG";
pub const LEN: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub stream: u32,
    /// 0 audio, 1 video.
    pub kind: u8,
    /// 0 without simulcast; else the encoding's place in the offer plus one (1 lowest).
    pub layer: u8,
    /// The packet's place in its video frame, from 0 (0 for audio).
    pub index: u16,
    pub sequence: u64,
    pub sent_ns: u64,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(MAGIC);
        out[4..8].copy_from_slice(&self.stream.to_be_bytes());
        out[8..10].copy_from_slice(&[self.kind, self.layer]);
        out[10..12].copy_from_slice(&self.index.to_be_bytes());
        out[12..20].copy_from_slice(&self.sequence.to_be_bytes());
        out[20..28].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a stamp at the start of `payload`, or after a VP8 prefix; `None` if the payload
    /// is not one (too short, wrong magic).
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        if payload.get(0..4) == Some(MAGIC) {
            Self::read_at_start(payload)
        } else {
            Self::read_at_start(payload.get(VP8_PREFIX_LEN..)?)
        }
    }

    fn read_at_start(payload: &[u8]) -> Option<Stamp> {
        if payload.len() < LEN || &payload[0..4] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        Some(Stamp {
            stream: u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes")),
            kind: payload[8],
            layer: payload[9],
            index: u16::from_be_bytes([payload[10], payload[11]]),
            sequence: u64_at(12),
            sent_ns: u64_at(20),
        })
    }
}

/// Bytes of the VP8 prefix simulcast video carries before the stamp: the one-byte payload
/// descriptor and ten bytes a frame's first packet fills with the frame header (tag, start
/// code, size); later packets leave them zero.
pub const VP8_PREFIX_LEN: usize = 11;

/// What a video packet's VP8 prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vp8Frame {
    /// A packet after a frame's first.
    Continuing,
    /// A frame's first packet: of a keyframe of this picture size, or of an inter frame.
    Keyframe {
        width: u16,
        height: u16,
    },
    Inter,
}

/// Writes the VP8 prefix into `out` ([`VP8_PREFIX_LEN`] bytes).
pub fn write_vp8_prefix(out: &mut [u8], frame: Vp8Frame) {
    out[..VP8_PREFIX_LEN].fill(0);
    match frame {
        Vp8Frame::Continuing => {}
        Vp8Frame::Keyframe { width, height } => {
            // S=1, partition 0; frame tag: key frame (bit 0 clear), version 0, shown.
            out[0] = 0x10;
            out[1] = 0x10;
            out[4..7].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            out[7..9].copy_from_slice(&(width & 0x3fff).to_le_bytes());
            out[9..11].copy_from_slice(&(height & 0x3fff).to_le_bytes());
        }
        Vp8Frame::Inter => {
            out[0] = 0x10;
            out[1] = 0x11; // inter frame (bit 0 set), shown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corecast::wire::keyframe::{FrameStart, VideoCodec, frame_start};

    #[test]
    fn the_relay_reads_keyframes_from_the_vp8_prefix_and_players_find_the_stamp_after_it() {
        let stamp = Stamp {
            stream: 1,
            kind: 1,
            layer: 3,
            index: 0,
            sequence: 9,
            sent_ns: 5,
        };
        let mut buf = [0u8; VP8_PREFIX_LEN + LEN];
        stamp.write(&mut buf[VP8_PREFIX_LEN..]);
        let frames = [
            (
                Vp8Frame::Keyframe {
                    width: 1280,
                    height: 720,
                },
                FrameStart::Keyframe {
                    size: Some((1280, 720)),
                },
            ),
            (Vp8Frame::Inter, FrameStart::Other),
            (Vp8Frame::Continuing, FrameStart::Other),
        ];
        for (frame, seen) in frames {
            write_vp8_prefix(&mut buf, frame);
            assert_eq!(frame_start(VideoCodec::Vp8, &buf), seen, "{frame:?}");
            assert_eq!(Stamp::read(&buf), Some(stamp));
        }
    }

    #[test]
    fn stamps_round_trip_and_garbage_is_refused() {
        let stamp = Stamp {
            stream: 7,
            kind: 1,
            layer: 0,
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
