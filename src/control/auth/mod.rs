//! Who may do what: static bearer tokens (`[[auth.tokens]]`) and JWTs (`[auth.jwt]`, HS256 with
//! a secret, RS256 or ES256 with a public key). Sans-IO: [`Authenticator::authenticate`] takes
//! the presented token and the time and returns a [`Grant`] or why not; [`Grant::check`] says
//! whether the grant covers an action on a stream. `gate` applies these to requests.
//!
//! JWTs are verified here with aws-lc-rs, which the relay already links for DTLS fingerprints:
//! the three algorithms are a few calls each, and a JWT crate would bring a second crypto
//! library and its dependency tree for them. Only the algorithm the configured key is for is
//! accepted (an HS256 token is never checked against a public key), so the `alg` header cannot
//! pick a weaker check.

mod config;
#[cfg(test)]
mod tests;

use std::fmt;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey, VerificationAlgorithm,
};
use aws_lc_rs::{constant_time, digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

pub use config::{AuthConfig, JwtConfig, KEYS, MetricsAccess, Secret, TokenConfig, WebhookConfig};

/// How far a JWT's `exp` and `nbf` may be off, for clocks that differ a little.
pub const CLOCK_LEEWAY_S: u64 = 30;
/// Static tokens shorter than this are refused at start-up: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// An HS256 secret shorter than the hash (RFC 7518 §3.2) is refused at start-up.
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// An action a token may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Publish,
    Play,
    /// The stream and republishing API, ending any session, and `/metrics` when it is
    /// admin-only.
    Admin,
}

impl Right {
    fn parse(name: &str) -> Option<Right> {
        match name {
            "publish" => Some(Right::Publish),
            "play" => Some(Right::Play),
            "admin" => Some(Right::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Right::Publish => "publish",
            Right::Play => "play",
            Right::Admin => "admin",
        }
    }
}

/// The rights a token carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    pub publish: bool,
    pub play: bool,
    pub admin: bool,
}

impl Rights {
    pub const ALL: Rights = Rights {
        publish: true,
        play: true,
        admin: true,
    };

    pub fn has(self, right: Right) -> bool {
        match right {
            Right::Publish => self.publish,
            Right::Play => self.play,
            Right::Admin => self.admin,
        }
    }

    fn add(&mut self, right: Right) {
        match right {
            Right::Publish => self.publish = true,
            Right::Play => self.play = true,
            Right::Admin => self.admin = true,
        }
    }

    /// From a list of names, or why not.
    fn from_names<'a>(names: impl IntoIterator<Item = Option<&'a str>>) -> Result<Rights, String> {
        let mut rights = Rights::default();
        for name in names {
            match name.and_then(Right::parse) {
                Some(right) => rights.add(right),
                None => {
                    return Err(format!(
                        "`{}` is not a right: use publish, play or admin",
                        name.unwrap_or("(not a string)")
                    ));
                }
            }
        }
        Ok(rights)
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [Right::Publish, Right::Play, Right::Admin]
            .into_iter()
            .filter(|r| self.has(*r))
            .map(Right::name)
            .collect();
        if names.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// A pattern over stream names: `*` stands for any run of characters, `?` for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn parse(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() || pattern.len() > 128 {
            return Err(format!(
                "`{pattern}` is not a stream pattern: use 1-128 characters, `*` for any run, \
                 `?` for one"
            ));
        }
        Ok(Glob(pattern.to_string()))
    }

    pub fn any() -> Glob {
        Glob("*".into())
    }

    pub fn matches(&self, name: &str) -> bool {
        // Iterative matching with one backtrack point: linear in practice, no recursion.
        let (p, n) = (self.0.as_bytes(), name.as_bytes());
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
                pi += 1;
                ni += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ni));
                pi += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub rights: Rights,
    pub streams: Glob,
    /// Who holds it, for logs: the static token's name or the JWT's `sub`.
    pub holder: String,
    /// The token's SHA-256: the key its sessions count under (`http.max_sessions_per_token`).
    pub key: [u8; 32],
    /// The JWT's claims (or the static token's name and rights), for the webhook.
    pub claims: Value,
    /// The relay's own token (cascade): no per-token limit applies.
    pub internal: bool,
}

/// Why a token was refused: 401 (no valid token) or 403 (a valid one that does not cover it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid(String),
    Forbidden(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Missing | Refusal::Invalid(_) => 401,
            Refusal::Forbidden(_) => 403,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750 §3).
    pub fn challenge(&self) -> Option<String> {
        match self {
            Refusal::Missing => Some("Bearer realm=\"corecast\"".into()),
            Refusal::Invalid(why) => Some(format!(
                "Bearer realm=\"corecast\", error=\"invalid_token\", error_description=\"{}\"",
                why.replace(['"', '\\'], "'")
            )),
            Refusal::Forbidden(_) => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing => f.write_str(
                "this relay requires a token: send `Authorization: Bearer <token>` (on /ws: \
                 `?token=` or a `token` field in the first message)",
            ),
            Refusal::Invalid(why) => write!(f, "the token is not valid: {why}"),
            Refusal::Forbidden(why) => write!(f, "the token does not allow this: {why}"),
        }
    }
}

impl Grant {
    /// Whether this grant covers `right` on `stream` (`None`: an action on no stream).
    pub fn check(&self, right: Right, stream: Option<&str>) -> Result<(), Refusal> {
        if !self.rights.has(right) {
            return Err(Refusal::Forbidden(format!(
                "it allows {}, not {}",
                self.rights,
                right.name()
            )));
        }
        if right != Right::Admin
            && let Some(stream) = stream
            && !self.streams.matches(stream)
        {
            return Err(Refusal::Forbidden(format!(
                "it covers streams `{}`, not `{stream}`",
                self.streams
            )));
        }
        Ok(())
    }
}

enum JwtKey {
    Hmac(Box<hmac::Key>),
    /// SPKI DER, which aws-lc-rs reads for both RSA and EC keys.
    Rsa(Vec<u8>),
    Ecdsa(Vec<u8>),
}

impl JwtKey {
    fn algorithm(&self) -> &'static str {
        match self {
            JwtKey::Hmac(_) => "HS256",
            JwtKey::Rsa(_) => "RS256",
            JwtKey::Ecdsa(_) => "ES256",
        }
    }
}

struct StaticToken {
    digest: [u8; 32],
    rights: Rights,
    streams: Glob,
    name: String,
    internal: bool,
}

/// Checks tokens against the configuration.
pub struct Authenticator {
    tokens: Vec<StaticToken>,
    jwt: Option<JwtKey>,
    enabled: bool,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

impl Authenticator {
    /// From `[auth]`; reads `auth.jwt.public_key`. `internal` is the relay's own token (all
    /// rights, for its cascade bridges that call itself).
    pub fn new(config: &AuthConfig, internal: &str) -> Result<Authenticator, String> {
        let mut tokens: Vec<StaticToken> = config
            .tokens
            .iter()
            .map(|t| StaticToken {
                digest: sha256(t.token.as_bytes()),
                rights: t.rights,
                streams: t.streams.clone(),
                name: t.name.clone(),
                internal: false,
            })
            .collect();
        tokens.push(StaticToken {
            digest: sha256(internal.as_bytes()),
            rights: Rights::ALL,
            streams: Glob::any(),
            name: "the relay itself".into(),
            internal: true,
        });
        let jwt = match &config.jwt {
            None => None,
            Some(JwtConfig::Secret(secret)) => Some(JwtKey::Hmac(Box::new(hmac::Key::new(
                hmac::HMAC_SHA256,
                secret.as_bytes(),
            )))),
            Some(JwtConfig::PublicKey(path)) => Some(load_public_key(path)?),
        };
        Ok(Authenticator {
            tokens,
            jwt,
            enabled: config.enabled(),
        })
    }

    /// Also accepts the cluster's token (`cluster.token`): playing any stream, as one node
    /// pulling a stream from another does; like the relay's own, no per-token cap applies.
    pub fn with_cluster_token(mut self, token: Option<&str>) -> Authenticator {
        if let Some(token) = token {
            self.tokens.push(StaticToken {
                digest: sha256(token.as_bytes()),
                rights: Rights {
                    play: true,
                    ..Rights::default()
                },
                streams: Glob::any(),
                name: "a node of the cluster".into(),
                internal: true,
            });
        }
        self
    }

    /// Whether tokens are required (`[[auth.tokens]]` or `[auth.jwt]` configured).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The grant of `token` at `now` (Unix seconds).
    pub fn authenticate(&self, token: Option<&str>, now: u64) -> Result<Grant, Refusal> {
        let token = match token.map(str::trim) {
            None | Some("") => return Err(Refusal::Missing),
            Some(t) => t,
        };
        let digest = sha256(token.as_bytes());
        // Every configured token is compared, whichever matches: the time taken says nothing
        // about which token (or how much of one) was right.
        let mut found = None;
        for candidate in &self.tokens {
            if constant_time::verify_slices_are_equal(&candidate.digest, &digest).is_ok() {
                found = Some(candidate);
            }
        }
        if let Some(t) = found {
            return Ok(Grant {
                rights: t.rights,
                streams: t.streams.clone(),
                holder: t.name.clone(),
                key: digest,
                claims: json!({"name": t.name, "allow": t.rights.to_string(), "streams": t.streams.to_string()}),
                internal: t.internal,
            });
        }
        match &self.jwt {
            Some(key) if token.matches('.').count() == 2 => {
                let claims = verify_jwt(key, token, now).map_err(Refusal::Invalid)?;
                grant_of_claims(claims, digest)
            }
            Some(_) => Err(Refusal::Invalid(
                "it is neither a configured token nor a JWT".into(),
            )),
            None => Err(Refusal::Invalid(
                "it is not one of this relay's tokens".into(),
            )),
        }
    }
}

fn load_public_key(path: &str) -> Result<JwtKey, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("reading auth.jwt.public_key {path}: {e}"))?;
    let der = SubjectPublicKeyInfoDer::from_pem_slice(&pem)
        .map_err(|e| format!("auth.jwt.public_key {path} has no PEM `PUBLIC KEY` block: {e:?}"))?;
    let der = der.as_ref().to_vec();
    let parses = |alg: &'static dyn VerificationAlgorithm| {
        UnparsedPublicKey::new(alg, der.as_slice()).parse().is_ok()
    };
    if parses(&ECDSA_P256_SHA256_FIXED) {
        Ok(JwtKey::Ecdsa(der))
    } else if parses(&RSA_PKCS1_2048_8192_SHA256) {
        Ok(JwtKey::Rsa(der))
    } else {
        Err(format!(
            "auth.jwt.public_key {path} is neither an RSA key of 2048-8192 bits (RS256) nor a \
             P-256 EC key (ES256)"
        ))
    }
}

fn decode_json(part: &str, what: &str) -> Result<Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("its {what} is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| format!("its {what} is not JSON"))
}

/// The claims of a JWT whose signature and times check out, or why not.
fn verify_jwt(key: &JwtKey, token: &str, now: u64) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("a JWT has three parts".into());
    };
    let header = decode_json(header, "header")?;
    let alg = header["alg"].as_str().unwrap_or("(none)");
    if alg != key.algorithm() {
        return Err(format!(
            "it is signed with {alg}; this relay accepts {} (the key in auth.jwt)",
            key.algorithm()
        ));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "its signature is not base64url".to_string())?;
    let signed = &token[..token.rfind('.').expect("three parts")];
    let verified = match key {
        JwtKey::Hmac(k) => hmac::verify(k, signed.as_bytes(), &signature),
        JwtKey::Rsa(der) => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
            .verify(signed.as_bytes(), &signature),
        JwtKey::Ecdsa(der) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, der)
            .verify(signed.as_bytes(), &signature),
    };
    if verified.is_err() {
        return Err("its signature does not verify with the key in auth.jwt".into());
    }
    let claims = decode_json(payload, "payload")?;
    let Some(exp) = claims["exp"].as_u64() else {
        return Err("it has no numeric `exp` claim: tokens must expire".into());
    };
    if now > exp + CLOCK_LEEWAY_S {
        return Err(format!(
            "it expired at {exp} (Unix time), {} s ago",
            now - exp
        ));
    }
    if let Some(nbf) = claims["nbf"].as_u64()
        && now + CLOCK_LEEWAY_S < nbf
    {
        return Err(format!("it is not valid before {nbf} (Unix time)"));
    }
    Ok(claims)
}

/// The rights and streams a JWT's claims name: `allow` (a list of rights) and `streams` (a
/// pattern, `*` when absent).
fn grant_of_claims(claims: Value, key: [u8; 32]) -> Result<Grant, Refusal> {
    let rights = match &claims["allow"] {
        Value::Array(names) => Rights::from_names(names.iter().map(Value::as_str)),
        Value::String(name) => Rights::from_names([Some(name.as_str())]),
        _ => Err("it has no `allow` claim (a list of publish, play, admin)".into()),
    }
    .map_err(|e| Refusal::Invalid(format!("its claims: {e}")))?;
    let streams = match &claims["streams"] {
        Value::Null => Glob::any(),
        Value::String(p) => {
            Glob::parse(p).map_err(|e| Refusal::Invalid(format!("its claims: {e}")))?
        }
        _ => {
            return Err(Refusal::Invalid(
                "its `streams` claim must be a pattern string".into(),
            ));
        }
    };
    let holder = claims["sub"]
        .as_str()
        .unwrap_or("a JWT without `sub`")
        .to_string();
    Ok(Grant {
        rights,
        streams,
        holder: format!("JWT {holder}"),
        key,
        claims,
        internal: false,
    })
}

/// A bearer token from an `Authorization` header's value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
