//! RTP header parsing and the per-player rewrite never panic and never write past the packet
//! (longer by at most the transport-wide number it may add).
#![no_main]

use corecast::wire::rtp::{
    ADDED_EXTENSION_LEN, ExtensionIdMap, Rewrite, RtpHeader, rewrite_into,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = RtpHeader::parse(data) else {
        return;
    };
    let mut ids = ExtensionIdMap::default();
    for id in 1..=14u8 {
        ids.insert(id, 15 - id);
    }
    for id in 15..=255u8 {
        ids.insert(id, id / 2);
    }
    let rewrite = Rewrite {
        ssrc: 1,
        payload_type: 96,
        sequence: 7,
        timestamp: 9,
        extension_ids: &ids,
        transport_sequence: data.first().map(|&b| (b % 16, 0x1234)),
    };
    let mut out = vec![0u8; data.len() + ADDED_EXTENSION_LEN];
    if let Ok(n) = rewrite_into(data, &header, &rewrite, &mut out) {
        assert!(n <= data.len() + ADDED_EXTENSION_LEN);
        RtpHeader::parse(&out[..n]).expect("a rewritten packet parses");
    }
});
