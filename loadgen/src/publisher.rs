//! A publisher: video frames as bursts of stamped RTP packets at the frame rate, audio every
//! 20 ms.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use corecast::client::Session;

use crate::payload::{self, Stamp};
use crate::run::{RunArgs, Shared};

/// One RTP stream of a publisher: its header fields and the stamp's sequence.
struct Outgoing {
    pt: u8,
    ssrc: u32,
    /// The stamp's kind: 0 audio, 1 video.
    kind: u8,
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
            rtp_seq: rand_u16(),
            ts: rand_u32(),
            seq: 0,
        }
    }

    /// Writes the next packet's RTP header and stamp into `buf`, and steps the sequence
    /// numbers.
    fn write(&mut self, buf: &mut [u8], marker: bool, stream: u32, index: u16, shared: &Shared) {
        write_header(buf, self.pt, marker, self.rtp_seq, self.ts, self.ssrc);
        let sent_ns = shared.epoch.elapsed().as_nanos() as u64;
        Stamp {
            stream,
            kind: self.kind,
            index,
            sequence: self.seq,
            sent_ns,
        }
        .write(&mut buf[12..]);
        self.rtp_seq = self.rtp_seq.wrapping_add(1);
        self.seq += 1;
    }
}

/// One publisher: video frames as bursts at `fps`, audio every 20 ms, until told to stop.
pub async fn publish(
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
            let len = 12 + 100;
            audio.write(&mut buf, false, stream, 0, &shared);
            if session.send_rtp(&buf[..len]).await.is_ok() {
                shared.sent_packets.fetch_add(1, Ordering::Relaxed);
                shared.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            audio.ts = audio.ts.wrapping_add(960);
            next_audio += Duration::from_millis(20);
        }
    }
    session
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
