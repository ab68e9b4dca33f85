//! A cluster of relays sharing one directory in Redis: which nodes are alive and how loaded
//! they are (`corecast:node:{id}`, a JSON record each node rewrites every second with a
//! five-second TTL) and which node holds each stream (`corecast:stream:{name}` → node id, set
//! atomically when a publisher starts, refreshed with the heartbeat, deleted when it stops).
//! A node that dies stops refreshing, and its keys expire. What to do with what the directory
//! says is decided in `directory`, without I/O; this module only talks to Redis.
//!
//! The client is the `redis` crate's `ConnectionManager`: one multiplexed connection that
//! reconnects by itself, with a timeout on every command, so an unreachable Redis costs a
//! request at most `COMMAND_TIMEOUT` and never blocks the control thread.

pub mod directory;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{Config, redis_url_without_password};
use crate::util::lock;
use directory::{NodeRecord, node_key, stream_key, stream_of_key};

/// How often a node rewrites its record and refreshes its streams.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node's keys outlive its last heartbeat: a dead node is gone from the directory
/// within this.
pub const TTL: Duration = Duration::from_secs(5);
/// The longest one directory operation may take before it counts as Redis unreachable.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

/// Claims a stream for a node unless another holds it. Returns "" when the claim is new, else
/// the holder (which may be the caller).
const CLAIM: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
                     return '' end return redis.call('GET', KEYS[1])";
/// The heartbeat's refresh of a stream: extends the caller's claim, or claims it again if it
/// expired (Redis restarted empty, or the node was cut off for longer than the TTL). Returns ""
/// when the caller holds it, else the node that does.
const REFRESH: &str = "local v = redis.call('GET', KEYS[1]) \
                       if v == false or v == ARGV[1] then \
                       redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return '' end \
                       return v";
/// Deletes a stream's entry if the caller still holds it.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) end return 0";

/// The directory could not be reached; the message says what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub String);

/// The outcome of claiming a stream for a new publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node holds the stream now (or held it already).
    Ours,
    /// Another node's publisher has it.
    Taken { node: String },
}

#[derive(Default)]
pub struct ClusterCounters {
    /// Directory operations by kind, and those that failed.
    pub claims: AtomicU64,
    pub releases: AtomicU64,
    pub lookups: AtomicU64,
    pub heartbeats: AtomicU64,
    pub redis_errors: AtomicU64,
    /// Publishers refused because another node holds the stream.
    pub claims_refused: AtomicU64,
    /// Pulls started from another node, and players sent to other nodes.
    pub pulls_started: AtomicU64,
    pub redirects: AtomicU64,
    /// Requests refused with 503: the directory was needed and unreachable, or every node full.
    pub unavailable: AtomicU64,
    /// Streams this node publishes that another node claimed (after a partition).
    pub conflicts: AtomicU64,
}

/// This node's view of the cluster and its connection to the directory.
pub struct Cluster {
    pub node_id: String,
    pub url: String,
    pub max_players: usize,
    redis_url: String,
    redis: ConnectionManager,
    reachable: AtomicBool,
    /// Streams pulled from other nodes, by stream: the node each comes from.
    pulls: Mutex<HashMap<String, String>>,
    pub counters: ClusterCounters,
}

impl Cluster {
    /// The cluster node `config` describes, `None` without `cluster.redis`. The connection is
    /// made on first use, so a node starts (and serves) while Redis is down.
    pub fn new(config: &Config) -> anyhow::Result<Option<Cluster>> {
        let Some(url) = &config.cluster.redis else {
            return Ok(None);
        };
        let client = redis::Client::open(url.0.as_str())?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client, settings)?;
        Ok(Some(Cluster {
            node_id: config.node_id(),
            url: config.advertise_url(),
            max_players: config.max_players(),
            redis_url: redis_url_without_password(&url.0),
            redis,
            reachable: AtomicBool::new(true),
            pulls: Mutex::new(HashMap::new()),
            counters: ClusterCounters::default(),
        }))
    }

    /// Whether the last directory operation worked.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// The 503 message for a request that needs the directory while it is unreachable.
    pub fn unreachable_message(&self, Unreachable(why): &Unreachable) -> String {
        format!(
            "the cluster directory (Redis at {}) is unreachable ({why}); streams already on \
             this node keep flowing, try again shortly",
            self.redis_url
        )
    }

    /// Runs one command with the timeout, counting and logging a failure, and noting when
    /// Redis is reachable again.
    async fn run<T: redis::FromRedisValue + 'static>(
        &self,
        command: &mut (impl Query + ?Sized),
    ) -> Result<T, Unreachable> {
        let mut connection = self.redis.clone();
        let outcome = tokio::time::timeout(COMMAND_TIMEOUT, command.query(&mut connection)).await;
        let error = match outcome {
            Ok(Ok(value)) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(redis = %self.redis_url, "cluster directory reachable again");
                }
                return Ok(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", COMMAND_TIMEOUT.as_millis()),
        };
        self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(redis = %self.redis_url, %error, "cluster directory unreachable: \
                local streams keep flowing; publishing and pulls wait for it");
        } else {
            tracing::debug!(redis = %self.redis_url, %error, "cluster directory still unreachable");
        }
        Err(Unreachable(error))
    }

    /// Claims `stream` for a publisher on this node.
    pub async fn claim(&self, stream: &str) -> Result<Claim, Unreachable> {
        self.counters.claims.fetch_add(1, Ordering::Relaxed);
        let mut script = eval(CLAIM, &stream_key(stream), &self.node_id);
        let holder: String = self.run(&mut script).await?;
        if holder.is_empty() || holder == self.node_id {
            return Ok(Claim::Ours);
        }
        self.counters.claims_refused.fetch_add(1, Ordering::Relaxed);
        Ok(Claim::Taken { node: holder })
    }

    /// Gives `stream` up: its publisher here stopped.
    pub async fn release(&self, stream: &str) {
        self.counters.releases.fetch_add(1, Ordering::Relaxed);
        let mut script = redis::cmd("EVAL");
        script
            .arg(RELEASE)
            .arg(1)
            .arg(stream_key(stream))
            .arg(&self.node_id);
        // Unreachable: the entry expires with the TTL instead, as a dead node's would.
        let _: Result<i64, _> = self.run(&mut script).await;
    }

    /// The node holding `stream` and that node's record, as far as the directory knows.
    pub async fn holder(
        &self,
        stream: &str,
    ) -> Result<(Option<String>, Option<NodeRecord>), Unreachable> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let holder: Option<String> = self.run(redis::cmd("GET").arg(stream_key(stream))).await?;
        let Some(node) = holder else {
            return Ok((None, None));
        };
        let record: Option<String> = self.run(redis::cmd("GET").arg(node_key(&node))).await?;
        let record = record.and_then(|json| serde_json::from_str(&json).ok());
        Ok((Some(node), record))
    }

    /// Every live node's record, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, Unreachable> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let keys = self.scan("corecast:node:*").await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = self.run(redis::cmd("MGET").arg(&keys)).await?;
        let mut nodes: Vec<NodeRecord> = values
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Every stream entry: stream → node.
    pub async fn streams(&self) -> Result<Vec<(String, String)>, Unreachable> {
        let keys = self.scan("corecast:stream:*").await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = self.run(redis::cmd("MGET").arg(&keys)).await?;
        let mut streams: Vec<(String, String)> = keys
            .iter()
            .zip(values)
            .filter_map(|(key, node)| Some((stream_of_key(key)?.to_string(), node?)))
            .collect();
        streams.sort();
        Ok(streams)
    }

    async fn scan(&self, pattern: &str) -> Result<Vec<String>, Unreachable> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<String>) = self.run(&mut scan).await?;
            keys.extend(batch);
            if next == 0 {
                keys.sort();
                keys.dedup();
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// One heartbeat: this node's record, and each of its streams' entries refreshed (or
    /// claimed again after Redis lost them). Returns the streams another node holds now.
    pub async fn beat(&self, record: &NodeRecord) -> Result<Vec<String>, Unreachable> {
        self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        let json = serde_json::to_string(record).expect("a node record serialises");
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(node_key(&self.node_id))
            .arg(json)
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .ignore();
        for stream in &record.streams {
            pipe.add_command(eval(REFRESH, &stream_key(stream), &self.node_id));
        }
        let holders: Vec<String> = self.run(&mut pipe).await?;
        let lost: Vec<String> = record
            .streams
            .iter()
            .zip(holders)
            .filter(|(_, holder)| !holder.is_empty())
            .map(|(stream, holder)| {
                tracing::warn!(stream, node = %holder, "another node claimed a stream published here");
                stream.clone()
            })
            .collect();
        self.counters
            .conflicts
            .fetch_add(lost.len() as u64, Ordering::Relaxed);
        Ok(lost)
    }

    /// Notes that this node pulls `stream` from `node` (until `pull_ended`).
    pub fn pull_started(&self, stream: &str, node: &str) {
        lock(&self.pulls).insert(stream.to_string(), node.to_string());
    }

    pub fn pull_ended(&self, stream: &str) {
        lock(&self.pulls).remove(stream);
    }

    /// The pulls under way: (stream, node), the ones `still_pulled` confirms.
    pub fn pulls(&self, still_pulled: impl Fn(&str) -> bool) -> Vec<directory::Pull> {
        let mut pulls = lock(&self.pulls);
        pulls.retain(|stream, _| still_pulled(stream));
        let mut list: Vec<directory::Pull> = pulls
            .iter()
            .map(|(stream, from)| directory::Pull {
                stream: stream.clone(),
                from: from.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.stream.cmp(&b.stream));
        list
    }

    /// The cluster's lines of `/metrics`.
    pub fn write_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# TYPE corecast_cluster_directory_operations_total counter"
        );
        for (op, value) in [
            ("claim", load(&c.claims)),
            ("release", load(&c.releases)),
            ("lookup", load(&c.lookups)),
            ("heartbeat", load(&c.heartbeats)),
        ] {
            let _ = writeln!(
                out,
                "corecast_cluster_directory_operations_total{{op=\"{op}\"}} {value}"
            );
        }
        for (metric, kind, value) in [
            (
                "corecast_cluster_redis_errors_total",
                "counter",
                load(&c.redis_errors),
            ),
            (
                "corecast_cluster_redis_reachable",
                "gauge",
                self.is_reachable() as u64,
            ),
            (
                "corecast_cluster_claims_refused_total",
                "counter",
                load(&c.claims_refused),
            ),
            (
                "corecast_cluster_pulls_started_total",
                "counter",
                load(&c.pulls_started),
            ),
            (
                "corecast_cluster_pulls",
                "gauge",
                lock(&self.pulls).len() as u64,
            ),
            (
                "corecast_cluster_redirects_total",
                "counter",
                load(&c.redirects),
            ),
            (
                "corecast_cluster_unavailable_total",
                "counter",
                load(&c.unavailable),
            ),
            (
                "corecast_cluster_stream_conflicts_total",
                "counter",
                load(&c.conflicts),
            ),
        ] {
            let _ = writeln!(out, "# TYPE {metric} {kind}\n{metric} {value}");
        }
    }
}

/// `EVAL script 1 key node ttl`.
fn eval(script: &str, key: &str, node: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script)
        .arg(1)
        .arg(key)
        .arg(node)
        .arg(TTL.as_millis() as u64);
    cmd
}

/// A command or a pipeline, run on the connection.
trait Query {
    fn query<'a, T: redis::FromRedisValue + 'static>(
        &'a mut self,
        connection: &'a mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send + 'a;
}

impl Query for redis::Cmd {
    fn query<'a, T: redis::FromRedisValue + 'static>(
        &'a mut self,
        connection: &'a mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send + 'a {
        self.query_async(connection)
    }
}

impl Query for redis::Pipeline {
    fn query<'a, T: redis::FromRedisValue + 'static>(
        &'a mut self,
        connection: &'a mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send + 'a {
        self.query_async(connection)
    }
}
