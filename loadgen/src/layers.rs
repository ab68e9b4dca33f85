//! Which simulcast layer a player receives, sans-IO (the caller passes `now`): [`LayerLog`]
//! reads the layer from each video packet's stamp, counts switches and the time spent on each
//! layer, and maps each layer's own stamp sequence onto one continuous sequence for the
//! player's video [`crate::quality::Track`], so a switch is neither a gap nor a jump back.
//!
//! A switch shows as the first packet of another layer that is not a late packet of that
//! layer's earlier stretch (a repair arriving after the switch keeps its old place).

use std::time::{Duration, Instant};

/// Layers a stream sends at most (the relay's limit too).
pub const LAYERS: usize = 3;
/// Switches remembered with their time, per player: enough to show a run's story, bounded.
const KEPT_SWITCHES: usize = 16;

/// One switch: when (since the run's epoch) and between which layers (0 lowest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Switch {
    pub at_s: f64,
    pub from: u8,
    pub to: u8,
}

/// A player's layers.
#[derive(Debug, Clone, Default)]
pub struct LayerLog {
    /// The layer received now (0 lowest), and since when.
    current: Option<(u8, Instant)>,
    time_on: [Duration; LAYERS],
    switches: u64,
    kept: Vec<Switch>,
    /// Per layer: what to add to its stamp sequence to place it in the continuous sequence,
    /// and the highest stamp sequence of its latest stretch.
    offsets: [Option<u64>; LAYERS],
    highest: [u64; LAYERS],
    /// The highest continuous sequence handed out.
    continuous_highest: u64,
}

impl LayerLog {
    /// A video packet of `layer` (0 lowest) with its layer's stamp `sequence` arrived at
    /// `now` (`at_s` since the run's epoch): returns its place in the continuous sequence.
    pub fn on_video(&mut self, now: Instant, at_s: f64, layer: u8, sequence: u64) -> u64 {
        let l = usize::from(layer).min(LAYERS - 1);
        let late_of_earlier_stretch = self.offsets[l].is_some() && sequence <= self.highest[l];
        match self.current {
            None => {
                self.current = Some((layer, now));
                self.offsets[l] = Some(0);
            }
            Some((from, since)) if from != layer && !late_of_earlier_stretch => {
                self.time_on[usize::from(from).min(LAYERS - 1)] +=
                    now.saturating_duration_since(since);
                self.current = Some((layer, now));
                self.switches += 1;
                if self.kept.len() < KEPT_SWITCHES {
                    self.kept.push(Switch {
                        at_s,
                        from,
                        to: layer,
                    });
                }
                // This stretch continues right after everything handed out so far.
                self.offsets[l] = Some(
                    self.continuous_highest
                        .wrapping_add(1)
                        .wrapping_sub(sequence),
                );
            }
            Some(_) => {}
        }
        if !late_of_earlier_stretch {
            self.highest[l] = self.highest[l].max(sequence);
        }
        let continuous = sequence.wrapping_add(self.offsets[l].unwrap_or(0));
        if self.current.is_some_and(|(c, _)| c == layer) {
            self.continuous_highest = self.continuous_highest.max(continuous);
        }
        continuous
    }

    /// The layer received now.
    pub fn current(&self) -> Option<u8> {
        self.current.map(|(layer, _)| layer)
    }

    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The first switches, with their times.
    pub fn kept_switches(&self) -> &[Switch] {
        &self.kept
    }

    /// Time on each layer up to `now`.
    pub fn time_on(&self, now: Instant) -> [Duration; LAYERS] {
        let mut time = self.time_on;
        if let Some((layer, since)) = self.current {
            time[usize::from(layer).min(LAYERS - 1)] += now.saturating_duration_since(since);
        }
        time
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::Track;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn switches_are_counted_timed_and_the_sequence_stays_continuous() {
        let t0 = Instant::now();
        let mut log = LayerLog::default();
        let mut track = Track::default();
        let mut feed = |log: &mut LayerLog, at: u64, layer: u8, sequence: u64| {
            let s = log.on_video(t0 + ms(at), at as f64 / 1000.0, layer, sequence);
            track.on_packet(s);
            s
        };
        // Layer 1 from its number 500, one packet lost (503).
        for (at, seq) in [(0, 500), (10, 501), (20, 502), (40, 504)] {
            feed(&mut log, at, 1, seq);
        }
        assert_eq!(log.current(), Some(1));
        // Up to layer 2 at its number 9000: continues at 505.
        assert_eq!(feed(&mut log, 1000, 2, 9000), 505);
        assert_eq!(feed(&mut log, 1010, 2, 9001), 506);
        // 503 repaired after the switch: its old place, no switch.
        assert_eq!(feed(&mut log, 1020, 1, 503), 503);
        assert_eq!((log.current(), log.switches()), (Some(2), 1));
        // Down to 0, then back to 2 much later: each stretch follows on.
        assert_eq!(feed(&mut log, 3000, 0, 70), 507);
        assert_eq!(feed(&mut log, 5000, 2, 9500), 508);
        assert_eq!(log.switches(), 3);
        assert_eq!(
            log.kept_switches()[1],
            Switch {
                at_s: 3.0,
                from: 2,
                to: 0
            }
        );
        // Nothing lost in the end: the gap was repaired, the switches are no gaps.
        assert_eq!((track.expected(), track.lost()), (9, 0));
        let time = log.time_on(t0 + ms(6000));
        assert_eq!(time, [ms(2000), ms(1000), ms(2000 + 1000)]);
    }
}
