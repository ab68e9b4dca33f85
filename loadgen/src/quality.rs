//! What a player measures of the media it gets, sans-IO (the caller passes `now`):
//!
//! - [`Track`]: which of a track's packets arrived, by the stamp's 64-bit sequence, so that a
//!   retransmission of a packet already received neither hides a loss nor counts twice; what
//!   stays missing is the residual loss after repair.
//! - [`Frames`]: video frames (packets sharing an RTP timestamp, the marker bit on the last)
//!   that were not complete within [`FREEZE_AFTER`] of their first packet's arrival: what a
//!   viewer sees as a freeze.
//!
//! Both are fixed-size: a player's handler feeds them every packet without allocating.

use std::time::{Duration, Instant};

/// How far below the highest sequence a late packet can still be told new from duplicate.
/// 4096 packets are seconds of video at any rate loadgen sends, and repairs come within one.
const WINDOW: u64 = 4096;

/// What an arriving packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Not seen before (in order, or filling a gap: `late`).
    New { late: bool },
    /// Seen before: a retransmission of a packet that had arrived, or a network duplicate.
    Duplicate,
    /// Before the first packet this player saw, or too far below the highest to tell.
    Ignored,
}

/// One track's packets, by the stamp's sequence number.
#[derive(Debug, Clone)]
pub struct Track {
    first: Option<u64>,
    highest: u64,
    /// Distinct packets received from `first` to `highest`.
    received: u64,
    duplicates: u64,
    late: u64,
    /// Bit `s % WINDOW` is set when `s` (within WINDOW of `highest`) arrived.
    seen: [u64; (WINDOW / 64) as usize],
}

impl Default for Track {
    fn default() -> Self {
        Track {
            first: None,
            highest: 0,
            received: 0,
            duplicates: 0,
            late: 0,
            seen: [0; (WINDOW / 64) as usize],
        }
    }
}

impl Track {
    fn bit(sequence: u64) -> (usize, u64) {
        let at = sequence % WINDOW;
        ((at / 64) as usize, 1 << (at % 64))
    }

    fn is_seen(&self, sequence: u64) -> bool {
        let (word, mask) = Self::bit(sequence);
        self.seen[word] & mask != 0
    }

    fn set(&mut self, sequence: u64, on: bool) {
        let (word, mask) = Self::bit(sequence);
        if on {
            self.seen[word] |= mask;
        } else {
            self.seen[word] &= !mask;
        }
    }

    pub fn on_packet(&mut self, sequence: u64) -> Arrival {
        let Some(first) = self.first else {
            self.first = Some(sequence);
            self.highest = sequence;
            self.set(sequence, true);
            self.received = 1;
            return Arrival::New { late: false };
        };
        if sequence > self.highest {
            if sequence - self.highest >= WINDOW {
                self.seen = [0; (WINDOW / 64) as usize];
            } else {
                // The numbers skipped are not seen yet: clear what their bits held a lap ago.
                for s in self.highest + 1..sequence {
                    self.set(s, false);
                }
            }
            self.highest = sequence;
            self.set(sequence, true);
            self.received += 1;
            return Arrival::New { late: false };
        }
        if sequence < first || self.highest - sequence >= WINDOW {
            return Arrival::Ignored;
        }
        if self.is_seen(sequence) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.set(sequence, true);
        self.received += 1;
        self.late += 1;
        Arrival::New { late: true }
    }

    /// Packets from the first to the highest this player saw.
    pub fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.highest - f + 1)
    }

    /// Distinct packets received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Never received (so far): expected less received.
    pub fn lost(&self) -> u64 {
        self.expected() - self.received
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// New packets that arrived below the highest: reordered, or repaired.
    pub fn late(&self) -> u64 {
        self.late
    }
}

/// A frame not complete this long after its first packet arrived counts as frozen.
pub const FREEZE_AFTER: Duration = Duration::from_millis(200);
/// Frames tracked at once; the oldest open one makes room (two seconds at 30 fps).
const OPEN_FRAMES: usize = 64;
/// An open frame is forgotten this long after its first packet: repairs come within a second.
const KEEP_OPEN: Duration = Duration::from_secs(2);
/// Open frames are swept for age at most this often.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
struct OpenFrame {
    timestamp: u32,
    first_arrival: Instant,
    received: u32,
    /// Known once the marker packet arrived: its index in the frame, plus one.
    packets: Option<u32>,
    /// Already counted as frozen (it may still complete, late).
    frozen: bool,
}

/// The freeze figure of one player's video.
#[derive(Debug, Clone)]
pub struct Frames {
    open: [Option<OpenFrame>; OPEN_FRAMES],
    /// Frames older than this timestamp are not counted: before the first frame this player
    /// saw begin, or closed already (a late packet of a forgotten frame is not a new frame).
    floor: Option<u32>,
    last_sweep: Option<Instant>,
    complete: u64,
    frozen: u64,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            open: [None; OPEN_FRAMES],
            floor: None,
            last_sweep: None,
            complete: 0,
            frozen: 0,
        }
    }
}

/// `a` is before `b` in RTP timestamp order (modulo 2^32).
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Frames {
    /// Records a distinct video packet (not a duplicate): its RTP timestamp, marker bit and
    /// index within its frame.
    pub fn on_packet(&mut self, now: Instant, timestamp: u32, marker: bool, index: u16) {
        if self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            self.sweep(now);
        }
        let Some(floor) = self.floor else {
            // A player joins mid-stream: count from the first frame it sees begin.
            if index == 0 {
                self.floor = Some(timestamp);
                self.open_frame(now, timestamp, marker, index);
            }
            return;
        };
        if before(timestamp, floor) {
            return;
        }
        match self
            .open
            .iter()
            .position(|f| f.is_some_and(|f| f.timestamp == timestamp))
        {
            Some(at) => self.add(at, now, marker, index),
            None => self.open_frame(now, timestamp, marker, index),
        }
    }

    fn open_frame(&mut self, now: Instant, timestamp: u32, marker: bool, index: u16) {
        let at = match self.open.iter().position(Option::is_none) {
            Some(at) => at,
            None => {
                let (at, oldest) = self
                    .open
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| f.map(|f| (i, f)))
                    .min_by_key(|(_, f)| f.first_arrival)
                    .expect("the ring is full");
                self.close(at, oldest);
                at
            }
        };
        self.open[at] = Some(OpenFrame {
            timestamp,
            first_arrival: now,
            received: 0,
            packets: None,
            frozen: false,
        });
        self.add(at, now, marker, index);
    }

    fn add(&mut self, at: usize, now: Instant, marker: bool, index: u16) {
        let Some(frame) = self.open[at].as_mut() else {
            return;
        };
        frame.received += 1;
        if marker {
            frame.packets = Some(u32::from(index) + 1);
        }
        if frame.packets == Some(frame.received) {
            if !frame.frozen {
                if now.saturating_duration_since(frame.first_arrival) <= FREEZE_AFTER {
                    self.complete += 1;
                } else {
                    self.frozen += 1;
                }
            }
            self.open[at] = None;
        }
    }

    /// Forgets an open frame for good: counted frozen (if not yet), and its late packets
    /// ignored from now on.
    fn close(&mut self, at: usize, frame: OpenFrame) {
        if !frame.frozen {
            self.frozen += 1;
        }
        self.open[at] = None;
        let after = frame.timestamp.wrapping_add(1);
        if self.floor.is_none_or(|f| before(f, after)) {
            self.floor = Some(after);
        }
    }

    /// Counts open frames past [`FREEZE_AFTER`] as frozen, and forgets those past
    /// [`KEEP_OPEN`].
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        for at in 0..OPEN_FRAMES {
            let Some(frame) = self.open[at].as_mut() else {
                continue;
            };
            let age = now.saturating_duration_since(frame.first_arrival);
            if !frame.frozen && age > FREEZE_AFTER {
                frame.frozen = true;
                self.frozen += 1;
            }
            if age > KEEP_OPEN {
                let frame = *frame;
                self.close(at, frame);
            }
        }
    }

    /// At the end of the run: open frames past [`FREEZE_AFTER`] count as frozen; younger ones
    /// were still in flight and count neither way.
    pub fn finish(&mut self, now: Instant) {
        self.sweep(now);
    }

    /// Frames counted: complete in time, or frozen.
    pub fn frames(&self) -> u64 {
        self.complete + self.frozen
    }

    pub fn frozen(&self) -> u64 {
        self.frozen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_track_counts_each_packet_once_and_what_never_came_as_lost() {
        let mut t = Track::default();
        assert_eq!(t.on_packet(100), Arrival::New { late: false });
        assert_eq!(t.on_packet(101), Arrival::New { late: false });
        assert_eq!(t.on_packet(104), Arrival::New { late: false });
        assert_eq!((t.expected(), t.received(), t.lost()), (5, 3, 2));
        // 102 repaired; then a second retransmission of it, and one of 104.
        assert_eq!(t.on_packet(102), Arrival::New { late: true });
        assert_eq!(t.on_packet(102), Arrival::Duplicate);
        assert_eq!(t.on_packet(104), Arrival::Duplicate);
        assert_eq!((t.lost(), t.duplicates(), t.late()), (1, 2, 1));
        assert_eq!(t.on_packet(99), Arrival::Ignored, "before the first");
    }

    #[test]
    fn a_track_forgets_what_fell_out_of_its_window() {
        let mut t = Track::default();
        t.on_packet(0);
        t.on_packet(2);
        // A lap of the bitmap later, bit 1 must not read as "1 seen" for 4097.
        t.on_packet(WINDOW + 2);
        assert_eq!(t.on_packet(WINDOW + 1), Arrival::New { late: true });
        assert_eq!(t.on_packet(1), Arrival::Ignored, "too old to tell");
        assert_eq!(t.on_packet(3 * WINDOW), Arrival::New { late: false });
        assert_eq!(t.on_packet(3 * WINDOW - 5), Arrival::New { late: true });
        assert_eq!(t.lost(), 3 * WINDOW + 1 - 6);
    }

    /// Feeds a frame of `n` packets (marker on the last), `skip` left out, `gap` apart.
    fn frame(f: &mut Frames, at: Instant, ts: u32, n: u16, skip: &[u16], gap: Duration) {
        for i in 0..n {
            if !skip.contains(&i) {
                f.on_packet(at + gap * i as u32, ts, i == n - 1, i);
            }
        }
    }

    #[test]
    fn frames_complete_within_200_ms_are_fine_and_later_ones_frozen() {
        let t0 = Instant::now();
        let mut f = Frames::default();
        // Joined mid-frame: the tail of frame 0 is not counted.
        f.on_packet(t0, 0, true, 3);
        frame(&mut f, t0, 3000, 4, &[], ms(1));
        // Frame 6000 loses packet 1, repaired 150 ms later: in time.
        frame(&mut f, t0 + ms(33), 6000, 4, &[1], ms(1));
        // Frame 9000 loses its marker packet, repaired 250 ms later: frozen.
        frame(&mut f, t0 + ms(66), 9000, 4, &[3], ms(1));
        f.on_packet(t0 + ms(183), 6000, false, 1);
        assert_eq!((f.frames(), f.frozen()), (2, 0));
        f.on_packet(t0 + ms(316), 9000, true, 3);
        assert_eq!((f.frames(), f.frozen()), (3, 1));
        // Frame 12000 never completes; at the end it has waited long enough to count.
        frame(&mut f, t0 + ms(400), 12000, 4, &[2], ms(1));
        // Frame 15000 is still in flight at the end: not counted.
        frame(&mut f, t0 + ms(700), 15000, 4, &[3], ms(1));
        f.finish(t0 + ms(750));
        assert_eq!((f.frames(), f.frozen()), (4, 2));
    }

    #[test]
    fn a_frozen_frame_that_completes_later_counts_once_and_forgotten_frames_stay_closed() {
        let t0 = Instant::now();
        let mut f = Frames::default();
        frame(&mut f, t0, 0, 2, &[1], ms(1));
        // The sweep at 300 ms counts it frozen; completing at 400 ms does not count it again.
        frame(&mut f, t0 + ms(300), 3000, 2, &[], ms(1));
        f.on_packet(t0 + ms(400), 0, true, 1);
        assert_eq!((f.frames(), f.frozen()), (2, 1));
        // A frame open for over 2 s is forgotten; its late packets do not open it again.
        frame(&mut f, t0 + ms(500), 6000, 3, &[2], ms(1));
        frame(&mut f, t0 + ms(3000), 9000, 1, &[], ms(1));
        f.on_packet(t0 + ms(3001), 6000, true, 2);
        assert_eq!((f.frames(), f.frozen()), (4, 2));
    }

    #[test]
    fn rtp_timestamps_wrap() {
        let t0 = Instant::now();
        let mut f = Frames::default();
        frame(&mut f, t0, u32::MAX - 1000, 2, &[], ms(1));
        frame(&mut f, t0 + ms(33), 2000, 2, &[], ms(1));
        f.finish(t0 + ms(1000));
        assert_eq!((f.frames(), f.frozen()), (2, 0));
    }
}
