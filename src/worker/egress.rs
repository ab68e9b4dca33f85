//! The sending side of a worker: the ring, the ICE-TCP connections' send queues, the players'
//! frame bursts and the GSO sends that carry them, and the relay-latency record of what was
//! submitted. Everything that leaves the worker goes through [`Output`].

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::burst::{Append, BurstId, Bursts, Owner};
use super::connections::Connections;
use super::stats::{self, WorkerStats, add, inc};
use super::table::{Role, Session};
use crate::io::{Completion, EGRESS_HEADROOM, MAX_SEND_BATCH, RawAddr, Ring, Token};
use crate::session::path::MediaPath;
use crate::session::publisher_link::LinkRtcp;
use crate::wire::framing;

/// Frame bursts open or in flight at once; a player past this many sends packet by packet.
pub(super) const BURSTS: usize = 4096;
/// GSO sends the kernel may refuse before a worker stops trying (it logs why).
const GSO_REFUSALS_BEFORE_OFF: u32 = 16;
/// Forwarded packets submitted to the kernel together; see `Output::forwarded`.
const SUBMIT_BATCH: u64 = 64;
/// The largest RTCP packet the relay writes to a publisher before SRTCP: with the trailer it
/// fits any path MTU a WebRTC peer uses (1 200 bytes is the common floor).
const MAX_FEEDBACK_LEN: usize = 1150;
/// Runs of forwarded packets by receive time kept for the latency histogram per submission.
const UNSUBMITTED_RUNS: usize = 256;

/// Where a packet came from and where replies go: a UDP address, or one ICE-TCP connection.
#[derive(Clone, Copy)]
pub(super) enum Peer {
    Udp {
        addr: SocketAddr,
        raw: RawAddr,
    },
    Tcp {
        conn: usize,
        generation: u32,
        addr: SocketAddr,
    },
}

impl Peer {
    pub(super) fn udp(addr: SocketAddr) -> Peer {
        Peer::Udp {
            addr,
            raw: RawAddr::new(addr),
        }
    }

    pub(super) fn addr(&self) -> SocketAddr {
        match self {
            Peer::Udp { addr, .. } | Peer::Tcp { addr, .. } => *addr,
        }
    }

    /// Whether two peers are the same path: the same UDP address, or the same connection.
    pub(super) fn same_path(&self, other: &Peer) -> bool {
        match (self, other) {
            (Peer::Udp { addr: a, .. }, Peer::Udp { addr: b, .. }) => a == b,
            (
                Peer::Tcp {
                    conn: a,
                    generation: ga,
                    ..
                },
                Peer::Tcp {
                    conn: b,
                    generation: gb,
                    ..
                },
            ) => a == b && ga == gb,
            _ => false,
        }
    }

    /// The path as the switch rule (`session::path`) compares paths.
    pub(super) fn path(&self) -> MediaPath {
        match *self {
            Peer::Udp { addr, .. } => MediaPath::Udp(addr),
            Peer::Tcp {
                conn,
                generation,
                addr,
            } => MediaPath::Tcp {
                conn,
                generation,
                peer: addr,
            },
        }
    }

    pub(super) fn tcp_conn(&self) -> Option<(usize, u32)> {
        match self {
            Peer::Tcp {
                conn, generation, ..
            } => Some((*conn, *generation)),
            Peer::Udp { .. } => None,
        }
    }
}

/// Whether a packet was handed to the kernel (or a send queue) or dropped.
#[derive(PartialEq, Eq)]
pub(super) enum Sent {
    Queued,
    Dropped,
}

/// Forwarded packets queued on the ring since the last submission, as runs of (receive time,
/// count), for the relay-latency histogram.
struct Unsubmitted {
    runs: Vec<(Instant, u64)>,
    count: u64,
}

impl Unsubmitted {
    /// Notes a packet received at `origin`; says whether `SUBMIT_BATCH` of them are waiting.
    fn note(&mut self, origin: Instant) -> bool {
        let full = self.runs.len() == self.runs.capacity();
        match self.runs.last_mut() {
            Some((o, n)) if *o == origin || full => *n += 1,
            _ => self.runs.push((origin, 1)),
        }
        self.count += 1;
        self.count >= SUBMIT_BATCH
    }
}

/// The sending side: the ring, the egress buffers and the ICE-TCP connections whose send
/// queues hold them.
pub(super) struct Output {
    pub(super) ring: Ring,
    pub(super) conns: Connections,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) tcp_send_queue: usize,
    unsubmitted: Unsubmitted,
    /// Players' frame bursts and the GSO sends that carry them.
    pub(super) bursts: Bursts,
    pub(super) gso_enabled: bool,
    gso_refusals: u32,
    /// Completions taken off the ring while reaping sends mid-turn that need the worker (a
    /// receive, a refused GSO send...): handled first in the next turn, in order.
    pub(super) deferred: Vec<Completion>,
    /// Relay latency recorded since the last tick folded it into `stats.relay_latency`.
    latency: Histogram<u64>,
}

impl Output {
    pub(super) fn new(
        ring: Ring,
        stats: Arc<WorkerStats>,
        tcp_send_queue: usize,
        gso: bool,
        gso_hold: Duration,
        deferred_capacity: usize,
    ) -> Output {
        Output {
            ring,
            conns: Connections::default(),
            stats,
            tcp_send_queue,
            unsubmitted: Unsubmitted {
                runs: Vec::with_capacity(UNSUBMITTED_RUNS),
                count: 0,
            },
            bursts: Bursts::new(BURSTS, gso_hold, Instant::now()),
            gso_enabled: gso,
            gso_refusals: 0,
            deferred: Vec::with_capacity(deferred_capacity),
            latency: stats::latency_histogram(),
        }
    }

    /// Notes a forwarded packet received at `origin`; every `SUBMIT_BATCH` of them go to the
    /// kernel at once rather than at the end of the loop turn, so a large fanout starts
    /// leaving while the rest is prepared.
    pub(super) fn forwarded(&mut self, origin: Instant) {
        if self.unsubmitted.note(origin) {
            self.submit_batch();
        }
    }

    /// Submits the queued sends and at once takes back the egress slots of those that
    /// completed (UDP sends complete while they are submitted), so a fanout reuses a few
    /// cache-hot slots instead of walking the whole pool, each write into a cold one a miss.
    fn submit_batch(&mut self) {
        self.record_submitted();
        let _ = self.ring.submit();
        let mut reaped = std::mem::take(&mut self.deferred);
        let already_deferred = reaped.len();
        self.ring.completions(&mut reaped, usize::MAX);
        // Only the new ones can be finished sends; what stays keeps its order (a large TCP
        // fanout defers hundreds of completions, not worth scanning again every batch).
        let mut kept = already_deferred;
        for i in already_deferred..reaped.len() {
            if !self.finish_send(&reaped[i]) {
                reaped.swap(kept, i);
                kept += 1;
            }
        }
        reaped.truncate(kept);
        self.deferred = reaped;
    }

    /// Handles the completion of a UDP send (plain or GSO) that went through: its egress
    /// slots are free again. Returns false for everything else, which the worker handles.
    pub(super) fn finish_send(&mut self, completion: &Completion) -> bool {
        match *completion {
            Completion::Sent { result } => {
                if result < 0 {
                    inc(&self.stats.send_errors);
                }
                true
            }
            Completion::GsoSent { index, result } if result >= 0 => {
                let id = index as BurstId;
                for &egress in self.bursts.get(id).slots() {
                    self.ring.release_egress(egress);
                }
                self.bursts.release(id);
                true
            }
            _ => false,
        }
    }

    /// Records the forwarded packets about to be submitted in the relay-latency histogram
    /// (receive completion to send submission; the kernel's own send time is not in it).
    pub(super) fn record_submitted(&mut self) {
        if self.unsubmitted.count == 0 {
            return;
        }
        let now = Instant::now();
        for (origin, count) in self.unsubmitted.runs.drain(..) {
            self.latency
                .saturating_record_n(now.duration_since(origin).as_nanos() as u64, count);
        }
        self.unsubmitted.count = 0;
    }

    /// Folds the latency recorded since the last tick into the shared histogram.
    pub(super) fn fold_latency(&mut self) {
        self.stats.relay_latency.fold(&mut self.latency);
    }

    /// Sends a forwarded video packet to a UDP player, or holds it in the player's frame burst
    /// so that the frame leaves in one GSO send; the frame's last packet (`end_of_frame`, the
    /// marker bit) sends the burst at once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_or_hold(
        &mut self,
        burst: &mut Option<BurstId>,
        owner: Owner,
        fd: RawFd,
        to: SocketAddr,
        raw: &RawAddr,
        slot: u32,
        len: usize,
        received_at: Instant,
        end_of_frame: bool,
    ) {
        inc(&self.stats.tx_packets);
        add(&self.stats.tx_bytes, len as u64);
        if let Some(id) = burst.take() {
            match self
                .bursts
                .append(id, owner, fd, to, slot, len, received_at)
            {
                Append::Held if !end_of_frame => {
                    *burst = Some(id);
                    return;
                }
                Append::Held | Append::HeldAndFull => {
                    self.send_burst(id);
                    return;
                }
                Append::DoesNotFit => self.send_burst(id),
            }
        }
        if !end_of_frame && let Some(id) = self.bursts.open(owner, fd, to, slot, len, received_at) {
            *burst = Some(id);
            return;
        }
        self.ring.send(fd, slot, len, raw);
        self.forwarded(received_at);
    }

    /// Hands an open burst to the kernel: one GSO `sendmsg`, or a plain send for one packet.
    pub(super) fn send_burst(&mut self, id: BurstId) {
        let burst = self.bursts.get(id);
        let to = RawAddr::new(burst.to);
        let fd = burst.fd;
        if burst.packets() == 1 {
            let first = burst.segments().next().zip(burst.received_at().next());
            self.bursts.release(id);
            if let Some(((slot, len), received_at)) = first {
                self.ring.send(fd, slot, len, &to);
                self.forwarded(received_at);
            }
            return;
        }
        self.ring
            .send_gso(id as usize, fd, &to, burst.segment_size, burst.segments());
        inc(&self.stats.gso_sends);
        add(&self.stats.gso_segments, burst.packets() as u64);
        let mut batch_waiting = false;
        for received_at in burst.received_at() {
            batch_waiting |= self.unsubmitted.note(received_at);
        }
        self.bursts.sent(id);
        if batch_waiting {
            self.submit_batch();
        }
    }

    /// Drops an open burst unsent: its player's media moved to another path, and the packets
    /// held for the old address would go nowhere useful (the player asks again for what it
    /// misses, on the new path).
    pub(super) fn discard_burst(&mut self, id: BurstId) {
        let burst = self.bursts.get(id);
        for &egress in burst.slots() {
            self.ring.release_egress(egress);
        }
        self.bursts.release(id);
    }

    /// Drops the frames waiting on a connection the media left (the one in flight finishes):
    /// they were for the old path, and a standby connection carries only ICE checks.
    pub(super) fn drop_queued_frames(&mut self, conn: usize, generation: u32) {
        let Some(c) = self.conns.get(conn, generation) else {
            return;
        };
        for (egress, _) in c.queue.drain(..) {
            self.ring.release_egress(egress);
        }
    }

    /// Takes the bursts whose hold ran out by `now` into `due` (owner, id), still open: the
    /// caller lets their players forget them, then sends each with [`Output::send_burst`].
    pub(super) fn take_due_bursts(&mut self, now: Instant, due: &mut Vec<(BurstId, Owner)>) {
        self.bursts.take_due(now, due);
    }

    /// The owner and socket of a burst, for [`Output::gso_failed`]'s caller to check.
    pub(super) fn burst_owner(&self, id: BurstId) -> (Owner, RawFd) {
        let burst = self.bursts.get(id);
        (burst.owner, burst.fd)
    }

    /// A GSO send failed (those that went through are finished by `finish_send`). Where the
    /// kernel refused the send as such (older kernels: no checksum offload on the route's
    /// device, a segment over the path MTU) and the player is still there (`player_alive`),
    /// its packets go again one by one, and after `GSO_REFUSALS_BEFORE_OFF` refusals the
    /// worker stops holding bursts.
    pub(super) fn gso_failed(
        &mut self,
        id: BurstId,
        result: i32,
        player_alive: bool,
        worker: usize,
    ) {
        let burst = self.bursts.get(id);
        let refused = matches!(
            -result,
            libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::EMSGSIZE | libc::ENOPROTOOPT
        );
        if !(refused && player_alive) {
            add(&self.stats.send_errors, burst.packets() as u64);
            for &egress in burst.slots() {
                self.ring.release_egress(egress);
            }
        } else {
            inc(&self.stats.gso_refused);
            self.gso_refusals += 1;
            if self.gso_refusals == GSO_REFUSALS_BEFORE_OFF && self.gso_enabled {
                self.gso_enabled = false;
                tracing::warn!(
                    worker,
                    errno = -result,
                    "the kernel keeps refusing UDP GSO sends; this worker now sends one packet per send"
                );
            }
            let to = RawAddr::new(burst.to);
            for (egress, len) in burst.segments() {
                self.ring.send(burst.fd, egress, len, &to);
            }
        }
        self.bursts.release(id);
    }

    /// Sends a copy of `data` (a DTLS record) to `peer`.
    pub(super) fn send_copy(&mut self, udp_fd: RawFd, peer: &Peer, data: &[u8]) {
        let Some(slot) = self.ring.alloc_egress() else {
            inc(&self.stats.drop_no_buffer);
            return;
        };
        self.ring.egress_buffer(slot)[EGRESS_HEADROOM..EGRESS_HEADROOM + data.len()]
            .copy_from_slice(data);
        self.transmit(udp_fd, peer, slot, data.len());
    }

    /// Sends the `len`-byte packet at `EGRESS_HEADROOM` in egress `slot` to `peer`; the slot
    /// is released here whatever happens.
    pub(super) fn transmit(&mut self, udp_fd: RawFd, peer: &Peer, slot: u32, len: usize) -> Sent {
        let sent = self.transmit_later(udp_fd, peer, slot, len);
        if let Peer::Tcp { conn, .. } = peer {
            self.flush_conn(*conn);
        }
        sent
    }

    /// As `transmit`, but a TCP frame only joins its connection's queue: the caller flushes
    /// the connection once it has queued all it has for that player, so they leave in one
    /// gathered `sendmsg`.
    pub(super) fn transmit_later(
        &mut self,
        udp_fd: RawFd,
        peer: &Peer,
        slot: u32,
        len: usize,
    ) -> Sent {
        match peer {
            Peer::Udp { raw, .. } => {
                if udp_fd < 0 {
                    self.ring.release_egress(slot);
                    return Sent::Dropped;
                }
                self.ring.send(udp_fd, slot, len, raw);
            }
            Peer::Tcp {
                conn, generation, ..
            } => {
                let limit = self.tcp_send_queue;
                let Some(c) = self.conns.get(*conn, *generation).filter(|c| !c.closing) else {
                    self.ring.release_egress(slot);
                    return Sent::Dropped;
                };
                if c.queue.len() >= limit {
                    // A player that cannot keep up loses whole frames, never part of one.
                    self.ring.release_egress(slot);
                    inc(&self.stats.drop_slow_tcp);
                    return Sent::Dropped;
                }
                c.queue.push_back((slot, framing::PREFIX_LEN + len));
                framing::write_prefix(self.ring.egress_buffer(slot), len);
            }
        }
        inc(&self.stats.tx_packets);
        add(&self.stats.tx_bytes, len as u64);
        Sent::Queued
    }

    /// Starts the next gathered send on a connection unless one is in flight.
    pub(super) fn flush_conn(&mut self, slot: usize) {
        let Some(c) = self.conns.at(slot) else {
            return;
        };
        if !c.in_flight.is_empty() || c.queue.is_empty() || c.closing {
            return;
        }
        let batch = c.queue.len().min(MAX_SEND_BATCH);
        c.in_flight.extend(c.queue.drain(..batch));
        let token = Token {
            slot,
            generation: c.generation,
        };
        let frames = c.in_flight.iter().map(|&(s, l)| (s, 0, l));
        c.in_flight_bytes = self.ring.send_tcp(token, c.fd, frames);
    }
}

/// Sends the RTCP the publisher's link has due at `now` (transport-wide feedback, NACKs, the
/// operator's REMB), one packet per egress buffer, until it has nothing more.
pub(super) fn send_link_feedback(session: &mut Session, now: Instant, out: &mut Output) {
    let Role::Publisher(publisher) = &mut session.role else {
        return;
    };
    let (Some(peer), Some(srtp)) = (session.remote, session.srtp_out.as_mut()) else {
        return;
    };
    let (rtcp_ssrc, ssrcs) = (publisher.rtcp_ssrc(), publisher.ssrcs());
    loop {
        let Some(egress) = out.ring.alloc_egress() else {
            inc(&out.stats.drop_no_buffer);
            return;
        };
        let buffer = &mut out.ring.egress_buffer(egress)[EGRESS_HEADROOM..];
        // A feedback packet stays within a safe path MTU, leaving the SRTCP trailer room.
        let room = buffer.len().min(MAX_FEEDBACK_LEN);
        let before = publisher.link.counters();
        let Some((len, kind)) = publisher
            .link
            .poll(now, &mut buffer[..room], rtcp_ssrc, ssrcs)
        else {
            out.ring.release_egress(egress);
            return;
        };
        let after = publisher.link.counters();
        add(&out.stats.losses_given_up, after.given_up - before.given_up);
        match kind {
            LinkRtcp::TransportFeedback => inc(&out.stats.transport_feedback_sent),
            LinkRtcp::Remb => inc(&out.stats.remb_sent),
            LinkRtcp::ReceiverReport => inc(&out.stats.receiver_reports_sent),
            LinkRtcp::Nack => {
                inc(&out.stats.nacks_sent);
                add(&out.stats.nacked_packets, after.nacked - before.nacked);
            }
        }
        match srtp.protect_rtcp(buffer, len) {
            Ok(len) => {
                out.transmit(session.udp_fd, &peer, egress, len);
            }
            Err(_) => out.ring.release_egress(egress),
        }
    }
}

/// Most probe padding packets one player gets per feedback tick (10 ms): 16 × 255 bytes is
/// about 3 Mbit/s, more than any probe asks.
const MAX_PADDING_PER_TICK: usize = 16;

/// Sends a simulcast player the padding its path probe wants now, on its video's RTX stream.
pub(super) fn send_probe_padding(session: &mut Session, now: Instant, out: &mut Output) {
    let Role::Player(player) = &mut session.role else {
        return;
    };
    if !player.has_layers() {
        return;
    }
    let (Some(peer), Some(srtp)) = (session.remote, session.srtp_out.as_mut()) else {
        return;
    };
    let mut due = player.probe_padding_due(now);
    let mut sent = 0;
    while due > 0 && sent < MAX_PADDING_PER_TICK {
        let Some(egress) = out.ring.alloc_egress() else {
            inc(&out.stats.drop_no_buffer);
            return;
        };
        let buffer = &mut out.ring.egress_buffer(egress)[EGRESS_HEADROOM..];
        let Some((len, _, _)) = player.write_probe_padding(now, buffer) else {
            out.ring.release_egress(egress);
            return;
        };
        match srtp.protect_rtp(buffer, len) {
            Ok(protected) => {
                out.transmit(session.udp_fd, &peer, egress, protected);
                inc(&out.stats.probe_padding_packets);
            }
            Err(_) => out.ring.release_egress(egress),
        }
        due = due.saturating_sub(len);
        sent += 1;
    }
}

/// Sends a Picture Loss Indication to a publisher for its video encoding `layer`.
pub(super) fn send_pli(session: &mut Session, layer: u8, out: &mut Output) {
    let Role::Publisher(publisher) = &session.role else {
        return;
    };
    let (true, Some(peer), Some(srtp)) = (
        publisher.knows_video(layer),
        session.remote,
        session.srtp_out.as_mut(),
    ) else {
        return;
    };
    let Some(egress) = out.ring.alloc_egress() else {
        inc(&out.stats.drop_no_buffer);
        return;
    };
    let buffer = &mut out.ring.egress_buffer(egress)[EGRESS_HEADROOM..];
    let Some(len) = publisher.write_pli(layer, buffer) else {
        out.ring.release_egress(egress);
        return;
    };
    match srtp.protect_rtcp(buffer, len) {
        Ok(len) => {
            if out.transmit(session.udp_fd, &peer, egress, len) == Sent::Queued {
                inc(&out.stats.keyframe_requests_sent);
            }
        }
        Err(_) => out.ring.release_egress(egress),
    }
}
