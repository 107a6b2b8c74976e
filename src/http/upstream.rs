//! One HTTP/1 exchange with the vendor: the request header sent upstream, the final
//! response header, and the first part of a response body read for inspection without ever
//! losing a byte of it.

use bytes::{Bytes, BytesMut};
use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::{Error, ErrorType, Result};

use super::body::RequestBody;
use super::headers;

/// The header sent upstream: the app's, with `Host` set to the vendor, hop-by-hop headers
/// and `drop` (Switchboard's own request headers) removed. A fully buffered body is sent
/// with an exact `Content-Length`.
pub fn request_header(
    app: &RequestHeader,
    host: &http::HeaderValue,
    drop: &[HeaderName],
    body: &RequestBody,
) -> Box<RequestHeader> {
    let mut req = Box::new(app.clone());
    prepare(&mut req, host, drop);
    // The body is already here (or streams on); the vendor must not wait for a go-ahead.
    headers::remove(&mut req, &http::header::EXPECT);
    if !body.streaming && body.present {
        headers::remove(&mut req, &http::header::TRANSFER_ENCODING);
        let _ = req.insert_header(
            http::header::CONTENT_LENGTH,
            body.buffered.len().to_string(),
        );
    }
    req
}

/// What every request header sent upstream gets, on either path (the exchange, or
/// an upgrade's relay): `Host` is the vendor's, hop-by-hop headers and `drop` go.
pub fn prepare(req: &mut RequestHeader, host: &http::HeaderValue, drop: &[HeaderName]) {
    let _ = req.insert_header(http::header::HOST, host.clone());
    headers::strip_request_hop_by_hop(req);
    for name in drop {
        headers::remove(req, name);
    }
}

/// Reads past informational (1xx) responses to the final header, and returns it as it is
/// forwarded (see [`headers::forwardable`]).
pub async fn read_final_header(up: &mut UpstreamSession) -> Result<ResponseHeader> {
    loop {
        up.read_response_header().await?;
        let Some(h) = up.response_header() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header");
        };
        let status = h.status.as_u16();
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        return Ok(headers::forwardable(h));
    }
}

/// The first part of a response body.
pub struct Prefix {
    /// Every byte read, in order: at least `cap` bytes unless the body ended first, and at
    /// most `cap` plus one read's worth. Nothing read is ever dropped, so a body that turns
    /// out to be a success can be sent on whole.
    pub bytes: Bytes,
    /// The body ended within what was read.
    pub complete: bool,
    /// Reading failed (the connection broke) after `bytes`.
    pub error: Option<Box<Error>>,
}

impl Prefix {
    /// What an inspector may look at: at most `cap` bytes, and whether more followed.
    pub fn inspected(&self, cap: usize) -> (&[u8], bool) {
        let n = self.bytes.len().min(cap);
        (&self.bytes[..n], !self.complete || self.bytes.len() > cap)
    }
}

/// Reads the response body until it ends or at least `cap` bytes are in hand, and no later
/// than `until` when given (then what came by then, with a timeout error). One timer for
/// the whole read, and only if a read has to wait.
pub async fn read_prefix(
    up: &mut UpstreamSession,
    cap: usize,
    until: Option<std::time::Instant>,
) -> Prefix {
    let mut buf = BytesMut::new();
    let read = match until {
        None => fill(up, cap, &mut buf).await,
        Some(t) => {
            let left = t.saturating_duration_since(std::time::Instant::now());
            match pingora::prelude::timeout(left, fill(up, cap, &mut buf)).await {
                Ok(r) => r,
                Err(_) => Error::e_explain(ErrorType::ReadTimedout, "deadline passed"),
            }
        }
    };
    let (complete, error) = match read {
        Ok(complete) => (complete, None),
        Err(e) => (false, Some(e)),
    };
    Prefix {
        bytes: buf.freeze(),
        complete,
        error,
    }
}

/// Reads into `buf` until the body ends (`true`) or `buf` holds at least `cap` bytes. What
/// was read stays in `buf` whatever happens, even when this future is dropped.
async fn fill(up: &mut UpstreamSession, cap: usize, buf: &mut BytesMut) -> Result<bool> {
    loop {
        match up.read_response_body().await? {
            Some(chunk) => {
                buf.extend_from_slice(&chunk);
                if buf.len() >= cap {
                    // Ended exactly here? Pingora knows without another read.
                    return Ok(up.response_done());
                }
            }
            None => return Ok(true),
        }
    }
}
