//! A stream that dies under loadgen on corecast: the relay's operator deletes it
//! (`DELETE /api/streams/NAME`) while players watch. Their loss stays 0 (they miss no packet
//! they know of); loadgen reports the stream stopped, when its media ended, and fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay on its own thread in this test process, with 20 media ports.
fn start_relay() -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let base = 47000 + (std::process::id() % 40) as u16 * 50;
    let config = corecast::config::Config::load(
        None,
        [
            (
                "CORECAST_HTTP_LISTEN".to_string(),
                format!("127.0.0.1:{port}"),
            ),
            (
                "CORECAST_MEDIA_PORTS".to_string(),
                format!("{base}-{}", base + 19),
            ),
            ("CORECAST_WORKERS_COUNT".to_string(), "1".to_string()),
        ],
    )
    .unwrap();
    corecast::server::spawn(config).expect("relay starts");
    format!("127.0.0.1:{port}")
}

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
    let relay = start_relay();
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
    let status = request("DELETE", &relay, "/api/streams/loadgen-0");
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
