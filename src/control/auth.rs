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
use toml::Value as Toml;

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

/// A token this relay sends (`cascade.token`): kept out of `Debug` output, so that it never
/// reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(secret)")
    }
}

/// One `[[auth.tokens]]` entry.
#[derive(Clone, PartialEq)]
pub struct TokenConfig {
    pub token: String,
    pub rights: Rights,
    pub streams: Glob,
    /// What logs and the webhook call this token (never the token itself).
    pub name: String,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"(secret)")
            .field("rights", &self.rights)
            .field("streams", &self.streams)
            .field("name", &self.name)
            .finish()
    }
}

/// `[auth.jwt]`: an HS256 secret, or the path of a PEM public key for RS256 or ES256.
#[derive(Clone, PartialEq)]
pub enum JwtConfig {
    Secret(String),
    PublicKey(String),
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtConfig::Secret(_) => f.write_str("Secret(secret)"),
            JwtConfig::PublicKey(path) => write!(f, "PublicKey({path})"),
        }
    }
}

/// `[auth.webhook]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    pub timeout: std::time::Duration,
    /// Certificates (PEM) to trust for an https:// webhook, besides the system's.
    pub ca_file: Option<String>,
}

/// `auth.metrics`: who may read `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetricsAccess {
    #[default]
    Open,
    Admin,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
    pub jwt: Option<JwtConfig>,
    pub webhook: Option<WebhookConfig>,
    pub metrics: MetricsAccess,
}

/// The keys of `[auth]` and its tables, for the configuration's list of known keys.
pub const KEYS: &[&str] = &["tokens", "jwt", "webhook", "metrics"];
const TOKEN_KEYS: &[&str] = &["token", "allow", "streams", "name"];
const JWT_KEYS: &[&str] = &["secret", "public_key"];
const WEBHOOK_KEYS: &[&str] = &["url", "timeout_ms", "ca_file"];

fn table<'a>(v: &'a Toml, key: &str, known: &[&str]) -> Result<&'a toml::Table, String> {
    let Toml::Table(t) = v else {
        return Err(format!("`{key}` must be a table"));
    };
    if let Some(unknown) = t.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "unknown configuration key `{key}.{unknown}`; `{key}` knows {}",
            known.join(", ")
        ));
    }
    Ok(t)
}

fn text<'a>(v: Option<&'a Toml>, key: &str) -> Result<Option<&'a str>, String> {
    match v {
        None => Ok(None),
        Some(Toml::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "configuration key `{key}` has value `{other}`: must be a string"
        )),
    }
}

impl AuthConfig {
    /// Whether any token is required at all; without, the relay is open as before.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    /// Reads the `[auth]` table; errors name the key and what is allowed.
    pub fn parse(section: &Toml) -> Result<AuthConfig, String> {
        let auth = table(section, "auth", KEYS)?;
        let mut config = AuthConfig::default();
        if let Some(v) = text(auth.get("metrics"), "auth.metrics")? {
            config.metrics = match v {
                "open" => MetricsAccess::Open,
                "admin" => MetricsAccess::Admin,
                other => {
                    return Err(format!(
                        "configuration key `auth.metrics` has value `{other}`: must be \"open\" \
                         or \"admin\""
                    ));
                }
            };
        }
        match auth.get("tokens") {
            None => {}
            Some(Toml::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    config.tokens.push(parse_token(item, i)?);
                }
            }
            Some(_) => {
                return Err(
                    "`auth.tokens` must be an array of tables: write each as [[auth.tokens]]"
                        .into(),
                );
            }
        }
        if let Some(jwt) = auth.get("jwt") {
            let jwt = table(jwt, "auth.jwt", JWT_KEYS)?;
            let secret = text(jwt.get("secret"), "auth.jwt.secret")?;
            let public_key = text(jwt.get("public_key"), "auth.jwt.public_key")?;
            config.jwt = match (secret, public_key) {
                (Some(_), Some(_)) => {
                    return Err("`auth.jwt` takes `secret` (HS256) or `public_key` (RS256, \
                                ES256), not both"
                        .into());
                }
                (Some(s), None) if s.len() < MIN_JWT_SECRET_LEN => {
                    return Err(format!(
                        "`auth.jwt.secret` has {} bytes: an HS256 secret needs at least \
                         {MIN_JWT_SECRET_LEN}",
                        s.len()
                    ));
                }
                (Some(s), None) => Some(JwtConfig::Secret(s.to_string())),
                (None, Some(path)) => Some(JwtConfig::PublicKey(path.to_string())),
                (None, None) if jwt.is_empty() => None,
                (None, None) => {
                    return Err("`auth.jwt` needs `secret` or `public_key`".into());
                }
            };
        }
        if let Some(hook) = auth.get("webhook") {
            let hook = table(hook, "auth.webhook", WEBHOOK_KEYS)?;
            let url = text(hook.get("url"), "auth.webhook.url")?.unwrap_or("");
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "configuration key `auth.webhook.url` has value `{url}`: must be an \
                     http:// or https:// URL"
                ));
            }
            let timeout_ms = match hook.get("timeout_ms") {
                None => 2000,
                Some(Toml::Integer(n)) if (10..=60_000).contains(n) => *n as u64,
                Some(other) => {
                    return Err(format!(
                        "configuration key `auth.webhook.timeout_ms` has value `{other}`: must \
                         be 10 to 60000 milliseconds"
                    ));
                }
            };
            config.webhook = Some(WebhookConfig {
                url: url.to_string(),
                timeout: std::time::Duration::from_millis(timeout_ms),
                ca_file: text(hook.get("ca_file"), "auth.webhook.ca_file")?.map(str::to_string),
            });
        }
        Ok(config)
    }

    /// `[auth]` as `--print-config` shows it: secrets are not printed, only that they are set.
    pub fn to_toml(&self) -> String {
        let metrics = match self.metrics {
            MetricsAccess::Open => "open",
            MetricsAccess::Admin => "admin",
        };
        let mut out = format!("\n[auth]\nmetrics = \"{metrics}\"\n");
        for token in &self.tokens {
            out.push_str(&format!(
                "# [[auth.tokens]] name = \"{}\", allow = \"{}\", streams = \"{}\" (token not shown)\n",
                token.name, token.rights, token.streams
            ));
        }
        match &self.jwt {
            Some(JwtConfig::Secret(_)) => out.push_str("# [auth.jwt] secret set (not shown)\n"),
            Some(JwtConfig::PublicKey(p)) => {
                out.push_str(&format!("\n[auth.jwt]\npublic_key = \"{p}\"\n"))
            }
            None => {}
        }
        if let Some(hook) = &self.webhook {
            out.push_str(&format!(
                "\n[auth.webhook]\nurl = \"{}\"\ntimeout_ms = {}\n",
                hook.url,
                hook.timeout.as_millis()
            ));
            if let Some(ca) = &hook.ca_file {
                out.push_str(&format!("ca_file = \"{ca}\"\n"));
            }
        }
        out
    }
}

fn parse_token(item: &Toml, index: usize) -> Result<TokenConfig, String> {
    let key = format!("auth.tokens[{index}]");
    let t = table(item, &key, TOKEN_KEYS)?;
    let token = text(t.get("token"), &format!("{key}.token"))?
        .ok_or_else(|| format!("`{key}` needs `token`"))?;
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{key}.token` must be at least {MIN_TOKEN_LEN} characters without spaces (a long \
             random string; `openssl rand -hex 24` makes one)"
        ));
    }
    let rights = match t.get("allow") {
        Some(Toml::Array(names)) => Rights::from_names(names.iter().map(Toml::as_str)),
        Some(Toml::String(name)) => Rights::from_names([Some(name.as_str())]),
        Some(_) | None => Err(format!(
            "`{key}.allow` must list rights, like [\"publish\", \"play\"]"
        )),
    }
    .map_err(|e| format!("`{key}.allow`: {e}"))?;
    let streams = match text(t.get("streams"), &format!("{key}.streams"))? {
        Some(p) => Glob::parse(p).map_err(|e| format!("`{key}.streams`: {e}"))?,
        None => Glob::any(),
    };
    let name = text(t.get("name"), &format!("{key}.name"))?
        .map_or_else(|| format!("token {}", index + 1), str::to_string);
    Ok(TokenConfig {
        token: token.to_string(),
        rights,
        streams,
        name,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn config(text: &str) -> Result<AuthConfig, String> {
        AuthConfig::parse(&text.parse::<toml::Table>().unwrap()["auth"])
    }

    fn hs256(claims: &Value) -> String {
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = hmac::sign(&key, format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    fn with_tokens() -> Authenticator {
        let c = config(&format!(
            "[[auth.tokens]]\ntoken = \"publisher-token-0001\"\nallow = [\"publish\"]\n\
             streams = \"cam*\"\nname = \"studio\"\n[[auth.tokens]]\ntoken = \
             \"admin-token-000000001\"\nallow = [\"admin\", \"play\"]\n[auth.jwt]\nsecret = \
             \"{SECRET}\"\n"
        ))
        .unwrap();
        Authenticator::new(&c, "internal-token-0000000000").unwrap()
    }

    #[test]
    fn globs_match_runs_and_single_characters() {
        let g = Glob::parse("cam*").unwrap();
        assert!(g.matches("cam") && g.matches("cam-1") && !g.matches("xcam"));
        let g = Glob::parse("*-hd-?").unwrap();
        assert!(g.matches("a-hd-1") && g.matches("-hd-x") && !g.matches("a-hd-12"));
        assert!(Glob::parse("a*b*c").unwrap().matches("abxbyc"));
        assert!(!Glob::parse("a*b*c").unwrap().matches("abxby"));
        assert!(Glob::any().matches("anything.at.all"));
        assert!(Glob::parse("exact").unwrap().matches("exact"));
        assert!(!Glob::parse("exact").unwrap().matches("exact2"));
        assert!(Glob::parse("").is_err());
    }

    #[test]
    fn static_tokens_grant_their_rights_on_their_streams() {
        let auth = with_tokens();
        assert_eq!(auth.authenticate(None, NOW), Err(Refusal::Missing));
        assert_eq!(auth.authenticate(Some("  "), NOW), Err(Refusal::Missing));
        let grant = auth
            .authenticate(Some("publisher-token-0001"), NOW)
            .unwrap();
        assert_eq!(grant.holder, "studio");
        assert!(grant.check(Right::Publish, Some("cam-1")).is_ok());
        let wrong_stream = grant.check(Right::Publish, Some("other")).unwrap_err();
        assert_eq!(wrong_stream.status(), 403);
        assert!(wrong_stream.to_string().contains("`cam*`, not `other`"));
        let wrong_right = grant.check(Right::Play, Some("cam-1")).unwrap_err();
        assert!(wrong_right.to_string().contains("allows publish, not play"));
        let unknown = auth
            .authenticate(Some("publisher-token-0002"), NOW)
            .unwrap_err();
        assert_eq!(unknown.status(), 401);
        assert!(unknown.challenge().unwrap().contains("invalid_token"));
        // Admin covers the API whatever the stream pattern.
        let admin = auth
            .authenticate(Some("admin-token-000000001"), NOW)
            .unwrap();
        assert!(admin.check(Right::Admin, None).is_ok());
        assert!(
            auth.authenticate(Some("internal-token-0000000000"), NOW)
                .unwrap()
                .internal
        );
    }

    #[test]
    fn hs256_jwts_carry_rights_streams_and_expiry() {
        let auth = with_tokens();
        let good = hs256(
            &json!({"sub": "alice", "exp": NOW + 60, "allow": ["play"], "streams": "live-*"}),
        );
        let grant = auth.authenticate(Some(&good), NOW).unwrap();
        assert_eq!(grant.holder, "JWT alice");
        assert!(grant.check(Right::Play, Some("live-7")).is_ok());
        assert!(grant.check(Right::Play, Some("cam")).is_err());
        assert!(grant.check(Right::Publish, Some("live-7")).is_err());
        assert_eq!(grant.claims["sub"], "alice");

        let expired = hs256(&json!({"exp": NOW - 3600, "allow": ["play"]}));
        let e = auth.authenticate(Some(&expired), NOW).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let within_leeway = hs256(&json!({"exp": NOW - 10, "allow": ["play"]}));
        assert!(auth.authenticate(Some(&within_leeway), NOW).is_ok());
        let no_exp = hs256(&json!({"allow": ["play"]}));
        assert!(
            auth.authenticate(Some(&no_exp), NOW)
                .unwrap_err()
                .to_string()
                .contains("exp")
        );
        let early = hs256(&json!({"exp": NOW + 7200, "nbf": NOW + 3600, "allow": ["play"]}));
        assert!(auth.authenticate(Some(&early), NOW).is_err());

        // A changed payload breaks the signature.
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(
            json!({"sub": "alice", "exp": NOW + 60, "allow": ["play", "admin"]}).to_string(),
        );
        let forged = parts.join(".");
        assert!(
            auth.authenticate(Some(&forged), NOW)
                .unwrap_err()
                .to_string()
                .contains("signature")
        );
        // `alg: none` and other algorithms are refused before any signature is looked at.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(json!({"exp": NOW + 60, "allow": ["admin"]}).to_string())
        );
        assert!(
            auth.authenticate(Some(&none), NOW)
                .unwrap_err()
                .to_string()
                .contains("none")
        );
    }

    #[test]
    fn es256_jwts_verify_with_a_pem_public_key() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(spki.as_ref())
        );
        let path = std::env::temp_dir().join(format!("corecast-es256-{}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        let c = AuthConfig {
            jwt: Some(JwtConfig::PublicKey(path.display().to_string())),
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(&c, "internal-token-0000000000").unwrap();
        let _ = std::fs::remove_file(&path);
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
        let body =
            URL_SAFE_NO_PAD.encode(json!({"exp": NOW + 60, "allow": ["publish"]}).to_string());
        let signing_input = format!("{head}.{body}");
        let sig = pair.sign(&rng, signing_input.as_bytes()).unwrap();
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        assert!(auth.authenticate(Some(&token), NOW).unwrap().rights.publish);
        // An HS256 token made with the public key as its secret is refused (algorithm confusion).
        let confused = hs256(&json!({"exp": NOW + 60, "allow": ["admin"]}));
        assert!(
            auth.authenticate(Some(&confused), NOW)
                .unwrap_err()
                .to_string()
                .contains("HS256")
        );
    }

    #[test]
    fn configuration_errors_say_what_is_wrong() {
        let e = config("[[auth.tokens]]\ntoken = \"short\"\nallow = [\"play\"]\n").unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
        let e = config("[[auth.tokens]]\ntoken = \"long-enough-token-1\"\nallow = [\"fly\"]\n")
            .unwrap_err();
        assert!(e.contains("`fly` is not a right"), "{e}");
        let e = config("[auth.jwt]\nsecret = \"short\"\n").unwrap_err();
        assert!(e.contains("at least 32"), "{e}");
        let e = config("[auth.webhook]\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(e.contains("auth.webhook.url"), "{e}");
        let e = config("[auth]\nmetrics = \"secret\"\n").unwrap_err();
        assert!(e.contains("auth.metrics"), "{e}");
        let e = config("[auth.jwt]\nsecret = \"x\"\nkey = 1\n").unwrap_err();
        assert!(e.contains("auth.jwt.key"), "{e}");
        let ok =
            config("[auth]\nmetrics = \"admin\"\n[auth.webhook]\nurl = \"http://127.0.0.1:9/h\"\n")
                .unwrap();
        assert!(!ok.enabled());
        assert_eq!(ok.webhook.unwrap().timeout.as_millis(), 2000);
    }

    #[test]
    fn tokens_never_show_in_debug_output() {
        let c =
            config("[[auth.tokens]]\ntoken = \"do-not-print-me-123\"\nallow = \"play\"\n").unwrap();
        let shown = format!("{c:?}{}", c.to_toml());
        assert!(!shown.contains("do-not-print-me"), "{shown}");
    }

    #[test]
    fn bearer_headers_parse_case_insensitively() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
