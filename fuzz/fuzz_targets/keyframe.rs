//! Reading where a keyframe starts never panics, whatever the payload and codec.
#![no_main]

use corecast::wire::keyframe::{VideoCodec, frame_start};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for codec in [
        VideoCodec::Vp8,
        VideoCodec::Vp9,
        VideoCodec::H264,
        VideoCodec::Av1,
    ] {
        let _ = frame_start(codec, data);
    }
});
