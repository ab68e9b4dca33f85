//! Negotiation proper: which tracks a publisher's offer fixes, and how a player's offer receives
//! them.

use serde::Serialize;

use super::codec::{
    Codec, FORWARDED_EXTENSIONS, MID_URI, PLAYER_FEEDBACK, REPAIRED_RID_URI, RID_URI,
    SIMULCAST_PLAYER_FEEDBACK, TRANSPORT_CC_URI,
};
use super::offer::{Direction, Offer, OfferedSection};
use super::{MediaKind, NegotiationError, malformed};
use crate::wire::rtp::ExtensionIdMap;

/// One track a publisher sends, as the relay forwards it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedTrack {
    pub kind: MediaKind,
    /// The codec under the publisher's payload type.
    pub codec: Codec,
    /// Forwarded header extensions under the publisher's ids.
    #[serde(skip)]
    pub extensions: Vec<(u8, String)>,
    /// The payload type of the publisher's retransmissions (RTX, RFC 4588), when negotiated.
    #[serde(skip)]
    pub rtx_payload_type: Option<u8>,
    /// The id of the transport-wide sequence number extension, when negotiated: the relay
    /// sends transport-wide feedback for what carries it.
    #[serde(skip)]
    pub transport_cc_id: Option<u8>,
    /// The simulcast encodings, by RID in the offer's order (by convention lowest first);
    /// empty for a track of one encoding.
    pub rids: Vec<String>,
    /// The ids of the RID and repaired-RID header extensions (simulcast).
    #[serde(skip)]
    pub rid_ids: Option<(u8, Option<u8>)>,
}

impl PublishedTrack {
    /// Whether the track arrives as several encodings (simulcast).
    pub fn is_simulcast(&self) -> bool {
        self.rids.len() > 1
    }
}

/// One track a player receives: what the worker needs to rewrite the publisher's packets.
#[derive(Debug, Clone)]
pub struct PlayedTrack {
    pub kind: MediaKind,
    pub publisher_payload_type: u8,
    pub payload_type: u8,
    pub ssrc: u32,
    pub extension_ids: ExtensionIdMap,
    /// The player negotiated generic NACK: the relay answers its NACKs with retransmissions.
    pub nack: bool,
    /// `(payload type, SSRC)` of retransmissions to the player, when it negotiated RTX; without
    /// it a retransmission goes as the original packet again.
    pub rtx: Option<(u8, u32)>,
    /// The player's id of the transport-wide sequence number extension, when the stream is
    /// simulcast and the player negotiated transport-wide feedback: the relay numbers what it
    /// sends and estimates the player's path from the feedback.
    pub transport_cc_id: Option<u8>,
}

/// The source a player's section announces: its SSRC (and RTX SSRC), stream and track ids.
#[derive(Debug, Clone)]
pub struct AnnouncedSource {
    pub ssrc: u32,
    pub rtx_ssrc: Option<u32>,
    pub stream_id: String,
    pub track_id: String,
}

/// What the answer says for one offered section.
// A few per offer, built once on the control thread: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AnswerSection {
    Rejected,
    Accepted {
        direction: &'static str,
        codec: Codec,
        /// The answer's RTX payload type for `codec` (`apt` = its payload type), if any.
        rtx_payload_type: Option<u8>,
        feedback: Vec<String>,
        extensions: Vec<(u8, String)>,
        /// Announced for a player's receiving side.
        source: Option<AnnouncedSource>,
        /// The simulcast encodings received, by RID (a publisher's simulcast section).
        simulcast: Vec<String>,
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
            .filter(|k| sends && !section.declined && !tracks.iter().any(|t| t.kind == *k))
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
        // The transport-wide sequence number is per hop: answered, read, never forwarded.
        let transport_cc_id = section
            .extensions
            .iter()
            .find(|(_, uri)| uri == TRANSPORT_CC_URI)
            .map(|(id, _)| *id);
        let rtx_payload_type = section
            .codecs
            .iter()
            .find(|c| c.is_rtx_for(codec.payload_type))
            .map(|c| c.payload_type);
        let feedback = accepted_feedback(kind, codec);
        let (rids, rid_ids, layer_extensions) = simulcast_layers(kind, section)?;
        tracks.push(PublishedTrack {
            kind,
            codec: Codec {
                feedback: feedback.clone(),
                ..codec.clone()
            },
            extensions: extensions.clone(),
            rtx_payload_type,
            transport_cc_id,
            rids: rids.clone(),
            rid_ids,
        });
        let mut answered_extensions = extensions;
        answered_extensions.extend(transport_cc_id.map(|id| (id, TRANSPORT_CC_URI.to_string())));
        answered_extensions.extend(layer_extensions);
        answer.push(AnswerSection::Accepted {
            direction: "recvonly",
            codec: codec.clone(),
            rtx_payload_type,
            feedback,
            extensions: answered_extensions,
            source: None,
            simulcast: rids,
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

/// A video section's simulcast encodings: their RIDs, the ids of the RID and repaired-RID
/// extensions the relay reads to tell them apart, and the extensions to answer for that (MID,
/// RID, repaired RID). One encoding is no simulcast.
#[allow(clippy::type_complexity)]
fn simulcast_layers(
    kind: MediaKind,
    section: &OfferedSection,
) -> Result<(Vec<String>, Option<(u8, Option<u8>)>, Vec<(u8, String)>), NegotiationError> {
    if kind != MediaKind::Video || section.rids.len() < 2 {
        return Ok((Vec::new(), None, Vec::new()));
    }
    let id_of = |uri: &str| {
        section
            .extensions
            .iter()
            .find(|(_, u)| u == uri)
            .map(|(id, _)| *id)
    };
    let Some(rid_id) = id_of(RID_URI) else {
        return Err(malformed(format!(
            "section {} sends simulcast without the {RID_URI} header extension, which tells its \
             encodings apart",
            section.mid
        )));
    };
    let repaired_id = id_of(REPAIRED_RID_URI);
    let answered = [MID_URI, RID_URI, REPAIRED_RID_URI]
        .into_iter()
        .filter_map(|uri| id_of(uri).map(|id| (id, uri.to_string())))
        .collect();
    Ok((section.rids.clone(), Some((rid_id, repaired_id)), answered))
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
    // A simulcast stream picks each player's layer from an estimate of its path, made from
    // its transport-wide feedback.
    let simulcast = published.iter().any(PublishedTrack::is_simulcast);
    let player_feedback = if simulcast {
        SIMULCAST_PLAYER_FEEDBACK
    } else {
        PLAYER_FEEDBACK
    };
    for section in &offer.sections {
        let receives = matches!(section.direction, Direction::RecvOnly | Direction::SendRecv);
        let matched = MediaKind::from_media(&section.media)
            .filter(|k| receives && !section.declined && !played.iter().any(|p| p.kind == *k))
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
        let transport_cc_id = section
            .extensions
            .iter()
            .find(|(_, uri)| simulcast && uri == TRANSPORT_CC_URI)
            .map(|(id, _)| *id);
        extensions.extend(transport_cc_id.map(|id| (id, TRANSPORT_CC_URI.to_string())));
        let ssrc = ssrc_for(track.kind);
        let feedback: Vec<String> = accepted_feedback(track.kind, codec)
            .into_iter()
            .filter(|f| player_feedback.contains(&f.as_str()))
            .filter(|f| f != "transport-cc" || transport_cc_id.is_some())
            .collect();
        let nack = feedback.iter().any(|f| f == "nack");
        // Retransmissions go as RTX when the player offers it for its codec, under an SSRC of
        // their own (announced with `ssrc-group:FID`).
        let rtx = section
            .codecs
            .iter()
            .find(|c| nack && c.is_rtx_for(codec.payload_type))
            .map(|c| {
                let rtx_ssrc = ssrc_for(track.kind);
                (
                    c.payload_type,
                    if rtx_ssrc == ssrc { !ssrc } else { rtx_ssrc },
                )
            });
        played.push(PlayedTrack {
            kind: track.kind,
            publisher_payload_type: track.codec.payload_type,
            payload_type: codec.payload_type,
            ssrc,
            extension_ids,
            nack,
            rtx,
            transport_cc_id,
        });
        answer.push(AnswerSection::Accepted {
            direction: "sendonly",
            codec: codec.clone(),
            rtx_payload_type: rtx.map(|(pt, _)| pt),
            feedback,
            extensions,
            source: Some(AnnouncedSource {
                ssrc,
                rtx_ssrc: rtx.map(|(_, ssrc)| ssrc),
                stream_id: format!("corecast-{stream_name}"),
                track_id: format!("{stream_name}-{}", section.media),
            }),
            simulcast: Vec::new(),
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

/// The feedback the answer keeps for a codec: what the offer lists that the relay takes part
/// in (parsing kept only those). Audio keeps transport-wide feedback alone: the relay neither
/// asks an audio sender to retransmit nor for a keyframe.
fn accepted_feedback(kind: MediaKind, codec: &Codec) -> Vec<String> {
    match kind {
        MediaKind::Audio => codec
            .feedback
            .iter()
            .filter(|f| *f == "transport-cc")
            .cloned()
            .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::fixtures::{
        CHROME_PLAY_OFFER, CHROME_PUBLISH_OFFER, FIREFOX_MAX_BUNDLE_PLAY_OFFER,
        FIREFOX_MAX_BUNDLE_PUBLISH_OFFER, chrome_simulcast_publish_offer, transport,
    };
    use crate::sdp::write_answer;

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
    fn loss_repair_and_bandwidth_feedback_are_negotiated_with_both_sides() {
        let publish = Offer::parse(CHROME_PUBLISH_OFFER).unwrap();
        let (tracks, sections) = negotiate_publish(&publish).unwrap();
        let video = &tracks[1];
        assert_eq!(video.codec.payload_type, 96);
        // Chromium offers RTX 97 for VP8 96 and the transport-wide sequence number as id 3.
        assert_eq!(video.rtx_payload_type, Some(97));
        assert_eq!(video.transport_cc_id, Some(3));
        assert_eq!(tracks[0].transport_cc_id, Some(3));
        let answer = write_answer(&publish, &sections, &transport());
        for line in [
            "a=rtpmap:97 rtx/90000",
            "a=fmtp:97 apt=96",
            "a=rtcp-fb:96 nack",
            "a=rtcp-fb:96 transport-cc",
            "a=rtcp-fb:96 goog-remb",
            "a=rtcp-fb:111 transport-cc",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        ] {
            assert!(answer.contains(line), "{line} in\n{answer}");
        }
        assert!(!answer.contains("a=rtcp-fb:111 nack"), "no NACK for audio");

        // The player gets NACK and RTX under its own payload types and an SSRC of its own;
        // its bandwidth feedback is not negotiated (the relay does not read it yet).
        let play = Offer::parse(CHROME_PLAY_OFFER).unwrap();
        let (played, sections) =
            negotiate_play(&play, &tracks, "cam", |k| 1000 + k.index() as u32).unwrap();
        let video = played.iter().find(|p| p.kind == MediaKind::Video).unwrap();
        assert!(video.nack);
        assert_eq!(video.rtx, Some((97, !1001)));
        let answer = write_answer(&play, &sections, &transport());
        assert!(answer.contains(&format!("a=ssrc-group:FID 1001 {}", !1001u32)));
        assert!(answer.contains("a=fmtp:97 apt=96"));
        assert!(answer.contains("a=rtcp-fb:96 nack\r\n"));
        assert!(!answer.contains("transport-cc"), "{answer}");
        assert!(!answer.contains("goog-remb"), "{answer}");
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
    fn simulcast_is_received_by_rid_and_its_players_give_transport_wide_feedback() {
        let publish = Offer::parse(&chrome_simulcast_publish_offer()).unwrap();
        let (tracks, sections) = negotiate_publish(&publish).unwrap();
        let video = &tracks[1];
        assert_eq!(video.rids, vec!["q", "h", "f"]);
        assert_eq!(video.rid_ids, Some((10, Some(11))));
        assert!(video.is_simulcast() && !tracks[0].is_simulcast());
        let answer = write_answer(&publish, &sections, &transport());
        for line in [
            "a=rid:q recv",
            "a=rid:h recv",
            "a=rid:f recv",
            "a=simulcast:recv q;h;f",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        ] {
            assert!(answer.contains(line), "{line} in\n{answer}");
        }

        // A player of a simulcast stream numbers its feedback; of any other stream, not.
        let play = Offer::parse(CHROME_PLAY_OFFER).unwrap();
        let (played, sections) = negotiate_play(&play, &tracks, "cam", |_| 7).unwrap();
        assert!(played.iter().all(|p| p.transport_cc_id == Some(3)));
        let answer = write_answer(&play, &sections, &transport());
        assert!(answer.contains("a=rtcp-fb:96 transport-cc"), "{answer}");
        assert!(
            answer.contains("transport-wide-cc-extensions-01"),
            "{answer}"
        );
        let (plain, _) = negotiate_publish(&Offer::parse(CHROME_PUBLISH_OFFER).unwrap()).unwrap();
        let (played, _) = negotiate_play(&play, &plain, "cam", |_| 7).unwrap();
        assert!(played.iter().all(|p| p.transport_cc_id.is_none()));
    }

    #[test]
    fn simulcast_offers_that_cannot_work_say_why() {
        let without_rid_extension = chrome_simulcast_publish_offer().replace(
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
            "",
        );
        let err = negotiate_publish(&Offer::parse(&without_rid_extension).unwrap()).unwrap_err();
        assert!(err.to_string().contains("rtp-stream-id"), "{err}");
        let undeclared = chrome_simulcast_publish_offer().replace("a=rid:h send\r\n", "");
        let err = Offer::parse(&undeclared).unwrap_err();
        assert!(err.to_string().contains("a=rid:h send"), "{err}");
        let bad = chrome_simulcast_publish_offer().replace("q;h;f", "q;h;f!");
        assert!(Offer::parse(&bad).unwrap_err().to_string().contains("RID"));
        // Paused and alternative encodings: the first alternative counts, paused ones not;
        // more than three are left out of the answer.
        let many = chrome_simulcast_publish_offer()
            .replace(
                "a=rid:f send\r\n",
                "a=rid:f send\r\na=rid:x send\r\na=rid:y send\r\n",
            )
            .replace("q;h;f", "~y;q,x;h;f;x");
        let offer = Offer::parse(&many).unwrap();
        assert_eq!(offer.sections[1].rids, vec!["q", "h", "f"]);
    }

    /// Firefox with `max-bundle` offers its video section with port 0 and `a=bundle-only`:
    /// offered media on the bundle transport (RFC 8843 6), answered with that transport like
    /// the first section (JSEP, RFC 9429 5.3.1: an accepted section of the BUNDLE group
    /// carries the group's port, and the answer has no bundle-only).
    #[test]
    fn firefox_max_bundle_sections_are_offered_media_on_the_bundle_transport() {
        let publish = Offer::parse(FIREFOX_MAX_BUNDLE_PUBLISH_OFFER).unwrap();
        assert!(publish.sections.iter().all(|s| !s.declined));
        let (tracks, sections) = negotiate_publish(&publish).unwrap();
        let kinds: Vec<MediaKind> = tracks.iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [MediaKind::Audio, MediaKind::Video]);
        assert_eq!(tracks[1].codec.name, "VP8");
        let answer = write_answer(&publish, &sections, &transport());
        assert!(answer.contains("a=group:BUNDLE 0 1"), "{answer}");
        assert!(answer.contains("m=video 31000 "), "{answer}");
        assert!(!answer.contains(" 0 UDP/TLS"), "{answer}");
        assert!(!answer.contains("bundle-only"), "{answer}");

        let play = Offer::parse(FIREFOX_MAX_BUNDLE_PLAY_OFFER).unwrap();
        let (played, sections) =
            negotiate_play(&play, &tracks, "fox", |k| 1000 + k.index() as u32).unwrap();
        let kinds: Vec<MediaKind> = played.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [MediaKind::Audio, MediaKind::Video]);
        let answer = write_answer(&play, &sections, &transport());
        assert!(answer.contains("m=video 31000 "), "{answer}");
        assert!(
            answer.contains("a=ssrc:1001 cname:corecast-fox"),
            "{answer}"
        );
    }

    /// Port 0 means rejected unless the section is bundle-only inside the BUNDLE group: a
    /// bundle-only section outside it has no transport, and a plain port 0 is turned down.
    #[test]
    fn port_zero_outside_the_bundle_group_or_without_bundle_only_stays_rejected() {
        for offer in [
            FIREFOX_MAX_BUNDLE_PUBLISH_OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0"),
            FIREFOX_MAX_BUNDLE_PUBLISH_OFFER.replace("a=bundle-only\r\n", ""),
        ] {
            let offer = Offer::parse(&offer).unwrap();
            assert!(offer.sections[1].declined);
            let (tracks, sections) = negotiate_publish(&offer).unwrap();
            assert_eq!(tracks.len(), 1, "audio alone");
            let answer = write_answer(&offer, &sections, &transport());
            assert!(answer.contains("m=video 0 "), "{answer}");
        }
    }
}
