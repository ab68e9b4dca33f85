//! Start-up: workers, control thread, HTTP listener.

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::Config;
use crate::control::limits::HttpLimits;
use crate::control::{Control, http};
use crate::net::GrantedBuffers;
use crate::worker::{WorkerSettings, start_workers};

/// Runs the relay until Ctrl-C or SIGTERM. Call from a single-threaded tokio runtime: that
/// runtime is the control thread.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let workers = config.worker_count();
    config.validate_for_workers(workers)?;
    let media = &config.media;
    if media.announced_ip.is_loopback() {
        tracing::warn!(
            "media.announced_ip is {}: only clients on this machine can connect until it is set \
             to an address they can reach",
            media.announced_ip
        );
    }
    if media.protocol.udp() {
        GrantedBuffers::probe_udp(media.bind_ip, media.udp_recv_buffer, media.udp_send_buffer)
            .with_context(|| format!("opening a UDP socket on media.bind_ip {}", media.bind_ip))?
            .log("UDP");
    }
    if media.protocol.tcp() {
        GrantedBuffers::probe_tcp(media.bind_ip, media.tcp_recv_buffer, media.tcp_send_buffer)
            .with_context(|| format!("opening a TCP socket on media.bind_ip {}", media.bind_ip))?
            .log("TCP");
    }
    let gso = media.gso && media.protocol.udp() && crate::worker::io::udp_gso_supported();
    match (media.gso, gso) {
        (true, true) => tracing::info!(
            hold_us = media.gso_hold.as_micros() as u64,
            "UDP GSO on: each player's frame leaves in one send"
        ),
        (true, false) if media.protocol.udp() => tracing::warn!(
            "UDP GSO unavailable (the kernel lacks UDP_SEGMENT): one send per packet"
        ),
        _ => tracing::info!("UDP GSO off: one send per packet"),
    }
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let settings = WorkerSettings {
        gso,
        gso_hold: media.gso_hold,
        ice_timeout: media.ice_timeout,
        tcp_send_queue: media.tcp_send_queue,
        loopback_only: media.bind_ip.is_loopback(),
        pin: config.workers.pin,
    };
    let handles =
        start_workers(workers, settings, events_tx).context("starting the io_uring workers")?;
    let listen = config.http.listen;
    let ports = media.ports;
    let transports = match media.protocol {
        crate::config::MediaProtocol::Udp => "UDP",
        crate::config::MediaProtocol::Tcp => "ICE-TCP",
        crate::config::MediaProtocol::All => "UDP and ICE-TCP",
    };
    let limits = HttpLimits::new(&config.http);
    let http_config = &config.http;
    let limits_line = format!(
        "  limits:  {} connections; per client {} sessions, {} requests/s (0: no limit); exempt: {}",
        http_config.max_connections,
        http_config.max_sessions_per_ip,
        http_config.rate_limit,
        http_config.limit_exempt
    );
    let control: Arc<Control> = Control::new(config, handles)?;
    tokio::spawn(control.clone().dispatch_events(events_rx));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding http.listen {listen}"))?;
    let addr = listener.local_addr()?;
    println!("corecast is up: {workers} worker(s), media ports {ports} ({transports})");
    println!("  page:    http://{addr}/");
    println!("  WHIP:    http://{addr}/whip/{{stream}}");
    println!("  WHEP:    http://{addr}/whep/{{stream}}");
    println!("  streams: http://{addr}/api/streams   metrics: http://{addr}/metrics");
    println!("{limits_line}");
    crate::control::listener::serve(
        listener,
        http::router(control, limits.clone()),
        limits,
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// Runs a relay on a thread of its own (its control runtime; the workers are threads of their
/// own as always), for programs and tests that embed one. Returns once `http.listen` accepts
/// connections, with the thread's handle; the relay runs until the process ends.
pub fn spawn(config: Config) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let listen = config.http.listen;
    let handle = std::thread::Builder::new()
        .name("corecast-control".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run(config))
        })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(listen).is_err() {
        if handle.is_finished() {
            return match handle.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("the relay stopped during start-up")),
            };
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the relay did not start listening on {listen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(handle)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}
