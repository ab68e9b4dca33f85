//! The control thread: signaling (WHIP, WHEP, the stream API), the session registry, the media
//! port range and DTLS handshakes. Nothing here runs per media packet.

pub mod auth;
pub mod cascade;
pub mod dashboard;
pub mod dtls;
pub mod gate;
pub mod http;
pub mod latency;
pub mod limits;
pub mod listener;
pub mod tls;
pub mod webhook;
pub mod ws;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use webrtc_dtls::crypto::Certificate;

use crate::config::Config;
use crate::media::StreamId;
use crate::ports::{PortAllocator, PortError};
use crate::sdp::{
    AnswerTransport, MediaKind, NegotiationError, Offer, PublishedTrack, format_fingerprint,
    negotiate_play, negotiate_publish, write_answer,
};
use crate::session::publisher_link::LinkSettings;
use crate::util::{lock, random_token};
use crate::worker::{Command, Event, NewRole, NewSession, SessionId, WorkerHandle};

/// DTLS records a session may have waiting for its handshake; the worker drops (and counts)
/// what does not fit. A handshake flight is a handful of records.
const DTLS_QUEUE: usize = 64;

/// How long DELETE waits for the worker to close the session's socket.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Publisher,
    Player,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// Answer sent, waiting for ICE.
    Connecting,
    /// ICE nominated a pair; DTLS under way.
    IceConnected,
    /// DTLS done, SRTP keys with the worker: media flows.
    Connected,
    Closing,
}

struct SessionEntry {
    stream: String,
    stream_id: StreamId,
    role: Role,
    worker: usize,
    port: u16,
    state: SessionState,
    remote: Option<SocketAddr>,
    /// The transport ICE nominated: `udp` or `tcp`.
    transport: Option<&'static str>,
    dtls_stop: Option<oneshot::Sender<()>>,
    dtls_task: Option<tokio::task::JoinHandle<()>>,
    closed_waiters: Vec<oneshot::Sender<()>>,
    /// Signaling connections (WebSocket) told of this session's status.
    watchers: Vec<mpsc::UnboundedSender<StatusEvent>>,
    /// The client it counts against (`http.max_sessions_per_ip`); `None` when exempt.
    client: Option<IpAddr>,
    /// When the answer went out, for the dashboard's ages.
    created: Instant,
    /// The transports the answer offered: (UDP, TCP).
    offered: (bool, bool),
}

/// Why a session ends: a normal end (client, publisher gone) or a failure (ICE, DTLS).
#[derive(Debug, Clone)]
pub enum Ending {
    Normal(String),
    Failure(String),
}

impl Ending {
    fn reason(&self) -> &str {
        match self {
            Ending::Normal(r) | Ending::Failure(r) => r,
        }
    }
}

/// A session's stream status, as WebSocket signaling reports it (the names WCS users know).
#[derive(Debug, Clone, Serialize)]
pub struct StatusEvent {
    pub session: SessionId,
    pub stream: String,
    /// PUBLISHING, PLAYING, UNPUBLISHED, STOPPED or FAILED.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

struct StreamEntry {
    id: StreamId,
    publisher: SessionId,
    worker: usize,
    tracks: Vec<PublishedTrack>,
    players: BTreeSet<SessionId>,
    /// Set when this relay pulls the stream from its origin: the bridge to stop once the last
    /// player leaves.
    pulled_by: Option<u64>,
}

#[derive(Default)]
struct Registry {
    streams: HashMap<String, StreamEntry>,
    sessions: HashMap<SessionId, SessionEntry>,
    next_session: SessionId,
    next_stream: StreamId,
    /// Sessions per client key (`limits::client_key`), for `http.max_sessions_per_ip`.
    sessions_per_ip: HashMap<IpAddr, usize>,
}

/// An error for an HTTP client: status and a message that says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<NegotiationError> for ApiError {
    fn from(e: NegotiationError) -> Self {
        match e {
            NegotiationError::Malformed(_) => ApiError::new(400, e.to_string()),
            NegotiationError::NoCommonCodec(_) => ApiError::new(406, e.to_string()),
        }
    }
}

#[derive(Default)]
pub struct ControlCounters {
    pub sessions_created: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub offers_rejected: AtomicU64,
    pub ports_exhausted: AtomicU64,
    pub sessions_refused_per_ip: AtomicU64,
}

pub struct Control {
    config: Config,
    workers: Vec<WorkerHandle>,
    certificate: Certificate,
    fingerprint: String,
    registry: Mutex<Registry>,
    ports: Mutex<PortAllocator>,
    pub counters: ControlCounters,
    pub cascade: cascade::Cascade,
}

/// What `Control::session_facts` says of one session.
pub struct SessionFacts {
    pub age: Duration,
    pub offers_udp: bool,
    pub offers_tcp: bool,
}

/// A created session, for the HTTP response.
pub struct Created {
    pub session: SessionId,
    pub answer: String,
}

#[derive(Serialize)]
pub struct SessionView {
    pub session: SessionId,
    pub state: SessionState,
    pub worker: usize,
    pub port: u16,
    pub remote: Option<SocketAddr>,
    /// `udp` or `tcp`, once ICE has nominated a path.
    pub transport: Option<&'static str>,
}

#[derive(Serialize)]
pub struct TrackView {
    pub kind: MediaKind,
    pub codec: String,
}

#[derive(Serialize)]
pub struct StreamView {
    pub stream: String,
    pub publisher: SessionView,
    pub tracks: Vec<TrackView>,
    pub players: Vec<SessionView>,
}

/// Tells a session's watchers its new status; watchers that went away are dropped.
fn notify(entry: &mut SessionEntry, id: SessionId, status: &'static str, reason: Option<String>) {
    let event = StatusEvent {
        session: id,
        stream: entry.stream.clone(),
        status,
        reason,
    };
    entry.watchers.retain(|w| w.send(event.clone()).is_ok());
}

/// What the worker feeds back to a publisher and repairs, from what its answer negotiated.
fn link_settings(tracks: &[PublishedTrack], max_publish_kbps: u32) -> LinkSettings {
    let video = tracks.iter().find(|t| t.kind == MediaKind::Video);
    LinkSettings {
        // BUNDLE gives the extension one id for the whole transport.
        transport_cc_id: tracks.iter().find_map(|t| t.transport_cc_id),
        nack: video.is_some_and(|v| v.codec.feedback.iter().any(|f| f == "nack")),
        rtx: video.and_then(|v| Some((v.rtx_payload_type?, v.codec.payload_type))),
        max_kbps: max_publish_kbps,
    }
}

/// Stream names appear in URLs and logs: keep them plain.
fn check_stream_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(ApiError::new(
            400,
            format!(
                "stream name `{name}` is not allowed: use 1-128 letters, digits, '-', '_' or '.'"
            ),
        ));
    }
    // `.` and `..` are path segments to every URL resolver and file system on the way.
    if name.bytes().all(|b| b == b'.') {
        return Err(ApiError::new(
            400,
            format!(
                "stream name `{name}` is not allowed: a name needs a letter, digit, '-' or '_'"
            ),
        ));
    }
    Ok(())
}

impl Control {
    pub fn new(config: Config, workers: Vec<WorkerHandle>) -> anyhow::Result<Arc<Control>> {
        let certificate = Certificate::generate_self_signed(vec!["corecast".to_string()])
            .map_err(|e| anyhow::anyhow!("generating the DTLS certificate failed: {e}"))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| anyhow::anyhow!("generated certificate is empty"))?;
        let fingerprint =
            format_fingerprint(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref());
        let ports = PortAllocator::new(config.media.ports, workers.len());
        let cascade = cascade::Cascade::new(&config, certificate.clone());
        Ok(Arc::new(Control {
            cascade,
            config,
            workers,
            certificate,
            fingerprint,
            registry: Mutex::new(Registry::default()),
            ports: Mutex::new(ports),
            counters: ControlCounters::default(),
        }))
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    pub fn ports_in_use(&self) -> (usize, usize) {
        let ports = lock(&self.ports);
        (ports.in_use(), ports.capacity())
    }

    pub fn stream_count(&self) -> usize {
        lock(&self.registry).streams.len()
    }

    /// Every session's age at `now` and the transports its answer offered, for the dashboard.
    /// Which transport ICE chose is the worker's to know; when only one was offered, it is that.
    pub fn session_facts(&self, now: Instant) -> HashMap<SessionId, SessionFacts> {
        lock(&self.registry)
            .sessions
            .iter()
            .map(|(&id, s)| {
                let facts = SessionFacts {
                    age: now.saturating_duration_since(s.created),
                    offers_udp: s.offered.0,
                    offers_tcp: s.offered.1,
                };
                (id, facts)
            })
            .collect()
    }

    /// Creates a publishing session (WHIP) for the client at `client`.
    pub fn publish(
        self: &Arc<Self>,
        stream: &str,
        offer_text: &str,
        client: IpAddr,
    ) -> Result<Created, ApiError> {
        self.create(stream, offer_text, Role::Publisher, client)
    }

    /// Creates a playing session (WHEP) for the client at `client`.
    pub fn play(
        self: &Arc<Self>,
        stream: &str,
        offer_text: &str,
        client: IpAddr,
    ) -> Result<Created, ApiError> {
        self.create(stream, offer_text, Role::Player, client)
    }

    /// The key `client`'s sessions count under, `None` when no limit applies to it; refuses
    /// (and counts) a client that holds `http.max_sessions_per_ip` sessions already.
    fn check_sessions_per_ip(&self, client: IpAddr) -> Result<Option<IpAddr>, ApiError> {
        let http = &self.config.http;
        if http.max_sessions_per_ip == 0 || http.limit_exempt.contains(client) {
            return Ok(None);
        }
        let key = limits::client_key(client);
        let held = lock(&self.registry)
            .sessions_per_ip
            .get(&key)
            .copied()
            .unwrap_or(0);
        if held >= http.max_sessions_per_ip {
            self.counters
                .sessions_refused_per_ip
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                429,
                format!(
                    "{client} already holds {held} sessions, the most http.max_sessions_per_ip \
                     allows; end one first"
                ),
            ));
        }
        Ok(Some(key))
    }

    pub fn count_rejected_offer(&self) {
        self.counters
            .offers_rejected
            .fetch_add(1, Ordering::Relaxed);
    }

    fn create(
        self: &Arc<Self>,
        stream: &str,
        offer_text: &str,
        role: Role,
        client: IpAddr,
    ) -> Result<Created, ApiError> {
        check_stream_name(stream)?;
        // Before the offer is parsed, so a client at its limit costs next to nothing. `create`
        // runs whole on the control thread: nothing adds a session between here and the insert.
        let counted_as = self.check_sessions_per_ip(client)?;
        let offer = Offer::parse(offer_text)?;
        let mut registry = lock(&self.registry);
        let local_ufrag = random_token(8);
        let local_pwd = random_token(24);
        // What the worker will need, and the answer's sections, by role.
        let (new_role, sections, stream_id, publisher_worker, tracks) = match role {
            Role::Publisher => {
                if registry.streams.contains_key(stream) {
                    return Err(ApiError::new(
                        409,
                        format!("stream `{stream}` already has a publisher"),
                    ));
                }
                let (tracks, sections) = negotiate_publish(&offer)?;
                let payload_types = tracks
                    .iter()
                    .map(|t| (t.codec.payload_type, t.kind))
                    .collect();
                let link = link_settings(&tracks, self.config.media.max_publish_kbps);
                registry.next_stream += 1;
                (
                    NewRole::Publisher {
                        payload_types,
                        link,
                    },
                    sections,
                    registry.next_stream,
                    None,
                    Some(tracks),
                )
            }
            Role::Player => {
                let Some(entry) = registry.streams.get(stream) else {
                    return Err(ApiError::new(
                        404,
                        format!("stream `{stream}` is not being published"),
                    ));
                };
                let (played, sections) =
                    negotiate_play(&offer, &entry.tracks, stream, |_| rand::random())?;
                (
                    NewRole::Player { tracks: played },
                    sections,
                    entry.id,
                    Some(entry.worker),
                    None,
                )
            }
        };
        let media = &self.config.media;
        let preference = self.workers_by_load(&registry);
        let bound =
            lock(&self.ports).allocate(preference, |port| crate::net::bind_media(media, port));
        let (port, worker, sockets) = match bound {
            Ok(Ok(bound)) => bound,
            Ok(Err(e)) => {
                return Err(ApiError::new(
                    500,
                    format!("binding a media port failed: {e}"),
                ));
            }
            Err(e @ PortError::Exhausted { .. }) => {
                self.counters
                    .ports_exhausted
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    503,
                    format!("{e}; try again later or widen media.ports"),
                ));
            }
        };
        let publisher_worker = publisher_worker.unwrap_or(worker);
        let offered = (sockets.udp.is_some(), sockets.tcp.is_some());
        let answer = write_answer(
            &offer,
            &sections,
            &AnswerTransport {
                ice_ufrag: &local_ufrag,
                ice_pwd: &local_pwd,
                fingerprint: &self.fingerprint,
                ip: media.announced_ip,
                port,
                udp: sockets.udp.is_some(),
                tcp: sockets.tcp.is_some(),
            },
        );
        registry.next_session += 1;
        let id = registry.next_session;
        match tracks {
            Some(tracks) => {
                registry.streams.insert(
                    stream.to_string(),
                    StreamEntry {
                        id: stream_id,
                        publisher: id,
                        worker,
                        tracks,
                        players: BTreeSet::new(),
                        pulled_by: None,
                    },
                );
            }
            None => {
                if let Some(entry) = registry.streams.get_mut(stream) {
                    entry.players.insert(id);
                }
                if worker != publisher_worker {
                    self.workers[publisher_worker].send(Command::RemoteInterest {
                        stream: stream_id,
                        worker,
                        delta: 1,
                    });
                }
            }
        }
        // The worker sends the session's DTLS records straight into this bounded queue.
        let (records_tx, records_rx) = mpsc::channel(DTLS_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let local = SocketAddr::new(media.bind_ip, port);
        self.workers[worker].send(Command::AddSession(Box::new(NewSession {
            id,
            udp: sockets.udp,
            tcp: sockets.tcp,
            stream: stream_id,
            publisher_worker,
            local_ufrag,
            local_pwd,
            remote_ufrag: offer.ice_ufrag.clone(),
            role: new_role,
            dtls_records: records_tx,
        })));
        let dtls_task = tokio::spawn(self.clone().run_dtls(
            dtls::DtlsParams {
                session: id,
                worker: self.workers[worker].clone(),
                certificate: self.certificate.clone(),
                expected_fingerprint: offer.fingerprint.clone(),
                local,
            },
            records_rx,
            stop_rx,
        ));
        registry.sessions.insert(
            id,
            SessionEntry {
                stream: stream.to_string(),
                stream_id,
                role,
                worker,
                port,
                state: SessionState::Connecting,
                remote: None,
                transport: None,
                dtls_stop: Some(stop_tx),
                dtls_task: Some(dtls_task),
                closed_waiters: Vec::new(),
                watchers: Vec::new(),
                client: counted_as,
                created: Instant::now(),
                offered,
            },
        );
        if let Some(key) = counted_as {
            *registry.sessions_per_ip.entry(key).or_default() += 1;
        }
        self.counters
            .sessions_created
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(session = id, stream, ?role, worker, port, "session created");
        Ok(Created {
            session: id,
            answer,
        })
    }

    /// Workers, least loaded first: a new session goes to the first with a free port.
    fn workers_by_load(&self, registry: &Registry) -> Vec<usize> {
        let mut load = vec![0usize; self.workers.len()];
        for s in registry.sessions.values() {
            load[s.worker] += 1;
        }
        let mut order: Vec<usize> = (0..load.len()).collect();
        order.sort_by_key(|&w| load[w]);
        order
    }

    async fn run_dtls(
        self: Arc<Self>,
        params: dtls::DtlsParams,
        records: mpsc::Receiver<Vec<u8>>,
        stop: oneshot::Receiver<()>,
    ) {
        let id = params.session;
        let control = self.clone();
        let outcome = dtls::run(params, records, stop, move || {
            if let Some(s) = lock(&control.registry).sessions.get_mut(&id)
                && s.state != SessionState::Closing
            {
                s.state = SessionState::Connected;
                let status = match s.role {
                    Role::Publisher => "PUBLISHING",
                    Role::Player => "PLAYING",
                };
                notify(s, id, status, None);
            }
            tracing::info!(session = id, "DTLS connected, media flowing");
        })
        .await;
        match outcome {
            dtls::DtlsOutcome::Stopped => {}
            dtls::DtlsOutcome::Failed(reason) => {
                tokio::spawn(self.end_session(id, Ending::Failure(reason)));
            }
            dtls::DtlsOutcome::PeerClosed => {
                tokio::spawn(self.end_session(id, Ending::Normal("the peer closed DTLS".into())));
            }
        }
    }

    /// Ends a session: DTLS close_notify to the peer, the worker closes the socket, the port
    /// comes back when the worker says the socket is closed. Ending a publisher ends its stream
    /// and its players.
    pub fn end_session(
        self: Arc<Self>,
        id: SessionId,
        ending: Ending,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        // Boxed: ending a publisher spawns the ends of its players, a recursive future.
        Box::pin(async move {
            let (stop, task, worker, players, pull_to_stop) = {
                let mut guard = lock(&self.registry);
                let registry = &mut *guard;
                let Some(entry) = registry.sessions.get_mut(&id) else {
                    return;
                };
                if entry.state == SessionState::Closing {
                    return;
                }
                entry.state = SessionState::Closing;
                let status = match (&ending, entry.role) {
                    (Ending::Failure(_), _) => "FAILED",
                    (_, Role::Publisher) => "UNPUBLISHED",
                    (_, Role::Player) => "STOPPED",
                };
                notify(entry, id, status, Some(ending.reason().to_string()));
                let mut players = Vec::new();
                let mut pull_to_stop = None;
                match entry.role {
                    Role::Publisher => {
                        if registry
                            .streams
                            .get(&entry.stream)
                            .is_some_and(|s| s.publisher == id)
                        {
                            let stream = registry
                                .streams
                                .remove(&entry.stream)
                                .expect("checked above");
                            players.extend(stream.players);
                        }
                    }
                    Role::Player => {
                        if let Some(stream) = registry.streams.get_mut(&entry.stream)
                            && stream.id == entry.stream_id
                        {
                            stream.players.remove(&id);
                            if stream.players.is_empty() {
                                pull_to_stop = stream.pulled_by;
                            }
                            if stream.worker != entry.worker {
                                self.workers[stream.worker].send(Command::RemoteInterest {
                                    stream: entry.stream_id,
                                    worker: entry.worker,
                                    delta: -1,
                                });
                            }
                        }
                    }
                }
                (
                    entry.dtls_stop.take(),
                    entry.dtls_task.take(),
                    entry.worker,
                    players,
                    pull_to_stop,
                )
            };
            tracing::info!(session = id, reason = ending.reason(), "session ending");
            if let Some(bridge) = pull_to_stop {
                // The last player of a pulled stream left: stop pulling it from the origin.
                self.cascade.terminate(bridge);
            }
            self.counters.sessions_ended.fetch_add(1, Ordering::Relaxed);
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
            if let Some(mut task) = task {
                // Give the close_notify a moment to leave before the socket goes.
                if tokio::time::timeout(Duration::from_millis(300), &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
            }
            self.workers[worker].send(Command::RemoveSession { session: id });
            for player in players {
                tokio::spawn(
                    self.clone()
                        .end_session(player, Ending::Normal("the publisher left".into())),
                );
            }
        })
    }

    /// Plays `stream`; when it is not here and an origin is configured, pulls it from the
    /// origin first (`cascade.origin`).
    pub async fn play_or_pull(
        self: &Arc<Self>,
        stream: &str,
        offer_text: &str,
        client: IpAddr,
    ) -> Result<Created, ApiError> {
        match self.play(stream, offer_text, client) {
            Err(e) if e.status == 404 && self.cascade.has_origin() => {
                self.cascade.pull(self, stream).await.map_err(|reason| {
                    ApiError::new(502, format!("stream `{stream}` is not here, and pulling it from the origin failed: {reason}"))
                })?;
                self.play(stream, offer_text, client)
            }
            other => other,
        }
    }

    /// Sends `watcher` the status events of session `id` from now on.
    pub fn watch_session(&self, id: SessionId, watcher: mpsc::UnboundedSender<StatusEvent>) {
        if let Some(entry) = lock(&self.registry).sessions.get_mut(&id) {
            entry.watchers.push(watcher);
        }
    }

    /// Whether a stream is published here.
    pub fn has_stream(&self, name: &str) -> bool {
        lock(&self.registry).streams.contains_key(name)
    }

    /// Ends a stream: its publisher, and with it its players. `false` if there is none.
    pub async fn terminate_stream(self: &Arc<Self>, name: &str) -> bool {
        let publisher = lock(&self.registry).streams.get(name).map(|s| s.publisher);
        match publisher {
            Some(id) => self.delete_session(id).await,
            None => false,
        }
    }

    /// Marks a stream as pulled by `bridge`, so the pull stops when its last player leaves.
    pub fn mark_pulled(&self, name: &str, bridge: u64) {
        if let Some(stream) = lock(&self.registry).streams.get_mut(name) {
            stream.pulled_by = Some(bridge);
        }
    }

    /// Ends a session and waits until its port is free again. `false` if there is no such session.
    pub async fn delete_session(self: &Arc<Self>, id: SessionId) -> bool {
        let (waiter_tx, waiter_rx) = oneshot::channel();
        {
            let mut registry = lock(&self.registry);
            let Some(entry) = registry.sessions.get_mut(&id) else {
                return false;
            };
            entry.closed_waiters.push(waiter_tx);
        }
        self.clone()
            .end_session(id, Ending::Normal("deleted by the client".into()))
            .await;
        let _ = tokio::time::timeout(CLOSE_WAIT, waiter_rx).await;
        true
    }

    /// Handles the workers' events until their channel closes.
    pub async fn dispatch_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::DtlsFlood { session } => {
                    tracing::warn!(session, "ending a session that floods its DTLS queue");
                    let reason =
                        "DTLS records arrived faster than the handshake takes them (a flood)";
                    tokio::spawn(
                        self.clone()
                            .end_session(session, Ending::Failure(reason.into())),
                    );
                }
                Event::IceConnected {
                    session,
                    remote,
                    tcp,
                } => {
                    if let Some(entry) = lock(&self.registry).sessions.get_mut(&session) {
                        entry.remote = Some(remote);
                        entry.transport = Some(if tcp { "tcp" } else { "udp" });
                        if entry.state == SessionState::Connecting {
                            entry.state = SessionState::IceConnected;
                        }
                    }
                }
                Event::IceTimeout { session } => {
                    let reason = format!(
                        "ICE timeout: no valid connectivity check for {} s",
                        self.config.media.ice_timeout.as_secs()
                    );
                    tokio::spawn(self.clone().end_session(session, Ending::Failure(reason)));
                }
                Event::Closed { session } => {
                    let entry = {
                        let mut registry = lock(&self.registry);
                        let entry = registry.sessions.remove(&session);
                        if let Some(key) = entry.as_ref().and_then(|e| e.client)
                            && let Some(held) = registry.sessions_per_ip.get_mut(&key)
                        {
                            *held -= 1;
                            if *held == 0 {
                                registry.sessions_per_ip.remove(&key);
                            }
                        }
                        entry
                    };
                    if let Some(entry) = entry {
                        lock(&self.ports).release(entry.port);
                        for waiter in entry.closed_waiters {
                            let _ = waiter.send(());
                        }
                        tracing::debug!(session, port = entry.port, "session closed, port free");
                    }
                }
            }
        }
    }

    /// What `GET /api/streams` shows.
    pub fn streams(&self) -> Vec<StreamView> {
        let registry = lock(&self.registry);
        let view = |id: SessionId| {
            registry.sessions.get(&id).map(|s| SessionView {
                session: id,
                state: s.state,
                worker: s.worker,
                port: s.port,
                remote: s.remote,
                transport: s.transport,
            })
        };
        let mut streams: Vec<StreamView> = registry
            .streams
            .iter()
            .filter_map(|(name, stream)| {
                Some(StreamView {
                    stream: name.clone(),
                    publisher: view(stream.publisher)?,
                    tracks: stream
                        .tracks
                        .iter()
                        .map(|t| TrackView {
                            kind: t.kind,
                            codec: format!("{}/{}", t.codec.name, t.codec.clock_rate),
                        })
                        .collect(),
                    players: stream.players.iter().filter_map(|&p| view(p)).collect(),
                })
            })
            .collect();
        streams.sort_by(|a, b| a.stream.cmp(&b.stream));
        streams
    }
}
