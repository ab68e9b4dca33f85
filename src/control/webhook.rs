//! The admission webhook (`[auth.webhook]`), as SRS's and OvenMediaEngine's HTTP callbacks:
//! before a publish or play is accepted the relay POSTs what is asked, as JSON, and goes on
//! only on a 2xx answer within `timeout_ms`. Anything else refuses the session: a non-2xx
//! answer (403 to the client, with the webhook's own words), no answer in time or no answer at
//! all (503: the relay fails closed). After the fact, `unpublish` and `stop` notifications say
//! that an admitted session ended; their answers are not waited on.
//!
//! ```json
//! {"action":"publish","stream":"cam","session":7,"client":"203.0.113.7",
//!  "claims":{"sub":"alice","exp":1767225600,"allow":["publish"],"streams":"cam*"}}
//! {"action":"unpublish","stream":"cam","session":7,"client":"203.0.113.7","claims":{...},
//!  "reason":"deleted by the client"}
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::ApiError;
use super::auth::WebhookConfig;
use crate::client::http::{HttpClient, Trust};

/// What the webhook is told.
#[derive(Debug, Clone, Serialize)]
pub struct HookEvent {
    /// `publish` or `play` (asking), `unpublish` or `stop` (telling).
    pub action: &'static str,
    pub stream: String,
    pub session: u64,
    pub client: IpAddr,
    /// The token's claims (a JWT's payload, or a static token's name, rights and streams);
    /// null when the relay requires no token.
    pub claims: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The webhook's answer to a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// It answered, but not 2xx: its status and (the start of) its body.
    Deny {
        status: u16,
        body: String,
    },
    /// No usable answer: timeout, refused connection, TLS failure.
    Failed(String),
}

impl Verdict {
    /// What the client is told when the session is refused; `None` when it is allowed.
    pub fn refusal(&self, action: &str, stream: &str) -> Option<ApiError> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny { status, body } => Some(ApiError::new(
                403,
                format!(
                    "the admission webhook refused to {action} `{stream}` ({status}){}",
                    if body.is_empty() {
                        String::new()
                    } else {
                        format!(": {body}")
                    }
                ),
            )),
            Verdict::Failed(why) => Some(ApiError::new(
                503,
                format!(
                    "the admission webhook could not be asked ({why}), and without its answer \
                     nothing is admitted; try again"
                ),
            )),
        }
    }
}

#[derive(Default)]
pub struct WebhookCounters {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub failed: AtomicU64,
    pub notifications_failed: AtomicU64,
}

pub struct Webhook {
    url: String,
    timeout: Duration,
    client: HttpClient,
    pub counters: WebhookCounters,
}

/// The longest part of a refusing webhook's body passed on to the client.
const BODY_SHOWN: usize = 200;

impl Webhook {
    pub fn new(config: &WebhookConfig) -> Result<Webhook, String> {
        let client = HttpClient::new(&Trust {
            ca_file: config.ca_file.clone(),
            insecure: false,
        })
        .map_err(|e| format!("auth.webhook.ca_file: {e}"))?;
        Ok(Webhook {
            url: config.url.clone(),
            timeout: config.timeout,
            client,
            counters: WebhookCounters::default(),
        })
    }

    /// Asks whether `event` may go ahead (counted).
    pub async fn ask(&self, event: &HookEvent) -> Verdict {
        let verdict = match self.post(event).await {
            Ok((status, _)) if (200..300).contains(&status) => Verdict::Allow,
            Ok((status, body)) => {
                let body: String = body.trim().chars().take(BODY_SHOWN).collect();
                Verdict::Deny { status, body }
            }
            Err(why) => Verdict::Failed(why),
        };
        let counter = match &verdict {
            Verdict::Allow => &self.counters.allowed,
            Verdict::Deny { .. } => &self.counters.denied,
            Verdict::Failed(why) => {
                tracing::warn!(url = %self.url, %why, "the admission webhook failed; refusing");
                &self.counters.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        verdict
    }

    /// Tells the webhook that an admitted session ended; failures are counted, not retried.
    pub fn notify(self: &Arc<Self>, event: HookEvent) {
        let hook = self.clone();
        tokio::spawn(async move {
            match hook.post(&event).await {
                Ok((status, _)) if (200..300).contains(&status) => {}
                outcome => {
                    hook.counters
                        .notifications_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        action = event.action,
                        ?outcome,
                        "webhook notification failed"
                    );
                }
            }
        });
    }

    async fn post(&self, event: &HookEvent) -> Result<(u16, String), String> {
        let body = serde_json::to_string(event).map_err(|e| e.to_string())?;
        match self
            .client
            .request(
                "POST",
                &self.url,
                Some("application/json"),
                &body,
                self.timeout,
            )
            .await
        {
            Ok(response) => Ok((response.status, response.body)),
            Err(crate::client::http::HttpError::Timeout(_)) => Err(format!(
                "no answer within auth.webhook.timeout_ms = {}",
                self.timeout.as_millis()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_who_refused_and_why() {
        let deny = Verdict::Deny {
            status: 403,
            body: "not on the guest list".into(),
        };
        let e = deny.refusal("publish", "cam").unwrap();
        assert_eq!(e.status, 403);
        assert!(
            e.message
                .contains("webhook refused to publish `cam` (403): not on the guest list"),
            "{}",
            e.message
        );
        let e = Verdict::Failed("no answer within 100".into())
            .refusal("play", "cam")
            .unwrap();
        assert_eq!(e.status, 503);
        assert!(Verdict::Allow.refusal("play", "cam").is_none());
    }

    #[test]
    fn events_serialize_with_the_documented_fields() {
        let event = HookEvent {
            action: "publish",
            stream: "cam".into(),
            session: 7,
            client: "203.0.113.7".parse().unwrap(),
            claims: serde_json::json!({"sub": "alice"}),
            reason: None,
        };
        let v: Value = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"action": "publish", "stream": "cam", "session": 7,
                               "client": "203.0.113.7", "claims": {"sub": "alice"}})
        );
    }
}
