//! Any PATCH body yields a fragment or an error with a message, never a panic; a fragment
//! that parses holds both credentials or neither, each of RFC 8839's characters and lengths,
//! and no more candidates than the cap; the relay's restart answer always reads back.
//!
//! `cargo fuzz run sdpfrag corpus/sdpfrag seeds/sdpfrag`.
#![no_main]

use corecast::sdp::{MAX_FRAGMENT_CANDIDATES, parse_fragment, write_restart_fragment};
use libfuzzer_sys::fuzz_target;

fn ice_chars(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fuzz_target!(|data: &[u8]| {
    let Ok(fragment) = parse_fragment(data) else {
        return;
    };
    assert!(fragment.candidates.len() <= MAX_FRAGMENT_CANDIDATES);
    if let Some((ufrag, pwd)) = fragment.credentials {
        assert!(ice_chars(ufrag) && (4..=256).contains(&ufrag.len()));
        assert!(ice_chars(pwd) && (22..=256).contains(&pwd.len()));
        // What a restart answers with (the client's credentials standing in for the relay's)
        // reads back as the same credentials and candidates.
        let candidates: Vec<String> = fragment.candidates.iter().map(|c| c.to_string()).collect();
        let answer = write_restart_fragment(ufrag, pwd, ("audio", "0"), &candidates);
        if answer.len() <= corecast::sdp::MAX_FRAGMENT_BYTES {
            let back = parse_fragment(answer.as_bytes()).expect("the relay's own fragment");
            assert_eq!(back.credentials, Some((ufrag, pwd)));
            assert_eq!(back.candidates.len(), candidates.len());
        }
    }
});
