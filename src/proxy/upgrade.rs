//! Protocol upgrades (WebSocket media streams): the request goes to the vendor with the same
//! header hygiene as every other, and once the vendor answers `101 Switching Protocols` the
//! bytes flow both ways untouched until either side ends.
//!
//! No limit but the rate limit applies (a stream is not an attempt to retry), nothing is
//! normalised: a vendor refusing the upgrade is answered as it answered.

use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::ServerSession as Session;
use pingora::{Error, ErrorType};

use super::error::Failure;
use super::exchange::OWN_HEADERS;
use super::respond::{self, Written};
use super::{Ctx, VendorRuntime};
use crate::http::pool::Upstreams;
use crate::http::upstream;

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
        Ok(up) => relay(session, ctx, up).await,
        Err(f) => respond::failure(session, ctx, vendor, f).await,
    }
}

/// The vendor connection with the upgrade request sent and its final header read.
async fn connect(
    upstreams: &Upstreams,
    session: &Session,
    ctx: &mut Ctx,
    vendor: &VendorRuntime,
) -> Result<UpstreamSession, Failure> {
    let t = &vendor.cfg.timeouts;
    let addr = vendor
        .resolver
        .pick(t.connect)
        .await
        .map_err(|e| Failure::Unresolvable(e.to_string()))?;
    let peer = vendor.peer(addr, t.response);
    ctx.attempt.made += 1;
    let mut up = upstreams.get(&peer).await?;
    let mut req = Box::new(session.req_header().clone());
    upstream::prepare(&mut req, &vendor.host, &OWN_HEADERS);
    ctx.attempt.sent = true;
    ctx.attempt.started = Some(std::time::Instant::now());
    up.write_request_header(req).await?;
    let resp = upstream::read_final_header(&mut up).await?;
    ctx.attempt.status = Some(resp.status.as_u16());
    ctx.attempt.elapsed = ctx.attempt.started.map(|t| t.elapsed());
    Ok(up)
}

/// The vendor's answer to the app; after a `101`, the two byte streams joined.
async fn relay(session: &mut Session, ctx: &mut Ctx, mut up: UpstreamSession) -> Written {
    let Some(resp) = up.response_header().cloned() else {
        return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header");
    };
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        // Refused: an ordinary response, streamed as the vendor sent it.
        return respond::stream(session, ctx, &mut up, resp).await;
    }
    let UpstreamSession::H1(h1) = &mut up else {
        return Error::e_explain(ErrorType::InternalError, "upgrade over HTTP/2");
    };
    respond::switch(session, ctx, resp).await?;
    // What the app sends after the handshake is upgraded bytes, close-delimited upstream.
    h1.maybe_upgrade_body_writer();
    loop {
        tokio::select! {
            from_app = session.read_request_body() => match from_app? {
                Some(bytes) => {
                    h1.write_body(&bytes).await?;
                }
                // The app closed its side: the stream is over (the vendor sees the close
                // when the connection, never pooled, is dropped).
                None => return session.finish_body().await,
            },
            from_vendor = h1.read_body_bytes() => match from_vendor? {
                Some(bytes) => session.write_response_body(bytes, false).await?,
                None => return session.finish_body().await,
            },
        }
    }
}
