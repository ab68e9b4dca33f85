//! RTP fixed header (RFC 3550 §5.1) and header extensions (RFC 8285), parsed in place, and the
//! per-player rewrite that copies a packet into an egress buffer with a new SSRC, payload type,
//! sequence number, timestamp and header-extension ids, and the relay's own transport-wide
//! sequence number where the player negotiated it.

/// Why an RTP packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("shorter than its header")]
    TooShort,
    #[error("version is not 2")]
    BadVersion,
    #[error("header extension runs past the end")]
    BadExtension,
    #[error("output buffer too small")]
    BufferTooSmall,
}

pub const FIXED_HEADER_LEN: usize = 12;
const ONE_BYTE_PROFILE: u16 = 0xBEDE;
const TWO_BYTE_PROFILE_MASK: u16 = 0xFFF0;
const TWO_BYTE_PROFILE: u16 = 0x1000;

/// The parsed fixed header; offsets point into the packet it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// `(profile, start, end)` of the extension elements, when the X bit is set.
    pub extension: Option<(u16, usize, usize)>,
    /// Where the payload starts: fixed header, CSRCs and extension.
    pub header_len: usize,
}

impl RtpHeader {
    pub fn parse(packet: &[u8]) -> Result<Self, RtpError> {
        if packet.len() < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort);
        }
        if packet[0] >> 6 != 2 {
            return Err(RtpError::BadVersion);
        }
        let has_extension = packet[0] & 0x10 != 0;
        let csrc_count = (packet[0] & 0x0f) as usize;
        let mut header_len = FIXED_HEADER_LEN + 4 * csrc_count;
        if packet.len() < header_len {
            return Err(RtpError::TooShort);
        }
        let extension = if has_extension {
            if packet.len() < header_len + 4 {
                return Err(RtpError::BadExtension);
            }
            let profile = u16::from_be_bytes([packet[header_len], packet[header_len + 1]]);
            let words = u16::from_be_bytes([packet[header_len + 2], packet[header_len + 3]]);
            let start = header_len + 4;
            let end = start + 4 * words as usize;
            if end > packet.len() {
                return Err(RtpError::BadExtension);
            }
            header_len = end;
            Some((profile, start, end))
        } else {
            None
        };
        Ok(RtpHeader {
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7f,
            sequence: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            extension,
            header_len,
        })
    }
}

/// Maps a publisher's header-extension ids to a player's; 0 means "strip this element".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionIdMap([u8; 256]);

impl Default for ExtensionIdMap {
    fn default() -> Self {
        ExtensionIdMap([0; 256])
    }
}

impl ExtensionIdMap {
    pub fn insert(&mut self, from: u8, to: u8) {
        self.0[from as usize] = to;
    }

    pub fn get(&self, from: u8) -> u8 {
        self.0[from as usize]
    }
}

/// What differs per player.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite<'m> {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub extension_ids: &'m ExtensionIdMap,
    /// `(id, number)`: the transport-wide sequence number element to add (the publisher's is
    /// per hop and never forwarded; the relay numbers its own packets to the player).
    pub transport_sequence: Option<(u8, u16)>,
}

/// Bytes an added transport-wide sequence number may lengthen a header by: an extension
/// block's 4-byte header and one padded element.
pub const ADDED_EXTENSION_LEN: usize = 8;

/// Copies `packet` into `out` with the player's SSRC, payload type, sequence number, timestamp
/// and extension ids. Elements the player did not negotiate are dropped, a transport-wide
/// sequence number is added when asked (the block grows by at most [`ADDED_EXTENSION_LEN`]),
/// CSRCs and payload (padding included) are copied unchanged. Returns the length written.
pub fn rewrite_into(
    packet: &[u8],
    header: &RtpHeader,
    rewrite: &Rewrite<'_>,
    out: &mut [u8],
) -> Result<usize, RtpError> {
    if out.len()
        < packet.len() + ADDED_EXTENSION_LEN * rewrite.transport_sequence.is_some() as usize
    {
        return Err(RtpError::BufferTooSmall);
    }
    let len = rewrite_header_into(packet, header, rewrite, out)?;
    let payload = &packet[header.header_len..];
    out[len..len + payload.len()].copy_from_slice(payload);
    Ok(len + payload.len())
}

/// [`rewrite_into`] for the header alone: returns its rewritten length, where the payload
/// (`packet[header.header_len..]`, unchanged) would go. The fanout encrypts the payload
/// straight from the publisher's packet into place after it.
pub fn rewrite_header_into(
    packet: &[u8],
    header: &RtpHeader,
    rewrite: &Rewrite<'_>,
    out: &mut [u8],
) -> Result<usize, RtpError> {
    // The rewritten header is never longer than the original, but for an added element.
    let added = ADDED_EXTENSION_LEN * rewrite.transport_sequence.is_some() as usize;
    if out.len() < header.header_len + added {
        return Err(RtpError::BufferTooSmall);
    }
    let csrc_end = FIXED_HEADER_LEN + 4 * (packet[0] & 0x0f) as usize;
    out[..csrc_end].copy_from_slice(&packet[..csrc_end]);
    out[0] &= !0x10; // X is set again below if any element survives
    out[1] = (packet[1] & 0x80) | (rewrite.payload_type & 0x7f);
    out[2..4].copy_from_slice(&rewrite.sequence.to_be_bytes());
    out[4..8].copy_from_slice(&rewrite.timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&rewrite.ssrc.to_be_bytes());
    let mut len = csrc_end;
    let (profile, mut written) = match header.extension {
        Some((profile, start, end)) => (
            profile,
            rewrite_extension(
                profile,
                &packet[start..end],
                rewrite.extension_ids,
                &mut out[csrc_end + 4..],
            ),
        ),
        None => (ONE_BYTE_PROFILE, 0),
    };
    if let Some((id, number)) = rewrite.transport_sequence {
        written += append_element(
            profile,
            id,
            &number.to_be_bytes(),
            &mut out[csrc_end + 4 + written..],
        );
    }
    if written > 0 {
        let padded = written.div_ceil(4) * 4;
        out[csrc_end + 4 + written..csrc_end + 4 + padded].fill(0);
        out[0] |= 0x10;
        out[csrc_end..csrc_end + 2].copy_from_slice(&profile.to_be_bytes());
        out[csrc_end + 2..csrc_end + 4].copy_from_slice(&((padded / 4) as u16).to_be_bytes());
        len = csrc_end + 4 + padded;
    }
    Ok(len)
}

/// Writes a padding-only packet (RFC 3550 §5.1 P bit; what congestion controllers probe a
/// path with) carrying the transport-wide number `(id, number)` in a one-byte element:
/// `padding` bytes (1 to 255) after the header, the last one their count. Returns its
/// length; `None` when `out` is too small or the id needs the two-byte form.
pub fn write_padding(
    out: &mut [u8],
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    (id, number): (u8, u16),
    padding: usize,
) -> Option<usize> {
    let padding = padding.clamp(1, 255);
    let len = FIXED_HEADER_LEN + ADDED_EXTENSION_LEN + padding;
    if out.len() < len || !(1..=14).contains(&id) {
        return None;
    }
    out[0] = 0x80 | 0x20 | 0x10; // V=2, P, X
    out[1] = payload_type & 0x7f;
    out[2..4].copy_from_slice(&sequence.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    out[12..16].copy_from_slice(&[0xbe, 0xde, 0, 1]);
    let number = number.to_be_bytes();
    out[16..20].copy_from_slice(&[(id << 4) | 1, number[0], number[1], 0]);
    out[20..len].fill(0);
    out[len - 1] = padding as u8;
    Some(len)
}

/// Appends one element in the block's form (one-byte ids 1 to 14, or two-byte); returns its
/// length, 0 when the id cannot be written in that form (the element is left out).
fn append_element(profile: u16, id: u8, data: &[u8], out: &mut [u8]) -> usize {
    if profile == ONE_BYTE_PROFILE && (1..=14).contains(&id) && (1..=16).contains(&data.len()) {
        out[0] = (id << 4) | (data.len() as u8 - 1);
        out[1..1 + data.len()].copy_from_slice(data);
        1 + data.len()
    } else if profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE && id != 0 {
        out[0] = id;
        out[1] = data.len() as u8;
        out[2..2 + data.len()].copy_from_slice(data);
        2 + data.len()
    } else {
        0
    }
}

/// Rewrites extension elements (RFC 8285 one-byte or two-byte form) into `out`; returns the
/// number of element bytes written, before padding. Unknown profiles are dropped whole.
fn rewrite_extension(profile: u16, elements: &[u8], ids: &ExtensionIdMap, out: &mut [u8]) -> usize {
    let mut read = 0;
    let mut written = 0;
    if profile == ONE_BYTE_PROFILE {
        while read < elements.len() {
            let byte = elements[read];
            let id = byte >> 4;
            if id == 0 {
                read += 1; // padding
                continue;
            }
            if id == 15 {
                break; // reserved: stop parsing (RFC 8285 §4.2)
            }
            let data_len = (byte & 0x0f) as usize + 1;
            if read + 1 + data_len > elements.len() {
                break;
            }
            let to = ids.get(id);
            if (1..=14).contains(&to) {
                out[written] = (to << 4) | (byte & 0x0f);
                out[written + 1..written + 1 + data_len]
                    .copy_from_slice(&elements[read + 1..read + 1 + data_len]);
                written += 1 + data_len;
            }
            read += 1 + data_len;
        }
    } else if profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE {
        while read < elements.len() {
            let id = elements[read];
            if id == 0 {
                read += 1;
                continue;
            }
            if read + 2 > elements.len() {
                break;
            }
            let data_len = elements[read + 1] as usize;
            if read + 2 + data_len > elements.len() {
                break;
            }
            let to = ids.get(id);
            if to != 0 {
                out[written] = to;
                out[written + 1] = data_len as u8;
                out[written + 2..written + 2 + data_len]
                    .copy_from_slice(&elements[read + 2..read + 2 + data_len]);
                written += 2 + data_len;
            }
            read += 2 + data_len;
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_with_one_byte_extensions() -> Vec<u8> {
        let mut p = vec![
            0x90, 0xe0, 0x12, 0x34, // V=2 X=1, M=1 PT=96, seq
            0, 0, 0x10, 0, // timestamp
            0xaa, 0xbb, 0xcc, 0xdd, // ssrc
            0xbe, 0xde, 0x00, 0x02, // one-byte profile, 2 words
            0x10, 0x7f, // id 1, 1 byte: audio level
            0x32, 0x01, 0x02, 0x03, // id 3, 3 bytes: abs-send-time
            0x00, 0x00, // padding
        ];
        p.extend_from_slice(b"payload");
        p
    }

    #[test]
    fn parses_header_with_extension() {
        let p = packet_with_one_byte_extensions();
        let h = RtpHeader::parse(&p).unwrap();
        assert!(h.marker);
        assert_eq!(h.payload_type, 0x60);
        assert_eq!(h.sequence, 0x1234);
        assert_eq!(h.ssrc, 0xaabbccdd);
        assert_eq!(h.extension, Some((0xbede, 16, 24)));
        assert_eq!(&p[h.header_len..], b"payload");
    }

    #[test]
    fn rewrite_changes_ids_ssrc_pt_and_sequence_and_keeps_payload() {
        let p = packet_with_one_byte_extensions();
        let h = RtpHeader::parse(&p).unwrap();
        let mut ids = ExtensionIdMap::default();
        ids.insert(1, 5);
        ids.insert(3, 2);
        let rw = Rewrite {
            ssrc: 0x01020304,
            payload_type: 100,
            sequence: 7,
            extension_ids: &ids,
            timestamp: h.timestamp,
            transport_sequence: None,
        };
        let mut out = [0u8; 64];
        let n = rewrite_into(&p, &h, &rw, &mut out).unwrap();
        let o = RtpHeader::parse(&out[..n]).unwrap();
        assert_eq!(o.ssrc, 0x01020304);
        assert_eq!(o.payload_type, 100);
        assert!(o.marker);
        assert_eq!(o.sequence, 7);
        assert_eq!(o.timestamp, h.timestamp);
        let (_, s, e) = o.extension.unwrap();
        assert_eq!(&out[s..s + 6], &[0x50, 0x7f, 0x22, 0x01, 0x02, 0x03]);
        assert_eq!(e - s, 8);
        assert_eq!(&out[o.header_len..n], b"payload");
    }

    #[test]
    fn rewritten_header_is_what_rewrite_into_writes_before_the_payload() {
        let p = packet_with_one_byte_extensions();
        let h = RtpHeader::parse(&p).unwrap();
        let mut ids = ExtensionIdMap::default();
        ids.insert(3, 4);
        for ids in [ids, ExtensionIdMap::default()] {
            let rw = Rewrite {
                ssrc: 9,
                payload_type: 100,
                sequence: 3,
                extension_ids: &ids,
                timestamp: h.timestamp,
                transport_sequence: None,
            };
            let mut whole = [0u8; 64];
            let n = rewrite_into(&p, &h, &rw, &mut whole).unwrap();
            let mut header = [0u8; 64];
            let header_len = rewrite_header_into(&p, &h, &rw, &mut header).unwrap();
            assert_eq!(
                header_len,
                RtpHeader::parse(&whole[..n]).unwrap().header_len
            );
            assert_eq!(&header[..header_len], &whole[..header_len]);
            assert_eq!(&whole[header_len..n], &p[h.header_len..]);
        }
        let mut short = [0u8; 8];
        let rw = Rewrite {
            ssrc: 9,
            payload_type: 100,
            sequence: 3,
            extension_ids: &ExtensionIdMap::default(),
            timestamp: h.timestamp,
            transport_sequence: None,
        };
        assert_eq!(
            rewrite_header_into(&p, &h, &rw, &mut short),
            Err(RtpError::BufferTooSmall)
        );
    }

    #[test]
    fn unmapped_elements_are_stripped_and_empty_block_removed() {
        let p = packet_with_one_byte_extensions();
        let h = RtpHeader::parse(&p).unwrap();
        let mut ids = ExtensionIdMap::default();
        ids.insert(3, 4);
        let rw = Rewrite {
            ssrc: 1,
            payload_type: 96,
            sequence: 1,
            extension_ids: &ids,
            timestamp: h.timestamp,
            transport_sequence: None,
        };
        let mut out = [0u8; 64];
        let n = rewrite_into(&p, &h, &rw, &mut out).unwrap();
        let o = RtpHeader::parse(&out[..n]).unwrap();
        let (_, s, e) = o.extension.unwrap();
        assert_eq!(&out[s..e], &[0x42, 0x01, 0x02, 0x03]);

        let none = ExtensionIdMap::default();
        let rw = Rewrite {
            extension_ids: &none,
            ..rw
        };
        let n = rewrite_into(&p, &h, &rw, &mut out).unwrap();
        let o = RtpHeader::parse(&out[..n]).unwrap();
        assert_eq!(o.extension, None);
        assert_eq!(n, 12 + 7);
        assert_eq!(&out[12..n], b"payload");
    }

    #[test]
    fn two_byte_extensions_are_rewritten() {
        let mut p = vec![
            0x90, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0x00, 0x00,
            0x02, // two-byte profile
            20, 3, 1, 2, 3, 0, 0, 0, // id 20, len 3, padding
        ];
        p.extend_from_slice(b"x");
        let h = RtpHeader::parse(&p).unwrap();
        let mut ids = ExtensionIdMap::default();
        ids.insert(20, 30);
        let rw = Rewrite {
            ssrc: 1,
            payload_type: 96,
            sequence: 1,
            extension_ids: &ids,
            timestamp: h.timestamp,
            transport_sequence: None,
        };
        let mut out = [0u8; 64];
        let n = rewrite_into(&p, &h, &rw, &mut out).unwrap();
        let o = RtpHeader::parse(&out[..n]).unwrap();
        let (profile, s, _) = o.extension.unwrap();
        assert_eq!(profile, 0x1000);
        assert_eq!(&out[s..s + 5], &[30, 3, 1, 2, 3]);
        assert_eq!(&out[o.header_len..n], b"x");
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(RtpHeader::parse(&[0x80; 5]), Err(RtpError::TooShort));
        assert_eq!(RtpHeader::parse(&[0x40; 12]), Err(RtpError::BadVersion));
        let mut p = packet_with_one_byte_extensions();
        p[15] = 40; // extension longer than the packet
        assert_eq!(RtpHeader::parse(&p), Err(RtpError::BadExtension));
        let mut cc = [0u8; 12];
        cc[0] = 0x8f; // 15 CSRCs in a 12-byte packet
        assert_eq!(RtpHeader::parse(&cc), Err(RtpError::TooShort));
    }

    #[test]
    fn a_transport_sequence_number_is_added_in_the_blocks_form_or_a_new_block() {
        let ids = ExtensionIdMap::default();
        let plain = [0x80, 96, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, b'x'];
        let p_one = packet_with_one_byte_extensions();
        let mut two = vec![
            0x90, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0x00, 0x00, 0x01,
        ];
        two.extend_from_slice(&[20, 1, 7, 0, b'x']);
        for p in [&plain[..], &p_one[..], &two[..]] {
            let h = RtpHeader::parse(p).unwrap();
            let rw = Rewrite {
                ssrc: 5,
                payload_type: 96,
                sequence: 2,
                timestamp: 0xdead_beef,
                extension_ids: &ids,
                transport_sequence: Some((3, 0xabcd)),
            };
            let mut out = [0u8; 64];
            let n = rewrite_into(p, &h, &rw, &mut out).unwrap();
            let o = RtpHeader::parse(&out[..n]).unwrap();
            assert_eq!(o.timestamp, 0xdead_beef);
            assert_eq!(
                crate::wire::twcc::read_transport_sequence(&out[..n], &o, 3),
                Some(0xabcd)
            );
            assert_eq!(&out[o.header_len..n], &p[h.header_len..]);
        }
    }

    #[test]
    fn a_padding_packet_carries_its_number_and_says_how_much_is_padding() {
        let mut out = [0u8; 300];
        let len = write_padding(&mut out, 97, 5, 9000, 0x77, (3, 0x0102), 255).unwrap();
        assert_eq!(len, 12 + 8 + 255);
        let h = RtpHeader::parse(&out[..len]).unwrap();
        assert_eq!((h.payload_type, h.sequence, h.ssrc), (97, 5, 0x77));
        assert_eq!(out[0] & 0x20, 0x20, "P bit");
        assert_eq!(out[len - 1], 255);
        assert_eq!(h.header_len + 255, len, "all padding after the header");
        assert_eq!(
            crate::wire::twcc::read_transport_sequence(&out[..len], &h, 3),
            Some(0x0102)
        );
        assert_eq!(
            write_padding(&mut out[..100], 97, 5, 0, 1, (3, 1), 255),
            None
        );
        assert_eq!(write_padding(&mut out, 97, 5, 0, 1, (15, 1), 10), None);
    }
}
