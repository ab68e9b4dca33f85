//! What one HTTP client may cost the relay: connections, time to send a request, requests per
//! second, and (with the registry in `control`) sessions. The decisions here are sans-IO: they
//! take the time and what happened, and say what to do; `listener` and the handlers act on them.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::HttpConfig;

/// The largest WebSocket message (and frame) the relay reads: a generous offer with every codec
/// of a browser is ~10 kB, and the SDP parser refuses offers over 64 kB anyway. Anything larger
/// is refused before it is buffered.
pub const WS_MAX_MESSAGE: usize = 128 * 1024;

/// An address, or a network in CIDR notation (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an address or a CIDR network"))?;
        let network = network.to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {bits}")),
            },
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: u128, ip: u128, prefix: u8, bits: u32) -> bool {
    let host_bits = bits - u32::from(prefix);
    host_bits >= bits || (network >> host_bits) == (ip >> host_bits)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The addresses no per-client limit applies to (`http.limit_exempt`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList(pub Vec<Cidr>);

impl AddressList {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }
}

impl fmt::Display for AddressList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|c| format!("\"{c}\"")).collect();
        write!(f, "[{}]", items.join(", "))
    }
}

/// Who a client is, for per-client limits: its IPv4 address, or its IPv6 /64 (one subscriber
/// line gets a whole /64, so counting single IPv6 addresses would count nothing).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// A token bucket: `burst` requests at once, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn is_full(&self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }
}

/// Requests per second per client (`http.rate_limit`, `http.rate_burst`).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, TokenBucket>,
    /// When the map grows past this, buckets that have refilled (clients gone quiet) go: many
    /// addresses cost memory only while they keep sending.
    prune_above: usize,
}

const RATE_BUCKETS_KEPT: usize = 4096;

impl RateLimiter {
    /// `rate` 0 means no limit.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            prune_above: RATE_BUCKETS_KEPT,
        }
    }

    /// Admits one request from `client`, or says after how long one would be admitted.
    pub fn check(&mut self, now: Instant, client: IpAddr) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let (rate, burst) = (self.rate, self.burst);
        if self.buckets.len() >= self.prune_above {
            self.buckets.retain(|_, b| !b.is_full(now, rate, burst));
            self.prune_above = (self.buckets.len() * 2).max(RATE_BUCKETS_KEPT);
        }
        self.buckets
            .entry(client_key(client))
            .or_insert(TokenBucket {
                tokens: burst,
                last: now,
            })
            .take(now, rate, burst)
    }
}

/// A wait as `Retry-After` says it: whole seconds, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Why a connection was closed by its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// It began a request and did not finish its header in time (slowloris).
    HeaderTimeout,
    /// Nothing moved for `http.idle_timeout_ms`: a keep-alive connection with no next request,
    /// a fresh one that sent nothing, or a request or response that stalled.
    Idle,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No byte of the next request yet (a fresh connection, or keep-alive between requests).
    Waiting { since: Instant },
    /// Part of a request header has arrived.
    Header { since: Instant },
    /// Requests are being handled (bodies read, handlers run, responses written).
    Serving { in_flight: usize },
}

/// One HTTP connection's timeouts: fed what happens on it, it says when it must close.
#[derive(Debug)]
pub struct ConnectionClock {
    header_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    last_io: Instant,
}

impl ConnectionClock {
    pub fn new(now: Instant, header_timeout: Duration, idle_timeout: Duration) -> Self {
        ConnectionClock {
            header_timeout,
            idle_timeout,
            phase: Phase::Waiting { since: now },
            last_io: now,
        }
    }

    /// Bytes arrived.
    pub fn on_read(&mut self, now: Instant) {
        self.last_io = now;
        if let Phase::Waiting { .. } = self.phase {
            self.phase = Phase::Header { since: now };
        }
    }

    /// Bytes left (a response on its way keeps the connection from idling).
    pub fn on_write(&mut self, now: Instant) {
        self.last_io = now;
        if let Phase::Waiting { since } = &mut self.phase {
            *since = now;
        }
    }

    /// A request's header is complete and its handler starts.
    pub fn on_request(&mut self, now: Instant) {
        self.last_io = now;
        self.phase = match self.phase {
            Phase::Serving { in_flight } => Phase::Serving {
                in_flight: in_flight + 1,
            },
            _ => Phase::Serving { in_flight: 1 },
        };
    }

    /// A handler returned its response.
    pub fn on_response(&mut self, now: Instant) {
        if let Phase::Serving { in_flight } = &mut self.phase {
            *in_flight = in_flight.saturating_sub(1);
            if *in_flight == 0 {
                self.phase = Phase::Waiting { since: now };
            }
        }
    }

    /// When to look again; [`expired`](Self::expired) says whether the connection must close.
    pub fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Waiting { since } => since + self.idle_timeout,
            Phase::Header { since } => since + self.header_timeout,
            // A handler may wait on something other than this client (a pull from the origin);
            // the connection only counts as stalled when nothing moves on it at all.
            Phase::Serving { .. } => self.last_io + self.idle_timeout,
        }
    }

    pub fn expired(&self, now: Instant) -> Option<Expiry> {
        if now < self.deadline() {
            return None;
        }
        Some(match self.phase {
            Phase::Header { .. } => Expiry::HeaderTimeout,
            Phase::Waiting { .. } | Phase::Serving { .. } => Expiry::Idle,
        })
    }
}

/// What `/metrics` shows of the HTTP limits.
#[derive(Default)]
pub struct HttpCounters {
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub rate_limited: AtomicU64,
    pub ws_messages_too_large: AtomicU64,
    /// TLS handshakes that failed (a client that distrusts the certificate, or no TLS at all).
    pub tls_handshake_failures: AtomicU64,
    pub sniffed: SniffedCounters,
}

/// Connections on the HTTP listener by what they turned out to be (`media.tcp_on_http`).
#[derive(Default)]
pub struct SniffedCounters {
    pub http: AtomicU64,
    pub tls: AtomicU64,
    /// Handed to a session's worker (which still checks the ICE check's integrity).
    pub ice_tcp: AtomicU64,
    /// Neither HTTP, TLS nor an ICE check naming a live session: closed.
    pub closed_unknown: AtomicU64,
    /// Too few first bytes within the sniffing deadline: closed.
    pub closed_timeout: AtomicU64,
}

/// The HTTP server's limits and their state, shared by the listener and the handlers.
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub rate_limit: u32,
    exempt: AddressList,
    /// One permit per connection from a client that is not exempt.
    slots: Arc<Semaphore>,
    rate: Mutex<RateLimiter>,
    pub counters: HttpCounters,
}

/// A connection admitted by [`HttpLimits::admit_connection`]; dropping it frees its slot.
pub struct ConnectionSlot {
    _permit: Option<OwnedSemaphorePermit>,
    limits: Arc<HttpLimits>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits
            .counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpLimits {
    pub fn new(config: &HttpConfig) -> Arc<HttpLimits> {
        Arc::new(HttpLimits {
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            rate_limit: config.rate_limit,
            exempt: config.limit_exempt.clone(),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            rate: Mutex::new(RateLimiter::new(config.rate_limit, config.rate_burst)),
            counters: HttpCounters::default(),
        })
    }

    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.contains(ip)
    }

    /// A slot for a new connection from `peer`, or `None` when `http.max_connections` are open
    /// (counted). Exempt addresses are not counted against the cap: an operator's monitoring
    /// still gets in while the relay is flooded.
    pub fn admit_connection(self: &Arc<Self>, peer: IpAddr) -> Option<ConnectionSlot> {
        let permit = if self.is_exempt(peer) {
            None
        } else {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.counters
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        };
        self.counters
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        Some(ConnectionSlot {
            _permit: permit,
            limits: self.clone(),
        })
    }

    /// Admits one request (or WebSocket command) from `peer`, or says when to retry (counted).
    pub fn check_rate(&self, peer: IpAddr) -> Result<(), Duration> {
        if self.is_exempt(peer) {
            return Ok(());
        }
        let verdict = self
            .rate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(Instant::now(), peer);
        if verdict.is_err() {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    pub fn count_expiry(&self, expiry: Expiry) {
        let counter = match expiry {
            Expiry::HeaderTimeout => &self.counters.header_timeouts,
            Expiry::Idle => &self.counters.idle_timeouts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.255.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped IPv6");
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.7")) && !all.contains(ip("::1")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("localhost").is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2:bbbb::9")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn the_token_bucket_allows_a_burst_then_the_rate() {
        let mut limiter = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        let client = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(limiter.check(t0, client).is_ok());
        }
        let wait = limiter.check(t0, client).unwrap_err();
        assert!(
            (Duration::from_millis(99)..=Duration::from_millis(101)).contains(&wait),
            "{wait:?}"
        );
        // Another client has its own bucket.
        assert!(limiter.check(t0, ip("192.0.2.2")).is_ok());
        // 100 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.check(t1, client).is_ok());
        assert!(limiter.check(t1, client).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.check(t2, client).is_ok());
        }
        assert!(limiter.check(t2, client).is_err());
    }

    #[test]
    fn rate_zero_means_no_limit() {
        let mut limiter = RateLimiter::new(0, 1);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.check(t0, ip("192.0.2.1")).is_ok());
        }
    }

    #[test]
    fn quiet_clients_are_forgotten_when_many_have_come() {
        let mut limiter = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        for i in 0..RATE_BUCKETS_KEPT as u32 {
            let _ = limiter.check(t0, IpAddr::V4((0x0a00_0000 + i).into()));
        }
        assert_eq!(limiter.buckets.len(), RATE_BUCKETS_KEPT);
        // A second later they have all refilled: the next new client prunes them.
        let _ = limiter.check(t0 + Duration::from_secs(2), ip("192.0.2.1"));
        assert_eq!(limiter.buckets.len(), 1);
    }

    #[test]
    fn a_connection_that_never_finishes_its_header_times_out() {
        let t0 = Instant::now();
        let header = Duration::from_secs(3);
        let mut clock = ConnectionClock::new(t0, header, Duration::from_secs(30));
        // One byte a second: each read is activity, but the header's clock runs from the first.
        for s in 0..3 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(clock.expired(now), None);
            clock.on_read(now);
        }
        assert_eq!(clock.deadline(), t0 + Duration::from_secs(3));
        assert_eq!(
            clock.expired(t0 + Duration::from_secs(3)),
            Some(Expiry::HeaderTimeout)
        );
    }

    #[test]
    fn keep_alive_connections_idle_out_between_requests() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(5);
        let mut clock = ConnectionClock::new(t0, Duration::from_secs(2), idle);
        assert_eq!(clock.deadline(), t0 + idle, "a fresh silent connection");
        clock.on_read(t0 + Duration::from_secs(1));
        clock.on_request(t0 + Duration::from_secs(1));
        // A handler that waits long on something else is not idle while bytes have moved.
        let handler_done = t0 + Duration::from_secs(4);
        assert_eq!(clock.expired(handler_done), None);
        clock.on_response(handler_done);
        clock.on_write(handler_done);
        assert_eq!(clock.expired(handler_done + Duration::from_secs(4)), None);
        assert_eq!(
            clock.expired(handler_done + idle),
            Some(Expiry::Idle),
            "no next request"
        );
    }

    #[test]
    fn a_stalled_request_idles_out() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(5);
        let mut clock = ConnectionClock::new(t0, Duration::from_secs(2), idle);
        clock.on_read(t0);
        clock.on_request(t0);
        clock.on_read(t0 + Duration::from_secs(3));
        assert_eq!(clock.expired(t0 + Duration::from_secs(7)), None);
        assert_eq!(
            clock.expired(t0 + Duration::from_secs(8)),
            Some(Expiry::Idle)
        );
    }
}
