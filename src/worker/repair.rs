//! Loss repair toward players: a player's generic NACK (RFC 4585) names the packets it lost by
//! its own sequence numbers; each is looked up in its stream's retransmission window (the
//! publisher's packets of the last second, shared, never copied per player) and sent again,
//! as RTX when the player negotiated it, within the player's retransmission budget. A packet
//! the window no longer holds cannot be repaired: the publisher is asked for a keyframe. A
//! packet the stream never had here (lost on the way from the publisher) is not: the
//! publisher's link is repairing it, and it reaches the player when it comes.

use std::time::Instant;

use super::event_loop::Core;
use super::mesh::Forwarded;
use super::stats::inc;
use super::table::{Role, Session};
use crate::io::EGRESS_HEADROOM;
use crate::media::MediaKind;
use crate::session::player::RetransmitRefusal;
use crate::wire::nack::Nack;
use crate::wire::rtcp::{self, TRANSPORT_FEEDBACK};

/// RTPFB format of a generic NACK.
const FMT_GENERIC_NACK: u8 = 1;

impl Core {
    /// A player's plain RTCP: answers the NACKs in it. Returns whether a requested packet was
    /// gone from the window (the caller asks the publisher for a keyframe).
    pub(super) fn answer_nacks(&mut self, slot: usize, packet: &[u8], now: Instant) -> bool {
        let (table, out) = (&mut self.table, &mut self.out);
        let Some(Session {
            remote: Some(peer),
            srtp_out: Some(srtp),
            role: Role::Player(player),
            udp_fd,
            closing: false,
            stream,
            ..
        }) = table.sessions[slot].as_mut()
        else {
            return false;
        };
        let Some(windows) = table.streams.get(stream).map(|l| &l.repair[..]) else {
            return false;
        };
        if windows.is_empty() {
            return false;
        }
        let mut gone = false;
        let nacks = rtcp::compound(packet)
            .map_while(Result::ok)
            .filter(|p| p.packet_type == TRANSPORT_FEEDBACK && p.count == FMT_GENERIC_NACK);
        for nack in nacks {
            let Ok(nack) = Nack::parse(nack.bytes) else {
                inc(&out.stats.drop_garbage);
                continue;
            };
            inc(&out.stats.player_nacks_received);
            for lost in nack.lost() {
                let Some((ssrc, sequence)) = player
                    .track(MediaKind::Video)
                    .and_then(|t| t.publisher_sequence(lost))
                else {
                    continue;
                };
                // The encoding the player gets now; its window holds the publisher's packet.
                let layer = player.keyframe_layer() as usize;
                let Some(window) = windows.get(layer) else {
                    continue;
                };
                let kept = window
                    .get(sequence, now)
                    .filter(|p| matches!(p.what, Forwarded::Rtp(h, _) if h.ssrc == ssrc));
                let Some(kept) = kept else {
                    inc(&out.stats.retransmit_misses);
                    gone |= !window.never_had(sequence);
                    continue;
                };
                let Forwarded::Rtp(header, _) = kept.what else {
                    continue;
                };
                let timestamp = player.retransmission_timestamp(ssrc, header.timestamp);
                let Some(track) = player.track(MediaKind::Video) else {
                    continue;
                };
                let Some(egress) = out.ring.alloc_egress() else {
                    inc(&out.stats.drop_no_buffer);
                    continue;
                };
                let buffer = &mut out.ring.egress_buffer(egress)[EGRESS_HEADROOM..];
                let written =
                    track.write_retransmission(now, kept.bytes(), &header, lost, timestamp, buffer);
                let protected = match written {
                    Ok(len) => srtp.protect_rtp(buffer, len).ok(),
                    Err(RetransmitRefusal::OverBudget) => {
                        inc(&out.stats.retransmit_budget_drops);
                        None
                    }
                    Err(_) => None,
                };
                match protected {
                    Some(len) => {
                        out.transmit(*udp_fd, peer, egress, len);
                        inc(&out.stats.retransmissions_sent);
                    }
                    None => out.ring.release_egress(egress),
                }
            }
        }
        gone
    }
}
