//! The worker's tables: its sessions (with their sockets, ICE, SRTP and media role) and the
//! streams it carries, and their lifecycles (ICE-TCP connections: `connections`). A session
//! is added, its operations armed, closed on request or on error, and freed (its sockets
//! closed, the control thread told) once no operation on the ring still refers to it.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::burst::{BurstId, Owner};
use super::egress::{Output, Peer, send_link_feedback, send_pli, send_probe_padding};
use super::mesh::SharedPacket;
use super::mux::{MuxOwner, MuxPort};
use super::stats::{SessionMeter, StreamMeter, add, inc};
use super::{Event, NewRole, NewSession, WorkerSettings};
use crate::io::{Pending, Token};
use crate::media::{MAX_LAYERS, MAX_PACKET, MediaKind, SessionId, StreamId};
use crate::session::bwe::{BandwidthEstimator, EstimatorConfig};
use crate::session::ice::IceLite;
use crate::session::path::{MediaPath, PathChange, RecentNominations, on_valid_check};
use crate::session::player::{Player, PlayerTrack, Repair};
use crate::session::publisher::Publisher;
use crate::session::retransmit::RetransmitWindow;
use crate::session::simulcast::LayerPreference;
use crate::wire::srtp::{SrtpContext, SrtpProfile};

/// A simulcast player's path estimate: where it starts (the selector takes an encoding that
/// fits, then probes upward) and its bounds.
const PLAYER_ESTIMATE: EstimatorConfig = EstimatorConfig {
    initial_bps: 1_000_000,
    min_bps: 50_000,
    max_bps: 50_000_000,
};

/// Packets a stream's retransmission window holds, and for how long: about a second of HD
/// video, long enough for a few NACK round trips.
pub(super) const RETRANSMIT_WINDOW_PACKETS: usize = 1024;
const RETRANSMIT_WINDOW_AGE: Duration = Duration::from_secs(1);

pub(super) enum Role {
    Publisher(Box<Publisher>),
    Player(Player),
}

pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) generation: u32,
    udp: Option<UdpSocket>,
    /// The UDP socket's descriptor, or -1 without one.
    pub(super) udp_fd: RawFd,
    listener: Option<TcpListener>,
    /// Open ICE-TCP connections (slots in the connection table).
    pub(super) conns: Vec<usize>,
    /// Connections accepted and not yet fully closed; the session ends after the last.
    pub(super) open_conns: u32,
    pub(super) stream: StreamId,
    pub(super) ice: IceLite,
    /// The path ICE nominated; media goes only there.
    pub(super) remote: Option<Peer>,
    /// Nominations seen lately, so one replayed from another address moves nothing.
    pub(super) nominations: RecentNominations,
    /// Where DTLS records came from, for replies before nomination.
    pub(super) dtls_peer: Option<Peer>,
    /// The session's DTLS records go here, to its handshake on the control thread.
    pub(super) dtls_records: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Records dropped for a full DTLS queue; at `DTLS_FLOOD_DROPS` the session is reported.
    pub(super) dtls_dropped: u32,
    /// The stream's meter: a publisher counts what it sends into it (the control thread and
    /// the players' workers read it), a player reads its encodings' bitrates from it.
    pub(super) meter: Option<Arc<StreamMeter>>,
    /// What the peer's receiver reports say (a player's RTT and loss), for the control thread.
    pub(super) reception: Arc<SessionMeter>,
    pub(super) srtp_in: Option<SrtpContext>,
    pub(super) srtp_out: Option<SrtpContext>,
    pub(super) role: Role,
    recv_armed: bool,
    pub(super) accept_armed: bool,
    pub(super) closing: bool,
    timeout_reported: bool,
    /// A player's open frame burst (UDP GSO).
    pub(super) burst: Option<BurstId>,
}

/// What the worker closes once nothing queued on its ring refers to it any more.
pub(super) enum ToClose {
    Session {
        id: SessionId,
        udp: Option<UdpSocket>,
        listener: Option<TcpListener>,
    },
    Connection(TcpStream),
}

/// A stream as one worker sees it.
pub(super) struct LocalStream {
    pub(super) publisher_worker: usize,
    /// The publisher's session slot, when the publisher is on this worker.
    pub(super) publisher: Option<usize>,
    /// Session slots of this worker's players.
    pub(super) players: Vec<usize>,
    /// Players per other worker, kept on the publisher's worker.
    pub(super) remote_interest: Vec<u32>,
    /// The stream's last video packets (by the publisher's sequence number), one window per
    /// simulcast encoding, kept while a player here repairs loss: its NACKs are answered from
    /// here. Empty when no player here repairs.
    pub(super) repair: Vec<RetransmitWindow<Arc<SharedPacket>>>,
}

impl LocalStream {
    fn new(publisher_worker: usize, workers: usize) -> LocalStream {
        LocalStream {
            publisher_worker,
            publisher: None,
            players: Vec::new(),
            remote_interest: vec![0; workers],
            repair: Vec::new(),
        }
    }

    fn is_unused(&self) -> bool {
        self.publisher.is_none()
            && self.players.is_empty()
            && self.remote_interest.iter().all(|&n| n == 0)
    }
}

/// Sessions currently live and, of those, players: the tick's gauges.
pub(super) struct Census {
    pub(super) sessions: u64,
    pub(super) players: u64,
    pub(super) tcp_connections: u64,
}

pub(super) struct Table {
    index: usize,
    workers: usize,
    ice_timeout: Duration,
    /// Media binds loopback: packets from other sources are dropped, never answered.
    pub(super) loopback_only: bool,
    pub(super) sessions: Vec<Option<Session>>,
    free_slots: Vec<usize>,
    next_generation: u32,
    pub(super) by_id: HashMap<SessionId, usize>,
    pub(super) streams: HashMap<StreamId, LocalStream>,
    /// Closed (and reported) once nothing queued on the ring refers to them.
    pub(super) to_close: Vec<ToClose>,
    /// Keyframes simulcast players wait for, by stream and encoding: asked by the loop after
    /// the tick.
    pub(super) keyframes_wanted: Vec<(StreamId, u8)>,
    /// Single-port mode: this worker's sockets on the shared port and its session table.
    pub(super) mux: Option<MuxPort>,
}

impl Table {
    pub(super) fn new(index: usize, workers: usize, settings: &WorkerSettings) -> Table {
        Table {
            index,
            workers,
            ice_timeout: settings.ice_timeout,
            loopback_only: settings.loopback_only,
            // Single-port mode keeps the first slots for the shared sockets' tokens.
            sessions: match settings.mux {
                Some(_) => (0..super::mux::MUX_RESERVED_SLOTS).map(|_| None).collect(),
                None => Vec::new(),
            },
            free_slots: Vec::new(),
            next_generation: 0,
            by_id: HashMap::new(),
            streams: HashMap::new(),
            to_close: Vec::new(),
            keyframes_wanted: Vec::new(),
            mux: None,
        }
    }

    /// The live session in `slot` if it is still the one of `generation`.
    pub(super) fn session(&mut self, slot: usize, generation: u32) -> Option<&mut Session> {
        self.sessions
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == generation && !s.closing)
    }

    pub(super) fn add_session(&mut self, new: NewSession, now: Instant, out: &mut Output) {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });
        self.next_generation = self.next_generation.wrapping_add(1) & 0xff_ffff;
        let generation = self.next_generation;
        let meter;
        let mut layers = 1;
        let role = match new.role {
            NewRole::Publisher {
                payload_types,
                video,
                link,
                meter: stream_meter,
            } => {
                meter = Some(stream_meter);
                Role::Publisher(Box::new(Publisher::new(
                    &payload_types,
                    video,
                    link,
                    rand::random(),
                )))
            }
            NewRole::Player {
                tracks,
                layers: stream_layers,
                video_clock_rate,
                meter: stream_meter,
            } => {
                meter = Some(stream_meter);
                layers = stream_layers.max(1);
                let transport_cc = tracks.iter().any(|t| t.transport_cc_id.is_some());
                let player = Player::new(tracks.into_iter().map(|t| {
                    let track = PlayerTrack::new(
                        t.publisher_payload_type,
                        t.payload_type,
                        t.ssrc,
                        t.extension_ids,
                        rand::random(),
                    )
                    .with_transport_cc(t.transport_cc_id);
                    let track = match (t.kind, t.nack) {
                        (MediaKind::Video, true) => {
                            track.with_repair(Repair::new(t.rtx, rand::random()))
                        }
                        _ => track,
                    };
                    (t.kind, track)
                }));
                Role::Player(match layers {
                    1 => player,
                    _ => player.with_layers(
                        layers,
                        video_clock_rate,
                        transport_cc.then(|| BandwidthEstimator::new(PLAYER_ESTIMATE)),
                    ),
                })
            }
        };
        let repairs = match &role {
            Role::Player(player) => player.repairs_video(),
            Role::Publisher(_) => false,
        };
        let workers = self.workers;
        let local = self
            .streams
            .entry(new.stream)
            .or_insert_with(|| LocalStream::new(new.publisher_worker, workers));
        match role {
            Role::Publisher(_) => local.publisher = Some(slot),
            Role::Player(_) => local.players.push(slot),
        }
        if repairs && local.repair.is_empty() {
            local.repair = (0..layers)
                .map(|_| RetransmitWindow::new(RETRANSMIT_WINDOW_PACKETS, RETRANSMIT_WINDOW_AGE))
                .collect();
        }
        // Single-port mode: the session sends from its worker's shared socket.
        let udp_fd = match (&new.udp, &self.mux) {
            (Some(socket), _) => socket.as_raw_fd(),
            (None, Some(mux)) => mux.udp_fd,
            (None, None) => -1,
        };
        let token = Token { slot, generation };
        if new.udp.is_some() {
            out.ring.arm_recv(udp_fd, token);
        }
        if let Some(listener) = &new.tcp {
            out.ring.arm_accept(listener.as_raw_fd(), token);
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
                self.ice_timeout,
            ),
            remote: None,
            nominations: RecentNominations::default(),
            dtls_peer: None,
            dtls_records: new.dtls_records,
            dtls_dropped: 0,
            meter,
            reception: new.reception,
            srtp_in: None,
            srtp_out: None,
            role,
            closing: false,
            timeout_reported: false,
            burst: None,
        });
        self.by_id.insert(new.id, slot);
    }

    /// DTLS finished: the session's SRTP contexts. Returns the stream of a player that joined
    /// with them: it needs a keyframe to start decoding (of the encoding it gets, unless it
    /// is a simulcast player, whose next tick picks its encoding and asks for it).
    pub(super) fn set_keys(
        &mut self,
        id: SessionId,
        profile: SrtpProfile,
        material: &[u8],
    ) -> Option<StreamId> {
        let slot = *self.by_id.get(&id)?;
        let session = self.sessions[slot].as_mut()?;
        match SrtpContext::from_dtls_export(profile, material, false) {
            Ok((outbound, inbound)) => {
                session.srtp_out = Some(outbound);
                session.srtp_in = Some(inbound);
                match &session.role {
                    Role::Player(player) if !player.has_layers() => Some(session.stream),
                    _ => None,
                }
            }
            Err(e) => {
                tracing::warn!(session = id, error = %e, "unusable SRTP keys");
                None
            }
        }
    }

    /// Sends a DTLS record from the control thread to the session's peer.
    pub(super) fn send_dtls(&mut self, id: SessionId, data: &[u8], out: &mut Output) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let Some(session) = self.sessions[slot].as_ref() else {
            return;
        };
        let Some(peer) = session.remote.or(session.dtls_peer) else {
            return;
        };
        if data.len() > MAX_PACKET {
            return;
        }
        out.send_copy(session.udp_fd, &peer, data);
    }

    /// An ICE restart: the one place a session's ICE credentials change (`IceLite::restart`
    /// keeps the old ones until the client nominates with the new). Path, DTLS, SRTP, stream
    /// and players stay as they are.
    pub(super) fn restart_ice(
        &mut self,
        id: SessionId,
        now: Instant,
        (local_ufrag, local_pwd): (&str, &str),
        remote_ufrag: &str,
        out: &mut Output,
    ) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        if let Some(session) = self.sessions[slot].as_mut().filter(|s| !s.closing) {
            session
                .ice
                .restart(now, local_ufrag, local_pwd, remote_ufrag);
            inc(&out.stats.ice_restarts);
        }
    }

    /// An authenticated connectivity check came `via` a path, nominating it or not: the one
    /// place a session's media path changes (`session::path::on_valid_check` decides). A
    /// migration lets go of the old path's state: the frames queued on its TCP connection
    /// are dropped, a frame burst held for its UDP address is dropped. The old connection
    /// itself, like the session's other validated ones, stays open as a standby pair while
    /// the client keeps checking it (the browser moves back to it when UDP fails again), and
    /// closes when the client stops (`close_idle_conns`). Returns what changed.
    pub(super) fn select_path(
        &mut self,
        slot: usize,
        via: Peer,
        nomination: Option<[u8; 12]>,
        out: &mut Output,
        events: &UnboundedSender<Event>,
    ) -> PathChange {
        let Some(session) = self.sessions[slot].as_mut() else {
            return PathChange::Unchanged;
        };
        if let Some(transaction_id) = nomination
            && session.nominations.is_replay(transaction_id, via.path())
        {
            inc(&out.stats.drop_replayed_nomination);
            return PathChange::Unchanged;
        }
        let change = on_valid_check(
            session.remote.map(|r| r.path()),
            via.path(),
            nomination.is_some(),
        );
        let from = match change {
            PathChange::Unchanged => return change,
            PathChange::Selected => None,
            PathChange::Migrated { from } => Some(from),
        };
        session.remote = Some(via);
        let _ = events.send(Event::IceConnected {
            session: session.id,
            remote: via.addr(),
            tcp: via.tcp_conn().is_some(),
        });
        // Connections that never passed a check are no pair of the client's: once it has
        // chosen, they go at once rather than at their validation deadline. (A path changes
        // seldom: collecting them costs nothing per packet.)
        let unchecked: Vec<usize> = session
            .conns
            .iter()
            .copied()
            .filter(|&c| out.conns.at(c).is_some_and(|c| !c.validated))
            .collect();
        for conn in unchecked {
            self.close_conn(conn, out);
        }
        let Some(session) = self.sessions[slot].as_mut() else {
            return change;
        };
        let Some(from) = from else {
            return change;
        };
        inc(&out.stats.path_migrations);
        session.reception.migrations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            session = session.id,
            from = %from.peer(),
            from_tcp = from.is_tcp(),
            to = %via.addr(),
            to_tcp = via.tcp_conn().is_some(),
            "media path moved to the newly nominated pair"
        );
        match from {
            MediaPath::Udp(_) => {
                if let Some(id) = session.burst.take() {
                    out.discard_burst(id);
                }
            }
            MediaPath::Tcp {
                conn, generation, ..
            } => out.drop_queued_frames(conn, generation),
        }
        change
    }

    /// A player of `stream` on `worker` came (+1) or went (-1).
    pub(super) fn remote_interest(&mut self, stream: StreamId, worker: usize, delta: i32) {
        let (index, workers) = (self.index, self.workers);
        let local = self
            .streams
            .entry(stream)
            .or_insert_with(|| LocalStream::new(index, workers));
        if let Some(n) = local.remote_interest.get_mut(worker) {
            *n = n.saturating_add_signed(delta);
        }
        if local.is_unused() {
            self.streams.remove(&stream);
        }
    }

    pub(super) fn remove_session(&mut self, id: SessionId, out: &mut Output) {
        if let Some(&slot) = self.by_id.get(&id) {
            self.begin_close(slot, out);
        }
    }

    fn begin_close(&mut self, slot: usize, out: &mut Output) {
        let Some(session) = self.sessions[slot].as_mut() else {
            return;
        };
        if session.closing {
            return;
        }
        session.closing = true;
        if let Some(id) = session.burst.take() {
            out.send_burst(id);
        }
        let stream = session.stream;
        let token = Token {
            slot,
            generation: session.generation,
        };
        if session.recv_armed {
            out.ring.cancel(Pending::Recv(token));
        }
        if session.accept_armed {
            out.ring.cancel(Pending::Accept(token));
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
            self.close_conn(conn, out);
        }
        self.maybe_finish_session(slot);
    }

    /// Frees a closing session once its receive, its accept and its connections are done.
    pub(super) fn maybe_finish_session(&mut self, slot: usize) {
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

    pub(super) fn has_finished(&self) -> bool {
        !self.to_close.is_empty()
    }

    /// Closes finished sockets and connections, and only then reports sessions closed, so the
    /// control thread never hands out a port whose sockets still exist.
    pub(super) fn close_finished(&mut self, events: &UnboundedSender<Event>) {
        for item in self.to_close.drain(..) {
            match item {
                ToClose::Session { id, udp, listener } => {
                    drop((udp, listener));
                    let _ = events.send(Event::Closed { session: id });
                }
                ToClose::Connection(stream) => drop(stream),
            }
        }
    }

    /// A session's multishot receive ended: re-armed, or the session may finish.
    pub(super) fn recv_ended(&mut self, token: Token, out: &mut Output) {
        let Some(session) = self.sessions.get_mut(token.slot).and_then(Option::as_mut) else {
            return;
        };
        if session.generation != token.generation {
            return;
        }
        session.recv_armed = false;
        if session.closing {
            self.maybe_finish_session(token.slot);
        } else {
            session.recv_armed = true;
            out.ring.arm_recv(session.udp_fd, token);
        }
    }

    /// Sends each publisher the RTCP its link has due (feedback, NACKs, the operator's cap),
    /// and each probing simulcast player its padding.
    pub(super) fn send_link_feedback(&mut self, now: Instant, out: &mut Output) {
        for session in self.sessions.iter_mut().flatten() {
            if session.closing {
                continue;
            }
            match &session.role {
                Role::Publisher(_) => send_link_feedback(session, now, out),
                Role::Player(_) => send_probe_padding(session, now, out),
            }
        }
    }

    /// Single-port mode: `ufrag` names `session` on worker `owner`.
    pub(super) fn mux_register(&mut self, ufrag: &str, owner: usize, session: SessionId) {
        if let Some(mux) = self.mux.as_mut() {
            let owner = MuxOwner {
                worker: owner,
                session,
            };
            if let Err(e) = mux.table.register(ufrag.as_bytes(), owner) {
                tracing::warn!(session, error = %e, "single-port mode: ufrag not registered");
            }
        }
    }

    /// Single-port mode: an ICE restart renewed session `session`'s ufrag.
    pub(super) fn mux_renew(
        &mut self,
        ufrag: &str,
        previous: &str,
        owner: usize,
        session: SessionId,
    ) {
        if let Some(mux) = self.mux.as_mut() {
            let owner = MuxOwner {
                worker: owner,
                session,
            };
            if let Err(e) = mux
                .table
                .renew(ufrag.as_bytes(), previous.as_bytes(), owner)
            {
                tracing::warn!(session, error = %e, "single-port mode: restarted ufrag not registered");
            }
        }
    }

    /// Single-port mode: session `session` of worker `owner` ended.
    pub(super) fn mux_forget(&mut self, owner: usize, session: SessionId) {
        if let Some(mux) = self.mux.as_mut() {
            mux.table.forget_session(MuxOwner {
                worker: owner,
                session,
            });
        }
    }

    /// A simulcast player pins or caps its encoding.
    pub(super) fn set_layer_preference(&mut self, id: SessionId, preference: LayerPreference) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        if let Some(Session {
            role: Role::Player(player),
            ..
        }) = self.sessions[slot].as_mut()
        {
            player.set_layer_preference(preference);
        }
    }

    /// Retransmission windows here (one per stream and encoding).
    pub(super) fn repair_windows(&self) -> usize {
        self.streams.values().map(|l| l.repair.len()).sum()
    }

    /// Whether any session here has feedback to send on a short timer: a publisher (its
    /// link), or a simulcast player (its probes).
    pub(super) fn has_feedback_work(&self) -> bool {
        self.sessions.iter().flatten().any(|s| match &s.role {
            Role::Publisher(_) => true,
            Role::Player(player) => player.has_layers(),
        })
    }

    /// The timer's rounds: ICE timeouts reported, accepts re-armed, deferred keyframe
    /// requests sent, ICE-TCP connections past their validation deadline closed; returns the
    /// gauges.
    pub(super) fn tick(
        &mut self,
        now: Instant,
        out: &mut Output,
        events: &UnboundedSender<Event>,
    ) -> Census {
        let mut census = Census {
            sessions: 0,
            players: 0,
            tcp_connections: out.conns.open_count() as u64,
        };
        for slot in 0..self.sessions.len() {
            let Some(session) = self.sessions[slot].as_mut() else {
                continue;
            };
            if session.closing {
                continue;
            }
            census.sessions += 1;
            if session.ice.is_expired(now) && !session.timeout_reported {
                session.timeout_reported = true;
                let _ = events.send(Event::IceTimeout {
                    session: session.id,
                });
            }
            if let Some(listener) = &session.listener
                && !session.accept_armed
            {
                session.accept_armed = true;
                let token = Token {
                    slot,
                    generation: session.generation,
                };
                out.ring.arm_accept(listener.as_raw_fd(), token);
            }
            let deferred_keyframes = match &mut session.role {
                Role::Player(player) => {
                    census.players += 1;
                    if let Some(meter) = &session.meter {
                        let switched_before =
                            session.reception.layer_switches.load(Ordering::Relaxed);
                        if let Some(layer) =
                            choose_layer(player, session.id, now, meter, &session.reception)
                        {
                            self.keyframes_wanted.push((session.stream, layer));
                        }
                        let switched = session.reception.layer_switches.load(Ordering::Relaxed);
                        add(&out.stats.layer_switches, switched - switched_before);
                    }
                    0
                }
                Role::Publisher(publisher) => {
                    if let (Some(rates), Some(meter)) = (publisher.rates.poll(now), &session.meter)
                    {
                        publish_layer_meters(meter, rates, publisher.sizes());
                    }
                    publisher.poll(now)
                }
            };
            for layer in (0..MAX_LAYERS as u8).filter(|l| deferred_keyframes & (1 << l) != 0) {
                send_pli(session, layer, out);
            }
        }
        self.close_idle_conns(now, self.ice_timeout, out);
        self.mux_rearm(out);
        // A quiet stream lets go of the packets its window still holds, so they go back to
        // the pool.
        for local in self.streams.values_mut() {
            for window in &mut local.repair {
                window.release_expired(now);
            }
        }
        census
    }

    /// A burst left on its own (its hold ran out): the player no longer has it open.
    pub(super) fn forget_burst(&mut self, (slot, generation): Owner, id: BurstId) {
        if let Some(Some(session)) = self.sessions.get_mut(slot)
            && session.generation == generation
            && session.burst == Some(id)
        {
            session.burst = None;
        }
    }

    /// Whether a burst's owner is still the live player sending on `fd`.
    pub(super) fn is_live_udp(&self, (slot, generation): Owner, fd: RawFd) -> bool {
        self.sessions
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.generation == generation && !s.closing && s.udp_fd == fd)
    }
}

/// A simulcast player's encoding, picked from its estimate and the stream's encodings, shown
/// in its meter; returns the encoding it waits for a keyframe of, if any.
fn choose_layer(
    player: &mut Player,
    session: SessionId,
    now: Instant,
    stream: &StreamMeter,
    reception: &SessionMeter,
) -> Option<u8> {
    let wanted = player.choose_layer(now, &stream.encodings());
    let layers = player.layers()?;
    let show = |layer: Option<u8>| layer.map_or(u64::MAX, u64::from);
    reception
        .layer
        .store(show(layers.selector.current()), Ordering::Relaxed);
    reception
        .target_layer
        .store(show(layers.selector.target()), Ordering::Relaxed);
    let estimate = layers
        .estimator
        .as_ref()
        .map_or(0, BandwidthEstimator::estimate_bps);
    reception.estimate_bps.store(estimate, Ordering::Relaxed);
    if layers.selector.switches()
        != reception
            .layer_switches
            .swap(layers.selector.switches(), Ordering::Relaxed)
    {
        // Rare (seconds apart at most): worth a line when tuning or asking why a viewer's
        // picture changed.
        let state = layers.estimator.as_ref().map(BandwidthEstimator::state);
        tracing::debug!(
            session,
            layer = show(layers.selector.current()),
            target = show(layers.selector.target()),
            estimate_bps = estimate,
            loss = state.map_or(0.0, |s| s.loss_fraction),
            probes = ?state.map(|s| (s.probes_started, s.probes_succeeded, s.probes_failed, s.probes_disproved)),
            "player's layer switched"
        );
    }
    wanted
}

/// A publisher's encodings as its worker measured them, for the players' workers and the API.
fn publish_layer_meters(
    meter: &StreamMeter,
    rates: [u64; MAX_LAYERS],
    sizes: [Option<(u16, u16)>; MAX_LAYERS],
) {
    for ((layer, rate), size) in meter.layers.iter().zip(rates).zip(sizes) {
        layer.bitrate_bps.store(rate, Ordering::Relaxed);
        if let Some((width, height)) = size {
            layer.width.store(u64::from(width), Ordering::Relaxed);
            layer.height.store(u64::from(height), Ordering::Relaxed);
        }
    }
}
