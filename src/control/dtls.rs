//! DTLS on the control thread: the worker passes records up, webrtc-dtls runs the server side
//! of the handshake over a channel-backed connection, and the exported SRTP keys go back down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc, oneshot};
use webrtc_dtls::config::{ClientAuthType, Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::KeyingMaterialExporter;
use webrtc_util::conn::Conn;

use crate::srtp::SrtpProfile;
use crate::worker::{Command, SessionId, WorkerHandle};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A `Conn` whose packets come from the owning worker and leave through it.
struct WorkerConn {
    session: SessionId,
    worker: WorkerHandle,
    /// The record that started the handshake, handed out before the channel's.
    first: std::sync::Mutex<Option<Vec<u8>>>,
    records: Mutex<mpsc::Receiver<Vec<u8>>>,
    local: SocketAddr,
}

#[async_trait]
impl Conn for WorkerConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        let record = match first {
            Some(record) => Some(record),
            None => self.records.lock().await.recv().await,
        };
        match record {
            Some(record) => {
                let n = record.len().min(buf.len());
                buf[..n].copy_from_slice(&record[..n]);
                Ok(n)
            }
            None => Err(webrtc_util::Error::ErrUseClosedNetworkConn),
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, self.local))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.worker.send(Command::SendDtls {
            session: self.session,
            data: buf.to_vec(),
        });
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
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
    let conn = Arc::new(WorkerConn {
        session: params.session,
        worker: params.worker.clone(),
        first: std::sync::Mutex::new(Some(first)),
        records: Mutex::new(records),
        local: params.local,
    });
    let config = DtlsConfig {
        certificates: vec![params.certificate],
        srtp_protection_profiles: vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ],
        // The peer's certificate is self-signed; it is checked against the offer's
        // fingerprint below instead of a chain.
        client_auth: ClientAuthType::RequireAnyClientCert,
        extended_master_secret: ExtendedMasterSecretType::Require,
        ..Default::default()
    };
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
    let state = dtls.connection_state().await;
    let presented = state
        .peer_certificates
        .first()
        .map(|der| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der));
    if presented.as_ref().map(|d| d.as_ref()) != Some(&params.expected_fingerprint[..]) {
        let _ = dtls.close().await;
        return DtlsOutcome::Failed(
            "the DTLS certificate does not match the offer's a=fingerprint".into(),
        );
    }
    let profile = match dtls.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => SrtpProfile::Aes128CmHmacSha1_80,
        other => {
            return DtlsOutcome::Failed(format!(
                "no SRTP protection profile in common ({other:?})"
            ));
        }
    };
    let material = match state
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], profile.keying_material_len())
        .await
    {
        Ok(m) => m,
        Err(e) => return DtlsOutcome::Failed(format!("exporting SRTP keys failed: {e}")),
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
