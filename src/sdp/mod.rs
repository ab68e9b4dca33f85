//! SDP offer/answer for WHIP and WHEP (RFC 8829 JSEP, RFC 8866 SDP, RFC 9429). Offers are parsed
//! with the `sdp` crate into a small model; answers are ICE-lite, `setup:passive`, BUNDLE and
//! rtcp-mux, with one host candidate on the session's port.
//!
//! A publisher's offer fixes the stream's tracks (one audio, one video, each with one codec and
//! the header extensions the relay forwards). A player's offer is matched against those tracks:
//! the player gets the publisher's codec under the player's own payload type and extension ids.
//! A section offered with port 0 is turned down, unless it says `a=bundle-only` and its mid is
//! in the BUNDLE group (RFC 8843, as Firefox offers with `max-bundle`): that is offered media,
//! answered on the bundle transport like the rest.
//!
//! The parts, in the order an offer meets them: `limits` caps the offer's text before anything
//! is parsed, `offer` reads it into a model, `codec` says which codecs, header extensions and
//! feedback the relay forwards, `negotiate` decides the tracks, and `answer` writes the answer.
//! `frag` reads the trickle ICE fragments a client PATCHes later and writes the relay's answer
//! to an ICE restart.
//! (`::sdp` in them is the `sdp` crate, whose name this module shares.)

mod answer;
mod codec;
#[cfg(test)]
mod fixtures;
mod frag;
mod limits;
mod negotiate;
mod offer;

/// Re-exported from its home in [`crate::media`], where the other layers find it.
pub use crate::media::MediaKind;
pub use answer::{AnswerTransport, format_fingerprint, host_candidates, write_answer};
pub use codec::Codec;
pub use codec::{REPAIRED_RID_URI, RID_URI, TRANSPORT_CC_URI};
pub use frag::{
    FragmentError, IceFragment, MAX_FRAGMENT_BYTES, MAX_FRAGMENT_CANDIDATES, parse_fragment,
    write_restart_fragment,
};
pub use limits::{
    MAX_ATTRIBUTES_PER_SECTION, MAX_FORMATS_PER_SECTION, MAX_OFFER_BYTES, MAX_SECTIONS,
};
pub use negotiate::{
    AnnouncedSource, AnswerSection, PlayedTrack, PublishedTrack, negotiate_play, negotiate_publish,
};
pub use offer::{Direction, MAX_SIMULCAST_LAYERS, Offer, OfferedSection};

/// Why an offer was refused; each maps to an HTTP status with the message as body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("malformed SDP offer: {0}")]
    Malformed(String),
    #[error("no codec in common: {0}")]
    NoCommonCodec(String),
}

fn malformed(msg: impl Into<String>) -> NegotiationError {
    NegotiationError::Malformed(msg.into())
}
