//! A WebRTC endpoint that publishes or plays through any WHIP/WHEP server: the load generator
//! drives many of them, and a relay republishes a stream to another relay with one.
//!
//! It offers like a browser (Opus, VP8, H264; BUNDLE, rtcp-mux, `setup:actpass`), sends the
//! offer with WHIP or WHEP, then acts as the controlling ICE agent towards the server's host
//! candidate over UDP or ICE-TCP (RFC 4571 framing), runs the DTLS client (webrtc-dtls) and
//! protects and unprotects SRTP in place with the relay's own [`crate::srtp`].
//!
//! It repairs loss as a browser does ([`repair`]): it offers generic NACK and RTX for video; as
//! a player it NACKs the gaps in the video stream and restores the RTX packets that answer, as
//! a publisher it keeps the last second of video and resends what the server NACKs.

pub mod http;
pub mod repair;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex as SyncMutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use webrtc_dtls::config::{Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::KeyingMaterialExporter;
use webrtc_util::conn::Conn;

use crate::sdp::format_fingerprint;
use crate::srtp::{SrtpContext, SrtpProfile};
use crate::wire::demux::{PacketKind, classify};
use crate::wire::framing::{self, FrameReader};
use crate::wire::stun::{self, BINDING_REQUEST, StunMessage, StunWriter};
use repair::{LossGate, PlayRepair, PublishRepair};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publish,
    Play,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Http(#[from] http::HttpError),
    #[error("the server refused the offer: {status} {message}")]
    Refused { status: u16, message: String },
    #[error("unusable answer: {0}")]
    Answer(String),
    #[error("connecting the {0} transport: {1}")]
    Transport(Transport, String),
    #[error("ICE: no answer to connectivity checks within {0:?}")]
    IceTimeout(Duration),
    #[error("DTLS: {0}")]
    Dtls(String),
}

/// What the offer and answer settled on.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    pub audio_payload_type: Option<u8>,
    pub video_payload_type: Option<u8>,
    pub video_codec: String,
    pub server: Option<SocketAddr>,
    /// The answer keeps generic NACK for the video codec: loss is repaired both ways.
    pub video_nack: bool,
    /// The answer's RTX payload type for the video codec (`apt=` it), when RTX was negotiated.
    pub video_rtx_payload_type: Option<u8>,
    /// The video SSRC the server announces it sends with (to a player), and its RTX SSRC
    /// (`a=ssrc-group:FID`).
    pub remote_video_ssrc: Option<u32>,
    pub remote_video_rtx_ssrc: Option<u32>,
}

/// Packets a session receives, decrypted, for the caller's handler.
pub enum Incoming<'a> {
    Rtp(&'a [u8]),
    Rtcp(&'a [u8]),
}

/// Called on the session's reader task for every media packet, in arrival order.
pub type Handler = Box<dyn FnMut(Incoming<'_>) + Send>;

pub struct ClientOptions {
    pub url: String,
    pub role: Role,
    pub transport: Transport,
    pub certificate: Certificate,
    /// For the offer, the handshakes, and the HTTP request each.
    pub timeout: Duration,
    /// `SO_RCVBUF` for an ICE-TCP connection; `None` leaves the kernel's autotuning. A small
    /// value emulates a client on a thin link.
    pub tcp_recv_buffer: Option<u32>,
    /// Offer only this video codec (`VP8`, `H264`, `VP9` or `AV1`), e.g. to republish a stream
    /// in the codec it has; `None` offers them all, VP8 first, as browsers do.
    pub video_codec: Option<String>,
    /// The HTTP client for the offer and the DELETE: its TLS trust and bearer token.
    pub http: http::HttpClient,
    /// Offer generic NACK and RTX for video, and repair loss when the answer keeps them;
    /// `false` offers keyframe requests alone, as before loss repair.
    pub repair: bool,
    /// As a publisher, the sent video packets kept for retransmission (rounded up to a power
    /// of two; 1500 bytes each): enough for [`RETRANSMIT_AGE`] at the stream's packet rate.
    pub retransmit_packets: usize,
    /// Drops this share of the SRTP and SRTCP that arrives, before anything else looks at it:
    /// a lossy downlink, repeatable from its seed (the load generator's `--loss`).
    pub arrival_loss: Option<LinkLoss>,
    /// Drops this share of the media [`Session::send_rtp`] sends, after keeping it for
    /// retransmission: a lossy uplink that the server repairs with NACKs (the load
    /// generator's `--publish-loss`). Retransmissions are not dropped.
    pub departure_loss: Option<LinkLoss>,
}

/// A share of packets to drop, and the seed that picks which.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkLoss {
    pub percent: f64,
    pub seed: u64,
}

/// How long a publisher keeps a sent video packet for retransmission: NACKs for older ones
/// come too late for the receiver to use them.
pub const RETRANSMIT_AGE: Duration = Duration::from_secs(1);

impl ClientOptions {
    /// A client with the usual settings: 10 s for each step, the kernel's TCP buffer
    /// autotuning, every video codec offered.
    pub fn new(
        url: impl Into<String>,
        role: Role,
        transport: Transport,
        certificate: &Certificate,
    ) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            role,
            transport,
            certificate: certificate.clone(),
            timeout: Duration::from_secs(10),
            tcp_recv_buffer: None,
            video_codec: None,
            http: http::HttpClient::default(),
            repair: true,
            retransmit_packets: 1024,
            arrival_loss: None,
            departure_loss: None,
        }
    }
}

/// The video codecs the client offers: (payload type, rtpmap, fmtp). Each one's RTX goes under
/// the next payload type (97, 103, 99, 46), free here, as Chromium numbers them.
const VIDEO_CODECS: &[(u8, &str, &str)] = &[
    (96, "VP8/90000", ""),
    (
        102,
        "H264/90000",
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    ),
    (98, "VP9/90000", "profile-id=0"),
    (45, "AV1/90000", ""),
];

/// Counters a session keeps about itself.
#[derive(Default)]
pub struct SessionCounters {
    pub srtp_errors: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// SRTP and SRTCP packets dropped on arrival by [`ClientOptions::arrival_loss`], and RTP
    /// packets not sent by [`ClientOptions::departure_loss`].
    pub dropped_on_arrival: AtomicU64,
    pub dropped_on_departure: AtomicU64,
    /// Playing: NACK packets sent, the sequence numbers they asked for (retries included),
    /// RTX packets received and their bytes, missing packets that arrived after a NACK,
    /// retransmissions of packets not missing (not delivered), and missing packets given up.
    pub nacks_sent: AtomicU64,
    pub nacked_packets: AtomicU64,
    pub rtx_received: AtomicU64,
    pub rtx_received_bytes: AtomicU64,
    pub repaired: AtomicU64,
    pub rtx_duplicates: AtomicU64,
    pub given_up: AtomicU64,
    /// Publishing: NACKs received for our video, packets resent and their bytes (before
    /// SRTP), and packets asked for that were no longer kept.
    pub nacks_received: AtomicU64,
    pub retransmitted: AtomicU64,
    pub retransmitted_bytes: AtomicU64,
    pub retransmit_misses: AtomicU64,
}

impl SessionCounters {
    fn record_play(&self, c: &repair::PlayCounters) {
        self.nacks_sent.store(c.nacks_sent, Ordering::Relaxed);
        self.nacked_packets
            .store(c.nacked_packets, Ordering::Relaxed);
        self.rtx_received.store(c.rtx_received, Ordering::Relaxed);
        self.rtx_received_bytes
            .store(c.rtx_received_bytes, Ordering::Relaxed);
        self.repaired.store(c.repaired, Ordering::Relaxed);
        self.rtx_duplicates
            .store(c.rtx_duplicates, Ordering::Relaxed);
        self.given_up.store(c.given_up, Ordering::Relaxed);
    }

    fn record_publish(&self, c: &repair::PublishCounters) {
        self.nacks_received
            .store(c.nacks_received, Ordering::Relaxed);
        self.retransmitted.store(c.retransmitted, Ordering::Relaxed);
        self.retransmitted_bytes
            .store(c.retransmitted_bytes, Ordering::Relaxed);
        self.retransmit_misses
            .store(c.missed + c.overflowed, Ordering::Relaxed);
    }
}

/// What sends SRTP, shared by the session's owner (media) and its reader task (NACKs and
/// retransmissions): one SRTP context, so the SRTCP index and each SSRC's rollover counter
/// stay single, and the publisher's kept packets beside it.
struct Outbound {
    srtp: SrtpContext,
    publish: Option<PublishRepair>,
}

fn lock<T>(m: &SyncMutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected session.
pub struct Session {
    /// The resource to DELETE when done (the `Location` of the WHIP/WHEP answer).
    pub location: Option<String>,
    pub negotiated: Negotiated,
    /// SSRCs this endpoint sends with (a publisher's audio and video).
    pub audio_ssrc: u32,
    pub video_ssrc: u32,
    /// The SSRC a publisher's video retransmissions go under (announced with FID).
    pub video_rtx_ssrc: u32,
    pub counters: Arc<SessionCounters>,
    link: Link,
    outbound: Arc<SyncMutex<Outbound>>,
    departure_loss: Option<LossGate>,
    buffer: Vec<u8>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dtls: Arc<DTLSConn>,
    closed: watch::Receiver<bool>,
    timeout: Duration,
    http: http::HttpClient,
}

/// The sending half of the transport.
#[derive(Clone)]
enum Link {
    Udp(Arc<UdpSocket>),
    Tcp(Arc<Mutex<OwnedWriteHalf>>),
}

impl Link {
    async fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => socket.send(packet).await.map(|_| ()),
            Link::Tcp(writer) => {
                let mut w = writer.lock().await;
                w.write_all(&(packet.len() as u16).to_be_bytes()).await?;
                w.write_all(packet).await
            }
        }
    }
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The SHA-256 fingerprint of a certificate, as `a=fingerprint` writes it.
pub fn fingerprint_of(certificate: &Certificate) -> String {
    let der = certificate
        .certificate
        .first()
        .map(|c| c.as_ref())
        .unwrap_or_default();
    format_fingerprint(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The SSRC of a publisher's video retransmissions: derived from the video SSRC, so that
/// [`write_offer`] can announce it without another argument. Never equal to it: with
/// `x = (hi, lo)`, `rotl16(x) ^ C = x` needs `hi ^ lo` to equal both halves of `C`, which
/// differ.
pub fn rtx_ssrc_of(video_ssrc: u32) -> u32 {
    video_ssrc.rotate_left(16) ^ 0x5254_5831
}

/// An offer as a browser makes it: Opus; VP8, H264, VP9 and AV1 (or only `video_codec`), each
/// with RTX and generic NACK; BUNDLE, rtcp-mux.
pub fn write_offer(
    role: Role,
    ufrag: &str,
    pwd: &str,
    fingerprint: &str,
    audio_ssrc: u32,
    video_ssrc: u32,
    video_codec: Option<&str>,
) -> String {
    write_offer_with(
        role,
        ufrag,
        pwd,
        fingerprint,
        audio_ssrc,
        video_ssrc,
        video_codec,
        true,
    )
}

/// [`write_offer`], with loss repair (NACK and RTX) offered only when `repair` says so.
#[allow(clippy::too_many_arguments)]
pub fn write_offer_with(
    role: Role,
    ufrag: &str,
    pwd: &str,
    fingerprint: &str,
    audio_ssrc: u32,
    video_ssrc: u32,
    video_codec: Option<&str>,
    repair: bool,
) -> String {
    let direction = match role {
        Role::Publish => "sendonly",
        Role::Play => "recvonly",
    };
    let mut sdp = format!(
        "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=msid-semantic: WMS *\r\n",
        rand::random::<u32>()
    );
    let common = |mid: &str| {
        format!(
            "c=IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:sha-256 {fingerprint}\r\n\
             a=setup:actpass\r\na=mid:{mid}\r\na={direction}\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
        )
    };
    sdp.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
    sdp.push_str(&common("0"));
    sdp.push_str("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n");
    sdp.push_str("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n");
    if role == Role::Publish {
        sdp.push_str(&format!(
            "a=msid:loadgen audio\r\na=ssrc:{audio_ssrc} cname:loadgen\r\n"
        ));
    }
    let codecs: Vec<&(u8, &str, &str)> = VIDEO_CODECS
        .iter()
        .filter(|(_, rtpmap, _)| {
            video_codec.is_none_or(|c| {
                rtpmap
                    .split('/')
                    .next()
                    .is_some_and(|n| n.eq_ignore_ascii_case(c))
            })
        })
        .collect();
    // Each codec followed by its RTX, as Chromium lists them.
    let formats: Vec<String> = codecs
        .iter()
        .flat_map(|(pt, _, _)| {
            let rtx = repair.then(|| (pt + 1).to_string());
            std::iter::once(pt.to_string()).chain(rtx)
        })
        .collect();
    sdp.push_str(&format!(
        "m=video 9 UDP/TLS/RTP/SAVPF {}\r\n",
        formats.join(" ")
    ));
    sdp.push_str(&common("1"));
    for (pt, rtpmap, fmtp) in codecs {
        sdp.push_str(&format!("a=rtpmap:{pt} {rtpmap}\r\n"));
        if repair {
            sdp.push_str(&format!("a=rtcp-fb:{pt} nack\r\n"));
        }
        sdp.push_str(&format!(
            "a=rtcp-fb:{pt} nack pli\r\na=rtcp-fb:{pt} ccm fir\r\n"
        ));
        if !fmtp.is_empty() {
            sdp.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
        }
        if repair {
            let rtx = pt + 1;
            sdp.push_str(&format!(
                "a=rtpmap:{rtx} rtx/90000\r\na=fmtp:{rtx} apt={pt}\r\n"
            ));
        }
    }
    if role == Role::Publish {
        sdp.push_str("a=msid:loadgen video\r\n");
        if repair {
            let rtx_ssrc = rtx_ssrc_of(video_ssrc);
            sdp.push_str(&format!(
                "a=ssrc-group:FID {video_ssrc} {rtx_ssrc}\r\na=ssrc:{video_ssrc} cname:loadgen\r\n\
                 a=ssrc:{rtx_ssrc} cname:loadgen\r\n"
            ));
        } else {
            sdp.push_str(&format!("a=ssrc:{video_ssrc} cname:loadgen\r\n"));
        }
    }
    sdp
}

/// The parts of an answer the client needs.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    pub fingerprint: Vec<u8>,
    /// (transport, address) of every host candidate.
    pub candidates: Vec<(Transport, SocketAddr)>,
    pub audio_payload_type: Option<u8>,
    pub video_payload_type: Option<u8>,
    pub video_codec: String,
    /// The answer lists `a=rtcp-fb:<video pt> nack` (generic NACK, not only `nack pli`).
    pub video_nack: bool,
    /// An `rtx/90000` payload type whose `apt=` is the video payload type.
    pub video_rtx_payload_type: Option<u8>,
    /// The video section's announced SSRC (the first of `a=ssrc-group:FID`, else the first
    /// `a=ssrc`) and its RTX SSRC (the second of the FID group).
    pub video_ssrc: Option<u32>,
    pub video_rtx_ssrc: Option<u32>,
}

pub fn parse_answer(text: &str) -> Result<Answer, ClientError> {
    let mut answer = Answer::default();
    let mut media = "";
    let mut section_rejected = false;
    // In the video section: payload types mapped to rtx, `apt=` pairs, and those with NACK.
    // Resolved against the video payload type at the end, since any order is valid.
    let mut rtx_types: Vec<u8> = Vec::new();
    let mut apts: Vec<(u8, u8)> = Vec::new();
    let mut nack_types: Vec<u8> = Vec::new();
    for line in text.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let fields: Vec<&str> = m.split_whitespace().collect();
            media = if fields.first() == Some(&"audio") {
                "audio"
            } else if fields.first() == Some(&"video") {
                "video"
            } else {
                ""
            };
            section_rejected = fields.get(1) == Some(&"0");
            let pt = fields.get(3).and_then(|p| p.parse::<u8>().ok());
            if !section_rejected {
                match media {
                    "audio" => answer.audio_payload_type = pt,
                    "video" => answer.video_payload_type = pt,
                    _ => {}
                }
            }
        } else if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            answer.ice_ufrag = v.to_string();
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            answer.ice_pwd = v.to_string();
        } else if let Some(v) = line.strip_prefix("a=fingerprint:") {
            let hex = v.split_once(' ').map(|(_, h)| h).unwrap_or_default();
            answer.fingerprint = hex
                .split(':')
                .filter_map(|b| u8::from_str_radix(b, 16).ok())
                .collect();
        } else if let Some(v) = line.strip_prefix("a=rtpmap:") {
            let in_video = media == "video" && !section_rejected;
            let (pt, name) = v.split_once(' ').unwrap_or((v, ""));
            let name = name.trim();
            if in_video && name.len() >= 4 && name[..4].eq_ignore_ascii_case("rtx/") {
                rtx_types.extend(pt.parse::<u8>().ok());
            } else if in_video && answer.video_codec.is_empty() {
                answer.video_codec = v.split_whitespace().nth(1).unwrap_or_default().to_string();
            }
        } else if let Some(v) = line.strip_prefix("a=fmtp:") {
            if media == "video" && !section_rejected {
                let (pt, params) = v.split_once(' ').unwrap_or((v, ""));
                let apt = params.split(';').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("apt")
                        .then(|| v.trim().parse::<u8>().ok())?
                });
                if let (Ok(pt), Some(apt)) = (pt.parse::<u8>(), apt) {
                    apts.push((pt, apt));
                }
            }
        } else if let Some(v) = line.strip_prefix("a=rtcp-fb:") {
            if media == "video"
                && !section_rejected
                && let Some((pt, feedback)) = v.split_once(' ')
                && feedback.trim() == "nack"
            {
                nack_types.extend(pt.parse::<u8>().ok());
            }
        } else if let Some(v) = line.strip_prefix("a=ssrc-group:FID ") {
            if media == "video" && !section_rejected {
                let mut ssrcs = v.split_whitespace().map(|s| s.parse::<u32>().ok());
                if let (Some(Some(primary)), Some(Some(rtx))) = (ssrcs.next(), ssrcs.next()) {
                    answer.video_ssrc = Some(primary);
                    answer.video_rtx_ssrc = Some(rtx);
                }
            }
        } else if let Some(v) = line.strip_prefix("a=ssrc:") {
            if media == "video" && !section_rejected && answer.video_ssrc.is_none() {
                answer.video_ssrc = v
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse::<u32>().ok());
            }
        } else if let Some(v) = line.strip_prefix("a=candidate:") {
            let f: Vec<&str> = v.split_whitespace().collect();
            if f.len() >= 8 && f[6] == "typ" && f[7] == "host" {
                let transport = match f[2].to_ascii_lowercase().as_str() {
                    "udp" => Transport::Udp,
                    "tcp" if v.contains("tcptype passive") => Transport::Tcp,
                    _ => continue,
                };
                if let (Ok(ip), Ok(port)) = (f[4].parse(), f[5].parse()) {
                    let addr = SocketAddr::new(ip, port);
                    if !answer.candidates.contains(&(transport, addr)) {
                        answer.candidates.push((transport, addr));
                    }
                }
            }
        }
    }
    if let Some(video) = answer.video_payload_type {
        answer.video_nack = nack_types.contains(&video);
        answer.video_rtx_payload_type = apts
            .iter()
            .find(|(pt, apt)| *apt == video && rtx_types.contains(pt))
            .map(|(pt, _)| *pt);
    }
    if answer.ice_ufrag.is_empty() || answer.ice_pwd.is_empty() {
        return Err(ClientError::Answer("no ICE credentials".into()));
    }
    if answer.fingerprint.len() != 32 {
        return Err(ClientError::Answer("no SHA-256 fingerprint".into()));
    }
    Ok(answer)
}

/// A `Conn` for webrtc-dtls: records from the reader task in, the link out.
struct DtlsLink {
    link: Link,
    records: Mutex<mpsc::Receiver<Vec<u8>>>,
    remote: SocketAddr,
}

#[async_trait]
impl Conn for DtlsLink {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        match self.records.lock().await.recv().await {
            Some(r) => {
                let n = r.len().min(buf.len());
                buf[..n].copy_from_slice(&r[..n]);
                Ok(n)
            }
            None => Err(webrtc_util::Error::ErrUseClosedNetworkConn),
        }
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.remote))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.link
            .send(buf)
            .await
            .map_err(|e| webrtc_util::Error::Other(e.to_string()))?;
        Ok(buf.len())
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.remote)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// What the reader task needs once DTLS has given the keys.
struct Media {
    srtp_in: SrtpContext,
    handler: Handler,
    outbound: Arc<SyncMutex<Outbound>>,
    /// Playing with NACK negotiated.
    play: Option<PlayRepair>,
}

/// Room for one packet the reader task sends: a retransmission (or a NACK) and its SRTP
/// trailer.
const OUTGOING_LEN: usize = repair::RETRANSMISSION_BUFFER_LEN + 64;

/// Demultiplexes what arrives: STUN to ICE, DTLS to the handshake, SRTP to the handler once
/// the keys are known; and says what the reader task sends in return (NACKs, retransmissions).
struct Demux {
    ice_ok: watch::Sender<u64>,
    dtls: mpsc::Sender<Vec<u8>>,
    keys: Option<oneshot::Receiver<Media>>,
    media: Option<Media>,
    counters: Arc<SessionCounters>,
    loss: Option<LossGate>,
}

impl Demux {
    fn packet(&mut self, now: Instant, data: &mut [u8]) {
        if self.media.is_none()
            && let Some(rx) = self.keys.as_mut()
            && let Ok(media) = rx.try_recv()
        {
            self.media = Some(media);
            self.keys = None;
        }
        match classify(data) {
            PacketKind::Stun => {
                if StunMessage::parse(data).is_ok_and(|m| m.is_binding_success()) {
                    self.ice_ok.send_modify(|n| *n += 1);
                }
            }
            PacketKind::Dtls => {
                let _ = self.dtls.try_send(data.to_vec());
            }
            kind @ (PacketKind::Rtp | PacketKind::Rtcp) => {
                // The emulated lossy link: before decryption, as if the packet never came.
                if let Some(loss) = self.loss.as_mut()
                    && loss.drop_next()
                {
                    self.counters
                        .dropped_on_arrival
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let Some(media) = self.media.as_mut() else {
                    return;
                };
                let plain = media.srtp_in.unprotect(data, kind == PacketKind::Rtcp);
                match plain {
                    Ok(n) if kind == PacketKind::Rtp => {
                        let packet = &data[..n];
                        match media.play.as_mut() {
                            Some(play) => {
                                if let Some(packet) = play.on_rtp(now, packet) {
                                    (media.handler)(Incoming::Rtp(packet));
                                }
                                self.counters.record_play(play.counters());
                            }
                            None => (media.handler)(Incoming::Rtp(packet)),
                        }
                    }
                    Ok(n) => {
                        let rtcp = &data[..n];
                        if crate::wire::rtcp::requests_keyframe(rtcp) {
                            self.counters
                                .keyframe_requests
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        let mut outbound = lock(&media.outbound);
                        if let Some(publish) = outbound.publish.as_mut() {
                            publish.on_rtcp(now, rtcp);
                            self.counters.record_publish(publish.counters());
                        }
                        drop(outbound);
                        (media.handler)(Incoming::Rtcp(rtcp))
                    }
                    Err(_) => {
                        self.counters.srtp_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            PacketKind::Unknown => {}
        }
    }

    /// When the reader task must wake without a packet: a NACK (or its retry) falls due.
    fn next_timeout(&self) -> Option<Instant> {
        self.media
            .as_ref()
            .and_then(|m| m.play.as_ref())
            .and_then(PlayRepair::next_timeout)
    }

    /// Writes the next packet to send, protected, into `out` (at least [`OUTGOING_LEN`]
    /// bytes): a NACK due now, else a retransmission the server asked for. `None` when there
    /// is nothing; call until then.
    fn next_outgoing(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        let media = self.media.as_mut()?;
        if let Some(play) = media.play.as_mut()
            && let Some(n) = play.poll_nack(now, out)
        {
            self.counters.record_play(play.counters());
            return match lock(&media.outbound).srtp.protect_rtcp(out, n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.counters.srtp_errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
        }
        let mut outbound = lock(&media.outbound);
        let Outbound { srtp, publish } = &mut *outbound;
        let publish = publish.as_mut().filter(|p| p.has_pending())?;
        // A retransmission that fails to protect is skipped, not the ones behind it.
        while let Some(n) = publish.next_retransmission(now, out) {
            self.counters.record_publish(publish.counters());
            match srtp.protect_rtp(out, n) {
                Ok(n) => return Some(n),
                Err(_) => {
                    self.counters.srtp_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.counters.record_publish(publish.counters());
        None
    }
}

/// Sends what the reader task owes the server after a packet or a wake-up.
async fn flush(demux: &mut Demux, link: &Link, out: &mut [u8]) {
    while let Some(n) = demux.next_outgoing(Instant::now(), out) {
        if link.send(&out[..n]).await.is_err() {
            break;
        }
    }
}

/// Far enough to mean "never" for a reader task with nothing due, near enough not to overflow
/// the timer.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// A binding request to the relay, as the controlling agent nominating the pair: the check that
/// ICE-lite answers and takes as nomination. Returns its length in `out`.
pub fn binding_request(
    answer: &Answer,
    local_ufrag: &str,
    tie_breaker: u64,
    out: &mut [u8],
) -> usize {
    let key = stun::short_term_key(&answer.ice_pwd);
    let txid: [u8; 12] = rand::random();
    let username = format!("{}:{local_ufrag}", answer.ice_ufrag);
    let mut build = || -> Result<usize, stun::StunError> {
        let mut w = StunWriter::new(out, BINDING_REQUEST, &txid)?;
        w.username(username.as_bytes())?
            .priority(1_845_501_695)?
            .ice_controlling(tie_breaker)?
            .use_candidate()?
            .message_integrity(&key)?;
        w.fingerprint()
    };
    build().unwrap_or(0)
}

/// Publishes or plays one stream: offer, answer, ICE, DTLS. `handler` sees every decrypted
/// packet the server sends.
pub async fn connect(options: &ClientOptions, handler: Handler) -> Result<Session, ClientError> {
    let local_ufrag = random_token(8);
    let local_pwd = random_token(24);
    let (audio_ssrc, video_ssrc) = (rand::random::<u32>(), rand::random::<u32>());
    let offer = write_offer_with(
        options.role,
        &local_ufrag,
        &local_pwd,
        &fingerprint_of(&options.certificate),
        audio_ssrc,
        video_ssrc,
        options.video_codec.as_deref(),
        options.repair,
    );
    let response = options
        .http
        .request(
            "POST",
            &options.url,
            Some("application/sdp"),
            &offer,
            options.timeout,
        )
        .await?;
    if response.status != 201 {
        return Err(ClientError::Refused {
            status: response.status,
            message: response.body.trim().to_string(),
        });
    }
    let location = response
        .header("location")
        .map(|l| http::resolve(&response.url, l));
    let answer = parse_answer(&response.body)?;
    let server = answer
        .candidates
        .iter()
        .find(|(t, _)| *t == options.transport)
        .map(|(_, a)| *a)
        .ok_or_else(|| ClientError::Answer(format!("no {} candidate", options.transport)))?;

    let (ice_tx, mut ice_rx) = watch::channel(0u64);
    let (dtls_tx, dtls_rx) = mpsc::channel(64);
    let (keys_tx, keys_rx) = oneshot::channel();
    let counters = Arc::new(SessionCounters::default());
    let mut demux = Demux {
        ice_ok: ice_tx,
        dtls: dtls_tx,
        keys: Some(keys_rx),
        media: None,
        counters: counters.clone(),
        loss: options
            .arrival_loss
            .map(|l| LossGate::new(l.percent, l.seed)),
    };
    let transport_error =
        |e: std::io::Error| ClientError::Transport(options.transport, e.to_string());
    let mut tasks = Vec::new();
    let link = match options.transport {
        Transport::Udp => {
            let bind: SocketAddr = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .expect("literal");
            let bind = if server.ip().is_loopback() {
                SocketAddr::new(server.ip(), 0)
            } else {
                bind
            };
            let socket = Arc::new(UdpSocket::bind(bind).await.map_err(transport_error)?);
            socket.connect(server).await.map_err(transport_error)?;
            let reader = socket.clone();
            let link = Link::Udp(socket);
            let replies = link.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut out = vec![0u8; OUTGOING_LEN];
                // Woken at the NACK scheduler's own deadline, not on a fixed tick: a player
                // with nothing missing costs no wake-ups.
                let wake = tokio::time::sleep(IDLE_WAKE);
                tokio::pin!(wake);
                loop {
                    let due = demux.next_timeout();
                    if let Some(due) = due {
                        wake.as_mut().reset(due.into());
                    }
                    tokio::select! {
                        received = reader.recv(&mut buf) => match received {
                            Ok(n) => demux.packet(Instant::now(), &mut buf[..n]),
                            Err(_) => break,
                        },
                        () = &mut wake, if due.is_some() => {}
                    }
                    flush(&mut demux, &replies, &mut out).await;
                }
            }));
            link
        }
        Transport::Tcp => {
            let socket = if server.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(transport_error)?;
            if let Some(size) = options.tcp_recv_buffer {
                socket.set_recv_buffer_size(size).map_err(transport_error)?;
            }
            let stream = tokio::time::timeout(options.timeout, socket.connect(server))
                .await
                .map_err(|_| ClientError::Transport(Transport::Tcp, "connect timed out".into()))?
                .map_err(transport_error)?;
            let _ = stream.set_nodelay(true);
            let (mut read, write) = stream.into_split();
            let link = Link::Tcp(Arc::new(Mutex::new(write)));
            let replies = link.clone();
            tasks.push(tokio::spawn(async move {
                let mut frames = FrameReader::new(crate::media::MAX_PACKET);
                let mut buf = vec![0u8; 65536];
                let mut out = vec![0u8; OUTGOING_LEN];
                let wake = tokio::time::sleep(IDLE_WAKE);
                tokio::pin!(wake);
                loop {
                    let due = demux.next_timeout();
                    if let Some(due) = due {
                        wake.as_mut().reset(due.into());
                    }
                    tokio::select! {
                        received = read.read(&mut buf) => match received {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let now = Instant::now();
                                if frames.feed(&mut buf[..n], |f| demux.packet(now, f)).is_err() {
                                    break;
                                }
                            }
                        },
                        () = &mut wake, if due.is_some() => {}
                    }
                    flush(&mut demux, &replies, &mut out).await;
                }
            }));
            link
        }
    };

    // ICE: checks with USE-CANDIDATE until one is answered (the server is ICE-lite).
    let tie_breaker: u64 = rand::random();
    let started = Instant::now();
    let mut check = vec![0u8; 256];
    loop {
        let n = binding_request(&answer, &local_ufrag, tie_breaker, &mut check);
        link.send(&check[..n]).await.map_err(transport_error)?;
        let answered = tokio::time::timeout(Duration::from_millis(100), ice_rx.changed()).await;
        if matches!(answered, Ok(Ok(()))) {
            break;
        }
        if started.elapsed() > options.timeout {
            return Err(ClientError::IceTimeout(options.timeout));
        }
    }
    // Consent freshness (RFC 7675): a check every 2 s keeps the server's ICE timer fed.
    let keepalive_link = link.clone();
    let keepalive_answer = answer.clone();
    let keepalive_ufrag = local_ufrag.clone();
    tasks.push(tokio::spawn(async move {
        let mut buf = vec![0u8; 256];
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let n = binding_request(&keepalive_answer, &keepalive_ufrag, tie_breaker, &mut buf);
            if keepalive_link.send(&buf[..n]).await.is_err() {
                break;
            }
        }
    }));

    let dtls_conn = Arc::new(DtlsLink {
        link: link.clone(),
        records: Mutex::new(dtls_rx),
        remote: server,
    });
    let config = DtlsConfig {
        certificates: vec![options.certificate.clone()],
        srtp_protection_profiles: vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ],
        // The server's certificate is self-signed: it is checked against the answer's
        // fingerprint below.
        insecure_skip_verify: true,
        extended_master_secret: ExtendedMasterSecretType::Require,
        ..Default::default()
    };
    let dtls = tokio::time::timeout(
        options.timeout,
        DTLSConn::new(dtls_conn, config, true, None),
    )
    .await
    .map_err(|_| ClientError::Dtls("handshake timed out".into()))?
    .map_err(|e| ClientError::Dtls(e.to_string()))?;
    let state = dtls.connection_state().await;
    let presented = state
        .peer_certificates
        .first()
        .map(|der| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der));
    if presented.as_ref().map(|d| d.as_ref()) != Some(&answer.fingerprint[..]) {
        return Err(ClientError::Dtls(
            "the server's certificate does not match the answer's fingerprint".into(),
        ));
    }
    let profile = match dtls.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => SrtpProfile::Aes128CmHmacSha1_80,
        other => {
            return Err(ClientError::Dtls(format!(
                "unsupported SRTP profile {other:?}"
            )));
        }
    };
    let material = state
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], profile.keying_material_len())
        .await
        .map_err(|e| ClientError::Dtls(e.to_string()))?;
    let (srtp_out, srtp_in) = SrtpContext::from_dtls_export(profile, &material, true)
        .map_err(|e| ClientError::Dtls(e.to_string()))?;
    let negotiated = Negotiated {
        audio_payload_type: answer.audio_payload_type,
        video_payload_type: answer.video_payload_type,
        video_codec: answer.video_codec.clone(),
        server: Some(server),
        video_nack: options.repair && answer.video_nack,
        video_rtx_payload_type: answer.video_rtx_payload_type.filter(|_| options.repair),
        remote_video_ssrc: answer.video_ssrc,
        remote_video_rtx_ssrc: answer.video_rtx_ssrc,
    };
    let video_rtx_ssrc = rtx_ssrc_of(video_ssrc);
    let (play, publish) = match (negotiated.video_payload_type, negotiated.video_nack) {
        (Some(video_pt), true) => match options.role {
            Role::Play => (
                Some(PlayRepair::new(
                    video_pt,
                    negotiated.video_rtx_payload_type,
                    negotiated.remote_video_ssrc,
                    video_ssrc,
                )),
                None,
            ),
            Role::Publish => (
                None,
                Some(PublishRepair::new(
                    video_ssrc,
                    negotiated
                        .video_rtx_payload_type
                        .map(|pt| (pt, video_rtx_ssrc)),
                    rand::random(),
                    options.retransmit_packets,
                    RETRANSMIT_AGE,
                )),
            ),
        },
        _ => (None, None),
    };
    let outbound = Arc::new(SyncMutex::new(Outbound {
        srtp: srtp_out,
        publish,
    }));
    let _ = keys_tx.send(Media {
        srtp_in,
        handler,
        outbound: outbound.clone(),
        play,
    });
    let dtls = Arc::new(dtls);
    // The server ends the session with a DTLS close_notify (or the link drops): note it.
    let (closed_tx, closed) = watch::channel(false);
    let watched = dtls.clone();
    tasks.push(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while watched.read(&mut buf, None).await.is_ok() {}
        let _ = closed_tx.send(true);
    }));
    Ok(Session {
        location,
        negotiated,
        audio_ssrc,
        video_ssrc,
        video_rtx_ssrc,
        counters,
        link,
        outbound,
        departure_loss: options
            .departure_loss
            .map(|l| LossGate::new(l.percent, l.seed)),
        buffer: vec![0u8; 2048],
        tasks,
        dtls,
        closed,
        timeout: options.timeout,
        http: options.http.clone(),
    })
}

impl Session {
    /// Protects and sends one RTP packet (at most 2000 bytes).
    pub async fn send_rtp(&mut self, packet: &[u8]) -> std::io::Result<()> {
        let len = packet.len();
        if len + 32 > self.buffer.len() {
            return Err(std::io::Error::other("packet too large"));
        }
        self.buffer[..len].copy_from_slice(packet);
        let n = {
            let mut outbound = lock(&self.outbound);
            if let Some(publish) = outbound.publish.as_mut() {
                publish.on_sent(Instant::now(), packet);
            }
            outbound.srtp.protect_rtp(&mut self.buffer, len)
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Lost on the way: kept for retransmission and protected (its SRTP index used), as a
        // packet the network dropped would be.
        if let Some(loss) = self.departure_loss.as_mut()
            && loss.drop_next()
        {
            self.counters
                .dropped_on_departure
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.link.send(&self.buffer[..n]).await
    }

    /// Protects and sends one RTCP packet.
    pub async fn send_rtcp(&mut self, packet: &[u8]) -> std::io::Result<()> {
        let len = packet.len();
        if len + 32 > self.buffer.len() {
            return Err(std::io::Error::other("packet too large"));
        }
        self.buffer[..len].copy_from_slice(packet);
        let n = lock(&self.outbound)
            .srtp
            .protect_rtcp(&mut self.buffer, len)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.link.send(&self.buffer[..n]).await
    }

    /// Resolves once the server has closed the session (DTLS close_notify or a dead link).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.clone();
        async move {
            let _ = closed.wait_for(|c| *c).await;
        }
    }

    /// Ends the session: DELETE on its resource, DTLS close_notify, tasks stopped.
    pub async fn close(self) {
        if let Some(location) = &self.location {
            let _ = self
                .http
                .request("DELETE", location, None, "", self.timeout)
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.dtls.close()).await;
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// The TCP framing prefix the link writes must stay what the relay reads.
const _: () = assert!(framing::PREFIX_LEN == 2);
