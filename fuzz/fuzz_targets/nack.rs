//! Generic NACK parsing never panics, and what it reads writes back to the same numbers.
#![no_main]

use corecast::wire::nack::{Nack, write_nack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(nack) = Nack::parse(data) else {
        return;
    };
    let mut lost = [0u16; 512];
    let mut count = 0;
    for seq in nack.lost().take(lost.len()) {
        lost[count] = seq;
        count += 1;
    }
    assert!(count > 0, "a parsed NACK reports at least its first PID");
    // Written back pair by pair: the same numbers, as wire order is ascending within a pair.
    let mut out = [0u8; 4096];
    for (pid, blp) in nack.pairs().take(64) {
        let mut pair = [0u16; 17];
        let mut n = 0;
        pair[n] = pid;
        n += 1;
        for bit in 0..16 {
            if blp & (1 << bit) != 0 {
                pair[n] = pid.wrapping_add(bit + 1);
                n += 1;
            }
        }
        let (len, covered) = write_nack(&mut out, 1, 2, &pair[..n]).expect("room for one pair");
        assert_eq!(covered, n);
        let again = Nack::parse(&out[..len]).expect("what we write parses");
        assert_eq!(again.pairs().next(), Some((pid, blp)));
    }
});
