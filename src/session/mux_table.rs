//! Single-port mode's session lookup: every session shares one media port, so a packet is
//! matched to its session by what it carries. A STUN binding request names the session in
//! its USERNAME (`local-ufrag:remote-ufrag`, RFC 8445 §7.2.2): it goes to the session
//! *registered* under that ufrag, which must check its MESSAGE-INTEGRITY before the packet's
//! 5-tuple is *latched* to it. Everything else (DTLS, SRTP, SRTCP) goes by latched 5-tuple
//! only. What neither finds is dropped by the caller and counted, never guessed at.
//!
//! Sans-IO and clockless: the worker asks [`MuxTable::route`] per packet and tells the table
//! what ICE decided. Four operations change it, each explicit:
//! - [`MuxTable::register`]: a session answers to a ufrag. A session may hold several (an
//!   ICE restart registers the new ufrag next to the old one, then forgets the old).
//! - [`MuxTable::forget`]: a ufrag no longer names its session.
//! - [`MuxTable::latch`]: a 5-tuple carries a session's media (after a check passed its
//!   integrity). Latching a tuple again, or to another session, moves it (transport
//!   migration); a session keeps at most [`MAX_TUPLES_PER_SESSION`], its oldest let go.
//! - [`MuxTable::release`]: a 5-tuple no longer carries anything.
//!
//! [`MuxTable::forget_session`] does all of that for a session that ended.
//!
//! Bounded under floods: ufrags come from the relay's own offers/answers, and a tuple is
//! latched only after a check that proved the session's password, so neither map grows with
//! what strangers send; a lookup allocates nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

use crate::wire::demux::{PacketKind, classify};
use crate::wire::stun::StunMessage;

/// Longest ufrag the table keeps (RFC 8445 allows up to 256 characters; the relay's own are
/// 8). A longer one is refused at registration and never matches a packet.
pub const MAX_UFRAG: usize = 32;

/// 5-tuples one session may have latched at once: a browser validates a pair or two per
/// candidate it gathered; more are let go oldest first.
pub const MAX_TUPLES_PER_SESSION: usize = 8;

/// A ufrag, held inline so a lookup needs no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Ufrag {
    len: u8,
    bytes: [u8; MAX_UFRAG],
}

impl Ufrag {
    /// `None` when `text` is empty or longer than [`MAX_UFRAG`].
    pub fn new(text: &[u8]) -> Option<Ufrag> {
        if text.is_empty() || text.len() > MAX_UFRAG {
            return None;
        }
        let mut bytes = [0; MAX_UFRAG];
        bytes[..text.len()].copy_from_slice(text);
        Some(Ufrag {
            len: text.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where a packet came from and to which of the relay's sockets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FiveTuple {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// Where a packet goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route<S> {
    /// A binding request naming a registered session: the session checks its integrity, and
    /// only then latches the tuple.
    Check(S),
    /// A packet on a latched tuple.
    Latched(S),
    /// Dropped, and why.
    Drop(Unrouted),
}

/// Why a packet found no session (the worker counts each).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unrouted {
    /// A binding request whose USERNAME names no registered session (or has none, or is
    /// malformed).
    UnknownUfrag,
    /// Not a binding request, from a tuple no session has latched.
    UnknownTuple,
}

#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("ufrag is empty or longer than {MAX_UFRAG} bytes")]
    BadUfrag,
    #[error("ufrag already names another session")]
    Taken,
}

/// The lookup table: ufrag → session, 5-tuple → session. `S` is whatever names a session to
/// its caller (the worker: its owner worker and session id).
pub struct MuxTable<S> {
    by_ufrag: HashMap<Ufrag, S>,
    by_tuple: HashMap<FiveTuple, S>,
    /// Each session's ufrags (its current and, after a restart, its previous one): a session's
    /// end or restart touches its own entries, not every session's.
    ufrags_of: HashMap<S, Vec<Ufrag>>,
    /// Each session's latched tuples, least recently latched first.
    tuples_of: HashMap<S, Vec<FiveTuple>>,
}

/// What [`MuxTable::latch`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Latch {
    /// The tuple carries the session's media now (or already did).
    Latched,
    /// The tuple carries another live session's media and stays with it: one session's valid
    /// check from a spoofed source must not take another's path.
    Taken,
    /// The session has no ufrag here any more (it ended while the latch was on its way).
    Gone,
}

impl<S: Copy + Eq + Hash> Default for MuxTable<S> {
    fn default() -> Self {
        MuxTable {
            by_ufrag: HashMap::new(),
            by_tuple: HashMap::new(),
            ufrags_of: HashMap::new(),
            tuples_of: HashMap::new(),
        }
    }
}

impl<S: Copy + Eq + Hash> MuxTable<S> {
    /// `session` answers to `ufrag` (the relay's own, from its answer). Registering the same
    /// pair again is harmless; a ufrag that names another session is refused (the relay's
    /// ufrags are random, so that is a collision to retry, never a take-over).
    pub fn register(&mut self, ufrag: &[u8], session: S) -> Result<(), RegisterError> {
        let key = Ufrag::new(ufrag).ok_or(RegisterError::BadUfrag)?;
        match self.by_ufrag.get(&key) {
            Some(&owner) if owner != session => Err(RegisterError::Taken),
            Some(_) => Ok(()),
            None => {
                self.by_ufrag.insert(key, session);
                self.ufrags_of.entry(session).or_default().push(key);
                Ok(())
            }
        }
    }

    /// An ICE restart gave `session` the ufrag `ufrag` in place of `previous`: both name it
    /// (the client may check with the old credentials until it nominates with the new), any
    /// older one no longer does, so restarts never pile up entries. Per restart, a pass over
    /// the session's own ufrags.
    pub fn renew(
        &mut self,
        ufrag: &[u8],
        previous: &[u8],
        session: S,
    ) -> Result<(), RegisterError> {
        self.register(ufrag, session)?;
        let (keep, also) = (Ufrag::new(ufrag), Ufrag::new(previous));
        if let Some(ufrags) = self.ufrags_of.get_mut(&session) {
            let by_ufrag = &mut self.by_ufrag;
            ufrags.retain(|key| {
                let kept = Some(*key) == keep || Some(*key) == also;
                if !kept {
                    by_ufrag.remove(key);
                }
                kept
            });
        }
        Ok(())
    }

    /// `ufrag` names nothing any more; returns the session it named.
    pub fn forget(&mut self, ufrag: &[u8]) -> Option<S> {
        let key = Ufrag::new(ufrag)?;
        let session = self.by_ufrag.remove(&key)?;
        if let Some(ufrags) = self.ufrags_of.get_mut(&session) {
            ufrags.retain(|k| *k != key);
            if ufrags.is_empty() {
                self.ufrags_of.remove(&session);
            }
        }
        Some(session)
    }

    /// `tuple` carries `session`'s media from now on (a check on it passed the session's
    /// integrity). A tuple latched to another live session stays with it ([`Latch::Taken`]:
    /// it moves only when that session lets it go or ends); past [`MAX_TUPLES_PER_SESSION`]
    /// the session's least recently latched tuple is released.
    pub fn latch(&mut self, tuple: FiveTuple, session: S) -> Latch {
        if !self.ufrags_of.contains_key(&session) {
            return Latch::Gone;
        }
        // Looked up first: every consent check latches again, and an insert, even of a key
        // already there, may grow a full map (hashbrown reserves before it looks).
        match self.by_tuple.get(&tuple) {
            Some(&owner) if owner == session => {
                // Most recently latched now: the path in use is never the one let go.
                if let Some(list) = self.tuples_of.get_mut(&session)
                    && let Some(at) = list.iter().position(|t| *t == tuple)
                {
                    let latched = list.remove(at);
                    list.push(latched);
                }
                return Latch::Latched;
            }
            Some(_) => return Latch::Taken,
            None => {}
        }
        self.by_tuple.insert(tuple, session);
        let list = self.tuples_of.entry(session).or_default();
        list.push(tuple);
        if list.len() > MAX_TUPLES_PER_SESSION {
            let oldest = list.remove(0);
            self.by_tuple.remove(&oldest);
        }
        Latch::Latched
    }

    /// `tuple` carries nothing any more; returns the session it carried.
    pub fn release(&mut self, tuple: &FiveTuple) -> Option<S> {
        let session = self.by_tuple.remove(tuple)?;
        self.unlist(session, tuple);
        Some(session)
    }

    /// A session ended: its ufrags and tuples go.
    pub fn forget_session(&mut self, session: S) {
        for ufrag in self.ufrags_of.remove(&session).unwrap_or_default() {
            self.by_ufrag.remove(&ufrag);
        }
        for tuple in self.tuples_of.remove(&session).unwrap_or_default() {
            self.by_tuple.remove(&tuple);
        }
    }

    fn unlist(&mut self, session: S, tuple: &FiveTuple) {
        if let Some(list) = self.tuples_of.get_mut(&session) {
            list.retain(|t| t != tuple);
            if list.is_empty() {
                self.tuples_of.remove(&session);
            }
        }
    }

    /// The session a packet on `tuple` belongs to. A binding request goes by the ufrag it
    /// names (so a new path, or a restarted session's new ufrag, reaches its session on an
    /// already latched tuple too); anything else by the tuple.
    pub fn route(&self, tuple: &FiveTuple, packet: &[u8]) -> Route<S> {
        if classify(packet) == PacketKind::Stun {
            match StunMessage::parse(packet) {
                Ok(message) if message.is_binding_request() => {
                    return match self.lookup_username(message.username) {
                        Some(session) => Route::Check(session),
                        None => Route::Drop(Unrouted::UnknownUfrag),
                    };
                }
                // A response or indication from a latched peer is the session's business.
                _ => {}
            }
        }
        match self.by_tuple.get(tuple) {
            Some(&session) => Route::Latched(session),
            None => Route::Drop(Unrouted::UnknownTuple),
        }
    }

    /// The session a USERNAME (`ours:theirs`) names by its first part.
    fn lookup_username(&self, username: Option<&[u8]>) -> Option<S> {
        let username = username?;
        let local = username.split(|&b| b == b':').next()?;
        self.by_ufrag.get(&Ufrag::new(local)?).copied()
    }

    /// The session `tuple` is latched to.
    pub fn latched(&self, tuple: &FiveTuple) -> Option<S> {
        self.by_tuple.get(tuple).copied()
    }

    /// Ufrags registered and tuples latched (gauges, and tests).
    pub fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_tuple.len())
    }

    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty() && self.by_tuple.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::stun::{BINDING_REQUEST, StunWriter, short_term_key};

    fn udp(port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            remote: SocketAddr::from(([127, 0, 0, 1], port)),
            local: SocketAddr::from(([127, 0, 0, 1], 8189)),
        }
    }

    fn check(username: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let mut writer = StunWriter::new(&mut buf, BINDING_REQUEST, &[7; 12]).unwrap();
        writer.username(username).unwrap();
        writer
            .message_integrity(&short_term_key("password"))
            .unwrap();
        let len = writer.fingerprint().unwrap();
        buf.truncate(len);
        buf
    }

    const RTP: [u8; 12] = [0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];

    #[test]
    fn a_binding_request_goes_to_the_session_its_username_names() {
        let mut table = MuxTable::default();
        table.register(b"aaaa", 1).unwrap();
        table.register(b"bbbb", 2).unwrap();
        assert_eq!(table.route(&udp(1), &check(b"aaaa:x")), Route::Check(1));
        assert_eq!(table.route(&udp(1), &check(b"bbbb:y")), Route::Check(2));
        assert_eq!(
            table.route(&udp(1), &check(b"cccc:x")),
            Route::Drop(Unrouted::UnknownUfrag)
        );
        // The ufrag must match whole: a prefix or an extension is another ufrag.
        assert_eq!(
            table.route(&udp(1), &check(b"aaa:x")),
            Route::Drop(Unrouted::UnknownUfrag)
        );
        assert_eq!(
            table.route(&udp(1), &check(b"aaaaa:x")),
            Route::Drop(Unrouted::UnknownUfrag)
        );
    }

    #[test]
    fn an_ice_restart_keeps_the_new_and_the_previous_ufrag_and_no_older() {
        let mut table = MuxTable::default();
        table.register(b"one1", 1).unwrap();
        table.register(b"othr", 2).unwrap();
        table.renew(b"two2", b"one1", 1).unwrap();
        for name in [&b"one1:x"[..], b"two2:x"] {
            assert_eq!(table.route(&udp(1), &check(name)), Route::Check(1));
        }
        table.renew(b"thr3", b"two2", 1).unwrap();
        assert_eq!(
            table.route(&udp(1), &check(b"one1:x")),
            Route::Drop(Unrouted::UnknownUfrag)
        );
        assert_eq!(table.route(&udp(1), &check(b"thr3:x")), Route::Check(1));
        assert_eq!(table.route(&udp(1), &check(b"othr:x")), Route::Check(2));
        assert_eq!(table.renew(b"othr", b"thr3", 1), Err(RegisterError::Taken));
    }

    #[test]
    fn media_goes_only_by_a_latched_tuple() {
        let mut table = MuxTable::default();
        table.register(b"aaaa", 1).unwrap();
        assert_eq!(
            table.route(&udp(1), &RTP),
            Route::Drop(Unrouted::UnknownTuple)
        );
        table.latch(udp(1), 1);
        assert_eq!(table.route(&udp(1), &RTP), Route::Latched(1));
        // The same remote on another transport or to another local address is another path.
        let tcp = FiveTuple {
            transport: Transport::Tcp,
            ..udp(1)
        };
        assert_eq!(table.route(&tcp, &RTP), Route::Drop(Unrouted::UnknownTuple));
        assert_eq!(
            table.route(&udp(2), &RTP),
            Route::Drop(Unrouted::UnknownTuple)
        );
    }

    #[test]
    fn garbage_and_requests_without_a_username_are_unknown() {
        let mut table = MuxTable::default();
        table.register(b"aaaa", 1).unwrap();
        table.latch(udp(1), 1);
        let mut no_username = vec![0u8; 64];
        let len = StunWriter::new(&mut no_username, BINDING_REQUEST, &[1; 12])
            .unwrap()
            .fingerprint()
            .unwrap();
        assert_eq!(
            table.route(&udp(1), &no_username[..len]),
            Route::Drop(Unrouted::UnknownUfrag),
            "a binding request goes by its username even on a latched tuple"
        );
        assert_eq!(
            table.route(&udp(2), &[0xff; 40]),
            Route::Drop(Unrouted::UnknownTuple)
        );
        assert_eq!(
            table.route(&udp(2), &[]),
            Route::Drop(Unrouted::UnknownTuple)
        );
        assert_eq!(
            table.route(&udp(2), &check(&[b'a'; 200])),
            Route::Drop(Unrouted::UnknownUfrag)
        );
    }

    #[test]
    fn a_ufrag_cannot_be_taken_over_and_bad_ones_are_refused() {
        let mut table = MuxTable::default();
        table.register(b"aaaa", 1).unwrap();
        assert_eq!(table.register(b"aaaa", 2), Err(RegisterError::Taken));
        assert_eq!(table.register(b"aaaa", 1), Ok(()));
        assert_eq!(table.register(b"", 3), Err(RegisterError::BadUfrag));
        assert_eq!(table.register(&[b'x'; 33], 3), Err(RegisterError::BadUfrag));
        assert_eq!(table.route(&udp(1), &check(b"aaaa:z")), Route::Check(1));
    }

    #[test]
    fn a_restart_registers_a_new_ufrag_and_forgets_the_old() {
        let mut table = MuxTable::default();
        table.register(b"old1", 1).unwrap();
        table.latch(udp(1), 1);
        table.register(b"new1", 1).unwrap();
        assert_eq!(table.route(&udp(1), &check(b"new1:x")), Route::Check(1));
        assert_eq!(table.forget(b"old1"), Some(1));
        assert_eq!(
            table.route(&udp(1), &check(b"old1:x")),
            Route::Drop(Unrouted::UnknownUfrag)
        );
        // The media path stays latched through the restart.
        assert_eq!(table.route(&udp(1), &RTP), Route::Latched(1));
    }

    #[test]
    fn a_tuple_stays_with_its_session_until_released_or_forgotten() {
        let mut table = MuxTable::default();
        table.register(b"aaaa", 1).unwrap();
        table.register(b"bbbb", 2).unwrap();
        assert_eq!(table.latch(udp(1), 1), Latch::Latched);
        assert_eq!(table.latch(udp(2), 1), Latch::Latched);
        // Session 2's valid check from session 1's tuple (a spoofed source): refused.
        assert_eq!(table.latch(udp(1), 2), Latch::Taken);
        assert_eq!(table.latched(&udp(1)), Some(1));
        // Once session 1 ends, the tuple is free for whoever checks from it.
        table.forget_session(1);
        assert_eq!(table.latched(&udp(2)), None);
        assert_eq!(table.latch(udp(1), 2), Latch::Latched);
        assert_eq!(table.release(&udp(1)), Some(2));
        assert_eq!(table.release(&udp(1)), None);
        table.forget_session(2);
        assert!(table.is_empty());
    }

    #[test]
    fn a_latch_for_a_session_no_longer_here_is_ignored() {
        let mut table = MuxTable::default();
        table.register(b"aaaa", 1).unwrap();
        table.forget_session(1);
        // Sent by the owner before the session ended, arriving after.
        assert_eq!(table.latch(udp(1), 1), Latch::Gone);
        assert!(table.is_empty());
    }

    #[test]
    fn a_session_keeps_a_bounded_number_of_tuples() {
        let mut table = MuxTable::default();
        table.register(b"aaaa", 1).unwrap();
        for port in 0..100 {
            table.latch(udp(port), 1);
            // The path in use is checked (and latched again) all along.
            table.latch(udp(0), 1);
        }
        assert_eq!(table.len().1, MAX_TUPLES_PER_SESSION);
        assert_eq!(
            table.latched(&udp(0)),
            Some(1),
            "the most recently latched stays"
        );
        assert_eq!(table.latched(&udp(1)), None, "the least recent went first");
        assert_eq!(table.latched(&udp(99)), Some(1));
        table.forget_session(1);
        assert!(table.is_empty());
    }

    #[test]
    fn forgetting_a_session_removes_its_ufrags_and_tuples() {
        let mut table = MuxTable::default();
        table.register(b"aaaa", 1).unwrap();
        table.register(b"bbbb", 2).unwrap();
        table.latch(udp(1), 1);
        table.latch(udp(2), 2);
        table.forget_session(1);
        assert_eq!(table.len(), (1, 1));
        assert_eq!(
            table.route(&udp(1), &RTP),
            Route::Drop(Unrouted::UnknownTuple)
        );
        assert_eq!(table.route(&udp(2), &RTP), Route::Latched(2));
    }
}
