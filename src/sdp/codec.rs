//! A codec as an offer lists it, and what of an offer the relay forwards: which codecs, which
//! header extensions, which RTCP feedback.

use serde::Serialize;

use super::MediaKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Codec {
    pub payload_type: u8,
    pub name: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
    /// The RTCP feedback the offer lists for this codec that the relay honours
    /// (`ACCEPTED_FEEDBACK`), each once however often the offer repeats it.
    #[serde(skip)]
    pub feedback: Vec<String>,
}

impl Codec {
    pub(super) fn fmtp_param(&self, key: &str) -> Option<&str> {
        self.fmtp.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim())
        })
    }

    /// Whether a player's codec can carry this (publisher's) codec's packets unchanged.
    pub fn is_compatible(&self, other: &Codec) -> bool {
        if !self.name.eq_ignore_ascii_case(&other.name) || self.clock_rate != other.clock_rate {
            return false;
        }
        if self.channels.max(1) != other.channels.max(1) {
            return false;
        }
        match self.name.to_ascii_uppercase().as_str() {
            "H264" => {
                let mode = |c: &Codec| {
                    c.fmtp_param("packetization-mode")
                        .unwrap_or("0")
                        .to_string()
                };
                let profile = |c: &Codec| {
                    c.fmtp_param("profile-level-id")
                        .and_then(|p| p.get(..2))
                        .unwrap_or("42")
                        .to_ascii_lowercase()
                };
                mode(self) == mode(other) && profile(self) == profile(other)
            }
            "VP9" => {
                self.fmtp_param("profile-id").unwrap_or("0")
                    == other.fmtp_param("profile-id").unwrap_or("0")
            }
            "AV1" => {
                self.fmtp_param("profile").unwrap_or("0")
                    == other.fmtp_param("profile").unwrap_or("0")
            }
            _ => true,
        }
    }

    /// Whether this is an RTX codec (RFC 4588) retransmitting payload type `apt`.
    pub(super) fn is_rtx_for(&self, apt: u8) -> bool {
        self.name.eq_ignore_ascii_case("rtx")
            && self.fmtp_param("apt").and_then(|a| a.parse::<u8>().ok()) == Some(apt)
    }

    pub(super) fn is_forwardable(&self, kind: MediaKind) -> bool {
        let name = self.name.to_ascii_uppercase();
        match kind {
            MediaKind::Audio => matches!(name.as_str(), "OPUS" | "PCMU" | "PCMA" | "G722"),
            MediaKind::Video => match name.as_str() {
                "VP8" | "VP9" | "AV1" => true,
                // Packetization mode 0 (single NAL unit) is a legacy mode browsers rarely pick.
                "H264" => self.fmtp_param("packetization-mode") == Some("1"),
                _ => false,
            },
        }
    }
}

/// Header extensions the relay forwards (it rewrites their ids per player). MID, RID and
/// transport-wide sequence numbers are per-hop and are not forwarded.
pub(super) const FORWARDED_EXTENSIONS: &[&str] = &[
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:ietf:params:rtp-hdrext:toffset",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:3gpp:video-orientation",
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time",
];

/// The transport-wide sequence number extension (draft-holmer-rmcat-transport-wide-cc-
/// extensions-01): per hop, never forwarded; a publisher that sends it gets transport-wide
/// feedback, from which its own congestion control (GCC) estimates the path.
pub const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// The RTP stream id (RFC 8852): which simulcast encoding a packet belongs to. Per hop: read,
/// never forwarded.
pub const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
/// The RTP stream id an RTX packet repairs (RFC 8852).
pub const REPAIRED_RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
/// The media section a packet belongs to (RFC 8843); answered beside the RIDs for simulcast.
pub(super) const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// RTCP feedback the relay takes part in: keyframe requests, generic NACK (it repairs loss in
/// both directions), transport-wide feedback and REMB (it sends both to publishers).
pub(super) const ACCEPTED_FEEDBACK: &[&str] =
    &["nack", "nack pli", "ccm fir", "transport-cc", "goog-remb"];

/// Feedback a player's answer may carry: the relay reads keyframe requests and NACKs from
/// players, and, for a simulcast stream, their transport-wide feedback (its estimate of each
/// player's path picks the player's layer).
pub(super) const PLAYER_FEEDBACK: &[&str] = &["nack", "nack pli", "ccm fir"];
pub(super) const SIMULCAST_PLAYER_FEEDBACK: &[&str] =
    &["nack", "nack pli", "ccm fir", "transport-cc"];

/// Which of [`ACCEPTED_FEEDBACK`] a format lists, a bit each: an offer that repeats a
/// feedback line costs a bit, not a copy per line per format.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FeedbackSet(u8);

impl FeedbackSet {
    pub(super) fn insert(&mut self, feedback: &str) {
        if let Some(i) = ACCEPTED_FEEDBACK.iter().position(|f| *f == feedback.trim()) {
            self.0 |= 1 << i;
        }
    }

    pub(super) fn union(self, other: FeedbackSet) -> FeedbackSet {
        FeedbackSet(self.0 | other.0)
    }

    pub(super) fn to_vec(self) -> Vec<String> {
        ACCEPTED_FEEDBACK
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, f)| f.to_string())
            .collect()
    }
}
