//! WebSocket signaling at `/ws`: JSON commands to publish, play and stop, and status events
//! for the connection and for each stream session (the statuses WCS users know).
//!
//! ```text
//! <- {"type":"session","status":"ESTABLISHED"}
//! -> {"type":"publish","id":1,"stream":"cam","sdp":"v=0..."}
//! <- {"type":"answer","id":1,"session":7,"stream":"cam","sdp":"v=0..."}
//! <- {"type":"status","session":7,"stream":"cam","status":"PUBLISHING"}
//! -> {"type":"play","id":2,"stream":"cam","sdp":"v=0..."}
//! -> {"type":"stop","id":3,"session":7}
//! <- {"type":"status","session":7,"stream":"cam","status":"UNPUBLISHED","reason":"stopped by the client"}
//! <- {"type":"error","id":4,"status":404,"message":"stream `x` is not being published"}
//! ```
//!
//! Closing the WebSocket ends every session it started.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{ApiError, Control, Ending};
use crate::worker::SessionId;

#[derive(Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Value,
    stream: Option<String>,
    sdp: Option<String>,
    session: Option<SessionId>,
}

pub async fn upgrade(ws: WebSocketUpgrade, State(control): State<Arc<Control>>) -> Response {
    ws.on_upgrade(move |socket| serve(socket, control))
}

fn error(id: &Value, status: u16, message: impl Into<String>) -> Value {
    json!({"type": "error", "id": id, "status": status, "message": message.into()})
}

async fn serve(mut socket: WebSocket, control: Arc<Control>) {
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
                Some(Ok(Message::Text(text))) => handle(&control, &text, &events_tx, &mut owned).await,
                Some(Ok(Message::Binary(_))) => error(&Value::Null, 400, "send JSON text messages"),
                Some(Ok(_)) => continue,
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
    events: &mpsc::UnboundedSender<super::StatusEvent>,
    owned: &mut Vec<SessionId>,
) -> Value {
    let request: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return error(&Value::Null, 400, format!("not a command: {e}")),
    };
    let id = &request.id;
    match request.kind.as_str() {
        kind @ ("publish" | "play") => {
            let (Some(stream), Some(sdp)) = (&request.stream, &request.sdp) else {
                return error(id, 400, format!("`{kind}` needs `stream` and `sdp`"));
            };
            let created = if kind == "publish" {
                control.publish(stream, sdp)
            } else {
                control.play_or_pull(stream, sdp).await
            };
            match created {
                Ok(created) => {
                    control.watch_session(created.session, events.clone());
                    owned.push(created.session);
                    json!({"type": "answer", "id": id, "session": created.session, "stream": stream, "sdp": created.answer})
                }
                Err(ApiError { status, message }) => {
                    control.count_rejected_offer();
                    error(id, status, message)
                }
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
            format!("unknown command `{other}`: use publish, play or stop"),
        ),
    }
}
