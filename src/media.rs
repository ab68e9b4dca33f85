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

/// Simulcast encodings (layers) a stream's video may arrive as; without simulcast it has one,
/// layer 0.
pub const MAX_LAYERS: usize = 3;

/// The sources of one stream: its audio, and its video as up to [`MAX_LAYERS`] encodings.
pub const SOURCES: usize = 1 + MAX_LAYERS;

/// One source of a stream: its audio, or one encoding of its video. Each has an SSRC of its
/// own on the publisher's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub kind: MediaKind,
    /// The video encoding, by its place in the publisher's offer; 0 for audio.
    pub layer: u8,
}

impl Source {
    pub const AUDIO: Source = Source {
        kind: MediaKind::Audio,
        layer: 0,
    };

    pub fn video(layer: u8) -> Source {
        Source {
            kind: MediaKind::Video,
            layer,
        }
    }

    /// 0 for audio, 1 + layer for video: an index into per-source arrays of [`SOURCES`].
    pub fn index(self) -> usize {
        match self.kind {
            MediaKind::Audio => 0,
            MediaKind::Video => 1 + self.layer as usize,
        }
    }

    /// The source at `index` (the inverse of [`Source::index`]).
    pub fn from_index(index: usize) -> Source {
        match index {
            0 => Source::AUDIO,
            i => Source::video((i - 1) as u8),
        }
    }
}
