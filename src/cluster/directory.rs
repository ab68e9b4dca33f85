//! The cluster's decisions, without I/O: what a node's record says, where a player goes (here,
//! a pull from the stream's node, or a redirect to a node with room), and a node's load from
//! two readings of its counters. The Redis side (`store`) only fetches what these need.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a node writes into the directory at each heartbeat (`corecast:node:{id}`), and what
/// `GET /api/cluster` shows of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// The base URL other nodes and redirected clients reach it at.
    pub url: String,
    pub sessions: usize,
    pub players: usize,
    /// Players it takes before it redirects new ones.
    pub max_players: usize,
    /// RTP packets forwarded to players per second, over the last heartbeat.
    pub forwarded_per_s: f64,
    /// CPU time used per wall second over the last heartbeat (1.0: one core busy).
    pub cpu: f64,
    /// Streams published on this node.
    pub streams: Vec<String>,
    /// Streams this node pulls from others for its players.
    pub pulls: Vec<Pull>,
}

/// One stream a node pulls from another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    pub stream: String,
    pub from: String,
}

impl NodeRecord {
    /// Whether it takes no more players.
    pub fn is_full(&self) -> bool {
        self.players >= self.max_players
    }

    /// The share of its capacity in use (0 to 1 and beyond), for ranking nodes.
    fn load(&self) -> f64 {
        self.players as f64 / self.max_players.max(1) as f64
    }

    /// Whether it has `stream` now, published or pulled.
    pub fn has_stream(&self, stream: &str) -> bool {
        self.streams.iter().any(|s| s == stream) || self.pulls.iter().any(|p| p.stream == stream)
    }
}

/// What a play request needs, before any directory look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayStep {
    /// Play the local stream (or answer its 404): nothing to ask the directory.
    Here,
    /// This node is full: find a node with room in the directory.
    Redirect,
    /// The stream is not here: ask the directory which node has it, then pull it.
    FindHolder,
}

/// The first step of a play request on a node of a cluster. A request from another node (a
/// pull) is never redirected nor pulled further: it plays what is here or gets its 404, so
/// that pulls go one hop and never loop.
pub fn play_step(from_node: bool, full: bool, here: bool) -> PlayStep {
    match (from_node, full, here) {
        (true, _, _) => PlayStep::Here,
        (false, true, _) => PlayStep::Redirect,
        (false, false, true) => PlayStep::Here,
        (false, false, false) => PlayStep::FindHolder,
    }
}

/// The node a full node sends a player of `stream` to: the least loaded other node with room
/// (every node can pull any stream); among equally loaded ones, one that has the stream already
/// (its pull is paid for), then by id so the choice is stable.
pub fn redirect_target<'a>(
    me: &str,
    stream: &str,
    nodes: &'a [NodeRecord],
) -> Option<&'a NodeRecord> {
    nodes
        .iter()
        .filter(|n| n.id != me && !n.is_full())
        .min_by(|a, b| {
            a.load()
                .total_cmp(&b.load())
                .then_with(|| b.has_stream(stream).cmp(&a.has_stream(stream)))
                .then_with(|| a.id.cmp(&b.id))
        })
}

/// Where a stream this node does not have comes from: its holder's record, or why there is
/// none to pull from (the 404's message).
pub fn pull_source<'a>(
    me: &str,
    stream: &str,
    holder: Option<&str>,
    holder_record: Option<&'a NodeRecord>,
) -> Result<&'a NodeRecord, String> {
    match (holder, holder_record) {
        (None, _) => Err(format!(
            "stream `{stream}` is not being published on any node of the cluster"
        )),
        (Some(node), _) if node == me => Err(format!(
            "stream `{stream}` is not being published (its directory entry names this node, \
             which no longer has it)"
        )),
        (Some(node), None) => Err(format!(
            "stream `{stream}` was published on node `{node}`, which stopped answering"
        )),
        (Some(_), Some(record)) => Ok(record),
    }
}

/// Turns two readings of a node's counters into rates for its heartbeat.
#[derive(Debug, Default)]
pub struct LoadMeter {
    last: Option<(Instant, u64, Duration)>,
}

impl LoadMeter {
    /// Packets forwarded per second and CPU seconds per second since the last reading, from
    /// the totals at `now` (0 for the first reading).
    pub fn sample(&mut self, now: Instant, forwarded: u64, cpu: Duration) -> (f64, f64) {
        let rates = match self.last {
            Some((then, before, cpu_before)) if now > then => {
                let wall = (now - then).as_secs_f64();
                (
                    forwarded.saturating_sub(before) as f64 / wall,
                    cpu.saturating_sub(cpu_before).as_secs_f64() / wall,
                )
            }
            _ => (0.0, 0.0),
        };
        self.last = Some((now, forwarded, cpu));
        rates
    }
}

/// The Redis key of a node's record.
pub fn node_key(id: &str) -> String {
    format!("corecast:node:{id}")
}

/// The Redis key of a stream's holder.
pub fn stream_key(stream: &str) -> String {
    format!("corecast:stream:{stream}")
}

/// The stream name in a stream key.
pub fn stream_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("corecast:stream:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, players: usize, max: usize, streams: &[&str], pulls: &[&str]) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: format!("http://{id}:8080"),
            sessions: players,
            players,
            max_players: max,
            forwarded_per_s: 0.0,
            cpu: 0.0,
            streams: streams.iter().map(|s| s.to_string()).collect(),
            pulls: pulls
                .iter()
                .map(|s| Pull {
                    stream: s.to_string(),
                    from: "x".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_pull_from_another_node_plays_here_even_on_a_full_node() {
        assert_eq!(play_step(true, true, false), PlayStep::Here);
        assert_eq!(play_step(true, false, false), PlayStep::Here);
    }

    #[test]
    fn a_full_node_redirects_and_a_node_with_room_plays_or_finds_the_holder() {
        assert_eq!(play_step(false, true, true), PlayStep::Redirect);
        assert_eq!(play_step(false, false, true), PlayStep::Here);
        assert_eq!(play_step(false, false, false), PlayStep::FindHolder);
    }

    #[test]
    fn redirects_go_to_the_least_loaded_other_node_with_room() {
        let nodes = [
            node("a", 10, 10, &["cam"], &[]),
            node("b", 6, 10, &[], &[]),
            node("c", 3, 10, &[], &[]),
            node("d", 10, 10, &[], &[]),
        ];
        assert_eq!(redirect_target("a", "cam", &nodes).unwrap().id, "c");
        // Load is a share of capacity: 30 of 100 is less loaded than 3 of 10.
        let nodes = [
            node("a", 10, 10, &[], &[]),
            node("b", 3, 10, &[], &[]),
            node("c", 20, 100, &[], &[]),
        ];
        assert_eq!(redirect_target("a", "cam", &nodes).unwrap().id, "c");
    }

    #[test]
    fn among_equal_loads_a_node_that_has_the_stream_wins() {
        let nodes = [
            node("a", 10, 10, &["cam"], &[]),
            node("b", 4, 10, &[], &[]),
            node("c", 4, 10, &[], &["cam"]),
        ];
        assert_eq!(redirect_target("a", "cam", &nodes).unwrap().id, "c");
        assert_eq!(redirect_target("a", "other", &nodes).unwrap().id, "b");
    }

    #[test]
    fn no_redirect_when_every_other_node_is_full_or_there_is_none() {
        let nodes = [node("a", 10, 10, &[], &[]), node("b", 10, 10, &[], &[])];
        assert!(redirect_target("a", "cam", &nodes).is_none());
        assert!(redirect_target("a", "cam", &nodes[..1]).is_none());
    }

    #[test]
    fn a_pull_needs_a_holder_that_is_alive_and_not_this_node() {
        let b = node("b", 0, 10, &["cam"], &[]);
        assert!(
            pull_source("a", "cam", None, None)
                .unwrap_err()
                .contains("not being published")
        );
        assert!(
            pull_source("a", "cam", Some("a"), None)
                .unwrap_err()
                .contains("names this node")
        );
        assert!(
            pull_source("a", "cam", Some("b"), None)
                .unwrap_err()
                .contains("stopped answering")
        );
        assert_eq!(
            pull_source("a", "cam", Some("b"), Some(&b)).unwrap().id,
            "b"
        );
    }

    #[test]
    fn load_meter_turns_totals_into_rates() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::default();
        assert_eq!(meter.sample(t0, 100, Duration::from_millis(50)), (0.0, 0.0));
        let (pps, cpu) = meter.sample(
            t0 + Duration::from_secs(2),
            2100,
            Duration::from_millis(1050),
        );
        assert_eq!(pps, 1000.0);
        assert!((cpu - 0.5).abs() < 1e-9);
        // Counters that went back (a restart) read as no progress, not as a huge rate.
        assert_eq!(
            meter.sample(t0 + Duration::from_secs(3), 10, Duration::ZERO),
            (0.0, 0.0)
        );
    }

    #[test]
    fn keys_name_nodes_and_streams() {
        assert_eq!(node_key("a"), "corecast:node:a");
        assert_eq!(stream_key("cam"), "corecast:stream:cam");
        assert_eq!(stream_of_key("corecast:stream:cam"), Some("cam"));
    }
}
