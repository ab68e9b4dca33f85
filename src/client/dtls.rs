//! The client side of DTLS-SRTP: the handshake over the link (the records the reader task
//! passes up), the server's certificate checked against the answer, the SRTP keys exported.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use webrtc_dtls::conn::DTLSConn;

use super::link::Link;
use super::{ClientError, ClientOptions};
use crate::dtls::{KeyError, RecordConn, RecordSink, srtp_keys};
use crate::wire::srtp::SrtpContext;

#[async_trait]
impl RecordSink for Link {
    async fn send_record(&self, record: &[u8]) -> std::io::Result<()> {
        self.send(record).await
    }
}

/// Runs the handshake with the server at `server` over `link`, `records` being what the
/// reader task receives, as the DTLS client when `dtls_client` (the answer said
/// `setup:passive`) or else as the DTLS server (`setup:active`). Returns the association and
/// the SRTP contexts (outbound, inbound).
pub(super) async fn handshake(
    link: &Link,
    records: mpsc::Receiver<Vec<u8>>,
    server: SocketAddr,
    fingerprint: &[u8],
    dtls_client: bool,
    options: &ClientOptions,
) -> Result<(DTLSConn, SrtpContext, SrtpContext), ClientError> {
    let conn = Arc::new(RecordConn::new(
        link.clone(),
        None,
        records,
        server,
        Some(server),
    ));
    let config = crate::dtls::config(options.certificate.clone(), !dtls_client);
    let started = DTLSConn::new(conn, config, dtls_client, None);
    let dtls = tokio::time::timeout(options.timeout, started)
        .await
        .map_err(|_| ClientError::Dtls("handshake timed out".into()))?
        .map_err(|e| ClientError::Dtls(e.to_string()))?;
    let (profile, material) = srtp_keys(&dtls, fingerprint).await.map_err(|e| match e {
        KeyError::Fingerprint => ClientError::Dtls(
            "the server's certificate does not match the answer's fingerprint".into(),
        ),
        KeyError::Profile(other) => {
            ClientError::Dtls(format!("unsupported SRTP profile {other:?}"))
        }
        KeyError::Export(e) => ClientError::Dtls(e),
    })?;
    let (srtp_out, srtp_in) = SrtpContext::from_dtls_export(profile, &material, dtls_client)
        .map_err(|e| ClientError::Dtls(e.to_string()))?;
    Ok((dtls, srtp_out, srtp_in))
}

/// The server ends the session with a DTLS close_notify (or the link drops): `closed` notes it.
pub(super) fn watch_close(
    dtls: Arc<DTLSConn>,
    closed: watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while dtls.read(&mut buf, None).await.is_ok() {}
        let _ = closed.send(true);
    })
}
