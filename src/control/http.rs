//! HTTP: WHIP (`POST /whip/{stream}`), WHEP (`POST /whep/{stream}`), `DELETE /session/{id}`,
//! `GET /api/streams`, `GET /metrics` and the demo page at `/`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use tower_http::cors::{Any, CorsLayer};

use super::{ApiError, Control, Created};

const INDEX_HTML: &str = include_str!("../web/index.html");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response()
    }
}

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/whip/{stream}", post(whip))
        .route("/whep/{stream}", post(whep))
        .route("/session/{id}", delete(delete_session))
        .route("/api/streams", get(streams))
        .route("/metrics", get(metrics))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any)
                .expose_headers(Any),
        )
        .with_state(control)
}

/// The offer from a request, or why it is not one.
fn offer_text<'b>(headers: &HeaderMap, body: &'b Bytes) -> Result<&'b str, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return Err(ApiError::new(
            415,
            format!("Content-Type must be application/sdp, not `{content_type}`"),
        ));
    }
    std::str::from_utf8(body).map_err(|_| ApiError::new(400, "the SDP offer is not UTF-8 text"))
}

fn created(created: Created) -> Response {
    let location = format!("/session/{}", created.session);
    let mut response = (StatusCode::CREATED, created.answer).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    response
}

async fn whip(
    State(control): State<Arc<Control>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    offer_text(&headers, &body)
        .and_then(|offer| control.publish(&stream, offer))
        .map(created)
        .inspect_err(|_| control.count_rejected_offer())
}

async fn whep(
    State(control): State<Arc<Control>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    offer_text(&headers, &body)
        .and_then(|offer| control.play(&stream, offer))
        .map(created)
        .inspect_err(|_| control.count_rejected_offer())
}

async fn delete_session(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::new(400, format!("`{id}` is not a session id")))?;
    if control.delete_session(id).await {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(404, format!("session {id} does not exist")))
    }
}

async fn streams(State(control): State<Arc<Control>>) -> Response {
    axum::Json(control.streams()).into_response()
}

async fn metrics(State(control): State<Arc<Control>>) -> Response {
    let mut out = String::new();
    let workers = control.workers();
    let Some(first) = workers.first() else {
        return (StatusCode::OK, out).into_response();
    };
    for (name, _) in first.stats.snapshot() {
        let (metric, kind) = if name == "sessions" || name == "tcp_connections" {
            (format!("corecast_worker_{name}"), "gauge")
        } else {
            (format!("corecast_{name}_total"), "counter")
        };
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for w in workers {
            let value = w
                .stats
                .snapshot()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| v);
            let _ = writeln!(out, "{metric}{{worker=\"{}\"}} {value}", w.index);
        }
    }
    let _ = writeln!(out, "# TYPE corecast_ring_occupancy gauge");
    for w in workers {
        let _ = writeln!(
            out,
            "corecast_ring_occupancy{{worker=\"{}\"}} {}",
            w.index,
            w.ring_occupancy()
        );
    }
    let (in_use, capacity) = control.ports_in_use();
    let counters = &control.counters;
    for (metric, kind, value) in [
        ("corecast_ports_in_use", "gauge", in_use as u64),
        ("corecast_ports_capacity", "gauge", capacity as u64),
        ("corecast_streams", "gauge", control.stream_count() as u64),
        (
            "corecast_sessions_created_total",
            "counter",
            counters.sessions_created.load(Ordering::Relaxed),
        ),
        (
            "corecast_sessions_ended_total",
            "counter",
            counters.sessions_ended.load(Ordering::Relaxed),
        ),
        (
            "corecast_offers_rejected_total",
            "counter",
            counters.offers_rejected.load(Ordering::Relaxed),
        ),
        (
            "corecast_ports_exhausted_total",
            "counter",
            counters.ports_exhausted.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# TYPE {metric} {kind}\n{metric} {value}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
