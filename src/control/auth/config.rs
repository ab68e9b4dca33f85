//! The front door's keys: the `[auth]` section of the configuration (static tokens, the JWT
//! key, the webhook, who reads `/metrics`), parsed and checked at start-up.

use std::fmt;

use toml::Value as Toml;

use super::{Glob, MIN_JWT_SECRET_LEN, MIN_TOKEN_LEN, Rights};

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
