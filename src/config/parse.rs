//! Reading the configuration's merged table: every key checked, with the key, the value and
//! what is allowed named in the error.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use toml::{Table, Value};

use super::*;

impl Config {
    /// Every section in the order the README lists them (http, auth, media, workers,
    /// cascade, cluster), each key read and checked where it is named; unknown sections and keys first.
    pub(super) fn from_table(table: &Table) -> Result<Config, ConfigError> {
        check_known(table)?;
        let mut config = Config::default();
        let section = |name: &'static str| Section(table.get(name));
        read_http(&mut config.http, section("http"))?;
        if let Some(v) = table.get("auth") {
            config.auth = AuthConfig::parse(v).map_err(ConfigError)?;
        }
        read_media(&mut config.media, section("media"))?;
        read_workers(&mut config.workers, section("workers"))?;
        read_cascade(&mut config.cascade, section("cascade"))?;
        let cluster = section("cluster");
        cluster::read_cluster(&mut config.cluster, |key| cluster.get(key).cloned())?;
        config.check_cluster()?;
        let admission = section("admission");
        admission::read_admission(&mut config.admission, |key| admission.get(key).cloned())?;
        Ok(config)
    }
}

/// One section of the table, perhaps absent.
#[derive(Clone, Copy)]
struct Section<'a>(Option<&'a Value>);

impl<'a> Section<'a> {
    fn get(self, key: &str) -> Option<&'a Value> {
        self.0.and_then(|s| s.get(key))
    }
}

/// Refuses a section or key the configuration does not have, naming those it has.
fn check_known(table: &Table) -> Result<(), ConfigError> {
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
    Ok(())
}

fn read_http(http: &mut HttpConfig, get: Section<'_>) -> Result<(), ConfigError> {
    if let Some(v) = get.get("listen") {
        http.listen = parse_str(v, "http.listen", "an address and port like 127.0.0.1:8080")?;
    }
    for (key, slot, max) in [
        ("header_timeout_ms", &mut http.header_timeout, 600_000),
        // Above the longest a handler waits on others (a cascade pull: 20 s) is safest.
        ("idle_timeout_ms", &mut http.idle_timeout, 3_600_000),
    ] {
        if let Some(v) = get.get(key) {
            let name = format!("http.{key}");
            let allowed = format!("must be 100 to {max} milliseconds");
            let n = int_in(v, &name, "a number of milliseconds", 100..=max, &allowed)?;
            *slot = Duration::from_millis(n as u64);
        }
    }
    read_http_limits(http, get)?;
    http.tls = TlsSetting::parse(get.get("tls"), get.get("tls_cert"), get.get("tls_key"))
        .map_err(ConfigError)?;
    match get.get("redirect_listen") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(v) => {
            let addr: SocketAddr = parse_str(
                v,
                "http.redirect_listen",
                "an address and port like 0.0.0.0:80",
            )?;
            if !http.tls.is_on() {
                return Err(bad(
                    "http.redirect_listen",
                    addr,
                    "redirects to HTTPS, so it needs http.tls (or http.tls_cert and \
                     http.tls_key)",
                ));
            }
            http.redirect_listen = Some(addr);
        }
    }
    if let Some(v) = get.get("max_sessions_per_token") {
        http.max_sessions_per_token = session_cap(v, "http.max_sessions_per_token")?;
    }
    Ok(())
}

/// A cap on sessions (per address, per token): 0 for none, up to a million.
fn session_cap(v: &Value, key: &str) -> Result<usize, ConfigError> {
    let allowed = "must be 0 (no limit) to 1000000";
    Ok(int_in(v, key, "a number of sessions", 0..=1_000_000, allowed)? as usize)
}

/// The front door's caps: connections, sessions per address, the request rate and who is
/// exempt.
fn read_http_limits(http: &mut HttpConfig, get: Section<'_>) -> Result<(), ConfigError> {
    if let Some(v) = get.get("max_connections") {
        let key = "http.max_connections";
        let allowed = "must be 1 to 1000000";
        http.max_connections =
            int_in(v, key, "a number of connections", 1..=1_000_000, allowed)? as usize;
    }
    if let Some(v) = get.get("max_sessions_per_ip") {
        http.max_sessions_per_ip = session_cap(v, "http.max_sessions_per_ip")?;
    }
    for (key, slot, min) in [
        ("rate_limit", &mut http.rate_limit, 0),
        ("rate_burst", &mut http.rate_burst, 1),
    ] {
        if let Some(v) = get.get(key) {
            let name = format!("http.{key}");
            let allowed = if min == 0 {
                "must be 0 (no limit) to 1000000 requests per second"
            } else {
                "must be 1 to 1000000 requests"
            };
            *slot = int_in(v, &name, "a number of requests", min..=1_000_000, allowed)? as u32;
        }
    }
    if let Some(v) = get.get("limit_exempt") {
        http.limit_exempt = parse_address_list(v, "http.limit_exempt")?;
    }
    Ok(())
}

fn read_media(media: &mut MediaConfig, get: Section<'_>) -> Result<(), ConfigError> {
    if let Some(v) = get.get("bind_ip") {
        media.bind_ip = parse_str(v, "media.bind_ip", "an IPv4 or IPv6 address")?;
    }
    if let Some(v) = get.get("announced_ip") {
        media.announced_ip = parse_announced(v)?;
    }
    if let Some(v) = get.get("ports") {
        media.ports = parse_port_range(v)?;
    }
    if let Some(v) = get.get("mux_port") {
        let key = "media.mux_port";
        let allowed = "must be 0 (each session its own port from media.ports) or 1024 to 65535";
        let n = match v {
            // From the environment every value is a string.
            Value::String(s) => s.trim().parse::<i64>().map_err(|_| bad(key, s, allowed))?,
            other => int(other, key, "a port number")?,
        };
        media.mux_port = match n {
            0 => None,
            1024..=65535 => Some(n as u16),
            _ => return Err(bad(key, n, allowed)),
        };
    }
    if let Some(v) = get.get("tcp_on_http") {
        media.tcp_on_http = boolean(v, "media.tcp_on_http")?;
    }
    if let Some(v) = get.get("protocol") {
        media.protocol = match v {
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
    if let Some(v) = get.get("tcp_send_queue") {
        let key = "media.tcp_send_queue";
        let allowed = "must be 16 to 65536 frames";
        media.tcp_send_queue = int_in(v, key, "a number of frames", 16..=65536, allowed)? as usize;
    }
    for (key, slot) in [
        ("udp_recv_buffer", &mut media.udp_recv_buffer),
        ("udp_send_buffer", &mut media.udp_send_buffer),
        ("tcp_recv_buffer", &mut media.tcp_recv_buffer),
        ("tcp_send_buffer", &mut media.tcp_send_buffer),
    ] {
        if let Some(v) = get.get(key) {
            let name = format!("media.{key}");
            let range = MIN_SOCKET_BUFFER..=MAX_SOCKET_BUFFER;
            let allowed = "must be between 4096 and 1073741824 bytes";
            *slot = int_in(v, &name, "a size in bytes", range, allowed)? as usize;
        }
    }
    if let Some(v) = get.get("ice_timeout") {
        let key = "media.ice_timeout";
        let n = int_in(
            v,
            key,
            "a number of seconds",
            1..=3600,
            "must be 1 to 3600 seconds",
        )?;
        media.ice_timeout = Duration::from_secs(n as u64);
    }
    if let Some(v) = get.get("gso") {
        media.gso = boolean(v, "media.gso")?;
    }
    if let Some(v) = get.get("gso_hold_us") {
        let key = "media.gso_hold_us";
        let allowed = "must be 0 to 20000 microseconds";
        let n = int_in(v, key, "a number of microseconds", 0..=20_000, allowed)?;
        media.gso_hold = Duration::from_micros(n as u64);
    }
    if let Some(v) = get.get("max_publish_kbps") {
        let key = "media.max_publish_kbps";
        let allowed = "must be 0 (no cap) to 1000000 kbit/s";
        let n = int_in(v, key, "a bitrate in kbit/s", 0..=1_000_000, allowed)?;
        media.max_publish_kbps = n as u32;
    }
    Ok(())
}

fn read_workers(workers: &mut WorkersConfig, get: Section<'_>) -> Result<(), ConfigError> {
    if let Some(v) = get.get("count") {
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
        workers.count = n as usize;
    }
    if let Some(v) = get.get("pin") {
        workers.pin = boolean(v, "workers.pin")?;
    }
    if let Some(v) = get.get("backend") {
        use crate::io::BackendSetting;
        workers.backend = match v {
            Value::String(s) if s == "auto" => BackendSetting::Auto,
            Value::String(s) if s == "io_uring" => BackendSetting::IoUring,
            Value::String(s) if s == "epoll" => BackendSetting::Epoll,
            other => {
                return Err(bad(
                    "workers.backend",
                    other,
                    "must be \"auto\", \"io_uring\" or \"epoll\"",
                ));
            }
        };
    }
    Ok(())
}

fn read_cascade(cascade: &mut CascadeConfig, get: Section<'_>) -> Result<(), ConfigError> {
    if let Some(v) = get.get("origin") {
        const ALLOWED: &str = "must be the origin relay's base URL, like https://10.0.0.5:8443 or http://10.0.0.5:8080";
        match v {
            Value::String(s) if s.is_empty() => cascade.origin = None,
            Value::String(s)
                if (s.starts_with("http://") && s.len() > 7)
                    || (s.starts_with("https://") && s.len() > 8) =>
            {
                cascade.origin = Some(s.trim_end_matches('/').to_string())
            }
            other => return Err(bad("cascade.origin", other, ALLOWED)),
        }
    }
    match get.get("token") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => cascade.token = Some(Secret(s.clone())),
        Some(_) => {
            return Err(ConfigError(
                "configuration key `cascade.token` must be a string".into(),
            ));
        }
    }
    match get.get("ca_file") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => cascade.ca_file = Some(s.clone()),
        Some(other) => {
            return Err(bad(
                "cascade.ca_file",
                other,
                "must be the path of a PEM file",
            ));
        }
    }
    if let Some(v) = get.get("insecure") {
        cascade.insecure = boolean(v, "cascade.insecure")?;
    }
    Ok(())
}

/// An integer within `range`: `what` names what it counts (when it is no integer), `allowed`
/// the range (when it is outside).
fn int_in(
    v: &Value,
    key: &str,
    what: &str,
    range: RangeInclusive<i64>,
    allowed: &str,
) -> Result<i64, ConfigError> {
    let n = int(v, key, what)?;
    if !range.contains(&n) {
        return Err(bad(key, n, allowed));
    }
    Ok(n)
}

fn boolean(v: &Value, key: &str) -> Result<bool, ConfigError> {
    match v {
        Value::Boolean(b) => Ok(*b),
        other => Err(bad(key, other, "must be true or false")),
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

/// `media.announced_ip`: one address, or a list (`["203.0.113.7", "2001:db8::7"]`, or
/// comma-separated from the environment).
fn parse_announced(v: &Value) -> Result<Vec<IpAddr>, ConfigError> {
    const KEY: &str = "media.announced_ip";
    const ALLOWED: &str = "must be an IPv4 or IPv6 address, or a list of them, like \
                           [\"203.0.113.7\", \"2001:db8::7\"]";
    let items: Vec<&str> = match v {
        Value::String(s) => s.split(',').filter(|i| !i.trim().is_empty()).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(|| bad(KEY, v, ALLOWED)))
            .collect::<Result<_, _>>()?,
        other => return Err(bad(KEY, other, ALLOWED)),
    };
    if items.is_empty() {
        return Err(bad(KEY, v, ALLOWED));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for item in items {
        let ip: IpAddr = item
            .trim()
            .parse()
            .map_err(|_| bad(KEY, item.trim(), ALLOWED))?;
        if ip.is_unspecified() {
            return Err(bad(
                KEY,
                ip,
                "must be an address clients can reach, not the unspecified address",
            ));
        }
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
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
