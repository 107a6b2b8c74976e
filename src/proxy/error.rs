//! The request path's one error type, and the one rescue that turns it into an answer.
//!
//! Every way a request can fail before a vendor response is in hand is a [`Failure`]; the
//! exchange carries it by value (never out of band in the context), and [`Failure::rescue`]
//! decides the canonical code exactly once.

use std::time::Duration;

use pingora::{Error, ErrorType};

use crate::envelope::Code;
use crate::http::body::BodyError;
use crate::normalize::transport::{self, AttemptState};

/// Why a request got no usable vendor response.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// `Content-Length` and `Transfer-Encoding` together (request smuggling): never forwarded.
    #[error("request has both Content-Length and Transfer-Encoding")]
    Smuggling,
    /// The request body is over `max_request_body`.
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    /// The vendor's host has no address (DNS failed or timed out).
    #[error("{0}")]
    Unresolvable(String),
    /// The request's deadline passed before the vendor answered.
    #[error("no answer from the vendor within the request's deadline ({}ms)", .0.as_millis())]
    Deadline(Duration),
    /// A transport failure (connect, TLS, read, write, or the app going away).
    #[error("{0}")]
    Transport(Box<Error>),
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(limit) => Failure::TooLarge(limit),
            BodyError::Io(e) => Failure::Transport(e),
        }
    }
}

impl From<Box<Error>> for Failure {
    fn from(e: Box<Error>) -> Self {
        Failure::Transport(e)
    }
}

pub use crate::metrics::Unanswered;

impl Failure {
    /// The canonical code and message to answer with, or `None` when the app went away
    /// (nobody is left to answer). `state` says whether the request had been sent.
    pub fn rescue(&self, state: AttemptState) -> Option<(Code, String)> {
        match self {
            Failure::Smuggling => Some((Code::ValidationFailed, self.to_string())),
            Failure::TooLarge(_) => Some((Code::PayloadTooLarge, self.to_string())),
            Failure::Unresolvable(_) => Some((Code::UpstreamUnavailable, self.to_string())),
            Failure::Deadline(_) => Some((Code::UpstreamTimeout, self.to_string())),
            Failure::Transport(e) => transport::classify(e, state),
        }
    }

    /// How the attempt counts in `switchboard_upstream_attempts_total`.
    pub fn unanswered(&self, sent: bool) -> Unanswered {
        match self {
            Failure::Deadline(_) => Unanswered::Timeout,
            Failure::Transport(e)
                if matches!(
                    e.etype(),
                    ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                ) =>
            {
                Unanswered::Timeout
            }
            _ if sent => Unanswered::Lost,
            _ => Unanswered::ConnectError,
        }
    }

    /// The underlying Pingora error, for Pingora's hooks (a cut stream, the access log).
    /// Only transport failures can leave nobody to answer; the other arms keep it total.
    pub fn into_pingora(self) -> Box<Error> {
        match self {
            Failure::Transport(e) => e,
            other => Error::explain(ErrorType::InternalError, other.to_string()),
        }
    }
}
