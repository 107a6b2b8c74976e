//! The request body as the app sends it: buffered up to [`REPLAY_LIMIT`] so that a retry can
//! send it again byte for byte, streamed to the vendor beyond that (and then never retried).

use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession as Session;

use super::client::Conn;

/// Request bodies up to this size are buffered before sending (and could be replayed);
/// larger ones are streamed to the vendor as they arrive.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// The request body as read from the app so far.
pub struct RequestBody {
    /// What was read: the whole body, or its first part when `streaming`.
    pub buffered: Bytes,
    /// More body follows on the downstream session (larger than [`REPLAY_LIMIT`]).
    pub streaming: bool,
    /// The app sent a body at all (`Content-Length` or `Transfer-Encoding`).
    pub present: bool,
}

impl RequestBody {
    /// Whether the body can be sent again byte for byte.
    pub fn replayable(&self) -> bool {
        !self.streaming
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the configured limit.
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    /// Reading from the app (or writing to the vendor) failed.
    #[error(transparent)]
    Io(Box<pingora::Error>),
}

/// Reads the request body: all of it when it fits the replay buffer, else the first part.
pub async fn read(session: &mut Session, limit: u64) -> Result<RequestBody, BodyError> {
    let h = &session.req_header().headers;
    let present = h.contains_key(http::header::CONTENT_LENGTH)
        || h.contains_key(http::header::TRANSFER_ENCODING);
    let mut buffered = BytesMut::new();
    let mut total: u64 = 0;
    while let Some(chunk) = session.read_request_body().await.map_err(BodyError::Io)? {
        total += chunk.len() as u64;
        if total > limit {
            return Err(BodyError::TooLarge(limit));
        }
        buffered.extend_from_slice(&chunk);
        if buffered.len() > REPLAY_LIMIT {
            return Ok(RequestBody {
                buffered: buffered.freeze(),
                streaming: true,
                present,
            });
        }
    }
    Ok(RequestBody {
        buffered: buffered.freeze(),
        streaming: false,
        present,
    })
}

/// Sends what is left of a streamed `body` to the vendor, straight from the app as it
/// arrives, never past `limit` bytes in all, and ends it. Its first part went with the
/// header ([`Conn::send_request`]); a buffered body is sent whole there.
pub async fn send(
    session: &mut Session,
    up: &mut Conn,
    body: &RequestBody,
    limit: u64,
) -> Result<(), BodyError> {
    if body.streaming {
        // Boxed: the streaming loop's state would otherwise sit in every request's future,
        // and be copied with it, though most bodies are small and buffered.
        Box::pin(stream_rest(session, up, limit)).await?;
        up.finish_body().await.map_err(BodyError::Io)?;
    }
    Ok(())
}

/// The rest of a large request body, from the app straight to the vendor.
async fn stream_rest(session: &mut Session, up: &mut Conn, limit: u64) -> Result<(), BodyError> {
    let mut total = session.body_bytes_read() as u64;
    while let Some(c) = session.read_request_body().await.map_err(BodyError::Io)? {
        total += c.len() as u64;
        if total > limit {
            return Err(BodyError::TooLarge(limit));
        }
        up.write_body(&c).await.map_err(BodyError::Io)?;
    }
    Ok(())
}
