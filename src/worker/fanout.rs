//! Fanout: a publisher's packet, received here or handed over by another worker, goes to this
//! worker's players of its stream (staged for the turn, then player by player: rewrite,
//! protect, send) and, as one shared copy per worker, to the other workers with players of
//! the stream. Keyframe requests travel the other way, to the publisher's worker.

use std::sync::Arc;
use std::time::Instant;

use super::egress::{Output, Peer, Sent, send_pli};
use super::mesh::{self, CrossMessage, Forwarded, LayerTag, Mesh};
use super::staged::{self, Staged};
use super::stats::inc;
use super::table::{Role, Session, Table};
use crate::io::EGRESS_HEADROOM;
use crate::media::{MediaKind, StreamId};
use crate::session::player::Player;
use crate::wire::rtp::RtpHeader;
use crate::wire::srtp::SrtpContext;

pub(super) struct Fanout {
    index: usize,
    mesh: Arc<Mesh>,
    /// This turn's publisher packets, fanned out player by player (see `staged`).
    staged: Staged,
    /// Packets handed to other workers, reused once they let go of them.
    shared_pool: mesh::SharedPool,
    /// Workers handed something this turn, woken once at its end.
    wake_pending: Vec<bool>,
    /// Single-port mode: what other workers handed over for ingress here this turn.
    pub(super) inbox: Vec<Inbound>,
}

/// Single-port mode: something another worker received for a session here.
pub(super) enum Inbound {
    /// A datagram (`Forwarded::Handoff`), from worker `from_worker`'s shared socket.
    Packet {
        from_worker: usize,
        packet: Arc<mesh::SharedPacket>,
    },
    Connection(Box<super::mux::ConnHandover>),
}

impl Fanout {
    pub(super) fn new(index: usize, mesh: Arc<Mesh>) -> Fanout {
        let workers = mesh.workers();
        Fanout {
            index,
            mesh,
            staged: Staged::default(),
            shared_pool: mesh::SharedPool::new(if workers > 1 { 1024 } else { 0 }),
            wake_pending: vec![false; workers],
            // Room for a turn's worth, so handing over allocates nothing.
            inbox: Vec::with_capacity(if workers > 1 {
                super::event_loop::MESH_BUDGET
            } else {
                0
            }),
        }
    }

    /// Single-port mode: hands `bytes` (`what` says what they are) to worker `to`; false when
    /// its queue is full.
    pub(super) fn hand_over(
        &mut self,
        to: usize,
        what: Forwarded,
        bytes: &[u8],
        now: Instant,
    ) -> bool {
        let packet = self.shared_pool.share(bytes, what, now);
        match self
            .mesh
            .push(self.index, to, CrossMessage::Demux { packet })
        {
            Ok(()) => {
                self.wake_pending[to] = true;
                true
            }
            Err(_) => false,
        }
    }

    /// Single-port mode: moves a connection to worker `to`; gives it back when the queue is
    /// full.
    pub(super) fn hand_over_conn(
        &mut self,
        to: usize,
        handover: Box<super::mux::ConnHandover>,
    ) -> Result<(), Box<super::mux::ConnHandover>> {
        match self
            .mesh
            .push(self.index, to, CrossMessage::Connection(handover))
        {
            Ok(()) => {
                self.wake_pending[to] = true;
                Ok(())
            }
            Err(CrossMessage::Connection(handover)) => Err(handover),
            Err(_) => unreachable!("the queue gives back what it was given"),
        }
    }

    /// Makes the shared pool ready for `windows` retransmission windows (each holding up to
    /// `RETRANSMIT_WINDOW_PACKETS` packets) besides the hand-over to other workers.
    pub(super) fn ensure_shared(&mut self, windows: usize) {
        if windows > 0 {
            let hand_over = if self.mesh.workers() > 1 { 1024 } else { 0 };
            self.shared_pool
                .ensure(hand_over + windows * 2 * super::table::RETRANSMIT_WINDOW_PACKETS);
        }
    }

    /// Sends a publisher's packet (RTP parsed as `what` says, or a sender report) to the
    /// stream's local players and hands one shared copy to each other worker that has players
    /// of the stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fanout(
        &mut self,
        stream: StreamId,
        kind: MediaKind,
        what: Forwarded,
        packet: &[u8],
        now: Instant,
        table: &mut Table,
        out: &mut Output,
    ) {
        let Some(local) = table.streams.get(&stream) else {
            return;
        };
        if !local.players.is_empty() {
            self.stage(stream, kind, what, packet, now, table, out);
        }
        let Some(local) = table.streams.get_mut(&stream) else {
            return;
        };
        let mut shared: Option<Arc<mesh::SharedPacket>> = None;
        // Players here that repair loss get retransmissions from this stream's window: one
        // shared copy per packet, the same one the other workers get.
        if let (Forwarded::Rtp(header, tag), MediaKind::Video) = (what, kind)
            && let Some(window) = local.repair.get_mut(tag.layer as usize)
        {
            let copy = self.shared_pool.share(packet, what, now);
            window.insert(header.sequence, now, copy.clone());
            shared = Some(copy);
        }
        for (worker, &players) in local.remote_interest.iter().enumerate() {
            if players == 0 || worker == self.index {
                continue;
            }
            let packet = shared
                .get_or_insert_with(|| self.shared_pool.share(packet, what, now))
                .clone();
            let message = CrossMessage::Media {
                stream,
                kind,
                packet,
            };
            match self.mesh.push(self.index, worker, message) {
                Ok(()) => self.wake_pending[worker] = true,
                Err(_) => inc(&out.stats.drop_ring_full),
            }
        }
    }

    /// Sets a packet aside for this worker's players of `stream`, fanning out what is set
    /// aside first when there is no room.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        stream: StreamId,
        kind: MediaKind,
        what: Forwarded,
        packet: &[u8],
        received_at: Instant,
        table: &mut Table,
        out: &mut Output,
    ) {
        if self.staged.is_full() {
            self.flush_staged(Instant::now(), table, out);
        }
        if !self.staged.push(stream, kind, what, packet, received_at) {
            inc(&out.stats.drop_garbage);
        }
    }

    /// Fans the packets set aside out to this worker's players, each player getting all of
    /// its stream's packets in a row.
    pub(super) fn flush_staged(&mut self, now: Instant, table: &mut Table, out: &mut Output) {
        if self.staged.is_empty() {
            return;
        }
        let mut needs_keyframe = [(0 as StreamId, 0u8); staged::CAPACITY];
        let mut count = 0;
        {
            let (streams, sessions) = (&table.streams, &mut table.sessions);
            let mut groups = self.staged.drain_by_stream();
            while let Some((staged, stream, group)) = groups.next_group() {
                let Some(local) = streams.get(&stream) else {
                    continue;
                };
                if let Some(layer) =
                    forward_to_players(&local.players, sessions, out, staged, group, now)
                {
                    needs_keyframe[count] = (stream, layer);
                    count += 1;
                }
            }
        }
        // A player lost video frames: it cannot decode until the next keyframe.
        for &(stream, layer) in &needs_keyframe[..count] {
            self.request_keyframe(stream, layer, now, table, out);
        }
    }

    /// Takes what other workers handed over: their publishers' packets for this worker's
    /// players, and keyframe requests for this worker's publishers. At most `budget` messages
    /// per turn; returns how many were taken.
    pub(super) fn drain_mesh(
        &mut self,
        now: Instant,
        budget: usize,
        table: &mut Table,
        out: &mut Output,
    ) -> usize {
        let mut taken = 0;
        for from in 0..self.mesh.workers() {
            if from == self.index {
                continue;
            }
            while taken < budget
                && let Some(message) = self.mesh.pop(from, self.index)
            {
                taken += 1;
                match message {
                    CrossMessage::Media {
                        stream,
                        kind,
                        packet,
                    } => {
                        let what = packet.what;
                        let Some(local) = table.streams.get_mut(&stream) else {
                            continue;
                        };
                        if let (Forwarded::Rtp(header, tag), MediaKind::Video) = (what, kind)
                            && let Some(window) = local.repair.get_mut(tag.layer as usize)
                        {
                            window.insert(header.sequence, now, packet.clone());
                        }
                        if !local.players.is_empty() {
                            let (bytes, at) = (packet.bytes(), packet.received_at);
                            self.stage(stream, kind, what, bytes, at, table, out);
                        }
                    }
                    CrossMessage::KeyframeRequest { stream, layer } => {
                        keyframe_to_publisher(stream, layer, now, table, out)
                    }
                    CrossMessage::Demux { packet } => match packet.what {
                        Forwarded::Latch {
                            session,
                            from: remote,
                        } => {
                            if let Some(mux) = table.mux.as_mut() {
                                let owner = super::mux::MuxOwner {
                                    worker: from,
                                    session,
                                };
                                mux.latch_udp(remote, owner, &out.stats);
                            }
                        }
                        _ => self.inbox.push(Inbound::Packet {
                            from_worker: from,
                            packet,
                        }),
                    },
                    CrossMessage::Connection(handover) => {
                        self.inbox.push(Inbound::Connection(handover))
                    }
                }
            }
        }
        taken
    }

    /// A player of `stream` needs a keyframe of video encoding `layer`: asks the publisher,
    /// through its worker.
    pub(super) fn request_keyframe(
        &mut self,
        stream: StreamId,
        layer: u8,
        now: Instant,
        table: &mut Table,
        out: &mut Output,
    ) {
        let Some(local) = table.streams.get(&stream) else {
            return;
        };
        let publisher_worker = local.publisher_worker;
        if publisher_worker == self.index {
            keyframe_to_publisher(stream, layer, now, table, out);
        } else {
            match self.mesh.push(
                self.index,
                publisher_worker,
                CrossMessage::KeyframeRequest { stream, layer },
            ) {
                Ok(()) => self.wake_pending[publisher_worker] = true,
                Err(_) => inc(&out.stats.drop_ring_full),
            }
        }
    }

    /// Wakes the workers handed something this turn.
    pub(super) fn flush_wakes(&mut self) {
        for (worker, pending) in self.wake_pending.iter_mut().enumerate() {
            if std::mem::take(pending) {
                self.mesh.wakers[worker].wake();
            }
        }
    }
}

/// Sends a PLI for video encoding `layer` to `stream`'s publisher on this worker, unless one
/// went out too recently.
fn keyframe_to_publisher(
    stream: StreamId,
    layer: u8,
    now: Instant,
    table: &mut Table,
    out: &mut Output,
) {
    let Some(slot) = table.streams.get(&stream).and_then(|l| l.publisher) else {
        return;
    };
    let Some(session) = table.sessions[slot].as_mut() else {
        return;
    };
    let Role::Publisher(publisher) = &mut session.role else {
        return;
    };
    if publisher.keyframe_requested(now, layer) {
        send_pli(session, layer, out);
    }
}

/// Copies a stream's staged packets (`group`, indices into `staged`) to each of its players,
/// player by player: rewrite, protect, send (UDP video through the player's frame burst).
/// Returns the encoding of a video packet that had to be dropped for a slow TCP player (it
/// then needs a keyframe of it).
fn forward_to_players(
    players: &[usize],
    sessions: &mut [Option<Session>],
    out: &mut Output,
    staged: &Staged,
    group: &[u8],
    now: Instant,
) -> Option<u8> {
    let mut dropped_video = None;
    for &slot in players {
        let Some(Session {
            remote: Some(peer),
            srtp_out: Some(srtp),
            role: Role::Player(player),
            udp_fd,
            closing: false,
            generation,
            burst,
            ..
        }) = sessions[slot].as_mut()
        else {
            continue; // not connected yet, or leaving
        };
        for &index in group {
            let staged_packet = staged.entry(index as usize);
            let packet = staged.bytes(index as usize);
            let kind = staged_packet.kind;
            let Some(egress) = out.ring.alloc_egress() else {
                inc(&out.stats.drop_no_buffer);
                continue;
            };
            let buffer = &mut out.ring.egress_buffer(egress)[EGRESS_HEADROOM..];
            let header = &staged_packet.header;
            let tag = staged_packet.tag;
            let written = write_for_player(
                player,
                kind,
                tag,
                srtp,
                header.as_ref(),
                packet,
                buffer,
                now,
            );
            let Some(len) = written else {
                out.ring.release_egress(egress);
                continue;
            };
            let received_at = staged_packet.received_at;
            match (*peer, header) {
                (Peer::Udp { addr, raw }, Some(h))
                    if out.gso_enabled && kind == MediaKind::Video && *udp_fd >= 0 =>
                {
                    out.send_or_hold(
                        burst,
                        (slot, *generation),
                        *udp_fd,
                        addr,
                        &raw,
                        egress,
                        len,
                        received_at,
                        h.marker,
                    );
                    inc(&out.stats.forwarded_packets);
                }
                (peer, _) => match out.transmit_later(*udp_fd, &peer, egress, len) {
                    Sent::Queued if header.is_some() => {
                        inc(&out.stats.forwarded_packets);
                        out.forwarded(received_at);
                    }
                    Sent::Dropped if kind == MediaKind::Video => dropped_video = Some(tag.layer),
                    _ => {}
                },
            }
        }
        if let Peer::Tcp { conn, .. } = peer {
            out.flush_conn(*conn);
        }
    }
    dropped_video
}

/// Writes a player's copy of a publisher's packet into `buffer`, protected: RTP (`header`, as
/// parsed on receipt) rewritten for the player and encrypted from the publisher's payload in
/// one pass, or a sender report under the track's SSRC. `None`: nothing for this player (not
/// its kind, not its encoding).
#[allow(clippy::too_many_arguments)]
#[inline]
fn write_for_player(
    player: &mut Player,
    kind: MediaKind,
    tag: LayerTag,
    srtp: &mut SrtpContext,
    header: Option<&RtpHeader>,
    packet: &[u8],
    buffer: &mut [u8],
    now: Instant,
) -> Option<usize> {
    match header {
        Some(h) => {
            let written =
                player.rewrite_rtp(now, kind, (tag.layer, tag.keyframe), packet, h, buffer)?;
            let payload = &packet[h.header_len..];
            let (ssrc, sequence) = (written.ssrc, written.sequence);
            srtp.protect_rtp_written(buffer, written.header_len, ssrc, sequence, payload)
                .ok()
        }
        None => {
            let ssrc = u32::from_be_bytes(packet.get(4..8)?.try_into().ok()?);
            let offset = player.sender_report_offset(kind, ssrc)?;
            let len = player
                .track(kind)?
                .rewrite_sender_report(now, packet, offset, buffer)?;
            srtp.protect_rtcp(buffer, len).ok()
        }
    }
}
