//! Start-up: workers, control thread, HTTP listener.

use std::sync::Arc;

use anyhow::Context as _;

use crate::client::http::{HttpClient, Trust};
use crate::config::Config;
use crate::control::cascade::Clients;
use crate::control::gate::Gate;
use crate::control::limits::HttpLimits;
use crate::control::tls::{TlsServer, redirect_router};
use crate::control::{Control, http};
use crate::io::socket::GrantedBuffers;
use crate::worker::{WorkerSettings, start_workers};

/// Runs the relay until Ctrl-C or SIGTERM. Call from a single-threaded tokio runtime: that
/// runtime is the control thread.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let workers = config.worker_count();
    config.validate_for_workers(workers)?;
    let media = &config.media;
    if media.announced_ip.iter().all(|ip| ip.is_loopback()) {
        tracing::warn!(
            "media.announced_ip is {:?}: only clients on this machine can connect until it is \
             set to an address they can reach",
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
    let gso = media.gso && media.protocol.udp() && crate::io::udp_gso_supported();
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
    let choice = crate::io::choose_backend(config.workers.backend, crate::io::probe_io_uring)
        .map_err(anyhow::Error::msg)?;
    if choice.backend == crate::io::IoBackend::Epoll
        && config.workers.backend == crate::io::BackendSetting::Auto
        && crate::io::AUTO_PREFERS == crate::io::IoBackend::IoUring
    {
        tracing::warn!(backend = %choice.backend, "{}", choice.reason);
    } else {
        tracing::info!(backend = %choice.backend, "{}", choice.reason);
    }
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let settings = WorkerSettings {
        backend: choice.backend,
        gso,
        gso_hold: media.gso_hold,
        ice_timeout: media.ice_timeout,
        tcp_send_queue: media.tcp_send_queue,
        loopback_only: media.bind_ip.is_loopback(),
        pin: config.workers.pin,
        mux: media.mux_port.map(|port| crate::worker::MuxSettings {
            ip: media.bind_ip,
            port,
            udp: media.protocol.udp(),
            tcp: media.protocol.tcp(),
            udp_buffers: (media.udp_recv_buffer, media.udp_send_buffer),
            tcp_buffers: (media.tcp_recv_buffer, media.tcp_send_buffer),
        }),
    };
    if let Some(port) = media.mux_port {
        crate::io::socket::check_port_free(
            media.bind_ip,
            port,
            media.protocol.udp(),
            media.protocol.tcp(),
        )
        .with_context(|| {
            format!(
                "media.mux_port {port} on {} is in use (another corecast, or another program)",
                media.bind_ip
            )
        })?;
    }
    let handles = start_workers(workers, settings, events_tx).context("starting the workers")?;
    let listen = config.http.listen;
    let ports = match media.mux_port {
        Some(port) => format!("media port {port} shared by every session"),
        None => format!("media ports {}", media.ports),
    };
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
    let admission = &config.admission;
    let admission_line = format!(
        "  joins:   DTLS on {} thread(s); {} in handshake at once (0: no limit), {} waiting up to {} ms, then 503",
        config.handshake_threads(),
        admission.max_handshakes,
        admission.queue,
        admission.queue_wait.as_millis()
    );
    let tls = TlsServer::new(&config.http.tls, listen)
        .map_err(anyhow::Error::msg)?
        .map(Arc::new);
    let cluster_token = config.cluster.token.as_ref().map(|t| t.0.as_str());
    let gate = Gate::new(
        &config.auth,
        config.http.max_sessions_per_token,
        cluster_token,
    )
    .map_err(anyhow::Error::msg)?;
    let cluster_client = remote_client(&config)?.with_token(cluster_token);
    let cluster_line = cluster_summary(&config);
    let front_door_line = front_door_summary(&config, tls.as_deref(), &gate);
    let remote = remote_client(&config)?;
    let redirect_listen = config.http.redirect_listen;
    let cascade_token = config.cascade.token.clone();
    let control: Arc<Control> = Control::new(config, handles)?;
    control.cascade.set_clients(Clients {
        remote: remote.with_token(cascade_token.as_ref().map(|t| t.0.as_str())),
        local: HttpClient::new(&Trust {
            ca_file: None,
            insecure: true,
        })?
        .with_token(Some(gate.internal_token())),
        cluster: cluster_client,
    });
    tokio::spawn(control.clone().dispatch_events(events_rx));
    tokio::spawn(control.clone().heartbeat());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding http.listen {listen}"))?;
    let addr = listener.local_addr()?;
    control.set_http_port(addr.port());
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("corecast is up: {workers} worker(s), {ports} ({transports})");
    println!("  page:    {scheme}://{addr}/");
    println!("  WHIP:    {scheme}://{addr}/whip/{{stream}}");
    println!("  WHEP:    {scheme}://{addr}/whep/{{stream}}");
    println!("  streams: {scheme}://{addr}/api/streams   metrics: {scheme}://{addr}/metrics");
    if control.tcp_on_http() {
        println!("  ICE-TCP: media also on this port ({scheme} listener, media.tcp_on_http)");
    }
    println!("{limits_line}");
    println!("{admission_line}");
    println!("{front_door_line}");
    println!("{cluster_line}");
    // One shutdown signal for every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    if let Some(redirect) = redirect_listen {
        let plain = tokio::net::TcpListener::bind(redirect)
            .await
            .with_context(|| format!("binding http.redirect_listen {redirect}"))?;
        println!(
            "  redirect: http://{} -> https port {}",
            plain.local_addr()?,
            addr.port()
        );
        tokio::spawn(crate::control::listener::serve(
            plain,
            redirect_router(addr.port()),
            limits.clone(),
            None,
            None,
            stopped(stop_rx.clone()),
        ));
    }
    tokio::spawn(reload_on_sighup(tls.clone()));
    let door = control.tcp_on_http().then(|| control.clone());
    crate::control::listener::serve(
        listener,
        http::router(control, limits.clone(), gate),
        limits,
        tls,
        door,
        stopped(stop_rx),
    )
    .await;
    Ok(())
}

/// The client for other relays (cascade) and other nodes: the system's CAs, `cascade.ca_file`
/// or `cascade.insecure`.
fn remote_client(config: &Config) -> anyhow::Result<HttpClient> {
    HttpClient::new(&Trust {
        ca_file: config.cascade.ca_file.clone(),
        insecure: config.cascade.insecure,
    })
    .context("cascade.ca_file")
}

/// The start-up line about the cluster.
fn cluster_summary(config: &Config) -> String {
    match &config.cluster.redis {
        None => "  cluster: none (a single relay; set cluster.redis to join one)".into(),
        Some(url) => format!(
            "  cluster: node `{}` at {}, directory {}, {}",
            config.node_id(),
            config.advertise_url(),
            crate::config::redis_url_without_password(&url.0),
            match config.max_players() {
                usize::MAX => "no player limit (single-port mode: set cluster.max_players \
                               for this node to send players elsewhere)"
                    .to_string(),
                n => format!("up to {n} players"),
            }
        ),
    }
}

/// The start-up lines about TLS and tokens, and warnings where the relay is open to more than
/// this machine.
fn front_door_summary(config: &Config, tls: Option<&TlsServer>, gate: &Gate) -> String {
    let listen = config.http.listen;
    let beyond_loopback = !listen.ip().is_loopback();
    let auth = &config.auth;
    if beyond_loopback && !gate.enabled() {
        tracing::warn!(
            "http.listen {listen} is reachable beyond this machine and no tokens are configured: \
             anyone who reaches it may publish, play, end streams and republish; set \
             [[auth.tokens]] or [auth.jwt] (README, \"Public deployment\")"
        );
    }
    if beyond_loopback && gate.enabled() && tls.is_none() {
        tracing::warn!(
            "tokens are required but http.listen {listen} is plain HTTP: they cross the network \
             readable by anyone on the path; set http.tls_cert and http.tls_key"
        );
    }
    let tls_line = match tls {
        None => "off (plain HTTP)".to_string(),
        Some(t) if t.is_self_signed() => format!(
            "self-signed certificate (browsers warn), SHA-256 fingerprint {}",
            t.fingerprint()
        ),
        Some(t) => format!(
            "certificate SHA-256 fingerprint {} (SIGHUP reloads it)",
            t.fingerprint()
        ),
    };
    let jwt = match &auth.jwt {
        None => "",
        Some(crate::control::auth::JwtConfig::Secret(_)) => ", JWT HS256",
        Some(crate::control::auth::JwtConfig::PublicKey(_)) => ", JWT with a public key",
    };
    let tokens = if gate.enabled() {
        format!("required ({} static{jwt})", auth.tokens.len())
    } else {
        "none required (open)".to_string()
    };
    let webhook = auth.webhook.as_ref().map_or(String::new(), |w| {
        // The URL without any credentials in it.
        let url = match w.url.split_once("://") {
            Some((scheme, rest)) => {
                let cut = rest.find(['/', '?']).unwrap_or(rest.len());
                let (authority, path) = rest.split_at(cut);
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{scheme}://{host}{path}")
            }
            None => w.url.clone(),
        };
        format!("; admission webhook {url}")
    });
    format!("  TLS:     {tls_line}\n  tokens:  {tokens}{webhook}")
}

/// Reads the certificate and key again on each SIGHUP; connections already open keep theirs.
/// Without TLS a SIGHUP (`systemctl reload`) is logged and changes nothing, rather than ending
/// the process as it would by default.
async fn reload_on_sighup(tls: Option<Arc<TlsServer>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the certificate will not be reloaded");
        return;
    };
    while hangups.recv().await.is_some() {
        let Some(tls) = &tls else {
            tracing::info!("SIGHUP: no TLS certificate to reload (http.tls is off)");
            continue;
        };
        match tls.reload() {
            Ok(fingerprint) => {
                tracing::info!(%fingerprint, "SIGHUP: TLS certificate reloaded for new connections")
            }
            Err(e) => tracing::warn!("SIGHUP: keeping the TLS certificate in use: {e}"),
        }
    }
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
