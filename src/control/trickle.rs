//! Trickle ICE and ICE restart on a session (RFC 9725 §4.3): what a PATCH of an
//! `application/trickle-ice-sdpfrag` on `/session/{id}-{key}` (or the WebSocket `ice` command)
//! does. The relay is ICE-lite: it never checks the client's candidates, so a trickle is
//! read, checked and acknowledged. A fragment with new client credentials is an ICE restart:
//! the relay picks new credentials of its own, tells the session's worker
//! (`Command::RestartIce`) and answers with them and its candidates; the session keeps its
//! DTLS and SRTP context, its stream and its players, and its media path until the client
//! nominates a pair of the new ICE session (which may be another one: a migration).

use super::registry::SessionState;
use super::{ApiError, Control, etag};
use crate::media::SessionId;
use crate::sdp::{host_candidates, parse_fragment, write_restart_fragment};
use crate::util::{lock, random_token};
use crate::worker::Command;

/// What a PATCH did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcePatched {
    /// Candidates (or their end) taken: `204 No Content`.
    Trickled { candidates: usize },
    /// An ICE restart: `200 OK` with the relay's fragment and the new entity tag.
    Restarted { fragment: String, etag: String },
}

impl Control {
    /// Applies a trickle ICE fragment (`body`) to session `id`, with the request's `If-Match`.
    pub fn patch_ice(
        &self,
        id: SessionId,
        if_match: Option<&str>,
        body: &[u8],
    ) -> Result<IcePatched, ApiError> {
        let mut guard = lock(&self.registry);
        let registry = &mut *guard;
        let Some(entry) = registry
            .sessions
            .get_mut(&id)
            .filter(|s| s.state != SessionState::Closing)
        else {
            return Err(ApiError::new(404, format!("session {id} does not exist")));
        };
        let fragment = parse_fragment(body)
            .map_err(|e| ApiError::new(400, format!("malformed trickle-ice-sdpfrag: {e}")))?;
        let ice = &mut entry.ice;
        let restart = match fragment.credentials {
            Some((ufrag, _)) if ufrag != ice.remote_ufrag => true,
            Some((_, pwd)) if pwd != ice.remote_pwd => {
                return Err(ApiError::new(
                    400,
                    "a=ice-pwd changed but a=ice-ufrag did not: an ICE restart changes both \
                     (RFC 8839 §4.4.1.1)",
                ));
            }
            _ => false,
        };
        etag::check_if_match(if_match, &ice.etag, restart)
            .map_err(|e| ApiError::new(e.status(), e.to_string()))?;
        let Some((remote_ufrag, remote_pwd)) = fragment.credentials.filter(|_| restart) else {
            return Ok(IcePatched::Trickled {
                candidates: fragment.candidates.len(),
            });
        };
        // The one place signaling changes a session's credentials; the worker's
        // `Table::restart_ice` is the other half.
        let previous_ufrag = std::mem::replace(&mut ice.local_ufrag, random_token(8));
        if registry.by_ufrag.get(&previous_ufrag) == Some(&id) {
            registry.by_ufrag.remove(&previous_ufrag);
        }
        registry.by_ufrag.insert(ice.local_ufrag.clone(), id);
        ice.local_pwd = random_token(24);
        ice.remote_ufrag = remote_ufrag.to_string();
        ice.remote_pwd = remote_pwd.to_string();
        ice.etag = etag::new_etag();
        entry.ice_restarts += 1;
        self.workers[entry.worker].send(Command::RestartIce {
            session: id,
            local_ufrag: ice.local_ufrag.clone(),
            local_pwd: ice.local_pwd.clone(),
            remote_ufrag: ice.remote_ufrag.clone(),
        });
        if self.config.media.mux_port.is_some() {
            // Every worker's shared socket may receive the first check with the new ufrag.
            for handle in &self.workers {
                handle.send(Command::MuxRenew {
                    ufrag: ice.local_ufrag.clone(),
                    previous: previous_ufrag.clone(),
                    owner: entry.worker,
                    session: id,
                });
            }
        }
        let (udp, tcp) = entry.offered;
        let candidates = host_candidates(
            &self.config.media.announced_ip,
            entry.port,
            self.tcp_candidate_port(entry.port),
            udp,
            tcp,
        );
        let (media, mid) = &ice.bundle;
        let fragment =
            write_restart_fragment(&ice.local_ufrag, &ice.local_pwd, (media, mid), &candidates);
        tracing::info!(
            session = id,
            "ICE restart: new credentials sent to the worker"
        );
        Ok(IcePatched::Restarted {
            fragment,
            etag: ice.etag.clone(),
        })
    }
}
