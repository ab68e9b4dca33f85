//! Simulcast, sans-IO: what each encoding of a stream carries ([`LayerRates`], on the
//! publisher's side), which encoding each player gets ([`LayerSelector`]) and how its RTP
//! timestamps stay continuous across a switch ([`TimestampMapper`]).
//!
//! A player gets the highest encoding whose bitrate fits its path's estimate (or its cap, or
//! the one it pinned). Going down happens at once, going up only after the estimate has
//! carried the higher encoding (with headroom) for [`UP_AFTER`], so an estimate that wobbles
//! does not make the picture flap. A switch takes effect at the first packet of a keyframe of
//! the new encoding, never mid-frame: until then the player keeps the old one, and a keyframe
//! is asked of the new one (again every [`KEYFRAME_RETRY`] while it does not come). A step up
//! that does not hold (the player comes back down within [`UP_HELD`]) doubles the wait before
//! the next, up to [`MAX_UP_WAIT`]: each switch costs a keyframe. The wait stays short because
//! the estimator is the main guard against a path that only seemed to carry more (a policer's
//! bucket let a probe through): its probes back off and lengthen after such a lift.

use std::time::{Duration, Instant};

use crate::media::MAX_LAYERS;

/// How long a higher encoding must fit before a player moves up to it.
pub const UP_AFTER: Duration = Duration::from_secs(2);
/// A step up that lasts this long held; one undone sooner doubles the wait before the next.
pub const UP_HELD: Duration = Duration::from_secs(10);
/// The longest wait before a step up.
pub const MAX_UP_WAIT: Duration = Duration::from_secs(4);
/// The headroom an estimate needs over an encoding's bitrate to move up to it.
const UP_HEADROOM: f64 = 1.15;
/// How often a keyframe of the encoding a player waits for is asked again.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(1000);
/// The window over which an encoding's bitrate is measured.
pub const RATE_WINDOW: Duration = Duration::from_millis(500);

/// The bitrate of each encoding a publisher sends, measured over [`RATE_WINDOW`]s and smoothed;
/// 0 for an encoding not sent in the last window (the publisher's own congestion control
/// pauses the higher ones when its path is short).
#[derive(Debug, Clone)]
pub struct LayerRates {
    bytes: [u64; MAX_LAYERS],
    window_start: Option<Instant>,
    rates_bps: [u64; MAX_LAYERS],
}

impl Default for LayerRates {
    fn default() -> Self {
        LayerRates {
            bytes: [0; MAX_LAYERS],
            window_start: None,
            rates_bps: [0; MAX_LAYERS],
        }
    }
}

impl LayerRates {
    /// A packet of `len` bytes of encoding `layer` arrived.
    #[inline]
    pub fn record(&mut self, now: Instant, layer: u8, len: usize) {
        self.window_start.get_or_insert(now);
        if let Some(bytes) = self.bytes.get_mut(layer as usize) {
            *bytes += len as u64;
        }
    }

    /// At a timer: closes the window when it is over and returns the new rates.
    pub fn poll(&mut self, now: Instant) -> Option<[u64; MAX_LAYERS]> {
        let start = self.window_start?;
        let elapsed = now.saturating_duration_since(start);
        if elapsed < RATE_WINDOW {
            return None;
        }
        for (rate, bytes) in self.rates_bps.iter_mut().zip(&mut self.bytes) {
            let measured = *bytes * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64;
            // A layer that stopped drops to 0 at once; a running one is smoothed (1/2 new).
            *rate = if measured == 0 || *rate == 0 {
                measured
            } else {
                (*rate + measured) / 2
            };
            *bytes = 0;
        }
        self.window_start = Some(now);
        Some(self.rates_bps)
    }
}

/// A stream's encodings as the players see them: their bitrates (0: not sent now) and their
/// picture sizes in pixels (0: unknown). Encodings rank by size when every one sent has a
/// known size (a publisher ramping up may send a small encoding at a higher bitrate than a
/// larger one for a while), else by bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encodings {
    pub bitrate_bps: [u64; MAX_LAYERS],
    pub pixels: [u64; MAX_LAYERS],
}

impl Encodings {
    /// Encodings of unknown size.
    pub fn with_rates(bitrate_bps: [u64; MAX_LAYERS]) -> Encodings {
        Encodings {
            bitrate_bps,
            pixels: [0; MAX_LAYERS],
        }
    }
}

/// What a player asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerPreference {
    /// Always this encoding, when it is sent.
    pub pinned: Option<Pin>,
    /// Never an encoding above this bitrate.
    pub max_bps: Option<u64>,
}

/// An encoding a player pins: by its place in the publisher's offer (its RID), or by rank
/// among those sent, from their bitrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    Layer(u8),
    Lowest,
    Middle,
    Highest,
}

/// What to do with one packet of an encoding, for one player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerVerdict {
    Forward,
    /// Forward: the player switched to this encoding with it (a keyframe).
    Switched,
    Drop,
}

/// Which encoding one player gets.
#[derive(Debug, Clone)]
pub struct LayerSelector {
    layers: u8,
    preference: LayerPreference,
    /// The encoding being forwarded.
    current: Option<u8>,
    /// The encoding to forward from its next keyframe on.
    target: Option<u8>,
    /// Since when a higher encoding than the target has fitted.
    up_since: Option<Instant>,
    /// How long it must fit before a step up (doubled by steps up that did not hold).
    up_wait: Duration,
    /// When the last step up was taken.
    last_up: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    switches: u64,
}

impl LayerSelector {
    pub fn new(layers: u8) -> LayerSelector {
        LayerSelector {
            layers: layers.clamp(1, MAX_LAYERS as u8),
            preference: LayerPreference::default(),
            current: None,
            target: None,
            up_since: None,
            up_wait: UP_AFTER,
            last_up: None,
            last_keyframe_request: None,
            switches: 0,
        }
    }

    pub fn set_preference(&mut self, preference: LayerPreference) {
        self.preference = preference;
        self.up_since = None;
    }

    pub fn preference(&self) -> LayerPreference {
        self.preference
    }

    /// The encoding forwarded now.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// Switches made so far.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// Chooses the target from the player's path estimate (`None`: unknown, unlimited) and
    /// the encodings' bitrates (0: not sent now). Returns the encoding to ask a keyframe of,
    /// when the player waits for one. Called per feedback interval, not per packet.
    pub fn update(
        &mut self,
        now: Instant,
        estimate_bps: Option<u64>,
        encodings: &Encodings,
    ) -> Option<u8> {
        let layers = self.layers as usize;
        let (rates, pixels) = (
            &encodings.bitrate_bps[..layers],
            &encodings.pixels[..layers],
        );
        let budget = match (estimate_bps, self.preference.max_bps) {
            (Some(e), Some(m)) => Some(e.min(m)),
            (e, m) => e.or(m),
        };
        let wanted = self.choose(now, budget, rates, pixels);
        if wanted != self.target {
            self.target = wanted;
            self.last_keyframe_request = None;
        }
        let waiting = self.target.is_some() && self.target != self.current;
        let due = self
            .last_keyframe_request
            .is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_RETRY);
        if waiting && due {
            self.last_keyframe_request = Some(now);
            return self.target;
        }
        None
    }

    fn choose(
        &mut self,
        now: Instant,
        budget: Option<u64>,
        rates: &[u64],
        pixels: &[u64],
    ) -> Option<u8> {
        let active = |layer: usize| rates.get(layer).is_some_and(|&r| r > 0);
        // Before any rate is known, the encoding last in the offer (by convention the best)
        // when the budget is unknown, else the first.
        if !(0..rates.len()).any(active) {
            return self
                .target
                .or(Some(if budget.is_some() { 0 } else { self.layers - 1 }));
        }
        // Encodings from the cheapest to the dearest.
        let mut order = [0usize; MAX_LAYERS];
        let mut count = 0;
        for layer in (0..rates.len()).filter(|&l| active(l)) {
            order[count] = layer;
            count += 1;
        }
        let order = &mut order[..count];
        if order.iter().all(|&l| pixels[l] > 0) {
            order.sort_by_key(|&l| (pixels[l], rates[l], l));
        } else {
            order.sort_by_key(|&l| (rates[l], l));
        }
        match self.preference.pinned {
            Some(Pin::Layer(pinned)) => {
                // The pinned one, or the nearest sent below (above when none is).
                let pinned = (pinned as usize).min(rates.len() - 1);
                let below = (0..=pinned).rev().find(|&l| active(l));
                let above = (pinned..rates.len()).find(|&l| active(l));
                return below.or(above).map(|l| l as u8);
            }
            Some(Pin::Lowest) => return Some(order[0] as u8),
            Some(Pin::Middle) => return Some(order[(count - 1) / 2] as u8),
            Some(Pin::Highest) => return Some(order[count - 1] as u8),
            None => {}
        }
        let Some(budget) = budget else {
            self.up_since = None;
            return order.last().map(|&l| l as u8);
        };
        let fitting = order.iter().rposition(|&l| rates[l] <= budget).unwrap_or(0);
        let rank_of =
            |layer: Option<u8>| layer.and_then(|t| order.iter().position(|&l| l == t as usize));
        let Some(rank) = rank_of(self.target) else {
            self.up_since = None;
            return Some(order[fitting] as u8);
        };
        if fitting < rank {
            self.up_since = None;
            if self
                .last_up
                .is_some_and(|at| now.saturating_duration_since(at) < UP_HELD)
            {
                self.up_wait = (self.up_wait * 2).min(MAX_UP_WAIT);
            }
            return Some(order[fitting] as u8); // down at once
        }
        if self
            .last_up
            .is_some_and(|at| now.saturating_duration_since(at) >= UP_HELD * 3)
        {
            self.up_wait = UP_AFTER; // the path has held for a while: trust it again
        }
        // Up one step, once it has fitted with headroom for a while.
        let next = rank + 1;
        let fits_up = order
            .get(next)
            .is_some_and(|&l| rates[l] as f64 * UP_HEADROOM <= budget as f64);
        if !fits_up {
            self.up_since = None;
            return self.target;
        }
        let since = *self.up_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.up_wait {
            self.up_since = None;
            self.last_up = Some(now);
            return Some(order[next] as u8);
        }
        self.target
    }

    /// What the estimate must reach for the next encoding up (for probing), if there is one.
    pub fn next_up_bps(&self, encodings: &Encodings) -> Option<u64> {
        if self.preference.pinned.is_some() {
            return None;
        }
        let rates = &encodings.bitrate_bps;
        let current = rates.get(self.target? as usize).copied()?;
        rates[..self.layers as usize]
            .iter()
            .filter(|&&r| r > current)
            .min()
            .map(|&r| (r as f64 * UP_HEADROOM) as u64)
            .filter(|&need| self.preference.max_bps.is_none_or(|m| need <= m))
    }

    /// Per packet of encoding `layer` (`keyframe`: it starts a keyframe): forward it or not.
    #[inline]
    pub fn on_packet(&mut self, layer: u8, keyframe: bool) -> LayerVerdict {
        if keyframe && Some(layer) == self.target && self.current != self.target {
            self.current = self.target;
            self.switches += 1;
            return LayerVerdict::Switched;
        }
        if Some(layer) == self.current {
            LayerVerdict::Forward
        } else {
            LayerVerdict::Drop
        }
    }
}

/// A player's RTP timestamps, continuous across encodings: each encoding has its own random
/// timestamp base, so a switch recomputes the offset to continue from the last timestamp sent,
/// advanced by the wall time since it.
#[derive(Debug, Clone)]
pub struct TimestampMapper {
    clock_rate: u32,
    source_ssrc: Option<u32>,
    offset: u32,
    last: Option<(u32, Instant)>,
}

impl TimestampMapper {
    pub fn new(clock_rate: u32) -> TimestampMapper {
        TimestampMapper {
            clock_rate: clock_rate.max(1),
            source_ssrc: None,
            offset: 0,
            last: None,
        }
    }

    /// The player's timestamp for the publisher's `timestamp` of `ssrc`, arrived at `now`.
    #[inline]
    pub fn map(&mut self, now: Instant, ssrc: u32, timestamp: u32) -> u32 {
        if self.source_ssrc != Some(ssrc) {
            if let Some((last, at)) = self.last {
                let elapsed = now.saturating_duration_since(at);
                let ticks = (elapsed.as_micros() as u64 * u64::from(self.clock_rate) / 1_000_000)
                    .max(1) as u32;
                self.offset = last.wrapping_add(ticks).wrapping_sub(timestamp);
            }
            self.source_ssrc = Some(ssrc);
        }
        let out = timestamp.wrapping_add(self.offset);
        if self
            .last
            .is_none_or(|(last, _)| (out.wrapping_sub(last) as i32) > 0)
        {
            self.last = Some((out, now));
        }
        out
    }

    /// The offset for the source `ssrc` (a sender report's RTP time), if it is the current.
    pub fn offset_for(&self, ssrc: u32) -> Option<u32> {
        (self.source_ssrc == Some(ssrc)).then_some(self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rates_are_measured_per_window_and_a_stopped_layer_is_zero_at_once() {
        let t0 = Instant::now();
        let mut rates = LayerRates::default();
        for i in 0..50 {
            let at = t0 + i * 10 * MS;
            rates.record(at, 0, 125); // 100 kbit/s
            rates.record(at, 2, 1250); // 1 Mbit/s
        }
        assert_eq!(rates.poll(t0 + 400 * MS), None, "the window is not over");
        let r = rates.poll(t0 + 500 * MS).unwrap();
        assert_eq!(r, [100_000, 0, 1_000_000]);
        for i in 0..50 {
            rates.record(t0 + 500 * MS + i * 10 * MS, 0, 250);
        }
        let r = rates.poll(t0 + 1000 * MS).unwrap();
        assert_eq!(r[0], 150_000, "smoothed");
        assert_eq!(r[2], 0, "stopped");
    }

    #[test]
    fn the_best_layer_that_fits_is_chosen_and_down_is_at_once_up_after_a_while() {
        let t0 = Instant::now();
        let rates = Encodings::with_rates([150_000, 500_000, 1_500_000]);
        let mut s = LayerSelector::new(3);
        assert_eq!(s.update(t0, Some(2_000_000), &rates), Some(2));
        assert_eq!(s.target(), Some(2));
        // The estimate falls: down at once.
        s.update(t0 + 100 * MS, Some(600_000), &rates);
        assert_eq!(s.target(), Some(1));
        s.update(t0 + 200 * MS, Some(100_000), &rates);
        assert_eq!(s.target(), Some(0), "the lowest when nothing fits");
        // It rises: up one step only after UP_AFTER of fitting with headroom.
        s.update(t0 + 300 * MS, Some(2_000_000), &rates);
        assert_eq!(s.target(), Some(0));
        s.update(t0 + 300 * MS + UP_AFTER, Some(2_000_000), &rates);
        assert_eq!(s.target(), Some(1));
        // Without headroom (1.6 Mbit/s < 1.5 × 1.15) it stays.
        for i in 0..10 {
            s.update(t0 + 3000 * MS + i * 1000 * MS, Some(1_600_000), &rates);
        }
        assert_eq!(s.target(), Some(1));
        // A wobble below resets the wait.
        let t1 = t0 + 20_000 * MS;
        s.update(t1, Some(2_000_000), &rates);
        s.update(t1 + 1000 * MS, Some(1_000_000), &rates);
        s.update(t1 + 2500 * MS, Some(2_000_000), &rates);
        assert_eq!(s.target(), Some(1));
        s.update(t1 + 4500 * MS, Some(2_000_000), &rates);
        assert_eq!(s.target(), Some(2));
    }

    #[test]
    fn steps_up_that_do_not_hold_make_the_next_wait_longer() {
        let t0 = Instant::now();
        let rates = Encodings::with_rates([150_000, 500_000, 1_500_000]);
        let mut s = LayerSelector::new(3);
        s.update(t0, Some(300_000), &rates);
        assert_eq!(s.target(), Some(0));
        // A probe lifts the estimate: up after 2 s; the path did not carry it: down at once.
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            let start = at;
            while s.target() == Some(0) {
                at += 100 * MS;
                s.update(at, Some(700_000), &rates);
            }
            waits.push((at - start).as_secs());
            at += 1000 * MS;
            s.update(at, Some(300_000), &rates);
            assert_eq!(s.target(), Some(0));
        }
        assert_eq!(waits, [2, 4, 4, 4, 4]);
        // Held for long enough: back to the short wait.
        s.update(at + 100 * MS, Some(700_000), &rates);
        let up = at + 100 * MS + MAX_UP_WAIT;
        s.update(up, Some(700_000), &rates);
        assert_eq!(s.target(), Some(1));
        s.update(up + 31_000 * MS, Some(2_000_000), &rates);
        s.update(up + 33_000 * MS, Some(2_000_000), &rates);
        assert_eq!(s.target(), Some(2), "after 30 s held, 2 s is enough again");
    }

    #[test]
    fn a_switch_waits_for_a_keyframe_of_the_target_which_is_asked_again_until_it_comes() {
        let t0 = Instant::now();
        let rates = Encodings::with_rates([150_000, 500_000, 1_500_000]);
        let mut s = LayerSelector::new(3);
        assert_eq!(s.update(t0, Some(600_000), &rates), Some(1));
        assert_eq!(s.on_packet(1, false), LayerVerdict::Drop, "not mid-frame");
        assert_eq!(s.on_packet(0, true), LayerVerdict::Drop, "not the target");
        assert_eq!(s.update(t0 + 500 * MS, Some(600_000), &rates), None);
        assert_eq!(s.update(t0 + 1000 * MS, Some(600_000), &rates), Some(1));
        assert_eq!(s.on_packet(1, true), LayerVerdict::Switched);
        assert_eq!(s.on_packet(1, false), LayerVerdict::Forward);
        assert_eq!(s.update(t0 + 3000 * MS, Some(600_000), &rates), None);
        // Down to 0: layer 1 keeps flowing until 0's keyframe.
        assert_eq!(s.update(t0 + 3100 * MS, Some(200_000), &rates), Some(0));
        assert_eq!(s.on_packet(1, false), LayerVerdict::Forward);
        assert_eq!(s.on_packet(0, false), LayerVerdict::Drop);
        assert_eq!(s.on_packet(0, true), LayerVerdict::Switched);
        assert_eq!(s.on_packet(1, false), LayerVerdict::Drop);
        assert_eq!(s.switches(), 2);
    }

    #[test]
    fn a_pinned_or_capped_player_stays_where_it_asked() {
        let t0 = Instant::now();
        let rates = Encodings::with_rates([150_000, 500_000, 1_500_000]);
        let mut s = LayerSelector::new(3);
        s.set_preference(LayerPreference {
            pinned: Some(Pin::Layer(0)),
            max_bps: None,
        });
        s.update(t0, Some(10_000_000), &rates);
        assert_eq!(s.target(), Some(0));
        assert_eq!(
            s.next_up_bps(&rates),
            None,
            "a pinned player does not probe"
        );
        // The pinned layer is not sent: the nearest below, else above.
        s.set_preference(LayerPreference {
            pinned: Some(Pin::Layer(1)),
            max_bps: None,
        });
        s.update(
            t0,
            Some(10_000_000),
            &Encodings::with_rates([150_000, 0, 1_500_000]),
        );
        assert_eq!(s.target(), Some(0));
        s.update(
            t0,
            Some(10_000_000),
            &Encodings::with_rates([0, 0, 1_500_000]),
        );
        assert_eq!(s.target(), Some(2));
        // By rank, from the bitrates whatever the offer's order.
        for (pin, layer) in [(Pin::Lowest, 2), (Pin::Middle, 1), (Pin::Highest, 0)] {
            s.set_preference(LayerPreference {
                pinned: Some(pin),
                max_bps: None,
            });
            s.update(
                t0,
                Some(100_000),
                &Encodings::with_rates([1_500_000, 500_000, 150_000]),
            );
            assert_eq!(s.target(), Some(layer), "{pin:?}");
        }

        let mut capped = LayerSelector::new(3);
        capped.set_preference(LayerPreference {
            pinned: None,
            max_bps: Some(800_000),
        });
        capped.update(t0, None, &rates);
        assert_eq!(
            capped.target(),
            Some(1),
            "a cap is a budget without an estimate"
        );
        assert_eq!(capped.next_up_bps(&rates), None, "the next is over the cap");
        let mut free = LayerSelector::new(3);
        free.update(t0, None, &rates);
        assert_eq!(free.target(), Some(2), "no estimate, no cap: the best");
        free.update(t0, Some(200_000), &rates);
        assert_eq!(free.next_up_bps(&rates), Some(575_000));
    }

    #[test]
    fn layers_are_ranked_by_bitrate_not_by_their_place_in_the_offer() {
        let t0 = Instant::now();
        // An offer listing the best first.
        let rates = Encodings::with_rates([1_500_000, 500_000, 150_000]);
        let mut s = LayerSelector::new(3);
        s.update(t0, Some(600_000), &rates);
        assert_eq!(s.target(), Some(1));
        s.update(t0, Some(100_000), &rates);
        assert_eq!(s.target(), Some(2));
    }

    #[test]
    fn sizes_rank_the_encodings_when_known() {
        let t0 = Instant::now();
        // Ramping up: the small encoding briefly costs more than the middle one.
        let encodings = Encodings {
            bitrate_bps: [376_000, 247_000, 522_000],
            pixels: [320 * 180, 640 * 360, 1280 * 720],
        };
        let mut s = LayerSelector::new(3);
        s.set_preference(LayerPreference {
            pinned: Some(Pin::Lowest),
            max_bps: None,
        });
        s.update(t0, None, &encodings);
        assert_eq!(s.target(), Some(0));
        let by_rate = Encodings::with_rates(encodings.bitrate_bps);
        s.update(t0, None, &by_rate);
        assert_eq!(s.target(), Some(1), "without sizes, by bitrate");
    }

    #[test]
    fn timestamps_continue_across_a_switch() {
        let t0 = Instant::now();
        let mut m = TimestampMapper::new(90_000);
        assert_eq!(
            m.map(t0, 1, 1000),
            1000,
            "the first source passes unchanged"
        );
        assert_eq!(m.map(t0 + 33 * MS, 1, 3970), 3970);
        // Another encoding, its own base: continues 33 ms (2970 ticks) after the last.
        let out = m.map(t0 + 66 * MS, 2, 500_000);
        assert_eq!(out, 3970 + 2970);
        assert_eq!(m.map(t0 + 99 * MS, 2, 502_970), 3970 + 2 * 2970);
        assert_eq!(
            m.offset_for(2),
            Some((3970u32 + 2970).wrapping_sub(500_000))
        );
        assert_eq!(m.offset_for(1), None);
    }
}
