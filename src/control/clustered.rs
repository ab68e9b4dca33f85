//! The control thread as a node of a cluster (`crate::cluster`): publishing claims the stream
//! in the directory first, playing a stream held elsewhere pulls it from its node, a full node
//! redirects players, and a heartbeat keeps this node's record and streams alive. Without
//! `cluster.redis` each entry point is the single relay's.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::registry::Role;
use super::sessions::check_stream_name;
use super::{ApiError, Control, Created};
use crate::cluster::directory::{
    LoadMeter, NodeRecord, PlayStep, play_step, pull_source, redirect_target,
};
use crate::cluster::{Claim, Cluster, HEARTBEAT, Unreachable};
use crate::util::lock;

/// What `GET /api/cluster` shows.
#[derive(Serialize)]
pub struct ClusterView {
    /// This node's id.
    pub node: String,
    pub redis_reachable: bool,
    /// Every live node's last heartbeat.
    pub nodes: Vec<NodeRecord>,
    /// Every stream's entry: which node publishes it.
    pub streams: Vec<StreamHolder>,
}

#[derive(Serialize)]
pub struct StreamHolder {
    pub stream: String,
    pub node: String,
}

/// CPU time this process has used, from /proc/self/stat (user and system).
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some((_, after)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = crate::io::sys::clock_ticks_per_second().max(1);
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz as f64)
}

impl Control {
    /// The 503 for a request that needs the directory while Redis is unreachable (counted).
    fn unavailable(&self, cluster: &Cluster, e: &Unreachable) -> ApiError {
        cluster.counters.unavailable.fetch_add(1, Ordering::Relaxed);
        ApiError::new(503, cluster.unreachable_message(e))
    }

    /// Players on this node now (each holds a session and a port).
    pub fn player_count(&self) -> usize {
        lock(&self.registry)
            .sessions
            .values()
            .filter(|s| s.role == Role::Player)
            .count()
    }

    /// WHIP (and WebSocket publish): in a cluster the stream is claimed in the directory first,
    /// so a second publisher of the name on any node gets 409. `internal` (the relay's own pull
    /// publishing into it) claims nothing: the stream belongs to the node it comes from.
    pub async fn publish_anywhere(
        self: &Arc<Self>,
        stream: &str,
        offer: &str,
        client: IpAddr,
        internal: bool,
    ) -> Result<Created, ApiError> {
        let Some(cluster) = self.cluster.clone().filter(|_| !internal) else {
            return self.publish(stream, offer, client);
        };
        check_stream_name(stream)?;
        if self.has_stream(stream) {
            return Err(ApiError::new(
                409,
                format!("stream `{stream}` already has a publisher"),
            ));
        }
        match cluster.claim(stream).await {
            Err(e) => Err(self.unavailable(&cluster, &e)),
            Ok(Claim::Taken { node }) => Err(ApiError::new(
                409,
                format!(
                    "stream `{stream}` already has a publisher, on node `{node}` of the cluster"
                ),
            )),
            Ok(Claim::Ours) => {
                let created = self.publish(stream, offer, client);
                if created.is_err() && !self.has_stream(stream) {
                    cluster.release(stream).await;
                }
                created
            }
        }
    }

    /// WHEP (and WebSocket play): in a cluster a full node redirects the player to the least
    /// loaded node with room, and a stream held by another node is pulled from it (one pull
    /// per stream, shared by this node's players). `from_node` marks a pull from another node:
    /// it plays what is here, never redirected nor pulled further.
    pub async fn play_anywhere(
        self: &Arc<Self>,
        stream: &str,
        offer: &str,
        client: IpAddr,
        from_node: bool,
    ) -> Result<Created, ApiError> {
        let Some(cluster) = self.cluster.clone() else {
            return self.play_or_pull(stream, offer, client).await;
        };
        let players = self.player_count();
        let full = players >= cluster.max_players;
        match play_step(from_node, full, self.has_stream(stream)) {
            PlayStep::Here => self.play(stream, offer, client),
            PlayStep::Redirect => {
                check_stream_name(stream)?;
                let nodes = cluster
                    .nodes()
                    .await
                    .map_err(|e| self.unavailable(&cluster, &e))?;
                let Some(target) = redirect_target(&cluster.node_id, stream, &nodes) else {
                    cluster.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::new(
                        503,
                        format!(
                            "every node of the cluster is at capacity (this one holds {players} \
                             players, cluster.max_players {}); try again later",
                            cluster.max_players
                        ),
                    ));
                };
                cluster.counters.redirects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(stream, node = %target.id, "full: redirecting a player");
                Err(ApiError::redirect(
                    format!("{}/whep/{stream}", target.url),
                    format!(
                        "node `{}` is at capacity ({players} players); play from node `{}`",
                        cluster.node_id, target.id
                    ),
                ))
            }
            PlayStep::FindHolder => {
                check_stream_name(stream)?;
                let (holder, record) = cluster
                    .holder(stream)
                    .await
                    .map_err(|e| self.unavailable(&cluster, &e))?;
                let source =
                    pull_source(&cluster.node_id, stream, holder.as_deref(), record.as_ref())
                        .map_err(|why| ApiError::new(404, why))?;
                self.pull_from_node(&cluster, source, stream).await?;
                self.play(stream, offer, client)
            }
        }
    }

    /// Pulls `stream` from `node` into this relay, or joins the pull under way.
    async fn pull_from_node(
        self: &Arc<Self>,
        cluster: &Cluster,
        node: &NodeRecord,
        stream: &str,
    ) -> Result<(), ApiError> {
        // The pull's own WHEP on the other node names this one: it is never redirected.
        let source = format!("{}/whep/{stream}?node={}", node.url, cluster.node_id);
        let started = !self.cascade.is_pulling(stream);
        cluster.pull_started(stream, &node.id);
        if started {
            cluster
                .counters
                .pulls_started
                .fetch_add(1, Ordering::Relaxed);
        }
        let client = self.cascade.cluster_client();
        let pulled = self
            .cascade
            .pull_from(self.as_ref(), &node.url, source, stream, client)
            .await;
        pulled.map_err(|reason| {
            if !self.cascade.is_pulling(stream) {
                cluster.pull_ended(stream);
            }
            ApiError::new(
                502,
                format!(
                    "stream `{stream}` is on node `{}`, and pulling it from there failed: {reason}",
                    node.id
                ),
            )
        })
    }

    /// A publisher here stopped: its stream leaves the directory (unless this node only
    /// pulled it).
    pub(super) fn stream_ended(self: &Arc<Self>, stream: &str, pulled: bool) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if pulled {
            cluster.pull_ended(stream);
            return;
        }
        let stream = stream.to_string();
        tokio::spawn(async move { cluster.release(&stream).await });
    }

    /// This node's record for its heartbeat.
    fn node_record(&self, cluster: &Cluster, meter: &mut LoadMeter) -> NodeRecord {
        let forwarded: u64 = self
            .workers
            .iter()
            .map(|w| w.stats.forwarded_packets.load(Ordering::Relaxed))
            .sum();
        let (forwarded_per_s, cpu) = meter.sample(Instant::now(), forwarded, process_cpu());
        let pulls = cluster.pulls(|stream| self.cascade.is_pulling(stream));
        let (sessions, players, streams) = {
            let registry = lock(&self.registry);
            let players = registry
                .sessions
                .values()
                .filter(|s| s.role == Role::Player)
                .count();
            let mut streams: Vec<String> = registry
                .streams
                .iter()
                .filter(|(name, s)| {
                    s.pulled_by.is_none() && !pulls.iter().any(|p| &p.stream == *name)
                })
                .map(|(name, _)| name.clone())
                .collect();
            streams.sort();
            (registry.sessions.len(), players, streams)
        };
        NodeRecord {
            id: cluster.node_id.clone(),
            url: cluster.url.clone(),
            sessions,
            players,
            max_players: cluster.max_players,
            forwarded_per_s: (forwarded_per_s * 10.0).round() / 10.0,
            cpu: (cpu * 1000.0).round() / 1000.0,
            streams,
            pulls,
        }
    }

    /// Writes this node's record and refreshes its streams every `HEARTBEAT`, for as long as
    /// the relay runs; an unreachable Redis is logged (once) and counted, and the next beat
    /// tries again, claiming this node's streams anew if Redis lost them.
    pub async fn heartbeat(self: Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        tracing::info!(node = %cluster.node_id, url = %cluster.url, max_players = cluster.max_players,
            "cluster node: heartbeat every {} ms", HEARTBEAT.as_millis());
        let mut meter = LoadMeter::default();
        let mut ticker = tokio::time::interval(HEARTBEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let record = self.node_record(&cluster, &mut meter);
            // Errors are counted and logged by the cluster; the stream conflicts too.
            let _ = cluster.beat(&record).await;
        }
    }

    /// `GET /api/cluster`.
    pub async fn cluster_view(&self) -> Result<ClusterView, ApiError> {
        let Some(cluster) = self.cluster.clone() else {
            return Err(ApiError::new(
                404,
                "this relay is not part of a cluster: set cluster.redis",
            ));
        };
        let nodes = cluster
            .nodes()
            .await
            .map_err(|e| self.unavailable(&cluster, &e))?;
        let streams = cluster
            .streams()
            .await
            .map_err(|e| self.unavailable(&cluster, &e))?;
        Ok(ClusterView {
            node: cluster.node_id.clone(),
            redis_reachable: cluster.is_reachable(),
            nodes,
            streams: streams
                .into_iter()
                .map(|(stream, node)| StreamHolder { stream, node })
                .collect(),
        })
    }
}
