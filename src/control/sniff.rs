//! What a new connection on the HTTP(S) listener speaks, from its first bytes
//! (`media.tcp_on_http`): an ICE-TCP connection (RFC 4571 framing, its first frame a STUN
//! message), a TLS ClientHello, or an HTTP/1.1 request line. Anything else is closed.
//!
//! The test is strict, so that a request can never be taken for media (srs#4123 is what a
//! loose one costs): an ICE-TCP stream's bytes 0..2 are the frame's length, 2..4 a STUN
//! message type (its two top bits zero), 4..6 the STUN body's length (a multiple of 4, and
//! exactly the frame's length less the 20-byte header), and 6..10 the magic cookie
//! 0x2112A442. No HTTP request line can hold byte 0xA4, nor a byte under 0x40 at offset 2
//! (offset 2 of a method is a letter), so no request matches, and no frame starts with a
//! method.

/// Bytes that settle what any connection is: the ICE-TCP test reads 10; the longest method
/// with its space ("OPTIONS ", "CONNECT ") is 8.
pub const SNIFF_BYTES: usize = 10;

/// The most a first ICE-TCP frame may hold: a binding request is a few hundred bytes at most
/// (USERNAME up to 513, the rest small); anything longer is not a check.
pub const MAX_FIRST_FRAME: usize = 1024;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER: usize = 20;
const PREFIX: usize = 2;

/// The request methods the server answers (and those it refuses with a clear status).
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"PATCH ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

/// What the first bytes of a connection say.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sniffed {
    /// Too few bytes yet to tell.
    NeedMore,
    /// An HTTP/1.1 request line begins.
    Http,
    /// A TLS handshake record (a ClientHello).
    Tls,
    /// ICE-TCP: an RFC 4571 frame of this many bytes (prefix included) holding a STUN
    /// message; the caller reads it whole and checks it is a binding request naming a session.
    IceTcp { frame_len: usize },
    /// None of these, or a STUN frame longer than [`MAX_FIRST_FRAME`].
    Unknown,
}

/// Classifies `first`, the bytes a connection sent so far.
pub fn sniff(first: &[u8]) -> Sniffed {
    if first.is_empty() {
        return Sniffed::NeedMore;
    }
    if first[0] == 0x16 {
        return match first.get(1) {
            None => Sniffed::NeedMore,
            Some(0x03) => Sniffed::Tls,
            Some(_) => Sniffed::Unknown,
        };
    }
    let mut could_be_http = false;
    for method in METHODS {
        let n = first.len().min(method.len());
        if first[..n] == method[..n] {
            if n == method.len() {
                return Sniffed::Http;
            }
            could_be_http = true;
        }
    }
    if could_be_http {
        return Sniffed::NeedMore;
    }
    ice_tcp(first)
}

/// The ICE-TCP test on bytes that are neither TLS nor a method.
fn ice_tcp(first: &[u8]) -> Sniffed {
    // Settle early what can be settled early: a STUN type's top bits, then the rest.
    if first.len() > PREFIX && first[PREFIX] & 0xC0 != 0 {
        return Sniffed::Unknown;
    }
    if first.len() < SNIFF_BYTES {
        return Sniffed::NeedMore;
    }
    let frame = u16::from_be_bytes([first[0], first[1]]) as usize;
    let body = u16::from_be_bytes([first[4], first[5]]) as usize;
    let whole = PREFIX + frame;
    if first[6..10] == MAGIC_COOKIE
        && body.is_multiple_of(4)
        && frame == STUN_HEADER + body
        && whole <= MAX_FIRST_FRAME
    {
        Sniffed::IceTcp { frame_len: whole }
    } else {
        Sniffed::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::stun::{BINDING_REQUEST, StunWriter, short_term_key};

    fn framed_check(username: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let mut writer = StunWriter::new(&mut buf, BINDING_REQUEST, &[7; 12]).unwrap();
        writer.username(username).unwrap();
        writer.message_integrity(&short_term_key("pw")).unwrap();
        let len = writer.fingerprint().unwrap();
        let mut framed = (len as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&buf[..len]);
        framed
    }

    #[test]
    fn an_ice_check_in_a_frame_is_ice_tcp_and_says_its_length() {
        let framed = framed_check(b"abcd:efgh");
        assert_eq!(
            sniff(&framed),
            Sniffed::IceTcp {
                frame_len: framed.len()
            }
        );
        // Decided from the first ten bytes, whatever follows.
        assert_eq!(
            sniff(&framed[..10]),
            Sniffed::IceTcp {
                frame_len: framed.len()
            }
        );
        for n in 0..10 {
            assert_eq!(sniff(&framed[..n]), Sniffed::NeedMore, "{n} bytes");
        }
    }

    #[test]
    fn every_request_line_is_http_and_never_a_frame() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /whip/cam HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"DELETE /whip/cam/1 HTTP/1.1\r\n",
            b"PATCH /whep/x/2 HTTP/1.1\r\n",
        ] {
            assert_eq!(sniff(line), Sniffed::Http, "{line:?}");
            let space = line.iter().position(|&b| b == b' ').unwrap();
            for n in 0..=space {
                assert_eq!(sniff(&line[..n]), Sniffed::NeedMore, "{line:?} {n}");
            }
        }
    }

    #[test]
    fn a_request_that_starts_like_a_frame_is_not_one() {
        // A "length" and printable bytes after it: no cookie, so never ICE-TCP.
        assert_eq!(sniff(b"\x00\x20GET / HTTP/1.1\r\n"), Sniffed::Unknown);
        // The cookie in place but the STUN lengths do not agree with the frame's.
        let mut framed = framed_check(b"abcd:efgh");
        framed[1] = framed[1].wrapping_add(4);
        assert_eq!(sniff(&framed), Sniffed::Unknown);
        let mut framed = framed_check(b"abcd:efgh");
        framed[2] |= 0x40;
        assert_eq!(sniff(&framed[..3]), Sniffed::Unknown, "settled at byte 3");
    }

    #[test]
    fn tls_garbage_and_oversized_frames() {
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniffed::Tls);
        assert_eq!(sniff(&[0x16]), Sniffed::NeedMore);
        assert_eq!(sniff(&[0x16, 0x99]), Sniffed::Unknown);
        assert_eq!(sniff(b"\xffgarbage!!"), Sniffed::Unknown);
        assert_eq!(sniff(b"hello there"), Sniffed::Unknown);
        assert_eq!(sniff(b"GETX / HTTP/1.1"), Sniffed::Unknown);
        assert_eq!(sniff(b"get / HTTP/1.1"), Sniffed::Unknown);
        // A STUN header claiming a body past the bound.
        let body = (MAX_FIRST_FRAME as u16).to_be_bytes();
        let len = (MAX_FIRST_FRAME as u16 + 20).to_be_bytes();
        let mut big = vec![len[0], len[1], 0x00, 0x01, body[0], body[1]];
        big.extend_from_slice(&MAGIC_COOKIE);
        assert_eq!(sniff(&big), Sniffed::Unknown);
    }
}
