//! Reading the configuration's merged table: every key checked, with the key, the value and
//! what is allowed named in the error.

use std::net::SocketAddr;
use std::time::Duration;

use toml::{Table, Value};

use super::*;

impl Config {
    // Long on purpose: one flat pass over every section and key, in the order the README
    // lists them, each read and checked where it is named; split, the order would scatter.
    pub(super) fn from_table(table: &Table) -> Result<Config, ConfigError> {
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
