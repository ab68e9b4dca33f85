//! The control thread: signaling (WHIP, WHEP, the stream API), the session registry, the media
//! port range and DTLS handshakes. Nothing here runs per media packet.

pub mod admission;
pub mod auth;
pub mod cascade;
pub mod dashboard;
pub mod dtls;
pub mod etag;
pub mod first_bytes;
pub mod gate;
pub mod http;
pub mod latency;
pub mod layers;
pub mod limits;
pub mod listener;
pub mod sniff;
pub mod tls;
pub mod webhook;
pub mod ws;

mod clustered;
mod errors;
mod ice_door;
mod joins;
mod registry;
pub mod resource;
mod sessions;
mod trickle;

pub use clustered::{ClusterView, StreamHolder};
pub use errors::ApiError;
pub use joins::Joins;
pub use registry::{Ending, Role, SessionState, SessionView, StatusEvent, StreamView, TrackView};
pub use sessions::Created;
pub use trickle::IcePatched;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use webrtc_dtls::crypto::Certificate;

use crate::config::Config;
use crate::media::SessionId;
use crate::ports::PortAllocator;
use crate::sdp::format_fingerprint;
use crate::util::lock;
use crate::worker::{Command, Event, WorkerHandle};
use registry::{Registry, notify};

/// How long DELETE waits for the worker to close the session's socket.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

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
    certificate: Arc<Certificate>,
    /// The certificate's SHA-256, computed once: every answer carries it.
    fingerprint: String,
    /// Where DTLS handshakes run (`admission.handshake_threads`).
    handshakes: dtls::HandshakePool,
    /// The control thread's runtime: what a handshake's end starts runs here, not in the pool.
    control_runtime: tokio::runtime::Handle,
    /// Admission of player joins (`[admission]`) and the handshake times.
    pub joins: Arc<Joins>,
    registry: Mutex<Registry>,
    ports: Mutex<PortAllocator>,
    pub counters: ControlCounters,
    pub cascade: cascade::Cascade,
    /// This relay's cluster (`cluster.redis`), if it is a node of one.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The HTTP(S) listener's port, for `media.tcp_on_http` candidates (`ice_door`).
    http_port: std::sync::atomic::AtomicU16,
}

/// What `Control::session_facts` says of one session.
pub struct SessionFacts {
    pub age: Duration,
    pub offers_udp: bool,
    pub offers_tcp: bool,
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
        let handshakes = dtls::HandshakePool::start(config.handshake_threads())
            .map_err(|e| anyhow::anyhow!("starting the DTLS handshake threads failed: {e}"))?;
        let control_runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            anyhow::anyhow!("the control state is made on the control thread's runtime")
        })?;
        let joins = Joins::new(&config.admission);
        let cluster = crate::cluster::Cluster::new(&config)?.map(Arc::new);
        Ok(Arc::new(Control {
            cascade,
            cluster,
            config,
            workers,
            certificate: Arc::new(certificate),
            fingerprint,
            handshakes,
            control_runtime,
            joins,
            registry: Mutex::new(Registry::default()),
            ports: Mutex::new(ports),
            counters: ControlCounters::default(),
            http_port: std::sync::atomic::AtomicU16::new(0),
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

    /// Ends a session: DTLS close_notify to the peer, the worker closes the socket, the port
    /// comes back when the worker says the socket is closed. Ending a publisher ends its stream
    /// and its players.
    pub fn end_session(
        self: Arc<Self>,
        id: SessionId,
        ending: Ending,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
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
                // Its place in handshake (if it still held one) goes to the next join.
                drop(entry.admission.take());
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
                            self.stream_ended(&entry.stream, stream.pulled_by.is_some());
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
                self.cascade.pull(self.as_ref(), stream).await.map_err(|reason| {
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

    /// Ends a session and waits until its port is free again. `false` if there is no such session.
    /// Session `id`'s stream and role, if it exists.
    pub fn session_stream_and_role(&self, id: SessionId) -> Option<(String, Role)> {
        lock(&self.registry)
            .sessions
            .get(&id)
            .map(|entry| (entry.stream.clone(), entry.role))
    }

    /// Whether session `id` exists and `key` is the secret of its resource URL
    /// (`control::resource`).
    pub fn resource_key_matches(&self, id: SessionId, key: Option<&str>) -> bool {
        lock(&self.registry)
            .sessions
            .get(&id)
            .is_some_and(|entry| resource::key_matches(&entry.resource_key, key))
    }

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
                        if let Some(entry) = &entry
                            && registry.by_ufrag.get(&entry.ice.local_ufrag) == Some(&session)
                        {
                            registry.by_ufrag.remove(&entry.ice.local_ufrag);
                        }
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
                        match self.config.media.mux_port {
                            // Single-port mode: every worker forgets the session's paths.
                            Some(_) => {
                                for handle in &self.workers {
                                    handle.send(Command::MuxForget {
                                        owner: entry.worker,
                                        session,
                                    });
                                }
                            }
                            None => lock(&self.ports).release(entry.port),
                        }
                        for waiter in entry.closed_waiters {
                            let _ = waiter.send(());
                        }
                        tracing::debug!(session, port = entry.port, "session closed, port free");
                    }
                }
            }
        }
    }
}

/// The cascade sees the registry through this, and nothing else of the control thread.
impl cascade::LocalStreams for Control {
    fn has_stream(&self, name: &str) -> bool {
        Control::has_stream(self, name)
    }

    fn mark_pulled(&self, name: &str, bridge: u64) {
        if let Some(stream) = lock(&self.registry).streams.get_mut(name) {
            stream.pulled_by = Some(bridge);
        }
    }
}
