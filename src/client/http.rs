//! The HTTP client of WHIP/WHEP sessions, relay-to-relay republishing, webhooks and the load
//! generator: hyper-util's pooled client (connections are reused) over rustls, so `https://`
//! works; it follows redirects (307 and 308 keep the method and body, as a cluster's
//! redirecting relay needs) and sends a bearer token when given one.
//!
//! Certificates are checked against the system's CA bundle plus an optional CA file
//! (`Trust::ca_file`), or not at all with `Trust::insecure` (self-signed trials only).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Where Debian (and most Linux systems) keep the trusted CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Redirects followed for one request before it fails.
const MAX_REDIRECTS: usize = 5;
/// The largest response body read (a relay's `/metrics` is tens of kB).
const MAX_BODY: usize = 8 << 20;
/// Idle pooled connections close after this.
const POOL_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("`{0}` is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("talking to {0}: {1}")]
    Io(String, String),
    #[error("TLS settings: {0}")]
    Tls(String),
    #[error("{0}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects(String),
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The URL that answered, after any redirects: relative `Location`s resolve against it.
    pub url: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which server certificates to accept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// PEM certificates (a CA, or a self-signed server certificate) trusted besides the
    /// system's CAs.
    pub ca_file: Option<String>,
    /// Accept any certificate: encryption without knowing who answers. For trials with
    /// `http.tls = "self-signed"` only.
    pub insecure: bool,
}

impl Trust {
    /// The rustls client settings this trust makes (for callers that speak TLS themselves,
    /// such as a WebSocket client).
    pub fn client_config(&self) -> Result<ClientConfig, HttpError> {
        if *self == Trust::default() {
            return Ok(system_config());
        }
        tls_config(self)
    }
}

/// A pooled HTTP/1.1 client with its TLS settings and, optionally, a bearer token. Clones
/// share the pool.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Default for HttpClient {
    /// The system's CAs, no token, and no idle connections kept: for one session's few
    /// requests (the offer, and the DELETE maybe minutes later). Many clients share one
    /// [`HttpClient::new`] instead, which keeps connections for reuse.
    fn default() -> Self {
        HttpClient::with_config(system_config(), 0)
    }
}

fn system_config() -> ClientConfig {
    static SYSTEM: OnceLock<ClientConfig> = OnceLock::new();
    SYSTEM
        .get_or_init(|| tls_config(&Trust::default()).unwrap_or_else(|_| empty_roots_config()))
        .clone()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn empty_roots_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Certificates from a PEM file.
fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path} is not PEM certificates: {e:?}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no `CERTIFICATE` block"));
    }
    Ok(certs)
}

fn tls_config(trust: &Trust) -> Result<ClientConfig, HttpError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    if trust.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read(SYSTEM_CA_BUNDLE) {
        // A bundle entry rustls cannot use is skipped, as every TLS library does.
        let system = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
        roots.add_parsable_certificates(system);
    }
    if let Some(path) = &trust.ca_file {
        for cert in read_certificates(path).map_err(HttpError::Tls)? {
            roots
                .add(cert)
                .map_err(|e| HttpError::Tls(format!("a certificate in {path}: {e}")))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

impl HttpClient {
    /// A client that trusts what `trust` says and keeps idle connections for reuse (for
    /// 30 s: `POOL_IDLE`).
    pub fn new(trust: &Trust) -> Result<HttpClient, HttpError> {
        Ok(HttpClient::with_config(trust.client_config()?, usize::MAX))
    }

    fn with_config(config: ClientConfig, idle_per_host: usize) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(idle_per_host)
            .build(connector);
        HttpClient {
            client,
            token: None,
        }
    }

    /// The same client (and pool) sending `token` as `Authorization: Bearer`.
    pub fn with_token(&self, token: Option<&str>) -> HttpClient {
        HttpClient {
            client: self.client.clone(),
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
        }
    }

    /// One request, following redirects, all within `timeout`.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &str,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        tokio::time::timeout(timeout, self.follow(method, url, content_type, body))
            .await
            .map_err(|_| HttpError::Timeout(url.to_string()))?
    }

    async fn follow(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<Response, HttpError> {
        let mut method =
            Method::from_bytes(method.as_bytes()).map_err(|_| HttpError::BadUrl(url.into()))?;
        let mut url = url.to_string();
        let mut body = Bytes::copy_from_slice(body.as_bytes());
        let mut content_type = content_type.map(str::to_string);
        let mut token = self.token.clone();
        for _ in 0..=MAX_REDIRECTS {
            let uri = parse_url(&url)?;
            let response = self
                .once(
                    &method,
                    &uri,
                    content_type.as_deref(),
                    body.clone(),
                    token.as_deref(),
                )
                .await?;
            let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
            let location = response.header("location").map(|l| resolve(&url, l));
            let Some(next) = location.filter(|_| status.is_redirection()) else {
                return Ok(response);
            };
            match status {
                // The method and body go again (RFC 9110 §15.4.8, §15.4.9).
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {}
                StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER => {
                    // As browsers do: what follows is a GET without the body.
                    if method != Method::HEAD {
                        method = Method::GET;
                    }
                    body = Bytes::new();
                    content_type = None;
                }
                _ => return Ok(response),
            }
            // A token never leaves TLS because a server said so.
            if url.starts_with("https://") && !next.starts_with("https://") {
                token = None;
            }
            url = next;
        }
        Err(HttpError::TooManyRedirects(url))
    }

    async fn once(
        &self,
        method: &Method,
        uri: &Uri,
        content_type: Option<&str>,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<Response, HttpError> {
        let where_ = uri.authority().map_or_else(String::new, |a| a.to_string());
        let mut request = Request::builder().method(method.clone()).uri(uri.clone());
        if let Some(ct) = content_type {
            request = request.header(CONTENT_TYPE, ct);
        }
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| HttpError::BadUrl(format!("{uri} ({e})")))?;
        let response = self.client.request(request).await.map_err(|e| {
            let chain = error_chain(&e);
            if e.is_connect() {
                HttpError::Connect(where_.clone(), chain)
            } else {
                HttpError::Io(where_.clone(), chain)
            }
        })?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| HttpError::Io(where_.clone(), format!("reading the body: {e}")))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            url: uri.to_string(),
        })
    }
}

/// An error and its causes, one line: hyper's own message alone ("client error (Connect)")
/// hides whether the certificate or the network failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let uri: Uri = url.parse().map_err(|_| HttpError::BadUrl(url.into()))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(a)) if !a.host().is_empty() => Ok(uri),
        _ => Err(HttpError::BadUrl(url.into())),
    }
}

/// Resolves a `Location` header against the URL it answered.
pub fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let Ok(uri) = base.parse::<Uri>() else {
        return location.to_string();
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return location.to_string();
    };
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = uri.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{authority}{dir}{location}")
}

/// Accepts any server certificate but still checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_url_that_answered() {
        assert_eq!(
            resolve("http://127.0.0.1:1/whip/a", "/session/3"),
            "http://127.0.0.1:1/session/3"
        );
        assert_eq!(
            resolve("https://r.example:8443/whip/a", "/session/3"),
            "https://r.example:8443/session/3"
        );
        assert_eq!(resolve("http://a:1/x", "http://b:2/y"), "http://b:2/y");
        assert_eq!(resolve("https://a:1/x/y", "z"), "https://a:1/x/z");
        assert_eq!(resolve("https://a:1/x", "//b:2/y"), "https://b:2/y");
    }

    #[test]
    fn only_http_and_https_urls_are_taken() {
        assert!(parse_url("http://127.0.0.1:8080/whip/cam").is_ok());
        assert!(parse_url("https://relay.example/whep/cam").is_ok());
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("/relative").is_err());
    }

    #[test]
    fn a_ca_file_that_is_not_there_says_so() {
        let e = HttpClient::new(&Trust {
            ca_file: Some("/nonexistent/ca.pem".into()),
            insecure: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
