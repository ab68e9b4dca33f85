//! The HTTP server's connection loop: accepts connections up to `http.max_connections`, holds
//! each to its header and idle timeouts (`limits::ConnectionClock`), hands requests to the
//! router with the client's address, and keeps WebSocket upgrades working. With TLS
//! (`tls::TlsServer`) each connection's handshake comes first and must end within
//! `http.header_timeout_ms` of the TCP accept (a handshake that does not is counted as a header
//! timeout); then the connection's clock runs from the accept as over plain HTTP: idle until a
//! request begins (browsers open connections ahead of need), then the header timeout. On
//! shutdown it stops accepting, lets requests under way finish, and closes the rest.
//!
//! With `media.tcp_on_http` (`door`), each connection's first bytes are read first
//! (`first_bytes`): HTTP and TLS go on as above with those bytes replayed; an ICE-TCP
//! connection whose first check names a live session moves to that session's worker
//! (`ice_door`); anything else, or silence past the sniffing deadline, is closed and counted.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::Control;
use super::first_bytes::{FirstBytes, Rewound, SNIFF_DEADLINE, read_first_bytes};
use super::limits::{ConnectionClock, ConnectionSlot, Expiry, HttpLimits};
use super::tls::TlsServer;

/// How long shutdown waits for requests under way before the process goes on without them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A request header larger than this is refused (431). Real WHIP/WHEP headers are well under
/// 2 kB.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Each connection's read buffer, at most.
const MAX_READ_BUFFER: usize = 64 * 1024;
/// Written to a connection refused for `http.max_connections`, before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    content-type: text/plain; charset=utf-8\r\ncontent-length: 60\r\n\
    retry-after: 1\r\nconnection: close\r\n\r\n\
    too many open connections (http.max_connections); try again\n";

/// A connection's clock, shared by its socket, its requests and its watchdog.
struct Timers {
    clock: Mutex<ConnectionClock>,
    /// Wakes the watchdog when the deadline moves earlier (a silent connection begins a
    /// header), so that it does not sleep to the deadline it saw before.
    earlier: Notify,
    /// Whether a request has reached the router: until then, whatever the connection writes
    /// is hyper's own answer to a request it could not parse.
    dispatched: AtomicBool,
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, ConnectionClock> {
        self.clock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, event: impl FnOnce(&mut ConnectionClock, Instant)) {
        let mut clock = self.lock();
        let before = clock.deadline();
        event(&mut clock, Instant::now());
        if clock.deadline() < before {
            self.earlier.notify_one();
        }
    }
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until `shutdown` completes;
/// with `door`, ICE-TCP connections go to their sessions' workers (`media.tcp_on_http`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Arc<HttpLimits>,
    tls: Option<Arc<TlsServer>>,
    door: Option<Arc<Control>>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: accepting again at once would spin.
                    tracing::warn!("accepting an HTTP connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let Some(slot) = limits.admit_connection(peer.ip()) else {
            // Nothing is read: the answer goes out if the socket takes it, and the close follows.
            // A TLS client could not read a plain answer: it only sees the close.
            if tls.is_none() {
                let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            }
            tracing::debug!(%peer, "refused a connection: http.max_connections are open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, limits, tls, stop) =
            (router.clone(), limits.clone(), tls.clone(), stop_rx.clone());
        match door.clone() {
            None => connections.spawn(accept_connection(
                stream, peer, slot, router, limits, tls, stop, None,
            )),
            Some(door) => connections.spawn(sniff_connection(
                stream, peer, slot, router, limits, tls, stop, door,
            )),
        };
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "closing HTTP connections still open after the shutdown grace"
        );
    }
}

/// Reads a connection's first bytes (`media.tcp_on_http`) and sends it where they say: the
/// HTTP(S) server, a session's worker, or closed. Each counted by what it turned out to be.
#[allow(clippy::too_many_arguments)]
async fn sniff_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    router: Router,
    limits: Arc<HttpLimits>,
    tls: Option<Arc<TlsServer>>,
    stop: watch::Receiver<bool>,
    door: Arc<Control>,
) {
    let accepted = Instant::now();
    let deadline = SNIFF_DEADLINE.min(limits.header_timeout);
    let counters = &limits.counters.sniffed;
    let prefix = match read_first_bytes(&mut stream, deadline).await {
        FirstBytes::Http(prefix) => {
            counters.http.fetch_add(1, Ordering::Relaxed);
            prefix
        }
        FirstBytes::Tls(prefix) => {
            counters.tls.fetch_add(1, Ordering::Relaxed);
            prefix
        }
        FirstBytes::IceTcp { bytes, frame_len } => {
            let owner = door.ice_tcp_owner(&bytes[2..frame_len]);
            let std_stream = stream.into_std();
            match (owner, std_stream) {
                (Some((worker, session)), Ok(std_stream)) => {
                    // The workers' rings read sockets in blocking mode, as accepted there.
                    let _ = std_stream.set_nonblocking(false);
                    counters.ice_tcp.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, session, worker, "ICE-TCP on the HTTP port");
                    // The connection leaves the HTTP server's count with its slot.
                    drop(slot);
                    door.hand_over_ice_tcp(worker, session, std_stream, peer, bytes);
                }
                _ => {
                    counters.closed_unknown.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "closing an ICE-TCP connection naming no live session");
                }
            }
            return;
        }
        FirstBytes::Unknown => {
            counters.closed_unknown.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "closing a connection that is neither HTTP, TLS nor ICE-TCP");
            return;
        }
        FirstBytes::TimedOut => {
            counters.closed_timeout.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "closing a connection that said nothing in time");
            return;
        }
    };
    let stream = Rewound::new(prefix, stream);
    accept_connection(
        stream,
        peer,
        slot,
        router,
        limits,
        tls,
        stop,
        Some(accepted),
    )
    .await
}

/// Runs the TLS handshake when the listener has TLS, within the header timeout, then serves
/// the connection. `accepted`: when it was accepted, if that was before now (its first bytes
/// were read first).
#[allow(clippy::too_many_arguments)]
async fn accept_connection<S>(
    stream: S,
    peer: SocketAddr,
    slot: ConnectionSlot,
    router: Router,
    limits: Arc<HttpLimits>,
    tls: Option<Arc<TlsServer>>,
    stop: watch::Receiver<bool>,
    accepted: Option<Instant>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = tls else {
        return serve_connection(stream, peer, slot, router, limits, accepted, stop).await;
    };
    let accepted = accepted.unwrap_or_else(Instant::now);
    let left = limits.header_timeout.saturating_sub(accepted.elapsed());
    let handshake = tokio::time::timeout(left, tls.acceptor().accept(stream));
    let mut stopping = stop.clone();
    let done = tokio::select! {
        done = handshake => done,
        _ = stopping.wait_for(|stopping| *stopping) => return,
    };
    match done {
        Ok(Ok(stream)) => {
            serve_connection(stream, peer, slot, router, limits, Some(accepted), stop).await
        }
        Ok(Err(e)) => {
            limits
                .counters
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "TLS handshake failed: {e}");
        }
        Err(_) => {
            limits.count_expiry(Expiry::HeaderTimeout);
            tracing::debug!(%peer, "closing a connection whose TLS handshake took too long");
        }
    }
}

/// Serves one connection. `started` is when a TLS connection was accepted: its clock runs
/// from then, handshake included.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    slot: ConnectionSlot,
    router: Router,
    limits: Arc<HttpLimits>,
    started: Option<Instant>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = ConnectionClock::new(
        started.unwrap_or_else(Instant::now),
        limits.header_timeout,
        limits.idle_timeout,
    );
    let timers = Arc::new(Timers {
        clock: Mutex::new(clock),
        earlier: Notify::new(),
        dispatched: AtomicBool::new(false),
    });
    let io = TokioIo::new(Watched {
        stream,
        timers: timers.clone(),
        own_answer: None,
        _slot: slot,
    });
    let service = Handler {
        router: TowerToHyperService::new(router),
        peer,
        timers: timers.clone(),
    };
    let connection = hyper::server::conn::http1::Builder::new()
        // The timeouts are the clock's; hyper's own header timer would need a timer set and
        // would close keep-alive connections as if they were slow.
        .header_read_timeout(None)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        let deadline = timers.lock().deadline();
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "HTTP connection ended: {e}");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                let expired = timers.lock().expired(Instant::now());
                if let Some(expiry) = expired {
                    limits.count_expiry(expiry);
                    tracing::debug!(%peer, ?expiry, "closing an HTTP connection");
                    // Dropping the connection closes the socket; its handler, if any, is cancelled.
                    return;
                }
            }
            () = timers.earlier.notified() => {}
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The router as hyper's service for one connection: each request carries the client's address
/// (`ConnectInfo`), and the connection's clock knows when a handler runs.
#[derive(Clone)]
struct Handler {
    router: TowerToHyperService<Router>,
    peer: SocketAddr,
    timers: Arc<Timers>,
}

/// A request being handled: tells the clock when it ends, however it ends.
struct InFlight(Arc<Timers>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(ConnectionClock::on_response);
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for Handler {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.timers.dispatched.store(true, Ordering::Relaxed);
        self.timers.update(ConnectionClock::on_request);
        let in_flight = InFlight(self.timers.clone());
        let response = self.router.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

/// The connection's socket (over TLS: its plaintext side), telling its clock when bytes move;
/// it holds the connection's slot, so an upgraded WebSocket keeps the slot until it closes.
struct Watched<S> {
    stream: S,
    timers: Arc<Timers>,
    /// hyper answers a request it cannot parse (400, 414, 431) with an empty body and closes.
    /// Once such an answer is seen, this is what goes out instead (what is left to send), and
    /// hyper's bytes are dropped.
    own_answer: Option<Vec<u8>>,
    _slot: ConnectionSlot,
}

/// The answer to send instead of `written`, the first bytes hyper writes on a connection, when
/// no request reached the router: then it can only be hyper's answer to an unparsable request.
fn answer_with_a_body(written: &[u8]) -> Option<Vec<u8>> {
    let code = written.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let status = StatusCode::from_bytes(code).ok()?;
    let what = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            format!("the request header is over {MAX_HEADER_BYTES} bytes or has too many fields")
        }
        StatusCode::URI_TOO_LONG => "the request's path is too long".to_string(),
        s if s.is_client_error() || s.is_server_error() => {
            "the request is not HTTP/1.1 this server can parse (its request line or a header \
             is malformed)"
                .to_string()
        }
        _ => return None,
    };
    let body = format!("{what}\n");
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.timers.update(ConnectionClock::on_read);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.timers.update(ConnectionClock::on_write);
        }
    }

    /// Sends what is left of [`Watched::own_answer`].
    fn poll_own_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.own_answer.as_mut().filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rest.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.own_answer.is_none() && !self.timers.dispatched.load(Ordering::Relaxed) {
            self.own_answer = answer_with_a_body(buf);
        }
        if self.own_answer.is_some() {
            ready!(self.poll_own_answer(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.own_answer.is_some() || !self.timers.dispatched.load(Ordering::Relaxed) {
            // One slice at a time, so that the start of hyper's answer is seen whole.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return self.poll_write(cx, first);
        }
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_own_answer(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_own_answer(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_says_its_own_length() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[test]
    fn hypers_bodiless_errors_get_a_body_that_says_what_is_wrong() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                      content-length: 0\r\n\r\n";
        let answer = String::from_utf8(answer_with_a_body(hyper).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(body.contains("16384 bytes"), "{body}");
        let answer = answer_with_a_body(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        assert!(String::from_utf8(answer).unwrap().contains("malformed"));
        // Only errors are replaced, and only whole status lines are read.
        assert_eq!(answer_with_a_body(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(answer_with_a_body(b"HTTP/1.1 4"), None);
        assert_eq!(answer_with_a_body(b"hello"), None);
    }
}
