//! The `[cluster]` section: the Redis directory nodes share, this node's name and the URL the
//! others reach it at, its capacity, and the token nodes pull each other's streams with.

use toml::Value;

use super::{Config, ConfigError, bad};
use crate::control::auth::Secret;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterConfig {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]` or `rediss://…`: the shared directory. `None`: a
    /// single relay, as without a cluster.
    pub redis: Option<Secret>,
    /// This node's name in the directory; empty: the host name and the HTTP port.
    pub node_id: String,
    /// The base URL other nodes and redirected clients reach this node's HTTP at; `None`:
    /// derived from `http.listen` (and `media.announced_ip` when it listens on all addresses).
    pub advertise: Option<String>,
    /// Players this node takes before it redirects new ones; 0: one per media port.
    pub max_players: usize,
    /// The token nodes send each other when they pull a stream; each node accepts it for
    /// playing any stream. Required when `[auth]` requires tokens.
    pub token: Option<Secret>,
}

/// The node id's alphabet: it appears in Redis keys, URLs and logs.
fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn string<'a>(v: &'a Value, key: &str, allowed: &str) -> Result<&'a str, ConfigError> {
    v.as_str()
        .ok_or_else(|| bad(key, v, &format!("must be a string: {allowed}")))
}

/// The redis URL without its password, for logs and `--print-config`.
pub fn redis_url_without_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let cut = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(cut);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

pub(super) fn read_cluster(
    cluster: &mut ClusterConfig,
    get: impl Fn(&str) -> Option<Value>,
) -> Result<(), ConfigError> {
    if let Some(v) = get("redis") {
        const ALLOWED: &str = "redis://HOST:PORT/DB or rediss://HOST:PORT/DB, with \
                               :PASSWORD@ before the host when Redis asks for one";
        let url = string(&v, "cluster.redis", ALLOWED)?;
        if url.is_empty() {
            cluster.redis = None;
        } else {
            let parsed = redis::IntoConnectionInfo::into_connection_info(url);
            let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
            if !scheme_ok || parsed.is_err() {
                return Err(bad(
                    "cluster.redis",
                    redis_url_without_password(url),
                    &format!("must be {ALLOWED}"),
                ));
            }
            cluster.redis = Some(Secret(url.to_string()));
        }
    }
    if let Some(v) = get("node_id") {
        const ALLOWED: &str = "1-64 letters, digits, '-', '_', '.' or ':'";
        let id = string(&v, "cluster.node_id", ALLOWED)?;
        if !id.is_empty() && !valid_node_id(id) {
            return Err(bad("cluster.node_id", id, &format!("must be {ALLOWED}")));
        }
        cluster.node_id = id.to_string();
    }
    if let Some(v) = get("advertise") {
        const ALLOWED: &str = "this node's base URL as others reach it, like \
                               http://10.0.0.7:8080 or https://node7.example.net";
        let url = string(&v, "cluster.advertise", ALLOWED)?;
        let has_host = |rest: &str| !rest.is_empty() && !rest.starts_with('/');
        cluster.advertise = match url {
            "" => None,
            u if u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .is_some_and(has_host) =>
            {
                Some(u.trim_end_matches('/').to_string())
            }
            other => {
                return Err(bad(
                    "cluster.advertise",
                    other,
                    &format!("must be {ALLOWED}"),
                ));
            }
        };
    }
    if let Some(v) = get("max_players") {
        let allowed = "must be 0 (one per media port) to 1000000";
        cluster.max_players = match v.as_integer() {
            Some(n) if (0..=1_000_000).contains(&n) => n as usize,
            Some(n) => return Err(bad("cluster.max_players", n, allowed)),
            None => {
                return Err(bad(
                    "cluster.max_players",
                    &v,
                    "must be an integer (a number of players)",
                ));
            }
        };
    }
    if let Some(v) = get("token") {
        let token = string(
            &v,
            "cluster.token",
            "a shared secret of 16 or more characters",
        )?;
        cluster.token = match token {
            "" => None,
            t if t.len() >= 16 => Some(Secret(t.to_string())),
            _ => {
                return Err(ConfigError(
                    "configuration key `cluster.token` is too short: use 16 or more characters \
                     (every node accepts it for playing any stream)"
                        .into(),
                ));
            }
        };
    }
    Ok(())
}

impl Config {
    /// Whether this relay is a node of a cluster (`cluster.redis` set).
    pub fn in_cluster(&self) -> bool {
        self.cluster.redis.is_some()
    }

    /// This node's id: `cluster.node_id`, or the host name and the HTTP port.
    pub fn node_id(&self) -> String {
        if !self.cluster.node_id.is_empty() {
            return self.cluster.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| valid_node_id(h))
            .unwrap_or_else(|| "node".into());
        format!("{host}-{}", self.http.listen.port())
    }

    /// The base URL other nodes and redirected clients use: `cluster.advertise`, or the
    /// listening address (the announced media address when it listens on all addresses).
    pub fn advertise_url(&self) -> String {
        if let Some(url) = &self.cluster.advertise {
            return url.clone();
        }
        let listen = self.http.listen;
        let ip = if listen.ip().is_unspecified() {
            self.media.announced_ip[0]
        } else {
            listen.ip()
        };
        let scheme = if self.http.tls.is_on() {
            "https"
        } else {
            "http"
        };
        format!(
            "{scheme}://{}",
            std::net::SocketAddr::new(ip, listen.port())
        )
    }

    /// Players this node takes: `cluster.max_players`, or one per media port. In single-port
    /// mode (`media.mux_port`) the port range says nothing about capacity: no limit unless set.
    pub fn max_players(&self) -> usize {
        match self.cluster.max_players {
            0 if self.media.mux_port.is_some() => usize::MAX,
            0 => self.media.ports.len(),
            n => n,
        }
    }

    /// What depends on `[cluster]` and other sections together.
    pub(super) fn check_cluster(&self) -> Result<(), ConfigError> {
        if self.in_cluster() && self.auth.enabled() && self.cluster.token.is_none() {
            return Err(ConfigError(
                "configuration key `cluster.token` is missing: [auth] requires tokens, and the \
                 nodes of a cluster pull streams from each other with a token they all accept; \
                 set the same cluster.token (16 or more characters) on every node"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `[cluster]` as `--print-config` writes it; the password and token are not printed.
    pub(super) fn cluster_toml(&self) -> String {
        let c = &self.cluster;
        let redis = c
            .redis
            .as_ref()
            .map_or(String::new(), |r| redis_url_without_password(&r.0));
        let password = match &c.redis {
            Some(r) if redis_url_without_password(&r.0) != r.0 => {
                "# redis password set (not shown)\n"
            }
            _ => "",
        };
        let token = if c.token.is_some() {
            "# token set (not shown)\n"
        } else {
            ""
        };
        format!(
            "\n[cluster]\nredis = \"{redis}\"\n{password}node_id = \"{}\"\nadvertise = \"{}\"\n\
             max_players = {}\n{token}",
            c.node_id,
            c.advertise.as_deref().unwrap_or(""),
            c.max_players
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(None, env).map_err(|e| e.to_string())
    }

    #[test]
    fn without_redis_there_is_no_cluster() {
        let config = load(&[]).unwrap();
        assert!(!config.in_cluster());
        assert!(config.to_toml().contains("[cluster]\nredis = \"\""));
    }

    #[test]
    fn cluster_keys_load_and_print_without_secrets() {
        let config = load(&[
            (
                "CORECAST_CLUSTER_REDIS",
                "redis://:hunter2hunter2@127.0.0.1:6379/2",
            ),
            ("CORECAST_CLUSTER_NODE_ID", "node-a"),
            ("CORECAST_CLUSTER_MAX_PLAYERS", "40"),
            ("CORECAST_CLUSTER_TOKEN", "0123456789abcdef"),
        ])
        .unwrap();
        assert!(config.in_cluster());
        assert_eq!(config.node_id(), "node-a");
        assert_eq!(config.max_players(), 40);
        assert_eq!(config.advertise_url(), "http://127.0.0.1:8080");
        let printed = config.to_toml();
        assert!(
            printed.contains("redis = \"redis://127.0.0.1:6379/2\""),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("0123456789abcdef"));
        assert!(printed.contains("# redis password set (not shown)"));
    }

    #[test]
    fn advertise_defaults_to_the_announced_address_when_listening_everywhere() {
        let config = load(&[
            ("CORECAST_HTTP_LISTEN", "0.0.0.0:9000"),
            ("CORECAST_MEDIA_ANNOUNCED_IP", "10.1.2.3"),
        ])
        .unwrap();
        assert_eq!(config.advertise_url(), "http://10.1.2.3:9000");
        assert_eq!(config.max_players(), 1000, "one per media port by default");
    }

    #[test]
    fn in_single_port_mode_the_port_range_sets_no_player_limit() {
        let config = load(&[("CORECAST_MEDIA_MUX_PORT", "8189")]).unwrap();
        assert_eq!(config.max_players(), usize::MAX);
        let config = load(&[
            ("CORECAST_MEDIA_MUX_PORT", "8189"),
            ("CORECAST_CLUSTER_MAX_PLAYERS", "300"),
        ])
        .unwrap();
        assert_eq!(config.max_players(), 300);
    }

    #[test]
    fn bad_cluster_values_say_what_is_allowed() {
        let e = load(&[("CORECAST_CLUSTER_REDIS", "http://127.0.0.1:6379")]).unwrap_err();
        assert!(
            e.contains("cluster.redis") && e.contains("redis://HOST:PORT/DB"),
            "{e}"
        );
        let e = load(&[("CORECAST_CLUSTER_NODE_ID", "a b")]).unwrap_err();
        assert!(e.contains("cluster.node_id"), "{e}");
        let e = load(&[("CORECAST_CLUSTER_ADVERTISE", "10.0.0.1:8080")]).unwrap_err();
        assert!(e.contains("cluster.advertise"), "{e}");
        let e = load(&[("CORECAST_CLUSTER_MAX_PLAYERS", "-1")]).unwrap_err();
        assert!(e.contains("cluster.max_players"), "{e}");
        let e = load(&[("CORECAST_CLUSTER_TOKEN", "short")]).unwrap_err();
        assert!(e.contains("cluster.token"), "{e}");
    }

    #[test]
    fn a_cluster_behind_tokens_needs_the_cluster_token() {
        let toml = "[auth]\n[[auth.tokens]]\ntoken = \"0123456789abcdef0123\"\nallow = [\"play\"]\n\
                    [cluster]\nredis = \"redis://127.0.0.1:6379\"\n";
        let e = Config::load(Some(toml), std::iter::empty()).unwrap_err();
        assert!(e.to_string().contains("cluster.token"), "{e}");
    }
}
