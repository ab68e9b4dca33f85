//! REMB parsing never panics, and a parsed REMB writes back to the same SSRCs.
#![no_main]

use corecast::wire::remb::{Remb, write_remb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(remb) = Remb::parse(data) else {
        return;
    };
    let mut ssrcs = [0u32; 255];
    let mut n = 0;
    for ssrc in remb.ssrcs() {
        ssrcs[n] = ssrc;
        n += 1;
    }
    let mut out = [0u8; 20 + 4 * 255];
    let len = write_remb(&mut out, remb.sender_ssrc, remb.bitrate_bps, &ssrcs[..n]).unwrap();
    let again = Remb::parse(&out[..len]).expect("what we write parses");
    assert!(again.bitrate_bps <= remb.bitrate_bps);
    assert!(again.ssrcs().eq(remb.ssrcs()));
});
