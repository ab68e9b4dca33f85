//! Workers: one thread per core, each pinned, with its own io_uring, sockets, sessions and
//! buffers. The control thread hands sessions over with [`Command`]s; workers report back
//! with [`Event`]s; publishers' packets reach players on other workers through the [`Mesh`].
//!
//! The packet path, publisher to players: a multishot receive lands the datagram (or a piece of
//! an ICE-TCP stream, cut into RFC 4571 frames in place) in a provided buffer; it is classified
//! by first byte; SRTP is removed in place; players on other workers get one shared handle per
//! worker; for local players the packet is staged, and at the end of the batch each player
//! gets all of its stream's staged packets in a row (`staged`): a copy in an egress buffer,
//! rewritten (SSRC, payload type, sequence, extension ids) and protected in place. A UDP
//! player's video packets wait in its frame burst and leave in one GSO `sendmsg` at the
//! frame's marker bit (`burst`); other UDP sends go one by one. Sends are submitted every
//! `SUBMIT_BATCH` packets and their completions reaped at once, so egress buffers stay warm. A
//! TCP player's frames go through its bounded send queue, one gathered `sendmsg` in flight per
//! connection so frames are never reordered or torn.

pub mod burst;
pub mod io;
pub mod mesh;
mod staged;
pub mod stats;

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use io_uring::cqueue;
use tokio::sync::mpsc::UnboundedSender;

use crate::sdp::{MediaKind, PlayedTrack};
use crate::session::ice::IceLite;
use crate::session::keyframe::{DEFAULT_KEYFRAME_INTERVAL, KeyframeThrottle};
use crate::session::sequence::SequenceMapper;
use crate::srtp::{SrtpContext, SrtpProfile};
use crate::wire::demux::{PacketKind, classify};
use crate::wire::framing::{self, FrameReader};
use crate::wire::rtcp::{self, SENDER_REPORT};
use crate::wire::rtp::{ExtensionIdMap, Rewrite, RtpHeader, rewrite_header_into};
use burst::{Append, BurstId, Bursts, Owner};
use hdrhistogram::Histogram;
use io::{
    EGRESS_HEADROOM, EgressPool, GsoSends, MAX_PACKET, ProvidedBuffers, RawAddr, Ring, SendBatch,
    WakeFd,
};
use mesh::{CrossMessage, Forwarded, Mesh, StreamId, Waker};
use staged::Staged;
use stats::{WorkerStats, add, inc, set};

pub type SessionId = u64;

thread_local! {
    static IS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a worker: lets a test's counting allocator attribute
/// allocations to the packet path. Allocation-free.
pub fn is_worker_thread() -> bool {
    IS_WORKER.with(|w| w.get())
}

const RING_ENTRIES: u32 = 4096;
const RECV_BUFFERS: u16 = 4096;
const EGRESS_BUFFERS: u32 = 16384;
/// Frame bursts open or in flight at once; a player past this many sends packet by packet.
const BURSTS: usize = 4096;
/// GSO sends the kernel may refuse before a worker stops trying (it logs why).
const GSO_REFUSALS_BEFORE_OFF: u32 = 16;
const TICK: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_millis(50);
/// ICE-TCP connections one session may hold at once; browsers open one or two per candidate
/// pair they check, so more than this is abuse. When a session is full, a new connection takes
/// the place of the oldest one that has not sent a valid ICE check.
const MAX_TCP_CONNECTIONS_PER_SESSION: usize = 8;
/// Connections still closing (operations in flight) count too, up to this many in all, so
/// churning connections cannot pile up descriptors either.
const MAX_TCP_OPEN_PER_SESSION: u32 = 2 * MAX_TCP_CONNECTIONS_PER_SESSION as u32;
/// An ICE-TCP connection must carry a valid ICE check for its session this soon after it is
/// accepted, or it is closed: an idle connection must not hold one of the session's places.
/// Browsers send their first check within milliseconds of connecting.
const TCP_VALIDATION_DEADLINE: Duration = Duration::from_secs(3);
/// DTLS records dropped because the session's handshake queue was full before the session is
/// ended as a flood. A real handshake queues a handful of records at most.
const DTLS_FLOOD_DROPS: u32 = 256;
/// Forwarded packets submitted to the kernel together; see `Output::forwarded`.
const SUBMIT_BATCH: u64 = 64;
/// Runs of forwarded packets by receive time kept for the latency histogram per submission.
const UNSUBMITTED_RUNS: usize = 256;

/// Most workers one relay runs: the cross-worker queues grow with the square of the count
/// (at 256 workers, 65 280 queues of 256 slots, 383 MiB), and past this a relay is better
/// split into several (cascade).
pub const MAX_WORKERS: usize = 256;

/// Memory a relay of `workers` allocates at start for its data plane: the cross-worker
/// queues, and each worker's receive and egress buffers.
pub fn data_plane_memory(workers: usize) -> (usize, usize) {
    let per_worker = RECV_BUFFERS as usize * io::RECV_BUFFER_SIZE
        + EGRESS_BUFFERS as usize * io::EGRESS_BUFFER_SIZE;
    (mesh::memory_bytes(workers), per_worker)
}

/// What the control thread asks of a worker.
pub enum Command {
    AddSession(Box<NewSession>),
    /// DTLS finished: keying material exported per RFC 5764 (client key, server key, salts).
    SetKeys {
        session: SessionId,
        profile: SrtpProfile,
        material: Vec<u8>,
    },
    /// A DTLS record to send to the session's peer.
    SendDtls {
        session: SessionId,
        data: Vec<u8>,
    },
    RemoveSession {
        session: SessionId,
    },
    /// A player of `stream` on `worker` came (+1) or went (-1); sent to the publisher's worker.
    RemoteInterest {
        stream: StreamId,
        worker: usize,
        delta: i32,
    },
}

pub struct NewSession {
    pub id: SessionId,
    /// The session's UDP socket, when `media.protocol` offers UDP.
    pub udp: Option<UdpSocket>,
    /// The session's ICE-TCP listener on the same port, when it offers TCP.
    pub tcp: Option<TcpListener>,
    pub stream: StreamId,
    pub publisher_worker: usize,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub role: NewRole,
    /// The session's DTLS records go here, to its handshake on the control thread. Bounded:
    /// when it is full the worker drops the record and counts it, so a flood costs the relay
    /// a fixed amount of memory per session.
    pub dtls_records: tokio::sync::mpsc::Sender<Vec<u8>>,
}

pub enum NewRole {
    Publisher { payload_types: Vec<(u8, MediaKind)> },
    Player { tracks: Vec<PlayedTrack> },
}

/// What a worker tells the control thread.
#[derive(Debug)]
pub enum Event {
    IceConnected {
        session: SessionId,
        remote: SocketAddr,
    },
    IceTimeout {
        session: SessionId,
    },
    /// The session kept sending DTLS records faster than its handshake takes them.
    DtlsFlood {
        session: SessionId,
    },
    /// The session's socket is closed: its port may be reused.
    Closed {
        session: SessionId,
    },
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Frame bursts go out as UDP GSO sends (already probed: the kernel has `UDP_SEGMENT`).
    pub gso: bool,
    /// Longest hold of a packet waiting for the rest of its frame's burst.
    pub gso_hold: Duration,
    pub ice_timeout: Duration,
    /// Frames queued per ICE-TCP connection before whole frames are dropped.
    pub tcp_send_queue: usize,
    /// Media binds loopback: packets from other sources are dropped, never answered.
    pub loopback_only: bool,
    pub pin: bool,
}

/// The control thread's handle on a worker.
#[derive(Clone)]
pub struct WorkerHandle {
    pub index: usize,
    commands: Arc<SegQueue<Command>>,
    mesh: Arc<Mesh>,
    pub stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    pub fn send(&self, command: Command) {
        self.commands.push(command);
        self.mesh.wakers[self.index].wake();
    }

    /// Packets waiting in the cross-worker queues towards this worker.
    pub fn ring_occupancy(&self) -> usize {
        self.mesh.occupancy(self.index)
    }
}

/// Starts `count` workers; returns once each has its ring, or the first error.
pub fn start_workers(
    count: usize,
    settings: WorkerSettings,
    events: UnboundedSender<Event>,
) -> std::io::Result<Vec<WorkerHandle>> {
    let wake_fds = (0..count)
        .map(|_| WakeFd::new())
        .collect::<std::io::Result<Vec<_>>>()?;
    let wakers = wake_fds
        .iter()
        .map(|w| w.notifier().map(Waker::new))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mesh = Arc::new(Mesh::new(wakers));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(count);
    for (index, wake) in wake_fds.into_iter().enumerate() {
        let commands = Arc::new(SegQueue::new());
        let stats = Arc::new(WorkerStats::default());
        let core_id = (settings.pin && !cores.is_empty()).then(|| cores[index % cores.len()]);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (c, m, s, e, st) = (
            commands.clone(),
            mesh.clone(),
            stats.clone(),
            events.clone(),
            settings.clone(),
        );
        std::thread::Builder::new()
            .name(format!("corecast-w{index}"))
            .spawn(move || {
                IS_WORKER.with(|w| w.set(true));
                let pinned = core_id.is_some_and(core_affinity::set_for_current);
                match Worker::new(index, wake, c, m, s, e, st) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok((
                            worker.core.out.ring.description.clone(),
                            pinned,
                            core_id,
                        )));
                        worker.run();
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })?;
        let (ring, pinned, core_id) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("worker thread died during start-up"))??;
        match core_id {
            Some(core) if pinned => {
                tracing::info!(worker = index, core = core.id, ring = %ring, "worker started, pinned")
            }
            Some(core) => {
                tracing::warn!(worker = index, core = core.id, ring = %ring, "worker started, but pinning to its core failed")
            }
            None => tracing::info!(worker = index, ring = %ring, "worker started, not pinned"),
        }
        handles.push(WorkerHandle {
            index,
            commands,
            mesh: mesh.clone(),
            stats,
        });
    }
    Ok(handles)
}

struct PublisherState {
    kind_by_payload_type: [Option<MediaKind>; 128],
    ssrc_by_kind: [Option<u32>; 2],
    keyframes: KeyframeThrottle,
    /// The sender SSRC of the relay's RTCP towards this publisher.
    rtcp_ssrc: u32,
}

struct PlayerTrack {
    publisher_payload_type: u8,
    payload_type: u8,
    ssrc: u32,
    extension_ids: ExtensionIdMap,
    sequence: SequenceMapper,
}

enum Role {
    Publisher(Box<PublisherState>),
    Player([Option<Box<PlayerTrack>>; 2]),
}

/// Where a packet came from and where replies go: a UDP address, or one ICE-TCP connection.
#[derive(Clone, Copy)]
enum Peer {
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
    fn udp(addr: SocketAddr) -> Peer {
        Peer::Udp {
            addr,
            raw: RawAddr::new(addr),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Peer::Udp { addr, .. } | Peer::Tcp { addr, .. } => *addr,
        }
    }

    /// Whether two peers are the same path: the same UDP address, or the same connection.
    fn same_path(&self, other: &Peer) -> bool {
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

    fn tcp_conn(&self) -> Option<(usize, u32)> {
        match self {
            Peer::Tcp {
                conn, generation, ..
            } => Some((*conn, *generation)),
            Peer::Udp { .. } => None,
        }
    }
}

struct Session {
    id: SessionId,
    generation: u32,
    udp: Option<UdpSocket>,
    /// The UDP socket's descriptor, or -1 without one.
    udp_fd: RawFd,
    listener: Option<TcpListener>,
    /// Open ICE-TCP connections (slots in the connection table).
    conns: Vec<usize>,
    /// Connections accepted and not yet fully closed; the session ends after the last.
    open_conns: u32,
    stream: StreamId,
    ice: IceLite,
    /// The path ICE nominated; media goes only there.
    remote: Option<Peer>,
    /// Where DTLS records came from, for replies before nomination.
    dtls_peer: Option<Peer>,
    dtls_records: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Records dropped for a full DTLS queue; at `DTLS_FLOOD_DROPS` the session is reported.
    dtls_dropped: u32,
    srtp_in: Option<SrtpContext>,
    srtp_out: Option<SrtpContext>,
    role: Role,
    recv_armed: bool,
    accept_armed: bool,
    closing: bool,
    timeout_reported: bool,
    /// A player's open frame burst (UDP GSO).
    burst: Option<BurstId>,
}

/// One accepted ICE-TCP connection.
struct TcpConn {
    stream: TcpStream,
    fd: RawFd,
    generation: u32,
    session: usize,
    session_generation: u32,
    peer: SocketAddr,
    reader: FrameReader,
    /// A valid ICE check arrived on it; before that only STUN is accepted.
    validated: bool,
    /// Unvalidated connections are closed `TCP_VALIDATION_DEADLINE` after this.
    accepted_at: Instant,
    /// Frames waiting to be sent: (egress slot, bytes including the length prefix).
    queue: VecDeque<(u32, usize)>,
    /// Frames of the one `sendmsg` in flight.
    in_flight: Vec<(u32, usize)>,
    in_flight_bytes: usize,
    batch: SendBatch,
    recv_armed: bool,
    closing: bool,
}

/// What the worker closes once nothing queued on its ring refers to it any more.
enum ToClose {
    Session {
        id: SessionId,
        udp: Option<UdpSocket>,
        listener: Option<TcpListener>,
    },
    Connection(TcpStream),
}

struct LocalStream {
    publisher_worker: usize,
    publisher: Option<usize>,
    players: Vec<usize>,
    /// Players per other worker, kept on the publisher's worker.
    remote_interest: Vec<u32>,
}

impl LocalStream {
    fn is_unused(&self) -> bool {
        self.publisher.is_none()
            && self.players.is_empty()
            && self.remote_interest.iter().all(|&n| n == 0)
    }
}

fn user_data(op: u64, slot: usize, generation: u32) -> u64 {
    op | ((generation as u64 & 0xff_ffff) << 32) | slot as u64
}

/// The sending side: the ring, the egress buffers and the ICE-TCP connections whose send
/// queues hold them.
struct Output {
    ring: Ring,
    pool: EgressPool,
    conns: Vec<Option<TcpConn>>,
    free_conns: Vec<usize>,
    next_conn_generation: u32,
    stats: Arc<WorkerStats>,
    tcp_send_queue: usize,
    unsubmitted: Unsubmitted,
    /// Players' frame bursts and the GSO sends that carry them.
    bursts: Bursts,
    gso: GsoSends,
    gso_enabled: bool,
    gso_refusals: u32,
    /// Completions taken off the ring while reaping sends mid-turn that need the worker (a
    /// receive, a refused GSO send...): handled first in the next turn, in order.
    deferred: Vec<cqueue::Entry>,
    /// Relay latency recorded since the last tick folded it into `stats.relay_latency`.
    latency: Histogram<u64>,
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

/// Whether a packet was handed to the kernel (or a send queue) or dropped.
#[derive(PartialEq, Eq)]
enum Sent {
    Queued,
    Dropped,
}

impl Output {
    /// Notes a forwarded packet received at `origin`; every `SUBMIT_BATCH` of them go to the
    /// kernel at once rather than at the end of the loop turn, so a large fanout starts
    /// leaving while the rest is prepared.
    fn forwarded(&mut self, origin: Instant) {
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
        self.ring.completions(&mut reaped);
        let mut kept = already_deferred;
        for i in already_deferred..reaped.len() {
            let cqe = reaped[i].clone();
            if !self.finish_send(&cqe) {
                reaped[kept] = cqe;
                kept += 1;
            }
        }
        reaped.truncate(kept);
        self.deferred = reaped;
    }

    /// Handles the completion of a UDP send (plain or GSO) that went through: its egress
    /// slots are free again. Returns false for everything else, which the worker handles.
    fn finish_send(&mut self, cqe: &cqueue::Entry) -> bool {
        let (ud, result) = (cqe.user_data(), cqe.result());
        match ud & io::OP_MASK {
            io::OP_SEND => {
                self.pool.release((ud & 0xffff_ffff) as u32);
                if result < 0 {
                    inc(&self.stats.send_errors);
                }
                true
            }
            io::OP_GSO_SEND if result >= 0 => {
                let id = (ud & 0xffff_ffff) as BurstId;
                for &egress in self.bursts.get(id).slots() {
                    self.pool.release(egress);
                }
                self.bursts.release(id);
                true
            }
            _ => false,
        }
    }

    /// Records the forwarded packets about to be submitted in the relay-latency histogram
    /// (receive completion to send submission; the kernel's own send time is not in it).
    fn record_submitted(&mut self) {
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

    /// Sends a forwarded video packet to a UDP player, or holds it in the player's frame burst
    /// so that the frame leaves in one GSO send; the frame's last packet (`end_of_frame`, the
    /// marker bit) sends the burst at once.
    #[allow(clippy::too_many_arguments)]
    fn send_or_hold(
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
        self.pool
            .send(&mut self.ring, fd, slot, EGRESS_HEADROOM, len, raw);
        self.forwarded(received_at);
    }

    /// Hands an open burst to the kernel: one GSO `sendmsg`, or a plain send for one packet.
    fn send_burst(&mut self, id: BurstId) {
        let burst = self.bursts.get(id);
        let to = RawAddr::new(burst.to);
        let fd = burst.fd;
        if burst.packets() == 1 {
            let first = burst.segments().next().zip(burst.received_at().next());
            self.bursts.release(id);
            if let Some(((slot, len), received_at)) = first {
                self.pool
                    .send(&mut self.ring, fd, slot, EGRESS_HEADROOM, len, &to);
                self.forwarded(received_at);
            }
            return;
        }
        self.gso.submit(
            id as usize,
            &mut self.ring,
            &self.pool,
            fd,
            &to,
            burst.segment_size,
            burst.segments(),
            io::OP_GSO_SEND | id as u64,
        );
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

    /// Of `conns`, the connection accepted first that has not sent a valid ICE check.
    fn oldest_unvalidated(&self, conns: &[usize]) -> Option<usize> {
        conns
            .iter()
            .copied()
            .filter_map(|slot| Some((slot, self.conns.get(slot)?.as_ref()?)))
            .filter(|(_, c)| !c.validated && !c.closing)
            .min_by_key(|(_, c)| c.accepted_at)
            .map(|(slot, _)| slot)
    }

    fn conn(&mut self, slot: usize, generation: u32) -> Option<&mut TcpConn> {
        self.conns
            .get_mut(slot)?
            .as_mut()
            .filter(|c| c.generation == generation)
    }

    /// Sends the `len`-byte packet at `EGRESS_HEADROOM` in egress `slot` to `peer`; the slot
    /// is released here whatever happens.
    fn transmit(&mut self, udp_fd: RawFd, peer: &Peer, slot: u32, len: usize) -> Sent {
        let sent = self.transmit_later(udp_fd, peer, slot, len);
        if let Peer::Tcp { conn, .. } = peer {
            self.flush_conn(*conn);
        }
        sent
    }

    /// As `transmit`, but a TCP frame only joins its connection's queue: the caller flushes
    /// the connection once it has queued all it has for that player, so they leave in one
    /// gathered `sendmsg`.
    fn transmit_later(&mut self, udp_fd: RawFd, peer: &Peer, slot: u32, len: usize) -> Sent {
        match peer {
            Peer::Udp { raw, .. } => {
                if udp_fd < 0 {
                    self.pool.release(slot);
                    return Sent::Dropped;
                }
                self.pool
                    .send(&mut self.ring, udp_fd, slot, EGRESS_HEADROOM, len, raw);
            }
            Peer::Tcp {
                conn, generation, ..
            } => {
                let limit = self.tcp_send_queue;
                let Some(c) = self.conn(*conn, *generation).filter(|c| !c.closing) else {
                    self.pool.release(slot);
                    return Sent::Dropped;
                };
                if c.queue.len() >= limit {
                    // A player that cannot keep up loses whole frames, never part of one.
                    self.pool.release(slot);
                    inc(&self.stats.drop_slow_tcp);
                    return Sent::Dropped;
                }
                c.queue.push_back((slot, framing::PREFIX_LEN + len));
                framing::write_prefix(self.pool.buffer(slot), len);
            }
        }
        inc(&self.stats.tx_packets);
        add(&self.stats.tx_bytes, len as u64);
        Sent::Queued
    }

    /// Starts the next gathered send on a connection unless one is in flight.
    fn flush_conn(&mut self, slot: usize) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        if !c.in_flight.is_empty() || c.queue.is_empty() || c.closing {
            return;
        }
        let batch = c.queue.len().min(io::MAX_SEND_BATCH);
        c.in_flight.extend(c.queue.drain(..batch));
        let ud = user_data(io::OP_TCP_SEND, slot, c.generation);
        let frames = c.in_flight.iter().map(|&(s, l)| (s, 0, l));
        c.in_flight_bytes = c.batch.submit(&mut self.ring, &self.pool, c.fd, frames, ud);
    }
}

/// Everything a worker owns except its receive buffers, which the packet handlers borrow from.
struct Core {
    index: usize,
    recv: io::RecvOp,
    wake: WakeFd,
    out: Output,
    sessions: Vec<Option<Session>>,
    free_slots: Vec<usize>,
    next_generation: u32,
    by_id: HashMap<SessionId, usize>,
    streams: HashMap<StreamId, LocalStream>,
    mesh: Arc<Mesh>,
    commands: Arc<SegQueue<Command>>,
    events: UnboundedSender<Event>,
    settings: WorkerSettings,
    wake_pending: Vec<bool>,
    /// This turn's publisher packets, fanned out player by player (see `staged`).
    staged: Staged,
    /// Bursts whose hold ran out this turn (kept to reuse its memory).
    due_bursts: Vec<(BurstId, Owner)>,
    /// Packets handed to other workers, reused once they let go of them.
    shared_pool: mesh::SharedPool,

    /// Closed (and reported) once nothing queued on the ring refers to them.
    to_close: Vec<ToClose>,
    next_tick: Instant,
}

struct Worker {
    // Field order is drop order: the ring (inside `core`) goes before the buffers it uses.
    core: Core,
    buffers: ProvidedBuffers,
    completions: Vec<cqueue::Entry>,
}

impl Worker {
    fn new(
        index: usize,
        wake: WakeFd,
        commands: Arc<SegQueue<Command>>,
        mesh: Arc<Mesh>,
        stats: Arc<WorkerStats>,
        events: UnboundedSender<Event>,
        settings: WorkerSettings,
    ) -> std::io::Result<Worker> {
        let ring = Ring::new(RING_ENTRIES)?;
        let buffers = ProvidedBuffers::new(&ring, RECV_BUFFERS, 0).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("registering the provided-buffer ring failed (kernel 5.19+ needed): {e}"),
            )
        })?;
        let workers = mesh.workers();
        Ok(Worker {
            core: Core {
                index,
                recv: buffers.recv_op(),
                wake,
                out: Output {
                    ring,
                    pool: EgressPool::new(EGRESS_BUFFERS),
                    conns: Vec::new(),
                    free_conns: Vec::new(),
                    next_conn_generation: 0,
                    stats,
                    tcp_send_queue: settings.tcp_send_queue,
                    unsubmitted: Unsubmitted {
                        runs: Vec::with_capacity(UNSUBMITTED_RUNS),
                        count: 0,
                    },
                    bursts: Bursts::new(BURSTS, settings.gso_hold, Instant::now()),
                    gso: GsoSends::new(if settings.gso { BURSTS } else { 0 }),
                    gso_enabled: settings.gso,
                    gso_refusals: 0,
                    deferred: Vec::with_capacity(RING_ENTRIES as usize * 4),
                    latency: stats::latency_histogram(),
                },
                sessions: Vec::new(),
                free_slots: Vec::new(),
                next_generation: 0,
                by_id: HashMap::new(),
                streams: HashMap::new(),
                mesh,
                commands,
                events,
                settings,
                wake_pending: vec![false; workers],
                staged: Staged::default(),
                due_bursts: Vec::with_capacity(BURSTS),
                shared_pool: mesh::SharedPool::new(if workers > 1 { 1024 } else { 0 }),

                to_close: Vec::new(),
                next_tick: Instant::now(),
            },
            buffers,
            completions: Vec::with_capacity(RING_ENTRIES as usize * 4),
        })
    }

    fn run(&mut self) {
        self.core.wake.arm(&mut self.core.out.ring);
        loop {
            let now = Instant::now();
            self.core.drain_commands(now);
            self.core.drain_mesh(now);
            self.core.flush_staged(now);
            self.process_completions(now);
            self.core.flush_staged(now);
            if now >= self.core.next_tick {
                self.core.tick(now);
            }
            self.core.send_due_bursts(Instant::now());
            self.core.flush_wakes();
            self.core.out.record_submitted();
            if !self.core.to_close.is_empty() {
                // Submit what may still refer to finished sockets, then close them before
                // waiting, so the control thread hears of their ports at once. A socket is
                // never closed while a queued operation could still name its descriptor.
                let _ = self.core.out.ring.submit();
                if self.core.out.ring.backlog_is_empty() {
                    self.core.close_finished();
                }
            }
            let result = if self.core.has_work() {
                self.core.out.ring.submit()
            } else {
                let mesh = self.core.mesh.clone();
                let waker = &mesh.wakers[self.core.index];
                waker.park();
                let r = if self.core.has_work() {
                    self.core.out.ring.submit()
                } else {
                    // Wake for the next burst's hold deadline; no timer operation needed.
                    let wait = self.core.out.bursts.next_due().map_or(MAX_WAIT, |due| {
                        due.saturating_duration_since(Instant::now()).min(MAX_WAIT)
                    });
                    self.core.out.ring.submit_and_wait(wait)
                };
                waker.unpark();
                r
            };
            if let Err(e) = result {
                tracing::error!(worker = self.core.index, error = %e, "io_uring submit failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn process_completions(&mut self, now: Instant) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.append(&mut self.core.out.deferred);
        self.core.out.ring.completions(&mut completions);
        for cqe in completions.drain(..) {
            if self.core.out.finish_send(&cqe) {
                continue;
            }
            let ud = cqe.user_data();
            let result = cqe.result();
            let flags = cqe.flags();
            let slot = (ud & 0xffff_ffff) as usize;
            let generation = ((ud >> 32) & 0xff_ffff) as u32;
            match ud & io::OP_MASK {
                io::OP_RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if result > 0 {
                            match self.buffers.datagram(bid, result as usize) {
                                Some((from, data)) => {
                                    self.core.on_datagram(slot, generation, from, data, now)
                                }
                                None => inc(&self.core.out.stats.drop_garbage),
                            }
                        }
                        self.buffers.recycle(bid);
                        self.buffers.publish();
                    }
                    if result == -libc::ENOBUFS {
                        inc(&self.core.out.stats.recv_no_buffer);
                    } else if result < 0 && result != -libc::ECANCELED {
                        tracing::debug!(
                            worker = self.core.index,
                            errno = -result,
                            "receive failed"
                        );
                    }
                    if !cqueue::more(flags) {
                        self.core.recv_ended(slot, generation);
                    }
                }
                io::OP_TCP_RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if result > 0 {
                            let data = self.buffers.stream_data(bid, result as usize);
                            self.core.on_tcp_data(slot, generation, data, now);
                        }
                        self.buffers.recycle(bid);
                        self.buffers.publish();
                    }
                    if result == -libc::ENOBUFS {
                        inc(&self.core.out.stats.recv_no_buffer);
                    }
                    if !cqueue::more(flags) {
                        // 0 is the peer closing; errors other than running out of buffers end
                        // the connection too.
                        let keep = result > 0 || result == -libc::ENOBUFS;
                        self.core.tcp_recv_ended(slot, generation, keep);
                    }
                }
                io::OP_TCP_SEND => self.core.tcp_sent(slot, generation, result),
                io::OP_GSO_SEND => self.core.gso_failed(slot as BurstId, result),
                io::OP_ACCEPT => self
                    .core
                    .accepted(slot, generation, result, cqueue::more(flags), now),
                io::OP_WAKE => self.core.wake.arm(&mut self.core.out.ring),
                _ => {}
            }
        }
        self.completions = completions;
    }
}

impl Core {
    fn has_work(&mut self) -> bool {
        !self.commands.is_empty()
            || self.mesh.has_incoming(self.index)
            || !self.out.deferred.is_empty()
            || self.out.ring.has_completions()
    }

    fn stats(&self) -> &WorkerStats {
        &self.out.stats
    }

    fn drain_commands(&mut self, now: Instant) {
        while let Some(command) = self.commands.pop() {
            match command {
                Command::AddSession(new) => self.add_session(*new, now),
                Command::SetKeys {
                    session,
                    profile,
                    material,
                } => self.set_keys(session, profile, &material, now),
                Command::SendDtls { session, data } => self.send_dtls(session, &data),
                Command::RemoveSession { session } => {
                    if let Some(&slot) = self.by_id.get(&session) {
                        self.begin_close(slot);
                    }
                }
                Command::RemoteInterest {
                    stream,
                    worker,
                    delta,
                } => {
                    let workers = self.mesh.workers();
                    let index = self.index;
                    let local = self.streams.entry(stream).or_insert_with(|| LocalStream {
                        publisher_worker: index,
                        publisher: None,
                        players: Vec::new(),
                        remote_interest: vec![0; workers],
                    });
                    if let Some(n) = local.remote_interest.get_mut(worker) {
                        *n = n.saturating_add_signed(delta);
                    }
                    if local.is_unused() {
                        self.streams.remove(&stream);
                    }
                }
            }
        }
    }

    fn add_session(&mut self, new: NewSession, now: Instant) {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });
        self.next_generation = self.next_generation.wrapping_add(1) & 0xff_ffff;
        let generation = self.next_generation;
        let role = match new.role {
            NewRole::Publisher { payload_types } => {
                let mut kind_by_payload_type = [None; 128];
                for (pt, kind) in payload_types {
                    kind_by_payload_type[(pt & 0x7f) as usize] = Some(kind);
                }
                Role::Publisher(Box::new(PublisherState {
                    kind_by_payload_type,
                    ssrc_by_kind: [None; 2],
                    keyframes: KeyframeThrottle::new(DEFAULT_KEYFRAME_INTERVAL),
                    rtcp_ssrc: rand::random(),
                }))
            }
            NewRole::Player { tracks } => {
                let mut by_kind: [Option<Box<PlayerTrack>>; 2] = [None, None];
                for t in tracks {
                    by_kind[t.kind.index()] = Some(Box::new(PlayerTrack {
                        publisher_payload_type: t.publisher_payload_type,
                        payload_type: t.payload_type,
                        ssrc: t.ssrc,
                        extension_ids: t.extension_ids,
                        sequence: SequenceMapper::new(rand::random()),
                    }));
                }
                Role::Player(by_kind)
            }
        };
        let workers = self.mesh.workers();
        let local = self
            .streams
            .entry(new.stream)
            .or_insert_with(|| LocalStream {
                publisher_worker: new.publisher_worker,
                publisher: None,
                players: Vec::new(),
                remote_interest: vec![0; workers],
            });
        match role {
            Role::Publisher(_) => local.publisher = Some(slot),
            Role::Player(_) => local.players.push(slot),
        }
        let udp_fd = new.udp.as_ref().map_or(-1, |s| s.as_raw_fd());
        if udp_fd >= 0 {
            io::arm_recv(
                &mut self.out.ring,
                self.recv,
                udp_fd,
                user_data(io::OP_RECV, slot, generation),
            );
        }
        if let Some(listener) = &new.tcp {
            io::arm_accept(
                &mut self.out.ring,
                listener.as_raw_fd(),
                user_data(io::OP_ACCEPT, slot, generation),
            );
        }
        self.sessions[slot] = Some(Session {
            id: new.id,
            generation,
            recv_armed: new.udp.is_some(),
            accept_armed: new.tcp.is_some(),
            udp: new.udp,
            udp_fd,
            listener: new.tcp,
            conns: Vec::new(),
            open_conns: 0,
            stream: new.stream,
            ice: IceLite::new(
                now,
                &new.local_ufrag,
                &new.local_pwd,
                &new.remote_ufrag,
                self.settings.ice_timeout,
            ),
            remote: None,
            dtls_peer: None,
            dtls_records: new.dtls_records,
            dtls_dropped: 0,
            srtp_in: None,
            srtp_out: None,
            role,
            closing: false,
            timeout_reported: false,
            burst: None,
        });
        self.by_id.insert(new.id, slot);
    }

    fn set_keys(&mut self, id: SessionId, profile: SrtpProfile, material: &[u8], now: Instant) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        match SrtpContext::from_dtls_export(profile, material, false) {
            Ok((outbound, inbound)) => {
                session.srtp_out = Some(outbound);
                session.srtp_in = Some(inbound);
                if matches!(session.role, Role::Player(_)) {
                    // A player that just joined needs a keyframe to start decoding.
                    let stream = session.stream;
                    self.request_keyframe(stream, now);
                }
            }
            Err(e) => tracing::warn!(session = id, error = %e, "unusable SRTP keys"),
        }
    }

    fn send_dtls(&mut self, id: SessionId, data: &[u8]) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let Some(session) = self.sessions[slot].as_ref() else {
            return;
        };
        let Some(peer) = session.remote.or(session.dtls_peer) else {
            return;
        };
        let udp_fd = session.udp_fd;
        if data.len() > MAX_PACKET {
            return;
        }
        let Some(out) = self.out.pool.alloc() else {
            inc(&self.out.stats.drop_no_buffer);
            return;
        };
        self.out.pool.buffer(out)[EGRESS_HEADROOM..EGRESS_HEADROOM + data.len()]
            .copy_from_slice(data);
        self.out.transmit(udp_fd, &peer, out, data.len());
    }

    fn begin_close(&mut self, slot: usize) {
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        if session.closing {
            return;
        }
        session.closing = true;
        if let Some(id) = session.burst.take() {
            self.out.send_burst(id);
        }
        let stream = session.stream;
        let generation = session.generation;
        if session.recv_armed {
            io::cancel(&mut self.out.ring, user_data(io::OP_RECV, slot, generation));
        }
        if session.accept_armed {
            io::cancel(
                &mut self.out.ring,
                user_data(io::OP_ACCEPT, slot, generation),
            );
        }
        let conns = std::mem::take(&mut session.conns);
        if let Some(local) = self.streams.get_mut(&stream) {
            if local.publisher == Some(slot) {
                local.publisher = None;
                // Without a publisher nothing is fanned out, and the players elsewhere end
                // with the stream (their interest updates may never come): forget them.
                local.remote_interest.fill(0);
            }
            local.players.retain(|&p| p != slot);
            if local.is_unused() {
                self.streams.remove(&stream);
            }
        }
        for conn in conns {
            self.close_conn(conn);
        }
        self.maybe_finish_session(slot);
    }

    /// Frees a closing session once its receive, its accept and its connections are done.
    fn maybe_finish_session(&mut self, slot: usize) {
        let done = self.sessions[slot]
            .as_ref()
            .is_some_and(|s| s.closing && !s.recv_armed && !s.accept_armed && s.open_conns == 0);
        if !done {
            return;
        }
        let Some(session) = self.sessions[slot].take() else {
            return;
        };
        self.free_slots.push(slot);
        self.by_id.remove(&session.id);
        self.to_close.push(ToClose::Session {
            id: session.id,
            udp: session.udp,
            listener: session.listener,
        });
    }

    /// Closes finished sockets and connections, and only then reports sessions closed, so the
    /// control thread never hands out a port whose sockets still exist.
    fn close_finished(&mut self) {
        for item in self.to_close.drain(..) {
            match item {
                ToClose::Session { id, udp, listener } => {
                    drop((udp, listener));
                    let _ = self.events.send(Event::Closed { session: id });
                }
                ToClose::Connection(stream) => drop(stream),
            }
        }
    }

    fn recv_ended(&mut self, slot: usize, generation: u32) {
        let Some(session) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if session.generation != generation {
            return;
        }
        session.recv_armed = false;
        if session.closing {
            self.maybe_finish_session(slot);
        } else {
            session.recv_armed = true;
            let ud = user_data(io::OP_RECV, slot, generation);
            io::arm_recv(&mut self.out.ring, self.recv, session.udp_fd, ud);
        }
    }

    fn accepted(&mut self, slot: usize, generation: u32, result: i32, more: bool, now: Instant) {
        let Some(session) = self
            .sessions
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == generation)
        else {
            if result >= 0 {
                drop(io::adopt_stream(result));
            }
            return;
        };
        if !more {
            // Re-armed on the next tick: an error such as EMFILE must not spin the loop.
            session.accept_armed = false;
        }
        if result >= 0 {
            let stream = io::adopt_stream(result);
            let peer = stream.peer_addr().ok();
            let full = session.conns.len() >= MAX_TCP_CONNECTIONS_PER_SESSION;
            // A full session makes room by closing its oldest connection that has not sent a
            // valid check; only validated connections keep their places.
            let evict = if full {
                self.out.oldest_unvalidated(&session.conns)
            } else {
                None
            };
            let refuse = session.closing
                || (full && evict.is_none())
                || session.open_conns >= MAX_TCP_OPEN_PER_SESSION
                || peer.is_none_or(|p| self.settings.loopback_only && !p.ip().is_loopback());
            match peer {
                Some(peer) if !refuse => {
                    let _ = stream.set_nodelay(true);
                    let session_generation = session.generation;
                    session.open_conns += 1;
                    if let Some(old) = evict {
                        inc(&self.out.stats.tcp_evicted);
                        self.close_conn(old);
                    }
                    let conn = self.add_conn(stream, peer, slot, session_generation, now);
                    if let Some(s) = self.sessions[slot].as_mut() {
                        s.conns.push(conn);
                    }
                    inc(&self.out.stats.tcp_accepted);
                }
                _ => {
                    drop(stream);
                    inc(&self.out.stats.tcp_refused);
                }
            }
        }
        if !more {
            self.maybe_finish_session(slot);
        }
    }

    fn add_conn(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        session: usize,
        session_generation: u32,
        now: Instant,
    ) -> usize {
        let out = &mut self.out;
        let slot = out.free_conns.pop().unwrap_or_else(|| {
            out.conns.push(None);
            out.conns.len() - 1
        });
        out.next_conn_generation = out.next_conn_generation.wrapping_add(1) & 0xff_ffff;
        let generation = out.next_conn_generation;
        let fd = stream.as_raw_fd();
        io::arm_stream_recv(
            &mut out.ring,
            self.recv,
            fd,
            user_data(io::OP_TCP_RECV, slot, generation),
        );
        out.conns[slot] = Some(TcpConn {
            stream,
            fd,
            generation,
            session,
            session_generation,
            peer,
            reader: FrameReader::new(MAX_PACKET),
            validated: false,
            accepted_at: now,
            queue: VecDeque::with_capacity(out.tcp_send_queue),
            in_flight: Vec::with_capacity(io::MAX_SEND_BATCH),
            in_flight_bytes: 0,
            batch: SendBatch::default(),
            recv_armed: true,
            closing: false,
        });
        slot
    }

    /// Starts closing a connection: its operations are cancelled, the session forgets it at
    /// once (so nothing is sent to it again), and it is freed when its operations are done.
    fn close_conn(&mut self, slot: usize) {
        let Some(Some(conn)) = self.out.conns.get_mut(slot) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        let (generation, session, session_generation) =
            (conn.generation, conn.session, conn.session_generation);
        if conn.recv_armed {
            io::cancel(
                &mut self.out.ring,
                user_data(io::OP_TCP_RECV, slot, generation),
            );
        }
        if !conn.in_flight.is_empty() {
            io::cancel(
                &mut self.out.ring,
                user_data(io::OP_TCP_SEND, slot, generation),
            );
        }
        if let Some(s) = self
            .sessions
            .get_mut(session)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == session_generation)
        {
            s.conns.retain(|&c| c != slot);
            let this = |p: &Option<Peer>| p.and_then(|p| p.tcp_conn()) == Some((slot, generation));
            if this(&s.remote) {
                s.remote = None;
            }
            if this(&s.dtls_peer) {
                s.dtls_peer = None;
            }
        }
        inc(&self.out.stats.tcp_closed);
        self.maybe_finish_conn(slot);
    }

    fn maybe_finish_conn(&mut self, slot: usize) {
        let done = matches!(&self.out.conns[slot], Some(c) if c.closing && !c.recv_armed && c.in_flight.is_empty());
        if !done {
            return;
        }
        let Some(conn) = self.out.conns[slot].take() else {
            return;
        };
        self.out.free_conns.push(slot);
        for (egress, _) in conn.queue {
            self.out.pool.release(egress);
        }
        self.to_close.push(ToClose::Connection(conn.stream));
        let session = conn.session;
        if let Some(s) = self
            .sessions
            .get_mut(session)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == conn.session_generation)
        {
            s.open_conns -= 1;
            self.maybe_finish_session(session);
        }
    }

    fn tcp_recv_ended(&mut self, slot: usize, generation: u32, keep: bool) {
        let Some(conn) = self.out.conn(slot, generation) else {
            return;
        };
        conn.recv_armed = false;
        if conn.closing {
            self.maybe_finish_conn(slot);
        } else if keep {
            conn.recv_armed = true;
            let fd = conn.fd;
            io::arm_stream_recv(
                &mut self.out.ring,
                self.recv,
                fd,
                user_data(io::OP_TCP_RECV, slot, generation),
            );
        } else {
            self.close_conn(slot);
        }
    }

    fn tcp_sent(&mut self, slot: usize, generation: u32, result: i32) {
        let Some(conn) = self.out.conn(slot, generation) else {
            return;
        };
        let complete = result >= 0 && result as usize == conn.in_flight_bytes;
        let frames = std::mem::take(&mut conn.in_flight);
        for &(egress, _) in &frames {
            self.out.pool.release(egress);
        }
        // Keep the vector's capacity for the next batch.
        if let Some(conn) = self.out.conn(slot, generation) {
            conn.in_flight = frames;
            conn.in_flight.clear();
            if conn.closing {
                self.maybe_finish_conn(slot);
            } else if complete {
                self.out.flush_conn(slot);
            } else {
                inc(&self.out.stats.send_errors);
                self.close_conn(slot);
            }
        }
    }

    fn on_datagram(
        &mut self,
        slot: usize,
        generation: u32,
        from: SocketAddr,
        data: &mut [u8],
        now: Instant,
    ) {
        inc(&self.out.stats.rx_packets);
        add(&self.out.stats.rx_bytes, data.len() as u64);
        if self.settings.loopback_only && !from.ip().is_loopback() {
            inc(&self.out.stats.drop_foreign_source);
            return;
        }
        self.on_packet(slot, generation, Peer::udp(from), data, now);
    }

    /// Cuts one read of a connection into frames and handles each in place.
    fn on_tcp_data(&mut self, slot: usize, generation: u32, data: &mut [u8], now: Instant) {
        let Some(conn) = self.out.conn(slot, generation).filter(|c| !c.closing) else {
            return;
        };
        let mut reader = std::mem::take(&mut conn.reader);
        let peer = Peer::Tcp {
            conn: slot,
            generation,
            addr: conn.peer,
        };
        let (session, session_generation) = (conn.session, conn.session_generation);
        let result = reader.feed(data, |frame| {
            self.on_tcp_frame(
                slot,
                generation,
                session,
                session_generation,
                peer,
                frame,
                now,
            )
        });
        if let Some(conn) = self.out.conn(slot, generation) {
            conn.reader = reader;
        }
        if result.is_err() {
            inc(&self.out.stats.drop_tcp_framing);
            self.close_conn(slot);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_tcp_frame(
        &mut self,
        conn_slot: usize,
        conn_generation: u32,
        session: usize,
        session_generation: u32,
        peer: Peer,
        frame: &mut [u8],
        now: Instant,
    ) {
        let Some(conn) = self
            .out
            .conn(conn_slot, conn_generation)
            .filter(|c| !c.closing)
        else {
            return;
        };
        let validated = conn.validated;
        inc(&self.out.stats.rx_packets);
        add(&self.out.stats.rx_bytes, frame.len() as u64);
        if !validated && classify(frame) != PacketKind::Stun {
            // Before ICE, a connection carries connectivity checks and nothing else.
            inc(&self.out.stats.drop_tcp_framing);
            self.close_conn(conn_slot);
            return;
        }
        self.on_packet(session, session_generation, peer, frame, now);
    }

    fn on_packet(
        &mut self,
        slot: usize,
        generation: u32,
        via: Peer,
        data: &mut [u8],
        now: Instant,
    ) {
        let Some(session) = self
            .sessions
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == generation && !s.closing)
        else {
            return;
        };
        match classify(data) {
            PacketKind::Stun => self.on_stun(slot, via, data, now),
            PacketKind::Dtls => {
                if session.ice.is_validated(via.addr()) {
                    session.dtls_peer = Some(via);
                    // Reserve before copying: a dropped record costs no allocation.
                    match session.dtls_records.try_reserve() {
                        Ok(permit) => {
                            inc(&self.out.stats.dtls_records);
                            permit.send(data.to_vec());
                        }
                        Err(_) => {
                            inc(&self.out.stats.drop_dtls_flood);
                            session.dtls_dropped = session.dtls_dropped.saturating_add(1);
                            if session.dtls_dropped == DTLS_FLOOD_DROPS {
                                inc(&self.out.stats.dtls_flood_sessions);
                                let _ = self.events.send(Event::DtlsFlood {
                                    session: session.id,
                                });
                            }
                        }
                    }
                } else {
                    inc(&self.out.stats.drop_not_ready);
                }
            }
            kind @ (PacketKind::Rtp | PacketKind::Rtcp) => {
                if !session.remote.is_some_and(|r| r.same_path(&via)) {
                    inc(&self.out.stats.drop_not_ready);
                    return;
                }
                let Some(srtp) = session.srtp_in.as_mut() else {
                    inc(&self.out.stats.drop_not_ready);
                    return;
                };
                let plain = srtp.unprotect(data, kind == PacketKind::Rtcp);
                match plain {
                    Ok(len) if kind == PacketKind::Rtp => self.on_rtp(slot, &data[..len], now),
                    Ok(len) => self.on_rtcp(slot, &data[..len], now),
                    Err(_) => inc(&self.out.stats.drop_srtp),
                }
            }
            PacketKind::Unknown => inc(&self.out.stats.drop_garbage),
        }
    }

    fn on_stun(&mut self, slot: usize, via: Peer, data: &[u8], now: Instant) {
        let Some(out) = self.out.pool.alloc() else {
            inc(&self.out.stats.drop_no_buffer);
            return;
        };
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        let buffer = &mut self.out.pool.buffer(out)[EGRESS_HEADROOM..];
        let outcome = match session.ice.handle_check(now, data, via.addr(), buffer) {
            Ok(outcome) => outcome,
            Err(_) => {
                self.out.pool.release(out);
                inc(&self.out.stats.drop_stun_invalid);
                return;
            }
        };
        inc(&self.out.stats.stun_answered);
        let udp_fd = session.udp_fd;
        let mut to_close = Vec::new();
        if let Some((conn, generation)) = via.tcp_conn()
            && let Some(c) = self.out.conn(conn, generation)
        {
            c.validated = true;
        }
        if outcome.use_candidate && !session.remote.is_some_and(|r| r.same_path(&via)) {
            session.remote = Some(via);
            // One path carries the media: the session's other connections are closed cleanly.
            let nominated_conn = via.tcp_conn().map(|(conn, _)| conn);
            to_close.extend(
                session
                    .conns
                    .iter()
                    .copied()
                    .filter(|&c| Some(c) != nominated_conn),
            );
            let _ = self.events.send(Event::IceConnected {
                session: session.id,
                remote: via.addr(),
            });
        }
        self.out.transmit(udp_fd, &via, out, outcome.response_len);
        for conn in to_close {
            self.close_conn(conn);
        }
    }

    fn on_rtp(&mut self, slot: usize, packet: &[u8], now: Instant) {
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        let stream = session.stream;
        let Role::Publisher(publisher) = &mut session.role else {
            inc(&self.out.stats.drop_garbage); // players do not send media here
            return;
        };
        let Ok(header) = RtpHeader::parse(packet) else {
            inc(&self.out.stats.drop_garbage);
            return;
        };
        let Some(kind) = publisher.kind_by_payload_type[header.payload_type as usize] else {
            inc(&self.out.stats.drop_unknown_payload_type);
            return;
        };
        publisher.ssrc_by_kind[kind.index()] = Some(header.ssrc);
        self.fanout(stream, kind, Forwarded::Rtp, packet, now);
    }

    fn on_rtcp(&mut self, slot: usize, packet: &[u8], now: Instant) {
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        let stream = session.stream;
        match &session.role {
            Role::Publisher(publisher) => {
                let mut reports: [Option<(MediaKind, &[u8])>; 2] = [None, None];
                for p in rtcp::compound(packet).map_while(Result::ok) {
                    if p.packet_type != SENDER_REPORT {
                        continue;
                    }
                    let kind = [MediaKind::Audio, MediaKind::Video]
                        .into_iter()
                        .find(|k| publisher.ssrc_by_kind[k.index()] == p.sender_ssrc());
                    if let Some(kind) = kind {
                        reports[kind.index()] = Some((kind, p.bytes));
                    }
                }
                for (kind, report) in reports.into_iter().flatten() {
                    self.fanout(stream, kind, Forwarded::SenderReport, report, now);
                }
            }
            Role::Player(_) => {
                let wants_keyframe = rtcp::requests_keyframe(packet);
                if wants_keyframe {
                    self.request_keyframe(stream, now);
                }
            }
        }
    }

    /// Sends a publisher's packet to the stream's local players and hands one shared copy to
    /// each other worker that has players of the stream.
    fn fanout(
        &mut self,
        stream: StreamId,
        kind: MediaKind,
        what: Forwarded,
        packet: &[u8],
        now: Instant,
    ) {
        let Some(local) = self.streams.get(&stream) else {
            return;
        };
        if !local.players.is_empty() {
            self.stage(stream, kind, what, packet, now);
        }
        let Some(local) = self.streams.get(&stream) else {
            return;
        };
        let mut shared: Option<Arc<mesh::SharedPacket>> = None;
        for (worker, &players) in local.remote_interest.iter().enumerate() {
            if players == 0 || worker == self.index {
                continue;
            }
            let packet = shared
                .get_or_insert_with(|| self.shared_pool.share(packet, now))
                .clone();
            let message = CrossMessage::Media {
                stream,
                kind,
                what,
                packet,
            };
            match self.mesh.push(self.index, worker, message) {
                Ok(()) => self.wake_pending[worker] = true,
                Err(_) => inc(&self.out.stats.drop_ring_full),
            }
        }
    }

    /// Sets a packet aside for this worker's players of `stream`, fanning out what is set
    /// aside first when there is no room.
    fn stage(
        &mut self,
        stream: StreamId,
        kind: MediaKind,
        what: Forwarded,
        packet: &[u8],
        received_at: Instant,
    ) {
        if self.staged.is_full() {
            self.flush_staged(Instant::now());
        }
        if !self.staged.push(stream, kind, what, packet, received_at) {
            inc(&self.out.stats.drop_garbage);
        }
    }

    /// Fans the packets set aside out to this worker's players, each player getting all of
    /// its stream's packets in a row.
    fn flush_staged(&mut self, now: Instant) {
        if self.staged.is_empty() {
            return;
        }
        let mut needs_keyframe = [0 as StreamId; staged::CAPACITY];
        let mut count = 0;
        let (streams, sessions, out) = (&self.streams, &mut self.sessions, &mut self.out);
        self.staged.drain_by_stream(|staged, stream, group| {
            let Some(local) = streams.get(&stream) else {
                return;
            };
            if forward_to_players(&local.players, sessions, out, staged, group) {
                needs_keyframe[count] = stream;
                count += 1;
            }
        });
        // A player lost video frames: it cannot decode until the next keyframe.
        for &stream in &needs_keyframe[..count] {
            self.request_keyframe(stream, now);
        }
    }

    fn drain_mesh(&mut self, now: Instant) {
        for from in 0..self.mesh.workers() {
            if from == self.index {
                continue;
            }
            while let Some(message) = self.mesh.pop(from, self.index) {
                match message {
                    CrossMessage::Media {
                        stream,
                        kind,
                        what,
                        packet,
                    } => {
                        if self
                            .streams
                            .get(&stream)
                            .is_some_and(|l| !l.players.is_empty())
                        {
                            self.stage(stream, kind, what, packet.bytes(), packet.received_at);
                        }
                    }
                    CrossMessage::KeyframeRequest { stream } => {
                        self.keyframe_to_publisher(stream, now)
                    }
                }
            }
        }
    }

    fn request_keyframe(&mut self, stream: StreamId, now: Instant) {
        let Some(local) = self.streams.get(&stream) else {
            return;
        };
        let publisher_worker = local.publisher_worker;
        if publisher_worker == self.index {
            self.keyframe_to_publisher(stream, now);
        } else {
            match self.mesh.push(
                self.index,
                publisher_worker,
                CrossMessage::KeyframeRequest { stream },
            ) {
                Ok(()) => self.wake_pending[publisher_worker] = true,
                Err(_) => inc(&self.out.stats.drop_ring_full),
            }
        }
    }

    fn keyframe_to_publisher(&mut self, stream: StreamId, now: Instant) {
        let Some(slot) = self.streams.get(&stream).and_then(|l| l.publisher) else {
            return;
        };
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        let Role::Publisher(publisher) = &mut session.role else {
            return;
        };
        if publisher.keyframes.request(now) {
            send_pli(session, &mut self.out);
        }
    }

    fn tick(&mut self, now: Instant) {
        let mut live = 0;
        let mut players = 0;
        for slot in 0..self.sessions.len() {
            let Some(session) = self.sessions[slot].as_mut() else {
                continue;
            };
            if session.closing {
                continue;
            }
            live += 1;
            if session.ice.is_expired(now) && !session.timeout_reported {
                session.timeout_reported = true;
                let _ = self.events.send(Event::IceTimeout {
                    session: session.id,
                });
            }
            if let Some(listener) = &session.listener
                && !session.accept_armed
            {
                session.accept_armed = true;
                let ud = user_data(io::OP_ACCEPT, slot, session.generation);
                io::arm_accept(&mut self.out.ring, listener.as_raw_fd(), ud);
            }
            if matches!(session.role, Role::Player(_)) {
                players += 1;
            }
            if let Role::Publisher(publisher) = &mut session.role
                && publisher.keyframes.poll(now)
            {
                send_pli(session, &mut self.out);
            }
        }
        set(&self.stats().sessions, live);
        set(&self.stats().players, players);
        let conns = self
            .out
            .conns
            .iter()
            .flatten()
            .filter(|c| !c.closing)
            .count();
        set(&self.stats().tcp_connections, conns as u64);
        self.close_unvalidated_conns(now);
        self.out.stats.relay_latency.fold(&mut self.out.latency);
        self.next_tick = now + TICK;
    }

    /// Closes the connections that sent no valid ICE check within `TCP_VALIDATION_DEADLINE`.
    fn close_unvalidated_conns(&mut self, now: Instant) {
        for slot in 0..self.out.conns.len() {
            let overdue = self.out.conns[slot].as_ref().is_some_and(|c| {
                !c.closing
                    && !c.validated
                    && now.saturating_duration_since(c.accepted_at) >= TCP_VALIDATION_DEADLINE
            });
            if overdue {
                inc(&self.out.stats.tcp_unvalidated_closed);
                self.close_conn(slot);
            }
        }
    }

    /// Sends the bursts whose hold ran out before their frame's last packet came.
    fn send_due_bursts(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due_bursts);
        self.out.bursts.take_due(now, &mut due);
        for (id, (slot, generation)) in due.drain(..) {
            if let Some(Some(session)) = self.sessions.get_mut(slot)
                && session.generation == generation
                && session.burst == Some(id)
            {
                session.burst = None;
            }
            self.out.send_burst(id);
        }
        self.due_bursts = due;
    }

    /// A GSO send failed (those that went through are finished by `Output::finish_send`).
    /// Where the kernel refused the send as such (older kernels: no checksum offload on the
    /// route's device, a segment over the path MTU), its packets go again one by one, and
    /// after `GSO_REFUSALS_BEFORE_OFF` refusals the worker stops holding bursts.
    fn gso_failed(&mut self, id: BurstId, result: i32) {
        let out = &mut self.out;
        let burst = out.bursts.get(id);
        let refused = matches!(
            -result,
            libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::EMSGSIZE | libc::ENOPROTOOPT
        );
        let (slot, generation) = burst.owner;
        let player_alive = self
            .sessions
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.generation == generation && !s.closing && s.udp_fd == burst.fd);
        if !(refused && player_alive) {
            add(&out.stats.send_errors, burst.packets() as u64);
            for &egress in burst.slots() {
                out.pool.release(egress);
            }
        } else {
            inc(&out.stats.gso_refused);
            out.gso_refusals += 1;
            if out.gso_refusals == GSO_REFUSALS_BEFORE_OFF && out.gso_enabled {
                out.gso_enabled = false;
                tracing::warn!(
                    worker = self.index,
                    errno = -result,
                    "the kernel keeps refusing UDP GSO sends; this worker now sends one packet per send"
                );
            }
            let to = RawAddr::new(burst.to);
            for (egress, len) in burst.segments() {
                out.pool
                    .send(&mut out.ring, burst.fd, egress, EGRESS_HEADROOM, len, &to);
            }
        }
        out.bursts.release(id);
    }

    fn flush_wakes(&mut self) {
        for (worker, pending) in self.wake_pending.iter_mut().enumerate() {
            if std::mem::take(pending) {
                self.mesh.wakers[worker].wake();
            }
        }
    }
}

/// Copies a stream's staged packets (`group`, indices into `staged`) to each of its players,
/// player by player: rewrite, protect, send (UDP video through the player's frame burst).
/// Returns whether a video packet had to be dropped for a slow TCP player (it then needs a
/// keyframe).
fn forward_to_players(
    players: &[usize],
    sessions: &mut [Option<Session>],
    out: &mut Output,
    staged: &Staged,
    group: &[u8],
) -> bool {
    let mut dropped_video = false;
    for &slot in players {
        let Some(Session {
            remote: Some(peer),
            srtp_out: Some(srtp),
            role: Role::Player(tracks),
            udp_fd,
            closing: false,
            generation,
            burst,
            ..
        }) = sessions[slot].as_mut()
        else {
            continue; // not connected yet, or leaving
        };
        for &index in group {
            let staged_packet = staged.entry(index as usize);
            let packet = staged.bytes(index as usize);
            let kind = staged_packet.kind;
            let Some(track) = tracks[kind.index()].as_mut() else {
                continue;
            };
            let Some(egress) = out.pool.alloc() else {
                inc(&out.stats.drop_no_buffer);
                continue;
            };
            let buffer = &mut out.pool.buffer(egress)[EGRESS_HEADROOM..];
            let header = &staged_packet.header;
            let written = match header {
                Some(h) if h.payload_type == track.publisher_payload_type => {
                    let rewrite = Rewrite {
                        ssrc: track.ssrc,
                        payload_type: track.payload_type,
                        sequence: track.sequence.map(h.ssrc, h.sequence),
                        extension_ids: &track.extension_ids,
                    };
                    rewrite_header_into(packet, h, &rewrite, buffer)
                        .ok()
                        .and_then(|header_len| {
                            let payload = &packet[h.header_len..];
                            srtp.protect_rtp_from(buffer, header_len, payload).ok()
                        })
                }
                Some(_) => None,
                None => rtcp::compound(packet)
                    .next()
                    .and_then(Result::ok)
                    .and_then(|sr| rtcp::write_sender_report(buffer, &sr, track.ssrc))
                    .and_then(|n| srtp.protect_rtcp(buffer, n).ok()),
            };
            let Some(len) = written else {
                out.pool.release(egress);
                continue;
            };
            let received_at = staged_packet.received_at;
            match (*peer, header) {
                (Peer::Udp { addr, raw }, Some(h))
                    if out.gso_enabled && kind == MediaKind::Video && *udp_fd >= 0 =>
                {
                    out.send_or_hold(
                        burst,
                        (slot, *generation),
                        *udp_fd,
                        addr,
                        &raw,
                        egress,
                        len,
                        received_at,
                        h.marker,
                    );
                    inc(&out.stats.forwarded_packets);
                }
                (peer, _) => match out.transmit_later(*udp_fd, &peer, egress, len) {
                    Sent::Queued if header.is_some() => {
                        inc(&out.stats.forwarded_packets);
                        out.forwarded(received_at);
                    }
                    Sent::Dropped if kind == MediaKind::Video => dropped_video = true,
                    _ => {}
                },
            }
        }
        if let Peer::Tcp { conn, .. } = peer {
            out.flush_conn(*conn);
        }
    }
    dropped_video
}

/// Sends a Picture Loss Indication to a publisher for its video SSRC.
fn send_pli(session: &mut Session, out: &mut Output) {
    let Role::Publisher(publisher) = &session.role else {
        return;
    };
    let (Some(media_ssrc), Some(peer), Some(srtp)) = (
        publisher.ssrc_by_kind[MediaKind::Video.index()],
        session.remote,
        session.srtp_out.as_mut(),
    ) else {
        return;
    };
    let Some(egress) = out.pool.alloc() else {
        inc(&out.stats.drop_no_buffer);
        return;
    };
    let buffer = &mut out.pool.buffer(egress)[EGRESS_HEADROOM..];
    let len = rtcp::write_pli(buffer, publisher.rtcp_ssrc, media_ssrc);
    match srtp.protect_rtcp(buffer, len) {
        Ok(len) => {
            if out.transmit(session.udp_fd, &peer, egress, len) == Sent::Queued {
                inc(&out.stats.keyframe_requests_sent);
            }
        }
        Err(_) => out.pool.release(egress),
    }
}
