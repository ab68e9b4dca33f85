//! Where a keyframe starts, read from a video packet's payload (its RTP payload format's
//! descriptor), and the picture size where the format carries it: a simulcast player may
//! switch encodings only at the first packet of a keyframe of the new one, or its decoder
//! breaks. Formats: VP8 (RFC 7741), VP9 (RFC 9628), H.264 (RFC 6184), AV1 (the AOM RTP
//! specification). One look at a few bytes per packet, on the publisher's worker, once for
//! every player.

/// A video codec, by what its payload format says about keyframes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
    Av1,
    /// A codec whose keyframes are not recognised: a player never switches encodings on it.
    Other,
}

impl VideoCodec {
    /// From the codec's name in the SDP (`a=rtpmap`).
    pub fn from_name(name: &str) -> VideoCodec {
        match name.to_ascii_uppercase().as_str() {
            "VP8" => VideoCodec::Vp8,
            "VP9" => VideoCodec::Vp9,
            "H264" => VideoCodec::H264,
            "AV1" => VideoCodec::Av1,
            _ => VideoCodec::Other,
        }
    }
}

/// What a packet's payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStart {
    /// Not the first packet of a keyframe (or a payload too short to tell).
    Other,
    /// The first packet of a keyframe; the picture size when the payload carries it.
    Keyframe { size: Option<(u16, u16)> },
}

impl FrameStart {
    pub fn is_keyframe(self) -> bool {
        matches!(self, FrameStart::Keyframe { .. })
    }
}

/// Reads the start of a video packet's `payload` (after the RTP header, padding included:
/// the descriptors are at the front).
pub fn frame_start(codec: VideoCodec, payload: &[u8]) -> FrameStart {
    match codec {
        VideoCodec::Vp8 => vp8(payload),
        VideoCodec::Vp9 => vp9(payload),
        VideoCodec::H264 => h264(payload),
        VideoCodec::Av1 => av1(payload),
        VideoCodec::Other => FrameStart::Other,
    }
}

/// RFC 7741 §4.2: the payload descriptor, then, at the start of partition 0 (S=1, PID=0), the
/// VP8 frame header whose first bit is 0 for a key frame (RFC 6386 §9.1), followed by the
/// start code and the 14-bit width and height.
fn vp8(payload: &[u8]) -> FrameStart {
    let Some(&first) = payload.first() else {
        return FrameStart::Other;
    };
    let (extended, start, partition) = (first & 0x80 != 0, first & 0x10 != 0, first & 0x07);
    if !start || partition != 0 {
        return FrameStart::Other;
    }
    let mut at = 1;
    if extended {
        let Some(&x) = payload.get(1) else {
            return FrameStart::Other;
        };
        at = 2;
        if x & 0x80 != 0 {
            // PictureID: 15 bits when its M bit is set, else 7.
            let long = payload.get(at).is_some_and(|b| b & 0x80 != 0);
            at += if long { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID / KEYIDX
        }
    }
    let Some(frame) = payload.get(at..) else {
        return FrameStart::Other;
    };
    match frame.first() {
        Some(tag) if tag & 0x01 == 0 => {
            let size = match frame.get(3..10) {
                Some([0x9d, 0x01, 0x2a, w0, w1, h0, h1]) => Some((
                    u16::from_le_bytes([*w0, *w1]) & 0x3fff,
                    u16::from_le_bytes([*h0, *h1]) & 0x3fff,
                )),
                _ => None,
            };
            FrameStart::Keyframe { size }
        }
        _ => FrameStart::Other,
    }
}

/// RFC 9628 §4.2: `I P L F B E V Z`. A keyframe starts where a frame begins (B) that is not
/// inter-picture predicted (P=0) in the lowest spatial layer; the scalability structure (V),
/// which keyframes carry, gives the picture sizes (the largest layer's is taken).
fn vp9(payload: &[u8]) -> FrameStart {
    let Some(&first) = payload.first() else {
        return FrameStart::Other;
    };
    let picture_id = first & 0x80 != 0;
    let predicted = first & 0x40 != 0;
    let layer_indices = first & 0x20 != 0;
    let flexible = first & 0x10 != 0;
    let begins = first & 0x08 != 0;
    let structure = first & 0x02 != 0;
    if predicted || !begins {
        return FrameStart::Other;
    }
    let mut at = 1;
    if picture_id {
        let long = payload.get(at).is_some_and(|b| b & 0x80 != 0);
        at += if long { 2 } else { 1 };
    }
    if layer_indices {
        let Some(&layers) = payload.get(at) else {
            return FrameStart::Other;
        };
        if (layers >> 1) & 0x07 != 0 {
            return FrameStart::Other; // a higher spatial layer of the keyframe
        }
        at += if flexible { 1 } else { 2 };
    }
    let mut size = None;
    if structure && let Some(&ss) = payload.get(at) {
        let spatial_layers = (ss >> 5) as usize + 1;
        if ss & 0x10 != 0 {
            let last = at + 1 + 4 * (spatial_layers - 1);
            if let Some([w0, w1, h0, h1]) = payload.get(last..last + 4) {
                size = Some((
                    u16::from_be_bytes([*w0, *w1]),
                    u16::from_be_bytes([*h0, *h1]),
                ));
            }
        }
    }
    FrameStart::Keyframe { size }
}

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

/// RFC 6184 §5: a keyframe starts with its parameter sets or its IDR slice, alone, in a
/// STAP-A, or as the first fragment (S bit) of an FU-A.
fn h264(payload: &[u8]) -> FrameStart {
    let Some(&header) = payload.first() else {
        return FrameStart::Other;
    };
    let starts = |nal_type: u8| nal_type == H264_IDR || nal_type == H264_SPS;
    let keyframe = match header & 0x1f {
        H264_STAP_A => {
            let mut at = 1;
            let mut found = false;
            while let Some(len) = payload.get(at..at + 2) {
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                let Some(&nal) = payload.get(at + 2) else {
                    break;
                };
                if len > 0 && starts(nal & 0x1f) {
                    found = true;
                    break;
                }
                at += 2 + len;
            }
            found
        }
        H264_FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && starts(fu & 0x1f)),
        nal_type => starts(nal_type),
    };
    if keyframe {
        FrameStart::Keyframe { size: None }
    } else {
        FrameStart::Other
    }
}

/// The AV1 RTP specification §4.4: the aggregation header's N bit marks the first packet of
/// a coded video sequence, which starts with a keyframe.
fn av1(payload: &[u8]) -> FrameStart {
    match payload.first() {
        Some(header) if header & 0x08 != 0 => FrameStart::Keyframe { size: None },
        _ => FrameStart::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_start_at_partition_zero_with_their_size() {
        // X=1 S=1 PID=0; I=1 with a 15-bit picture id; frame tag with P=0; start code; 1280x720.
        let keyframe = [
            0x90, 0x80, 0x81, 0x23, 0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02,
        ];
        assert_eq!(
            frame_start(VideoCodec::Vp8, &keyframe),
            FrameStart::Keyframe {
                size: Some((1280, 720))
            }
        );
        let mut delta = keyframe;
        delta[4] |= 0x01; // P=1: an interframe
        assert_eq!(frame_start(VideoCodec::Vp8, &delta), FrameStart::Other);
        let mut continuation = keyframe;
        continuation[0] &= !0x10; // not the start of a partition
        assert_eq!(
            frame_start(VideoCodec::Vp8, &continuation),
            FrameStart::Other
        );
        // Without the extension byte.
        assert!(frame_start(VideoCodec::Vp8, &[0x10, 0x00, 0, 0]).is_keyframe());
    }

    #[test]
    fn vp9_keyframes_are_unpredicted_frame_beginnings_in_the_base_layer() {
        // I=1 (7-bit id), B=1, V=1; SS: one layer with Y=1, 640x360.
        let keyframe = [0x8a, 0x12, 0x18, 0x02, 0x80, 0x01, 0x68];
        assert_eq!(
            frame_start(VideoCodec::Vp9, &keyframe),
            FrameStart::Keyframe {
                size: Some((640, 360))
            }
        );
        assert_eq!(
            frame_start(VideoCodec::Vp9, &[0xca, 0x12]),
            FrameStart::Other
        );
        // L=1, F=0: layer byte with spatial id 1, then TL0PICIDX.
        assert_eq!(
            frame_start(VideoCodec::Vp9, &[0x28, 0x02, 0x00]),
            FrameStart::Other
        );
        assert!(frame_start(VideoCodec::Vp9, &[0x28, 0x00, 0x00]).is_keyframe());
    }

    #[test]
    fn h264_keyframes_start_with_parameter_sets_or_an_idr_slice() {
        assert!(frame_start(VideoCodec::H264, &[0x67, 0x42]).is_keyframe()); // SPS
        assert!(frame_start(VideoCodec::H264, &[0x65, 0x88]).is_keyframe()); // IDR
        assert!(!frame_start(VideoCodec::H264, &[0x41, 0x9a]).is_keyframe()); // non-IDR
        // STAP-A holding SPS then PPS.
        let stap = [0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce];
        assert!(frame_start(VideoCodec::H264, &stap).is_keyframe());
        // FU-A: the IDR's first fragment, then a middle one.
        assert!(frame_start(VideoCodec::H264, &[0x7c, 0x85, 0x00]).is_keyframe());
        assert!(!frame_start(VideoCodec::H264, &[0x7c, 0x05, 0x00]).is_keyframe());
        // A STAP-A whose sizes run past its end stops quietly.
        assert!(!frame_start(VideoCodec::H264, &[0x78, 0xff, 0xff, 0x41]).is_keyframe());
    }

    #[test]
    fn av1_keyframes_start_a_coded_video_sequence() {
        assert!(frame_start(VideoCodec::Av1, &[0x18, 0x00]).is_keyframe());
        assert!(!frame_start(VideoCodec::Av1, &[0x10, 0x00]).is_keyframe());
    }

    #[test]
    fn short_or_empty_payloads_are_not_keyframes() {
        for codec in [
            VideoCodec::Vp8,
            VideoCodec::Vp9,
            VideoCodec::H264,
            VideoCodec::Av1,
            VideoCodec::Other,
        ] {
            assert_eq!(frame_start(codec, &[]), FrameStart::Other);
            for len in 1..4 {
                let _ = frame_start(codec, &[0xff; 4][..len]);
            }
        }
    }
}
