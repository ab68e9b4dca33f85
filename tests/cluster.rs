//! A cluster of real relay processes sharing one real Redis (Debian's `redis-server`, started
//! by the tests on a loopback port): streams claimed across nodes (409), pulled by the node a
//! player asks (one pull per stream per node), players redirected from a full node (307) and
//! followed by the library's client; Redis stopped and started again; a node killed with
//! SIGKILL. The browser test at the end has headless Chromium publish on one node and play
//! from two others.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::chromium::Chromium;
use common::redis::RedisServer;
use common::{CHROME_PLAY_OFFER, CHROME_PUBLISH_OFFER, Relay, http, media_range};
use corecast::client::{self, ClientOptions, Incoming, Role, Transport};
use serde_json::{Value, json};
use webrtc_dtls::crypto::Certificate;

/// A node `id` of the cluster on `redis`, with `extra` settings.
fn node(redis: &RedisServer, id: &str, extra: &[(&str, &str)]) -> Relay {
    let range = media_range(16);
    let url = redis.url();
    let mut env = vec![
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", range.as_str()),
        ("CORECAST_CLUSTER_REDIS", url.as_str()),
        ("CORECAST_CLUSTER_NODE_ID", id),
    ];
    env.extend_from_slice(extra);
    Relay::start(&env)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn cluster(relay: &Relay) -> Value {
    json_of(&http("GET", &relay.url("/api/cluster"), None, "").body)
}

/// The ids of the live nodes `/api/cluster` lists.
fn node_ids(view: &Value) -> Vec<String> {
    view["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `(stream, from)` of each pull node `id` reports.
fn pulls_of(view: &Value, id: &str) -> Vec<(String, String)> {
    view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["id"] == id)
        .flat_map(|n| n["pulls"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            (
                p["stream"].as_str().unwrap_or("").to_string(),
                p["from"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn holder(view: &Value, stream: &str) -> Option<String> {
    view["streams"]
        .as_array()?
        .iter()
        .find(|s| s["stream"] == stream)
        .and_then(|s| s["node"].as_str().map(str::to_string))
}

async fn wait_until(what: &str, within: Duration, logs: &[&Relay], done: impl FnMut() -> bool) {
    if !common::eventually(within, done).await {
        let logs: Vec<String> = logs.iter().map(|r| r.log()).collect();
        panic!(
            "timed out waiting for {what}; logs:\n{}",
            logs.join("\n----\n")
        );
    }
}

fn options(url: String, role: Role, certificate: &Certificate) -> ClientOptions {
    ClientOptions::new(url, role, Transport::Udp, certificate)
}

/// Publishes `stream` at `url` and sends a 30 fps video packet train from a task.
async fn publish(url: String, certificate: &Certificate) -> tokio::task::JoinHandle<()> {
    let mut session = client::connect(&options(url, Role::Publish, certificate), Box::new(|_| {}))
        .await
        .expect("publisher connects");
    let pt = session
        .negotiated
        .video_payload_type
        .expect("video negotiated");
    let ssrc = session.video_ssrc;
    tokio::spawn(async move {
        let mut seq = 0u16;
        loop {
            let mut p = vec![0x80, pt | 0x80];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(seq as u32 * 3000).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.resize(500, 7);
            let _ = session.send_rtp(&p).await;
            seq = seq.wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(33)).await;
        }
    })
}

/// Plays `url` (following redirects) and counts the RTP packets that arrive.
async fn play(url: String, certificate: &Certificate) -> (client::Session, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let session = client::connect(
        &options(url, Role::Play, certificate),
        Box::new(move |incoming| {
            if let Incoming::Rtp(_) = incoming {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }),
    )
    .await
    .expect("player connects");
    (session, received)
}

/// Whether `received` grows by more than 20 packets (of 30 a second) within 3 s.
async fn flowing(received: &AtomicU64) -> bool {
    let before = received.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if received.load(Ordering::Relaxed) > before + 20 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_claim_streams_pull_them_and_redirect_players_from_a_full_node() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", &[("CORECAST_CLUSTER_MAX_PLAYERS", "1")]);
    let b = node(&redis, "b", &[]);
    let certificate = Certificate::generate_self_signed(vec!["test".into()]).unwrap();
    wait_until(
        "both nodes in the directory",
        Duration::from_secs(10),
        &[&a, &b],
        || node_ids(&cluster(&b)) == ["a", "b"],
    )
    .await;

    let _publishing = publish(a.url("/whip/cam"), &certificate).await;
    let view = cluster(&b);
    assert_eq!(holder(&view, "cam").as_deref(), Some("a"), "{view:#}");

    // The same name on another node: 409, naming the node that has it.
    let twice = http(
        "POST",
        &b.url("/whip/cam"),
        Some("application/sdp"),
        CHROME_PUBLISH_OFFER,
    );
    assert_eq!(twice.status, 409, "{}", twice.body);
    assert!(twice.body.contains("node `a`"), "{}", twice.body);

    // A player on A (room for one) plays there; a second is sent to B with a 307.
    let (_first, first_received) = play(a.url("/whep/cam"), &certificate).await;
    assert!(
        flowing(&first_received).await,
        "the first player on A gets nothing"
    );
    let full = http(
        "POST",
        &a.url("/whep/cam"),
        Some("application/sdp"),
        CHROME_PLAY_OFFER,
    );
    assert_eq!(full.status, 307, "{}", full.body);
    assert_eq!(full.header("location"), Some(b.url("/whep/cam").as_str()));
    assert!(full.body.contains("at capacity"), "{}", full.body);
    // What the player asked for goes along.
    let capped = http(
        "POST",
        &a.url("/whep/cam?max_kbps=500"),
        Some("application/sdp"),
        CHROME_PLAY_OFFER,
    );
    assert_eq!(capped.status, 307, "{}", capped.body);
    assert_eq!(
        capped.header("location"),
        Some(b.url("/whep/cam?max_kbps=500").as_str())
    );

    // The library's client follows the redirect; B pulls the stream from A.
    let (_second, second_received) = play(a.url("/whep/cam"), &certificate).await;
    assert!(
        flowing(&second_received).await,
        "the redirected player on B gets nothing:\n{}",
        b.log()
    );
    // A third player asking B directly shares B's pull.
    let (_third, third_received) = play(b.url("/whep/cam"), &certificate).await;
    assert!(
        flowing(&third_received).await,
        "the second player on B gets nothing"
    );
    let record = |view: &Value, id: &str| -> Value {
        view["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    wait_until(
        "B's pull and players in the directory",
        Duration::from_secs(5),
        &[&a, &b],
        || {
            let view = cluster(&a);
            pulls_of(&view, "b") == [("cam".to_string(), "a".to_string())]
                && record(&view, "b")["players"] == 2
        },
    )
    .await;
    let view = cluster(&a);
    assert!(pulls_of(&view, "a").is_empty(), "{view:#}");
    assert_eq!(record(&view, "b")["url"], b.http.as_str(), "{view:#}");
    assert_eq!(record(&view, "a")["streams"], json!(["cam"]), "{view:#}");
    assert_eq!(record(&view, "a")["max_players"], 1, "{view:#}");
    assert_eq!(b.metric("corecast_cluster_pulls_started_total"), 1);
    assert_eq!(b.metric("corecast_cluster_pulls"), 1);
    assert_eq!(a.metric("corecast_cluster_redirects_total"), 3);
    assert!(a.metric("corecast_cluster_directory_operations_total{op=\"heartbeat\"}") > 0);

    // A stream no node has: 404 that says so.
    let none = http(
        "POST",
        &b.url("/whep/nobody"),
        Some("application/sdp"),
        CHROME_PLAY_OFFER,
    );
    assert_eq!(none.status, 404, "{}", none.body);
    assert!(
        none.body.contains("not being published on any node"),
        "{}",
        none.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_local_streams_flowing_and_a_killed_node_leaves_the_directory() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let certificate = Certificate::generate_self_signed(vec!["test".into()]).unwrap();
    wait_until(
        "both nodes in the directory",
        Duration::from_secs(10),
        &[&a, &b],
        || node_ids(&cluster(&b)) == ["a", "b"],
    )
    .await;
    let _publishing = publish(a.url("/whip/cam"), &certificate).await;
    let (player, received) = play(b.url("/whep/cam"), &certificate).await;
    assert!(
        flowing(&received).await,
        "the player on B gets nothing:\n{}",
        b.log()
    );

    // Redis goes away: what flows keeps flowing; what needs the directory is a clear 503.
    redis.stop();
    wait_until("A to notice", Duration::from_secs(10), &[&a], || {
        a.metric("corecast_cluster_redis_reachable") == 0
    })
    .await;
    assert!(
        flowing(&received).await,
        "the pulled stream stopped with Redis"
    );
    let refused = http(
        "POST",
        &a.url("/whip/cam2"),
        Some("application/sdp"),
        CHROME_PUBLISH_OFFER,
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("unreachable"), "{}", refused.body);
    let unknown = http(
        "POST",
        &b.url("/whep/other"),
        Some("application/sdp"),
        CHROME_PLAY_OFFER,
    );
    assert_eq!(unknown.status, 503, "{}", unknown.body);
    // A stream B has already plays without the directory.
    let (_local, local_received) = play(b.url("/whep/cam"), &certificate).await;
    assert!(flowing(&local_received).await);
    assert_eq!(http("GET", &a.url("/api/cluster"), None, "").status, 503);
    assert!(a.metric("corecast_cluster_redis_errors_total") > 0);
    assert!(a.metric("corecast_cluster_unavailable_total") >= 1);

    // Redis comes back empty: the nodes register again and A claims its stream anew.
    redis.resume();
    wait_until(
        "the directory to recover",
        Duration::from_secs(10),
        &[&a, &b],
        || {
            let view = cluster(&b);
            node_ids(&view) == ["a", "b"] && holder(&view, "cam").as_deref() == Some("a")
        },
    )
    .await;
    assert!(flowing(&received).await);
    let _second = publish(a.url("/whip/cam2"), &certificate).await;
    assert_eq!(a.metric("corecast_cluster_redis_reachable"), 1);

    // A is killed: its keys expire within the TTL, and B's pull (and its players) end.
    let killed_at = Instant::now();
    drop(a);
    wait_until(
        "A's records to expire",
        Duration::from_secs(8),
        &[&b],
        || {
            let view = cluster(&b);
            node_ids(&view) == ["b"]
                && holder(&view, "cam").is_none()
                && holder(&view, "cam2").is_none()
        },
    )
    .await;
    assert!(killed_at.elapsed() < Duration::from_secs(8));
    let ended = tokio::time::timeout(Duration::from_secs(15), player.closed()).await;
    assert!(
        ended.is_ok(),
        "B kept its players of a stream whose node died:\n{}",
        b.log()
    );
    wait_until(
        "B to drop the stream",
        Duration::from_secs(5),
        &[&b],
        || http("GET", &b.url("/api/streams"), None, "").body == "[]",
    )
    .await;
    assert_eq!(b.metric("corecast_cluster_pulls"), 0);
    let gone = http(
        "POST",
        &b.url("/whep/cam"),
        Some("application/sdp"),
        CHROME_PLAY_OFFER,
    );
    assert_eq!(gone.status, 404, "{}", gone.body);
}

// ---- Chromium: a publisher on A, players on B and C ----

impl Chromium {
    async fn stats(&self, id: &Value) -> Value {
        self.call(
            "return await corecast.stats(arguments[0])",
            vec![id.clone()],
        )
        .await
    }

    async fn start_session(&self, kind: &str, stream: &str, server: &str) -> Value {
        self.call(
            &format!("return await corecast.{kind}(arguments[0], arguments[1])"),
            vec![json!(stream), json!({ "server": server })],
        )
        .await
    }

    /// Waits until `check` holds for the stats of every one of `ids`.
    async fn wait_stats(
        &self,
        ids: &[&Value],
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let mut all = Vec::new();
            for id in ids {
                all.push(self.stats(id).await);
            }
            if all.iter().all(&check) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn frames(&self, id: &Value) -> u64 {
        self.stats(id).await["videoFramesDecoded"]
            .as_u64()
            .unwrap_or(0)
    }
}

fn decoding(s: &Value) -> bool {
    s["error"].is_null()
        && s["videoFramesDecoded"].as_u64().unwrap_or(0) > 30
        && s["audioPacketsReceived"].as_u64().unwrap_or(0) > 0
}

/// Whether the player `id` decodes more than 10 more frames within 3 s.
async fn keeps_decoding(browser: &Chromium, id: &Value) -> bool {
    let before = browser.frames(id).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if browser.frames(id).await > before + 10 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[test]
fn chromium_publishes_on_one_node_and_plays_from_two_others_through_failures() {
    let test = "chromium_publishes_on_one_node_and_plays_from_two_others_through_failures";
    if common::in_private_network(test) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut redis = RedisServer::start();
        let a = node(&redis, "a", &[]);
        let b = node(&redis, "b", &[]);
        // C takes one player: the page's second player there is sent on.
        let c = node(&redis, "c", &[("CORECAST_CLUSTER_MAX_PLAYERS", "1")]);
        let all = [&a, &b, &c];
        wait_until(
            "three nodes in the directory",
            Duration::from_secs(10),
            &all,
            || node_ids(&cluster(&a)) == ["a", "b", "c"],
        )
        .await;
        let browser = Chromium::launch(&[]).await;
        browser
            .client
            .goto(&a.url("/"))
            .await
            .expect("loading the page");
        let publisher = browser.start_session("publish", "show", &a.http).await;
        browser
            .wait_stats(&[&publisher], "the publisher to send", |s| {
                s["error"].is_null() && s["videoFramesSent"].as_u64().unwrap_or(0) > 0
            })
            .await;
        let on_b = browser.start_session("play", "show", &b.http).await;
        let on_c = browser.start_session("play", "show", &c.http).await;
        browser
            .wait_stats(
                &[&on_b, &on_c],
                "the players on B and C to decode",
                decoding,
            )
            .await;

        // One pull into each of B and C, from A; the stream is A's.
        let view = cluster(&a);
        assert_eq!(holder(&view, "show").as_deref(), Some("a"), "{view:#}");
        for id in ["b", "c"] {
            assert_eq!(
                pulls_of(&view, id),
                [("show".to_string(), "a".to_string())],
                "{view:#}"
            );
        }
        assert!(pulls_of(&view, "a").is_empty(), "{view:#}");
        // C is full now: the page's next player there follows the 307 to the least loaded
        // node with room (B: one player, against A's two pulls) and plays.
        let redirected = browser.start_session("play", "show", &c.http).await;
        browser
            .wait_stats(&[&redirected], "the redirected player to decode", decoding)
            .await;
        assert_eq!(c.metric("corecast_cluster_redirects_total"), 1);
        assert_eq!(
            b.metric("corecast_cluster_pulls_started_total"),
            1,
            "B's pull is shared"
        );
        // A second publisher of the name on C is refused.
        let twice = http(
            "POST",
            &c.url("/whip/show"),
            Some("application/sdp"),
            CHROME_PUBLISH_OFFER,
        );
        assert_eq!(twice.status, 409, "{}", twice.body);

        // B is killed: its record expires within the TTL; C's player plays on.
        drop(b);
        wait_until(
            "B's record to expire",
            Duration::from_secs(8),
            &[&a, &c],
            || node_ids(&cluster(&a)) == ["a", "c"],
        )
        .await;
        assert!(
            keeps_decoding(&browser, &on_c).await,
            "C's player stopped when B died"
        );

        // Redis stops: the stream keeps flowing to C; Redis returns: the directory recovers.
        redis.stop();
        wait_until(
            "the nodes to notice",
            Duration::from_secs(10),
            &[&a, &c],
            || a.metric("corecast_cluster_redis_reachable") == 0,
        )
        .await;
        assert!(
            keeps_decoding(&browser, &on_c).await,
            "C's player stopped with Redis"
        );
        redis.resume();
        wait_until(
            "the directory to recover",
            Duration::from_secs(10),
            &[&a, &c],
            || {
                let view = cluster(&c);
                node_ids(&view) == ["a", "c"]
                    && holder(&view, "show").as_deref() == Some("a")
                    && pulls_of(&view, "c") == [("show".to_string(), "a".to_string())]
            },
        )
        .await;
        assert!(
            keeps_decoding(&browser, &on_c).await,
            "C's player stopped after Redis returned"
        );
        browser.close().await;
    });
}
