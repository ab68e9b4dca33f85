//! DTLS in the handshake pool: the worker passes a session's records straight to its task in
//! the pool (a multi-threaded runtime, a thread per core by default), webrtc-dtls runs the
//! server side of the handshake over a channel-backed connection, and the exported SRTP keys
//! go back down to the worker. The control thread only starts the task: a crowd's ECDHE and
//! signatures run on every core, not on the one that answers HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;

use crate::dtls::{KeyError, RecordConn, RecordSink, srtp_keys};
use crate::media::SessionId;
use crate::worker::{Command, WorkerHandle};

pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a session waits for its peer's first DTLS record: ICE ends a session that never
/// connects (`media.ice_timeout`); this ends one whose client keeps ICE alive and never starts
/// the handshake, which would otherwise hold its port for ever.
const FIRST_RECORD_TIMEOUT: Duration = Duration::from_secs(60);

/// The nice value of the pool's threads: behind the workers (nice 0), so a crowd's handshakes
/// wait for a core rather than delay the media of viewers already playing.
const POOL_NICE: i32 = 10;

/// The runtime handshakes run in (`admission.handshake_threads` threads, `corecast-dtls`).
/// Kept as a handle: the runtime lives on a thread of its own for the life of the process,
/// so dropping the relay's state never drops a runtime inside another one.
#[derive(Clone)]
pub struct HandshakePool {
    handle: tokio::runtime::Handle,
}

impl HandshakePool {
    pub fn start(threads: usize) -> std::io::Result<HandshakePool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("corecast-dtls")
            .on_thread_start(|| {
                if let Err(e) = crate::io::sys::set_this_thread_nice(POOL_NICE) {
                    tracing::debug!("the DTLS pool thread keeps its priority: {e}");
                }
            })
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("corecast-dtls-rt".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(HandshakePool { handle })
    }

    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

/// Records leave through the worker that owns the session.
struct ToWorker {
    session: SessionId,
    worker: WorkerHandle,
}

#[async_trait]
impl RecordSink for ToWorker {
    async fn send_record(&self, record: &[u8]) -> std::io::Result<()> {
        self.worker.send(Command::SendDtls {
            session: self.session,
            data: record.to_vec(),
        });
        Ok(())
    }
}

/// How a session's DTLS ended, for the session's end reason.
pub enum DtlsOutcome {
    /// Asked to stop by the control thread (after a close_notify to the peer, if connected).
    Stopped,
    Failed(String),
    /// The peer closed the association.
    PeerClosed,
}

pub struct DtlsParams {
    pub session: SessionId,
    pub worker: WorkerHandle,
    /// Cloned in the pool, not by whoever starts the task: webrtc-dtls's clone re-parses the
    /// key and checks it (an elliptic-curve multiplication).
    pub certificate: Arc<Certificate>,
    /// SHA-256 of the certificate the peer must present, from its offer.
    pub expected_fingerprint: Vec<u8>,
    pub local: SocketAddr,
}

/// Runs the server side of DTLS-SRTP for one session. `connected` fires once the worker has
/// its keys, with the handshake's time from the peer's first record.
pub async fn run(
    params: DtlsParams,
    mut records: mpsc::Receiver<Vec<u8>>,
    mut stop: oneshot::Receiver<()>,
    connected: impl FnOnce(Duration),
) -> DtlsOutcome {
    // The handshake clock starts with the peer's first record: until ICE connects there is
    // none, and a session without ICE ends by the ICE timeout instead.
    let first = tokio::select! {
        r = tokio::time::timeout(FIRST_RECORD_TIMEOUT, records.recv()) => match r {
            Ok(Some(record)) => record,
            Ok(None) => return DtlsOutcome::Stopped,
            Err(_) => {
                return DtlsOutcome::Failed(format!(
                    "no DTLS handshake began within {} s",
                    FIRST_RECORD_TIMEOUT.as_secs()
                ));
            }
        },
        _ = &mut stop => return DtlsOutcome::Stopped,
    };
    let started = Instant::now();
    let sink = ToWorker {
        session: params.session,
        worker: params.worker.clone(),
    };
    let conn = Arc::new(RecordConn::new(
        sink,
        Some(first),
        records,
        params.local,
        None,
    ));
    let config = crate::dtls::config(Certificate::clone(&params.certificate), true);
    let handshake =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, DTLSConn::new(conn, config, false, None));
    let dtls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(dtls)) => dtls,
            Ok(Err(e)) => return DtlsOutcome::Failed(format!("DTLS handshake failed: {e}")),
            Err(_) => return DtlsOutcome::Failed("DTLS handshake timed out".into()),
        },
        _ = &mut stop => return DtlsOutcome::Stopped,
    };
    let (profile, material) = match srtp_keys(&dtls, &params.expected_fingerprint).await {
        Ok(keys) => keys,
        Err(KeyError::Fingerprint) => {
            let _ = dtls.close().await;
            return DtlsOutcome::Failed(
                "the DTLS certificate does not match the offer's a=fingerprint".into(),
            );
        }
        Err(KeyError::Profile(other)) => {
            return DtlsOutcome::Failed(format!(
                "no SRTP protection profile in common ({other:?})"
            ));
        }
        Err(KeyError::Export(e)) => {
            return DtlsOutcome::Failed(format!("exporting SRTP keys failed: {e}"));
        }
    };
    params.worker.send(Command::SetKeys {
        session: params.session,
        profile,
        material,
    });
    connected(started.elapsed());
    // Keep the association: it answers retransmitted handshake flights and sees close_notify.
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            r = dtls.read(&mut buf, None) => {
                if r.is_err() {
                    return DtlsOutcome::PeerClosed;
                }
            }
            _ = &mut stop => {
                let _ = tokio::time::timeout(Duration::from_millis(200), dtls.close()).await;
                return DtlsOutcome::Stopped;
            }
        }
    }
}
