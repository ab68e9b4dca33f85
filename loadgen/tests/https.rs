//! loadgen against a relay that serves HTTPS with a self-signed certificate and requires a
//! token: with `--insecure` and the token (from LOADGEN_TOKEN, out of the process list) every
//! player joins and the relay's metrics are read through the same client; without the token
//! the relay's 401 is what loadgen reports.

use std::process::Command;

mod common;

const TOKEN: &str = "loadgen-test-token-0001";

/// Starts an HTTPS relay with one token on its own thread; it runs until the process ends.
fn start_relay() -> String {
    let port = common::start_relay_from_file(&format!(
        "[http]\nlisten = \"127.0.0.1:{{http_port}}\"\ntls = \"self-signed\"\n[media]\nports = \
         \"{{media_ports}}\"\n[workers]\ncount = 1\n[auth]\nmetrics = \"admin\"\n\
         [[auth.tokens]]\ntoken = \"{TOKEN}\"\nallow = [\"publish\", \"play\", \"admin\"]\n"
    ));
    format!("https://127.0.0.1:{port}")
}

fn loadgen(args: &[&str], token: Option<&str>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command.args(args).env_remove("LOADGEN_TOKEN");
    if let Some(token) = token {
        command.env("LOADGEN_TOKEN", token);
    }
    let output = command.output().expect("running loadgen");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn loadgen_joins_every_player_over_https_with_a_token_and_reports_a_401_without() {
    let relay = start_relay();
    let out = std::env::temp_dir().join(format!("loadgen-https-{}", std::process::id()));
    let whip = format!("{relay}/whip/{{stream}}");
    let whep = format!("{relay}/whep/{{stream}}");
    let metrics = format!("{relay}/metrics");
    let args = [
        "--whip",
        &whip,
        "--whep",
        &whep,
        "--streams",
        "1",
        "--players",
        "4",
        "--duration",
        "2",
        "--ramp",
        "100",
        "--insecure",
        "--relay-metrics",
        &metrics,
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, text) = loadgen(&args, Some(TOKEN));
    assert!(ok, "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["players"]["joined"], 4, "{summary:#}");
    assert_eq!(summary["players"]["failed"], 0, "{summary:#}");
    assert_eq!(summary["totals"]["lost_packets"], 0, "{summary:#}");
    // The admin-only metrics were read with the token.
    assert!(
        summary["relay"]["forwarded_packets"].as_u64().unwrap_or(0) > 100,
        "{summary:#}"
    );

    let (ok, text) = loadgen(&args, None);
    assert!(!ok, "{text}");
    assert!(
        text.contains("401") && text.contains("requires a token"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
