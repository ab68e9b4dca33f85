//! WebSocket signaling at `/ws`: JSON commands to publish, play and stop, and status events
//! for the connection and for each stream session (the statuses WCS users know).
//!
//! ```text
//! <- {"type":"session","status":"ESTABLISHED"}
//! -> {"type":"publish","id":1,"stream":"cam","sdp":"v=0..."}
//! <- {"type":"answer","id":1,"session":7,"stream":"cam","sdp":"v=0..."}
//! <- {"type":"status","session":7,"stream":"cam","status":"PUBLISHING"}
//! -> {"type":"play","id":2,"stream":"cam","sdp":"v=0..."}
//! -> {"type":"layer","id":5,"session":8,"layer":"l","max_kbps":800}
//! <- {"type":"layer","id":5,"session":8}
//! -> {"type":"ice","id":6,"session":7,"etag":"\"k3...\"","sdp":"a=ice-ufrag:...\r\na=ice-pwd:..."}
//! <- {"type":"ice","id":6,"session":7,"restarted":true,"etag":"\"q9...\"","sdp":"a=ice-lite\r\n..."}
//! -> {"type":"stop","id":3,"session":7}
//! <- {"type":"status","session":7,"stream":"cam","status":"UNPUBLISHED","reason":"stopped by the client"}
//! <- {"type":"error","id":4,"status":404,"message":"stream `x` is not being published"}
//! ```
//!
//! `ice` is the WHIP/WHEP PATCH (`control::trickle`): `sdp` carries a trickle-ice-sdpfrag,
//! `etag` the `If-Match` (the answer's `etag`, or the last restart's); a trickle answers
//! `restarted: false`, an ICE restart (new client credentials) the relay's fragment and the
//! new `etag`. Errors carry the PATCH's statuses (400, 404, 412, 428).
//!
//! With tokens configured (`[auth]`), the connection carries one: `/ws?token=...`, or a
//! `token` field in a message (the first, or `{"type":"auth","token":"..."}`); each publish and
//! play is checked against it as WHIP and WHEP are (401, 403 as `status` in the error).
//!
//! On a full node of a cluster, `play` answers
//! `{"type":"error","id":2,"status":307,"message":"...","location":"http://node-b:8080/whep/cam"}`:
//! the client plays from that node instead (over WHEP, or over that node's `/ws`).
//!
//! Closing the WebSocket ends every session it started. The HTTP limits hold here too: every
//! message counts against `http.rate_limit` (an error with `retry_after` when over it), every
//! session against `http.max_sessions_per_ip`, and a message over `limits::WS_MAX_MESSAGE`
//! closes the connection with code 1009 (message too big).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::auth::Right;
use super::gate::Gate;
use super::layers::LayerRequest;
use super::limits::{HttpLimits, WS_MAX_MESSAGE, retry_after_seconds};
use super::{ApiError, Control, Ending, IcePatched};
use crate::media::SessionId;

#[derive(Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Value,
    stream: Option<String>,
    sdp: Option<String>,
    session: Option<SessionId>,
    token: Option<String>,
    /// `ice` command: the entity tag its fragment (in `sdp`) applies to (`If-Match`).
    etag: Option<String>,
    /// `layer` command (a simulcast player's encoding), and `play` may carry them too.
    layer: Option<String>,
    rid: Option<String>,
    max_kbps: Option<u64>,
}

/// What a connection knows of its client.
struct Client {
    peer: IpAddr,
    gate: Arc<Gate>,
    /// The token, once one was given: checked again at each publish and play, so that a JWT
    /// that expires stops opening sessions.
    token: Option<String>,
}

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(control): State<Arc<Control>>,
    Extension(limits): Extension<Arc<HttpLimits>>,
    Extension(gate): Extension<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
) -> Response {
    // A browser's WebSocket cannot send headers: the token comes in the query, or later.
    let token = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(super::gate::decode)
    });
    if let Some(token) = &token
        && let Err(denied) = gate.authenticate(Some(token), peer.ip())
    {
        return denied.into_response();
    }
    let client = Client {
        peer: peer.ip(),
        gate,
        token,
    };
    ws.max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .on_upgrade(move |socket| serve(socket, control, limits, client))
}

/// Whether a read failed because the message was over [`WS_MAX_MESSAGE`].
fn is_too_large(error: &axum::Error) -> bool {
    let cause = std::error::Error::source(error);
    matches!(
        cause.and_then(|c| c.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}

fn error(id: &Value, status: u16, message: impl Into<String>) -> Value {
    json!({"type": "error", "id": id, "status": status, "message": message.into()})
}

async fn serve(
    mut socket: WebSocket,
    control: Arc<Control>,
    limits: Arc<HttpLimits>,
    mut client: Client,
) {
    let peer = client.peer;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut owned: Vec<SessionId> = Vec::new();
    let hello = json!({"type": "session", "status": "ESTABLISHED"});
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let reply = tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    match (limits.check_rate(peer), message) {
                        (Err(wait), _) => {
                            let seconds = retry_after_seconds(wait);
                            json!({"type": "error", "id": Value::Null, "status": 429, "retry_after": seconds,
                                   "message": format!("more than {} messages per second (http.rate_limit); retry in {seconds} s", limits.rate_limit)})
                        }
                        (Ok(()), Message::Text(text)) => handle(&control, &text, &mut client, &events_tx, &mut owned).await,
                        (Ok(()), _) => error(&Value::Null, 400, "send JSON text messages"),
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) if is_too_large(&e) => {
                    limits.counters.ws_messages_too_large.fetch_add(1, Ordering::Relaxed);
                    let close = CloseFrame {
                        code: close_code::SIZE,
                        reason: format!("message over {WS_MAX_MESSAGE} bytes").into(),
                    };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    break;
                }
                _ => break,
            },
            Some(event) = events.recv() => {
                let mut v = serde_json::to_value(&event).unwrap_or(Value::Null);
                v["type"] = json!("status");
                v
            }
        };
        if socket
            .send(Message::Text(reply.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    for id in owned {
        tokio::spawn(
            control
                .clone()
                .end_session(id, Ending::Normal("the WebSocket closed".into())),
        );
    }
}

async fn handle(
    control: &Arc<Control>,
    text: &str,
    client: &mut Client,
    events: &mpsc::UnboundedSender<super::StatusEvent>,
    owned: &mut Vec<SessionId>,
) -> Value {
    let peer = client.peer;
    let request: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return error(&Value::Null, 400, format!("not a command: {e}")),
    };
    let id = &request.id;
    if let Some(token) = &request.token {
        if let Err(denied) = client.gate.authenticate(Some(token), peer) {
            return error(id, denied.error.status, denied.error.message);
        }
        client.token = Some(token.clone());
    }
    match request.kind.as_str() {
        "auth" if request.token.is_some() => json!({"type": "authenticated", "id": id}),
        "auth" => error(id, 400, "`auth` needs `token`"),
        kind @ ("publish" | "play") => {
            let (Some(stream), Some(sdp)) = (&request.stream, &request.sdp) else {
                return error(id, 400, format!("`{kind}` needs `stream` and `sdp`"));
            };
            let right = if kind == "publish" {
                Right::Publish
            } else {
                Right::Play
            };
            let gate = client.gate.clone();
            let grant = match gate.authenticate(client.token.as_deref(), peer) {
                Ok(grant) => grant,
                Err(denied) => return error(id, denied.error.status, denied.error.message),
            };
            let reservation = match gate.open_session(grant.as_ref(), right, stream, peer) {
                Ok(reservation) => reservation,
                Err(denied) => return error(id, denied.error.status, denied.error.message),
            };
            let layers = layer_request(&request);
            let created = if kind == "publish" {
                control.publish_anywhere(stream, sdp, peer, false).await
            } else {
                match control.check_layer_request(stream, &layers) {
                    Ok(()) => control.join(stream, sdp, peer, false).await,
                    Err(e) => Err(e),
                }
            };
            let created = match created {
                Ok(created) if kind == "play" => control.apply_join_layers(created, &layers).await,
                other => other,
            };
            let created = match created {
                Ok(created) => {
                    let new = super::gate::Created {
                        right,
                        stream,
                        session: created.session,
                        peer,
                        grant: grant.as_ref(),
                    };
                    gate.admit(control, reservation, new)
                        .await
                        .map(|()| created)
                }
                Err(e) => Err(e),
            };
            match created {
                Ok(created) => {
                    control.watch_session(created.session, events.clone());
                    owned.push(created.session);
                    json!({"type": "answer", "id": id, "session": created.session, "stream": stream, "sdp": created.answer, "etag": created.etag})
                }
                Err(ApiError {
                    status,
                    message,
                    location: Some(location),
                    ..
                }) => {
                    // A full cluster node: the client plays from the node named instead.
                    json!({"type": "error", "id": id, "status": status, "message": message,
                           "location": location})
                }
                Err(ApiError {
                    status,
                    message,
                    retry_after,
                    ..
                }) => {
                    control.count_rejected_offer();
                    let mut e = error(id, status, message);
                    if let Some(seconds) = retry_after {
                        // Admission shed the join (a 503): when to try again.
                        e["retry_after"] = json!(seconds);
                    }
                    e
                }
            }
        }
        "layer" => {
            let Some(session) = request.session else {
                return error(id, 400, "`layer` needs `session`");
            };
            if !owned.contains(&session) {
                return error(
                    id,
                    404,
                    format!("session {session} was not started on this connection"),
                );
            }
            match control.set_layer_preference(session, &layer_request(&request)) {
                Ok(_) => json!({"type": "layer", "id": id, "session": session}),
                Err(ApiError {
                    status, message, ..
                }) => error(id, status, message),
            }
        }
        "ice" => {
            let (Some(session), Some(fragment)) = (request.session, &request.sdp) else {
                return error(
                    id,
                    400,
                    "`ice` needs `session` and `sdp` (a trickle-ice-sdpfrag)",
                );
            };
            if !owned.contains(&session) {
                return error(
                    id,
                    404,
                    format!("session {session} was not started on this connection"),
                );
            }
            match control.patch_ice(session, request.etag.as_deref(), fragment.as_bytes()) {
                Ok(IcePatched::Trickled { .. }) => {
                    json!({"type": "ice", "id": id, "session": session, "restarted": false})
                }
                Ok(IcePatched::Restarted { fragment, etag }) => {
                    json!({"type": "ice", "id": id, "session": session, "restarted": true,
                           "sdp": fragment, "etag": etag})
                }
                Err(ApiError {
                    status, message, ..
                }) => error(id, status, message),
            }
        }
        "stop" => {
            let Some(session) = request.session else {
                return error(id, 400, "`stop` needs `session`");
            };
            if !owned.contains(&session) {
                return error(
                    id,
                    404,
                    format!("session {session} was not started on this connection"),
                );
            }
            owned.retain(|&s| s != session);
            control
                .clone()
                .end_session(session, Ending::Normal("stopped by the client".into()))
                .await;
            json!({"type": "stopped", "id": id, "session": session})
        }
        other => error(
            id,
            400,
            format!("unknown command `{other}`: use publish, play, layer, ice, stop or auth"),
        ),
    }
}

fn layer_request(request: &Request) -> LayerRequest {
    LayerRequest {
        layer: request.layer.clone(),
        rid: request.rid.clone(),
        max_kbps: request.max_kbps,
    }
}
