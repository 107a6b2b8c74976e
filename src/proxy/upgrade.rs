//! Protocol upgrades (WebSocket media streams): the request goes to the vendor with the same
//! header hygiene as every other, and once the vendor answers `101 Switching Protocols` the
//! bytes flow both ways untouched until either side ends.
//!
//! No limit but the rate limit applies (a stream is not an attempt to retry), nothing is
//! normalised: a vendor refusing the upgrade is answered as it answered.
//!
//! Only a WebSocket handshake is relayed ([`is_websocket`]): any other `Upgrade` (h2c, or one
//! on a request with a body) is dropped from the request, which then goes through the
//! exchange like any other — a vendor must not be able to turn a request into a tunnel past
//! the limits.
//!
//! Every read and write towards the vendor is timed by `timeouts.response`, before and after
//! the switch (as Pingora's own proxy loop timed them): a vendor silent that long ends the
//! stream. The two directions take turns: a write that cannot proceed within that time ends
//! the stream rather than waiting on a peer that reads nothing.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession as Session;
use pingora::{Error, ErrorType};

use super::error::Failure;
use super::exchange::OWN_HEADERS;
use super::respond::{self, Written};
use super::{Ctx, VendorRuntime};
use crate::http::body::RequestBody;
use crate::http::client::Conn;
use crate::http::pool::Upstreams;

/// Whether `req` is a WebSocket opening handshake (RFC 6455 §4.1): a `GET` asking to upgrade
/// to `websocket`, with no body.
pub fn is_websocket(req: &RequestHeader) -> bool {
    let h = &req.headers;
    let upgrade = h
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let body = h.contains_key(http::header::TRANSFER_ENCODING)
        || h.get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    req.method == http::Method::GET && upgrade && !body
}

/// Removes an upgrade Switchboard does not relay, so the request is an ordinary one: the
/// `Upgrade` header and h2c's `HTTP2-Settings` go. `Connection` stays, for what it says about
/// this connection (`close`); the exchange drops it, and what it names, on the way upstream.
pub fn refuse(req: &mut RequestHeader) {
    crate::http::headers::remove(req, &http::header::UPGRADE);
    crate::http::headers::remove(req, &HTTP2_SETTINGS);
}

const HTTP2_SETTINGS: http::HeaderName = http::HeaderName::from_static("http2-settings");

/// Sends the upgrade request in `session` to the vendor and, once it switches protocols,
/// relays bytes both ways until one side closes. Failures before the vendor answered get
/// an envelope, like any request's.
pub async fn pass(
    upstreams: &Upstreams,
    session: &mut Session,
    ctx: &mut Ctx,
    vendor: &VendorRuntime,
) -> Written {
    match connect(upstreams, session, ctx, vendor).await {
        Ok((up, resp)) => relay(session, ctx, up, resp).await,
        Err(f) => respond::failure(session, ctx, vendor, f).await,
    }
}

/// The vendor connection with the upgrade request sent, and its final header.
async fn connect(
    upstreams: &Upstreams,
    session: &Session,
    ctx: &mut Ctx,
    vendor: &VendorRuntime,
) -> Result<(Conn, ResponseHeader), Failure> {
    let t = &vendor.cfg.timeouts;
    let addr = vendor
        .resolver
        .pick(t.connect)
        .await
        .map_err(|e| Failure::Unresolvable(e.to_string()))?;
    let peer = vendor.peer(addr, t.response);
    ctx.attempt.made += 1;
    let mut up = upstreams.get(&peer).await?;
    // The pool's connections carry no I/O timeouts of their own.
    up.set_read_timeout(Some(t.response));
    up.set_write_timeout(Some(t.response));
    ctx.attempt.sent = true;
    ctx.attempt.started = Some(std::time::Instant::now());
    let no_body = RequestBody {
        buffered: bytes::Bytes::new(),
        streaming: false,
        present: false,
    };
    up.send_request(session.req_header(), &vendor.host, &OWN_HEADERS, &no_body)
        .await?;
    // One timer for the whole header: a vendor trickling 1xx lines would restart a per-read one.
    let resp = match pingora::prelude::timeout(t.response, up.read_header()).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Failure::Transport(Error::explain(
                ErrorType::ReadTimedout,
                "no response header within timeouts.response",
            )))
        }
    };
    ctx.attempt.status = Some(resp.status.as_u16());
    ctx.attempt.elapsed = ctx.attempt.started.map(|t| t.elapsed());
    Ok((up, resp))
}

/// The vendor's answer to the app; after a `101`, the two byte streams joined.
async fn relay(
    session: &mut Session,
    ctx: &mut Ctx,
    mut up: Conn,
    resp: ResponseHeader,
) -> Written {
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        // Refused: an ordinary response, streamed as the vendor sent it.
        return respond::stream(session, ctx, &mut up, resp).await;
    }
    // A 101 the client did not take as an upgrade (an HTTP/1.0 one, say) has no byte stream
    // behind it: relaying would drop what the app sends.
    if !up.upgraded() {
        return Error::e_explain(ErrorType::InvalidHTTPHeader, "101 without an upgrade");
    }
    respond::switch(session, ctx, resp).await?;
    loop {
        tokio::select! {
            from_app = session.read_request_body() => match from_app? {
                Some(bytes) => up.write_raw(&bytes).await?,
                // The app closed its side: the stream is over (the vendor sees the close
                // when the connection, never pooled, is dropped).
                None => return session.finish_body().await,
            },
            from_vendor = up.read_raw() => match from_vendor? {
                Some(bytes) => session.write_response_body(bytes, false).await?,
                None => return session.finish_body().await,
            },
        }
    }
}
