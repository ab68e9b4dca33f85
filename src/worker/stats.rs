//! Per-worker counters: written by their worker alone (a plain load and store, no locked
//! instruction), read by the control thread for `/metrics`. Padded so two workers' counters
//! never share a cache line.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (µs) of the relay-latency histogram's buckets: receive completion to send
/// submission, per forwarded packet.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 100_000,
];

/// The relay-latency histogram of one worker (single writer, like the counters).
#[derive(Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last slot counts what exceeds every bound.
    pub buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    pub sum_ns: AtomicU64,
    pub count: AtomicU64,
}

impl LatencyHistogram {
    /// Records `weight` packets that each took `ns`.
    pub fn record(&self, ns: u64, weight: u64) {
        if weight == 0 {
            return;
        }
        let us = ns / 1000;
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us < b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        add(&self.buckets[slot], weight);
        add(&self.sum_ns, ns * weight);
        add(&self.count, weight);
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Default)]
        #[repr(align(128))]
        pub struct WorkerStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            pub relay_latency: LatencyHistogram,
        }

        impl WorkerStats {
            /// `(name, value)` for every counter, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Datagrams received on media ports.
    rx_packets,
    rx_bytes,
    /// Datagrams handed to the kernel to send.
    tx_packets,
    tx_bytes,
    /// RTP packets forwarded to players (before send completion).
    forwarded_packets,
    /// Valid ICE checks answered.
    stun_answered,
    /// Dropped: not STUN, DTLS, RTP or RTCP, or malformed.
    drop_garbage,
    /// Dropped: STUN that failed ICE (credentials, integrity, fingerprint).
    drop_stun_invalid,
    /// Dropped: SRTP/SRTCP authentication, replay or format failure.
    drop_srtp,
    /// Dropped: media before keys, or from an address ICE did not nominate.
    drop_not_ready,
    /// Dropped: from a non-loopback source while media binds loopback.
    drop_foreign_source,
    /// Dropped: RTP with a payload type the publisher did not negotiate.
    drop_unknown_payload_type,
    /// Dropped: a cross-worker queue was full.
    drop_ring_full,
    /// Dropped: no egress buffer free.
    drop_no_buffer,
    /// Receives that found the provided-buffer ring empty.
    recv_no_buffer,
    /// Sends the kernel refused (socket buffer full, unreachable).
    send_errors,
    /// GSO sends (one `sendmsg` carrying a player's frame burst).
    gso_sends,
    /// Packets that left in GSO sends.
    gso_segments,
    /// GSO sends the kernel refused; their packets were sent again one by one.
    gso_refused,
    /// ICE-TCP connections accepted.
    tcp_accepted,
    /// ICE-TCP connections refused at accept (session closing, too many, foreign source).
    tcp_refused,
    /// ICE-TCP connections closed, for any reason.
    tcp_closed,
    /// ICE-TCP connections closed for an impossible frame length, or non-STUN before ICE.
    drop_tcp_framing,
    /// Whole frames dropped because a TCP player's send queue was full (a slow player).
    drop_slow_tcp,
    /// PLIs sent to publishers.
    keyframe_requests_sent,
    /// DTLS records passed to the control thread.
    dtls_records,
    /// Sessions currently owned.
    sessions,
    /// ICE-TCP connections currently open.
    tcp_connections,
}

/// Adds to a counter only this thread writes.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

#[inline]
pub fn inc(counter: &AtomicU64) {
    add(counter, 1)
}

#[inline]
pub fn set(counter: &AtomicU64, n: u64) {
    counter.store(n, Ordering::Relaxed);
}
