//! The only writer of responses to the app: envelopes, streamed successes, and inspected
//! 2xx bodies sent on exactly as the vendor sent them.
//!
//! Each function writes one whole response (or cuts the stream when the vendor broke off
//! mid-body) and records in [`Ctx`] what the app was answered. Every envelope is stripped
//! of the request's secrets here, whoever built it.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use pingora::{Error, ErrorType, Result};

use super::error::Failure;
use super::{Ctx, VendorRuntime};
use crate::config::ErrorFormat;
use crate::envelope::{Code, Envelope, Source};
use crate::http::client::Conn;
use crate::http::headers;
use crate::http::upstream::Prefix;
use crate::normalize::render::{Template, Values};
use crate::normalize::transport::AttemptState;
use crate::redact::Secrets;

/// A response was written in full (`Ok`), or the stream had to be cut (`Err`: the app went
/// away, or the vendor broke off after the header was sent).
pub type Written = Result<()>;

/// Writes `env` as the whole response, with extra headers, after removing the request's
/// secrets from it.
pub async fn envelope(
    session: &mut Session,
    ctx: &mut Ctx,
    vendor: &VendorRuntime,
    mut env: Envelope,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Written {
    Secrets::of(&session.req_header().headers, &vendor.limits.source).envelope(&mut env);
    // An app on the vendor's SDK gets Switchboard's own errors in the vendor's dialect.
    if env.error.source == Source::Proxy
        && vendor.cfg.errors.for_request(&session.req_header().headers) == ErrorFormat::Vendor
    {
        if let Some(t) = vendor.cfg.dialect.render.for_code(env.error.code) {
            return rendered(session, ctx, &env, t, extra).await;
        }
    }
    let status = env.status();
    ctx.answered(status, Some(&env));
    let body = Bytes::from(env.to_json());
    let head = (status, "application/json", &[][..]);
    write_error(session, head, body, &env, extra).await
}

/// Writes `env` through the vendor's `render` template `t`.
async fn rendered(
    session: &mut Session,
    ctx: &mut Ctx,
    env: &Envelope,
    t: &Template,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Written {
    let status = t.status.unwrap_or_else(|| env.status());
    ctx.answered(status, Some(env));
    let body = Bytes::from(t.body(&Values {
        code: env.error.code,
        message: &env.error.message,
        retry_after_s: env.error.retry_after_s,
        request_id: &env.request_id,
    }));
    let head = (status, t.default_content_type(), &t.headers[..]);
    write_error(session, head, body, env, extra).await
}

/// Writes one whole error answer: `(status, content type, the body's own headers)`, the body,
/// and the envelope's headers (`X-Switchboard-Error`, `X-Request-Id`, `Retry-After`) with
/// `extra` last.
async fn write_error(
    session: &mut Session,
    (status, content_type, own): (u16, &'static str, &[(http::HeaderName, http::HeaderValue)]),
    body: Bytes,
    env: &Envelope,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Written {
    use http::{header, HeaderValue};
    // Built as a plain `http::HeaderMap` from constant names, then handed to Pingora whole:
    // each of `ResponseHeader::insert_header`'s inserts turns the name into bytes and parses
    // it back, copying custom names twice, and fills a second, case-keeping map. An error
    // answer has no vendor casing to keep, and its wire names are the same either way
    // (standard names title-cased, Switchboard's own lower-case).
    let mut map = http::HeaderMap::with_capacity(8 + own.len() + extra.len());
    map.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (k, v) in own {
        map.insert(k.clone(), v.clone());
    }
    map.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    map.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (k, v) in env.headers() {
        map.insert(k, v);
    }
    for (k, v) in extra {
        map.insert(k.clone(), v.clone());
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(status)
        .map_err(|_| Error::explain(ErrorType::InternalError, "error answer status"))?;
    parts.headers = map;
    let h = ResponseHeader::from(parts);
    session.write_response_header(Box::new(h)).await?;
    session.write_response_body(body, true).await
}

/// Answers before the request body was read. The body is drained, for at most
/// `serve::DRAIN_TIME`, so the connection can be kept; `drain: false` (or a drain that
/// failed or ran out of time) closes it after the answer.
pub async fn local(
    session: &mut Session,
    ctx: &mut Ctx,
    vendor: &VendorRuntime,
    env: Envelope,
    extra: &[(http::HeaderName, http::HeaderValue)],
    drain: bool,
) -> Written {
    if !drain || session.drain_request_body().await.is_err() {
        session.set_keepalive(None);
    }
    envelope(session, ctx, vendor, env, extra).await
}

/// Answers a failure with its canonical envelope; `Err` when nobody is left to answer.
pub async fn failure(
    session: &mut Session,
    ctx: &mut Ctx,
    vendor: &VendorRuntime,
    failure: Failure,
) -> Written {
    let rescued = failure.rescue(state(ctx));
    if matches!(failure, Failure::TooLarge(_) | Failure::Smuggling) {
        // The rest of the body is unread (or unframed): the connection cannot carry on.
        session.set_keepalive(None);
    }
    match rescued {
        Some((code, message)) => proxy_error(session, ctx, vendor, code, message).await,
        None => {
            ctx.answer.client_gone = true;
            Err(failure.into_pingora())
        }
    }
}

/// How far the current attempt got, for classifying its failure.
pub fn state(ctx: &Ctx) -> AttemptState {
    AttemptState {
        sent: ctx.attempt.sent,
        idempotent: ctx.request.idempotent,
    }
}

/// Answers with Switchboard's own envelope for `code`.
pub async fn proxy_error(
    session: &mut Session,
    ctx: &mut Ctx,
    vendor: &VendorRuntime,
    code: Code,
    message: String,
) -> Written {
    let env = Envelope::proxy(code, message, &vendor.cfg.name, &ctx.request.id)
        .with_attempts(ctx.attempt.made);
    envelope(session, ctx, vendor, env, &[]).await
}

/// `resp` came from [`Conn::read_header`]: hop-by-hop headers are already gone.
fn downstream_header(mut resp: ResponseHeader, ctx: &Ctx) -> Box<ResponseHeader> {
    let _ = resp.insert_header(headers::X_REQUEST_ID_STR, &ctx.request.id);
    Box::new(resp)
}

/// The vendor's `101 Switching Protocols`, to the app: from here on the connection carries
/// the upgraded protocol's bytes, not HTTP.
pub async fn switch(session: &mut Session, ctx: &mut Ctx, resp: ResponseHeader) -> Written {
    let status = resp.status.as_u16();
    session
        .write_response_header(downstream_header(resp, ctx))
        .await?;
    ctx.answered(status, None);
    Ok(())
}

/// Streams a vendor response through unbuffered, framing as the vendor sent it.
pub async fn stream(
    session: &mut Session,
    ctx: &mut Ctx,
    up: &mut Conn,
    resp: ResponseHeader,
) -> Written {
    let status = resp.status.as_u16();
    let done = up.body_done();
    session
        .write_response_header(downstream_header(resp, ctx))
        .await?;
    ctx.answered(status, None);
    if done {
        return session.finish_body().await;
    }
    copy_body(session, ctx, up).await
}

/// Sends a 2xx that was inspected and found fine: every byte read for the inspection, then
/// the rest of the vendor's body as it comes. Framing headers are the vendor's own.
pub async fn inspected(
    session: &mut Session,
    ctx: &mut Ctx,
    up: &mut Conn,
    resp: ResponseHeader,
    prefix: Prefix,
) -> Written {
    ctx.answered(resp.status.as_u16(), None);
    header_prefix_rest(session, ctx, resp, prefix, Some(up)).await
}

/// Writes `resp`, then every byte of `prefix`, then (when the body went on) the rest from
/// `rest`, cutting the stream where the vendor broke off.
async fn header_prefix_rest(
    session: &mut Session,
    ctx: &Ctx,
    resp: ResponseHeader,
    prefix: Prefix,
    rest: Option<&mut Conn>,
) -> Written {
    session
        .write_response_header(downstream_header(resp, ctx))
        .await?;
    if !prefix.bytes.is_empty() {
        session.write_response_body(prefix.bytes, false).await?;
    }
    if let Some(e) = prefix.error {
        tracing::warn!(request_id = %ctx.request.id, error = %e, "vendor failed mid-response; cutting the stream");
        return Err(e);
    }
    match rest {
        Some(up) if !prefix.complete => copy_body(session, ctx, up).await,
        _ => session.finish_body().await,
    }
}

/// A vendor error kept as the vendor sent it, for an app that gets the vendor's format.
pub struct AsSent {
    /// The vendor's response header.
    pub resp: ResponseHeader,
    /// Every byte of its body read for the classification.
    pub prefix: Prefix,
    /// The connection, when the body goes on past the prefix.
    pub rest: Option<Conn>,
}

/// Sends a vendor error as the vendor sent it (status, headers, every byte of the body),
/// with its canonical code in `X-Switchboard-Error` and, when a wait is known and the vendor
/// gave none, `Retry-After`. Counted by `env`'s code like an envelope (SPEC §3).
pub async fn as_sent(session: &mut Session, ctx: &mut Ctx, env: &Envelope, raw: AsSent) -> Written {
    let AsSent {
        mut resp,
        prefix,
        mut rest,
    } = raw;
    ctx.answered(resp.status.as_u16(), Some(env));
    resp.insert_header(
        crate::envelope::X_SWITCHBOARD_ERROR,
        http::HeaderValue::from_static(env.error.code.as_str()),
    )?;
    if let Some(s) = env.error.retry_after_s {
        if !resp.headers.contains_key(http::header::RETRY_AFTER) {
            resp.insert_header(http::header::RETRY_AFTER, s.to_string())?;
        }
    }
    header_prefix_rest(session, ctx, resp, prefix, rest.as_mut()).await
}

/// Copies the rest of the vendor's body to the app, chunk by chunk.
async fn copy_body(session: &mut Session, ctx: &Ctx, up: &mut Conn) -> Written {
    loop {
        match up.read_body().await {
            Ok(Some(chunk)) => session.write_response_body(chunk, false).await?,
            Ok(None) => return session.finish_body().await,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request.id, error = %e, "vendor failed mid-response; cutting the stream");
                return Err(e);
            }
        }
    }
}
