//! The errors the control thread answers HTTP clients with.

use crate::sdp::NegotiationError;

/// An error for an HTTP client: status and a message that says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Where to go instead (a 307's `Location`): a cluster node with room.
    pub location: Option<String>,
    /// When to come back (a `503`'s `Retry-After`, whole seconds): the relay is taking as
    /// many joins as it can.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            location: None,
            retry_after: None,
        }
    }

    /// A `307 Temporary Redirect` to `location`: the request is to be sent there unchanged.
    pub fn redirect(location: String, message: impl Into<String>) -> Self {
        ApiError {
            location: Some(location),
            ..ApiError::new(307, message)
        }
    }
}

impl From<NegotiationError> for ApiError {
    fn from(e: NegotiationError) -> Self {
        match e {
            NegotiationError::Malformed(_) => ApiError::new(400, e.to_string()),
            NegotiationError::NoCommonCodec(_) => ApiError::new(406, e.to_string()),
        }
    }
}
