//! The front door on real relay processes: HTTPS (self-signed and from files, reloaded on
//! SIGHUP), static tokens and JWTs on every entry point with their 401s and 403s, the
//! per-token session cap, the plain listener that redirects to HTTPS, the admission webhook
//! (denying, timing out, allowing, and told when sessions end), cascade push and pull between
//! two HTTPS relays with tokens, and Chromium publishing and playing over HTTPS and WSS with a
//! token (`--ignore-certificate-errors` for the self-signed certificate).

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{CHROME_PUBLISH_OFFER, Relay, eventually, free_tcp_port, media_range};
use corecast::client::http::{HttpClient, Response, Trust};
use corecast::client::{self, ClientOptions, Incoming, Role, Transport};
use serde_json::{Value, json};
use webrtc_dtls::crypto::Certificate;

const JWT_SECRET: &str = "front-door-test-secret-of-32-bytes!";
const STUDIO: &str = "studio-publish-token-1";
const VIEWER: &str = "viewer-play-token-0001";
const OPERATOR: &str = "operator-admin-token-01";
const CLUSTER: &str = "cluster-token-all-rights-1";

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("corecast-front-door-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a certificate for localhost and 127.0.0.1 and its key as PEM; returns the
/// certificate's SHA-256 fingerprint.
fn write_certificate(cert: &str, key: &str) -> String {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(cert, made.cert.pem()).unwrap();
    std::fs::write(key, made.key_pair.serialize_pem()).unwrap();
    corecast::control::tls::fingerprint(made.cert.der())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: &Value) -> String {
    use aws_lc_rs::hmac;
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let key = hmac::Key::new(hmac::HMAC_SHA256, JWT_SECRET.as_bytes());
    let tag = hmac::sign(&key, format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// A relay process serving HTTPS, started with `config` as its file.
struct TlsRelay {
    relay: Relay,
    base: String,
    _dir: Scratch,
}

impl TlsRelay {
    fn start(name: &str, config: &str, env: &[(&str, &str)]) -> TlsRelay {
        let dir = Scratch::new(name);
        let file = dir.path("corecast.toml");
        std::fs::write(&file, config).unwrap();
        let range = media_range(16);
        let mut all = vec![
            ("CORECAST_WORKERS_COUNT", "1"),
            ("CORECAST_MEDIA_PORTS", range.as_str()),
        ];
        all.extend_from_slice(env);
        let relay = Relay::start_with_args(&all, &["--config", &file]);
        let base = relay.http.replacen("http://", "https://", 1);
        TlsRelay {
            relay,
            base,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A metric's value (exact name and labels), read with `token`.
    async fn metric(&self, token: Option<&str>, name: &str) -> u64 {
        let r = call(token, "GET", &self.url("/metrics"), None, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum()
    }
}

/// A client that accepts any certificate (the relays' are self-signed), with `token`.
fn insecure(token: Option<&str>) -> HttpClient {
    HttpClient::new(&Trust {
        ca_file: None,
        insecure: true,
    })
    .unwrap()
    .with_token(token)
}

async fn call(
    token: Option<&str>,
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &str,
) -> Response {
    insecure(token)
        .request(method, url, content_type, body, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

async fn whip(token: Option<&str>, url: &str) -> Response {
    call(
        token,
        "POST",
        url,
        Some("application/sdp"),
        CHROME_PUBLISH_OFFER,
    )
    .await
}

fn options(url: String, role: Role, http: HttpClient, certificate: &Certificate) -> ClientOptions {
    ClientOptions {
        http,
        ..ClientOptions::new(url, role, Transport::Udp, certificate)
    }
}

/// Publishes with corecast's client and sends a 30 fps packet train from a task.
async fn publish(url: String, http: HttpClient) -> tokio::task::JoinHandle<()> {
    let certificate = Certificate::generate_self_signed(vec!["test".into()]).unwrap();
    let mut session = client::connect(
        &options(url.clone(), Role::Publish, http, &certificate),
        Box::new(|_| {}),
    )
    .await
    .unwrap_or_else(|e| panic!("publishing to {url}: {e}"));
    let pt = session.negotiated.video_payload_type.unwrap();
    let ssrc = session.video_ssrc;
    tokio::spawn(async move {
        for seq in 0u16.. {
            let mut p = vec![0x80, pt | 0x80];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(seq as u32 * 3000).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.resize(500, 7);
            let _ = session.send_rtp(&p).await;
            tokio::time::sleep(Duration::from_millis(33)).await;
        }
    })
}

/// Plays with corecast's client and counts the RTP packets that arrive.
async fn play(url: String, http: HttpClient) -> (client::Session, Arc<AtomicU64>) {
    let certificate = Certificate::generate_self_signed(vec!["test".into()]).unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let session = client::connect(
        &options(url.clone(), Role::Play, http, &certificate),
        Box::new(move |incoming| {
            if let Incoming::Rtp(_) = incoming {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("playing {url}: {e}"));
    (session, received)
}

async fn packets_arrive(what: &str, received: &AtomicU64, relay: &Relay) {
    let start = received.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(15), || received.load(Ordering::Relaxed)
            > start + 20)
        .await,
        "no media for {what}:\n{}",
        relay.log()
    );
}

const TOKENS: &str = r#"
[[auth.tokens]]
token = "studio-publish-token-1"
allow = ["publish"]
streams = "cam*"
name = "studio"
[[auth.tokens]]
token = "viewer-play-token-0001"
allow = ["play"]
[[auth.tokens]]
token = "operator-admin-token-01"
allow = ["admin"]
[auth.jwt]
secret = "front-door-test-secret-of-32-bytes!"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_every_entry_point_over_https_and_refusals_leave_nothing_behind() {
    let redirect = free_tcp_port();
    let config = format!(
        "[http]\ntls = \"self-signed\"\nmax_sessions_per_token = 2\nredirect_listen = \
         \"127.0.0.1:{redirect}\"\n[auth]\nmetrics = \"admin\"\n{TOKENS}"
    );
    let relay = TlsRelay::start(
        "tokens",
        &config,
        &[("CORECAST_HTTP_HEADER_TIMEOUT_MS", "1000")],
    );
    let log = relay.relay.log();
    assert!(log.contains("self-signed certificate"), "{log}");
    assert!(!log.contains(STUDIO) && !log.contains(JWT_SECRET), "{log}");

    // The page is open: it asks for a token when it needs one.
    assert_eq!(
        call(None, "GET", &relay.url("/"), None, "").await.status,
        200
    );

    let missing = whip(None, &relay.url("/whip/cam")).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(
        missing.body.contains("requires a token"),
        "{}",
        missing.body
    );
    assert!(
        missing
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer")),
        "{:?}",
        missing.headers
    );
    let wrong = whip(Some("not-a-token-of-this-relay"), &relay.url("/whip/cam")).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not valid"), "{}", wrong.body);
    assert!(
        wrong
            .header("www-authenticate")
            .is_some_and(|c| c.contains("invalid_token"))
    );
    let expired = jwt(&json!({"sub": "late", "exp": unix_now() - 3600, "allow": ["publish"]}));
    let r = whip(Some(&expired), &relay.url("/whip/cam")).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("expired"), "{}", r.body);
    let r = whip(Some(STUDIO), &relay.url("/whip/other")).await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("covers streams `cam*`, not `other`"),
        "{}",
        r.body
    );
    let r = whip(Some(VIEWER), &relay.url("/whip/cam")).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("allows play, not publish"), "{}", r.body);
    // The API and the metrics are for admins.
    assert_eq!(
        call(None, "GET", &relay.url("/metrics"), None, "")
            .await
            .status,
        401
    );
    assert_eq!(
        call(Some(STUDIO), "GET", &relay.url("/api/streams"), None, "")
            .await
            .status,
        403
    );
    let streams = call(Some(OPERATOR), "GET", &relay.url("/api/streams"), None, "").await;
    assert_eq!((streams.status, streams.body.as_str()), (200, "[]"));
    // Nothing of the refused requests is left.
    assert_eq!(
        relay.metric(Some(OPERATOR), "corecast_ports_in_use").await,
        0
    );
    assert_eq!(
        relay
            .metric(Some(OPERATOR), "corecast_sessions_created_total")
            .await,
        0
    );
    assert_eq!(
        relay
            .metric(
                Some(OPERATOR),
                "corecast_auth_refused_total{reason=\"missing\"}"
            )
            .await,
        2
    );
    assert_eq!(
        relay
            .metric(
                Some(OPERATOR),
                "corecast_auth_refused_total{reason=\"forbidden\"}"
            )
            .await,
        3
    );

    // Two sessions per token; a third waits until one ends. A DELETE needs the session's right.
    let first = whip(Some(STUDIO), &relay.url("/whip/cam-1")).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(
        whip(Some(STUDIO), &relay.url("/whip/cam-2")).await.status,
        201
    );
    let third = whip(Some(STUDIO), &relay.url("/whip/cam-3")).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(
        third.body.contains("max_sessions_per_token"),
        "{}",
        third.body
    );
    assert_eq!(
        relay
            .metric(Some(OPERATOR), "corecast_sessions_refused_per_token_total")
            .await,
        1
    );
    let session = relay.url(first.header("location").unwrap());
    assert_eq!(
        call(Some(VIEWER), "DELETE", &session, None, "")
            .await
            .status,
        403
    );
    assert_eq!(
        call(Some(STUDIO), "DELETE", &session, None, "")
            .await
            .status,
        200
    );
    let mut freed = false;
    for _ in 0..20 {
        if whip(Some(STUDIO), &relay.url("/whip/cam-3")).await.status == 201 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the ended session's slot came back");

    // The plain listener redirects with 308; the client follows it with the POST and its body.
    let plain = format!("http://127.0.0.1:{redirect}");
    let moved = call(None, "GET", &format!("{plain}/whep/cam?x=1"), None, "").await;
    // Followed to HTTPS, where the WHEP route takes no GET.
    assert_eq!(moved.url, relay.url("/whep/cam?x=1"));
    assert_eq!(moved.status, 405, "{}", moved.body);
    // A JWT that may publish any stream (`redirected` is outside the studio's `cam*`).
    let any_stream = jwt(&json!({"sub": "ops", "exp": unix_now() + 600, "allow": ["publish"]}));
    let followed = whip(Some(&any_stream), &format!("{plain}/whip/redirected")).await;
    assert_eq!(followed.status, 201, "{}", followed.body);
    assert!(followed.url.starts_with("https://"), "{}", followed.url);

    // Media over HTTPS signaling with tokens: JWTs for the publisher (the studio's token holds
    // its two sessions) and the player.
    let player_jwt = jwt(
        &json!({"sub": "alice", "exp": unix_now() + 600, "allow": ["play"], "streams": "cam-*"}),
    );
    let _sending = publish(relay.url("/whip/cam-live"), insecure(Some(&any_stream))).await;
    let (player, received) = play(relay.url("/whep/cam-live"), insecure(Some(&player_jwt))).await;
    packets_arrive("the JWT player", &received, &relay.relay).await;
    player.close().await;

    // The timeouts hold over TLS: a connection that never finishes its handshake is closed by
    // the header timeout; one that speaks plain HTTP fails its handshake. Both are counted.
    let op = Some(OPERATOR);
    // (The harness's check that the relay listens was a connection without a handshake.)
    let failures_before = relay
        .metric(op, "corecast_tls_handshake_failures_total")
        .await;
    let port = relay.port();
    let silent = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.write_all(&[0x16, 0x03, 0x01]).unwrap(); // the start of a ClientHello
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed = socket.read_to_end(&mut rest).is_ok();
        (closed, started.elapsed())
    });
    let (closed, after) = silent.await.unwrap();
    assert!(
        closed && after < Duration::from_secs(4),
        "{closed} {after:?}"
    );
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let _ = plain.read_to_end(&mut Vec::new());
    assert_eq!(
        relay
            .metric(op, "corecast_http_header_timeouts_total")
            .await,
        1
    );
    assert_eq!(
        relay
            .metric(op, "corecast_tls_handshake_failures_total")
            .await,
        failures_before + 1
    );
}

/// A tiny webhook on loopback: streams named `deny-*` are refused with 403, `slow-*` get no
/// answer in time, others are allowed. Every request's JSON is kept.
fn start_webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(100) {
            let Ok(mut stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break body.to_string();
                        }
                    }
                };
                let event: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let stream_name = event["stream"].as_str().unwrap_or("").to_string();
                record.lock().unwrap().push(event);
                let (status, text) = if stream_name.starts_with("deny-") {
                    ("403 Forbidden", "not on the guest list")
                } else if stream_name.starts_with("slow-") {
                    std::thread::sleep(Duration::from_secs(2));
                    ("200 OK", "too late")
                } else {
                    ("200 OK", "welcome")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_denies_times_out_and_allows_and_hears_of_the_end() {
    let (hook, seen) = start_webhook();
    // Everything from the environment this time, the nested keys included.
    let relay = TlsRelay::start(
        "webhook",
        "",
        &[
            ("CORECAST_HTTP_TLS", "self-signed"),
            ("CORECAST_AUTH_JWT_SECRET", JWT_SECRET),
            ("CORECAST_AUTH_WEBHOOK_URL", &hook),
            ("CORECAST_AUTH_WEBHOOK_TIMEOUT_MS", "300"),
        ],
    );
    let token = jwt(&json!({"sub": "alice", "exp": unix_now() + 600,
                            "allow": ["publish", "admin"], "streams": "*"}));
    let token = Some(token.as_str());

    let denied = whip(token, &relay.url("/whip/deny-1")).await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(
        denied.body.contains("not on the guest list"),
        "{}",
        denied.body
    );
    let slow = whip(token, &relay.url("/whip/slow-1")).await;
    assert_eq!(slow.status, 503, "{}", slow.body);
    assert!(slow.body.contains("timeout_ms = 300"), "{}", slow.body);
    // The refused sessions are gone, their ports free.
    let streams = call(token, "GET", &relay.url("/api/streams"), None, "").await;
    assert_eq!(streams.body, "[]");
    let mut ports_free = false;
    for _ in 0..30 {
        if relay.metric(token, "corecast_ports_in_use").await == 0 {
            ports_free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ports_free, "{}", relay.relay.log());

    let allowed = whip(token, &relay.url("/whip/ok-1")).await;
    assert_eq!(allowed.status, 201, "{}", allowed.body);
    let location = allowed.header("location").unwrap().to_string();
    // `/session/{id}-{key}`
    let session: u64 = corecast::control::resource::parse(location.rsplit('/').next().unwrap())
        .unwrap()
        .0;
    assert_eq!(
        call(token, "DELETE", &relay.url(&location), None, "")
            .await
            .status,
        200
    );
    let told = || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "unpublish" && e["session"] == session)
    };
    assert!(
        eventually(Duration::from_secs(5), told).await,
        "{:?}",
        seen.lock().unwrap()
    );

    let events = seen.lock().unwrap().clone();
    let asked = events
        .iter()
        .find(|e| e["stream"] == "deny-1")
        .expect("the webhook was asked about deny-1");
    assert_eq!(asked["action"], "publish");
    assert_eq!(asked["client"], "127.0.0.1");
    assert_eq!(asked["claims"]["sub"], "alice");
    assert!(asked["session"].as_u64().is_some(), "{asked}");
    for (verdict, count) in [("allowed", 1), ("denied", 1), ("failed", 1)] {
        let name = format!("corecast_webhook_answers_total{{verdict=\"{verdict}\"}}");
        assert_eq!(relay.metric(token, &name).await, count, "{verdict}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_pushes_and_pulls_between_two_https_relays_with_tokens() {
    let certs = Scratch::new("cascade-certs");
    let (origin_cert, origin_key) = (certs.path("origin.pem"), certs.path("origin-key.pem"));
    let (edge_cert, edge_key) = (certs.path("edge.pem"), certs.path("edge-key.pem"));
    write_certificate(&origin_cert, &origin_key);
    write_certificate(&edge_cert, &edge_key);
    let token_table = format!(
        "[[auth.tokens]]\ntoken = \"{CLUSTER}\"\nallow = [\"publish\", \"play\", \"admin\"]\n"
    );
    // The origin pushes to the edge, so it trusts the edge's certificate, and the other way.
    let origin = TlsRelay::start(
        "origin",
        &format!(
            "[http]\ntls_cert = \"{origin_cert}\"\ntls_key = \"{origin_key}\"\n[cascade]\n\
             token = \"{CLUSTER}\"\nca_file = \"{edge_cert}\"\n{token_table}"
        ),
        &[],
    );
    let edge = TlsRelay::start(
        "edge",
        &format!(
            "[http]\ntls_cert = \"{edge_cert}\"\ntls_key = \"{edge_key}\"\n[cascade]\n\
             origin = \"{}\"\ntoken = \"{CLUSTER}\"\nca_file = \"{origin_cert}\"\n{token_table}",
            origin.base
        ),
        &[],
    );
    // The publisher checks the origin's certificate against its file, as a deployment would.
    let trusted = HttpClient::new(&Trust {
        ca_file: Some(origin_cert.clone()),
        insecure: false,
    })
    .unwrap()
    .with_token(Some(CLUSTER));
    let _sending = publish(origin.url("/whip/live"), trusted).await;

    // Pull: the edge does not have `live` and fetches it from the origin over HTTPS.
    let (pulled, received) = play(edge.url("/whep/live"), insecure(Some(CLUSTER))).await;
    packets_arrive("the pulled stream", &received, &edge.relay).await;

    // Push: the origin republishes `live` to the edge as `live-pushed`.
    let body = format!(
        r#"{{"uri":"{}","localStreamName":"live","remoteStreamName":"live-pushed"}}"#,
        edge.base
    );
    let push_url = origin.url("/rest-api/pull/push");
    let unauthorized = call(None, "POST", &push_url, Some("application/json"), &body).await;
    assert_eq!(unauthorized.status, 401);
    let r = call(
        Some(CLUSTER),
        "POST",
        &push_url,
        Some("application/json"),
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let edge_has_it = || async {
        call(Some(CLUSTER), "GET", &edge.url("/api/streams"), None, "")
            .await
            .body
            .contains("live-pushed")
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !edge_has_it().await {
        assert!(
            Instant::now() < deadline,
            "the push did not arrive:\n{}",
            origin.relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (pushed, received) = play(edge.url("/whep/live-pushed"), insecure(Some(CLUSTER))).await;
    packets_arrive("the pushed stream", &received, &edge.relay).await;
    pushed.close().await;
    pulled.close().await;
}

/// The fingerprint of the certificate a new connection to `port` gets.
fn served_fingerprint(port: u16) -> String {
    let config = Trust {
        ca_file: None,
        insecure: true,
    }
    .client_config()
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).unwrap();
    }
    let certs = tls
        .peer_certificates()
        .expect("the relay sent a certificate");
    corecast::control::tls::fingerprint(certs[0].as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_to_new_connections_while_sessions_play() {
    let files = Scratch::new("sighup-certs");
    let (cert, key) = (files.path("cert.pem"), files.path("key.pem"));
    let first = write_certificate(&cert, &key);
    let relay = TlsRelay::start(
        "sighup",
        &format!("[http]\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"),
        &[],
    );
    assert_eq!(served_fingerprint(relay.port()), first);
    let _sending = publish(relay.url("/whip/cam"), insecure(None)).await;
    let (player, received) = play(relay.url("/whep/cam"), insecure(None)).await;
    packets_arrive("the player before the reload", &received, &relay.relay).await;

    let second = write_certificate(&cert, &key);
    assert_ne!(first, second);
    // SAFETY: signalling the relay process this test started, by its PID.
    send_sighup(relay.relay.pid());
    let port = relay.port();
    let reloaded = eventually(Duration::from_secs(5), || {
        served_fingerprint(port) == second
    })
    .await;
    assert!(reloaded, "{}", relay.relay.log());
    assert!(
        relay.relay.log().contains("reloaded"),
        "{}",
        relay.relay.log()
    );
    packets_arrive("the player after the reload", &received, &relay.relay).await;
    // A broken file is refused and the certificate in use stays.
    std::fs::write(&key, "not a key").unwrap();
    send_sighup(relay.relay.pid());
    let kept = eventually(Duration::from_secs(5), || {
        relay
            .relay
            .log()
            .contains("keeping the TLS certificate in use")
    })
    .await;
    assert!(kept, "{}", relay.relay.log());
    assert_eq!(served_fingerprint(port), second);
    player.close().await;
}

mod browser {
    //! Chromium over HTTPS and WSS, as the browser tests drive it (tests/browser.rs), with
    //! `--ignore-certificate-errors` for the relay's self-signed certificate.

    use crate::common::chromium::Chromium;

    /// The suite's Chromium (`common::chromium`), trusting any certificate.
    pub type Browser = Chromium;

    impl Chromium {
        pub async fn start() -> Browser {
            Chromium::launch(&["--ignore-certificate-errors"]).await
        }
    }
}

/// Polls the page's stats of `id` until `check` holds.
async fn wait_for_stats(
    browser: &browser::Browser,
    id: &Value,
    what: &str,
    relay: &Relay,
    check: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let stats = browser
            .call(
                "return await corecast.stats(arguments[0])",
                vec![id.clone()],
            )
            .await;
        if check(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:#}\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn chromium_publishes_and_plays_over_https_and_wss_with_a_token() {
    const TEST: &str = "chromium_publishes_and_plays_over_https_and_wss_with_a_token";
    if common::in_private_network(TEST) {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let tokens = format!(
                "[http]\ntls = \"self-signed\"\n[[auth.tokens]]\ntoken = \"{CLUSTER}\"\n\
                 allow = [\"publish\", \"play\"]\nstreams = \"web-*\"\n"
            );
            let relay = TlsRelay::start("browser", &tokens, &[]);
            let browser = browser::Browser::start().await;
            browser
                .client
                .goto(&relay.url("/"))
                .await
                .expect("loading the page over HTTPS");
            // The relay answers 401: the page asks for a token (here the test answers).
            browser
                .call(
                    &format!(
                        "window.asked = 0; window.prompt = () => {{ window.asked++; return '{CLUSTER}'; }}"
                    ),
                    vec![],
                )
                .await;
            let publisher = browser
                .call("return await corecast.publish('web-cam')", vec![])
                .await;
            assert_eq!(browser.call("return window.asked", vec![]).await, 1);
            let player = browser
                .call("return await corecast.play('web-cam')", vec![])
                .await;
            let ok = |s: &Value| {
                s["error"].is_null() && s["videoFramesDecoded"].as_u64().unwrap_or(0) > 30
            };
            wait_for_stats(&browser, &player, "the WHEP player to decode", &relay.relay, ok).await;
            let _ = publisher;

            assert_eq!(browser.call("return window.asked", vec![]).await, 1);

            // WSS, the token in the first message: without one the relay says 401.
            let command = |msg: Value| {
                let browser = &browser;
                async move {
                    browser
                        .call("return await corecast.command(arguments[0])", vec![msg])
                        .await
                }
            };
            browser.call("corecast.setToken(null)", vec![]).await;
            let bare = command(json!({"type": "play", "stream": "web-ws", "sdp": "v=0"})).await;
            assert_eq!(bare["status"], 401, "{bare}");
            let auth = command(json!({"type": "auth", "token": CLUSTER})).await;
            assert_eq!(auth["type"], "authenticated", "{auth}");
            let ws = json!({ "signaling": "ws" });
            browser
                .call(
                    "return await corecast.publish('web-ws', arguments[0])",
                    vec![ws.clone()],
                )
                .await;
            let ws_player = browser
                .call(
                    "return await corecast.play('web-ws', arguments[0])",
                    vec![ws.clone()],
                )
                .await;
            wait_for_stats(&browser, &ws_player, "the WSS player to decode", &relay.relay, ok).await;

            // The token in the WebSocket's query (a fresh page): a stream it does not cover is
            // 403, where no token would be 401.
            browser.client.goto(&relay.url("/")).await.unwrap();
            browser
                .call("corecast.setToken(arguments[0])", vec![json!(CLUSTER)])
                .await;
            let outside = command(json!({"type": "play", "stream": "other", "sdp": "v=0"})).await;
            assert_eq!(outside["status"], 403, "{outside}");
            browser.close().await;
        });
}

#[test]
fn the_public_example_configuration_loads_and_prints_no_token() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/corecast-public.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--config", path, "--print-config"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("tls_cert = \"/etc/letsencrypt"),
        "{printed}"
    );
    assert!(printed.contains("metrics = \"admin\""), "{printed}");
    assert!(
        !printed.contains("replace-with-a-long-random-string"),
        "{printed}"
    );
}

/// Asks the relay to reload its certificate, as an operator would.
fn send_sighup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -HUP {pid}");
}
