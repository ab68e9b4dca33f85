//! Configuration: built-in defaults, then a TOML file, then `CORECAST_<SECTION>_<KEY>`
//! environment variables. Every value is checked here, and a bad one stops start-up with a
//! message that names the key, the value and what is allowed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::{Table, Value};

use crate::control::auth::{AuthConfig, Secret};
use crate::control::limits::{AddressList, Cidr};
use crate::control::tls::TlsSetting;

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub workers: WorkersConfig,
    pub cascade: CascadeConfig,
    /// Tokens, JWTs and the admission webhook (`[auth]`); none configured: open as before.
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CascadeConfig {
    /// `http://HOST:PORT` of an origin relay: a player asking for a stream this relay does not
    /// have makes it pull the stream from there.
    pub origin: Option<String>,
    /// Bearer token sent to other relays (the origin, push targets).
    pub token: Option<Secret>,
    /// PEM certificates trusted for https:// relays besides the system's CAs.
    pub ca_file: Option<String>,
    /// Accept any certificate from other relays (self-signed trials only).
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Where the HTTP server (WHIP, WHEP, API, page) listens.
    pub listen: SocketAddr,
    /// Time a client has to finish a request's header once it has sent its first byte.
    pub header_timeout: Duration,
    /// A connection on which nothing moves for this long closes (keep-alive between requests,
    /// a silent new connection, a stalled request or response).
    pub idle_timeout: Duration,
    /// Open connections from addresses not in `limit_exempt`; more are refused.
    pub max_connections: usize,
    /// Sessions (WHIP, WHEP, WebSocket) one client address may hold at once; 0: no limit.
    pub max_sessions_per_ip: usize,
    /// Requests (and WebSocket commands) per second per client address; 0: no limit.
    pub rate_limit: u32,
    /// Requests a client may send at once before `rate_limit` applies.
    pub rate_burst: u32,
    /// Addresses and networks no per-client limit (nor `max_connections`) applies to.
    pub limit_exempt: AddressList,
    /// TLS on the listener: off, self-signed, or certificate and key files.
    pub tls: TlsSetting,
    /// A plain-HTTP listener that only redirects to the HTTPS one.
    pub redirect_listen: Option<SocketAddr>,
    /// Sessions one token may hold at once; 0: no limit.
    pub max_sessions_per_token: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// The address media sockets bind to.
    pub bind_ip: IpAddr,
    /// The address written into ICE candidates.
    pub announced_ip: IpAddr,
    /// Inclusive range of media ports; each session takes one.
    pub ports: PortRange,
    /// Which host candidates answers carry.
    pub protocol: MediaProtocol,
    pub udp_recv_buffer: usize,
    pub udp_send_buffer: usize,
    pub tcp_recv_buffer: usize,
    pub tcp_send_buffer: usize,
    /// Frames queued per ICE-TCP connection before whole frames are dropped (slow players).
    pub tcp_send_queue: usize,
    /// A session with no valid STUN for this long ends and frees its port.
    pub ice_timeout: Duration,
    /// Send each UDP player a video frame's packets in one GSO send (`UDP_SEGMENT`).
    pub gso: bool,
    /// Longest a packet waits for the rest of its frame before its burst leaves anyway.
    pub gso_hold: Duration,
    /// A cap on what each publisher sends (kbit/s), told to it as REMB; 0 = none.
    pub max_publish_kbps: u32,
}

/// `media.protocol`: the transports offered in ICE candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaProtocol {
    Udp,
    /// ICE-TCP passive candidates only (RFC 6544), for networks that block UDP.
    Tcp,
    /// Both; UDP has the higher priority, TCP is the fallback.
    All,
}

impl MediaProtocol {
    pub fn udp(self) -> bool {
        matches!(self, MediaProtocol::Udp | MediaProtocol::All)
    }

    pub fn tcp(self) -> bool {
        matches!(self, MediaProtocol::Tcp | MediaProtocol::All)
    }
}

impl fmt::Display for MediaProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MediaProtocol::Udp => "udp",
            MediaProtocol::Tcp => "tcp",
            MediaProtocol::All => "all",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkersConfig {
    /// Worker threads; 0 means one per core.
    pub count: usize,
    /// Pin each worker to its own core.
    pub pin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        (self.last - self.first) as usize + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A configuration error, worded for the person running the relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn bad(key: &str, value: impl fmt::Display, allowed: &str) -> ConfigError {
    ConfigError(format!(
        "configuration key `{key}` has value `{value}`: {allowed}"
    ))
}

const MIN_SOCKET_BUFFER: i64 = 4096;
const MAX_SOCKET_BUFFER: i64 = 1 << 30;

/// Every key the relay knows, with its section; unknown keys are errors, so typos surface.
const KEYS: &[(&str, &[&str])] = &[
    (
        "http",
        &[
            "listen",
            "header_timeout_ms",
            "idle_timeout_ms",
            "max_connections",
            "max_sessions_per_ip",
            "rate_limit",
            "rate_burst",
            "limit_exempt",
            "tls",
            "tls_cert",
            "tls_key",
            "redirect_listen",
            "max_sessions_per_token",
        ],
    ),
    (
        "media",
        &[
            "bind_ip",
            "announced_ip",
            "ports",
            "protocol",
            "udp_recv_buffer",
            "udp_send_buffer",
            "tcp_recv_buffer",
            "tcp_send_buffer",
            "tcp_send_queue",
            "ice_timeout",
            "gso",
            "gso_hold_us",
            "max_publish_kbps",
        ],
    ),
    ("workers", &["count", "pin"]),
    ("cascade", &["origin", "token", "ca_file", "insecure"]),
    ("auth", crate::control::auth::KEYS),
];

/// Keys of tables inside a section, reachable from the environment as
/// `CORECAST_<SECTION>_<TABLE>_<KEY>` (`CORECAST_AUTH_JWT_SECRET`). Arrays of tables
/// (`[[auth.tokens]]`) are for the file only.
const NESTED_KEYS: &[(&str, &str, &[&str])] = &[
    ("auth", "jwt", &["secret", "public_key"]),
    ("auth", "webhook", &["url", "timeout_ms", "ca_file"]),
];

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig {
                listen: "127.0.0.1:8080".parse().expect("valid literal"),
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(30),
                max_connections: 10_000,
                max_sessions_per_ip: 100,
                rate_limit: 20,
                rate_burst: 50,
                // A load test from this machine runs unlimited; on the internet every other
                // address is limited.
                limit_exempt: AddressList(vec![
                    Cidr::parse("127.0.0.0/8").expect("valid literal"),
                    Cidr::parse("::1").expect("valid literal"),
                ]),
                tls: TlsSetting::Off,
                redirect_listen: None,
                max_sessions_per_token: 0,
            },
            media: MediaConfig {
                bind_ip: "127.0.0.1".parse().expect("valid literal"),
                announced_ip: "127.0.0.1".parse().expect("valid literal"),
                ports: PortRange {
                    first: 31000,
                    last: 31999,
                },
                protocol: MediaProtocol::All,
                udp_recv_buffer: 1 << 20,
                udp_send_buffer: 1 << 20,
                tcp_recv_buffer: 1 << 20,
                tcp_send_buffer: 1 << 20,
                tcp_send_queue: 512,
                ice_timeout: Duration::from_secs(30),
                gso: true,
                gso_hold: Duration::from_micros(1000),
                max_publish_kbps: 0,
            },
            workers: WorkersConfig {
                count: 0,
                pin: true,
            },
            cascade: CascadeConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// The machine's memory (`MemTotal` in /proc/meminfo), when it can be read.
fn memory_total() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

impl Config {
    /// Builds the configuration from an optional TOML text and environment pairs.
    pub fn load(
        toml_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: Table = match toml_text {
            Some(text) => text
                .parse()
                .map_err(|e| ConfigError(format!("configuration file is not valid TOML: {e}")))?,
            None => Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("CORECAST_") else {
                continue;
            };
            let lower = rest.to_ascii_lowercase();
            if let Some((section, inner, key)) = NESTED_KEYS.iter().find_map(|(s, t, keys)| {
                let key = lower.strip_prefix(s)?.strip_prefix('_')?;
                let key = key.strip_prefix(t)?.strip_prefix('_')?;
                keys.contains(&key).then_some((*s, *t, key))
            }) {
                let entry = table
                    .entry(section)
                    .or_insert_with(|| Value::Table(Table::new()));
                let inner_entry = match entry {
                    Value::Table(t) => t.entry(inner).or_insert_with(|| Value::Table(Table::new())),
                    _ => return Err(ConfigError(format!("`{section}` must be a table"))),
                };
                let Value::Table(inner_table) = inner_entry else {
                    return Err(ConfigError(format!("`{section}.{inner}` must be a table")));
                };
                inner_table.insert(key.to_string(), env_value(&value));
                continue;
            }
            let Some((section, key)) = KEYS.iter().find_map(|(section, keys)| {
                let key = lower.strip_prefix(section)?.strip_prefix('_')?;
                keys.contains(&key).then_some((*section, key))
            }) else {
                return Err(ConfigError(format!(
                    "environment variable `{name}` names no configuration key; known keys: {}",
                    known_keys()
                )));
            };
            let entry = table
                .entry(section)
                .or_insert_with(|| Value::Table(Table::new()));
            let Value::Table(section_table) = entry else {
                return Err(ConfigError(format!("`{section}` must be a table")));
            };
            section_table.insert(key.to_string(), env_value(&value));
        }
        Config::from_table(&table)
    }

    fn from_table(table: &Table) -> Result<Config, ConfigError> {
        for (section, value) in table {
            let Some((_, keys)) = KEYS.iter().find(|(s, _)| s == section) else {
                return Err(ConfigError(format!(
                    "unknown configuration section `{section}`; known keys: {}",
                    known_keys()
                )));
            };
            let Value::Table(inner) = value else {
                return Err(ConfigError(format!("`{section}` must be a table")));
            };
            for key in inner.keys() {
                if !keys.contains(&key.as_str()) {
                    return Err(ConfigError(format!(
                        "unknown configuration key `{section}.{key}`; known keys: {}",
                        known_keys()
                    )));
                }
            }
        }
        let get = |section: &str, key: &str| table.get(section).and_then(|s| s.get(key));
        let mut config = Config::default();

        if let Some(v) = get("http", "listen") {
            config.http.listen =
                parse_str(v, "http.listen", "an address and port like 127.0.0.1:8080")?;
        }
        for (key, slot, max) in [
            (
                "header_timeout_ms",
                &mut config.http.header_timeout,
                600_000,
            ),
            // Above the longest a handler waits on others (a cascade pull: 20 s) is safest.
            ("idle_timeout_ms", &mut config.http.idle_timeout, 3_600_000),
        ] {
            if let Some(v) = get("http", key) {
                let name = format!("http.{key}");
                let n = int(v, &name, "a number of milliseconds")?;
                if !(100..=max).contains(&n) {
                    return Err(bad(&name, n, &format!("must be 100 to {max} milliseconds")));
                }
                *slot = Duration::from_millis(n as u64);
            }
        }
        if let Some(v) = get("http", "max_connections") {
            let n = int(v, "http.max_connections", "a number of connections")?;
            if !(1..=1_000_000).contains(&n) {
                return Err(bad("http.max_connections", n, "must be 1 to 1000000"));
            }
            config.http.max_connections = n as usize;
        }
        if let Some(v) = get("http", "max_sessions_per_ip") {
            let n = int(v, "http.max_sessions_per_ip", "a number of sessions")?;
            if !(0..=1_000_000).contains(&n) {
                return Err(bad(
                    "http.max_sessions_per_ip",
                    n,
                    "must be 0 (no limit) to 1000000",
                ));
            }
            config.http.max_sessions_per_ip = n as usize;
        }
        for (key, slot, min) in [
            ("rate_limit", &mut config.http.rate_limit, 0),
            ("rate_burst", &mut config.http.rate_burst, 1),
        ] {
            if let Some(v) = get("http", key) {
                let name = format!("http.{key}");
                let n = int(v, &name, "a number of requests")?;
                if !(min..=1_000_000).contains(&n) {
                    let allowed = if min == 0 {
                        "must be 0 (no limit) to 1000000 requests per second"
                    } else {
                        "must be 1 to 1000000 requests"
                    };
                    return Err(bad(&name, n, allowed));
                }
                *slot = n as u32;
            }
        }
        if let Some(v) = get("http", "limit_exempt") {
            config.http.limit_exempt = parse_address_list(v, "http.limit_exempt")?;
        }
        config.http.tls = TlsSetting::parse(
            get("http", "tls"),
            get("http", "tls_cert"),
            get("http", "tls_key"),
        )
        .map_err(ConfigError)?;
        match get("http", "redirect_listen") {
            None => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(v) => {
                let addr: SocketAddr = parse_str(
                    v,
                    "http.redirect_listen",
                    "an address and port like 0.0.0.0:80",
                )?;
                if !config.http.tls.is_on() {
                    return Err(bad(
                        "http.redirect_listen",
                        addr,
                        "redirects to HTTPS, so it needs http.tls (or http.tls_cert and \
                         http.tls_key)",
                    ));
                }
                config.http.redirect_listen = Some(addr);
            }
        }
        if let Some(v) = get("http", "max_sessions_per_token") {
            let n = int(v, "http.max_sessions_per_token", "a number of sessions")?;
            if !(0..=1_000_000).contains(&n) {
                return Err(bad(
                    "http.max_sessions_per_token",
                    n,
                    "must be 0 (no limit) to 1000000",
                ));
            }
            config.http.max_sessions_per_token = n as usize;
        }
        if let Some(v) = table.get("auth") {
            config.auth = AuthConfig::parse(v).map_err(ConfigError)?;
        }
        if let Some(v) = get("media", "bind_ip") {
            config.media.bind_ip = parse_str(v, "media.bind_ip", "an IPv4 or IPv6 address")?;
        }
        if let Some(v) = get("media", "announced_ip") {
            config.media.announced_ip =
                parse_str(v, "media.announced_ip", "an IPv4 or IPv6 address")?;
            if config.media.announced_ip.is_unspecified() {
                return Err(bad(
                    "media.announced_ip",
                    config.media.announced_ip,
                    "must be an address clients can reach, not the unspecified address",
                ));
            }
        }
        if let Some(v) = get("media", "ports") {
            config.media.ports = parse_port_range(v)?;
        }
        if let Some(v) = get("media", "protocol") {
            config.media.protocol = match v {
                Value::String(s) if s == "udp" => MediaProtocol::Udp,
                Value::String(s) if s == "tcp" => MediaProtocol::Tcp,
                Value::String(s) if s == "all" => MediaProtocol::All,
                other => {
                    return Err(bad(
                        "media.protocol",
                        other,
                        "must be \"udp\", \"tcp\" or \"all\"",
                    ));
                }
            };
        }
        if let Some(v) = get("media", "tcp_send_queue") {
            let n = int(v, "media.tcp_send_queue", "a number of frames")?;
            if !(16..=65536).contains(&n) {
                return Err(bad("media.tcp_send_queue", n, "must be 16 to 65536 frames"));
            }
            config.media.tcp_send_queue = n as usize;
        }
        for (key, slot) in [
            ("udp_recv_buffer", &mut config.media.udp_recv_buffer),
            ("udp_send_buffer", &mut config.media.udp_send_buffer),
            ("tcp_recv_buffer", &mut config.media.tcp_recv_buffer),
            ("tcp_send_buffer", &mut config.media.tcp_send_buffer),
        ] {
            if let Some(v) = get("media", key) {
                let name = format!("media.{key}");
                let n = int(v, &name, "a size in bytes")?;
                if !(MIN_SOCKET_BUFFER..=MAX_SOCKET_BUFFER).contains(&n) {
                    return Err(bad(&name, n, "must be between 4096 and 1073741824 bytes"));
                }
                *slot = n as usize;
            }
        }
        if let Some(v) = get("media", "ice_timeout") {
            let n = int(v, "media.ice_timeout", "a number of seconds")?;
            if !(1..=3600).contains(&n) {
                return Err(bad("media.ice_timeout", n, "must be 1 to 3600 seconds"));
            }
            config.media.ice_timeout = Duration::from_secs(n as u64);
        }
        if let Some(v) = get("media", "gso") {
            config.media.gso = match v {
                Value::Boolean(b) => *b,
                other => return Err(bad("media.gso", other, "must be true or false")),
            };
        }
        if let Some(v) = get("media", "gso_hold_us") {
            let n = int(v, "media.gso_hold_us", "a number of microseconds")?;
            if !(0..=20_000).contains(&n) {
                return Err(bad(
                    "media.gso_hold_us",
                    n,
                    "must be 0 to 20000 microseconds",
                ));
            }
            config.media.gso_hold = Duration::from_micros(n as u64);
        }
        if let Some(v) = get("media", "max_publish_kbps") {
            let n = int(v, "media.max_publish_kbps", "a bitrate in kbit/s")?;
            if !(0..=1_000_000).contains(&n) {
                return Err(bad(
                    "media.max_publish_kbps",
                    n,
                    "must be 0 (no cap) to 1000000 kbit/s",
                ));
            }
            config.media.max_publish_kbps = n as u32;
        }
        if let Some(v) = get("workers", "count") {
            let n = int(v, "workers.count", "a number of threads")?;
            let max = crate::worker::MAX_WORKERS as i64;
            if !(0..=max).contains(&n) {
                let pairs = n.max(0) as usize * (n.max(1) as usize - 1);
                let bytes = pairs
                    * crate::worker::mesh::QUEUE_CAPACITY_MIN
                    * crate::worker::mesh::QUEUE_SLOT_BYTES;
                return Err(bad(
                    "workers.count",
                    n,
                    &format!(
                        "must be 0 (one per core) to {max}: the workers' cross-worker queues \
                         number count × (count − 1) = {pairs}, which at {} slots of {} bytes \
                         each would hold {} MiB before a packet flows",
                        crate::worker::mesh::QUEUE_CAPACITY_MIN,
                        crate::worker::mesh::QUEUE_SLOT_BYTES,
                        bytes >> 20
                    ),
                ));
            }
            config.workers.count = n as usize;
        }
        if let Some(v) = get("workers", "pin") {
            config.workers.pin = match v {
                Value::Boolean(b) => *b,
                other => return Err(bad("workers.pin", other, "must be true or false")),
            };
        }
        if let Some(v) = get("cascade", "origin") {
            const ALLOWED: &str = "must be the origin relay's base URL, like https://10.0.0.5:8443 or http://10.0.0.5:8080";
            match v {
                Value::String(s) if s.is_empty() => config.cascade.origin = None,
                Value::String(s)
                    if (s.starts_with("http://") && s.len() > 7)
                        || (s.starts_with("https://") && s.len() > 8) =>
                {
                    config.cascade.origin = Some(s.trim_end_matches('/').to_string())
                }
                other => return Err(bad("cascade.origin", other, ALLOWED)),
            }
        }
        match get("cascade", "token") {
            None => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => config.cascade.token = Some(Secret(s.clone())),
            Some(_) => {
                return Err(ConfigError(
                    "configuration key `cascade.token` must be a string".into(),
                ));
            }
        }
        match get("cascade", "ca_file") {
            None => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => config.cascade.ca_file = Some(s.clone()),
            Some(other) => {
                return Err(bad(
                    "cascade.ca_file",
                    other,
                    "must be the path of a PEM file",
                ));
            }
        }
        if let Some(v) = get("cascade", "insecure") {
            config.cascade.insecure = match v {
                Value::Boolean(b) => *b,
                other => return Err(bad("cascade.insecure", other, "must be true or false")),
            };
        }
        Ok(config)
    }

    /// Worker threads to start: `workers.count`, or one per available core when it is 0
    /// (at most `worker::MAX_WORKERS`).
    pub fn worker_count(&self) -> usize {
        if self.workers.count > 0 {
            self.workers.count
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(crate::worker::MAX_WORKERS)
        }
    }

    /// Checks what depends on more than one key (run once the worker count is known).
    pub fn validate_for_workers(&self, workers: usize) -> Result<(), ConfigError> {
        if self.media.ports.len() < workers {
            return Err(bad(
                "media.ports",
                self.media.ports,
                &format!("needs at least one port per worker ({workers} workers)"),
            ));
        }
        let (mesh, per_worker) = crate::worker::data_plane_memory(workers);
        let needed = mesh + workers * per_worker;
        if let Some(total) = memory_total()
            && needed > total
        {
            return Err(bad(
                "workers.count",
                workers,
                &format!(
                    "needs {} MiB for the data plane ({} MiB of cross-worker queues + {workers} \
                     workers × {} MiB of packet buffers) but this machine has {} MiB",
                    needed >> 20,
                    mesh >> 20,
                    per_worker >> 20,
                    total >> 20
                ),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        format!(
            "[http]\nlisten = \"{}\"\nheader_timeout_ms = {}\nidle_timeout_ms = {}\nmax_connections = {}\n\
             max_sessions_per_ip = {}\nrate_limit = {}\nrate_burst = {}\nlimit_exempt = {}\n{}\n[media]\nbind_ip = \"{}\"\nannounced_ip = \"{}\"\nports = \"{}\"\nprotocol = \"{}\"\n\
             udp_recv_buffer = {}\nudp_send_buffer = {}\ntcp_recv_buffer = {}\ntcp_send_buffer = {}\n\
             tcp_send_queue = {}\nice_timeout = {}\ngso = {}\ngso_hold_us = {}\nmax_publish_kbps = {}\n\n[workers]\ncount = {}\npin = {}\n",
            self.http.listen,
            self.http.header_timeout.as_millis(),
            self.http.idle_timeout.as_millis(),
            self.http.max_connections,
            self.http.max_sessions_per_ip,
            self.http.rate_limit,
            self.http.rate_burst,
            self.http.limit_exempt,
            self.front_door_http_toml(),
            self.media.bind_ip,
            self.media.announced_ip,
            self.media.ports,
            self.media.protocol,
            self.media.udp_recv_buffer,
            self.media.udp_send_buffer,
            self.media.tcp_recv_buffer,
            self.media.tcp_send_buffer,
            self.media.tcp_send_queue,
            self.media.ice_timeout.as_secs(),
            self.media.gso,
            self.media.gso_hold.as_micros(),
            self.media.max_publish_kbps,
            self.workers.count,
            self.workers.pin,
        ) + &format!(
            "\n[cascade]\norigin = \"{}\"\n",
            self.cascade.origin.as_deref().unwrap_or("")
        ) + &self.front_door_toml()
    }

    /// The `[http]` keys of TLS and tokens, as `--print-config` writes them.
    fn front_door_http_toml(&self) -> String {
        let http = &self.http;
        let redirect = http
            .redirect_listen
            .map_or(String::new(), |a| a.to_string());
        format!(
            "{}redirect_listen = \"{redirect}\"\nmax_sessions_per_token = {}\n",
            http.tls.to_toml(),
            http.max_sessions_per_token
        )
    }

    /// The rest of `[cascade]` and `[auth]`; tokens and secrets are not printed.
    fn front_door_toml(&self) -> String {
        let cascade = &self.cascade;
        let token = if cascade.token.is_some() {
            "# token set (not shown)\n"
        } else {
            ""
        };
        format!(
            "ca_file = \"{}\"\ninsecure = {}\n{token}{}",
            cascade.ca_file.as_deref().unwrap_or(""),
            cascade.insecure,
            self.auth.to_toml()
        )
    }

    /// The URL this relay's own HTTP server answers on, for bridges that talk to it.
    pub fn self_url(&self) -> String {
        let listen = self.http.listen;
        let ip = if listen.ip().is_unspecified() {
            if listen.is_ipv4() {
                "127.0.0.1".parse().expect("literal")
            } else {
                "::1".parse().expect("literal")
            }
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
}

fn known_keys() -> String {
    KEYS.iter()
        .flat_map(|(s, keys)| keys.iter().map(move |k| format!("{s}.{k}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Environment values are strings; numbers and booleans are recognised so that
/// `CORECAST_WORKERS_COUNT=2` means the integer 2.
fn env_value(raw: &str) -> Value {
    if let Ok(n) = raw.parse::<i64>() {
        Value::Integer(n)
    } else if let Ok(b) = raw.parse::<bool>() {
        Value::Boolean(b)
    } else {
        Value::String(raw.to_string())
    }
}

fn int(v: &Value, key: &str, what: &str) -> Result<i64, ConfigError> {
    match v {
        Value::Integer(n) => Ok(*n),
        other => Err(bad(key, other, &format!("must be an integer ({what})"))),
    }
}

fn parse_str<T: std::str::FromStr>(v: &Value, key: &str, allowed: &str) -> Result<T, ConfigError> {
    match v {
        Value::String(s) => s
            .parse()
            .map_err(|_| bad(key, s, &format!("must be {allowed}"))),
        other => Err(bad(key, other, &format!("must be a string: {allowed}"))),
    }
}

/// A list of addresses and CIDR networks: a TOML array of strings, or (from the environment)
/// one string with commas between them. Empty means none.
fn parse_address_list(v: &Value, key: &str) -> Result<AddressList, ConfigError> {
    const ALLOWED: &str = "must be a list of addresses or CIDR networks, like \
                           [\"127.0.0.0/8\", \"::1\", \"203.0.113.7\"]";
    let items: Vec<&str> = match v {
        Value::String(s) => s.split(',').filter(|i| !i.trim().is_empty()).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(|| bad(key, v, ALLOWED)))
            .collect::<Result<_, _>>()?,
        other => return Err(bad(key, other, ALLOWED)),
    };
    items
        .into_iter()
        .map(|item| {
            Cidr::parse(item).map_err(|e| bad(key, item.trim(), &format!("{e}; {ALLOWED}")))
        })
        .collect::<Result<_, _>>()
        .map(AddressList)
}

fn parse_port_range(v: &Value) -> Result<PortRange, ConfigError> {
    const ALLOWED: &str = "must be a range FROM-TO with 1024 <= FROM <= TO <= 65535";
    let Value::String(s) = v else {
        return Err(bad("media.ports", v, ALLOWED));
    };
    let parsed = s
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((first, last)) if first >= 1024 && first <= last => Ok(PortRange { first, last }),
        _ => Err(bad("media.ports", s, ALLOWED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_loopback_and_ready() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.media.announced_ip.is_loopback());
        assert!(c.http.listen.ip().is_loopback());
    }

    #[test]
    fn environment_overrides_file() {
        let file =
            "[media]\nports = \"40000-40010\"\nudp_recv_buffer = 65536\n[workers]\ncount = 3\n";
        let c = Config::load(
            Some(file),
            env(&[
                ("CORECAST_MEDIA_PORTS", "31000-31001"),
                ("CORECAST_WORKERS_PIN", "false"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.media.ports,
            PortRange {
                first: 31000,
                last: 31001
            }
        );
        assert_eq!(c.media.udp_recv_buffer, 65536);
        assert_eq!(c.workers.count, 3);
        assert!(!c.workers.pin);
    }

    #[test]
    fn printed_config_loads_back_unchanged() {
        let mut c = Config::default();
        c.workers.count = 2;
        c.media.protocol = MediaProtocol::Tcp;
        c.media.tcp_send_queue = 64;
        c.cascade.origin = Some("http://127.0.0.1:9000".into());
        c.media.ports = PortRange {
            first: 2000,
            last: 2001,
        };
        c.http.header_timeout = Duration::from_millis(2500);
        c.http.idle_timeout = Duration::from_secs(7);
        c.http.max_connections = 50;
        c.http.max_sessions_per_ip = 0;
        c.http.rate_limit = 3;
        c.http.rate_burst = 9;
        c.http.limit_exempt = AddressList(vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("2001:db8::/32").unwrap(),
        ]);
        assert_eq!(Config::load(Some(&c.to_toml()), env(&[])).unwrap(), c);
        c.http.limit_exempt = AddressList::default();
        assert_eq!(Config::load(Some(&c.to_toml()), env(&[])).unwrap(), c);
    }

    #[test]
    fn http_limits_load_from_the_environment_and_refuse_nonsense() {
        let c = Config::load(
            None,
            env(&[
                ("CORECAST_HTTP_LIMIT_EXEMPT", "127.0.0.1, 10.1.0.0/16"),
                ("CORECAST_HTTP_HEADER_TIMEOUT_MS", "1500"),
                ("CORECAST_HTTP_RATE_LIMIT", "0"),
            ]),
        )
        .unwrap();
        assert!(c.http.limit_exempt.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.http.limit_exempt.contains("127.0.0.2".parse().unwrap()));
        assert_eq!(c.http.header_timeout, Duration::from_millis(1500));
        assert_eq!(c.http.rate_limit, 0);
        let none = Config::load(None, env(&[("CORECAST_HTTP_LIMIT_EXEMPT", "")])).unwrap();
        assert_eq!(none.http.limit_exempt, AddressList::default());

        let err =
            Config::load(Some("[http]\nlimit_exempt = [\"10.0.0.0/40\"]\n"), env(&[])).unwrap_err();
        assert!(
            err.0.contains("http.limit_exempt") && err.0.contains("0 to 32"),
            "{err}"
        );
        let err = Config::load(None, env(&[("CORECAST_HTTP_MAX_CONNECTIONS", "0")])).unwrap_err();
        assert!(err.0.contains("http.max_connections"), "{err}");
        let err = Config::load(None, env(&[("CORECAST_HTTP_IDLE_TIMEOUT_MS", "5")])).unwrap_err();
        assert!(
            err.0.contains("http.idle_timeout_ms") && err.0.contains("100 to"),
            "{err}"
        );
        let err = Config::load(None, env(&[("CORECAST_HTTP_RATE_BURST", "0")])).unwrap_err();
        assert!(err.0.contains("http.rate_burst"), "{err}");
    }

    #[test]
    fn bad_values_name_key_value_and_what_is_allowed() {
        let err = Config::load(None, env(&[("CORECAST_MEDIA_PORTS", "5000-4000")])).unwrap_err();
        assert!(
            err.0.contains("media.ports")
                && err.0.contains("5000-4000")
                && err.0.contains("FROM <= TO"),
            "{err}"
        );
        let err = Config::load(None, env(&[("CORECAST_MEDIA_PORTS", "80-90")])).unwrap_err();
        assert!(err.0.contains("1024"), "{err}");
        let err = Config::load(Some("[media]\nudp_send_buffer = 10\n"), env(&[])).unwrap_err();
        assert!(
            err.0.contains("media.udp_send_buffer") && err.0.contains("`10`"),
            "{err}"
        );
        let err = Config::load(None, env(&[("CORECAST_HTTP_LISTEN", "nowhere")])).unwrap_err();
        assert!(
            err.0.contains("http.listen") && err.0.contains("nowhere"),
            "{err}"
        );
        let err = Config::load(None, env(&[("CORECAST_MEDIA_PROTOCOL", "sctp")])).unwrap_err();
        assert!(
            err.0.contains("media.protocol") && err.0.contains("\"udp\", \"tcp\" or \"all\""),
            "{err}"
        );
        let err = Config::load(None, env(&[("CORECAST_WORKERS_PIN", "sometimes")])).unwrap_err();
        assert!(err.0.contains("workers.pin"), "{err}");
    }

    #[test]
    fn front_door_keys_load_from_file_and_environment() {
        let file = "[http]\ntls = \"self-signed\"\nredirect_listen = \"127.0.0.1:8081\"\n\
                    max_sessions_per_token = 3\n[cascade]\norigin = \"https://10.0.0.5:8443\"\n\
                    insecure = true\n[[auth.tokens]]\ntoken = \"a-long-enough-token\"\n\
                    allow = [\"play\"]\n";
        let c = Config::load(
            Some(file),
            env(&[
                (
                    "CORECAST_AUTH_JWT_SECRET",
                    "0123456789abcdef0123456789abcdef",
                ),
                ("CORECAST_AUTH_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
                ("CORECAST_AUTH_WEBHOOK_TIMEOUT_MS", "500"),
                ("CORECAST_CASCADE_TOKEN", "edge-token"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.tls, TlsSetting::SelfSigned);
        assert_eq!(c.http.max_sessions_per_token, 3);
        assert_eq!(c.auth.tokens.len(), 1);
        assert!(c.auth.jwt.is_some() && c.auth.enabled());
        assert_eq!(c.auth.webhook.as_ref().unwrap().timeout.as_millis(), 500);
        assert_eq!(c.cascade.token, Some(Secret("edge-token".into())));
        assert!(c.self_url().starts_with("https://"));
        // Secrets stay out of the printed configuration, which still loads.
        let printed = c.to_toml();
        assert!(!printed.contains("a-long-enough-token") && !printed.contains("edge-token"));
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(Config::load(Some(&printed), env(&[])).is_ok(), "{printed}");

        let err = Config::load(
            None,
            env(&[("CORECAST_HTTP_REDIRECT_LISTEN", "0.0.0.0:80")]),
        )
        .unwrap_err();
        assert!(err.0.contains("needs http.tls"), "{err}");
        let err = Config::load(None, env(&[("CORECAST_AUTH_TOKENS", "x")])).unwrap_err();
        assert!(err.0.contains("[[auth.tokens]]"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::load(None, env(&[("CORECAST_MEDIA_PORT", "1")])).unwrap_err();
        assert!(err.0.contains("CORECAST_MEDIA_PORT"), "{err}");
        let err = Config::load(Some("[media]\nport = 1\n"), env(&[])).unwrap_err();
        assert!(err.0.contains("media.port"), "{err}");
    }

    #[test]
    fn port_range_must_cover_the_workers() {
        let mut c = Config::default();
        c.media.ports = PortRange {
            first: 5000,
            last: 5000,
        };
        assert!(c.validate_for_workers(1).is_ok());
        let err = c.validate_for_workers(2).unwrap_err();
        assert!(
            err.0.contains("media.ports") && err.0.contains("2 workers"),
            "{err}"
        );
    }
}
