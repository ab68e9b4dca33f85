//! Workers: one thread per core, each pinned, with its own io_uring (or epoll set, per
//! `workers.backend`), sockets, sessions and buffers. The control thread hands sessions over with [`Command`]s; workers report back
//! with [`Event`]s; publishers' packets reach players on other workers through the [`Mesh`].
//!
//! A packet's walk, each file handing on to the next: `event_loop` takes a typed completion
//! from the ring (`crate::io`) and hands the received bytes to `ingress`, which classifies
//! them (RFC 7983), answers STUN, removes SRTP in place and parses the RTP header once; a
//! publisher's packet goes to `fanout` with that header: one shared copy per other worker with
//! players (`mesh`), and for local players it is set aside (`staged`), then each player gets
//! all of its stream's staged packets in a row: rewritten (`session::player`) into an egress
//! buffer and protected in place, then handed to `egress`, where a UDP player's video waits
//! in its frame burst for one GSO `sendmsg` at the frame's marker bit (`burst`), other UDP
//! sends go one by one, and a TCP player's frames join its bounded send queue (one gathered
//! `sendmsg` in flight per connection, so frames are never reordered or torn). Sends are
//! submitted every `SUBMIT_BATCH` packets and their completions reaped at once, so egress
//! buffers stay warm. `table` holds the sessions and streams, `connections` the ICE-TCP
//! connections, and their lifecycles; `stats` the counters `/metrics` shows.

pub mod burst;
mod connections;
mod egress;
mod event_loop;
mod fanout;
mod ingress;
pub mod mesh;
mod mux;
pub use mux::ConnHandover;
mod repair;
mod staged;
pub mod stats;
mod table;

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::SegQueue;
use tokio::sync::mpsc::UnboundedSender;

use crate::io::WakeFd;
use crate::media::{MediaKind, SessionId, StreamId};
use crate::sdp::PlayedTrack;
use crate::session::publisher::VideoSettings;
use crate::session::publisher_link::LinkSettings;
use crate::session::simulcast::LayerPreference;
use crate::wire::srtp::SrtpProfile;
use event_loop::Worker;
use mesh::{Mesh, Waker};
use stats::{SessionMeter, StreamMeter, WorkerStats};

thread_local! {
    static IS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a worker: lets a test's counting allocator attribute
/// allocations to the packet path. Allocation-free.
pub fn is_worker_thread() -> bool {
    IS_WORKER.with(|w| w.get())
}

/// Most workers one relay runs: the cross-worker queues grow with the square of the count
/// (at 256 workers, 65 280 queues of 256 slots, 383 MiB), and past this a relay is better
/// split into several (cascade).
pub const MAX_WORKERS: usize = 256;

/// Memory a relay of `workers` allocates at start for its data plane: the cross-worker
/// queues, and each worker's receive and egress buffers.
pub fn data_plane_memory(workers: usize) -> (usize, usize) {
    let per_worker = event_loop::RECV_BUFFERS as usize * crate::io::RECV_BUFFER_SIZE
        + event_loop::EGRESS_BUFFERS as usize * crate::io::EGRESS_BUFFER_SIZE;
    (mesh::memory_bytes(workers), per_worker)
}

/// What the control thread asks of a worker.
pub enum Command {
    AddSession(Box<NewSession>),
    /// DTLS finished: keying material exported per RFC 5764 (client key, server key, salts).
    SetKeys {
        session: SessionId,
        profile: SrtpProfile,
        material: Vec<u8>,
    },
    /// A DTLS record to send to the session's peer.
    SendDtls {
        session: SessionId,
        data: Vec<u8>,
    },
    RemoveSession {
        session: SessionId,
    },
    /// An ICE restart: the session's new credentials (`IceLite::restart`). Its path, DTLS
    /// and SRTP stay; a nomination with the new credentials may move the path.
    RestartIce {
        session: SessionId,
        local_ufrag: String,
        local_pwd: String,
        remote_ufrag: String,
    },
    /// A simulcast player pins or caps its encoding.
    SetLayerPreference {
        session: SessionId,
        preference: LayerPreference,
    },
    /// A player of `stream` on `worker` came (+1) or went (-1); sent to the publisher's worker.
    RemoteInterest {
        stream: StreamId,
        worker: usize,
        delta: i32,
    },
    /// Single-port mode, sent to every worker: `ufrag` names `session`, which lives on worker
    /// `owner` (a packet on the shared port that names it goes there).
    MuxRegister {
        ufrag: String,
        owner: usize,
        session: SessionId,
    },
    /// Single-port mode, sent to every worker: an ICE restart gave `session` the ufrag
    /// `ufrag` in place of `previous` (both name it for now; older ones no longer).
    MuxRenew {
        ufrag: String,
        previous: String,
        owner: usize,
        session: SessionId,
    },
    /// Single-port mode, sent to every worker: the session ended; its ufrags and paths go.
    MuxForget {
        owner: usize,
        session: SessionId,
    },
    /// An ICE-TCP connection the HTTP listener accepted (`media.tcp_on_http`) whose first
    /// frame names a session here: adopted unvalidated, like one another worker hands over.
    AdoptConnection(Box<ConnHandover>),
}

pub struct NewSession {
    pub id: SessionId,
    /// The session's UDP socket, when `media.protocol` offers UDP (none in single-port mode:
    /// the session uses its worker's shared socket).
    pub udp: Option<UdpSocket>,
    /// The session's ICE-TCP listener on the same port, when it offers TCP (none in
    /// single-port mode).
    pub tcp: Option<TcpListener>,
    pub stream: StreamId,
    pub publisher_worker: usize,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub role: NewRole,
    /// The session's DTLS records go here, to its handshake on the control thread. Bounded:
    /// when it is full the worker drops the record and counts it, so a flood costs the relay
    /// a fixed amount of memory per session.
    pub dtls_records: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Where the worker writes what the peer's receiver reports say (RTT, loss).
    pub reception: Arc<SessionMeter>,
}

pub enum NewRole {
    Publisher {
        payload_types: Vec<(u8, MediaKind)>,
        /// The video's codec, RTX and simulcast encodings.
        video: VideoSettings,
        /// What the relay feeds back to the publisher and repairs (transport-wide feedback,
        /// NACK/RTX, the operator's cap).
        link: LinkSettings,
        /// Where the worker counts what the publisher sends.
        meter: Arc<StreamMeter>,
    },
    Player {
        tracks: Vec<PlayedTrack>,
        /// The stream's video encodings (1 without simulcast) and clock rate.
        layers: u8,
        video_clock_rate: u32,
        /// The stream's meter: the encodings' bitrates pick the player's.
        meter: Arc<StreamMeter>,
    },
}

/// What a worker tells the control thread.
#[derive(Debug)]
pub enum Event {
    /// ICE selected the session's media path, or moved it to another nominated pair.
    IceConnected {
        session: SessionId,
        remote: SocketAddr,
        /// The nominated path is an ICE-TCP connection (else UDP).
        tcp: bool,
    },
    IceTimeout {
        session: SessionId,
    },
    /// The session kept sending DTLS records faster than its handshake takes them.
    DtlsFlood {
        session: SessionId,
    },
    /// The session's socket is closed: its port may be reused.
    Closed {
        session: SessionId,
    },
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// What runs the workers' I/O (decided at start: `crate::io::choose_backend`).
    pub backend: crate::io::IoBackend,
    /// Frame bursts go out as UDP GSO sends (already probed: the kernel has `UDP_SEGMENT`).
    pub gso: bool,
    /// Longest hold of a packet waiting for the rest of its frame's burst.
    pub gso_hold: Duration,
    pub ice_timeout: Duration,
    /// Frames queued per ICE-TCP connection before whole frames are dropped.
    pub tcp_send_queue: usize,
    /// Media binds loopback: packets from other sources are dropped, never answered.
    pub loopback_only: bool,
    pub pin: bool,
    /// Single-port mode (`media.mux_port`): each worker's own sockets on the shared port.
    pub mux: Option<MuxSettings>,
}

/// Single-port mode: where each worker binds its share of the one media port.
#[derive(Debug, Clone)]
pub struct MuxSettings {
    pub ip: IpAddr,
    pub port: u16,
    pub udp: bool,
    pub tcp: bool,
    /// Receive and send buffer sizes, UDP then TCP.
    pub udp_buffers: (usize, usize),
    pub tcp_buffers: (usize, usize),
}

/// The control thread's handle on a worker.
#[derive(Clone)]
pub struct WorkerHandle {
    pub index: usize,
    /// What runs this worker's I/O.
    pub backend: crate::io::IoBackend,
    commands: Arc<SegQueue<Command>>,
    mesh: Arc<Mesh>,
    pub stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    pub fn send(&self, command: Command) {
        self.commands.push(command);
        self.mesh.wakers[self.index].wake();
    }

    /// Packets waiting in the cross-worker queues towards this worker.
    pub fn ring_occupancy(&self) -> usize {
        self.mesh.occupancy(self.index)
    }
}

/// Starts `count` workers; returns once each has its ring, or the first error.
pub fn start_workers(
    count: usize,
    settings: WorkerSettings,
    events: UnboundedSender<Event>,
) -> std::io::Result<Vec<WorkerHandle>> {
    let wake_fds = (0..count)
        .map(|_| WakeFd::new())
        .collect::<std::io::Result<Vec<_>>>()?;
    let wakers = wake_fds
        .iter()
        .map(|w| w.notifier().map(Waker::new))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mesh = Arc::new(Mesh::new(wakers));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(count);
    for (index, wake) in wake_fds.into_iter().enumerate() {
        let commands = Arc::new(SegQueue::new());
        let stats = Arc::new(WorkerStats::default());
        let core_id = (settings.pin && !cores.is_empty()).then(|| cores[index % cores.len()]);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (c, m, s, e, st) = (
            commands.clone(),
            mesh.clone(),
            stats.clone(),
            events.clone(),
            settings.clone(),
        );
        std::thread::Builder::new()
            .name(format!("corecast-w{index}"))
            .spawn(move || {
                IS_WORKER.with(|w| w.set(true));
                let pinned = core_id.is_some_and(core_affinity::set_for_current);
                match Worker::new(index, wake, c, m, s, e, st) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok((
                            worker.core.out.ring.description.clone(),
                            pinned,
                            core_id,
                        )));
                        worker.run();
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })?;
        let (ring, pinned, core_id) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("worker thread died during start-up"))??;
        match core_id {
            Some(core) if pinned => {
                tracing::info!(worker = index, core = core.id, ring = %ring, "worker started, pinned")
            }
            Some(core) => {
                tracing::warn!(worker = index, core = core.id, ring = %ring, "worker started, but pinning to its core failed")
            }
            None => tracing::info!(worker = index, ring = %ring, "worker started, not pinned"),
        }
        handles.push(WorkerHandle {
            index,
            backend: settings.backend,
            commands,
            mesh: mesh.clone(),
            stats,
        });
    }
    Ok(handles)
}
