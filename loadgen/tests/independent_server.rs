//! loadgen against a WebRTC implementation nobody here wrote: a small WHIP/WHEP relay built on
//! webrtc-rs (the `webrtc` crate), started in this test process. It is a full ICE agent that
//! checks back, and its answers say `a=setup:active` (it is the DTLS client), the two things
//! corecast (ICE-lite, `setup:passive`) never asks of loadgen. Every player joins and nothing
//! is lost; `--relay-pid` alone reads its CPU; and when the server drops the publisher
//! mid-run, loadgen reports the stream stopped and fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::dtls_transport::dtls_role::DTLSRole;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTPCodecType};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

/// One published stream: the tracks players get (what the publisher sends, written on), and
/// the publisher's connection.
struct Stream {
    audio: Arc<TrackLocalStaticRTP>,
    video: Arc<TrackLocalStaticRTP>,
    publisher: Arc<RTCPeerConnection>,
}

/// The relay: webrtc-rs peer connections, one per WHIP or WHEP session.
struct Server {
    api: API,
    streams: Mutex<HashMap<String, Stream>>,
    sessions: Mutex<HashMap<u64, Arc<RTCPeerConnection>>>,
    next: Mutex<u64>,
    /// Close each publisher's connection this long after it published: the publisher dies.
    drop_publishers_after: Option<Duration>,
    /// Every answer given, for the test to see what loadgen was asked to do.
    answers: Answers,
}

type Answers = Arc<Mutex<Vec<String>>>;

fn webrtc_api() -> API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry =
        register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
    let mut settings = SettingEngine::default();
    // Loopback only, IPv4 only, no mDNS: nothing leaves the machine.
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_include_loopback_candidate(true);
    settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    // webrtc-rs's own default, made explicit: its answer says `a=setup:active`.
    settings
        .set_answering_dtls_role(DTLSRole::Client)
        .expect("a valid answering role");
    APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build()
}

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, message.to_string()).into_response()
}

impl Server {
    /// Offer in, answer out (after gathering: WHIP and WHEP carry every candidate in it).
    async fn answer(&self, pc: &Arc<RTCPeerConnection>, offer: String) -> Result<String, String> {
        let offer = RTCSessionDescription::offer(offer).map_err(|e| e.to_string())?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| e.to_string())?;
        let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer)
            .await
            .map_err(|e| e.to_string())?;
        let _ = gathered.recv().await;
        let answer = pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| "no local description".to_string())?;
        self.answers.lock().unwrap().push(answer.clone());
        Ok(answer)
    }

    fn created(&self, pc: Arc<RTCPeerConnection>, answer: String) -> Response {
        let id = {
            let mut next = self.next.lock().unwrap();
            *next += 1;
            *next
        };
        self.sessions.lock().unwrap().insert(id, pc);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/sdp".parse().unwrap());
        headers.insert(header::LOCATION, format!("/session/{id}").parse().unwrap());
        (StatusCode::CREATED, headers, answer).into_response()
    }
}

async fn whip(
    State(server): State<Arc<Server>>,
    UrlPath(name): UrlPath<String>,
    offer: String,
) -> Response {
    let pc = match server
        .api
        .new_peer_connection(RTCConfiguration::default())
        .await
    {
        Ok(pc) => Arc::new(pc),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let receive_only = || {
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: vec![],
        })
    };
    for kind in [RTPCodecType::Audio, RTPCodecType::Video] {
        if let Err(e) = pc.add_transceiver_from_kind(kind, receive_only()).await {
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    }
    // loadgen offers Opus and VP8 first: the tracks players get carry those.
    let track = |mime: &str, clock_rate, channels, kind: &str| {
        Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability {
                mime_type: mime.to_string(),
                clock_rate,
                channels,
                ..Default::default()
            },
            kind.to_string(),
            format!("independent-{name}"),
        ))
    };
    let audio = track(MIME_TYPE_OPUS, 48000, 2, "audio");
    let video = track(MIME_TYPE_VP8, 90000, 0, "video");
    // Each packet the publisher sends goes on, unchanged but for SSRC and payload type.
    let (to_audio, to_video) = (audio.clone(), video.clone());
    pc.on_track(Box::new(move |remote, _, _| {
        let local = if remote.kind() == RTPCodecType::Audio {
            to_audio.clone()
        } else {
            to_video.clone()
        };
        Box::pin(async move {
            tokio::spawn(async move {
                while let Ok((packet, _)) = remote.read_rtp().await {
                    let _ = local.write_rtp(&packet).await;
                }
            });
        })
    }));
    let answer = match server.answer(&pc, offer).await {
        Ok(answer) => answer,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    if let Some(after) = server.drop_publishers_after {
        let publisher = pc.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = publisher.close().await;
        });
    }
    server.streams.lock().unwrap().insert(
        name,
        Stream {
            audio,
            video,
            publisher: pc.clone(),
        },
    );
    server.created(pc, answer)
}

async fn whep(
    State(server): State<Arc<Server>>,
    UrlPath(name): UrlPath<String>,
    offer: String,
) -> Response {
    let tracks = server
        .streams
        .lock()
        .unwrap()
        .get(&name)
        .map(|s| (s.audio.clone(), s.video.clone()));
    let Some((audio, video)) = tracks else {
        return refuse(StatusCode::NOT_FOUND, format!("no stream {name}"));
    };
    let pc = match server
        .api
        .new_peer_connection(RTCConfiguration::default())
        .await
    {
        Ok(pc) => Arc::new(pc),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    for track in [audio, video] {
        match pc
            .add_track(track as Arc<dyn TrackLocal + Send + Sync>)
            .await
        {
            // The player's RTCP must be read for the interceptors (NACK, reports) to run.
            Ok(sender) => {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1500];
                    while sender.read(&mut buf).await.is_ok() {}
                });
            }
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
    match server.answer(&pc, offer).await {
        Ok(answer) => server.created(pc, answer),
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

async fn end_session(State(server): State<Arc<Server>>, UrlPath(id): UrlPath<u64>) -> Response {
    let pc = server.sessions.lock().unwrap().remove(&id);
    match pc {
        Some(pc) => {
            let _ = pc.close().await;
            server
                .streams
                .lock()
                .unwrap()
                .retain(|_, s| !Arc::ptr_eq(&s.publisher, &pc));
            StatusCode::OK.into_response()
        }
        None => refuse(StatusCode::NOT_FOUND, "no such session"),
    }
}

/// Starts the webrtc-rs relay on a runtime of its own; returns its base URL and the answers it
/// will give.
fn start_server(drop_publishers_after: Option<Duration>) -> (String, Answers) {
    let answers = Answers::default();
    let given = answers.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let server = Arc::new(Server {
                api: webrtc_api(),
                streams: Mutex::default(),
                sessions: Mutex::default(),
                next: Mutex::new(0),
                drop_publishers_after,
                answers: given,
            });
            let app = axum::Router::new()
                .route("/whip/{name}", post(whip))
                .route("/whep/{name}", post(whep))
                .route("/session/{id}", delete(end_session))
                .with_state(server);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (base, answers)
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("loadgen-independent-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// loadgen with `players` players of one stream on `server`, for `duration` seconds.
fn loadgen(server: &str, out: &Path, players: &str, duration: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--whip",
            &format!("{server}/whip/{{stream}}"),
            "--whep",
            &format!("{server}/whep/{{stream}}"),
            "--streams",
            "1",
            "--players",
            players,
            "--duration",
            duration,
            "--ramp",
            "100",
            "--video-kbps",
            "500",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
            // The server runs in this test process: its CPU is this process's.
            "--relay-pid",
            &std::process::id().to_string(),
        ])
        .output()
        .expect("running loadgen")
}

#[test]
fn loadgen_drives_a_full_ice_setup_active_webrtc_rs_server_without_loss() {
    let (server, answers) = start_server(None);
    let out = scratch("clean");
    let result = loadgen(&server, &out, "10", "3");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let s = summary(&out);
    assert_eq!(s["players"]["joined"], 10, "{s:#}");
    assert_eq!(s["players"]["failed"], 0, "{s:#}");
    assert_eq!(s["players"]["publishers_joined"], 1, "{s:#}");
    assert_eq!(s["totals"]["lost_packets"], 0, "{s:#}");
    assert!(
        s["totals"]["received_packets"].as_u64().unwrap() > 1000,
        "{s:#}"
    );
    assert_eq!(s["media"]["gaps"], 0, "{s:#}");
    assert_eq!(
        s["media"]["stopped_streams"],
        serde_json::json!([]),
        "{s:#}"
    );
    // `--relay-pid` alone: the server's CPU over the packets its players received.
    let relay = &s["relay"];
    assert_eq!(relay["packets_from"], "players", "{s:#}");
    assert!(relay["forwarded_packets"].as_u64().unwrap() > 500, "{s:#}");
    assert!(
        relay["cpu_ns_per_forwarded_packet"].as_f64().unwrap() > 0.0,
        "{s:#}"
    );
    assert!(stdout.contains("packets/s received by players"), "{stdout}");
    // What made this server different: every answer made loadgen the DTLS server, and none
    // was ICE-lite (the server checked back, and loadgen answered).
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), 11);
    for answer in answers.iter() {
        assert!(answer.contains("a=setup:active"), "{answer}");
        assert!(!answer.contains("a=ice-lite"), "{answer}");
        assert!(answer.contains("typ host"), "{answer}");
    }
}

#[test]
fn loadgen_reports_a_stream_whose_publisher_died_and_fails() {
    // The server drops the publisher 2 s after it published; the run lasts 4 s after the
    // players joined.
    let (server, _) = start_server(Some(Duration::from_secs(2)));
    let out = scratch("stopped");
    let result = loadgen(&server, &out, "3", "4");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert_eq!(result.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error: stream loadgen-0 stopped"),
        "{stdout}"
    );
    let s = summary(&out);
    assert_eq!(s["players"]["joined"], 3, "{s:#}");
    let stopped = &s["media"]["stopped_streams"];
    assert_eq!(stopped[0]["stream"], "loadgen-0", "{s:#}");
    assert_eq!(stopped[0]["players"], 3, "{s:#}");
    // Media came for about the 2 s the publisher lived.
    let last = stopped[0]["last_media_s"].as_f64().unwrap();
    assert!((1.0..4.0).contains(&last), "{s:#}");
    assert!(s["media"]["gaps"].as_u64().unwrap() >= 3, "{s:#}");
}
