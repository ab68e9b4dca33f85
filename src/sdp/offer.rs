//! Reading an offer: within the caps, the `sdp` crate parses the text, and one pass over its
//! lines builds the model the relay acts on.

use std::io::Cursor;

use ::sdp::description::media::MediaDescription;
use ::sdp::description::session::SessionDescription;

use super::codec::{Codec, FeedbackSet};
use super::limits::{
    ICE_PWD_LENGTH, ICE_UFRAG_LENGTH, MAX_OFFER_BYTES, briefly, carries_rtp, check_ice_credential,
    check_limits,
};
use super::{NegotiationError, malformed};

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
    /// The offerer turned the section down (port 0) rather than offering it for the bundle
    /// transport alone (port 0 with `a=bundle-only`, its mid in the BUNDLE group: RFC 8843
    /// 6, as Firefox offers every section after the first with `max-bundle`).
    pub declined: bool,
    pub direction: Direction,
    pub codecs: Vec<Codec>,
    pub extensions: Vec<(u8, String)>,
    pub rtcp_mux: bool,
    /// The simulcast encodings the section sends (`a=simulcast:send`, RFC 8853), by RID in
    /// the offer's order, each declared by an `a=rid:<id> send` (RFC 8851); empty without
    /// simulcast. At most [`MAX_SIMULCAST_LAYERS`].
    pub rids: Vec<String>,
}

/// Simulcast encodings a publisher may send in one section; further ones are left out of
/// the answer (RFC 8853 lets the answerer accept a subset), so the publisher does not send
/// them.
pub const MAX_SIMULCAST_LAYERS: usize = crate::media::MAX_LAYERS;
/// A RID travels in a one-byte header extension element: at most 16 bytes (RFC 8852).
const MAX_RID_LENGTH: usize = 16;

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

impl Offer {
    /// Parses an offer within the limits (limits.rs). The limits are checked on the text first, in
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
        let bundle: Vec<String> = bundle
            .map(|mids| mids.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let sections = session
            .media_descriptions
            .iter()
            .enumerate()
            .map(|(index, m)| parse_section(index, m, &bundle, &mut transport))
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
            bundle,
        })
    }
}

/// One media section, within the limits, read in one pass over its attributes.
fn parse_section<'s>(
    index: usize,
    m: &'s MediaDescription,
    bundle: &[String],
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
    let (mut mid, mut setup, mut simulcast) = (None, None, None);
    let mut declared_rids: Vec<&str> = Vec::new();
    let (mut sendonly, mut recvonly, mut inactive, mut rtcp_mux) = (false, false, false, false);
    let mut bundle_only = false;
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
            "rid" => declared_rids.extend(value.and_then(sending_rid)),
            "simulcast" => simulcast = simulcast.or(value),
            "bundle-only" => bundle_only = true,
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
    let rids = match simulcast {
        Some(value) => simulcast_send_rids(value, &declared_rids)?,
        None => Vec::new(),
    };
    let mid = mid.map_or_else(|| index.to_string(), str::to_string);
    // A bundle-only section outside the BUNDLE group has no transport at all: turned down.
    let bundled_only = bundle_only && bundle.contains(&mid);
    Ok(OfferedSection {
        media: m.media_name.media.clone(),
        protocol: m.media_name.protos.join("/"),
        first_format: m.media_name.formats.first().cloned().unwrap_or_default(),
        declined: m.media_name.port.value == 0 && !bundled_only,
        mid,
        direction,
        codecs,
        extensions,
        rtcp_mux,
        rids,
    })
}

/// `a=rid:<id> send [<restrictions>]` as the id; `recv` RIDs are not the publisher's.
fn sending_rid(value: &str) -> Option<&str> {
    let mut parts = value.split_whitespace();
    let id = parts.next()?;
    (parts.next() == Some("send")).then_some(id)
}

/// The RIDs of `a=simulcast:send <list>` (RFC 8853 §5.1): `;` separates encodings, `,`
/// alternatives of one (the first is taken), `~` marks one paused (left out). Each must be
/// declared by an `a=rid:<id> send`. The first [`MAX_SIMULCAST_LAYERS`] count.
fn simulcast_send_rids(value: &str, declared: &[&str]) -> Result<Vec<String>, NegotiationError> {
    let mut words = value.split_whitespace();
    let mut send = None;
    while let Some(direction) = words.next() {
        let list = words.next().unwrap_or_default();
        if direction == "send" {
            send = Some(list);
        }
    }
    let Some(list) = send else {
        return Ok(Vec::new()); // `recv` only: nothing the publisher sends
    };
    let mut rids: Vec<String> = Vec::new();
    for encoding in list.split(';') {
        let Some(rid) = encoding.split(',').next().filter(|r| !r.starts_with('~')) else {
            continue;
        };
        let valid = !rid.is_empty()
            && rid.len() <= MAX_RID_LENGTH
            && rid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(malformed(format!(
                "a=simulcast names the RID {:?}: a RID is 1 to {MAX_RID_LENGTH} letters, digits, '-' or '_'",
                briefly(rid.to_string())
            )));
        }
        if !declared.contains(&rid) {
            return Err(malformed(format!(
                "a=simulcast names the RID {rid}, which no a=rid:{rid} send declares"
            )));
        }
        if rids.len() < MAX_SIMULCAST_LAYERS && !rids.iter().any(|r| r == rid) {
            rids.push(rid.to_string());
        }
    }
    Ok(rids)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::fixtures::CHROME_PUBLISH_OFFER;
    use crate::sdp::negotiate_publish;

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
