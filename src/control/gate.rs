//! The front door: every HTTP request and WebSocket command passes here before it reaches the
//! relay. It applies the tokens (`auth`), the per-token session cap
//! (`http.max_sessions_per_token`) and the admission webhook (`webhook`), and counts every
//! refusal. With no tokens configured every request goes through as before; the webhook, when
//! configured, applies either way.
//!
//! What each entry point needs:
//! - `POST /whip/{stream}`: `publish` on the stream; `POST /whep/{stream}`: `play` on it.
//! - `/session/{id}-{key}` and `/api/sessions/{id}-{key}` (DELETE, PATCH): the right the
//!   session was made with, on its stream, or `admin`; the handler checks the key (the URL is
//!   the client's capability: a token for the stream does not reach other clients' sessions).
//!   `/api/sessions/{id}` by id alone: `admin`.
//! - `/ws`: a token in the query (`?token=`) or in a `token` field of a message; each publish
//!   and play is checked as over HTTP.
//! - `/metrics`: open, or `admin` with `auth.metrics = "admin"`.
//! - Pages (other GETs outside `/api/` and `/rest-api/`): open, so that the page can ask for a
//!   token.
//! - Everything else (the stream API, republishing): `admin`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use super::auth::{AuthConfig, Authenticator, Grant, MetricsAccess, Refusal, Right, bearer};
use super::webhook::{HookEvent, Webhook};
use super::{ApiError, Control};
use crate::media::SessionId;
use crate::util::lock;

/// A refused request: the client's error and, for a 401, the challenge.
#[derive(Debug)]
pub struct Denied {
    pub error: ApiError,
    pub challenge: Option<String>,
}

impl From<ApiError> for Denied {
    fn from(error: ApiError) -> Self {
        Denied {
            error,
            challenge: None,
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if let Some(value) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

#[derive(Default)]
pub struct GateCounters {
    pub missing: AtomicU64,
    pub invalid: AtomicU64,
    pub forbidden: AtomicU64,
    pub refused_per_token: AtomicU64,
}

pub struct Gate {
    auth: Authenticator,
    webhook: Option<Arc<Webhook>>,
    metrics: MetricsAccess,
    max_per_token: usize,
    /// Sessions (and session requests under way) per token, by the token's digest.
    held: Mutex<HashMap<[u8; 32], usize>>,
    /// The relay's own token, for its cascade bridges that call it.
    internal: String,
    pub counters: GateCounters,
}

/// A session slot taken from a token's `http.max_sessions_per_token`; given back when dropped
/// (the request failed, or the session ended).
pub struct Reservation(Option<(Arc<Gate>, [u8; 32])>);

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((gate, key)) = self.0.take() {
            let mut held = lock(&gate.held);
            if let Some(n) = held.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&key);
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 32 random bytes, hex.
fn random_token() -> String {
    (0..32).fold(String::new(), |mut s, _| {
        let _ = write!(s, "{:02x}", rand::random::<u8>());
        s
    })
}

/// A session just created, as the webhook hears of it.
pub struct Created<'a> {
    pub right: Right,
    pub stream: &'a str,
    pub session: SessionId,
    pub peer: IpAddr,
    pub grant: Option<&'a Grant>,
}

/// What a request needs, by method and path.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Open,
    Create(Right, String),
    Session(Option<SessionId>),
    Metrics,
    Admin,
}

/// A path segment with `%XX` escapes decoded, as the router's `Path` sees it.
pub(crate) fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn need(method: &Method, path: &str) -> Need {
    if method == Method::OPTIONS {
        return Need::Open;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["whip", stream]) => Need::Create(Right::Publish, decode(stream)),
        (&Method::POST, ["whep", stream]) => Need::Create(Right::Play, decode(stream)),
        (_, ["session", segment]) => {
            Need::Session(super::resource::parse(segment).map(|(id, _)| id))
        }
        // The operator's API by id; a session's own client by its resource segment (with key).
        (_, ["api", "sessions", segment]) => match super::resource::parse(segment) {
            Some((_, None)) => Need::Admin,
            parsed => Need::Session(parsed.map(|(id, _)| id)),
        },
        (_, ["ws"]) => Need::Open,
        (_, ["metrics"]) => Need::Metrics,
        (_, ["api" | "rest-api", ..]) => Need::Admin,
        (&Method::GET | &Method::HEAD, _) => Need::Open,
        // Other methods on pages get their 404 or 405 from the router: nothing to protect.
        (_, ["whip" | "whep", _]) => Need::Open,
        _ => Need::Admin,
    }
}

/// The session's stream and the right it was made with (one lookup: a crowd's PATCHes and
/// DELETEs must not each walk every session).
fn session_right(control: &Control, id: SessionId) -> Option<(String, Right)> {
    control.session_stream_and_role(id).map(|(stream, role)| {
        let right = match role {
            super::Role::Publisher => Right::Publish,
            super::Role::Player => Right::Play,
        };
        (stream, right)
    })
}

impl Gate {
    /// The gate of `[auth]`, also accepting `cluster_token` (`cluster.token`) for pulls between
    /// the nodes of a cluster.
    pub fn new(
        config: &AuthConfig,
        max_per_token: usize,
        cluster_token: Option<&str>,
    ) -> Result<Arc<Gate>, String> {
        let internal = random_token();
        let webhook = config
            .webhook
            .as_ref()
            .map(Webhook::new)
            .transpose()?
            .map(Arc::new);
        Ok(Arc::new(Gate {
            auth: Authenticator::new(config, &internal)?.with_cluster_token(cluster_token),
            webhook,
            metrics: config.metrics,
            max_per_token,
            held: Mutex::new(HashMap::new()),
            internal,
            counters: GateCounters::default(),
        }))
    }

    /// Whether tokens are required.
    pub fn enabled(&self) -> bool {
        self.auth.enabled()
    }

    /// The relay's own token, for the cascade bridges that publish into it or play from it.
    pub fn internal_token(&self) -> &str {
        &self.internal
    }

    fn refused(&self, refusal: Refusal, peer: IpAddr) -> Denied {
        let counter = match refusal {
            Refusal::Missing => &self.counters.missing,
            Refusal::Invalid(_) => &self.counters.invalid,
            Refusal::Forbidden(_) => &self.counters.forbidden,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The refusal says why; the token itself is never logged. Debug: scanners would fill
        // the log, and the counters say how many.
        tracing::debug!(%peer, status = refusal.status(), "refused: {refusal}");
        Denied {
            error: ApiError::new(refusal.status(), refusal.to_string()),
            challenge: refusal.challenge(),
        }
    }

    /// The grant of `token`: `None` when no tokens are required (unless it is the relay's own,
    /// which the webhook is not asked about).
    pub fn authenticate(&self, token: Option<&str>, peer: IpAddr) -> Result<Option<Grant>, Denied> {
        if !self.enabled() {
            let own = self.auth.authenticate(token, unix_now()).ok();
            return Ok(own.filter(|grant| grant.internal));
        }
        self.auth
            .authenticate(token, unix_now())
            .map(Some)
            .map_err(|r| self.refused(r, peer))
    }

    /// Whether `grant` covers `right` (on `stream`); always when no tokens are required.
    pub fn authorize(
        &self,
        grant: Option<&Grant>,
        right: Right,
        stream: Option<&str>,
        peer: IpAddr,
    ) -> Result<(), Denied> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(grant) = grant else {
            return Err(self.refused(Refusal::Missing, peer));
        };
        grant
            .check(right, stream)
            .map_err(|r| self.refused(r, peer))
    }

    /// Checks a new session (`right` on `stream`) and takes a slot of the token's cap.
    pub fn open_session(
        self: &Arc<Self>,
        grant: Option<&Grant>,
        right: Right,
        stream: &str,
        peer: IpAddr,
    ) -> Result<Reservation, Denied> {
        self.authorize(grant, right, Some(stream), peer)?;
        let Some(grant) = grant.filter(|g| !g.internal && self.max_per_token > 0) else {
            return Ok(Reservation(None));
        };
        let mut held = lock(&self.held);
        let count = held.entry(grant.key).or_default();
        if *count >= self.max_per_token {
            self.counters
                .refused_per_token
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                429,
                format!(
                    "the token of {} already holds {count} sessions, the most \
                     http.max_sessions_per_token allows; end one first",
                    grant.holder
                ),
            )
            .into());
        }
        *count += 1;
        Ok(Reservation(Some((self.clone(), grant.key))))
    }

    /// A session was created: asks the webhook, and ends the session again when it refuses;
    /// otherwise keeps `reservation` until the session ends and then tells the webhook.
    pub async fn admit(
        &self,
        control: &Arc<Control>,
        reservation: Reservation,
        created: Created<'_>,
    ) -> Result<(), ApiError> {
        let Created {
            right,
            stream,
            session,
            peer,
            grant,
        } = created;
        let event = HookEvent {
            action: right.name(),
            stream: stream.to_string(),
            session,
            client: peer,
            claims: grant.map_or(Value::Null, |g| g.claims.clone()),
            reason: None,
        };
        // The relay's own bridges carry sessions whose clients were admitted already.
        let hook = self
            .webhook
            .as_ref()
            .filter(|_| !grant.is_some_and(|g| g.internal));
        if let Some(hook) = hook
            && let Some(refusal) = hook.ask(&event).await.refusal(right.name(), stream)
        {
            // The client has no answer yet, so no media has flowed: the session just goes.
            control.delete_session(session).await;
            return Err(refusal);
        }
        if hook.is_none() && reservation.0.is_none() {
            return Ok(());
        }
        let (events_tx, mut events) = mpsc::unbounded_channel();
        control.watch_session(session, events_tx);
        let hook = hook.cloned();
        tokio::spawn(async move {
            // Until the session's end; a closed channel means it is gone.
            let mut reason = None;
            while let Some(status) = events.recv().await {
                if matches!(status.status, "UNPUBLISHED" | "STOPPED" | "FAILED") {
                    reason = status.reason;
                    break;
                }
            }
            drop(reservation);
            if let Some(hook) = hook {
                let action = if right == Right::Publish {
                    "unpublish"
                } else {
                    "stop"
                };
                hook.notify(HookEvent {
                    action,
                    reason: Some(reason.unwrap_or_else(|| "the session ended".into())),
                    ..event
                });
            }
        });
        Ok(())
    }

    /// The gate's lines of `/metrics`.
    pub fn write_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE corecast_auth_refused_total counter");
        for (reason, value) in [
            ("missing", load(&c.missing)),
            ("invalid", load(&c.invalid)),
            ("forbidden", load(&c.forbidden)),
        ] {
            let _ = writeln!(
                out,
                "corecast_auth_refused_total{{reason=\"{reason}\"}} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# TYPE corecast_sessions_refused_per_token_total counter\n\
             corecast_sessions_refused_per_token_total {}",
            load(&c.refused_per_token)
        );
        if let Some(hook) = &self.webhook {
            let h = &hook.counters;
            let _ = writeln!(out, "# TYPE corecast_webhook_answers_total counter");
            for (verdict, value) in [
                ("allowed", load(&h.allowed)),
                ("denied", load(&h.denied)),
                ("failed", load(&h.failed)),
            ] {
                let _ = writeln!(
                    out,
                    "corecast_webhook_answers_total{{verdict=\"{verdict}\"}} {value}"
                );
            }
            let _ = writeln!(
                out,
                "# TYPE corecast_webhook_notifications_failed_total counter\n\
                 corecast_webhook_notifications_failed_total {}",
                load(&h.notifications_failed)
            );
        }
    }
}

/// The session id in a `201 Created` answer's `Location` (`/session/{id}-{key}`).
fn created_session(response: &Response) -> Option<SessionId> {
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    super::resource::parse(location.rsplit('/').next()?).map(|(id, _)| id)
}

/// Who sent a request that creates a session, as the handlers see it (a request extension the
/// gate adds): the relay itself or another node of its cluster is `internal`; `from_node` is
/// also set, where no tokens are required, by the `node` query parameter a cluster pull
/// carries (its WHEP is then never redirected nor pulled further).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    pub internal: bool,
    pub from_node: bool,
}

/// The middleware: every request through the gate.
pub async fn guard(
    State((gate, control)): State<(Arc<Gate>, Arc<Control>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = peer.ip();
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_string);
    let need = need(request.method(), request.uri().path());
    let checked = match &need {
        Need::Open => Ok(None),
        Need::Metrics if gate.metrics == MetricsAccess::Open => Ok(None),
        Need::Metrics | Need::Admin => gate.authenticate(token.as_deref(), peer).and_then(|g| {
            gate.authorize(g.as_ref(), Right::Admin, None, peer)
                .map(|()| g)
        }),
        Need::Session(id) => gate.authenticate(token.as_deref(), peer).and_then(|g| {
            let Some(grant) = &g else { return Ok(g) };
            if grant.rights.admin {
                return Ok(g);
            }
            // An unknown session goes on to its 404: a valid token may learn that much.
            match id.and_then(|id| session_right(&control, id)) {
                Some((stream, right)) => gate
                    .authorize(Some(grant), right, Some(&stream), peer)
                    .map(|()| g),
                None => Ok(g),
            }
        }),
        Need::Create(..) => gate.authenticate(token.as_deref(), peer),
    };
    let grant = match checked {
        Ok(grant) => grant,
        Err(denied) => return denied.into_response(),
    };
    let Need::Create(right, stream) = need else {
        return next.run(request).await;
    };
    let reservation = match gate.open_session(grant.as_ref(), right, &stream, peer) {
        Ok(r) => r,
        Err(denied) => return denied.into_response(),
    };
    let internal = grant.as_ref().is_some_and(|g| g.internal);
    let marked = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("node=")));
    request.extensions_mut().insert(Caller {
        internal,
        from_node: internal || (marked && !gate.enabled()),
    });
    let response = next.run(request).await;
    if response.status() != StatusCode::CREATED {
        return response;
    }
    let Some(session) = created_session(&response) else {
        return response;
    };
    let created = Created {
        right,
        stream: &stream,
        session,
        peer,
        grant: grant.as_ref(),
    };
    match gate.admit(&control, reservation, created).await {
        Ok(()) => response,
        Err(e) => {
            control.count_rejected_offer();
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_needs_what_the_table_says() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            need(&post, "/whip/cam"),
            Need::Create(Right::Publish, "cam".into())
        );
        assert_eq!(
            need(&post, "/whep/c%61m"),
            Need::Create(Right::Play, "cam".into())
        );
        assert_eq!(need(&Method::DELETE, "/session/7"), Need::Session(Some(7)));
        assert_eq!(
            need(&Method::DELETE, "/session/7-k3yK3yk3y"),
            Need::Session(Some(7))
        );
        assert_eq!(need(&Method::PATCH, "/session/7"), Need::Session(Some(7)));
        assert_eq!(need(&Method::DELETE, "/api/sessions/7"), Need::Admin);
        assert_eq!(
            need(&Method::PATCH, "/api/sessions/7-k3yK3yk3y"),
            Need::Session(Some(7))
        );
        assert_eq!(
            need(&Method::DELETE, "/api/sessions/x"),
            Need::Session(None)
        );
        assert_eq!(need(&get, "/api/streams"), Need::Admin);
        assert_eq!(need(&Method::DELETE, "/api/streams/cam"), Need::Admin);
        assert_eq!(need(&post, "/rest-api/pull/push"), Need::Admin);
        assert_eq!(need(&get, "/rest-api/pull/find_all"), Need::Admin);
        assert_eq!(need(&get, "/metrics"), Need::Metrics);
        assert_eq!(need(&get, "/ws"), Need::Open);
        assert_eq!(need(&get, "/"), Need::Open);
        assert_eq!(need(&get, "/dashboard"), Need::Open);
        assert_eq!(need(&Method::OPTIONS, "/whip/cam"), Need::Open);
        assert_eq!(need(&post, "/anything-else"), Need::Admin);
    }
}
