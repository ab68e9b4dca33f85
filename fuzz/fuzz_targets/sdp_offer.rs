//! Any offer text yields an answer or an error with a message, never a panic, and an offer
//! that parses yields a model bounded by the parser's caps, whatever the text repeats.
//!
//! Start from the committed seeds (among them issue 17's amplifying offer) as well as the
//! fuzzer's own corpus: `cargo fuzz run sdp_offer corpus/sdp_offer seeds/sdp_offer`.
#![no_main]

use corecast::sdp::{
    MAX_FORMATS_PER_SECTION, MAX_SECTIONS, Offer, negotiate_play, negotiate_publish,
};
use libfuzzer_sys::fuzz_target;

/// The relay honours two kinds of feedback (keyframe requests); a codec keeps no others.
const MOST_FEEDBACK_PER_CODEC: usize = 2;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = Offer::parse(text) else {
        return;
    };
    assert!(offer.sections.len() <= MAX_SECTIONS);
    for section in &offer.sections {
        assert!(section.codecs.len() <= MAX_FORMATS_PER_SECTION);
        for codec in &section.codecs {
            assert!(codec.feedback.len() <= MOST_FEEDBACK_PER_CODEC);
        }
    }
    if let Ok((tracks, _)) = negotiate_publish(&offer) {
        let _ = negotiate_play(&offer, &tracks, "s", |_| 1);
    }
});
