//! Any offer text yields an answer or an error with a message, never a panic.
#![no_main]

use corecast::negotiation::{Offer, negotiate_play, negotiate_publish};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = Offer::parse(text) else {
        return;
    };
    if let Ok((tracks, _)) = negotiate_publish(&offer) {
        let _ = negotiate_play(&offer, &tracks, "s", |_| 1);
    }
});
