//! DTLS on the control thread: the worker passes records up, webrtc-dtls runs the server side
//! of the handshake over a channel-backed connection, and the exported SRTP keys go back down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;

use crate::dtls::{KeyError, RecordConn, RecordSink, srtp_keys};
use crate::media::SessionId;
use crate::worker::{Command, WorkerHandle};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

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
    pub certificate: Certificate,
    /// SHA-256 of the certificate the peer must present, from its offer.
    pub expected_fingerprint: Vec<u8>,
    pub local: SocketAddr,
}

/// Runs the server side of DTLS-SRTP for one session. `connected` fires once the worker has
/// its keys.
pub async fn run(
    params: DtlsParams,
    mut records: mpsc::Receiver<Vec<u8>>,
    mut stop: oneshot::Receiver<()>,
    connected: impl FnOnce(),
) -> DtlsOutcome {
    // The handshake clock starts with the peer's first record: until ICE connects there is
    // none, and a session without ICE ends by the ICE timeout instead.
    let first = tokio::select! {
        r = records.recv() => match r {
            Some(record) => record,
            None => return DtlsOutcome::Stopped,
        },
        _ = &mut stop => return DtlsOutcome::Stopped,
    };
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
    let config = crate::dtls::config(params.certificate, true);
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
    connected();
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
