//! Packet indices (RFC 3711 §3.3.1): the rollover counter of what is sent, the estimate for
//! what is received, and the 64-packet replay window per SSRC (§3.3.2).

use super::SrtpError;

const REPLAY_WINDOW: u64 = 64;
/// SSRCs remembered per direction; a session carries a handful (audio, video, RTX).
const MAX_TRACKED_SSRCS: usize = 16;

/// Highest index seen and a bitmap of the 64 indices below it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ReplayWindow {
    highest: u64,
    seen: u64,
    started: bool,
}

impl ReplayWindow {
    #[inline]
    pub(super) fn check(&self, index: u64) -> Result<(), SrtpError> {
        if !self.started || index > self.highest {
            return Ok(());
        }
        let delta = self.highest - index;
        if delta >= REPLAY_WINDOW {
            Err(SrtpError::TooOld)
        } else if self.seen & (1 << delta) != 0 {
            Err(SrtpError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records an authenticated index.
    #[inline]
    pub(super) fn accept(&mut self, index: u64) {
        if !self.started {
            *self = ReplayWindow {
                highest: index,
                seen: 1,
                started: true,
            };
        } else if index > self.highest {
            let shift = index - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = index;
        } else {
            self.seen |= 1 << (self.highest - index);
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct SsrcState {
    ssrc: u32,
    /// Received packets: replay window over the 48-bit packet index (RTP) or SRTCP index.
    pub(super) replay: ReplayWindow,
    /// Sent packets: the highest index sent (RTP) or the next SRTCP index.
    pub(super) sent: u64,
    sent_started: bool,
}

/// Per-SSRC state in a small vector: a session carries a handful of SSRCs, so a linear search
/// beats hashing, and nothing is allocated once the vector has its capacity.
pub(super) struct SsrcTable(Vec<SsrcState>);

impl SsrcTable {
    pub(super) fn new() -> Self {
        SsrcTable(Vec::with_capacity(MAX_TRACKED_SSRCS))
    }

    #[inline]
    pub(super) fn get(&mut self, ssrc: u32) -> &mut SsrcState {
        let pos = match self.0.iter().position(|s| s.ssrc == ssrc) {
            Some(pos) => pos,
            None => {
                if self.0.len() == MAX_TRACKED_SSRCS {
                    self.0.remove(0);
                }
                self.0.push(SsrcState {
                    ssrc,
                    replay: ReplayWindow::default(),
                    sent: 0,
                    sent_started: false,
                });
                self.0.len() - 1
            }
        };
        &mut self.0[pos]
    }
}

/// The 48-bit index of a packet this side sends: the rollover counter rises when the sequence
/// number wraps (RFC 3711 §3.3.1).
#[inline]
pub(super) fn outbound_rtp_index(state: &mut SsrcState, sequence: u16) -> u64 {
    if !state.sent_started {
        state.sent_started = true;
        state.sent = sequence as u64;
        return state.sent;
    }
    let roc = state.sent >> 16;
    let last = state.sent as u16;
    let index = if sequence < last && last - sequence > 0x8000 {
        ((roc + 1) << 16) | sequence as u64
    } else if sequence > last && sequence - last > 0x8000 && roc > 0 {
        ((roc - 1) << 16) | sequence as u64 // a late packet from before the wrap
    } else {
        (roc << 16) | sequence as u64
    };
    state.sent = state.sent.max(index);
    index
}

/// Guesses the index of a received packet from the highest index seen (RFC 3711 Appendix A).
#[inline]
pub(super) fn estimate_index(window: &ReplayWindow, sequence: u16) -> u64 {
    if !window.started {
        return sequence as u64;
    }
    let roc = window.highest >> 16;
    let s_l = window.highest as u16;
    let seq = sequence as i64;
    let guess = if s_l < 0x8000 {
        if seq - s_l as i64 > 0x8000 && roc > 0 {
            roc - 1
        } else {
            roc
        }
    } else if (s_l as i64 - 0x8000) > seq {
        roc + 1
    } else {
        roc
    };
    (guess << 16) | sequence as u64
}
