//! ICE as the controlling agent towards an ICE-lite server: binding requests with
//! USE-CANDIDATE until one is answered, then a consent check every 2 s.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::link::Link;
use super::{Answer, ClientError, ClientOptions};
use crate::wire::stun::{self, BINDING_REQUEST, StunWriter};

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

/// Sends checks with USE-CANDIDATE until one is answered (the server is ICE-lite); `answered`
/// counts the binding successes the reader task has seen.
pub(super) async fn check(
    link: &Link,
    answer: &Answer,
    local_ufrag: &str,
    tie_breaker: u64,
    answered: &mut watch::Receiver<u64>,
    options: &ClientOptions,
) -> Result<(), ClientError> {
    let started = Instant::now();
    let mut check = vec![0u8; 256];
    loop {
        let n = binding_request(answer, local_ufrag, tie_breaker, &mut check);
        link.send(&check[..n])
            .await
            .map_err(super::transport_error(options.transport))?;
        let got = tokio::time::timeout(Duration::from_millis(100), answered.changed()).await;
        if matches!(got, Ok(Ok(()))) {
            return Ok(());
        }
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
