//! Unprotecting arbitrary bytes as SRTP and SRTCP fails cleanly, for both profiles.
#![no_main]

use corecast::srtp::{SrtpContext, SrtpProfile};
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
    }
});
