//! Demultiplexing of one media port by the first byte (RFC 7983, RFC 5761).

/// What a datagram (or RFC 4571 frame) on a media port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    /// Anything else: dropped and counted by the caller.
    Unknown,
}

/// Classifies a packet by its first two bytes and length.
///
/// RFC 7983: 0..=3 STUN, 20..=63 DTLS, 128..=191 RTP or RTCP. RFC 5761: RTCP packet types
/// 192..=223 sit where RTP's marker bit and payload type are, so the second byte tells them apart.
pub fn classify(packet: &[u8]) -> PacketKind {
    let Some(&first) = packet.first() else {
        return PacketKind::Unknown;
    };
    match first {
        0..=3 if packet.len() >= 20 => PacketKind::Stun,
        20..=63 if packet.len() >= 13 => PacketKind::Dtls,
        128..=191 => match packet.get(1) {
            Some(192..=223) if packet.len() >= 8 => PacketKind::Rtcp,
            Some(_) if packet.len() >= 12 => PacketKind::Rtp,
            _ => PacketKind::Unknown,
        },
        _ => PacketKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_ranges_map_to_protocols() {
        let mut p = [0u8; 32];
        p[0] = 0x00;
        assert_eq!(classify(&p), PacketKind::Stun);
        p[0] = 22;
        assert_eq!(classify(&p), PacketKind::Dtls);
        p[0] = 0x80;
        p[1] = 96;
        assert_eq!(classify(&p), PacketKind::Rtp);
        p[1] = 0x80 | 96; // marker bit set, still RTP
        assert_eq!(classify(&p), PacketKind::Rtp);
        p[1] = 200;
        assert_eq!(classify(&p), PacketKind::Rtcp);
        p[1] = 206;
        assert_eq!(classify(&p), PacketKind::Rtcp);
        p[0] = 0xff;
        assert_eq!(classify(&p), PacketKind::Unknown);
    }

    #[test]
    fn truncated_packets_are_unknown() {
        assert_eq!(classify(&[]), PacketKind::Unknown);
        assert_eq!(classify(&[0x00, 0x01, 0, 0]), PacketKind::Unknown);
        assert_eq!(classify(&[0x80, 96, 0, 1]), PacketKind::Unknown);
        assert_eq!(classify(&[0x80, 200, 0, 1]), PacketKind::Unknown);
    }
}
