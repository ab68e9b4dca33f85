//! Transport-wide feedback from a player, as a browser sends it, sans-IO: when the answer
//! negotiated the transport-wide sequence number (a simulcast stream's players do, so the
//! server can estimate their path), [`PlayFeedback`] records when each number arrived and
//! writes a feedback message every [`FEEDBACK_INTERVAL`] with the relay's own
//! [`TwccRecorder`] (what the relay sends its publishers).
//!
//! What a policed or lossy link dropped is never recorded: the server reads it as lost.

use std::time::{Duration, Instant};

use crate::session::twcc::{TwccConfig, TwccRecorder};
use crate::wire::rtp::RtpHeader;
use crate::wire::twcc::read_transport_sequence;

/// How often feedback goes out while packets arrive (libwebrtc: 50 to 250 ms by bitrate).
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
/// Room [`PlayFeedback::poll`] needs: a feedback message covering the packets of one interval
/// at any rate loadgen plays (a longer backlog goes in several).
pub const FEEDBACK_BUFFER_LEN: usize = 1200;
/// The id a player offers the transport-wide sequence number under (Chromium's).
pub const TRANSPORT_CC_ID: u8 = 3;

/// The offer lines that ask for transport-wide feedback in one media section: the extension,
/// and `transport-cc` feedback for every format of it.
pub fn offer_lines() -> String {
    format!(
        "a=extmap:{TRANSPORT_CC_ID} {}\r\na=rtcp-fb:* transport-cc\r\n",
        crate::sdp::TRANSPORT_CC_URI
    )
}

/// A player's transport-wide feedback.
pub struct PlayFeedback {
    extension_id: u8,
    recorder: TwccRecorder,
    /// Ours, as the feedback's sender; and the server's video SSRC it is about (any SSRC of
    /// the transport would do: the numbering is the transport's).
    sender_ssrc: u32,
    media_ssrc: u32,
    sent: u64,
}

impl PlayFeedback {
    /// Feedback for the numbers carried at header-extension `extension_id`.
    pub fn new(extension_id: u8, sender_ssrc: u32, media_ssrc: u32) -> Self {
        PlayFeedback {
            extension_id,
            recorder: TwccRecorder::new(TwccConfig {
                interval: FEEDBACK_INTERVAL,
                ..TwccConfig::default()
            }),
            sender_ssrc,
            media_ssrc,
            sent: 0,
        }
    }

    /// An RTP packet arrived (decrypted, before anything else looks at it: a padding-only
    /// probe counts as much as media).
    pub fn on_rtp(&mut self, now: Instant, packet: &[u8]) {
        let Ok(header) = RtpHeader::parse(packet) else {
            return;
        };
        if let Some(number) = read_transport_sequence(packet, &header, self.extension_id) {
            self.recorder.record(now, number);
        }
    }

    /// When [`Self::poll`] next has a message; `None` while nothing arrived since the last.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.recorder.next_timeout()
    }

    /// Writes the feedback due now into `out` (at least [`FEEDBACK_BUFFER_LEN`] bytes) and
    /// returns its length; call again while it returns `Some`.
    pub fn poll(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        let written = self
            .recorder
            .poll(now, out, self.sender_ssrc, self.media_ssrc)
            .ok()??;
        self.sent += 1;
        Some(written)
    }

    /// Feedback messages written.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::twcc::{PacketStatus, TransportFeedback};

    /// A video packet carrying transport-wide number `number` at id 3 (one-byte form).
    fn packet(number: u16) -> Vec<u8> {
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        let n = number.to_be_bytes();
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, (TRANSPORT_CC_ID << 4) | 1, n[0], n[1], 0]);
        p.extend_from_slice(&[0u8; 20]);
        p
    }

    #[test]
    fn arrivals_are_reported_every_interval_and_gaps_read_as_lost() {
        let t0 = Instant::now();
        let mut f = PlayFeedback::new(TRANSPORT_CC_ID, 1, 2);
        assert_eq!(f.next_timeout(), None);
        for number in [10u16, 11, 13] {
            f.on_rtp(t0, &packet(number));
        }
        // A packet without the extension, and garbage: nothing recorded.
        f.on_rtp(t0, &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]);
        f.on_rtp(t0, &[1, 2, 3]);
        assert_eq!(f.next_timeout(), Some(t0 + FEEDBACK_INTERVAL));
        let mut out = [0u8; FEEDBACK_BUFFER_LEN];
        assert_eq!(f.poll(t0 + Duration::from_millis(99), &mut out), None);
        let n = f.poll(t0 + FEEDBACK_INTERVAL, &mut out).unwrap();
        let feedback = TransportFeedback::parse(&out[..n]).unwrap();
        let statuses: Vec<(u16, bool)> = feedback
            .packets()
            .map(|p| (p.sequence, !matches!(p.status, PacketStatus::NotReceived)))
            .collect();
        assert_eq!(
            statuses,
            vec![(10, true), (11, true), (12, false), (13, true)]
        );
        assert_eq!((f.sent(), f.next_timeout()), (1, None));
    }
}
