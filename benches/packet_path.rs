//! The per-packet pieces of the forwarding path, one benchmark per configuration:
//! SRTP protect/unprotect by profile and size, the per-player RTP rewrite, and the whole
//! per-player step (rewrite + protect) the worker runs for every player of a stream, and
//! single-port mode's session lookup.

use std::hint::black_box;
use std::time::Instant;

use corecast::session::ice::IceLite;
use corecast::wire::rtp::{ExtensionIdMap, Rewrite, RtpHeader, rewrite_header_into, rewrite_into};
use corecast::wire::srtp::{SrtpContext, SrtpProfile};
use corecast::wire::stun::{self, BINDING_REQUEST, StunWriter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PROFILES: [(SrtpProfile, &str); 2] = [
    (SrtpProfile::AeadAes128Gcm, "aead_aes_128_gcm"),
    (SrtpProfile::Aes128CmHmacSha1_80, "aes_128_cm_hmac_sha1_80"),
];

fn context(profile: SrtpProfile) -> SrtpContext {
    SrtpContext::new(profile, &[7u8; 16], &vec![9u8; profile.master_salt_len()]).unwrap()
}

/// An RTP packet as browsers send video: one-byte extensions, `size` bytes in all.
fn rtp_packet(size: usize) -> Vec<u8> {
    let mut p = vec![
        0x90, 0x60, 0x00, 0x01, 0, 0, 0x10, 0, 0xaa, 0xbb, 0xcc, 0xdd, 0xbe, 0xde, 0, 2,
    ];
    p.extend_from_slice(&[0x22, 1, 2, 3, 0x51, 0, 0, 0]);
    p.resize(size, 0x5a);
    p
}

fn srtp(c: &mut Criterion) {
    for (profile, name) in PROFILES {
        for size in [200usize, 1200] {
            let plain = rtp_packet(size);
            let mut group = c.benchmark_group(format!("srtp/{name}/{size}B"));
            group.throughput(Throughput::Elements(1));
            let mut tx = context(profile);
            let mut buf = vec![0u8; size + 32];
            let mut seq = 0u16;
            group.bench_function("protect_rtp", |b| {
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    buf[..size].copy_from_slice(&plain);
                    buf[2..4].copy_from_slice(&seq.to_be_bytes());
                    black_box(tx.protect_rtp(&mut buf, size).unwrap())
                })
            });
            // Unprotect needs fresh sequence numbers (replay protection): protect a batch ahead.
            group.bench_function("unprotect_rtp", |b| {
                b.iter_custom(|iters| {
                    let mut tx = context(profile);
                    let mut rx = context(profile);
                    let packets: Vec<Vec<u8>> = (0..iters)
                        .map(|i| {
                            let mut p = plain.clone();
                            p[2..4].copy_from_slice(&(i as u16).to_be_bytes());
                            p.resize(size + profile.rtp_overhead(), 0);
                            // Keep the rollover counter sane over long runs: one SSRC per 30000.
                            p[8..12].copy_from_slice(&((i / 30000) as u32).to_be_bytes());
                            let n = tx.protect_rtp(&mut p, size).unwrap();
                            p.truncate(n);
                            p
                        })
                        .collect();
                    let mut packets = packets;
                    let start = Instant::now();
                    for p in packets.iter_mut() {
                        black_box(rx.unprotect_rtp(p).unwrap());
                    }
                    start.elapsed()
                })
            });
            group.finish();
        }
    }
}

/// How a player's packets are rewritten in these benches.
fn player_rewrite(sequence: u16, extension_ids: &ExtensionIdMap) -> Rewrite<'_> {
    Rewrite {
        ssrc: 1,
        payload_type: 100,
        sequence,
        timestamp: 90_000,
        extension_ids,
        transport_sequence: None,
    }
}

/// One player's share of a fanout: from the publisher's packet to a protected packet in `out`.
type PerPlayer = fn(&[u8], &RtpHeader, &Rewrite<'_>, &mut SrtpContext, &mut [u8]) -> usize;

fn rewrite(c: &mut Criterion) {
    let plain = rtp_packet(1200);
    let header = RtpHeader::parse(&plain).unwrap();
    let mut ids = ExtensionIdMap::default();
    ids.insert(2, 3);
    ids.insert(5, 4);
    let mut out = vec![0u8; 1300];
    let mut group = c.benchmark_group("rtp_rewrite/1200B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("rewrite_into", |b| {
        b.iter(|| {
            let rw = player_rewrite(5, &ids);
            black_box(rewrite_into(black_box(&plain), &header, &rw, &mut out).unwrap())
        })
    });
    // What the worker does per player and packet: rewrite into the egress buffer, protect.
    for (profile, name) in PROFILES {
        let mut tx = context(profile);
        let mut seq = 0u16;
        group.bench_function(format!("rewrite_and_protect/{name}"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let rw = player_rewrite(seq, &ids);
                let n = rewrite_into(&plain, &header, &rw, &mut out).unwrap();
                black_box(tx.protect_rtp(&mut out, n).unwrap())
            })
        });
    }
    // The same per player, round-robin over 200 players with their own keys and egress
    // buffers, as a fanout touches them: what the worker's cache sees.
    let players = 200;
    let mut contexts: Vec<SrtpContext> = (0..players)
        .map(|_| context(SrtpProfile::AeadAes128Gcm))
        .collect();
    let mut buffers = vec![0u8; players * 2048];
    let mut seq = 0u16;
    // Copying the packet in and protecting it in place, and what the worker does: the header
    // rewritten into the egress buffer, the payload encrypted straight from the publisher's
    // packet after it (one pass over the payload instead of two).
    let variants: [(&str, PerPlayer); 2] = [
        ("rewrite_and_protect", |packet, header, rw, srtp, out| {
            let n = rewrite_into(packet, header, rw, out).unwrap();
            srtp.protect_rtp(out, n).unwrap()
        }),
        (
            "rewrite_header_and_protect_from",
            |packet, header, rw, srtp, out| {
                let header_len = rewrite_header_into(packet, header, rw, out).unwrap();
                let payload = &packet[header.header_len..];
                srtp.protect_rtp_from(out, header_len, payload).unwrap()
            },
        ),
    ];
    for (name, per_player) in variants {
        group.bench_function(format!("{name}/aead_aes_128_gcm/200_players"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters as usize {
                    let player = i % players;
                    if player == 0 {
                        seq = seq.wrapping_add(1);
                    }
                    let rw = player_rewrite(seq, &ids);
                    let out = &mut buffers[player * 2048..(player + 1) * 2048];
                    black_box(per_player(&plain, &header, &rw, &mut contexts[player], out));
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn ice(c: &mut Criterion) {
    let key = stun::short_term_key("server-password-123456");
    let mut request = [0u8; 200];
    let mut w = StunWriter::new(&mut request, BINDING_REQUEST, &[1; 12]).unwrap();
    w.username(b"srv:cli")
        .unwrap()
        .priority(1)
        .unwrap()
        .ice_controlling(1)
        .unwrap();
    w.use_candidate().unwrap().message_integrity(&key).unwrap();
    let len = w.fingerprint().unwrap();
    let now = Instant::now();
    let mut agent = IceLite::new(
        now,
        "srv",
        "server-password-123456",
        "cli",
        std::time::Duration::from_secs(30),
    );
    let from = "127.0.0.1:5000".parse().unwrap();
    let mut out = [0u8; 200];
    c.bench_function("ice_lite/answer_binding_request", |b| {
        b.iter(|| {
            black_box(
                agent
                    .handle_check(now, &request[..len], from, &mut out)
                    .unwrap(),
            )
        })
    });
}

/// The cross-worker queue: one shared packet handle per target worker, pushed by the
/// publisher's worker and popped by the player's.
fn fanout_ring(c: &mut Criterion) {
    use crossbeam_queue::ArrayQueue;
    use std::sync::Arc;
    let queue: ArrayQueue<Arc<[u8]>> = ArrayQueue::new(8192);
    let packet: Arc<[u8]> = Arc::from(vec![0u8; 1200]);
    let mut group = c.benchmark_group("fanout_ring");
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_pop_same_thread", |b| {
        b.iter(|| {
            queue.push(packet.clone()).unwrap();
            black_box(queue.pop().unwrap());
        })
    });
    // Producer and consumer on two threads, as between two workers: time per packet handed over.
    group.bench_function("handoff_between_threads", |b| {
        b.iter_custom(|iters| {
            let queue = Arc::new(ArrayQueue::<Arc<[u8]>>::new(8192));
            let consumer = {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let mut got = 0;
                    while got < iters {
                        if queue.pop().is_some() {
                            got += 1;
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                })
            };
            let start = Instant::now();
            let mut sent = 0;
            while sent < iters {
                if queue.push(packet.clone()).is_ok() {
                    sent += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
            consumer.join().unwrap();
            start.elapsed()
        })
    });
    group.finish();
}

/// Single-port mode's lookup with 500 sessions registered and latched: a media packet by its
/// 5-tuple, an ICE check by the ufrag in its USERNAME (every received packet pays one).
fn mux_table(c: &mut Criterion) {
    use corecast::session::mux_table::{FiveTuple, MuxTable, Transport};
    use std::net::SocketAddr;
    let local = SocketAddr::from(([127, 0, 0, 1], 8189));
    let tuple = |i: u16| FiveTuple {
        transport: Transport::Udp,
        remote: SocketAddr::from(([127, 0, 0, 1], 10_000 + i)),
        local,
    };
    let mut table = MuxTable::default();
    for i in 0..500u16 {
        table.register(format!("uf{i:06}").as_bytes(), i).unwrap();
        table.latch(tuple(i), i);
    }
    let media = rtp_packet(1200);
    let mut check = vec![0u8; 256];
    let mut writer = StunWriter::new(&mut check, BINDING_REQUEST, &[3; 12]).unwrap();
    writer.username(b"uf000250:remote").unwrap();
    writer
        .message_integrity(&stun::short_term_key("password-password-pw"))
        .unwrap();
    let len = writer.fingerprint().unwrap();
    check.truncate(len);
    let mut group = c.benchmark_group("mux_table");
    group.throughput(Throughput::Elements(1));
    group.bench_function("route_media_by_5_tuple/500_sessions", |b| {
        b.iter(|| black_box(table.route(black_box(&tuple(250)), black_box(&media))))
    });
    group.bench_function("route_check_by_ufrag/500_sessions", |b| {
        b.iter(|| black_box(table.route(black_box(&tuple(250)), black_box(&check))))
    });
    group.finish();
}

criterion_group!(benches, srtp, rewrite, ice, fanout_ring, mux_table);
criterion_main!(benches);
