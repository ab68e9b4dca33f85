//! Whether a player's media keeps coming, sans-IO (the caller passes `now`): gaps longer than
//! [`GAP_AFTER`] between packets, and the silence under way, which at the end of a run says
//! its stream stopped (a publisher killed, a stream deleted) where loss alone says nothing:
//! a player that gets nothing more loses no packet it knows of.

use std::time::{Duration, Instant};

/// Longer than this without a packet is a gap: a stream sends audio every 20 ms and video
/// at its frame rate, so a second of nothing is no jitter.
pub const GAP_AFTER: Duration = Duration::from_secs(1);

/// One player's media over time.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// The last packet's arrival; the join's start until the first.
    last: Instant,
    received_any: bool,
    gaps: u64,
    longest: Duration,
}

impl Liveness {
    /// A player that starts joining at `now`.
    pub fn new(now: Instant) -> Self {
        Liveness {
            last: now,
            received_any: false,
            gaps: 0,
            longest: Duration::ZERO,
        }
    }

    pub fn on_packet(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last);
        if self.received_any && gap > GAP_AFTER {
            self.gaps += 1;
            self.longest = self.longest.max(gap);
        }
        self.last = now;
        self.received_any = true;
    }

    /// The last packet's arrival, when nothing has come since for longer than [`GAP_AFTER`]
    /// (the join's start, if nothing ever came).
    pub fn silent_since(&self, now: Instant) -> Option<Instant> {
        (now.saturating_duration_since(self.last) > GAP_AFTER).then_some(self.last)
    }

    /// Gaps so far, the silence under way at `now` among them.
    pub fn gaps(&self, now: Instant) -> u64 {
        self.gaps + u64::from(self.received_any && self.silent_since(now).is_some())
    }

    /// The longest gap so far, the silence under way at `now` included.
    pub fn longest_gap(&self, now: Instant) -> Duration {
        match self.silent_since(now) {
            Some(last) if self.received_any => self.longest.max(now - last),
            _ => self.longest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_stream_has_no_gap_and_is_not_silent() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        for i in 1..=100 {
            l.on_packet(t0 + ms(20 * i));
        }
        let end = t0 + ms(2000 + 500);
        assert_eq!(l.gaps(end), 0);
        assert_eq!(l.silent_since(end), None);
    }

    #[test]
    fn a_pause_longer_than_a_second_is_a_gap_and_media_that_stops_is_silence() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        l.on_packet(t0 + ms(100));
        // 900 ms apart: no gap; 1500 ms apart: one.
        l.on_packet(t0 + ms(1000));
        l.on_packet(t0 + ms(2500));
        assert_eq!(l.gaps(t0 + ms(2600)), 1);
        assert_eq!(l.longest_gap(t0 + ms(2600)), ms(1500));
        // Then nothing: silent since the last packet, which counts as a gap under way.
        let end = t0 + ms(6500);
        assert_eq!(l.silent_since(end), Some(t0 + ms(2500)));
        assert_eq!(l.gaps(end), 2);
        assert_eq!(l.longest_gap(end), ms(4000));
    }

    #[test]
    fn a_player_that_never_receives_is_silent_since_it_joined_but_has_no_gap() {
        let t0 = Instant::now();
        let l = Liveness::new(t0);
        assert_eq!(l.silent_since(t0 + ms(500)), None);
        assert_eq!(l.silent_since(t0 + ms(1500)), Some(t0));
        assert_eq!(l.gaps(t0 + ms(1500)), 0);
    }
}
