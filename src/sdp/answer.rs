//! Writing the answer: ICE-lite, `setup:passive`, BUNDLE and rtcp-mux, with one host candidate
//! per transport on the session's port.

use std::fmt::Write as _;
use std::net::IpAddr;

use ::sdp::description::common::{Address, Attribute, ConnectionInformation};
use ::sdp::description::media::{MediaDescription, MediaName, RangedPort};
use ::sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};

use super::negotiate::{AnnouncedSource, AnswerSection};
use super::offer::Offer;

/// What is the same in every section of one answer.
pub struct AnswerTransport<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    /// Our certificate's SHA-256 fingerprint, formatted.
    pub fingerprint: &'a str,
    /// The announced addresses: the first is the connection address; each gets its
    /// candidates, in order of preference.
    pub ips: &'a [IpAddr],
    pub port: u16,
    /// The passive TCP candidate's port: `port`, or the HTTP(S) listener's
    /// (`media.tcp_on_http`).
    pub tcp_port: u16,
    /// Which host candidates to offer (`media.protocol`).
    pub udp: bool,
    pub tcp: bool,
}

/// Candidate priorities (RFC 8445 5.1.2.1): type preference 126 (host) for both; the local
/// preference of a passive TCP candidate follows RFC 6544 4.2 (direction preference 4), which
/// puts it below UDP, so clients that can use UDP do.
const UDP_HOST_PRIORITY: u32 = (126 << 24) | (65535 << 8) | 255;
const TCP_PASSIVE_HOST_PRIORITY: u32 = (126 << 24) | (((1 << 13) * 4 + 8191) << 8) | 255;

/// The relay's host candidates (the values after `a=candidate:`) for each announced address:
/// UDP on `port`, passive ICE-TCP on `tcp_port` (the same port, or the HTTP listener's), or
/// both. The answer and an ICE restart's fragment carry the same.
pub fn host_candidates(
    ips: &[IpAddr],
    port: u16,
    tcp_port: u16,
    udp: bool,
    tcp: bool,
) -> Vec<String> {
    let mut candidates = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        // Each further address a step lower in local preference; foundations differ per
        // address and transport (RFC 8445 5.1.1.3).
        let step = (i as u32) << 8;
        if udp {
            let (foundation, priority) = (2 * i + 1, UDP_HOST_PRIORITY - step);
            candidates.push(format!(
                "{foundation} 1 udp {priority} {ip} {port} typ host generation 0"
            ));
        }
        if tcp {
            let (foundation, priority) = (2 * i + 2, TCP_PASSIVE_HOST_PRIORITY - step);
            candidates.push(format!(
                "{foundation} 1 tcp {priority} {ip} {tcp_port} typ host tcptype passive generation 0"
            ));
        }
    }
    candidates
}

/// Writes the SDP answer.
pub fn write_answer(
    offer: &Offer,
    sections: &[AnswerSection],
    transport: &AnswerTransport<'_>,
) -> String {
    let first = transport
        .ips
        .first()
        .copied()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let address_type = if first.is_ipv4() { "IP4" } else { "IP6" };
    let connection = ConnectionInformation {
        network_type: "IN".into(),
        address_type: address_type.into(),
        address: Some(Address {
            address: first.to_string(),
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
            unicast_address: first.to_string(),
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
    let candidates = host_candidates(
        transport.ips,
        transport.port,
        transport.tcp_port,
        transport.udp,
        transport.tcp,
    );
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
            rtx_payload_type,
            feedback,
            extensions,
            source,
            simulcast,
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
        if let Some(rtx) = rtx_payload_type {
            m = m.with_codec(
                *rtx,
                "rtx".into(),
                codec.clock_rate,
                0,
                format!("apt={}", codec.payload_type),
            );
        }
        // RFC 8853: the answer receives the encodings it lists, each declared `recv`.
        for rid in simulcast {
            m = m.with_value_attribute("rid".into(), format!("{rid} recv"));
        }
        if !simulcast.is_empty() {
            m = m.with_value_attribute("simulcast".into(), format!("recv {}", simulcast.join(";")));
        }
        if let Some(source) = source {
            let AnnouncedSource {
                ssrc,
                rtx_ssrc,
                stream_id,
                track_id,
            } = source;
            m = m.with_value_attribute("msid".into(), format!("{stream_id} {track_id}"));
            if let Some(rtx_ssrc) = rtx_ssrc {
                m = m.with_value_attribute("ssrc-group".into(), format!("FID {ssrc} {rtx_ssrc}"));
            }
            for announced in std::iter::once(ssrc).chain(rtx_ssrc.as_ref()) {
                m = m
                    .with_value_attribute("ssrc".into(), format!("{announced} cname:{stream_id}"))
                    .with_value_attribute(
                        "ssrc".into(),
                        format!("{announced} msid:{stream_id} {track_id}"),
                    );
            }
        }
        for candidate in &candidates {
            m = m.with_candidate(candidate.clone());
        }
        m = m.with_property_attribute("end-of-candidates".into());
        session.media_descriptions.push(m);
    }
    session.marshal()
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::sdp::fixtures::{CHROME_PUBLISH_OFFER, transport};
    use crate::sdp::{MediaKind, negotiate_publish};

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
    fn the_tcp_candidate_may_sit_on_another_port_than_udp() {
        let candidates = host_candidates(&["127.0.0.1".parse().unwrap()], 31000, 443, true, true);
        assert_eq!(
            candidates,
            [
                "1 1 udp 2130706431 127.0.0.1 31000 typ host generation 0",
                "2 1 tcp 2124414975 127.0.0.1 443 typ host tcptype passive generation 0",
            ]
        );
    }

    #[test]
    fn each_announced_address_gets_its_candidates_in_order_on_the_one_port() {
        let offer = Offer::parse(CHROME_PUBLISH_OFFER).unwrap();
        let (_, sections) = negotiate_publish(&offer).unwrap();
        let ips: [IpAddr; 2] = [
            "203.0.113.7".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ];
        let transport = AnswerTransport {
            ips: &ips,
            port: 8189,
            tcp_port: 8189,
            ..transport()
        };
        let answer = write_answer(&offer, &sections, &transport);
        let candidates: Vec<&str> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("a=candidate:"))
            .collect();
        // Four per section (two addresses, UDP and TCP), BUNDLE repeats them in each section.
        assert_eq!(
            &candidates[..4],
            [
                "1 1 udp 2130706431 203.0.113.7 8189 typ host generation 0",
                "2 1 tcp 2124414975 203.0.113.7 8189 typ host tcptype passive generation 0",
                "3 1 udp 2130706175 2001:db8::7 8189 typ host generation 0",
                "4 1 tcp 2124414719 2001:db8::7 8189 typ host tcptype passive generation 0",
            ]
        );
        assert!(answer.contains("c=IN IP4 203.0.113.7"), "{answer}");
        SessionDescription::unmarshal(&mut Cursor::new(answer.as_bytes())).unwrap();
    }
}
