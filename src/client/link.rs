//! The client's transport: the sending half ([`Link`]) and the reader task, which
//! demultiplexes what arrives (STUN to ICE, DTLS to the handshake, SRTP to the handler) and
//! sends what it owes in return (NACKs, retransmissions).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use super::feedback::{FEEDBACK_BUFFER_LEN, PlayFeedback};
use super::ice::{IceEvent, IceProgress, Responder};
use super::policer::Policer;
use super::repair::{self, LossGate, PlayRepair, PublishRepair};
use super::{ClientError, ClientOptions, Handler, Incoming, SessionCounters, Transport};
use crate::util::lock;
use crate::wire::demux::{PacketKind, classify};
use crate::wire::framing::FrameReader;
use crate::wire::srtp::SrtpContext;

/// The sending half of the transport.
#[derive(Clone)]
pub(super) enum Link {
    Udp(Arc<UdpSocket>),
    Tcp(Arc<Mutex<OwnedWriteHalf>>),
}

impl Link {
    /// Sends on the path ICE chose (UDP: the address the socket is connected to).
    pub(super) async fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => socket.send(packet).await.map(|_| ()),
            Link::Tcp(writer) => {
                let mut w = writer.lock().await;
                w.write_all(&(packet.len() as u16).to_be_bytes()).await?;
                w.write_all(packet).await
            }
        }
    }

    /// Sends to `to` (a candidate being checked, or where a check came from); over TCP there
    /// is only the one connection.
    pub(super) async fn send_to(&self, packet: &[u8], to: SocketAddr) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => socket.send_to(packet, to).await.map(|_| ()),
            Link::Tcp(_) => self.send(packet).await,
        }
    }

    /// Fixes the path ICE chose: from now on the UDP socket hears only from `to`.
    pub(super) async fn settle(&self, to: SocketAddr) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => socket.connect(to).await,
            Link::Tcp(_) => Ok(()),
        }
    }
}

/// What sends SRTP, shared by the session's owner (media) and its reader task (NACKs and
/// retransmissions): one SRTP context, so the SRTCP index and each SSRC's rollover counter
/// stay single, and the publisher's kept packets beside it.
pub(super) struct Outbound {
    pub(super) srtp: SrtpContext,
    /// The retransmissions of each video encoding we send (one without simulcast; none
    /// without NACK).
    pub(super) publish: Vec<PublishRepair>,
}

/// What the reader task needs once DTLS has given the keys.
pub(super) struct Media {
    pub(super) srtp_in: SrtpContext,
    pub(super) handler: Handler,
    pub(super) outbound: Arc<SyncMutex<Outbound>>,
    /// Playing with NACK negotiated.
    pub(super) play: Option<PlayRepair>,
    /// Playing with the transport-wide sequence number negotiated.
    pub(super) feedback: Option<PlayFeedback>,
}

/// Room for one packet the reader task sends: a retransmission (or a NACK) and its SRTP
/// trailer.
pub(super) const OUTGOING_LEN: usize =
    max(repair::RETRANSMISSION_BUFFER_LEN, FEEDBACK_BUFFER_LEN) + 64;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Demultiplexes what arrives: STUN to ICE, DTLS to the handshake, SRTP to the handler once
/// the keys are known; and says what the reader task sends in return (NACKs, retransmissions).
pub(super) struct Demux {
    pub(super) ice: watch::Sender<IceProgress>,
    pub(super) responder: Responder,
    /// The answer to the server's last check, and where it goes: sent by the reader task.
    pub(super) ice_reply: Option<(Vec<u8>, SocketAddr)>,
    pub(super) dtls: mpsc::Sender<Vec<u8>>,
    pub(super) keys: Option<oneshot::Receiver<Media>>,
    pub(super) media: Option<Media>,
    pub(super) counters: Arc<SessionCounters>,
    pub(super) loss: Option<LossGate>,
    /// The emulated policer of `--rate-limit`, after the loss.
    pub(super) policer: Option<Policer>,
}

impl Demux {
    pub(super) fn packet(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        if self.media.is_none()
            && let Some(rx) = self.keys.as_mut()
            && let Ok(media) = rx.try_recv()
        {
            self.media = Some(media);
            self.keys = None;
        }
        match classify(data) {
            PacketKind::Stun => match self.responder.on_stun(data, from) {
                IceEvent::Answered => self.ice.send_modify(|p| {
                    p.answered += 1;
                    p.answered_by = Some(from);
                    if p.checks_answered > 0 {
                        p.answered_after_our_answer += 1;
                    }
                }),
                IceEvent::Reply(reply) => {
                    self.ice_reply = Some((reply, from));
                    self.ice.send_modify(|p| p.checks_answered += 1);
                }
                IceEvent::Ignored => {}
            },
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
                if let Some(policer) = self.policer.as_mut()
                    && !policer.allow(now, data.len())
                {
                    self.counters
                        .dropped_by_rate_limit
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
                        if let Some(feedback) = media.feedback.as_mut() {
                            feedback.on_rtp(now, packet);
                        }
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
                        for publish in outbound.publish.iter_mut() {
                            publish.on_rtcp(now, rtcp);
                        }
                        self.counters.record_publish(&outbound.publish);
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

    /// When the reader task must wake without a packet: a NACK (or its retry) or feedback
    /// falls due.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        let media = self.media.as_ref()?;
        let nack = media.play.as_ref().and_then(PlayRepair::next_timeout);
        let feedback = media.feedback.as_ref().and_then(PlayFeedback::next_timeout);
        match (nack, feedback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes the next packet to send, protected, into `out` (at least [`OUTGOING_LEN`]
    /// bytes): a NACK due now, else a retransmission the server asked for. `None` when there
    /// is nothing; call until then.
    pub(super) fn next_outgoing(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
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
        if let Some(feedback) = media.feedback.as_mut()
            && let Some(n) = feedback.poll(now, out)
        {
            self.counters
                .transport_feedback_sent
                .store(feedback.sent(), Ordering::Relaxed);
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
        if !publish.iter().any(PublishRepair::has_pending) {
            return None;
        }
        // A retransmission that fails to protect is skipped, not the ones behind it.
        let mut sent = None;
        'encodings: for encoding in publish.iter_mut().filter(|p| p.has_pending()) {
            while let Some(n) = encoding.next_retransmission(now, out) {
                match srtp.protect_rtp(out, n) {
                    Ok(n) => {
                        sent = Some(n);
                        break 'encodings;
                    }
                    Err(_) => {
                        self.counters.srtp_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.counters.record_publish(publish);
        sent
    }
}

/// Sends what the reader task owes the server after a packet or a wake-up.
async fn flush(demux: &mut Demux, link: &Link, out: &mut [u8]) {
    if let Some((reply, to)) = demux.ice_reply.take() {
        let _ = link.send_to(&reply, to).await;
    }
    while let Some(n) = demux.next_outgoing(Instant::now(), out) {
        if link.send(&out[..n]).await.is_err() {
            break;
        }
    }
}

/// Far enough to mean "never" for a reader task with nothing due, near enough not to overflow
/// the timer.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// Where the reader task reads from, with its buffer.
enum Reader {
    Udp(Arc<UdpSocket>, Vec<u8>),
    /// The connection, and the server's address it goes to.
    Tcp(OwnedReadHalf, FrameReader, Vec<u8>, SocketAddr),
}

impl Reader {
    /// Reads what the transport has and hands each packet to `demux`; false once the
    /// transport has ended (or its framing broke).
    async fn receive(&mut self, demux: &mut Demux) -> bool {
        match self {
            Reader::Udp(socket, buf) => match socket.recv_from(buf).await {
                Ok((n, from)) => {
                    demux.packet(Instant::now(), from, &mut buf[..n]);
                    true
                }
                Err(_) => false,
            },
            Reader::Tcp(read, frames, buf, server) => match read.read(buf).await {
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    let now = Instant::now();
                    let from = *server;
                    frames
                        .feed(&mut buf[..n], |f| demux.packet(now, from, f))
                        .is_ok()
                }
            },
        }
    }
}

/// The reader task: woken by a packet or at the NACK scheduler's own deadline (not on a fixed
/// tick: a player with nothing missing costs no wake-ups), and after either sends what it owes.
async fn read_task(mut demux: Demux, mut reader: Reader, replies: Link) {
    let mut out = vec![0u8; OUTGOING_LEN];
    let wake = tokio::time::sleep(IDLE_WAKE);
    tokio::pin!(wake);
    loop {
        let due = demux.next_timeout();
        if let Some(due) = due {
            wake.as_mut().reset(due.into());
        }
        tokio::select! {
            open = reader.receive(&mut demux) => if !open {
                break;
            },
            () = &mut wake, if due.is_some() => {}
        }
        flush(&mut demux, &replies, &mut out).await;
    }
}

/// Opens the transport `options` asks for towards `server` (UDP: a socket of its address
/// family, not yet tied to one address: ICE picks the path) and starts the reader task with
/// `demux`.
pub(super) async fn open(
    options: &ClientOptions,
    server: SocketAddr,
    demux: Demux,
) -> Result<(Link, tokio::task::JoinHandle<()>), ClientError> {
    let transport_error = super::transport_error(options.transport);
    let (link, reader) = match options.transport {
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
            let reader = Reader::Udp(socket.clone(), vec![0u8; 2048]);
            (Link::Udp(socket), reader)
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
            let (read, write) = stream.into_split();
            let frames = FrameReader::new(crate::media::MAX_PACKET);
            let reader = Reader::Tcp(read, frames, vec![0u8; 65536], server);
            (Link::Tcp(Arc::new(Mutex::new(write))), reader)
        }
    };
    let task = tokio::spawn(read_task(demux, reader, link.clone()));
    Ok((link, task))
}

/// The reader task's side of the session's set-up: what it reports (ICE progress, DTLS
/// records) and where the keys come from once DTLS has them.
pub(super) fn demux(
    options: &ClientOptions,
    responder: Responder,
    counters: Arc<SessionCounters>,
) -> (
    Demux,
    watch::Receiver<IceProgress>,
    mpsc::Receiver<Vec<u8>>,
    oneshot::Sender<Media>,
) {
    let (ice_tx, ice_rx) = watch::channel(IceProgress::default());
    let (dtls_tx, dtls_rx) = mpsc::channel(64);
    let (keys_tx, keys_rx) = oneshot::channel();
    let demux = Demux {
        ice: ice_tx,
        responder,
        ice_reply: None,
        dtls: dtls_tx,
        keys: Some(keys_rx),
        media: None,
        counters,
        loss: options
            .arrival_loss
            .map(|l| LossGate::new(l.percent, l.seed)),
        policer: options.rate_limit_kbps.map(Policer::new),
    };
    (demux, ice_rx, dtls_rx, keys_tx)
}
