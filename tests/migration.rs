//! Transport migration with a real browser: a Chromium player on a relay that offers UDP and
//! ICE-TCP (`media.protocol = all`) plays over UDP; after 10 s nftables drops UDP to and
//! from the player's port (in the test's own network namespace), and the player must end on
//! TCP — its selected candidate pair in getStats, and the relay's view of the session — with
//! its decoded frames rising again, on the same session (no new DTLS handshake):
//!
//! - once through the browser's own re-nomination (it nominates its standby TCP pair when the
//!   UDP pair stops answering),
//! - once through `pc.restartIce()` and a PATCH of the new credentials from the page (RFC
//!   9725 §4.3), the relay answering with its own.
//!
//! Each prints the timeline (`--nocapture`): when the block came, when the browser's pair
//! became TCP, the longest stretch without a decoded frame. Needs root (a network namespace)
//! and Debian's chromium, chromium-driver and nftables (tests/run installs them).

mod common;

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Relay;
use common::chromium::Chromium;
use common::netns::{self, nft, say};
use serde_json::Value;

/// The relay's media ports: the namespace is private, so a fixed range is free.
const MEDIA_PORTS: &str = "31200-31263";
/// Media flows over UDP this long before UDP is blocked.
const BEFORE_BLOCK: Duration = Duration::from_secs(10);
/// How long the player has after the block to be decoding over TCP.
const SWITCH_WITHIN: Duration = Duration::from_secs(40);
/// Frames the player must decode over TCP, once switched, before the test ends.
const FRAMES_AFTER_SWITCH: f64 = 60.0;

/// Runs `body` in a network namespace of its own, with an empty nftables table `block` whose
/// input chain the test fills.
fn in_network(test: &str, body: impl Future<Output = ()>) {
    let nft = nft();
    let setup = format!(
        "{nft} add table inet block && {nft} add chain inet block \
         input '{{ type filter hook input priority 0; policy accept; }}'"
    );
    netns::in_network(test, &setup, true, body);
}

fn run_nft(args: &[&str]) {
    let out = Command::new(nft())
        .args(args)
        .output()
        .expect("running nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops UDP to and from `ports` (`31232`, or a range) but `except` from now on.
fn block_udp(ports: &str, except: Option<u16>) {
    for direction in ["dport", "sport"] {
        let mut rule = format!("udp {direction} {ports}");
        if let Some(port) = except {
            rule.push_str(&format!(" udp {direction} != {port}"));
        }
        let mut args = vec!["add", "rule", "inet", "block", "input"];
        args.extend(rule.split(' '));
        args.extend(["counter", "drop"]);
        run_nft(&args);
    }
}

fn unblock_udp() {
    run_nft(&["flush", "chain", "inet", "block", "input"]);
}

/// The page side: publish, play (keeping the session's Location and ETag), the player's path
/// and frames, and the ICE restart over PATCH.
const HARNESS: &str = r#"
window.mig = (() => {
  const { start, receive, sendCamera, session } = window.cc;
  function publish(stream) { return start(`/whip/${stream}`, sendCamera({ width: 640, height: 360 })); }
  function play(stream) { return start(`/whep/${stream}`, receive); }
  async function state(id) {
    const s = session(id);
    // The relay's UDP candidate's port, from its answer.
    const port = Number((s.answer.match(/a=candidate:\S+ 1 udp \d+ \S+ (\d+)/) || [])[1]);
    const out = { error: s.error, port, connectionState: s.pc.connectionState,
                  iceConnectionState: s.pc.iceConnectionState, restarts: s.restarts || [] };
    const report = await s.pc.getStats();
    let pairId = null;
    report.forEach((r) => {
      if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
      if (r.type === "inbound-rtp" && r.kind === "video") {
        out.framesDecoded = r.framesDecoded || 0;
        out.freezes = r.totalFreezesDuration || 0;
      }
    });
    const pair = pairId && report.get(pairId);
    if (pair) {
      const local = report.get(pair.localCandidateId), remote = report.get(pair.remoteCandidateId);
      out.protocol = local && local.protocol;
      out.remote = remote && `${remote.protocol} ${remote.address}:${remote.port}`;
      out.pairState = pair.state;
    }
    return out;
  }
  // pc.restartIce(), the new credentials PATCHed with the ETag, the relay's answered into
  // the remote description (the answer's other lines stay).
  async function restart(id) {
    const s = session(id);
    s.restarts = s.restarts || [];
    try {
      s.pc.restartIce();
      await s.pc.setLocalDescription(await s.pc.createOffer());
      const sdp = s.pc.localDescription.sdp;
      const ufrag = sdp.match(/a=ice-ufrag:(\S+)/)[1], pwd = sdp.match(/a=ice-pwd:(\S+)/)[1];
      const mid = sdp.match(/a=mid:(\S+)/)[1];
      const frag = `a=ice-ufrag:${ufrag}\r\na=ice-pwd:${pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:${mid}\r\n`;
      const res = await fetch(s.location, {
        method: "PATCH",
        headers: { "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": s.etag },
        body: frag,
      });
      const text = await res.text();
      s.restarts.push({ status: res.status, etag: res.headers.get("ETag"), body: text });
      if (res.status !== 200) throw new Error(`PATCH ${res.status} ${text.trim()}`);
      s.etag = res.headers.get("ETag");
      const newUfrag = text.match(/a=ice-ufrag:(\S+)/)[1], newPwd = text.match(/a=ice-pwd:(\S+)/)[1];
      const answer = s.pc.remoteDescription.sdp
        .replace(/a=ice-ufrag:\S+/g, `a=ice-ufrag:${newUfrag}`)
        .replace(/a=ice-pwd:\S+/g, `a=ice-pwd:${newPwd}`);
      await s.pc.setRemoteDescription({ type: "answer", sdp: answer });
      return null;
    } catch (e) {
      return String(e.message || e);
    }
  }
  return { publish, play, state, restart };
})();
return true;
"#;

/// The relay's view of its one stream's first player.
fn relay_player(relay: &Relay) -> Value {
    let body = common::http("GET", &relay.url("/api/streams"), None, "").body;
    let streams: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    streams[0]["players"][0].clone()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Switch {
    /// The browser re-nominates on its own.
    BrowserRenominates,
    /// The page restarts ICE and PATCHes the relay.
    RestartIceAndPatch,
}

#[test]
fn chromium_player_moves_to_tcp_on_its_own_when_udp_is_blocked() {
    in_network(
        "chromium_player_moves_to_tcp_on_its_own_when_udp_is_blocked",
        udp_blocked(Switch::BrowserRenominates),
    );
}

#[test]
fn chromium_player_moves_to_tcp_after_restart_ice_and_patch_when_udp_is_blocked() {
    in_network(
        "chromium_player_moves_to_tcp_after_restart_ice_and_patch_when_udp_is_blocked",
        udp_blocked(Switch::RestartIceAndPatch),
    );
}

async fn udp_blocked(switch: Switch) {
    let relay = Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "2"),
        ("CORECAST_MEDIA_PORTS", MEDIA_PORTS),
        ("CORECAST_MEDIA_PROTOCOL", "all"),
    ]);
    let browser = Chromium::on_relay_page(&relay.url("/"), HARNESS).await;
    let state = |id: &Value| {
        let id = id.clone();
        let browser = &browser;
        async move {
            browser
                .call("return await mig.state(arguments[0])", vec![id])
                .await
        }
    };
    let publisher = browser
        .call("return await mig.publish('cam')", vec![])
        .await;
    let published = state(&publisher).await;
    assert!(published["error"].is_null(), "publishing: {published}");
    let publisher_port = published["port"].as_u64().expect("the publisher's port") as u16;
    if switch == Switch::BrowserRenominates {
        // Chromium gathers its UDP candidates first and stops gathering once a pair is
        // writable (on loopback, within milliseconds), so a player that connected over UDP
        // has no TCP candidate to fall back on, and fails when UDP goes (seen: "disconnected"
        // 7 s after the block, then "failed"; the relay ends the session 30 s after the last
        // check). It gathers TCP when it starts where UDP does not pass: then it holds a TCP
        // pair, moves to UDP on its own when UDP opens, and has the TCP pair to go back to.
        block_udp(MEDIA_PORTS, Some(publisher_port));
    }
    let player = browser.call("return await mig.play('cam')", vec![]).await;
    let first = state(&player).await;
    assert!(
        first["error"].is_null(),
        "playing: {first}\n{}",
        relay.log()
    );
    let port = first["port"].as_u64().expect("the player's UDP port") as u16;
    if switch == Switch::BrowserRenominates {
        let on = |transport: &'static str| {
            let (relay, state, player) = (&relay, &state, &player);
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let (s, r) = (state(player).await, relay_player(relay));
                    if s["protocol"] == transport
                        && r["transport"] == transport
                        && s["framesDecoded"].as_f64() > Some(0.0)
                    {
                        return (s, r);
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the player is not decoding over {transport}: browser {s}\nrelay {r}\n{}",
                        relay.log()
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let (s, r) = on("tcp").await;
        say(format!(
            "UDP blocked from the start: the player decodes over TCP ({}; relay {} {})",
            s["remote"], r["transport"], r["remote"]
        ));
        unblock_udp();
        let opened = Instant::now();
        let (s, r) = on("udp").await;
        say(format!(
            "UDP opened: the browser moved to UDP on its own {:.1} s later ({}; relay {} {}, \
             migrations {})",
            opened.elapsed().as_secs_f64(),
            s["remote"],
            r["transport"],
            r["remote"],
            r["migrations"]
        ));
    }

    let start = Instant::now();
    let mut blocked_at: Option<Instant> = None;
    let mut switched_at: Option<Duration> = None;
    let mut frames_at_switch = 0.0;
    let mut last_progress = (Instant::now(), 0.0);
    let mut longest_stall = Duration::ZERO;
    let mut last = Value::Null;
    let session_before = relay_player(&relay)["session"].clone();
    let mut dtls_records_at_block = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut line_due = Instant::now();
    let outcome = loop {
        tick.tick().await;
        let s = state(&player).await;
        let frames = s["framesDecoded"].as_f64().unwrap_or(0.0);
        let now = Instant::now();
        if frames > last_progress.1 {
            if blocked_at.is_some() {
                longest_stall = longest_stall.max(now - last_progress.0);
            }
            last_progress = (now, frames);
        }
        if blocked_at.is_none() && start.elapsed() >= BEFORE_BLOCK {
            assert!(
                frames > 0.0,
                "no frames before the block: {s}\n{}",
                relay.log()
            );
            assert_eq!(s["protocol"], "udp", "the player starts on UDP: {s}");
            dtls_records_at_block = relay.metric_all_workers("corecast_dtls_records_total");
            block_udp(&port.to_string(), None);
            blocked_at = Some(now);
            last_progress = (now, frames);
            say(format!(
                "t={:.1}s UDP to and from port {port} blocked; {frames} frames decoded so far",
                start.elapsed().as_secs_f64()
            ));
            if switch == Switch::RestartIceAndPatch {
                let restarted = browser
                    .call(
                        "return await mig.restart(arguments[0])",
                        vec![player.clone()],
                    )
                    .await;
                assert!(
                    restarted.is_null(),
                    "restartIce + PATCH: {restarted}\n{}",
                    relay.log()
                );
                say(format!(
                    "t={:.1}s restartIce() and PATCH done: {}",
                    start.elapsed().as_secs_f64(),
                    state(&player).await["restarts"]
                ));
            }
        }
        if let Some(blocked) = blocked_at {
            let relay_side = relay_player(&relay);
            if switched_at.is_none() && s["protocol"] == "tcp" && relay_side["transport"] == "tcp" {
                switched_at = Some(now - blocked);
                frames_at_switch = frames;
                say(format!(
                    "t={:.1}s switched: browser pair {} ({}), relay {} {} (migrations {})",
                    start.elapsed().as_secs_f64(),
                    s["remote"],
                    s["protocol"],
                    relay_side["transport"],
                    relay_side["remote"],
                    relay_side["migrations"]
                ));
            }
            if switched_at.is_some() && frames - frames_at_switch >= FRAMES_AFTER_SWITCH {
                break Ok((s, relay_side));
            }
            if now - blocked > SWITCH_WITHIN {
                break Err((s, relay_side));
            }
        }
        if now >= line_due {
            line_due = now + Duration::from_secs(2);
            let r = relay_player(&relay);
            say(format!(
                "t={:.1}s browser: {} {} {} frames {frames} | relay: {} {} migrations {}",
                start.elapsed().as_secs_f64(),
                s["iceConnectionState"],
                s["protocol"],
                s["remote"],
                r["transport"],
                r["remote"],
                r["migrations"]
            ));
        }
        last = s;
    };
    let dtls_records_after = relay.metric_all_workers("corecast_dtls_records_total");
    let metrics = common::http("GET", &relay.url("/metrics"), None, "").body;
    let interesting: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            ["migrations", "ice_restarts", "tcp_", "dtls_records"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    say(format!("relay metrics: {}", interesting.join(", ")));
    browser.close().await;
    match outcome {
        Ok((s, relay_side)) => {
            say(format!(
                "figures ({switch:?}): on TCP {:.1} s after the block, longest stretch without a \
                 decoded frame {:.1} s, {} frames decoded since the switch, relay migrations {}, \
                 ICE restarts {}",
                switched_at.unwrap_or_default().as_secs_f64(),
                longest_stall.as_secs_f64(),
                s["framesDecoded"].as_f64().unwrap_or(0.0) - frames_at_switch,
                relay_side["migrations"],
                relay_side["ice_restarts"],
            ));
            assert_eq!(
                relay_side["session"], session_before,
                "the same session throughout"
            );
            let migrations = match switch {
                Switch::RestartIceAndPatch => 1,
                // TCP to UDP when UDP opened, back to TCP when it closed.
                Switch::BrowserRenominates => 2,
            };
            assert!(
                relay_side["migrations"].as_u64() >= Some(migrations),
                "{relay_side}"
            );
            assert_eq!(
                dtls_records_after, dtls_records_at_block,
                "no DTLS record after the block: the session kept its DTLS and SRTP"
            );
            if switch == Switch::RestartIceAndPatch {
                assert_eq!(relay_side["ice_restarts"], 1, "{relay_side}");
            }
        }
        Err((s, relay_side)) => panic!(
            "{switch:?}: the player was not decoding over TCP {} s after UDP was blocked.\n\
             browser: {s}\nrelay: {relay_side}\nlast sample: {last}\nrelay log:\n{}",
            SWITCH_WITHIN.as_secs(),
            relay.log()
        ),
    }
}
