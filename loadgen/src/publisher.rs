//! A publisher: video frames as bursts of stamped RTP packets at the frame rate, audio every
//! 20 ms. With `--simulcast`, each frame goes out as every encoding of [`ENCODINGS`], each
//! under its own SSRC with its RID, its stamps marked with the layer, its keyframes where the
//! relay asks for them (a PLI or FIR on the encoding's SSRC) and at the start.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use corecast::client::simulcast::{Simulcast, keyframe_requests};
use corecast::client::{self, Incoming, Session};

use crate::payload::{self, Stamp, VP8_PREFIX_LEN, Vp8Frame, write_vp8_prefix};
use crate::run::{RunArgs, Shared};

/// A simulcast publisher's encodings, lowest first.
pub const ENCODINGS: [EncodingSpec; 3] = [
    EncodingSpec {
        rid: "l",
        share: (1, 8),
        size: (320, 180),
    },
    EncodingSpec {
        rid: "m",
        share: (1, 3),
        size: (640, 360),
    },
    EncodingSpec {
        rid: "h",
        share: (1, 1),
        size: (1280, 720),
    },
];

/// One encoding a simulcast publisher sends.
pub struct EncodingSpec {
    pub rid: &'static str,
    /// Its share of `--video-kbps`: numerator, denominator.
    pub share: (usize, usize),
    /// The picture size its keyframes announce.
    pub size: (u16, u16),
}

/// The RIDs of [`ENCODINGS`], for the offer.
pub fn rids() -> Vec<String> {
    ENCODINGS.iter().map(|e| e.rid.to_string()).collect()
}

/// The bitrate (kbit/s) of each encoding at `video_kbps`.
pub fn encoding_kbps(video_kbps: u32) -> Vec<u32> {
    ENCODINGS
        .iter()
        .map(|e| (video_kbps as usize * e.share.0 / e.share.1) as u32)
        .collect()
}

/// Keyframe requests from the relay, for a simulcast publisher's task: a bit per encoding,
/// set by the session's handler when a PLI or FIR names its SSRC.
#[derive(Default)]
pub struct KeyframeRequests {
    ssrcs: OnceLock<Vec<u32>>,
    wanted: AtomicU8,
}

impl KeyframeRequests {
    /// The handler for the publisher's session: notes the encodings asked for keyframes.
    pub fn handler(self: &Arc<Self>, shared: Arc<Shared>) -> client::Handler {
        let requests = self.clone();
        Box::new(move |incoming| {
            let Incoming::Rtcp(rtcp) = incoming else {
                return;
            };
            let Some(ssrcs) = requests.ssrcs.get() else {
                return;
            };
            for ssrc in keyframe_requests(rtcp) {
                if let Some(layer) = ssrcs.iter().position(|s| *s == ssrc) {
                    requests.wanted.fetch_or(1 << layer, Ordering::Relaxed);
                    shared.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }

    /// The encodings' SSRCs, once the session is up.
    pub fn set_encodings(&self, simulcast: &Simulcast) {
        let _ = self
            .ssrcs
            .set(simulcast.encodings.iter().map(|e| e.ssrc).collect());
    }

    /// The encodings asked for a keyframe since the last call, a bit each.
    fn take(&self) -> u8 {
        self.wanted.swap(0, Ordering::Relaxed)
    }
}

/// One RTP stream of a publisher: its header fields and the stamp's sequence.
struct Outgoing {
    pt: u8,
    ssrc: u32,
    /// The stamp's kind: 0 audio, 1 video.
    kind: u8,
    /// The simulcast encoding (from 0), for video of a simulcast publisher.
    layer: Option<u8>,
    rtp_seq: u16,
    ts: u32,
    /// The stamp's sequence number: players count loss by it.
    seq: u64,
}

impl Outgoing {
    fn new(pt: u8, ssrc: u32, kind: u8) -> Self {
        Self {
            pt,
            ssrc,
            kind,
            layer: None,
            rtp_seq: rand_u16(),
            ts: rand_u32(),
            seq: 0,
        }
    }

    /// Writes the next packet's RTP header and stamp into `buf`, and steps the sequence
    /// numbers.
    fn write(&mut self, buf: &mut [u8], marker: bool, stream: u32, index: u16, shared: &Shared) {
        write_header(buf, self.pt, marker, self.rtp_seq, self.ts, self.ssrc);
        self.write_stamp(&mut buf[12..], stream, index, shared);
    }

    fn write_stamp(&mut self, out: &mut [u8], stream: u32, index: u16, shared: &Shared) {
        let sent_ns = shared.epoch.elapsed().as_nanos() as u64;
        Stamp {
            stream,
            kind: self.kind,
            layer: self.layer.map_or(0, |l| l + 1),
            index,
            sequence: self.seq,
            sent_ns,
        }
        .write(out);
        self.rtp_seq = self.rtp_seq.wrapping_add(1);
        self.seq += 1;
    }

    /// A simulcast video packet: the header with the encoding's RID, the VP8 prefix, the
    /// stamp; returns where the stamp ends.
    #[allow(clippy::too_many_arguments)]
    fn write_simulcast(
        &mut self,
        simulcast: &Simulcast,
        buf: &mut [u8],
        marker: bool,
        frame: Vp8Frame,
        stream: u32,
        index: u16,
        shared: &Shared,
    ) -> usize {
        let layer = usize::from(self.layer.unwrap_or(0));
        let header = simulcast
            .write_header(layer, buf, self.pt, marker, self.rtp_seq, self.ts)
            .expect("the buffer holds a header");
        write_vp8_prefix(&mut buf[header..], frame);
        let stamp_at = header + VP8_PREFIX_LEN;
        self.write_stamp(&mut buf[stamp_at..], stream, index, shared);
        stamp_at + payload::LEN
    }
}

/// One publisher: video frames as bursts at `fps`, audio every 20 ms, until told to stop.
pub async fn publish(
    session: Session,
    stream: u32,
    args: RunArgs,
    shared: Arc<Shared>,
    keyframes: Arc<KeyframeRequests>,
) -> Session {
    match session.simulcast.clone() {
        Some(simulcast) => {
            publish_simulcast(session, simulcast, stream, args, shared, keyframes).await
        }
        None => publish_single(session, stream, args, shared).await,
    }
}

/// One encoding of video (stamps right after the RTP header), audio every 20 ms.
async fn publish_single(
    mut session: Session,
    stream: u32,
    args: RunArgs,
    shared: Arc<Shared>,
) -> Session {
    let mut video = session
        .negotiated
        .video_payload_type
        .map(|pt| Outgoing::new(pt, session.video_ssrc, 1));
    let mut audio = session
        .negotiated
        .audio_payload_type
        .filter(|_| !args.no_audio)
        .map(|pt| Outgoing::new(pt, session.audio_ssrc, 0));
    let frame_interval = Duration::from_secs_f64(1.0 / args.fps.max(1) as f64);
    let frame_bytes = (args.video_kbps as usize * 1000 / 8 / args.fps.max(1) as usize).max(1);
    let packet_size = args.packet_size.clamp(12 + payload::LEN, 1400);
    let mut buf = vec![0u8; packet_size];
    let mut next_video = Instant::now();
    let mut next_audio = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let next = if audio.is_some() {
            next_video.min(next_audio)
        } else {
            next_video
        };
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if let Some(video) = &mut video
            && now >= next_video
        {
            if now.duration_since(next_video) > frame_interval {
                shared.late_frames.fetch_add(1, Ordering::Relaxed);
            }
            send_frame(&mut session, video, &mut buf, frame_bytes, stream, &shared).await;
            video.ts = video.ts.wrapping_add(90_000 / args.fps.max(1));
            next_video += frame_interval;
        }
        if let Some(audio) = &mut audio
            && now >= next_audio
        {
            send_audio(&mut session, audio, &mut buf, stream, &shared).await;
            next_audio += Duration::from_millis(20);
        }
    }
    session
}

/// One 20 ms audio packet (100 bytes of payload), counted as sent.
async fn send_audio(
    session: &mut Session,
    audio: &mut Outgoing,
    buf: &mut [u8],
    stream: u32,
    shared: &Shared,
) {
    let len = 12 + 100;
    audio.write(buf, false, stream, 0, shared);
    if session.send_rtp(&buf[..len]).await.is_ok() {
        shared.sent_packets.fetch_add(1, Ordering::Relaxed);
        shared.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
    audio.ts = audio.ts.wrapping_add(960);
}

/// One video frame of `frame_bytes`: packets of `buf.len()` bytes (the last one shorter), the
/// marker bit on the last, all with the frame's RTP timestamp.
async fn send_frame(
    session: &mut Session,
    video: &mut Outgoing,
    buf: &mut [u8],
    frame_bytes: usize,
    stream: u32,
    shared: &Shared,
) {
    let packet_size = buf.len();
    let mut remaining = frame_bytes;
    let mut index = 0u16;
    while remaining > 0 {
        let payload_len = remaining.min(packet_size - 12).max(payload::LEN);
        remaining = remaining.saturating_sub(packet_size - 12);
        let len = 12 + payload_len;
        let marker = remaining == 0;
        video.write(buf, marker, stream, index, shared);
        index = index.wrapping_add(1);
        if let Err(e) = session.send_rtp(&buf[..len]).await {
            shared.error(format!("publisher {stream}: {e}"));
        }
        shared.sent_packets.fetch_add(1, Ordering::Relaxed);
        shared.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

fn write_header(buf: &mut [u8], pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32) {
    buf[0] = 0x80;
    buf[1] = (pt & 0x7f) | if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos())
        & 0x7fff) as u16
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos())
}

/// Every encoding of [`ENCODINGS`] each frame (the lowest first), audio every 20 ms.
async fn publish_simulcast(
    mut session: Session,
    simulcast: Simulcast,
    stream: u32,
    args: RunArgs,
    shared: Arc<Shared>,
    keyframes: Arc<KeyframeRequests>,
) -> Session {
    let Some(video_pt) = session.negotiated.video_payload_type else {
        shared.error(format!("publisher {stream}: simulcast without video"));
        return session;
    };
    keyframes.set_encodings(&simulcast);
    let mut encodings: Vec<Outgoing> = simulcast
        .encodings
        .iter()
        .enumerate()
        .map(|(layer, e)| Outgoing {
            layer: Some(layer as u8),
            ..Outgoing::new(video_pt, e.ssrc, 1)
        })
        .collect();
    let mut audio = session
        .negotiated
        .audio_payload_type
        .filter(|_| !args.no_audio)
        .map(|pt| Outgoing::new(pt, session.audio_ssrc, 0));
    let fps = args.fps.max(1);
    let frame_interval = Duration::from_secs_f64(1.0 / fps as f64);
    let frame_bytes = args.video_kbps as usize * 1000 / 8 / fps as usize;
    let packet_size = args.packet_size.clamp(64, 1400);
    let mut buf = vec![0u8; packet_size.max(128)];
    // Every encoding starts with a keyframe.
    let mut keyframe_due: u8 = (1 << encodings.len()) - 1;
    let mut next_video = Instant::now();
    let mut next_audio = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let next = if audio.is_some() {
            next_video.min(next_audio)
        } else {
            next_video
        };
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if now >= next_video {
            if now.duration_since(next_video) > frame_interval {
                shared.late_frames.fetch_add(1, Ordering::Relaxed);
            }
            keyframe_due |= keyframes.take();
            for (layer, encoding) in encodings.iter_mut().enumerate() {
                let spec = &ENCODINGS[layer.min(ENCODINGS.len() - 1)];
                let ((n, d), (width, height)) = (spec.share, spec.size);
                let keyframe = keyframe_due & (1 << layer) != 0;
                let first = if keyframe {
                    shared.keyframes_sent[layer.min(2)].fetch_add(1, Ordering::Relaxed);
                    Vp8Frame::Keyframe { width, height }
                } else {
                    Vp8Frame::Inter
                };
                let bytes = (frame_bytes * n / d).max(1);
                let frame = (first, bytes, stream);
                send_simulcast_frame(&mut session, &simulcast, encoding, &mut buf, frame, &shared)
                    .await;
                encoding.ts = encoding.ts.wrapping_add(90_000 / fps);
            }
            keyframe_due = 0;
            next_video += frame_interval;
        }
        if let Some(audio) = &mut audio
            && now >= next_audio
        {
            send_audio(&mut session, audio, &mut buf, stream, &shared).await;
            next_audio += Duration::from_millis(20);
        }
    }
    session
}

/// One frame of one encoding: `(how it starts, its payload bytes, the stream)`, in packets
/// of `buf.len()` bytes (the last shorter), each with the RID, the VP8 prefix and a stamp.
async fn send_simulcast_frame(
    session: &mut Session,
    simulcast: &Simulcast,
    encoding: &mut Outgoing,
    buf: &mut [u8],
    (first, frame_bytes, stream): (Vp8Frame, usize, u32),
    shared: &Shared,
) {
    let mut remaining = frame_bytes;
    let mut index = 0u16;
    while remaining > 0 {
        let frame = if index == 0 {
            first
        } else {
            Vp8Frame::Continuing
        };
        // Header and prefix first, to know the room left; the marker bit set after.
        let stamp_end =
            encoding.write_simulcast(simulcast, buf, false, frame, stream, index, shared);
        let room = buf.len() - (stamp_end - payload::LEN);
        let payload_len = remaining.min(room).max(payload::LEN);
        remaining = remaining.saturating_sub(room);
        let len = stamp_end - payload::LEN + payload_len;
        if remaining == 0 {
            buf[1] |= 0x80;
        }
        index = index.wrapping_add(1);
        if let Err(e) = session.send_rtp(&buf[..len]).await {
            shared.error(format!("publisher {stream}: {e}"));
        }
        shared.sent_packets.fetch_add(1, Ordering::Relaxed);
        shared.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}
