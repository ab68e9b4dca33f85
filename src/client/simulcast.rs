//! Publishing simulcast as a browser does (RFC 8853): the offer declares the encodings by
//! RID (`a=rid:<id> send`, `a=simulcast:send l;m;h`) with the RID and repaired-RID header
//! extensions; each encoding goes under an SSRC of its own, its packets naming their RID in
//! the extension (what tells the server which SSRC is which encoding), its retransmissions
//! under an RTX SSRC of their own naming it in the repaired-RID extension. The server asks
//! each encoding for keyframes with a PLI (or FIR) on that encoding's SSRC.
//!
//! Also the offer amendments the client makes beside [`super::write_offer_with`]: these
//! lines, and a player's transport-wide feedback ([`super::feedback::offer_lines`]).

use std::time::Duration;

use super::repair::PublishRepair;
use super::sdp::rtx_ssrc_of;
use super::{Answer, ClientError};
use crate::sdp::{REPAIRED_RID_URI, RID_URI};
use crate::wire::rtcp::{self, FMT_FIR, FMT_PLI, PAYLOAD_FEEDBACK};
use crate::wire::rtp::RtpHeader;
use crate::wire::twcc::find_extension;

/// The ids the offer gives the RID and repaired-RID extensions (Chromium's).
pub const RID_ID: u8 = 10;
pub const REPAIRED_RID_ID: u8 = 11;
/// Bytes the RID extension adds to an RTP header: the block's 4-byte header, and an element
/// of a RID up to [`MAX_RID_LEN`] bytes, padded.
pub const RID_EXTENSION_LEN: usize = 12;
/// The longest RID [`Simulcast::write_header`] writes.
pub const MAX_RID_LEN: usize = 7;

/// One encoding a simulcast publisher sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    pub rid: String,
    pub ssrc: u32,
    /// Its retransmissions' SSRC (when the answer negotiated RTX).
    pub rtx_ssrc: u32,
}

/// What a simulcast publisher's answer settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulcast {
    /// In the offer's order: by convention the lowest first.
    pub encodings: Vec<Encoding>,
    /// The ids of the RID and repaired-RID extensions, as answered.
    pub rid_id: u8,
    pub repaired_rid_id: Option<u8>,
}

/// Whether `rid` is one the offer can carry: 1 to [`MAX_RID_LEN`] letters or digits.
pub fn valid_rid(rid: &str) -> bool {
    (1..=MAX_RID_LEN).contains(&rid.len()) && rid.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The video section's offer lines for sending `rids`.
pub fn offer_lines(rids: &[String]) -> String {
    let mut lines =
        format!("a=extmap:{RID_ID} {RID_URI}\r\na=extmap:{REPAIRED_RID_ID} {REPAIRED_RID_URI}\r\n");
    for rid in rids {
        lines.push_str(&format!("a=rid:{rid} send\r\n"));
    }
    lines.push_str(&format!("a=simulcast:send {}\r\n", rids.join(";")));
    lines
}

/// Adds `audio` and `video` lines at the end of the offer's audio and video sections; with
/// `drop_video_ssrcs`, leaves out the video section's `a=ssrc` and `a=ssrc-group` lines (a
/// simulcast sender names its SSRCs by RID, as browsers do).
pub fn amend_offer(offer: &str, audio: &str, video: &str, drop_video_ssrcs: bool) -> String {
    let mut out = String::with_capacity(offer.len() + audio.len() + video.len());
    let mut section = "";
    let close = |out: &mut String, section: &str| match section {
        "audio" => out.push_str(audio),
        "video" => out.push_str(video),
        _ => {}
    };
    for line in offer.split_terminator("\r\n") {
        if let Some(media) = line.strip_prefix("m=") {
            close(&mut out, section);
            section = media.split(' ').next().unwrap_or_default();
        }
        if drop_video_ssrcs && section == "video" && line.starts_with("a=ssrc") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    close(&mut out, section);
    out
}

impl Simulcast {
    /// The encodings of `rids` from the server's answer: it must receive simulcast and have
    /// kept the RID extension.
    pub fn from_answer(rids: &[String], answer: &Answer) -> Result<Simulcast, ClientError> {
        if !answer.simulcast {
            return Err(ClientError::Answer(
                "the server did not accept simulcast (no a=simulcast:recv)".into(),
            ));
        }
        let id_of = |uri: &str| {
            answer
                .extensions
                .iter()
                .find(|(_, u)| u == uri)
                .map(|(id, _)| *id)
        };
        let rid_id = id_of(RID_URI).ok_or_else(|| {
            ClientError::Answer(format!(
                "simulcast answered without the {RID_URI} extension"
            ))
        })?;
        let encodings = rids
            .iter()
            .map(|rid| {
                let ssrc = rand::random();
                Encoding {
                    rid: rid.clone(),
                    ssrc,
                    rtx_ssrc: rtx_ssrc_of(ssrc),
                }
            })
            .collect();
        Ok(Simulcast {
            encodings,
            rid_id,
            repaired_rid_id: id_of(REPAIRED_RID_URI),
        })
    }

    /// The retransmissions of each encoding: as RTX under the encoding's RTX SSRC naming it
    /// in the repaired-RID extension (when RTX and that extension were answered), else as the
    /// original resent.
    pub fn repairs(
        &self,
        rtx_payload_type: Option<u8>,
        capacity: usize,
        max_age: Duration,
    ) -> Vec<PublishRepair> {
        self.encodings
            .iter()
            .map(|e| {
                let rtx = rtx_payload_type
                    .zip(self.repaired_rid_id)
                    .map(|(pt, repaired)| ((pt, e.rtx_ssrc), repaired));
                let repair =
                    PublishRepair::new(e.ssrc, rtx.map(|r| r.0), rand::random(), capacity, max_age);
                match rtx {
                    Some((_, repaired)) => repair.renaming_in_rtx(self.rid_id, repaired),
                    None => repair,
                }
            })
            .collect()
    }

    /// The encoding sent under `ssrc`.
    pub fn encoding_of(&self, ssrc: u32) -> Option<usize> {
        self.encodings.iter().position(|e| e.ssrc == ssrc)
    }

    /// Writes the RTP header of a packet of encoding `layer` into `buf`, its RID in the
    /// extension; returns the header's length (where the payload goes). `None` for a layer
    /// not sent or a `buf` shorter than a header.
    pub fn write_header(
        &self,
        layer: usize,
        buf: &mut [u8],
        payload_type: u8,
        marker: bool,
        sequence: u16,
        timestamp: u32,
    ) -> Option<usize> {
        let encoding = self.encodings.get(layer)?;
        let rid = encoding.rid.as_bytes();
        let elements = 1 + rid.len();
        let len = 12 + 4 + elements.div_ceil(4) * 4;
        if buf.len() < len || !valid_rid(&encoding.rid) {
            return None;
        }
        buf[0] = 0x90; // V=2, X
        buf[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&sequence.to_be_bytes());
        buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&encoding.ssrc.to_be_bytes());
        buf[12..14].copy_from_slice(&[0xbe, 0xde]);
        buf[14..16].copy_from_slice(&(((len - 16) / 4) as u16).to_be_bytes());
        buf[16] = (self.rid_id << 4) | (rid.len() as u8 - 1);
        buf[17..17 + rid.len()].copy_from_slice(rid);
        buf[17 + rid.len()..len].fill(0);
        Some(len)
    }
}

/// The SSRCs a compound RTCP packet asks keyframes of: a PLI's media SSRC, each FIR entry's.
pub fn keyframe_requests(compound: &[u8]) -> impl Iterator<Item = u32> + '_ {
    rtcp::compound(compound)
        .map_while(Result::ok)
        .filter(|p| p.packet_type == PAYLOAD_FEEDBACK)
        .flat_map(|p| {
            let entries: &[u8] = match p.count {
                // PLI: the media source field.
                FMT_PLI => p.bytes.get(8..12).unwrap_or_default(),
                // FIR (RFC 5104 §4.3.1): entries of (SSRC, sequence, reserved) after it.
                FMT_FIR => p.bytes.get(12..).unwrap_or_default(),
                _ => &[],
            };
            let stride = if p.count == FMT_PLI { 4 } else { 8 };
            entries
                .chunks_exact(stride)
                .map(|e| u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
        })
}

/// Renames header-extension element `from` to `to` in place (one-byte form): an RTX packet
/// built from a kept original names its encoding in the repaired-RID extension, not the RID.
pub fn rename_extension(packet: &mut [u8], from: u8, to: u8) {
    let Ok(header) = RtpHeader::parse(packet) else {
        return;
    };
    let one_byte = header
        .extension
        .is_some_and(|(profile, _, _)| profile == 0xbede);
    if let Some(data) = find_extension(packet, &header, from).filter(|_| one_byte)
        && (1..=14).contains(&to)
    {
        let at = data.start - 1;
        packet[at] = (to << 4) | (packet[at] & 0x0f);
    }
}

#[cfg(test)]
#[path = "simulcast_tests.rs"]
mod relay_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn simulcast() -> Simulcast {
        Simulcast {
            encodings: ["l", "mid", "h"]
                .iter()
                .zip([1u32, 2, 3])
                .map(|(rid, ssrc)| Encoding {
                    rid: rid.to_string(),
                    ssrc,
                    rtx_ssrc: rtx_ssrc_of(ssrc),
                })
                .collect(),
            rid_id: RID_ID,
            repaired_rid_id: Some(REPAIRED_RID_ID),
        }
    }

    #[test]
    fn packets_name_their_encoding_and_rtx_renames_it_as_repaired() {
        let s = simulcast();
        let mut buf = [0xffu8; 64];
        let len = s.write_header(1, &mut buf, 96, true, 7, 9000).unwrap();
        assert_eq!(len, 12 + 4 + 4);
        let header = RtpHeader::parse(&buf).unwrap();
        assert_eq!(
            (
                header.ssrc,
                header.sequence,
                header.marker,
                header.header_len
            ),
            (2, 7, true, len)
        );
        let rid = find_extension(&buf, &header, RID_ID).unwrap();
        assert_eq!(&buf[rid], b"mid");
        let len_l = s.write_header(0, &mut buf, 96, false, 8, 9000).unwrap();
        assert_eq!(len_l, 20);
        assert_eq!(s.write_header(3, &mut buf, 96, false, 8, 9000), None);
        assert_eq!(s.write_header(0, &mut buf[..19], 96, false, 8, 9000), None);

        rename_extension(&mut buf, RID_ID, REPAIRED_RID_ID);
        let header = RtpHeader::parse(&buf).unwrap();
        assert_eq!(find_extension(&buf, &header, RID_ID), None);
        let repaired = find_extension(&buf, &header, REPAIRED_RID_ID).unwrap();
        assert_eq!(&buf[repaired], b"l");
        assert_eq!(s.encoding_of(3), Some(2));
        assert_eq!(s.encoding_of(4), None);
    }

    #[test]
    fn keyframe_requests_name_the_encodings_asked() {
        let mut compound = vec![0u8; 12];
        rtcp::write_pli(&mut compound, 9, 2);
        // A FIR for SSRCs 3 and 1.
        let mut fir = vec![
            0x80 | FMT_FIR,
            PAYLOAD_FEEDBACK,
            0,
            6,
            0,
            0,
            0,
            9,
            0,
            0,
            0,
            0,
        ];
        fir.extend_from_slice(&[0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0]);
        compound.extend_from_slice(&fir);
        assert_eq!(keyframe_requests(&compound).collect::<Vec<_>>(), [2, 3, 1]);
        assert_eq!(keyframe_requests(&[1, 2]).count(), 0);
    }

    #[test]
    fn the_offer_is_amended_in_its_sections() {
        let offer = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\n\
                     a=ssrc-group:FID 1 2\r\na=ssrc:1 cname:x\r\na=msid:loadgen video\r\n";
        let rids: Vec<String> = ["l", "h"].iter().map(|r| r.to_string()).collect();
        let amended = amend_offer(offer, "a=A\r\n", &offer_lines(&rids), true);
        assert_eq!(
            amended,
            format!(
                "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=A\r\nm=video 9 X 96\r\na=mid:1\r\n\
                 a=msid:loadgen video\r\na=extmap:10 {RID_URI}\r\na=extmap:11 {REPAIRED_RID_URI}\r\n\
                 a=rid:l send\r\na=rid:h send\r\na=simulcast:send l;h\r\n"
            )
        );
        assert!(valid_rid("h") && !valid_rid("") && !valid_rid("a;b") && !valid_rid("toolong1"));
    }
}
