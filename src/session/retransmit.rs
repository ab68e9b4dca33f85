//! Answering players' NACKs (RFC 4585 §6.2.1) from what was already forwarded:
//!
//! - [`RetransmitWindow`]: per stream, the last packets by sequence number, holding the
//!   caller's handle to each (an `Arc` of the pooled packet: no copies). A fixed ring indexed
//!   by `sequence & mask`, so insert and lookup are O(1) and never allocate; a lookup misses
//!   when the slot was overwritten, is older than `max_age`, or was never stored.
//! - [`RetransmitBudget`]: per player, a token bucket in bytes, so a player on a terrible link
//!   cannot make the worker spend its time retransmitting to it alone.
//! - [`ResendGuard`]: per player, refuses to send the same sequence number again within a
//!   short interval (about an RTT): clients repeat NACKs, sometimes several in one compound
//!   packet, and a retransmission already in flight answers all of them.
//!
//! Keyed by whatever sequence numbers the caller chooses (the publisher's, so one window serves
//! every player; a player's NACK is mapped back through its sequence offset first).

use std::time::{Duration, Instant};

/// Sequence numbers are 16 bits; a window over half of them could not tell old from new.
const MAX_CAPACITY: usize = 1 << 15;

#[derive(Debug, Clone)]
struct Stored<T> {
    sequence: u16,
    stored_at: Instant,
    item: T,
}

/// The recent packets of one stream, for retransmission.
#[derive(Debug, Clone)]
pub struct RetransmitWindow<T> {
    slots: Box<[Option<Stored<T>>]>,
    mask: usize,
    max_age: Duration,
    highest: Option<u16>,
}

impl<T> RetransmitWindow<T> {
    /// `capacity` is rounded up to a power of two (at most 32768) so that `sequence & mask`
    /// stays consistent across the wrap at 65535. Size it for `max_age` at the stream's peak
    /// packet rate (1024 holds 1 s of a 10 Mbit/s stream of 1200-byte packets).
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        let capacity = capacity.clamp(1, MAX_CAPACITY).next_power_of_two();
        RetransmitWindow {
            slots: (0..capacity).map(|_| None).collect(),
            mask: capacity - 1,
            max_age,
            highest: None,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Stores a forwarded packet, replacing (and so releasing) whatever held its slot. A packet
    /// too far below the highest is not stored: its slot belongs to a newer one.
    pub fn insert(&mut self, sequence: u16, now: Instant, item: T) {
        match self.highest {
            Some(h) if (sequence.wrapping_sub(h) as i16) <= 0 => {
                if h.wrapping_sub(sequence) as usize > self.mask {
                    return;
                }
            }
            _ => self.highest = Some(sequence),
        }
        self.slots[sequence as usize & self.mask] = Some(Stored {
            sequence,
            stored_at: now,
            item,
        });
    }

    /// The packet stored under `sequence`, unless overwritten, expired or never stored.
    pub fn get(&self, sequence: u16, now: Instant) -> Option<&T> {
        let highest = self.highest?;
        // Beyond the window below the highest (or above it): a number from another lap of
        // the 16-bit space, whatever its slot holds.
        if highest.wrapping_sub(sequence) as usize > self.mask {
            return None;
        }
        let stored = self.slots[sequence as usize & self.mask].as_ref()?;
        let fresh = now.saturating_duration_since(stored.stored_at) <= self.max_age;
        (stored.sequence == sequence && fresh).then_some(&stored.item)
    }

    /// Whether `sequence` is within the window's span but was never stored: the stream has not
    /// had it (lost on the way in, perhaps being repaired), as opposed to a packet that was
    /// stored and has since expired or been overwritten.
    pub fn never_had(&self, sequence: u16) -> bool {
        let Some(highest) = self.highest else {
            return true;
        };
        let within = highest.wrapping_sub(sequence) as usize <= self.mask;
        within
            && self.slots[sequence as usize & self.mask]
                .as_ref()
                .is_none_or(|s| s.sequence != sequence)
    }

    /// Drops the handles older than `max_age`, so that a stream gone quiet does not hold pooled
    /// packets forever. O(capacity): call it at a low rate (once a second). Returns how many.
    pub fn release_expired(&mut self, now: Instant) -> usize {
        let mut released = 0;
        for slot in self.slots.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|s| now.saturating_duration_since(s.stored_at) > self.max_age)
            {
                *slot = None;
                released += 1;
            }
        }
        released
    }

    /// Drops every handle (the stream ended or restarted).
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|slot| *slot = None);
        self.highest = None;
    }
}

/// A token bucket in bytes: a steady `bytes_per_second` with bursts up to `burst_bytes`.
#[derive(Debug, Clone)]
pub struct RetransmitBudget {
    bytes_per_second: u64,
    burst_bytes: u64,
    /// Tokens in byte-nanoseconds per second (bytes × 10^9), so refills of a few
    /// microseconds are not rounded away.
    tokens: u128,
    last_refill: Option<Instant>,
    refused: u64,
}

const NANOS_PER_SECOND: u128 = 1_000_000_000;

impl RetransmitBudget {
    /// Starts full.
    pub fn new(bytes_per_second: u64, burst_bytes: u64) -> Self {
        RetransmitBudget {
            bytes_per_second,
            burst_bytes,
            tokens: u128::from(burst_bytes) * NANOS_PER_SECOND,
            last_refill: None,
            refused: 0,
        }
    }

    /// Takes `bytes` from the budget if it holds them; a refusal is counted.
    pub fn try_spend(&mut self, now: Instant, bytes: usize) -> bool {
        self.refill(now);
        let cost = bytes as u128 * NANOS_PER_SECOND;
        if cost <= self.tokens {
            self.tokens -= cost;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// Retransmissions refused for want of budget.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Changes the rate (when the player's estimated bandwidth changes), keeping the tokens.
    pub fn set_rate(&mut self, now: Instant, bytes_per_second: u64, burst_bytes: u64) {
        self.refill(now);
        self.bytes_per_second = bytes_per_second;
        self.burst_bytes = burst_bytes;
        self.tokens = self.tokens.min(u128::from(burst_bytes) * NANOS_PER_SECOND);
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last_refill {
            let elapsed = now.saturating_duration_since(last).as_nanos();
            let full = u128::from(self.burst_bytes) * NANOS_PER_SECOND;
            let added = elapsed.saturating_mul(u128::from(self.bytes_per_second));
            self.tokens = self.tokens.saturating_add(added).min(full);
        }
        if self.last_refill.is_none_or(|last| now > last) {
            self.last_refill = Some(now);
        }
    }
}

/// Remembers when each recent sequence number was last resent to one player.
#[derive(Debug, Clone)]
pub struct ResendGuard {
    slots: Box<[Option<(u16, Instant)>]>,
    mask: usize,
    min_interval: Duration,
    suppressed: u64,
}

impl ResendGuard {
    /// `slots` rounded up to a power of two: how many distinct recent numbers it remembers (a
    /// number whose slot was reused since is allowed again, which only costs a duplicate).
    pub fn new(slots: usize, min_interval: Duration) -> Self {
        let slots = slots.clamp(1, MAX_CAPACITY).next_power_of_two();
        ResendGuard {
            slots: vec![None; slots].into_boxed_slice(),
            mask: slots - 1,
            min_interval,
            suppressed: 0,
        }
    }

    /// Follows the player's RTT: a NACK repeated within it crossed the retransmission.
    pub fn set_min_interval(&mut self, min_interval: Duration) {
        self.min_interval = min_interval;
    }

    /// Whether to resend `sequence` now; if so, it is recorded as resent.
    pub fn allow(&mut self, sequence: u16, now: Instant) -> bool {
        let slot = &mut self.slots[sequence as usize & self.mask];
        if let Some((resent, at)) = *slot
            && resent == sequence
            && now.saturating_duration_since(at) < self.min_interval
        {
            self.suppressed += 1;
            return false;
        }
        *slot = Some((sequence, now));
        true
    }

    /// Resends refused as repeats.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_number_never_stored_is_told_from_one_that_expired() {
        let t0 = Instant::now();
        let mut window = RetransmitWindow::new(8, Duration::from_secs(1));
        for seq in [10u16, 11, 13] {
            window.insert(seq, t0, seq);
        }
        assert!(window.never_had(12), "lost on the way in");
        assert!(!window.never_had(11));
        // Overwritten by a newer lap: gone, not never had.
        for seq in 14u16..=19 {
            window.insert(seq, t0, seq);
        }
        assert!(!window.never_had(10), "beyond the span");
    }

    #[test]
    fn window_hits_and_misses() {
        let t0 = Instant::now();
        let mut w = RetransmitWindow::new(1000, Duration::from_secs(1));
        assert_eq!(w.capacity(), 1024);
        assert_eq!(w.get(5, t0), None, "empty");
        for seq in 100..200u16 {
            w.insert(seq, t0, seq as u32 * 10);
        }
        assert_eq!(w.get(150, t0 + ms(10)), Some(&1500));
        assert_eq!(w.get(99, t0), None, "never stored");
        assert_eq!(w.get(200, t0), None, "not yet stored");
        assert_eq!(
            w.get(100 + 1024, t0),
            None,
            "ahead of the highest: other lap"
        );
        w.insert(150 + 1024, t0, 7);
        assert_eq!(w.get(150, t0), None, "overwritten");
        assert_eq!(w.get(150 + 1024, t0), Some(&7));
        assert_eq!(w.get(151, t0), Some(&1510));
    }

    #[test]
    fn window_entries_expire() {
        let t0 = Instant::now();
        let mut w = RetransmitWindow::new(64, ms(1000));
        w.insert(1, t0, "a");
        w.insert(2, t0 + ms(500), "b");
        assert_eq!(w.get(1, t0 + ms(1000)), Some(&"a"));
        assert_eq!(w.get(1, t0 + ms(1001)), None);
        assert_eq!(w.get(2, t0 + ms(1001)), Some(&"b"));
    }

    #[test]
    fn window_wraps_around_sequence_zero() {
        let t0 = Instant::now();
        let mut w = RetransmitWindow::new(16, Duration::from_secs(1));
        for i in 0..20u16 {
            w.insert(65530u16.wrapping_add(i), t0, i);
        }
        // 65530 + 19 = 13: the window holds 65534..=13.
        assert_eq!(w.get(13, t0), Some(&19));
        assert_eq!(w.get(0, t0), Some(&6));
        assert_eq!(w.get(65535, t0), Some(&5));
        assert_eq!(w.get(65534, t0), Some(&4));
        assert_eq!(w.get(65533, t0), None, "overwritten by 13");
        w.insert(65533, t0, 99); // too late: it would overwrite 13
        assert_eq!(w.get(13, t0), Some(&19));
        w.insert(5, t0, 55); // late but within the window: stored, the highest stays
        assert_eq!((w.get(5, t0), w.get(13, t0)), (Some(&55), Some(&19)));
        assert_eq!(
            w.get(65533, t0),
            None,
            "too far below the highest to be told apart"
        );
    }

    #[test]
    fn window_releases_expired_handles() {
        let t0 = Instant::now();
        let packet = Arc::new([0u8; 1200]);
        let mut w = RetransmitWindow::new(8, ms(100));
        w.insert(1, t0, packet.clone());
        w.insert(2, t0 + ms(80), packet.clone());
        assert_eq!(Arc::strong_count(&packet), 3);
        assert_eq!(w.release_expired(t0 + ms(150)), 1);
        assert_eq!(Arc::strong_count(&packet), 2);
        w.clear();
        assert_eq!(Arc::strong_count(&packet), 1);
        assert_eq!(w.get(2, t0 + ms(80)), None);
    }

    #[test]
    fn budget_is_exhausted_then_refilled_by_time() {
        let t0 = Instant::now();
        let mut b = RetransmitBudget::new(10_000, 3_000); // 10 kB/s, 3 kB burst
        assert!(b.try_spend(t0, 1_200));
        assert!(b.try_spend(t0, 1_200));
        assert!(!b.try_spend(t0, 1_200), "600 bytes left");
        assert!(b.try_spend(t0, 600));
        assert_eq!(b.refused(), 1);
        assert!(!b.try_spend(t0 + ms(119), 1_200), "1190 bytes refilled");
        assert!(b.try_spend(t0 + ms(120), 1_200));
        // A long pause refills only up to the burst.
        assert!(b.try_spend(t0 + Duration::from_secs(60), 3_000));
        assert!(!b.try_spend(t0 + Duration::from_secs(60), 1));
        assert_eq!(b.refused(), 3);
        // Time going backwards (two clocks) neither refills nor panics.
        assert!(!b.try_spend(t0, 1));
    }

    #[test]
    fn budget_rate_change_keeps_tokens_within_the_new_burst() {
        let t0 = Instant::now();
        let mut b = RetransmitBudget::new(1_000, 10_000);
        b.set_rate(t0, 100_000, 2_000);
        assert!(b.try_spend(t0, 2_000));
        assert!(!b.try_spend(t0, 1));
        assert!(b.try_spend(t0 + ms(10), 1_000));
    }

    #[test]
    fn guard_refuses_repeats_within_the_interval() {
        let t0 = Instant::now();
        let mut g = ResendGuard::new(128, ms(20));
        assert!(g.allow(7, t0));
        assert!(!g.allow(7, t0 + ms(5)), "repeated NACK");
        assert!(g.allow(8, t0 + ms(5)));
        assert!(g.allow(7, t0 + ms(20)));
        assert!(
            g.allow(7 + 128, t0 + ms(21)),
            "another number in the same slot"
        );
        assert!(
            g.allow(7, t0 + ms(22)),
            "forgotten when its slot was reused"
        );
        g.set_min_interval(ms(50));
        assert!(!g.allow(7, t0 + ms(60)));
        assert_eq!(g.suppressed(), 2);
    }
}
