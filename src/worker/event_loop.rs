//! The loop of one worker: each turn takes the control thread's commands, the other workers'
//! packets and the ring's completions, each up to a bound, hands them on (ingress, fanout,
//! egress), runs the timers, submits and waits. A turn that stopped at a bound or took longer
//! than `TURN_BUDGET` counts in `loop_overruns`: the worker is saturated or stalled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use tokio::sync::mpsc::UnboundedSender;

use super::burst::{BurstId, Owner};
use super::egress::{BURSTS, Output};
use super::fanout::Fanout;
use super::mesh::Mesh;
use super::stats::{WorkerStats, inc, set};
use super::table::Table;
use super::{Command, Event, WorkerSettings};
use crate::io::{Completion, Received, RecvBuffers, Ring, RingSizes, Token, WakeFd};

const RING_ENTRIES: u32 = 4096;
pub(super) const RECV_BUFFERS: u16 = 4096;
pub(super) const EGRESS_BUFFERS: u32 = 16384;
const TICK: Duration = Duration::from_millis(100);
/// How often publishers' links are asked for due feedback (transport-wide feedback every
/// ~100 ms, NACK retries spaced by at least 20 ms): a pass over the sessions each time.
const FEEDBACK_TICK: Duration = Duration::from_millis(10);
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Commands taken per turn: a burst of new sessions must not hold up media.
const COMMAND_BUDGET: usize = 256;
/// Messages from other workers taken per turn (each queue holds `mesh::queue_capacity`).
pub(super) const MESH_BUDGET: usize = 4096;
/// Completions taken per turn: one completion queue's worth.
const COMPLETION_BUDGET: usize = RING_ENTRIES as usize * 4;
/// A turn's work past this is an overrun: packets waiting behind it wait that long.
const TURN_BUDGET: Duration = Duration::from_millis(1);

/// Everything a worker owns except its receive buffers, which the packet handlers borrow
/// from: its tables, its fanout and its sending side, passed to each other as needed.
pub(super) struct Core {
    pub(super) index: usize,
    pub(super) table: Table,
    pub(super) fanout: Fanout,
    pub(super) out: Output,
    mesh: Arc<Mesh>,
    commands: Arc<SegQueue<Command>>,
    pub(super) events: UnboundedSender<Event>,
    next_tick: Instant,
    next_feedback: Instant,
    /// Bursts whose hold ran out this turn (kept to reuse its memory).
    due_bursts: Vec<(BurstId, Owner)>,
    /// Single-port mode: while ingress handles a datagram from the shared port, the worker
    /// whose socket received it (where its path latches once ICE accepts it).
    pub(super) mux_receiver: Option<usize>,
}

pub(super) struct Worker {
    pub(super) core: Core,
    buffers: RecvBuffers,
    completions: Vec<Completion>,
}

/// Whether a turn stopped at one of its bounds.
#[derive(Default)]
struct Bounded(bool);

impl Bounded {
    fn note(&mut self, taken: usize, budget: usize) {
        self.0 |= taken >= budget;
    }
}

impl Worker {
    pub(super) fn new(
        index: usize,
        wake: WakeFd,
        commands: Arc<SegQueue<Command>>,
        mesh: Arc<Mesh>,
        stats: Arc<WorkerStats>,
        events: UnboundedSender<Event>,
        settings: WorkerSettings,
    ) -> std::io::Result<Worker> {
        let sizes = RingSizes {
            entries: RING_ENTRIES,
            recv_buffers: RECV_BUFFERS,
            egress_buffers: EGRESS_BUFFERS,
            gso_sends: if settings.gso { BURSTS } else { 0 },
        };
        let (ring, buffers) = Ring::new(settings.backend, sizes, wake)?;
        let out = Output::new(
            ring,
            stats,
            settings.tcp_send_queue,
            settings.gso,
            settings.gso_hold,
            COMPLETION_BUDGET,
        );
        let mut table = Table::new(index, mesh.workers(), &settings);
        if let Some(mux) = &settings.mux {
            table.mux = Some(super::mux::MuxPort::open(mux).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "binding media.mux_port {} on {} (SO_REUSEPORT): {e}",
                        mux.port, mux.ip
                    ),
                )
            })?);
        }
        Ok(Worker {
            core: Core {
                index,
                table,
                fanout: Fanout::new(index, mesh.clone()),
                out,
                mesh,
                commands,
                events,
                next_tick: Instant::now(),
                next_feedback: Instant::now(),
                due_bursts: Vec::with_capacity(BURSTS),
                mux_receiver: None,
            },
            buffers,
            completions: Vec::with_capacity(COMPLETION_BUDGET),
        })
    }

    pub(super) fn run(&mut self) {
        self.core.out.ring.arm_wake();
        self.core.table.mux_rearm(&mut self.core.out);
        loop {
            let now = Instant::now();
            let mut bounded = Bounded::default();
            bounded.note(self.core.drain_commands(now), COMMAND_BUDGET);
            let core = &mut self.core;
            let taken = core
                .fanout
                .drain_mesh(now, MESH_BUDGET, &mut core.table, &mut core.out);
            bounded.note(taken, MESH_BUDGET);
            core.drain_handed_over(now);
            core.fanout
                .flush_staged(now, &mut core.table, &mut core.out);
            bounded.note(self.process_completions(now), COMPLETION_BUDGET);
            let core = &mut self.core;
            core.send_handovers();
            core.fanout
                .flush_staged(now, &mut core.table, &mut core.out);
            if now >= core.next_tick {
                core.tick(now);
            }
            if now >= core.next_feedback {
                core.table.send_link_feedback(now, &mut core.out);
                core.next_feedback = now + FEEDBACK_TICK;
            }
            let end = Instant::now();
            core.send_due_bursts(end);
            core.fanout.flush_wakes();
            core.out.record_submitted();
            if bounded.0 || end.duration_since(now) > TURN_BUDGET {
                inc(&core.out.stats.loop_overruns);
            }
            if core.table.has_finished() {
                // Submit what may still refer to finished sockets, then close them before
                // waiting, so the control thread hears of their ports at once. A socket is
                // never closed while a queued operation could still name its descriptor.
                let _ = core.out.ring.submit();
                if core.out.ring.backlog_is_empty() {
                    core.table.close_finished(&core.events);
                }
            }
            if let Err(e) = self.core.submit_or_wait() {
                tracing::error!(worker = self.core.index, error = %e, "submitting I/O failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Takes up to `COMPLETION_BUDGET` completions (those deferred mid-turn first) and hands
    /// each on; returns how many.
    fn process_completions(&mut self, now: Instant) -> usize {
        let mut completions = std::mem::take(&mut self.completions);
        completions.append(&mut self.core.out.deferred);
        let room = COMPLETION_BUDGET.saturating_sub(completions.len());
        self.core.out.ring.completions(&mut completions, room);
        let taken = completions.len();
        for completion in completions.drain(..) {
            if self.core.out.finish_send(&completion) {
                continue;
            }
            let core = &mut self.core;
            match completion {
                Completion::Datagram { session, received } => self.datagram(session, received, now),
                Completion::TcpData { conn, received } => self.tcp_data(conn, received, now),
                Completion::TcpSent { conn, result } => {
                    core.table.tcp_sent(conn, result, &mut core.out)
                }
                Completion::GsoSent { index, result } => core.gso_failed(index as BurstId, result),
                Completion::Accepted {
                    session,
                    stream,
                    more,
                } if session.slot == super::mux::MUX_TCP && core.table.mux.is_some() => {
                    core.table.mux_accepted(stream, more, now, &mut core.out)
                }
                Completion::Accepted {
                    session,
                    stream,
                    more,
                } => core
                    .table
                    .accepted(session, stream, more, now, &mut core.out),
                Completion::Woken => core.out.ring.arm_wake(),
                Completion::Sent { .. } | Completion::Cancelled => {}
            }
        }
        self.completions = completions;
        taken
    }

    /// A session's UDP receive completed: the datagram goes to ingress, its buffer back to the
    /// kernel.
    fn datagram(&mut self, session: Token, received: Received, now: Instant) {
        let Received {
            buffer,
            result,
            more,
        } = received;
        if let Some(buffer) = buffer {
            if result > 0 {
                match self.buffers.datagram(&buffer) {
                    Some((from, data)) => {
                        self.core
                            .on_datagram(session.slot, session.generation, from, data, now)
                    }
                    None => inc(&self.core.out.stats.drop_garbage),
                }
            }
            self.buffers.recycle(buffer);
        }
        if result == -libc::ENOBUFS {
            inc(&self.core.out.stats.recv_no_buffer);
        } else if result < 0 && result != -libc::ECANCELED {
            tracing::debug!(worker = self.core.index, errno = -result, "receive failed");
        }
        if !more {
            let core = &mut self.core;
            match (session.slot, core.table.mux.as_mut()) {
                (super::mux::MUX_UDP, Some(mux)) => mux.recv_ended(&mut core.out),
                _ => core.table.recv_ended(session, &mut core.out),
            }
        }
    }

    /// A connection's receive completed: the bytes go to ingress (cut into frames there).
    fn tcp_data(&mut self, conn: Token, received: Received, now: Instant) {
        let Received {
            buffer,
            result,
            more,
        } = received;
        if let Some(buffer) = buffer {
            if result > 0 {
                let data = self.buffers.stream_data(&buffer);
                self.core.on_tcp_data(conn.slot, conn.generation, data, now);
            }
            self.buffers.recycle(buffer);
        }
        if result == -libc::ENOBUFS {
            inc(&self.core.out.stats.recv_no_buffer);
        }
        if !more {
            // 0 is the peer closing; errors other than running out of buffers end the
            // connection too.
            let keep = result > 0 || result == -libc::ENOBUFS;
            let core = &mut self.core;
            core.table.tcp_recv_ended(conn, keep, &mut core.out);
        }
    }
}

impl Core {
    fn has_work(&mut self) -> bool {
        !self.commands.is_empty()
            || self.mesh.has_incoming(self.index)
            || !self.out.deferred.is_empty()
            || self.out.ring.has_completions()
    }

    /// Submits, and waits in the ring when there is nothing to do (parked, so other threads
    /// know to wake it), at most until the next burst's hold deadline.
    fn submit_or_wait(&mut self) -> std::io::Result<()> {
        if self.has_work() {
            return self.out.ring.submit_and_poll();
        }
        let mesh = self.mesh.clone();
        let waker = &mesh.wakers[self.index];
        waker.park();
        let result = if self.has_work() {
            self.out.ring.submit_and_poll()
        } else {
            // Wake for the next burst's hold deadline; no timer operation needed.
            let now = Instant::now();
            let wait = self
                .out
                .bursts
                .next_due()
                .into_iter()
                .chain(self.table.has_feedback_work().then_some(self.next_feedback))
                .map(|due| due.saturating_duration_since(now))
                .fold(MAX_WAIT, Duration::min);
            self.out.ring.submit_and_wait(wait)
        };
        waker.unpark();
        result
    }

    /// Takes up to `COMMAND_BUDGET` commands; returns how many.
    fn drain_commands(&mut self, now: Instant) -> usize {
        let mut taken = 0;
        while taken < COMMAND_BUDGET
            && let Some(command) = self.commands.pop()
        {
            taken += 1;
            let (table, out) = (&mut self.table, &mut self.out);
            match command {
                Command::AddSession(new) => {
                    table.add_session(*new, now, out);
                    // Each retransmission window holds up to its capacity of shared packets
                    // for a second: the pool has them ready before the packets come.
                    self.fanout.ensure_shared(table.repair_windows());
                }
                Command::SetKeys {
                    session,
                    profile,
                    material,
                } => {
                    if let Some(stream) = table.set_keys(session, profile, &material) {
                        // A player that just joined needs a keyframe to start decoding.
                        self.fanout.request_keyframe(stream, 0, now, table, out);
                    }
                }
                Command::SendDtls { session, data } => table.send_dtls(session, &data, out),
                Command::RemoveSession { session } => table.remove_session(session, out),
                Command::RestartIce {
                    session,
                    local_ufrag,
                    local_pwd,
                    remote_ufrag,
                } => {
                    table.restart_ice(session, now, (&local_ufrag, &local_pwd), &remote_ufrag, out)
                }
                Command::SetLayerPreference {
                    session,
                    preference,
                } => table.set_layer_preference(session, preference),
                Command::RemoteInterest {
                    stream,
                    worker,
                    delta,
                } => table.remote_interest(stream, worker, delta),
                Command::MuxRegister {
                    ufrag,
                    owner,
                    session,
                } => table.mux_register(&ufrag, owner, session),
                Command::MuxRenew {
                    ufrag,
                    previous,
                    owner,
                    session,
                } => table.mux_renew(&ufrag, &previous, owner, session),
                Command::MuxForget { owner, session } => table.mux_forget(owner, session),
                Command::AdoptConnection(handover) => self.adopt_connection(*handover, now),
            }
        }
        taken
    }

    fn tick(&mut self, now: Instant) {
        let census = self.table.tick(now, &mut self.out, &self.events);
        // Simulcast players waiting to switch: a keyframe of the encoding they wait for.
        let mut wanted = std::mem::take(&mut self.table.keyframes_wanted);
        for (stream, layer) in wanted.drain(..) {
            let (table, out) = (&mut self.table, &mut self.out);
            self.fanout.request_keyframe(stream, layer, now, table, out);
        }
        self.table.keyframes_wanted = wanted;
        let stats = &self.out.stats;
        set(&stats.sessions, census.sessions);
        set(&stats.players, census.players);
        set(&stats.tcp_connections, census.tcp_connections);
        self.out.fold_latency();
        self.next_tick = now + TICK;
    }

    /// Sends the bursts whose hold ran out before their frame's last packet came; their
    /// players forget them first.
    fn send_due_bursts(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due_bursts);
        self.out.take_due_bursts(now, &mut due);
        for (id, owner) in due.drain(..) {
            self.table.forget_burst(owner, id);
            self.out.send_burst(id);
        }
        self.due_bursts = due;
    }

    /// A GSO send failed: resent one by one if the kernel refused it as such and its player is
    /// still there (see `Output::gso_failed`).
    fn gso_failed(&mut self, id: BurstId, result: i32) {
        let (owner, fd) = self.out.burst_owner(id);
        let alive = self.table.is_live_udp(owner, fd);
        self.out.gso_failed(id, result, alive, self.index);
    }
}
