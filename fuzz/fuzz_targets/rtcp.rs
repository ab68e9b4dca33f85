//! Walking compound RTCP and copying sender reports never panic.
#![no_main]

use corecast::wire::rtcp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = [0u8; 64];
    for packet in rtcp::compound(data).map_while(Result::ok) {
        let _ = packet.is_keyframe_request();
        let _ = packet.media_ssrc();
        let _ = rtcp::write_sender_report(&mut out, &packet, 5);
    }
});
