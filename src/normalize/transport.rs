//! Classifies transport failures (no usable vendor response) into canonical codes.
//!
//! The distinction that matters for safety: a failure *before the request was sent* means the
//! vendor never saw it (`upstream_unavailable`, always safe to repeat); a failure *after* it
//! was sent means the vendor may have acted on it. For a non-idempotent request that is
//! `outcome_unknown`: the app must check state before repeating (a call may have been placed).

use pingora::{Error, ErrorSource, ErrorType};

use crate::envelope::Code;

/// What Switchboard knows about how far a failed attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptState {
    /// The request header was handed to the upstream connection.
    pub sent: bool,
    /// The method is idempotent, or the request carries an idempotency key.
    pub idempotent: bool,
}

/// The canonical code and a message for a Pingora error, or `None` when the error is the
/// client's side going away (nobody left to answer).
pub fn classify(e: &Error, state: AttemptState) -> Option<(Code, String)> {
    use ErrorType::*;
    let etype = e.etype();
    let detail = short(e);
    let lost = |what: &str| {
        if state.idempotent {
            (
                Code::UpstreamUnavailable,
                format!("vendor connection {what} before a response: {detail}"),
            )
        } else {
            (
                Code::OutcomeUnknown,
                format!(
                    "the request was sent but the vendor's response was lost ({what}); \
                     check whether it took effect before repeating it"
                ),
            )
        }
    };
    let out = match (e.esource(), etype) {
        (_, HTTPStatus(413)) => (Code::PayloadTooLarge, "request body too large".into()),
        (_, HTTPStatus(s)) if *s < 500 => {
            (Code::ValidationFailed, format!("bad request: {detail}"))
        }
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
        (ErrorSource::Downstream, ReadTimedout | WriteTimedout) => (
            Code::ValidationFailed,
            "timed out reading the request from the client".into(),
        ),
        (ErrorSource::Downstream, _) => (
            Code::ValidationFailed,
            format!("malformed request: {detail}"),
        ),
        (_, ConnectTimedout) => (
            Code::UpstreamUnavailable,
            format!("connecting to the vendor timed out: {detail}"),
        ),
        (
            _,
            ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError
            | ConnectProxyFailure,
        ) => (
            Code::UpstreamUnavailable,
            format!("cannot connect to the vendor: {detail}"),
        ),
        (
            _,
            TLSWantX509Lookup | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert
            | HandshakeError,
        ) => (
            Code::UpstreamUnavailable,
            format!("TLS with the vendor failed: {detail}"),
        ),
        (_, ReadTimedout) if state.sent => (
            Code::UpstreamTimeout,
            "the vendor did not respond within the configured timeout".into(),
        ),
        (_, WriteTimedout) if state.sent => lost("write timed out"),
        (
            _,
            ReadError | WriteError | ConnectionClosed | H1Error | H2Error | InvalidH2
            | InvalidHTTPHeader,
        ) if state.sent => lost("closed or garbled"),
        (_, ReadTimedout | WriteTimedout) => {
            (Code::UpstreamTimeout, format!("vendor timed out: {detail}"))
        }
        _ if !state.sent => (
            Code::UpstreamUnavailable,
            format!("vendor unreachable: {detail}"),
        ),
        _ => lost("failed"),
    };
    Some(out)
}

/// `ConnectRefused: Connection refused (os error 111)` rather than Pingora's full context
/// chain, which names internal addresses and repeats itself.
fn short(e: &Error) -> String {
    let root = e.root_cause().to_string();
    let kind = e.etype().as_str();
    if root.is_empty() || root == kind {
        kind.to_string()
    } else {
        format!("{kind}: {root}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(t: ErrorType) -> Box<Error> {
        Error::new_up(t)
    }

    const SENT_POST: AttemptState = AttemptState {
        sent: true,
        idempotent: false,
    };
    const SENT_GET: AttemptState = AttemptState {
        sent: true,
        idempotent: true,
    };
    const UNSENT: AttemptState = AttemptState {
        sent: false,
        idempotent: false,
    };

    fn code(e: &Error, s: AttemptState) -> Option<Code> {
        classify(e, s).map(|(c, _)| c)
    }

    #[test]
    fn connect_failures_are_unavailable() {
        for t in [
            ErrorType::ConnectRefused,
            ErrorType::ConnectTimedout,
            ErrorType::TLSHandshakeFailure,
        ] {
            assert_eq!(code(&up(t), UNSENT), Some(Code::UpstreamUnavailable));
        }
    }

    #[test]
    fn lost_response_depends_on_idempotency() {
        let e = up(ErrorType::ConnectionClosed);
        assert_eq!(code(&e, SENT_POST), Some(Code::OutcomeUnknown));
        assert_eq!(code(&e, SENT_GET), Some(Code::UpstreamUnavailable));
        assert_eq!(code(&e, UNSENT), Some(Code::UpstreamUnavailable));
    }

    #[test]
    fn read_timeout_after_send_is_timeout() {
        assert_eq!(
            code(&up(ErrorType::ReadTimedout), SENT_POST),
            Some(Code::UpstreamTimeout)
        );
    }

    #[test]
    fn client_gone_needs_no_answer() {
        assert_eq!(
            code(&Error::new_down(ErrorType::ConnectionClosed), SENT_GET),
            None
        );
        assert_eq!(
            code(&Error::new_down(ErrorType::InvalidHTTPHeader), UNSENT),
            Some(Code::ValidationFailed)
        );
    }
}
