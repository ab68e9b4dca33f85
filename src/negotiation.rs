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

fn malformed(msg: impl Into<String>) -> NegotiationError {
    NegotiationError::Malformed(msg.into())
}

impl Offer {
    pub fn parse(text: &str) -> Result<Offer, NegotiationError> {
        if text.trim().is_empty() {
            return Err(malformed(
                "the body is empty; send the SDP offer as application/sdp",
            ));
        }
        // The parser wants CRLF or LF line ends and a final line end.
        let mut normalized = text.replace("\r\n", "\n");
        if !normalized.ends_with('\n') {
            normalized.push('\n');
        }
        let session = SessionDescription::unmarshal(&mut Cursor::new(normalized.as_bytes()))
            .map_err(|e| malformed(e.to_string()))?;
        if session.media_descriptions.is_empty() {
            return Err(malformed("the offer has no media sections (m= lines)"));
        }
        let session_attr = |key: &str| session.attribute(key).cloned();
        let mut ice_ufrag = session_attr("ice-ufrag");
        let mut ice_pwd = session_attr("ice-pwd");
        let mut fingerprint = session_attr("fingerprint");
        let bundle = session
            .attribute("group")
            .and_then(|g| g.strip_prefix("BUNDLE"))
            .map(|mids| mids.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let mut sections = Vec::new();
        for (index, m) in session.media_descriptions.iter().enumerate() {
            let attr = |key: &str| m.attribute(key).flatten().map(str::to_string);
            if ice_ufrag.is_none() {
                ice_ufrag = attr("ice-ufrag");
            }
            if ice_pwd.is_none() {
                ice_pwd = attr("ice-pwd");
            }
            if fingerprint.is_none() {
                fingerprint = attr("fingerprint");
            }
            if let Some(setup) = attr("setup")
                && setup == "passive"
            {
                return Err(malformed(
                    "a=setup:passive leaves no DTLS client: the offer must be actpass or active",
                ));
            }
            let direction = if m.has_attribute("sendonly") {
                Direction::SendOnly
            } else if m.has_attribute("recvonly") {
                Direction::RecvOnly
            } else if m.has_attribute("inactive") {
                Direction::Inactive
            } else {
                Direction::SendRecv
            };
            let mut codecs = Vec::new();
            for format in &m.media_name.formats {
                let Ok(pt) = format.parse::<u8>() else {
                    continue;
                };
                if pt > 127 {
                    return Err(malformed(format!("payload type {pt} is out of range")));
                }
                let Some(rtpmap) = find_pt_attr(m, "rtpmap", pt) else {
                    continue;
                };
                let mut parts = rtpmap.split('/');
                let name = parts.next().unwrap_or_default().to_string();
                let clock_rate = parts.next().and_then(|c| c.parse().ok()).ok_or_else(|| {
                    malformed(format!("a=rtpmap:{pt} {rtpmap} has no clock rate"))
                })?;
                let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                let fmtp = find_pt_attr(m, "fmtp", pt).unwrap_or_default().to_string();
                let feedback = m
                    .attributes
                    .iter()
                    .filter(|a| a.key == "rtcp-fb")
                    .filter_map(|a| a.value.as_deref())
                    .filter_map(|v| v.split_once(' '))
                    .filter(|(p, _)| *p == format || *p == "*")
                    .map(|(_, fb)| fb.trim().to_string())
                    .collect();
                codecs.push(Codec {
                    payload_type: pt,
                    name,
                    clock_rate,
                    channels,
                    fmtp,
                    feedback,
                });
            }
            let extensions = m
                .attributes
                .iter()
                .filter(|a| a.key == "extmap")
                .filter_map(|a| a.value.as_deref())
                .filter_map(|v| {
                    let (id, uri) = v.split_once(' ')?;
                    let id = id.split('/').next()?.parse::<u8>().ok()?;
                    Some((id, uri.split_whitespace().next()?.to_string()))
                })
                .collect();
            sections.push(OfferedSection {
                mid: attr("mid").unwrap_or_else(|| index.to_string()),
                media: m.media_name.media.clone(),
                protocol: m.media_name.protos.join("/"),
                first_format: m.media_name.formats.first().cloned().unwrap_or_default(),
                port_zero: m.media_name.port.value == 0,
                direction,
                codecs,
                extensions,
                rtcp_mux: m.has_attribute("rtcp-mux"),
            });
        }
        let ice_ufrag = ice_ufrag.ok_or_else(|| malformed("the offer has no a=ice-ufrag"))?;
        let ice_pwd = ice_pwd.ok_or_else(|| malformed("the offer has no a=ice-pwd"))?;
        let fingerprint = fingerprint.ok_or_else(|| malformed("the offer has no a=fingerprint"))?;
        let fingerprint = parse_fingerprint(&fingerprint)?;
        Ok(Offer {
            ice_ufrag,
            ice_pwd,
            fingerprint,
            sections,
            bundle,
        })
    }
}

fn find_pt_attr<'m>(m: &'m MediaDescription, key: &str, pt: u8) -> Option<&'m str> {
    let prefix = format!("{pt} ");
    m.attributes
        .iter()
        .filter(|a| a.key == key)
        .filter_map(|a| a.value.as_deref())
        .find_map(|v| v.strip_prefix(&prefix))
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
        MediaKind::Video => codec
            .feedback
            .iter()
            .filter(|f| ACCEPTED_VIDEO_FEEDBACK.contains(&f.as_str()))
            .cloned()
            .collect(),
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
}
