//! DTLS-SRTP glue shared by the relay's control thread (the server side of the handshake) and
//! the client (the client side): a webrtc-dtls `Conn` fed with records from a channel, the
//! configuration both ends use, and the fingerprint check and SRTP key export that follow the
//! handshake.

use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc};
use webrtc_dtls::config::{ClientAuthType, Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::KeyingMaterialExporter;
use webrtc_util::conn::Conn;

use crate::wire::srtp::SrtpProfile;

/// Where a [`RecordConn`]'s outgoing records go: the client's link, or the worker that owns
/// the relay's session.
#[async_trait]
pub(crate) trait RecordSink: Send + Sync + 'static {
    async fn send_record(&self, record: &[u8]) -> std::io::Result<()>;
}

/// A `Conn` for webrtc-dtls: records arrive on a channel (from whoever reads the transport),
/// leave through a [`RecordSink`].
pub(crate) struct RecordConn<S> {
    sink: S,
    /// A record that arrived before the channel was handed over, read first.
    first: std::sync::Mutex<Option<Vec<u8>>>,
    records: Mutex<mpsc::Receiver<Vec<u8>>>,
    local: SocketAddr,
    remote: Option<SocketAddr>,
}

impl<S> RecordConn<S> {
    pub(crate) fn new(
        sink: S,
        first: Option<Vec<u8>>,
        records: mpsc::Receiver<Vec<u8>>,
        local: SocketAddr,
        remote: Option<SocketAddr>,
    ) -> Self {
        RecordConn {
            sink,
            first: std::sync::Mutex::new(first),
            records: Mutex::new(records),
            local,
            remote,
        }
    }
}

#[async_trait]
impl<S: RecordSink> Conn for RecordConn<S> {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let first = crate::util::lock(&self.first).take();
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
        self.sink
            .send_record(buf)
            .await
            .map_err(|e| webrtc_util::Error::Other(e.to_string()))?;
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The DTLS configuration of either end: the two SRTP profiles the relay supports, extended
/// master secret required. The peer's certificate is self-signed on both sides: it is checked
/// against the SDP's fingerprint by [`srtp_keys`] instead of a chain.
pub(crate) fn config(certificate: Certificate, server: bool) -> DtlsConfig {
    let mut config = DtlsConfig {
        certificates: vec![certificate],
        srtp_protection_profiles: vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ],
        extended_master_secret: ExtendedMasterSecretType::Require,
        ..Default::default()
    };
    if server {
        config.client_auth = ClientAuthType::RequireAnyClientCert;
    } else {
        config.insecure_skip_verify = true;
    }
    config
}

/// Why a finished handshake gave no SRTP keys.
pub(crate) enum KeyError {
    /// The peer's certificate is not the one its SDP's `a=fingerprint` names.
    Fingerprint,
    /// The negotiated protection profile is none the relay's SRTP supports.
    Profile(SrtpProtectionProfile),
    Export(String),
}

/// After the handshake: checks the peer's certificate against `expected_fingerprint`
/// (SHA-256), then exports the SRTP keying material for the negotiated profile.
pub(crate) async fn srtp_keys(
    dtls: &DTLSConn,
    expected_fingerprint: &[u8],
) -> Result<(SrtpProfile, Vec<u8>), KeyError> {
    let state = dtls.connection_state().await;
    let presented = state
        .peer_certificates
        .first()
        .map(|der| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der));
    if presented.as_ref().map(|d| d.as_ref()) != Some(expected_fingerprint) {
        return Err(KeyError::Fingerprint);
    }
    let profile = match dtls.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => SrtpProfile::Aes128CmHmacSha1_80,
        other => return Err(KeyError::Profile(other)),
    };
    let material = state
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], profile.keying_material_len())
        .await
        .map_err(|e| KeyError::Export(e.to_string()))?;
    Ok((profile, material))
}
