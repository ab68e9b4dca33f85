//! A player's say in its simulcast encoding: pinned (`layer=h|m|l` by rank, or `rid=NAME`)
//! or capped (`max_kbps=N`), from the WHEP query, the WebSocket `layer` command or
//! `PATCH /api/sessions/{id}`; checked here against the stream, then handed to the player's
//! worker.

use serde::Deserialize;

use super::registry::Role;
use std::sync::Arc;

use super::{ApiError, Control, Created, Ending};
use crate::media::SessionId;
use crate::sdp::MediaKind;
use crate::session::simulcast::{LayerPreference, Pin};
use crate::util::lock;
use crate::worker::Command;

/// What a client may send: each field optional; `layer` and `rid` exclude each other.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRequest {
    /// `h`, `m` or `l`: the highest, middle or lowest encoding sent, by bitrate; `auto` for
    /// the estimate's choice.
    pub layer: Option<String>,
    /// An encoding by its RID in the publisher's offer.
    pub rid: Option<String>,
    /// No encoding above this bitrate (kbit/s); 0 for no cap.
    pub max_kbps: Option<u64>,
}

impl LayerRequest {
    /// Whether the request asks anything.
    pub fn is_empty(&self) -> bool {
        self.layer.is_none() && self.rid.is_none() && self.max_kbps.is_none()
    }

    /// The preference against a stream sending `rids`, or a 400 that says what is wrong.
    fn preference(&self, rids: &[String]) -> Result<LayerPreference, ApiError> {
        let pinned = match (self.layer.as_deref(), self.rid.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new(400, "give `layer` or `rid`, not both"));
            }
            (Some("h"), None) => Some(Pin::Highest),
            (Some("m"), None) => Some(Pin::Middle),
            (Some("l"), None) => Some(Pin::Lowest),
            (Some("auto"), None) | (None, None) => None,
            (Some(other), None) => {
                return Err(ApiError::new(
                    400,
                    format!("layer `{other}` is not one of h, m, l or auto"),
                ));
            }
            (None, Some(rid)) => match rids.iter().position(|r| r == rid) {
                Some(index) => Some(Pin::Layer(index as u8)),
                None => {
                    return Err(ApiError::new(
                        400,
                        format!(
                            "the stream has no encoding with RID `{rid}`; it sends {}",
                            rids.join(", ")
                        ),
                    ));
                }
            },
        };
        let max_bps = match self.max_kbps {
            None | Some(0) => None,
            Some(kbps) => Some(kbps.saturating_mul(1000)),
        };
        Ok(LayerPreference { pinned, max_bps })
    }
}

impl Control {
    /// Checks `request` against `stream` before a player joins it (a 400 costs no session).
    pub fn check_layer_request(
        &self,
        stream: &str,
        request: &LayerRequest,
    ) -> Result<(), ApiError> {
        if request.is_empty() {
            return Ok(());
        }
        let registry = lock(&self.registry);
        // A stream not here is refused by the play itself (404) or pulled.
        let Some(entry) = registry.streams.get(stream) else {
            return Ok(());
        };
        let rids = simulcast_rids(&entry.tracks);
        request.preference(&rids).map(|_| ())
    }

    /// A joining player's layer request, once its session exists: applied on a simulcast
    /// stream; on a stream of one encoding there is nothing to choose, and the player plays it
    /// as any other. Should applying fail, the session ends before the error goes back, so a
    /// refused join holds no port and no place in handshake.
    pub async fn apply_join_layers(
        self: &Arc<Self>,
        created: Created,
        request: &LayerRequest,
    ) -> Result<Created, ApiError> {
        if request.is_empty() || !self.plays_simulcast(created.session) {
            return Ok(created);
        }
        match self.set_layer_preference(created.session, request) {
            Ok(_) => Ok(created),
            Err(e) => {
                self.clone()
                    .end_session(
                        created.session,
                        Ending::Normal(format!("its layer request was refused: {}", e.message)),
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// Whether player `session`'s stream has simulcast encodings to choose from.
    fn plays_simulcast(&self, session: SessionId) -> bool {
        let registry = lock(&self.registry);
        registry
            .sessions
            .get(&session)
            .and_then(|entry| registry.streams.get(&entry.stream))
            .is_some_and(|stream| !simulcast_rids(&stream.tracks).is_empty())
    }

    /// Pins or caps player `session`'s encoding.
    pub fn set_layer_preference(
        &self,
        session: SessionId,
        request: &LayerRequest,
    ) -> Result<LayerPreference, ApiError> {
        let registry = lock(&self.registry);
        let Some(entry) = registry.sessions.get(&session) else {
            return Err(ApiError::new(
                404,
                format!("session {session} does not exist"),
            ));
        };
        if entry.role != Role::Player {
            return Err(ApiError::new(
                400,
                format!("session {session} publishes; only a player chooses an encoding"),
            ));
        }
        let rids = registry
            .streams
            .get(&entry.stream)
            .map(|s| simulcast_rids(&s.tracks))
            .unwrap_or_default();
        if rids.is_empty() {
            return Err(ApiError::new(
                400,
                format!(
                    "stream `{}` is not simulcast: it has one encoding to play",
                    entry.stream
                ),
            ));
        }
        let preference = request.preference(&rids)?;
        self.workers[entry.worker].send(Command::SetLayerPreference {
            session,
            preference,
        });
        Ok(preference)
    }
}

/// The RIDs of a stream's simulcast video; empty without simulcast.
fn simulcast_rids(tracks: &[crate::sdp::PublishedTrack]) -> Vec<String> {
    tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video && t.is_simulcast())
        .map(|t| t.rids.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(layer: Option<&str>, rid: Option<&str>, max_kbps: Option<u64>) -> LayerRequest {
        LayerRequest {
            layer: layer.map(str::to_string),
            rid: rid.map(str::to_string),
            max_kbps,
        }
    }

    #[test]
    fn requests_become_preferences_or_say_what_is_wrong() {
        let rids = ["q".to_string(), "h".to_string(), "f".to_string()];
        let pref = |r: LayerRequest| r.preference(&rids);
        assert_eq!(
            pref(request(Some("h"), None, None)).unwrap().pinned,
            Some(Pin::Highest)
        );
        assert_eq!(
            pref(request(None, Some("h"), None)).unwrap().pinned,
            Some(Pin::Layer(1)),
            "by RID, h is the offer's second"
        );
        let capped = pref(request(None, None, Some(600))).unwrap();
        assert_eq!((capped.pinned, capped.max_bps), (None, Some(600_000)));
        assert_eq!(
            pref(request(Some("auto"), None, Some(0))).unwrap(),
            LayerPreference::default()
        );
        for (bad, needle) in [
            (request(Some("x"), None, None), "h, m, l"),
            (request(None, Some("z"), None), "q, h, f"),
            (request(Some("h"), Some("q"), None), "not both"),
        ] {
            let err = pref(bad).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }
}
