//! The RFC 4571 reader, fed a stream cut at arbitrary points, never panics, never hands out a
//! frame longer than its maximum, and yields the same frames however the stream is cut.
#![no_main]

use corecast::wire::framing::FrameReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize % data.len();
    let stream = &data[1..];
    let run = |pieces: &[&[u8]]| {
        let mut reader = FrameReader::new(1500);
        let mut frames = Vec::new();
        for piece in pieces {
            let mut buf = piece.to_vec();
            if reader
                .feed(&mut buf, |f| {
                    assert!(f.len() <= 1500);
                    frames.push(f.to_vec())
                })
                .is_err()
            {
                return (frames, true);
            }
        }
        (frames, false)
    };
    let whole = run(&[stream]);
    let cut = cut.min(stream.len());
    let split = run(&[&stream[..cut], &stream[cut..]]);
    assert_eq!(whole, split);
});
