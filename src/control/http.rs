//! HTTP: WHIP (`POST /whip/{stream}`), WHEP (`POST /whep/{stream}`), `DELETE /session/{id}-{key}`,
//! `PATCH /session/{id}-{key}` (trickle ICE and ICE restart, `trickle`),
//! `GET /api/streams`, `GET /api/cluster`, `GET /metrics`, `GET /api/relay-latency`, the demo page at `/` and the
//! dashboard (`dashboard::routes`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use tower_http::cors::{Any, CorsLayer};

use super::gate::{Caller, Gate};
use super::layers::LayerRequest;
use super::limits::HttpLimits;
use super::{ApiError, Control, Created, IcePatched, resource};
use crate::media::SessionId;

const INDEX_HTML: &str = include_str!("../web/index.html");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        if let Some(location) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The routes. Requests carry the client's address (`ConnectInfo<SocketAddr>`), as
/// `listener::serve` provides it.
pub fn router(control: Arc<Control>, limits: Arc<HttpLimits>, gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/whip/{stream}", post(whip))
        .route("/whep/{stream}", post(whep))
        .route("/session/{id}", delete(delete_session).patch(patch_ice))
        .route(
            "/api/sessions/{id}",
            delete(api_delete_session).patch(patch_session),
        )
        .route("/api/streams", get(streams))
        .route("/api/cluster", get(cluster))
        .route("/api/streams/{name}", get(stream).delete(terminate_stream))
        .route("/rest-api/pull/push", post(pull_push))
        .route(
            "/rest-api/pull/find_all",
            post(pull_find_all).get(pull_find_all),
        )
        .route("/rest-api/pull/terminate", post(pull_terminate))
        .route("/ws", get(super::ws::upgrade))
        .route("/metrics", get(metrics))
        .route("/api/relay-latency", get(relay_latency))
        .merge(super::dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Tokens and the webhook (`gate`), inside the rate limit: guessing tokens costs requests.
        .layer(axum::middleware::from_fn_with_state(
            (gate.clone(), control.clone()),
            super::gate::guard,
        ))
        .layer(Extension(gate))
        .layer(axum::middleware::from_fn_with_state(
            limits.clone(),
            rate_limit,
        ))
        .layer(Extension(limits))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any)
                .expose_headers(Any),
        )
        .with_state(control)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        404,
        format!("nothing here at {}: see / for the API", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(405, format!("{method} is not allowed on {}", uri.path()))
}

/// `http.rate_limit` for every request from a client that is not exempt.
async fn rate_limit(
    State(limits): State<Arc<HttpLimits>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match limits.check_rate(peer.ip()) {
        Ok(()) => next.run(request).await,
        Err(retry) => too_many_requests(&limits, peer, retry),
    }
}

/// 429 with `Retry-After` (whole seconds, at least 1).
fn too_many_requests(
    limits: &HttpLimits,
    peer: SocketAddr,
    retry: std::time::Duration,
) -> Response {
    let seconds = super::limits::retry_after_seconds(retry);
    let mut response = ApiError::new(
        429,
        format!(
            "{} sends more than {} requests per second (http.rate_limit); retry in {seconds} s",
            peer.ip(),
            limits.rate_limit
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The kernel's UDP error counters (`/proc/net/snmp`): datagrams dropped for full receive or
/// send buffers, and receive errors. Host-wide, not only corecast's sockets.
fn kernel_udp_errors() -> Vec<(&'static str, u64)> {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return Vec::new();
    };
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Vec::new();
    };
    let pairs: Vec<(&str, &str)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .collect();
    [
        ("RcvbufErrors", "rcvbuf_errors"),
        ("SndbufErrors", "sndbuf_errors"),
        ("InErrors", "in_errors"),
    ]
    .into_iter()
    .filter_map(|(key, name)| {
        let value = pairs.iter().find(|(k, _)| *k == key)?.1.parse().ok()?;
        Some((name, value))
    })
    .collect()
}

/// The offer from a request, or why it is not one.
fn offer_text<'b>(headers: &HeaderMap, body: &'b Bytes) -> Result<&'b str, ApiError> {
    require_media_type(headers, "application/sdp", "")?;
    std::str::from_utf8(body).map_err(|_| ApiError::new(400, "the SDP offer is not UTF-8 text"))
}

fn created(created: Created) -> Response {
    let location = created.resource;
    let mut response = (StatusCode::CREATED, created.answer).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&created.etag) {
        headers.insert(header::ETAG, v);
    }
    response
}

/// `415` unless the request's Content-Type is `expected` (`why`: what the reader should know
/// of it). Parameters aside: `application/sdp; charset=utf-8` is SDP too.
fn require_media_type(headers: &HeaderMap, expected: &str, why: &str) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    Err(ApiError::new(
        415,
        format!("Content-Type must be {expected}{why}, not `{content_type}`"),
    ))
}

/// The media type of trickle ICE fragments (RFC 8840).
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// `PATCH /session/{id}` with an `application/trickle-ice-sdpfrag` (RFC 9725 §4.3): trickled
/// candidates (`204`), or an ICE restart (`200`, the relay's fragment and a new `ETag`).
async fn patch_ice(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_media_type(&headers, SDPFRAG, " (RFC 8840)")?;
    let id = session_resource(&control, &id, 404)?;
    let if_match = match headers.get(header::IF_MATCH) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::new(400, "If-Match is not ASCII text"))?,
        ),
        None => None,
    };
    match control.patch_ice(id, if_match, &body)? {
        IcePatched::Trickled { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        IcePatched::Restarted { fragment, etag } => {
            let mut response = (StatusCode::OK, fragment).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                headers.insert(header::ETAG, v);
            }
            Ok(response)
        }
    }
}

async fn whip(
    State(control): State<Arc<Control>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(stream): Path<String>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let internal = caller.is_some_and(|Extension(c)| c.internal);
    let result = match offer_text(&headers, &body) {
        Ok(offer) => {
            control
                .publish_anywhere(&stream, offer, peer.ip(), internal)
                .await
        }
        Err(e) => Err(e),
    };
    result
        .map(created)
        .inspect_err(|_| control.count_rejected_offer())
}

/// What a WHEP URL's query may say.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WhepQuery {
    layer: Option<String>,
    rid: Option<String>,
    max_kbps: Option<u64>,
    /// The pulling node, in the cluster (the gate reads it into the `Caller`).
    #[serde(rename = "node")]
    _node: Option<String>,
}

async fn whep(
    State(control): State<Arc<Control>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(stream): Path<String>,
    uri: Uri,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // `?layer=h|m|l|auto`, `?rid=NAME`, `?max_kbps=N`: a simulcast player's encoding;
    // `?node=ID`: a cluster node pulling the stream (read by the gate).
    let query: WhepQuery =
        serde_urlencoded::from_str(uri.query().unwrap_or_default()).map_err(|e| {
            ApiError::new(
                400,
                format!("the query {e}: it takes layer, rid, max_kbps and node"),
            )
        })?;
    let layers = LayerRequest {
        layer: query.layer,
        rid: query.rid,
        max_kbps: query.max_kbps,
    };
    let from_node = caller.is_some_and(|Extension(c)| c.from_node);
    let result = match offer_text(&headers, &body) {
        Ok(offer) => match control.check_layer_request(&stream, &layers) {
            Ok(()) => control.join(&stream, offer, peer.ip(), from_node).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let result = match result {
        Ok(created) => control.apply_join_layers(created, &layers).await,
        Err(e) => Err(e),
    };
    // A redirect is no rejected offer: the player is sent where it will be taken, with the
    // encoding it asked for (the query goes along).
    result.map(created).map_err(|mut e| {
        match (&mut e.location, uri.query()) {
            (None, _) => control.count_rejected_offer(),
            (Some(location), Some(query)) if !query.is_empty() => {
                location.push('?');
                location.push_str(query);
            }
            (Some(_), _) => {}
        }
        e
    })
}

/// `GET /api/cluster`: the nodes with their load, and which node holds each stream.
async fn cluster(State(control): State<Arc<Control>>) -> Result<Response, ApiError> {
    Ok(axum::Json(control.cluster_view().await?).into_response())
}

/// `PATCH /api/sessions/{id}` with JSON `{"layer": "h"|"m"|"l"|"auto", "rid": "...",
/// "max_kbps": N}`: a simulcast player's encoding, pinned or capped.
async fn patch_session(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = api_session(&control, &id)?;
    require_media_type(&headers, "application/json", " (the session's changes)")?;
    let request: LayerRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(400, format!("the JSON body: {e}")))?;
    let preference = control.set_layer_preference(id, &request)?;
    Ok(axum::Json(serde_json::json!({
        "session": id,
        "max_kbps": preference.max_bps.map(|b| b / 1000),
        "pinned": preference.pinned.map(|p| format!("{p:?}").to_lowercase()),
    }))
    .into_response())
}

/// The session a resource path's segment names, when it carries that session's key: the
/// `not_a_session` status for a segment that is no session's at all, `404` for a session that
/// does not exist or a key that is not its own (the same answer: a key cannot be guessed by
/// trying).
fn session_resource(
    control: &Control,
    segment: &str,
    not_a_session: u16,
) -> Result<SessionId, ApiError> {
    let Some((id, key)) = resource::parse(segment) else {
        let what = match not_a_session {
            404 => format!("session `{segment}` does not exist"),
            _ => format!("`{segment}` is not a session"),
        };
        return Err(ApiError::new(
            not_a_session,
            format!("{what}: a session's resource is /session/ID-KEY, the 201's Location"),
        ));
    };
    if !control.resource_key_matches(id, key) {
        return Err(ApiError::new(
            404,
            format!(
                "session {id} does not exist, or the path lacks its key (use the 201's Location)"
            ),
        ));
    }
    Ok(id)
}

async fn delete_session(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = session_resource(&control, &id, 400)?;
    if control.delete_session(id).await {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(404, format!("session {id} does not exist")))
    }
}

/// The session `/api/sessions/{segment}` names: a bare id (the operator's API: under `[auth]`
/// the gate asked for `admin`), or the session's resource segment with its key (its own
/// client, with the right it was made with).
fn api_session(control: &Control, segment: &str) -> Result<SessionId, ApiError> {
    match resource::parse(segment) {
        Some((id, None)) => Ok(id),
        Some((_, Some(_))) => session_resource(control, segment, 400),
        None => Err(ApiError::new(
            400,
            format!("`{segment}` is not a session id"),
        )),
    }
}

/// `DELETE /api/sessions/{id}`: as `DELETE` on the session's resource.
async fn api_delete_session(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = api_session(&control, &id)?;
    if control.delete_session(id).await {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(404, format!("session {id} does not exist")))
    }
}

async fn streams(State(control): State<Arc<Control>>) -> Response {
    axum::Json(control.streams()).into_response()
}

async fn stream(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    control
        .streams()
        .into_iter()
        .find(|s| s.stream == name)
        .map(|s| axum::Json(s).into_response())
        .ok_or_else(|| ApiError::new(404, format!("stream `{name}` does not exist")))
}

async fn terminate_stream(
    State(control): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if control.terminate_stream(&name).await {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(
            404,
            format!("stream `{name}` does not exist"),
        ))
    }
}

/// The JSON body of the republishing calls (WCS's names).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PullRequest {
    uri: Option<String>,
    local_stream_name: Option<String>,
    remote_stream_name: Option<String>,
    local_media_session_id: Option<String>,
}

fn pull_request(body: &Bytes) -> Result<PullRequest, ApiError> {
    if body.is_empty() {
        return Ok(PullRequest::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("the body is not the expected JSON: {e}")))
}

async fn pull_push(State(control): State<Arc<Control>>, body: Bytes) -> Result<Response, ApiError> {
    let request = pull_request(&body)?;
    let (Some(uri), Some(local)) = (request.uri, request.local_stream_name) else {
        return Err(ApiError::new(
            400,
            "`uri` and `localStreamName` are required",
        ));
    };
    let remote = request.remote_stream_name.unwrap_or_else(|| local.clone());
    let view = control
        .cascade
        .push(control.as_ref(), &uri, &local, &remote)?;
    Ok(axum::Json(view).into_response())
}

async fn pull_find_all(State(control): State<Arc<Control>>) -> Response {
    axum::Json(control.cascade.find_all()).into_response()
}

async fn pull_terminate(
    State(control): State<Arc<Control>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request = pull_request(&body)?;
    let id = match request
        .local_media_session_id
        .as_deref()
        .map(str::parse::<u64>)
    {
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return Err(ApiError::new(
                400,
                "`localMediaSessionId` is not a republishing id",
            ));
        }
        None => None,
    };
    if id.is_none()
        && request.uri.is_none()
        && request.local_stream_name.is_none()
        && request.remote_stream_name.is_none()
    {
        return Err(ApiError::new(
            400,
            "name what to terminate: `localMediaSessionId`, or `uri` and stream names",
        ));
    }
    let stopped = control.cascade.terminate_matching(
        id,
        request.uri.as_deref(),
        request.local_stream_name.as_deref(),
        request.remote_stream_name.as_deref(),
    );
    if stopped == 0 {
        Err(ApiError::new(404, "no republished stream matches"))
    } else {
        Ok(StatusCode::OK)
    }
}

/// Connections on the HTTP listener by what their first bytes turned out to be
/// (`media.tcp_on_http`; without it every connection counts as `http` or `tls` unread).
fn write_sniffed_metrics(limits: &HttpLimits, out: &mut String) {
    let c = &limits.counters.sniffed;
    let _ = writeln!(out, "# TYPE corecast_http_port_connections_total counter");
    for (kind, counter) in [
        ("http", &c.http),
        ("tls", &c.tls),
        ("ice_tcp", &c.ice_tcp),
        ("closed_unknown", &c.closed_unknown),
        ("closed_timeout", &c.closed_timeout),
    ] {
        let _ = writeln!(
            out,
            "corecast_http_port_connections_total{{kind=\"{kind}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
}

/// The HTTP limits' counters (see the README's "Limits and hardening").
fn http_limit_metrics(limits: &HttpLimits) -> [(&'static str, &'static str, u64); 7] {
    let c = &limits.counters;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    [
        (
            "corecast_http_connections",
            "gauge",
            load(&c.connections_open),
        ),
        (
            "corecast_http_connections_refused_total",
            "counter",
            load(&c.connections_refused),
        ),
        (
            "corecast_http_header_timeouts_total",
            "counter",
            load(&c.header_timeouts),
        ),
        (
            "corecast_http_idle_timeouts_total",
            "counter",
            load(&c.idle_timeouts),
        ),
        (
            "corecast_http_rate_limited_total",
            "counter",
            load(&c.rate_limited),
        ),
        (
            "corecast_ws_messages_too_large_total",
            "counter",
            load(&c.ws_messages_too_large),
        ),
        (
            "corecast_tls_handshake_failures_total",
            "counter",
            load(&c.tls_handshake_failures),
        ),
    ]
}

async fn relay_latency(State(control): State<Arc<Control>>) -> Response {
    axum::Json(super::latency::report(control.workers())).into_response()
}

/// Per stream, what its publisher sent and its round trip (from its repairs); per player, what
/// its receiver reports say (RTT, loss).
/// One series per stream and per session: for an operator's few streams, not for dashboards
/// over thousands of viewers (use `/api/streams` there).
fn write_stream_metrics(control: &Control, out: &mut String) {
    let streams = control.streams();
    let _ = writeln!(out, "# TYPE corecast_stream_received_bytes_total counter");
    for s in &streams {
        let _ = writeln!(
            out,
            "corecast_stream_received_bytes_total{{stream=\"{}\"}} {}",
            s.stream, s.bytes_in
        );
    }
    let _ = writeln!(out, "# TYPE corecast_publisher_rtt_seconds gauge");
    for s in &streams {
        if let Some(ms) = s.publisher.rtt_ms {
            let _ = writeln!(
                out,
                "corecast_publisher_rtt_seconds{{stream=\"{}\",session=\"{}\"}} {}",
                s.stream,
                s.publisher.session,
                ms / 1000.0
            );
        }
    }
    let _ = writeln!(out, "# TYPE corecast_player_rtt_seconds gauge");
    let _ = writeln!(out, "# TYPE corecast_player_loss_ratio gauge");
    for s in &streams {
        for p in &s.players {
            let labels = format!("stream=\"{}\",session=\"{}\"", s.stream, p.session);
            if let Some(ms) = p.rtt_ms {
                let _ = writeln!(
                    out,
                    "corecast_player_rtt_seconds{{{labels}}} {}",
                    ms / 1000.0
                );
            }
            if let Some(loss) = p.loss {
                let _ = writeln!(out, "corecast_player_loss_ratio{{{labels}}} {loss}");
            }
        }
    }
    // Simulcast: each player's path estimate and the encoding it gets.
    let _ = writeln!(out, "# TYPE corecast_player_estimate_bps gauge");
    let _ = writeln!(out, "# TYPE corecast_player_layer_info gauge");
    for s in &streams {
        for p in &s.players {
            let labels = format!("stream=\"{}\",session=\"{}\"", s.stream, p.session);
            if let Some(kbps) = p.estimate_kbps {
                let _ = writeln!(
                    out,
                    "corecast_player_estimate_bps{{{labels}}} {}",
                    kbps * 1000
                );
            }
            if let Some(rid) = &p.layer {
                let _ = writeln!(
                    out,
                    "corecast_player_layer_info{{{labels},rid=\"{rid}\"}} 1"
                );
            }
        }
    }
}

async fn metrics(
    State(control): State<Arc<Control>>,
    Extension(limits): Extension<Arc<HttpLimits>>,
    Extension(gate): Extension<Arc<Gate>>,
) -> Response {
    let mut out = String::new();
    let workers = control.workers();
    let Some(first) = workers.first() else {
        return (StatusCode::OK, out).into_response();
    };
    for (name, _) in first.stats.snapshot() {
        let (metric, kind) = if matches!(name, "sessions" | "players" | "tcp_connections") {
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
    super::latency::write_prometheus(workers, &mut out);
    write_stream_metrics(&control, &mut out);
    for (name, value) in kernel_udp_errors() {
        let _ = writeln!(
            out,
            "# TYPE corecast_kernel_udp_{name}_total counter\ncorecast_kernel_udp_{name}_total {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP corecast_worker_backend What runs the worker's I/O (workers.backend), 1 for the one in use.\n# TYPE corecast_worker_backend gauge"
    );
    for w in workers {
        let _ = writeln!(
            out,
            "corecast_worker_backend{{worker=\"{}\",backend=\"{}\"}} 1",
            w.index, w.backend
        );
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
        (
            "corecast_sessions_refused_per_ip_total",
            "counter",
            counters.sessions_refused_per_ip.load(Ordering::Relaxed),
        ),
    ]
    .into_iter()
    .chain(http_limit_metrics(&limits))
    {
        let _ = writeln!(out, "# TYPE {metric} {kind}\n{metric} {value}");
    }
    write_sniffed_metrics(&limits, &mut out);
    gate.write_metrics(&mut out);
    control.joins.write_metrics(&mut out);
    if let Some(cluster) = &control.cluster {
        cluster.write_metrics(&mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
