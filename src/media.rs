//! The shared vocabulary: the few types and limits every layer speaks (SDP negotiation, the
//! control thread, the workers, the client). They live here, not in the module that first
//! needed them, so no layer reaches into another's internals for them.

use serde::Serialize;

/// Audio or video: what a negotiated track, an RTP payload type or a relayed packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    /// 0 for audio, 1 for video: an index into per-kind arrays on the packet path.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind an SDP media section's `m=` type names (`audio`, `video`).
    pub fn from_media(media: &str) -> Option<Self> {
        match media {
            "audio" => Some(MediaKind::Audio),
            "video" => Some(MediaKind::Video),
            _ => None,
        }
    }
}

/// A stream: what a publisher publishes and players play, by name at the control thread and
/// by this number on the data plane.
pub type StreamId = u32;

/// A publisher's or player's session, unique in one relay process.
pub type SessionId = u64;

/// Largest packet the relay accepts for relaying (an egress buffer holds it with the RFC 4571
/// length prefix in front and room for the SRTCP trailer behind).
pub const MAX_PACKET: usize = 2014;
