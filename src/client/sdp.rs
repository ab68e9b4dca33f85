//! The client's side of offer/answer: the offer it makes (as a browser does) and what it reads
//! from the server's answer.

use std::net::SocketAddr;

use webrtc_dtls::crypto::Certificate;

use super::{ClientError, Role, Transport};
use crate::sdp::format_fingerprint;

/// The video codecs the client offers: (payload type, rtpmap, fmtp). Each one's RTX goes under
/// the next payload type (97, 103, 99, 46), free here, as Chromium numbers them.
const VIDEO_CODECS: &[(u8, &str, &str)] = &[
    (96, "VP8/90000", ""),
    (
        102,
        "H264/90000",
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    ),
    (98, "VP9/90000", "profile-id=0"),
    (45, "AV1/90000", ""),
];

/// The SHA-256 fingerprint of a certificate, as `a=fingerprint` writes it.
pub fn fingerprint_of(certificate: &Certificate) -> String {
    let der = certificate
        .certificate
        .first()
        .map(|c| c.as_ref())
        .unwrap_or_default();
    format_fingerprint(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The SSRC of a publisher's video retransmissions: derived from the video SSRC, so that
/// [`write_offer`] can announce it without another argument. Never equal to it: with
/// `x = (hi, lo)`, `rotl16(x) ^ C = x` needs `hi ^ lo` to equal both halves of `C`, which
/// differ.
pub fn rtx_ssrc_of(video_ssrc: u32) -> u32 {
    video_ssrc.rotate_left(16) ^ 0x5254_5831
}

/// An offer as a browser makes it: Opus; VP8, H264, VP9 and AV1 (or only `video_codec`), each
/// with RTX and generic NACK; BUNDLE, rtcp-mux.
pub fn write_offer(
    role: Role,
    ufrag: &str,
    pwd: &str,
    fingerprint: &str,
    audio_ssrc: u32,
    video_ssrc: u32,
    video_codec: Option<&str>,
) -> String {
    write_offer_with(
        role,
        ufrag,
        pwd,
        fingerprint,
        audio_ssrc,
        video_ssrc,
        video_codec,
        true,
    )
}

/// [`write_offer`], with loss repair (NACK and RTX) offered only when `repair` says so.
#[allow(clippy::too_many_arguments)]
pub fn write_offer_with(
    role: Role,
    ufrag: &str,
    pwd: &str,
    fingerprint: &str,
    audio_ssrc: u32,
    video_ssrc: u32,
    video_codec: Option<&str>,
    repair: bool,
) -> String {
    let direction = match role {
        Role::Publish => "sendonly",
        Role::Play => "recvonly",
    };
    let mut sdp = format!(
        "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=msid-semantic: WMS *\r\n",
        rand::random::<u32>()
    );
    let common = |mid: &str| {
        format!(
            "c=IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:sha-256 {fingerprint}\r\n\
             a=setup:actpass\r\na=mid:{mid}\r\na={direction}\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
        )
    };
    sdp.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
    sdp.push_str(&common("0"));
    sdp.push_str("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n");
    sdp.push_str("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n");
    if role == Role::Publish {
        sdp.push_str(&format!(
            "a=msid:loadgen audio\r\na=ssrc:{audio_ssrc} cname:loadgen\r\n"
        ));
    }
    let codecs: Vec<&(u8, &str, &str)> = VIDEO_CODECS
        .iter()
        .filter(|(_, rtpmap, _)| {
            video_codec.is_none_or(|c| {
                rtpmap
                    .split('/')
                    .next()
                    .is_some_and(|n| n.eq_ignore_ascii_case(c))
            })
        })
        .collect();
    // Each codec followed by its RTX, as Chromium lists them.
    let formats: Vec<String> = codecs
        .iter()
        .flat_map(|(pt, _, _)| {
            let rtx = repair.then(|| (pt + 1).to_string());
            std::iter::once(pt.to_string()).chain(rtx)
        })
        .collect();
    sdp.push_str(&format!(
        "m=video 9 UDP/TLS/RTP/SAVPF {}\r\n",
        formats.join(" ")
    ));
    sdp.push_str(&common("1"));
    for (pt, rtpmap, fmtp) in codecs {
        sdp.push_str(&format!("a=rtpmap:{pt} {rtpmap}\r\n"));
        if repair {
            sdp.push_str(&format!("a=rtcp-fb:{pt} nack\r\n"));
        }
        sdp.push_str(&format!(
            "a=rtcp-fb:{pt} nack pli\r\na=rtcp-fb:{pt} ccm fir\r\n"
        ));
        if !fmtp.is_empty() {
            sdp.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
        }
        if repair {
            let rtx = pt + 1;
            sdp.push_str(&format!(
                "a=rtpmap:{rtx} rtx/90000\r\na=fmtp:{rtx} apt={pt}\r\n"
            ));
        }
    }
    if role == Role::Publish {
        sdp.push_str("a=msid:loadgen video\r\n");
        if repair {
            let rtx_ssrc = rtx_ssrc_of(video_ssrc);
            sdp.push_str(&format!(
                "a=ssrc-group:FID {video_ssrc} {rtx_ssrc}\r\na=ssrc:{video_ssrc} cname:loadgen\r\n\
                 a=ssrc:{rtx_ssrc} cname:loadgen\r\n"
            ));
        } else {
            sdp.push_str(&format!("a=ssrc:{video_ssrc} cname:loadgen\r\n"));
        }
    }
    sdp
}

/// The parts of an answer the client needs.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    pub fingerprint: Vec<u8>,
    /// `a=ice-lite`: the server only answers checks. Without it the server is a full agent
    /// that checks the pair too before it takes the nomination.
    pub ice_lite: bool,
    /// `a=setup:active`: the server is the DTLS client and this endpoint the DTLS server.
    /// (`passive`, or none, leaves the client role here.)
    pub server_is_dtls_client: bool,
    /// (transport, address) of every host candidate.
    pub candidates: Vec<(Transport, SocketAddr)>,
    pub audio_payload_type: Option<u8>,
    pub video_payload_type: Option<u8>,
    pub video_codec: String,
    /// The answer lists `a=rtcp-fb:<video pt> nack` (generic NACK, not only `nack pli`).
    pub video_nack: bool,
    /// An `rtx/90000` payload type whose `apt=` is the video payload type.
    pub video_rtx_payload_type: Option<u8>,
    /// The video section's announced SSRC (the first of `a=ssrc-group:FID`, else the first
    /// `a=ssrc`) and its RTX SSRC (the second of the FID group).
    pub video_ssrc: Option<u32>,
    pub video_rtx_ssrc: Option<u32>,
    /// The header extensions `(id, uri)` the accepted sections answered (`a=extmap`).
    pub extensions: Vec<(u8, String)>,
    /// The video section receives simulcast (`a=simulcast:recv`).
    pub simulcast: bool,
}

/// Notes the first payload type of an accepted audio or video section.
fn accept_section(answer: &mut Answer, media: &str, payload_type: Option<u8>) {
    match media {
        "audio" => answer.audio_payload_type = payload_type,
        "video" => answer.video_payload_type = payload_type,
        _ => {}
    }
}

pub fn parse_answer(text: &str) -> Result<Answer, ClientError> {
    let mut answer = Answer::default();
    let mut media = "";
    let mut section_rejected = false;
    let mut section_payload_type: Option<u8> = None;
    // In the video section: payload types mapped to rtx, `apt=` pairs, and those with NACK.
    // Resolved against the video payload type at the end, since any order is valid.
    let mut rtx_types: Vec<u8> = Vec::new();
    let mut apts: Vec<(u8, u8)> = Vec::new();
    let mut nack_types: Vec<u8> = Vec::new();
    for line in text.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let fields: Vec<&str> = m.split_whitespace().collect();
            media = if fields.first() == Some(&"audio") {
                "audio"
            } else if fields.first() == Some(&"video") {
                "video"
            } else {
                ""
            };
            section_rejected = fields.get(1) == Some(&"0");
            section_payload_type = fields.get(3).and_then(|p| p.parse::<u8>().ok());
            if !section_rejected {
                accept_section(&mut answer, media, section_payload_type);
            }
        } else if line == "a=bundle-only" {
            // Port 0 with bundle-only (RFC 8843): accepted, on the BUNDLE transport.
            if section_rejected {
                section_rejected = false;
                accept_section(&mut answer, media, section_payload_type);
            }
        } else if line == "a=ice-lite" {
            answer.ice_lite = true;
        } else if let Some(v) = line.strip_prefix("a=setup:") {
            answer.server_is_dtls_client = v.trim() == "active";
        } else if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            answer.ice_ufrag = v.to_string();
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            answer.ice_pwd = v.to_string();
        } else if let Some(v) = line.strip_prefix("a=fingerprint:") {
            let hex = v.split_once(' ').map(|(_, h)| h).unwrap_or_default();
            answer.fingerprint = hex
                .split(':')
                .filter_map(|b| u8::from_str_radix(b, 16).ok())
                .collect();
        } else if let Some(v) = line.strip_prefix("a=rtpmap:") {
            let in_video = media == "video" && !section_rejected;
            let (pt, name) = v.split_once(' ').unwrap_or((v, ""));
            let name = name.trim();
            if in_video && name.len() >= 4 && name[..4].eq_ignore_ascii_case("rtx/") {
                rtx_types.extend(pt.parse::<u8>().ok());
            } else if in_video && answer.video_codec.is_empty() {
                answer.video_codec = v.split_whitespace().nth(1).unwrap_or_default().to_string();
            }
        } else if let Some(v) = line.strip_prefix("a=fmtp:") {
            if media == "video" && !section_rejected {
                let (pt, params) = v.split_once(' ').unwrap_or((v, ""));
                let apt = params.split(';').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("apt")
                        .then(|| v.trim().parse::<u8>().ok())?
                });
                if let (Ok(pt), Some(apt)) = (pt.parse::<u8>(), apt) {
                    apts.push((pt, apt));
                }
            }
        } else if let Some(v) = line.strip_prefix("a=rtcp-fb:") {
            if media == "video"
                && !section_rejected
                && let Some((pt, feedback)) = v.split_once(' ')
                && feedback.trim() == "nack"
            {
                nack_types.extend(pt.parse::<u8>().ok());
            }
        } else if let Some(v) = line.strip_prefix("a=ssrc-group:FID ") {
            if media == "video" && !section_rejected {
                let mut ssrcs = v.split_whitespace().map(|s| s.parse::<u32>().ok());
                if let (Some(Some(primary)), Some(Some(rtx))) = (ssrcs.next(), ssrcs.next()) {
                    answer.video_ssrc = Some(primary);
                    answer.video_rtx_ssrc = Some(rtx);
                }
            }
        } else if let Some(v) = line.strip_prefix("a=ssrc:") {
            if media == "video" && !section_rejected && answer.video_ssrc.is_none() {
                answer.video_ssrc = v
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse::<u32>().ok());
            }
        } else if let Some(v) = line.strip_prefix("a=extmap:") {
            let mut fields = v.split_whitespace();
            let id = fields
                .next()
                .and_then(|i| i.split('/').next()?.parse::<u8>().ok());
            if let (false, Some(id), Some(uri)) = (section_rejected, id, fields.next())
                && !answer.extensions.iter().any(|(i, _)| *i == id)
            {
                answer.extensions.push((id, uri.to_string()));
            }
        } else if line.starts_with("a=simulcast:recv") {
            answer.simulcast |= media == "video" && !section_rejected;
        } else if let Some(v) = line.strip_prefix("a=candidate:") {
            let f: Vec<&str> = v.split_whitespace().collect();
            if f.len() >= 8 && f[6] == "typ" && f[7] == "host" {
                let transport = match f[2].to_ascii_lowercase().as_str() {
                    "udp" => Transport::Udp,
                    "tcp" if v.contains("tcptype passive") => Transport::Tcp,
                    _ => continue,
                };
                if let (Ok(ip), Ok(port)) = (f[4].parse(), f[5].parse()) {
                    let addr = SocketAddr::new(ip, port);
                    if !answer.candidates.contains(&(transport, addr)) {
                        answer.candidates.push((transport, addr));
                    }
                }
            }
        }
    }
    if let Some(video) = answer.video_payload_type {
        answer.video_nack = nack_types.contains(&video);
        answer.video_rtx_payload_type = apts
            .iter()
            .find(|(pt, apt)| *apt == video && rtx_types.contains(pt))
            .map(|(pt, _)| *pt);
    }
    if answer.ice_ufrag.is_empty() || answer.ice_pwd.is_empty() {
        return Err(ClientError::Answer("no ICE credentials".into()));
    }
    if answer.fingerprint.len() != 32 {
        return Err(ClientError::Answer("no SHA-256 fingerprint".into()));
    }
    Ok(answer)
}
