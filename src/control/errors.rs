//! The errors the control thread answers HTTP clients with.

use crate::sdp::NegotiationError;

/// An error for an HTTP client: status and a message that says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
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
