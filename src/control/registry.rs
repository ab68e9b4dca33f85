//! The session registry: streams, their publisher and players, each session's state and
//! who watches it, and what `GET /api/streams` shows of them.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::Control;
use crate::media::SessionId;
use crate::media::StreamId;
use crate::sdp::{MediaKind, PublishedTrack};
use crate::util::lock;
use crate::worker::stats::{SessionMeter, StreamMeter};

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

pub(super) struct SessionEntry {
    pub(super) stream: String,
    pub(super) stream_id: StreamId,
    pub(super) role: Role,
    pub(super) worker: usize,
    pub(super) port: u16,
    pub(super) state: SessionState,
    pub(super) remote: Option<SocketAddr>,
    /// The transport ICE nominated: `udp` or `tcp`.
    pub(super) transport: Option<&'static str>,
    /// What its receiver reports say (a player's RTT and loss); its worker writes.
    pub(super) reception: Arc<SessionMeter>,
    pub(super) dtls_stop: Option<oneshot::Sender<()>>,
    pub(super) dtls_task: Option<tokio::task::JoinHandle<()>>,
    pub(super) closed_waiters: Vec<oneshot::Sender<()>>,
    /// Signaling connections (WebSocket) told of this session's status.
    pub(super) watchers: Vec<mpsc::UnboundedSender<StatusEvent>>,
    /// The client it counts against (`http.max_sessions_per_ip`); `None` when exempt.
    pub(super) client: Option<IpAddr>,
    /// When the answer went out, for the dashboard's ages.
    pub(super) created: Instant,
    /// The transports the answer offered: (UDP, TCP).
    pub(super) offered: (bool, bool),
    /// Its ICE session (credentials, entity tag), which a PATCH may restart.
    pub(super) ice: IceSession,
    /// ICE restarts so far.
    pub(super) ice_restarts: u64,
    /// A player's place in handshake (`control::joins`), held until its DTLS is done.
    pub(super) admission: Option<super::joins::Slot>,
    /// The secret in its resource URL (`control::resource`): PATCH and DELETE must name it.
    pub(super) resource_key: String,
}

/// A session's current ICE session as signaling knows it: both sides' credentials, the
/// entity tag that names it (`etag`), and where the relay's candidates go in a fragment.
pub(super) struct IceSession {
    pub(super) local_ufrag: String,
    pub(super) local_pwd: String,
    pub(super) remote_ufrag: String,
    pub(super) remote_pwd: String,
    pub(super) etag: String,
    /// The bundle's first media section: (media, mid).
    pub(super) bundle: (String, String),
}

/// Why a session ends: a normal end (client, publisher gone) or a failure (ICE, DTLS).
#[derive(Debug, Clone)]
pub enum Ending {
    Normal(String),
    Failure(String),
}

impl Ending {
    pub(super) fn reason(&self) -> &str {
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

pub(super) struct StreamEntry {
    pub(super) id: StreamId,
    pub(super) publisher: SessionId,
    pub(super) worker: usize,
    pub(super) tracks: Vec<PublishedTrack>,
    /// What the publisher has sent (its worker counts).
    pub(super) meter: Arc<StreamMeter>,
    pub(super) players: BTreeSet<SessionId>,
    /// Set when this relay pulls the stream from its origin: the bridge to stop once the last
    /// player leaves.
    pub(super) pulled_by: Option<u64>,
}

#[derive(Default)]
pub(super) struct Registry {
    pub(super) streams: HashMap<String, StreamEntry>,
    pub(super) sessions: HashMap<SessionId, SessionEntry>,
    pub(super) next_session: SessionId,
    pub(super) next_stream: StreamId,
    /// Sessions per client key (`limits::client_key`), for `http.max_sessions_per_ip`.
    pub(super) sessions_per_ip: HashMap<IpAddr, usize>,
    /// Each session by its current ICE ufrag (the relay's), for a connection on the HTTP port
    /// that names one (`ice_door`): one lookup per connection, not a pass over the sessions.
    pub(super) by_ufrag: HashMap<String, SessionId>,
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
    /// The relay's end of the media path (the announced address and the session's port): with
    /// `remote` and `transport`, the 5-tuple.
    pub local: SocketAddr,
    /// Times the media path moved to another pair the client nominated (transport migration).
    pub migrations: u64,
    /// ICE restarts (PATCH or the WebSocket `ice` command).
    pub ice_restarts: u64,
    /// Round-trip time (ms): a player's from its receiver reports echoing the relay's sender
    /// reports, a publisher's from the delay between a NACK and its retransmission; `None`
    /// until measured.
    pub rtt_ms: Option<f64>,
    /// A simulcast player's encoding (its RID), the one it is switching to, its path estimate
    /// and its switches so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_layer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate_kbps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_switches: Option<u64>,
    /// The share of packets the peer lost between its last two reports (0 to 1, after repair),
    /// and in all since it started; `None` until it reports.
    pub loss: Option<f64>,
    pub lost: Option<u64>,
}

#[derive(Serialize)]
pub struct TrackView {
    pub kind: MediaKind,
    pub codec: String,
}

/// One simulcast encoding of a stream, as the publisher's worker measures it.
#[derive(Serialize)]
pub struct LayerView {
    pub rid: String,
    pub bitrate_kbps: u64,
    /// From the encoding's keyframes, when its codec carries the size (VP8, VP9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
}

fn layer_views(stream: &StreamEntry) -> Vec<LayerView> {
    let Some(video) = stream.tracks.iter().find(|t| t.is_simulcast()) else {
        return Vec::new();
    };
    video
        .rids
        .iter()
        .zip(&stream.meter.layers)
        .map(|(rid, meter)| {
            let known = |v: u64| (v > 0).then_some(v);
            LayerView {
                rid: rid.clone(),
                bitrate_kbps: meter.bitrate_bps.load(Ordering::Relaxed) / 1000,
                width: known(meter.width.load(Ordering::Relaxed)),
                height: known(meter.height.load(Ordering::Relaxed)),
            }
        })
        .collect()
}

#[derive(Serialize)]
pub struct StreamView {
    pub stream: String,
    pub publisher: SessionView,
    pub tracks: Vec<TrackView>,
    /// The video's simulcast encodings; empty without simulcast.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerView>,
    pub players: Vec<SessionView>,
    /// RTP packets and bytes the publisher has sent since it started (after repair): two
    /// readings make its bitrate.
    pub packets_in: u64,
    pub bytes_in: u64,
}

/// Tells a session's watchers its new status; watchers that went away are dropped.
pub(super) fn notify(
    entry: &mut SessionEntry,
    id: SessionId,
    status: &'static str,
    reason: Option<String>,
) {
    let event = StatusEvent {
        session: id,
        stream: entry.stream.clone(),
        status,
        reason,
    };
    entry.watchers.retain(|w| w.send(event.clone()).is_ok());
}

impl Control {
    /// What `GET /api/streams` shows.
    pub fn streams(&self) -> Vec<StreamView> {
        let registry = lock(&self.registry);
        let view = |id: SessionId| {
            let rids = registry
                .sessions
                .get(&id)
                .and_then(|s| registry.streams.get(&s.stream))
                .and_then(|s| s.tracks.iter().find(|t| t.is_simulcast()))
                .map(|t| t.rids.as_slice())
                .unwrap_or_default();
            let rid = |layer: u64| rids.get(layer as usize).cloned();
            registry.sessions.get(&id).map(|s| SessionView {
                layer: rid(s.reception.layer.load(Ordering::Relaxed)),
                target_layer: rid(s.reception.target_layer.load(Ordering::Relaxed)),
                estimate_kbps: match s.reception.estimate_bps.load(Ordering::Relaxed) {
                    0 => None,
                    bps => Some(bps / 1000),
                },
                layer_switches: (!rids.is_empty())
                    .then(|| s.reception.layer_switches.load(Ordering::Relaxed)),
                session: id,
                state: s.state,
                worker: s.worker,
                port: s.port,
                remote: s.remote,
                transport: s.transport,
                // The announced address of the remote's family (the first one before ICE).
                local: SocketAddr::new(
                    self.config
                        .media
                        .announced_ip
                        .iter()
                        .copied()
                        .find(|ip| s.remote.is_none_or(|r| r.is_ipv4() == ip.is_ipv4()))
                        .or(self.config.media.announced_ip.first().copied())
                        .unwrap_or(IpAddr::from([127, 0, 0, 1])),
                    s.port,
                ),
                migrations: s.reception.migrations.load(Ordering::Relaxed),
                ice_restarts: s.ice_restarts,
                rtt_ms: match s.reception.rtt_us.load(Ordering::Relaxed) {
                    0 => None,
                    us => Some(us as f64 / 1000.0),
                },
                loss: match s.reception.fraction_lost.load(Ordering::Relaxed) {
                    u64::MAX => None,
                    fraction => Some(fraction as f64 / 256.0),
                },
                lost: (s.reception.fraction_lost.load(Ordering::Relaxed) != u64::MAX)
                    .then(|| s.reception.cumulative_lost.load(Ordering::Relaxed)),
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
                    layers: layer_views(stream),
                    players: stream.players.iter().filter_map(|&p| view(p)).collect(),
                    packets_in: stream.meter.packets.load(Ordering::Relaxed),
                    bytes_in: stream.meter.bytes.load(Ordering::Relaxed),
                })
            })
            .collect();
        streams.sort_by(|a, b| a.stream.cmp(&b.stream));
        streams
    }
}
