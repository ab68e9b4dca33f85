//! RTX restore (into a buffer and in place) never panics, and both agree; building RTX from
//! any RTP packet and restoring it gives the packet back without its padding.
#![no_main]

use corecast::wire::rtx::{OriginalStream, RtxStream, build_rtx, restore_in_place, restore_into};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let original = OriginalStream {
        ssrc: 7,
        payload_type: 96,
    };
    let mut out = vec![0u8; data.len()];
    let restored = restore_into(data, &original, &mut out);
    let mut in_place = data.to_vec();
    let range = restore_in_place(&mut in_place, &original);
    match (restored, range) {
        (Ok(n), Ok(range)) => assert_eq!(&out[..n], &in_place[range]),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("restore_into {a:?} and restore_in_place {b:?} disagree"),
    }

    let rtx = RtxStream {
        ssrc: 9,
        payload_type: 97,
        sequence: 1,
    };
    let mut wrapped = vec![0u8; data.len() + 2];
    if let Ok(n) = build_rtx(data, &rtx, &mut wrapped) {
        let mut back = vec![0u8; n];
        let m = restore_into(&wrapped[..n], &original, &mut back).expect("built RTX restores");
        assert_eq!(m + 2, n);
        // Padding sits at the end, so the first m bytes of the original are header and
        // payload; only SSRC, payload type and the P bit differ.
        let mut expected = data[..m].to_vec();
        expected[0] &= !0x20;
        expected[1] = (data[1] & 0x80) | 96;
        expected[8..12].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(&back[..m], &expected[..]);
    }
});
