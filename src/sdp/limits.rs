//! Caps on an offer's size and shape, checked on its text before any parser builds anything,
//! and the check on ICE credentials.

use std::ops::RangeInclusive;

use super::{NegotiationError, malformed};

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
pub(super) const ICE_UFRAG_LENGTH: RangeInclusive<usize> = 4..=256;
pub(super) const ICE_PWD_LENGTH: RangeInclusive<usize> = 22..=256;

/// The `sdp` crate's errors quote the offending line whole; an error sent back (and logged)
/// quotes at most this many characters of it.
const MOST_CHARS_OF_A_PARSER_ERROR: usize = 160;

pub(super) fn briefly(message: String) -> String {
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
pub(super) fn check_limits(text: &str) -> Result<(), NegotiationError> {
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
pub(super) fn carries_rtp<'p>(mut protocol: impl Iterator<Item = &'p str>) -> bool {
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

/// RFC 8839 section 5.4: ufrag and password are ice-chars (`ALPHA / DIGIT / "+" / "/"`) of a
/// bounded length. A credential outside that is no client's, and the relay would hold it (and a
/// port) until the ICE timeout.
pub(super) fn check_ice_credential(
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use ::sdp::description::session::SessionDescription;

    use super::*;
    use crate::sdp::codec::ACCEPTED_FEEDBACK;
    use crate::sdp::fixtures::{
        CHROME_PLAY_OFFER, CHROME_PUBLISH_OFFER, FIREFOX_PUBLISH_OFFER, amplifying_offer,
        chrome_simulcast_publish_offer, duplicates_at_the_size_cap, malformed_message, transport,
    };
    use crate::sdp::{Offer, format_fingerprint, negotiate_play, negotiate_publish, write_answer};

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
        assert_eq!(feedback_entries, 128 * feedback.len());
        assert!(
            parsed
                .sections
                .iter()
                .flat_map(|s| &s.codecs)
                .all(|c| c.feedback.len() <= ACCEPTED_FEEDBACK.len())
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
        // Firefox lists five feedback kinds per codec, each one the relay takes part in.
        assert_eq!(
            tracks[1].codec.feedback,
            ["nack", "nack pli", "ccm fir", "transport-cc", "goog-remb"]
        );
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
