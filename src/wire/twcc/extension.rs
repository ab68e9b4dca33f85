//! The transport-wide sequence number header extension (draft §2): a 16-bit number per
//! packet of the transport, in an RFC 8285 element at the id the SDP negotiated.

use std::ops::Range;

use super::TwccError;
use crate::wire::rtp::RtpHeader;

/// The data of header-extension element `id` (RFC 8285, one-byte or two-byte form), as a
/// range of `packet`, whose header `header` is.
pub fn find_extension(packet: &[u8], header: &RtpHeader, id: u8) -> Option<Range<usize>> {
    let (profile, start, end) = header.extension?;
    let elements = packet.get(start..end)?;
    let one_byte = profile == 0xbede;
    if !one_byte && profile & 0xfff0 != 0x1000 {
        return None;
    }
    let mut read = 0;
    while read < elements.len() {
        let (element_id, data_len, data_at) = if one_byte {
            let byte = elements[read];
            if byte >> 4 == 15 {
                return None; // reserved id: the rest is not to be parsed (RFC 8285 §4.2)
            }
            (byte >> 4, (byte & 0x0f) as usize + 1, read + 1)
        } else {
            let len = *elements.get(read + 1).unwrap_or(&0) as usize;
            (elements[read], len, read + 2)
        };
        if element_id == 0 {
            read += 1; // padding
            continue;
        }
        if data_at + data_len > elements.len() {
            return None;
        }
        if element_id == id {
            return Some(start + data_at..start + data_at + data_len);
        }
        read = data_at + data_len;
    }
    None
}

/// The transport-wide sequence number carried at extension id `id`, if the packet has one.
pub fn read_transport_sequence(packet: &[u8], header: &RtpHeader, id: u8) -> Option<u16> {
    let data = packet.get(find_extension(packet, header, id)?)?;
    Some(u16::from_be_bytes([*data.first()?, *data.get(1)?]))
}

/// Overwrites the transport-wide sequence number at extension id `id` in place (a relay
/// numbers each egress packet of a transport itself).
pub fn write_transport_sequence(
    packet: &mut [u8],
    header: &RtpHeader,
    id: u8,
    sequence: u16,
) -> Result<(), TwccError> {
    let range = find_extension(packet, header, id).ok_or(TwccError::NoExtension)?;
    if range.len() < 2 {
        return Err(TwccError::NoExtension);
    }
    packet[range.start..range.start + 2].copy_from_slice(&sequence.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_with_extensions(elements: &[u8], profile: u16) -> Vec<u8> {
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&((elements.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(elements);
        p.extend_from_slice(b"payload");
        p
    }

    #[test]
    fn transport_sequence_is_read_and_overwritten_at_its_id() {
        // id 1 audio level, padding, id 3 transport-wide sequence 0x1234.
        let mut p = packet_with_extensions(&[0x10, 0x7f, 0x00, 0x31, 0x12, 0x34, 0, 0], 0xbede);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(read_transport_sequence(&p, &h, 3), Some(0x1234));
        assert_eq!(read_transport_sequence(&p, &h, 2), None);
        write_transport_sequence(&mut p, &h, 3, 0xfffe).unwrap();
        assert_eq!(read_transport_sequence(&p, &h, 3), Some(0xfffe));
        assert_eq!(&p[p.len() - 7..], b"payload");
        assert_eq!(
            write_transport_sequence(&mut p, &h, 2, 1),
            Err(TwccError::NoExtension)
        );

        let p = packet_with_extensions(&[0, 7, 2, 0xab, 0xcd, 0, 0, 0], 0x1000);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(read_transport_sequence(&p, &h, 7), Some(0xabcd));
        let truncated = packet_with_extensions(&[0x31, 0x12, 0x34, 0x21], 0xbede);
        let h = RtpHeader::parse(&truncated).unwrap();
        assert_eq!(read_transport_sequence(&truncated, &h, 3), Some(0x1234));
        assert_eq!(
            read_transport_sequence(&truncated, &h, 2),
            None,
            "runs past the end"
        );
    }
}
