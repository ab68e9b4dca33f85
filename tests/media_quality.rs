//! Media quality on real networks, measured the way a user would see it: headless Chromium
//! publishes through WHIP and plays through WHEP, and the test reads Chromium's own getStats.
//!
//! - Through an impaired path: nftables drops a share of the media datagrams at random in each
//!   direction (3 %; `MEDIA_QUALITY_LOSS_PCT` overrides it, e.g. 0 to check the harness), and
//!   two players must keep decoding with no more than a second of freezes, which needs the
//!   relay to repair loss with NACKs and retransmissions both ways: the publisher must
//!   retransmit at least half as many packets as nftables dropped of its video. Toward the
//!   players the relay sends with UDP GSO (its default), and on loopback a GSO send crosses
//!   the hook whole, so a drop there takes one player's whole frame: bursts, not single
//!   packets.
//! - On a clean path the publisher's encoder ramps up (the relay feeds bandwidth back), and an
//!   operator's `media.max_publish_kbps` holds it below the cap (having ramped up to near it,
//!   so the feedback is shown to flow).
//!
//! Each test runs in a network namespace of its own (relay, Chromium and chromedriver all on
//! its loopback), so the nftables rules touch nothing else; the impaired one needs root and
//! Debian's `nftables` (tests/run installs it). The figures are printed (`--nocapture`): each
//! test prints closing `figures` lines for the README.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Relay;
use common::chromium::Chromium;
use common::netns::{in_network, nft, say};
use serde_json::{Value, json};

/// The relay's media ports in every test: the namespace is private, so a fixed range is free,
/// and the nftables rules match exactly these ports (signaling and chromedriver use TCP on
/// others, and Chromium's own UDP ports are ephemeral ones, above 32767).
const MEDIA_PORTS: &str = "31000-31063";

/// The share of media datagrams dropped in each direction, in percent. (The test's own
/// variables do not start with `CORECAST_`: the relay, which inherits the environment, would
/// refuse them as unknown keys.)
fn loss_pct() -> u32 {
    std::env::var("MEDIA_QUALITY_LOSS_PCT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Shell commands (run in the namespace before the test) that make the input hook drop
/// `pct` % of the datagrams from the media ports (relay to browser) and to them (browser to
/// relay), at random. On loopback every datagram crosses `input` once, after the sender's
/// `sendmsg` succeeded, as on a lossy network: a drop in the `output` hook would instead fail
/// the sender's `sendmsg` with EPERM, and Chromium sends such a datagram again, which hides
/// the loss from the receiver. Named counters around the drops say what they did: see
/// [`Impaired`].
fn impairment(pct: u32) -> String {
    let (nft, r) = (nft(), MEDIA_PORTS);
    // A rule's comment, which names its counter, comes last.
    let rule = |what: &str, verdict: &str, name: &str| {
        format!("{nft} add rule inet impair out {what} counter {verdict} comment {name}")
    };
    let drop = format!("numgen random mod 100 lt {pct}");
    [
        format!("{nft} add table inet impair"),
        format!(
            "{nft} add chain inet impair out \
             '{{ type filter hook input priority 0; policy accept; }}'"
        ),
        rule(&format!("udp sport {r}"), "", "to-browser"),
        rule(
            &format!("udp sport {r} {drop}"),
            "drop",
            "dropped-to-browser",
        ),
        rule(&format!("udp dport {r}"), "", "to-relay"),
        rule(
            &format!("udp dport {r} udp length gt 600"),
            "",
            "video-to-relay",
        ),
        rule(&format!("udp dport {r} {drop}"), "drop", "dropped-to-relay"),
        rule(
            &format!("udp dport {r} udp length gt 600"),
            "",
            "video-to-relay-delivered",
        ),
    ]
    .join(" && ")
}

/// What the impairment rules counted, in datagrams.
#[derive(Debug)]
struct Impaired {
    /// From the relay's media ports, and how many of them were dropped.
    to_browser: u64,
    dropped_to_browser: u64,
    /// To the relay's media ports, and how many of them were dropped.
    to_relay: u64,
    dropped_to_relay: u64,
    /// Datagrams over 600 bytes to the relay: publishers' video (players send only RTCP and
    /// STUN toward the relay, and audio packets are smaller), and how many were dropped.
    video_to_relay: u64,
    video_dropped_to_relay: u64,
}

fn impaired() -> Impaired {
    let out = Command::new(nft())
        .args(["-j", "list", "chain", "inet", "impair", "out"])
        .output()
        .expect("running nft");
    assert!(
        out.status.success(),
        "nft list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: Value = serde_json::from_slice(&out.stdout).expect("nft's JSON");
    let count = |name: &str| {
        listing["nftables"]
            .as_array()
            .expect("nftables array")
            .iter()
            .map(|item| &item["rule"])
            .filter(|rule| rule["comment"] == name)
            .find_map(|rule| {
                rule["expr"]
                    .as_array()?
                    .iter()
                    .find_map(|e| e["counter"]["packets"].as_u64())
            })
            .unwrap_or_else(|| panic!("no counter {name} in {listing}"))
    };
    let video_to_relay = count("video-to-relay");
    Impaired {
        to_browser: count("to-browser"),
        dropped_to_browser: count("dropped-to-browser"),
        to_relay: count("to-relay"),
        dropped_to_relay: count("dropped-to-relay"),
        video_to_relay,
        video_dropped_to_relay: video_to_relay - count("video-to-relay-delivered"),
    }
}

/// The page-side harness on `window.cc` (`common::chromium::PAGE_SESSIONS`): publish with
/// chosen camera constraints, play, and report the raw getStats of the video RTP streams.
const HARNESS: &str = r#"
window.mq = (() => {
  const { start, receive, sendCamera, session } = window.cc;
  const path = (endpoint, stream) => `/${endpoint}/${encodeURIComponent(stream)}`;
  function publish(stream, video) { return start(path("whip", stream), sendCamera(video)); }
  function play(stream) { return start(path("whep", stream), receive); }
  async function stats(id) {
    const s = session(id);
    const out = { error: s.error, connectionState: s.pc.connectionState };
    const report = await s.pc.getStats();
    report.forEach((r) => {
      if (r.kind === "video" && (r.type === "inbound-rtp" || r.type === "outbound-rtp")) {
        out[r.type] = JSON.parse(JSON.stringify(r));
      } else if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
        out.availableOutgoingBitrate = r.availableOutgoingBitrate;
        out.currentRoundTripTime = r.currentRoundTripTime;
      }
    });
    return out;
  }
  // The answer's video section, feedback and extension lines: what the relay negotiated.
  function negotiated(id) {
    const video = session(id).answer.split("m=video")[1] || "";
    return video.split("\r\n").filter((l) => /^a=(rtcp-fb|extmap|rtpmap|fmtp)/.test(l));
  }
  return { publish, play, stats, negotiated };
})();
return true;
"#;

/// The suite's Chromium (`common::chromium`), with this file's page helpers.
type Browser = Chromium;

impl Chromium {
    /// Headless Chromium on the relay's page with this file's harness.
    async fn start(relay: &Relay) -> Browser {
        Chromium::on_relay_page(&relay.url("/"), HARNESS).await
    }

    async fn stats(&self, id: &Value) -> Value {
        self.call("return await mq.stats(arguments[0])", vec![id.clone()])
            .await
    }

    /// Publishes `stream` from the fake camera at `width`x`height` and waits (up to 20 s)
    /// until it sends video.
    async fn publish(&self, relay: &Relay, stream: &str, width: u32, height: u32) -> Value {
        let video = json!({
            "width": { "ideal": width },
            "height": { "ideal": height },
            "frameRate": { "ideal": 30 },
        });
        let id = self
            .call(
                "return await mq.publish(arguments[0], arguments[1])",
                vec![json!(stream), video],
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.stats(&id).await;
            if s["error"].is_null()
                && s["connectionState"] == "connected"
                && num(&s["outbound-rtp"], "framesSent") > 0.0
            {
                return id;
            }
            assert!(
                Instant::now() < deadline && s["error"].is_null(),
                "the publisher did not start sending: {s:#}\nrelay log:\n{}",
                relay.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn play(&self, stream: &str) -> Value {
        let id = self
            .call("return await mq.play(arguments[0])", vec![json!(stream)])
            .await;
        let s = self.stats(&id).await;
        assert!(s["error"].is_null(), "playing {stream}: {s:#}");
        id
    }

    /// The feedback, extension and codec lines the relay's answer negotiated for video.
    async fn negotiated(&self, id: &Value) -> String {
        let lines = self
            .call("return mq.negotiated(arguments[0])", vec![id.clone()])
            .await;
        let lines: Vec<&str> = lines
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let interesting: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| {
                l.starts_with("a=rtcp-fb")
                    || l.contains("transport-wide")
                    || l.contains("rtx")
                    || l.contains("apt=")
            })
            .collect();
        if interesting.is_empty() {
            "(no rtcp-fb, transport-wide extension or rtx)".into()
        } else {
            interesting.join(" | ")
        }
    }
}

/// A number from a stats object (0 when absent).
fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

fn mbps(bps: f64) -> String {
    format!("{:.2}", bps / 1e6)
}

/// The relay's metrics about loss repair and feedback, whatever their exact names.
fn repair_metrics(relay: &Relay) -> String {
    let body = common::http("GET", &relay.url("/metrics"), None, "").body;
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            [
                "nack", "retrans", "rtx", "repair", "feedback", "remb", "rtt", "loss", "keyframe",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect();
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.join("\n  ")
    }
}

/// One player's video as sampled once a second: (stats timestamp in ms, frames decoded).
#[derive(Default)]
struct Decoding {
    samples: Vec<(f64, f64)>,
}

impl Decoding {
    fn push(&mut self, inbound: &Value) {
        self.samples
            .push((num(inbound, "timestamp"), num(inbound, "framesDecoded")));
    }

    /// Frames decoded per second over the last `window` of samples (the newest sample and the
    /// latest one at least `window` older).
    fn recent_fps(&self, window: Duration) -> f64 {
        let Some(&(t1, f1)) = self.samples.last() else {
            return 0.0;
        };
        let window_ms = window.as_secs_f64() * 1000.0;
        let Some(&(t0, f0)) = self.samples.iter().rev().find(|(t, _)| t1 - t >= window_ms) else {
            return 0.0;
        };
        (f1 - f0) / ((t1 - t0) / 1000.0)
    }
}

#[test]
fn chromium_players_keep_decoding_through_three_percent_loss_each_way() {
    let pct = loss_pct();
    in_network(
        "chromium_players_keep_decoding_through_three_percent_loss_each_way",
        &impairment(pct),
        true,
        players_through_loss(pct),
    );
}

/// A publisher and two players over 25 s with `pct` % of the media datagrams dropped each way.
async fn players_through_loss(pct: u32) {
    const PLAY_FOR: Duration = Duration::from_secs(25);
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", MEDIA_PORTS),
        ("CORECAST_MEDIA_PROTOCOL", "udp"),
    ]);
    let browser = Browser::start(&relay).await;
    let publisher = browser.publish(&relay, "cam", 640, 480).await;
    let players = [browser.play("cam").await, browser.play("cam").await];
    say(format!(
        "loss {pct} % each way; publisher's answer: {}",
        browser.negotiated(&publisher).await
    ));
    say(format!(
        "player's answer: {}",
        browser.negotiated(&players[0]).await
    ));

    let start = Instant::now();
    let mut decoding = [Decoding::default(), Decoding::default()];
    let mut last = [Value::Null, Value::Null];
    let mut publisher_stats = Value::Null;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < PLAY_FOR {
        tick.tick().await;
        let mut line = format!("t={:>2}s", start.elapsed().as_secs());
        for (i, id) in players.iter().enumerate() {
            let s = browser.stats(id).await;
            let inbound = &s["inbound-rtp"];
            decoding[i].push(inbound);
            line.push_str(&format!(
                " | player {i}: {} frames, fps {:.0}, freezes {} ({:.2} s), nacks {}, lost {}",
                num(inbound, "framesDecoded"),
                num(inbound, "framesPerSecond"),
                num(inbound, "freezeCount"),
                num(inbound, "totalFreezesDuration"),
                num(inbound, "nackCount"),
                num(inbound, "packetsLost"),
            ));
            last[i] = s;
        }
        publisher_stats = browser.stats(&publisher).await;
        let outbound = &publisher_stats["outbound-rtp"];
        line.push_str(&format!(
            " | publisher: target {} Mbit/s, {} retransmitted, {} nacks received",
            mbps(num(outbound, "targetBitrate")),
            num(outbound, "retransmittedPacketsSent"),
            num(outbound, "nackCount"),
        ));
        say(line);
    }

    let nft = impaired();
    say(format!(
        "nftables dropped {} of {} sends relay→browser (a GSO send is a player's frame), \
         {} of {} datagrams browser→relay (of which {} of {} publisher video datagrams)",
        nft.dropped_to_browser,
        nft.to_browser,
        nft.dropped_to_relay,
        nft.to_relay,
        nft.video_dropped_to_relay,
        nft.video_to_relay
    ));
    say(format!("relay metrics:\n  {}", repair_metrics(&relay)));
    let streams_body = common::http("GET", &relay.url("/api/streams"), None, "").body;
    say(format!("relay's streams: {streams_body}"));
    let streams: Value = serde_json::from_str(&streams_body).unwrap_or(Value::Null);

    let mut failures = Vec::new();
    let mut figures = Vec::new();
    for (i, s) in last.iter().enumerate() {
        let inbound = &s["inbound-rtp"];
        let fps = decoding[i].recent_fps(Duration::from_secs(3));
        let freezes = num(inbound, "freezeCount");
        let frozen = num(inbound, "totalFreezesDuration");
        let nacks = num(inbound, "nackCount");
        figures.push(format!(
            "player {i}: {fps:.1} fps over the last 3 s, {freezes} freezes totalling {frozen:.2} s, \
             {nacks} NACKs sent, {} video packets received ({} of them retransmissions), {} lost",
            num(inbound, "packetsReceived"),
            num(inbound, "retransmittedPacketsReceived"),
            num(inbound, "packetsLost")
        ));
        if fps < 20.0 {
            failures.push(format!(
                "player {i} decodes {fps:.1} fps at the end (needs ≥ 20)"
            ));
        }
        if frozen > 1.0 {
            failures.push(format!(
                "player {i} froze {frozen:.2} s in {freezes} freezes (needs ≤ 1 s)"
            ));
        }
    }
    let outbound = &publisher_stats["outbound-rtp"];
    let retransmitted = num(outbound, "retransmittedPacketsSent");
    figures.push(format!(
        "publisher: {} video packets sent, {} of its video datagrams dropped on the way, \
         {retransmitted} retransmitted, {} NACKs received, target {} Mbit/s",
        num(outbound, "packetsSent"),
        nft.video_dropped_to_relay,
        num(outbound, "nackCount"),
        mbps(num(outbound, "targetBitrate"))
    ));
    if pct > 0 {
        if retransmitted == 0.0 {
            failures.push("the publisher retransmitted nothing (needs > 0)".into());
        }
        // The relay repairs what the publisher's path lost, rather than leaving the gaps to
        // keyframe requests: on loopback a NACK arrives in time for nearly every loss, so at
        // least half of the publisher's dropped video datagrams come again (a generous floor:
        // a retransmission may itself be dropped, and a few of the large datagrams are probes).
        let dropped = nft.video_dropped_to_relay as f64;
        if retransmitted < dropped / 2.0 {
            failures.push(format!(
                "the publisher retransmitted {retransmitted} packets for {dropped} of its video \
                 datagrams dropped on the way to the relay (needs at least half): the relay \
                 leaves most of the publisher's losses unrepaired"
            ));
        }
        if nft.dropped_to_browser == 0 || nft.dropped_to_relay == 0 {
            failures.push(format!(
                "nftables dropped nothing in one direction: {} to the browser, {} to the relay",
                nft.dropped_to_browser, nft.dropped_to_relay
            ));
        }
        // The relay knows each path: the publisher's RTT from its repairs, each player's RTT
        // and loss from its receiver reports.
        let stream = &streams[0];
        if !stream["publisher"]["rtt_ms"].is_number() {
            failures.push(format!("no RTT to the publisher in /api/streams: {stream}"));
        }
        let players = stream["players"].as_array().cloned().unwrap_or_default();
        if players.is_empty()
            || !players
                .iter()
                .all(|p| p["rtt_ms"].is_number() && p["loss"].is_number())
        {
            failures.push(format!(
                "players' RTT and loss missing in /api/streams: {stream}"
            ));
        }
    }
    say(format!(
        "figures (loss {pct} % each way, {} s): {}",
        PLAY_FOR.as_secs(),
        figures.join("; ")
    ));
    browser.close().await;
    assert!(
        failures.is_empty(),
        "{}\nrelay log:\n{}",
        failures.join("\n"),
        relay.log()
    );
}

/// Publishes at 1280x720 (with one player) for `run_for`, sampling the publisher's encoder
/// target once a second. Returns (seconds since the publisher sent its first frame, target in
/// bit/s) samples.
async fn publisher_targets(relay: &Relay, run_for: Duration) -> Vec<(f64, f64)> {
    let browser = Browser::start(relay).await;
    let publisher = browser.publish(relay, "hd", 1280, 720).await;
    let start = Instant::now();
    let player = browser.play("hd").await;
    say(format!(
        "publisher's answer: {}",
        browser.negotiated(&publisher).await
    ));
    let mut series = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < run_for {
        tick.tick().await;
        let s = browser.stats(&publisher).await;
        let outbound = &s["outbound-rtp"];
        let t = start.elapsed().as_secs_f64();
        let target = num(outbound, "targetBitrate");
        let played = browser.stats(&player).await;
        say(format!(
            "t={t:>4.1}s target {} Mbit/s, available {} Mbit/s, sending {}x{} at {:.0} fps \
             (limited by {}), player decodes {:.0} fps",
            mbps(target),
            mbps(num(&s, "availableOutgoingBitrate")),
            num(outbound, "frameWidth"),
            num(outbound, "frameHeight"),
            num(outbound, "framesPerSecond"),
            outbound["qualityLimitationReason"].as_str().unwrap_or("-"),
            num(&played["inbound-rtp"], "framesPerSecond"),
        ));
        series.push((t, target));
    }
    say(format!("relay metrics:\n  {}", repair_metrics(relay)));
    browser.close().await;
    series
}

fn series_text(series: &[(f64, f64)]) -> String {
    series
        .iter()
        .map(|(t, b)| format!("{t:.0}s:{}", mbps(*b)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn chromium_publisher_ramps_up_on_a_clean_path() {
    in_network(
        "chromium_publisher_ramps_up_on_a_clean_path",
        "true",
        false,
        async {
            let relay = Relay::start(&[
                ("CORECAST_WORKERS_COUNT", "2"),
                ("CORECAST_MEDIA_PORTS", MEDIA_PORTS),
                ("CORECAST_MEDIA_PROTOCOL", "udp"),
            ]);
            let series = publisher_targets(&relay, Duration::from_secs(20)).await;
            say(format!(
                "figures: publisher target (Mbit/s) on a clean path: {}",
                series_text(&series)
            ));
            let peak = series.iter().map(|&(_, b)| b).fold(0.0, f64::max);
            if let Some((t, _)) = series.iter().find(|&&(_, b)| b >= 1_000_000.0) {
                say(format!(
                    "figures: 1 Mbit/s reached {t:.1} s after the first frame"
                ));
            }
            assert!(
                peak >= 1_000_000.0,
                "the publisher's target peaked at {} Mbit/s in 20 s (needs ≥ 1): {}\nrelay log:\n{}",
                mbps(peak),
                series_text(&series),
                relay.log()
            );
        },
    );
}

#[test]
fn an_operator_cap_holds_the_publisher_below_it() {
    in_network(
        "an_operator_cap_holds_the_publisher_below_it",
        "true",
        false,
        async {
            let relay = Relay::start(&[
                ("CORECAST_WORKERS_COUNT", "2"),
                ("CORECAST_MEDIA_PORTS", MEDIA_PORTS),
                ("CORECAST_MEDIA_PROTOCOL", "udp"),
                ("CORECAST_MEDIA_MAX_PUBLISH_KBPS", "500"),
            ]);
            let series = publisher_targets(&relay, Duration::from_secs(20)).await;
            say(format!(
                "figures: publisher target (Mbit/s) with max_publish_kbps = 500: {}",
                series_text(&series)
            ));
            let settled: Vec<f64> = series
                .iter()
                .filter(|&&(t, _)| t >= 5.0)
                .map(|&(_, b)| b)
                .collect();
            let peak = settled.iter().copied().fold(0.0, f64::max);
            assert!(
                peak <= 550_000.0,
                "the publisher's target reached {} Mbit/s after the first 5 s (cap 0.5, needs \
                 ≤ 0.55): {}\nrelay log:\n{}",
                mbps(peak),
                series_text(&series),
                relay.log()
            );
            // Held by the cap, not stuck at the browser's start bitrate for want of feedback:
            // with the relay's feedback the target climbs well above its start (~0.3).
            assert!(
                peak >= 350_000.0,
                "the publisher's target never rose above {} Mbit/s: no bandwidth feedback \
                 reached it, so this says nothing of the cap: {}\nrelay log:\n{}",
                mbps(peak),
                series_text(&series),
                relay.log()
            );
        },
    );
}
