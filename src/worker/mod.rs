//! Workers: one thread per core, each pinned, with its own io_uring, sockets, sessions and
//! buffers. The control thread hands sessions over with [`Command`]s; workers report back
//! with [`Event`]s; publishers' packets reach players on other workers through the [`Mesh`].
//!
//! The packet path, publisher to players: a multishot receive lands the datagram in a provided
//! buffer; it is classified by first byte; SRTP is removed in place; each local player gets a
//! copy in an egress buffer, rewritten (SSRC, payload type, sequence, extension ids) and
//! protected in place; players on other workers get one shared handle per worker. Sends are
//! queued on the ring and submitted once per loop turn.

pub mod io;
pub mod mesh;
pub mod stats;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use io_uring::cqueue;
use tokio::sync::mpsc::UnboundedSender;

use crate::negotiation::{MediaKind, PlayedTrack};
use crate::session::ice::IceLite;
use crate::session::keyframe::{DEFAULT_KEYFRAME_INTERVAL, KeyframeThrottle};
use crate::session::sequence::SequenceMapper;
use crate::srtp::{SrtpContext, SrtpProfile};
use crate::wire::demux::{PacketKind, classify};
use crate::wire::rtcp::{self, SENDER_REPORT};
use crate::wire::rtp::{ExtensionIdMap, Rewrite, RtpHeader, rewrite_into};
use io::{EGRESS_HEADROOM, EgressPool, MAX_PACKET, ProvidedBuffers, RawAddr, Ring, WakeFd};
use mesh::{CrossMessage, Forwarded, Mesh, StreamId, Waker};
use stats::{WorkerStats, add, inc, set};

pub type SessionId = u64;

const RING_ENTRIES: u32 = 4096;
const RECV_BUFFERS: u16 = 4096;
const EGRESS_BUFFERS: u32 = 8192;
const MESH_CAPACITY: usize = 8192;
const TICK: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_millis(50);

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
    pub socket: UdpSocket,
    pub stream: StreamId,
    pub publisher_worker: usize,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub role: NewRole,
}

pub enum NewRole {
    Publisher { payload_types: Vec<(u8, MediaKind)> },
    Player { tracks: Vec<PlayedTrack> },
}

/// What a worker tells the control thread.
#[derive(Debug)]
pub enum Event {
    Dtls {
        session: SessionId,
        data: Vec<u8>,
    },
    IceConnected {
        session: SessionId,
        remote: SocketAddr,
    },
    IceTimeout {
        session: SessionId,
    },
    /// The session's socket is closed: its port may be reused.
    Closed {
        session: SessionId,
    },
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub ice_timeout: Duration,
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
    let mesh = Arc::new(Mesh::new(wakers, MESH_CAPACITY));
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
                let pinned = core_id.is_some_and(core_affinity::set_for_current);
                match Worker::new(index, wake, c, m, s, e, st) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok((
                            worker.core.ring.description.clone(),
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

struct Session {
    id: SessionId,
    generation: u32,
    socket: UdpSocket,
    fd: RawFd,
    stream: StreamId,
    ice: IceLite,
    /// The nominated peer address, once ICE has one.
    remote: Option<(SocketAddr, RawAddr)>,
    /// Where DTLS records came from, for replies before nomination.
    dtls_peer: Option<RawAddr>,
    srtp_in: Option<SrtpContext>,
    srtp_out: Option<SrtpContext>,
    role: Role,
    recv_armed: bool,
    closing: bool,
    timeout_reported: bool,
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

fn recv_user_data(slot: usize, generation: u32) -> u64 {
    io::OP_RECV | ((generation as u64 & 0xff_ffff) << 32) | slot as u64
}

/// Everything a worker owns except its receive buffers, which the packet handlers borrow from.
struct Core {
    index: usize,
    ring: Ring,
    recv: io::RecvOp,
    wake: WakeFd,
    egress: EgressPool,
    sessions: Vec<Option<Session>>,
    free_slots: Vec<usize>,
    next_generation: u32,
    by_id: HashMap<SessionId, usize>,
    streams: HashMap<StreamId, LocalStream>,
    mesh: Arc<Mesh>,
    commands: Arc<SegQueue<Command>>,
    events: UnboundedSender<Event>,
    stats: Arc<WorkerStats>,
    settings: WorkerSettings,
    wake_pending: Vec<bool>,
    /// Sockets of finished sessions, closed (and reported) once nothing queued refers to them.
    sockets_to_close: Vec<(SessionId, UdpSocket)>,
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
                ring,
                recv: buffers.recv_op(),
                wake,
                egress: EgressPool::new(EGRESS_BUFFERS),
                sessions: Vec::new(),
                free_slots: Vec::new(),
                next_generation: 0,
                by_id: HashMap::new(),
                streams: HashMap::new(),
                mesh,
                commands,
                events,
                stats,
                settings,
                wake_pending: vec![false; workers],
                sockets_to_close: Vec::new(),
                next_tick: Instant::now(),
            },
            buffers,
            completions: Vec::with_capacity(RING_ENTRIES as usize * 4),
        })
    }

    fn run(&mut self) {
        self.core.wake.arm(&mut self.core.ring);
        loop {
            let now = Instant::now();
            self.core.drain_commands(now);
            self.core.drain_mesh(now);
            self.process_completions(now);
            if now >= self.core.next_tick {
                self.core.tick(now);
            }
            self.core.flush_wakes();
            if !self.core.sockets_to_close.is_empty() {
                // Submit what may still refer to the finished sessions' sockets, then close
                // them before waiting, so the control thread hears of their ports at once.
                let _ = self.core.ring.submit();
                if self.core.ring.backlog_is_empty() {
                    self.core.close_sockets();
                }
            }
            let result = if self.core.has_work() {
                self.core.ring.submit()
            } else {
                let mesh = self.core.mesh.clone();
                let waker = &mesh.wakers[self.core.index];
                waker.park();
                let r = if self.core.has_work() {
                    self.core.ring.submit()
                } else {
                    self.core.ring.submit_and_wait(MAX_WAIT)
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
        self.core.ring.completions(&mut completions);
        for cqe in completions.drain(..) {
            let user_data = cqe.user_data();
            let result = cqe.result();
            match user_data & io::OP_MASK {
                io::OP_RECV => {
                    let slot = (user_data & 0xffff_ffff) as usize;
                    let generation = ((user_data >> 32) & 0xff_ffff) as u32;
                    if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                        if result > 0 {
                            match self.buffers.datagram(bid, result as usize) {
                                Some((from, data)) => {
                                    self.core.on_datagram(slot, generation, from, data, now)
                                }
                                None => inc(&self.core.stats.drop_garbage),
                            }
                        }
                        self.buffers.recycle(bid);
                        self.buffers.publish();
                    }
                    if result == -libc::ENOBUFS {
                        inc(&self.core.stats.recv_no_buffer);
                    } else if result < 0 && result != -libc::ECANCELED {
                        tracing::debug!(
                            worker = self.core.index,
                            errno = -result,
                            "receive failed"
                        );
                    }
                    if !cqueue::more(cqe.flags()) {
                        self.core.recv_ended(slot, generation);
                    }
                }
                io::OP_SEND => {
                    self.core.egress.release((user_data & 0xffff_ffff) as u32);
                    if result < 0 {
                        inc(&self.core.stats.send_errors);
                    }
                }
                io::OP_WAKE => self.core.wake.arm(&mut self.core.ring),
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
            || self.ring.has_completions()
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
        let fd = new.socket.as_raw_fd();
        self.sessions[slot] = Some(Session {
            id: new.id,
            generation,
            socket: new.socket,
            fd,
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
            srtp_in: None,
            srtp_out: None,
            role,
            recv_armed: true,
            closing: false,
            timeout_reported: false,
        });
        self.by_id.insert(new.id, slot);
        io::arm_recv(
            &mut self.ring,
            self.recv,
            fd,
            recv_user_data(slot, generation),
        );
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
        let Some(to) = session.remote.map(|(_, raw)| raw).or(session.dtls_peer) else {
            return;
        };
        if data.len() > MAX_PACKET {
            return;
        }
        let Some(out) = self.egress.alloc() else {
            inc(&self.stats.drop_no_buffer);
            return;
        };
        self.egress.buffer(out)[EGRESS_HEADROOM..EGRESS_HEADROOM + data.len()]
            .copy_from_slice(data);
        self.egress.send(
            &mut self.ring,
            session.fd,
            out,
            EGRESS_HEADROOM,
            data.len(),
            &to,
        );
        inc(&self.stats.tx_packets);
        add(&self.stats.tx_bytes, data.len() as u64);
    }

    fn begin_close(&mut self, slot: usize) {
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        if session.closing {
            return;
        }
        session.closing = true;
        let (stream, recv_armed, generation) =
            (session.stream, session.recv_armed, session.generation);
        if let Some(local) = self.streams.get_mut(&stream) {
            if local.publisher == Some(slot) {
                local.publisher = None;
            }
            local.players.retain(|&p| p != slot);
            if local.is_unused() {
                self.streams.remove(&stream);
            }
        }
        if recv_armed {
            io::cancel(&mut self.ring, recv_user_data(slot, generation));
        } else {
            self.finish_close(slot);
        }
    }

    fn finish_close(&mut self, slot: usize) {
        let Some(session) = self.sessions[slot].take() else {
            return;
        };
        self.free_slots.push(slot);
        self.by_id.remove(&session.id);
        self.sockets_to_close.push((session.id, session.socket));
    }

    /// Closes finished sessions' sockets and only then reports them closed, so the control
    /// thread never hands out a port whose socket still exists.
    fn close_sockets(&mut self) {
        for (id, socket) in self.sockets_to_close.drain(..) {
            drop(socket);
            let _ = self.events.send(Event::Closed { session: id });
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
            self.finish_close(slot);
        } else {
            session.recv_armed = true;
            io::arm_recv(
                &mut self.ring,
                self.recv,
                session.fd,
                recv_user_data(slot, generation),
            );
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
        inc(&self.stats.rx_packets);
        add(&self.stats.rx_bytes, data.len() as u64);
        if self.settings.loopback_only && !from.ip().is_loopback() {
            inc(&self.stats.drop_foreign_source);
            return;
        }
        let Some(session) = self
            .sessions
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == generation && !s.closing)
        else {
            return;
        };
        match classify(data) {
            PacketKind::Stun => self.on_stun(slot, from, data, now),
            PacketKind::Dtls => {
                if session.ice.is_validated(from) {
                    session.dtls_peer = Some(RawAddr::new(from));
                    inc(&self.stats.dtls_records);
                    let _ = self.events.send(Event::Dtls {
                        session: session.id,
                        data: data.to_vec(),
                    });
                } else {
                    inc(&self.stats.drop_not_ready);
                }
            }
            kind @ (PacketKind::Rtp | PacketKind::Rtcp) => {
                if session.remote.map(|(addr, _)| addr) != Some(from) {
                    inc(&self.stats.drop_not_ready);
                    return;
                }
                let Some(srtp) = session.srtp_in.as_mut() else {
                    inc(&self.stats.drop_not_ready);
                    return;
                };
                let plain = if kind == PacketKind::Rtp {
                    srtp.unprotect_rtp(data)
                } else {
                    srtp.unprotect_rtcp(data)
                };
                match plain {
                    Ok(len) if kind == PacketKind::Rtp => self.on_rtp(slot, &data[..len]),
                    Ok(len) => self.on_rtcp(slot, &data[..len], now),
                    Err(_) => inc(&self.stats.drop_srtp),
                }
            }
            PacketKind::Unknown => inc(&self.stats.drop_garbage),
        }
    }

    fn on_stun(&mut self, slot: usize, from: SocketAddr, data: &[u8], now: Instant) {
        let Some(out) = self.egress.alloc() else {
            inc(&self.stats.drop_no_buffer);
            return;
        };
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        let buffer = &mut self.egress.buffer(out)[EGRESS_HEADROOM..];
        match session.ice.handle_check(now, data, from, buffer) {
            Ok(outcome) => {
                if let Some(addr) = outcome.nominated {
                    session.remote = Some((addr, RawAddr::new(addr)));
                    let _ = self.events.send(Event::IceConnected {
                        session: session.id,
                        remote: addr,
                    });
                }
                let fd = session.fd;
                self.egress.send(
                    &mut self.ring,
                    fd,
                    out,
                    EGRESS_HEADROOM,
                    outcome.response_len,
                    &RawAddr::new(from),
                );
                inc(&self.stats.stun_answered);
                inc(&self.stats.tx_packets);
                add(&self.stats.tx_bytes, outcome.response_len as u64);
            }
            Err(_) => {
                self.egress.release(out);
                inc(&self.stats.drop_stun_invalid);
            }
        }
    }

    fn on_rtp(&mut self, slot: usize, packet: &[u8]) {
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        let stream = session.stream;
        let Role::Publisher(publisher) = &mut session.role else {
            inc(&self.stats.drop_garbage); // players do not send media here
            return;
        };
        let Ok(header) = RtpHeader::parse(packet) else {
            inc(&self.stats.drop_garbage);
            return;
        };
        let Some(kind) = publisher.kind_by_payload_type[header.payload_type as usize] else {
            inc(&self.stats.drop_unknown_payload_type);
            return;
        };
        publisher.ssrc_by_kind[kind.index()] = Some(header.ssrc);
        self.fanout(stream, kind, Forwarded::Rtp, packet);
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
                    self.fanout(stream, kind, Forwarded::SenderReport, report);
                }
            }
            Role::Player(_) => {
                let wants_keyframe = rtcp::compound(packet)
                    .map_while(Result::ok)
                    .any(|p| p.is_keyframe_request());
                if wants_keyframe {
                    self.request_keyframe(stream, now);
                }
            }
        }
    }

    /// Sends a publisher's packet to the stream's local players and hands one shared copy to
    /// each other worker that has players of the stream.
    fn fanout(&mut self, stream: StreamId, kind: MediaKind, what: Forwarded, packet: &[u8]) {
        let Some(local) = self.streams.get(&stream) else {
            return;
        };
        forward_to_players(
            &local.players,
            &mut self.sessions,
            &mut self.egress,
            &mut self.ring,
            &self.stats,
            kind,
            what,
            packet,
        );
        let mut shared: Option<Arc<[u8]>> = None;
        for (worker, &players) in local.remote_interest.iter().enumerate() {
            if players == 0 || worker == self.index {
                continue;
            }
            let packet = shared.get_or_insert_with(|| Arc::from(packet)).clone();
            let message = CrossMessage::Media {
                stream,
                kind,
                what,
                packet,
            };
            match self.mesh.push(self.index, worker, message) {
                Ok(()) => self.wake_pending[worker] = true,
                Err(_) => inc(&self.stats.drop_ring_full),
            }
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
                        if let Some(local) = self.streams.get(&stream) {
                            forward_to_players(
                                &local.players,
                                &mut self.sessions,
                                &mut self.egress,
                                &mut self.ring,
                                &self.stats,
                                kind,
                                what,
                                &packet,
                            );
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
                Err(_) => inc(&self.stats.drop_ring_full),
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
            send_pli(session, &mut self.egress, &mut self.ring, &self.stats);
        }
    }

    fn tick(&mut self, now: Instant) {
        let mut live = 0;
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
            if let Role::Publisher(publisher) = &mut session.role
                && publisher.keyframes.poll(now)
            {
                send_pli(session, &mut self.egress, &mut self.ring, &self.stats);
            }
        }
        set(&self.stats.sessions, live);
        self.next_tick = now + TICK;
    }

    fn flush_wakes(&mut self) {
        for (worker, pending) in self.wake_pending.iter_mut().enumerate() {
            if std::mem::take(pending) {
                self.mesh.wakers[worker].wake();
            }
        }
    }
}

/// Copies one publisher packet to each player: rewrite, protect, queue the send.
#[allow(clippy::too_many_arguments)]
fn forward_to_players(
    players: &[usize],
    sessions: &mut [Option<Session>],
    egress: &mut EgressPool,
    ring: &mut Ring,
    stats: &WorkerStats,
    kind: MediaKind,
    what: Forwarded,
    packet: &[u8],
) {
    if packet.len() > MAX_PACKET {
        inc(&stats.drop_garbage);
        return;
    }
    let header = match what {
        Forwarded::Rtp => match RtpHeader::parse(packet) {
            Ok(h) => Some(h),
            Err(_) => return,
        },
        Forwarded::SenderReport => None,
    };
    for &slot in players {
        let Some(Session {
            remote: Some((_, to)),
            srtp_out: Some(srtp),
            role: Role::Player(tracks),
            fd,
            closing: false,
            ..
        }) = sessions[slot].as_mut()
        else {
            continue; // not connected yet, or leaving
        };
        let Some(track) = tracks[kind.index()].as_mut() else {
            continue;
        };
        let Some(out) = egress.alloc() else {
            inc(&stats.drop_no_buffer);
            continue;
        };
        let buffer = &mut egress.buffer(out)[EGRESS_HEADROOM..];
        let written = match &header {
            Some(h) if h.payload_type == track.publisher_payload_type => {
                let rewrite = Rewrite {
                    ssrc: track.ssrc,
                    payload_type: track.payload_type,
                    sequence: track.sequence.map(h.ssrc, h.sequence),
                    extension_ids: &track.extension_ids,
                };
                rewrite_into(packet, h, &rewrite, buffer)
                    .ok()
                    .and_then(|n| srtp.protect_rtp(buffer, n).ok())
            }
            Some(_) => None,
            None => rtcp::compound(packet)
                .next()
                .and_then(Result::ok)
                .and_then(|sr| rtcp::write_sender_report(buffer, &sr, track.ssrc))
                .and_then(|n| srtp.protect_rtcp(buffer, n).ok()),
        };
        match written {
            Some(len) => {
                egress.send(ring, *fd, out, EGRESS_HEADROOM, len, to);
                inc(&stats.tx_packets);
                add(&stats.tx_bytes, len as u64);
                if header.is_some() {
                    inc(&stats.forwarded_packets);
                }
            }
            None => egress.release(out),
        }
    }
}

/// Sends a Picture Loss Indication to a publisher for its video SSRC.
fn send_pli(session: &mut Session, egress: &mut EgressPool, ring: &mut Ring, stats: &WorkerStats) {
    let Role::Publisher(publisher) = &session.role else {
        return;
    };
    let (Some(media_ssrc), Some((_, to)), Some(srtp)) = (
        publisher.ssrc_by_kind[MediaKind::Video.index()],
        session.remote.as_ref(),
        session.srtp_out.as_mut(),
    ) else {
        return;
    };
    let Some(out) = egress.alloc() else {
        inc(&stats.drop_no_buffer);
        return;
    };
    let buffer = &mut egress.buffer(out)[EGRESS_HEADROOM..];
    let len = rtcp::write_pli(buffer, publisher.rtcp_ssrc, media_ssrc);
    match srtp.protect_rtcp(buffer, len) {
        Ok(len) => {
            egress.send(ring, session.fd, out, EGRESS_HEADROOM, len, to);
            inc(&stats.keyframe_requests_sent);
            inc(&stats.tx_packets);
        }
        Err(_) => egress.release(out),
    }
}
