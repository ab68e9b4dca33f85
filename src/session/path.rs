//! The session's media path and the rule that moves it (transport migration). The relay is
//! ICE-lite, so the client (the controlling agent) chooses: a connectivity check that passed
//! MESSAGE-INTEGRITY and carries USE-CANDIDATE nominates the pair it came on, and when that
//! pair is not the session's path, the session moves there, whether after an ICE restart or
//! because the browser re-nominated on its own (UDP blocked, a network change). The DTLS and
//! SRTP contexts belong to the session, not to the path, so nothing is negotiated again.
//!
//! A check that failed authentication never reaches this rule (`ice::IceLite::handle_check`
//! refuses it first), so a spoofed request cannot move a session. MESSAGE-INTEGRITY covers a
//! check's bytes, transaction ID included, but not the address it came from: a captured
//! nomination sent again from elsewhere would pass it. [`RecentNominations`] remembers the
//! transaction IDs of the last nominations and the path each came on; one seen again on
//! another path is a replay and moves nothing (a client's own retransmission comes on the
//! same path, and a new check has a new ID, which only the key holder can sign).

use std::net::SocketAddr;

/// One path media can take: a UDP 5-tuple (the session's socket and the client's address)
/// or one accepted ICE-TCP connection (its slot and generation in the worker's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPath {
    Udp(SocketAddr),
    Tcp {
        conn: usize,
        generation: u32,
        peer: SocketAddr,
    },
}

impl MediaPath {
    pub fn is_tcp(&self) -> bool {
        matches!(self, MediaPath::Tcp { .. })
    }

    pub fn peer(&self) -> SocketAddr {
        match *self {
            MediaPath::Udp(peer) | MediaPath::Tcp { peer, .. } => peer,
        }
    }
}

/// What an authenticated connectivity check means for the session's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathChange {
    /// Nothing moves: no nomination, or the path already carrying the media.
    Unchanged,
    /// The session's first path: media may start.
    Selected,
    /// The client nominated another pair: media moves there and the old path's state (its
    /// TCP connection, a frame burst held for its address) is let go.
    Migrated { from: MediaPath },
}

/// The switch rule: `checked` passed MESSAGE-INTEGRITY; with USE-CANDIDATE (`nominated`) it
/// becomes the session's path unless it already is.
pub fn on_valid_check(
    current: Option<MediaPath>,
    checked: MediaPath,
    nominated: bool,
) -> PathChange {
    match current {
        _ if !nominated => PathChange::Unchanged,
        None => PathChange::Selected,
        Some(path) if path == checked => PathChange::Unchanged,
        Some(from) => PathChange::Migrated { from },
    }
}

/// How many recent nominations a session remembers. Chromium, controlling towards an
/// ICE-lite relay, marks every check of its selected pair USE-CANDIDATE (about one each 2.5 s),
/// so 32 cover the last minute and more: a capture replayed later than that still moves the
/// path (until the client's next check moves it back). Closing that for good needs the switch
/// to wait for authenticated SRTP on the new path; not done.
const REMEMBERED_NOMINATIONS: usize = 32;

/// The transaction IDs of a session's last nominations and the path each came on. Fixed size:
/// nothing allocates.
#[derive(Debug, Clone, Default)]
pub struct RecentNominations {
    seen: [Option<([u8; 12], MediaPath)>; REMEMBERED_NOMINATIONS],
    next: usize,
}

impl RecentNominations {
    /// A nomination with `transaction_id` came on `path`: whether it is a replay (the same ID
    /// came on another path before). Otherwise it is remembered.
    pub fn is_replay(&mut self, transaction_id: [u8; 12], path: MediaPath) -> bool {
        let mut known = false;
        for (id, seen_on) in self.seen.iter().flatten() {
            if *id == transaction_id {
                if *seen_on != path {
                    return true;
                }
                known = true;
            }
        }
        if !known {
            self.seen[self.next] = Some((transaction_id, path));
            self.next = (self.next + 1) % REMEMBERED_NOMINATIONS;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(port: u16) -> MediaPath {
        MediaPath::Udp(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn tcp(conn: usize, generation: u32) -> MediaPath {
        MediaPath::Tcp {
            conn,
            generation,
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        }
    }

    #[test]
    fn the_first_nomination_selects_the_path() {
        assert_eq!(on_valid_check(None, udp(5000), true), PathChange::Selected);
        assert_eq!(on_valid_check(None, tcp(1, 1), true), PathChange::Selected);
    }

    #[test]
    fn checks_without_use_candidate_never_move_the_session() {
        assert_eq!(
            on_valid_check(None, udp(5000), false),
            PathChange::Unchanged
        );
        assert_eq!(
            on_valid_check(Some(udp(5000)), tcp(1, 1), false),
            PathChange::Unchanged
        );
    }

    #[test]
    fn renominating_the_current_path_changes_nothing() {
        assert_eq!(
            on_valid_check(Some(udp(5000)), udp(5000), true),
            PathChange::Unchanged
        );
        assert_eq!(
            on_valid_check(Some(tcp(3, 7)), tcp(3, 7), true),
            PathChange::Unchanged
        );
    }

    #[test]
    fn a_nomination_on_another_pair_migrates() {
        // Another UDP 5-tuple (a NAT rebinding, another interface).
        assert_eq!(
            on_valid_check(Some(udp(5000)), udp(5001), true),
            PathChange::Migrated { from: udp(5000) }
        );
        // UDP blocked: the client's TCP connection takes over.
        assert_eq!(
            on_valid_check(Some(udp(5000)), tcp(2, 9), true),
            PathChange::Migrated { from: udp(5000) }
        );
        // Back to UDP, or to a new connection in the same slot (another generation).
        assert_eq!(
            on_valid_check(Some(tcp(2, 9)), udp(5000), true),
            PathChange::Migrated { from: tcp(2, 9) }
        );
        assert_eq!(
            on_valid_check(Some(tcp(2, 9)), tcp(2, 10), true),
            PathChange::Migrated { from: tcp(2, 9) }
        );
    }

    #[test]
    fn a_nomination_replayed_from_another_path_is_refused() {
        let mut recent = RecentNominations::default();
        let id = [7; 12];
        assert!(!recent.is_replay(id, udp(5000)));
        assert!(
            !recent.is_replay(id, udp(5000)),
            "the client's retransmission"
        );
        assert!(
            recent.is_replay(id, udp(6666)),
            "captured and sent from elsewhere"
        );
        assert!(recent.is_replay(id, tcp(1, 1)));
        // A fresh check (a new ID) on the new path is the client's own: it moves the session.
        assert!(!recent.is_replay([8; 12], udp(6666)));
        // Remembered through 30 newer nominations (a minute and more of a browser's checks)...
        for i in 0..30 {
            assert!(!recent.is_replay([100 + i; 12], udp(5000)));
        }
        assert!(recent.is_replay(id, udp(6666)));
        // ...and forgotten after more.
        for i in 30..REMEMBERED_NOMINATIONS as u8 {
            assert!(!recent.is_replay([100 + i; 12], udp(5000)));
        }
        assert!(!recent.is_replay(id, udp(6666)));
    }
}
