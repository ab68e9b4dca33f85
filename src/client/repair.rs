//! Loss repair for corecast's own client, as a browser does it on each side of a lossy path,
//! sans-IO (the caller passes `now` and buffers; nothing here reads a clock or a socket):
//!
//! - [`PlayRepair`], when playing: a [`NackRequester`] over the video SSRC finds the gaps and
//!   times the requests, [`PlayRepair::poll_nack`] writes them as generic NACKs (RFC 4585), and
//!   [`PlayRepair::on_rtp`] restores RTX packets (RFC 4588) to the original SSRC, payload type
//!   and sequence number, so the application sees the packet it missed.
//! - [`PublishRepair`], when publishing: the last ~1 s of sent video packets in fixed buffers
//!   (a [`RetransmitWindow`] of lengths over one slab allocated up front), and the sequence
//!   numbers a NACK asks for queued and resent as RTX (or as the original packet again, when
//!   RTX was not negotiated) by [`PublishRepair::next_retransmission`].
//! - [`LossGate`]: drops a set share of arrivals, deterministic from a seed: the load
//!   generator's `--loss`.
//!
//! Nothing allocates per packet: buffers, rings and queues are sized at construction.

use std::time::{Duration, Instant};

use crate::session::nack::{NackConfig, NackRequester, PacketOutcome};
use crate::session::retransmit::{ResendGuard, RetransmitWindow};
use crate::wire::nack::{FMT_NACK, Nack, write_nack};
use crate::wire::rtcp::{self, TRANSPORT_FEEDBACK};
use crate::wire::rtp::RtpHeader;
use crate::wire::rtx::{self, OriginalStream, RtxStream};

/// Sequence numbers one NACK carries at most: more stay due and go in the next one.
const NACK_BATCH: usize = 64;
/// Room [`PlayRepair::poll_nack`] needs: the fixed part and one (PID, BLP) pair per number,
/// the worst case of numbers too far apart to share a BLP.
pub const NACK_BUFFER_LEN: usize = 12 + 4 * NACK_BATCH;
/// The largest packet a publisher keeps for retransmission: an Ethernet MTU. A larger RTP
/// packet would be fragmented on UDP anyway; it is sent but cannot be repaired.
pub const RETRANSMIT_SLOT_LEN: usize = 1500;
/// Room [`PublishRepair::next_retransmission`] needs: a kept packet and the RTX OSN.
pub const RETRANSMISSION_BUFFER_LEN: usize = RETRANSMIT_SLOT_LEN + 2;
/// NACKed sequence numbers waiting to be resent; a NACK beyond this is mostly lost already.
const PENDING_CAPACITY: usize = 512;
/// A number asked for again within this interval is not resent: the relay's own retries are
/// at least 20 ms apart, so a repeat this soon crossed the retransmission (or repeats a
/// number within one compound packet).
const RESEND_GUARD: Duration = Duration::from_millis(10);

/// What the playing side counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayCounters {
    /// NACK packets written.
    pub nacks_sent: u64,
    /// Sequence numbers requested, retries included.
    pub nacked_packets: u64,
    /// RTX packets that arrived, and their bytes (RTP header and OSN included).
    pub rtx_received: u64,
    pub rtx_received_bytes: u64,
    /// Missing packets that arrived after a NACK, as RTX or as the original resent.
    pub repaired: u64,
    /// RTX packets for sequence numbers not missing (or given up): not delivered.
    pub rtx_duplicates: u64,
    /// RTX packets that could not be restored (no known video SSRC, malformed).
    pub rtx_unrestorable: u64,
    /// Padding-only packets on the RTX stream: the server probing the path (not
    /// retransmissions, so not counted as RTX received), and their bytes.
    pub probes_received: u64,
    pub probe_bytes_received: u64,
    /// Missing packets given up after the last request.
    pub given_up: u64,
}

/// The playing side's repair of one video stream.
pub struct PlayRepair {
    video_payload_type: u8,
    rtx_payload_type: Option<u8>,
    /// The video SSRC: as announced in the answer, else learned from the first video packet.
    media_ssrc: Option<u32>,
    /// Ours, as the NACK's sender.
    sender_ssrc: u32,
    requester: NackRequester,
    restored: Box<[u8]>,
    due: [u16; NACK_BATCH],
    counters: PlayCounters,
}

impl PlayRepair {
    /// `rtx_payload_type` as the answer negotiated it; `media_ssrc` as the answer announced it.
    pub fn new(
        video_payload_type: u8,
        rtx_payload_type: Option<u8>,
        media_ssrc: Option<u32>,
        sender_ssrc: u32,
    ) -> Self {
        PlayRepair {
            video_payload_type,
            rtx_payload_type,
            media_ssrc,
            sender_ssrc,
            requester: NackRequester::new(NackConfig::default()),
            restored: vec![0u8; crate::media::MAX_PACKET].into_boxed_slice(),
            due: [0; NACK_BATCH],
            counters: PlayCounters::default(),
        }
    }

    pub fn counters(&self) -> &PlayCounters {
        &self.counters
    }

    /// Packets missing and still being asked for.
    pub fn outstanding(&self) -> usize {
        self.requester.outstanding()
    }

    /// Takes an arriving (decrypted) RTP packet and says what the application gets: the packet
    /// itself; for an RTX packet, the original it carries (or nothing, when that is not
    /// missing: a duplicate the application need not see twice).
    pub fn on_rtp<'a>(&'a mut self, now: Instant, packet: &'a [u8]) -> Option<&'a [u8]> {
        let Ok(header) = RtpHeader::parse(packet) else {
            return Some(packet);
        };
        if Some(header.payload_type) == self.rtx_payload_type {
            return self.on_rtx(now, packet);
        }
        if header.payload_type != self.video_payload_type {
            return Some(packet);
        }
        match self.media_ssrc {
            Some(ssrc) if ssrc == header.ssrc => {}
            Some(_) => {
                // Another source: its numbering has nothing to do with the old one, whose
                // gaps would be asked of it. (Rare: a one-off allocation, not one per packet.)
                self.requester = NackRequester::new(NackConfig::default());
                self.media_ssrc = Some(header.ssrc);
            }
            None => self.media_ssrc = Some(header.ssrc),
        }
        if let PacketOutcome::Recovered { requested: true } =
            self.requester.on_packet(now, header.sequence)
        {
            // Without RTX the relay resends the original: late, after our NACK.
            self.counters.repaired += 1;
        }
        Some(packet)
    }

    fn on_rtx<'a>(&'a mut self, now: Instant, packet: &'a [u8]) -> Option<&'a [u8]> {
        let padding_only = RtpHeader::parse(packet)
            .ok()
            .and_then(|h| rtx::payload_range(packet, &h).ok())
            .is_some_and(|payload| payload.is_empty());
        if padding_only {
            self.counters.probes_received += 1;
            self.counters.probe_bytes_received += packet.len() as u64;
            return None;
        }
        self.counters.rtx_received += 1;
        self.counters.rtx_received_bytes += packet.len() as u64;
        let Some(ssrc) = self.media_ssrc else {
            self.counters.rtx_unrestorable += 1;
            return None;
        };
        let original = OriginalStream {
            ssrc,
            payload_type: self.video_payload_type,
        };
        let Ok(len) = rtx::restore_into(packet, &original, &mut self.restored) else {
            self.counters.rtx_unrestorable += 1;
            return None;
        };
        let sequence = u16::from_be_bytes([self.restored[2], self.restored[3]]);
        match self.requester.on_packet(now, sequence) {
            PacketOutcome::Stale => {
                self.counters.rtx_duplicates += 1;
                None
            }
            outcome => {
                if matches!(outcome, PacketOutcome::Recovered { .. }) {
                    self.counters.repaired += 1;
                }
                Some(&self.restored[..len])
            }
        }
    }

    /// When [`Self::poll_nack`] next has something to do; `None` while nothing is missing.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.requester.next_timeout()
    }

    /// Writes the NACK due now into `out` (at least [`NACK_BUFFER_LEN`] bytes) and returns its
    /// length; `None` when nothing is due. Call again while it returns `Some`: a long list goes
    /// in several packets.
    pub fn poll_nack(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        if self.requester.next_timeout().is_none_or(|t| t > now) {
            return None;
        }
        // Always poll when due, so the requester moves its deadline on whatever happens next.
        let poll = self.requester.poll(now, &mut self.due);
        self.counters.given_up += poll.gave_up;
        let media_ssrc = self.media_ssrc?;
        let lost = &self.due[..poll.requested];
        let (len, covered) = write_nack(out, self.sender_ssrc, media_ssrc, lost).ok()?;
        self.counters.nacks_sent += 1;
        // What did not fit a short `out` was marked requested: it goes again after an RTT.
        self.counters.nacked_packets += covered as u64;
        Some(len)
    }
}

/// What the publishing side counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishCounters {
    /// NACKs for our video SSRC, and the sequence numbers they asked for.
    pub nacks_received: u64,
    pub nacked_packets: u64,
    /// Packets resent (as RTX or as the original), and their bytes before SRTP.
    pub retransmitted: u64,
    pub retransmitted_bytes: u64,
    /// Asked for but no longer kept (older than the window, never sent, or too large).
    pub missed: u64,
    /// Asked for again within 10 ms of its resend (a repeat that crossed it): not resent.
    pub suppressed: u64,
    /// Asked for while the queue of pending resends was full.
    pub overflowed: u64,
}

/// The publishing side's retransmissions of one video stream.
pub struct PublishRepair {
    video_ssrc: u32,
    /// `(payload type, SSRC)` of our RTX stream, when the answer negotiated RTX.
    rtx: Option<(u8, u32)>,
    rtx_sequence: u16,
    /// The length of the packet kept for each sequence number; the bytes are in `slots` at
    /// the window's own index, `sequence & (capacity - 1)`.
    window: RetransmitWindow<u16>,
    slots: Box<[u8]>,
    guard: ResendGuard,
    pending: [u16; PENDING_CAPACITY],
    pending_head: usize,
    pending_len: usize,
    counters: PublishCounters,
    /// `(from, to)`: the header-extension id an RTX packet carries its original's element
    /// under (a simulcast encoding's RID becomes its repaired RID).
    rtx_extension_rename: Option<(u8, u8)>,
}

impl PublishRepair {
    /// Keeps up to `capacity` packets (rounded up to a power of two) for at most `max_age`.
    /// `rtx_sequence` is where the RTX stream's numbering starts (random, as RFC 3550 asks).
    pub fn new(
        video_ssrc: u32,
        rtx: Option<(u8, u32)>,
        rtx_sequence: u16,
        capacity: usize,
        max_age: Duration,
    ) -> Self {
        let window = RetransmitWindow::new(capacity, max_age);
        let slots = vec![0u8; window.capacity() * RETRANSMIT_SLOT_LEN].into_boxed_slice();
        PublishRepair {
            video_ssrc,
            rtx,
            rtx_sequence,
            guard: ResendGuard::new(window.capacity(), RESEND_GUARD),
            window,
            slots,
            pending: [0; PENDING_CAPACITY],
            pending_head: 0,
            pending_len: 0,
            counters: PublishCounters::default(),
            rtx_extension_rename: None,
        }
    }

    /// Retransmissions as RTX carry the original's extension element `from` as `to`.
    pub fn renaming_in_rtx(mut self, from: u8, to: u8) -> Self {
        self.rtx_extension_rename = Some((from, to));
        self
    }

    pub fn counters(&self) -> &PublishCounters {
        &self.counters
    }

    fn slot(&self, sequence: u16) -> std::ops::Range<usize> {
        let at = (sequence as usize & (self.window.capacity() - 1)) * RETRANSMIT_SLOT_LEN;
        at..at + RETRANSMIT_SLOT_LEN
    }

    /// Keeps a copy of a packet just sent (before SRTP), if it is on our video SSRC.
    pub fn on_sent(&mut self, now: Instant, packet: &[u8]) {
        let Ok(header) = RtpHeader::parse(packet) else {
            return;
        };
        if header.ssrc != self.video_ssrc || packet.len() > RETRANSMIT_SLOT_LEN {
            return;
        }
        self.window
            .insert(header.sequence, now, packet.len() as u16);
        // The window refuses a packet too far below its highest; then it still reads nothing
        // for that number, and the slot's bytes must stay those of the entry it kept.
        if self.window.get(header.sequence, now).is_some() {
            let slot = self.slot(header.sequence);
            self.slots[slot][..packet.len()].copy_from_slice(packet);
        }
    }

    /// Reads a compound RTCP packet from the relay and queues what its NACKs for our video
    /// SSRC ask for. Returns whether anything was queued.
    pub fn on_rtcp(&mut self, now: Instant, compound: &[u8]) -> bool {
        let mut queued = false;
        for packet in rtcp::compound(compound).map_while(Result::ok) {
            if packet.packet_type != TRANSPORT_FEEDBACK || packet.count != FMT_NACK {
                continue;
            }
            let Ok(nack) = Nack::parse(packet.bytes) else {
                continue;
            };
            if nack.media_ssrc != self.video_ssrc {
                continue;
            }
            self.counters.nacks_received += 1;
            for sequence in nack.lost() {
                self.counters.nacked_packets += 1;
                if !self.guard.allow(sequence, now) {
                    self.counters.suppressed += 1;
                } else if self.pending_len == PENDING_CAPACITY {
                    self.counters.overflowed += 1;
                } else {
                    let at = (self.pending_head + self.pending_len) % PENDING_CAPACITY;
                    self.pending[at] = sequence;
                    self.pending_len += 1;
                    queued = true;
                }
            }
        }
        queued
    }

    /// Whether retransmissions are waiting for [`Self::next_retransmission`].
    pub fn has_pending(&self) -> bool {
        self.pending_len > 0
    }

    /// Writes the next retransmission into `out` (at least [`RETRANSMISSION_BUFFER_LEN`]
    /// bytes), RTP before SRTP, and returns its length; `None` when none is waiting.
    pub fn next_retransmission(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        while self.pending_len > 0 {
            let sequence = self.pending[self.pending_head];
            self.pending_head = (self.pending_head + 1) % PENDING_CAPACITY;
            self.pending_len -= 1;
            let Some(&len) = self.window.get(sequence, now) else {
                self.counters.missed += 1;
                continue;
            };
            let kept = &self.slots[self.slot(sequence)][..len as usize];
            let written = match self.rtx {
                Some((payload_type, ssrc)) => {
                    let stream = RtxStream {
                        ssrc,
                        payload_type,
                        sequence: self.rtx_sequence,
                    };
                    match rtx::build_rtx(kept, &stream, out) {
                        Ok(n) => {
                            self.rtx_sequence = self.rtx_sequence.wrapping_add(1);
                            if let Some((from, to)) = self.rtx_extension_rename {
                                super::simulcast::rename_extension(&mut out[..n], from, to);
                            }
                            n
                        }
                        Err(_) => {
                            self.counters.missed += 1;
                            continue;
                        }
                    }
                }
                None => {
                    let Some(out) = out.get_mut(..kept.len()) else {
                        self.counters.missed += 1;
                        continue;
                    };
                    out.copy_from_slice(kept);
                    kept.len()
                }
            };
            self.counters.retransmitted += 1;
            self.counters.retransmitted_bytes += written as u64;
            return Some(written);
        }
        None
    }
}

/// Drops a share of arrivals at random, the same ones for the same seed: a lossy link that a
/// run can repeat.
#[derive(Debug, Clone)]
pub struct LossGate {
    /// Drop when the top 32 bits of the next draw are below this.
    threshold: u64,
    state: u64,
    seen: u64,
    dropped: u64,
}

impl LossGate {
    /// `percent` of arrivals dropped (clamped to 0..=100).
    pub fn new(percent: f64, seed: u64) -> Self {
        let share = (percent / 100.0).clamp(0.0, 1.0);
        LossGate {
            threshold: (share * (1u64 << 32) as f64) as u64,
            state: seed,
            seen: 0,
            dropped: 0,
        }
    }

    /// Whether to drop the packet that just arrived.
    pub fn drop_next(&mut self) -> bool {
        self.seen += 1;
        let drop = (self.next() >> 32) < self.threshold;
        self.dropped += u64::from(drop);
        drop
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// SplitMix64: fast, and every seed (0 included) gives a full-period stream.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
#[path = "repair_tests.rs"]
mod tests;
