//! Keyframe requests towards a publisher, rate-limited: players (and late joiners) may ask
//! often, but a publisher gets at most one PLI per interval; a request inside the interval is
//! remembered and sent when it ends, so no late joiner waits for the next natural keyframe.

use std::time::{Duration, Instant};

pub const DEFAULT_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    pub fn new(interval: Duration) -> Self {
        KeyframeThrottle {
            interval,
            last_sent: None,
            pending: false,
        }
    }

    /// A player asked for a keyframe; returns whether to send a PLI now.
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(t) if now < t + self.interval => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// Called on timer ticks; returns whether a deferred request is due now.
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending && self.last_sent.is_none_or(|t| now >= t + self.interval) {
            self.pending = false;
            self.last_sent = Some(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_goes_out_and_burst_is_collapsed_into_one_deferred() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(500));
        assert!(k.request(t0));
        assert!(!k.request(t0 + Duration::from_millis(10)));
        assert!(!k.request(t0 + Duration::from_millis(20)));
        assert!(!k.poll(t0 + Duration::from_millis(499)));
        assert!(k.poll(t0 + Duration::from_millis(500)));
        assert!(
            !k.poll(t0 + Duration::from_millis(2000)),
            "only one deferred PLI"
        );
    }

    #[test]
    fn requests_after_the_interval_go_out_at_once() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(500));
        assert!(k.request(t0));
        assert!(k.request(t0 + Duration::from_millis(600)));
        assert!(!k.poll(t0 + Duration::from_secs(5)));
    }
}
