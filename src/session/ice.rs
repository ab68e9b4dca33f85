//! ICE-lite (RFC 8445 §2.5): the relay answers connectivity checks and never sends its own. The
//! peer (the controlling agent) nominates a pair with USE-CANDIDATE; the caller latches that
//! path (a UDP address or one ICE-TCP connection) as the session's destination. No valid check for `timeout` ends the session
//! (consent freshness, RFC 7675: browsers check every few seconds).
//!
//! An ICE restart (RFC 8445 §9, signalled over WHIP/WHEP PATCH) gives the session new
//! credentials, both sides' ([`IceLite::restart`]: the one place they change). The client
//! keeps checking its old pairs with the old ones until its new pairs work, so those stay
//! valid until a pair is nominated with the new credentials, or for one `timeout` at most:
//! media keeps flowing on the old path meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

use crate::wire::stun::{self, StunError, StunMessage};

/// Addresses that have passed a check; a browser tries a few candidate pairs.
const MAX_VALIDATED: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    #[error("STUN: {0}")]
    Stun(#[from] StunError),
    #[error("not a Binding request")]
    NotBindingRequest,
    #[error("USERNAME does not name this session")]
    WrongUsername,
}

/// What a valid check produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Length of the Binding success response written to the output buffer.
    pub response_len: usize,
    /// The check carried USE-CANDIDATE: the peer nominates the path it came on.
    pub use_candidate: bool,
    /// The check used the credentials of an earlier ICE session (before a restart).
    pub previous_credentials: bool,
}

/// One ICE session's credentials, as the relay checks them.
struct Credentials {
    /// `local_ufrag:remote_ufrag`, as the peer's USERNAME must read.
    expected_username: Vec<u8>,
    /// The local password's short-term key: checks are verified and answered with it.
    key: hmac::Key,
}

impl Credentials {
    fn new(local_ufrag: &str, local_pwd: &str, remote_ufrag: &str) -> Credentials {
        Credentials {
            expected_username: format!("{local_ufrag}:{remote_ufrag}").into_bytes(),
            key: stun::short_term_key(local_pwd),
        }
    }
}

pub struct IceLite {
    current: Credentials,
    /// The credentials before the last restart, and until when they are taken.
    previous: Option<(Credentials, Instant)>,
    validated: Vec<SocketAddr>,
    last_valid: Instant,
    timeout: Duration,
}

impl IceLite {
    pub fn new(
        now: Instant,
        local_ufrag: &str,
        local_pwd: &str,
        remote_ufrag: &str,
        timeout: Duration,
    ) -> Self {
        IceLite {
            current: Credentials::new(local_ufrag, local_pwd, remote_ufrag),
            previous: None,
            validated: Vec::with_capacity(MAX_VALIDATED),
            last_valid: now,
            timeout,
        }
    }

    /// Handles a STUN packet from `from`, writing the response into `out`.
    pub fn handle_check(
        &mut self,
        now: Instant,
        packet: &[u8],
        from: SocketAddr,
        out: &mut [u8],
    ) -> Result<CheckOutcome, IceError> {
        let msg = StunMessage::parse(packet)?;
        if !msg.is_binding_request() {
            return Err(IceError::NotBindingRequest);
        }
        let previous = self
            .previous
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(credentials, _)| credentials);
        let (credentials, previous_credentials) = match msg.username {
            Some(name) if name == &self.current.expected_username[..] => (&self.current, false),
            Some(name) if previous.is_some_and(|p| name == &p.expected_username[..]) => {
                (previous.expect("matched above"), true)
            }
            _ => return Err(IceError::WrongUsername),
        };
        msg.verify_integrity(&credentials.key)?;
        let response_len =
            stun::write_binding_success(out, &msg.transaction_id, from, &credentials.key)?;
        if msg.use_candidate && !previous_credentials {
            // The client uses the new ICE session: the old one is over.
            self.previous = None;
        }
        self.last_valid = now;
        if !self.validated.contains(&from) {
            if self.validated.len() == MAX_VALIDATED {
                self.validated.remove(0);
            }
            self.validated.push(from);
        }
        Ok(CheckOutcome {
            response_len,
            use_candidate: msg.use_candidate,
            previous_credentials,
        })
    }

    /// An ICE restart: checks must use the new credentials from now on; the old ones are
    /// taken until a pair is nominated with the new ones, for one `timeout` at most.
    pub fn restart(
        &mut self,
        now: Instant,
        local_ufrag: &str,
        local_pwd: &str,
        remote_ufrag: &str,
    ) {
        let old = std::mem::replace(
            &mut self.current,
            Credentials::new(local_ufrag, local_pwd, remote_ufrag),
        );
        self.previous = Some((old, now + self.timeout));
    }

    /// Whether `addr` has passed a connectivity check (DTLS is accepted only from such).
    pub fn is_validated(&self, addr: SocketAddr) -> bool {
        self.validated.contains(&addr)
    }

    /// When the session ends unless a valid check arrives first.
    pub fn deadline(&self) -> Instant {
        self.last_valid + self.timeout
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::stun::{BINDING_REQUEST, StunWriter};

    fn check(username: &str, pwd: &str, use_candidate: bool) -> Vec<u8> {
        let key = stun::short_term_key(pwd);
        let mut buf = vec![0u8; 200];
        let mut w = StunWriter::new(&mut buf, BINDING_REQUEST, &[3; 12]).unwrap();
        w.username(username.as_bytes())
            .unwrap()
            .priority(1)
            .unwrap()
            .ice_controlling(5)
            .unwrap();
        if use_candidate {
            w.use_candidate().unwrap();
        }
        w.message_integrity(&key).unwrap();
        let n = w.fingerprint().unwrap();
        buf.truncate(n);
        buf
    }

    fn agent(now: Instant) -> IceLite {
        IceLite::new(
            now,
            "srv",
            "server-password-123456",
            "cli",
            Duration::from_secs(30),
        )
    }

    #[test]
    fn valid_check_gets_response_and_reports_use_candidate() {
        let t0 = Instant::now();
        let mut ice = agent(t0);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut out = [0u8; 128];
        let r = ice
            .handle_check(
                t0,
                &check("srv:cli", "server-password-123456", false),
                from,
                &mut out,
            )
            .unwrap();
        assert!(r.response_len > 0);
        assert!(!r.use_candidate);
        assert!(ice.is_validated(from));
        let resp = StunMessage::parse(&out[..r.response_len]).unwrap();
        assert_eq!(resp.xor_mapped_address, Some(from));

        let r = ice
            .handle_check(
                t0,
                &check("srv:cli", "server-password-123456", true),
                from,
                &mut out,
            )
            .unwrap();
        assert!(r.use_candidate);
    }

    #[test]
    fn wrong_credentials_are_refused_and_do_not_validate() {
        let t0 = Instant::now();
        let mut ice = agent(t0);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut out = [0u8; 128];
        assert_eq!(
            ice.handle_check(
                t0,
                &check("srv:other", "server-password-123456", true),
                from,
                &mut out
            ),
            Err(IceError::WrongUsername)
        );
        assert_eq!(
            ice.handle_check(
                t0,
                &check("srv:cli", "guessed-password", true),
                from,
                &mut out
            ),
            Err(IceError::Stun(StunError::BadIntegrity))
        );
        assert!(!ice.is_validated(from));
    }

    #[test]
    fn after_a_restart_both_credentials_work_until_the_new_ones_are_nominated() {
        let t0 = Instant::now();
        let mut ice = agent(t0);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut out = [0u8; 128];
        let t1 = t0 + Duration::from_secs(5);
        ice.restart(t1, "srv2", "server-password-new-7890", "cli2");
        // The client still checks its old pair with the old credentials: answered, signed
        // with the old key, and said to be the old session's.
        let old = ice
            .handle_check(
                t1,
                &check("srv:cli", "server-password-123456", false),
                from,
                &mut out,
            )
            .unwrap();
        assert!(old.previous_credentials);
        let resp = StunMessage::parse(&out[..old.response_len]).unwrap();
        resp.verify_integrity(&stun::short_term_key("server-password-123456"))
            .unwrap();
        // A new check without nomination leaves the old credentials valid.
        let new = ice
            .handle_check(
                t1,
                &check("srv2:cli2", "server-password-new-7890", false),
                from,
                &mut out,
            )
            .unwrap();
        assert!(!new.previous_credentials);
        assert!(
            ice.handle_check(
                t1,
                &check("srv:cli", "server-password-123456", true),
                from,
                &mut out
            )
            .is_ok()
        );
        // A nomination with the new credentials ends the old ICE session.
        let nominated = ice
            .handle_check(
                t1,
                &check("srv2:cli2", "server-password-new-7890", true),
                from,
                &mut out,
            )
            .unwrap();
        assert!(nominated.use_candidate && !nominated.previous_credentials);
        assert_eq!(
            ice.handle_check(
                t1,
                &check("srv:cli", "server-password-123456", false),
                from,
                &mut out
            ),
            Err(IceError::WrongUsername)
        );
    }

    #[test]
    fn old_credentials_lapse_one_timeout_after_a_restart() {
        let t0 = Instant::now();
        let mut ice = agent(t0);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut out = [0u8; 128];
        ice.restart(t0, "srv2", "server-password-new-7890", "cli2");
        let old = check("srv:cli", "server-password-123456", false);
        assert!(
            ice.handle_check(t0 + Duration::from_secs(29), &old, from, &mut out)
                .is_ok()
        );
        assert_eq!(
            ice.handle_check(t0 + Duration::from_secs(30), &old, from, &mut out),
            Err(IceError::WrongUsername)
        );
        // The old password never answers for the new username.
        assert_eq!(
            ice.handle_check(
                t0 + Duration::from_secs(1),
                &check("srv2:cli2", "server-password-123456", false),
                from,
                &mut out
            ),
            Err(IceError::Stun(StunError::BadIntegrity))
        );
    }

    #[test]
    fn session_expires_without_valid_checks_and_checks_extend_it() {
        let t0 = Instant::now();
        let mut ice = agent(t0);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut out = [0u8; 128];
        assert!(!ice.is_expired(t0 + Duration::from_secs(29)));
        let t20 = t0 + Duration::from_secs(20);
        ice.handle_check(
            t20,
            &check("srv:cli", "server-password-123456", true),
            from,
            &mut out,
        )
        .unwrap();
        assert!(!ice.is_expired(t0 + Duration::from_secs(45)));
        assert!(ice.is_expired(t20 + Duration::from_secs(30)));
        // An invalid check does not keep the session alive.
        let _ = ice.handle_check(
            t20 + Duration::from_secs(29),
            &check("x:y", "z", true),
            from,
            &mut out,
        );
        assert!(ice.is_expired(t20 + Duration::from_secs(30)));
    }
}
