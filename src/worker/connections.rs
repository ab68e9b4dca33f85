//! ICE-TCP connections (RFC 6544 passive): accepted on a session's listener, read as RFC 4571
//! frames, one gathered send in flight each; closed when the session ends, when a path is
//! nominated and it never passed a check, on a framing error, or when a send falls short.
//! Validated connections that are not the media path (the old path's after a migration among
//! them) stay open as the client's standby pairs while it keeps checking them (it may nominate
//! one when UDP fails), within the session's bound. A connection is freed (its
//! socket closed) once no operation on the ring refers to it.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::egress::{Output, Peer};
use super::stats::inc;
use super::table::{Table, ToClose};
use crate::io::{MAX_SEND_BATCH, Pending, Token};
use crate::media::MAX_PACKET;
use crate::wire::framing::FrameReader;

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

/// One accepted ICE-TCP connection.
pub(super) struct TcpConn {
    stream: TcpStream,
    pub(super) fd: RawFd,
    pub(super) generation: u32,
    pub(super) session: usize,
    pub(super) session_generation: u32,
    pub(super) peer: SocketAddr,
    pub(super) reader: FrameReader,
    /// A valid ICE check arrived on it; before that only STUN is accepted.
    pub(super) validated: bool,
    /// Unvalidated connections are closed `TCP_VALIDATION_DEADLINE` after this.
    accepted_at: Instant,
    /// The last valid ICE check on it: a standby connection (validated, not the media path)
    /// lives while the client keeps checking it (consent, RFC 7675), `ice_timeout` at most
    /// after this.
    pub(super) last_check: Instant,
    /// Frames waiting to be sent: (egress slot, bytes including the length prefix).
    pub(super) queue: VecDeque<(u32, usize)>,
    /// Frames of the one `sendmsg` in flight.
    pub(super) in_flight: Vec<(u32, usize)>,
    pub(super) in_flight_bytes: usize,
    recv_armed: bool,
    pub(super) closing: bool,
    /// Single-port mode: the connection moves to its session's worker once its receive is
    /// cancelled (it collects what it reads until then).
    pub(super) handover: Option<super::mux::PendingHandover>,
}

/// The ICE-TCP connections, by slot. The egress side keeps them (their send queues hold
/// egress slots); their lifecycle is here.
#[derive(Default)]
pub(super) struct Connections {
    slots: Vec<Option<TcpConn>>,
    free: Vec<usize>,
    next_generation: u32,
}

impl Connections {
    /// The connection in `slot` if it is still the one of `generation`.
    #[inline]
    pub(super) fn get(&mut self, slot: usize, generation: u32) -> Option<&mut TcpConn> {
        self.slots
            .get_mut(slot)?
            .as_mut()
            .filter(|c| c.generation == generation)
    }

    /// The connection in `slot`, whatever its generation.
    #[inline]
    pub(super) fn at(&mut self, slot: usize) -> Option<&mut TcpConn> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub(super) fn open_count(&self) -> usize {
        self.slots.iter().flatten().filter(|c| !c.closing).count()
    }

    /// Of `conns`, the one a new connection replaces when the session is full: the oldest
    /// that has not sent a valid ICE check, else the oldest standby (validated, not the media
    /// path `selected`: after an ICE restart the old ICE session's connections are those).
    fn evictable(&self, conns: &[usize], selected: Option<usize>) -> Option<usize> {
        let open = || {
            conns
                .iter()
                .copied()
                .filter(|&slot| Some(slot) != selected)
                .filter_map(|slot| Some((slot, self.slots.get(slot)?.as_ref()?)))
                .filter(|(_, c)| !c.closing)
        };
        let oldest = |candidates: &mut dyn Iterator<Item = (usize, &TcpConn)>| {
            candidates
                .min_by_key(|(_, c)| c.accepted_at)
                .map(|(slot, _)| slot)
        };
        oldest(&mut open().filter(|(_, c)| !c.validated))
            .or_else(|| oldest(&mut open().filter(|(_, c)| c.validated)))
    }
}

impl Table {
    /// Room for one more ICE-TCP connection in session `slot` (single-port mode, where
    /// connections come without a session's own listener), made as its own listener makes it:
    /// a full session closes its oldest connection that has not sent a valid check, else its
    /// oldest standby one; its media path keeps its place. `false` when it is closing, or its
    /// open connections (closing ones included) are at their bound: then the new one goes.
    /// Refusing instead would let anyone who saw a ufrag keep its client's TCP fallback out.
    pub(super) fn make_room_for_conn(&mut self, slot: usize, out: &mut Output) -> bool {
        let Some(session) = self.sessions[slot].as_ref() else {
            return false;
        };
        if session.closing || session.open_conns >= MAX_TCP_OPEN_PER_SESSION {
            return false;
        }
        if session.conns.len() < MAX_TCP_CONNECTIONS_PER_SESSION {
            return true;
        }
        let selected = session.remote.and_then(|r| r.tcp_conn()).map(|(c, _)| c);
        let Some(oldest) = out.conns.evictable(&session.conns, selected) else {
            return false;
        };
        inc(&out.stats.tcp_evicted);
        self.close_conn(oldest, out);
        true
    }

    pub(super) fn accepted(
        &mut self,
        token: Token,
        stream: Option<TcpStream>,
        more: bool,
        now: Instant,
        out: &mut Output,
    ) {
        let slot = token.slot;
        let Some(session) = self
            .sessions
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == token.generation)
        else {
            drop(stream);
            return;
        };
        if !more {
            // Re-armed on the next tick: an error such as EMFILE must not spin the loop.
            session.accept_armed = false;
        }
        if let Some(stream) = stream {
            let peer = stream.peer_addr().ok();
            let full = session.conns.len() >= MAX_TCP_CONNECTIONS_PER_SESSION;
            // A full session makes room by closing its oldest connection that has not sent a
            // valid check, else its oldest standby one; the media path keeps its place.
            let selected = session.remote.and_then(|r| r.tcp_conn()).map(|(c, _)| c);
            let evict = if full {
                out.conns.evictable(&session.conns, selected)
            } else {
                None
            };
            let refuse = session.closing
                || (full && evict.is_none())
                || session.open_conns >= MAX_TCP_OPEN_PER_SESSION
                || peer.is_none_or(|p| self.loopback_only && !p.ip().is_loopback());
            match peer {
                Some(peer) if !refuse => {
                    let _ = stream.set_nodelay(true);
                    session.open_conns += 1;
                    if let Some(old) = evict {
                        inc(&out.stats.tcp_evicted);
                        self.close_conn(old, out);
                    }
                    let conn = Self::add_conn(stream, peer, token, now, out);
                    if let Some(session) = self.sessions[slot].as_mut() {
                        session.conns.push(conn);
                    }
                    inc(&out.stats.tcp_accepted);
                }
                _ => {
                    drop(stream);
                    inc(&out.stats.tcp_refused);
                }
            }
        }
        if !more {
            self.maybe_finish_session(slot);
        }
    }

    pub(super) fn add_conn(
        stream: TcpStream,
        peer: SocketAddr,
        session: Token,
        now: Instant,
        out: &mut Output,
    ) -> usize {
        let conns = &mut out.conns;
        let slot = conns.free.pop().unwrap_or_else(|| {
            conns.slots.push(None);
            conns.slots.len() - 1
        });
        conns.next_generation = conns.next_generation.wrapping_add(1) & 0xff_ffff;
        let generation = conns.next_generation;
        let fd = stream.as_raw_fd();
        out.ring.arm_stream_recv(fd, Token { slot, generation });
        out.conns.slots[slot] = Some(TcpConn {
            stream,
            fd,
            generation,
            session: session.slot,
            session_generation: session.generation,
            peer,
            reader: FrameReader::new(MAX_PACKET),
            validated: false,
            accepted_at: now,
            last_check: now,
            queue: VecDeque::with_capacity(out.tcp_send_queue),
            in_flight: Vec::with_capacity(MAX_SEND_BATCH),
            in_flight_bytes: 0,
            recv_armed: true,
            closing: false,
            handover: None,
        });
        slot
    }

    /// Closes the connections that sent no valid ICE check within `TCP_VALIDATION_DEADLINE`,
    /// and the standby ones (validated, not their session's media path) whose client stopped
    /// checking them for `standby_timeout`: it gave the pair up.
    pub(super) fn close_idle_conns(
        &mut self,
        now: Instant,
        standby_timeout: Duration,
        out: &mut Output,
    ) {
        for slot in 0..out.conns.slots.len() {
            let Some(c) = out.conns.slots[slot].as_ref().filter(|c| !c.closing) else {
                continue;
            };
            if !c.validated {
                if now.saturating_duration_since(c.accepted_at) >= TCP_VALIDATION_DEADLINE {
                    inc(&out.stats.tcp_unvalidated_closed);
                    self.close_conn(slot, out);
                }
                continue;
            }
            let is_path = self
                .sessions
                .get(c.session)
                .and_then(Option::as_ref)
                .filter(|s| s.generation == c.session_generation)
                .and_then(|s| s.remote)
                .and_then(|r| r.tcp_conn())
                == Some((slot, c.generation));
            if !is_path && now.saturating_duration_since(c.last_check) >= standby_timeout {
                inc(&out.stats.tcp_standby_closed);
                self.close_conn(slot, out);
            }
        }
    }

    /// Starts closing a connection: its operations are cancelled, the session forgets it at
    /// once (so nothing is sent to it again), and it is freed when its operations are done.
    pub(super) fn close_conn(&mut self, slot: usize, out: &mut Output) {
        let Some(conn) = out.conns.at(slot) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        let (generation, session, session_generation) =
            (conn.generation, conn.session, conn.session_generation);
        let token = Token { slot, generation };
        let (recv_armed, sending) = (conn.recv_armed, !conn.in_flight.is_empty());
        let moving = conn.handover.is_some();
        if recv_armed {
            out.ring.cancel(Pending::TcpRecv(token));
        }
        if sending {
            out.ring.cancel(Pending::TcpSend(token));
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
        if !moving {
            inc(&out.stats.tcp_closed);
        }
        self.maybe_finish_conn(slot, out);
    }

    fn maybe_finish_conn(&mut self, slot: usize, out: &mut Output) {
        let done = matches!(&out.conns.slots[slot], Some(c) if c.closing && !c.recv_armed && c.in_flight.is_empty());
        if !done {
            return;
        }
        let Some(conn) = out.conns.slots[slot].take() else {
            return;
        };
        out.conns.free.push(slot);
        for (egress, _) in conn.queue {
            out.ring.release_egress(egress);
        }
        let session = conn.session;
        match conn.handover {
            Some(handover) => self.finish_handover(conn.stream, conn.peer, handover),
            None => {
                if session == super::mux::MUX_TCP
                    && let Some(mux) = self.mux.as_mut()
                {
                    mux.unbound_conns = mux.unbound_conns.saturating_sub(1);
                }
                self.to_close.push(ToClose::Connection(conn.stream));
            }
        }
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

    /// A connection's multishot receive ended: re-armed (`keep`), or the connection closes.
    pub(super) fn tcp_recv_ended(&mut self, token: Token, keep: bool, out: &mut Output) {
        let Some(conn) = out.conns.get(token.slot, token.generation) else {
            return;
        };
        conn.recv_armed = false;
        if conn.closing {
            self.maybe_finish_conn(token.slot, out);
        } else if keep {
            conn.recv_armed = true;
            let fd = conn.fd;
            out.ring.arm_stream_recv(fd, token);
        } else {
            self.close_conn(token.slot, out);
        }
    }

    /// A connection's gathered send completed: its frames' slots are free, and the next
    /// batch goes, unless the send fell short (the connection then closes).
    pub(super) fn tcp_sent(&mut self, token: Token, result: i32, out: &mut Output) {
        let slot = token.slot;
        let Some(conn) = out.conns.get(slot, token.generation) else {
            return;
        };
        let complete = result >= 0 && result as usize == conn.in_flight_bytes;
        let frames = std::mem::take(&mut conn.in_flight);
        for &(egress, _) in &frames {
            out.ring.release_egress(egress);
        }
        // Keep the vector's capacity for the next batch.
        if let Some(conn) = out.conns.get(slot, token.generation) {
            conn.in_flight = frames;
            conn.in_flight.clear();
            if conn.closing {
                self.maybe_finish_conn(slot, out);
            } else if complete {
                out.flush_conn(slot);
            } else {
                inc(&out.stats.send_errors);
                self.close_conn(slot, out);
            }
        }
    }
}
