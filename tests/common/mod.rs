//! Helpers shared by the integration tests: a real corecast process on loopback, a minimal
//! HTTP client, a Chromium driven through chromedriver and a Firefox driven through WebDriver
//! BiDi.

#![allow(dead_code)]

pub mod chromium;
pub mod firefox;
pub mod live;
pub mod netns;
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Runs the calling test again inside a fresh network namespace whose only interface is
/// loopback, so the browser and the relay can reach nothing else (and the kernel never answers
/// a TCP handshake from a non-loopback candidate). Returns `true` when it did so and the
/// caller should return; `false` inside the namespace, or where namespaces cannot be made
/// (not root), in which case the test runs on the host's loopback.
pub fn in_private_network(test: &str) -> bool {
    in_private_network_set_up(test, "true")
}

/// As [`in_private_network`], with `setup` (shell commands, such as a smaller loopback MTU) run
/// inside the namespace first.
pub fn in_private_network_set_up(test: &str, setup: &str) -> bool {
    if std::env::var_os("IN_TEST_NETNS_OF_CORECAST").is_some() {
        return false;
    }
    let usable = Command::new("unshare")
        .args(["-n", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!(
            "note: cannot create a network namespace (needs root); running on the host's loopback"
        );
        return false;
    }
    let exe = std::env::current_exe().expect("test executable");
    let output = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            &format!("ip link set lo up && {setup} && exec \"$0\" \"$@\""),
        ])
        .arg(exe)
        // `--include-ignored`: the outer run chose this test, ignored or not.
        .args([
            test,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env("IN_TEST_NETNS_OF_CORECAST", "1")
        .output()
        .expect("running the test in a network namespace");
    // The inner run's own report would read as a second test run: show it only on failure.
    assert!(
        output.status.success(),
        "{test} failed inside its network namespace:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

/// Polls `done` every 20 ms for up to `within` and says whether it came true; the caller
/// asserts on that with what it knows of the failure (a relay's log, say).
pub async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on loopback for a server a test starts (a relay's HTTP listener,
/// chromedriver, Redis).
///
/// Taken from below the kernel's ephemeral range (32768-60999 by default), from a block of this
/// test process's own, in turn: the OS's "any free port" may hand the same port to two tests of
/// one process, or to a client's outgoing connection, between the check and the server's bind.
/// A port of the block that something holds is skipped.
pub fn free_tcp_port() -> u16 {
    free_port_of_this_process(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// The next port of this test process's block (10000-29999, 200 per process) that `free` says
/// is free.
fn free_port_of_this_process(free: impl Fn(u16) -> bool) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const BLOCK: u16 = 200;
    let base = 10000 + (std::process::id() % 100) as u16 * BLOCK;
    for _ in 0..BLOCK {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % BLOCK;
        if free(port) {
            return port;
        }
    }
    panic!(
        "every port of this test process's block {base}-{} is held",
        base + BLOCK - 1
    );
}

/// A media port range for one test relay. Ranges of relays running at once may overlap: the
/// relay skips ports that are taken.
pub fn media_range(len: u16) -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 40000 + ((std::process::id() as u16 % 50) * 400) + slot * 20;
    format!("{}-{}", base, base + len - 1)
}

/// A port free for both UDP and TCP on loopback, for one relay's shared media port
/// (`media.mux_port`); from the same block as [`free_tcp_port`], for the same reason.
pub fn free_mux_port() -> u16 {
    free_mux_port_on("127.0.0.1")
}

/// As [`free_mux_port`], on address `ip` (`::1`, a namespace's own address).
pub fn free_mux_port_on(ip: &str) -> u16 {
    free_port_of_this_process(|port| {
        TcpListener::bind((ip, port)).is_ok() && UdpSocket::bind((ip, port)).is_ok()
    })
}

/// The workers' I/O backend the suite runs its relays on: `TEST_BACKEND_OF_CORECAST` (`epoll`,
/// `io_uring`, `auto`), which `tests/run` sets for its second pass; unset, the relay's default.
/// A test's own `CORECAST_WORKERS_BACKEND` wins. (Not `CORECAST_...`: the relay refuses
/// environment variables of that prefix that name no key.)
pub fn test_backend() -> Option<String> {
    std::env::var("TEST_BACKEND_OF_CORECAST")
        .ok()
        .filter(|b| !b.is_empty())
}

/// A corecast process started for one test; killed (by its PID) when dropped.
pub struct Relay {
    child: Child,
    pub http: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Relay {
    pub fn start(env: &[(&str, &str)]) -> Relay {
        Relay::start_with_args(env, &[])
    }

    /// As [`Relay::start`], with command-line arguments (`--config FILE`).
    ///
    /// The HTTP port is one the OS just called free, so another process (a relay of a test
    /// running beside this one, a client's outgoing connection) may take it before this relay
    /// binds it: the relay is then started again on another port. A connection to the port
    /// proves nothing (it may reach that other process), so start-up is judged by this relay's
    /// own "page:" line, printed once it holds the port.
    pub fn start_with_args(env: &[(&str, &str)], args: &[&str]) -> Relay {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            match Relay::try_start(env, args) {
                Ok(relay) => return relay,
                Err(log) if attempt < ATTEMPTS && log.contains("binding http.listen") => {
                    eprintln!("the relay's HTTP port was taken before it bound it; again");
                }
                Err(log) => panic!("corecast did not start:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// One start on a fresh port: the relay once it has printed its page line for that port,
    /// or its log when it exited or did not get that far in 20 s.
    fn try_start(env: &[(&str, &str)], args: &[&str]) -> Result<Relay, String> {
        let port = free_tcp_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
        cmd.args(args)
            .env("CORECAST_HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,webrtc_dtls=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(backend) = test_backend() {
            cmd.env("CORECAST_WORKERS_BACKEND", backend);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting corecast");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let http = format!("http://127.0.0.1:{port}");
        let listening = format!("127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = log
                .lock()
                .unwrap()
                .lines()
                .any(|l| l.trim_start().starts_with("page:") && l.contains(&listening));
            if up {
                return Ok(Relay { child, http, log });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("exited with {status}:\n{}", log.lock().unwrap()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not up in 20 s:\n{}", log.lock().unwrap()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http, path)
    }

    /// The value of a Prometheus metric line (exact name and labels), summed if repeated.
    pub fn metric(&self, name_and_labels: &str) -> u64 {
        let body = http("GET", &self.url("/metrics"), None, "").body;
        body.lines()
            .filter_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum()
    }

    /// The sum of a per-worker metric over all workers.
    pub fn metric_all_workers(&self, name: &str) -> u64 {
        let body = http("GET", &self.url("/metrics"), None, "").body;
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The relay process's ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(method: &str, url: &str, content_type: Option<&str>, body: &str) -> Response {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("Content-Type", ct))
        .into_iter()
        .collect();
    http_with_headers(method, url, &headers, body)
}

/// One HTTP/1.1 request with `Connection: close` and the `headers` given.
pub fn http_with_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Response {
        status,
        headers,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub const CHROME_PUBLISH_OFFER: &str = include_str!("../fixtures/chrome_publish_offer.sdp");
pub const CHROME_PLAY_OFFER: &str = include_str!("../fixtures/chrome_play_offer.sdp");

/// The candidate port of an SDP answer.
pub fn answer_port(answer: &str) -> u16 {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("a=candidate:"))
        .and_then(|c| c.split_whitespace().nth(5))
        .and_then(|p| p.parse().ok())
        .expect("answer has a candidate")
}

/// Every candidate of an SDP answer: (transport, port).
pub fn answer_candidates(answer: &str) -> Vec<(String, u16)> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .map(|c| {
            let fields: Vec<&str> = c.split_whitespace().collect();
            (fields[2].to_ascii_lowercase(), fields[5].parse().unwrap())
        })
        .collect()
}

/// Sends one datagram from a fresh loopback socket.
pub fn send_udp(port: u16, payload: &[u8]) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(payload, ("127.0.0.1", port)).unwrap();
}

/// An ICE Binding request from a controlling client: USERNAME `relay_ufrag:client_ufrag`,
/// signed with `pwd` (the relay's password, or a wrong one), USE-CANDIDATE when `nominate`.
pub fn ice_check(relay_ufrag: &str, client_ufrag: &str, pwd: &str, nominate: bool) -> Vec<u8> {
    use corecast::wire::stun::{BINDING_REQUEST, StunWriter, short_term_key};
    let mut buf = vec![0u8; 256];
    let transaction: [u8; 12] = rand::random();
    let mut w = StunWriter::new(&mut buf, BINDING_REQUEST, &transaction).unwrap();
    w.username(format!("{relay_ufrag}:{client_ufrag}").as_bytes())
        .unwrap()
        .priority(1_845_501_695)
        .unwrap()
        .ice_controlling(rand::random())
        .unwrap();
    if nominate {
        w.use_candidate().unwrap();
    }
    w.message_integrity(&short_term_key(pwd)).unwrap();
    let n = w.fingerprint().unwrap();
    buf.truncate(n);
    buf
}

/// The value of an SDP attribute line (`a=ice-ufrag:`) in `sdp`.
pub fn sdp_attribute(sdp: &str, name: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {sdp}"))
        .trim()
        .to_string()
}

/// The payload of a media packet a client received, when it is RTP that parses.
pub fn rtp_payload(incoming: corecast::client::Incoming<'_>) -> Option<&[u8]> {
    let corecast::client::Incoming::Rtp(packet) = incoming else {
        return None;
    };
    let header = corecast::wire::rtp::RtpHeader::parse(packet).ok()?;
    packet.get(header.header_len..)
}
