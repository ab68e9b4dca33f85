//! What the loadgen tests share: a real corecast relay started on its own thread in the test
//! process (io_uring workers and all), running until the process ends. Each test file uses
//! what it needs of this module.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU16, Ordering};

/// A free TCP port on loopback for the relay's HTTP listener.
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768-60999), from this process's own block of 100
    // (5000-9999), in turn: the OS's "any free port" may hand a just-checked port to another
    // test or to an outgoing connection before the relay binds it.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 5000 + (std::process::id() % 50) as u16 * 100;
    for _ in 0..100 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "every port of this test process's block {base}-{} is held",
        base + 99
    );
}

/// The next block of 100 media ports for a relay of this process: blocks differ between the
/// test processes that may run at once (by process id) and between a process's relays. The
/// blocks lie in the kernel's ephemeral range, so other programs' connections may hold a few
/// of a block's ports (the relay skips them): a block has twice what a test needs.
pub fn media_ports() -> String {
    static STARTED: AtomicU16 = AtomicU16::new(0);
    let nth = STARTED.fetch_add(1, Ordering::Relaxed);
    assert!(nth < 2, "two relays per test process fit the port block");
    let base = 43000 + (std::process::id() % 40) as u16 * 200 + nth * 100;
    format!("{base}-{}", base + 99)
}

/// Starts a relay with `workers` workers and the settings `extra` (`CORECAST_…` keys) on
/// built-in defaults; returns its base URL (`http://127.0.0.1:PORT`).
pub fn start_relay(workers: usize, extra: &[(&str, &str)]) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let config = corecast::config::Config::load(
        None,
        [
            (
                "CORECAST_HTTP_LISTEN".to_string(),
                format!("127.0.0.1:{port}"),
            ),
            ("CORECAST_MEDIA_PORTS".to_string(), media_ports()),
            ("CORECAST_WORKERS_COUNT".to_string(), workers.to_string()),
        ]
        .into_iter()
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
    )
    .unwrap();
    corecast::server::spawn(config).expect("relay starts");
    format!("http://127.0.0.1:{port}")
}

/// Starts a relay from a configuration file's text (`{media_ports}` in it is replaced by the
/// block for this relay); returns its HTTP listener's port.
pub fn start_relay_from_file(file: &str) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let file = file
        .replace("{media_ports}", &media_ports())
        .replace("{http_port}", &port.to_string());
    let config = corecast::config::Config::load(Some(&file), []).unwrap();
    corecast::server::spawn(config).expect("relay starts");
    port
}
