//! The deployment kit: `tuning/check` runs on this machine and prints its table, and the
//! example configurations load.

mod common;

use std::process::Command;

#[test]
fn tuning_check_prints_every_setting_and_the_buffer_verdicts() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/check"))
        .env("CORECAST_MEDIA_UDP_RECV_BUFFER", "1073741824")
        .env("RELAY_BIN", env!("CARGO_BIN_EXE_corecast"))
        .output()
        .expect("running tuning/check");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.ipv4.ip_local_port_range",
        "kernel.io_uring_disabled",
        "workers.backend",
        "open files (ulimit -n)",
        "locked memory (ulimit -l, KiB)",
        "media.tcp_send_buffer",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    // A gigabyte is more than any default maximum: the check says how to raise it.
    assert!(
        text.contains("media.udp_recv_buffer")
            && text.contains("sysctl -w net.core.rmem_max=1073741824"),
        "{text}"
    );
}

#[test]
fn example_configurations_load() {
    for file in ["corecast.toml", "corecast-tcp-only.toml"] {
        let path = format!("{}/tuning/{file}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(env!("CARGO_BIN_EXE_corecast"))
            .args(["--config", &path, "--print-config"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn granted_socket_buffers_are_reported_at_start() {
    let relay = common::Relay::start(&[
        ("CORECAST_WORKERS_COUNT", "1"),
        ("CORECAST_MEDIA_PORTS", &common::media_range(2)),
        ("CORECAST_MEDIA_PROTOCOL", "all"),
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = relay.log();
        if log.contains("transport=\"UDP\"")
            && log.contains("transport=\"TCP\"")
            && log.contains("recv_granted")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
