//! A policed downlink, sans-IO: [`Policer`] drops, on arrival, what exceeds a rate, as a
//! traffic policer on the path does (a token bucket with a small burst; no queue, so the only
//! sign of the limit is loss). The load generator's `--rate-limit` emulates a thin link with
//! it, so a run shows the server estimating each player's path and choosing its layer.

use std::time::Instant;

/// The burst a policer lets through at once, in time at its rate: enough for a video frame's
/// packets arriving back to back, small enough that a sender over the rate loses within a
/// frame or two.
const BURST_MILLIS: u64 = 100;
/// The smallest burst: two full-sized packets, so that one frame of a few packets fits even
/// at a low rate.
const MIN_BURST_BYTES: u64 = 3000;

/// A token bucket over bytes.
#[derive(Debug, Clone)]
pub struct Policer {
    rate_bytes_per_s: u64,
    burst_bytes: u64,
    /// Tokens in micro-bytes (bytes × 10⁶), so that refills at any rate stay exact.
    tokens: u64,
    last: Option<Instant>,
    passed: u64,
    dropped: u64,
}

impl Policer {
    /// A policer at `kbps` kilobits per second (a full bucket to start with).
    pub fn new(kbps: u32) -> Self {
        let rate_bytes_per_s = u64::from(kbps) * 1000 / 8;
        let burst_bytes = (rate_bytes_per_s * BURST_MILLIS / 1000).max(MIN_BURST_BYTES);
        Policer {
            rate_bytes_per_s,
            burst_bytes,
            tokens: burst_bytes * 1_000_000,
            last: None,
            passed: 0,
            dropped: 0,
        }
    }

    /// Whether a packet of `len` bytes arriving at `now` passes; one that does not fit the
    /// bucket is dropped whole and takes no tokens.
    pub fn allow(&mut self, now: Instant, len: usize) -> bool {
        if let Some(last) = self.last {
            let elapsed_us = now.saturating_duration_since(last).as_micros() as u64;
            let refill = elapsed_us.saturating_mul(self.rate_bytes_per_s);
            self.tokens = (self.tokens.saturating_add(refill)).min(self.burst_bytes * 1_000_000);
        }
        self.last = Some(now);
        let cost = len as u64 * 1_000_000;
        if self.tokens >= cost {
            self.tokens -= cost;
            self.passed += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn passed(&self) -> u64 {
        self.passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_steady_flow_under_the_rate_passes_and_one_over_it_is_cut_to_the_rate() {
        let t0 = Instant::now();
        // 400 kbit/s = 50 000 bytes/s; burst 5 000 bytes.
        let mut p = Policer::new(400);
        // 1000-byte packets every 25 ms: 320 kbit/s, all through.
        for i in 0..400u32 {
            assert!(
                p.allow(t0 + Duration::from_millis(25) * i, 1000),
                "packet {i}"
            );
        }
        // Then every 10 ms for 10 s: 800 kbit/s offered, about half passes.
        let start = t0 + Duration::from_secs(10);
        let mut passed = 0u64;
        for i in 0..1000u32 {
            passed += u64::from(p.allow(start + Duration::from_millis(10) * i, 1000));
        }
        let bytes_per_s = passed * 1000 / 10;
        assert!(
            (49_000..=51_000).contains(&bytes_per_s),
            "{bytes_per_s} bytes/s passed"
        );
        assert_eq!(p.dropped(), 1000 - passed);
    }

    #[test]
    fn the_burst_is_small_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut p = Policer::new(400);
        // Back to back: the 5 000-byte bucket holds four 1200-byte packets.
        let burst: Vec<bool> = (0..6).map(|_| p.allow(t0, 1200)).collect();
        assert_eq!(burst, [true, true, true, true, false, false]);
        // 16 ms refill 800 bytes: not enough; at 20 ms the 200 left and 1 000 refilled are.
        assert!(!p.allow(t0 + Duration::from_millis(16), 1200));
        assert!(p.allow(t0 + Duration::from_millis(20), 1200));
        // A long silence fills the bucket no further than the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..6).filter(|_| p.allow(later, 1200)).count(), 4);
        // A tiny rate still lets two full packets through after a silence.
        let mut slow = Policer::new(8);
        assert!(slow.allow(t0, 1500) && slow.allow(t0, 1500) && !slow.allow(t0, 100));
    }
}
