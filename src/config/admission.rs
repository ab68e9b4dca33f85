//! The `[admission]` section: where DTLS handshakes run and how many joins the relay takes at
//! once under a flash crowd (`control::admission`).

use std::time::Duration;

use toml::Value;

use super::{Config, ConfigError, bad};

#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    /// Threads of the DTLS handshake pool; 0: one per core.
    pub handshake_threads: usize,
    /// Player joins between their answer and the end of their DTLS handshake at once; 0: no
    /// limit.
    pub max_handshakes: usize,
    /// Player joins that may wait for a place; more are refused with `503` at once.
    pub queue: usize,
    /// How long a join waits in the queue before it is refused with `503`.
    pub queue_wait: Duration,
    /// How long an admitted join keeps its place while its client has not reached it by ICE:
    /// offers that never connect (a client that gave up, or offers posted to block the relay)
    /// free their places after this, not after `media.ice_timeout`.
    pub ice_wait: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            handshake_threads: 0,
            max_handshakes: 500,
            queue: 1000,
            queue_wait: Duration::from_secs(2),
            ice_wait: Duration::from_secs(3),
        }
    }
}

pub(super) const KEYS: &[&str] = &[
    "handshake_threads",
    "max_handshakes",
    "queue",
    "queue_wait_ms",
    "ice_wait_ms",
];

fn integer(v: &Value, key: &str, max: i64, allowed: &str) -> Result<i64, ConfigError> {
    match v.as_integer() {
        Some(n) if (0..=max).contains(&n) => Ok(n),
        Some(n) => Err(bad(key, n, allowed)),
        None => Err(bad(key, v, &format!("must be an integer: {allowed}"))),
    }
}

pub(super) fn read_admission(
    admission: &mut AdmissionConfig,
    get: impl Fn(&str) -> Option<Value>,
) -> Result<(), ConfigError> {
    if let Some(v) = get("handshake_threads") {
        admission.handshake_threads = integer(
            &v,
            "admission.handshake_threads",
            1024,
            "must be 0 (one per core) to 1024",
        )? as usize;
    }
    if let Some(v) = get("max_handshakes") {
        admission.max_handshakes = integer(
            &v,
            "admission.max_handshakes",
            1_000_000,
            "must be 0 (no limit) to 1000000 joins",
        )? as usize;
    }
    if let Some(v) = get("queue") {
        admission.queue = integer(
            &v,
            "admission.queue",
            1_000_000,
            "must be 0 to 1000000 joins",
        )? as usize;
    }
    if let Some(v) = get("queue_wait_ms") {
        let ms = integer(
            &v,
            "admission.queue_wait_ms",
            60_000,
            "must be 0 to 60000 milliseconds",
        )?;
        admission.queue_wait = Duration::from_millis(ms as u64);
    }
    if let Some(v) = get("ice_wait_ms") {
        let ms = integer(
            &v,
            "admission.ice_wait_ms",
            600_000,
            "must be 0 (until media.ice_timeout) to 600000 milliseconds",
        )?;
        admission.ice_wait = Duration::from_millis(ms as u64);
    }
    Ok(())
}

impl Config {
    /// Threads of the DTLS handshake pool: `admission.handshake_threads`, or one per core.
    pub fn handshake_threads(&self) -> usize {
        match self.admission.handshake_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// `[admission]` as `--print-config` writes it.
    pub(super) fn admission_toml(&self) -> String {
        let a = &self.admission;
        format!(
            "\n[admission]\nhandshake_threads = {}\nmax_handshakes = {}\nqueue = {}\nqueue_wait_ms = {}\nice_wait_ms = {}\n",
            a.handshake_threads,
            a.max_handshakes,
            a.queue,
            a.queue_wait.as_millis(),
            a.ice_wait.as_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::time::Duration;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(None, env).map_err(|e| e.to_string())
    }

    #[test]
    fn admission_keys_load_and_print_back() {
        let config = load(&[
            ("CORECAST_ADMISSION_HANDSHAKE_THREADS", "3"),
            ("CORECAST_ADMISSION_MAX_HANDSHAKES", "7"),
            ("CORECAST_ADMISSION_QUEUE", "0"),
            ("CORECAST_ADMISSION_QUEUE_WAIT_MS", "250"),
            ("CORECAST_ADMISSION_ICE_WAIT_MS", "1500"),
        ])
        .unwrap();
        assert_eq!(config.handshake_threads(), 3);
        assert_eq!(config.admission.max_handshakes, 7);
        assert_eq!(config.admission.queue, 0);
        assert_eq!(config.admission.queue_wait, Duration::from_millis(250));
        assert_eq!(config.admission.ice_wait, Duration::from_millis(1500));
        let printed = config.to_toml();
        assert!(
            printed.contains(
                "[admission]\nhandshake_threads = 3\nmax_handshakes = 7\nqueue = 0\nqueue_wait_ms = 250\nice_wait_ms = 1500\n"
            ),
            "{printed}"
        );
        assert_eq!(
            Config::load(Some(&printed), std::iter::empty()).unwrap(),
            config
        );
    }

    #[test]
    fn bad_admission_values_say_what_is_allowed() {
        let e = load(&[("CORECAST_ADMISSION_QUEUE", "-1")]).unwrap_err();
        assert!(
            e.contains("admission.queue") && e.contains("0 to 1000000"),
            "{e}"
        );
        let e = load(&[("CORECAST_ADMISSION_QUEUE_WAIT_MS", "soon")]).unwrap_err();
        assert!(e.contains("admission.queue_wait_ms"), "{e}");
        let e = load(&[("CORECAST_ADMISSION_HANDSHAKE_THREADS", "5000")]).unwrap_err();
        assert!(e.contains("admission.handshake_threads"), "{e}");
    }
}
