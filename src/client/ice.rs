//! ICE as the controlling agent (RFC 8445), towards an ICE-lite or a full server: binding
//! requests with USE-CANDIDATE to the server's candidates until one answers with the server's
//! credentials, the server's own checks answered with ours ([`Responder`]), then a consent
//! check every 2 s.
//!
//! A lite server answers and takes the first check as nomination. A full server (it answers
//! without `a=ice-lite`) nominates only a pair its own check found working: the client answers
//! that check and nominates again after it, so the server selects the pair at once rather than
//! at the next consent check.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use tokio::sync::watch;

use super::link::Link;
use super::{Answer, ClientError, ClientOptions};
use crate::wire::stun::{self, BINDING_REQUEST, StunMessage, StunWriter};

/// A binding request to the relay, as the controlling agent nominating the pair: the check that
/// ICE-lite answers and takes as nomination. Returns its length in `out`.
pub fn binding_request(
    answer: &Answer,
    local_ufrag: &str,
    tie_breaker: u64,
    out: &mut [u8],
) -> usize {
    let key = stun::short_term_key(&answer.ice_pwd);
    let txid: [u8; 12] = rand::random();
    let username = format!("{}:{local_ufrag}", answer.ice_ufrag);
    let mut build = || -> Result<usize, stun::StunError> {
        let mut w = StunWriter::new(out, BINDING_REQUEST, &txid)?;
        w.username(username.as_bytes())?
            .priority(1_845_501_695)?
            .ice_controlling(tie_breaker)?
            .use_candidate()?
            .message_integrity(&key)?;
        w.fingerprint()
    };
    build().unwrap_or(0)
}

/// What the reader task has seen of ICE: the checks the server answered (and who answered
/// the last), and the server's checks this client answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct IceProgress {
    pub(super) answered: u64,
    pub(super) answered_by: Option<SocketAddr>,
    pub(super) checks_answered: u64,
    /// Checks the server answered after this client had answered one of the server's: a full
    /// server has then seen the pair work both ways, and takes the nomination.
    pub(super) answered_after_our_answer: u64,
}

/// The STUN side of ICE for the reader task, sans-IO: it checks what the server sends against
/// both sides' credentials and says what to answer.
pub(super) struct Responder {
    /// `our-ufrag:` — the start of the USERNAME of every check the server sends us.
    username_prefix: String,
    /// MESSAGE-INTEGRITY of the server's checks (our password) and of its answers (its own).
    our_key: hmac::Key,
    server_key: hmac::Key,
}

/// What one STUN message from the server calls for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum IceEvent {
    /// The server answered one of our checks, with its credentials.
    Answered,
    /// The server's check, valid: send these bytes back to where it came from.
    Reply(Vec<u8>),
    /// Neither, or not authentic: dropped.
    Ignored,
}

impl Responder {
    pub(super) fn new(local_ufrag: &str, local_pwd: &str, server_pwd: &str) -> Self {
        Responder {
            username_prefix: format!("{local_ufrag}:"),
            our_key: stun::short_term_key(local_pwd),
            server_key: stun::short_term_key(server_pwd),
        }
    }

    /// Reads one STUN message that came from `from`.
    pub(super) fn on_stun(&self, packet: &[u8], from: SocketAddr) -> IceEvent {
        let Ok(message) = StunMessage::parse(packet) else {
            return IceEvent::Ignored;
        };
        if message.is_binding_success() {
            return match message.verify_integrity(&self.server_key) {
                Ok(()) => IceEvent::Answered,
                Err(_) => IceEvent::Ignored,
            };
        }
        let ours = message
            .username
            .is_some_and(|u| u.starts_with(self.username_prefix.as_bytes()));
        if !message.is_binding_request()
            || !ours
            || message.verify_integrity(&self.our_key).is_err()
        {
            return IceEvent::Ignored;
        }
        let mut out = vec![0u8; 128];
        match stun::write_binding_success(&mut out, &message.transaction_id, from, &self.our_key) {
            Ok(n) => {
                out.truncate(n);
                IceEvent::Reply(out)
            }
            Err(_) => IceEvent::Ignored,
        }
    }
}

/// How long a check answered by a full server waits for the server's own check.
const FULL_SERVER_GRACE: Duration = Duration::from_secs(1);

/// Sends checks with USE-CANDIDATE to each of `candidates` in turn until one is answered (and,
/// with a full server, until it answered after we had answered its check); `progress` is what
/// the reader task has seen. Returns the candidate that answered: the path from now on.
pub(super) async fn check(
    link: &Link,
    answer: &Answer,
    candidates: &[SocketAddr],
    local_ufrag: &str,
    tie_breaker: u64,
    progress: &mut watch::Receiver<IceProgress>,
    options: &ClientOptions,
) -> Result<SocketAddr, ClientError> {
    let started = Instant::now();
    let mut check = vec![0u8; 256];
    let mut target = 0;
    loop {
        let seen = *progress.borrow_and_update();
        // A full server that has not checked back within a second still gets the
        // nomination from every consent check after this.
        let connected = seen.answered_by.filter(|_| {
            answer.ice_lite
                || seen.answered_after_our_answer > 0
                || started.elapsed() > FULL_SERVER_GRACE
        });
        if let Some(path) = connected {
            return Ok(path);
        }
        // Once a candidate answered, the rest of the exchange stays on it.
        let to = seen
            .answered_by
            .unwrap_or(candidates[target % candidates.len()]);
        target += 1;
        let n = binding_request(answer, local_ufrag, tie_breaker, &mut check);
        link.send_to(&check[..n], to)
            .await
            .map_err(super::transport_error(options.transport))?;
        let _ = tokio::time::timeout(Duration::from_millis(50), progress.changed()).await;
        if started.elapsed() > options.timeout {
            return Err(ClientError::IceTimeout(options.timeout));
        }
    }
}

/// Consent freshness (RFC 7675): a check every 2 s keeps the server's ICE timer fed.
pub(super) fn keep_alive(
    link: Link,
    answer: Answer,
    local_ufrag: String,
    tie_breaker: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 256];
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let n = binding_request(&answer, &local_ufrag, tie_breaker, &mut buf);
            if link.send(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
}
