//! Per-worker counters: written by their worker alone (a plain load and store, no locked
//! instruction), read by the control thread for `/metrics`. Padded so two workers' counters
//! never share a cache line.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::session::simulcast::Encodings;

/// Upper bounds (µs) of the Prometheus buckets `/metrics` derives from the relay-latency
/// histogram.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

/// The largest relay latency the histogram holds (ns); longer ones count as this.
const LATENCY_HIGHEST_NS: u64 = 60_000_000_000;

/// Significant decimal digits the relay-latency histogram keeps: values are exact to 1 %,
/// and its counts array (about 3 500 slots) folds in a few microseconds.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 2;

/// An empty relay-latency histogram: nanoseconds, receive completion to send submission.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_HIGHEST_NS, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

/// A worker's relay-latency HdrHistogram as the control thread sees it. The worker records
/// into a histogram of its own, with no lock, and folds it in here at each tick when the
/// lock is free, so reading `/metrics` never makes a worker wait.
pub struct RelayLatency(Mutex<Histogram<u64>>);

impl Default for RelayLatency {
    fn default() -> Self {
        RelayLatency(Mutex::new(latency_histogram()))
    }
}

impl RelayLatency {
    /// Adds `recorded` to the shared histogram and empties it, unless the control thread
    /// holds the lock (then it waits for the next tick). Allocates nothing: both histograms
    /// have the same bounds.
    pub fn fold(&self, recorded: &mut Histogram<u64>) {
        if recorded.is_empty() {
            return;
        }
        if let Ok(mut shared) = self.0.try_lock() {
            // Same bounds on both sides: the addition cannot fail.
            let _ = shared.add(&*recorded);
            recorded.reset();
        }
    }

    /// Everything folded in so far.
    pub fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a stream's publisher sent the relay (RTP after repair): written by the publisher's
/// worker alone, per packet and per stream (never per player), read by the control thread for
/// `/api/streams` and the dashboard, which turns two readings into a bitrate.
#[derive(Default)]
pub struct StreamMeter {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Each simulcast encoding (layer 0 alone without simulcast), as the publisher's worker
    /// measures it; the players' workers read the bitrates to pick their encodings.
    pub layers: [LayerMeter; crate::media::MAX_LAYERS],
}

/// One video encoding of a stream.
#[derive(Default)]
pub struct LayerMeter {
    pub bitrate_bps: AtomicU64,
    /// The picture size its last keyframe carried (0 when unknown).
    pub width: AtomicU64,
    pub height: AtomicU64,
}

impl StreamMeter {
    /// The encodings' bitrates and sizes.
    pub fn encodings(&self) -> Encodings {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Encodings {
            bitrate_bps: std::array::from_fn(|i| load(&self.layers[i].bitrate_bps)),
            pixels: std::array::from_fn(|i| {
                load(&self.layers[i].width) * load(&self.layers[i].height)
            }),
        }
    }
}

impl StreamMeter {
    /// One packet of `len` bytes arrived. Only the publisher's worker writes: a plain load and
    /// store, no locked instruction.
    #[inline]
    pub fn record(&self, len: usize) {
        add(&self.packets, 1);
        add(&self.bytes, len as u64);
    }
}

/// What a player's receiver reports say of its path, written by its worker at each report (about
/// once a second), read by the control thread for `/api/streams` and the dashboard.
pub struct SessionMeter {
    /// Round-trip time in microseconds; 0 until measured.
    pub rtt_us: AtomicU64,
    /// The share of packets lost between its last two reports, in 1/256; `u64::MAX` until
    /// reported.
    pub fraction_lost: AtomicU64,
    /// Packets lost since the start, as the player counts them (after repair).
    pub cumulative_lost: AtomicU64,
    /// A simulcast player's encoding (`u64::MAX`: none yet), the one it waits to switch to,
    /// its path estimate in bit/s (0: none) and its switches so far; written each tick.
    pub layer: AtomicU64,
    pub target_layer: AtomicU64,
    pub estimate_bps: AtomicU64,
    pub layer_switches: AtomicU64,
    /// Times the session's media path moved to another pair (transport migration).
    pub migrations: AtomicU64,
}

impl Default for SessionMeter {
    fn default() -> Self {
        SessionMeter {
            rtt_us: AtomicU64::new(0),
            fraction_lost: AtomicU64::new(u64::MAX),
            cumulative_lost: AtomicU64::new(0),
            layer: AtomicU64::new(u64::MAX),
            target_layer: AtomicU64::new(u64::MAX),
            estimate_bps: AtomicU64::new(0),
            layer_switches: AtomicU64::new(0),
            migrations: AtomicU64::new(0),
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Default)]
        #[repr(align(128))]
        pub struct WorkerStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            pub relay_latency: RelayLatency,
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
    /// Transport-wide feedback packets sent to publishers.
    transport_feedback_sent,
    /// REMB packets (the operator's cap) sent to publishers.
    remb_sent,
    /// Receiver reports (loss, jitter, LSR/DLSR) sent to publishers.
    receiver_reports_sent,
    /// NACK packets sent to publishers, and the sequence numbers they named (retries too).
    nacks_sent,
    nacked_packets,
    /// Lost publisher packets that a retransmission repaired.
    packets_repaired,
    /// Lost publisher packets given up after every retry (a keyframe request follows).
    losses_given_up,
    /// Retransmissions and probes from publishers that repaired nothing (dropped).
    retransmissions_consumed,
    /// NACK packets received from players.
    player_nacks_received,
    /// Packets sent again to players that asked (RTX or the original).
    retransmissions_sent,
    /// Packets players asked for that the retransmission window no longer held.
    retransmit_misses,
    /// Retransmissions refused for a player past its retransmission budget.
    retransmit_budget_drops,
    /// DTLS records passed to the control thread.
    dtls_records,
    /// Dropped: DTLS records beyond what the session's handshake queue holds (a flood).
    drop_dtls_flood,
    /// Sessions ended for flooding their DTLS queue.
    dtls_flood_sessions,
    /// ICE-TCP connections closed for sending no valid ICE check within the deadline.
    tcp_unvalidated_closed,
    /// ICE-TCP connections closed to make room for a newer one (the session's oldest that
    /// had not sent a valid ICE check, else its oldest standby one).
    tcp_evicted,
    /// Standby ICE-TCP connections (validated, not the media path) closed because their
    /// client stopped checking them for `media.ice_timeout`.
    tcp_standby_closed,
    /// ICE restarts applied (new credentials from a PATCH or the WebSocket `ice` command).
    ice_restarts,
    /// Sessions whose client nominated another pair than their media path (another UDP
    /// 5-tuple, UDP to TCP or back): the media moved there.
    path_migrations,
    /// Dropped: nominations whose transaction ID came before on another path (a captured
    /// check sent again from elsewhere); the session stays where it is.
    drop_replayed_nomination,
    /// Single-port mode: dropped, a binding request on the shared port whose USERNAME names
    /// no session (or none at all).
    drop_unknown_ufrag,
    /// Single-port mode: dropped, not a binding request, from a path no session has latched.
    drop_unknown_path,
    /// Single-port mode: a session's valid check from a path another live session holds (a
    /// spoofed source): the path stays with that session.
    drop_latch_taken,
    /// Single-port mode: packets the kernel gave this worker for a session on another one,
    /// handed over through the cross-worker queues.
    mux_handoffs,
    /// Single-port mode: ICE-TCP connections accepted here for a session on another worker,
    /// moved there.
    mux_conn_handoffs,
    /// Sessions currently owned.
    sessions,
    /// Of those, players.
    players,
    /// ICE-TCP connections currently open.
    tcp_connections,
    /// Loop turns that stopped at a bound on their work (commands, cross-worker packets,
    /// completions) or ran past their time budget: the worker is saturated or stalled.
    loop_overruns,
    layer_switches,
    probe_padding_packets,
    player_transport_feedback,
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
