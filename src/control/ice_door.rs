//! ICE-TCP on the HTTP(S) listener's port (`media.tcp_on_http`), the control thread's side:
//! which port answers put the passive TCP candidate on, which session a connection's first
//! ICE check names, and the hand-over of the socket to that session's worker.
//!
//! The listener only routes: the worker adopts the connection unvalidated, as every ICE-TCP
//! connection starts, and the session's ICE checks the check's MESSAGE-INTEGRITY before the
//! connection carries anything (so a forged USERNAME gets a closed connection, never another
//! session's media).

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;

use super::Control;
use super::registry::SessionState;
use crate::media::SessionId;
use crate::util::lock;
use crate::wire::stun::StunMessage;
use crate::worker::{Command, ConnHandover};

impl Control {
    /// The HTTP(S) listener's bound port, known once it is bound (before any session).
    pub fn set_http_port(&self, port: u16) {
        self.http_port.store(port, Ordering::Relaxed);
    }

    /// Whether the HTTP listener takes ICE-TCP connections.
    pub fn tcp_on_http(&self) -> bool {
        self.config.media.tcp_on_http
    }

    /// The port of a session's passive TCP candidate: the HTTP listener's with
    /// `media.tcp_on_http`, else the session's media port.
    pub(super) fn tcp_candidate_port(&self, media_port: u16) -> u16 {
        match self.config.media.tcp_on_http {
            true => self.http_port.load(Ordering::Relaxed),
            false => media_port,
        }
    }

    /// The live session (its worker and id) whose ufrag `first_frame` (a STUN message, without
    /// its RFC 4571 prefix) names in its USERNAME, if it is a binding request. One lookup per
    /// connection, never per packet.
    pub fn ice_tcp_owner(&self, first_frame: &[u8]) -> Option<(usize, SessionId)> {
        let message = StunMessage::parse(first_frame).ok()?;
        if !message.is_binding_request() {
            return None;
        }
        let username = message.username?;
        let ours = username.split(|&b| b == b':').next()?;
        let ours = std::str::from_utf8(ours).ok()?;
        let registry = lock(&self.registry);
        let id = *registry.by_ufrag.get(ours)?;
        registry
            .sessions
            .get(&id)
            // Only a session whose answer offered ICE-TCP takes a connection.
            .filter(|s| s.offered.1 && s.state != SessionState::Closing)
            .map(|s| (s.worker, id))
    }

    /// Moves a connection that named session `session` to its worker, with `bytes`, all it
    /// sent so far (its first frame, prefix included, and anything after).
    pub fn hand_over_ice_tcp(
        &self,
        worker: usize,
        session: SessionId,
        stream: TcpStream,
        peer: SocketAddr,
        bytes: Vec<u8>,
    ) {
        if let Some(handle) = self.workers.get(worker) {
            handle.send(Command::AdoptConnection(Box::new(ConnHandover::new(
                stream, peer, session, bytes,
            ))));
        }
    }
}
