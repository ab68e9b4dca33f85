//! Configuration: built-in defaults, then a TOML file, then `CORECAST_<SECTION>_<KEY>`
//! environment variables. Every value is checked here, and a bad one stops start-up with a
//! message that names the key, the value and what is allowed.

mod admission;
mod cluster;
mod parse;
#[cfg(test)]
mod tests;
mod toml_out;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::{Table, Value};

use crate::control::auth::{AuthConfig, Secret};
use crate::control::limits::{AddressList, Cidr};
use crate::control::tls::TlsSetting;
pub use admission::AdmissionConfig;
pub use cluster::{ClusterConfig, redis_url_without_password};

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub workers: WorkersConfig,
    pub cascade: CascadeConfig,
    /// Tokens, JWTs and the admission webhook (`[auth]`); none configured: open as before.
    pub auth: AuthConfig,
    /// The Redis directory this node shares with others (`[cluster]`); none: a single relay.
    pub cluster: ClusterConfig,
    /// Where DTLS handshakes run and how many joins are taken at once (`[admission]`).
    pub admission: AdmissionConfig,
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
    /// The addresses written into ICE candidates (one candidate set each; IPv4 and IPv6 may
    /// be mixed). Never empty.
    pub announced_ip: Vec<IpAddr>,
    /// Inclusive range of media ports; each session takes one (unless `mux_port` is set).
    pub ports: PortRange,
    /// Single-port mode: every session's media on this one port (UDP and ICE-TCP), shared by
    /// the workers with `SO_REUSEPORT`; `None`: each session its own port from `ports`.
    pub mux_port: Option<u16>,
    /// ICE-TCP on the HTTP(S) listener's port: answers carry their passive TCP candidate on
    /// that port (instead of the media port), and the listener hands a connection whose first
    /// frame is an ICE check for a live session to its worker.
    pub tcp_on_http: bool,
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
    /// What runs the workers' I/O: `auto` (io_uring where the kernel allows it, else epoll),
    /// `io_uring` (refuse to start without it) or `epoll`.
    pub backend: crate::io::BackendSetting,
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
            "mux_port",
            "tcp_on_http",
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
    ("workers", &["count", "pin", "backend"]),
    ("cascade", &["origin", "token", "ca_file", "insecure"]),
    ("auth", crate::control::auth::KEYS),
    (
        "cluster",
        &["redis", "node_id", "advertise", "max_players", "token"],
    ),
    ("admission", admission::KEYS),
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
                announced_ip: vec!["127.0.0.1".parse().expect("valid literal")],
                ports: PortRange {
                    first: 31000,
                    last: 31999,
                },
                mux_port: None,
                tcp_on_http: false,
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
                backend: crate::io::BackendSetting::Auto,
            },
            cascade: CascadeConfig::default(),
            auth: AuthConfig::default(),
            cluster: ClusterConfig::default(),
            admission: AdmissionConfig::default(),
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
        if self.media.mux_port.is_none() && self.media.ports.len() < workers {
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
        format!("{scheme}://{}", SocketAddr::new(ip, listen.port()))
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
