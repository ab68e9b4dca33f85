//! Transport-wide feedback parsing never panics, and its packets re-encode to the same
//! statuses and deltas.
#![no_main]

use corecast::wire::twcc::{
    DELTA_TICK_US, FeedbackHeader, PacketStatus, REFERENCE_TICK_US, TransportFeedback,
    write_feedback,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(feedback) = TransportFeedback::parse(data) else {
        return;
    };
    assert_eq!(feedback.packets().count(), feedback.status_count as usize);
    // Arrival times from the deltas, then written again: the statuses must survive.
    let mut arrivals = [None; 1024];
    let mut time = i64::from(feedback.reference_time) * REFERENCE_TICK_US;
    let mut n = 0;
    for packet in feedback.packets().take(arrivals.len()) {
        if let PacketStatus::Received { delta_ticks } = packet.status {
            time += i64::from(delta_ticks) * DELTA_TICK_US;
            arrivals[n] = Some(time);
        }
        n += 1;
    }
    let header = FeedbackHeader {
        sender_ssrc: feedback.sender_ssrc,
        media_ssrc: feedback.media_ssrc,
        base_sequence: feedback.base_sequence,
        feedback_count: feedback.feedback_count,
    };
    let mut out = [0u8; 4096];
    let Ok(written) = write_feedback(&mut out, &header, arrivals[..n].iter().copied()) else {
        return; // nothing received among them
    };
    let again = TransportFeedback::parse(&out[..written.len]).expect("what we write parses");
    for (a, b) in again.packets().zip(feedback.packets()) {
        assert_eq!(a.sequence, b.sequence);
        assert_eq!(
            matches!(a.status, PacketStatus::Received { .. }),
            matches!(b.status, PacketStatus::Received { .. })
        );
    }
});
