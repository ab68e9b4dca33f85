//! Ingress: what a receive brings in, classified and handed on. STUN is answered here (ICE),
//! DTLS goes up to the control thread, SRTP is removed in place and the RTP header parsed
//! once, and a publisher's media goes on to the fanout with that parsed header; a player's
//! RTCP may ask the publisher for a keyframe.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Event;
use super::egress::{Peer, send_pli};
use super::event_loop::Core;
use super::mesh::{Forwarded, LayerTag};
use super::mux::{MUX_TCP, MUX_UDP};
use super::stats::{add, inc};
use super::table::Role;
use crate::media::{MAX_LAYERS, MediaKind};
use crate::session::path::PathChange;
use crate::session::player::Player;
use crate::session::publisher_link::Arrival;
use crate::wire::demux::{PacketKind, classify};
use crate::wire::rtp::RtpHeader;

/// DTLS records dropped because the session's handshake queue was full before the session is
/// ended as a flood. A real handshake queues a handful of records at most.
const DTLS_FLOOD_DROPS: u32 = 256;

impl Core {
    /// A datagram arrived on session `slot`'s UDP socket.
    pub(super) fn on_datagram(
        &mut self,
        slot: usize,
        generation: u32,
        from: SocketAddr,
        data: &mut [u8],
        now: Instant,
    ) {
        inc(&self.out.stats.rx_packets);
        add(&self.out.stats.rx_bytes, data.len() as u64);
        if self.table.loopback_only && !from.ip().is_loopback() {
            inc(&self.out.stats.drop_foreign_source);
            return;
        }
        if slot == MUX_UDP && self.table.mux.is_some() {
            return self.on_mux_datagram(from, data, now);
        }
        self.on_packet(slot, generation, Peer::udp(from), data, now);
    }

    /// Cuts one read of a connection into frames and handles each in place.
    pub(super) fn on_tcp_data(
        &mut self,
        slot: usize,
        generation: u32,
        data: &mut [u8],
        now: Instant,
    ) {
        let Some(conn) = self.out.conns.get(slot, generation) else {
            return;
        };
        if let Some(handover) = conn.handover.as_mut() {
            // On its way to its session's worker: the stream's bytes go with it.
            handover.bytes.extend_from_slice(data);
            return;
        }
        if conn.closing {
            return;
        }
        let mut reader = std::mem::take(&mut conn.reader);
        let peer = Peer::Tcp {
            conn: slot,
            generation,
            addr: conn.peer,
        };
        let result = reader.feed(data, |frame| self.on_tcp_frame(peer, frame, now));
        if let Some(conn) = self.out.conns.get(slot, generation) {
            if let Some(handover) = conn.handover.as_mut() {
                // A frame begun in this read goes with the connection.
                handover.bytes.extend_from_slice(&reader.take_partial());
            }
            conn.reader = reader;
        }
        if result.is_err() {
            inc(&self.out.stats.drop_tcp_framing);
            self.table.close_conn(slot, &mut self.out);
        }
    }

    /// One RFC 4571 frame of connection `peer`, for its session (read from the connection
    /// at each frame: the first may bind an unbound one).
    fn on_tcp_frame(&mut self, peer: Peer, frame: &mut [u8], now: Instant) {
        let Some((conn_slot, conn_generation)) = peer.tcp_conn() else {
            return;
        };
        let Some(conn) = self.out.conns.get(conn_slot, conn_generation) else {
            return;
        };
        if let Some(handover) = conn.handover.as_mut() {
            // Read after the frame that named another worker's session: it goes along.
            super::mux::append_frame(&mut handover.bytes, frame);
            return;
        }
        if conn.closing {
            return;
        }
        let (session, session_generation) = (conn.session, conn.session_generation);
        let validated = conn.validated;
        inc(&self.out.stats.rx_packets);
        add(&self.out.stats.rx_bytes, frame.len() as u64);
        if !validated && classify(frame) != PacketKind::Stun {
            // Before ICE, a connection carries connectivity checks and nothing else.
            inc(&self.out.stats.drop_tcp_framing);
            self.table.close_conn(conn_slot, &mut self.out);
            return;
        }
        if session == MUX_TCP && self.table.mux.is_some() {
            return self.on_unbound_frame(peer, frame, now);
        }
        self.on_packet(session, session_generation, peer, frame, now);
    }

    /// A packet for session `(slot, generation)` that came `via` a path: demultiplexed by its
    /// first byte (RFC 7983).
    pub(super) fn on_packet(
        &mut self,
        slot: usize,
        generation: u32,
        via: Peer,
        data: &mut [u8],
        now: Instant,
    ) {
        let Some(session) = self.table.session(slot, generation) else {
            return;
        };
        let stats = &self.out.stats;
        match classify(data) {
            PacketKind::Stun => self.on_stun(slot, via, data, now),
            PacketKind::Dtls => {
                if session.ice.is_validated(via.addr()) {
                    session.dtls_peer = Some(via);
                    // Reserve before copying: a dropped record costs no allocation.
                    match session.dtls_records.try_reserve() {
                        Ok(permit) => {
                            inc(&stats.dtls_records);
                            permit.send(data.to_vec());
                        }
                        Err(_) => {
                            inc(&stats.drop_dtls_flood);
                            session.dtls_dropped = session.dtls_dropped.saturating_add(1);
                            if session.dtls_dropped == DTLS_FLOOD_DROPS {
                                inc(&stats.dtls_flood_sessions);
                                let _ = self.events.send(Event::DtlsFlood {
                                    session: session.id,
                                });
                            }
                        }
                    }
                } else {
                    inc(&stats.drop_not_ready);
                }
            }
            kind @ (PacketKind::Rtp | PacketKind::Rtcp) => {
                if !session.remote.is_some_and(|r| r.same_path(&via)) {
                    inc(&stats.drop_not_ready);
                    return;
                }
                let Some(srtp) = session.srtp_in.as_mut() else {
                    inc(&stats.drop_not_ready);
                    return;
                };
                if kind == PacketKind::Rtp {
                    match srtp.unprotect_rtp_parsed(data) {
                        Ok((len, header)) => self.on_rtp(slot, &mut data[..len], header, now),
                        Err(_) => inc(&stats.drop_srtp),
                    }
                } else {
                    match srtp.unprotect_rtcp(data) {
                        Ok(len) => self.on_rtcp(slot, &data[..len], now),
                        Err(_) => inc(&stats.drop_srtp),
                    }
                }
            }
            PacketKind::Unknown => inc(&stats.drop_garbage),
        }
    }

    /// An ICE connectivity check: answered, and a nominated path becomes the session's media
    /// path, or its new one (`Table::select_path`).
    fn on_stun(&mut self, slot: usize, via: Peer, data: &[u8], now: Instant) {
        let Some(out) = self.out.ring.alloc_egress() else {
            inc(&self.out.stats.drop_no_buffer);
            return;
        };
        let Some(session) = self.table.sessions[slot].as_mut() else {
            self.out.ring.release_egress(out);
            return;
        };
        let buffer = &mut self.out.ring.egress_buffer(out)[crate::io::EGRESS_HEADROOM..];
        let outcome = match session.ice.handle_check(now, data, via.addr(), buffer) {
            Ok(outcome) => outcome,
            Err(_) => {
                self.out.ring.release_egress(out);
                inc(&self.out.stats.drop_stun_invalid);
                return;
            }
        };
        inc(&self.out.stats.stun_answered);
        let udp_fd = session.udp_fd;
        // Single-port mode: the check proved the session's password, so its path may latch
        // where its packets arrive (decided once the check has or has not moved the path).
        let latch = match (self.mux_receiver, via) {
            (Some(receiver), Peer::Udp { addr, .. }) => Some((receiver, session.id, addr)),
            _ => None,
        };
        if let Some((conn, generation)) = via.tcp_conn()
            && let Some(c) = self.out.conns.get(conn, generation)
        {
            c.validated = true;
            c.last_check = now;
        }
        // The response leaves on the path the check came on, before any switch closes it.
        self.out.transmit(udp_fd, &via, out, outcome.response_len);
        // A nomination is known by its transaction ID (bytes 8 to 20 of a check that passed).
        let nomination = data
            .get(8..20)
            .and_then(|id| <[u8; 12]>::try_from(id).ok())
            .filter(|_| outcome.use_candidate);
        let change = self
            .table
            .select_path(slot, via, nomination, &mut self.out, &self.events);
        // A player whose path moved lost what was in flight on the old one (a switch follows
        // an outage, which its retransmission window has outlived): it needs a keyframe now,
        // not when its decoder gives up.
        if let PathChange::Migrated { .. } = change
            && let Some(session) = self.table.sessions[slot].as_ref()
            && let Role::Player(player) = &session.role
        {
            let (stream, layer) = (session.stream, player.keyframe_layer());
            let (table, out) = (&mut self.table, &mut self.out);
            self.fanout.request_keyframe(stream, layer, now, table, out);
        }
        // Only the session's path latches (or, before it has one, where its checks come
        // from): a check refused as a replay, or one on a pair the client has not nominated,
        // must not pull the session's media tuple away or push its path out of the table.
        let latches = self.table.sessions[slot]
            .as_ref()
            .is_some_and(|s| s.remote.is_none_or(|r| r.path() == via.path()));
        if latches && let Some((receiver, session, from)) = latch {
            self.latch_mux(receiver, session, from);
        }
    }

    /// Plain RTP from a session, its header parsed once (by SRTP): a publisher's goes to the
    /// fanout with that header.
    fn on_rtp(&mut self, slot: usize, packet: &mut [u8], header: RtpHeader, now: Instant) {
        let Some(session) = self.table.sessions[slot].as_mut() else {
            return;
        };
        let stream = session.stream;
        let Role::Publisher(publisher) = &mut session.role else {
            inc(&self.out.stats.drop_garbage); // players do not send media here
            return;
        };
        // Transport-wide feedback and loss repair see the packet first: a retransmission is
        // restored to the original stream (its encoding's SSRC) before anything else reads it.
        let repaired_ssrc = match publisher.is_rtx(&header) {
            true => publisher.repaired_ssrc(packet, &header),
            false => None,
        };
        let before = publisher.link.counters();
        let (packet, header, retransmitted) =
            match publisher.link.on_rtp(now, packet, header, repaired_ssrc) {
                Arrival::Forward {
                    range,
                    header,
                    retransmitted,
                } => (&packet[range], header, retransmitted),
                Arrival::Consumed => {
                    inc(&self.out.stats.retransmissions_consumed);
                    return;
                }
            };
        let Some(source) = publisher.on_rtp(packet, &header) else {
            // A payload type not negotiated, or a simulcast SSRC no RID has named yet.
            inc(&self.out.stats.drop_unknown_payload_type);
            return;
        };
        publisher.link.on_media(now, source, &header, retransmitted);
        let mut tag = LayerTag::default();
        if source.kind == MediaKind::Video {
            let layer = source.layer;
            tag = LayerTag {
                layer,
                keyframe: publisher.on_video(layer, packet, &header),
            };
            let wanted = publisher
                .link
                .on_video(now, layer, header.sequence, retransmitted);
            // What the players would get of this encoding: not the publisher's probes (it
            // pads with retransmissions of what it sent, which are dropped below).
            if wanted {
                publisher.rates.record(now, layer, packet.len());
            }
            let after = publisher.link.counters();
            add(
                &self.out.stats.packets_repaired,
                after.repaired - before.repaired,
            );
            // A repair measured the round trip to the publisher: the control thread shows it.
            if after.repaired > before.repaired
                && let Some(rtt) = publisher.link.rtt()
            {
                let rtt_us = rtt.as_micros() as u64;
                session.reception.rtt_us.store(rtt_us, Ordering::Relaxed);
            }
            let wishes = publisher.link.take_keyframe_wishes();
            let due = (0..MAX_LAYERS as u8)
                .filter(|&l| wishes & (1 << l) != 0 && publisher.keyframe_requested(now, l))
                .fold(0u8, |due, l| due | (1 << l));
            for layer in (0..MAX_LAYERS as u8).filter(|l| due & (1 << l) != 0) {
                send_pli(session, layer, &mut self.out);
            }
            if !wanted {
                inc(&self.out.stats.retransmissions_consumed);
                return;
            }
        }
        if let Some(meter) = &session.meter {
            meter.record(packet.len());
        }
        let what = Forwarded::Rtp(header, tag);
        let (table, out) = (&mut self.table, &mut self.out);
        self.fanout
            .fanout(stream, source.kind, what, packet, now, table, out);
    }

    /// Plain RTCP from a session: a publisher's sender reports go to its players; a player's
    /// keyframe request goes to the publisher.
    fn on_rtcp(&mut self, slot: usize, packet: &[u8], now: Instant) {
        let Some(session) = self.table.sessions[slot].as_mut() else {
            return;
        };
        let stream = session.stream;
        match &mut session.role {
            Role::Publisher(publisher) => {
                let reports = publisher.sender_reports(packet);
                for (_, report) in reports.iter().flatten() {
                    // The next receiver reports echo it, so the publisher sees its RTT.
                    if let (Some(ssrc), Some(ntp)) = (report.get(4..8), report.get(8..16)) {
                        let ssrc = u32::from_be_bytes(ssrc.try_into().expect("4 bytes"));
                        let ntp = u64::from_be_bytes(ntp.try_into().expect("8 bytes"));
                        publisher.link.on_sender_report(now, ssrc, ntp);
                    }
                }
                for (source, report) in reports.into_iter().flatten() {
                    let (table, out) = (&mut self.table, &mut self.out);
                    self.fanout.fanout(
                        stream,
                        source.kind,
                        Forwarded::SenderReport,
                        report,
                        now,
                        table,
                        out,
                    );
                }
            }
            Role::Player(player) => {
                if let Some(reception) = player.on_receiver_report(now, packet) {
                    let meter = &session.reception;
                    if let Some(rtt) = reception.rtt {
                        meter
                            .rtt_us
                            .store(rtt.as_micros() as u64, Ordering::Relaxed);
                    }
                    let fraction = u64::from(reception.fraction_lost);
                    meter.fraction_lost.store(fraction, Ordering::Relaxed);
                    let lost = reception.cumulative_lost.max(0) as u64;
                    meter.cumulative_lost.store(lost, Ordering::Relaxed);
                }
                if player.has_layers() {
                    let read = player.on_transport_feedback(now, packet);
                    add(&self.out.stats.player_transport_feedback, read);
                }
                let layer = player.keyframe_layer();
                // A requested packet the window no longer holds needs a keyframe instead.
                let unrepairable = self.answer_nacks(slot, packet, now);
                if unrepairable || Player::wants_keyframe(packet) {
                    let (table, out) = (&mut self.table, &mut self.out);
                    self.fanout.request_keyframe(stream, layer, now, table, out);
                }
            }
        }
    }
}
