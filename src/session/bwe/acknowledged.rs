//! The throughput the player acknowledged: bytes of received packets per arrival time over the
//! last 500 ms, in 10 ms buckets of the receiver's clock. libwebrtc's
//! AcknowledgedBitrateEstimator smooths a 150 ms window with a Bayesian filter; a plain 500 ms
//! window is steadier for the same purpose (the ceiling on increases and the level to back off
//! to) and needs no tuning.

const BUCKET_US: i64 = 10_000;
const WINDOW_BUCKETS: i64 = 50;
/// No rate until arrivals span this long: two packets 1 ms apart say nothing of a rate.
const MIN_SPAN_US: i64 = 150_000;

#[derive(Debug, Clone)]
pub(super) struct AcknowledgedBitrate {
    buckets: [u64; WINDOW_BUCKETS as usize],
    /// Index (arrival / bucket) of the newest bucket, and the newest arrival.
    newest: Option<(i64, i64)>,
    first_arrival_us: i64,
}

impl AcknowledgedBitrate {
    pub(super) fn new() -> Self {
        AcknowledgedBitrate {
            buckets: [0; WINDOW_BUCKETS as usize],
            newest: None,
            first_arrival_us: 0,
        }
    }

    pub(super) fn on_received(&mut self, arrival_us: i64, size: u32) {
        let index = arrival_us.div_euclid(BUCKET_US);
        match self.newest {
            None => {
                self.first_arrival_us = arrival_us;
                self.newest = Some((index, arrival_us));
            }
            Some((newest, _)) if index > newest => {
                for skipped in (newest + 1)..=index.min(newest + WINDOW_BUCKETS) {
                    self.buckets[skipped.rem_euclid(WINDOW_BUCKETS) as usize] = 0;
                }
                self.newest = Some((index, arrival_us));
            }
            Some((newest, latest)) => {
                if newest - index >= WINDOW_BUCKETS {
                    return;
                }
                self.newest = Some((newest, latest.max(arrival_us)));
            }
        }
        self.buckets[index.rem_euclid(WINDOW_BUCKETS) as usize] += u64::from(size);
    }

    /// Bits per second over the window, once arrivals span enough of it.
    pub(super) fn bitrate_bps(&self) -> Option<u64> {
        let (newest, latest_us) = self.newest?;
        let window_start_us =
            ((newest - WINDOW_BUCKETS + 1) * BUCKET_US).max(self.first_arrival_us);
        let span_us = latest_us - window_start_us;
        if span_us < MIN_SPAN_US {
            return None;
        }
        let bytes: u64 = self.buckets.iter().sum();
        Some(bytes * 8 * 1_000_000 / span_us as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_rate_of_received_bytes_over_the_last_half_second() {
        let mut a = AcknowledgedBitrate::new();
        // 1,250 bytes every 10 ms: 1 Mbit/s.
        for i in 0..10 {
            a.on_received(i * 10_000, 1250);
        }
        assert_eq!(a.bitrate_bps(), None, "under 150 ms of arrivals");
        for i in 10..100 {
            a.on_received(i * 10_000, 1250);
        }
        let rate = a.bitrate_bps().unwrap();
        assert!((950_000..=1_050_000).contains(&rate), "{rate}");
        // The rate halves: after a full window only the new rate counts.
        for i in 100..160 {
            a.on_received(i * 10_000, 625);
        }
        let rate = a.bitrate_bps().unwrap();
        assert!((470_000..=530_000).contains(&rate), "{rate}");
    }

    #[test]
    fn a_gap_in_arrivals_empties_the_window() {
        let mut a = AcknowledgedBitrate::new();
        for i in 0..50 {
            a.on_received(i * 10_000, 1250);
        }
        a.on_received(5_000_000, 1250);
        a.on_received(5_200_000, 1250);
        let rate = a.bitrate_bps().unwrap();
        assert!(rate < 100_000, "{rate}");
        // Arrivals older than the window are not counted.
        a.on_received(0, 1_000_000);
        assert_eq!(a.bitrate_bps(), Some(rate));
    }
}
