//! A stream that dies under loadgen on corecast: the relay's operator deletes it
//! (`DELETE /api/streams/NAME`) while players watch. Their loss stays 0 (they miss no packet
//! they know of); loadgen reports the stream stopped, when its media ended, and fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

/// A bodiless request; returns the status line.
fn request(method: &str, address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_string()
}

#[test]
fn a_stream_deleted_mid_run_is_reported_stopped_and_the_run_fails() {
    let relay = common::start_relay(1, &[]);
    let relay = relay.trim_start_matches("http://");
    let out = std::env::temp_dir().join(format!("loadgen-stopped-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let loadgen = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--whip",
            &format!("http://{relay}/whip/{{stream}}"),
            "--whep",
            &format!("http://{relay}/whep/{{stream}}"),
            "--streams",
            "1",
            "--players",
            "3",
            "--duration",
            "4",
            "--video-kbps",
            "300",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running loadgen");
    // The players join within a second; the stream goes about 2 s into the run.
    std::thread::sleep(Duration::from_secs(2));
    let status = request("DELETE", relay, "/api/streams/loadgen-0");
    assert!(status.contains("200"), "{status}");
    let result = loadgen.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert_eq!(
        result.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        stdout.contains("error: stream loadgen-0 stopped"),
        "{stdout}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["players"]["joined"], 3, "{s:#}");
    // Loss alone says nothing: the players missed no packet they knew of.
    assert_eq!(s["totals"]["lost_packets"], 0, "{s:#}");
    let stopped = &s["media"]["stopped_streams"][0];
    assert_eq!(stopped["stream"], "loadgen-0", "{s:#}");
    assert_eq!(stopped["players"], 3, "{s:#}");
    let last = stopped["last_media_s"].as_f64().unwrap();
    assert!((1.0..4.0).contains(&last), "{s:#}");
}
