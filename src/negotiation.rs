//! SDP offer/answer for WHIP and WHEP (RFC 8829 JSEP, RFC 8866 SDP, RFC 9429). Offers are parsed
//! with the `sdp` crate into a small model; answers are ICE-lite, `setup:passive`, BUNDLE and
//! rtcp-mux, with one host candidate on the session's port.
//!
//! A publisher's offer fixes the stream's tracks (one audio, one video, each with one codec and
//! the header extensions the relay forwards). A player's offer is matched against those tracks:
//! the player gets the publisher's codec under the player's own payload type and extension ids.

use std::fmt::Write as _;
use std::io::Cursor;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use sdp::description::common::{Address, Attribute, ConnectionInformation};
use sdp::description::media::{MediaDescription, MediaName, RangedPort};
use sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};
use serde::Serialize;

use crate::wire::rtp::ExtensionIdMap;

/// Re-exported from its home in [`crate::media`], where the other layers find it.
pub use crate::media::MediaKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Codec {
    pub payload_type: u8,
    pub name: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
    /// The RTCP feedback the offer lists for this codec that the relay honours
    /// ([`ACCEPTED_VIDEO_FEEDBACK`]), each once however often the offer repeats it.
    #[serde(skip)]
    pub feedback: Vec<String>,
}

impl Codec {
    fn fmtp_param(&self, key: &str) -> Option<&str> {
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

    fn is_forwardable(&self, kind: MediaKind) -> bool {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

#[derive(Debug, Clone)]
pub struct OfferedSection {
    pub mid: String,
    pub media: String,
    pub protocol: String,
    pub first_format: String,
    pub port_zero: bool,
    pub direction: Direction,
    pub codecs: Vec<Codec>,
    pub extensions: Vec<(u8, String)>,
    pub rtcp_mux: bool,
}

/// The parts of an offer the relay acts on.
#[derive(Debug, Clone)]
pub struct Offer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// SHA-256 fingerprint of the offerer's DTLS certificate.
    pub fingerprint: Vec<u8>,
    pub sections: Vec<OfferedSection>,
    pub bundle: Vec<String>,
}

/// Why an offer was refused; each maps to an HTTP status with the message as body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("malformed SDP offer: {0}")]
    Malformed(String),
    #[error("no codec in common: {0}")]
    NoCommonCodec(String),
}

/// Header extensions the relay forwards (it rewrites their ids per player). MID, RID and
/// transport-wide sequence numbers are per-hop and are not forwarded.
const FORWARDED_EXTENSIONS: &[&str] = &[
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:ietf:params:rtp-hdrext:toffset",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:3gpp:video-orientation",
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time",
];

/// RTCP feedback the relay accepts: keyframe requests only (it does not retransmit).
const ACCEPTED_VIDEO_FEEDBACK: &[&str] = &["nack pli", "ccm fir"];

// Limits on an offer. Parsing costs time and memory in proportion to the offer's size; these
// bound that size and the model it yields, so the worst offer costs the relay one pass over
// 64 kB and well under a megabyte while it is parsed, and an offer over a limit is refused with
// the limit named before anything is built. Each is many times what real offers need:
// Chromium's offer with every codec it has (tests/fixtures) is 6 kB with 34 video formats and
// 164 attributes in its video section, simulcast adds about ten lines, Firefox's and OBS's
// offers are smaller.

/// The largest offer, in bytes: ten times Chromium's with every codec, room for candidates and
/// spare transceivers. The `sdp` crate parses line by line, one pass, and its model of an offer
/// is a small multiple of the text, so this cap bounds both its time and its memory.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Media sections in one offer. WHIP and WHEP use one audio and one video section; a data
/// channel or a few spare transceivers stay far below this.
pub const MAX_SECTIONS: usize = 16;
/// Formats on one m-line. RTP has 128 payload types and a section may list each once, so no
/// valid RTP section lists more (Chromium lists 34 video formats).
pub const MAX_FORMATS_PER_SECTION: usize = 128;
/// Attribute lines in one media section, or before the first (Chromium's video section has
/// 164: an rtpmap, an fmtp and up to five rtcp-fb lines per codec, and extmaps).
pub const MAX_ATTRIBUTES_PER_SECTION: usize = 1024;
/// RFC 8839 section 5.4: a ufrag is 4 to 256 ice-chars, a password 22 to 256.
const ICE_UFRAG_LENGTH: RangeInclusive<usize> = 4..=256;
const ICE_PWD_LENGTH: RangeInclusive<usize> = 22..=256;

fn malformed(msg: impl Into<String>) -> NegotiationError {
    NegotiationError::Malformed(msg.into())
}

impl Offer {
    /// Parses an offer within the limits above. The limits are checked on the text first, in
    /// one pass that allocates nothing and stops at the first limit crossed; only an offer
    /// within them reaches the `sdp` crate (one more pass), and then one pass over its lines
    /// builds the model: what a format's codec needs is looked up in tables that pass fills,
    /// not searched for per format.
    pub fn parse(text: &str) -> Result<Offer, NegotiationError> {
        if text.len() > MAX_OFFER_BYTES {
            return Err(malformed(format!(
                "the offer is {} kB; at most {} kB",
                text.len().div_ceil(1024),
                MAX_OFFER_BYTES / 1024
            )));
        }
        if text.trim().is_empty() {
            return Err(malformed(
                "the body is empty; send the SDP offer as application/sdp",
            ));
        }
        check_limits(text)?;
        // The parser wants CRLF or LF line ends and a final line end.
        let mut normalized = text.replace("\r\n", "\n");
        if !normalized.ends_with('\n') {
            normalized.push('\n');
        }
        let session = SessionDescription::unmarshal(&mut Cursor::new(normalized.as_bytes()))
            .map_err(|e| malformed(briefly(e.to_string())))?;
        if session.media_descriptions.is_empty() {
            return Err(malformed("the offer has no media sections (m= lines)"));
        }
        let mut transport = TransportAttributes::default();
        let mut bundle = None;
        for attribute in &session.attributes {
            let value = attribute.value.as_deref();
            if attribute.key == "group" {
                let mids = value.and_then(|g| g.strip_prefix("BUNDLE"));
                bundle = bundle.or(mids);
            } else {
                transport.note(&attribute.key, value)?;
            }
        }
        let sections = session
            .media_descriptions
            .iter()
            .enumerate()
            .map(|(index, m)| parse_section(index, m, &mut transport))
            .collect::<Result<Vec<_>, _>>()?;
        let ice_ufrag = transport
            .ice_ufrag
            .ok_or_else(|| malformed("the offer has no a=ice-ufrag"))?;
        let ice_pwd = transport
            .ice_pwd
            .ok_or_else(|| malformed("the offer has no a=ice-pwd"))?;
        let fingerprint = transport
            .fingerprint
            .ok_or_else(|| malformed("the offer has no a=fingerprint"))?;
        Ok(Offer {
            ice_ufrag: ice_ufrag.to_string(),
            ice_pwd: ice_pwd.to_string(),
            fingerprint: parse_fingerprint(fingerprint)?,
            sections,
            bundle: bundle
                .map(|mids| mids.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }
}

/// The `sdp` crate's errors quote the offending line whole; an error sent back (and logged)
/// quotes at most this many characters of it.
const MOST_CHARS_OF_A_PARSER_ERROR: usize = 160;

fn briefly(message: String) -> String {
    match message.char_indices().nth(MOST_CHARS_OF_A_PARSER_ERROR) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    }
}

/// Checks the offer's text against the caps on sections, formats and attributes before any
/// parser builds anything: one pass over the lines without allocating, which stops at the
/// first limit crossed (a payload type listed twice is refused at its second mention). Lines
/// are split as the `sdp` crate splits them, at `\n` with leading `\r`s skipped, so what it
/// would read as an m-line or an attribute is what is counted here.
fn check_limits(text: &str) -> Result<(), NegotiationError> {
    let lines = || text.split('\n').map(|line| line.trim_start_matches('\r'));
    let sections = lines().filter(|line| line.starts_with("m=")).count();
    if sections > MAX_SECTIONS {
        return Err(malformed(format!(
            "the offer has {sections} media sections; at most {MAX_SECTIONS}"
        )));
    }
    // Attributes before the first m-line are the session's; the caller names them.
    let mut section: Option<SectionName<'_>> = None;
    let mut attributes = 0;
    let check_attributes = |section: &Option<SectionName<'_>>, attributes: usize| {
        if attributes <= MAX_ATTRIBUTES_PER_SECTION {
            return Ok(());
        }
        let part = match section {
            Some(name) => name.to_string(),
            None => "the session part of the offer".to_string(),
        };
        Err(malformed(format!(
            "{part} has {attributes} attributes; at most {MAX_ATTRIBUTES_PER_SECTION}"
        )))
    };
    for line in lines() {
        if let Some(m_line) = line.strip_prefix("m=") {
            check_attributes(&section, attributes)?;
            let mut fields = m_line.split_whitespace();
            let name = SectionName {
                index: section.as_ref().map_or(0, |s| s.index + 1),
                media: fields.next().unwrap_or_default(),
            };
            let protocol = fields.nth(1).unwrap_or_default();
            check_formats(&name, carries_rtp(protocol.split('/')), fields)?;
            section = Some(name);
            attributes = 0;
        } else if line.starts_with("a=") {
            attributes += 1;
        }
    }
    check_attributes(&section, attributes)
}

/// Whether a section's protocol (`UDP/TLS/RTP/SAVPF`, split at `/`) carries RTP, whose formats
/// are payload types; a data channel's (`UDP/DTLS/SCTP`) does not.
fn carries_rtp<'p>(mut protocol: impl Iterator<Item = &'p str>) -> bool {
    protocol.any(|p| p == "RTP")
}

/// The formats of an m-line: at most [`MAX_FORMATS_PER_SECTION`], and in an RTP section each
/// a payload type (0 to 127) listed once.
fn check_formats<'f>(
    name: &SectionName<'_>,
    carries_rtp: bool,
    formats: impl Iterator<Item = &'f str> + Clone,
) -> Result<(), NegotiationError> {
    let mut listed_at: [Option<usize>; 128] = [None; 128];
    for (position, format) in formats.clone().enumerate() {
        if position == MAX_FORMATS_PER_SECTION {
            return Err(malformed(format!(
                "{name} lists {} formats; at most {MAX_FORMATS_PER_SECTION}",
                formats.count()
            )));
        }
        if !carries_rtp {
            continue;
        }
        let Some(pt) = format.parse::<u8>().ok().filter(|pt| *pt < 128) else {
            return Err(malformed(format!(
                "{name} lists `{format}`, which is not an RTP payload type (0 to 127)"
            )));
        };
        if let Some(first) = listed_at[pt as usize] {
            return Err(malformed(format!(
                "{name} lists payload type {pt} twice, as formats {} and {}",
                first + 1,
                position + 1
            )));
        }
        listed_at[pt as usize] = Some(position);
    }
    Ok(())
}

/// How an error names a media section: by its m-line, as `a=mid` may be missing or wrong.
struct SectionName<'m> {
    index: usize,
    media: &'m str,
}

impl std::fmt::Display for SectionName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} section (m-line {})", self.media, self.index + 1)
    }
}

/// One media section, within the limits, read in one pass over its attributes.
fn parse_section<'s>(
    index: usize,
    m: &'s MediaDescription,
    transport: &mut TransportAttributes<'s>,
) -> Result<OfferedSection, NegotiationError> {
    // `check_limits` has seen each format of an RTP section is a payload type, listed once.
    let formats: &[String] = if carries_rtp(m.media_name.protos.iter().map(String::as_str)) {
        &m.media_name.formats
    } else {
        &[]
    };
    let payload_types = formats
        .iter()
        .filter_map(|format| format.parse::<u8>().ok().filter(|pt| *pt < 128));
    let mut by_payload_type = PayloadTypeAttributes::default();
    let mut extensions = Vec::new();
    let (mut mid, mut setup) = (None, None);
    let (mut sendonly, mut recvonly, mut inactive, mut rtcp_mux) = (false, false, false, false);
    for attribute in &m.attributes {
        let value = attribute.value.as_deref();
        match attribute.key.as_str() {
            key @ ("rtpmap" | "fmtp" | "rtcp-fb") => by_payload_type.note(key, value),
            "extmap" => extensions.extend(value.and_then(parse_extmap)),
            "mid" => mid = mid.or(value),
            "setup" => setup = setup.or(value),
            "sendonly" => sendonly = true,
            "recvonly" => recvonly = true,
            "inactive" => inactive = true,
            "rtcp-mux" => rtcp_mux = true,
            key => transport.note(key, value)?,
        }
    }
    if setup == Some("passive") {
        return Err(malformed(
            "a=setup:passive leaves no DTLS client: the offer must be actpass or active",
        ));
    }
    let direction = if sendonly {
        Direction::SendOnly
    } else if recvonly {
        Direction::RecvOnly
    } else if inactive {
        Direction::Inactive
    } else {
        Direction::SendRecv
    };
    let mut codecs = Vec::new();
    for pt in payload_types {
        let Some(rtpmap) = by_payload_type.rtpmap[pt as usize] else {
            continue;
        };
        let mut parts = rtpmap.split('/');
        let name = parts.next().unwrap_or_default().to_string();
        let clock_rate = parts
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| malformed(format!("a=rtpmap:{pt} {rtpmap} has no clock rate")))?;
        let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        codecs.push(Codec {
            payload_type: pt,
            name,
            clock_rate,
            channels,
            fmtp: by_payload_type.fmtp[pt as usize]
                .unwrap_or_default()
                .to_string(),
            feedback: by_payload_type.feedback_for(pt),
        });
    }
    Ok(OfferedSection {
        mid: mid.map_or_else(|| index.to_string(), str::to_string),
        media: m.media_name.media.clone(),
        protocol: m.media_name.protos.join("/"),
        first_format: m.media_name.formats.first().cloned().unwrap_or_default(),
        port_zero: m.media_name.port.value == 0,
        direction,
        codecs,
        extensions,
        rtcp_mux,
    })
}

/// `a=extmap:<id>[/<direction>] <uri> [<attributes>]` as `(id, uri)`.
fn parse_extmap(value: &str) -> Option<(u8, String)> {
    let (id, uri) = value.split_once(' ')?;
    let id = id.split('/').next()?.parse::<u8>().ok()?;
    Some((id, uri.split_whitespace().next()?.to_string()))
}

/// A section's per-payload-type attributes (`a=rtpmap`, `a=fmtp`, `a=rtcp-fb`), filed by
/// payload type in one pass over its attributes, so that each format's codec is a lookup.
/// The first rtpmap and fmtp of a payload type count.
struct PayloadTypeAttributes<'s> {
    rtpmap: [Option<&'s str>; 128],
    fmtp: [Option<&'s str>; 128],
    feedback: [FeedbackSet; 128],
    /// `a=rtcp-fb:*` applies to every format of the section.
    every_format_feedback: FeedbackSet,
}

impl Default for PayloadTypeAttributes<'_> {
    fn default() -> Self {
        PayloadTypeAttributes {
            rtpmap: [None; 128],
            fmtp: [None; 128],
            feedback: [FeedbackSet::default(); 128],
            every_format_feedback: FeedbackSet::default(),
        }
    }
}

impl<'s> PayloadTypeAttributes<'s> {
    /// Files `a=<key>:<payload type> <rest>`; values for no payload type are ignored.
    fn note(&mut self, key: &str, value: Option<&'s str>) {
        let Some((pt, rest)) = value.and_then(|v| v.split_once(' ')) else {
            return;
        };
        if key == "rtcp-fb" && pt == "*" {
            self.every_format_feedback.insert(rest);
            return;
        }
        let Some(pt) = pt.parse::<u8>().ok().filter(|pt| *pt < 128) else {
            return;
        };
        let pt = pt as usize;
        match key {
            "rtpmap" => self.rtpmap[pt] = self.rtpmap[pt].or(Some(rest)),
            "fmtp" => self.fmtp[pt] = self.fmtp[pt].or(Some(rest)),
            _ => self.feedback[pt].insert(rest),
        }
    }

    fn feedback_for(&self, pt: u8) -> Vec<String> {
        self.feedback[pt as usize]
            .union(self.every_format_feedback)
            .to_vec()
    }
}

/// Which of [`ACCEPTED_VIDEO_FEEDBACK`] a format lists, a bit each: an offer that repeats a
/// feedback line costs a bit, not a copy per line per format.
#[derive(Debug, Clone, Copy, Default)]
struct FeedbackSet(u8);

impl FeedbackSet {
    fn insert(&mut self, feedback: &str) {
        if let Some(i) = ACCEPTED_VIDEO_FEEDBACK
            .iter()
            .position(|f| *f == feedback.trim())
        {
            self.0 |= 1 << i;
        }
    }

    fn union(self, other: FeedbackSet) -> FeedbackSet {
        FeedbackSet(self.0 | other.0)
    }

    fn to_vec(self) -> Vec<String> {
        ACCEPTED_VIDEO_FEEDBACK
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, f)| f.to_string())
            .collect()
    }
}

/// The offer's ICE credentials and DTLS fingerprint. The first of each counts: session-level
/// ones are noted first, then each section's (with BUNDLE they are the same in every section).
/// Every ufrag and password is checked, not only the one that counts.
#[derive(Default)]
struct TransportAttributes<'s> {
    ice_ufrag: Option<&'s str>,
    ice_pwd: Option<&'s str>,
    fingerprint: Option<&'s str>,
}

impl<'s> TransportAttributes<'s> {
    /// Notes `a=<key>:<value>` if it is one of these; other attributes are not its business.
    fn note(&mut self, key: &str, value: Option<&'s str>) -> Result<(), NegotiationError> {
        let value = value.unwrap_or_default();
        match key {
            "ice-ufrag" => {
                check_ice_credential(key, value, ICE_UFRAG_LENGTH)?;
                self.ice_ufrag = self.ice_ufrag.or(Some(value));
            }
            "ice-pwd" => {
                check_ice_credential(key, value, ICE_PWD_LENGTH)?;
                self.ice_pwd = self.ice_pwd.or(Some(value));
            }
            "fingerprint" => self.fingerprint = self.fingerprint.or(Some(value)),
            _ => {}
        }
        Ok(())
    }
}

/// RFC 8839 section 5.4: ufrag and password are ice-chars (`ALPHA / DIGIT / "+" / "/"`) of a
/// bounded length. A credential outside that is no client's, and the relay would hold it (and a
/// port) until the ICE timeout.
fn check_ice_credential(
    key: &str,
    value: &str,
    length: RangeInclusive<usize>,
) -> Result<(), NegotiationError> {
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '+' || *c == '/'))
    {
        return Err(malformed(format!(
            "a={key} contains {c:?}; RFC 8839 allows only letters, digits, `+` and `/`"
        )));
    }
    if !length.contains(&value.len()) {
        return Err(malformed(format!(
            "a={key} is {} characters long; RFC 8839 allows {} to {}",
            value.len(),
            length.start(),
            length.end()
        )));
    }
    Ok(())
}

fn parse_fingerprint(value: &str) -> Result<Vec<u8>, NegotiationError> {
    let (algorithm, hex) = value
        .split_once(' ')
        .ok_or_else(|| malformed(format!("a=fingerprint:{value} has no algorithm")))?;
    if !algorithm.eq_ignore_ascii_case("sha-256") {
        return Err(malformed(format!(
            "a=fingerprint uses {algorithm}; corecast needs sha-256"
        )));
    }
    let bytes: Option<Vec<u8>> = hex
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    match bytes {
        Some(b) if b.len() == 32 => Ok(b),
        _ => Err(malformed(format!(
            "a=fingerprint:{value} is not a SHA-256 digest"
        ))),
    }
}

/// Formats a digest the way `a=fingerprint` writes it: upper-case hex pairs joined by colons.
pub fn format_fingerprint(digest: &[u8]) -> String {
    let mut s = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// One track a publisher sends, as the relay forwards it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedTrack {
    pub kind: MediaKind,
    /// The codec under the publisher's payload type.
    pub codec: Codec,
    /// Forwarded header extensions under the publisher's ids.
    #[serde(skip)]
    pub extensions: Vec<(u8, String)>,
}

/// One track a player receives: what the worker needs to rewrite the publisher's packets.
#[derive(Debug, Clone)]
pub struct PlayedTrack {
    pub kind: MediaKind,
    pub publisher_payload_type: u8,
    pub payload_type: u8,
    pub ssrc: u32,
    pub extension_ids: ExtensionIdMap,
}

/// What the answer says for one offered section.
#[derive(Debug, Clone)]
pub enum AnswerSection {
    Rejected,
    Accepted {
        direction: &'static str,
        codec: Codec,
        feedback: Vec<String>,
        extensions: Vec<(u8, String)>,
        /// `(ssrc, stream id, track id)` announced for a player's receiving side.
        source: Option<(u32, String, String)>,
    },
}

/// Decides what a publisher may send: the first forwardable codec of the first audio and the
/// first video section that send. Everything else is rejected in the answer.
pub fn negotiate_publish(
    offer: &Offer,
) -> Result<(Vec<PublishedTrack>, Vec<AnswerSection>), NegotiationError> {
    let mut tracks: Vec<PublishedTrack> = Vec::new();
    let mut answer = Vec::new();
    for section in &offer.sections {
        let kind = MediaKind::from_media(&section.media);
        let sends = matches!(section.direction, Direction::SendOnly | Direction::SendRecv);
        let chosen = kind
            .filter(|k| sends && !section.port_zero && !tracks.iter().any(|t| t.kind == *k))
            .and_then(|k| {
                section
                    .codecs
                    .iter()
                    .find(|c| c.is_forwardable(k))
                    .map(|c| (k, c))
            });
        let Some((kind, codec)) = chosen else {
            answer.push(AnswerSection::Rejected);
            continue;
        };
        require_rtcp_mux(section)?;
        let extensions: Vec<(u8, String)> = section
            .extensions
            .iter()
            .filter(|(_, uri)| FORWARDED_EXTENSIONS.contains(&uri.as_str()))
            .cloned()
            .collect();
        let feedback = accepted_feedback(kind, codec);
        tracks.push(PublishedTrack {
            kind,
            codec: Codec {
                feedback: feedback.clone(),
                ..codec.clone()
            },
            extensions: extensions.clone(),
        });
        answer.push(AnswerSection::Accepted {
            direction: "recvonly",
            codec: codec.clone(),
            feedback,
            extensions,
            source: None,
        });
    }
    if tracks.is_empty() {
        let offered: Vec<String> = offer
            .sections
            .iter()
            .flat_map(|s| {
                s.codecs
                    .iter()
                    .map(|c| format!("{}/{}", c.name, c.clock_rate))
            })
            .collect();
        return Err(NegotiationError::NoCommonCodec(format!(
            "no sending audio or video section offers Opus, PCMU, PCMA, G722, VP8, VP9, AV1 or H264 \
             (packetization-mode=1); offered: {}",
            if offered.is_empty() {
                "nothing".to_string()
            } else {
                offered.join(", ")
            }
        )));
    }
    check_bundle(offer, &answer)?;
    Ok((tracks, answer))
}

/// Matches a player's offer against a stream's tracks. `ssrc_for` gives the SSRC the player
/// will see for each kind.
pub fn negotiate_play(
    offer: &Offer,
    published: &[PublishedTrack],
    stream_name: &str,
    ssrc_for: impl Fn(MediaKind) -> u32,
) -> Result<(Vec<PlayedTrack>, Vec<AnswerSection>), NegotiationError> {
    let mut played: Vec<PlayedTrack> = Vec::new();
    let mut answer = Vec::new();
    for section in &offer.sections {
        let receives = matches!(section.direction, Direction::RecvOnly | Direction::SendRecv);
        let matched = MediaKind::from_media(&section.media)
            .filter(|k| receives && !section.port_zero && !played.iter().any(|p| p.kind == *k))
            .and_then(|k| published.iter().find(|t| t.kind == k))
            .and_then(|track| {
                section
                    .codecs
                    .iter()
                    .find(|c| track.codec.is_compatible(c))
                    .map(|c| (track, c))
            });
        let Some((track, codec)) = matched else {
            answer.push(AnswerSection::Rejected);
            continue;
        };
        require_rtcp_mux(section)?;
        let mut extension_ids = ExtensionIdMap::default();
        let mut extensions = Vec::new();
        for (player_id, uri) in &section.extensions {
            if let Some((publisher_id, _)) = track.extensions.iter().find(|(_, u)| u == uri) {
                extension_ids.insert(*publisher_id, *player_id);
                extensions.push((*player_id, uri.clone()));
            }
        }
        let ssrc = ssrc_for(track.kind);
        let feedback = accepted_feedback(track.kind, codec);
        played.push(PlayedTrack {
            kind: track.kind,
            publisher_payload_type: track.codec.payload_type,
            payload_type: codec.payload_type,
            ssrc,
            extension_ids,
        });
        answer.push(AnswerSection::Accepted {
            direction: "sendonly",
            codec: codec.clone(),
            feedback,
            extensions,
            source: Some((
                ssrc,
                format!("corecast-{stream_name}"),
                format!("{stream_name}-{}", section.media),
            )),
        });
    }
    if played.is_empty() {
        let wanted: Vec<String> = published
            .iter()
            .map(|t| {
                format!(
                    "{} {}/{}",
                    section_media(t.kind),
                    t.codec.name,
                    t.codec.clock_rate
                )
            })
            .collect();
        return Err(NegotiationError::NoCommonCodec(format!(
            "the stream sends {}, and no receiving section of the offer accepts it",
            wanted.join(" and ")
        )));
    }
    check_bundle(offer, &answer)?;
    Ok((played, answer))
}

/// Media and RTCP share the session's one port, so every accepted section must use rtcp-mux.
fn require_rtcp_mux(section: &OfferedSection) -> Result<(), NegotiationError> {
    if section.rtcp_mux {
        Ok(())
    } else {
        Err(malformed(format!(
            "section {} lacks a=rtcp-mux, which corecast requires",
            section.mid
        )))
    }
}

fn section_media(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

fn accepted_feedback(kind: MediaKind, codec: &Codec) -> Vec<String> {
    match kind {
        MediaKind::Audio => Vec::new(),
        // Parsing kept only the feedback the relay honours.
        MediaKind::Video => codec.feedback.clone(),
    }
}

/// All accepted sections share one port and one DTLS association, so with more than one they
/// must be in the offer's BUNDLE group.
fn check_bundle(offer: &Offer, answer: &[AnswerSection]) -> Result<(), NegotiationError> {
    let accepted: Vec<&str> = offer
        .sections
        .iter()
        .zip(answer)
        .filter(|(_, a)| matches!(a, AnswerSection::Accepted { .. }))
        .map(|(s, _)| s.mid.as_str())
        .collect();
    if accepted.len() > 1
        && let Some(mid) = accepted
            .iter()
            .find(|mid| !offer.bundle.iter().any(|b| b == *mid))
    {
        return Err(malformed(format!(
            "section {mid} is not in an a=group:BUNDLE; corecast carries all media on one port"
        )));
    }
    Ok(())
}

/// What is the same in every section of one answer.
pub struct AnswerTransport<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    /// Our certificate's SHA-256 fingerprint, formatted.
    pub fingerprint: &'a str,
    pub ip: IpAddr,
    pub port: u16,
    /// Which host candidates to offer (`media.protocol`).
    pub udp: bool,
    pub tcp: bool,
}

/// Candidate priorities (RFC 8445 5.1.2.1): type preference 126 (host) for both; the local
/// preference of a passive TCP candidate follows RFC 6544 4.2 (direction preference 4), which
/// puts it below UDP, so clients that can use UDP do.
const UDP_HOST_PRIORITY: u32 = (126 << 24) | (65535 << 8) | 255;
const TCP_PASSIVE_HOST_PRIORITY: u32 = (126 << 24) | (((1 << 13) * 4 + 8191) << 8) | 255;

/// Writes the SDP answer.
pub fn write_answer(
    offer: &Offer,
    sections: &[AnswerSection],
    transport: &AnswerTransport<'_>,
) -> String {
    let address_type = if transport.ip.is_ipv4() { "IP4" } else { "IP6" };
    let connection = ConnectionInformation {
        network_type: "IN".into(),
        address_type: address_type.into(),
        address: Some(Address {
            address: transport.ip.to_string(),
            ttl: None,
            range: None,
        }),
    };
    let accepted_mids: Vec<&str> = offer
        .sections
        .iter()
        .zip(sections)
        .filter(|(_, a)| matches!(a, AnswerSection::Accepted { .. }))
        .map(|(s, _)| s.mid.as_str())
        .collect();
    let mut session = SessionDescription {
        version: 0,
        origin: Origin {
            username: "corecast".into(),
            session_id: rand::random::<u32>() as u64,
            session_version: 2,
            network_type: "IN".into(),
            address_type: address_type.into(),
            unicast_address: transport.ip.to_string(),
        },
        session_name: "corecast".into(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: None,
        bandwidth: vec![],
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        time_zones: vec![],
        encryption_key: None,
        attributes: vec![
            Attribute::new(
                "group".into(),
                Some(format!("BUNDLE {}", accepted_mids.join(" "))),
            ),
            Attribute::new("ice-lite".into(), None),
            Attribute::new("msid-semantic".into(), Some(" WMS *".into())),
        ],
        media_descriptions: vec![],
    };
    let mut candidates = Vec::new();
    if transport.udp {
        candidates.push(format!(
            "1 1 udp {UDP_HOST_PRIORITY} {} {} typ host generation 0",
            transport.ip, transport.port
        ));
    }
    if transport.tcp {
        candidates.push(format!(
            "2 1 tcp {TCP_PASSIVE_HOST_PRIORITY} {} {} typ host tcptype passive generation 0",
            transport.ip, transport.port
        ));
    }
    for (offered, answer) in offer.sections.iter().zip(sections) {
        let mut m = MediaDescription {
            media_name: MediaName {
                media: offered.media.clone(),
                port: RangedPort {
                    value: 0,
                    range: None,
                },
                protos: offered.protocol.split('/').map(str::to_string).collect(),
                formats: vec![offered.first_format.clone()],
            },
            media_title: None,
            connection_information: Some(connection.clone()),
            bandwidth: vec![],
            encryption_key: None,
            attributes: vec![],
        };
        let AnswerSection::Accepted {
            direction,
            codec,
            feedback,
            extensions,
            source,
        } = answer
        else {
            m = m.with_value_attribute("mid".into(), offered.mid.clone());
            session.media_descriptions.push(m);
            continue;
        };
        m.media_name.port.value = transport.port as isize;
        m.media_name.formats.clear();
        m = m
            .with_value_attribute("mid".into(), offered.mid.clone())
            .with_property_attribute((*direction).into())
            .with_ice_credentials(transport.ice_ufrag.into(), transport.ice_pwd.into())
            .with_fingerprint("sha-256".into(), transport.fingerprint.into())
            .with_value_attribute("setup".into(), "passive".into())
            .with_property_attribute("rtcp-mux".into())
            .with_property_attribute("rtcp-rsize".into());
        for (id, uri) in extensions {
            m = m.with_value_attribute("extmap".into(), format!("{id} {uri}"));
        }
        m = m.with_codec(
            codec.payload_type,
            codec.name.clone(),
            codec.clock_rate,
            codec.channels,
            codec.fmtp.clone(),
        );
        for fb in feedback {
            m = m.with_value_attribute("rtcp-fb".into(), format!("{} {fb}", codec.payload_type));
        }
        if let Some((ssrc, stream_id, track_id)) = source {
            m = m
                .with_value_attribute("msid".into(), format!("{stream_id} {track_id}"))
                .with_value_attribute("ssrc".into(), format!("{ssrc} cname:{stream_id}"))
                .with_value_attribute("ssrc".into(), format!("{ssrc} msid:{stream_id} {track_id}"));
        }
        for candidate in &candidates {
            m = m.with_candidate(candidate.clone());
        }
        m = m.with_property_attribute("end-of-candidates".into());
        session.media_descriptions.push(m);
    }
    session.marshal()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const CHROME_PUBLISH_OFFER: &str =
        include_str!("../tests/fixtures/chrome_publish_offer.sdp");
    pub const CHROME_PLAY_OFFER: &str = include_str!("../tests/fixtures/chrome_play_offer.sdp");

    fn transport() -> AnswerTransport<'static> {
        AnswerTransport {
            ice_ufrag: "ufrag",
            ice_pwd: "password-password-pass",
            fingerprint: "AA:BB",
            ip: "127.0.0.1".parse().unwrap(),
            port: 31000,
            udp: true,
            tcp: true,
        }
    }

    #[test]
    fn chrome_publish_offer_yields_opus_and_vp8_recvonly_answer() {
        let offer = Offer::parse(CHROME_PUBLISH_OFFER).unwrap();
        assert_eq!(offer.fingerprint.len(), 32);
        let (tracks, sections) = negotiate_publish(&offer).unwrap();
        assert_eq!(tracks.len(), 2);
        assert_eq!(tracks[0].kind, MediaKind::Audio);
        assert!(tracks[0].codec.name.eq_ignore_ascii_case("opus"));
        assert_eq!(tracks[1].kind, MediaKind::Video);
        assert_eq!(tracks[1].codec.name, "VP8");
        assert!(
            tracks[1]
                .extensions
                .iter()
                .all(|(_, u)| !u.contains("transport-wide"))
        );
        let answer = write_answer(&offer, &sections, &transport());
        for needle in [
            "a=ice-lite",
            "a=setup:passive",
            "a=rtcp-mux",
            "a=recvonly",
            "a=group:BUNDLE 0 1",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 31000 typ host",
            "a=candidate:2 1 tcp 2124414975 127.0.0.1 31000 typ host tcptype passive",
            "a=fingerprint:sha-256 AA:BB",
            "a=rtcp-fb:96 nack pli",
        ] {
            assert!(answer.contains(needle), "answer lacks {needle}:\n{answer}");
        }
        // The answer is itself valid SDP.
        SessionDescription::unmarshal(&mut Cursor::new(answer.as_bytes())).unwrap();
    }

    #[test]
    fn player_gets_publisher_codec_under_its_own_payload_type_and_ids() {
        let publish = Offer::parse(CHROME_PUBLISH_OFFER).unwrap();
        let (mut tracks, _) = negotiate_publish(&publish).unwrap();
        // Pretend the publisher used other numbers than the player will.
        tracks[1].codec.payload_type = 120;
        tracks[1].extensions = vec![(9, "urn:3gpp:video-orientation".into())];
        let play = Offer::parse(CHROME_PLAY_OFFER).unwrap();
        let (played, sections) =
            negotiate_play(&play, &tracks, "cam", |k| 1000 + k.index() as u32).unwrap();
        let video = played.iter().find(|p| p.kind == MediaKind::Video).unwrap();
        assert_eq!(video.publisher_payload_type, 120);
        assert_eq!(video.payload_type, 96);
        assert_eq!(video.ssrc, 1001);
        let player_id = play.sections[1]
            .extensions
            .iter()
            .find(|(_, u)| u == "urn:3gpp:video-orientation")
            .unwrap()
            .0;
        assert_eq!(video.extension_ids.get(9), player_id);
        let answer = write_answer(&play, &sections, &transport());
        assert!(answer.contains("a=sendonly"));
        assert!(answer.contains("a=ssrc:1001 cname:corecast-cam"));
    }

    #[test]
    fn player_without_the_stream_codec_is_refused_with_reason() {
        let publish = Offer::parse(CHROME_PUBLISH_OFFER).unwrap();
        let (mut tracks, _) = negotiate_publish(&publish).unwrap();
        tracks.retain(|t| t.kind == MediaKind::Video);
        tracks[0].codec.name = "AV1".into();
        let play = Offer::parse(&CHROME_PLAY_OFFER.replace("AV1", "XX1")).unwrap();
        let err = negotiate_play(&play, &tracks, "cam", |_| 1).unwrap_err();
        assert!(
            matches!(err, NegotiationError::NoCommonCodec(ref m) if m.contains("AV1")),
            "{err}"
        );
    }

    #[test]
    fn malformed_offers_say_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("hello", "malformed SDP"),
            (
                &CHROME_PUBLISH_OFFER.replace("a=ice-ufrag", "a=x-ufrag"),
                "ice-ufrag",
            ),
            (
                &CHROME_PUBLISH_OFFER.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"),
                "sha-256",
            ),
            (
                &CHROME_PUBLISH_OFFER.replace("a=setup:actpass", "a=setup:passive"),
                "setup:passive",
            ),
        ];
        for (offer, needle) in cases {
            let err = Offer::parse(offer).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        // Every codec renamed to something the relay does not forward.
        let no_codec: String = CHROME_PUBLISH_OFFER
            .lines()
            .map(|line| match line.strip_prefix("a=rtpmap:") {
                Some(rest) => {
                    let (pt, codec) = rest.split_once(' ').unwrap();
                    let clock = codec.split_once('/').unwrap().1;
                    format!("a=rtpmap:{pt} X-UNKNOWN/{clock}\r\n")
                }
                None => format!("{line}\n"),
            })
            .collect();
        let err = negotiate_publish(&Offer::parse(&no_codec).unwrap()).unwrap_err();
        assert!(matches!(err, NegotiationError::NoCommonCodec(_)), "{err}");
    }

    /// A publish offer in Firefox's layout (its attribute order, codecs and extensions),
    /// written by hand: no Firefox was at hand to capture one.
    pub const FIREFOX_PUBLISH_OFFER: &str =
        include_str!("../tests/fixtures/firefox_style_publish_offer.sdp");

    /// Chromium's captured publish offer with the lines Chromium adds for three simulcast layers.
    fn chrome_simulcast_publish_offer() -> String {
        let layers = "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
                      a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
                      a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n";
        format!("{}{layers}", CHROME_PUBLISH_OFFER.trim_end())
    }

    /// The offer of issue 17: the video m-line lists payload type 96 `copies` times, with as
    /// many `a=rtcp-fb:96` lines. The parser that kept every duplicate copied every feedback
    /// line into every one of them: `copies`² strings.
    fn offer_repeating_payload_type_96(copies: usize) -> String {
        let mut offer = String::new();
        for line in CHROME_PUBLISH_OFFER.lines() {
            if line.starts_with("m=video") {
                offer.push_str("m=video 9 UDP/TLS/RTP/SAVPF");
                offer.push_str(&" 96".repeat(copies));
            } else {
                offer.push_str(line.trim_end());
            }
            offer.push('\n');
        }
        // The video section is the last: these lines are its.
        offer.push_str(&"a=rtcp-fb:96 nack\n".repeat(copies));
        offer
    }

    fn amplifying_offer() -> String {
        offer_repeating_payload_type_96(20_000)
    }

    /// As many duplicates as fit, padded to exactly the largest size parsing accepts.
    fn duplicates_at_the_size_cap() -> String {
        let base = offer_repeating_payload_type_96(0).len();
        let padding_line = "a=x-padding:\n".len();
        let copies = (MAX_OFFER_BYTES - base - padding_line) / " 96a=rtcp-fb:96 nack\n".len();
        let mut offer = offer_repeating_payload_type_96(copies);
        let padding = "x".repeat(MAX_OFFER_BYTES - offer.len() - padding_line);
        offer.push_str(&format!("a=x-padding:{padding}\n"));
        offer
    }

    /// Builds one hostile offer.
    type OfferBuilder = fn() -> String;

    /// The `sdp_offer` fuzz target's seeds: file name and the offer it holds.
    const FUZZ_SEEDS: &[(&str, OfferBuilder)] = &[
        (
            "amplifying_20000_duplicate_payload_types.sdp",
            amplifying_offer,
        ),
        (
            "duplicate_payload_types_at_the_size_cap.sdp",
            duplicates_at_the_size_cap,
        ),
    ];

    fn malformed_message(offer: &str) -> String {
        match Offer::parse(offer) {
            Err(NegotiationError::Malformed(message)) => message,
            other => panic!("expected a malformed-offer error, got {other:?}"),
        }
    }

    /// The `sdp_offer` fuzz target starts from these offers (fuzz/seeds/sdp_offer), and the
    /// integration tests send them to a relay: the files are what these tests build.
    #[test]
    fn the_fuzz_seeds_are_the_offers_these_tests_build() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sdp_offer");
        for (file, build) in FUZZ_SEEDS {
            let path = dir.join(file);
            if std::env::var_os("CORECAST_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::write(&path, build()).unwrap();
            }
            let seed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                seed == build(),
                "{file} is not the offer the tests build; rewrite it with \
                 CORECAST_WRITE_FUZZ_SEEDS=1 cargo test --lib negotiation"
            );
        }
    }

    #[test]
    fn the_amplifying_offer_is_refused_by_its_size_before_parsing() {
        let offer = amplifying_offer();
        let video_line = offer.lines().find(|l| l.starts_with("m=video")).unwrap();
        assert_eq!(video_line.matches(" 96").count(), 20_000);
        assert!(offer.matches("a=rtcp-fb:96 ").count() > 20_000);
        assert!(
            offer.len() > 400_000 && offer.len() < 440_000,
            "{}",
            offer.len()
        );
        let message = malformed_message(&offer);
        assert_eq!(
            message,
            format!(
                "the offer is {} kB; at most 64 kB",
                offer.len().div_ceil(1024)
            )
        );
        // One byte over is over.
        let over = format!("{}\n", duplicates_at_the_size_cap());
        assert_eq!(
            malformed_message(&over),
            "the offer is 65 kB; at most 64 kB"
        );
    }

    /// At the largest size parsing accepts, thousands of duplicates are refused at the first:
    /// the second format, before the section's attributes are looked at.
    #[test]
    fn an_offer_at_the_size_cap_is_refused_at_its_first_duplicate_payload_type() {
        let offer = duplicates_at_the_size_cap();
        assert_eq!(offer.len(), MAX_OFFER_BYTES);
        let copies = offer.matches(" 96").count();
        assert!(copies > 2_500, "{copies}");
        assert_eq!(
            malformed_message(&offer),
            "the video section (m-line 2) lists payload type 96 twice, as formats 1 and 2"
        );
        // Refused before any parser reads on: a line no SDP parser takes, after the duplicate,
        // changes nothing.
        let unparseable_after = offer.replace("a=x-padding:", "xx-padding:");
        assert!(SessionDescription::unmarshal(&mut Cursor::new(&unparseable_after)).is_err());
        assert_eq!(
            malformed_message(&unparseable_after),
            malformed_message(&offer)
        );
    }

    #[test]
    fn a_parser_error_quotes_a_long_line_briefly() {
        let offer = format!("v=0\r\n{}\r\n", "x".repeat(60_000));
        let message = malformed_message(&offer);
        assert!(message.starts_with("SdpInvalidSyntax: xxx"), "{message}");
        assert!(message.ends_with("x…"), "{message}");
        assert_eq!(message.chars().count(), MOST_CHARS_OF_A_PARSER_ERROR + 1);
    }

    #[test]
    fn a_payload_type_listed_twice_in_one_m_line_is_refused() {
        let offer = CHROME_PUBLISH_OFFER.replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 111 9",
        );
        assert_eq!(
            malformed_message(&offer),
            "the audio section (m-line 1) lists payload type 111 twice, as formats 1 and 3"
        );
        // The same payload type in two sections is two sections' business (BUNDLE demux is
        // by SSRC and MID here), and a format that is no payload type is named.
        let offer = CHROME_PUBLISH_OFFER.replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 196 9",
        );
        assert_eq!(
            malformed_message(&offer),
            "the audio section (m-line 1) lists `196`, which is not an RTP payload type (0 to 127)"
        );
    }

    #[test]
    fn more_media_sections_than_the_cap_are_refused() {
        let audio_start = CHROME_PUBLISH_OFFER.find("m=audio").unwrap();
        let video_start = CHROME_PUBLISH_OFFER.find("m=video").unwrap();
        let audio = &CHROME_PUBLISH_OFFER[audio_start..video_start];
        let with_sections = |audio_sections: usize| {
            format!(
                "{}{}{}",
                &CHROME_PUBLISH_OFFER[..audio_start],
                audio.repeat(audio_sections),
                &CHROME_PUBLISH_OFFER[video_start..]
            )
        };
        let at_cap = Offer::parse(&with_sections(MAX_SECTIONS - 1)).unwrap();
        assert_eq!(at_cap.sections.len(), MAX_SECTIONS);
        assert_eq!(
            malformed_message(&with_sections(MAX_SECTIONS)),
            "the offer has 17 media sections; at most 16"
        );
    }

    #[test]
    fn more_attributes_than_the_cap_are_refused() {
        let with_video_attributes =
            |extra: usize| format!("{}{}", CHROME_PUBLISH_OFFER, "a=x-filler\r\n".repeat(extra));
        let video = &Offer::parse(CHROME_PUBLISH_OFFER).unwrap();
        assert_eq!(video.sections.len(), 2);
        let video_attributes = CHROME_PUBLISH_OFFER
            .split("m=video")
            .nth(1)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("a="))
            .count();
        let at_cap = with_video_attributes(MAX_ATTRIBUTES_PER_SECTION - video_attributes);
        Offer::parse(&at_cap).unwrap();
        assert_eq!(
            malformed_message(&format!("{at_cap}a=x-filler\r\n")),
            "the video section (m-line 2) has 1025 attributes; at most 1024"
        );
        let session_level = CHROME_PUBLISH_OFFER.replace(
            "a=extmap-allow-mixed\r\n",
            &"a=extmap-allow-mixed\r\n".repeat(MAX_ATTRIBUTES_PER_SECTION + 1),
        );
        assert!(
            malformed_message(&session_level)
                .starts_with("the session part of the offer has 1027 attributes; at most 1024"),
            "{}",
            malformed_message(&session_level)
        );
    }

    #[test]
    fn more_formats_than_rtp_has_payload_types_are_refused() {
        // Only a section that does not carry RTP can list that many without a duplicate.
        let formats: Vec<String> = (0..=MAX_FORMATS_PER_SECTION)
            .map(|i| format!("f{i}"))
            .collect();
        let offer = format!(
            "{}m=application 9 UDP/DTLS/SCTP {}\r\na=mid:2\r\n",
            CHROME_PUBLISH_OFFER,
            formats.join(" ")
        );
        assert_eq!(
            malformed_message(&offer),
            "the application section (m-line 3) lists 129 formats; at most 128"
        );
        let offer = format!(
            "{}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n",
            CHROME_PUBLISH_OFFER
        );
        assert!(Offer::parse(&offer).unwrap().sections[2].codecs.is_empty());
    }

    /// The largest model an offer can yield: as many sections as allowed, each listing all 128
    /// payload types with an rtpmap, and every byte left filled with feedback lines. Each
    /// codec keeps at most the feedback the relay honours, so the model is bounded by the
    /// caps however the offer repeats itself.
    #[test]
    fn a_maximal_offer_yields_a_model_bounded_by_the_caps() {
        let mut offer = String::from(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:Cg87\r\n\
             a=ice-pwd:WL016jBBraVUG46YgscGVymt\r\na=fingerprint:sha-256 ",
        );
        offer.push_str(&format_fingerprint(&[0xAB; 32]));
        offer.push_str("\r\n");
        for section in 0..MAX_SECTIONS {
            let formats: Vec<String> = (0..128).map(|pt| pt.to_string()).collect();
            offer.push_str(&format!(
                "m=video 9 UDP/TLS/RTP/SAVPF {}\r\na=mid:{section}\r\n",
                formats.join(" ")
            ));
            for pt in 0..128 {
                offer.push_str(&format!("a=rtpmap:{pt} VP8/90000\r\n"));
            }
        }
        // The last section takes the feedback lines, as many as the size and attribute caps
        // let it: the old parser copied each into each of its 128 codecs.
        let feedback = ["a=rtcp-fb:* nack pli\r\n", "a=rtcp-fb:* ccm fir\r\n"];
        let mut feedback_lines = 0;
        while offer.len() + feedback[0].len() <= MAX_OFFER_BYTES
            && 128 + 1 + feedback_lines < MAX_ATTRIBUTES_PER_SECTION
        {
            offer.push_str(feedback[feedback_lines % 2]);
            feedback_lines += 1;
        }
        assert!(feedback_lines > 400, "{feedback_lines}");
        let parsed = Offer::parse(&offer).unwrap();
        let codecs: usize = parsed.sections.iter().map(|s| s.codecs.len()).sum();
        let feedback_entries: usize = parsed
            .sections
            .iter()
            .flat_map(|s| &s.codecs)
            .map(|c| c.feedback.len())
            .sum();
        assert_eq!(codecs, MAX_SECTIONS * 128);
        assert_eq!(feedback_entries, 128 * ACCEPTED_VIDEO_FEEDBACK.len());
        assert!(
            parsed
                .sections
                .iter()
                .flat_map(|s| &s.codecs)
                .all(|c| c.feedback.len() <= ACCEPTED_VIDEO_FEEDBACK.len())
        );
        assert!(codecs <= MAX_SECTIONS * MAX_FORMATS_PER_SECTION);
    }

    #[test]
    fn ice_credentials_follow_rfc_8839() {
        let with = |ufrag: &str, pwd: &str| {
            CHROME_PUBLISH_OFFER
                .replace("a=ice-ufrag:Cg87", &format!("a=ice-ufrag:{ufrag}"))
                .replace(
                    "a=ice-pwd:WL016jBBraVUG46YgscGVymt",
                    &format!("a=ice-pwd:{pwd}"),
                )
        };
        let pwd = "WL016jBBraVUG46YgscGVymt";
        for (ufrag, pwd) in [
            ("a+/9", pwd),
            (&"u".repeat(256), pwd),
            ("Cg87", &"p".repeat(22)),
        ] {
            let offer = Offer::parse(&with(ufrag, pwd)).unwrap();
            assert_eq!(
                (offer.ice_ufrag.as_str(), offer.ice_pwd.as_str()),
                (ufrag, pwd)
            );
        }
        let refused = [
            (
                with("abc", pwd),
                "a=ice-ufrag is 3 characters long; RFC 8839 allows 4 to 256",
            ),
            (
                with(&"u".repeat(10_000), pwd),
                "a=ice-ufrag is 10000 characters long; RFC 8839 allows 4 to 256",
            ),
            (
                with("Cg-87", pwd),
                "a=ice-ufrag contains '-'; RFC 8839 allows only letters, digits, `+` and `/`",
            ),
            (
                with("Cg87", &"p".repeat(21)),
                "a=ice-pwd is 21 characters long; RFC 8839 allows 22 to 256",
            ),
            (
                with("Cg87", &"p".repeat(257)),
                "a=ice-pwd is 257 characters long; RFC 8839 allows 22 to 256",
            ),
            (
                with("Cg87", "WL016jBBraVUG46YgscGVym\u{e9}"),
                "a=ice-pwd contains 'é'; RFC 8839 allows only letters, digits, `+` and `/`",
            ),
        ];
        for (offer, message) in refused {
            assert_eq!(malformed_message(&offer), message);
        }
        // Only the first ufrag is used, and every one is checked.
        let second_section_only = CHROME_PUBLISH_OFFER.replacen(
            "a=ice-ufrag:Cg87",
            "a=ice-ufrag:Cg87\r\na=ice-ufrag:x",
            2,
        );
        assert!(malformed_message(&second_section_only).starts_with("a=ice-ufrag is 1 "));
    }

    #[test]
    fn chromium_simulcast_and_firefox_offers_are_within_every_limit() {
        let simulcast = chrome_simulcast_publish_offer();
        let (tracks, _) = negotiate_publish(&Offer::parse(&simulcast).unwrap()).unwrap();
        assert_eq!(tracks[1].codec.name, "VP8");

        let firefox = Offer::parse(FIREFOX_PUBLISH_OFFER).unwrap();
        assert_eq!(firefox.ice_ufrag, "4ee50b23");
        assert_eq!(firefox.bundle, ["0", "1"]);
        let (tracks, sections) = negotiate_publish(&firefox).unwrap();
        assert_eq!(tracks[0].codec.payload_type, 109);
        assert!(tracks[0].codec.name.eq_ignore_ascii_case("opus"));
        assert_eq!(tracks[1].codec.payload_type, 120);
        assert_eq!(tracks[1].codec.name, "VP8");
        // Firefox lists five feedback kinds per codec; the relay keeps the two it honours.
        assert_eq!(tracks[1].codec.feedback, ["nack pli", "ccm fir"]);
        assert!(write_answer(&firefox, &sections, &transport()).contains("a=rtcp-fb:120 nack pli"));
        // A Chromium player receives Firefox's stream.
        let play = Offer::parse(CHROME_PLAY_OFFER).unwrap();
        let (played, _) = negotiate_play(&play, &tracks, "ff", |_| 7).unwrap();
        assert_eq!(played.len(), 2);

        // Each real offer is far inside each cap, so the caps refuse only what no client sends.
        for offer in [
            CHROME_PUBLISH_OFFER,
            CHROME_PLAY_OFFER,
            FIREFOX_PUBLISH_OFFER,
            &simulcast,
        ] {
            assert!(offer.len() * 8 < MAX_OFFER_BYTES, "{}", offer.len());
            let parsed = Offer::parse(offer).unwrap();
            assert!(parsed.sections.len() * 8 <= MAX_SECTIONS);
            for section in offer.split("\nm=").skip(1) {
                let formats = section.lines().next().unwrap().split(' ').count() - 3;
                let attributes = section.lines().filter(|l| l.starts_with("a=")).count();
                assert!(formats * 3 < MAX_FORMATS_PER_SECTION, "{formats}");
                assert!(attributes * 5 < MAX_ATTRIBUTES_PER_SECTION, "{attributes}");
            }
        }
    }
}
