//! Offers the sdp module's tests share: offers recorded from browsers (tests/fixtures), and
//! hostile offers built here, which are also the `sdp_offer` fuzz target's seeds.

use super::answer::AnswerTransport;
use super::limits::MAX_OFFER_BYTES;
use super::{NegotiationError, Offer};

pub(super) const CHROME_PUBLISH_OFFER: &str =
    include_str!("../../tests/fixtures/chrome_publish_offer.sdp");
pub(super) const CHROME_PLAY_OFFER: &str =
    include_str!("../../tests/fixtures/chrome_play_offer.sdp");

pub(super) fn transport() -> AnswerTransport<'static> {
    AnswerTransport {
        ice_ufrag: "ufrag",
        ice_pwd: "password-password-pass",
        fingerprint: "AA:BB",
        ips: &[std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
        port: 31000,
        tcp_port: 31000,
        udp: true,
        tcp: true,
    }
}

/// A publish offer in Firefox's layout (its attribute order, codecs and extensions),
/// written by hand: no Firefox was at hand to capture one.
pub(super) const FIREFOX_PUBLISH_OFFER: &str =
    include_str!("../../tests/fixtures/firefox_style_publish_offer.sdp");

/// Offers captured from Debian's firefox-esr 153 ESR (headless, fake camera and microphone)
/// with `bundlePolicy: "max-bundle"`: the video section is offered with port 0 and
/// `a=bundle-only` (RFC 8843), on the transport of the BUNDLE group's first section.
pub(super) const FIREFOX_MAX_BUNDLE_PUBLISH_OFFER: &str =
    include_str!("../../tests/fixtures/firefox_max_bundle_publish_offer.sdp");
pub(super) const FIREFOX_MAX_BUNDLE_PLAY_OFFER: &str =
    include_str!("../../tests/fixtures/firefox_max_bundle_play_offer.sdp");

/// Chromium's captured publish offer with the lines Chromium adds for three simulcast layers.
pub(super) fn chrome_simulcast_publish_offer() -> String {
    let layers = "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
                  a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
                  a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n";
    format!("{}{layers}", CHROME_PUBLISH_OFFER.trim_end())
}

/// The offer of issue 17: the video m-line lists payload type 96 `copies` times, with as
/// many `a=rtcp-fb:96` lines. The parser that kept every duplicate copied every feedback
/// line into every one of them: `copies`² strings.
fn offer_repeating_payload_type_96(copies: usize) -> String {
    let mut offer = String::new();
    for line in CHROME_PUBLISH_OFFER.lines() {
        if line.starts_with("m=video") {
            offer.push_str("m=video 9 UDP/TLS/RTP/SAVPF");
            offer.push_str(&" 96".repeat(copies));
        } else {
            offer.push_str(line.trim_end());
        }
        offer.push('\n');
    }
    // The video section is the last: these lines are its.
    offer.push_str(&"a=rtcp-fb:96 nack\n".repeat(copies));
    offer
}

pub(super) fn amplifying_offer() -> String {
    offer_repeating_payload_type_96(20_000)
}

/// As many duplicates as fit, padded to exactly the largest size parsing accepts.
pub(super) fn duplicates_at_the_size_cap() -> String {
    let base = offer_repeating_payload_type_96(0).len();
    let padding_line = "a=x-padding:\n".len();
    let copies = (MAX_OFFER_BYTES - base - padding_line) / " 96a=rtcp-fb:96 nack\n".len();
    let mut offer = offer_repeating_payload_type_96(copies);
    let padding = "x".repeat(MAX_OFFER_BYTES - offer.len() - padding_line);
    offer.push_str(&format!("a=x-padding:{padding}\n"));
    offer
}

/// Builds one hostile offer.
type OfferBuilder = fn() -> String;

/// The `sdp_offer` fuzz target's seeds: file name and the offer it holds.
const FUZZ_SEEDS: &[(&str, OfferBuilder)] = &[
    (
        "amplifying_20000_duplicate_payload_types.sdp",
        amplifying_offer,
    ),
    (
        "duplicate_payload_types_at_the_size_cap.sdp",
        duplicates_at_the_size_cap,
    ),
];

pub(super) fn malformed_message(offer: &str) -> String {
    match Offer::parse(offer) {
        Err(NegotiationError::Malformed(message)) => message,
        other => panic!("expected a malformed-offer error, got {other:?}"),
    }
}

/// The `sdp_offer` fuzz target starts from these offers (fuzz/seeds/sdp_offer), and the
/// integration tests send them to a relay: the files are what these tests build.
#[test]
fn the_fuzz_seeds_are_the_offers_these_tests_build() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sdp_offer");
    for (file, build) in FUZZ_SEEDS {
        let path = dir.join(file);
        if std::env::var_os("CORECAST_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::write(&path, build()).unwrap();
        }
        let seed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            seed == build(),
            "{file} is not the offer the tests build; rewrite it with \
             CORECAST_WRITE_FUZZ_SEEDS=1 cargo test --lib sdp"
        );
    }
}
