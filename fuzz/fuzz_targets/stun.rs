//! STUN parsing and ICE-lite check handling never panic, whatever arrives on a media port.
#![no_main]

use std::time::{Duration, Instant};

use corecast::session::ice::IceLite;
use corecast::wire::demux::classify;
use corecast::wire::stun::StunMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    if let Ok(msg) = StunMessage::parse(data) {
        let _ = msg.verify_integrity(&corecast::wire::stun::short_term_key("pwd"));
    }
    let now = Instant::now();
    let mut ice = IceLite::new(
        now,
        "srv",
        "server-password-123456",
        "cli",
        Duration::from_secs(30),
    );
    let mut out = [0u8; 256];
    let _ = ice.handle_check(now, data, "127.0.0.1:9".parse().unwrap(), &mut out);
});
