//! loadgen `--simulcast` against a real corecast relay (started in this process): one
//! publisher sends three encodings (l, m, h at 125, 333 and 1000 kbit/s), six players play
//! it, every second one policed on arrival to 250 kbit/s (between the low and the middle
//! encoding, audio included). From each player's transport-wide feedback the relay estimates
//! its path: the unlimited players end on the top layer, the limited ones on the low layer,
//! and video loss after repair stays small (none for the unlimited players, a little for the
//! limited ones once on the low layer).

use std::process::Command;

mod common;

#[test]
fn unlimited_players_get_the_top_layer_and_policed_ones_the_low_layer() {
    let relay = common::start_relay(2, &[]);
    let out = std::env::temp_dir().join(format!("loadgen-simulcast-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let whip = format!("{relay}/whip/{{stream}}");
    let whep = format!("{relay}/whep/{{stream}}");
    let result = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--whip",
            &whip,
            "--whep",
            &whep,
            "--simulcast",
            "--video-kbps",
            "1000",
            "--players",
            "6",
            "--rate-limit",
            "250",
            "--rate-limit-share",
            "50",
            "--duration",
            "20",
            "--ramp",
            "20",
            "--stream-prefix",
            "simulcast",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .expect("running loadgen");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    println!("{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let s = &summary["simulcast"];
    assert_eq!(summary["players"]["joined"], 6, "{summary:#}");
    assert_eq!(s["rids"], serde_json::json!(["l", "m", "h"]), "{s:#}");
    let keyframes: Vec<u64> = s["keyframes_sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap())
        .collect();
    assert!(keyframes.iter().all(|k| *k >= 1), "{s:#}");

    let group = |name: &str| {
        s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .unwrap_or_else(|| panic!("no {name} group: {s:#}"))
            .clone()
    };
    let unlimited = group("unlimited");
    let limited = group("limited");
    assert_eq!(
        (unlimited["players"].as_u64(), limited["players"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        unlimited["final_layer_players"],
        serde_json::json!([0, 0, 3]),
        "the unlimited players end on the top layer: {s:#}"
    );
    assert_eq!(
        limited["final_layer_players"],
        serde_json::json!([3, 0, 0]),
        "the limited players end on the low layer: {s:#}"
    );
    assert_eq!(unlimited["dropped_by_rate_limit"], 0, "{s:#}");
    assert!(
        limited["dropped_by_rate_limit"].as_u64().unwrap() > 0,
        "{s:#}"
    );
    // What the policer let through stays under its rate.
    assert!(
        limited["received_kbps_per_player"].as_f64().unwrap() < 260.0,
        "{s:#}"
    );
    assert!(
        unlimited["received_kbps_per_player"].as_f64().unwrap() > 600.0,
        "{s:#}"
    );
    let loss = |g: &serde_json::Value| g["video_loss_percent"].as_f64().unwrap();
    assert!(
        loss(&unlimited) < 0.5,
        "unlimited video loss after repair: {s:#}"
    );
    // A limited player is moved up to the middle layer while its estimate is still the
    // relay's starting one, and loses what the policer drops until the estimate comes down
    // (a few seconds); on the low layer, only probes of the path cost it a little.
    let settled = |g: &serde_json::Value| g["settled_video_loss_percent"].as_f64().unwrap();
    assert!(
        settled(&limited) < 5.0,
        "limited video loss after repair once on their last layer: {s:#}"
    );
    assert!(
        loss(&limited) < 25.0,
        "limited video loss after repair: {s:#}"
    );
    for p in s["players"].as_array().unwrap() {
        assert!(
            p["transport_feedback_sent"].as_u64().unwrap() > 50,
            "every player sends transport-wide feedback: {p:#}"
        );
    }
    assert!(
        stdout.contains("players unlimited: ended on l 0, m 0, h 3"),
        "{stdout}"
    );
}
