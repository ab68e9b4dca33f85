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

/// The curve each end's ECDHE uses, read off the wire: corecast's webrtc-dtls is patched
/// (vendor/webrtc-dtls/CORECAST.md) so that the relay picks X25519 whenever a client lists it,
/// and corecast's own client lists it first, as browsers do. These tests break if an upgrade of
/// webrtc-dtls drops either change.
#[cfg(test)]
mod curve_choice {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    const X25519: u16 = 0x001d;
    const P256: u16 = 0x0017;

    /// Records a conn sends, to a channel the test reads.
    struct Capture(mpsc::UnboundedSender<Vec<u8>>);

    #[async_trait]
    impl RecordSink for Capture {
        async fn send_record(&self, record: &[u8]) -> std::io::Result<()> {
            let _ = self.0.send(record.to_vec());
            Ok(())
        }
    }

    fn local() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// The handshake messages (type, body) in a datagram of DTLS records.
    fn handshake_messages(datagram: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut messages = Vec::new();
        let mut rest = datagram;
        while rest.len() >= 13 {
            let len = u16::from_be_bytes([rest[11], rest[12]]) as usize;
            let (record, next) = rest[13..].split_at(len.min(rest.len() - 13));
            if rest[0] == 22 && record.len() >= 12 {
                let body_len = u32::from_be_bytes([0, record[1], record[2], record[3]]) as usize;
                let body = &record[12..(12 + body_len).min(record.len())];
                messages.push((record[0], body.to_vec()));
            }
            rest = next;
        }
        messages
    }

    /// The groups a ClientHello body lists (extension `supported_groups`, 10).
    fn supported_groups(client_hello: &[u8]) -> Vec<u16> {
        let mut at = 2 + 32; // version, random
        at += 1 + client_hello[at] as usize; // session id
        at += 1 + client_hello[at] as usize; // cookie
        at += 2 + u16::from_be_bytes([client_hello[at], client_hello[at + 1]]) as usize;
        at += 1 + client_hello[at] as usize; // compression methods
        at += 2; // extensions' length
        while at + 4 <= client_hello.len() {
            let kind = u16::from_be_bytes([client_hello[at], client_hello[at + 1]]);
            let len = u16::from_be_bytes([client_hello[at + 2], client_hello[at + 3]]) as usize;
            let data = &client_hello[at + 4..at + 4 + len];
            if kind == 10 {
                return data[2..]
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
            }
            at += 4 + len;
        }
        Vec::new()
    }

    /// A DTLS 1.2 ClientHello record listing `groups`, with what the relay requires (an ECDHE
    /// ECDSA suite, use_srtp, extended master secret), and `cookie`.
    fn client_hello(groups: &[u16], cookie: &[u8], sequence: u8) -> Vec<u8> {
        let mut extensions = Vec::new();
        let mut push = |kind: u16, data: &[u8]| {
            extensions.extend_from_slice(&kind.to_be_bytes());
            extensions.extend_from_slice(&(data.len() as u16).to_be_bytes());
            extensions.extend_from_slice(data);
        };
        let mut list = ((groups.len() * 2) as u16).to_be_bytes().to_vec();
        groups
            .iter()
            .for_each(|g| list.extend_from_slice(&g.to_be_bytes()));
        push(10, &list); // supported_groups
        push(11, &[1, 0]); // ec_point_formats: uncompressed
        push(13, &[0, 2, 4, 3]); // signature_algorithms: ecdsa_secp256r1_sha256
        push(14, &[0, 4, 0, 7, 0, 1, 0]); // use_srtp: AEAD_AES_128_GCM, AES128_CM_SHA1_80
        push(23, &[]); // extended_master_secret
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0x2b]); // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        body.extend_from_slice(&[1, 0]); // compression: null
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let len = (body.len() as u32).to_be_bytes();
        let mut handshake = vec![1, len[1], len[2], len[3], 0, sequence, 0, 0, 0];
        handshake.extend_from_slice(&[len[1], len[2], len[3]]);
        handshake.extend_from_slice(&body);
        let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, sequence];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    async fn next_messages(from: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<(u8, Vec<u8>)> {
        let datagram = tokio::time::timeout(Duration::from_secs(5), from.recv())
            .await
            .expect("the peer answers within 5 s")
            .expect("the conn is open");
        handshake_messages(&datagram)
    }

    /// The named curve of the ServerKeyExchange the relay's side sends to a client listing
    /// `groups`.
    async fn curve_the_server_picks(groups: &[u16]) -> u16 {
        let certificate = Certificate::generate_self_signed(vec!["relay".into()]).unwrap();
        let (to_server, records) = mpsc::channel(16);
        let (sink, mut sent) = mpsc::unbounded_channel();
        let conn = Arc::new(RecordConn::new(Capture(sink), None, records, local(), None));
        let server = tokio::spawn(DTLSConn::new(conn, config(certificate, true), false, None));
        to_server.send(client_hello(groups, &[], 0)).await.unwrap();
        let verify = next_messages(&mut sent).await;
        assert_eq!(verify[0].0, 3, "a HelloVerifyRequest first");
        let cookie = verify[0].1[3..3 + verify[0].1[2] as usize].to_vec();
        to_server
            .send(client_hello(groups, &cookie, 1))
            .await
            .unwrap();
        let mut curve = None;
        while curve.is_none() {
            for (kind, body) in next_messages(&mut sent).await {
                if kind == 12 {
                    assert_eq!(body[0], 3, "a named curve");
                    curve = Some(u16::from_be_bytes([body[1], body[2]]));
                }
            }
        }
        server.abort();
        curve.unwrap()
    }

    #[tokio::test]
    async fn the_relay_picks_x25519_whenever_the_client_lists_it() {
        assert_eq!(curve_the_server_picks(&[P256, X25519]).await, X25519);
        assert_eq!(curve_the_server_picks(&[X25519, P256]).await, X25519);
    }

    #[tokio::test]
    async fn a_client_without_x25519_gets_its_first_curve() {
        assert_eq!(curve_the_server_picks(&[P256]).await, P256);
    }

    #[tokio::test]
    async fn corecasts_client_lists_x25519_first() {
        let certificate = Certificate::generate_self_signed(vec!["client".into()]).unwrap();
        let (_to_client, records) = mpsc::channel(16);
        let (sink, mut sent) = mpsc::unbounded_channel();
        let conn = Arc::new(RecordConn::new(
            Capture(sink),
            None,
            records,
            local(),
            Some(local()),
        ));
        let client = tokio::spawn(DTLSConn::new(conn, config(certificate, false), true, None));
        let hello = next_messages(&mut sent).await;
        assert_eq!(hello[0].0, 1, "a ClientHello");
        assert_eq!(supported_groups(&hello[0].1)[0], X25519);
        client.abort();
    }
}
