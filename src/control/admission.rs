//! Admission of joins under a flash crowd, sans-IO: a join is *in handshake* from its answer
//! until its DTLS handshake ends (or its session ends first); at most
//! `admission.max_handshakes` are, the next `admission.queue` joins wait for a free place in
//! arrival order, and the rest are shed at once, told when to come back. Admitted viewers then
//! join as fast as when there is no crowd, and the relay spends nothing on those it cannot
//! take yet. `control::joins` acts on what this says.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The bounds (`admission.max_handshakes`, `admission.queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Joins in handshake at once; 0: no limit (nothing ever waits or is shed).
    pub max_handshakes: usize,
    /// Joins that may wait for a place; beyond them a join is shed.
    pub queue: usize,
}

/// A waiting join's number, to take it out of the queue when it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// What becomes of a join that arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Its handshake may start now.
    Admitted,
    /// It waits; [`Admission::release`] hands it a place in turn.
    Queued(Ticket),
    /// Refused: the queue is full. `retry_after` is when the queue ahead of it should be gone.
    Shed { retry_after: Duration },
}

/// The longest `Retry-After` the relay gives: past it, a client's guess is as good.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// What has happened since start, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    /// Joins whose handshake was let start (at once or after waiting).
    pub admitted: u64,
    /// Joins that had to wait.
    pub queued: u64,
    /// Joins refused because the queue was full.
    pub shed_queue_full: u64,
    /// Joins that waited `admission.queue_wait` and were then refused.
    pub shed_waited_too_long: u64,
    /// Handshakes that ended (finished, failed or their session ended first).
    pub handshakes_ended: u64,
    /// In handshake now.
    pub in_handshake: u64,
    /// Waiting now.
    pub waiting: u64,
}

/// The state: joins in handshake, the queue (each waiter's `W`: how to tell it), and how
/// many handshakes ended in the last whole second (for `Retry-After`).
pub struct Admission<W> {
    limits: AdmissionLimits,
    in_handshake: usize,
    waiting: VecDeque<(Ticket, W)>,
    next_ticket: u64,
    counts: AdmissionCounts,
    /// Handshakes ended in the second that began at `second_start`, and in the one before.
    second_start: Option<Instant>,
    ended_this_second: u64,
    ended_last_second: u64,
}

impl<W> Admission<W> {
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            in_handshake: 0,
            waiting: VecDeque::new(),
            next_ticket: 0,
            counts: AdmissionCounts::default(),
            second_start: None,
            ended_this_second: 0,
            ended_last_second: 0,
        }
    }

    /// A join arrives at `now`; `waiter` is how to tell it its turn, kept only if it waits.
    pub fn arrive(&mut self, now: Instant, waiter: W) -> Arrival {
        self.roll_second(now);
        let unlimited = self.limits.max_handshakes == 0;
        // Nobody overtakes the queue: a free place goes to the first waiter (`release`).
        if unlimited || (self.in_handshake < self.limits.max_handshakes && self.waiting.is_empty())
        {
            self.in_handshake += 1;
            self.counts.admitted += 1;
            return Arrival::Admitted;
        }
        if self.waiting.len() < self.limits.queue {
            let ticket = Ticket(self.next_ticket);
            self.next_ticket += 1;
            self.waiting.push_back((ticket, waiter));
            self.counts.queued += 1;
            return Arrival::Queued(ticket);
        }
        self.counts.shed_queue_full += 1;
        Arrival::Shed {
            retry_after: self.retry_after(),
        }
    }

    /// A handshake ended at `now` (done, failed, or its session ended before it): its place
    /// goes to the first waiter, returned so the caller can tell it. When that waiter turns
    /// out gone, the caller releases again.
    pub fn release(&mut self, now: Instant) -> Option<W> {
        self.roll_second(now);
        self.ended_this_second += 1;
        self.counts.handshakes_ended += 1;
        match self.waiting.pop_front() {
            Some((_, waiter)) => {
                self.counts.admitted += 1;
                Some(waiter)
            }
            None => {
                self.in_handshake = self.in_handshake.saturating_sub(1);
                None
            }
        }
    }

    /// The waiter with `ticket` gives up (it waited `admission.queue_wait`, or its client
    /// left): `true` if it was still waiting, now shed; `false` if it had been handed a place
    /// already (the caller then holds that place).
    pub fn abandon(&mut self, ticket: Ticket, waited_too_long: bool) -> bool {
        let Some(at) = self.waiting.iter().position(|(t, _)| *t == ticket) else {
            return false;
        };
        self.waiting.remove(at);
        if waited_too_long {
            self.counts.shed_waited_too_long += 1;
        }
        true
    }

    /// When a join shed now should come back: the time for the handshakes in progress and
    /// those waiting to end at the rate they ended in the last second, spread over up to 40 %
    /// more between joins shed together, 1 to 30 s. Before any
    /// has ended (the first moments of a crowd after a quiet spell) the rate is taken as every
    /// place freeing once a second (a handshake in a crowd takes well under a second), not as
    /// one a second, which told every join shed at the start to stay away for 30 s.
    pub fn retry_after(&self) -> Duration {
        let measured = self.ended_last_second.max(self.ended_this_second);
        let rate = match measured {
            0 => self.limits.max_handshakes.max(1) as u64,
            n => n,
        };
        let backlog = (self.in_handshake + self.waiting.len()) as u64;
        let base = backlog.div_ceil(rate).max(1);
        // Joins shed in the same moment would all come back in the same moment: in turn, each
        // is told up to 40 % more (deterministic, so this stays sans-IO).
        let shed = self.counts.shed_queue_full + self.counts.shed_waited_too_long;
        let spread = base * (shed % 5) / 10;
        Duration::from_secs(base + spread).min(MAX_RETRY_AFTER)
    }

    pub fn counts(&self) -> AdmissionCounts {
        AdmissionCounts {
            in_handshake: self.in_handshake as u64,
            waiting: self.waiting.len() as u64,
            ..self.counts
        }
    }

    /// Starts a new second of the end rate when `now` is past the current one.
    fn roll_second(&mut self, now: Instant) {
        let start = *self.second_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < Duration::from_secs(1) {
            return;
        }
        self.ended_last_second = if elapsed < Duration::from_secs(2) {
            self.ended_this_second
        } else {
            0
        };
        self.ended_this_second = 0;
        self.second_start = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_handshakes: usize, queue: usize) -> Admission<&'static str> {
        Admission::new(AdmissionLimits {
            max_handshakes,
            queue,
        })
    }

    #[test]
    fn joins_under_the_bound_are_admitted_at_once() {
        let now = Instant::now();
        let mut a = admission(2, 1);
        assert_eq!(a.arrive(now, "a"), Arrival::Admitted);
        assert_eq!(a.arrive(now, "b"), Arrival::Admitted);
        assert_eq!(a.counts().in_handshake, 2);
        assert_eq!(a.counts().admitted, 2);
    }

    #[test]
    fn past_the_bound_joins_wait_then_are_shed_when_the_queue_is_full() {
        let now = Instant::now();
        let mut a = admission(1, 2);
        assert_eq!(a.arrive(now, "a"), Arrival::Admitted);
        assert!(matches!(a.arrive(now, "b"), Arrival::Queued(_)));
        assert!(matches!(a.arrive(now, "c"), Arrival::Queued(_)));
        assert!(matches!(a.arrive(now, "d"), Arrival::Shed { .. }));
        let c = a.counts();
        assert_eq!((c.admitted, c.queued, c.shed_queue_full), (1, 2, 1));
        assert_eq!((c.in_handshake, c.waiting), (1, 2));
    }

    #[test]
    fn a_finished_handshake_hands_its_place_to_the_first_waiter() {
        let now = Instant::now();
        let mut a = admission(1, 2);
        a.arrive(now, "a");
        a.arrive(now, "b");
        a.arrive(now, "c");
        assert_eq!(a.release(now), Some("b"));
        assert_eq!(a.counts().in_handshake, 1, "b holds a's place");
        assert_eq!(a.release(now), Some("c"));
        assert_eq!(a.release(now), None);
        assert_eq!(a.counts().in_handshake, 0);
        assert_eq!(a.counts().admitted, 3);
    }

    #[test]
    fn a_newcomer_does_not_overtake_the_queue() {
        let now = Instant::now();
        let mut a = admission(1, 4);
        a.arrive(now, "a");
        a.arrive(now, "b");
        // "a" ends; its place goes to "b" before anyone new.
        assert_eq!(a.release(now), Some("b"));
        assert!(matches!(a.arrive(now, "c"), Arrival::Queued(_)));
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_queue_and_is_counted() {
        let now = Instant::now();
        let mut a = admission(1, 2);
        a.arrive(now, "a");
        let Arrival::Queued(b) = a.arrive(now, "b") else {
            panic!("b waits");
        };
        assert!(a.abandon(b, true));
        assert_eq!(a.counts().waiting, 0);
        assert_eq!(a.counts().shed_waited_too_long, 1);
        assert!(!a.abandon(b, true), "gone already");
        assert_eq!(a.release(now), None);
    }

    #[test]
    fn a_waiter_handed_a_place_cannot_abandon_it() {
        let now = Instant::now();
        let mut a = admission(1, 1);
        a.arrive(now, "a");
        let Arrival::Queued(b) = a.arrive(now, "b") else {
            panic!("b waits");
        };
        assert_eq!(a.release(now), Some("b"));
        assert!(!a.abandon(b, true), "b holds a place: it must release it");
        assert_eq!(a.counts().in_handshake, 1);
    }

    #[test]
    fn no_limit_admits_everyone() {
        let now = Instant::now();
        let mut a = admission(0, 0);
        for _ in 0..1000 {
            assert_eq!(a.arrive(now, "x"), Arrival::Admitted);
        }
    }

    #[test]
    fn retry_after_is_the_backlog_over_the_last_seconds_end_rate() {
        let start = Instant::now();
        let mut a = admission(10, 10);
        for _ in 0..10 {
            a.arrive(start, "x");
        }
        for _ in 0..10 {
            a.arrive(start, "w");
        }
        // Nothing ended yet: each of the 10 places taken as freeing once a second, with 20
        // joins ahead.
        let Arrival::Shed { retry_after } = a.arrive(start, "late") else {
            panic!("the queue is full");
        };
        assert_eq!(retry_after, Duration::from_secs(2));
        // Five handshakes end in the first second (their places go to waiters).
        for _ in 0..5 {
            a.release(start + Duration::from_millis(500));
        }
        // In the next second the rate is 5/s; the queue fills again.
        let next = start + Duration::from_millis(1500);
        let Arrival::Queued(_) = a.arrive(next, "w2") else {
            panic!("room in the queue");
        };
        for _ in 0..4 {
            a.arrive(next, "w3");
        }
        let Arrival::Shed { retry_after } = a.arrive(next, "late") else {
            panic!("the queue is full");
        };
        assert_eq!(retry_after, Duration::from_secs(4), "20 ahead at 5/s");
    }

    #[test]
    fn joins_shed_together_are_told_different_times() {
        let now = Instant::now();
        let mut a = admission(20, 0);
        for _ in 0..20 {
            a.arrive(now, "x");
        }
        // One handshake ended this second and its place was taken again: 20 ahead at 1/s.
        a.release(now);
        a.arrive(now, "x");
        let told: Vec<u64> = (0..5)
            .map(|_| match a.arrive(now, "late") {
                Arrival::Shed { retry_after } => retry_after.as_secs(),
                other => panic!("shed, not {other:?}"),
            })
            .collect();
        assert!(told.iter().all(|s| (20..=28).contains(s)), "{told:?}");
        let mut distinct = told.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 5, "{told:?}");
    }

    #[test]
    fn retry_after_is_capped() {
        let now = Instant::now();
        let mut a = admission(100, 0);
        for _ in 0..101 {
            a.arrive(now, "x");
        }
        // One handshake ended in the last second: 100 ahead at 1/s.
        a.release(now);
        a.arrive(now, "x");
        let Arrival::Shed { retry_after } = a.arrive(now, "late") else {
            panic!("no queue");
        };
        assert_eq!(retry_after, MAX_RETRY_AFTER);
    }
}
