//! Unprotecting arbitrary bytes as SRTP and SRTCP fails cleanly, for both profiles; so does
//! protecting them, in place or from a separate payload (the first byte picks the header
//! length, the buffer is sometimes too short for the tag).
#![no_main]

use corecast::wire::srtp::{SrtpContext, SrtpProfile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for profile in [SrtpProfile::AeadAes128Gcm, SrtpProfile::Aes128CmHmacSha1_80] {
        let salt = vec![3u8; profile.master_salt_len()];
        let mut ctx = SrtpContext::new(profile, &[1u8; 16], &salt).unwrap();
        let mut buf = data.to_vec();
        let _ = ctx.unprotect_rtp(&mut buf);
        let mut buf = data.to_vec();
        let _ = ctx.unprotect_rtcp(&mut buf);
        let mut buf = data.to_vec();
        buf.resize(data.len() + profile.rtcp_overhead(), 0);
        let _ = ctx.protect_rtp(&mut buf, data.len());
        if let Some((&pick, rest)) = data.split_first() {
            let header_len = (pick as usize & 0x7f).min(rest.len());
            let room = if pick & 0x80 != 0 { profile.rtp_overhead() } else { 3 };
            let mut buf = rest[..header_len].to_vec();
            buf.resize(rest.len() + room, 0);
            let _ = ctx.protect_rtp_from(&mut buf, header_len, &rest[header_len..]);
        }
    }
});
