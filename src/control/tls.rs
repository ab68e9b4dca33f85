//! TLS for the HTTP listener (`http.tls`, `http.tls_cert`, `http.tls_key`): rustls with the
//! certificate and key from PEM files, or one generated at start for trials
//! (`http.tls = "self-signed"`). [`TlsServer::reload`] (SIGHUP) reads the files again: new
//! connections get the new certificate, connections already open keep theirs, and sessions
//! never notice (their media is DTLS, not this).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use toml::Value;

/// Where the listener's certificate comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsSetting {
    /// Plain HTTP.
    #[default]
    Off,
    /// A certificate generated at start, for trials: browsers warn about it.
    SelfSigned,
    /// PEM files: the certificate chain (leaf first) and its private key.
    Files { cert: String, key: String },
}

impl TlsSetting {
    /// From `http.tls`, `http.tls_cert` and `http.tls_key`.
    pub fn parse(
        tls: Option<&Value>,
        cert: Option<&Value>,
        key: Option<&Value>,
    ) -> Result<TlsSetting, String> {
        let text = |v: Option<&Value>, name: &str| match v {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "configuration key `{name}` has value `{other}`: must be a string"
            )),
        };
        let mode = text(tls, "http.tls")?;
        let (cert, key) = (text(cert, "http.tls_cert")?, text(key, "http.tls_key")?);
        match (mode.as_deref(), cert, key) {
            (None | Some("off"), None, None) => Ok(TlsSetting::Off),
            (Some("self-signed"), None, None) => Ok(TlsSetting::SelfSigned),
            (None | Some("files"), Some(cert), Some(key)) => Ok(TlsSetting::Files { cert, key }),
            (None | Some("files"), Some(_), None) | (None | Some("files"), None, Some(_)) => {
                Err("`http.tls_cert` and `http.tls_key` go together: set both".into())
            }
            (Some("self-signed"), _, _) => Err(
                "`http.tls = \"self-signed\"` generates its own certificate: leave out \
                 `http.tls_cert` and `http.tls_key`, or drop `http.tls`"
                    .into(),
            ),
            (Some("off"), _, _) => {
                Err("`http.tls = \"off\"` but `http.tls_cert`/`http.tls_key` are set".into())
            }
            (Some("files"), None, None) => {
                Err("`http.tls = \"files\"` needs `http.tls_cert` and `http.tls_key`".into())
            }
            (Some(other), _, _) => Err(format!(
                "configuration key `http.tls` has value `{other}`: must be \"off\", \
                 \"self-signed\" or \"files\" (with `http.tls_cert` and `http.tls_key`)"
            )),
        }
    }

    pub fn is_on(&self) -> bool {
        *self != TlsSetting::Off
    }

    /// The keys as `--print-config` writes them.
    pub fn to_toml(&self) -> String {
        match self {
            TlsSetting::Off => "tls = \"off\"\n".into(),
            TlsSetting::SelfSigned => "tls = \"self-signed\"\n".into(),
            TlsSetting::Files { cert, key } => {
                format!("tls = \"files\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n")
            }
        }
    }
}

/// The certificate new handshakes get; replaced whole on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }
}

/// The listener's TLS: its acceptor and the certificate it serves.
pub struct TlsServer {
    setting: TlsSetting,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

/// The SHA-256 fingerprint of a DER certificate, as browsers and `openssl x509 -fingerprint
/// -sha256` show it.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = String::new();
    for (i, b) in digest.as_ref().iter().enumerate() {
        let _ = write!(out, "{}{b:02X}", if i > 0 { ":" } else { "" });
    }
    out
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("the private key cannot sign: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key is not the certificate's: {e}"))?;
    Ok(certified)
}

/// Reads the certificate chain and key of `http.tls_cert` and `http.tls_key`.
fn load_files(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    let pem = std::fs::read(cert).map_err(|e| format!("reading http.tls_cert {cert}: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("http.tls_cert {cert} is not PEM: {e:?}"))?;
    if chain.is_empty() {
        return Err(format!("http.tls_cert {cert} holds no `CERTIFICATE` block"));
    }
    let pem = std::fs::read(key).map_err(|e| format!("reading http.tls_key {key}: {e}"))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!("http.tls_key {key} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e:?}")
    })?;
    certified(chain, &key_der).map_err(|e| format!("http.tls_key {key}: {e}"))
}

/// A certificate for `localhost`, 127.0.0.1, ::1 and the listening address.
fn self_signed(listen: SocketAddr) -> Result<CertifiedKey, String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("generating a self-signed certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
    certified(vec![generated.cert.der().clone()], &key)
}

impl TlsServer {
    /// The listener's TLS as `setting` says; `None` when it is off.
    pub fn new(setting: &TlsSetting, listen: SocketAddr) -> Result<Option<TlsServer>, String> {
        let certified = match setting {
            TlsSetting::Off => return Ok(None),
            TlsSetting::SelfSigned => self_signed(listen)?,
            TlsSetting::Files { cert, key } => load_files(cert, key)?,
        };
        let current = Arc::new(Current(RwLock::new(Arc::new(certified))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The listener speaks HTTP/1.1 only (WebSocket upgrades need it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(TlsServer {
            setting: setting.clone(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    pub fn is_self_signed(&self) -> bool {
        self.setting == TlsSetting::SelfSigned
    }

    /// The fingerprint of the certificate new connections get.
    pub fn fingerprint(&self) -> String {
        let current = self
            .current
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        current
            .cert
            .first()
            .map_or_else(String::new, |c| fingerprint(c))
    }

    /// Reads the certificate and key files again (SIGHUP) and serves them to new connections;
    /// on any error the certificate in use stays. Returns the new fingerprint.
    pub fn reload(&self) -> Result<String, String> {
        let TlsSetting::Files { cert, key } = &self.setting else {
            return Err("the certificate is self-signed: there are no files to reload".into());
        };
        let certified = load_files(cert, key)?;
        *self
            .current
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(certified);
        Ok(self.fingerprint())
    }
}

/// Where the plain listener (`http.redirect_listen`) sends a request for `path` that named
/// `host` (its `Host` header): the same host and path on the HTTPS port.
fn redirect_location(host: &str, path: &str, https_port: u16) -> Option<String> {
    let host = host.trim();
    // The name without its port; an IPv6 literal keeps its brackets.
    let name = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    if !valid {
        return None;
    }
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    Some(format!("https://{name}{port}{path}"))
}

/// The plain listener's only answer: 308 (method and body kept) to the same URL on HTTPS.
pub fn redirect_router(https_port: u16) -> axum::Router {
    use axum::http::{HeaderMap, StatusCode, Uri, header};
    use axum::response::IntoResponse;
    axum::Router::new().fallback(move |headers: HeaderMap, uri: Uri| async move {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        match redirect_location(host, path, https_port) {
            Some(location) => (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, location.clone())],
                format!("this relay speaks HTTPS: {location}\n"),
            )
                .into_response(),
            None => (
                StatusCode::BAD_REQUEST,
                "this relay speaks HTTPS; send a Host header to be redirected there\n",
            )
                .into_response(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_host_and_path_and_take_the_https_port() {
        assert_eq!(
            redirect_location("relay.example", "/whip/cam?x=1", 443).as_deref(),
            Some("https://relay.example/whip/cam?x=1")
        );
        assert_eq!(
            redirect_location("relay.example:80", "/", 8443).as_deref(),
            Some("https://relay.example:8443/")
        );
        assert_eq!(
            redirect_location("[::1]:8080", "/ws", 8443).as_deref(),
            Some("https://[::1]:8443/ws")
        );
        assert_eq!(redirect_location("", "/", 443), None);
        assert_eq!(redirect_location("evil.example/x", "/", 443), None);
    }

    fn v(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn settings_parse_and_refuse_half_configurations() {
        assert_eq!(TlsSetting::parse(None, None, None), Ok(TlsSetting::Off));
        assert_eq!(
            TlsSetting::parse(Some(&v("self-signed")), None, None),
            Ok(TlsSetting::SelfSigned)
        );
        assert_eq!(
            TlsSetting::parse(None, Some(&v("c.pem")), Some(&v("k.pem"))),
            Ok(TlsSetting::Files {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert!(
            TlsSetting::parse(None, Some(&v("c.pem")), None)
                .unwrap_err()
                .contains("set both")
        );
        assert!(
            TlsSetting::parse(Some(&v("self-signed")), Some(&v("c.pem")), Some(&v("k"))).is_err()
        );
        assert!(
            TlsSetting::parse(Some(&v("yes")), None, None)
                .unwrap_err()
                .contains("http.tls")
        );
    }

    #[test]
    fn files_load_and_reload_with_a_new_fingerprint() {
        let dir = std::env::temp_dir().join(format!("corecast-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let write = || {
            let g = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
            std::fs::write(&cert, g.cert.pem()).unwrap();
            std::fs::write(&key, g.key_pair.serialize_pem()).unwrap();
            fingerprint(g.cert.der())
        };
        let first = write();
        let setting = TlsSetting::Files {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        };
        let server = TlsServer::new(&setting, "127.0.0.1:0".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(server.fingerprint(), first);
        let second = write();
        assert_ne!(first, second);
        assert_eq!(server.reload(), Ok(second.clone()));
        // A broken file leaves the certificate in use.
        std::fs::write(&key, "not a key").unwrap();
        assert!(server.reload().unwrap_err().contains("http.tls_key"));
        assert_eq!(server.fingerprint(), second);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_self_signed_certificate_is_made_at_start() {
        let server = TlsServer::new(&TlsSetting::SelfSigned, "0.0.0.0:8443".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(server.fingerprint().len(), 32 * 3 - 1);
        assert!(server.reload().is_err());
    }
}
