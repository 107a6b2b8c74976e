//! The first part of a vendor's response body, read for inspection without ever losing a
//! byte of it.

use bytes::{Bytes, BytesMut};
use pingora::{Error, ErrorType, Result};

use super::client::Conn;

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
pub async fn read_prefix(up: &mut Conn, cap: usize, until: Option<std::time::Instant>) -> Prefix {
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
async fn fill(up: &mut Conn, cap: usize, buf: &mut BytesMut) -> Result<bool> {
    loop {
        match up.read_body().await? {
            Some(chunk) => {
                buf.extend_from_slice(&chunk);
                if buf.len() >= cap {
                    // Ended exactly here? The framing knows without another read.
                    return Ok(up.body_done());
                }
            }
            None => return Ok(true),
        }
    }
}
