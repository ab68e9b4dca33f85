//! Creating sessions: the offer checked and negotiated, a media port bound on the least
//! loaded worker, the answer written, the worker told and the DTLS handshake started.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::registry::{IceSession, Registry, SessionEntry, StreamEntry, notify};
use super::{ApiError, Control, Ending, Role, SessionState, dtls, etag, limits};
use crate::io::socket::MediaSockets;
use crate::media::StreamId;
use crate::media::{MAX_LAYERS, SessionId};
use crate::ports::PortError;
use crate::sdp::{
    AnswerSection, AnswerTransport, MediaKind, Offer, PublishedTrack, negotiate_play,
    negotiate_publish, write_answer,
};
use crate::session::publisher::VideoSettings;
use crate::session::publisher_link::LinkSettings;
use crate::util::{lock, random_token};
use crate::wire::keyframe::VideoCodec;
use crate::worker::stats::{SessionMeter, StreamMeter};
use crate::worker::{Command, NewRole, NewSession};

/// DTLS records a session may have waiting for its handshake; the worker drops (and counts)
/// what does not fit. A handshake flight is a handful of records.
const DTLS_QUEUE: usize = 64;

/// A created session, for the HTTP response.
pub struct Created {
    pub session: SessionId,
    pub answer: String,
    /// The entity tag of its ICE session (the 201's `ETag`; a PATCH names it in `If-Match`).
    pub etag: String,
    /// Its resource path with its secret (`control::resource`), the 201's `Location`.
    pub resource: String,
}

/// What negotiation decided for a new session: the worker's role, the answer's sections, the
/// stream, and for a player the publisher's worker; for a publisher its tracks.
struct Plan {
    role: NewRole,
    sections: Vec<AnswerSection>,
    stream: StreamId,
    publisher_worker: Option<usize>,
    tracks: Option<(Vec<PublishedTrack>, Arc<StreamMeter>)>,
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
        video_layers: video.map_or(1, |v| v.rids.len().max(1)),
        clock_rates: [MediaKind::Audio, MediaKind::Video].map(|kind| {
            tracks
                .iter()
                .find(|t| t.kind == kind)
                .map_or(0, |t| t.codec.clock_rate)
        }),
    }
}

/// What the worker needs of a publisher's video beyond its payload types.
fn video_settings(tracks: &[PublishedTrack]) -> VideoSettings {
    let Some(video) = tracks.iter().find(|t| t.kind == MediaKind::Video) else {
        return VideoSettings::default();
    };
    VideoSettings {
        codec: Some(VideoCodec::from_name(&video.codec.name)),
        rtx_payload_type: video.rtx_payload_type,
        rids: if video.is_simulcast() {
            video.rids.clone()
        } else {
            Vec::new()
        },
        rid_ids: video.rid_ids.filter(|_| video.is_simulcast()),
    }
}

/// Stream names appear in URLs and logs: keep them plain.
pub(super) fn check_stream_name(name: &str) -> Result<(), ApiError> {
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
        let plan = self.negotiate(&mut registry, stream, &offer, role)?;
        let media = &self.config.media;
        let (port, worker, sockets) = match media.mux_port {
            // Single-port mode: no socket of its own; the least loaded worker owns it.
            Some(port) => {
                let worker = self.workers_by_load(&registry)[0];
                (
                    port,
                    worker,
                    MediaSockets {
                        udp: None,
                        tcp: None,
                    },
                )
            }
            None => self.bind_port(&registry)?,
        };
        let stream_id = plan.stream;
        let publisher_worker = plan.publisher_worker.unwrap_or(worker);
        let offered = match media.mux_port {
            Some(_) => (media.protocol.udp(), media.protocol.tcp()),
            None => (sockets.udp.is_some(), sockets.tcp.is_some()),
        };
        let answer = self.answer(&offer, &plan, &local_ufrag, &local_pwd, port, offered);
        registry.next_session += 1;
        let id = registry.next_session;
        let resource_key = super::resource::new_key();
        let ice = IceSession {
            local_ufrag: local_ufrag.clone(),
            local_pwd: local_pwd.clone(),
            remote_ufrag: offer.ice_ufrag.clone(),
            remote_pwd: offer.ice_pwd.clone(),
            etag: etag::new_etag(),
            bundle: offer
                .sections
                .iter()
                .zip(&plan.sections)
                .find(|(_, answer)| matches!(answer, AnswerSection::Accepted { .. }))
                .map(|(s, _)| (s.media.clone(), s.mid.clone()))
                .unwrap_or_default(),
        };
        let etag = ice.etag.clone();
        self.add_to_stream(
            &mut registry,
            stream,
            id,
            stream_id,
            plan.tracks,
            worker,
            publisher_worker,
        );
        // The worker sends the session's DTLS records straight into this bounded queue.
        let (records_tx, records_rx) = mpsc::channel(DTLS_QUEUE);
        let reception = Arc::new(SessionMeter::default());
        let mux_ufrag = media.mux_port.map(|_| local_ufrag.clone());
        self.workers[worker].send(Command::AddSession(Box::new(NewSession {
            id,
            udp: sockets.udp,
            tcp: sockets.tcp,
            stream: stream_id,
            publisher_worker,
            local_ufrag,
            local_pwd,
            remote_ufrag: offer.ice_ufrag.clone(),
            role: plan.role,
            dtls_records: records_tx,
            reception: reception.clone(),
        })));
        if let Some(ufrag) = mux_ufrag {
            // Every worker's shared socket may receive the session's first check.
            for handle in &self.workers {
                handle.send(Command::MuxRegister {
                    ufrag: ufrag.clone(),
                    owner: worker,
                    session: id,
                });
            }
        }
        let (stop_tx, dtls_task) =
            self.start_dtls(id, worker, port, offer.fingerprint.clone(), records_rx);
        self.enter_session(
            &mut registry,
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
                reception,
                dtls_stop: Some(stop_tx),
                dtls_task: Some(dtls_task),
                closed_waiters: Vec::new(),
                watchers: Vec::new(),
                client: counted_as,
                created: Instant::now(),
                offered,
                ice,
                ice_restarts: 0,
                admission: None,
                resource_key: resource_key.clone(),
            },
        );
        tracing::info!(session = id, stream, ?role, worker, port, "session created");
        Ok(Created {
            session: id,
            answer,
            etag,
            resource: super::resource::path(id, &resource_key),
        })
    }

    /// The SDP answer: the plan's sections, the session's ICE credentials, the relay's
    /// fingerprint, and the announced address with the port and its transports (`udp`, `tcp`).
    fn answer(
        &self,
        offer: &Offer,
        plan: &Plan,
        ice_ufrag: &str,
        ice_pwd: &str,
        port: u16,
        (udp, tcp): (bool, bool),
    ) -> String {
        let transport = AnswerTransport {
            ice_ufrag,
            ice_pwd,
            fingerprint: &self.fingerprint,
            ips: &self.config.media.announced_ip,
            port,
            tcp_port: self.tcp_candidate_port(port),
            udp,
            tcp,
        };
        write_answer(offer, &plan.sections, &transport)
    }

    /// Negotiates `offer` for `role` on `stream`: a publisher's tracks (a new stream id), or
    /// what a player gets of the stream's tracks.
    fn negotiate(
        &self,
        registry: &mut Registry,
        stream: &str,
        offer: &Offer,
        role: Role,
    ) -> Result<Plan, ApiError> {
        match role {
            Role::Publisher => {
                if registry.streams.contains_key(stream) {
                    return Err(ApiError::new(
                        409,
                        format!("stream `{stream}` already has a publisher"),
                    ));
                }
                let (tracks, sections) = negotiate_publish(offer)?;
                let payload_types = tracks
                    .iter()
                    .map(|t| (t.codec.payload_type, t.kind))
                    .collect();
                let link = link_settings(&tracks, self.config.media.max_publish_kbps);
                let meter = Arc::new(StreamMeter::default());
                registry.next_stream += 1;
                Ok(Plan {
                    role: NewRole::Publisher {
                        payload_types,
                        video: video_settings(&tracks),
                        link,
                        meter: meter.clone(),
                    },
                    sections,
                    stream: registry.next_stream,
                    publisher_worker: None,
                    tracks: Some((tracks, meter)),
                })
            }
            Role::Player => {
                let Some(entry) = registry.streams.get(stream) else {
                    return Err(ApiError::new(
                        404,
                        format!("stream `{stream}` is not being published"),
                    ));
                };
                let (played, sections) =
                    negotiate_play(offer, &entry.tracks, stream, |_| rand::random())?;
                let video = entry.tracks.iter().find(|t| t.kind == MediaKind::Video);
                Ok(Plan {
                    role: NewRole::Player {
                        tracks: played,
                        layers: video.map_or(1, |v| v.rids.len().clamp(1, MAX_LAYERS)) as u8,
                        video_clock_rate: video.map_or(90_000, |v| v.codec.clock_rate),
                        meter: entry.meter.clone(),
                    },
                    sections,
                    stream: entry.id,
                    publisher_worker: Some(entry.worker),
                    tracks: None,
                })
            }
        }
    }

    /// Binds a media port on the least loaded worker that has one free.
    fn bind_port(&self, registry: &Registry) -> Result<(u16, usize, MediaSockets), ApiError> {
        let media = &self.config.media;
        let preference = self.workers_by_load(registry);
        let bound = lock(&self.ports).allocate(preference, |port| {
            crate::io::socket::bind_media(media, port)
        });
        match bound {
            Ok(Ok(bound)) => Ok(bound),
            Ok(Err(e)) => Err(ApiError::new(
                500,
                format!("binding a media port failed: {e}"),
            )),
            Err(e @ PortError::Exhausted { .. }) => {
                self.counters
                    .ports_exhausted
                    .fetch_add(1, Ordering::Relaxed);
                Err(ApiError::new(
                    503,
                    format!("{e}; try again later or widen media.ports"),
                ))
            }
        }
    }

    /// Enters session `id` in its stream: a publisher's new stream, or a player added to the
    /// stream's players (and, on another worker than the publisher's, that worker's interest).
    #[allow(clippy::too_many_arguments)]
    fn add_to_stream(
        &self,
        registry: &mut Registry,
        stream: &str,
        id: SessionId,
        stream_id: StreamId,
        tracks: Option<(Vec<PublishedTrack>, Arc<StreamMeter>)>,
        worker: usize,
        publisher_worker: usize,
    ) {
        match tracks {
            Some((tracks, meter)) => {
                registry.streams.insert(
                    stream.to_string(),
                    StreamEntry {
                        id: stream_id,
                        publisher: id,
                        worker,
                        tracks,
                        meter,
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
    }

    /// Starts session `id`'s DTLS handshake in the handshake pool, fed by `records` from its
    /// worker; returns what stops it and its task.
    fn start_dtls(
        self: &Arc<Self>,
        id: SessionId,
        worker: usize,
        port: u16,
        expected_fingerprint: Vec<u8>,
        records: mpsc::Receiver<Vec<u8>>,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let params = dtls::DtlsParams {
            session: id,
            worker: self.workers[worker].clone(),
            certificate: self.certificate.clone(),
            expected_fingerprint,
            local: SocketAddr::new(self.config.media.bind_ip, port),
        };
        let task = self
            .handshakes
            .spawn(self.clone().run_dtls(params, records, stop_rx));
        (stop_tx, task)
    }

    /// Enters a new session in the registry, counted against its client and in the totals.
    fn enter_session(&self, registry: &mut Registry, id: SessionId, entry: SessionEntry) {
        if let Some(key) = entry.client {
            *registry.sessions_per_ip.entry(key).or_default() += 1;
        }
        registry.by_ufrag.insert(entry.ice.local_ufrag.clone(), id);
        registry.sessions.insert(id, entry);
        self.counters
            .sessions_created
            .fetch_add(1, Ordering::Relaxed);
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
        let outcome = dtls::run(params, records, stop, move |took| {
            control.joins.record_handshake(took);
            if let Some(s) = lock(&control.registry).sessions.get_mut(&id)
                && s.state != SessionState::Closing
            {
                s.state = SessionState::Connected;
                // Its place in handshake goes to the next join.
                drop(s.admission.take());
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
                let runtime = self.control_runtime.clone();
                runtime.spawn(self.end_session(id, Ending::Failure(reason)));
            }
            dtls::DtlsOutcome::PeerClosed => {
                let runtime = self.control_runtime.clone();
                runtime.spawn(self.end_session(id, Ending::Normal("the peer closed DTLS".into())));
            }
        }
    }
}
