//! Single-port mode, the worker's side (`media.mux_port`). Every worker binds its own UDP
//! socket and ICE-TCP listener on the one port (`SO_REUSEPORT`); the kernel picks a worker
//! per remote address, not per session, so a packet may arrive on a worker that does not own
//! its session. Each worker keeps a copy of the session table (`session::mux_table`): the
//! control thread registers every session's ufrag with every worker, and a path is latched
//! in the table of the worker whose socket receives it, once the owner has checked the ICE
//! check's integrity.
//!
//! - UDP: the receiving worker routes the datagram (by USERNAME for a binding request, else
//!   by latched 5-tuple). Its own session: straight to ingress. Another worker's: the bytes
//!   go there through the cross-worker queue (`CrossMessage::Demux`, a pooled packet, no
//!   allocation), and when that session's ICE accepts a check, the owner tells the receiving
//!   worker to latch the path (`Forwarded::Latch`). Replies leave from the owner's own socket
//!   on the same port.
//! - TCP: a connection accepted here is unbound until its first frame, an ICE check, names
//!   its session. Its own: the connection joins the session. Another worker's: its receive is
//!   cancelled and, once nothing on this ring names it, the socket and the bytes read so far
//!   move to the owner (`CrossMessage::Connection`), which carries on reading it.
//!
//! Unknown traffic is dropped and counted (`drop_unknown_ufrag`, `drop_unknown_path`); what
//! crossed workers is counted too (`mux_handoffs`, `mux_conn_handoffs`).

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::MuxSettings;
use super::egress::{Output, Peer};
use super::event_loop::Core;
use super::mesh::Forwarded;
use super::stats::{WorkerStats, inc};
use super::table::{Table, ToClose};
use crate::io::Token;
use crate::media::{MAX_PACKET, SessionId};
use crate::session::mux_table::{FiveTuple, Latch, MuxTable, Route, Transport, Unrouted};
use crate::wire::framing::{PREFIX_LEN, write_prefix};

/// In single-port mode, the slot in tokens that names the worker's shared UDP socket: the
/// session table keeps its first two slots for the shared sockets (`Table::new`), so they
/// never name a session, and the I/O backends' tables indexed by slot stay small.
pub(super) const MUX_UDP: usize = 0;
/// In single-port mode, the slot that names the shared listener, and that an unbound
/// connection's session slot holds.
pub(super) const MUX_TCP: usize = 1;
/// Session slots single-port mode keeps for the shared sockets.
pub(super) const MUX_RESERVED_SLOTS: usize = 2;
const MUX_UDP_TOKEN: Token = Token {
    slot: MUX_UDP,
    generation: 0,
};
const MUX_TCP_TOKEN: Token = Token {
    slot: MUX_TCP,
    generation: 0,
};

/// Connections on the shared listener that have not yet named their session, at most, per
/// worker: past this new ones are refused (each is closed within the validation deadline).
const MAX_UNBOUND_CONNS: usize = 1024;

/// Names a session to every worker: its owner and its id (ids are never reused, so a stale
/// entry can only miss, never reach another session).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct MuxOwner {
    pub(super) worker: usize,
    pub(super) session: SessionId,
}

/// An ICE-TCP connection moving to its session's worker, with the stream's bytes this worker
/// read and did not handle (the first ICE check among them).
pub struct ConnHandover {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) session: SessionId,
    pub(super) bytes: Vec<u8>,
}

impl ConnHandover {
    /// `bytes`: the stream's bytes read so far, RFC 4571 prefixes included.
    pub fn new(stream: TcpStream, peer: SocketAddr, session: SessionId, bytes: Vec<u8>) -> Self {
        ConnHandover {
            stream,
            peer,
            session,
            bytes,
        }
    }
}

/// A connection waiting for its receive to be cancelled before it moves.
pub(super) struct PendingHandover {
    pub(super) to: usize,
    pub(super) session: SessionId,
    pub(super) bytes: Vec<u8>,
}

/// This worker's sockets on the shared port and its copy of the session table.
pub(super) struct MuxPort {
    udp: Option<UdpSocket>,
    pub(super) udp_fd: RawFd,
    udp_local: SocketAddr,
    listener: Option<TcpListener>,
    tcp_local: SocketAddr,
    pub(super) table: MuxTable<MuxOwner>,
    recv_armed: bool,
    accept_armed: bool,
    pub(super) unbound_conns: usize,
    /// Connections whose hand-over is complete, to be queued to their owners.
    pub(super) handovers: Vec<(usize, Box<ConnHandover>)>,
    /// A handed-over packet is copied here to be decrypted in place.
    scratch: Box<[u8]>,
}

impl MuxPort {
    pub(super) fn open(settings: &MuxSettings) -> std::io::Result<MuxPort> {
        let udp = match settings.udp {
            true => Some(crate::io::socket::bind_shared_udp(
                settings.ip,
                settings.port,
                settings.udp_buffers.0,
                settings.udp_buffers.1,
            )?),
            false => None,
        };
        let listener = match settings.tcp {
            true => Some(crate::io::socket::bind_shared_tcp_listener(
                settings.ip,
                settings.port,
                settings.tcp_buffers.0,
                settings.tcp_buffers.1,
            )?),
            false => None,
        };
        let local = SocketAddr::new(settings.ip, settings.port);
        Ok(MuxPort {
            udp_fd: udp.as_ref().map_or(-1, |s| s.as_raw_fd()),
            udp,
            udp_local: local,
            listener,
            tcp_local: local,
            table: MuxTable::default(),
            recv_armed: false,
            accept_armed: false,
            unbound_conns: 0,
            handovers: Vec::new(),
            scratch: vec![0; MAX_PACKET].into_boxed_slice(),
        })
    }

    /// Arms what is not armed: the shared socket's receive and the listener's accept.
    pub(super) fn arm(&mut self, out: &mut Output) {
        if let Some(udp) = &self.udp
            && !self.recv_armed
        {
            self.recv_armed = true;
            out.ring.arm_recv(udp.as_raw_fd(), MUX_UDP_TOKEN);
        }
        if let Some(listener) = &self.listener
            && !self.accept_armed
        {
            self.accept_armed = true;
            out.ring.arm_accept(listener.as_raw_fd(), MUX_TCP_TOKEN);
        }
    }

    /// The shared socket's multishot receive ended: armed again at once.
    pub(super) fn recv_ended(&mut self, out: &mut Output) {
        self.recv_armed = false;
        self.arm(out);
    }

    fn udp_tuple(&self, remote: SocketAddr) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            remote,
            local: self.udp_local,
        }
    }

    /// Latches a UDP path this worker's socket receives to `owner`; a path another live
    /// session holds stays with it, counted.
    pub(super) fn latch_udp(&mut self, remote: SocketAddr, owner: MuxOwner, stats: &WorkerStats) {
        let tuple = self.udp_tuple(remote);
        if self.table.latch(tuple, owner) == Latch::Taken {
            inc(&stats.drop_latch_taken);
        }
    }
}

impl Table {
    /// A connection accepted on the shared listener: unbound until its first ICE check.
    pub(super) fn mux_accepted(
        &mut self,
        stream: Option<TcpStream>,
        more: bool,
        now: Instant,
        out: &mut Output,
    ) {
        let loopback_only = self.loopback_only;
        let Some(mux) = self.mux.as_mut() else {
            return;
        };
        if !more {
            // Re-armed on the next tick: an error such as EMFILE must not spin the loop.
            mux.accept_armed = false;
        }
        let Some(stream) = stream else {
            return;
        };
        let peer = stream.peer_addr().ok();
        match peer {
            Some(peer)
                if mux.unbound_conns < MAX_UNBOUND_CONNS
                    && (!loopback_only || peer.ip().is_loopback()) =>
            {
                let _ = stream.set_nodelay(true);
                mux.unbound_conns += 1;
                Table::add_conn(stream, peer, MUX_TCP_TOKEN, now, out);
                inc(&out.stats.tcp_accepted);
            }
            _ => {
                drop(stream);
                inc(&out.stats.tcp_refused);
            }
        }
    }

    /// Re-arms the shared sockets (the tick: an accept that ended on an error).
    pub(super) fn mux_rearm(&mut self, out: &mut Output) {
        if let Some(mux) = self.mux.as_mut() {
            mux.arm(out);
        }
    }

    /// The slot and generation of live session `id` here.
    pub(super) fn live_slot(&mut self, id: SessionId) -> Option<(usize, u32)> {
        let &slot = self.by_id.get(&id)?;
        let session = self.sessions[slot].as_ref().filter(|s| !s.closing)?;
        Some((slot, session.generation))
    }

    /// An unbound connection named session `id` here: it joins the session (which makes room
    /// as its own listener would), unless the session is gone or closing, or its open
    /// connections are at their bound (then it closes).
    pub(super) fn bind_conn(
        &mut self,
        conn: usize,
        id: SessionId,
        out: &mut Output,
    ) -> Option<(usize, u32)> {
        let bound = self
            .live_slot(id)
            .filter(|&(slot, _)| self.make_room_for_conn(slot, out));
        let Some((slot, generation)) = bound else {
            // Still unbound: counted out of `unbound_conns` when it finishes.
            inc(&out.stats.tcp_refused);
            self.close_conn(conn, out);
            return None;
        };
        if let Some(mux) = self.mux.as_mut() {
            mux.unbound_conns = mux.unbound_conns.saturating_sub(1);
        }
        if let Some(c) = out.conns.at(conn) {
            c.session = slot;
            c.session_generation = generation;
        }
        if let Some(session) = self.sessions[slot].as_mut() {
            session.conns.push(conn);
            session.open_conns += 1;
        }
        Some((slot, generation))
    }

    /// An unbound connection named a session on worker `to`: its receive is cancelled, and
    /// when nothing on this ring names it any more it moves there with `first` (the frame
    /// that named the session) and whatever else it read.
    pub(super) fn hand_over_conn(
        &mut self,
        conn: usize,
        to: usize,
        session: SessionId,
        first: &[u8],
        out: &mut Output,
    ) {
        let Some(c) = out.conns.at(conn) else {
            return;
        };
        let mut bytes = Vec::with_capacity(PREFIX_LEN + first.len());
        append_frame(&mut bytes, first);
        c.handover = Some(PendingHandover { to, session, bytes });
        self.close_conn(conn, out);
    }

    /// A connection whose hand-over may now go: nothing on the ring names it.
    pub(super) fn finish_handover(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        handover: PendingHandover,
    ) {
        if let Some(mux) = self.mux.as_mut() {
            mux.unbound_conns = mux.unbound_conns.saturating_sub(1);
            mux.handovers.push((
                handover.to,
                Box::new(ConnHandover {
                    stream,
                    peer,
                    session: handover.session,
                    bytes: handover.bytes,
                }),
            ));
        } else {
            self.to_close.push(ToClose::Connection(stream));
        }
    }

    /// Adopts a connection another worker accepted for session `id` here; returns its slot
    /// and generation, to be fed what that worker read.
    pub(super) fn adopt_conn(
        &mut self,
        handover: ConnHandover,
        now: Instant,
        out: &mut Output,
    ) -> Option<(usize, u32)> {
        let room = self
            .live_slot(handover.session)
            .filter(|&(slot, _)| self.make_room_for_conn(slot, out));
        let Some((slot, generation)) = room else {
            inc(&out.stats.tcp_refused);
            self.to_close.push(ToClose::Connection(handover.stream));
            return None;
        };
        let _ = handover.stream.set_nodelay(true);
        let conn = Table::add_conn(
            handover.stream,
            handover.peer,
            Token { slot, generation },
            now,
            out,
        );
        if let Some(session) = self.sessions[slot].as_mut() {
            session.conns.push(conn);
            session.open_conns += 1;
        }
        let conn_generation = out.conns.at(conn)?.generation;
        Some((conn, conn_generation))
    }
}

/// Appends `frame` with its RFC 4571 length prefix.
pub(super) fn append_frame(bytes: &mut Vec<u8>, frame: &[u8]) {
    let at = bytes.len();
    bytes.resize(at + PREFIX_LEN + frame.len(), 0);
    write_prefix(&mut bytes[at..], frame.len());
    bytes[at + PREFIX_LEN..].copy_from_slice(frame);
}

impl Core {
    /// A datagram on this worker's shared socket: to its session here, or handed to the
    /// session's worker, or dropped and counted.
    pub(super) fn on_mux_datagram(&mut self, from: SocketAddr, data: &mut [u8], now: Instant) {
        let Some(mux) = self.table.mux.as_ref() else {
            return;
        };
        let owner = match mux.table.route(&mux.udp_tuple(from), data) {
            Route::Check(owner) | Route::Latched(owner) => owner,
            Route::Drop(Unrouted::UnknownUfrag) => {
                inc(&self.out.stats.drop_unknown_ufrag);
                return;
            }
            Route::Drop(Unrouted::UnknownTuple) => {
                inc(&self.out.stats.drop_unknown_path);
                return;
            }
        };
        if owner.worker == self.index {
            self.deliver_mux(owner.session, self.index, from, data, now);
        } else {
            inc(&self.out.stats.mux_handoffs);
            let what = Forwarded::Handoff {
                session: owner.session,
                from,
            };
            if !self.fanout.hand_over(owner.worker, what, data, now) {
                inc(&self.out.stats.drop_ring_full);
            }
        }
    }

    /// A datagram for session `id` here that arrived on worker `receiver`'s shared socket.
    fn deliver_mux(
        &mut self,
        id: SessionId,
        receiver: usize,
        from: SocketAddr,
        data: &mut [u8],
        now: Instant,
    ) {
        let Some((slot, generation)) = self.table.live_slot(id) else {
            // Ended since the path was latched (its entries are on their way out).
            inc(&self.out.stats.drop_unknown_path);
            return;
        };
        self.mux_receiver = Some(receiver);
        self.on_packet(slot, generation, Peer::udp(from), data, now);
        self.mux_receiver = None;
    }

    /// A session here passed an ICE check on a shared-port UDP path that arrived on worker
    /// `receiver`: that worker's table latches the path to it.
    pub(super) fn latch_mux(&mut self, receiver: usize, session: SessionId, from: SocketAddr) {
        let owner = MuxOwner {
            worker: self.index,
            session,
        };
        if receiver == self.index {
            if let Some(mux) = self.table.mux.as_mut() {
                mux.latch_udp(from, owner, &self.out.stats);
            }
        } else if !self.fanout.hand_over(
            receiver,
            Forwarded::Latch { session, from },
            &[],
            Instant::now(),
        ) {
            inc(&self.out.stats.drop_ring_full);
        }
    }

    /// One frame of an unbound connection on the shared listener: it must be an ICE check
    /// naming a session; the connection joins it, here or on its worker.
    pub(super) fn on_unbound_frame(&mut self, peer: Peer, frame: &mut [u8], now: Instant) {
        let Some((conn, _)) = peer.tcp_conn() else {
            return;
        };
        let Some(mux) = self.table.mux.as_ref() else {
            return;
        };
        let tuple = FiveTuple {
            transport: Transport::Tcp,
            remote: peer.addr(),
            local: mux.tcp_local,
        };
        let owner = match mux.table.route(&tuple, frame) {
            Route::Check(owner) => owner,
            // A check for no session here (yet: a session's ufrag reaches every worker by a
            // command, which a busy worker may take after the client's first check) is dropped;
            // the connection stays unbound for the client's next check until its deadline.
            Route::Drop(Unrouted::UnknownUfrag) => {
                inc(&self.out.stats.drop_unknown_ufrag);
                return;
            }
            // Connections are never latched by tuple: a connection is its own path.
            Route::Latched(_) | Route::Drop(Unrouted::UnknownTuple) => {
                inc(&self.out.stats.drop_unknown_path);
                self.table.close_conn(conn, &mut self.out);
                return;
            }
        };
        if owner.worker == self.index {
            if let Some((slot, generation)) =
                self.table.bind_conn(conn, owner.session, &mut self.out)
            {
                self.on_packet(slot, generation, peer, frame, now);
            }
        } else {
            inc(&self.out.stats.mux_conn_handoffs);
            let (table, out) = (&mut self.table, &mut self.out);
            table.hand_over_conn(conn, owner.worker, owner.session, frame, out);
        }
    }

    /// What other workers handed over this turn: datagrams for sessions here, connections.
    pub(super) fn drain_handed_over(&mut self, now: Instant) {
        if self.fanout.inbox.is_empty() {
            return;
        }
        let mut inbox = std::mem::take(&mut self.fanout.inbox);
        let mut scratch = match self.table.mux.as_mut() {
            Some(mux) => std::mem::take(&mut mux.scratch),
            None => Box::default(),
        };
        for item in inbox.drain(..) {
            match item {
                super::fanout::Inbound::Packet {
                    from_worker,
                    packet,
                } => {
                    let Forwarded::Handoff { session, from } = packet.what else {
                        continue;
                    };
                    let bytes = packet.bytes();
                    let Some(data) = scratch.get_mut(..bytes.len()) else {
                        inc(&self.out.stats.drop_garbage);
                        continue;
                    };
                    data.copy_from_slice(bytes);
                    // Let the sender's pool have its packet back at once.
                    drop(packet);
                    self.deliver_mux(session, from_worker, from, data, now);
                }
                super::fanout::Inbound::Connection(handover) => {
                    self.adopt_connection(*handover, now)
                }
            }
        }
        self.fanout.inbox = inbox;
        if let Some(mux) = self.table.mux.as_mut() {
            mux.scratch = scratch;
        }
    }

    /// Adopts a connection handed over for a session here (by another worker, or by the HTTP
    /// listener) and reads what it sent so far; its first ICE check validates it or closes it.
    pub(super) fn adopt_connection(&mut self, mut handover: ConnHandover, now: Instant) {
        let mut bytes = std::mem::take(&mut handover.bytes);
        let (table, out) = (&mut self.table, &mut self.out);
        if let Some((conn, generation)) = table.adopt_conn(handover, now, out) {
            self.on_tcp_data(conn, generation, &mut bytes, now);
        }
    }

    /// Queues connections whose hand-over finished to their owners.
    pub(super) fn send_handovers(&mut self) {
        let Some(mux) = self.table.mux.as_mut() else {
            return;
        };
        if mux.handovers.is_empty() {
            return;
        }
        let handovers = std::mem::take(&mut mux.handovers);
        for (to, handover) in handovers {
            if let Err(handover) = self.fanout.hand_over_conn(to, handover) {
                inc(&self.out.stats.drop_ring_full);
                self.table
                    .to_close
                    .push(ToClose::Connection(handover.stream));
            }
        }
    }
}
