//! Trickle ICE SDP fragments (RFC 8840 `application/trickle-ice-sdpfrag`), as WHIP and WHEP
//! clients send them in a PATCH on the session (RFC 9725 §4.3): read into the ICE
//! credentials and candidates they carry, and the relay's own fragment that answers an ICE
//! restart. Pure text in, values out; every refusal says what is wrong.

use std::fmt::Write as _;

/// The largest fragment taken: a browser's full trickle of a dozen candidates is ~2 KiB.
pub const MAX_FRAGMENT_BYTES: usize = 16 * 1024;
/// Candidates one fragment may carry.
pub const MAX_FRAGMENT_CANDIDATES: usize = 64;

/// What a fragment says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceFragment<'a> {
    /// The client's `a=ice-ufrag` and `a=ice-pwd`, when the fragment carries them (RFC 8840
    /// requires them; the caller tells a restart from a trickle by comparing them).
    pub credentials: Option<(&'a str, &'a str)>,
    /// Each `a=candidate:` value (after the colon), checked for the fields RFC 8839 §5.1 needs.
    pub candidates: Vec<&'a str>,
    /// `a=end-of-candidates` was there: the client has gathered all it will.
    pub end_of_candidates: bool,
}

/// Why a fragment was refused; the message is the 400's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("the fragment is empty: send a=ice-ufrag, a=ice-pwd and candidates (RFC 8840)")]
    Empty,
    #[error("the fragment is over {MAX_FRAGMENT_BYTES} bytes")]
    TooLarge,
    #[error("the fragment is not UTF-8 text")]
    NotText,
    #[error("line {line} is not an SDP line (`type=value`): `{text}`")]
    NotSdpLine { line: usize, text: String },
    #[error(
        "line {line}: `{kind}=` does not belong in a trickle-ice-sdpfrag (RFC 8840 §9.2 allows \
         a=, m= lines only)"
    )]
    NotAllowed { line: usize, kind: char },
    #[error("line {line}: {attribute} `{value}` is not valid ({why})")]
    BadCredential {
        line: usize,
        attribute: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("the fragment names two different {attribute} values (`{first}`, `{second}`)")]
    Conflicting {
        attribute: &'static str,
        first: String,
        second: String,
    },
    #[error("the fragment has a=ice-ufrag without a=ice-pwd")]
    UfragWithoutPwd,
    #[error("the fragment has a=ice-pwd without a=ice-ufrag")]
    PwdWithoutUfrag,
    #[error("line {line}: candidate `{value}` is malformed: {why}")]
    BadCandidate {
        line: usize,
        value: String,
        why: &'static str,
    },
    #[error("the fragment carries more than {MAX_FRAGMENT_CANDIDATES} candidates")]
    TooManyCandidates,
}

/// `ice-char` (RFC 8839 §5.4): ALPHA / DIGIT / "+" / "/".
fn is_ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn credential(
    line: usize,
    attribute: &'static str,
    value: &str,
    lengths: std::ops::RangeInclusive<usize>,
) -> Result<(), FragmentError> {
    let why = if !is_ice_chars(value) {
        Some("letters, digits, '+' and '/' only")
    } else if value.len() < *lengths.start() {
        Some(match attribute {
            "a=ice-ufrag" => "at least 4 characters",
            _ => "at least 22 characters",
        })
    } else if value.len() > *lengths.end() {
        Some("at most 256 characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(FragmentError::BadCredential {
            line,
            attribute,
            value: value.chars().take(64).collect(),
            why,
        }),
        None => Ok(()),
    }
}

/// Checks a candidate's fields (RFC 8839 §5.1): foundation, component, transport, priority,
/// address, port, `typ` and a type.
fn check_candidate(line: usize, value: &str) -> Result<(), FragmentError> {
    let bad = |why| FragmentError::BadCandidate {
        line,
        value: value.chars().take(120).collect(),
        why,
    };
    let mut fields = value.split_ascii_whitespace();
    let mut next = |why| fields.next().ok_or_else(|| bad(why));
    let foundation = next("no foundation")?;
    if foundation.len() > 32 || !is_ice_chars(foundation) {
        return Err(bad("the foundation is 1-32 letters, digits, '+' or '/'"));
    }
    let component = next("no component id")?;
    if !component
        .parse::<u16>()
        .is_ok_and(|c| (1..=256).contains(&c))
    {
        return Err(bad("the component id is a number from 1 to 256"));
    }
    let transport = next("no transport")?;
    if !transport
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(bad("the transport is a token (UDP, TCP)"));
    }
    if next("no priority")?.parse::<u32>().is_err() {
        return Err(bad("the priority is a number below 2^32"));
    }
    let address = next("no address")?;
    if address.len() > 255 {
        return Err(bad("the address is over 255 characters"));
    }
    if next("no port")?.parse::<u16>().is_err() {
        return Err(bad("the port is a number below 65536"));
    }
    if next("no `typ`")? != "typ" {
        return Err(bad("`typ` must follow the port"));
    }
    next("no candidate type after `typ`")?;
    Ok(())
}

/// Reads a fragment.
pub fn parse_fragment(body: &[u8]) -> Result<IceFragment<'_>, FragmentError> {
    if body.len() > MAX_FRAGMENT_BYTES {
        return Err(FragmentError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| FragmentError::NotText)?;
    let mut fragment = IceFragment::default();
    let (mut ufrag, mut pwd): (Option<&str>, Option<&str>) = (None, None);
    let mut any = false;
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        any = true;
        let mut chars = raw.chars();
        let (Some(kind), Some('=')) = (chars.next(), chars.next()) else {
            return Err(FragmentError::NotSdpLine {
                line,
                text: raw.chars().take(80).collect(),
            });
        };
        match kind {
            // A media line only opens a section (`a=mid` names it): the relay bundles all.
            'm' => continue,
            'a' => {}
            other => return Err(FragmentError::NotAllowed { line, kind: other }),
        }
        // `a=` is two ASCII bytes.
        let value = &raw[2..];
        let (name, attribute_value) = match value.split_once(':') {
            Some((name, v)) => (name, Some(v)),
            None => (value, None),
        };
        match (name, attribute_value) {
            ("ice-ufrag", Some(v)) => {
                credential(line, "a=ice-ufrag", v, 4..=256)?;
                same_or_conflict("a=ice-ufrag", &mut ufrag, v)?;
            }
            ("ice-pwd", Some(v)) => {
                credential(line, "a=ice-pwd", v, 22..=256)?;
                same_or_conflict("a=ice-pwd", &mut pwd, v)?;
            }
            ("candidate", Some(v)) => {
                check_candidate(line, v)?;
                if fragment.candidates.len() == MAX_FRAGMENT_CANDIDATES {
                    return Err(FragmentError::TooManyCandidates);
                }
                fragment.candidates.push(v);
            }
            ("end-of-candidates", _) => fragment.end_of_candidates = true,
            // a=ice-options, a=group, a=mid and extension attributes: nothing to act on.
            _ => {}
        }
    }
    if !any {
        return Err(FragmentError::Empty);
    }
    fragment.credentials = match (ufrag, pwd) {
        (Some(u), Some(p)) => Some((u, p)),
        (Some(_), None) => return Err(FragmentError::UfragWithoutPwd),
        (None, Some(_)) => return Err(FragmentError::PwdWithoutUfrag),
        (None, None) => None,
    };
    Ok(fragment)
}

/// A credential may repeat per media section, but always the same.
fn same_or_conflict<'a>(
    attribute: &'static str,
    seen: &mut Option<&'a str>,
    value: &'a str,
) -> Result<(), FragmentError> {
    match *seen {
        Some(first) if first != value => Err(FragmentError::Conflicting {
            attribute,
            first: first.to_string(),
            second: value.chars().take(64).collect(),
        }),
        _ => {
            *seen = Some(value);
            Ok(())
        }
    }
}

/// The relay's answer to an ICE restart: its new credentials and its candidates (the
/// session's port does not change), in the bundle's first media section `media`/`mid`.
pub fn write_restart_fragment(
    ufrag: &str,
    pwd: &str,
    (media, mid): (&str, &str),
    candidates: &[String],
) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        "a=ice-lite\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm={media} 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{mid}\r\n"
    );
    for candidate in candidates {
        let _ = write!(out, "a=candidate:{candidate}\r\n");
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Chromium trickles (its `onicecandidate` lines under the first mid).
    const CHROMIUM_TRICKLE: &str = "a=ice-ufrag:EsAw\r\n\
        a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
        a=mid:0\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n\
        a=candidate:3471623853 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active generation 0\r\n\
        a=candidate:2 1 udp 2113937151 3a1b7c4e-1d9f.local 50000 typ host\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn reads_credentials_candidates_and_the_end() {
        let f = parse_fragment(CHROMIUM_TRICKLE.as_bytes()).unwrap();
        assert_eq!(f.credentials, Some(("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1")));
        assert_eq!(f.candidates.len(), 3);
        assert!(f.candidates[1].contains("tcptype active"));
        assert!(f.end_of_candidates);
    }

    #[test]
    fn takes_plain_newlines_session_level_credentials_and_unknown_attributes() {
        let text = "a=ice-options:trickle\na=group:BUNDLE 0 1\na=ice-ufrag:abcd\n\
                    a=ice-pwd:0123456789012345678901\na=x-custom\n";
        let f = parse_fragment(text.as_bytes()).unwrap();
        assert_eq!(f.credentials, Some(("abcd", "0123456789012345678901")));
        assert!(f.candidates.is_empty() && !f.end_of_candidates);
        // A fragment of candidates alone (credentials are RFC 8840's, but clients omit them).
        let f = parse_fragment(b"a=candidate:1 1 udp 1 10.0.0.1 9 typ host\r\n").unwrap();
        assert_eq!((f.credentials, f.candidates.len()), (None, 1));
    }

    #[test]
    fn refuses_what_is_not_a_fragment_and_says_why() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"\r\n\r\n", "empty"),
            (b"hello", "not an SDP line"),
            (b"v=0\r\n", "`v=` does not belong"),
            ("€=x\r\n".as_bytes(), "`€=` does not belong"),
            (b"\xff\xfe", "not UTF-8"),
            (b"a=ice-ufrag:abcd\r\n", "without a=ice-pwd"),
            (
                b"a=ice-pwd:0123456789012345678901\r\n",
                "without a=ice-ufrag",
            ),
            (
                b"a=ice-ufrag:ab\r\na=ice-pwd:0123456789012345678901",
                "at least 4",
            ),
            (
                b"a=ice-ufrag:ab cd\r\na=ice-pwd:0123456789012345678901",
                "letters, digits",
            ),
            (b"a=ice-ufrag:abcd\r\na=ice-pwd:short", "at least 22"),
            (
                b"a=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\na=ice-pwd:0123456789012345678901",
                "two different a=ice-ufrag",
            ),
            (b"a=candidate:1 1 udp\r\n", "no priority"),
            (
                b"a=candidate:1 1 udp 1 10.0.0.1 99999 typ host",
                "port is a number",
            ),
            (
                b"a=candidate:1 1 udp 1 10.0.0.1 9 host",
                "`typ` must follow",
            ),
            (b"a=candidate:1 0 udp 1 10.0.0.1 9 typ host", "component id"),
            (b"a=candidate:1 1 udp -5 10.0.0.1 9 typ host", "priority"),
            (b"a=candidate:1 1 udp 1 10.0.0.1 9 typ", "no candidate type"),
        ];
        for (body, expected) in cases {
            let err = parse_fragment(body).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{:?}: `{err}` should say `{expected}`",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn bounds_size_and_candidates() {
        let big = vec![b'a'; MAX_FRAGMENT_BYTES + 1];
        assert_eq!(parse_fragment(&big), Err(FragmentError::TooLarge));
        let many =
            "a=candidate:1 1 udp 1 10.0.0.1 9 typ host\n".repeat(MAX_FRAGMENT_CANDIDATES + 1);
        assert_eq!(
            parse_fragment(many.as_bytes()),
            Err(FragmentError::TooManyCandidates)
        );
    }

    /// What `fuzz/fuzz_targets/sdpfrag.rs` checks, over random edits of a real fragment (for
    /// machines without cargo-fuzz): no panic, and a fragment that parses keeps its bounds.
    #[test]
    fn random_edits_of_a_fragment_parse_or_fail_cleanly() {
        let seed = CHROMIUM_TRICKLE.as_bytes();
        let alphabet = "a=:\r\n +/0123456789abcdefmtypucandidtehosr€".as_bytes();
        for _ in 0..20_000 {
            let mut bytes = seed.to_vec();
            for _ in 0..rand::random_range(1..8) {
                let at = rand::random_range(0..bytes.len());
                let byte = alphabet[rand::random_range(0..alphabet.len())];
                match rand::random_range(0..3) {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            if let Ok(f) = parse_fragment(&bytes) {
                assert!(f.candidates.len() <= MAX_FRAGMENT_CANDIDATES);
                if let Some((ufrag, pwd)) = f.credentials {
                    assert!(is_ice_chars(ufrag) && (4..=256).contains(&ufrag.len()));
                    assert!(is_ice_chars(pwd) && (22..=256).contains(&pwd.len()));
                }
            }
        }
    }

    #[test]
    fn the_restart_answer_reads_back_as_a_fragment() {
        let candidates = vec![
            "1 1 udp 2130706431 127.0.0.1 31000 typ host generation 0".to_string(),
            "2 1 tcp 2124414975 127.0.0.1 31000 typ host tcptype passive generation 0".to_string(),
        ];
        let text = write_restart_fragment(
            "newU",
            "newpassword0123456789ab",
            ("audio", "0"),
            &candidates,
        );
        assert!(text.starts_with("a=ice-lite\r\n"));
        let f = parse_fragment(text.as_bytes()).unwrap();
        assert_eq!(f.credentials, Some(("newU", "newpassword0123456789ab")));
        assert_eq!(f.candidates, vec![&candidates[0][..], &candidates[1][..]]);
        assert!(f.end_of_candidates);
    }
}
