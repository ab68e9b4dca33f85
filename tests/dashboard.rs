//! The operator's dashboard in a real headless Chromium, against a real relay with two workers
//! while corecast's own client publishes two streams with players on both workers: the page
//! shows both streams with their player counts, both workers' rows with non-zero rates, and a
//! drawn latency chart; "watch" plays a stream from the page; "end" on a player ends that
//! session. The test leaves a screenshot of the dashboard under load at
//! `target/dashboard.png`; with `CORECAST_UPDATE_DOCS=1` it also replaces the README's
//! `docs/dashboard.png`. Needs Debian's `chromium` and `chromium-driver`, as `tests/browser.rs` does.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::chromium::Chromium;
use common::live::LiveStream;
use common::{Relay, media_range};
use corecast::client::{self, ClientOptions, Role, Transport};
use fantoccini::Locator;
use serde_json::{Value, json};
use webrtc_dtls::crypto::Certificate;

/// The suite's Chromium (`common::chromium`), with a window large enough for the whole
/// dashboard in one screenshot, and this file's page helpers.
type Browser = Chromium;

impl Chromium {
    async fn start() -> Browser {
        Chromium::launch(&["--window-size=1400,1250", "--force-device-scale-factor=1"]).await
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` in the page: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
    }
}

/// What the dashboard shows, read from its DOM.
const READ_PAGE: &str = r##"
const all = (css) => [...document.querySelectorAll(css)];
return {
  polls: Number(document.body.dataset.polls || 0),
  error: document.getElementById("error").textContent,
  streams: all("tr.stream").map((r) => ({
    stream: r.dataset.stream,
    players: Number(r.dataset.players),
    players_cell: r.querySelector(".players").textContent.trim(),
    in_bps: Number(r.dataset.inBps || 0),
  })),
  players: all("tr.player").map((r) => Number(r.dataset.session)),
  workers: all("#workers tr").map((r) => ({
    worker: Number(r.dataset.worker),
    rx_bps: Number(r.dataset.rxBps || 0),
    tx_bps: Number(r.dataset.txBps || 0),
    forwarded_pps: Number(r.dataset.forwardedPps || 0),
  })),
  chart_drawn: document.getElementById("latency-chart").dataset.drawn === "true",
  curves: all("#latency-chart polyline").map((p) => ({
    series: p.dataset.series,
    points: p.getAttribute("points").trim().split(/\s+/).length,
  })),
  latency_text: document.getElementById("latency-text").textContent,
};
"##;

/// Reads the page until `done` holds, or fails after `within` with what it showed last.
async fn page_until(
    browser: &Browser,
    relay: &Relay,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let page = browser.call(READ_PAGE, vec![]).await;
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not show {what} within {within:?}: {page:#}\n/api/dashboard: {}\nrelay log:\n{}",
            common::http("GET", &relay.url("/api/dashboard"), None, "").body,
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn streams(relay: &Relay) -> Value {
    serde_json::from_str(&common::http("GET", &relay.url("/api/streams"), None, "").body).unwrap()
}

fn player_sessions(streams: &Value, stream: &str) -> Vec<(u64, u64)> {
    streams
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stream"] == stream)
        .flat_map(|s| s["players"].as_array().unwrap())
        .map(|p| {
            (
                p["session"].as_u64().unwrap(),
                p["worker"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A player of `stream` that only keeps its session up.
async fn extra_player(relay: &Relay, stream: &str, certificate: &Certificate) -> client::Session {
    let options = ClientOptions::new(
        relay.url(&format!("/whep/{stream}")),
        Role::Play,
        Transport::Udp,
        certificate,
    );
    client::connect(&options, Box::new(|_| {}))
        .await
        .unwrap_or_else(|e| panic!("an extra player of {stream} connects: {e}"))
}

fn session_id(session: &client::Session) -> u64 {
    session
        .location
        .as_deref()
        .and_then(|l| corecast::control::resource::parse(l.rsplit('/').next()?))
        .map(|(id, _)| id)
        .expect("the session's Location is /session/{id}-{key}")
}

async fn dashboard_under_load() {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &media_range(16)),
    ]);
    // Each live stream is a publisher sending 100 packets/s and one player; sessions go to the
    // least loaded worker, so the extra players below spread both streams over both workers.
    let alpha = LiveStream::start(&relay, "alpha").await;
    let beta = LiveStream::start(&relay, "beta").await;
    let certificate = Certificate::generate_self_signed(vec!["dashboard".into()]).unwrap();
    let alpha_extra = extra_player(&relay, "alpha", &certificate).await;
    let beta_extras = [
        extra_player(&relay, "beta", &certificate).await,
        extra_player(&relay, "beta", &certificate).await,
    ];
    let listed = streams(&relay);
    let player_workers: std::collections::BTreeSet<u64> = ["alpha", "beta"]
        .iter()
        .flat_map(|s| player_sessions(&listed, s))
        .map(|(_, worker)| worker)
        .collect();
    assert_eq!(
        player_workers,
        [0, 1].into(),
        "players on both workers: {listed:#}"
    );

    let browser = Browser::start().await;
    browser
        .client
        .goto(&relay.url("/dashboard"))
        .await
        .expect("loading the dashboard");

    // Two polls at least: rates need two readings.
    let page = page_until(
        &browser,
        &relay,
        Duration::from_secs(10),
        "both streams, both workers' rates and the latency chart",
        |p| {
            let stream = |name: &str| {
                p["streams"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["stream"] == name)
                    .cloned()
            };
            let workers = p["workers"].as_array().unwrap();
            let sending = |s: &Value| s["in_bps"].as_f64().unwrap() > 0.0;
            stream("alpha").is_some_and(|s| s["players"] == 2 && sending(&s))
                && stream("beta").is_some_and(|s| s["players"] == 3 && sending(&s))
                && workers.len() == 2
                && workers.iter().all(|w| {
                    w["rx_bps"].as_f64().unwrap() > 0.0 && w["tx_bps"].as_f64().unwrap() > 0.0
                })
                && p["chart_drawn"] == true
        },
    )
    .await;
    assert_eq!(page["error"], "", "{page:#}");
    for (name, players) in [("alpha", "2"), ("beta", "3")] {
        let row = page["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stream"] == name)
            .unwrap();
        assert_eq!(row["players_cell"], players, "{page:#}");
    }
    assert_eq!(page["players"].as_array().unwrap().len(), 5, "{page:#}");
    let workers: Vec<u64> = page["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(workers, [0, 1], "{page:#}");
    // Each stream is 100 packets/s of 600 bytes (~0.5 Mbit/s) in, and out once per player:
    // both workers forward.
    assert!(
        page["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["forwarded_pps"].as_f64().unwrap() > 50.0),
        "{page:#}"
    );
    let since_start = page["curves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["series"] == "since-start")
        .unwrap_or_else(|| panic!("no since-start curve: {page:#}"));
    assert!(since_start["points"].as_u64().unwrap() >= 2, "{page:#}");
    assert!(
        page["latency_text"].as_str().unwrap().contains("p99"),
        "{page:#}"
    );

    // The README's picture of the dashboard under load.
    let png = browser.client.screenshot().await.expect("a screenshot");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("target/dashboard.png"), &png).unwrap();
    if std::env::var_os("CORECAST_UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/dashboard.png"), &png).unwrap();
    }

    // "watch" plays beta from the page: a fourth player whose session connects. Chromium
    // gathers candidates for a page without media permission only on the default route's
    // interface, and this namespace has no route but loopback: a grant of the fake
    // microphone lets it use loopback, as a real machine's default route would.
    browser
        .call(
            "const m = await navigator.mediaDevices.getUserMedia({ audio: true }); \
             m.getTracks().forEach((t) => t.stop()); return true;",
            vec![],
        )
        .await;
    browser
        .click(r#"button[data-action="watch"][data-stream="beta"]"#)
        .await;
    let connected_players = |name: &str| {
        streams(&relay)
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["stream"] == name)
            .flat_map(|s| s["players"].as_array().unwrap().clone())
            .filter(|p| p["state"] == "connected")
            .count()
    };
    assert!(
        common::eventually(Duration::from_secs(10), || connected_players("beta") == 4).await,
        "the page's player did not connect: {:#}\n{}",
        streams(&relay),
        relay.log()
    );
    browser.click("#player-close").await;
    assert!(
        common::eventually(Duration::from_secs(5), || player_sessions(
            &streams(&relay),
            "beta"
        )
        .len()
            == 3)
        .await,
        "closing the page's player left its session: {:#}",
        streams(&relay)
    );

    // "end" on a player ends that session: gone from /api/streams, and from the page.
    let ended = session_id(&alpha_extra);
    browser
        .click(&format!(
            r#"button[data-action="end-session"][data-session="{ended}"]"#
        ))
        .await;
    let gone = || {
        !player_sessions(&streams(&relay), "alpha")
            .iter()
            .any(|&(s, _)| s == ended)
    };
    assert!(
        common::eventually(Duration::from_secs(5), gone).await,
        "session {ended} is still listed: {:#}",
        streams(&relay)
    );
    page_until(
        &browser,
        &relay,
        Duration::from_secs(5),
        "the ended session gone",
        |p| {
            !p["players"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s.as_u64() == Some(ended))
        },
    )
    .await;
    assert_eq!(player_sessions(&streams(&relay), "alpha").len(), 1);

    // The publish/play page lists the live streams to pick from.
    browser
        .client
        .goto(&relay.url("/"))
        .await
        .expect("loading the page");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = browser
            .call("return [...document.querySelectorAll('#live-streams button')].map((b) => b.dataset.stream);", vec![])
            .await;
        if listed == json!(["alpha", "beta"]) {
            break;
        }
        assert!(Instant::now() < deadline, "the page lists {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    browser.close().await;
    for player in beta_extras {
        player.close().await;
    }
    alpha_extra.close().await;
    // Watching, ending and polling cost the live streams' own players nothing.
    for (name, live) in [("alpha", alpha), ("beta", beta)] {
        let delivery = live.finish().await;
        assert_eq!(delivery.received, delivery.sent, "{name}: {delivery:?}");
    }
}

#[test]
fn dashboard_shows_streams_workers_and_latency_and_ends_a_session() {
    if common::in_private_network("dashboard_shows_streams_workers_and_latency_and_ends_a_session")
    {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(dashboard_under_load());
}
