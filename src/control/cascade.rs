//! Relay-to-relay republishing (cascade). A bridge is two of the library's own WebRTC client
//! sessions and a task between them: a player of the source stream and a publisher to the
//! target. Push (`/rest-api/pull/push`) plays the local stream from this relay over loopback
//! and publishes it to another relay with WHIP; pull (on demand, `cascade.origin`) plays the
//! stream from the origin with WHEP and publishes it into this relay. Keyframe requests from
//! the target side are sent upstream as PLIs, so a player on an edge reaches the publisher.
//!
//! Other relays are reached over http:// or https:// with `cascade.token` as the bearer token
//! (and `cascade.ca_file` or `cascade.insecure` for their certificates); this relay itself with
//! its own internal token (`gate::Gate::internal_token`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use webrtc_dtls::crypto::Certificate;

use super::errors::ApiError;
use crate::client::http::{HttpClient, Trust};
use crate::client::{self, ClientOptions, Incoming, Role, Session, Transport};
use crate::config::Config;
use crate::util::lock;
use crate::wire::rtcp;
use crate::wire::rtp::RtpHeader;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A bridge whose source sends nothing for this long ends: the relay it plays from is gone
/// (killed, cut off) without closing the session.
const SOURCE_SILENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BridgeStatus {
    /// Connecting to the source and the target.
    New,
    /// Media flows from source to target.
    Publishing,
    /// It could not start or it broke; `reason` says why.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Push,
    Pull,
}

/// What the cascade needs of the streams published here: it is handed this rather than the
/// control thread itself, so that the control module (which holds the cascade) and the cascade
/// do not depend on each other.
pub trait LocalStreams {
    /// Whether `name` is published here.
    fn has_stream(&self, name: &str) -> bool;
    /// Marks `name` as pulled from the origin by `bridge`, so the pull ends with its last
    /// player.
    fn mark_pulled(&self, name: &str, bridge: u64);
}

/// A republished stream as `/rest-api/pull/find_all` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeView {
    pub local_media_session_id: String,
    pub direction: Direction,
    pub uri: String,
    pub local_stream_name: String,
    pub remote_stream_name: String,
    pub status: BridgeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

struct Bridge {
    id: u64,
    direction: Direction,
    uri: String,
    local: String,
    remote: String,
    state: Arc<Mutex<(BridgeStatus, Option<String>)>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Bridge {
    fn view(&self) -> BridgeView {
        let (status, reason) = lock(&self.state).clone();
        BridgeView {
            local_media_session_id: self.id.to_string(),
            direction: self.direction,
            uri: self.uri.clone(),
            local_stream_name: self.local.clone(),
            remote_stream_name: self.remote.clone(),
            status,
            reason,
        }
    }

    fn is_live(&self) -> bool {
        lock(&self.state).0 != BridgeStatus::Failed
    }
}

type PullResult = Option<Result<u64, String>>;

/// The HTTP clients of the bridges: to other relays, to this one, and to the other nodes of
/// its cluster (with `cluster.token`).
#[derive(Clone)]
pub struct Clients {
    pub remote: HttpClient,
    pub local: HttpClient,
    pub cluster: HttpClient,
}

struct Inner {
    self_url: String,
    origin: Option<String>,
    certificate: Certificate,
    clients: RwLock<Clients>,
    bridges: Mutex<Vec<Bridge>>,
    next_id: AtomicU64,
    /// Pulls under way or running, by stream: their outcome once known.
    pulls: Mutex<HashMap<String, watch::Receiver<PullResult>>>,
}

/// The relay's bridges to other relays.
#[derive(Clone)]
pub struct Cascade {
    inner: Arc<Inner>,
}

/// The WHIP or WHEP URL of `stream` on a relay given by its base URL, or by a URL template
/// with `{stream}`.
fn endpoint(uri: &str, kind: &str, stream: &str) -> String {
    if uri.contains("{stream}") {
        uri.replace("{stream}", stream)
    } else {
        format!("{}/{kind}/{stream}", uri.trim_end_matches('/'))
    }
}

impl Cascade {
    pub fn new(config: &Config, certificate: Certificate) -> Cascade {
        Cascade {
            inner: Arc::new(Inner {
                self_url: config.self_url(),
                origin: config.cascade.origin.clone(),
                certificate,
                clients: RwLock::new(Clients {
                    remote: HttpClient::default()
                        .with_token(config.cascade.token.as_ref().map(|t| t.0.as_str())),
                    // This relay over loopback: its certificate may be self-signed.
                    local: HttpClient::new(&Trust {
                        ca_file: None,
                        insecure: true,
                    })
                    .unwrap_or_default(),
                    cluster: HttpClient::default(),
                }),
                bridges: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
                pulls: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn has_origin(&self) -> bool {
        self.inner.origin.is_some()
    }

    /// Sets the clients the bridges use from now on (at start-up, once the configured trust
    /// and the relay's own token are known).
    pub fn set_clients(&self, clients: Clients) {
        *self
            .inner
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = clients;
    }

    fn clients(&self) -> Clients {
        self.inner
            .clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Starts republishing local stream `local` (which `streams` must have) to the relay at
    /// `uri` as `remote`. The bridge
    /// starts as NEW; `find_all` shows it PUBLISHING, or FAILED with the reason.
    pub fn push(
        &self,
        streams: &impl LocalStreams,
        uri: &str,
        local: &str,
        remote: &str,
    ) -> Result<BridgeView, ApiError> {
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(ApiError::new(
                400,
                format!("uri `{uri}` must be the other relay's http:// or https:// URL"),
            ));
        }
        if !streams.has_stream(local) {
            return Err(ApiError::new(
                404,
                format!("stream `{local}` is not being published here"),
            ));
        }
        let mut bridges = lock(&self.inner.bridges);
        if bridges.iter().any(|b| {
            b.direction == Direction::Push && b.uri == uri && b.remote == remote && b.is_live()
        }) {
            return Err(ApiError::new(
                409,
                format!("stream `{remote}` is already pushed to {uri}"),
            ));
        }
        // A failed push to the same place is replaced by the new one.
        bridges.retain(|b| !(b.direction == Direction::Push && b.uri == uri && b.remote == remote));
        let source = endpoint(&self.inner.self_url, "whep", local);
        let target = endpoint(uri, "whip", remote);
        let clients = self.clients();
        let bridge = self.start(
            Direction::Push,
            uri,
            local,
            remote,
            (source, clients.local),
            (target, clients.remote),
            None,
        );
        let view = bridge.view();
        bridges.push(bridge);
        Ok(view)
    }

    /// The client for pulls from the other nodes of this relay's cluster.
    pub fn cluster_client(&self) -> HttpClient {
        self.clients().cluster
    }

    /// Whether a pull of `stream` is under way or running.
    pub fn is_pulling(&self, stream: &str) -> bool {
        lock(&self.inner.pulls).contains_key(stream)
    }

    /// Pulls `stream` from the origin into this relay, or joins a pull already under way;
    /// returns once the stream is published here or the pull failed.
    pub async fn pull(
        &self,
        streams: &(impl LocalStreams + Sync),
        stream: &str,
    ) -> Result<(), String> {
        let Some(origin) = self.inner.origin.clone() else {
            return Err("no cascade.origin is configured".into());
        };
        let source = endpoint(&origin, "whep", stream);
        let client = self.clients().remote;
        self.pull_from(streams, &origin, source, stream, client)
            .await
    }

    /// Pulls `stream` from the WHEP URL `source` on the relay at `origin` with `client`, or
    /// joins a pull of it already under way; returns once the stream is published here or the
    /// pull failed.
    pub async fn pull_from(
        &self,
        streams: &(impl LocalStreams + Sync),
        origin: &str,
        source: String,
        stream: &str,
        client: HttpClient,
    ) -> Result<(), String> {
        let mut outcome = {
            let mut pulls = lock(&self.inner.pulls);
            match pulls.get(stream) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pulls.insert(stream.to_string(), rx.clone());
                    let target = endpoint(&self.inner.self_url, "whip", stream);
                    let bridge = self.start(
                        Direction::Pull,
                        origin,
                        stream,
                        stream,
                        (source, client),
                        (target, self.clients().local),
                        Some(tx),
                    );
                    lock(&self.inner.bridges).push(bridge);
                    rx
                }
            }
        };
        let result = tokio::time::timeout(CONNECT_TIMEOUT * 2, outcome.wait_for(|r| r.is_some()))
            .await
            .map_err(|_| format!("pulling from {origin} timed out"))?
            .map_err(|_| "the pull ended".to_string())?
            .clone()
            .expect("waited for Some");
        match result {
            Ok(bridge) => {
                streams.mark_pulled(stream, bridge);
                Ok(())
            }
            Err(reason) => Err(reason),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        direction: Direction,
        uri: &str,
        local: &str,
        remote: &str,
        source: (String, HttpClient),
        target: (String, HttpClient),
        pulled: Option<watch::Sender<PullResult>>,
    ) -> Bridge {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(Mutex::new((BridgeStatus::New, None)));
        let (stop_tx, stop_rx) = oneshot::channel();
        let inner = self.inner.clone();
        let task_state = state.clone();
        let pulled_stream = (direction == Direction::Pull).then(|| local.to_string());
        tracing::info!(bridge = id, ?direction, source = %source.0, target = %target.0, "republishing");
        tokio::spawn(async move {
            let outcome = run(
                &inner.certificate,
                source,
                target,
                task_state.clone(),
                stop_rx,
                |ok| {
                    if let Some(tx) = &pulled {
                        let _ = tx.send(Some(ok.map(|()| id)));
                    }
                },
            )
            .await;
            match outcome {
                Ok(()) => {
                    tracing::info!(bridge = id, "republishing ended");
                    lock(&inner.bridges).retain(|b| b.id != id);
                }
                Err(reason) => {
                    tracing::warn!(bridge = id, %reason, "republishing failed");
                    *lock(&task_state) = (BridgeStatus::Failed, Some(reason.clone()));
                    if let Some(tx) = &pulled {
                        let _ = tx.send(Some(Err(reason)));
                    }
                    // A failed pull is retried by the next player; a failed push stays
                    // listed until it is terminated or pushed again.
                    if direction == Direction::Pull {
                        lock(&inner.bridges).retain(|b| b.id != id);
                    }
                }
            }
            if let Some(stream) = pulled_stream {
                lock(&inner.pulls).remove(&stream);
            }
        });
        Bridge {
            id,
            direction,
            uri: uri.to_string(),
            local: local.to_string(),
            remote: remote.to_string(),
            state,
            stop: Some(stop_tx),
        }
    }

    pub fn find_all(&self) -> Vec<BridgeView> {
        lock(&self.inner.bridges).iter().map(Bridge::view).collect()
    }

    /// Stops the bridges matching: by id, or by target and stream names. Returns how many.
    pub fn terminate_matching(
        &self,
        id: Option<u64>,
        uri: Option<&str>,
        local: Option<&str>,
        remote: Option<&str>,
    ) -> usize {
        let mut bridges = lock(&self.inner.bridges);
        let mut stopped = 0;
        bridges.retain_mut(|b| {
            let matches = id.is_none_or(|i| b.id == i)
                && uri.is_none_or(|u| b.uri == u)
                && local.is_none_or(|l| b.local == l)
                && remote.is_none_or(|r| b.remote == r);
            if matches {
                if let Some(stop) = b.stop.take() {
                    let _ = stop.send(());
                }
                stopped += 1;
            }
            !matches
        });
        stopped
    }

    pub fn terminate(&self, id: u64) {
        self.terminate_matching(Some(id), None, None, None);
    }
}

fn options(
    certificate: &Certificate,
    (url, http): (String, HttpClient),
    role: Role,
    video_codec: Option<String>,
) -> ClientOptions {
    ClientOptions {
        timeout: CONNECT_TIMEOUT,
        video_codec,
        http,
        ..ClientOptions::new(url, role, Transport::Udp, certificate)
    }
}

/// Runs one bridge until it is stopped (`Ok`) or breaks (`Err` with the reason).
async fn run(
    certificate: &Certificate,
    source: (String, HttpClient),
    target: (String, HttpClient),
    state: Arc<Mutex<(BridgeStatus, Option<String>)>>,
    mut stop: oneshot::Receiver<()>,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), String> {
    let (packets_tx, mut packets) = mpsc::channel::<Vec<u8>>(4096);
    let (source_url, target_url) = (source.0.clone(), target.0.clone());
    let source = client::connect(
        &options(certificate, source, Role::Play, None),
        Box::new(move |incoming| {
            if let Incoming::Rtp(packet) = incoming {
                // A full queue means the target cannot keep up: drop, as the network would.
                let _ = packets_tx.try_send(packet.to_vec());
            }
        }),
    )
    .await;
    let mut source = match source {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("playing {source_url}: {e}");
            ready(Err(reason.clone()));
            return Err(reason);
        }
    };
    let codec = source
        .negotiated
        .video_codec
        .split('/')
        .next()
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let (keyframe_tx, mut keyframes) = mpsc::channel::<()>(8);
    let target = client::connect(
        &options(certificate, target, Role::Publish, codec),
        Box::new(move |incoming| {
            if let Incoming::Rtcp(packet) = incoming
                && rtcp::requests_keyframe(packet)
            {
                let _ = keyframe_tx.try_send(());
            }
        }),
    )
    .await;
    let mut target = match target {
        Ok(t) => t,
        Err(e) => {
            source.close().await;
            let reason = format!("publishing to {target_url}: {e}");
            ready(Err(reason.clone()));
            return Err(reason);
        }
    };
    *lock(&state) = (BridgeStatus::Publishing, None);
    ready(Ok(()));
    let result = forward(
        &mut source,
        &mut target,
        &mut packets,
        &mut keyframes,
        &mut stop,
    )
    .await;
    source.close().await;
    target.close().await;
    result
}

/// Moves packets from source to target under the target's payload types and SSRCs, and
/// keyframe requests from target to source.
async fn forward(
    source: &mut Session,
    target: &mut Session,
    packets: &mut mpsc::Receiver<Vec<u8>>,
    keyframes: &mut mpsc::Receiver<()>,
    stop: &mut oneshot::Receiver<()>,
) -> Result<(), String> {
    let source_closed = source.closed();
    let target_closed = target.closed();
    tokio::pin!(source_closed, target_closed);
    let (source_audio, source_video) = (
        source.negotiated.audio_payload_type,
        source.negotiated.video_payload_type,
    );
    let (target_audio, target_video) = (
        target.negotiated.audio_payload_type,
        target.negotiated.video_payload_type,
    );
    let mut source_video_ssrc = None;
    let mut pli = [0u8; 12];
    let silence = tokio::time::sleep(SOURCE_SILENCE);
    tokio::pin!(silence);
    loop {
        tokio::select! {
            packet = packets.recv() => {
                let Some(mut packet) = packet else { return Err("the source stopped".into()) };
                silence.as_mut().reset(tokio::time::Instant::now() + SOURCE_SILENCE);
                let Ok(header) = RtpHeader::parse(&packet) else { continue };
                let pt = Some(header.payload_type);
                let (target_pt, ssrc) = if pt == source_video {
                    source_video_ssrc = Some(header.ssrc);
                    (target_video, target.video_ssrc)
                } else if pt == source_audio {
                    (target_audio, target.audio_ssrc)
                } else {
                    continue;
                };
                let Some(target_pt) = target_pt else { continue };
                packet[1] = (packet[1] & 0x80) | target_pt;
                packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
                if let Err(e) = target.send_rtp(&packet).await {
                    return Err(format!("sending to the target: {e}"));
                }
            }
            Some(()) = keyframes.recv() => {
                if let Some(media) = source_video_ssrc {
                    let len = rtcp::write_pli(&mut pli, source.video_ssrc, media);
                    let _ = source.send_rtcp(&pli[..len]).await;
                }
            }
            _ = &mut *stop => return Ok(()),
            _ = &mut source_closed => return Err("the source stream ended".into()),
            _ = &mut silence => {
                return Err(format!("the source sent nothing for {} s", SOURCE_SILENCE.as_secs()));
            }
            _ = &mut target_closed => return Err("the target closed the session".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_a_base_url_or_a_template() {
        assert_eq!(
            endpoint("http://10.0.0.2:8080", "whip", "cam"),
            "http://10.0.0.2:8080/whip/cam"
        );
        assert_eq!(
            endpoint("http://10.0.0.2:8080/", "whep", "cam"),
            "http://10.0.0.2:8080/whep/cam"
        );
        assert_eq!(
            endpoint("http://x:1/ingest/{stream}", "whip", "cam"),
            "http://x:1/ingest/cam"
        );
    }
}
