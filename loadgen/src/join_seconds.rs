//! Join times by the second of the ramp a player started joining in: how many started, joined,
//! were shed (`503`, the server's admission) or failed, and the join-time percentiles of each
//! second, so a run shows when the server's admission saturates.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One second of the ramp, as `summary.json` keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinSecond {
    /// Seconds since the ramp began.
    pub second: usize,
    pub started: u64,
    pub joined: u64,
    /// Refused with `503` (the server sheds joins it cannot take yet).
    pub shed: u64,
    /// Failed otherwise (refused with another status, timed out).
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

struct Second {
    started: u64,
    shed: u64,
    failed: u64,
    /// Join times in nanoseconds.
    joined: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Second {
            started: 0,
            shed: 0,
            failed: 0,
            joined: crate::summary::latency_histogram(),
        }
    }
}

/// The ramp's seconds so far.
#[derive(Default)]
pub struct JoinSeconds {
    seconds: Vec<Second>,
}

impl JoinSeconds {
    fn at(&mut self, second: usize) -> &mut Second {
        if self.seconds.len() <= second {
            self.seconds.resize_with(second + 1, Second::new);
        }
        &mut self.seconds[second]
    }

    /// A player began joining in `second`.
    pub fn started(&mut self, second: usize) {
        self.at(second).started += 1;
    }

    /// A player of `second` got its first media after `join_ns`.
    pub fn joined(&mut self, second: usize, join_ns: u64) {
        let _ = self.at(second).joined.record(join_ns.max(1_000));
    }

    /// A player of `second` was refused: shed (`503`) or failed otherwise.
    pub fn refused(&mut self, second: usize, shed: bool) {
        let s = self.at(second);
        if shed {
            s.shed += 1;
        } else {
            s.failed += 1;
        }
    }

    pub fn rows(&self) -> Vec<JoinSecond> {
        let ms = |ns: u64| ns as f64 / 1e6;
        self.seconds
            .iter()
            .enumerate()
            .map(|(second, s)| JoinSecond {
                second,
                started: s.started,
                joined: s.joined.len(),
                shed: s.shed,
                failed: s.failed,
                p50_ms: ms(s.joined.value_at_quantile(0.5)),
                p99_ms: ms(s.joined.value_at_quantile(0.99)),
                max_ms: ms(s.joined.max()),
            })
            .collect()
    }
}

/// The table the run prints: one line per second of the ramp.
pub fn table(rows: &[JoinSecond]) -> String {
    let mut out =
        String::from("join by second of the ramp: started joined shed failed | p50 p99 max ms\n");
    for r in rows {
        out += &format!(
            "  {:>3} s  {:>6} {:>6} {:>5} {:>5} | {:>8.1} {:>8.1} {:>8.1}\n",
            r.second, r.started, r.joined, r.shed, r.failed, r.p50_ms, r.p99_ms, r.max_ms
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_keeps_its_own_counts_and_percentiles() {
        let mut j = JoinSeconds::default();
        j.started(0);
        j.started(0);
        j.joined(0, 10_000_000);
        j.refused(0, true);
        j.started(2);
        j.joined(2, 300_000_000);
        j.refused(2, false);
        let rows = j.rows();
        assert_eq!(rows.len(), 3, "the quiet second between is kept, empty");
        assert_eq!((rows[0].started, rows[0].joined, rows[0].shed), (2, 1, 1));
        assert!((rows[0].p50_ms - 10.0).abs() < 0.1, "{}", rows[0].p50_ms);
        assert_eq!((rows[1].started, rows[1].joined), (0, 0));
        assert_eq!((rows[2].joined, rows[2].failed), (1, 1));
        assert!((rows[2].max_ms - 300.0).abs() < 3.0, "{}", rows[2].max_ms);
        assert!(table(&rows).contains("  2 s"));
    }
}
