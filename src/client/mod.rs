//! A WebRTC endpoint that publishes or plays through any WHIP/WHEP server: the load generator
//! drives many of them, and a relay republishes a stream to another relay with one.
//!
//! It offers like a browser (Opus, VP8, H264; BUNDLE, rtcp-mux, `setup:actpass`), sends the
//! offer with WHIP or WHEP, then acts as the controlling ICE agent towards the server's host
//! candidates over UDP or ICE-TCP (RFC 4571 framing), whether the server is ICE-lite or a full
//! agent that checks back (`ice`), runs DTLS (webrtc-dtls) in the role the answer's
//! `a=setup` leaves it (the client for `passive`, the server for `active`) and protects and
//! unprotects SRTP in place with the relay's own [`crate::wire::srtp`].
//!
//! It repairs loss as a browser does ([`repair`]): it offers generic NACK and RTX for video; as
//! a player it NACKs the gaps in the video stream and restores the RTX packets that answer, as
//! a publisher it keeps the last second of video and resends what the server NACKs.
//!
//! It publishes simulcast ([`simulcast`]: encodings by RID, each under its own SSRC), sends
//! transport-wide feedback as a player when the answer negotiated it ([`feedback`]), and can
//! police what arrives to a rate ([`policer`]): a thin link for the load generator.

mod dtls;
pub mod feedback;
pub mod http;
mod ice;
mod link;
pub mod policer;
pub mod repair;
mod sdp;
pub mod simulcast;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;

use feedback::PlayFeedback;
pub use ice::binding_request;
use link::{Link, Media, Outbound};
use repair::{LossGate, PlayRepair, PublishRepair};
pub use sdp::{Answer, fingerprint_of, parse_answer, rtx_ssrc_of, write_offer, write_offer_with};
use simulcast::Simulcast;

use crate::util::{lock, random_token};
use crate::wire::framing;

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
    #[error("cannot make the offer: {0}")]
    Offer(String),
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
    /// The id of the transport-wide sequence number extension, when answered: a player then
    /// sends transport-wide feedback.
    pub transport_cc_id: Option<u8>,
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
    /// Publishing: send video as these simulcast encodings, by RID, lowest first (empty: one
    /// encoding). The session's [`Session::simulcast`] says their SSRCs.
    pub simulcast: Vec<String>,
    /// Drops, on arrival, the SRTP and SRTCP beyond this rate (kbit/s), as a policer on the
    /// path would (the load generator's `--rate-limit`).
    pub rate_limit_kbps: Option<u32>,
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
            simulcast: Vec::new(),
            rate_limit_kbps: None,
        }
    }
}

/// Counters a session keeps about itself.
#[derive(Default)]
pub struct SessionCounters {
    pub srtp_errors: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// SRTP and SRTCP packets dropped on arrival by [`ClientOptions::arrival_loss`], and RTP
    /// packets not sent by [`ClientOptions::departure_loss`].
    pub dropped_on_arrival: AtomicU64,
    pub dropped_on_departure: AtomicU64,
    /// SRTP and SRTCP packets dropped on arrival by [`ClientOptions::rate_limit_kbps`].
    pub dropped_by_rate_limit: AtomicU64,
    /// Playing: transport-wide feedback messages sent.
    pub transport_feedback_sent: AtomicU64,
    /// Playing: NACK packets sent, the sequence numbers they asked for (retries included),
    /// RTX packets received and their bytes, missing packets that arrived after a NACK,
    /// retransmissions of packets not missing (not delivered), and missing packets given up.
    pub nacks_sent: AtomicU64,
    pub nacked_packets: AtomicU64,
    pub rtx_received: AtomicU64,
    pub rtx_received_bytes: AtomicU64,
    /// Playing: padding-only probes of the path on the RTX stream, and their bytes.
    pub probes_received: AtomicU64,
    pub probe_bytes_received: AtomicU64,
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
        self.probes_received
            .store(c.probes_received, Ordering::Relaxed);
        self.probe_bytes_received
            .store(c.probe_bytes_received, Ordering::Relaxed);
    }

    /// The publishing side's counters, summed over its encodings.
    fn record_publish(&self, encodings: &[PublishRepair]) {
        let mut sum = repair::PublishCounters::default();
        for c in encodings.iter().map(PublishRepair::counters) {
            sum.nacks_received += c.nacks_received;
            sum.retransmitted += c.retransmitted;
            sum.retransmitted_bytes += c.retransmitted_bytes;
            sum.missed += c.missed + c.overflowed;
        }
        self.nacks_received
            .store(sum.nacks_received, Ordering::Relaxed);
        self.retransmitted
            .store(sum.retransmitted, Ordering::Relaxed);
        self.retransmitted_bytes
            .store(sum.retransmitted_bytes, Ordering::Relaxed);
        self.retransmit_misses.store(sum.missed, Ordering::Relaxed);
    }
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
    /// Publishing simulcast: the encodings and their SSRCs (`video_ssrc` is unused then).
    pub simulcast: Option<Simulcast>,
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

/// The error for a transport's I/O failing.
fn transport_error(transport: Transport) -> impl Fn(std::io::Error) -> ClientError + Copy {
    move |e| ClientError::Transport(transport, e.to_string())
}

/// Sends the offer with WHIP or WHEP; returns the resource to DELETE later and the answer.
async fn post_offer(
    options: &ClientOptions,
    offer: &str,
) -> Result<(Option<String>, Answer), ClientError> {
    let response = options
        .http
        .request(
            "POST",
            &options.url,
            Some("application/sdp"),
            offer,
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
    Ok((location, parse_answer(&response.body)?))
}

impl Negotiated {
    fn new(options: &ClientOptions, answer: &Answer, server: SocketAddr) -> Self {
        Negotiated {
            audio_payload_type: answer.audio_payload_type,
            video_payload_type: answer.video_payload_type,
            video_codec: answer.video_codec.clone(),
            server: Some(server),
            video_nack: options.repair && answer.video_nack,
            video_rtx_payload_type: answer.video_rtx_payload_type.filter(|_| options.repair),
            remote_video_ssrc: answer.video_ssrc,
            remote_video_rtx_ssrc: answer.video_rtx_ssrc,
            transport_cc_id: answer
                .extensions
                .iter()
                .find(|(_, uri)| uri == crate::sdp::TRANSPORT_CC_URI)
                .map(|(id, _)| *id),
        }
    }

    /// The loss repair this session runs: a player's NACKs, or a publisher's retransmissions
    /// (only with video and NACK negotiated).
    fn repair(
        &self,
        options: &ClientOptions,
        video_ssrc: u32,
        video_rtx_ssrc: u32,
    ) -> (Option<PlayRepair>, Option<PublishRepair>) {
        match (self.video_payload_type, self.video_nack) {
            (Some(video_pt), true) => match options.role {
                Role::Play => (
                    Some(PlayRepair::new(
                        video_pt,
                        self.video_rtx_payload_type,
                        self.remote_video_ssrc,
                        video_ssrc,
                    )),
                    None,
                ),
                Role::Publish => (
                    None,
                    Some(PublishRepair::new(
                        video_ssrc,
                        self.video_rtx_payload_type.map(|pt| (pt, video_rtx_ssrc)),
                        rand::random(),
                        options.retransmit_packets,
                        RETRANSMIT_AGE,
                    )),
                ),
            },
            _ => (None, None),
        }
    }
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
    let offer = match options.role {
        Role::Publish if !options.simulcast.is_empty() => {
            if let Some(bad) = options.simulcast.iter().find(|r| !simulcast::valid_rid(r)) {
                return Err(ClientError::Offer(format!(
                    "cannot offer the RID {bad:?}: 1 to {} letters or digits",
                    simulcast::MAX_RID_LEN
                )));
            }
            let lines = simulcast::offer_lines(&options.simulcast);
            simulcast::amend_offer(&offer, "", &lines, true)
        }
        Role::Publish => offer,
        Role::Play => {
            let lines = feedback::offer_lines();
            simulcast::amend_offer(&offer, &lines, &lines, false)
        }
    };
    let (location, answer) = post_offer(options, &offer).await?;
    let simulcast = match options.role {
        Role::Publish if !options.simulcast.is_empty() => {
            Some(Simulcast::from_answer(&options.simulcast, &answer)?)
        }
        _ => None,
    };
    // The first candidate of the transport fixes the address family (the socket's); over TCP
    // it is the one connection.
    let first = answer
        .candidates
        .iter()
        .find(|(t, _)| *t == options.transport)
        .map(|(_, a)| *a)
        .ok_or_else(|| ClientError::Answer(format!("no {} candidate", options.transport)))?;
    let candidates: Vec<SocketAddr> = match options.transport {
        Transport::Udp => answer
            .candidates
            .iter()
            .filter(|(t, a)| *t == Transport::Udp && a.is_ipv4() == first.is_ipv4())
            .map(|(_, a)| *a)
            .collect(),
        Transport::Tcp => vec![first],
    };

    let counters = Arc::new(SessionCounters::default());
    let responder = ice::Responder::new(&local_ufrag, &local_pwd, &answer.ice_pwd);
    let (demux, mut ice_progress, dtls_records, keys) =
        link::demux(options, responder, counters.clone());
    let (link, reader) = link::open(options, first, demux).await?;
    let mut tasks = vec![reader];
    let tie_breaker: u64 = rand::random();
    let server = ice::check(
        &link,
        &answer,
        &candidates,
        &local_ufrag,
        tie_breaker,
        &mut ice_progress,
        options,
    )
    .await?;
    link.settle(server)
        .await
        .map_err(transport_error(options.transport))?;
    tasks.push(ice::keep_alive(
        link.clone(),
        answer.clone(),
        local_ufrag.clone(),
        tie_breaker,
    ));
    let (dtls, srtp_out, srtp_in) = dtls::handshake(
        &link,
        dtls_records,
        server,
        &answer.fingerprint,
        !answer.server_is_dtls_client,
        options,
    )
    .await?;

    let negotiated = Negotiated::new(options, &answer, server);
    let video_rtx_ssrc = rtx_ssrc_of(video_ssrc);
    let (play, publish) = negotiated.repair(options, video_ssrc, video_rtx_ssrc);
    let publish = match (&simulcast, negotiated.video_nack) {
        (Some(s), true) => s.repairs(
            negotiated.video_rtx_payload_type,
            options.retransmit_packets,
            RETRANSMIT_AGE,
        ),
        (Some(_), false) => Vec::new(),
        (None, _) => publish.into_iter().collect(),
    };
    let feedback = negotiated
        .transport_cc_id
        .filter(|_| options.role == Role::Play)
        .map(|id| PlayFeedback::new(id, video_ssrc, negotiated.remote_video_ssrc.unwrap_or(0)));
    let outbound = Arc::new(SyncMutex::new(Outbound {
        srtp: srtp_out,
        publish,
    }));
    let _ = keys.send(Media {
        srtp_in,
        handler,
        outbound: outbound.clone(),
        play,
        feedback,
    });
    let dtls = Arc::new(dtls);
    let (closed_tx, closed) = watch::channel(false);
    tasks.push(dtls::watch_close(dtls.clone(), closed_tx));
    Ok(Session {
        location,
        negotiated,
        audio_ssrc,
        video_ssrc,
        video_rtx_ssrc,
        simulcast,
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
            let now = Instant::now();
            for publish in outbound.publish.iter_mut() {
                publish.on_sent(now, packet);
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
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
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
