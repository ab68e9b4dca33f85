//! Sender/receiver report parsing never panics, and report blocks write back byte for byte.
#![no_main]

use corecast::wire::rtcp_report::{SenderInfo, report_blocks, write_receiver_report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = SenderInfo::parse(data);
    let Ok(blocks) = report_blocks(data) else {
        return;
    };
    let sender = blocks.sender_ssrc;
    let mut parsed = [Default::default(); 31];
    let mut n = 0;
    for block in blocks {
        parsed[n] = block;
        n += 1;
    }
    let mut out = [0u8; 8 + 24 * 31];
    let len = write_receiver_report(&mut out, sender, &parsed[..n]).unwrap();
    assert!(
        report_blocks(&out[..len])
            .unwrap()
            .eq(parsed[..n].iter().copied())
    );
});
