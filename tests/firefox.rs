//! Firefox beside Chromium: Debian's `firefox-esr`, headless, driven through WebDriver BiDi
//! (`common::firefox`), publishes its fake camera and microphone through WHIP and plays
//! through WHEP with `bundlePolicy` `max-bundle` (every section after the first offered with
//! port 0 and `a=bundle-only`) and `balanced`; a Chromium publisher plays in Firefox and a
//! Firefox publisher in Chromium. One test per transport, each with one relay and one of each
//! browser for all its cases. Needs Debian's `firefox-esr`, `chromium` and `chromium-driver`
//! (the README's test command installs them).

mod common;

use std::time::{Duration, Instant};

use common::Relay;
use common::chromium::Chromium;
use common::firefox::Firefox;
use serde_json::{Value, json};

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// A session on one of the two browsers, by the page's id for it.
#[derive(Clone, Copy)]
enum On {
    Firefox(u64),
    Chromium(u64),
}

/// The two browsers, both on the relay's page. Dropping it ends both: Chromium's session
/// (its browser; the driver goes with `Chromium`), and Firefox's process group.
struct Browsers {
    firefox: Firefox,
    chromium: Chromium,
    runtime: tokio::runtime::Runtime,
}

impl Browsers {
    fn open(relay: &Relay) -> Browsers {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut firefox = Firefox::launch();
        firefox.goto(&relay.url("/"));
        let chromium = runtime.block_on(async {
            let chromium = Chromium::launch(&[]).await;
            chromium
                .client
                .goto(&relay.url("/"))
                .await
                .expect("loading the page in Chromium");
            chromium
        });
        Browsers {
            firefox,
            chromium,
            runtime,
        }
    }

    fn chromium_call(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime.block_on(async {
            self.chromium
                .client
                .execute(script, args)
                .await
                .expect("script in Chromium's page")
        })
    }

    /// `corecast.publish` or `corecast.play` (`role`) of `stream` with `options`.
    fn start(&mut self, firefox: bool, role: &str, stream: &str, options: Value) -> On {
        let script = format!("return await corecast.{role}(arguments[0], arguments[1])");
        let args = vec![json!(stream), options];
        if firefox {
            On::Firefox(
                self.firefox
                    .call(&script, args)
                    .as_u64()
                    .expect("a session id"),
            )
        } else {
            On::Chromium(
                self.chromium_call(&script, args)
                    .as_u64()
                    .expect("a session id"),
            )
        }
    }

    fn stats(&mut self, session: On) -> Value {
        let script = "return await corecast.stats(arguments[0])";
        let mut stats = match session {
            On::Firefox(id) => self.firefox.call(script, vec![json!(id)]),
            On::Chromium(id) => self.chromium_call(script, vec![json!(id)]),
        };
        stats["browser"] = json!(match session {
            On::Firefox(_) => "firefox",
            On::Chromium(_) => "chromium",
        });
        stats
    }

    /// Polls the sessions' stats until `check` holds for every one, or panics with them and
    /// the relay's view after `timeout`.
    fn wait_for(
        &mut self,
        sessions: &[On],
        relay: &Relay,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all: Vec<Value> = sessions.iter().map(|s| self.stats(*s)).collect();
            if all.iter().all(&check) {
                return all;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}: {all:#?}\nstreams: {}\nrelay log:\n{}",
                    common::http("GET", &relay.url("/api/streams"), None, "").body,
                    relay.log()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Browsers {
    fn drop(&mut self) {
        let _ = self.runtime.block_on(self.chromium.client.clone().close());
    }
}

fn sending(s: &Value) -> bool {
    s["error"].is_null() && s["connectionState"] == "connected" && num(s, "videoFramesSent") > 0
}

fn decoding(s: &Value) -> bool {
    s["error"].is_null() && num(s, "videoFramesDecoded") > 30 && num(s, "audioPacketsReceived") > 20
}

/// Every case on one relay over `protocol`: Firefox publishing with each bundle policy and
/// playing with each, Chromium playing Firefox and Firefox playing Chromium.
fn firefox_and_chromium_over(protocol: &str) {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", &common::media_range(24)),
        ("CORECAST_MEDIA_PROTOCOL", protocol),
    ]);
    let mut browsers = Browsers::open(&relay);
    let max_bundle = json!({ "bundlePolicy": "max-bundle" });
    let balanced = json!({ "bundlePolicy": "balanced" });

    let publishers = [
        browsers.start(true, "publish", "fox-max", max_bundle.clone()),
        browsers.start(true, "publish", "fox-balanced", balanced.clone()),
        browsers.start(false, "publish", "chrome", json!({})),
    ];
    let sent = browsers.wait_for(&publishers, &relay, "the publishers to send", sending);
    // The relay took both tracks of each Firefox publisher: max-bundle's bundle-only video
    // section was accepted, not answered with port 0.
    let streams: Value =
        serde_json::from_str(&common::http("GET", &relay.url("/api/streams"), None, "").body)
            .unwrap();
    for name in ["fox-max", "fox-balanced"] {
        let stream = streams
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stream"] == name)
            .unwrap_or_else(|| panic!("{name} in {streams:#}"));
        let kinds: Vec<&str> = stream["tracks"]
            .as_array()
            .unwrap_or_else(|| panic!("tracks of {stream:#}"))
            .iter()
            .filter_map(|t| t["kind"].as_str())
            .collect();
        assert!(
            kinds.contains(&"audio") && kinds.contains(&"video"),
            "{name}: {stream:#}"
        );
    }

    let players = [
        browsers.start(true, "play", "fox-max", max_bundle.clone()),
        browsers.start(true, "play", "fox-balanced", balanced.clone()),
        browsers.start(true, "play", "chrome", max_bundle),
        browsers.start(true, "play", "chrome", balanced),
        browsers.start(false, "play", "fox-max", json!({})),
    ];
    let decoded = browsers.wait_for(&players, &relay, "every player to decode", decoding);
    for stats in sent.iter().chain(&decoded) {
        assert_eq!(stats["localProtocol"], protocol, "{stats:#}");
        assert_eq!(stats["remoteProtocol"], protocol, "{stats:#}");
    }
}

/// One pair of browsers at a time: each is a few hundred MB and two cores' worth of decoding.
static ONE_PAIR: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn firefox_publishes_and_plays_with_max_bundle_and_balanced_beside_chromium_over_udp() {
    let _one = ONE_PAIR.lock().unwrap_or_else(|p| p.into_inner());
    let test = "firefox_publishes_and_plays_with_max_bundle_and_balanced_beside_chromium_over_udp";
    if common::in_private_network(test) {
        return;
    }
    firefox_and_chromium_over("udp");
}

#[test]
fn firefox_publishes_and_plays_with_max_bundle_and_balanced_beside_chromium_over_ice_tcp() {
    let _one = ONE_PAIR.lock().unwrap_or_else(|p| p.into_inner());
    let test =
        "firefox_publishes_and_plays_with_max_bundle_and_balanced_beside_chromium_over_ice_tcp";
    if common::in_private_network(test) {
        return;
    }
    firefox_and_chromium_over("tcp");
}
