//! Switchboard's own HTTP server app on `pingora-core`: it reads each request, hands it to
//! [`Switchboard::handle`], and keeps the connection for the next one. Pingora's server,
//! listeners, HTTP/1 codec, TLS and shutdown stay; `pingora-proxy`'s phases, its boxed
//! per-request future and its modules are not on the path.
//!
//! **Pipelining** (RFC 9112 §9.3.2): requests a client writes before it has read the
//! previous answer are answered in order, one at a time. The bytes read past the end of a
//! request (the start of the next) are kept with the connection and parsed first by the next
//! request: Pingora's HTTP/1 session does this once pipelining is enabled on it. A
//! connection that cannot be kept (the answer was cut, the request was refused unread, the
//! process is shutting down) is closed after the current answer, so the client knows to
//! send the rest again.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use tokio::sync::Notify;

use super::{Ctx, Switchboard};

/// The app every vendor listener runs.
pub struct Serve {
    handler: Switchboard,
    /// Set once shutdown starts: idle keep-alive connections stop waiting for a request.
    stopping: AtomicBool,
    stopped: Notify,
}

impl Serve {
    /// Serves requests with `handler`.
    pub fn new(handler: Switchboard) -> Self {
        Serve {
            handler,
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
        }
    }

    /// Resolves once shutdown has started.
    async fn stopping(&self) {
        let mut notified = pin!(self.stopped.notified());
        poll_fn(|cx| {
            // Registered first, then the flag read: a notification between the two is not
            // missed.
            if notified.as_mut().poll(cx).is_ready() || self.stopping.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Most time a request body nobody needs is drained to keep the connection: by an answer
/// given before the body was read (a rate-limit refusal), or after the answer, when the
/// connection is handed back. A body that keeps coming, or never ends, must not hold an
/// answer back nor the connection for ever; past this the connection closes.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Most time a closing connection keeps reading what the client still sends.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// Most bytes it reads (and drops) in that time.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Ends a connection that is not kept, after a complete answer: its request may not have
/// been read to its end (refused before its body: 413, `Content-Length` with
/// `Transfer-Encoding`; malformed; `CONNECT`), so it closes by [`linger`].
async fn close(session: ServerSession) {
    match session {
        ServerSession::H1(mut h1) => {
            // Every answer ends its own body; should one not have, its end is written here,
            // as `finish` would.
            if h1.finish_body().await.is_ok() {
                linger(h1.into_inner()).await;
            }
        }
        mut other => other.shutdown().await,
    }
}

/// A lingering close, as nginx's: the answer is flushed and the write side shut (the client
/// sees the answer end), then whatever the client still sends is read and dropped until it
/// closes, for at most [`LINGER_TIME`] and [`LINGER_BYTES`]. Closing a socket with unread
/// bytes makes the kernel reset the connection, and a client still sending its body then
/// gets the reset instead of the answer.
async fn linger(mut stream: Stream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The flush and FIN within the same bound: a client that stopped reading could hold a
    // full send buffer for ever.
    let until = tokio::time::Instant::now() + LINGER_TIME;
    if !matches!(
        tokio::time::timeout_at(until, stream.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // Small: what is read is thrown away, and each lingering connection holds one.
    let mut buf = vec![0u8; 4 * 1024];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            // Closed by the client, failed, or out of time.
            _ => return,
        }
    }
}

#[async_trait]
impl HttpServerApp for Serve {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // Carried to the next request on the connection by its persistent settings; set on
        // every request so the first one of each connection has it too.
        session.set_pipelining_enabled(true);
        let read = tokio::select! {
            // A request already buffered is served before a shutdown is noticed.
            biased;
            read = session.read_request() => read,
            () = self.stopping() => return None,
        };
        match read {
            Ok(true) => {}
            // The client closed an idle connection.
            Ok(false) => return None,
            Err(e) => {
                // The error's type only: its context carries the raw request bytes (keys,
                // query strings).
                let kind = e.etype().as_str();
                if *e.etype() == ErrorType::InvalidHTTPHeader {
                    // A malformed request: said so, and the connection closed (what follows
                    // it cannot be framed).
                    tracing::debug!(error = kind, "malformed request");
                    let _ = session.respond_error(400).await;
                    close(session).await;
                } else {
                    tracing::debug!(error = kind, "reading a request failed");
                    session.shutdown().await;
                }
                return None;
            }
        }
        if session.req_header().method == http::Method::CONNECT {
            // A tunnel changes the framing of everything after it; Switchboard forwards
            // requests to one vendor, never tunnels.
            let _ = session.respond_error(405).await;
            close(session).await;
            return None;
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        session.set_total_drain_timeout(Some(DRAIN_TIME));
        let mut ctx = Ctx::new(self.handler.lifecycle().track());
        let written = self.handler.handle(&mut session, &mut ctx).await;
        if written.is_err() && session.response_written().is_none() {
            // Failed before a byte of an answer went out (the app's connection is usually
            // gone then): a bare 502 if it is still there, never silence; counted as such.
            let _ = session.respond_error(502).await;
        }
        self.handler
            .finished(&session, &ctx, written.as_ref().err().map(|e| &**e));
        // A cut answer leaves the connection in no state to reuse.
        written.ok()?;
        // An idle keep-alive connection waits for its next request with no timer: Pingora
        // makes the wait unbounded once a request asked for keep-alive, and a 60 s timer on
        // every wait cost 1,800 instructions a request (benches/RESULTS.md). The listener is
        // the app's own, on loopback: its HTTP client closes what it pools.
        // The request is done: a drain waits for no lingering close.
        drop(ctx);
        let settings = HttpPersistentSettings::for_session(&session);
        let session = match session {
            ServerSession::H1(h1) if !h1.will_keepalive() => {
                close(ServerSession::H1(h1)).await;
                return None;
            }
            other => other,
        };
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                tracing::debug!(error = %e, "finishing a response failed");
                None
            }
        }
    }

    async fn http_cleanup(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stopped.notify_waiters();
    }
}
