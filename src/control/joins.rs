//! Players joining through admission (`control::admission`): a join waits for a place in
//! handshake or is shed with `503` and `Retry-After`; its place is held by its session until
//! DTLS is done (or the session ends), then handed to the next waiter. Also the handshake-time
//! histogram and the `/metrics` lines of both.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::admission::{Admission, AdmissionCounts, AdmissionLimits, Arrival, Ticket};
use super::{ApiError, Control, Created, SessionState};
use crate::config::AdmissionConfig;
use crate::media::SessionId;
use crate::util::lock;

/// Upper bounds of the handshake-time histogram's buckets, in seconds.
const HANDSHAKE_BUCKETS_S: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The admission of joins and what it measured.
pub struct Joins {
    admission: Mutex<Admission<oneshot::Sender<()>>>,
    queue_wait: Duration,
    /// `admission.ice_wait`: how long a join holds its place before its client reaches it.
    ice_wait: Duration,
    /// Places given back because the client had not reached its session within `ice_wait`
    /// (`no_ice`), or had and then not finished its handshake in time (`no_dtls`).
    released_no_ice: AtomicU64,
    released_no_dtls: AtomicU64,
    handshake_time: HandshakeHistogram,
}

/// A place in handshake: held by a session until its DTLS is done or it ends; dropping it
/// hands the place to the next waiter.
pub struct Slot {
    joins: Arc<Joins>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.joins.release();
    }
}

impl Joins {
    pub fn new(config: &AdmissionConfig) -> Arc<Joins> {
        Arc::new(Joins {
            admission: Mutex::new(Admission::new(AdmissionLimits {
                max_handshakes: config.max_handshakes,
                queue: config.queue,
            })),
            queue_wait: config.queue_wait,
            ice_wait: config.ice_wait,
            released_no_ice: AtomicU64::new(0),
            released_no_dtls: AtomicU64::new(0),
            handshake_time: HandshakeHistogram::default(),
        })
    }

    /// A place in handshake for a new join: at once, after waiting in the queue, or a `503`
    /// with `Retry-After` when the queue is full or the wait ran past `admission.queue_wait`.
    pub async fn admit(self: &Arc<Self>) -> Result<Slot, ApiError> {
        let (tell, told) = oneshot::channel();
        let arrival = lock(&self.admission).arrive(Instant::now(), tell);
        let ticket = match arrival {
            Arrival::Admitted => return Ok(self.slot()),
            Arrival::Shed { retry_after } => {
                return Err(overloaded(
                    retry_after,
                    "more viewers are joining than the relay can take (admission.queue is full)",
                ));
            }
            Arrival::Queued(ticket) => ticket,
        };
        let mut waiting = Waiting {
            joins: self.clone(),
            ticket,
            told,
            settled: false,
        };
        let turn = tokio::time::timeout(self.queue_wait, &mut waiting.told).await;
        waiting.settled = true;
        if let Ok(Ok(())) = turn {
            return Ok(self.slot());
        }
        // Out of time. Taken out of the queue under the lock that hands out places: if it is
        // no longer there, a place was handed over before the lock, and is in `told`.
        if lock(&self.admission).abandon(ticket, true) {
            let retry_after = lock(&self.admission).retry_after();
            return Err(overloaded(
                retry_after,
                "more viewers are joining than the relay can take (waited admission.queue_wait)",
            ));
        }
        match waiting.told.try_recv() {
            Ok(()) => Ok(self.slot()),
            // Out of the queue with no place: only if admission itself went away.
            Err(_) => Err(overloaded(
                Duration::from_secs(1),
                "the relay is shutting down its admission",
            )),
        }
    }

    fn slot(self: &Arc<Self>) -> Slot {
        Slot {
            joins: self.clone(),
        }
    }

    /// A place comes free: to the first waiter still there, or back to the pool.
    fn release(&self) {
        let mut admission = lock(&self.admission);
        let now = Instant::now();
        while let Some(next) = admission.release(now) {
            if next.send(()).is_ok() {
                return;
            }
            // That waiter's client left; its place is free again.
        }
    }

    pub fn counts(&self) -> AdmissionCounts {
        lock(&self.admission).counts()
    }

    fn count_release(&self, reason: &str) {
        let counter = match reason {
            "no_ice" => &self.released_no_ice,
            _ => &self.released_no_dtls,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A DTLS handshake took `took` (first record to SRTP keys).
    pub fn record_handshake(&self, took: Duration) {
        self.handshake_time.record(took);
    }

    /// The `/metrics` lines: joins admitted, queued and shed, in handshake and waiting now,
    /// and the handshake-time histogram.
    pub fn write_metrics(&self, out: &mut String) {
        let c = self.counts();
        for (metric, kind, help, value) in [
            (
                "corecast_joins_admitted_total",
                "counter",
                "Player joins whose handshake was let start (at once or after waiting).",
                c.admitted,
            ),
            (
                "corecast_joins_queued_total",
                "counter",
                "Player joins that waited for a place in handshake (admission.max_handshakes).",
                c.queued,
            ),
            (
                "corecast_joins_in_handshake",
                "gauge",
                "Joins between their answer and the end of their DTLS handshake.",
                c.in_handshake,
            ),
            (
                "corecast_joins_waiting",
                "gauge",
                "Joins waiting for a place in handshake.",
                c.waiting,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP corecast_joins_shed_total Player joins refused with 503 and Retry-After.\n# TYPE corecast_joins_shed_total counter\ncorecast_joins_shed_total{{reason=\"queue_full\"}} {}\ncorecast_joins_shed_total{{reason=\"queue_wait\"}} {}",
            c.shed_queue_full, c.shed_waited_too_long
        );
        let _ = writeln!(
            out,
            "# HELP corecast_joins_released_total Places in handshake given back before the join's handshake ended: its client had not reached it by ICE within admission.ice_wait_ms (no_ice), or had and not finished DTLS within the handshake's time limit after that (no_dtls).\n# TYPE corecast_joins_released_total counter\ncorecast_joins_released_total{{reason=\"no_ice\"}} {}\ncorecast_joins_released_total{{reason=\"no_dtls\"}} {}",
            self.released_no_ice.load(Ordering::Relaxed),
            self.released_no_dtls.load(Ordering::Relaxed)
        );
        self.handshake_time.write(out);
    }
}

/// A join in the queue; if its request goes away while it waits (the client left), it leaves
/// the queue, or gives back the place it was handed meanwhile.
struct Waiting {
    joins: Arc<Joins>,
    ticket: Ticket,
    told: oneshot::Receiver<()>,
    /// `admit` decided what becomes of it.
    settled: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let gone = lock(&self.joins.admission).abandon(self.ticket, false);
        if !gone && self.told.try_recv().is_ok() {
            self.joins.release();
        }
    }
}

/// `503 Service Unavailable` with `Retry-After`.
fn overloaded(retry_after: Duration, why: &str) -> ApiError {
    let seconds = super::limits::retry_after_seconds(retry_after);
    let mut e = ApiError::new(503, format!("{why}; retry in {seconds} s"));
    e.retry_after = Some(seconds);
    e
}

/// DTLS handshake times as a Prometheus histogram (fixed buckets, lock-free).
#[derive(Default)]
struct HandshakeHistogram {
    buckets: [AtomicU64; HANDSHAKE_BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl HandshakeHistogram {
    fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = HANDSHAKE_BUCKETS_S.iter().position(|&le| seconds <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP corecast_dtls_handshake_seconds A session's DTLS handshake, from the peer's first record to the SRTP keys.\n# TYPE corecast_dtls_handshake_seconds histogram"
        );
        let mut cumulative = 0;
        for (le, bucket) in HANDSHAKE_BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "corecast_dtls_handshake_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "corecast_dtls_handshake_seconds_bucket{{le=\"+Inf\"}} {count}\ncorecast_dtls_handshake_seconds_sum {}\ncorecast_dtls_handshake_seconds_count {count}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

impl Control {
    /// WHEP and WebSocket play: through admission (a pull from another node of the cluster
    /// is let through: its players were admitted there), then `play_anywhere`; the session
    /// holds its place until its DTLS is done.
    pub async fn join(
        self: &Arc<Self>,
        stream: &str,
        offer: &str,
        client: IpAddr,
        from_node: bool,
    ) -> Result<Created, ApiError> {
        // A pull by another node of the cluster: its players were admitted there. Outside a
        // cluster the `node` mark means nothing and lets no one past admission.
        if from_node && self.cluster.is_some() {
            return self.play_anywhere(stream, offer, client, from_node).await;
        }
        let slot = self.joins.admit().await?;
        let created = self.play_anywhere(stream, offer, client, from_node).await?;
        self.hold_until_connected(created.session, slot);
        Ok(created)
    }

    /// Session `id` keeps `slot` until its DTLS is done (`run_dtls`) or it is gone, or, while
    /// its client has not reached it by ICE, for `admission.ice_wait` at most: an offer whose
    /// client never connects must not keep a crowd out for `media.ice_timeout`.
    fn hold_until_connected(self: &Arc<Self>, id: SessionId, slot: Slot) {
        {
            let mut registry = lock(&self.registry);
            let Some(entry) = registry.sessions.get_mut(&id) else {
                return;
            };
            if !matches!(
                entry.state,
                SessionState::Connecting | SessionState::IceConnected
            ) {
                return;
            }
            entry.admission = Some(slot);
        }
        let ice_wait = self.joins.ice_wait;
        if ice_wait.is_zero() {
            return;
        }
        let control = Arc::downgrade(self);
        tokio::spawn(async move {
            // No ICE within `ice_wait`: the place goes. ICE but no finished handshake within
            // the handshake's own time limit after that: the place goes too (a client that
            // keeps ICE alive and never starts DTLS must not hold it for ever).
            for (wait, stage, reason) in [
                (ice_wait, SessionState::Connecting, "no_ice"),
                (
                    super::dtls::HANDSHAKE_TIMEOUT,
                    SessionState::IceConnected,
                    "no_dtls",
                ),
            ] {
                tokio::time::sleep(wait).await;
                let Some(control) = control.upgrade() else {
                    return;
                };
                let (released, still_waiting) = {
                    let mut registry = lock(&control.registry);
                    match registry.sessions.get_mut(&id) {
                        Some(entry) if entry.state == stage => (entry.admission.take(), false),
                        Some(entry) if entry.state == SessionState::IceConnected => (None, true),
                        _ => (None, false),
                    }
                };
                if let Some(slot) = released {
                    control.joins.count_release(reason);
                    tracing::debug!(
                        session = id,
                        reason,
                        "its place in handshake goes to the next join"
                    );
                    drop(slot);
                    return;
                }
                if !still_waiting {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joins(max_handshakes: usize, queue: usize, queue_wait_ms: u64) -> Arc<Joins> {
        Joins::new(&AdmissionConfig {
            handshake_threads: 1,
            max_handshakes,
            queue,
            queue_wait: Duration::from_millis(queue_wait_ms),
            ice_wait: Duration::from_secs(3),
        })
    }

    /// Lets the spawned join run until it waits in the queue.
    async fn wait_for_a_waiter(joins: &Joins) {
        for _ in 0..1000 {
            if joins.counts().waiting == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the second join never queued");
    }

    #[tokio::test]
    async fn a_waiter_gets_the_place_a_dropped_slot_frees() {
        let joins = joins(1, 1, 10_000);
        let first = joins.admit().await.map_err(|e| e.message).unwrap();
        let waiter = tokio::spawn({
            let joins = joins.clone();
            async move { joins.admit().await.map(|_slot| ()) }
        });
        wait_for_a_waiter(&joins).await;
        let e = joins.admit().await.err().expect("the queue is full");
        assert_eq!((e.status, e.retry_after.is_some()), (503, true));
        drop(first);
        assert!(waiter.await.unwrap().is_ok());
        let c = joins.counts();
        assert_eq!((c.admitted, c.queued, c.shed_queue_full), (2, 1, 1));
        assert_eq!(c.in_handshake, 0, "the waiter's slot was dropped too");
    }

    #[tokio::test]
    async fn a_waiter_past_queue_wait_is_shed_and_leaves_the_queue() {
        let joins = joins(1, 1, 20);
        let _first = joins.admit().await.map_err(|e| e.message).unwrap();
        let e = joins.admit().await.err().expect("waited too long");
        assert_eq!(e.status, 503);
        assert!(e.message.contains("admission.queue_wait"), "{}", e.message);
        let c = joins.counts();
        assert_eq!((c.waiting, c.shed_waited_too_long), (0, 1));
    }

    #[tokio::test]
    async fn a_waiter_whose_client_leaves_gives_its_place_back() {
        let joins = joins(1, 1, 10_000);
        let first = joins.admit().await.map_err(|e| e.message).unwrap();
        let waiter = tokio::spawn({
            let joins = joins.clone();
            async move { joins.admit().await.map(|_slot| ()) }
        });
        wait_for_a_waiter(&joins).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(joins.counts().waiting, 0);
        drop(first);
        assert_eq!(joins.counts().in_handshake, 0);
    }

    #[test]
    fn handshake_times_land_in_cumulative_buckets() {
        let h = HandshakeHistogram::default();
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(40));
        h.record(Duration::from_secs(60));
        let mut out = String::new();
        h.write(&mut out);
        assert!(out.contains("corecast_dtls_handshake_seconds_bucket{le=\"0.005\"} 1"));
        assert!(out.contains("corecast_dtls_handshake_seconds_bucket{le=\"0.05\"} 2"));
        assert!(out.contains("corecast_dtls_handshake_seconds_bucket{le=\"10\"} 2"));
        assert!(out.contains("corecast_dtls_handshake_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(out.contains("corecast_dtls_handshake_seconds_count 3"));
    }
}
