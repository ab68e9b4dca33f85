//! Players joining at the ramp rate, round-robin over the streams, until the target is
//! reached or the run says stop.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corecast::client::http::HttpClient;
use corecast::client::{self, ClientError, Role, Session};
use corecast::util::lock;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc_dtls::crypto::Certificate;

use crate::player::{self, PlayerStats};
use crate::run::{RunArgs, Shared, transport_of, url_for, whep_for};

/// The ramp under way: its task ends when the last player has been started (not joined).
pub struct Ramp {
    pub task: JoinHandle<()>,
    /// The sessions of the players that joined, to close at the end.
    pub sessions: mpsc::UnboundedReceiver<Session>,
}

/// Starts `target` players, `args.ramp` a second; each connects in a task of its own, and
/// counts as up once connected.
pub fn start(
    args: &RunArgs,
    shared: &Arc<Shared>,
    http: &HttpClient,
    certificate: &Certificate,
    target: u64,
) -> Ramp {
    let (sessions_tx, sessions) = mpsc::unbounded_channel::<Session>();
    let shared = shared.clone();
    let args = args.clone();
    let certificate = certificate.clone();
    let http = http.clone();
    let task = tokio::spawn(async move {
        let gap = Duration::from_secs_f64(1.0 / args.ramp.max(0.001));
        let began = Instant::now();
        let mut next = began;
        for index in 0..target {
            if shared.stop.load(Ordering::Relaxed) || shared.stop_ramp.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
            next += gap;
            let second = began.elapsed().as_secs() as usize;
            join(
                &args,
                &shared,
                &http,
                &certificate,
                index,
                second,
                &sessions_tx,
            );
        }
    });
    Ramp { task, sessions }
}

/// Player `index`, started in `second` of the ramp: connects in a task of its own; once
/// connected its stats join the run's and its session goes to `sessions`.
fn join(
    args: &RunArgs,
    shared: &Arc<Shared>,
    http: &HttpClient,
    certificate: &Certificate,
    index: u64,
    second: usize,
    sessions: &mpsc::UnboundedSender<Session>,
) {
    let stream = (index % args.streams.max(1) as u64) as u32;
    let name = format!("{}-{stream}", args.stream_prefix);
    let transport = transport_of(args.transport, index + 1);
    let stats = Arc::new(Mutex::new(PlayerStats::new(
        stream,
        args.rate_limit_of(index),
        second,
    )));
    lock(&shared.join_seconds).started(second);
    let handler = player::handler(shared.clone(), stats.clone());
    let url = url_for(whep_for(&args.whep, index), &name);
    let options = args.client_options(http, certificate, url, Role::Play, transport, index);
    let shared = shared.clone();
    let sessions = sessions.clone();
    tokio::spawn(async move {
        match client::connect(&options, handler).await {
            Ok(session) => {
                lock(&stats).counters = Some(session.counters.clone());
                lock(&shared.players).push(stats);
                shared.players_up.fetch_add(1, Ordering::Relaxed);
                let _ = sessions.send(session);
            }
            Err(e) => {
                let shed = matches!(e, ClientError::Refused { status: 503, .. });
                lock(&shared.join_seconds).refused(second, shed);
                shared.failures.fetch_add(1, Ordering::Relaxed);
                shared.error(format!("player of {name} over {transport}: {e}"));
            }
        }
    });
}
